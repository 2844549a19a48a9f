"""Event model, bounded resumable event log with long-poll, alarm book."""

from __future__ import annotations

import asyncio
import json
import pickle
from datetime import UTC, datetime, timedelta

import pytest

from actors.cores.events import (
    ALARM_KIND_KEY,
    AlarmBook,
    Event,
    EventData,
    EventKind,
    EventLog,
    Severity,
)
from graph_schema.errors import BadInput, NotFound

T0 = datetime(2025, 1, 1, 12, 0, 0, tzinfo=UTC)


class Wall:
    def __init__(self) -> None:
        self.t = T0

    def __call__(self) -> datetime:
        self.t += timedelta(seconds=1)
        return self.t


def fill(log: EventLog, n: int, feeder_id: str = "f1", kind: EventKind = EventKind.MEASUREMENT) -> None:
    for i in range(n):
        log.append(kind, feeder_id, f"m{i}")


# -- the model -------------------------------------------------------------------------------------


def make_event(**kw) -> Event:
    base = dict(seq=7, kind=EventKind.BREAKER_TRIP, feeder_id="f1", element_id="sw_b1",
                severity=Severity.CRITICAL, message="breaker tripped", at=T0,
                data={"i_ka": 2.5, "phase": "A", "reclosed": False, "shots": 3, "note": None}, durable=True)
    base.update(kw)
    return Event(**base)


def test_event_pickles_round_trip() -> None:
    e = make_event()
    back = pickle.loads(pickle.dumps(e))
    assert back == e and hash(back) == hash(e)
    assert back.data["i_ka"] == 2.5 and isinstance(back.data, EventData)


def test_event_dict_round_trip_through_json() -> None:
    e = make_event()
    d = json.loads(json.dumps(e.to_dict()))
    assert d["kind"] == "BREAKER_TRIP" and d["at"] == "2025-01-01T12:00:00+00:00"
    assert Event.from_dict(d) == e


def test_event_is_immutable() -> None:
    e = make_event()
    with pytest.raises(AttributeError):
        e.message = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        e.data["x"] = 1  # type: ignore[index]


@pytest.mark.parametrize("data", [{"x": [1, 2]}, {"x": {"y": 1}}, {1: "a"}, {"x": float("nan")}])
def test_event_data_must_be_scalars(data) -> None:
    with pytest.raises(BadInput):
        make_event(data=data)


def test_event_time_must_be_aware() -> None:
    with pytest.raises(BadInput):
        make_event(at=datetime(2025, 1, 1))


def test_from_dict_rejects_garbage() -> None:
    with pytest.raises(BadInput):
        Event.from_dict({"seq": 1})


# -- the log ---------------------------------------------------------------------------------------


def test_seq_is_monotonic_from_start_seq() -> None:
    log = EventLog(start_seq=41, utc_now=Wall())
    a = log.append(EventKind.CONTROL, "f1", "open sw", element_id="sw", severity="INFO")
    b = log.append("ALARM", "f2", "low voltage", severity=Severity.WARNING)
    assert (a.seq, b.seq) == (42, 43)
    assert a.at < b.at
    assert log.latest_seq == 43
    page = log.since(0)
    assert [e.seq for e in page.events] == [42, 43]
    assert page.truncated  # 1..41 are not in memory: fetch them from the store


def test_append_event_resequences() -> None:
    log = EventLog()
    fill(log, 2)
    e = log.append_event(make_event(seq=0))
    assert e.seq == 3 and e.message == "breaker tripped"
    assert log.since(2).events == (e,)


def test_capacity_bound_and_truncation_flag() -> None:
    log = EventLog(capacity=5)
    fill(log, 12)
    assert len(log) == 5 and log.oldest_seq == 8 and log.latest_seq == 12
    page = log.since(3)
    assert page.truncated and [e.seq for e in page.events] == [8, 9, 10, 11, 12] and page.next_seq == 12
    edge = log.since(7)  # 8 is the first wanted and still held
    assert not edge.truncated and edge.events[0].seq == 8
    assert log.since(6).truncated  # 7 was dropped
    up_to_date = log.since(12)
    assert up_to_date.events == () and not up_to_date.truncated and up_to_date.next_seq == 12


def test_empty_log() -> None:
    log = EventLog()
    page = log.since(0)
    assert page.events == () and not page.truncated and page.next_seq == 0
    assert log.oldest_seq == 1


