"""Trends from the historian: per point (``history``) and per feeder's solve series (``feederHistory``).

Every timestamp is UTC. Buckets shorter than a day are fixed lengths from ``start``; a whole number
of days (``bucketS`` 86400, ...) is calendar days in the utility's time zone (``DMS_TIMEZONE``),
so a daylight-saving day is a 23- or 25-hour bucket. ``bucketS: null`` returns raw samples (each as
a one-sample bucket), at most 100,000; more, more than 10,000 buckets, a range over 400 days,
``start >= end`` or an unknown point id is ``BAD_INPUT``.

``energyUsage`` is a smart meter's kWh per bucket (raw 15-minute intervals when ``bucketS`` is
null). It names READ_PUBLIC_FEED, the least an identity holds, and authorises per meter in the
service: READ_GRID sees any meter on the feeders of its scope; a CUSTOMER token only the meters of
the account in its ``customer_account`` claim (any other meter is FORBIDDEN); no token is
UNAUTHENTICATED.
"""

from __future__ import annotations

from datetime import datetime

import strawberry
from strawberry.types import Info

from graph_schema.historian import Bucket
from security.roles import Permission, feeder_in_scope, requires
from server.history_service import HistoryService


@strawberry.type
class HistoryBucket:
    start: datetime
    end: datetime
    avg: float | None
    min: float | None
    max: float | None
    last: float | None
    count: int
    good_fraction: float = strawberry.field(description="Share of the bucket's samples of GOOD quality (0..1)")


@strawberry.type
class PointHistory:
    point_id: strawberry.ID
    feeder_id: strawberry.ID
    buckets: list[HistoryBucket]


@strawberry.type
class FeederHistoryBucket:
    start: datetime
    end: datetime
    losses_mw: float | None = strawberry.field(description="Average over the bucket")
    min_vm_pu: float | None
    max_vm_pu: float | None
    max_line_loading_percent: float | None
    p_mw: float | None = strawberry.field(description="Active power at the source(s), average over the bucket")
    customers_out: int | None = strawberry.field(description="Most customers out at once in the bucket")
    count: int
    converged_fraction: float


@strawberry.type
class EnergyBucket:
    start: datetime
    end: datetime
    kwh: float = strawberry.field(description="Energy delivered in the bucket (kWh)")
    intervals: int = strawberry.field(description="15-minute readings in the bucket")


def _bucket(b: Bucket) -> HistoryBucket:
    return HistoryBucket(start=b.start, end=b.end, avg=b.avg, min=b.min, max=b.max, last=b.last, count=b.count,
                         good_fraction=b.good_fraction)


def _service(info: Info) -> HistoryService:
    services = info.context["services"]
    return HistoryService(services.grid, services.settings)


@strawberry.type
class HistoryQuery:
    @strawberry.field(permission_classes=[requires(Permission.READ_GRID)])
    async def history(self, info: Info, point_ids: list[strawberry.ID], start: datetime, end: datetime,
                      bucket_s: int | None = None) -> list[PointHistory]:
        principal = info.context.get("principal")
        series = await _service(info).history(
            [str(p) for p in point_ids], start, end, bucket_s,
            visible=lambda fid: principal is not None and feeder_in_scope(principal, fid))
        return [PointHistory(point_id=strawberry.ID(pid), feeder_id=strawberry.ID(fid),
                             buckets=[_bucket(b) for b in buckets]) for pid, fid, buckets in series]

    @strawberry.field(permission_classes=[requires(Permission.READ_GRID, feeder_arg="feeder_id")])
    async def feeder_history(self, info: Info, feeder_id: strawberry.ID, start: datetime, end: datetime,
                             bucket_s: int | None = None) -> list[FeederHistoryBucket]:
        rows = await _service(info).feeder_history(str(feeder_id), start, end, bucket_s)
        return [FeederHistoryBucket(start=b.start, end=b.end, losses_mw=b.losses_mw, min_vm_pu=b.min_vm_pu,
                                    max_vm_pu=b.max_vm_pu, max_line_loading_percent=b.max_line_loading_percent,
                                    p_mw=b.p_source_mw, customers_out=b.customers_out, count=b.count,
                                    converged_fraction=b.converged_fraction) for b in rows]

    @strawberry.field(permission_classes=[requires(Permission.READ_ENERGY_USAGE)])
    async def energy_usage(self, info: Info, meter_id: strawberry.ID, start: datetime, end: datetime,
                           bucket_s: int | None = None) -> list[EnergyBucket]:
        rows = await _service(info).energy_usage(str(meter_id), start, end, bucket_s, info.context.get("principal"))
        return [EnergyBucket(start=b.start, end=b.end, kwh=b.kwh, intervals=b.intervals) for b in rows]
