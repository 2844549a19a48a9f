"""Control execution of one feeder: select-before-operate for operators and applications.

The pure :class:`actors.cores.control.ControlCore` decides whether a selection or an operate is allowed
(selections, tags, interlocks); :class:`actors.arbiter.Arbiter` decides whether an application may
act on a device at all. This room then builds the device's command (one command type per device
kind: :data:`COMMANDS`), writes it ONCE through the device's field client and waits for telemetry
to confirm it within ``confirm_timeout_s``. Nothing is retried. Every operate, refused ones too, is
recorded as a ``ControlAction`` record; tags are ``Tag`` records (reloaded after a restart); every
step is an event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
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
)
from actors.cores.events import EventKind, Severity
from actors.field_binding import FieldBinding
from actors.ingest import Ingest
from actors.outbox import EventOutbox
from graph_schema.errors import BadInput, DmsError
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
            await self._record(device_id, str(action), value, operator, Outcome("REFUSED", exc.code, exc.message),
                               started)
            raise
        self.arbiter.operator_sending(device_id, operator)
        try:
            return await self._send(sel.device_id, sel.action, sel.value, operator, started)
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
            return await self._send(device_id, action, value, app, datetime.now(UTC))
        finally:
            self.arbiter.release(device_id, app)

    # -- sending ---------------------------------------------------------------------------------

    async def _send(self, device_id: str, action: ControlAction, value: float | None, operator: str,
                    started: datetime) -> Outcome:
        self._outbox.event(EventKind.CONTROL, device_id, f"{operator} operates {device_id}: {action}", durable=True,
                           data={"phase": "OPERATE_SENT", "action": str(action), "value": value,
                                 "operator": operator})
        outcome = await self._execute(device_id, action, value)
        await self._record(device_id, str(action), value, operator, outcome, started)
        return outcome

    async def _execute(self, device_id: str, action: ControlAction, value: float | None) -> Outcome:
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
            self._ingest.expect(device_id, cmd.expect_open)
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

    async def _record(self, device_id: str, action: str, value: float | None, operator: str, outcome: Outcome,
                      started: datetime) -> None:
        record = {"device_id": device_id, "action": action, "value": value, "operator": operator,
                  "status": outcome.status, "code": outcome.code, "message": outcome.message,
                  "requested_at": started.isoformat(), "completed_at": datetime.now(UTC).isoformat()}
        try:
            await self._store().append_record("ControlAction", record, feeder_id=self.feeder_id)
        except DmsError:
            log.error("feeder %s: control record of %s could not be persisted: %s", self.feeder_id, device_id,
                      record, exc_info=True)
        severity = Severity.INFO if outcome.status in ("CONFIRMED", "ACCEPTED") else Severity.WARNING
        code = outcome.code
        self._outbox.event(EventKind.CONTROL, device_id,
                           f"{action} of {device_id}: {outcome.status}" + (f" ({code})" if code else ""),
                           severity=severity, durable=True,
                           data={"phase": "RESULT", "action": action, "value": value, "operator": operator,
                                 "status": outcome.status, "code": code})

    # -- tags ------------------------------------------------------------------------------------

    async def load_tags(self) -> None:
        rows = await self._store().list_records("Tag", feeder_id=self.feeder_id, where={"active": True},
                                                limit=10_000)
        self.core.load_tags(Tag(id=str(r["tag_id"]), device_id=str(r["device_id"]), kind=TagKind(r["kind"]),
                                reason=str(r["reason"]), set_by=str(r["set_by"]),
                                set_at=datetime.fromisoformat(r["set_at"])) for r in rows)

    async def set_tag(self, device_id: str, kind: str, reason: str, set_by: str) -> Tag:
        tag = self.core.set_tag(device_id, kind, reason, set_by)
        try:
            await self._store().append_record("Tag", {
                "tag_id": tag.id, "device_id": device_id, "kind": str(tag.kind), "reason": reason, "set_by": set_by,
                "set_at": tag.set_at.isoformat(), "active": True}, feeder_id=self.feeder_id)
        except DmsError:
            self.core.remove_tag(tag.id, set_by)  # a tag that is not persisted would vanish at a restart
            raise
        self._outbox.event(EventKind.CONTROL, device_id, f"{set_by} tagged {device_id} {tag.kind}: {reason}",
                           durable=True, data={"phase": "TAG_SET", "tag_id": tag.id, "tag_kind": str(tag.kind),
                                               "operator": set_by})
        return tag

    async def remove_tag(self, tag_id: str, removed_by: str) -> Tag:
        tag = self.core.remove_tag(tag_id, removed_by)
        store = self._store()
        rows = await store.list_records("Tag", feeder_id=self.feeder_id, where={"tag_id": tag_id}, limit=5)
        for r in rows:
            await store.update_record("Tag", int(r["seq"]), {
                "active": False, "removed_by": removed_by, "removed_at": datetime.now(UTC).isoformat()})
        self._outbox.event(EventKind.CONTROL, tag.device_id, f"{removed_by} removed tag {tag.kind} from "
                           f"{tag.device_id}", durable=True,
                           data={"phase": "TAG_REMOVED", "tag_id": tag_id, "tag_kind": str(tag.kind),
                                 "operator": removed_by})
        return tag


def raise_for(outcome: Outcome, device_id: str, action: str, timeout_s: float) -> bool:
    """For applications: True when confirmed; the control errors otherwise."""
    if outcome.status in ("CONFIRMED", "ACCEPTED"):
        return True
    if outcome.code == "DEVICE_UNREACHABLE":
        raise DeviceUnreachable(device_id, outcome.message)
    raise NotConfirmed(device_id, action, timeout_s)
