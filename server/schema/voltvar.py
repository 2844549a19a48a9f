"""Volt/VAR optimisation (VVO/CVR): status, last plan, mode, objective and plan approval per feeder.

``voltVar(feederId)`` reads the hosted ``voltvar`` application (``actors/apps/voltvar_app.py``);
``setVoltVarMode`` and ``setVoltVarObjective`` need ``SET_VOLTVAR_MODE`` (a permission of its own,
held by operators and engineers); ``approveVoltVarPlan`` needs ``APPROVE_PLAN`` and executes an
ADVISORY plan through select-before-operate. ``planVoltVar`` asks for a plan now (``WHAT_IF``: it
changes nothing in the field unless the feeder is AUTOMATIC). Each change is audited; plans reach
subscribers as ``PLAN`` events on the existing event stream.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import strawberry
from strawberry.types import Info

from actors.apps import voltvar_app as _app
from actors.cores import voltvar as _core
from security.audit import AuditAction
from security.roles import Permission, requires
from server.schema.audit import audited
from server.schema.enums import (
    ControlStatus,
    RegulatorKind,
    VoltVarAction,
    VoltVarDeviceKind,
    VoltVarMode,
    VoltVarObjective,
    VoltVarPlanState,
    coerce,
)


@strawberry.type
class Regulator:
    """A tap changer under voltage control: a substation OLTC or a line voltage regulator."""

    id: strawberry.ID
    name: str
    kind: RegulatorKind  # type: ignore[valid-type]
    tap_pos: int | None = strawberry.field(description="The tap position the field reports (TAP_POS), else "
                                                       "the model's recorded one")
    tap_min: int
    tap_max: int
    tap_step_percent: float
    band_centre_pu: float | None
    bandwidth_pu: float | None
    ldc_r_ohm: float
    ldc_x_ohm: float


def regulators_of(feeder: object, live_tap_pos: Mapping[str, int] | None = None) -> list[Regulator]:
    """The feeder's tap changers, at the position the field reports where it is telemetered."""
    live = live_tap_pos or {}
    out: list[Regulator] = []
    for t in getattr(feeder, "transformers", ()):
        if not t.has_tap_changer:
            continue
        kind = _core.RegulatorKind.REGULATOR if t.regulator else _core.RegulatorKind.OLTC
        out.append(Regulator(id=strawberry.ID(t.id), name=t.name, kind=kind,
                             tap_pos=live.get(t.id, t.tap_pos), tap_min=t.tap_min, tap_max=t.tap_max,
                             tap_step_percent=t.tap_step_percent, band_centre_pu=t.band_centre_pu,
                             bandwidth_pu=t.bandwidth_pu, ldc_r_ohm=t.ldc_r_ohm, ldc_x_ohm=t.ldc_x_ohm))
    return out


@strawberry.type
class VoltVarOperation:
    device_id: strawberry.ID
    device_kind: VoltVarDeviceKind  # type: ignore[valid-type]
    action: VoltVarAction  # type: ignore[valid-type]
    value: float
    from_value: float


@strawberry.type
class VoltVarPlan:
    id: strawberry.ID
    state: VoltVarPlanState  # type: ignore[valid-type]
    objective: VoltVarObjective  # type: ignore[valid-type]
    trigger: str
    load_basis: str = strawberry.field(description="ESTIMATED (the state estimator's loads) or MODEL")
    created_at: datetime
    feasible: bool
    reason: str | None
    losses_mw: float = strawberry.field(description="Losses before the plan")
    min_vm_pu: float
    max_vm_pu: float
    predicted_losses_mw: float
    predicted_min_vm_pu: float
    predicted_max_vm_pu: float
    operations: list[VoltVarOperation]
    executed: list[str]
    skipped: list[str]
    failed: str | None
    decided_by: str | None
    held_device_ids: list[strawberry.ID]
    plan_time_ms: float


@strawberry.type
class VoltVarStatus:
    feeder_id: strawberry.ID
    mode: VoltVarMode  # type: ignore[valid-type]
    objective: VoltVarObjective  # type: ignore[valid-type]
    status: str = strawberry.field(description="Free text: what it is doing, who holds it off and why")
    suspended: str | None
    last_plan: VoltVarPlan | None


def plan_type(rec: _app.PlanRecord) -> VoltVarPlan:
    p = rec.plan
    return VoltVarPlan(
        id=strawberry.ID(rec.id), state=rec.state, objective=p.objective, trigger=rec.trigger,
        load_basis=rec.load_basis, created_at=rec.created_at, feasible=p.after.feasible, reason=p.reason,
        losses_mw=p.before.losses_mw, min_vm_pu=p.before.min_vm_pu, max_vm_pu=p.before.max_vm_pu,
        predicted_losses_mw=p.after.losses_mw, predicted_min_vm_pu=p.after.min_vm_pu,
        predicted_max_vm_pu=p.after.max_vm_pu,
        operations=[VoltVarOperation(device_id=strawberry.ID(o.device_id), device_kind=o.device_kind,
                                     action=o.action, value=o.value, from_value=o.from_value)
                    for o in p.operations],
        executed=list(rec.executed), skipped=list(rec.skipped), failed=rec.failed, decided_by=rec.decided_by,
        held_device_ids=[strawberry.ID(h) for h in p.held], plan_time_ms=p.plan_time_s * 1000.0,
    )


