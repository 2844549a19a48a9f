"""Balanced AC power flow over pandapower (Newton-Raphson), as a pure core.

:class:`PowerFlowModel` builds a private pandapower net from a :class:`~graph_schema.model.Feeder`
once (index maps id -> row, baseline column arrays) and answers :meth:`PowerFlowModel.solve` calls:
each call restores the baseline, applies its own overrides with vectorized assignments, runs
``pandapower.runpp`` and extracts frozen results with numpy. Calls are independent of each other
and the feeder is never mutated. The result is never an exception for a solver failure:
non-convergence or a solver error gives ``converged=False`` with a ``reason``.

Conventions:

* ``Der.p_mw`` > 0 is injection; every DER (storage included) is a pandapower ``sgen``.
* ``Capacitor.q_mvar`` is the rating per step (generation positive): a ``shunt`` of
  ``-q_mvar`` per step with ``step`` steps in service.
* ``load_scale`` multiplies every load's p and q after ``load_p_mw``/``load_q_mvar`` overrides.
* ``switch_states`` maps switch id -> ``is_open``; ``out_of_service`` takes ids of buses, lines,
  transformers, loads, DERs, capacitors, sources (switches listed there are opened).
* Unknown ids in any override raise ``NotFound`` (a caller's mistake, not a solver failure).
* De-energized buses (no closed path to an in-service source) have ``vm_pu`` None, are not counted
  in the min/max voltage and raise no violation. Lines and transformers without flow report 0.
* Violations: one per element and kind, against the worst band crossed: outside the emergency band
  -> ``band="EMERGENCY"`` with the emergency limit, else outside the normal band -> ``"NORMAL"``.
  Overloads are checked on lines and transformers (``loading_percent``).
* ``losses_mw`` is the sum of line and transformer losses.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import numpy as np
import pandapower as pp
from pandapower.auxiliary import LoadflowNotConverged

from graph_schema.errors import NotFound
from graph_schema.model import ElementType, Feeder, Limits
from graph_schema.quiet import quiet_warnings
from graph_schema.validate import ensure_valid

T = TypeVar("T")

ViolationKind = Literal["UNDERVOLTAGE", "OVERVOLTAGE", "OVERLOAD"]
Band = Literal["NORMAL", "EMERGENCY"]


NOISE_I_KA = 1e-9  # 1 µA: line currents below this are numerical noise

@dataclass(frozen=True, slots=True)
class BusResult:
    bus_id: str
    vm_pu: float | None
    va_degree: float | None
    energized: bool


@dataclass(frozen=True, slots=True)
class LineResult:
    line_id: str
    loading_percent: float
    i_ka: float
    p_from_mw: float
    q_from_mvar: float
    pl_mw: float


@dataclass(frozen=True, slots=True)
class TransformerResult:
    transformer_id: str
    loading_percent: float
    pl_mw: float


@dataclass(frozen=True, slots=True)
class Violation:
    kind: ViolationKind
    element_id: str
    value: float
    limit: float
    band: Band


class ColumnarResults(Sequence[T]):
    """Per-element results held as columns (ids + numpy arrays), materialized on first use.

    A 3,000-bus result is ~6,000 small objects; pickling those across the Ray boundary cost ~25 ms
    per solve. Columns pickle in well under a millisecond and callers that only read the summary
    never build the objects. Behaves as an immutable sequence (compares equal to a tuple of the same
    elements). ``nullable`` columns turn NaN into ``None``.
    """

    __slots__ = ("_cache", "_columns", "_factory", "_ids", "_nullable")

    def __init__(self, factory: Callable[..., T], ids: tuple[str, ...], columns: tuple[np.ndarray, ...],
                 nullable: tuple[bool, ...] = ()) -> None:
        self._factory = factory
        self._ids = ids
        # Own copies: pandapower's result tables (and views of them) are overwritten by the next solve.
        self._columns = tuple(np.array(c, copy=True) for c in columns)
        self._nullable = nullable or (False,) * len(columns)
        self._cache: tuple[T, ...] | None = None

    def _items(self) -> tuple[T, ...]:
        if self._cache is None:
            cols: list[list[Any]] = []
            for col, nullable in zip(self._columns, self._nullable, strict=True):
                if nullable:
                    obj = col.astype(object)
                    obj[np.isnan(col)] = None
                    cols.append(obj.tolist())
                else:
                    cols.append(col.tolist())
            self._cache = tuple(map(self._factory, self._ids, *cols))
        return self._cache

    def __len__(self) -> int:
        return len(self._ids)

    def __getitem__(self, index: Any) -> Any:
        return self._items()[index]

    def __iter__(self) -> Iterator[T]:
        return iter(self._items())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ColumnarResults | tuple | list):
            return tuple(self) == tuple(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._items())

    def __repr__(self) -> str:
        return f"ColumnarResults({getattr(self._factory, '__name__', 'element')}, n={len(self)})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (ColumnarResults, (self._factory, self._ids, self._columns, self._nullable))


@dataclass(frozen=True, slots=True)
class PowerFlowResult:
    converged: bool
    reason: str | None
    losses_mw: float | None
    min_vm_pu: float | None
    min_vm_bus_id: str | None
    max_vm_pu: float | None
    max_vm_bus_id: str | None
    max_line_loading_percent: float | None
    buses: Sequence[BusResult]
    lines: Sequence[LineResult]
    transformers: Sequence[TransformerResult]
    violations: tuple[Violation, ...]
    p_source_mw: float | None
    q_source_mvar: float | None
    solve_time_s: float


def _ids(ids: Iterable[str]) -> dict[str, int]:
    return {eid: i for i, eid in enumerate(ids)}


class PowerFlowModel:
    """Owns a private pandapower net built once from a Feeder; never mutates the Feeder.

    ``warm_start=True`` starts Newton-Raphson from the previous solution (pandapower
    ``init="results"``) when the previous solve converged with the same topology (switches,
    in-service flags); results then agree with a cold start within the solver tolerance
    (1e-8 MVA mismatch) rather than bit for bit, so it is off by default.
    """

    _TOPOLOGY_COLUMNS = (
        ("bus", "in_service"),
        ("ext_grid", "in_service"),
        ("line", "in_service"),
        ("trafo", "in_service"),
        ("switch", "closed"),
    )

    def __init__(self, feeder: Feeder, *, warm_start: bool = False) -> None:
        ensure_valid(feeder)
        self.feeder = feeder
        self._lock = threading.Lock()
        self._warm_start = warm_start
        self._warm_key: bytes | None = None  # topology of the last converged solve
        net = pp.create_empty_network(name=feeder.id, f_hz=feeder.f_hz, sn_mva=feeder.sn_mva)
        self._bus_ids = [b.id for b in feeder.buses]
        self._bus = _ids(self._bus_ids)
        self._line_ids = [ln.id for ln in feeder.lines]
        self._line = _ids(self._line_ids)
        self._trafo_ids = [t.id for t in feeder.transformers]
        self._trafo = _ids(self._trafo_ids)
        self._switch = _ids(s.id for s in feeder.switches)
        self._load = _ids(ld.id for ld in feeder.loads)
        self._der = _ids(d.id for d in feeder.ders)
        self._cap = _ids(c.id for c in feeder.capacitors)
        self._source = _ids(s.id for s in feeder.sources)
        bus = self._bus

        pp.create_buses(
            net,
            len(feeder.buses),
            vn_kv=[b.vn_kv for b in feeder.buses],
            in_service=[b.in_service for b in feeder.buses],
        )
        for s in feeder.sources:
            kw: dict[str, Any] = {}
            if s.s_sc_max_mva is not None:
                kw["s_sc_max_mva"] = s.s_sc_max_mva
            if s.rx_max is not None:
                kw["rx_max"] = s.rx_max
            pp.create_ext_grid(net, bus[s.bus_id], vm_pu=s.vm_pu, va_degree=s.va_degree, **kw)
        if feeder.lines:
            ls = feeder.lines
            pp.create_lines_from_parameters(
                net,
                [bus[ln.from_bus_id] for ln in ls],
                [bus[ln.to_bus_id] for ln in ls],
                length_km=[ln.length_km for ln in ls],
                r_ohm_per_km=[ln.r_ohm_per_km for ln in ls],
                x_ohm_per_km=[ln.x_ohm_per_km for ln in ls],
                c_nf_per_km=[ln.c_nf_per_km for ln in ls],
                max_i_ka=[ln.max_i_ka for ln in ls],
                parallel=[ln.parallel for ln in ls],
                in_service=[ln.in_service for ln in ls],
            )
        for t in feeder.transformers:
            tap: dict[str, Any] = {}
            if t.has_tap_changer:
                tap = {
                    "tap_side": t.tap_side or "hv",
                    "tap_min": t.tap_min,
                    "tap_max": t.tap_max,
                    "tap_step_percent": t.tap_step_percent,
                    "tap_changer_type": "Ratio",
                    "tap_neutral": t.tap_neutral if t.tap_neutral is not None else 0,
                    "tap_pos": t.tap_pos if t.tap_pos is not None else (t.tap_neutral or 0),
                }
            pp.create_transformer_from_parameters(
                net,
                bus[t.hv_bus_id],
                bus[t.lv_bus_id],
                sn_mva=t.sn_mva,
                vn_hv_kv=t.vn_hv_kv,
                vn_lv_kv=t.vn_lv_kv,
                vkr_percent=t.vkr_percent,
                vk_percent=t.vk_percent,
                pfe_kw=t.pfe_kw,
                i0_percent=t.i0_percent,
                shift_degree=t.shift_degree,
                in_service=t.in_service,
                **tap,
            )
        if feeder.switches:
            sws = feeder.switches

            def element(s: Any) -> int:
                if s.element_type == ElementType.LINE:
                    return self._line[s.element_id]
                if s.element_type == ElementType.TRANSFORMER:
                    return self._trafo[s.element_id]
                return bus[s.element_id]

            et = {ElementType.LINE: "l", ElementType.TRANSFORMER: "t", ElementType.BUS: "b"}
            pp.create_switches(
                net,
                [bus[s.bus_id] for s in sws],
                [element(s) for s in sws],
                et=[et[s.element_type] for s in sws],
                closed=[not s.is_open for s in sws],
            )
        if feeder.loads:
            lds = feeder.loads
            pp.create_loads(
                net,
                [bus[ld.bus_id] for ld in lds],
                p_mw=[ld.p_mw for ld in lds],
                q_mvar=[ld.q_mvar for ld in lds],
                in_service=[ld.in_service for ld in lds],
            )
        if feeder.ders:
            ds = feeder.ders
            pp.create_sgens(
                net,
                [bus[d.bus_id] for d in ds],
                p_mw=[d.p_mw for d in ds],
                q_mvar=[d.q_mvar for d in ds],
                sn_mva=[d.sn_mva for d in ds],
                in_service=[d.in_service for d in ds],
            )
        for c in feeder.capacitors:
            pp.create_shunt(
                net, bus[c.bus_id], q_mvar=-c.q_mvar, step=c.step, max_step=c.steps, in_service=c.in_service
            )
        self._net = net
        # Baseline columns restored before every solve.
        self._base: dict[tuple[str, str], np.ndarray] = {}
        for table, cols in (
            ("bus", ("in_service",)),
            ("ext_grid", ("in_service",)),
            ("line", ("in_service",)),
            ("trafo", ("in_service", "tap_pos")),
            ("switch", ("closed",)),
            ("load", ("p_mw", "q_mvar", "in_service")),
            ("sgen", ("p_mw", "q_mvar", "in_service")),
            ("shunt", ("step", "in_service")),
        ):
            for col in cols:
                self._base[(table, col)] = net[table][col].to_numpy(copy=True)
        self._where: dict[str, tuple[str, int]] = {}
        for table, index in (
            ("bus", self._bus),
            ("line", self._line),
            ("trafo", self._trafo),
            ("load", self._load),
            ("sgen", self._der),
            ("shunt", self._cap),
            ("ext_grid", self._source),
            ("switch", self._switch),
        ):
            for eid, row in index.items():
                self._where[eid] = (table, row)

    # ------------------------------------------------------------------ helpers

    def _rows(
        self, index: dict[str, int], values: Mapping[str, Any], what: str
    ) -> tuple[np.ndarray, list[Any]]:
        rows = np.empty(len(values), dtype=np.int64)
        for k, eid in enumerate(values):
            row = index.get(eid)
            if row is None:
                raise NotFound(
                    f"{what} {eid!r} is not in feeder {self.feeder.id!r}; check the id", element_id=eid
                )
            rows[k] = row
        return rows, list(values.values())

    def _column(self, table: str, col: str) -> np.ndarray:
        return self._base[(table, col)].copy()

    # ------------------------------------------------------------------ solve

    def solve(
        self,
        *,
        switch_states: Mapping[str, bool] | None = None,
        load_scale: float = 1.0,
        load_p_mw: Mapping[str, float] | None = None,
        load_q_mvar: Mapping[str, float] | None = None,
        der_p_mw: Mapping[str, float] | None = None,
        der_q_mvar: Mapping[str, float] | None = None,
        tap_pos: Mapping[str, int] | None = None,
        capacitor_step: Mapping[str, int] | None = None,
        limits: Limits | None = None,
        out_of_service: Iterable[str] = (),
    ) -> PowerFlowResult:
        """Solve one operating state; see the module docstring for the conventions."""
        with self._lock:
            return self._solve(
                switch_states,
                load_scale,
                load_p_mw,
                load_q_mvar,
                der_p_mw,
                der_q_mvar,
                tap_pos,
                capacitor_step,
                limits or self.feeder.limits,
                out_of_service,
            )

    def _solve(
        self,
        switch_states: Mapping[str, bool] | None,
        load_scale: float,
        load_p_mw: Mapping[str, float] | None,
        load_q_mvar: Mapping[str, float] | None,
        der_p_mw: Mapping[str, float] | None,
        der_q_mvar: Mapping[str, float] | None,
        tap_pos: Mapping[str, int] | None,
        capacitor_step: Mapping[str, int] | None,
        limits: Limits,
        out_of_service: Iterable[str],
    ) -> PowerFlowResult:
        t0 = time.perf_counter()
        net = self._net
        cols: dict[tuple[str, str], np.ndarray] = {key: self._column(*key) for key in self._base}

        def override(
            key: tuple[str, str],
            index: dict[str, int],
            values: Mapping[str, Any] | None,
            what: str,
            transform: Any = None,
        ) -> None:
            if values:
                rows, vals = self._rows(index, values, what)
                arr = np.asarray(vals, dtype=cols[key].dtype)
                cols[key][rows] = arr if transform is None else transform(arr)

        override(("switch", "closed"), self._switch, switch_states, "switch", np.logical_not)
        override(("load", "p_mw"), self._load, load_p_mw, "load")
        override(("load", "q_mvar"), self._load, load_q_mvar, "load")
        override(("sgen", "p_mw"), self._der, der_p_mw, "DER")
        override(("sgen", "q_mvar"), self._der, der_q_mvar, "DER")
        override(("shunt", "step"), self._cap, capacitor_step, "capacitor")
        if tap_pos:
            rows, vals = self._rows(self._trafo, tap_pos, "transformer")
            cols[("trafo", "tap_pos")][rows] = vals
        if load_scale != 1.0:
            cols[("load", "p_mw")] *= load_scale
            cols[("load", "q_mvar")] *= load_scale
        for eid in out_of_service:
            where = self._where.get(eid)
            if where is None:
                raise NotFound(
                    f"element {eid!r} is not in feeder {self.feeder.id!r}; check the id", element_id=eid
                )
            table, row = where
            if table == "switch":
                cols[("switch", "closed")][row] = False
            else:
                cols[(table, "in_service")][row] = False
        for (table, col), arr in cols.items():
            # Writing a DataFrame column costs far more than comparing it: write only what differs.
            if not np.array_equal(net[table][col].to_numpy(), arr):
                net[table][col] = arr

        key = b"".join(cols[k].tobytes() for k in self._TOPOLOGY_COLUMNS) if self._warm_start else None
        init = "results" if key is not None and key == self._warm_key else "auto"
        self._warm_key = None
        if not cols[("ext_grid", "in_service")].any():
            return self._dead_result(t0, "no source is in service: every bus is de-energized")
        try:
            with quiet_warnings():
                pp.runpp(net, numba=False, init=init)
        except LoadflowNotConverged:
            return self._failed(
                t0,
                "power flow did not converge (Newton-Raphson, 10 iterations): the load is "
                "probably beyond what the network can carry; check load_scale and load "
                "overrides, DER set points and tap positions",
            )
        except Exception as exc:  # the solver must not take the actor down
            return self._failed(
                t0,
                f"power flow failed ({type(exc).__name__}: {exc}); check the feeder's "
                "parameters and the overrides passed to solve()",
            )
        self._warm_key = key
        return self._extract(t0, limits)

    def _failed(self, t0: float, reason: str) -> PowerFlowResult:
        return PowerFlowResult(
            converged=False,
            reason=reason,
            losses_mw=None,
            min_vm_pu=None,
            min_vm_bus_id=None,
            max_vm_pu=None,
            max_vm_bus_id=None,
            max_line_loading_percent=None,
            buses=(),
            lines=(),
            transformers=(),
            violations=(),
            p_source_mw=None,
            q_source_mvar=None,
            solve_time_s=time.perf_counter() - t0,
        )

    def _dead_result(self, t0: float, reason: str) -> PowerFlowResult:
        return PowerFlowResult(
            converged=True,
            reason=reason,
            losses_mw=0.0,
            min_vm_pu=None,
            min_vm_bus_id=None,
            max_vm_pu=None,
            max_vm_bus_id=None,
            max_line_loading_percent=0.0,
            buses=tuple(BusResult(b, None, None, False) for b in self._bus_ids),
            lines=tuple(LineResult(ln, 0.0, 0.0, 0.0, 0.0, 0.0) for ln in self._line_ids),
            transformers=tuple(TransformerResult(t, 0.0, 0.0) for t in self._trafo_ids),
            violations=(),
            p_source_mw=0.0,
            q_source_mvar=0.0,
            solve_time_s=time.perf_counter() - t0,
        )

    def _extract(self, t0: float, lim: Limits) -> PowerFlowResult:
        net = self._net
        vm = net.res_bus["vm_pu"].to_numpy(dtype=float)
        va = net.res_bus["va_degree"].to_numpy(dtype=float)
        energized = ~np.isnan(vm)
        bus_ids = self._bus_ids
        buses = ColumnarResults(BusResult, tuple(bus_ids), (vm, va, energized), (True, True, False))
        violations: list[Violation] = []
        min_vm = max_vm = None
        min_id = max_id = None
        if energized.any():
            vm_e = np.where(energized, vm, np.inf)
            i = int(np.argmin(vm_e))
            min_vm, min_id = float(vm[i]), bus_ids[i]
            vm_e = np.where(energized, vm, -np.inf)
            i = int(np.argmax(vm_e))
            max_vm, max_id = float(vm[i]), bus_ids[i]
            vm0 = np.where(energized, vm, 1.0)
            self._band(
                violations, "UNDERVOLTAGE", bus_ids, -vm0, -lim.vm_min_pu, -lim.emergency_vm_min_pu, sign=-1
            )
            self._band(violations, "OVERVOLTAGE", bus_ids, vm0, lim.vm_max_pu, lim.emergency_vm_max_pu)

        lines: Sequence[LineResult] = ()
        losses = 0.0
        max_loading: float | None = 0.0
        if self._line_ids:
            rl = net.res_line
            loading = np.nan_to_num(rl["loading_percent"].to_numpy(dtype=float))
            i_ka = np.nan_to_num(rl["i_ka"].to_numpy(dtype=float))
            # Below a microampere is the solver's rounding (an open tie shows 1e-16 kA with some
            # numpy/scipy builds, 0 with others): report it as the zero it is.
            i_ka = np.where(np.abs(i_ka) < NOISE_I_KA, 0.0, i_ka)
            p_from = np.nan_to_num(rl["p_from_mw"].to_numpy(dtype=float))
            q_from = np.nan_to_num(rl["q_from_mvar"].to_numpy(dtype=float))
            pl = np.nan_to_num(rl["pl_mw"].to_numpy(dtype=float))
            lines = ColumnarResults(LineResult, tuple(self._line_ids), (loading, i_ka, p_from, q_from, pl))
            losses += float(pl.sum())
            max_loading = float(loading.max())
            self._band(
                violations,
                "OVERLOAD",
                self._line_ids,
                loading,
                lim.max_loading_percent,
                lim.emergency_max_loading_percent,
            )
        trafos: Sequence[TransformerResult] = ()
        if self._trafo_ids:
            rt = net.res_trafo
            t_loading = np.nan_to_num(rt["loading_percent"].to_numpy(dtype=float))
            t_pl = np.nan_to_num(rt["pl_mw"].to_numpy(dtype=float))
            trafos = ColumnarResults(TransformerResult, tuple(self._trafo_ids), (t_loading, t_pl))
            losses += float(t_pl.sum())
            self._band(
                violations,
                "OVERLOAD",
                self._trafo_ids,
                t_loading,
                lim.max_loading_percent,
                lim.emergency_max_loading_percent,
            )
        reg = net.res_ext_grid
        p_src = float(np.nansum(reg["p_mw"].to_numpy(dtype=float)))
        q_src = float(np.nansum(reg["q_mvar"].to_numpy(dtype=float)))
        return PowerFlowResult(
            converged=True,
            reason=None,
            losses_mw=losses,
            min_vm_pu=min_vm,
            min_vm_bus_id=min_id,
            max_vm_pu=max_vm,
            max_vm_bus_id=max_id,
            max_line_loading_percent=max_loading,
            buses=buses,
            lines=lines,
            transformers=trafos,
            violations=tuple(violations),
            p_source_mw=p_src,
            q_source_mvar=q_src,
            solve_time_s=time.perf_counter() - t0,
        )

    @staticmethod
    def _band(
        out: list[Violation],
        kind: ViolationKind,
        ids: list[str],
        value: np.ndarray,
        normal: float,
        emergency: float,
        sign: int = 1,
    ) -> None:
        """Append violations where ``value`` > ``normal`` (worst band wins); ``sign`` undoes a negation."""
        for i in np.flatnonzero(value > normal).tolist():
            v = float(value[i])
            if v > emergency:
                out.append(Violation(kind, ids[i], sign * v, sign * emergency, "EMERGENCY"))
            else:
                out.append(Violation(kind, ids[i], sign * v, sign * normal, "NORMAL"))


def run_power_flow(feeder: Feeder, **kwargs: Any) -> PowerFlowResult:
    """One-shot solve: ``PowerFlowModel(feeder).solve(**kwargs)``."""
    return PowerFlowModel(feeder).solve(**kwargs)
