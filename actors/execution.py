"""Control execution of one feeder: select-before-operate for operators and applications.

The pure :class:`actors.cores.control.ControlCore` decides whether a selection or an operate is allowed
(selections, tags, interlocks); :class:`actors.arbiter.Arbiter` decides whether an application may
act on a device at all. This room then builds the device's command (one command type per device
kind: :data:`COMMANDS`), writes it ONCE through the device's field client and waits for telemetry
to confirm it within ``confirm_timeout_s``. Nothing is retried. Every operate, refused ones too, is
recorded as a ``ControlAction`` record; tags are ``Tag`` records (reloaded after a restart); every
step is an event.

A control never acts without a record (#17.14, #17.15): :class:`ControlRecorder` stores the
*intent* (status ``PENDING``, phase ``INTENT``, with an ``intent_id``) BEFORE anything goes to the
field, within ``store_timeout_s``; when it cannot, the operate is refused ``STORE_UNAVAILABLE`` and
nothing is sent. The outcome then updates the intent record; an outcome the store cannot take is
kept in memory and retried with backoff until stored (``unrecorded`` in the actor's metrics). An
intent left ``PENDING`` by a killed actor is reconciled by the restarted one with what the field
reports after its first scan (:func:`actors.cores.control.reconciled_status`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from actors.arbiter import Arbiter, Priority
from actors.cores.control import (
    ControlAction,
    ControlCore,
    DeviceUnreachable,
    NotConfirmed,
    Selection,
    Tag,
    TagKind,
    expected_state,
    reconciled_status,
)
from actors.cores.events import EventKind, Severity
from actors.field_binding import FieldBinding
from actors.ingest import Ingest
from actors.outbox import EventOutbox
from graph_schema.aio import cancel_and_wait
from graph_schema.errors import BadInput, DmsError, StoreUnavailable
from graph_schema.model import Capacitor, Der, Quantity, Switch, Transformer
from graph_schema.store import GraphStore

log = logging.getLogger(__name__)


# -- commands, one type per device kind ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Command:
    """What goes to the field for one operate, and how telemetry confirms it."""

    kind: str  # protocols.pointmap.CommandKind
    value: float | bool
    confirm: Callable[[], bool] | None = None  # None: done when the device accepts the set point
    expect_open: bool | None = None  # a switch moving: its opening is ours, not a trip


class _Context:
    """What a command builder may read: the feeder's id, live switch states and good values."""

    def __init__(self, feeder_id: str, ingest: Ingest, switch_states: Callable[[], Mapping[str, bool]]) -> None:
        self.feeder_id = feeder_id
        self.ingest = ingest
        self.switch_states = switch_states

    def value(self, element_id: str, kind: Any) -> float | bool | None:
        from protocols.pointmap import point_id

        return self.ingest.good_value(point_id(self.feeder_id, element_id, kind))

    def has_value(self, element_id: str, kind: Any) -> bool:
        from protocols.pointmap import point_id

        return point_id(self.feeder_id, element_id, kind) in self.ingest.values


def _switch_command(ctx: _Context, device: Switch, action: ControlAction, value: float | None) -> Command | str:
    expect_open = expected_state(action)
    if expect_open is None:
        return f"{device.id} has no command point for {action}"

    def confirmed() -> bool:
        return ctx.switch_states().get(device.id) == expect_open and ctx.has_value(device.id, Quantity.STATUS)

    return Command(str(action), True, confirmed, expect_open)


def _tap_command(ctx: _Context, device: Transformer, action: ControlAction, value: float | None) -> Command | str:
    current = ctx.value(device.id, Quantity.TAP_POS)
    if action is ControlAction.SET:
        target = float(value or 0.0)
    elif current is None:
        return f"no tap position telemetry for {device.id}; use SET"
    else:
        target = float(current) + (1 if action is ControlAction.RAISE else -1)
    return Command("SET_TAP", target, lambda: ctx.value(device.id, Quantity.TAP_POS) == target)


