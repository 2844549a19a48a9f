"""Demand response: programmes, events, dispatch and measured performance.

``createDrEvent`` checks the programme's rules (notice, hours per event, season, overlap, events
per season: each a ``BAD_INPUT`` naming the rule) and dispatches enrolled resources to meet the
target: short of it, the event is created with ``shortfallKw`` stated, or refused (rule
``SHORTFALL``) when ``allOrNothing`` is true. ``drEventPerformance`` compares the dispatched loads'
metered energy (the historian's AMI intervals) with their 10-in-10 baseline with same-day
adjustment. Reading needs READ_GRID (results filtered by the token's feeder scope); creating and
cancelling needs CONTROL on the event's feeder, and both are audited.
"""

from __future__ import annotations

from datetime import date, datetime

import strawberry
from strawberry.types import Info

from actors.cores import dr
from security.audit import AuditAction
from security.roles import Permission, authorize, feeder_in_scope, requires
from server.dr_service import DrService, EventView
from server.schema.audit import audited
from server.schema.enums import DrEventStatus, DrProgramKind, DrResourceKind


@strawberry.type
class DrResource:
    id: strawberry.ID
    load_id: strawberry.ID
    kind: DrResourceKind  # type: ignore[valid-type]
    capacity_kw: float
    enrolled_from: date
    enrolled_until: date | None


@strawberry.type
class DrProgram:
    id: strawberry.ID
    name: str
    kind: DrProgramKind  # type: ignore[valid-type]
    feeder_id: strawberry.ID
    season_start: date
    season_end: date = strawberry.field(description="Exclusive")
    max_events_per_season: int
    max_hours_per_event: float
    min_notice_min: int
    opt_out_deadline_min: int = strawberry.field(description="Opt-outs close this many minutes before an event starts")
    max_opt_outs_per_season: int
    resources: list[DrResource]


@strawberry.type
class DrDispatch:
    resource_id: strawberry.ID
    kw: float


@strawberry.type
class DrEvent:
    id: strawberry.ID
    program_id: strawberry.ID
    feeder_id: strawberry.ID
    start: datetime
    end: datetime
    status: DrEventStatus  # type: ignore[valid-type]
    target_kw: float
    planned_kw: float = strawberry.field(description="What the dispatched resources give, up to the target")
    shortfall_kw: float = strawberry.field(description="Target minus what the enrolled resources can give (0: met)")
    all_or_nothing: bool
    resources: list[DrDispatch]
    opted_out: list[strawberry.ID]
    created_by: str


@strawberry.type
class DrEventPerformance:
    event_id: strawberry.ID
    target_kw: float
    delivered_kw: float = strawberry.field(description="Mean of baseline minus metered load over the event's window")
    baseline_kw: float
    metered_kw: float
    intervals: int
    baseline_method: str


def event_type(v: EventView) -> DrEvent:
    e = v.event
    return DrEvent(id=strawberry.ID(e.id), program_id=strawberry.ID(e.program_id), feeder_id=strawberry.ID(e.feeder_id),
                   start=e.start, end=e.end, status=v.status, target_kw=e.target_kw, planned_kw=v.planned_kw,
                   shortfall_kw=v.shortfall_kw, all_or_nothing=v.all_or_nothing,
                   resources=[DrDispatch(resource_id=strawberry.ID(r), kw=k) for r, k in e.resources],
                   opted_out=[strawberry.ID(r) for r in e.opted_out], created_by=v.created_by)


def _svc(info: Info) -> DrService:
    runtime = info.context["services"].runtime
    if runtime is None:
        raise RuntimeError("the server is still starting")
    return DrService.of(runtime)


def _visible(info: Info):  # type: ignore[no-untyped-def]
    principal = info.context.get("principal")
    return lambda fid: principal is not None and feeder_in_scope(principal, fid)


@strawberry.type
class DrQuery:
    @strawberry.field(permission_classes=[requires(Permission.READ_GRID)])
    async def dr_programs(self, info: Info) -> list[DrProgram]:
        visible = _visible(info)
        return [DrProgram(
            id=strawberry.ID(p.id), name=p.name, kind=p.kind, feeder_id=strawberry.ID(fid), season_start=p.season_start,
            season_end=p.season_end, max_events_per_season=p.max_events_per_season,
            max_hours_per_event=p.max_hours_per_event, min_notice_min=p.min_notice_min,
            opt_out_deadline_min=p.opt_out_deadline_min, max_opt_outs_per_season=p.max_opt_outs_per_season,
            resources=[DrResource(id=strawberry.ID(r.id), load_id=strawberry.ID(r.load_id), kind=r.kind,
                                  capacity_kw=r.capacity_kw, enrolled_from=r.enrolled_from,
                                  enrolled_until=r.enrolled_until) for r in rs])
            for p, fid, rs in await _svc(info).programs() if visible(fid)]

    @strawberry.field(permission_classes=[requires(Permission.READ_GRID)])
    async def dr_events(self, info: Info, status: DrEventStatus | None = None) -> list[DrEvent]:  # type: ignore[valid-type]
        views = await _svc(info).events(dr.EventStatus(status) if status is not None else None, _visible(info))
        return [event_type(v) for v in views]

    @strawberry.field(permission_classes=[requires(Permission.READ_GRID)])
    async def dr_event_performance(self, info: Info, event_id: strawberry.ID) -> DrEventPerformance:
        svc = _svc(info)
        view, _ = await svc.event(str(event_id))
        authorize(info.context.get("principal"), Permission.READ_GRID, feeder_id=view.event.feeder_id)
        p = await svc.performance(str(event_id))
        return DrEventPerformance(event_id=event_id, target_kw=p.target_kw, delivered_kw=p.delivered_kw,
                                  baseline_kw=p.baseline_kw, metered_kw=p.metered_kw, intervals=p.intervals,
                                  baseline_method=p.baseline_method)


@strawberry.type
class DrMutation:
    @strawberry.mutation(permission_classes=[requires(Permission.CONTROL, feeder_arg="feeder_id")])
    async def create_dr_event(self, info: Info, program_id: strawberry.ID, feeder_id: strawberry.ID, start: datetime,
                              end: datetime, target_kw: float, all_or_nothing: bool = False) -> DrEvent:
        principal = info.context["principal"]
        view = await audited(info, AuditAction.DR_EVENT_CREATE, f"{feeder_id}/{program_id}",
                             {"start": start.isoformat(), "end": end.isoformat(), "target_kw": target_kw,
                              "all_or_nothing": all_or_nothing},
                             _svc(info).create_event(str(program_id), str(feeder_id), start, end, target_kw,
                                                     all_or_nothing, principal.sub))
        return event_type(view)

    @strawberry.mutation(permission_classes=[requires(Permission.CONTROL)])
    async def cancel_dr_event(self, info: Info, event_id: strawberry.ID) -> DrEvent:
        svc = _svc(info)
        view, _ = await svc.event(str(event_id))
        authorize(info.context.get("principal"), Permission.CONTROL, feeder_id=view.event.feeder_id)
        view = await audited(info, AuditAction.DR_EVENT_CANCEL, f"{view.event.feeder_id}/{event_id}", {},
                             svc.cancel_event(str(event_id)))
        return event_type(view)
