"""FDIR (fault location, isolation and service restoration): status, plans, approval and mode.

A feeder in AUTOMATIC mode executes validated switching plans itself; in ADVISORY mode a plan waits
for an operator's ``approvePlan`` (or ``rejectPlan``). Return-to-normal plans always wait for
approval. Decisions and mode changes are audited with who, when, from where and the outcome.
"""

from __future__ import annotations

import strawberry
from strawberry.types import Info

from actors.apps.fdir_engine import FdirMode as _FdirMode
from actors.apps.fdir_engine import FdirStatus as FdirStatusRecord
from actors.apps.fdir_engine import PlanStatus as PlanStatusRecord
from actors.cores.fdir import PlanStep as PlanStepRecord
from security.audit import AuditAction
from security.roles import Permission, requires
from server.schema.audit import audited
from server.schema.enums import FdirMode, PlanAction, PlanKind, PlanState


@strawberry.type
class PlanStep:
    order: int
    action: PlanAction  # type: ignore[valid-type]
    device_id: strawberry.ID
    expected_is_open: bool
    customers_restored_or_lost: int
    explanation: str


@strawberry.type
class SwitchingPlan:
    id: strawberry.ID
    state: PlanState  # type: ignore[valid-type]
    kind: PlanKind  # type: ignore[valid-type]
    message: str
    decided_by: str | None
    outage_id: strawberry.ID | None
    explanation: str
    warnings: list[str]
    steps: list[PlanStep]
    executed_steps: list[int]
    failed_step: PlanStep | None
    customers_interrupted: int
    customers_restored: int
    customers_left: int
    faulted_section_ids: list[str]
    located_confidently: bool | None
    min_vm_pu: float | None
    max_loading_percent: float | None
    plan_seconds: float | None = strawberry.field(description="From the first indication to the validated plan")
    restore_seconds: float | None = strawberry.field(description="From the first indication to the last restoring step")


@strawberry.type
class FdirStatus:
    feeder_id: strawberry.ID
    mode: FdirMode  # type: ignore[valid-type]
    pending_plan: SwitchingPlan | None
    executing_plan: SwitchingPlan | None
    last_outcome: SwitchingPlan | None
    active_outage_ids: list[strawberry.ID]
    automatic_suspended: str | None
    plans: list[SwitchingPlan]


def _step(s: PlanStepRecord) -> PlanStep:
    return PlanStep(order=s.order, action=PlanAction(s.action), device_id=strawberry.ID(s.device_id),
                    expected_is_open=s.expected_is_open, customers_restored_or_lost=s.customers_restored_or_lost,
                    explanation=s.explanation)


def plan_type(p: PlanStatusRecord) -> SwitchingPlan:
    plan = p.plan
    pf = plan.validated_power_flow
    loc = plan.fault
    return SwitchingPlan(
        id=strawberry.ID(plan.id), state=PlanState(p.state), kind=PlanKind(p.kind), message=p.message,
        decided_by=p.decided_by,
        outage_id=strawberry.ID(p.outage_id) if p.outage_id else None, explanation=plan.explanation,
        warnings=list(plan.warnings), steps=[_step(s) for s in plan.steps], executed_steps=list(p.executed_steps),
        failed_step=_step(p.failed_step) if p.failed_step else None,
        customers_interrupted=plan.customers_interrupted, customers_restored=plan.customers_restored,
        customers_left=plan.customers_left,
        faulted_section_ids=list(getattr(loc, "faulted_section_ids", ()) or ()),
        located_confidently=getattr(loc, "confident", None) if loc is not None else None,
        min_vm_pu=getattr(pf, "min_vm_pu", None), max_loading_percent=getattr(pf, "max_loading_percent", None),
        plan_seconds=p.timings.plan_s, restore_seconds=p.timings.restore_s,
    )


def status_type(feeder_id: str, s: FdirStatusRecord, plans: list[PlanStatusRecord]) -> FdirStatus:
    return FdirStatus(
        feeder_id=strawberry.ID(feeder_id), mode=s.mode,
        pending_plan=plan_type(s.pending_plan) if s.pending_plan else None,
        executing_plan=plan_type(s.executing_plan) if s.executing_plan else None,
        last_outcome=plan_type(s.last_outcome) if s.last_outcome else None,
        active_outage_ids=[strawberry.ID(o) for o in s.active_outage_ids],
        automatic_suspended=s.automatic_suspended, plans=[plan_type(p) for p in plans[-20:]],
    )


@strawberry.type
class FdirQuery:
    @strawberry.field(permission_classes=[requires(Permission.READ_GRID, feeder_arg="feeder_id")])
    async def fdir(self, info: Info, feeder_id: strawberry.ID) -> FdirStatus:
        grid = info.context["services"].grid
        grid.require_feeder(str(feeder_id))
        fleet = grid.fleet
        status = await fleet.call_app(str(feeder_id), "fdir", "engine_status")
        plans = await fleet.call_app(str(feeder_id), "fdir", "plans")
        return status_type(str(feeder_id), status, plans)


@strawberry.type
class FdirMutation:
    @strawberry.mutation(permission_classes=[requires(Permission.SET_MODE, feeder_arg="feeder_id")])
    async def set_fdir_mode(self, info: Info, feeder_id: strawberry.ID, mode: FdirMode) -> FdirMode:  # type: ignore[valid-type]
        by = info.context["principal"].sub
        grid = info.context["services"].grid
        grid.require_feeder(str(feeder_id))
        value = _FdirMode(mode).value
        result = await audited(info, AuditAction.FDIR_MODE, str(feeder_id), {"mode": value},
                                grid.fleet.call_app(str(feeder_id), "fdir", "set_mode", value, by))
        return _FdirMode(result)

    @strawberry.mutation(permission_classes=[requires(Permission.APPROVE_PLAN, feeder_arg="feeder_id")])
    async def approve_plan(self, info: Info, feeder_id: strawberry.ID, plan_id: strawberry.ID) -> SwitchingPlan:
        by = info.context["principal"].sub
        grid = info.context["services"].grid
        grid.require_feeder(str(feeder_id))
        status = await audited(info, AuditAction.PLAN_APPROVE, f"{feeder_id}/{plan_id}", {"plan_id": str(plan_id)},
                                grid.fleet.call_app(str(feeder_id), "fdir", "approve", str(plan_id), by))
        return plan_type(status)

    @strawberry.mutation(permission_classes=[requires(Permission.APPROVE_PLAN, feeder_arg="feeder_id")])
    async def reject_plan(self, info: Info, feeder_id: strawberry.ID, plan_id: strawberry.ID,
                          reason: str) -> SwitchingPlan:
        by = info.context["principal"].sub
        grid = info.context["services"].grid
        grid.require_feeder(str(feeder_id))
        status = await audited(info, AuditAction.PLAN_REJECT, f"{feeder_id}/{plan_id}",
                                {"plan_id": str(plan_id), "reason": reason[:500]},
                                grid.fleet.call_app(str(feeder_id), "fdir", "reject", str(plan_id), by, reason[:500]))
        return plan_type(status)
