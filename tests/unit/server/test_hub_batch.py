"""The hub's page index: each subscriber gets its feeder's events of its kinds, in seq order."""

from __future__ import annotations

from datetime import UTC, datetime

from actors.cores.events import Event, EventKind, Severity
from server.services import HubBatch


def ev(seq: int, feeder: str, kind: EventKind) -> Event:
    return Event(seq=seq, kind=kind, feeder_id=feeder, element_id=None, severity=Severity.INFO, message="",
                 at=datetime(2026, 1, 1, tzinfo=UTC), data={})


BATCH = HubBatch([ev(1, "a", EventKind.MEASUREMENT), ev(2, "b", EventKind.MEASUREMENT),
                  ev(3, "a", EventKind.CONTROL), ev(4, "a", EventKind.MEASUREMENT),
                  ev(5, "b", EventKind.CONTROL)])


def seqs(events: list[Event]) -> list[int]:
    return [e.seq for e in events]


def test_one_feeder_one_kind():
    assert seqs(BATCH.select("a", frozenset({str(EventKind.MEASUREMENT)}))) == [1, 4]
    assert seqs(BATCH.select("b", frozenset({str(EventKind.CONTROL)}))) == [5]


def test_several_kinds_merge_in_seq_order():
    kinds = frozenset({str(EventKind.MEASUREMENT), str(EventKind.CONTROL)})
    assert seqs(BATCH.select("a", kinds)) == [1, 3, 4]


def test_any_feeder_or_any_kind():
    assert seqs(BATCH.select(None, frozenset({str(EventKind.CONTROL)}))) == [3, 5]
    assert seqs(BATCH.select("b", None)) == [2, 5]
    assert seqs(BATCH.select(None, None)) == [1, 2, 3, 4, 5]


def test_unknown_feeder_or_kind_is_empty_and_callers_cannot_corrupt_the_index():
    assert BATCH.select("zz", frozenset({str(EventKind.MEASUREMENT)})) == []
    assert BATCH.select("a", frozenset({"NOPE"})) == []
    got = BATCH.select("a", frozenset({str(EventKind.MEASUREMENT)}))
    got.clear()
    assert seqs(BATCH.select("a", frozenset({str(EventKind.MEASUREMENT)}))) == [1, 4]
