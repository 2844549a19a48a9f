"""The event outbox of one feeder: events batched to the cluster's bus, and the alarm book.

Every room and application of a feeder queues its events here (:meth:`EventOutbox.queue`); they go
to the :class:`EventSink` every ``flush_interval_s`` in one batch. The bus numbers them; an event
that raises or clears an alarm updates the book with its number, so an alarm's id is known once
its event is published (ISA-18.2: an alarm stays active until it clears; acknowledging it does not
clear it). The book and the last cleared alarms live in memory: a restarted actor raises its alarms
again from a fresh field scan.

Observers (:meth:`EventOutbox.watch`, e.g. the applications through ``AppRegistry.on_events``) get
every flushed batch with the bus's numbers, synchronously after the publish; one that raises is
logged and the others still get the batch.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Protocol

from actors.cores.events import ALARM_KIND_KEY, Alarm, AlarmBook, Event, EventKind, Scalar, Severity, parse_alarm_id
from actors.ingest import QueuedEvent
from graph_schema.errors import NotFound

log = logging.getLogger(__name__)
CLEARED_KEPT = 500  # cleared alarms answered by alarms(active: false)


class EventSink(Protocol):
    async def publish(self, events: Sequence[Event]) -> list[int]: ...


class LocalEventSink:
    """Numbers events locally (tests and single-process use without the bus)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, events: Sequence[Event]) -> list[int]:
        out = []
        for ev in events:
            self.events.append(replace(ev, seq=len(self.events) + 1))
            out.append(len(self.events))
        return out


class EventOutbox:
    def __init__(self, feeder_id: str, sink: EventSink, *, flush_interval_s: float = 0.02) -> None:
        self.feeder_id = feeder_id
        self._sink = sink
        self._flush_interval_s = flush_interval_s
        self._alarms = AlarmBook()
        self._cleared: deque[Alarm] = deque(maxlen=CLEARED_KEPT)
        self._pending: list[tuple[Event, str]] = []  # (event, "raise"|"clear"|"")
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._watchers: list[Callable[[Sequence[Event]], None]] = []

    def watch(self, callback: Callable[[Sequence[Event]], None]) -> None:
        """Call ``callback(events)`` with each published batch (numbered); it must be cheap."""
        self._watchers.append(callback)

    def event(self, kind: EventKind, element_id: str | None, message: str, *, severity: Severity = Severity.INFO,
              data: Mapping[str, Scalar] | None = None, durable: bool = False, alarm: str = "") -> None:
        self.queue([QueuedEvent(kind, element_id, message, severity, data or {}, durable, alarm)])

    def queue(self, events: Iterable[QueuedEvent]) -> None:
        now = datetime.now(UTC)
        added = False
        for q in events:
            ev = Event(seq=0, kind=q.kind, feeder_id=self.feeder_id, element_id=q.element_id, severity=q.severity,
                       message=q.message, at=now, data=q.data, durable=q.durable)
            self._pending.append((ev, q.alarm))
            added = True
        if not added:
            return
        self._wake.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name=f"events {self.feeder_id}")

    async def _flush_loop(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(self._flush_interval_s)
            await self.flush()

    async def flush(self) -> int:
        """Send what is queued now; returns how many alarms are active."""
        self._wake.clear()
        batch, self._pending = self._pending, []
        if batch:
            try:
                seqs = await self._sink.publish([ev for ev, _ in batch])
            except Exception:
                log.exception("feeder %s: %d events could not reach the event bus", self.feeder_id, len(batch))
                seqs = [0] * len(batch)
            published: list[Event] = []
            for (ev, alarm), seq in zip(batch, seqs, strict=True):
                ev = replace(ev, seq=seq)
                published.append(ev)
                if alarm == "raise":
                    self._alarms.raise_(ev)
                elif alarm == "clear":
                    key = AlarmBook.key_of(ev)
                    old = self._alarms.get(key)
                    if self._alarms.clear(key) and old is not None:
                        self._cleared.append(old)
            for watcher in self._watchers:
                try:
                    watcher(published)
                except Exception:
                    log.exception("feeder %s: an event watcher failed on %d events", self.feeder_id, len(published))
        return len(self._alarms)

    async def close(self, timeout_s: float) -> None:
        if self._flusher is not None:
            await self.flush()
            self._flusher.cancel()
            await asyncio.wait({self._flusher}, timeout=timeout_s)
            self._flusher = None

    def alarms(self, active: bool | None = True) -> list[Alarm]:
        out: list[Alarm] = []
        if active is not False:
            out += self._alarms.active()
        if active is not True:
            out += list(reversed(self._cleared))
        return out

    def acknowledge(self, alarm_id: str, by: str) -> Alarm:
        """An operator takes on an active alarm (``alarm_id`` as :func:`actors.cores.events.alarm_id` makes it)."""
        key = parse_alarm_id(alarm_id)
        if key[0] != self.feeder_id:
            raise NotFound(f"alarm {alarm_id!r} is not on feeder {self.feeder_id!r}; list its alarms for their ids",
                           element_id=alarm_id)
        alarm = self._alarms.acknowledge(key, by)
        self.event(EventKind.ALARM_ACKNOWLEDGED, alarm.element_id, f"{alarm.kind} acknowledged by {by}",
                   durable=True, data={ALARM_KIND_KEY: alarm.kind, "by": by})
        return alarm

    def __len__(self) -> int:
        return len(self._alarms)
