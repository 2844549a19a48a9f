"""actors.cores.powerflow against published results and on hand-made feeders."""

from __future__ import annotations

import copy
import warnings

import pandapower as pp
import pandapower.networks as pn
import pytest

from actors.cores.powerflow import PowerFlowModel, run_power_flow
from graph_schema.errors import InvalidModel, NotFound
from graph_schema.importers import case33bw, cigre_mv
from graph_schema.model import Limits
from tests.unit import grids


@pytest.fixture(scope="module")
def bw_model() -> PowerFlowModel:
    return PowerFlowModel(case33bw())


def test_baran_wu_published_results() -> None:
    r = run_power_flow(case33bw())
    assert r.converged and r.reason is None
    assert r.losses_mw * 1000 == pytest.approx(202.7, abs=0.1)  # Baran & Wu (1989): 202.7 kW
    assert r.min_vm_pu == pytest.approx(0.9131, abs=0.0005)
    assert r.min_vm_bus_id == "bus18"
    assert r.max_vm_pu == pytest.approx(1.0) and r.max_vm_bus_id == "bus1"
    assert r.p_source_mw == pytest.approx(3.715 + r.losses_mw, abs=1e-6)
    assert r.violations == ()  # the demo limits accept the published base case
    assert len(r.buses) == 33 and all(b.energized for b in r.buses)
    assert len(r.lines) == 37 and r.transformers == ()
    ties = {f"line{i}" for i in range(33, 38)}
    assert all(ln.i_ka == 0.0 for ln in r.lines if ln.line_id in ties)
    assert r.solve_time_s > 0


def test_matches_bare_pandapower_on_cigre_mv() -> None:
    r = run_power_flow(cigre_mv())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = pn.create_cigre_network_mv(with_der="pv_wind")
        pp.runpp(net, numba=False)
    assert r.converged
    assert r.losses_mw == pytest.approx(float(net.res_line.pl_mw.sum() + net.res_trafo.pl_mw.sum()), rel=1e-9)
    assert r.min_vm_pu == pytest.approx(float(net.res_bus.vm_pu.min()), abs=1e-9)
    assert 0.94 < r.min_vm_pu < 1.0 and r.max_vm_pu == pytest.approx(1.03)
    assert 0 < r.max_line_loading_percent < 100
    assert len(r.transformers) == 2 and all(0 < t.loading_percent < 100 for t in r.transformers)
    assert r.violations == ()


def test_open_switch_deenergizes_downstream(bw_model: PowerFlowModel) -> None:
    r = bw_model.solve(switch_states={"sw6": True})  # bus6 side of line6: bus7..bus18 go dark
    assert r.converged
    dark = {b.bus_id for b in r.buses if not b.energized}
    assert dark == {f"bus{i}" for i in range(7, 19)}
    for b in r.buses:
        if not b.energized:
            assert b.vm_pu is None and b.va_degree is None
    assert r.min_vm_bus_id not in dark
    assert r.min_vm_pu > 0.93


def test_solves_are_independent(bw_model: PowerFlowModel) -> None:
    base = bw_model.solve()
    bw_model.solve(
        switch_states={"sw6": True}, load_scale=1.3, load_p_mw={"load5": 0.5}, out_of_service=["line20"]
    )
    again = bw_model.solve()
    assert again.losses_mw == pytest.approx(base.losses_mw, rel=1e-12)
    assert [b.vm_pu for b in again.buses] == pytest.approx([b.vm_pu for b in base.buses], rel=1e-12)


def test_load_and_tie_overrides(bw_model: PowerFlowModel) -> None:
    base = bw_model.solve()
    heavier = bw_model.solve(load_scale=1.2)
    assert heavier.losses_mw > base.losses_mw and heavier.min_vm_pu < base.min_vm_pu
    one = bw_model.solve(load_p_mw={"load17": 0.0}, load_q_mvar={"load17": 0.0})
    assert one.min_vm_pu > base.min_vm_pu
    # close tie 33 (bus21-bus8) and open line 7's switch: supply moves, everything stays energized
    moved = bw_model.solve(switch_states={"sw33": False, "sw7": True})
    assert moved.converged and all(b.energized for b in moved.buses)
    with pytest.raises(NotFound):
        bw_model.solve(switch_states={"nope": True})
    with pytest.raises(NotFound):
        bw_model.solve(out_of_service=["nope"])


def test_diverging_case_reports_reason(bw_model: PowerFlowModel) -> None:
    r = bw_model.solve(load_scale=50.0)
    assert r.converged is False
    assert r.reason and "did not converge" in r.reason and "load" in r.reason
    assert r.losses_mw is None and r.buses == () and r.min_vm_pu is None
    assert bw_model.solve().converged  # the model recovers on the next call


