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
    # every reported status is a candidate, as in the live application: a gross error is bad data,
    # not a topology error
    est = StateEstimator(feeder).estimate(wrong + pseudo(feeder), status_candidates=[s.id for s in feeder.switches])
    assert est.converged
    assert [b.point_ids for b in est.bad_data] == [(bad_point,)]
    assert not est.status_suspects
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


def _normal(feeder: Feeder) -> dict[str, bool]:
    return {s.id: s.is_open for s in feeder.switches}


def test_a_dead_sensor_on_a_section_reported_energized_reveals_the_open_switch():
    """sw7 is open in the field but reported closed: the line sensor at bus18 reads no voltage. The
    reported topology cannot fit that (WLS would diverge); the estimate finds the open switch, and
    the flow into bus7 (line6 carries bus7's load alone) says which of the switches between."""
    feeder = case33bw()
    res, *_, der = truth(feeder, switch_states={**_normal(feeder), "sw7": True})
    meas = metered(feeder, res, der, buses=("bus1", "bus33"), lines=("line1", "line6", "line26"))
    meas.append(Measurement("bus18/VM_PU", "VM_PU", "bus18", 0.0, default_std("VM_PU", 0.0, MeasSource.SCADA)))
    est = StateEstimator(feeder).estimate(meas + pseudo(feeder), switch_states=_normal(feeder),
                                          status_candidates=[s.id for s in feeder.switches])
    assert est.converged, est.reason
    assert [(s.switch_id, s.reported_open) for s in est.status_suspects] == [("sw7", False)]
    assert est.switch_states["sw7"] is True
    assert next(b for b in est.power_flow.buses if b.bus_id == "bus18").vm_pu is None  # dead, as measured


def test_a_live_sensor_on_a_section_reported_dead_reveals_the_closed_switch():
    feeder = case33bw()
    res, *_, der = truth(feeder)
    meas = metered(feeder, res, der, **CASE33_SPARSE)
    est = StateEstimator(feeder).estimate(meas + pseudo(feeder), switch_states={**_normal(feeder), "sw7": True},
                                          status_candidates=[s.id for s in feeder.switches])
    assert est.converged, est.reason
    assert [(s.switch_id, s.reported_open) for s in est.status_suspects] == [("sw7", True)]
    assert est.switch_states["sw7"] is False


@pytest.mark.parametrize(("build", "tie", "sparse"), [(case33bw, "sw33", CASE33_SPARSE)])
def test_a_tie_reported_closed_while_open_is_found_with_sparse_meters(build, tie, sparse):
    """The loop a closed tie would make changes the head's and the line sensors' flows beyond their
    sigma; every switch of that loop fits when opened, and the one whose report departs from its
    normal position (the tie) is named."""
    feeder = build()
    res, *_, der = truth(feeder)
    est = StateEstimator(feeder).estimate(metered(feeder, res, der, **sparse) + pseudo(feeder),
                                          switch_states={**_normal(feeder), tie: False},
                                          status_candidates=[s.id for s in feeder.switches])
    assert est.converged, est.reason
    assert [(s.switch_id, s.reported_open) for s in est.status_suspects] == [(tie, False)]
    assert est.chi2 <= est.chi2_threshold  # type: ignore[operator]


def test_estimated_loads_follow_the_measured_feeder_head():
    feeder = case33bw()
    res, p, *_ = truth(feeder)
    est = StateEstimator(feeder).estimate(metered(feeder, res, {}, **CASE33_SPARSE) + pseudo(feeder))
    assert sum(est.load_p_mw.values()) == pytest.approx(sum(p.values()), rel=0.03)
    assert est.power_flow.p_source_mw == pytest.approx(res.p_source_mw, rel=0.03)  # 1 % sigma head meter


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