def test_unknown_future_seq_asks_for_resync() -> None:
    log = EventLog()
    fill(log, 3)
    page = log.since(10)
    assert page.truncated and page.events == () and page.next_seq == 3


def test_limit_and_resume() -> None:
    log = EventLog()
    fill(log, 10)
    seen: list[int] = []
    seq = 0
    while True:
        page = log.since(seq, limit=3)
        seen += [e.seq for e in page.events]
        if not page.events:
            break
        seq = page.next_seq
    assert seen == list(range(1, 11))


def test_filters_and_next_seq_skips_filtered_events() -> None:
    log = EventLog()
    log.append(EventKind.MEASUREMENT, "f1")
    log.append(EventKind.ALARM, "f1", "a")
    log.append(EventKind.ALARM, "f2", "b")
    log.append(EventKind.CONTROL, "f2", "c")
    log.append(EventKind.MEASUREMENT, "f2")
    page = log.since(0, kinds={EventKind.ALARM, "CONTROL"})
    assert [e.seq for e in page.events] == [2, 3, 4] and page.next_seq == 5
    page = log.since(0, feeder_id="f2", kinds=["ALARM"])
    assert [e.seq for e in page.events] == [3]
    page = log.since(0, feeder_id="f3")
    assert page.events == () and page.next_seq == 5
    page = log.since(0, kinds=[EventKind.ALARM], limit=1)
    assert [e.seq for e in page.events] == [2] and page.next_seq == 2


def test_bad_arguments() -> None:
    with pytest.raises(BadInput):
        EventLog(capacity=0)
    with pytest.raises(BadInput):
        EventLog(start_seq=-1)
    log = EventLog()
    with pytest.raises(BadInput):
        log.since(-1)
    with pytest.raises(BadInput):
        log.since(0, limit=0)
    with pytest.raises(ValueError):
        log.since(0, kinds=["NOPE"])


async def test_wait_since_wakes_on_append() -> None:
    log = EventLog()
    fill(log, 2)
    waiter = asyncio.create_task(log.wait_since(2, 5.0))
    await asyncio.sleep(0)
    assert not waiter.done()
    log.append(EventKind.ALARM, "f1", "new")
    page = await asyncio.wait_for(waiter, 1.0)
    assert [e.seq for e in page.events] == [3]


async def test_wait_since_returns_at_once_when_something_is_there() -> None:
    log = EventLog()
    fill(log, 2)
    page = await asyncio.wait_for(log.wait_since(1, 5.0), 0.5)
    assert [e.seq for e in page.events] == [2]


async def test_wait_since_times_out_empty() -> None:
    log = EventLog()
    fill(log, 2)
    loop = asyncio.get_running_loop()
    t = loop.time()
    page = await log.wait_since(2, 0.05)
    assert page.events == () and page.next_seq == 2 and not page.truncated
    assert loop.time() - t >= 0.04


async def test_wait_since_keeps_waiting_through_filtered_events() -> None:
    log = EventLog()
    waiter = asyncio.create_task(log.wait_since(0, 5.0, kinds=[EventKind.ALARM]))
    await asyncio.sleep(0)
    # A witness woken by the same append, after the filtered waiter: once it has its page, the
    # filtered waiter has seen the measurement too and gone back to waiting.
    witness = asyncio.create_task(log.wait_since(0, 5.0))
    await asyncio.sleep(0)
    log.append(EventKind.MEASUREMENT, "f1")
    assert [e.seq for e in (await asyncio.wait_for(witness, 1.0)).events] == [1]
    assert not waiter.done()
    log.append(EventKind.ALARM, "f1", "a")
    page = await asyncio.wait_for(waiter, 1.0)
    assert [e.seq for e in page.events] == [2]


async def test_wait_since_timeout_advances_past_filtered() -> None:
    log = EventLog()
    waiter = asyncio.create_task(log.wait_since(0, 0.05, feeder_id="f9"))
    await asyncio.sleep(0)
    fill(log, 3)
    page = await waiter
    assert page.events == () and page.next_seq == 3


async def test_many_waiters_all_wake() -> None:
    log = EventLog()
    waiters = [asyncio.create_task(log.wait_since(0, 5.0)) for _ in range(5)]
    await asyncio.sleep(0)
    log.append(EventKind.PLAN, "f1", "plan")
    pages = await asyncio.wait_for(asyncio.gather(*waiters), 1.0)
    assert all(p.events[0].seq == 1 for p in pages)


