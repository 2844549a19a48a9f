"""Services the GraphQL resolvers call; resolvers never open database sessions themselves.

``GridService`` reads feeders through the fleet (live state) and the graph store (the list of
feeders, imports). A feeder's static model is cached here per feeder and dropped on import, so a
query pays only for the live state it asks for.

``ControlService`` runs select-before-operate and tags for an authenticated caller (authorization on
the device's feeder, audit of every step). ``EventHub`` is the server's one consumer of the
cluster's event bus: it long-polls the bus and fans batches out to local subscribers through
bounded queues; a subscriber that falls behind is dropped with ``SLOW_SUBSCRIBER`` (it resumes
with ``afterSeq``) instead of slowing the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from actors.cores.control import Tag
from actors.cores.events import Event, EventKind
from actors.cores.powerflow import PowerFlowResult
from actors.eventbus import durable_events_after
from actors.feeder_actor import FeederState
from actors.fleet import EventBusClient, Fleet
from graph_schema.aio import cancel_and_wait
from graph_schema.errors import BadInput, DmsError, NotFound, StoreUnavailable
from graph_schema.model import Feeder
from graph_schema.store import FeederSummary, GraphStore
from security.audit import AuditAction, AuditLog
from security.roles import Permission, allowed, authorize, feeder_in_scope
from security.tokens import Principal

log = logging.getLogger(__name__)


class GridService:
    def __init__(self, store: GraphStore, fleet: Fleet) -> None:
        self.store = store
        self.fleet = fleet
        self._models: dict[str, Feeder] = {}
        self._model_locks: dict[str, asyncio.Lock] = {}

    async def list_feeders(self) -> list[FeederSummary]:
        return await self.store.list_feeders()

    def require_feeder(self, feeder_id: str) -> None:
        if feeder_id not in self.fleet.feeder_ids:
            known = ", ".join(self.fleet.feeder_ids) or "none"
            raise NotFound(f"feeder {feeder_id!r} not found; known feeders: {known}", element_id=feeder_id)

    async def model(self, feeder_id: str) -> Feeder:
        self.require_feeder(feeder_id)
        cached = self._models.get(feeder_id)
        if cached is not None:
            return cached
        lock = self._model_locks.setdefault(feeder_id, asyncio.Lock())
        async with lock:
            if feeder_id not in self._models:
                self._models[feeder_id] = await self.fleet.call(feeder_id, "model")
            return self._models[feeder_id]

    async def state(self, feeder_id: str) -> FeederState:
        self.require_feeder(feeder_id)
        state: FeederState = await self.fleet.call(feeder_id, "state")
        return state

    async def power_flow(self, feeder_id: str, *, fresh: bool = False) -> PowerFlowResult:
        self.require_feeder(feeder_id)
        result: PowerFlowResult = await self.fleet.call(feeder_id, "power_flow", fresh=fresh)
        return result

    async def import_feeder(self, feeder: Feeder, *, replace: bool = False) -> None:
        await self.store.save_feeder(feeder, replace=replace)
        self._models.pop(feeder.id, None)
        await self.fleet.add(feeder.id)

    # -- live telemetry, alarms, tags, control history -------------------------------------------

    async def measurements(self, feeder_id: str) -> list[dict[str, Any]]:
        self.require_feeder(feeder_id)
        out: list[dict[str, Any]] = await self.fleet.call(feeder_id, "measurements")
        return out

    async def alarms(self, feeder_id: str, active: bool | None) -> list[Any]:
        self.require_feeder(feeder_id)
        out: list[Any] = await self.fleet.call(feeder_id, "alarms", active)
        return out

    async def tags(self, feeder_id: str) -> list[Tag]:
        self.require_feeder(feeder_id)
        out: list[Tag] = await self.fleet.call(feeder_id, "tags")
        return out

    async def control_history(self, feeder_ids: Collection[str], *, limit: int,
                              before_seq: int | None) -> list[dict[str, Any]]:
        """Control records of ``feeder_ids`` (the caller's scope), newest first. The scope is part
        of the query, so a page is full whenever that many records exist in scope."""
        return await self.store.list_records("ControlAction", feeder_ids=feeder_ids, before_seq=before_seq,
                                             limit=limit, newest_first=True)

    # -- devices and selections ------------------------------------------------------------------

    async def feeder_of_device(self, device_id: str, feeder_id: str | None = None) -> str:
        """The feeder holding a controllable device (``feeder_id`` given: checked, not searched)."""
        if feeder_id is not None:
            model = await self.model(feeder_id)
            if device_id not in _device_ids(model):
                raise NotFound(f"device {device_id!r} is not on feeder {feeder_id!r}; query the feeder's switches "
                               f"for their ids", element_id=device_id)
            return feeder_id
        holders = []
        for fid in self.fleet.feeder_ids:
            with contextlib.suppress(DmsError):
                if device_id in _device_ids(await self.model(fid)):
                    holders.append(fid)
        if not holders:
            raise NotFound(f"no feeder has a controllable device {device_id!r}; query feeder.switches for ids",
                           element_id=device_id)
        if len(holders) > 1:
            raise BadInput(f"device id {device_id!r} exists on feeders {', '.join(holders)}; pass feederId",
                           element_id=device_id)
        return holders[0]


def _device_ids(model: Feeder) -> set[str]:
    return {d.id for group in (model.switches, model.transformers, model.capacitors, model.ders) for d in group}


# -- control ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Caller:
    """Who asks, from where (for authorization and the audit log)."""

    principal: Principal | None
    source: str

    @property
    def sub(self) -> str:
        return self.principal.sub if self.principal is not None else "anonymous"

    @property
    def roles(self) -> list[str]:
        return sorted(r.value for r in self.principal.roles) if self.principal is not None else []


class ControlService:
    """Select-before-operate and tags on behalf of an authenticated caller: authorizes on the
    device's feeder (feeder-scoped tokens), calls the feeder actor, and audits every step with
    who/what/where/outcome. An operate is called once: the fleet never retries it.

    Nothing acts unaudited (#17.14): a select is refused ``STORE_UNAVAILABLE`` when the store does
    not answer a health check within ``store_timeout_s`` (and a selection whose audit entry cannot
    be written is cancelled); an operate is audited (``CONTROL_OPERATE REQUESTED``) BEFORE the
    actor is called and refused ``STORE_UNAVAILABLE`` when that entry cannot be written. Entries
    written after the fact (results, refusals) that the store does not take are kept in memory and
    retried with backoff until stored (:meth:`status`)."""

    def __init__(self, grid: GridService, audit: Callable[[], AuditLog | None] = lambda: None, *,
                 store_timeout_s: float = 2.0) -> None:
        self.grid = grid
        self._audit = audit
        self.store_timeout_s = store_timeout_s
        self._selection_feeder: dict[str, tuple[str, float]] = {}  # selection id -> (feeder, expires monotonic)
        self._unaudited: list[tuple[AuditAction, Caller, str, str, dict[str, Any]]] = []
        self._audit_retry: asyncio.Task[None] | None = None

    def bind_audit(self, audit: Callable[[], AuditLog | None]) -> None:
        """Use the server's one :class:`AuditLog` (one writer keeps the hash chain unforked)."""
        self._audit = audit

    async def _record_now(self, action: AuditAction, caller: Caller, target: str, outcome: str,
                          detail: dict[str, Any]) -> None:
        """Write one audit entry within ``store_timeout_s``; :class:`StoreUnavailable` otherwise."""
        audit = self._audit()
        if audit is None:
            return
        try:
            await asyncio.wait_for(audit.record(action, actor=caller.sub, roles=caller.roles, target=target,
                                                source=caller.source, outcome=outcome, detail=detail),
                                   self.store_timeout_s)
        except TimeoutError:
            raise StoreUnavailable(f"the audit log did not take the {action} entry within {self.store_timeout_s:g} s"
                                   f"; check that the graph store is running") from None
        except DmsError as exc:
            raise StoreUnavailable(f"the audit log did not take the {action} entry ({exc.message})") from None

    async def _record(self, action: AuditAction, caller: Caller, target: str, outcome: str,
                      detail: dict[str, Any]) -> None:
        """Write an audit entry after the fact: now, or kept and retried until stored. Never raises.

        The entry carries an ``entry_id``: a try that timed out may still have been stored, and a
        retry first looks for it among the newest entries, so an outage never doubles an entry."""
        detail = {**detail, "entry_id": uuid.uuid4().hex}
        try:
            await self._record_now(action, caller, target, outcome, detail)
        except Exception as exc:
            log.error("audit entry %s %s for %s not stored yet (%s); kept and retried until it is", action, outcome,
                      target, exc)
            self._unaudited.append((action, caller, target, outcome,
                                    {**detail, "at": datetime.now(UTC).isoformat(timespec="milliseconds")}))
            if self._audit_retry is None or self._audit_retry.done():
                self._audit_retry = asyncio.get_running_loop().create_task(self._retry_audit(), name="audit-retry")

    async def _retry_audit(self) -> None:
        delay = 0.5
        while self._unaudited:
            await asyncio.sleep(delay)
            while self._unaudited:
                entry = self._unaudited[0]
                try:
                    if not await self._already_stored(str(entry[4].get("entry_id", ""))):
                        await self._record_now(*entry)
                except Exception:
                    delay = min(delay * 2, 10.0)
                    break
                self._unaudited.pop(0)
                delay = 0.5
        log.warning("audit entries kept during a store outage are stored now")

    async def _already_stored(self, entry_id: str) -> bool:
        audit = self._audit()
        if audit is None or not entry_id:
            return False
        newest = await asyncio.wait_for(audit.page(limit=200, newest_first=True), self.store_timeout_s)
        return any(entry_id in e.detail for e in newest)

    def status(self) -> dict[str, int]:
        """Audit entries not stored yet (a store outage): for health and metrics."""
        return {"unaudited": len(self._unaudited)}

    async def _store_ready(self, action: AuditAction, caller: Caller, target: str, detail: dict[str, Any]) -> None:
        """Refuse ``STORE_UNAVAILABLE`` (and audit the refusal, later if need be) unless the store answers."""
        try:
            await self.grid.store.ping(self.store_timeout_s)
        except DmsError as exc:
            await self._record(action, caller, target, "REFUSED", {**detail, "code": "STORE_UNAVAILABLE"})
            raise StoreUnavailable(f"the graph store does not answer ({exc.message}); a control cannot be recorded, "
                                   f"so none is accepted. Try again once /readyz is 200") from None

    def _remember(self, selection_id: str, feeder_id: str, ttl_s: float) -> None:
        now = time.monotonic()
        for sid, (_, until) in list(self._selection_feeder.items()):
            if until < now:
                del self._selection_feeder[sid]
        self._selection_feeder[selection_id] = (feeder_id, now + ttl_s + 60)

    async def _feeder_for_selection(self, selection_id: str, device_id: str | None, feeder_id: str | None) -> str:
        if feeder_id is not None:
            return feeder_id
        known = self._selection_feeder.get(selection_id)
        if known is not None:
            return known[0]
        if device_id is not None:
            return await self.grid.feeder_of_device(device_id)
        for fid in self.grid.fleet.feeder_ids:  # a selection made through another server replica
            with contextlib.suppress(DmsError):
                if await self.grid.fleet.call(fid, "owns_selection", selection_id):
                    return fid
        raise NoSelectionError()

    async def select(self, caller: Caller, device_id: str, action: str, value: float | None,
                     feeder_id: str | None, select_timeout_s: float) -> dict[str, Any]:
        fid = await self.grid.feeder_of_device(device_id, feeder_id)
        authorize(caller.principal, Permission.CONTROL, feeder_id=fid)
        target = f"{fid}/{device_id}"
        detail: dict[str, Any] = {"action": action, "value": value}
        await self._store_ready(AuditAction.CONTROL_SELECT, caller, target, detail)
        try:
            sel: dict[str, Any] = await self.grid.fleet.call(fid, "select", device_id, action, value, caller.sub)
        except DmsError as exc:
            await self._record(AuditAction.CONTROL_SELECT, caller, target, "REFUSED", {**detail, "code": exc.code})
            raise
        try:
            await self._record_now(AuditAction.CONTROL_SELECT, caller, target, "ACCEPTED", detail)
        except DmsError:
            with contextlib.suppress(DmsError):  # an unaudited selection is not handed out
                await self.grid.fleet.call(fid, "cancel", sel["id"], caller.sub)
            raise
        self._remember(sel["id"], fid, select_timeout_s)
        return {**sel, "feeder_id": fid}

    async def operate(self, caller: Caller, selection_id: str, device_id: str, action: str, value: float | None,
                      feeder_id: str | None) -> dict[str, Any]:
        fid = await self._feeder_for_selection(selection_id, device_id, feeder_id)
        authorize(caller.principal, Permission.CONTROL, feeder_id=fid)
        target = f"{fid}/{device_id}"
        detail: dict[str, Any] = {"action": action, "value": value}
        try:  # audited before anything can reach the field; refused when it cannot be
            await self._record_now(AuditAction.CONTROL_OPERATE, caller, target, "REQUESTED", detail)
        except DmsError as exc:
            await self._record(AuditAction.CONTROL_OPERATE, caller, target, "REFUSED",
                               {**detail, "code": exc.code})
            raise StoreUnavailable(f"{action} of {device_id} was refused and nothing was sent: {exc.message}. The "
                                   f"selection stays until it expires; operate again once the store answers") from None
        try:
            result: dict[str, Any] = await self.grid.fleet.call(fid, "operate", selection_id, device_id, action,
                                                                 value, caller.sub)
        except DmsError as exc:
            # An actor lost mid-operate may have reached the field: not a refusal. Its restarted actor
            # reconciles the intent record with the field (CONFIRMED_AFTER_RESTART / NOT_CONFIRMED).
            outcome = "UNKNOWN" if exc.code == "ACTOR_UNAVAILABLE" else "REFUSED"
            await self._record(AuditAction.CONTROL_RESULT, caller, target, outcome, {**detail, "code": exc.code})
            raise
        finally:
            self._selection_feeder.pop(selection_id, None)
        await self._record(AuditAction.CONTROL_RESULT, caller, target, result["status"],
                           {**detail, "code": result.get("code"), "message": result.get("message")})
        return {**result, "feeder_id": fid}

    async def cancel(self, caller: Caller, selection_id: str, feeder_id: str | None) -> dict[str, Any]:
        fid = await self._feeder_for_selection(selection_id, None, feeder_id)
        authorize(caller.principal, Permission.CONTROL, feeder_id=fid)
        try:
            out: dict[str, Any] = await self.grid.fleet.call(fid, "cancel", selection_id, caller.sub)
        except DmsError as exc:
            await self._record(AuditAction.CONTROL_CANCEL, caller, fid, "REFUSED", {"code": exc.code})
            raise
        self._selection_feeder.pop(selection_id, None)
        await self._record(AuditAction.CONTROL_CANCEL, caller, f"{fid}/{out['device_id']}", "ACCEPTED",
                           {"action": out["action"]})
        return out

    async def set_tag(self, caller: Caller, device_id: str, kind: str, reason: str,
                      feeder_id: str | None) -> tuple[str, Tag]:
        fid = await self.grid.feeder_of_device(device_id, feeder_id)
        authorize(caller.principal, Permission.TAG, feeder_id=fid)
        try:
            tag: Tag = await self.grid.fleet.call(fid, "set_tag", device_id, kind, reason, caller.sub)
        except DmsError as exc:
            await self._record(AuditAction.TAG_SET, caller, f"{fid}/{device_id}", "REFUSED",
                               {"kind": kind, "reason": reason, "code": exc.code})
            raise
        await self._record(AuditAction.TAG_SET, caller, f"{fid}/{device_id}", "ACCEPTED",
                           {"kind": kind, "reason": reason, "tag_id": tag.id})
        return fid, tag

    async def remove_tag(self, caller: Caller, tag_id: str) -> tuple[str, Tag]:
        """Remove a tag: its holder, or a SUPERVISOR (OVERRIDE_TAG). The caller is authorized before
        any lookup, only feeders in its scope are searched (a tag elsewhere is NOT_FOUND: no hint that
        it exists), and every refusal is audited."""
        try:
            authorize(caller.principal, Permission.TAG)
        except DmsError as exc:
            await self._record(AuditAction.TAG_REMOVE, caller, "", "REFUSED", {"tag_id": tag_id, "code": exc.code})
            raise
        principal = caller.principal
        assert principal is not None  # authorize refused an anonymous caller
        target = ""
        try:
            for fid in self.grid.fleet.feeder_ids:
                if not feeder_in_scope(principal, fid):
                    continue
                tags: list[Tag] = await self.grid.fleet.call(fid, "tags")
                found = next((t for t in tags if t.id == tag_id), None)
                if found is None:
                    continue
                target = f"{fid}/{found.device_id}"
                override = allowed(principal, Permission.OVERRIDE_TAG, feeder_id=fid)
                tag: Tag = await self.grid.fleet.call(fid, "remove_tag", tag_id, caller.sub, override)
                await self._record(AuditAction.TAG_REMOVE, caller, target, "ACCEPTED",
                                   {"tag_id": tag_id, "kind": str(tag.kind), "set_by": tag.set_by,
                                    "override": tag.set_by != caller.sub})
                return fid, tag
            raise NotFound(f"tag {tag_id!r} not found (already removed?); query tags for their ids", element_id=tag_id)
        except DmsError as exc:
            await self._record(AuditAction.TAG_REMOVE, caller, target, "REFUSED", {"tag_id": tag_id, "code": exc.code})
            raise


class NoSelectionError(DmsError):
    code = "NO_SELECTION"

    def __init__(self) -> None:
        super().__init__("no live selection with this id (unknown, already operated or cancelled); select the "
                         "device first")


# -- the event stream on the server side -----------------------------------------------------------


class SlowSubscriber(DmsError):
    code = "SLOW_SUBSCRIBER"

    def __init__(self) -> None:
        super().__init__("this subscription fell too far behind and was dropped; subscribe again with afterSeq set "
                         "to the last seq you received to resume without gaps")


class HubBatch(tuple[Event, ...]):
    """One page of events from the bus, handed to every local subscriber as the same object; the
    events of one feeder and kind are looked up once per page, not filtered once per subscriber."""

    _by: dict[tuple[str, str], list[Event]] | None = None  # (feeder id, kind) -> events, built on first use

    def select(self, feeder_id: str | None, kinds: frozenset[str] | None) -> list[Event]:
        """The events of ``feeder_id`` (None: all feeders) and ``kinds`` (None: all), in seq order."""
        if feeder_id is None or kinds is None:
            return [e for e in self if (kinds is None or str(e.kind) in kinds)
                    and (feeder_id is None or e.feeder_id == feeder_id)]
        index = self._index()
        parts = [p for p in (index.get((feeder_id, k), []) for k in kinds) if p]
        if len(parts) <= 1:
            return list(parts[0]) if parts else []
        return sorted((e for p in parts for e in p), key=lambda e: e.seq)

    def newest_per_point(self, feeder_id: str) -> list[Event]:
        """The feeder's measurement events keeping only the newest per point, in seq order (what a
        display needs; computed once per page for every subscriber)."""
        index = self._index()
        key = (feeder_id, _NEWEST)
        newest = index.get(key)
        if newest is None:
            latest: dict[object, Event] = {}
            for e in index.get((feeder_id, str(EventKind.MEASUREMENT)), []):
                latest[e.data.get("point_id")] = e
            newest = index[key] = sorted(latest.values(), key=lambda e: e.seq)
        return list(newest)

    def _index(self) -> dict[tuple[str, str], list[Event]]:
        if self._by is None:
            by: dict[tuple[str, str], list[Event]] = {}
            for e in self:
                by.setdefault((e.feeder_id, str(e.kind)), []).append(e)
            self._by = by
        return self._by


_NEWEST = "~newest-per-point"


class Subscriber:
    """One subscriber's bounded queue of event batches; overflowing it drops the subscriber."""

    def __init__(self, limit: int) -> None:
        self._items: deque[tuple[Event, ...]] = deque()
        self._wake = asyncio.Event()
        self.limit = limit
        self.dropped = False

    def offer(self, batch: tuple[Event, ...]) -> None:
        if self.dropped:
            return
        if len(self._items) >= self.limit:
            self.dropped = True
            self._items.clear()
        else:
            self._items.append(batch)
        self._wake.set()

    async def get(self, timeout_s: float | None = None) -> tuple[Event, ...] | None:
        """The next batch; None after ``timeout_s`` without one. Raises :class:`SlowSubscriber`."""
        while not self._items:
            if self.dropped:
                raise SlowSubscriber()
            self._wake.clear()
            if timeout_s is None:
                await self._wake.wait()
            else:
                try:
                    await asyncio.wait_for(self._wake.wait(), timeout_s)
                except TimeoutError:
                    return None
        if self.dropped:
            raise SlowSubscriber()
        return self._items.popleft()


class EventHub:
    """One consumer task per server long-polls the bus and fans batches out to local subscribers."""

    def __init__(self, bus: EventBusClient, store: GraphStore, *, queue_limit: int = 2000,
                 poll_timeout_s: float = 5.0) -> None:
        self.bus = bus
        self.store = store
        self.queue_limit = queue_limit
        self.poll_timeout_s = poll_timeout_s
        self._subs: set[Subscriber] = set()
        self._task: asyncio.Task[None] | None = None
        self.seq = 0

    async def start(self) -> None:
        self.seq = await self.bus.latest_seq()
        self._task = asyncio.create_task(self._run(), name="event-hub")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                page = await self.bus.wait_since(self.seq, self.poll_timeout_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("event bus long poll failed; retrying", exc_info=True)
                await asyncio.sleep(0.5)
                continue
            if page.truncated and not page.events:
                log.warning("event hub at seq %d resyncs to %d (bus restarted?)", self.seq, page.next_seq)
            self.seq = page.next_seq
            if page.events:
                batch = HubBatch(page.events)
                for sub in list(self._subs):
                    sub.offer(batch)
                    if sub.dropped:
                        self._subs.discard(sub)

    def subscribe(self) -> Subscriber:
        sub = Subscriber(self.queue_limit)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    async def history(self, after_seq: int, *, feeder_id: str | None, kinds: Collection[str] | None,
                      limit: int = 1000) -> tuple[list[Event], int]:
        """Events after ``after_seq`` (from the window; what left it, from the durable store)."""
        page = await self.bus.since(after_seq, feeder_id=feeder_id, kinds=list(kinds) if kinds else None,
                                    limit=limit)
        events = list(page.events)
        if page.truncated:
            first_in_window = events[0].seq if events else page.next_seq + 1
            durable = await durable_events_after(self.store, after_seq, feeder_id=feeder_id, kinds=kinds,
                                                 limit=limit)
            events = [e for e in durable if e.seq < first_in_window] + events
        return events[:limit], page.next_seq

    async def stream(self, *, after_seq: int | None, feeder_id: str | None, kinds: Collection[str] | None,
                     feeder_visible: Callable[[str], bool] = lambda feeder_id: True,
                     tick_s: float | None = None, newest_per_point: bool = False) -> AsyncIterator[list[Event]]:
        """Matching events: first those after ``after_seq`` (resume), then live, in seq order, no
        duplicates. ``feeder_visible(feeder_id)`` says whether this subscriber may see a feeder's
        events (asked once per feeder). With ``tick_s`` an empty list comes when nothing arrived
        for that long. ``newest_per_point`` (measurements of one feeder): of the live events of
        one point in one page, only the newest."""
        kind_set = None if kinds is None else frozenset(str(k) for k in kinds)
        if newest_per_point and (feeder_id is None or kind_set != {str(EventKind.MEASUREMENT)}):
            raise ValueError("newest_per_point needs one feeder and the MEASUREMENT kind")
        seen: dict[str, bool] = {}

        def visible(e: Event) -> bool:
            ok = seen.get(e.feeder_id)
            if ok is None:
                ok = seen[e.feeder_id] = feeder_visible(e.feeder_id)
            return ok

        sub = self.subscribe()  # first: what arrives while the backlog is read waits in the queue
        try:
            last = self.seq if after_seq is None else after_seq
            if after_seq is not None:
                while True:
                    events, _ = await self.history(last, feeder_id=feeder_id, kinds=kind_set, limit=1000)
                    events = [e for e in events if e.seq > last and visible(e)]
                    if not events:
                        break
                    last = events[-1].seq
                    yield events
            while True:
                batch = await sub.get(tick_s)
                if batch is None:
                    yield []
                    continue
                if not batch:
                    continue
                if newest_per_point and isinstance(batch, HubBatch):
                    assert feeder_id is not None
                    picked = batch.newest_per_point(feeder_id)
                else:
                    picked = batch.select(feeder_id, kind_set) if isinstance(batch, HubBatch) else [
                        e for e in batch if (kind_set is None or str(e.kind) in kind_set)
                        and (feeder_id is None or e.feeder_id == feeder_id)]
                if batch[0].seq <= last:  # overlaps what the backlog already gave
                    picked = [e for e in picked if e.seq > last]
                last = max(last, batch[-1].seq)
                if feeder_id is not None:  # one feeder: one visibility answer for all of them
                    out = picked if picked and visible(picked[0]) else []
                else:
                    out = [e for e in picked if visible(e)]
                if out:
                    yield out
        finally:
            self.unsubscribe(sub)
