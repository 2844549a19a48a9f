"""State estimation core: accuracy against a known truth, bad data, topology errors, bad input.

The truth is a power flow at loads that differ from the model's nominal loads (±30 %, seeded);
the measurements are that truth with Gaussian noise of their stated sigma. Pseudo-measurements are the
nominal loads with the PROFILE sigma.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import numpy as np
import pytest

from actors.cores.estimation import (
    MeasSource,
    Measurement,
    StateEstimator,
    default_std,
    stale,
)
from actors.cores.powerflow import PowerFlowModel, PowerFlowResult
from graph_schema.errors import NotFound
from graph_schema.importers import case33bw, cigre_mv
from graph_schema.model import Feeder


def truth(feeder: Feeder, seed: int = 1, switch_states: Mapping[str, bool] | None = None
          ) -> tuple[PowerFlowResult, dict[str, float], dict[str, float], dict[str, float]]:
    rng = random.Random(seed)
    p = {ld.id: ld.p_mw * rng.uniform(0.7, 1.3) for ld in feeder.loads}
    q = {ld.id: ld.q_mvar * p[ld.id] / ld.p_mw if ld.p_mw else 0.0 for ld in feeder.loads}
    der = {d.id: d.p_mw * rng.uniform(0.3, 1.0) for d in feeder.ders}
    res = PowerFlowModel(feeder).solve(switch_states=dict(switch_states or {}), load_p_mw=p, load_q_mvar=q,
                                       der_p_mw=der or None)
    assert res.converged
    return res, p, q, der


def metered(feeder: Feeder, res: PowerFlowResult, der: Mapping[str, float], *, buses: tuple[str, ...],
            lines: tuple[str, ...], seed: int = 2, noise: bool = True) -> list[Measurement]:
    """SCADA at ``buses`` (V) and ``lines`` (P, Q, I at the from end), every DER's P; noisy."""
    rng = np.random.default_rng(seed)
    vm = {b.bus_id: b.vm_pu for b in res.buses}
    lr = {ln.line_id: ln for ln in res.lines}
    out: list[Measurement] = []

    def add(pid: str, q: str, eid: str, v: float, src: MeasSource = MeasSource.SCADA) -> None:
        s = default_std(q, v, src)  # type: ignore[arg-type]
        out.append(Measurement(pid, q, eid, v + (rng.normal(0, s) if noise else 0.0), s, src))  # type: ignore[arg-type]

    for b in buses:
        add(f"{b}/VM_PU", "VM_PU", b, float(vm[b]))
    for ln in lines:
        add(f"{ln}/P_MW", "P_MW", ln, lr[ln].p_from_mw)
        add(f"{ln}/Q_MVAR", "Q_MVAR", ln, lr[ln].q_from_mvar)
        add(f"{ln}/I_KA", "I_KA", ln, lr[ln].i_ka)
    for d, p in der.items():
        add(f"{d}/P_MW", "P_MW", d, p, MeasSource.DER)
    return out


def pseudo(feeder: Feeder, source: MeasSource = MeasSource.PROFILE) -> list[Measurement]:
    out = []
    for ld in feeder.loads:
        out.append(Measurement(f"{ld.id}/P", "P_MW", ld.id, ld.p_mw, default_std("P_MW", ld.p_mw, source), source))
        out.append(Measurement(f"{ld.id}/Q", "Q_MVAR", ld.id, ld.q_mvar, default_std("Q_MVAR", ld.q_mvar, source),
                               source))
    return out


def errors(est: PowerFlowResult, res: PowerFlowResult) -> tuple[float, float]:
    ev = np.array([b.vm_pu for b in est.buses], dtype=float)
    tv = np.array([b.vm_pu for b in res.buses], dtype=float)
    return float(np.nanmax(np.abs(ev - tv))), float(np.max(np.abs(
        np.array([ln.loading_percent for ln in est.lines]) - np.array([ln.loading_percent for ln in res.lines]))))


CASE33_SPARSE = dict(buses=("bus1", "bus18", "bus33"), lines=("line1", "line6", "line26"))
CIGRE_SPARSE = dict(buses=("bus1", "bus12"), lines=("line0", "line11"))


@pytest.mark.parametrize(("build", "sparse"), [(case33bw, CASE33_SPARSE), (cigre_mv, CIGRE_SPARSE)])
def test_sparse_estimate_is_within_its_stated_error_of_the_truth(build, sparse):
    feeder = build()
    res, *_, der = truth(feeder)
    est = StateEstimator(feeder).estimate(metered(feeder, res, der, **sparse) + pseudo(feeder))
    assert est.converged, est.reason
    assert not est.bad_data and not est.status_suspects
    assert est.chi2 is not None and est.chi2_threshold is not None and est.chi2 <= est.chi2_threshold
    vm_err, _ = errors(est.power_flow, res)
    assert vm_err < 0.01
    tv = {b.bus_id: b.vm_pu for b in res.buses}
    for b in est.buses:  # within 4 stated standard deviations, bus by bus
        if b.vm_pu is not None:
            assert b.vm_std_pu is not None and abs(b.vm_pu - tv[b.bus_id]) <= 4 * b.vm_std_pu + 1e-4, b
    # metered buses are observed, far-from-meter buses rest on pseudo-measurements
    assert est.bus(sparse["buses"][1]).observed  # type: ignore[union-attr]
    assert est.observed_bus_count >= 1
    assert est.pseudo_measurements > est.real_measurements