async def test_wait_since_rejects_bad_timeout() -> None:
    with pytest.raises(BadInput):
        await EventLog().wait_since(0, float("inf"))


# -- alarms ----------------------------------------------------------------------------------------


def alarm(log: EventLog, element: str = "b3", sev: Severity = Severity.WARNING, kind: str = "VM_LOW",
          feeder: str = "f1", msg: str = "low voltage") -> Event:
    return log.append(EventKind.LIMIT_VIOLATION, feeder, msg, element_id=element, severity=sev,
                      data={ALARM_KIND_KEY: kind, "vm_pu": 0.93})


def test_alarm_dedup_counts_repeats() -> None:
    log, book = EventLog(utc_now=Wall()), AlarmBook()
    first = alarm(log)
    assert book.raise_(first) is True
    for _ in range(4):
        assert book.raise_(alarm(log, msg="still low")) is False
    [a] = book.active()
    assert a.count == 5 and a.first_seen == first.at and a.last_seen > a.first_seen
    assert a.first_seq == 1 and a.last_seq == 5 and a.message == "still low"
    assert (a.feeder_id, a.element_id, a.kind) == ("f1", "b3", "VM_LOW")


def test_alarm_keys_distinguish_feeder_element_kind() -> None:
    log, book = EventLog(), AlarmBook()
    assert book.raise_(alarm(log))
    assert book.raise_(alarm(log, kind="VM_HIGH"))
    assert book.raise_(alarm(log, element="b4"))
    assert book.raise_(alarm(log, feeder="f2"))
    trip = log.append(EventKind.BREAKER_TRIP, "f1", "trip", element_id="sw_b1", severity=Severity.CRITICAL)
    assert book.raise_(trip)
    assert AlarmBook.key_of(trip) == ("f1", "sw_b1", "BREAKER_TRIP")
    assert len(book) == 5
    assert book.active()[0].key == ("f1", "sw_b1", "BREAKER_TRIP")  # most severe first
    assert {a.feeder_id for a in book.active(feeder_id="f2")} == {"f2"}


def test_alarm_clear_and_raise_again_is_new() -> None:
    log, book = EventLog(), AlarmBook()
    e = alarm(log)
    book.raise_(e)
    key = AlarmBook.key_of(e)
    assert book.clear(key) is True
    assert book.clear(key) is False
    assert book.active() == []
    assert book.raise_(alarm(log)) is True
    assert book.active()[0].count == 1


def test_alarm_acknowledge_and_escalation() -> None:
    log, book = EventLog(), AlarmBook(utc_now=lambda: T0)
    e = alarm(log)
    book.raise_(e)
    key = AlarmBook.key_of(e)
    a = book.acknowledge(key, "alice")
    assert a.acknowledged and a.acknowledged_by == "alice" and a.acknowledged_at == T0
    book.raise_(alarm(log))  # same severity: stays acknowledged
    assert book.get(key) is not None and book.get(key).acknowledged  # type: ignore[union-attr]
    assert book.active(unacknowledged_only=True) == []
    book.raise_(alarm(log, sev=Severity.ALARM))  # escalation: acknowledge again
    a2 = book.get(key)
    assert a2 is not None and not a2.acknowledged and a2.severity is Severity.ALARM
    book.raise_(alarm(log, sev=Severity.INFO))  # lower: keeps the highest
    assert book.get(key).severity is Severity.ALARM  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        book.acknowledge(("f1", "zz", "VM_LOW"), "alice")
    with pytest.raises(BadInput):
        book.acknowledge(key, " ")


def test_alarm_ids_round_trip_and_garbage_is_refused() -> None:
    from actors.cores.events import parse_alarm_id

    assert parse_alarm_id("f1|sw1|BREAKER_TRIP") == ("f1", "sw1", "BREAKER_TRIP")
    assert parse_alarm_id("f1||COMM_LOSS") == ("f1", None, "COMM_LOSS")
    for bad in ("", "f1|sw1", "|sw1|X", "f1|sw1|", "a|b|c|d"):
        with pytest.raises(BadInput, match="malformed"):
            parse_alarm_id(bad)
