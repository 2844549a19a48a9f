"""The cluster-wide event bus: one :class:`~actors.cores.events.EventLog` behind one named actor.

A plain class (``actors/fleet.py`` applies ``ray.remote`` and names it ``dms-events``). Feeder
actors ``publish`` batches of events; the bus gives them the next cluster-wide ``seq`` and keeps the
last ``capacity`` in memory. Durable events (alarms, controls, trips) are ALSO appended to the graph
store as ``Event`` records (``event_seq`` = the bus seq, ``payload`` = the event as JSON text), in
seq order by one writer task, so a client can recover what fell out of the window
(:func:`durable_events_after`). After a restart the log continues after the last durable seq
stored: a seq is never issued twice for a durable event.

Servers long-poll :meth:`EventBus.wait_since` and fan the pages out to their subscribers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any

from actors.cores.events import Event, EventKind, EventLog, EventsPage
from graph_schema.aio import cancel_and_wait

if TYPE_CHECKING:
    from actors.feeder_actor import StoreAddress
    from graph_schema.store import GraphStore

log = logging.getLogger(__name__)

EVENT_LABEL = "Event"
DEFAULT_CAPACITY = 100_000


def event_record(event: Event) -> dict[str, Any]:
    """The graph-store record of a durable event."""
    return {
        "event_seq": event.seq,
        "kind": str(event.kind),
        "element_id": event.element_id,
        "severity": str(event.severity),
        "at": event.at.isoformat(),
        "payload": json.dumps(event.to_dict(), separators=(",", ":")),
    }


def event_of_record(record: dict[str, Any]) -> Event:
    return Event.from_dict(json.loads(str(record["payload"])))


async def durable_events_after(
    store: GraphStore,
    seq: int,
    *,
    feeder_id: str | None = None,
    kinds: Collection[EventKind | str] | None = None,
    limit: int = 1000,
    page: int = 200,
) -> list[Event]:
    """Durable events with ``event_seq > seq`` from the store, oldest first (at most ``limit``).

    The bus writes them in ``event_seq`` order, so the store's own per-label ``seq`` grows with it:
    page backwards from the newest until an older event is met.
    """
    out: list[Event] = []
    before: int | None = None
    kind_set = None if kinds is None else {str(k) for k in kinds}
    while True:
        rows = await store.list_records(
            EVENT_LABEL, feeder_id=feeder_id, before_seq=before, limit=page, newest_first=True
        )
        done = not rows
        for row in rows:
            if int(row.get("event_seq", 0)) <= seq:
                done = True
                break
            if kind_set is None or row.get("kind") in kind_set:
                out.append(event_of_record(row))
        if done or len(rows) < page:
            break
        before = int(rows[-1]["seq"])
    out.reverse()
    return out[:limit]


class EventBus:
    """The cluster's event log (async actor: every method runs on one event loop)."""

    def __init__(self, store: StoreAddress | None = None, capacity: int = DEFAULT_CAPACITY) -> None:
        self._store_address = store
        self._store: GraphStore | None = None
        self._capacity = capacity
        self._log: EventLog | None = None
        self._init_lock: asyncio.Lock | None = None
        self._persist_q: asyncio.Queue[Event] | None = None
        self._persister: asyncio.Task[None] | None = None
        self.persist_failures = 0

    async def _ready(self) -> EventLog:
        if self._log is not None:
            return self._log
        if self._init_lock is None:
            self._init_lock = asyncio.Lock()
        async with self._init_lock:
            if self._log is not None:
                return self._log
            start = 0
            if self._store_address is not None:
                from graph_schema.store import GraphStore

                a = self._store_address
                self._store = await GraphStore.connect(a.uri, a.user, a.password, a.database)
                rows = await self._store.list_records(EVENT_LABEL, limit=1, newest_first=True)
                if rows:
                    start = int(rows[0].get("event_seq", 0))
            self._log = EventLog(self._capacity, start_seq=start)
            self._persist_q = asyncio.Queue()
            self._persister = asyncio.create_task(self._persist_loop(), name="event-persister")
            log.info("event bus ready after seq %d", start)
        return self._log

    async def _persist_loop(self) -> None:
        assert self._persist_q is not None
        while True:
            event = await self._persist_q.get()
            try:
                if self._store is not None:
                    await self._store.append_record(EVENT_LABEL, event_record(event), feeder_id=event.feeder_id)
            except Exception:
                self.persist_failures += 1
                log.exception("event %d could not be persisted", event.seq)
            finally:
                self._persist_q.task_done()

    async def publish(self, events: Sequence[Event]) -> list[int]:
        """Log ``events`` in order; returns their seqs."""
        elog = await self._ready()
        seqs = []
        for ev in events:
            logged = elog.append_event(ev)
            seqs.append(logged.seq)
            if logged.durable and self._persist_q is not None:
                self._persist_q.put_nowait(logged)
        return seqs

    async def latest_seq(self) -> int:
        return (await self._ready()).latest_seq

    async def since(self, seq: int, *, feeder_id: str | None = None,
                    kinds: Collection[str] | None = None, limit: int = 1000) -> EventsPage:
        return (await self._ready()).since(seq, feeder_id=feeder_id, kinds=kinds, limit=limit)

    async def wait_since(self, seq: int, timeout_s: float, *, limit: int = 5000) -> EventsPage:
        return await (await self._ready()).wait_since(seq, timeout_s, limit=limit)

    async def flush(self, timeout_s: float = 10.0) -> int:
        """Wait until every durable event so far is written; returns the latest seq."""
        elog = await self._ready()
        if self._persist_q is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._persist_q.join(), timeout_s)
        return elog.latest_seq

    async def close(self) -> None:
        if self._persister is not None:
            await self.flush(5.0)
            await cancel_and_wait(self._persister)
            self._persister = None
        if self._store is not None:
            await self._store.close()
            self._store = None
