"""Audit of applications' controls: one follower per server reads the durable CONTROL events of the
feeder actors' applications (FDIR, later Volt/VAR and DER management) and appends their
``CONTROL_OPERATE`` and ``CONTROL_RESULT`` entries to the audit log.

Why here: an operator's control is audited by :class:`server.services.ControlService` in the API
process, which holds the audit key (:mod:`security.audit`); an application operates inside a feeder
actor, which must never hold that key. Its control room publishes every step as a durable event
(``OPERATE_SENT`` and ``RESULT``, with the application's name as ``operator``), so the API side
audits them from the event bus: every operation, by a person or an application, is in the log.

Exactly once, across restarts and replicas:

- each entry carries the event's cluster-wide seq (``event_seq`` in its detail); an event whose seq
  is already in the audit log's tail is not audited again (a restart, or another replica that got
  there first);
- the last event seq audited is kept as a ``Setting`` record (``key`` = ``audit_follower_seq``), so
  a restarted server resumes after it: nothing is lost (the bus's window, then the durable store,
  give the events after it) and nothing is doubled (the seq check above).

Two replicas that read the same event in the same instant could both pass the check before either
appended; the audit append itself is conditional on the chain seq, so the chain stays intact, and
the duplicate (same ``event_seq``) is visible to a reader. Operators' own controls are skipped here
(they are audited with their roles and address by the API that served them).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Collection
from datetime import UTC, datetime
from typing import Any

from actors.cores.events import Event, EventKind
from graph_schema.aio import cancel_and_wait
from security.audit import AuditAction, AuditLog

log = logging.getLogger(__name__)

CURSOR_KEY = "audit_follower_seq"
SETTING_LABEL = "Setting"
TAIL = 200  # audit entries re-read to find an event already audited
PHASES = {"OPERATE_SENT": AuditAction.CONTROL_OPERATE, "RESULT": AuditAction.CONTROL_RESULT}


class AuditFollower:
    """Follows the event bus (through the server's :class:`server.services.EventHub`) and audits the
    controls of the applications named in ``app_names``."""

    def __init__(self, hub: Any, store: Any, audit: Callable[[], AuditLog], app_names: Collection[str], *,
                 poll_s: float = 1.0) -> None:
        self._hub = hub
        self._store = store
        self._audit = audit
        self._apps = frozenset(app_names)
        self._poll_s = poll_s
        self.cursor = 0
        self._cursor_seq: int | None = None  # the Setting record holding the cursor
        self._audited: set[int] = set()  # event seqs seen audited in the tail (this process)
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self) -> None:
        rows = await self._store.list_records(SETTING_LABEL, where={"key": CURSOR_KEY}, limit=1, newest_first=True)
        if rows:
            self._cursor_seq = int(rows[0]["seq"])
            with contextlib.suppress(TypeError, ValueError):
                self.cursor = int(rows[0]["value"])
        else:  # the first start ever: from now on (the history before it predates this follower)
            self.cursor = int(self._hub.seq)
            await self._save_cursor()
        self._task = asyncio.create_task(self._run(), name="audit-follower")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    def poke(self) -> None:
        """Look for new events now (instead of at the next poll)."""
        self._wake.set()

    async def _run(self) -> None:
        sub = self._hub.subscribe()
        try:
            while True:
                try:
                    await self.catch_up()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("audit follower: auditing application controls after seq %d failed; retrying",
                                  self.cursor)
                # Woken by any new event on the bus (or poke); the poll bounds the wait regardless.
                with contextlib.suppress(Exception):
                    await sub.get(self._poll_s)
                if sub.dropped:  # fell behind: the cursor and the store's history cover what was dropped
                    self._hub.unsubscribe(sub)
                    sub = self._hub.subscribe()
        finally:
            self._hub.unsubscribe(sub)

    # -- work ------------------------------------------------------------------------------------

    async def catch_up(self) -> int:
        """Audit every application control event after the cursor; returns how many were written."""
        written = 0
        while True:
            events, _ = await self._hub.history(self.cursor, feeder_id=None, kinds={str(EventKind.CONTROL)},
                                                limit=500)
            events = [e for e in events if e.seq > self.cursor]
            if not events:
                return written
            for event in events:
                if self._wanted(event) and not await self._already(event.seq):
                    await self._record(event)
                    written += 1
                self.cursor = event.seq
            await self._save_cursor()

    def _wanted(self, event: Event) -> bool:
        data = event.data
        return data.get("phase") in PHASES and data.get("operator") in self._apps

    async def _already(self, event_seq: int) -> bool:
        if event_seq in self._audited:
            return True
        for entry in await self._audit().page(limit=TAIL, newest_first=True):
            if not entry.action.startswith("CONTROL_"):
                continue
            try:
                seq = json.loads(entry.detail or "{}").get("event_seq")
            except (ValueError, AttributeError):
                continue
            if isinstance(seq, int):
                self._audited.add(seq)
        return event_seq in self._audited

    async def _record(self, event: Event) -> None:
        data = event.data
        phase = str(data["phase"])
        target = f"{event.feeder_id}/{event.element_id}" if event.element_id else str(event.feeder_id)
        detail: dict[str, Any] = {"action": data.get("action"), "value": data.get("value"), "event_seq": event.seq,
                                  "at": event.at.isoformat()}
        if phase == "RESULT":
            outcome = str(data.get("status") or "UNKNOWN")
            detail["code"] = data.get("code")
            detail["message"] = event.message
        else:
            outcome = "SENT"
        await self._audit().record(PHASES[phase], actor=str(data["operator"]), roles=("APPLICATION",),
                                   target=target, source=f"feeder-actor:{event.feeder_id}", outcome=outcome,
                                   detail=detail)
        self._audited.add(event.seq)

    async def _save_cursor(self) -> None:
        props = {"key": CURSOR_KEY, "value": str(self.cursor), "set_by": "audit-follower",
                 "set_at": datetime.now(UTC).isoformat()}
        try:
            if self._cursor_seq is None:
                self._cursor_seq = await self._store.append_record(SETTING_LABEL, props)
            else:
                rows = await self._store.list_records(SETTING_LABEL, where={"key": CURSOR_KEY}, limit=1,
                                                      newest_first=True)
                stored = int(rows[0]["value"]) if rows and str(rows[0].get("value", "")).isdigit() else 0
                if stored < self.cursor:  # another replica may be ahead: never move the cursor back
                    await self._store.update_record(SETTING_LABEL, self._cursor_seq, props)
        except Exception:  # the tail check still prevents doubles after a restart from an older cursor
            log.warning("audit follower: cursor %d could not be stored", self.cursor, exc_info=True)