def test_violations_in_bands() -> None:
    f = grids.with_substation_transformer()
    m = PowerFlowModel(f)
    assert m.solve().violations == ()
    high = m.solve(tap_pos={"tr1": -8})  # -10 % ratio on the hv side: lv voltage up ~10 %
    assert high.max_vm_pu > 1.058
    assert {v.kind for v in high.violations} == {"OVERVOLTAGE"}
    assert all(v.band == "EMERGENCY" and v.limit == 1.058 for v in high.violations)
    mild = m.solve(tap_pos={"tr1": -4}, limits=Limits(vm_max_pu=1.04))  # lv side at ~1.045-1.05 pu
    assert mild.violations and all(v.band == "NORMAL" for v in mild.violations)
    assert all(v.limit == 1.04 and 1.04 < v.value <= 1.058 for v in mild.violations)
    low = m.solve(load_scale=6.0, limits=Limits(vm_min_pu=0.99, emergency_vm_min_pu=0.95))
    under = [v for v in low.violations if v.kind == "UNDERVOLTAGE"]
    assert under and {v.band for v in under} <= {"NORMAL", "EMERGENCY"}
    assert all(v.value < v.limit for v in under)
    over = m.solve(
        load_scale=8.0, limits=Limits(max_loading_percent=10.0, emergency_max_loading_percent=30.0)
    )
    overloads = {v.element_id: v for v in over.violations if v.kind == "OVERLOAD"}
    assert "l1" in overloads and overloads["l1"].value > overloads["l1"].limit


def test_der_capacitor_and_out_of_service() -> None:
    m = PowerFlowModel(grids.radial())
    base = m.solve()
    no_pv = m.solve(der_p_mw={"pv3": 0.0})
    assert no_pv.p_source_mw == pytest.approx(base.p_source_mw + 0.2, abs=0.01)
    no_cap = m.solve(capacitor_step={"cap4": 0})
    assert no_cap.q_source_mvar == pytest.approx(base.q_source_mvar + 0.3, abs=0.02)
    var = m.solve(der_q_mvar={"pv3": 0.1})
    assert var.q_source_mvar < base.q_source_mvar
    no_load = m.solve(out_of_service=["ld5"])
    assert no_load.p_source_mw < base.p_source_mw
    dark = m.solve(out_of_service=["l4"])
    assert [b.bus_id for b in dark.buses if not b.energized] == ["b5"]
    dead = m.solve(out_of_service=["src1"])
    assert dead.converged and not any(b.energized for b in dead.buses) and dead.min_vm_pu is None


def test_model_does_not_mutate_feeder() -> None:
    f = case33bw()
    snapshot = copy.deepcopy(f)
    m = PowerFlowModel(f)
    m.solve(switch_states={"sw6": True, "sw33": False}, load_scale=1.5, out_of_service=["line3"])
    assert f == snapshot
    assert all(s.is_open == s.normally_open for s in f.switches)


def test_invalid_feeder_is_refused() -> None:
    from dataclasses import replace

    with pytest.raises(InvalidModel):
        PowerFlowModel(replace(grids.radial(), sources=()))


def test_transformer_feeder_matches_expectations() -> None:
    r = run_power_flow(grids.with_substation_transformer())
    assert r.converged and len(r.transformers) == 1
    t = r.transformers[0]
    assert 0 < t.loading_percent < 50 and t.pl_mw > 0
    assert r.losses_mw == pytest.approx(sum(ln.pl_mw for ln in r.lines) + t.pl_mw)


def test_warm_start_agrees_with_cold_start() -> None:
    f = case33bw()
    cold, warm = PowerFlowModel(f), PowerFlowModel(f, warm_start=True)
    calls = [
        {},
        {"load_scale": 1.1},
        {"load_scale": 1.1, "load_p_mw": {"load17": 0.3}},
        {"switch_states": {"sw33": False, "sw7": True}},
        {"switch_states": {"sw33": False, "sw7": True}, "load_scale": 0.9},
        {"load_scale": 50.0},  # diverges: the next call starts cold again
        {"load_scale": 1.05},
    ]
    for kwargs in calls:
        a, b = cold.solve(**kwargs), warm.solve(**kwargs)
        assert a.converged == b.converged
        if a.converged:
            assert b.losses_mw == pytest.approx(a.losses_mw, rel=1e-6)
            assert [x.vm_pu for x in b.buses] == pytest.approx([x.vm_pu for x in a.buses], abs=1e-7)