def _setpoint_command(ctx: _Context, device: Der, action: ControlAction, value: float | None) -> Command | str:
    return Command("SET_P_MW", float(value or 0.0))


def _capacitor_command(ctx: _Context, device: Capacitor, action: ControlAction, value: float | None) -> Command | str:
    if ctx.has_value(device.id, Quantity.CAP_STEP):  # a bank controller that takes steps in service
        current = ctx.value(device.id, Quantity.CAP_STEP)
        if action is ControlAction.SET:
            target = float(value or 0.0)
        elif action in (ControlAction.OPEN, ControlAction.CLOSE):
            target = 0.0 if action is ControlAction.OPEN else float(device.steps)
        elif current is None:
            return f"no step telemetry for {device.id}; use SET"
        else:
            target = float(current) + (1 if action is ControlAction.RAISE else -1)
        if not 0 <= target <= device.steps:
            return f"{device.id} has steps 0..{device.steps}; {action} would make {target:g}, nothing was sent"
        return Command("SET_CAP_STEP", target, lambda: ctx.value(device.id, Quantity.CAP_STEP) == target)
    expect_open = expected_state(action)
    if expect_open is None:
        return f"{device.id} has no command point for {action}"
    return Command(str(action), True, lambda: ctx.value(device.id, Quantity.STATUS) == expect_open)


CommandBuilder = Callable[[_Context, Any, ControlAction, "float | None"], "Command | str"]
COMMANDS: dict[type, CommandBuilder] = {
    Switch: _switch_command,
    Transformer: _tap_command,
    Der: _setpoint_command,
    Capacitor: _capacitor_command,
}


# -- control records -------------------------------------------------------------------------------

PENDING = "PENDING"  # an intent stored, its outcome not (yet)
RecordProps = dict[str, "str | int | float | bool | None"]


@dataclass
class _Unrecorded:
    """An outcome the store did not take yet: update the intent (found by seq or by intent_id) or,
    when the intent itself never reached the store, append the whole record."""

    intent_id: str
    seq: int | None
    changes: RecordProps
    full: RecordProps
    since: float = field(default_factory=time.monotonic)
    attempts: int = 0


