"""Outage queries: ``outages(active, feederId, first, after)`` (Relay, newest first) and ``outage(id)``.

``customersOut`` is who is without supply now; ``customersInterrupted`` everyone who lost supply at
any time during the outage. Each step records who lost and who regained supply, when, and by whom.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from datetime import datetime

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from actors.cores.events import EventKind
from actors.cores.outages import Outage as OutageRecord
from actors.cores.outages import public_view
from graph_schema.errors import DmsError
from security.roles import Permission, authorize, requires
from server.metrics import METRICS
from server.schema.enums import OutageCause, OutageStatus
from server.schema.realtime import Event, _event_stream
from server.schema.relay import Connection, connection, decode_cursor, page_size


@strawberry.type
class OutageStep:
    at: datetime
    action: str
    by: str
    customers_lost: int
    customers_restored: int
    load_ids_lost: list[strawberry.ID]
    load_ids_restored: list[strawberry.ID]
    note: str


@strawberry.type
class Outage:
    id: strawberry.ID
    feeder_id: strawberry.ID
    status: OutageStatus  # type: ignore[valid-type]
    cause: OutageCause  # type: ignore[valid-type]
    started_at: datetime
    estimated_restoration: datetime | None
    restored_at: datetime | None
    customers_out: int
    customers_interrupted: int
    momentary: bool
    devices: list[strawberry.ID]
    section_bus_ids: list[strawberry.ID]
    steps: list[OutageStep]

    @classmethod
    def of(cls, o: OutageRecord) -> Outage:
        return cls(
            id=strawberry.ID(o.id), feeder_id=strawberry.ID(o.feeder_id), status=o.status, cause=o.cause,
            started_at=o.started_at, estimated_restoration=o.estimated_restoration, restored_at=o.restored_at,
            customers_out=o.customers_out, customers_interrupted=o.customers_interrupted, momentary=o.momentary,
            devices=[strawberry.ID(d) for d in o.devices],
            section_bus_ids=[strawberry.ID(b) for b in o.section_bus_ids],
            steps=[OutageStep(at=s.at, action=s.action, by=s.by, customers_lost=s.customers_lost,
                              customers_restored=s.customers_restored,
                              load_ids_lost=[strawberry.ID(x) for x in s.load_ids_lost],
                              load_ids_restored=[strawberry.ID(x) for x in s.load_ids_restored], note=s.note)
                   for s in o.steps],
        )


@strawberry.type
class OutageQuery:
    @strawberry.field(permission_classes=[requires(Permission.READ_OUTAGES, feeder_arg="feeder_id")])
    async def outages(self, info: Info, active: bool | None = None, feeder_id: strawberry.ID | None = None,
                      first: int | None = 50, after: str | None = None) -> Connection[Outage]:
        limit = page_size(first)
        principal = info.context["principal"]
        svc = info.context["services"].runtime.outages
        rows = await svc.page(active=active, feeder_id=str(feeder_id) if feeder_id else None,
                              feeders_in_scope=principal.feeders, before_seq=decode_cursor(after), limit=limit + 1)
        return connection([(seq, Outage.of(o)) for seq, o in rows], limit, after=after)

    @strawberry.field(permission_classes=[requires(Permission.READ_OUTAGES)])
    async def outage(self, info: Info, id: strawberry.ID) -> Outage:
        record = await info.context["services"].runtime.outages.get(str(id))
        authorize(info.context["principal"], Permission.READ_OUTAGES, feeder_id=record.feeder_id)
        return Outage.of(record)


@strawberry.type
class PublicOutage:
    """What a utility's public outage map shows: no internal ids, no device or bus names."""

    id: strawberry.ID
    customers_affected: int
    started_at: datetime
    estimated_restoration: datetime | None
    cause: OutageCause  # type: ignore[valid-type]
    status: OutageStatus  # type: ignore[valid-type]
    area: JSON | None = strawberry.field(description="GeoJSON geometry of the affected area, when known")


async def _public(info: Info, outage_id: str) -> PublicOutage | None:
    rt = info.context["services"].runtime
    try:
        outage = await rt.outages.get(outage_id)
    except DmsError:
        return None
    try:
        feeder = await rt.grid.model(outage.feeder_id)
    except DmsError:
        feeder = None
    view = public_view(outage, feeder)
    # Typed from the record the view was made of: the same instants and values the view's strings hold.
    return PublicOutage(id=strawberry.ID(view["id"]), customers_affected=view["customersAffected"],
                        started_at=outage.started_at, estimated_restoration=outage.estimated_restoration,
                        cause=OutageCause(view["cause"]), status=OutageStatus(view["status"]), area=view["area"])


@strawberry.type
class OutageSubscription:
    @strawberry.subscription(permission_classes=[requires(Permission.READ_OUTAGES, feeder_arg="feeder_id")],
                             description="Outage records changing and FDIR plans (resume with afterSeq)")
    async def outage_events(self, info: Info, feeder_id: strawberry.ID | None = None,
                            after_seq: int | None = None) -> AsyncGenerator[Event, None]:
        async for e in _event_stream(info, "outageEvents", feeder_id,
                                     frozenset({EventKind.OUTAGE, EventKind.PLAN}), after_seq):
            yield e

    @strawberry.subscription(permission_classes=[requires(Permission.READ_PUBLIC_FEED)],
                             description="The public outage feed, no token needed (as /feeds/outages.geojson)")
    async def outage_feed(self, info: Info) -> AsyncGenerator[PublicOutage, None]:
        hub = info.context["services"].hub
        METRICS.subscriptions.labels("outageFeed").inc()
        try:
            async for batch in hub.stream(after_seq=None, feeder_id=None, kinds={str(EventKind.OUTAGE)}):
                for e in batch:
                    outage_id = e.data.get("outage_id")
                    if isinstance(outage_id, str) and not e.data.get("momentary"):
                        view = await _public(info, outage_id)
                        if view is not None:
                            yield view
        finally:
            METRICS.subscriptions.labels("outageFeed").dec()
