"""Regulatory reports: ``reliabilityIndices`` (IEEE 1366-2022), report jobs and schedules.

``reliabilityIndices(scope, id, start, end, excludeMajorEvents)`` answers at once from the stored
interruption records. ``createReport(kind, period, format)`` starts a job; ``report(id)`` says its
``status`` and, once DONE, the ``url`` to download (``/reports/<id>.<ext>``, bearer token with
READ_REPORTS) and the file's ``sha256``; ``contentSha256`` is the hash of the report's figures,
the same for the same inputs. Schedules (``createReportSchedule``) need CHANGE_SETTINGS.

Permissions: READ_REPORTS for every field; an AUDIT report also needs READ_AUDIT. A token limited
to feeders may ask for the FEEDER scope of its feeders only; system-wide reports need a token
without a feeder scope.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from enum import Enum

import strawberry
from strawberry.types import Info

from graph_schema.errors import BadInput
from security.audit import AuditAction
from security.errors import Forbidden
from security.roles import Permission, allowed, authorize, requires
from server.reports.jobs import Job, Schedule
from server.schema.audit import audited
from server.schema.relay import Connection, connection, decode_cursor, page_size


@strawberry.enum(description="What reliabilityIndices covers")
class ReliabilityScope(Enum):
    SYSTEM = "SYSTEM"
    FEEDER = "FEEDER"
    ZONE = "ZONE"


@strawberry.enum
class ReportKind(Enum):
    RELIABILITY = "RELIABILITY"
    POWER_QUALITY = "POWER_QUALITY"
    OPERATIONS = "OPERATIONS"
    AUDIT = "AUDIT"


@strawberry.enum
class ReportFormat(Enum):
    CSV = "CSV"
    XLSX = "XLSX"
    PDF = "PDF"


@strawberry.enum(description="PENDING, then RUNNING, then DONE (url set) or FAILED (error set)")
class ReportStatus(Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"


@strawberry.enum
class ReportFrequency(Enum):
    DAILY = "DAILY"
    MONTHLY = "MONTHLY"
    ANNUAL = "ANNUAL"


@strawberry.type
class MajorEventDay:
    date: date
    saidi_min: float


@strawberry.type
class CemiValue:
    n: int = strawberry.field(description="more than n sustained interruptions")
    share: float


@strawberry.type
class ReliabilityIndices:
    scope: ReliabilityScope
    id: str | None
    start: datetime
    end: datetime
    edition: str
    exclude_major_events: bool
    customers_served: float
    interruptions: int = strawberry.field(description="sustained, unplanned interruption records")
    customers_interrupted: float
    customer_minutes: float
    saidi_min: float
    saifi: float
    caidi_min: float | None
    caifi: float | None
    asai: float
    maifi_e: float
    momentary_events: int
    cemi: list[CemiValue]
    celid_s: float
    celid_t: float
    celid_hours: float
    major_event_days: list[MajorEventDay]
    t_med_min: float | None
    med_history_years: float
    med_fallback: str | None = strawberry.field(description="what was done without five full years of history")
    threshold_min: float = strawberry.field(description="momentary/sustained threshold")
    timezone: str
    no_data: bool = strawberry.field(description="true when no interruption record begins in the period")


@strawberry.type
class ReportJob:
    id: strawberry.ID
    kind: ReportKind
    format: ReportFormat
    status: ReportStatus
    period_start: datetime
    period_end: datetime
    created_at: datetime
    created_by: str
    finished_at: datetime | None
    url: str | None = strawberry.field(description="download path once DONE (bearer token with READ_REPORTS)")
    sha256: str | None = strawberry.field(description="SHA-256 of the file")
    content_sha256: str | None = strawberry.field(description="SHA-256 of the figures: same inputs, same hash")
    size_bytes: int | None
    no_data: bool
    error: str | None
    schedule_id: strawberry.ID | None

    @classmethod
    def of(cls, j: Job) -> ReportJob:
        return cls(id=strawberry.ID(j.id), kind=ReportKind(j.kind), format=ReportFormat(j.format),
                   status=ReportStatus(j.status),
                   period_start=j.period_start, period_end=j.period_end, created_at=j.created_at,
                   created_by=j.created_by, finished_at=j.finished_at, url=j.url, sha256=j.sha256,
                   content_sha256=j.content_sha256, size_bytes=j.size_bytes, no_data=j.no_data, error=j.error,
                   schedule_id=strawberry.ID(j.schedule_id) if j.schedule_id else None)


@strawberry.type
class ReportSchedule:
    id: strawberry.ID
    kind: ReportKind
    format: ReportFormat
    frequency: ReportFrequency
    created_by: str
    created_at: datetime
    next_run_at: datetime | None

    @classmethod
    def of(cls, s: Schedule, next_run: datetime | None) -> ReportSchedule:
        return cls(id=strawberry.ID(s.id), kind=ReportKind(s.kind), format=ReportFormat(s.format),
                   frequency=ReportFrequency(s.frequency), created_by=s.created_by, created_at=s.created_at,
                   next_run_at=next_run)


@strawberry.input
class ReportPeriodInput:
    start: datetime
    end: datetime = strawberry.field(description="exclusive")


def _service(info: Info):  # type: ignore[no-untyped-def]
    return info.context["services"].runtime.reports


def _system_wide(info: Info) -> None:
    principal = info.context["principal"]
    if principal is not None and principal.feeders is not None:
        raise Forbidden("your token is limited to some feeders; system-wide reports need a token without a feeder "
                        "scope (or ask for the FEEDER scope of one of your feeders)")


def _kind_allowed(info: Info, kind: str) -> None:
    if kind == "AUDIT":
        authorize(info.context["principal"], Permission.READ_AUDIT)


def _aware(t: datetime, name: str) -> datetime:
    if t.tzinfo is None:
        raise BadInput(f"{name} {t.isoformat()} has no UTC offset; add one (e.g. +00:00)")
    return t


@strawberry.type
class ReportQuery:
    @strawberry.field(permission_classes=[requires(Permission.READ_REPORTS)],
                      description="IEEE 1366-2022 indices of the system, a feeder or a zone for [start, end)")
    async def reliability_indices(self, info: Info, scope: ReliabilityScope, start: datetime, end: datetime,
                                  id: str | None = None, exclude_major_events: bool = False) -> ReliabilityIndices:
        if scope == ReliabilityScope.FEEDER:
            if not id:
                raise BadInput("scope FEEDER needs the feeder id in id")
            authorize(info.context["principal"], Permission.READ_REPORTS, feeder_id=id)
        else:
            _system_wide(info)
            if scope == ReliabilityScope.ZONE and not id:
                raise BadInput("scope ZONE needs the zone in id")
        svc = _service(info)
        rel = await svc.data.reliability(scope.value, id, _aware(start, "start"), _aware(end, "end"),
                                         now=datetime.now(UTC))
        ix = rel.indices_excluding_med if exclude_major_events else rel.indices
        med = rel.med
        return ReliabilityIndices(
            scope=scope, id=id, start=start, end=end, edition="IEEE Std 1366-2022",
            exclude_major_events=exclude_major_events, customers_served=ix.customers_served,
            interruptions=ix.interruptions, customers_interrupted=ix.customers_interrupted,
            customer_minutes=ix.customer_minutes, saidi_min=ix.saidi_min, saifi=ix.saifi, caidi_min=ix.caidi_min,
            caifi=ix.caifi, asai=ix.asai, maifi_e=ix.maifi_e, momentary_events=ix.momentary_events,
            cemi=[CemiValue(n=n, share=v) for n, v in ix.cemi], celid_s=ix.celid_s, celid_t=ix.celid_t,
            celid_hours=ix.celid_hours,
            major_event_days=[MajorEventDay(date=d, saidi_min=v) for d, v in med.major_event_days],
            t_med_min=med.t_med_min, med_history_years=round(med.years_of_history, 3), med_fallback=med.fallback,
            threshold_min=rel.threshold_min, timezone=rel.timezone, no_data=rel.records == 0)

    @strawberry.field(permission_classes=[requires(Permission.READ_REPORTS)],
                      description="Report jobs, newest first")
    async def report_jobs(self, info: Info, first: int | None = 50, after: str | None = None) -> Connection[ReportJob]:
        limit = page_size(first)
        jobs = await _service(info).jobs(limit=limit + 1, before_seq=decode_cursor(after))
        audit_ok = allowed(info.context["principal"], Permission.READ_AUDIT)
        return connection([(j.seq, ReportJob.of(j)) for j in jobs if j.kind != "AUDIT" or audit_ok], limit,
                          after=after)

    @strawberry.field(permission_classes=[requires(Permission.READ_REPORTS)])
    async def report(self, info: Info, id: strawberry.ID) -> ReportJob:
        job = await _service(info).get(str(id))
        _kind_allowed(info, job.kind)
        return ReportJob.of(job)

    @strawberry.field(permission_classes=[requires(Permission.READ_REPORTS)])
    async def report_schedules(self, info: Info) -> list[ReportSchedule]:
        svc = _service(info)
        return [ReportSchedule.of(s, svc.next_run(s.id)) for s in await svc.schedules()]


@strawberry.type
class ReportMutation:
    @strawberry.mutation(permission_classes=[requires(Permission.READ_REPORTS)],
                         description="Start a report job; poll report(id) until status is DONE, then download url")
    async def create_report(self, info: Info, kind: ReportKind, period: ReportPeriodInput,
                            format: ReportFormat) -> ReportJob:
        _system_wide(info)
        _kind_allowed(info, kind.value)
        principal = info.context["principal"]
        start, end = _aware(period.start, "period start"), _aware(period.end, "period end")
        job = await audited(info, AuditAction.REPORT_CREATE, kind.value,
                            {"kind": kind.value, "format": format.value, "start": start.isoformat(),
                             "end": end.isoformat()},
                            _service(info).create(kind.value, start, end, format.value, by=principal.sub))
        return ReportJob.of(job)

    @strawberry.mutation(permission_classes=[requires(Permission.CHANGE_SETTINGS)],
                         description="Produce a report every day, month or year (for the period before)")
    async def create_report_schedule(self, info: Info, kind: ReportKind, format: ReportFormat,
                                     frequency: ReportFrequency) -> ReportSchedule:
        _system_wide(info)
        _kind_allowed(info, kind.value)
        svc = _service(info)
        s = await audited(info, AuditAction.REPORT_SCHEDULE_CREATE, kind.value,
                          {"kind": kind.value, "format": format.value, "frequency": frequency.value},
                          svc.add_schedule(kind.value, format.value, frequency.value,
                                           by=info.context["principal"].sub))
        return ReportSchedule.of(s, svc.next_run(s.id))

    @strawberry.mutation(permission_classes=[requires(Permission.CHANGE_SETTINGS)])
    async def delete_report_schedule(self, info: Info, id: strawberry.ID) -> ReportSchedule:
        svc = _service(info)
        s = await audited(info, AuditAction.REPORT_SCHEDULE_DELETE, str(id), {}, svc.remove_schedule(str(id)))
        return ReportSchedule.of(s, None)

    @strawberry.mutation(permission_classes=[requires(Permission.CHANGE_SETTINGS)],
                         description="Run a schedule now (its report of the period before now)")
    async def run_report_schedule(self, info: Info, id: strawberry.ID) -> ReportJob:
        svc = _service(info)
        job = await audited(info, AuditAction.REPORT_SCHEDULE_RUN, str(id), {}, svc.run_schedule(str(id)))
        return ReportJob.of(job)
