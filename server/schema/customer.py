"""Customers taking part: ``customer { account meters premises outages drEvents }`` and ``optOut``.

Scoped by the CUSTOMER token's ``customer_account`` claim and nothing else: the meters of that
account (:func:`graph_schema.historian.ami.meters_of_account`), their premises (the load each meter
belongs to), the outages that interrupted those premises (with their estimated restoration; no
customer counts, no other premises), and the DR events the account's enrolled resources are
dispatched in or opted out of (only its own share). A token without the claim is FORBIDDEN;
operators' tokens lack DEMAND_RESPONSE_ENROLL and are FORBIDDEN too (they have the operational
queries). ``optOut(eventId)`` takes the account's resource out of the event within the programme's
rules and re-plans the event (:meth:`server.dr_service.DrService.opt_out`); an event that does not
involve the account is NOT_FOUND, whether it exists or not. Audited.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import UTC, datetime
from typing import Any

import strawberry
from strawberry.types import Info

from security.audit import AuditAction
from security.errors import Forbidden
from security.roles import Permission, requires
from server.dr_service import DrService, EventView
from server.schema.audit import audited
from server.schema.enums import CustomerNotificationKind, DrEventStatus, OutageStatus

# How often the subscription re-reads the account's DR events (the store is the record: every API
# replica sees the same, whichever replica changed them).
DR_POLL_S = 2.0


@strawberry.type
class CustomerPremises:
    id: strawberry.ID = strawberry.field(description="The premises' service point (the model's load id)")
    feeder_id: strawberry.ID
    meter_ids: list[strawberry.ID]


@strawberry.type
class CustomerOutage:
    id: strawberry.ID
    status: OutageStatus  # type: ignore[valid-type]
    started_at: datetime
    estimated_restoration: datetime | None
    restored_at: datetime | None
    premises_ids: list[strawberry.ID] = strawberry.field(description="Which of your premises it interrupted")


@strawberry.type
class CustomerDrEvent:
    id: strawberry.ID
    program_id: strawberry.ID
    start: datetime
    end: datetime
    status: DrEventStatus  # type: ignore[valid-type]
    resource_ids: list[strawberry.ID] = strawberry.field(description="Your resources dispatched in it")
    requested_kw: float = strawberry.field(description="The reduction asked of your resources")
    opted_out: bool


@strawberry.type
class CustomerNotification:
    kind: CustomerNotificationKind  # type: ignore[valid-type]
    at: datetime
    dr_event: CustomerDrEvent | None
    outage: CustomerOutage | None


@strawberry.type
class Customer:
    account: strawberry.ID
    meters: list[strawberry.ID]
    premises: list[CustomerPremises]
    outages: list[CustomerOutage]
    dr_events: list[CustomerDrEvent]


def account_of(info: Info) -> str:
    principal = info.context.get("principal")
    account = getattr(principal, "customer_account", None)
    if not account:
        raise Forbidden("this token names no customer account; ask for a CUSTOMER token with a customer_account claim")
    return str(account)


def _premises(account: str) -> dict[tuple[str, str], list[str]]:
    from graph_schema.historian.ami import meters_of_account, parse_meter_id

    out: dict[tuple[str, str], list[str]] = {}
    for m in sorted(meters_of_account(account)):
        parsed = parse_meter_id(m)
        if parsed is not None:
            out.setdefault((parsed[0], parsed[1]), []).append(m)
    return out


async def _mine(svc: DrService, account: str) -> tuple[set[str], list[EventView]]:
    resources = {r.id for _, _, rs in await svc.programs() for r in rs if r.account == account}
    views = [v for v in await svc.events() if resources & ({r for r, _ in v.event.resources} | set(v.event.opted_out))]
    return resources, views


def _dr_event(v: EventView, resources: set[str]) -> CustomerDrEvent:
    e = v.event
    mine = [(r, k) for r, k in e.resources if r in resources]
    return CustomerDrEvent(id=strawberry.ID(e.id), program_id=strawberry.ID(e.program_id), start=e.start, end=e.end,
                           status=v.status, resource_ids=[strawberry.ID(r) for r, _ in mine],
                           requested_kw=sum(k for _, k in mine), opted_out=bool(resources & set(e.opted_out)))


async def _known_premises(runtime: Any, premises: dict[tuple[str, str], list[str]]) -> dict[tuple[str, str], list[str]]:
    out = {}
    for (fid, load), meters in premises.items():
        if fid not in runtime.grid.fleet.feeder_ids:
            continue
        model = await runtime.grid.model(fid)
        if any(ld.id == load for ld in model.loads):
            out[(fid, load)] = meters
    return out


@strawberry.type
class CustomerQuery:
    @strawberry.field(permission_classes=[requires(Permission.DEMAND_RESPONSE_ENROLL)])
    async def customer(self, info: Info) -> Customer:
        account = account_of(info)
        runtime = info.context["services"].runtime
        premises = await _known_premises(runtime, _premises(account))
        outages: list[CustomerOutage] = []
        for fid in sorted({f for f, _ in premises}):
            loads = {ld for f, ld in premises if f == fid}
            for _, o in await runtime.outages.page(active=None, feeder_id=fid, feeders_in_scope=None,
                                                   before_seq=None, limit=50):
                view = _outage_view(o, loads)
                if view is not None:
                    outages.append(view)
        resources, views = await _mine(DrService.of(runtime), account)
        return Customer(
            account=strawberry.ID(account),
            meters=[strawberry.ID(m) for ms in premises.values() for m in ms],
            premises=[CustomerPremises(id=strawberry.ID(ld), feeder_id=strawberry.ID(f),
                                       meter_ids=[strawberry.ID(m) for m in ms]) for (f, ld), ms in premises.items()],
            outages=outages, dr_events=[_dr_event(v, resources) for v in views])


@strawberry.type
class CustomerMutation:
    @strawberry.mutation(permission_classes=[requires(Permission.DEMAND_RESPONSE_ENROLL)])
    async def opt_out(self, info: Info, event_id: strawberry.ID) -> CustomerDrEvent:
        from graph_schema.errors import NotFound

        account = account_of(info)
        svc = DrService.of(info.context["services"].runtime)
        resources, views = await _mine(svc, account)
        view = next((v for v in views if v.event.id == str(event_id)), None)
        if view is None:
            raise NotFound(f"no DR event {str(event_id)!r} for your account; customer.drEvents lists yours",
                           element_id=str(event_id))
        dispatched = [r for r, _ in view.event.resources if r in resources]
        if not dispatched:
            from graph_schema.errors import BadInput

            raise BadInput(f"rule=NOT_DISPATCHED: you have already opted out of event {event_id}")

        async def all_out() -> EventView:
            out = view
            for r in dispatched:
                out = await svc.opt_out(str(event_id), r)
            return out

        after = await audited(info, AuditAction.DR_OPT_OUT, f"{view.event.feeder_id}/{event_id}",
                              {"account": account, "resources": ",".join(dispatched)}, all_out())
        return _dr_event(after, resources)


def _outage_view(o: Any, loads: set[str]) -> CustomerOutage | None:
    hit = sorted(loads & set(o.load_ids_interrupted))
    if not hit:
        return None
    return CustomerOutage(id=strawberry.ID(o.id), status=o.status, started_at=o.started_at,
                          estimated_restoration=o.estimated_restoration, restored_at=o.restored_at,
                          premises_ids=[strawberry.ID(x) for x in hit])


@strawberry.type
class CustomerSubscription:
    @strawberry.subscription(permission_classes=[requires(Permission.DEMAND_RESPONSE_ENROLL)],
                             description="The account's DR events (now, then each change) and outages of its "
                                         "premises; nothing of any other account")
    async def customer_events(self, info: Info) -> AsyncGenerator[CustomerNotification, None]:
        from actors.cores.events import EventKind
        from graph_schema.errors import DmsError

        account = account_of(info)
        services = info.context["services"]
        runtime = services.runtime
        premises = await _known_premises(runtime, _premises(account))
        feeders = {f for f, _ in premises}
        svc = DrService.of(runtime)
        seen: dict[str, tuple[Any, ...]] = {}

        async def dr_changes() -> list[CustomerNotification]:
            resources, views = await _mine(svc, account)
            out = []
            for v in views:
                view = _dr_event(v, resources)
                key = (view.status, tuple(view.resource_ids), view.opted_out, view.requested_kw)
                if seen.get(v.event.id) != key:
                    seen[v.event.id] = key
                    out.append(CustomerNotification(kind=CustomerNotificationKind.DR_EVENT, at=datetime.now(UTC),
                                                    dr_event=view, outage=None))
            return out

        for n in await dr_changes():
            yield n
        async for batch in services.hub.stream(after_seq=None, feeder_id=None, kinds={str(EventKind.OUTAGE)},
                                               feeder_visible=lambda fid: fid in feeders, tick_s=DR_POLL_S):
            for e in batch:
                outage_id = e.data.get("outage_id")
                if not isinstance(outage_id, str):
                    continue
                try:
                    o = await runtime.outages.get(outage_id)
                except DmsError:
                    continue
                view = _outage_view(o, {ld for f, ld in premises if f == o.feeder_id})
                if view is not None:
                    yield CustomerNotification(kind=CustomerNotificationKind.OUTAGE, at=datetime.now(UTC),
                                               dr_event=None, outage=view)
            for n in await dr_changes():
                yield n