class ControlRecorder:
    """The ``ControlAction`` records of one feeder: the intent before the field write, the outcome
    after it, and the outcomes the store could not take yet (kept here and retried with backoff
    until stored). One per actor process: it outlives a model reload's new :class:`ControlRoom`."""

    def __init__(self, feeder_id: str, store: Callable[[], GraphStore], *, timeout_s: float = 2.0,
                 backoff_s: float = 0.5, backoff_max_s: float = 10.0) -> None:
        self.feeder_id = feeder_id
        self._store = store
        self.timeout_s = timeout_s
        self._backoff = (backoff_s, backoff_max_s)
        self._unrecorded: dict[str, _Unrecorded] = {}
        self._task: asyncio.Task[None] | None = None
        self.stored_late = 0  # outcomes stored by the retry loop

    async def ping(self) -> None:
        """:class:`StoreUnavailable` unless the store answers within ``timeout_s``."""
        try:
            store = self._store()
        except DmsError as exc:
            raise StoreUnavailable(exc.message) from None
        await store.ping(self.timeout_s)

    async def intent(self, record: RecordProps) -> int:
        """Store an intent (``PENDING``) and return its seq; :class:`StoreUnavailable` when the store
        does not take it within ``timeout_s`` (then nothing may be sent)."""
        store = self._store()
        return await store.bounded(store.append_record("ControlAction", record, feeder_id=self.feeder_id),
                                   self.timeout_s, "record a control intent")

    async def append(self, record: RecordProps) -> None:
        """Store a record that had no intent (a refusal): now, or later by the retry loop."""
        intent_id = str(record.setdefault("intent_id", uuid.uuid4().hex))
        await self.outcome(_Unrecorded(intent_id, None, dict(record), dict(record)))

    async def outcome(self, item: _Unrecorded) -> None:
        """Store an outcome now (bounded); what fails is kept and retried until stored. Never raises."""
        try:
            await self._write(item)
        except Exception as exc:  # kept and retried whatever the failure
            log.error("feeder %s: control record %s (%s %s) not stored yet (%s); kept and retried until it is",
                      self.feeder_id, item.intent_id, item.full.get("device_id"), item.changes.get("status"),
                      exc.message if isinstance(exc, DmsError) else repr(exc))
            self._unrecorded[item.intent_id] = item
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._retry(),
                                                                    name=f"control-records {self.feeder_id}")

    async def _write(self, item: _Unrecorded) -> None:
        store = self._store()
        seq = item.seq
        if seq is None:  # the intent write timed out or failed: it may or may not be stored
            rows = await store.bounded(store.list_records("ControlAction", feeder_id=self.feeder_id,
                                                          where={"intent_id": item.intent_id}, limit=1),
                                       self.timeout_s, "look up a control intent")
            if not rows:
                await store.bounded(store.append_record("ControlAction", item.full, feeder_id=self.feeder_id),
                                    self.timeout_s, "record a control outcome")
                return
            seq = item.seq = int(rows[0]["seq"])
        await store.bounded(store.update_record("ControlAction", seq, item.changes), self.timeout_s,
                            "record a control outcome")

    async def _retry(self) -> None:
        delay, cap = self._backoff
        while self._unrecorded:
            await asyncio.sleep(delay)
            for intent_id, item in list(self._unrecorded.items()):
                item.attempts += 1
                try:
                    await self._write(item)
                except Exception as exc:
                    log.debug("feeder %s: control record %s still not stored (%s)", self.feeder_id, intent_id, exc)
                    delay = min(delay * 2, cap)
                    break
                del self._unrecorded[intent_id]
                self.stored_late += 1
                delay = self._backoff[0]
                log.warning("feeder %s: control record %s (%s %s) stored after %d retries, %.1f s late",
                            self.feeder_id, intent_id, item.full.get("device_id"), item.changes.get("status"),
                            item.attempts, time.monotonic() - item.since)

    def status(self) -> dict[str, Any]:
        oldest = min((i.since for i in self._unrecorded.values()), default=None)
        return {"unrecorded": len(self._unrecorded), "stored_late": self.stored_late,
                "oldest_unrecorded_s": None if oldest is None else round(time.monotonic() - oldest, 1)}

    async def flush(self, within_s: float) -> bool:
        """Wait (bounded) until every kept outcome is stored; True when none is left."""
        task = self._task
        if task is not None and not task.done():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(task), within_s)
        return not self._unrecorded

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait(task)


# -- the room --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outcome:
    status: str  # CONFIRMED, ACCEPTED, NOT_CONFIRMED, FAILED, REFUSED
    code: str | None
    message: str


