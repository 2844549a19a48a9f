"""Demand response core: each programme rule refused with its name, dispatch with fatigue
spreading and shortfall, all-or-nothing, opt-out rules and re-planning, the 10-in-10 baseline with
its same-day adjustment, and performance."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import numpy as np
import pytest

from actors.cores import dr
from graph_schema.errors import BadInput

NOW = datetime(2026, 7, 6, 8, 0, tzinfo=UTC)  # a Monday
PROG = dr.Program("p1", "Summer capacity", dr.ProgramKind.CAPACITY, date(2026, 6, 1), date(2026, 10, 1),
                  max_events_per_season=3, max_hours_per_event=4, min_notice_min=60, opt_out_deadline_min=30,
                  max_opt_outs_per_season=1)


def _res(i: int, kw: float, **kw_: object) -> dr.Resource:
    return dr.Resource(f"r{i}", "p1", "f1", f"load{i}", f"acct{i}", dr.ResourceKind.THERMOSTAT, kw,
                       date(2026, 1, 1), **kw_)  # type: ignore[arg-type]


RES = [_res(1, 50), _res(2, 30), _res(3, 20), _res(4, 10, enrolled_until=date(2026, 7, 1))]


def _req(h0: float = 4, hours: float = 2, kw: float = 60, **kw_: object) -> dr.EventRequest:
    start = NOW + timedelta(hours=h0)
    return dr.EventRequest("p1", "f1", start, start + timedelta(hours=hours), kw, **kw_)  # type: ignore[arg-type]


def _event(i: int, day: int, resources: tuple[tuple[str, float], ...] = (), **kw: object) -> dr.EventRecord:
    start = datetime(2026, 7, day, 14, tzinfo=UTC)
    return dr.EventRecord(f"e{i}", "p1", "f1", start, start + timedelta(hours=2), 50, resources=resources,
                          **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(("req", "events", "rule"), [
    (_req(h0=-1), [], "IN_THE_PAST"),
    (_req(h0=0.5), [], "NOTICE"),
    (_req(hours=5), [], "MAX_HOURS_PER_EVENT"),
    (_req(kw=0), [], "TARGET"),
    (_req(hours=-1), [], "WINDOW"),
    (dr.EventRequest("p1", "f1", datetime(2026, 10, 2, tzinfo=UTC), datetime(2026, 10, 2, 1, tzinfo=UTC), 5),
     [], "OUTSIDE_SEASON"),
    (_req(h0=5), [_event(9, 6)], "OVERLAPPING"),
    (_req(h0=30), [_event(1, 1), _event(2, 2), _event(3, 3)], "MAX_EVENTS_PER_SEASON"),
])
def test_each_rule_is_bad_input_naming_it(req: dr.EventRequest, events: list[dr.EventRecord], rule: str) -> None:
    with pytest.raises(BadInput) as err:
        dr.check_event(PROG, req, events, NOW)
    assert err.value.code == "BAD_INPUT" and err.value.message.startswith(f"rule={rule}:"), err.value.message


def test_an_overlap_on_another_feeder_or_a_cancelled_event_is_fine() -> None:
    other = dr.EventRecord("e9", "p1", "f2", NOW + timedelta(hours=4), NOW + timedelta(hours=6), 10)
    dr.check_event(PROG, _req(), [other, _event(8, 6, cancelled=True)], NOW)


def test_dispatch_meets_the_target_largest_first_and_states_a_shortfall() -> None:
    d = dr.dispatch(PROG, RES, _req(kw=60), [])
    assert d.resources == (("r1", 50), ("r2", 30)) and d.planned_kw == 60 and d.shortfall_kw == 0
    d = dr.dispatch(PROG, RES, _req(kw=150), [])  # r4's enrolment ended: 100 kW at most
    assert [r for r, _ in d.resources] == ["r1", "r2", "r3"] and d.planned_kw == 100 and d.shortfall_kw == 50
    with pytest.raises(BadInput, match="rule=SHORTFALL"):
        dr.dispatch(PROG, RES, _req(kw=150, all_or_nothing=True), [])


def test_dispatch_spreads_fatigue_and_respects_per_resource_limits() -> None:
    past = [_event(1, 1, (("r1", 50),)), _event(2, 2, (("r1", 50), ("r2", 30)))]
    d = dr.dispatch(PROG, RES, _req(kw=40), past)
    assert d.resources[0][0] == "r3"  # never used this season: first
    tired = [_event(i, i, (("r1", 50),)) for i in (1, 2, 3)]  # r1 has used all 3 events
    assert "r1" not in {r for r, _ in dr.dispatch(PROG, RES, _req(kw=100), tired).resources}


def test_opt_out_rules_and_re_planning() -> None:
    ev = dr.EventRecord("e1", "p1", "f1", NOW + timedelta(hours=4), NOW + timedelta(hours=6), 60,
                        resources=(("r1", 50), ("r2", 30)))
    dr.check_opt_out(PROG, ev, "r1", [ev], NOW)
    replanned = dr.dispatch(PROG, RES, _req(kw=60), [ev], opted_out=["r1"], event_id="e1")
    assert [r for r, _ in replanned.resources] == ["r2", "r3"] and replanned.shortfall_kw == 10
    with pytest.raises(BadInput, match="rule=OPT_OUT_DEADLINE"):
        dr.check_opt_out(PROG, ev, "r1", [ev], ev.start - timedelta(minutes=10))
    with pytest.raises(BadInput, match="rule=NOT_DISPATCHED"):
        dr.check_opt_out(PROG, ev, "r3", [ev], NOW)
    used = _event(5, 2, (("r1", 50),), opted_out=("r1",))
    with pytest.raises(BadInput, match="rule=MAX_OPT_OUTS_PER_SEASON"):
        dr.check_opt_out(PROG, ev, "r1", [ev, used], NOW)
    with pytest.raises(BadInput, match="rule=CANCELLED"):
        dr.check_opt_out(PROG, dr.EventRecord("e2", "p1", "f1", ev.start, ev.end, 1, cancelled=True,
                                              resources=ev.resources), "r1", [], NOW)


def test_status_follows_the_clock() -> None:
    ev = dr.EventRecord("e1", "p1", "f1", NOW, NOW + timedelta(hours=1), 5)
    assert ev.status(NOW - timedelta(seconds=1)) is dr.EventStatus.SCHEDULED
    assert ev.status(NOW) is dr.EventStatus.ACTIVE
    assert ev.status(NOW + timedelta(hours=1)) is dr.EventStatus.COMPLETED


def test_ten_in_ten_baseline_skips_weekends_and_event_days_and_adjusts_same_day() -> None:
    event_day = date(2026, 7, 20)  # a Monday
    profiles = {}
    for k in range(1, 31):
        d = event_day - timedelta(days=k)
        profiles[d] = np.full(96, 100.0 if d.weekday() < 5 else 500.0)  # weekends would skew it
    profiles[date(2026, 7, 17)] = np.full(96, 999.0)  # an event day: excluded
    today = np.full(96, 110.0)  # 10 % above the baseline before the event
    today[64:72] = 60.0  # 16:00-18:00: the event, 50 kW below the adjusted baseline
    profiles[event_day] = today
    b = dr.baseline_10_in_10(profiles, event_day, 64, excluded=[date(2026, 7, 17)])
    assert len(b.days) == 10 and all(d.weekday() < 5 for d in b.days) and date(2026, 7, 17) not in b.days
    assert b.adjustment == pytest.approx(1.1) and np.allclose(b.kw, 110.0)
    perf = dr.performance(50, b, today, 64, 72)
    assert perf.delivered_kw == pytest.approx(50.0) and perf.intervals == 8 and "10-in-10" in perf.baseline_method
    profiles[event_day] = np.full(96, 300.0)  # far above: the adjustment is capped at +20 %
    assert dr.baseline_10_in_10(profiles, event_day, 64).adjustment == pytest.approx(1.2)
    with pytest.raises(BadInput, match="rule=BASELINE"):
        dr.baseline_10_in_10({}, event_day, 64)
    with pytest.raises(BadInput, match="rule=NO_METER_DATA"):
        dr.performance(5, b, np.full(96, np.nan), 64, 72)
