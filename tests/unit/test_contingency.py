"""actors.cores.contingency (N-1 through FDIR's restoration core) on case33bw against a hand-checked table."""

from __future__ import annotations

import pytest

from actors.cores.contingency import run_contingency
from actors.cores.powerflow import run_power_flow
from actors.cores.topology import process_topology
from graph_schema.errors import NotFound
from graph_schema.importers import case33bw

# Hand-checked from Baran & Wu's topology and the customers per bus of our import (bus2 33,
# bus7 67, bus18 30, ...). Columns: at risk, in the isolated section, restored by ties,
# healthy customers left, restorable, ties closed.
#  line1: the head line; everything downstream (all 1,239) is at risk; bus2's 33 are in its section;
#         every tie joins two dark parts of the same single-source feeder: nothing restorable.
#  line3: bus4..bus18 (439) + bus26..bus33 (307) = 746; bus4's 40 in section; the rest back through
#         ties sw33 (bus8-bus21, from the bus2 lateral) and sw37 (bus25-bus29, from the bus3 lateral).
#  line6: bus7..bus18 = 359; bus7's 67 in section; the 292 beyond through tie sw35 (bus12-bus22).
#  line17, line24: a line whose far end is a leaf: only its own section's customers, nothing healthy.
#  line33..line37: open ties carry nothing.
TABLE = {
    "line1": (1239, 33, 0, 1206, False, ()),
    "line3": (746, 40, 706, 0, True, ("sw33", "sw37")),
    "line6": (359, 67, 292, 0, True, ("sw35",)),
    "line17": (30, 30, 0, 0, True, ()),
    "line24": (140, 140, 0, 0, True, ()),
    "line33": (0, 0, 0, 0, True, ()),
    "line37": (0, 0, 0, 0, True, ()),
}


@pytest.fixture(scope="module")
def feeder():
    return case33bw()


@pytest.fixture(scope="module")
def analysis(feeder):
    return run_contingency(feeder)


def test_hand_checked_table(analysis) -> None:
    by_id = {c.element_id: c for c in analysis.cases}
    for eid, row in TABLE.items():
        c = by_id[eid]
        got = (c.customers_at_risk, c.customers_in_section, c.customers_restored, c.customers_unserved,
               c.restorable, tuple(sorted(c.close_switch_ids)))
        assert got == row, eid


def test_every_line_once_ranked_by_customers_at_risk(feeder, analysis) -> None:
    assert sorted(c.element_id for c in analysis.cases) == sorted(ln.id for ln in feeder.lines)
    risks = [c.customers_at_risk for c in analysis.cases]
    assert risks == sorted(risks, reverse=True)
    assert analysis.cases[0].element_id == "line1"
    for c in analysis.cases:
        assert c.customers_at_risk == c.customers_in_section + c.customers_restored + c.customers_unserved


def test_restorations_hold_within_emergency_limits_by_independent_power_flow(feeder, analysis) -> None:
    for c in analysis.cases:
        if not c.close_switch_ids:
            continue
        states = {s.id: s.is_open for s in feeder.switches}
        states.update(dict.fromkeys(c.open_switch_ids, True))
        states.update(dict.fromkeys(c.close_switch_ids, False))
        assert process_topology(feeder, states).is_radial, c.element_id
        r = run_power_flow(feeder, switch_states=states)
        assert r.converged
        assert r.min_vm_pu >= feeder.limits.emergency_vm_min_pu, c.element_id
        assert r.min_vm_pu == pytest.approx(c.min_vm_pu, abs=1e-9)


def test_selected_elements_and_unknown_element(feeder) -> None:
    sub = run_contingency(feeder, element_ids=["line6"])
    assert [c.element_id for c in sub.cases] == ["line6"]
    with pytest.raises(NotFound, match="line99"):
        run_contingency(feeder, element_ids=["line99"])
