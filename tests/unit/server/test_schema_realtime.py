"""Real-time schema pieces without Ray or a store: alarm ids on alarm events, the events query's
kinds (unknown ones are BAD_INPUT, not INTERNAL), the measurement subscription's point filter and
the control history's scope handed to the store query."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest

from actors.cores.events import ALARM_KIND_KEY, AlarmBook, Event, EventData, EventKind, Severity, alarm_id
from graph_schema.errors import BadInput
from security.roles import Role
from security.tokens import Principal
from server.schema.realtime import Event as EventType
from server.schema.realtime import _event_kinds, _point_filter, event_alarm_id

NOW = datetime(2025, 1, 31, 12, 0, tzinfo=UTC)


def _event(kind: EventKind, element_id: str | None = "sw7", seq: int = 1, **data: Any) -> Event:
    return Event(seq=seq, kind=kind, feeder_id="case33bw", element_id=element_id, severity=Severity.ALARM,
                 message="m", at=NOW, data=EventData(data))


def test_alarm_events_carry_the_id_acknowledge_alarm_takes():
    trip = _event(EventKind.BREAKER_TRIP, **{ALARM_KIND_KEY: "BREAKER_TRIP"})
    book = AlarmBook()
    book.raise_(trip)
    (alarm,) = book.active()
    assert event_alarm_id(trip) == alarm_id(alarm) == "case33bw|sw7|BREAKER_TRIP"
    assert EventType.of(trip).alarm_id == alarm_id(alarm)
    cleared = _event(EventKind.ALARM_CLEARED, **{ALARM_KIND_KEY: "BREAKER_TRIP"})
    assert event_alarm_id(cleared) == alarm_id(alarm)
    feeder_wide = _event(EventKind.COMM_LOSS, element_id=None, **{ALARM_KIND_KEY: "COMM_LOSS"})
    assert event_alarm_id(feeder_wide) == "case33bw||COMM_LOSS"


def test_other_events_have_no_alarm_id():
    assert EventType.of(_event(EventKind.CONTROL, phase="RESULT")).alarm_id is None
    assert event_alarm_id(_event(EventKind.MEASUREMENT, point_id="p")) is None


def test_event_kinds_accept_both_arguments_and_refuse_unknown_strings():
    assert _event_kinds(None, None) is None
    assert _event_kinds([], None) is None  # as before: every kind
    assert _event_kinds(["CONTROL"], [EventKind.ALARM]) == ["ALARM", "CONTROL"]
    with pytest.raises(BadInput, match="'foo'"):
        _event_kinds(["foo"], None)


class _Grid:
    def __init__(self) -> None:
        self.history_args: dict[str, Any] = {}

    async def model(self, feeder_id: str) -> Any:
        from graph_schema.importers import case33bw

        return case33bw()

    async def measurements(self, feeder_id: str) -> list[dict[str, Any]]:
        return [{"point_id": "case33bw/sw7/STATUS"}, {"point_id": "case33bw/bus3/VM_PU"}]

    async def control_history(self, feeder_ids: Any, *, limit: int, before_seq: int | None) -> list[dict[str, Any]]:
        self.history_args = {"feeder_ids": list(feeder_ids), "limit": limit, "before_seq": before_seq}
        return []


def _info(grid: Any, feeders: frozenset[str] | None = None) -> Any:
    principal = Principal(sub="op", roles=frozenset({Role.OPERATOR}), feeders=feeders, token_id="t",
                          expires_at=NOW + timedelta(hours=1))
    grid.fleet = SimpleNamespace(feeder_ids=["case33bw", "cigre-mv"])
    return SimpleNamespace(context={"principal": principal, "services": SimpleNamespace(grid=grid)})


def _m(point_id: str, element_id: str) -> Event:
    return _event(EventKind.MEASUREMENT, element_id=element_id, point_id=point_id, quantity="VM_PU", value=1.0,
                  quality="GOOD")


def test_measurement_filter_keeps_only_the_points_asked_for():
    info = _info(_Grid())
    assert asyncio.run(_point_filter(info, "case33bw", None, None)) is None
    by_element = asyncio.run(_point_filter(info, "case33bw", None, ["sw7"]))
    assert by_element(_m("case33bw/sw7/STATUS", "sw7")) and not by_element(_m("case33bw/bus3/VM_PU", "bus3"))
    by_point = asyncio.run(_point_filter(info, "case33bw", ["case33bw/bus3/VM_PU"], None))
    assert by_point(_m("case33bw/bus3/VM_PU", "bus3")) and not by_point(_m("case33bw/sw7/STATUS", "sw7"))


@pytest.mark.parametrize(("points", "elements", "words"), [
    (None, ["nope"], ["elementIds", "nope", "feeder(id"]),
    (["case33bw/nope/VM_PU"], None, ["pointIds", "case33bw/nope/VM_PU", "measurements(feederId"]),
    ([], None, ["pointIds", "empty"]),
])
def test_measurement_filter_refuses_unknown_ids_naming_them(points, elements, words):
    with pytest.raises(BadInput) as err:
        asyncio.run(_point_filter(_info(_Grid()), "case33bw", points, elements))
    assert all(w in err.value.message for w in words), err.value.message


def test_control_history_hands_the_token_scope_to_the_store_query():
    from server.schema.realtime import RealtimeQuery

    grid = _Grid()
    resolver = RealtimeQuery.__dict__["control_history"]
    asyncio.run(resolver(RealtimeQuery(), _info(grid, frozenset({"cigre-mv"})), None, 3, None))
    assert grid.history_args == {"feeder_ids": ["cigre-mv"], "limit": 4, "before_seq": None}
    asyncio.run(resolver(RealtimeQuery(), _info(grid), None, 3, None))
    assert grid.history_args["feeder_ids"] == ["case33bw", "cigre-mv"]
