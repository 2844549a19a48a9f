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
* **Topology errors**: when χ² fails, each candidate switch (``status_candidates``, nearest first to
  the measurement with the largest weighted residual) is toggled and the estimate redone; a toggle
  that brings J under the threshold is reported as a suspected status error and the estimate is the
  one with the corrected status (the reported status is never silently accepted).
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

    # ------------------------------------------------------------------ public

    def estimate(
        self,
        measurements: Sequence[Measurement],
        *,
        switch_states: Mapping[str, bool] | None = None,
        tap_pos: Mapping[str, int] | None = None,
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
        base = self._pf.solve(switch_states=states, tap_pos=tap_pos)  # topology + a warm start
        if not base.converged or not base.buses:
            return self._failed(t0, f"the model's power flow for this topology failed ({base.reason}); "
                                    "no estimate", states)
        net = self._pf._net
        energized = ~np.isnan(net.res_bus["vm_pu"].to_numpy(dtype=float))
        meas = [m for m in measurements if self._on_energized(m, energized)]
        table, groups = self._table(meas, energized)
        run = self._wls(net, table, max_iterations, tolerance)
        if not run.ok:
            return self._failed(t0, run.reason, states)
        if allocate:  # load allocation: pseudo loads scaled to what the real measurements say
            meas = self._allocated(run, table, groups, meas)
            table, groups = self._table(meas, energized)
            run = self._wls(net, table, max_iterations, tolerance)
            if not run.ok:
                return self._failed(t0, run.reason, states)
        thr = self._threshold(run, chi2_alpha)
        status: list[SuspectStatus] = []
        if thr is not None and run.j > thr and status_candidates:
            alt = self._status_search(run, table, groups, states, tap_pos, status_candidates, max_status_candidates,
                                      max_iterations, tolerance, chi2_alpha)
            if alt is not None:
                sw, run2, table, groups = alt
                status.append(SuspectStatus(sw, bool(states.get(sw, False)), run.j, run2.j))
                states[sw] = not states.get(sw, False)
                run = run2
                net = run.net
                thr = self._threshold(run, chi2_alpha)
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
                return self._failed(t0, f"{run.reason} (after removing {len(bad)} bad measurement(s))", states)
            thr = self._threshold(run, chi2_alpha)
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

    def _status_search(self, run: _Wls, table: pd.DataFrame, groups: list[list[Measurement]],
                       states: dict[str, bool], tap_pos: Mapping[str, int] | None, candidates: Sequence[str],
                       limit: int, max_iterations: int, tolerance: float,
                       alpha: float) -> tuple[str, _Wls, pd.DataFrame, list[list[Measurement]]] | None:
        """Toggle candidate switches (nearest to the worst-fitting real measurement first)."""
        ks = self._real_rows(run, table, groups) or list(range(len(run.r)))
        worst = max(ks, key=lambda k: run.w[k] * run.r[k] ** 2)
        row = table.loc[table.index[run.rows[worst]]]
        if row["element_type"] == "line":
            ln = self.feeder.lines[int(row["element"])]
            origin = {self._bus[ln.from_bus_id], self._bus[ln.to_bus_id]}
        else:
            origin = {int(row["element"])}
        hops = self._hops(origin)
        cands = sorted((s for s in candidates if s in self._switch_bus),
                       key=lambda s: hops.get(self._switch_bus[s], 10**9))[:limit]
        best: tuple[str, _Wls] | None = None
        for sw in cands:
            trial = dict(states)
            trial[sw] = not trial.get(sw, False)
            base = self._pf.solve(switch_states=trial, tap_pos=tap_pos)
            if not base.converged:
                continue
            energized = ~np.isnan(self._pf._net.res_bus["vm_pu"].to_numpy(dtype=float))
            meas = [m for g in groups for m in g if m.source not in (MeasSource.ZERO, MeasSource.SETPOINT)]
            t2, _ = self._table([m for m in meas if self._on_energized(m, energized)], energized)
            r2 = self._wls(self._pf._net, t2, max_iterations, tolerance)
            if not r2.ok:
                continue
            thr = self._threshold(r2, alpha)
            # a corrected status must fit (J under the threshold) and explain most of the misfit
            if thr is not None and r2.j <= thr and r2.j < 0.5 * run.j and (best is None or r2.j < best[1].j):
                best = (sw, r2)
        if best is None:
            self._pf.solve(switch_states=states, tap_pos=tap_pos)  # back to the reported topology
            return None
        trial = dict(states)  # leave the net in the winning topology
        trial[best[0]] = not trial.get(best[0], False)
        self._pf.solve(switch_states=trial, tap_pos=tap_pos)
        energized = ~np.isnan(self._pf._net.res_bus["vm_pu"].to_numpy(dtype=float))
        meas = [m for g in groups for m in g if m.source not in (MeasSource.ZERO, MeasSource.SETPOINT)]
        t2, g2 = self._table([m for m in meas if self._on_energized(m, energized)], energized)
        return best[0], self._wls(self._pf._net, t2, max_iterations, tolerance), t2, g2

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
