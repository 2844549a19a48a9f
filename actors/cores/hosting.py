"""Hosting capacity per bus: the largest PV that keeps the feeder within limits (pure core).

For every candidate bus, the largest PV active power ``p_mw`` that, at the stated power factor and
load level, keeps every energized bus voltage within the normal band and every line and
transformer loading within its normal limit (``feeder.limits``), with the constraint that binds.

* ``load_level`` multiplies every load (1.0 = the operating point; 0.3 ~ minimum load, where
  voltage rise binds; 1.0+ = peak, where thermal limits bind more often).
* ``power_factor`` in (0, 1]: the PV absorbs reactive power ``q = -p tan(acos(pf))`` (the usual
  inverter setting against voltage rise); 1.0 is unity.
* Undervoltage counts only where the feeder without the PV is within the band (added PV does not
  cure a base-case undervoltage, and a base case outside the band must not make every bus 0 MW).

Method: bisection on ``p_mw`` for all buses at once. Each bisection step is one batch of the
batched engine (:mod:`actors.cores.batched`) with one scenario per bus: the feeder gets one
hypothetical PV per candidate bus (at 0 MW) and scenario ``k`` sets only PV ``k``. About
``log2(max_p_mw / tolerance_mw)`` batches (14 for 16 MW at 1 kW). Feasibility is assumed monotone
in ``p_mw`` (true on radial feeders in practice); a scenario the engine cannot converge counts as
infeasible ("DIVERGES"). The tests check the answer against a pandapower bisection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

import numpy as np

from actors.cores.analysis import NO_PROGRESS, Progress
from actors.cores.batched import BatchedPowerFlow, BatchResult, Scenarios
from actors.cores.topology import process_topology
from graph_schema.errors import BadInput, NotFound
from graph_schema.model import Der, DerKind, Feeder

HC_PREFIX = "hc-pv-"


@dataclass(frozen=True, slots=True)
class BusHostingCapacity:
    bus_id: str
    max_p_mw: float
    binding_constraint: str  # OVERVOLTAGE / UNDERVOLTAGE / OVERLOAD / DIVERGES / SEARCH_LIMIT / BASE_CASE
    binding_element_id: str | None
    lon: float | None = None
    lat: float | None = None

    @property
    def description(self) -> str:
        return self.binding_constraint + (f" at {self.binding_element_id}" if self.binding_element_id else "")


@dataclass(frozen=True, slots=True)
class HostingCapacity:
    feeder_id: str
    load_level: float
    power_factor: float
    tolerance_mw: float
    max_search_mw: float
    buses: tuple[BusHostingCapacity, ...]  # feeder order
    power_flows: int
    engine: str


def with_candidate_pv(feeder: Feeder, bus_ids: Iterable[str]) -> Feeder:
    """``feeder`` plus one hypothetical PV (0 MW) per bus in ``bus_ids``, id ``hc-pv-<bus>``."""
    sn = max(1.0, sum(ld.p_mw for ld in feeder.loads))
    extra = tuple(Der(id=HC_PREFIX + b, bus_id=b, kind=DerKind.PV, sn_mva=sn, p_mw=0.0) for b in bus_ids)
    return replace(feeder, ders=feeder.ders + extra)


def _check(
    r: BatchResult, rows: np.ndarray, feeder: Feeder, check_under: bool
) -> tuple[np.ndarray, list[tuple[str, str | None]]]:
    """Per row of ``r`` in ``rows``: within limits?, and (kind, element) of the worst violation."""
    lim = feeder.limits
    ok = np.zeros(len(rows), dtype=bool)
    why: list[tuple[str, str | None]] = []
    for k, s in enumerate(rows):
        if not r.converged[s]:
            why.append(("DIVERGES", None))
            continue
        vm = r.vm_pu[s]
        worst: list[tuple[float, str, str | None]] = []
        over = np.nan_to_num(vm, nan=-np.inf) - lim.vm_max_pu
        if over.max(initial=-np.inf) > 0:
            i = int(np.argmax(over))
            worst.append((over[i] / lim.vm_max_pu, "OVERVOLTAGE", r.bus_ids[i]))
        if check_under:
            under = lim.vm_min_pu - np.nan_to_num(vm, nan=np.inf)
            if under.max(initial=-np.inf) > 0:
                i = int(np.argmax(under))
                worst.append((under[i] / lim.vm_min_pu, "UNDERVOLTAGE", r.bus_ids[i]))
        flows = ((r.line_loading_percent[s], r.line_ids), (r.transformer_loading_percent[s], r.transformer_ids))
        for loading, ids in flows:
            if len(ids):
                i = int(np.argmax(loading))
                if loading[i] > lim.max_loading_percent:
                    worst.append(((loading[i] - lim.max_loading_percent) / lim.max_loading_percent, "OVERLOAD", ids[i]))
        if worst:
            _, kind, eid = max(worst, key=lambda w: w[0])
            why.append((kind, eid))
        else:
            ok[k] = True
            why.append(("", None))
    return ok, why


def check_request(load_level: float, power_factor: float) -> None:
    """BadInput unless the load level and power factor are usable."""
    if not (math.isfinite(load_level) and load_level >= 0):
        raise BadInput(f"loadLevel={load_level}: give a load multiplier >= 0 (0.3 ~ minimum load, 1.0 = as is)")
    if not (math.isfinite(power_factor) and 0 < power_factor <= 1):
        raise BadInput(f"powerFactor={power_factor}: give a power factor in (0, 1] (1.0 = unity)")


def hosting_capacity(
    feeder: Feeder,
    *,
    load_level: float = 1.0,
    power_factor: float = 1.0,
    bus_ids: Iterable[str] | None = None,
    max_p_mw: float | None = None,
    tolerance_mw: float = 0.001,
    progress: Progress = NO_PROGRESS,
) -> HostingCapacity:
    """Hosting capacity of each candidate bus (default: every energized bus without a source)."""
    check_request(load_level, power_factor)
    if not (tolerance_mw > 0):
        raise BadInput(f"tolerance_mw={tolerance_mw}: give a positive tolerance")
    topo = process_topology(feeder)
    source_buses = {s.bus_id for s in feeder.sources}
    known = {b.id for b in feeder.buses}
    if bus_ids is None:
        cands = [b.id for b in feeder.buses if b.id in topo.energized_bus_ids and b.id not in source_buses]
    else:
        cands = list(dict.fromkeys(bus_ids))
        for b in cands:
            if b not in known:
                raise NotFound(f"bus {b!r} is not in feeder {feeder.id!r}; check the id", element_id=b)
            if b not in topo.energized_bus_ids:
                raise BadInput(f"bus {b!r} is de-energized in this state; hosting capacity needs a supplied bus",
                               element_id=b)
    total_load = sum(ld.p_mw for ld in feeder.loads if ld.in_service)
    hi_mw = float(max_p_mw) if max_p_mw is not None else max(1.0, 5.0 * total_load)
    if not (hi_mw > 0 and math.isfinite(hi_mw)):
        raise BadInput(f"max_p_mw={max_p_mw}: give a positive search bound")
    fhc = with_candidate_pv(feeder, cands)
    engine = BatchedPowerFlow(fhc, fallback=False)
    n0 = len(feeder.ders)
    n = len(cands)
    tan_phi = math.tan(math.acos(power_factor))
    base_der_p = np.array([d.p_mw for d in fhc.ders], dtype=float)
    base_der_q = np.array([d.q_mvar for d in fhc.ders], dtype=float)
    flows = 0

    def solve(p: np.ndarray, idx: np.ndarray) -> BatchResult:
        nonlocal flows
        m = len(idx)
        dp = np.broadcast_to(base_der_p, (m, len(base_der_p))).copy()
        dq = np.broadcast_to(base_der_q, (m, len(base_der_q))).copy()
        dp[np.arange(m), n0 + idx] = p
        dq[np.arange(m), n0 + idx] = -p * tan_phi
        flows += m
        return engine.solve(Scenarios(count=m, der_p_mw=dp, der_q_mvar=dq, load_scale=np.full(m, load_level)))

    base = solve(np.zeros(1), np.zeros(1, dtype=np.int64))
    lim = feeder.limits
    check_under = bool(base.converged[0]) and not (base.min_vm_pu[0] < lim.vm_min_pu)
    base_ok, base_why = _check(base, np.arange(1), feeder, check_under)
    iterations = max(1, math.ceil(math.log2(hi_mw / tolerance_mw)))
    lo = np.zeros(n)
    hi = np.full(n, hi_mw)
    why: list[tuple[str, str | None]] = [("SEARCH_LIMIT", None)] * n
    if not base_ok[0]:
        _, eid = base_why[0]
        why = [("BASE_CASE", eid)] * n  # without any PV the feeder is already outside its limits
        hi[:] = 0.0
        idx_all = np.arange(0)
    else:
        idx_all = np.arange(n)
        r = solve(hi, idx_all)
        ok, w = _check(r, np.arange(n), feeder, check_under)
        for k in np.flatnonzero(~ok):
            why[k] = w[k]
        lo[ok] = hi[ok]
        idx_all = np.flatnonzero(~ok)
    for it in range(iterations):
        progress((it + 1) / (iterations + 1))
        active = idx_all[(hi[idx_all] - lo[idx_all]) > tolerance_mw]
        if len(active) == 0:
            break
        mid = 0.5 * (lo[active] + hi[active])
        r = solve(mid, active)
        ok, w = _check(r, np.arange(len(active)), feeder, check_under)
        lo[active[ok]] = mid[ok]
        hi[active[~ok]] = mid[~ok]
        for j in np.flatnonzero(~ok):
            why[active[j]] = w[j]
    progress(1.0)
    buses = {b.id: b for b in feeder.buses}
    out = tuple(
        BusHostingCapacity(b, float(lo[k]), why[k][0], why[k][1], buses[b].lon, buses[b].lat)
        for k, b in enumerate(cands)
    )
    return HostingCapacity(feeder.id, load_level, power_factor, tolerance_mw, hi_mw, out, flows, "batched")
