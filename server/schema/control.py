"""Control mutations: select-before-operate (IEC 61850-7-2 SBO, DNP3 select/operate) and safety tags.

One consistent rule for outcomes:

* A **refusal** - nothing was sent to the field - is a GraphQL error with ``extensions.code``:
  ``FORBIDDEN`` (role or feeder scope), ``NOT_FOUND``, ``BAD_INPUT``, ``SELECTED_BY_OTHER``,
  ``SELECTION_EXPIRED``, ``PARAMETERS_DIFFER``, ``DEVICE_TAGGED``, ``INTERLOCK``, ``NO_SELECTION``,
  ``STORE_UNAVAILABLE`` (the graph store does not answer within a couple of seconds, so the step
  could not be recorded: a control is never sent without its audit entry and its intent record),
  ``TAG_HELD_BY_OTHER`` (only a tag's holder, or a SUPERVISOR, removes it).
  The selection is void after a refused operate (select again), except after ``STORE_UNAVAILABLE``
  from the audit log: it stays until it expires.
* Once the command was **attempted**, ``operateControl`` answers a ``ControlResult`` (no error):
  ``status`` ``CONFIRMED`` (telemetry shows the expected position), ``ACCEPTED`` (a set point the
  device took; it has no telemetry to confirm it), ``NOT_CONFIRMED`` (sent, not confirmed within
  the confirm timeout; ``code`` ``NOT_CONFIRMED``) or ``FAILED`` (the write failed; ``code``
  ``DEVICE_UNREACHABLE``). Nothing is ever retried.

``feederId`` is optional everywhere: the device's feeder is looked up (and must be unambiguous).
Authorization is always checked against that feeder, so feeder-scoped tokens work. Every step is
audited (who, roles, what, from where, outcome) by :class:`server.services.ControlService`.
"""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.types import Info

from actors.cores import control as core
from actors.cores.control import Tag as TagRecord
from security.roles import Permission, requires
from server.schema.enums import ControlAction, ControlStatus, TagKind
from server.services import Caller


def caller(info: Info) -> Caller:
    return Caller(info.context.get("principal"), str(info.context.get("source") or "unknown"))


@strawberry.type
class ControlSelection:
    id: strawberry.ID = strawberry.field(description="The selection token; pass it to operateControl")
    expires_at: datetime
    device_id: strawberry.ID
    feeder_id: strawberry.ID
    action: ControlAction  # type: ignore[valid-type]
    value: float | None


@strawberry.type
class ControlResult:
    status: ControlStatus = strawberry.field(description="CONFIRMED, ACCEPTED, NOT_CONFIRMED or FAILED")
    code: str | None
    message: str
    device_id: strawberry.ID
    feeder_id: strawberry.ID
    action: ControlAction  # type: ignore[valid-type]
    value: float | None


@strawberry.type
class CancelResult:
    cancelled: bool
    device_id: strawberry.ID


@strawberry.type
class Tag:
    id: strawberry.ID
    feeder_id: strawberry.ID
    device_id: strawberry.ID
    kind: TagKind  # type: ignore[valid-type]
    reason: str
    set_by: str
    set_at: datetime
    blocks_control: bool

    @classmethod
    def of(cls, feeder_id: str, t: TagRecord) -> Tag:
        return cls(id=strawberry.ID(t.id), feeder_id=strawberry.ID(feeder_id), device_id=strawberry.ID(t.device_id),
                   kind=core.TagKind(t.kind), reason=t.reason, set_by=t.set_by, set_at=t.set_at,
                   blocks_control=t.blocks_control)


@strawberry.type
class ControlMutation:
    @strawberry.mutation(permission_classes=[requires(Permission.CONTROL, feeder_arg="feeder_id")],
                         description="Reserve a device for one operator (select-before-operate)")
    async def select_control(self, info: Info, device_id: strawberry.ID, action: ControlAction,  # type: ignore[valid-type]
                             value: float | None = None, feeder_id: strawberry.ID | None = None) -> ControlSelection:
        svc = info.context["services"]
        sel = await svc.control.select(caller(info), str(device_id), str(action.value), value,
                                       None if feeder_id is None else str(feeder_id), svc.settings.select_timeout_s)
        return ControlSelection(id=strawberry.ID(sel["id"]), expires_at=sel["expires_at"],
                                device_id=strawberry.ID(sel["device_id"]), feeder_id=strawberry.ID(sel["feeder_id"]),
                                action=core.ControlAction(sel["action"]), value=sel["value"])

    @strawberry.mutation(permission_classes=[requires(Permission.CONTROL, feeder_arg="feeder_id")],
                         description="Operate a selection with the same device, action and value; sent once")
    async def operate_control(self, info: Info, selection_id: strawberry.ID, device_id: strawberry.ID,
                              action: ControlAction, value: float | None = None,  # type: ignore[valid-type]
                              feeder_id: strawberry.ID | None = None) -> ControlResult:
        svc = info.context["services"]
        r = await svc.control.operate(caller(info), str(selection_id), str(device_id), str(action.value), value,
                                      None if feeder_id is None else str(feeder_id))
        return ControlResult(status=ControlStatus(r["status"]), code=r.get("code"), message=r["message"],
                             device_id=strawberry.ID(r["device_id"]), feeder_id=strawberry.ID(r["feeder_id"]),
                             action=core.ControlAction(r["action"]), value=r["value"])

    @strawberry.mutation(permission_classes=[requires(Permission.CONTROL, feeder_arg="feeder_id")],
                         description="Release a selection")
    async def cancel_control(self, info: Info, selection_id: strawberry.ID,
                             feeder_id: strawberry.ID | None = None) -> CancelResult:
        svc = info.context["services"]
        out = await svc.control.cancel(caller(info), str(selection_id), None if feeder_id is None else str(feeder_id))
        return CancelResult(cancelled=True, device_id=strawberry.ID(out["device_id"]))

    @strawberry.mutation(permission_classes=[requires(Permission.TAG, feeder_arg="feeder_id")],
                         description="Put a safety tag on a device (persisted; blocking kinds refuse control)")
    async def set_tag(self, info: Info, device_id: strawberry.ID, kind: TagKind, reason: str,  # type: ignore[valid-type]
                      feeder_id: strawberry.ID | None = None) -> Tag:
        svc = info.context["services"]
        fid, tag = await svc.control.set_tag(caller(info), str(device_id), str(kind.value), reason,
                                             None if feeder_id is None else str(feeder_id))
        return Tag.of(fid, tag)

    @strawberry.mutation(permission_classes=[requires(Permission.TAG)],
                         description="Remove a safety tag: its holder, or a SUPERVISOR (TAG_HELD_BY_OTHER otherwise)")
    async def remove_tag(self, info: Info, tag_id: strawberry.ID) -> Tag:
        fid, tag = await info.context["services"].control.remove_tag(caller(info), str(tag_id))
        return Tag.of(fid, tag)
