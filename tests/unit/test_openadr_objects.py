"""OpenADR 3 objects (pure): DR records in the spec's shapes, a VEN's narrowed view of an event,
ISO 8601 durations, and each malformed event/report refused with a Problem naming the fix."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest

from actors.cores import dr
from server.openadr3 import objects as o

T0 = datetime(2026, 7, 1, 14, tzinfo=UTC)


def _ev(**kw: Any) -> dict[str, Any]:
    base = {"objectType": "EVENT", "programID": "p", "intervalPeriod": {"start": "2026-07-01T14:00:00Z",
                                                                          "duration": "PT1H30M"},
            "intervals": [{"id": 0, "payloads": [{"type": o.SETPOINT, "values": [-40]}]}]}
    return {**base, **kw}


def test_durations() -> None:
    assert o.duration("PT2H", "d") == timedelta(hours=2)
    assert o.duration("P1DT30M", "d") == timedelta(days=1, minutes=30)
    assert o.iso_duration(timedelta(hours=1, minutes=30)) == "PT1H30M"
    assert o.iso_duration(timedelta(0)) == "PT0S"
    for bad in ("PT", "P", "2h", 5, None, "PT-1H"):
        with pytest.raises(o.Problem, match="ISO 8601"):
            o.duration(bad, "d")


def test_new_event() -> None:
    ne = o.new_event(_ev())
    assert ne == o.NewEvent("p", T0, T0 + timedelta(minutes=90), 40.0)


@pytest.mark.parametrize(("body", "words"), [
    ("x", "JSON EVENT object"),
    (_ev(objectType="VEN"), "objectType"),
    (_ev(programID=None), "'programID' is required"),
    (_ev(programID=7), "'programID' must be a string"),
    (_ev(intervalPeriod="now"), "intervalPeriod"),
    (_ev(intervalPeriod={"start": "2026-07-01T14:00:00", "duration": "PT1H"}), "UTC offset"),
    (_ev(intervalPeriod={"start": "2026-07-01T14:00:00Z", "duration": "PT0S"}), "longer than zero"),
    (_ev(intervals=[]), "'intervals' is required"),
    (_ev(intervals=[{"id": 0}]), "payloads"),
    (_ev(intervals=[{"id": 0, "payloads": [{"type": "X"}]}]), "a payload is"),
    (_ev(intervals=[{"id": 0, "payloads": [{"type": o.SETPOINT, "values": [5]}]}]), "negative"),
    (_ev(intervals=[{"id": 0, "payloads": [{"type": o.SETPOINT, "values": [True]}]}]), "negative"),
    (_ev(intervals=[{"id": 0, "payloads": [{"type": "SIMPLE", "values": [1]}]}]), "no DISPATCH_SETPOINT_RELATIVE"),
])
def test_new_event_refusals(body: Any, words: str) -> None:
    with pytest.raises(o.Problem, match=words) as exc:
        o.new_event(body)
    assert exc.value.status == 400 and exc.value.body()["title"] == "Bad Request"


def _rep(payload: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"objectType": "REPORT", "programID": "p", "eventID": "ev-1", "clientName": "c",
            "resources": [{"resourceName": "p/l1", "intervals": [{"id": 0, "payloads": [payload]}]}], **kw}


def test_new_report_and_opt_out() -> None:
    r = o.new_report(_rep({"type": "USAGE", "values": [1.5]}))
    assert r.resource_names == ("p/l1",) and r.opt_outs == ()
    assert o.new_report(_rep({"type": o.OPT_OUT, "values": [True]})).opt_outs == ("p/l1",)
    assert o.new_report(_rep({"type": o.OPT_OUT, "values": [False]})).opt_outs == ()


@pytest.mark.parametrize(("body", "words"), [
    (_rep({"type": "USAGE", "values": [1]}, eventID=None), "'eventID' is required"),
    (_rep({"type": "USAGE", "values": [1]}, resources=[]), "'resources' is required"),
    (_rep({"type": "USAGE", "values": [1]}, resources=["x"]), r"resources\[0\] must be an object"),
    (_rep({"type": "USAGE", "values": [1]}, resources=[{"resourceName": "a", "intervals": 3}]), "must be a list"),
    (_rep({"type": "USAGE"}), "is not"),
    (_rep({"type": "USAGE", "values": [1]}, objectType="EVENT"), "objectType"),
])
def test_new_report_refusals(body: Any, words: str) -> None:
    with pytest.raises(o.Problem, match=words):
        o.new_report(body)


def test_views() -> None:
    prog = dr.Program(id="f-capacity", name="cap", kind=dr.ProgramKind.CAPACITY, season_start=date(2026, 1, 1),
                      season_end=date(2027, 1, 1), max_events_per_season=10, max_hours_per_event=4,
                      min_notice_min=30, opt_out_deadline_min=15, max_opt_outs_per_season=3)
    p = o.program(prog, "f", T0)
    assert p["objectType"] == "PROGRAM" and p["intervalPeriod"]["duration"] == "P365D"
    ev = dr.EventRecord(id="ev-3", program_id="f-capacity", feeder_id="f", start=T0, end=T0 + timedelta(hours=2),
                        target_kw=30.0, cancelled=False, resources=(("f-capacity/a", 20.0), ("f-capacity/b", 15.0)),
                        opted_out=())
    full = o.event(ev, dr.EventStatus.SCHEDULED, T0)
    assert full["targets"][0]["values"] == ["f-capacity/a", "f-capacity/b"]
    assert full["intervals"][0]["payloads"][1]["values"] == [-30.0]
    assert full["intervalPeriod"] == {"start": "2026-07-01T14:00:00Z", "duration": "PT2H"}
    mine = o.event(ev, dr.EventStatus.SCHEDULED, T0, only=["f-capacity/b"])
    assert mine["targets"][0]["values"] == ["f-capacity/b"] and mine["intervals"][0]["payloads"][1]["values"] == [-15.0]
    cancelled = o.event(ev, dr.EventStatus.CANCELLED, T0)
    assert cancelled["priority"] == 0 and cancelled["intervals"][0]["payloads"][0]["values"] == [0]
    assert o.Problem(404, "Not Found", "x").body("/openadr3/x") == {
        "type": "about:blank", "title": "Not Found", "status": 404, "detail": "x", "instance": "/openadr3/x"}
