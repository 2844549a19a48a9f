"""Distribution state estimation (weighted least squares) with bad-data and topology-error tests.

A pure core: :class:`StateEstimator` owns a private pandapower net (through its own
:class:`~actors.cores.powerflow.PowerFlowModel`), takes typed :class:`Measurement` objects and
returns a frozen :class:`EstimationResult`. Nothing of the caller's is mutated; solver failures are
results (``converged=False`` with a ``reason``), not exceptions.

Method (Abur & Expósito, *Power System State Estimation*, ch. 2, 5 and 8):

* **Model**: pandapower's estimation algebra (``pp2eppci`` and ``BaseAlgebra``: h(x) and its sparse
  Jacobian H over polar states) with our own sparse Gauss-Newton loop. pandapower's
  ``estimate``/``remove_bad_data`` were measured and not used as they are: they turn H, G and R into
  dense matrices after every estimate and invert them (``np.linalg.inv``) for the normalized
  residuals, which on the 2,940-bus feeder costs seconds and gigabytes; the loop here stays sparse
  (``splu`` of the gain matrix) and computes normalized residuals only for real measurements.
* **Measurements**: bus voltage, line-head P/Q/I (from side), DER P, load P/Q. Load and DER values
  at one bus are summed into one bus-injection measurement (variances add). Buses without load or
  DER get a zero-injection virtual measurement (``ZERO``, sigma = 1e-4 MW). A source bus without a
  voltage measurement gets its set point as a pseudo-measurement (``SETPOINT``).
* **Pseudo-measurements**: load allocation from AMI, a forecast or a profile, each with its own sigma
  (:data:`DEFAULT_REL_STD`); they make the feeder numerically observable everywhere.
* **Observability, per bus**: the estimate's covariance is G⁻¹ (G = HᵀWH) and the variance of a
  bus's voltage splits exactly into the parts each measurement contributes
  (var_i = Σ_j w_j (H_j G⁻¹ e_i)²). ``pseudo_share`` is the part from pseudo-measurements;
  a bus with ``pseudo_share`` < 0.5 is *observed*. ``vm_std_pu`` is √var_i. Computing them costs a
  blocked solve per bus; it is skipped and the previous figures reused when the measurement
  structure (which points, the topology) did not change (``covariance_from``).
* **Bad data**: χ² test of J(x) = Σ w r² against χ²(m - n) at ``chi2_alpha``; when it fails, the
  largest normalized residual r_N = |r| / √Ω (Ω = R - H G⁻¹ Hᵀ) among real measurements above
  ``lnr_threshold`` identifies one bad measurement, which is removed and the estimate redone, up to
  ``max_bad`` times.
* **Topology errors**: a reported switch status is evidence like any measurement. The search runs
  when a real measurement contradicts the reported topology (a voltage of about 0 on a bus it
  energizes; a live voltage, flow or DER output where it leaves the bus or line dead: none can be
  fitted), when WLS does not converge, or when χ² fails. Each candidate switch (every reported one on a feeder of up to
  ``STATUS_TRY_ALL_BUSES`` buses, else the ``max_status_candidates`` nearest to the misfit) is
  toggled and the estimate redone the whole way (load allocation included: the pseudo loads are
  scaled in each topology to what the real measurements say there). A toggle that leaves no
  contradiction, brings J under the threshold and explains most of the misfit is reported as a
  suspected status error, and the estimate is the one with the corrected status (the reported
  status is never silently accepted). Two stories compete when χ² fails: one gross analog error or
  a wrong status. When leaving out one measurement (the largest normalized residual) mends the fit,
  a toggle must fit better than that, with every measurement kept, to be believed.
  Of toggles that fit about equally well (two switches on one line, any switch of the loop a
  closed tie makes) the one whose reported state departs from normal is named. Where the
  measurements cannot tell two topologies apart (a section back-fed through a tie, sensors on
  neither path) nothing is reported: that is the limit of observability, not a fit. The last fix is
  tried first on the next estimate, and a search that found nothing is not repeated while the
  reported topology and the place of the misfit stay the same.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any, Literal

import numpy as np
import pandas as pd

from actors.cores.powerflow import (
    BusResult,
    ColumnarResults,
    LineResult,
    PowerFlowModel,
    PowerFlowResult,
    TransformerResult,
    Violation,
)
from graph_schema.errors import NotFound
from graph_schema.model import Feeder, Limits
from graph_schema.quiet import quiet_warnings

MeasQuantity = Literal["VM_PU", "P_MW", "Q_MVAR", "I_KA"]


class MeasSource(StrEnum):
    """Where a measurement comes from; the pseudo ones only fill in where the feeder is not metered."""

    SCADA = "SCADA"  # RTU, line sensor, feeder-head relay
    DER = "DER"  # inverter telemetry
    AMI = "AMI"  # latest 15-minute meter intervals (pseudo)
    FORECAST = "FORECAST"  # load forecast (pseudo)
    PROFILE = "PROFILE"  # the model's load profile / historian same-time (pseudo)
    SETPOINT = "SETPOINT"  # a source's voltage set point (pseudo)
    ZERO = "ZERO"  # zero injection at a bus without load or DER (virtual, near exact)


PSEUDO_SOURCES = frozenset({MeasSource.AMI, MeasSource.FORECAST, MeasSource.PROFILE, MeasSource.SETPOINT})

# Standard deviation as a fraction of the value, by source, and the absolute floor by quantity.
DEFAULT_REL_STD: Mapping[MeasSource, float] = {
    MeasSource.SCADA: 0.01, MeasSource.DER: 0.03, MeasSource.AMI: 0.10, MeasSource.FORECAST: 0.25,
    MeasSource.PROFILE: 0.35, MeasSource.SETPOINT: 0.0, MeasSource.ZERO: 0.0,
}
STD_FLOOR: Mapping[str, float] = {"VM_PU": 0.004, "P_MW": 0.002, "Q_MVAR": 0.002, "I_KA": 0.001}
SETPOINT_VM_STD_PU = 0.01
ZERO_INJECTION_STD_MW = 1e-4


def default_std(quantity: MeasQuantity, value: float, source: MeasSource) -> float:
    """sigma of a measurement of ``source``: relative to the value, never under the quantity's floor."""
    if quantity == "VM_PU":
        return SETPOINT_VM_STD_PU if source is MeasSource.SETPOINT else STD_FLOOR["VM_PU"]
    return max(abs(value) * DEFAULT_REL_STD[source], STD_FLOOR[quantity])