def test_dense_measurements_beat_sparse_ones():
    feeder = case33bw()
    res, *_, der = truth(feeder)
    all_lines = tuple(ln.id for ln in feeder.lines if not any(s.is_open and s.element_id == ln.id
                                                              for s in feeder.switches))
    dense = metered(feeder, res, der, buses=tuple(b.id for b in feeder.buses), lines=all_lines)
    se = StateEstimator(feeder)
    d = se.estimate(dense + pseudo(feeder))
    s = se.estimate(metered(feeder, res, der, **CASE33_SPARSE) + pseudo(feeder))
    assert d.converged and s.converged
    assert errors(d.power_flow, res)[0] < errors(s.power_flow, res)[0]
    assert errors(d.power_flow, res)[0] < 0.003
    assert d.observed_bus_count == len(feeder.buses)
    assert max(b.vm_std_pu for b in d.buses if b.vm_std_pu) < max(b.vm_std_pu for b in s.buses if b.vm_std_pu)


@pytest.mark.parametrize(("build", "sparse", "bad_point"), [
    (case33bw, CASE33_SPARSE, "line6/P_MW"), (cigre_mv, CIGRE_SPARSE, "line11/P_MW")])
def test_a_gross_error_is_identified_removed_and_the_estimate_redone(build, sparse, bad_point):
    feeder = build()
    res, *_, der = truth(feeder)
    meas = metered(feeder, res, der, **sparse)
    clean = StateEstimator(feeder).estimate(meas + pseudo(feeder))
    good = next(m for m in meas if m.point_id == bad_point)
    wrong = [m if m is not good else Measurement(m.point_id, m.quantity, m.element_id, m.value + 1.0, m.std)
             for m in meas]
    est = StateEstimator(feeder).estimate(wrong + pseudo(feeder))
    assert est.converged
    assert [b.point_ids for b in est.bad_data] == [(bad_point,)]
    flagged = est.bad_data[0]
    assert flagged.normalized_residual > 3.0
    assert flagged.estimated == pytest.approx(good.value, abs=0.3)
    assert est.chi2 <= est.chi2_threshold  # type: ignore[operator]
    assert abs(errors(est.power_flow, res)[0] - errors(clean.power_flow, res)[0]) < 0.005


def test_a_wrong_switch_status_is_reported_not_accepted():
    feeder = case33bw()
    true_states = {"sw33": False, "sw7": True}  # tie closed, line7 open: the field's real topology
    res, *_, der = truth(feeder, switch_states=true_states)
    meas = metered(feeder, res, der, buses=("bus1", "bus18", "bus33", "bus8"),
                   lines=("line1", "line6", "line26", "line8"))
    reported = {"sw33": False, "sw7": False}  # the status of sw7 is wrong: reported closed
    est = StateEstimator(feeder).estimate(meas + pseudo(feeder), switch_states=reported,
                                          status_candidates=[s.id for s in feeder.switches])
    assert est.converged
    assert [s.switch_id for s in est.status_suspects] == ["sw7"]
    assert est.status_suspects[0].reported_open is False
    assert est.switch_states["sw7"] is True
    assert est.status_suspects[0].j_corrected < est.status_suspects[0].j_reported


def test_estimated_loads_follow_the_measured_feeder_head():
    feeder = case33bw()
    res, p, *_ = truth(feeder)
    est = StateEstimator(feeder).estimate(metered(feeder, res, {}, **CASE33_SPARSE) + pseudo(feeder))
    assert sum(est.load_p_mw.values()) == pytest.approx(sum(p.values()), rel=0.03)
    assert est.power_flow.p_source_mw == pytest.approx(res.p_source_mw, rel=0.02)


def test_unknown_element_is_refused():
    feeder = case33bw()
    with pytest.raises(NotFound, match="nope"):
        StateEstimator(feeder).estimate([Measurement("x", "VM_PU", "nope", 1.0, 0.01)])
    with pytest.raises(NotFound, match="line1"):  # a voltage on a line does not fit
        StateEstimator(feeder).estimate([Measurement("x", "VM_PU", "line1", 1.0, 0.01)])


def test_non_convergence_is_a_result_and_stale_keeps_the_last_good_estimate():
    feeder = case33bw()
    res, *_, der = truth(feeder)
    se = StateEstimator(feeder)
    meas = metered(feeder, res, der, **CASE33_SPARSE) + pseudo(feeder)
    good = se.estimate(meas)
    bad = se.estimate(meas, max_iterations=1, tolerance=1e-12)
    assert not bad.converged and "did not converge" in (bad.reason or "")
    old = stale(good, bad.reason or "")
    assert old.stale and old.converged and "stale estimate" in (old.power_flow.reason or "")
    assert old.power_flow.buses == good.power_flow.buses


def test_an_unobservable_part_falls_back_to_pseudo_measurements_and_says_so():
    feeder = case33bw()
    est = StateEstimator(feeder).estimate(pseudo(feeder))  # no real measurement at all
    assert est.converged
    assert est.real_measurements == 0
    assert est.observed_bus_count <= 1  # only the source bus (its set point)
    assert all(b.pseudo_share is not None and b.pseudo_share > 0.5 for b in est.buses[1:])


def test_covariance_is_reused_when_the_structure_is_unchanged():
    feeder = case33bw()
    res, *_, der = truth(feeder)
    se = StateEstimator(feeder)
    meas = metered(feeder, res, der, **CASE33_SPARSE) + pseudo(feeder)
    first = se.estimate(meas)
    again = se.estimate(meas, covariance_from=first)
    assert again.structure_key == first.structure_key
    assert [b.vm_std_pu for b in again.buses] == [b.vm_std_pu for b in first.buses]
