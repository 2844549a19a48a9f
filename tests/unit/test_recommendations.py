"""actors.cores.recommendations from analyses' results (as the Ray task returns them: dicts)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from actors.analysis_jobs import run_analysis
from actors.cores.recommendations import recommend
from graph_schema.importers import case33bw


@pytest.fixture(scope="module")
def feeder():
    return case33bw()


@pytest.fixture(scope="module")
def reconfiguration(feeder):
    return run_analysis("RECONFIGURATION", feeder, {}, "job-r", None)


@pytest.fixture(scope="module")
def contingency(feeder):
    return run_analysis("CONTINGENCY", feeder, {"element_ids": ["line1", "line6", "line17"]}, "job-c", None)


def test_reconfiguration_first_with_its_plan(feeder, reconfiguration, contingency) -> None:
    items = recommend(feeder, reconfiguration=reconfiguration, contingency=contingency,
                      contingency_ref="runContingency job job-c")
    first = items[0]
    assert first.title == "close sw35, sw33, sw34, sw36 and open sw9, sw7, sw14, sw32"
    assert first.predicted_effect.startswith("-31 % losses (202.7 -> 139.6 kW)")
    assert "all voltages within limits" in first.predicted_effect
    assert [a for _, a in first.plan] == ["CLOSE", "OPEN"] * 4
    n1 = [i for i in items if i.title.startswith("N-1")]
    assert [i.title for i in n1] == ["N-1: reinforce around line1 (a new tie or sectionalizer)"]
    assert "1206 of 1239" in n1[0].predicted_effect and n1[0].analysis.startswith("runContingency job job-c")
    assert not n1[0].plan  # planning items carry no switching


def test_capacitor_when_the_feeder_is_below_its_band(feeder) -> None:
    heavy = replace(feeder, loads=tuple(replace(ld, p_mw=ld.p_mw * 1.2, q_mvar=ld.q_mvar * 1.2) for ld in feeder.loads))
    items = recommend(heavy)
    assert len(items) == 1
    assert items[0].title.startswith("add a ") and items[0].title.endswith("Mvar capacitor bank at bus18")
    before, after = (float(x) for x in items[0].predicted_effect.split(" pu")[0].split("voltage ")[1].split(" -> "))
    assert after > before


def test_nothing_to_recommend_on_an_optimal_feeder(feeder, reconfiguration) -> None:
    optimal = feeder.with_switch_states({"sw33": False, "sw34": False, "sw35": False, "sw36": False,
                                          "sw7": True, "sw9": True, "sw14": True, "sw32": True})
    r = run_analysis("RECONFIGURATION", optimal, {}, "job-o", None)
    assert list(r["open_switch_ids"]) == ["sw14", "sw32", "sw37", "sw7", "sw9"] and not r["steps"]
    assert recommend(optimal, reconfiguration=r) == ()