def status_type(feeder_id: str, st: dict) -> VoltVarStatus:  # type: ignore[type-arg]
    last = st.get("last_plan")
    return VoltVarStatus(feeder_id=strawberry.ID(feeder_id), mode=_app.VoltVarMode(st["mode"]),
                         objective=_core.Objective(st["objective"]), status=st["status"],
                         suspended=st.get("suspended"), last_plan=plan_type(last) if last is not None else None)


@strawberry.type
class VoltVarQuery:
    @strawberry.field(name="voltVar", permission_classes=[requires(Permission.READ_GRID, feeder_arg="feeder_id")])
    async def volt_var(self, info: Info, feeder_id: strawberry.ID) -> VoltVarStatus:
        grid = info.context["services"].grid
        grid.require_feeder(str(feeder_id))
        st = await grid.fleet.call_app(str(feeder_id), _app.VOLTVAR_OPERATOR, "voltvar_status")
        return status_type(str(feeder_id), st)


@strawberry.type(description="One local controller setting pushed to a device")
class SettingPushResult:
    device_id: strawberry.ID
    setting: str = strawberry.field(description="SET_V_ON, SET_V_OFF, SET_BAND_CENTRE or SET_BANDWIDTH")
    value: float = strawberry.field(description="pu")
    status: ControlStatus = strawberry.field(description="ACCEPTED by the device, FAILED (with code) or REFUSED")
    code: str | None
    message: str | None


@strawberry.type
class VoltVarMutation:
    @strawberry.mutation(name="setVoltVarMode",
                         permission_classes=[requires(Permission.SET_VOLTVAR_MODE, feeder_arg="feeder_id")])
    async def set_volt_var_mode(self, info: Info, feeder_id: strawberry.ID,
                                mode: VoltVarMode) -> VoltVarMode:  # type: ignore[valid-type]
        by = info.context["principal"].sub
        grid = info.context["services"].grid
        grid.require_feeder(str(feeder_id))
        value = _app.VoltVarMode(mode).value
        result = await audited(info, AuditAction.VOLTVAR_MODE, str(feeder_id), {"mode": value},
                               grid.fleet.call_app(str(feeder_id), _app.VOLTVAR_OPERATOR, "set_mode", value, by))
        return _app.VoltVarMode(result)

    @strawberry.mutation(name="setVoltVarObjective",
                         permission_classes=[requires(Permission.SET_VOLTVAR_MODE, feeder_arg="feeder_id")])
    async def set_volt_var_objective(self, info: Info, feeder_id: strawberry.ID,
                                     objective: VoltVarObjective) -> VoltVarObjective:  # type: ignore[valid-type]
        by = info.context["principal"].sub
        grid = info.context["services"].grid
        grid.require_feeder(str(feeder_id))
        value = _core.Objective(objective).value
        result = await audited(info, AuditAction.VOLTVAR_OBJECTIVE, str(feeder_id), {"objective": value},
                               grid.fleet.call_app(str(feeder_id), _app.VOLTVAR_OPERATOR, "set_objective", value,
                                                   by))
        return _core.Objective(result)

    @strawberry.mutation(name="approveVoltVarPlan",
                         permission_classes=[requires(Permission.APPROVE_PLAN, feeder_arg="feeder_id")])
    async def approve_volt_var_plan(self, info: Info, feeder_id: strawberry.ID,
                                    plan_id: strawberry.ID) -> VoltVarPlan:
        by = info.context["principal"].sub
        grid = info.context["services"].grid
        grid.require_feeder(str(feeder_id))
        rec = await audited(info, AuditAction.VOLTVAR_PLAN_APPROVE, f"{feeder_id}/{plan_id}",
                            {"plan_id": str(plan_id)},
                            grid.fleet.call_app(str(feeder_id), _app.VOLTVAR_OPERATOR, "approve", str(plan_id), by))
        return plan_type(rec)

    @strawberry.mutation(name="pushVoltVarFallback",
                         permission_classes=[requires(Permission.SET_VOLTVAR_MODE, feeder_arg="feeder_id")],
                         description="Write every bank's and tap changer's local controller settings to the device: "
                                     "what holds the voltage when the head-end is away")
    async def push_volt_var_fallback(self, info: Info, feeder_id: strawberry.ID) -> list[SettingPushResult]:
        by = info.context["principal"].sub
        grid = info.context["services"].grid
        grid.require_feeder(str(feeder_id))
        rows = await audited(info, AuditAction.VOLTVAR_FALLBACK_PUSH, str(feeder_id), {},
                             grid.fleet.call_app(str(feeder_id), _app.VOLTVAR_OPERATOR, "push_fallback", by))
        return [SettingPushResult(device_id=strawberry.ID(r["device_id"]), setting=r["setting"], value=r["value"],
                                  status=coerce(ControlStatus, r["status"], ControlStatus.FAILED), code=r["code"],
                                  message=r["message"]) for r in rows]

    @strawberry.mutation(name="planVoltVar", permission_classes=[requires(Permission.WHAT_IF, feeder_arg="feeder_id")],
                         description="Plan now on the live state; never executes, whatever the mode (a what-if: "
                                     "approveVoltVarPlan executes a proposed plan)")
    async def plan_volt_var(self, info: Info, feeder_id: strawberry.ID) -> VoltVarPlan:
        grid = info.context["services"].grid
        grid.require_feeder(str(feeder_id))
        rec = await audited(info, AuditAction.VOLTVAR_PLAN_REQUEST, str(feeder_id), {},
                            grid.fleet.call_app(str(feeder_id), _app.VOLTVAR_OPERATOR, "plan_now",
                                                "operator", False))
        return plan_type(rec)