def test_fdir_validates_restoration_at_the_estimated_load_not_the_nominal_one():
    """Feeder B's head carries 2.0 MW through the tie at nominal load (~107 %: accepted); the field
    draws 30 % more and the estimate says so: ~131 % (> 120 % emergency), so the tie is rejected."""
    from dataclasses import replace

    from actors.cores.fdir import FdirModel, PlanAction, plan_fault
    from tests.unit import fdir_grids

    feeder = replace(fdir_grids.two_feeders(b_head_max_i_ka=0.09), id="fdir-est")
    nominal = FdirModel(feeder)
    states, ind, _ = fdir_grids.fault_scenario(nominal, "sec-a3")
    closes = lambda p: {s.device_id for s in p.steps if s.action == PlanAction.CLOSE}  # noqa: E731
    assert "tie_ab" in closes(plan_fault(nominal, states, ind)), "nominal load accepts the tie"
    # the field before the fault: 30 % more load than the model says, metered at both feeder heads
    heavy = {ld.id: ld.p_mw * 1.3 for ld in feeder.loads}
    res = PowerFlowModel(feeder).solve(load_p_mw=heavy, load_q_mvar={ld.id: ld.q_mvar * 1.3 for ld in feeder.loads})
    est = StateEstimator(feeder).estimate(metered(feeder, res, {}, buses=("a1",), lines=("la1", "lb1"), noise=False)
                                          + pseudo(feeder))
    assert est.converged
    assert sum(est.load_p_mw.values()) == pytest.approx(sum(heavy.values()), rel=0.02)
    estimated = FdirModel(feeder)
    estimated.set_loads(est.load_p_mw, est.load_q_mvar)
    assert estimated.load_basis == "ESTIMATED"
    plan = plan_fault(estimated, states, ind)
    assert "tie_ab" not in closes(plan)
    assert "tie tie_ab rejected: would overload lb1" in plan.explanation


# ---------------------------------------------------------------------------------------- the application


class _Ports:
    """Just what EstimationApp uses of FeederPorts, over a simulated field (no Ray, no sockets)."""

    def __init__(self, feeder: Feeder, values: dict, points: dict) -> None:
        from types import SimpleNamespace

        self.feeder_id = feeder.id
        self._feeder = feeder
        self._values = values
        self._points = points
        self.published: list = []
        self.events: list = []
        self._state = SimpleNamespace(load_scale=1.0, estimate=None)

    def model(self): return self._feeder
    def state(self): return self._state
    def switch_states(self): return {s.id: s.is_open for s in self._feeder.switches}
    def values(self): return self._values
    def points(self): return self._points

    def publish_estimate(self, est) -> None:
        self.published.append(est)
        self._state.estimate = est

    def emit(self, kind, severity, message, data) -> None:
        self.events.append((str(kind), dict(data)))

    def spawn(self, coro, name=""):
        coro.close()  # the test drives estimate_now itself


def _field(feeder: Feeder, res: PowerFlowResult, bad_quality: str | None = None):
    from datetime import UTC, datetime
    from types import SimpleNamespace

    from protocols.base import PointValue, Quality

    values, points = {}, {}
    for m in metered(feeder, res, {}, **CASE33_SPARSE, noise=False):
        q = Quality.INVALID if m.point_id == bad_quality else Quality.GOOD
        values[m.point_id] = PointValue(m.point_id, m.value, q, None, datetime.now(UTC))
        points[m.point_id] = SimpleNamespace(element_id=m.element_id, quantity=m.quantity)
    return values, points


async def test_app_publishes_estimates_keeps_the_last_good_one_stale_and_alarms():
    from actors.apps.estimation_app import EstimationApp

    feeder = case33bw()
    res, *_ = truth(feeder)
    ports = _Ports(feeder, *_field(feeder, res))
    app = EstimationApp()
    await app.start(ports)  # type: ignore[arg-type]
    rep = await app.estimate_now()
    assert rep["source"] == "ESTIMATED" and rep["converged"] and not rep["stale"]
    good = ports.published[-1]
    assert good.power_flow.converged and not good.stale
    se = app._estimator
    assert se is not None
    se.estimate = lambda *a, **k: StateEstimator._failed(se, 0.0, "estimator did not converge in 1 iterations", {})  # type: ignore[method-assign]
    rep = await app.estimate_now()
    assert rep["stale"] is True and "did not converge" in rep["stale_reason"]
    assert ports.published[-1].stale and ports.published[-1].power_flow.buses == good.power_flow.buses
    assert ("ALARM", {"alarm_kind": "ESTIMATOR_STALE", "device_id": feeder.id,
                      "reason": "estimator did not converge in 1 iterations"}) in ports.events
    del se.estimate  # the real one again
    rep = await app.estimate_now()
    assert not rep["stale"]
    assert ports.events[-1][0] == "ALARM_CLEARED"


