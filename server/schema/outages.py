"""Outage queries: ``outages(active, feederId, first, after)`` (Relay, newest first) and ``outage(id)``.

``customersOut`` is who is without supply now; ``customersInterrupted`` everyone who lost supply at
any time during the outage. Each step records who lost and who regained supply, when, and by whom.
"""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.types import Info

from actors.outages import Cause
from actors.outages import Outage as OutageRecord
from actors.outages import OutageStatus as _OutageStatus
from security.roles import Permission, authorize, requires
from server.schema.relay import Connection, connection, decode_cursor, page_size

OutageStatus = strawberry.enum(_OutageStatus)
OutageCause = strawberry.enum(Cause, name="OutageCause")


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
        return connection([(seq, Outage.of(o)) for seq, o in rows], limit)

    @strawberry.field(permission_classes=[requires(Permission.READ_OUTAGES)])
    async def outage(self, info: Info, id: strawberry.ID) -> Outage:
        record = await info.context["services"].runtime.outages.get(str(id))
        authorize(info.context["principal"], Permission.READ_OUTAGES, feeder_id=record.feeder_id)
        return Outage.of(record)
