"""Events of the head-end: the model, a bounded resumable log and an alarm book. Pure, no I/O.

* :class:`Event` is one thing that happened on a feeder (a measurement crossing a limit, a breaker
  trip, a control, a topology change...). It is frozen, hashable, picklable (it crosses Ray) and has
  a JSON-friendly :meth:`Event.to_dict` / :meth:`Event.from_dict`.
* :class:`EventLog` assigns the cluster-wide sequence number (``seq``, 1, 2, 3... after
  ``start_seq``) and keeps the last ``capacity`` events in memory. A client resumes with
  :meth:`EventLog.since` from the last ``seq`` it saw; ``truncated=True`` tells it that events it
  asked for have left the window (or that the log never issued that seq): it must fetch the
  missing ``durable`` ones from the graph store, then carry on from ``next_seq``.
  :meth:`EventLog.wait_since` is the long-poll: it returns as soon as a matching event is there.
  Use one log from one event loop (the Ray wrapper's); it is not thread-safe.
* :class:`AlarmBook` holds the active alarms, one per (feeder, element, alarm kind), in the manner
  of ANSI/ISA-18.2 alarm management: a repeated alarm updates the existing entry (count, last seen)
  instead of flooding the operator; an acknowledged alarm that escalates in severity must be
  acknowledged again; a cleared alarm leaves the book.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from itertools import islice
from typing import Any

from graph_schema.errors import BadInput, NotFound

__all__ = [
    "ALARM_KIND_KEY",
    "Alarm",
    "AlarmBook",
    "AlarmKey",
    "Event",
    "EventData",
    "EventKind",
    "EventLog",
    "EventsPage",
    "Severity",
    "alarm_id",
    "parse_alarm_id",
]

Scalar = str | int | float | bool | None

# ``Event.data`` key naming the alarm kind (e.g. "VM_LOW", "OVERLOAD"); when absent the event kind is.
ALARM_KIND_KEY = "alarm_kind"


class EventKind(StrEnum):
    MEASUREMENT = "MEASUREMENT"
    ALARM = "ALARM"
    ALARM_CLEARED = "ALARM_CLEARED"
    ALARM_ACKNOWLEDGED = "ALARM_ACKNOWLEDGED"
    TOPOLOGY_CHANGE = "TOPOLOGY_CHANGE"
    CONTROL = "CONTROL"
    BREAKER_TRIP = "BREAKER_TRIP"
    FAULT_INDICATION = "FAULT_INDICATION"
    LAST_GASP = "LAST_GASP"
    COMM_LOSS = "COMM_LOSS"
    COMM_RESTORED = "COMM_RESTORED"
    LIMIT_VIOLATION = "LIMIT_VIOLATION"
    OUTAGE = "OUTAGE"
    PLAN = "PLAN"
    DER = "DER"  # DER management (#12): curtailment applied/released, mode, schedules, DER comm state


class Severity(StrEnum):
    INFO = "INFO"
    WARNING = "WARNING"
    ALARM = "ALARM"
    CRITICAL = "CRITICAL"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {Severity.INFO: 0, Severity.WARNING: 1, Severity.ALARM: 2, Severity.CRITICAL: 3}


class EventData(Mapping[str, Scalar]):
    """An immutable, hashable, picklable mapping of str -> scalar (what ``Event.data`` holds)."""

    __slots__ = ("_d", "_items")

    def __init__(self, data: Mapping[str, Scalar] | None = None) -> None:
        d: dict[str, Scalar] = {}
        for k, v in (data or {}).items():
            if not isinstance(k, str):
                raise BadInput(f"event data key {k!r} is not a string; use string keys")
            if v is not None and not isinstance(v, str | int | float | bool):
                raise BadInput(f"event data {k!r} holds a {type(v).__name__}; use str, int, float, bool "
                               f"or None")
            if isinstance(v, float) and not math.isfinite(v):
                raise BadInput(f"event data {k!r} is {v}; use a finite number or None (JSON has no NaN)")
            d[k] = v
        self._d = d
        self._items = tuple(sorted(d.items()))

    def __getitem__(self, key: str) -> Scalar:
        return self._d[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __hash__(self) -> int:
        return hash(self._items)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return dict(self._d) == dict(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"EventData({self._d!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        return (EventData, (dict(self._d),))


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Event:
    seq: int  # cluster-wide, assigned by the EventLog (0: not yet logged)
    kind: EventKind
    feeder_id: str
    element_id: str | None
    severity: Severity
    message: str
    at: datetime  # UTC
    data: Mapping[str, Scalar] = field(default_factory=EventData)
    durable: bool = False  # also written to the graph store (resumable beyond the memory window)

    def __post_init__(self) -> None:
        object.__setattr__(self, "kind", EventKind(self.kind))
        object.__setattr__(self, "severity", Severity(self.severity))
        if not isinstance(self.data, EventData):
            object.__setattr__(self, "data", EventData(self.data))
        if self.at.tzinfo is None:
            raise BadInput("event time must be timezone-aware (UTC)")

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: enums as names, ``at`` as ISO 8601, ``data`` as a plain dict."""
        return {
            "seq": self.seq,
            "kind": str(self.kind),
            "feeder_id": self.feeder_id,
            "element_id": self.element_id,
            "severity": str(self.severity),
            "message": self.message,
            "at": self.at.isoformat(),
            "data": dict(self.data),
            "durable": self.durable,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        try:
            return cls(
                seq=int(d["seq"]),
                kind=EventKind(d["kind"]),
                feeder_id=str(d["feeder_id"]),
                element_id=None if d.get("element_id") is None else str(d["element_id"]),
                severity=Severity(d["severity"]),
                message=str(d["message"]),
                at=datetime.fromisoformat(d["at"]).astimezone(UTC),
                data=EventData(d.get("data") or {}),
                durable=bool(d.get("durable", False)),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise BadInput(f"not an event record ({exc!r}); expected the keys of Event.to_dict()") from None


@dataclass(frozen=True, slots=True)
class EventsPage:
    events: tuple[Event, ...]
    next_seq: int  # pass this as ``seq`` next time
    truncated: bool  # events after the requested seq left the window: fetch them from the store


class EventLog:
    """The last ``capacity`` events, in seq order; seqs are contiguous from ``start_seq + 1``."""

    def __init__(self, capacity: int = 10_000, start_seq: int = 0, *,
                 utc_now: Callable[[], datetime] = _utc_now) -> None:
        if capacity < 1:
            raise BadInput(f"event log capacity {capacity} must be at least 1")
        if start_seq < 0:
            raise BadInput(f"start_seq {start_seq} must be >= 0 (the last seq issued before a restart)")
        self.capacity = capacity
        self._events: deque[Event] = deque(maxlen=capacity)
        self._latest = start_seq
        self._utc_now = utc_now
        self._changed = asyncio.Event()

    @property
    def latest_seq(self) -> int:
        return self._latest

    @property
    def oldest_seq(self) -> int:
        """The oldest seq still held (``latest_seq + 1`` when empty)."""
        return self._events[0].seq if self._events else self._latest + 1

    def __len__(self) -> int:
        return len(self._events)

    def append(
        self,
        kind: EventKind | str,
        feeder_id: str,
        message: str = "",
        *,
        element_id: str | None = None,
        severity: Severity | str = Severity.INFO,
        data: Mapping[str, Scalar] | None = None,
        at: datetime | None = None,
        durable: bool = False,
    ) -> Event:
        event = Event(
            seq=self._latest + 1,
            kind=EventKind(kind),
            feeder_id=feeder_id,
            element_id=element_id,
            severity=Severity(severity),
            message=message,
            at=at if at is not None else self._utc_now(),
            data=EventData(data),
            durable=durable,
        )
        self._push(event)
        return event

    def append_event(self, event: Event) -> Event:
        """Log an event built elsewhere (an actor's), giving it the next seq."""
        logged = replace(event, seq=self._latest + 1)
        self._push(logged)
        return logged

    def _push(self, event: Event) -> None:
        self._events.append(event)
        self._latest = event.seq
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()  # wake every waiter of this generation

    def since(
        self,
        seq: int,
        *,
        kinds: Collection[EventKind | str] | None = None,
        feeder_id: str | None = None,
        limit: int = 1000,
    ) -> EventsPage:
        """Events with a seq above ``seq`` that match the filters, at most ``limit`` of them."""
        if seq < 0:
            raise BadInput(f"seq {seq} must be >= 0 (0 reads from the start)")
        if limit < 1:
            raise BadInput(f"limit {limit} must be at least 1")
        if seq > self._latest:
            # A seq this log never issued (a client of an earlier log): resync from the store.
            return EventsPage((), self._latest, True)
        oldest = self.oldest_seq
        truncated = seq + 1 < oldest
        kind_set = None if kinds is None else {EventKind(k) for k in kinds}
        start = max(0, seq + 1 - oldest)
        out: list[Event] = []
        next_seq = self._latest
        for ev in islice(self._events, start, None):
            if (kind_set is None or ev.kind in kind_set) and (feeder_id is None or ev.feeder_id == feeder_id):
                out.append(ev)
                if len(out) == limit:
                    next_seq = ev.seq
                    break
        return EventsPage(tuple(out), next_seq, truncated)

    async def wait_since(
        self,
        seq: int,
        timeout_s: float,
        *,
        kinds: Collection[EventKind | str] | None = None,
        feeder_id: str | None = None,
        limit: int = 1000,
    ) -> EventsPage:
        """Long-poll: :meth:`since` as soon as it has something (events or ``truncated``), or the
        empty page after ``timeout_s`` (its ``next_seq`` skips the events the filters left out)."""
        if not (timeout_s >= 0 and math.isfinite(timeout_s)):
            raise BadInput(f"timeout_s {timeout_s!r} must be a finite number of seconds >= 0")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            changed = self._changed
            page = self.since(seq, kinds=kinds, feeder_id=feeder_id, limit=limit)
            if page.events or page.truncated:
                return page
            remaining = deadline - loop.time()
            if remaining <= 0:
                return page
            try:
                await asyncio.wait_for(changed.wait(), remaining)
            except TimeoutError:
                return self.since(seq, kinds=kinds, feeder_id=feeder_id, limit=limit)


# -- alarms ----------------------------------------------------------------------------------------

AlarmKey = tuple[str, str | None, str]  # (feeder id, element id, alarm kind)


@dataclass(frozen=True, slots=True)
class Alarm:
    key: AlarmKey
    severity: Severity  # the highest seen while active
    message: str  # the latest
    first_seen: datetime
    last_seen: datetime
    count: int
    first_seq: int
    last_seq: int
    acknowledged_by: str | None = None
    acknowledged_at: datetime | None = None

    @property
    def feeder_id(self) -> str:
        return self.key[0]

    @property
    def element_id(self) -> str | None:
        return self.key[1]

    @property
    def kind(self) -> str:
        return self.key[2]

    @property
    def acknowledged(self) -> bool:
        return self.acknowledged_by is not None


def alarm_id(alarm: Alarm) -> str:
    """The stable id of an alarm: ``<feeder>|<element>|<kind>`` (element empty for feeder alarms)."""
    return f"{alarm.feeder_id}|{alarm.element_id or ''}|{alarm.kind}"


def parse_alarm_id(text: str) -> tuple[str, str | None, str]:
    parts = text.split("|")
    if len(parts) != 3 or not parts[0] or not parts[2]:
        raise BadInput(f"alarm id {text!r} is malformed; use the id field of an alarm from the alarms query")
    return parts[0], parts[1] or None, parts[2]


class AlarmBook:
    """Active alarms keyed by (feeder id, element id, alarm kind); deduplicates repeats."""

    def __init__(self, *, utc_now: Callable[[], datetime] = _utc_now) -> None:
        self._alarms: dict[AlarmKey, Alarm] = {}
        self._utc_now = utc_now

    @staticmethod
    def key_of(event: Event) -> AlarmKey:
        """The alarm kind is ``data["alarm_kind"]`` when given, else the event kind."""
        kind = event.data.get(ALARM_KIND_KEY)
        return (event.feeder_id, event.element_id, str(kind) if kind is not None else str(event.kind))

    def raise_(self, event: Event) -> bool:
        """Record an alarm event; True when the alarm is new, False when it repeats an active one."""
        key = self.key_of(event)
        old = self._alarms.get(key)
        if old is None:
            self._alarms[key] = Alarm(key=key, severity=event.severity, message=event.message,
                                      first_seen=event.at, last_seen=event.at, count=1,
                                      first_seq=event.seq, last_seq=event.seq)
            return True
        escalated = event.severity.rank > old.severity.rank
        self._alarms[key] = replace(
            old,
            severity=event.severity if escalated else old.severity,
            message=event.message,
            last_seen=max(old.last_seen, event.at),
            count=old.count + 1,
            last_seq=max(old.last_seq, event.seq),
            # ISA-18.2: an escalated alarm is annunciated again and needs a new acknowledgement.
            acknowledged_by=None if escalated else old.acknowledged_by,
            acknowledged_at=None if escalated else old.acknowledged_at,
        )
        return False

    def clear(self, key: AlarmKey) -> bool:
        """Return to normal: True when the alarm was active."""
        return self._alarms.pop(key, None) is not None

    def acknowledge(self, key: AlarmKey, by: str, *, at: datetime | None = None) -> Alarm:
        alarm = self._alarms.get(key)
        if alarm is None:
            raise NotFound(f"no active alarm {key!r} (it may have cleared); list the active alarms",
                           element_id=key[1])
        if not by.strip():
            raise BadInput("acknowledging an alarm needs the operator's name")
        alarm = replace(alarm, acknowledged_by=by, acknowledged_at=at if at is not None else self._utc_now())
        self._alarms[key] = alarm
        return alarm

    def get(self, key: AlarmKey) -> Alarm | None:
        return self._alarms.get(key)

    def active(self, *, feeder_id: str | None = None, unacknowledged_only: bool = False) -> list[Alarm]:
        """Highest severity first, then oldest first."""
        alarms = [a for a in self._alarms.values()
                  if (feeder_id is None or a.feeder_id == feeder_id)
                  and not (unacknowledged_only and a.acknowledged)]
        return sorted(alarms, key=lambda a: (-a.severity.rank, a.first_seen, a.first_seq))

    def __len__(self) -> int:
        return len(self._alarms)