@dataclass(frozen=True, slots=True)
class Measurement:
    """One value for the estimator. ``element_id`` names a bus (VM_PU), a line (P/Q/I at its from
    end), a DER (P_MW, Q_MVAR: output) or a load (P_MW, Q_MVAR: consumption)."""

    point_id: str
    quantity: MeasQuantity
    element_id: str
    value: float
    std: float
    source: MeasSource = MeasSource.SCADA

    @property
    def pseudo(self) -> bool:
        return self.source in PSEUDO_SOURCES


@dataclass(frozen=True, slots=True)
class SuspectMeasurement:
    """A measurement the bad-data test identified and left out."""

    point_ids: tuple[str, ...]
    quantity: str
    element_id: str
    value: float
    estimated: float
    residual: float
    normalized_residual: float


@dataclass(frozen=True, slots=True)
class SuspectStatus:
    """A switch whose reported status the measurements contradict."""

    switch_id: str
    reported_open: bool
    j_reported: float
    j_corrected: float


@dataclass(frozen=True, slots=True)
class BusEstimate:
    bus_id: str
    vm_pu: float | None
    vm_std_pu: float | None
    pseudo_share: float | None  # part of the voltage's variance from pseudo-measurements
    observed: bool


@dataclass(frozen=True, slots=True)
class EstimationResult:
    converged: bool
    reason: str | None
    power_flow: PowerFlowResult  # the estimated state in the power flow's shape (source ESTIMATED)
    buses: Sequence[BusEstimate]
    load_p_mw: Mapping[str, float]
    load_q_mvar: Mapping[str, float]
    measurements: int  # used in the final estimate (pseudo included)
    real_measurements: int
    pseudo_measurements: int
    chi2: float | None
    chi2_threshold: float | None
    bad_data: tuple[SuspectMeasurement, ...]
    status_suspects: tuple[SuspectStatus, ...]
    switch_states: Mapping[str, bool]  # the topology of the estimate
    iterations: int
    estimate_time_s: float
    covariance_time_s: float
    structure_key: str = ""
    stale: bool = False
    stale_reason: str | None = None
    pseudo_sources: Mapping[str, int] = field(default_factory=dict)

    @property
    def observed_bus_count(self) -> int:
        return sum(1 for b in self.buses if b.observed)

    def bus(self, bus_id: str) -> BusEstimate | None:
        for b in self.buses:
            if b.bus_id == bus_id:
                return b
        return None


@dataclass(slots=True)
class _Wls:
    """One converged WLS run (internal)."""

    ok: bool
    reason: str | None
    E: np.ndarray
    r: np.ndarray  # residuals z - h(x), in the estimator's units (pu)
    w: np.ndarray  # weights 1/sigma² (pu)
    H: Any
    lu: Any
    eppci: Any
    ppc: Any
    net: Any
    rows: list[int]  # eppci row -> our measurement row
    iterations: int
    j: float


