"""actors.cores.study: changes applied to a frozen copy, solved, compared; every bad-input case."""

from __future__ import annotations

import pytest

from actors.cores.powerflow import run_power_flow
from actors.cores.study import ChangeKind, StudyChange, apply_changes, run_study, snapshot
from graph_schema.errors import BadInput, NotFound
from graph_schema.importers import case33bw

K = ChangeKind


@pytest.fixture(scope="module")
def feeder():
    return case33bw()


def test_no_change_is_the_base(feeder) -> None:
    out = run_study(feeder, [])
    assert out.result == out.base
    assert out.diff.losses_mw == 0.0 and out.diff.customers_out == 0
    assert out.base.losses_mw == pytest.approx(run_power_flow(feeder).losses_mw)


def test_reconfiguration_by_switch_changes_matches_the_published_losses(feeder) -> None:
    changes = [StudyChange(K.SET_SWITCH, element_id=s, is_open=False) for s in ("sw33", "sw34", "sw35", "sw36")]
    changes += [StudyChange(K.SET_SWITCH, element_id=s, is_open=True) for s in ("sw7", "sw9", "sw14", "sw32")]
    out = run_study(feeder, changes)
    assert 1000 * out.result.losses_mw == pytest.approx(139.5, abs=0.2)
    assert out.diff.losses_mw == pytest.approx(out.result.losses_mw - out.base.losses_mw)
    assert out.diff.min_vm_pu > 0
    assert feeder.switch("sw7").is_open is False  # the input is never mutated


def test_outage_puts_customers_out_and_the_diff_says_so(feeder) -> None:
    out = run_study(feeder, [StudyChange(K.OUTAGE, element_id="line17")])
    assert out.result.customers_out == 30 and out.diff.customers_out == 30


def test_each_kind_changes_what_it_should(feeder) -> None:
    f = apply_changes(feeder, [
        StudyChange(K.SCALE_LOAD, scale=2.0),
        StudyChange(K.SCALE_LOAD, element_id="load1", scale=0.5),
        StudyChange(K.SCALE_LOAD, bus_id="bus3", scale=0.0),
        StudyChange(K.ADD_LOAD, bus_id="bus18", p_mw=0.2, q_mvar=0.1),
        StudyChange(K.ADD_DER, element_id="pv-x", bus_id="bus33", p_mw=0.5),
        StudyChange(K.SET_DER_OUTPUT, element_id="pv-x", p_mw=0.3),
        StudyChange(K.ADD_CAPACITOR, bus_id="bus30", q_mvar=0.6),
        StudyChange(K.REMOVE_ELEMENT, element_id="load5"),
    ])
    loads = {ld.id: ld for ld in f.loads}
    assert loads["load1"].p_mw == pytest.approx(0.1 * 2 * 0.5)
    assert loads["load2"].p_mw == 0.0  # load2 sits at bus3
    assert loads["study-load-1"].p_mw == 0.2 and loads["study-load-1"].customers == 0
    assert not loads["load5"].in_service
    assert {d.id: d.p_mw for d in f.ders} == {"pv-x": 0.3}
    assert f.capacitors[0].bus_id == "bus30"
    assert run_study(f, []).result.converged


def test_snapshot_takes_the_state_given(feeder) -> None:
    f = snapshot(feeder, {"sw33": False, "sw7": True}, load_p_mw={"load1": 0.3}, load_scale=0.5)
    assert f.switch("sw33").is_open is False and f.switch("sw7").is_open is True
    assert f.loads[0].p_mw == pytest.approx(0.15) and f.loads[1].p_mw == pytest.approx(0.045)


def test_diverging_study_is_an_answer_not_an_error(feeder) -> None:
    out = run_study(feeder, [StudyChange(K.SCALE_LOAD, scale=25.0)])
    assert out.base.converged and not out.result.converged
    assert out.result.reason
    assert out.diff.losses_mw is None


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (StudyChange(K.SET_SWITCH, element_id="sw99", is_open=True), NotFound, "sw99"),
        (StudyChange(K.SET_SWITCH, element_id="sw7"), BadInput, "isOpen"),
        (StudyChange(K.SET_SWITCH, is_open=True), BadInput, "elementId"),
        (StudyChange(K.SCALE_LOAD, element_id="nope", scale=1.1), NotFound, "nope"),
        (StudyChange(K.SCALE_LOAD, scale=-1.0), BadInput, "scale"),
        (StudyChange(K.SCALE_LOAD), BadInput, "scale"),
        (StudyChange(K.ADD_LOAD, bus_id="bus99", p_mw=0.1), NotFound, "bus99.*existing bus"),
        (StudyChange(K.ADD_LOAD, p_mw=0.1), BadInput, "busId"),
        (StudyChange(K.ADD_LOAD, bus_id="bus5"), BadInput, "pMw"),
        (StudyChange(K.ADD_DER, bus_id="ghost", p_mw=1.0), NotFound, "ghost"),
        (StudyChange(K.ADD_DER, element_id="load1", bus_id="bus5", p_mw=1.0), BadInput, "already used"),
        (StudyChange(K.ADD_CAPACITOR, bus_id="bus5", q_mvar=0.0), BadInput, "qMvar"),
        (StudyChange(K.SET_DER_OUTPUT, element_id="pv9", p_mw=1.0), NotFound, "pv9"),
        (StudyChange(K.REMOVE_ELEMENT, element_id="line3"), BadInput, "OUTAGE"),
        (StudyChange(K.REMOVE_ELEMENT, element_id="zzz"), NotFound, "zzz"),
        (StudyChange(K.OUTAGE, element_id="load1"), BadInput, "line or transformer"),
        (StudyChange(K.OUTAGE, element_id="line99"), NotFound, "line99"),
    ],
)
def test_bad_changes(feeder, change, error, match) -> None:
    with pytest.raises(error, match=match):
        apply_changes(feeder, [change])