async def test_app_leaves_out_bad_quality_and_stays_on_the_model_without_measurements():
    from actors.apps.estimation_app import EstimationApp

    feeder = case33bw()
    res, *_ = truth(feeder)
    ports = _Ports(feeder, *_field(feeder, res, bad_quality="line6/P_MW"))
    app = EstimationApp()
    await app.start(ports)  # type: ignore[arg-type]
    rep = await app.estimate_now()
    assert rep["excluded_bad_quality"] == 1
    all_good = EstimationApp()
    await all_good.start(_Ports(feeder, *_field(feeder, res)))  # type: ignore[arg-type]
    assert rep["real_measurements"] == (await all_good.estimate_now())["real_measurements"] - 1
    ports._values.clear()  # the field was detached
    rep = await app.estimate_now()
    assert rep["source"] == "MODEL" and ports.published[-1] is None


async def test_app_alarms_a_gross_error_once_and_clears_it_when_the_point_fits_again():
    from dataclasses import replace

    from actors.apps.estimation_app import EstimationApp

    feeder = case33bw()
    res, *_ = truth(feeder)
    values, points = _field(feeder, res)
    ports = _Ports(feeder, values, points)
    app = EstimationApp()
    await app.start(ports)  # type: ignore[arg-type]
    good = values["line6/P_MW"]
    values["line6/P_MW"] = replace(good, value=good.value + 1.0)
    rep = await app.estimate_now()
    assert [b["point_ids"] for b in rep["bad_data"]] == [["line6/P_MW"]]
    await app.estimate_now()
    raised = [e for e in ports.events if e[0] == "ALARM" and e[1].get("alarm_kind") == "BAD_DATA"]
    assert len(raised) == 1 and raised[0][1]["device_id"] == "line6/P_MW"
    values["line6/P_MW"] = good
    rep = await app.estimate_now()
    assert rep["bad_data"] == []
    assert ports.events[-1] == ("ALARM_CLEARED", {"alarm_kind": "BAD_DATA", "device_id": "line6/P_MW"})


# ---------------------------------------------------------------------------------------- point map import


def test_point_map_import_refuses_measurements_on_missing_or_wrong_elements():
    from dataclasses import replace

    from graph_schema.errors import BadInput
    from protocols.pointmap import PointMap, generate_point_map

    feeder = case33bw()
    pm = generate_point_map(feeder, metering="sparse")
    v = next(p for p in pm.points if str(p.quantity) == "VM_PU")
    missing = replace(pm, points=(*pm.points, replace(v, point_id="x/nope/VM_PU", element_id="nope",
                                                      node_id="ns=2;s=x/nope/VM_PU")))
    with pytest.raises(BadInput, match="unknown element 'nope'"):
        PointMap.from_json(missing.to_json(), feeder)
    wrong = replace(pm, points=(*pm.points, replace(v, point_id="x/line3/VM_PU", element_id="line3",
                                                    node_id="ns=2;s=x/line3/VM_PU")))
    with pytest.raises(BadInput, match="VM_PU cannot be measured on line 'line3'"):
        PointMap.from_json(wrong.to_json(), feeder)


def test_sparse_metering_is_the_head_a_few_line_sensors_and_the_ders():
    from protocols.pointmap import generate_point_map, sparse_metering

    feeder = cigre_mv()
    metered_ids = sparse_metering(feeder)
    assert {d.id for d in feeder.ders} <= metered_ids
    assert {"bus1", "bus12"} <= metered_ids  # both feeder heads below the substation
    dense = generate_point_map(feeder)
    sparse = generate_point_map(feeder, metering="sparse")
    analog = lambda pm: [p for p in pm.points if str(p.quantity) in ("VM_PU", "I_KA", "P_MW", "Q_MVAR")]  # noqa: E731
    assert 0 < len(analog(sparse)) < len(analog(dense)) // 2