class StateEstimator:
    """WLS state estimation of one feeder (see the module docstring)."""

    def __init__(self, feeder: Feeder) -> None:
        self.feeder = feeder
        self._pf = PowerFlowModel(feeder)
        self._bus = {b.id: i for i, b in enumerate(feeder.buses)}
        self._line = {ln.id: i for i, ln in enumerate(feeder.lines)}
        self._load_bus = {ld.id: self._bus[ld.bus_id] for ld in feeder.loads}
        self._der_bus = {d.id: self._bus[d.bus_id] for d in feeder.ders}
        self._source_buses = {self._bus[s.bus_id]: s for s in feeder.sources}
        self._switch_ids = [s.id for s in feeder.switches]
        self._switch_bus = {s.id: self._bus[s.bus_id] for s in feeder.switches}
        self._normally_open = {s.id: s.normally_open for s in feeder.switches}
        # reported states -> the switch whose toggle fitted last time; searches that found nothing
        self._status_fix: dict[frozenset[tuple[str, bool]], str] = {}
        self._status_nothing: set[tuple[frozenset[tuple[str, bool]], frozenset[int], tuple[str, ...], bool]] = set()
        self._capacitor_step: dict[str, int] | None = None

    # ------------------------------------------------------------------ public

    def estimate(
        self,
        measurements: Sequence[Measurement],
        *,
        switch_states: Mapping[str, bool] | None = None,
        tap_pos: Mapping[str, int] | None = None,
        capacitor_step: Mapping[str, int] | None = None,
        chi2_alpha: float = 0.01,
        lnr_threshold: float = 3.0,
        max_bad: int = 5,
        status_candidates: Sequence[str] = (),
        max_status_candidates: int = 12,
        max_iterations: int = 30,
        tolerance: float = 1e-6,
        covariance: bool = True,
        covariance_from: EstimationResult | None = None,
        limits: Limits | None = None,
        allocate: bool = True,
        reuse_any_covariance: bool = False,
    ) -> EstimationResult:
        t0 = time.perf_counter()
        states = dict(switch_states or {})
        for m in measurements:
            self._check(m)
        self._capacitor_step = dict(capacitor_step) if capacitor_step else None  # every solve of this run
        base = self._solve_at(states, tap_pos)  # topology + a warm start
        if not base.converged or not base.buses:
            return self._failed(t0, f"the model's power flow for this topology failed ({base.reason}); "
                                    "no estimate", states)
        _, conflicts, run, table, groups = self._fit(measurements, allocate, max_iterations, tolerance)
        thr = self._threshold(run, chi2_alpha) if run.ok else None
        status: list[SuspectStatus] = []
        cleaned = None
        j_cap = None
        if run.ok and not conflicts and thr is not None and run.j > thr:
            # Two stories compete: one gross analog error, or a wrong status. When leaving out a single
            # measurement mends the fit, a status toggle must fit better than that, with every
            # measurement kept, to be believed.
            cleaned = self._remove_bad(run, table, groups, max_bad, lnr_threshold, chi2_alpha, max_iterations,
                                       tolerance)
            if len(cleaned[3]) == 1 and cleaned[4] is None and cleaned[1].j <= (cleaned[2] or math.inf):
                j_cap = cleaned[1].j
        # Topology: a dead voltage where the reported switch states energize the bus, a live one where
        # they do not, a fit that does not converge or fails the chi-square test.
        if status_candidates and (conflicts or not run.ok or cleaned is not None):
            origin = {b for b, _ in conflicts} or (self._worst_buses(run, table, groups) if run.ok else set())
            found = self._status_search(measurements, origin, run.j if run.ok and not conflicts else None, states,
                                        tap_pos, status_candidates, max_status_candidates, allocate,
                                        max_iterations, tolerance, chi2_alpha, j_cap)
            if found is not None:
                sw, j_corrected = found
                status.append(SuspectStatus(sw, bool(states.get(sw, False)),
                                            run.j if run.ok else math.inf, j_corrected))
                states[sw] = not states.get(sw, False)
                self._solve_at(states, tap_pos)
                _, conflicts, run, table, groups = self._fit(measurements, allocate, max_iterations, tolerance)
                cleaned = None
        if not run.ok:
            return self._failed(t0, run.reason, states)
        if cleaned is None:
            cleaned = self._remove_bad(run, table, groups, max_bad, lnr_threshold, chi2_alpha, max_iterations,
                                       tolerance)
        table, run, thr, bad, reason = cleaned
        if reason is not None:
            return self._failed(t0, reason, states)
        t_est = time.perf_counter() - t0
        key = self._structure_key(table, states)
        t1 = time.perf_counter()
        if covariance_from is not None and covariance_from.buses and (
                reuse_any_covariance or covariance_from.structure_key == key):
            prev = {b.bus_id: b for b in covariance_from.buses}
            std = np.array([prev[b.id].vm_std_pu if prev.get(b.id) and prev[b.id].vm_std_pu is not None
                            else np.nan for b in self.feeder.buses])
            share = np.array([prev[b.id].pseudo_share if prev.get(b.id) and prev[b.id].pseudo_share is not None
                              else np.nan for b in self.feeder.buses])
        elif covariance:
            std, share = self._covariance(run, table, groups)
        else:
            std = share = np.full(len(self.feeder.buses), np.nan)
        t_cov = time.perf_counter() - t1
        return self._result(run, table, groups, states, thr, bad, status, std, share, t_est, t_cov, key,
                            limits or self.feeder.limits, t0)

    # ------------------------------------------------------------------ measurements

    def _check(self, m: Measurement) -> None:
        known = {"VM_PU": (self._bus,), "I_KA": (self._line,), "P_MW": (self._line, self._der_bus, self._load_bus),
                 "Q_MVAR": (self._line, self._der_bus, self._load_bus)}[m.quantity]
        if not any(m.element_id in k for k in known):
            raise NotFound(f"measurement {m.point_id!r}: {m.quantity} of {m.element_id!r} does not fit an element of "
                           f"feeder {self.feeder.id!r}; fix the point map", element_id=m.element_id)
        if not (math.isfinite(m.value) and math.isfinite(m.std) and m.std > 0):
            raise ValueError(f"measurement {m.point_id!r}: value and a positive sigma must be finite numbers")

    def _on_energized(self, m: Measurement, energized: np.ndarray) -> bool:
        if m.quantity == "VM_PU":
            return bool(energized[self._bus[m.element_id]])
        if m.element_id in self._line:
            ln = self.feeder.lines[self._line[m.element_id]]
            return bool(energized[self._bus[ln.from_bus_id]] and energized[self._bus[ln.to_bus_id]])
        b = self._der_bus.get(m.element_id, self._load_bus.get(m.element_id))
        return b is not None and bool(energized[b])

    def _table(self, meas: Sequence[Measurement],
               energized: np.ndarray) -> tuple[pd.DataFrame, list[list[Measurement]]]:
        """pandapower's measurement table (one row per estimator measurement) and, per row, the
        measurements it stands for (a bus injection sums a bus's loads and DERs)."""
        rows: list[tuple[str, str, int, float, float, str | None]] = []
        groups: list[list[Measurement]] = []
        inj: dict[tuple[int, str], list[Measurement]] = defaultdict(list)
        vm_buses: set[int] = set()
        # A line's current is left out where its P or Q is measured: it adds little and its
        # derivative vanishes near zero flow, which stalls the fit on lightly loaded lines.
        pq_lines = {m.element_id for m in meas if m.quantity in ("P_MW", "Q_MVAR") and m.element_id in self._line}
        meas = [m for m in meas if not (m.quantity == "I_KA" and m.element_id in pq_lines)]
        for m in meas:
            if m.quantity == "VM_PU":
                b = self._bus[m.element_id]
                vm_buses.add(b)
                rows.append(("v", "bus", b, m.value, m.std, None))
                groups.append([m])
            elif m.element_id in self._line:
                kind = {"P_MW": "p", "Q_MVAR": "q", "I_KA": "i"}[m.quantity]
                rows.append((kind, "line", self._line[m.element_id], m.value, m.std, "from"))
                groups.append([m])
            else:
                b = self._der_bus.get(m.element_id, self._load_bus.get(m.element_id))
                assert b is not None
                inj[(b, "p" if m.quantity == "P_MW" else "q")].append(m)
        for (b, kind), ms in sorted(inj.items()):
            # pandapower's bus measurements are in the load convention: consumption positive
            value = sum(-m.value if m.element_id in self._der_bus else m.value for m in ms)
            std = math.sqrt(sum(m.std ** 2 for m in ms))
            rows.append((kind, "bus", b, value, std, None))
            groups.append(list(ms))
        for b in np.flatnonzero(energized).tolist():
            if b in self._source_buses:
                if b not in vm_buses:
                    s = self._source_buses[b]
                    m = Measurement(f"{s.id}/VM_PU", "VM_PU", self.feeder.buses[b].id, s.vm_pu, SETPOINT_VM_STD_PU,
                                    MeasSource.SETPOINT)
                    rows.append(("v", "bus", b, m.value, m.std, None))
                    groups.append([m])
                continue
            for kind in ("p", "q"):
                if (b, kind) not in inj:
                    bid = self.feeder.buses[b].id
                    m = Measurement(f"{bid}/ZERO_{kind.upper()}", "P_MW" if kind == "p" else "Q_MVAR", bid, 0.0,
                                    ZERO_INJECTION_STD_MW, MeasSource.ZERO)
                    rows.append((kind, "bus", b, 0.0, ZERO_INJECTION_STD_MW, None))
                    groups.append([m])
        df = pd.DataFrame(rows, columns=["measurement_type", "element_type", "element", "value", "std_dev", "side"])
        df.insert(0, "name", None)
        df["element"] = df["element"].astype("uint32")
        return df, groups

    # ------------------------------------------------------------------ WLS

    def _wls(self, net: Any, table: pd.DataFrame, max_iterations: int, tolerance: float) -> _Wls:
        from pandapower.estimation.algorithm.matrix_base import BaseAlgebra
        from pandapower.estimation.ppc_conversion import pp2eppci
        from scipy.sparse import csr_matrix, diags
        from scipy.sparse.linalg import splu

        net.measurement = table.reset_index(drop=True)
        try:
            with quiet_warnings():
                net, ppc, eppci = pp2eppci(net, v_start="results", delta_start="results",
                                           calculate_voltage_angles=True, zero_injection=None)
                sem = BaseAlgebra(eppci)
                E = eppci.E.copy()
                r_cov = np.maximum(eppci.r_cov.astype(float), 1e-5)
                w = 1.0 / r_cov ** 2
                W = diags(w)
                it, err, lu, H, r = 0, np.inf, None, None, None
                while it < max_iterations:
                    r = np.asarray(sem.create_rx(E), dtype=float).ravel()
                    H = csr_matrix(sem.create_hx_jacobian(E))
                    G = (H.T @ (W @ H)).tocsc()
                    lu = splu(G)
                    d = lu.solve(H.T @ (w * r))
                    err = float(np.max(np.abs(d)))
                    if err > 0.35:  # a step that large is damped (as pandapower does)
                        d *= 0.35 / err
                    E = E + d
                    eppci.update_E(E)
                    it += 1
                    if err < tolerance:
                        break
        except Exception as exc:  # singular gain matrix, bad input to pandapower: a result, not a crash
            return _Wls(False, f"estimator failed ({type(exc).__name__}: {exc}); the measurement set is probably "
                               "not enough for this topology", np.empty(0), np.empty(0), np.empty(0), None, None,
                        None, None, net, [], 0, math.inf)
        if err >= tolerance or not np.all(np.isfinite(E)):
            return _Wls(False, f"estimator did not converge in {it} iterations (largest state step {err:.2e}); "
                               "check for gross errors in the measurements and the switch states", E,
                        np.empty(0), np.empty(0), None, None, None, None, net, [], it, math.inf)
        r = np.asarray(sem.create_rx(E), dtype=float).ravel()
        rows = self._z_rows(net, eppci, table, np.asarray(eppci.pp_meas_indices, dtype=float).ravel())
        return _Wls(True, None, E, r, w, H, lu, eppci, ppc, net, rows, it, float(np.sum(w * r * r)))

    @staticmethod
    def _z_rows(net: Any, eppci: Any, table: pd.DataFrame, pp_idx: np.ndarray) -> list[int]:
        """Row (position in ``table``) of each entry of z; -1 for pandapower's own zero-injection
        entries at auxiliary buses. pandapower's ``pp_meas_indices`` leaves bus-injection entries
        NaN (3.5) where it adds those, so bus entries are placed here: z holds bus P, bus Q (ppci bus
        order), branch flows, bus V (ppci bus order), then currents."""
        from pandapower.estimation.idx_bus import VM, P, Q
        from pandapower.pypower.idx_bus import bus_cols

        lookup = np.asarray(net._pd2ppc_lookups["bus"])
        kinds = table["measurement_type"].to_numpy()
        etype = table["element_type"].to_numpy()
        elem = table["element"].to_numpy().astype(np.int64)
        ppci_bus = eppci.data["bus"]

        def bus_rows(kind: str, col: int) -> list[int]:
            pos = np.flatnonzero((kinds == kind) & (etype == "bus"))
            at = {int(lookup[elem[i]]): int(i) for i in pos}
            return [at.get(int(b), -1) for b in np.flatnonzero(~np.isnan(ppci_bus[:, bus_cols + col]))]

        p, q, v = bus_rows("p", P), bus_rows("q", Q), bus_rows("v", VM)
        n_flow = int(np.sum((etype != "bus") & (kinds != "i")))
        head = p + q
        flows = [int(x) for x in pp_idx[len(head): len(head) + n_flow]]
        rest = [int(x) for x in pp_idx[len(head) + n_flow + len(v):]]
        return head + flows + v + rest

    def _allocated(self, run: _Wls, table: pd.DataFrame, groups: list[list[Measurement]],
                   meas: list[Measurement]) -> list[Measurement]:
        """The pseudo loads times one factor per quantity (P, Q): the estimated consumption of the
        buses that only pseudo-measurements describe over what those pseudo-measurements said
        (a first estimate's residuals; clamped to 0.2..5). Real measurements are unchanged."""
        idx = table.index.to_numpy()
        kinds = table["measurement_type"].to_numpy()
        etype = table["element_type"].to_numpy()
        factor: dict[str, float] = {}
        values = table["value"].to_numpy(dtype=float)
        sn = float(self._pf._net.sn_mva)
        pseudo_load = [all(m.pseudo and m.element_id in self._load_bus for m in g) for g in groups]
        for kind, q in (("p", "P_MW"), ("q", "Q_MVAR")):
            z_sum = est_sum = 0.0
            for k, row in enumerate(run.rows[: len(run.r)]):
                if row < 0 or kinds[row] != kind or etype[row] != "bus" or not pseudo_load[int(idx[row])]:
                    continue
                z_sum += values[row]
                # z is pandapower's injection (-consumption / sn): consumption estimated = value + r sn
                est_sum += values[row] + float(run.r[k]) * sn
            if abs(z_sum) > 1e-9:
                factor[q] = min(5.0, max(0.2, est_sum / z_sum))
        out = []
        for m in meas:
            f = factor.get(m.quantity)
            if f is not None and m.pseudo and m.element_id in self._load_bus:
                m = replace(m, value=m.value * f, std=max(m.std * f, STD_FLOOR[m.quantity]))
            out.append(m)
        return out

    @staticmethod
    def _threshold(run: _Wls, alpha: float) -> float | None:
        from scipy.stats import chi2

        dof = len(run.r) - len(run.E)
        return float(chi2.ppf(1.0 - alpha, dof)) if dof > 0 else None

    def _real_rows(self, run: _Wls, table: pd.DataFrame, groups: list[list[Measurement]]) -> list[int]:
        idx = table.index.to_numpy()
        out = []
        for k, row in enumerate(run.rows):
            if k >= len(run.r):
                break
            if row < 0:
                continue
            g = groups[int(idx[row])]
            if any(m.source in (MeasSource.SCADA, MeasSource.DER) for m in g):
                out.append(k)
        return out

    def _largest_normalized_residual(self, run: _Wls, table: pd.DataFrame,
                                     groups: list[list[Measurement]]) -> tuple[Any, float] | None:
        ks = self._real_rows(run, table, groups)
        if not ks:
            return None
        Hk = run.H[ks, :].toarray()
        X = run.lu.solve(np.ascontiguousarray(Hk.T))
        hgh = np.einsum("ij,ji->i", Hk, X)
        omega = np.maximum(1.0 / run.w[ks] - hgh, 1e-12)
        rn = np.abs(run.r[ks]) / np.sqrt(omega)
        j = int(np.argmax(rn))
        return table.index[run.rows[ks[j]]], float(rn[j])

    def _suspect(self, run: _Wls, table: pd.DataFrame, groups: list[list[Measurement]], row: Any,
                 rn: float) -> SuspectMeasurement:
        g = [m for m in groups[int(row)] if m.source in (MeasSource.SCADA, MeasSource.DER)] or groups[int(row)]
        k = run.rows.index(int(table.index.get_loc(row)))
        scale = self._unit_scale(table.loc[row])
        value = float(table.loc[row, "value"])
        residual = float(run.r[k]) * scale
        m0 = g[0]
        sign = -1.0 if m0.element_id in self._der_bus else 1.0
        return SuspectMeasurement(tuple(m.point_id for m in g), m0.quantity, m0.element_id, m0.value,
                                  m0.value - sign * residual if len(g) == 1 else value - residual,
                                  sign * residual, rn)

    def _unit_scale(self, row: pd.Series) -> float:
        """Residuals are in per unit: MW/MVAr on the net's base, kA on the bus's base current."""
        kind = row["measurement_type"]
        if kind == "v":
            return 1.0
        sn = float(self._pf._net.sn_mva)
        if kind == "i":
            ln = self.feeder.lines[int(row["element"])]
            vn = self.feeder.buses[self._bus[ln.from_bus_id]].vn_kv
            return sn / (math.sqrt(3) * vn)
        return sn

    # Below this size every reported status is tried when the fit fails; above it the nearest
    # ``max_status_candidates`` to the misfit (each trial costs a power flow and an estimate).
    STATUS_TRY_ALL_BUSES = 200
    STATUS_J_MARGIN = 2.71  # chi-square, 1 degree of freedom, 90 %
    DEAD_VM_PU = 0.3  # a voltage under this is a dead bus (a sensor on a de-energized section reads ~0)
    LIVE_SIGMAS = 5.0  # a flow or output this many sigma from 0 is live

    def _remove_bad(self, run: _Wls, table: pd.DataFrame, groups: list[list[Measurement]], max_bad: int,
                    lnr_threshold: float, alpha: float, max_iterations: int, tolerance: float,
                    ) -> tuple[pd.DataFrame, _Wls, float | None, list[SuspectMeasurement], str | None]:
        """Largest-normalized-residual removal while chi-square fails: (table, run, threshold, the
        measurements removed, the reason when an estimate without them failed)."""
        net = run.net
        thr = self._threshold(run, alpha)
        bad: list[SuspectMeasurement] = []
        while thr is not None and run.j > thr and len(bad) < max_bad:
            found = self._largest_normalized_residual(run, table, groups)
            if found is None or found[1] < lnr_threshold:
                break
            row, rn = found
            bad.append(self._suspect(run, table, groups, row, rn))
            table = table.drop(index=row)
            run = self._wls(net, table, max_iterations, tolerance)
            if not run.ok:
                return table, run, thr, bad, f"{run.reason} (after removing {len(bad)} bad measurement(s))"
            thr = self._threshold(run, alpha)
        return table, run, thr, bad, None

    def _fit(self, measurements: Sequence[Measurement], allocate: bool, max_iterations: int, tolerance: float,
             ) -> tuple[np.ndarray, list[tuple[int, str]], _Wls, pd.DataFrame, list[list[Measurement]]]:
        """One estimate in the topology the net was last solved in: the energized buses, the voltage
        measurements that contradict them, and the WLS run (after load allocation: pseudo loads
        scaled to what the real measurements say, then estimated again)."""
        net = self._pf._net
        energized = ~np.isnan(net.res_bus["vm_pu"].to_numpy(dtype=float))
        conflicts = self._conflicts(measurements, energized)
        meas = [m for m in measurements if self._on_energized(m, energized)]
        table, groups = self._table(meas, energized)
        run = self._wls(net, table, max_iterations, tolerance)
        if run.ok and allocate:
            meas = self._allocated(run, table, groups, meas)
            table, groups = self._table(meas, energized)
            run = self._wls(net, table, max_iterations, tolerance)
        return energized, conflicts, run, table, groups

    def _conflicts(self, measurements: Sequence[Measurement], energized: np.ndarray) -> list[tuple[int, str]]:
        """Real measurements that contradict the topology: a voltage of about 0 on a bus the switch
        states energize, a live voltage, or a flow or DER output well above its sigma, where they leave
        the bus or line dead. Each is evidence of a wrong status, and none can be fitted (the first
        makes WLS diverge; the others would be left out, which is how a toggle could hide bad data)."""
        out = []
        for m in measurements:
            if m.pseudo or m.source is MeasSource.ZERO:
                continue
            if m.quantity == "VM_PU":
                b = self._bus[m.element_id]
                if bool(energized[b]) != (m.value >= self.DEAD_VM_PU):
                    out.append((b, m.point_id))
            elif abs(m.value) > self.LIVE_SIGMAS * m.std and not self._on_energized(m, energized):
                if m.element_id in self._line:
                    b = self._bus[self.feeder.lines[self._line[m.element_id]].from_bus_id]
                else:
                    b = self._der_bus.get(m.element_id, self._load_bus.get(m.element_id, -1))
                if b >= 0:
                    out.append((b, m.point_id))
        return out

    def _worst_buses(self, run: _Wls, table: pd.DataFrame, groups: list[list[Measurement]], k: int = 3) -> set[int]:
        """Where the fit is worst: the buses of the ``k`` real measurements with the largest weighted residual."""
        ks = self._real_rows(run, table, groups) or list(range(len(run.r)))
        out: set[int] = set()
        for j in sorted(ks, key=lambda j: run.w[j] * run.r[j] ** 2, reverse=True)[:k]:
            row = table.loc[table.index[run.rows[j]]]
            if row["element_type"] == "line":
                ln = self.feeder.lines[int(row["element"])]
                out |= {self._bus[ln.from_bus_id], self._bus[ln.to_bus_id]}
            else:
                out.add(int(row["element"]))
        return out

    def _solve_at(self, states: Mapping[str, bool], tap_pos: Mapping[str, int] | None) -> Any:
        """The model's power flow in this topology at the reported tap positions and capacitor steps
        (the network the fit linearizes: a bank's steps are in its admittance)."""
        return self._pf.solve(switch_states=states, tap_pos=tap_pos, capacitor_step=self._capacitor_step)

    def _status_search(self, measurements: Sequence[Measurement], origin: set[int], j_reported: float | None,
                       states: dict[str, bool], tap_pos: Mapping[str, int] | None, candidates: Sequence[str],
                       limit: int, allocate: bool, max_iterations: int, tolerance: float,
                       alpha: float, j_cap: float | None = None) -> tuple[str, float] | None:
        """Toggle one reported switch status at a time (all of them on a small feeder, else the nearest
        to the misfit first) and keep the toggle that fits best: no topology contradiction left, J
        under the chi-square threshold, and (when the reported topology fitted at all) most of its
        misfit explained. Leaves the net in the reported topology; returns (switch, J) or None."""
        cands = [s for s in dict.fromkeys(candidates) if s in self._switch_bus]
        if origin:
            hops = self._hops(origin)
            cands.sort(key=lambda s: hops.get(self._switch_bus[s], 10**9))
        if len(self.feeder.buses) > self.STATUS_TRY_ALL_BUSES:
            cands = cands[:limit]
        # The live feeder re-estimates every scan burst while a status stays wrong: the last fix for the
        # same reported topology is tried first (and kept while it fits), and a search that found
        # nothing is not repeated until the reported topology or the place of the misfit changes.
        reported = frozenset(states.items())
        last = self._status_fix.get(reported)
        if last is not None:
            best = self._status_trials(measurements, [last], j_reported, states, tap_pos, allocate,
                                       max_iterations, tolerance, alpha, j_cap)
            if best is not None:
                return best
            del self._status_fix[reported]  # it no longer fits: search again
        nothing_key = (reported, frozenset(origin), tuple(cands), j_cap is None)
        if nothing_key in self._status_nothing:
            return None
        best = self._status_trials(measurements, cands, j_reported, states, tap_pos, allocate, max_iterations,
                                   tolerance, alpha, j_cap)
        if len(self._status_fix) + len(self._status_nothing) > 64:
            self._status_fix.clear()
            self._status_nothing.clear()
        if best is None:
            self._status_nothing.add(nothing_key)
        else:
            self._status_fix[reported] = best[0]
        return best

    def _status_trials(self, measurements: Sequence[Measurement], cands: Sequence[str], j_reported: float | None,
                       states: dict[str, bool], tap_pos: Mapping[str, int] | None, allocate: bool,
                       max_iterations: int, tolerance: float, alpha: float,
                       j_cap: float | None = None) -> tuple[str, float] | None:
        best: tuple[str, float] | None = None
        for sw in cands:
            trial = dict(states)
            trial[sw] = not trial.get(sw, False)
            base = self._solve_at(trial, tap_pos)
            if not base.converged or not base.buses:
                continue
            _, conflicts, r2, _, g2 = self._fit(measurements, allocate, max_iterations, tolerance)
            if conflicts or not r2.ok or not self._real_rows_any(g2):
                continue
            thr = self._threshold(r2, alpha)
            if thr is None or r2.j > thr or (j_reported is not None and r2.j >= 0.5 * j_reported) \
                    or (j_cap is not None and r2.j >= j_cap):
                continue
            # Toggles that fit about equally well (J within what one degree of freedom explains at
            # 90 %, e.g. two switches on one line, or any switch of a loop a closed tie would make):
            # the one whose reported status departs from its normal position is the likelier liar.
            same = best is not None and abs(r2.j - best[1]) <= max(self.STATUS_J_MARGIN, 0.1 * best[1])
            if best is None or (r2.j < best[1] and not same) or (
                    same and self._abnormal(sw, states) and not self._abnormal(best[0], states)):
                best = (sw, r2.j)
        self._solve_at(states, tap_pos)  # back to the reported topology
        return best

    def _abnormal(self, sw: str, states: Mapping[str, bool]) -> bool:
        return bool(states.get(sw, False)) != self._normally_open.get(sw, False)

    @staticmethod
    def _real_rows_any(groups: list[list[Measurement]]) -> bool:
        return any(m.source in (MeasSource.SCADA, MeasSource.DER) for g in groups for m in g)

    def _hops(self, origin: set[int]) -> dict[int, int]:
        adj: dict[int, list[int]] = defaultdict(list)
        for ln in self.feeder.lines:
            a, b = self._bus[ln.from_bus_id], self._bus[ln.to_bus_id]
            adj[a].append(b)
            adj[b].append(a)
        for t in self.feeder.transformers:
            a, b = self._bus[t.hv_bus_id], self._bus[t.lv_bus_id]
            adj[a].append(b)
            adj[b].append(a)
        dist = dict.fromkeys(origin, 0)
        frontier = list(origin)
        while frontier:
            nxt = []
            for u in frontier:
                for v in adj[u]:
                    if v not in dist:
                        dist[v] = dist[u] + 1
                        nxt.append(v)
            frontier = nxt
        return dist

    # ------------------------------------------------------------------ covariance

    def _covariance(self, run: _Wls, table: pd.DataFrame, groups: list[list[Measurement]],
                    block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """√diag(G⁻¹) for the voltage states of the model's buses and the pseudo part of each variance."""
        nbus = len(self.feeder.buses)
        std = np.full(nbus, np.nan)
        share = np.full(nbus, np.nan)
        lookup = np.asarray(self._pf._net._pd2ppc_lookups["bus"])[:nbus]
        nv = len(run.eppci.v)
        ns = len(run.E) - nv
        ok = np.flatnonzero((lookup >= 0) & (lookup < nv))
        pseudo_rows = np.array([r >= 0 and all(m.pseudo for m in groups[int(table.index[r])])
                                for r in run.rows[: len(run.r)]], dtype=bool)
        w = run.w
        for s in range(0, len(ok), block):
            buses = ok[s: s + block]
            B = np.zeros((len(run.E), len(buses)))
            B[ns + lookup[buses], np.arange(len(buses))] = 1.0
            X = run.lu.solve(B)
            HX = run.H @ X
            contrib = w[:, None] * HX * HX
            var = contrib.sum(axis=0)
            std[buses] = np.sqrt(np.maximum(var, 0.0))
            share[buses] = np.where(var > 0, contrib[pseudo_rows].sum(axis=0) / np.where(var > 0, var, 1.0), 1.0)
        return std, share

    # ------------------------------------------------------------------ results

    def _structure_key(self, table: pd.DataFrame, states: Mapping[str, bool]) -> str:
        """Which quantities on which elements, and the topology: what the covariance mostly depends
        on (the sigmas move with the values; callers recompute it now and then anyway)."""
        h = hashlib.blake2b(digest_size=12)
        h.update(pd.util.hash_pandas_object(table[["measurement_type", "element_type", "element"]],
                                            index=False).to_numpy().tobytes())
        h.update(repr(sorted(states.items())).encode())
        return h.hexdigest()

    def _failed(self, t0: float, reason: str | None, states: Mapping[str, bool]) -> EstimationResult:
        pf = PowerFlowResult(False, reason, None, None, None, None, None, None, (), (), (), (), None, None,
                             time.perf_counter() - t0)
        return EstimationResult(False, reason, pf, (), {}, {}, 0, 0, 0, None, None, (), (), dict(states), 0,
                                time.perf_counter() - t0, 0.0)

    def _result(self, run: _Wls, table: pd.DataFrame, groups: list[list[Measurement]], states: Mapping[str, bool],
                thr: float | None, bad: list[SuspectMeasurement], status: list[SuspectStatus], std: np.ndarray,
                share: np.ndarray, t_est: float, t_cov: float, key: str, lim: Limits, t0: float) -> EstimationResult:
        from pandapower.estimation.results import eppci2pp

        net = self._pf._net
        with quiet_warnings():
            eppci2pp(net, run.ppc, run.eppci)
        rb = net.res_bus_est
        vm = rb["vm_pu"].to_numpy(dtype=float).copy()
        energized = ~np.isnan(net.res_bus["vm_pu"].to_numpy(dtype=float))
        vm[~energized] = np.nan
        va = rb["va_degree"].to_numpy(dtype=float).copy()
        va[~energized] = np.nan
        bus_ids = tuple(b.id for b in self.feeder.buses)
        buses_pf = ColumnarResults(BusResult, bus_ids, (vm, va, energized), (True, True, False))
        viol: list[Violation] = []
        band = PowerFlowModel._band
        e_idx = np.flatnonzero(energized)
        i_min = e_idx[int(np.argmin(vm[e_idx]))] if len(e_idx) else None
        i_max = e_idx[int(np.argmax(vm[e_idx]))] if len(e_idx) else None
        vm0 = np.where(energized, vm, 1.0)
        band(viol, "UNDERVOLTAGE", list(bus_ids), -vm0, -lim.vm_min_pu, -lim.emergency_vm_min_pu, sign=-1)
        band(viol, "OVERVOLTAGE", list(bus_ids), vm0, lim.vm_max_pu, lim.emergency_vm_max_pu)
        lines: Sequence[LineResult] = ()
        losses = 0.0
        max_loading = 0.0
        if self.feeder.lines:
            rl = net.res_line_est
            loading = np.nan_to_num(rl["loading_percent"].to_numpy(dtype=float))
            cols = [np.nan_to_num(rl[c].to_numpy(dtype=float)) for c in ("i_ka", "p_from_mw", "q_from_mvar", "pl_mw")]
            lines = ColumnarResults(LineResult, tuple(ln.id for ln in self.feeder.lines), (loading, *cols))
            losses += float(cols[3].sum())
            max_loading = float(loading.max())
            band(viol, "OVERLOAD", [ln.id for ln in self.feeder.lines], loading, lim.max_loading_percent,
                 lim.emergency_max_loading_percent)
        trafos: Sequence[TransformerResult] = ()
        if self.feeder.transformers:
            rt = net.res_trafo_est
            tl = np.nan_to_num(rt["loading_percent"].to_numpy(dtype=float))
            tpl = np.nan_to_num(rt["pl_mw"].to_numpy(dtype=float))
            trafos = ColumnarResults(TransformerResult, tuple(t.id for t in self.feeder.transformers), (tl, tpl))
            losses += float(tpl.sum())
            band(viol, "OVERLOAD", [t.id for t in self.feeder.transformers], tl, lim.max_loading_percent,
                 lim.emergency_max_loading_percent)
        p_bus = np.nan_to_num(rb["p_mw"].to_numpy(dtype=float))
        q_bus = np.nan_to_num(rb["q_mvar"].to_numpy(dtype=float))
        src = list(self._source_buses)
        p_src = float(-p_bus[src].sum()) if src else None
        q_src = float(-q_bus[src].sum()) if src else None
        pf = PowerFlowResult(True, None, losses, float(vm[i_min]) if i_min is not None else None,
                             bus_ids[i_min] if i_min is not None else None,
                             float(vm[i_max]) if i_max is not None else None,
                             bus_ids[i_max] if i_max is not None else None, max_loading, buses_pf, lines, trafos,
                             tuple(viol), p_src, q_src, t_est)
        # loads: the estimated injection at their bus (plus the DER there), shared as their pseudo values were
        used = {int(i) for i in table.index}
        pseudo_p: dict[str, float] = {}
        pseudo_q: dict[str, float] = {}
        ders_at: dict[int, float] = defaultdict(float)
        for i in used:
            for m in groups[i]:
                if m.element_id in self._load_bus:
                    (pseudo_p if m.quantity == "P_MW" else pseudo_q)[m.element_id] = m.value
                elif m.element_id in self._der_bus and m.quantity == "P_MW":
                    ders_at[self._der_bus[m.element_id]] += m.value
        load_p: dict[str, float] = {}
        load_q: dict[str, float] = {}
        by_bus: dict[int, list[str]] = defaultdict(list)
        for lid, b in self._load_bus.items():
            if energized[b]:
                by_bus[b].append(lid)
        for b, lids in by_bus.items():
            for col, pseudo, out, der in ((p_bus, pseudo_p, load_p, ders_at.get(b, 0.0)),
                                          (q_bus, pseudo_q, load_q, 0.0)):
                total = float(col[b]) + der
                weights = [abs(pseudo.get(lid, 0.0)) for lid in lids]
                s = sum(weights)
                for lid, wgt in zip(lids, weights, strict=True):
                    out[lid] = total * (wgt / s if s > 0 else 1.0 / len(lids))
        # a flagged measurement against the final estimate (made without it)
        vm_of = dict(zip(bus_ids, vm.tolist(), strict=True))
        line_of = {ln.line_id: ln for ln in lines}
        fixed = []
        for b in bad:
            est_v: float | None = None
            if b.quantity == "VM_PU":
                est_v = vm_of.get(b.element_id)
            elif b.element_id in line_of:
                lr = line_of[b.element_id]
                est_v = {"P_MW": lr.p_from_mw, "Q_MVAR": lr.q_from_mvar, "I_KA": lr.i_ka}[b.quantity]
            if est_v is not None and math.isfinite(est_v):
                b = replace(b, estimated=est_v, residual=b.value - est_v)
            fixed.append(b)
        bad = fixed
        n_pseudo = sum(1 for i in used if all(m.pseudo for m in groups[i]))
        n_real = sum(1 for i in used for m in groups[i] if m.source in (MeasSource.SCADA, MeasSource.DER))
        sources: dict[str, int] = defaultdict(int)
        for i in used:
            for m in groups[i]:
                if m.pseudo:
                    sources[str(m.source)] += 1
        bus_est = tuple(
            BusEstimate(bid, None if not energized[i] else float(vm[i]),
                        None if not energized[i] or np.isnan(std[i]) else float(std[i]),
                        None if not energized[i] or np.isnan(share[i]) else float(share[i]),
                        bool(energized[i] and not np.isnan(share[i]) and share[i] < 0.5))
            for i, bid in enumerate(bus_ids))
        return EstimationResult(True, None, pf, bus_est, load_p, load_q, len(table), n_real, n_pseudo, run.j, thr,
                                tuple(bad), tuple(status), dict(states), run.iterations, t_est, t_cov, key,
                                pseudo_sources=dict(sources))


def stale(result: EstimationResult, reason: str) -> EstimationResult:
    """The last good estimate, marked stale with ``reason``."""
    return replace(result, stale=True, stale_reason=reason,
                   power_flow=replace(result.power_flow, reason=f"stale estimate: {reason}"))