class ControlRoom:
    def __init__(
        self,
        feeder_id: str,
        core: ControlCore,
        *,
        field: FieldBinding,
        ingest: Ingest,
        outbox: EventOutbox,
        store: Callable[[], GraphStore],
        recorder: ControlRecorder,
        switch_states: Callable[[], Mapping[str, bool]],
        state_changed: Callable[[], Awaitable[None]],
        settled: Callable[[], Awaitable[None]],
        application_names: Callable[[], list[str]],
        confirm_timeout_s: float,
    ) -> None:
        self.feeder_id = feeder_id
        self.core = core
        self._field = field
        self._ingest = ingest
        self._outbox = outbox
        self._store = store
        self.recorder = recorder
        self._switch_states = switch_states
        self._state_changed = state_changed
        self._settled = settled
        self._confirm_timeout_s = confirm_timeout_s
        self._ctx = _Context(feeder_id, ingest, switch_states)
        self.arbiter = Arbiter(tags=lambda d: core.tags(d), selections=lambda d: core.selections(d),
                               application_names=application_names)

    # -- operators -------------------------------------------------------------------------------

    def select(self, device_id: str, action: str, value: float | None, operator: str) -> Selection:
        app = self.arbiter.operator_selecting(device_id)
        if app is not None:
            from actors.cores.control import SelectedByOther

            raise SelectedByOther(device_id, None, held_by=app)
        sel = self.core.select(device_id, action, value, operator, switch_states=self._switch_states(),
                               faulted_elements=self._ingest.faulted_elements())
        self._outbox.event(EventKind.CONTROL, device_id, f"{operator} selected {device_id} for {sel.action}",
                           durable=True, data={"phase": "SELECTED", "action": str(sel.action), "value": sel.value,
                                               "operator": operator})
        return sel

    def cancel(self, selection_id: str, operator: str) -> Selection:
        sel = self.core.cancel(selection_id, operator)
        self._outbox.event(EventKind.CONTROL, sel.device_id, f"{operator} cancelled the selection of "
                           f"{sel.device_id}", durable=True,
                           data={"phase": "CANCELLED", "action": str(sel.action), "operator": operator})
        return sel

    async def operate(self, selection_id: str, device_id: str, action: str, value: float | None,
                      operator: str) -> Outcome:
        """Operate a selection: sent ONCE, confirmed by telemetry. Refusals raise (nothing sent)."""
        started = datetime.now(UTC)
        try:
            sel = self.core.operate(selection_id, device_id, action, value, operator,
                                    switch_states=self._switch_states(),
                                    faulted_elements=self._ingest.faulted_elements())
        except DmsError as exc:
            await self._refused(device_id, str(action), value, operator, exc, started)
            raise
        self.arbiter.operator_sending(device_id, operator)
        try:
            # Once the intent is stored the command and its record finish even if the caller goes.
            return await asyncio.shield(self._send(sel.device_id, sel.action, sel.value, operator, started,
                                                   {"selection_expires_at": sel.expires_at_utc.isoformat()}))
        finally:
            self.arbiter.operator_done(device_id)

    # -- applications ----------------------------------------------------------------------------

    async def operate_as(self, app: str, device_id: str, action: ControlAction | str, value: float | None,
                         priority: Priority, *, check_faulted: bool = True) -> Outcome:
        """An application's select-before-operate under its own identity, after arbitration.

        Refusals raise the control errors (``DEVICE_HELD``, ``DEVICE_TAGGED``, ``INTERLOCK``...)."""
        self.arbiter.acquire(device_id, app, priority)
        try:
            states = self._switch_states()
            faulted = self._ingest.faulted_elements() if check_faulted else frozenset()
            sel = self.core.select(device_id, action, value, app, switch_states=states, faulted_elements=faulted)
            self.core.operate(sel.id, device_id, sel.action, sel.value, app, switch_states=states,
                              faulted_elements=faulted)
        except BaseException:
            self.arbiter.release(device_id, app)
            raise
        self.arbiter.sent(device_id, app)
        # Once sent, the command and its record finish even if the application is cancelled meanwhile.
        return await asyncio.shield(self._send_then_release(device_id, sel.action, sel.value, app))

    async def _send_then_release(self, device_id: str, action: ControlAction, value: float | None,
                                 app: str) -> Outcome:
        try:
            return await self._send(device_id, action, value, app, datetime.now(UTC), {"application": True})
        finally:
            self.arbiter.release(device_id, app)

    # -- sending ---------------------------------------------------------------------------------

    async def _send(self, device_id: str, action: ControlAction, value: float | None, operator: str,
                    started: datetime, selection: RecordProps) -> Outcome:
        """Intent record first (refused ``STORE_UNAVAILABLE`` without it: nothing sent), then the
        field, then the outcome onto the intent record."""
        intent: RecordProps = {"intent_id": uuid.uuid4().hex, "device_id": device_id, "action": str(action),
                               "value": value, "operator": operator, "status": PENDING, "phase": "INTENT",
                               "requested_at": started.isoformat(), **selection}
        intent = {k: v for k, v in intent.items() if v is not None}
        try:
            seq: int | None = await self.recorder.intent(intent)
        except DmsError as exc:
            refusal = StoreUnavailable(
                f"{action} of {device_id} was refused and nothing was sent: its intent could not be recorded "
                f"({exc.message}). Select again once the store answers (see /readyz)")
            # The intent may have been stored after all (a timed-out commit): mark it refused, by intent_id.
            await self._outcome(intent, None, Outcome("REFUSED", refusal.code, refusal.message))
            raise refusal from None
        self._outbox.event(EventKind.CONTROL, device_id, f"{operator} operates {device_id}: {action}", durable=True,
                           data={"phase": "OPERATE_SENT", "action": str(action), "value": value,
                                 "operator": operator})
        outcome = await self._execute(device_id, action, value, operator)
        await self._outcome(intent, seq, outcome)
        return outcome

    async def _execute(self, device_id: str, action: ControlAction, value: float | None, operator: str) -> Outcome:
        """Write the command once and wait for telemetry."""
        from protocols.base import DeviceRejected, ProtocolError
        from protocols.pointmap import point_id

        device = self.core.device(device_id)
        builder = COMMANDS.get(type(device))
        if device is None or builder is None:
            return Outcome("FAILED", "DEVICE_UNREACHABLE", f"{device_id} has no command for {action}")
        cmd = builder(self._ctx, device, action, value)
        if isinstance(cmd, str):
            return Outcome("FAILED", "DEVICE_UNREACHABLE", cmd)
        pid = point_id(self.feeder_id, device_id, cmd.kind)
        client = self._field.client_for(pid)
        if client is None:
            return Outcome("FAILED", "DEVICE_UNREACHABLE",
                           f"{device_id} has no field binding for {cmd.kind}; nothing was sent (attach its point map)")
        if cmd.expect_open is not None:
            self._ingest.expect(device_id, cmd.expect_open, by=operator)
        try:
            try:
                await client.write_command(pid, cmd.value)
            except (DeviceRejected, ProtocolError) as exc:
                return Outcome("FAILED", "DEVICE_UNREACHABLE", f"{exc.message} (not retried)")
            except BadInput as exc:
                return Outcome("FAILED", "BAD_INPUT", exc.message)
            if cmd.confirm is None:
                return Outcome("ACCEPTED", None, f"{device_id} accepted the {cmd.kind} set point {cmd.value:g}")
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._confirm_timeout_s
            while not cmd.confirm():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return Outcome("NOT_CONFIRMED", "NOT_CONFIRMED",
                                   f"{action} of {device_id} was sent but telemetry did not confirm it within "
                                   f"{self._confirm_timeout_s:g} s; it was not resent. Verify the device position")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._state_changed(), remaining)
            await self._settled()  # answer with the re-solved state in place
            return Outcome("CONFIRMED", None, f"{action} of {device_id} confirmed by telemetry")
        finally:
            if cmd.expect_open is not None:
                self._ingest.release(device_id)

    async def _outcome(self, intent: RecordProps, seq: int | None, outcome: Outcome, *,
                       phase: str = "RESULT") -> None:
        changes: RecordProps = {"status": outcome.status, "code": outcome.code, "message": outcome.message,
                                "phase": "OUTCOME", "completed_at": datetime.now(UTC).isoformat()}
        await self.recorder.outcome(_Unrecorded(str(intent["intent_id"]), seq, changes,
                                                {k: v for k, v in {**intent, **changes}.items() if v is not None}))
        severity = Severity.INFO if outcome.status in ("CONFIRMED", "ACCEPTED") else Severity.WARNING
        code, device_id, action = outcome.code, str(intent["device_id"]), str(intent["action"])
        self._outbox.event(EventKind.CONTROL, device_id,
                           f"{action} of {device_id}: {outcome.status}" + (f" ({code})" if code else ""),
                           severity=severity, durable=True,
                           data={"phase": phase, "action": action, "value": intent.get("value"),
                                 "operator": intent.get("operator"), "status": outcome.status, "code": code})

    async def _refused(self, device_id: str, action: str, value: float | None, operator: str, exc: DmsError,
                       started: datetime) -> None:
        """A refusal (nothing sent) is recorded too; it waits for nothing (a down store keeps it queued)."""
        record: RecordProps = {"intent_id": uuid.uuid4().hex, "device_id": device_id, "action": action,
                               "value": value, "operator": operator, "requested_at": started.isoformat()}
        await self._outcome({k: v for k, v in record.items() if v is not None}, None,
                            Outcome("REFUSED", exc.code, exc.message))

    # -- after a restart -------------------------------------------------------------------------

    async def pending_intents(self) -> list[dict[str, Any]]:
        """Intents of this feeder stored without an outcome (an actor was killed mid-control)."""
        store = self._store()
        return await store.bounded(store.list_records("ControlAction", feeder_id=self.feeder_id,
                                                      where={"status": PENDING}, limit=1000),
                                   self.recorder.timeout_s * 5, "list pending control intents")

    async def reconcile(self, intents: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Record the outcome of each intent whose device the field has reported since this actor
        started (status CONFIRMED_AFTER_RESTART / NOT_CONFIRMED, with an event); return the others."""
        left: list[dict[str, Any]] = []
        for row in intents:
            device_id = str(row.get("device_id"))
            reading = self._reading(device_id)
            if reading is _UNKNOWN:
                left.append(row)
                continue
            status, reason = reconciled_status(str(row.get("action")), row.get("value"), *reading)
            message = (f"{row.get('action')} of {device_id} by {row.get('operator')} was interrupted by an actor "
                       f"restart; after the restart {reason}")
            intent = {k: v for k, v in row.items() if k not in ("seq", "feeder_id") and v is not None}
            intent.setdefault("intent_id", uuid.uuid4().hex)
            await self._outcome(intent, int(row["seq"]),
                                Outcome(status, None if status == "CONFIRMED_AFTER_RESTART" else "NOT_CONFIRMED",
                                        message), phase="RECONCILED")
            log.warning("feeder %s: %s", self.feeder_id, message)
        return left

    def _reading(self, device_id: str) -> tuple[float | bool | None, float | None] | object:
        """What the field reports now for reconciling a control of ``device_id`` (status, tap)."""
        device = self.core.device(device_id)
        if isinstance(device, Switch | Capacitor):
            status = self._ctx.value(device_id, Quantity.STATUS)  # good quality only: a fresh scan
            return _UNKNOWN if status is None else (status, None)
        if isinstance(device, Transformer):
            tap = self._ctx.value(device_id, Quantity.TAP_POS)
            return _UNKNOWN if tap is None or isinstance(tap, bool) else (None, float(tap))
        return None, None  # no telemetry can tell (a DER set point, a device no longer in the model)

    # -- tags ------------------------------------------------------------------------------------

    async def load_tags(self) -> None:
        rows = await self._store().list_records("Tag", feeder_id=self.feeder_id, where={"active": True},
                                                limit=10_000)
        self.core.load_tags(Tag(id=str(r["tag_id"]), device_id=str(r["device_id"]), kind=TagKind(r["kind"]),
                                reason=str(r["reason"]), set_by=str(r["set_by"]),
                                set_at=datetime.fromisoformat(r["set_at"])) for r in rows)

    async def set_tag(self, device_id: str, kind: str, reason: str, set_by: str) -> Tag:
        tag = self.core.set_tag(device_id, kind, reason, set_by)
        store = self._store()
        try:
            await store.bounded(store.append_record("Tag", {
                "tag_id": tag.id, "device_id": device_id, "kind": str(tag.kind), "reason": reason, "set_by": set_by,
                "set_at": tag.set_at.isoformat(), "active": True}, feeder_id=self.feeder_id),
                self.recorder.timeout_s, "record a tag")
        except DmsError:
            self.core.remove_tag(tag.id, set_by)  # a tag that is not persisted would vanish at a restart
            raise
        self._outbox.event(EventKind.CONTROL, device_id, f"{set_by} tagged {device_id} {tag.kind}: {reason}",
                           durable=True, data={"phase": "TAG_SET", "tag_id": tag.id, "tag_kind": str(tag.kind),
                                               "operator": set_by})
        return tag

    async def remove_tag(self, tag_id: str, removed_by: str, *, may_override: bool = False) -> Tag:
        """Remove a tag: its holder, or with ``may_override`` (OVERRIDE_TAG) anyone. The tag stays in
        force unless its record says it was removed."""
        tag = self.core.remove_tag(tag_id, removed_by, may_override=may_override)
        store = self._store()

        async def write() -> None:
            rows = await store.list_records("Tag", feeder_id=self.feeder_id, where={"tag_id": tag_id}, limit=5)
            for r in rows:
                await store.update_record("Tag", int(r["seq"]), {
                    "active": False, "removed_by": removed_by, "removed_at": datetime.now(UTC).isoformat()})

        try:
            await store.bounded(write(), self.recorder.timeout_s * 2, "record a tag removal")
        except DmsError:
            self.core.load_tags([*self.core.tags(), tag])  # still recorded as active: still in force
            raise
        self._outbox.event(EventKind.CONTROL, tag.device_id, f"{removed_by} removed tag {tag.kind} from "
                           f"{tag.device_id}", durable=True,
                           data={"phase": "TAG_REMOVED", "tag_id": tag_id, "tag_kind": str(tag.kind),
                                 "operator": removed_by})
        return tag


_UNKNOWN = object()


# -- DER set points (#12): select-before-operate, then a SunSpec write confirmed by read-back -------

DerWrite = Callable[[], Awaitable[str]]  # writes once, reads back; returns what confirmed it; raises on failure


async def operate_der(room: ControlRoom, holder: str, der_id: str, action: str, value: float | None,
                      describe: str, write: DerWrite, priority: Priority) -> Outcome:
    """A DER command (a P limit, a Q or PF set point, curves, enter service, a storage set point,
    or the Volt/VAR planner's ``SET_DER_Q`` / ``CURTAIL_DER_P``) through the same path as any
    control: arbitration (``holder`` at ``priority``: an operator's name at OPERATOR, an
    application's at its own), the control core's select and operate (tags, selections by others,
    interlocks), the intent recorded before anything is sent, ``write`` called ONCE (it confirms by
    reading the SunSpec registers back), the outcome recorded and an event. The set point's range
    was checked before (``actors.cores.der.validate_control``); refusals raise and send nothing.

    ``value`` is what the record shows (MW or Mvar); the core's DER check sees the P limit when
    there is one, else the DER's rating (a command that does not move P)."""
    started = datetime.now(UTC)
    device = room.core.device(der_id)
    if not isinstance(device, Der):
        from graph_schema.errors import NotFound

        raise NotFound(f"{der_id!r} is not a DER of feeder {room.feeder_id!r}", element_id=der_id)
    core_value = value if action in ("CURTAIL_DER_P", "P_LIMIT") and value is not None else device.sn_mva
    try:
        room.arbiter.acquire(der_id, holder, priority)
    except DmsError as exc:
        await room._refused(der_id, action, value, holder, exc, started)
        raise
    try:
        states = room._switch_states()
        sel = room.core.select(der_id, ControlAction.SET, core_value, holder, switch_states=states)
        room.core.operate(sel.id, der_id, ControlAction.SET, core_value, holder, switch_states=states)
    except DmsError as exc:
        room.arbiter.release(der_id, holder)
        await room._refused(der_id, action, value, holder, exc, started)
        raise
    except BaseException:
        room.arbiter.release(der_id, holder)
        raise
    room.arbiter.sent(der_id, holder)
    return await asyncio.shield(_record_and_write(room, holder, der_id, action, value, describe, write, started,
                                                  "CONFIRMED", "confirmed by read-back"))


async def _record_and_write(room: ControlRoom, holder: str, device_id: str, action: str, value: float | None,
                            describe: str, write: DerWrite, started: datetime, ok_status: str,
                            ok_how: str) -> Outcome:
    """After arbitration (the arbiter holds ``device_id`` for ``holder``): record the intent (nothing
    is sent when it cannot be), an event, ``write`` called ONCE, the outcome recorded; releases the
    arbiter whatever happens."""
    from protocols.base import ProtocolError

    try:
        intent: RecordProps = {"intent_id": uuid.uuid4().hex, "device_id": device_id, "action": action,
                               "value": value, "control": describe, "operator": holder, "status": PENDING,
                               "phase": "INTENT", "requested_at": started.isoformat()}
        intent = {k: v for k, v in intent.items() if v is not None}
        try:
            seq: int | None = await room.recorder.intent(intent)
        except DmsError as exc:
            refusal = StoreUnavailable(
                f"{action} of {device_id} was refused and nothing was sent: its intent could not be recorded "
                f"({exc.message}). Retry once the store answers (see /readyz)")
            await room._outcome(intent, None, Outcome("REFUSED", refusal.code, refusal.message))
            raise refusal from None
        room._outbox.event(EventKind.CONTROL, device_id, f"{holder} operates {device_id}: {action} ({describe})",
                           durable=True, data={"phase": "OPERATE_SENT", "action": action, "value": value,
                                               "operator": holder})
        try:
            done = await write()
            outcome = Outcome(ok_status, None, f"{action} of {device_id} {ok_how}: {done}")
        except ProtocolError as exc:
            outcome = Outcome("FAILED", exc.code, f"{exc.message} (not retried)")
        await room._outcome(intent, seq, outcome)
        return outcome
    finally:
        room.arbiter.release(device_id, holder)


async def write_setting(room: ControlRoom, holder: str, device_id: str, kind: str, value: float,
                        priority: Priority) -> Outcome:
    """Push one local controller setting (``SET_V_ON``, ``SET_V_OFF``, ``SET_BAND_CENTRE``,
    ``SET_BANDWIDTH``, pu) to a bank or tap changer: arbitrated like a control (FDIR or an operator
    holding the device refuses it), recorded as ``SET_LOCAL_SETTING``, written once; the device's
    acknowledgement is the outcome (``ACCEPTED``: settings have no read-back point). No binding for
    the setting: FAILED with the reason, nothing sent."""
    from protocols.pointmap import point_id

    started = datetime.now(UTC)
    device = room.core.device(device_id)
    if not isinstance(device, Capacitor | Transformer):
        from graph_schema.errors import NotFound

        raise NotFound(f"{device_id!r} is not a capacitor bank or tap changer of feeder {room.feeder_id!r}",
                       element_id=device_id)
    pid = point_id(room.feeder_id, device_id, kind)
    client = room._field.client_for(pid)
    if client is None:
        return Outcome("FAILED", "DEVICE_UNREACHABLE",
                       f"{device_id} has no field binding for {kind}; nothing was sent (its point map has no "
                       f"{pid})")
    try:
        room.arbiter.acquire(device_id, holder, priority)
    except DmsError as exc:
        await room._refused(device_id, str(ControlAction.SET_LOCAL_SETTING), value, holder, exc, started)
        raise
    room.arbiter.sent(device_id, holder)

    async def write() -> str:
        await client.write_command(pid, value)
        return f"{kind}={value:g} pu"

    return await asyncio.shield(_record_and_write(room, holder, device_id, str(ControlAction.SET_LOCAL_SETTING),
                                                  value, f"{kind}={value:g} pu", write, started, "ACCEPTED",
                                                  "accepted by the device"))


def raise_for(outcome: Outcome, device_id: str, action: str, timeout_s: float) -> bool:
    """For applications: True when confirmed; the control errors otherwise."""
    if outcome.status in ("CONFIRMED", "ACCEPTED"):
        return True
    if outcome.code == "DEVICE_UNREACHABLE":
        raise DeviceUnreachable(device_id, outcome.message)
    raise NotConfirmed(device_id, action, timeout_s)
