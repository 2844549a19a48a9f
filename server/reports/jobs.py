"""Report jobs, their artefacts, and scheduled reports.

``createReport(kind, period, format)`` stores a ``ReportJob`` record (PENDING), builds the report
(:mod:`server.reports.builders`) and renders it (:mod:`server.reports.render`) in a worker thread,
stores the file in the graph store (a ``ReportFile`` record, so that any API replica can serve it)
and a copy under ``DMS_REPORTS_DIR`` (default ``<data_dir>/reports``, a cache), and marks the job
DONE with the file's SHA-256 and the report's content hash, or FAILED with the reason. Files are
served at ``/reports/<job id>.<ext>`` (READ_REPORTS; an AUDIT report also needs READ_AUDIT).

Rendering runs in a thread of the server, not as a Ray task: the work is a few seconds of Python
over records the server has just read (a year's indices for 100 feeders take well under a second,
a full PDF about two), it touches no live feeder state (the inputs are records, a frozen snapshot
by nature), and a thread keeps matplotlib/openpyxl/fpdf2 out of the Ray workers' import set.

Scheduled reports (``ReportSchedule`` records, configured with CHANGE_SETTINGS) run on APScheduler
3's ``AsyncIOScheduler`` with cron triggers in the utility's time zone: DAILY at 01:00 for the day
before, MONTHLY at 02:00 on the 1st for the month before, ANNUAL at 03:00 on 1 January for the year
before. Every replica with the scheduler on reloads the stored schedules every few minutes, and a
schedule's report of a period is made once (a second firing, on another replica, finds the job).
Every job, scheduled or not, is reproducible: the same inputs give the same figures and the same
content hash (the generated-at time is not hashed).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any

from graph_schema.errors import BadInput, NotFound
from graph_schema.store import GraphStore
from server.reports.builders import BUILDERS, KINDS, ReportContext
from server.reports.data import ALL, ReportData
from server.reports.render import EXTENSIONS, FORMATS

log = logging.getLogger(__name__)

JOB = "ReportJob"
FILE = "ReportFile"
SCHEDULE = "ReportSchedule"
SYNC_MINUTES = 5
FREQUENCIES = ("DAILY", "MONTHLY", "ANNUAL")
_CRON = {"DAILY": {"hour": 1, "minute": 0}, "MONTHLY": {"day": 1, "hour": 2, "minute": 0},
         "ANNUAL": {"month": 1, "day": 1, "hour": 3, "minute": 0}}


@dataclass(frozen=True)
class Job:
    seq: int
    id: str
    kind: str
    format: str
    period_start: datetime
    period_end: datetime
    status: str  # PENDING, RUNNING, DONE, FAILED
    created_at: datetime
    created_by: str
    finished_at: datetime | None = None
    sha256: str | None = None  # of the file
    content_sha256: str | None = None  # of the report's figures (reproducible)
    size_bytes: int | None = None
    no_data: bool = False
    error: str | None = None
    schedule_id: str | None = None

    @property
    def file_name(self) -> str:
        return f"{self.id}.{EXTENSIONS[self.format]}"

    @property
    def url(self) -> str | None:
        return f"/reports/{self.file_name}" if self.status == "DONE" else None

    @classmethod
    def of(cls, r: dict[str, Any]) -> Job:
        def dt(k: str) -> datetime | None:
            return datetime.fromisoformat(r[k]) if r.get(k) else None

        return cls(seq=int(r["seq"]), id=str(r["id"]), kind=str(r["kind"]), format=str(r["format"]),
                   period_start=datetime.fromisoformat(r["period_start"]),
                   period_end=datetime.fromisoformat(r["period_end"]), status=str(r["status"]),
                   created_at=datetime.fromisoformat(r["created_at"]), created_by=str(r.get("created_by") or ""),
                   finished_at=dt("finished_at"), sha256=r.get("sha256"), content_sha256=r.get("content_sha256"),
                   size_bytes=r.get("size_bytes"), no_data=bool(r.get("no_data")), error=r.get("error"),
                   schedule_id=r.get("schedule_id"))


@dataclass(frozen=True)
class Schedule:
    seq: int
    id: str
    kind: str
    format: str
    frequency: str
    created_by: str
    created_at: datetime
    enabled: bool = True

    @classmethod
    def of(cls, r: dict[str, Any]) -> Schedule:
        return cls(int(r["seq"]), str(r["id"]), str(r["kind"]), str(r["format"]), str(r["frequency"]),
                   str(r.get("created_by") or ""), datetime.fromisoformat(r["created_at"]),
                   bool(r.get("enabled", True)))


def check_request(kind: str, fmt: str, start: datetime, end: datetime, now: datetime) -> None:
    if kind not in KINDS:
        raise BadInput(f"report kind {kind!r} is not one of {', '.join(KINDS)}")
    if fmt not in FORMATS:
        raise BadInput(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    if start.tzinfo is None or end.tzinfo is None:
        raise BadInput("period start and end need a UTC offset (e.g. 2024-01-01T00:00:00+00:00)")
    if end <= start:
        raise BadInput(f"period end {end.isoformat()} is not after its start {start.isoformat()}; swap them")
    if start > now:
        raise BadInput(f"the period starts {start.isoformat()}, in the future; a report covers what has happened")
    if end - start > timedelta(days=3 * 366 + 1):
        raise BadInput("the period is longer than three years; report a year at a time")


def previous_period(frequency: str, now: datetime, tz: Any) -> tuple[datetime, datetime]:
    """The day, month or year before ``now`` in the utility's time zone."""
    today = now.astimezone(tz).date()
    if frequency == "DAILY":
        a, b = today - timedelta(days=1), today
    elif frequency == "MONTHLY":
        b = today.replace(day=1)
        a = (b - timedelta(days=1)).replace(day=1)
    elif frequency == "ANNUAL":
        b = date(today.year, 1, 1)
        a = date(today.year - 1, 1, 1)
    else:
        raise BadInput(f"frequency {frequency!r} is not one of {', '.join(FREQUENCIES)}")
    return datetime.combine(a, time(0), tzinfo=tz), datetime.combine(b, time(0), tzinfo=tz)


class ReportService:
    """Creates, runs, lists and serves report jobs; runs the schedules."""

    def __init__(self, store: GraphStore, settings: Any, audit: Callable[[], Any] = lambda: None, *,
                 utc_now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.settings = settings
        self.data = ReportData(store, tz=settings.timezone, threshold_min=settings.reliability_momentary_min)
        self.dir = Path(settings.reports_root)
        self._audit = audit
        self._now = utc_now
        self._tasks: set[asyncio.Task[None]] = set()
        self._scheduler: Any = None

    # -- jobs ------------------------------------------------------------------------------------

    async def create(self, kind: str, start: datetime, end: datetime, fmt: str, *, by: str,
                     schedule_id: str | None = None) -> Job:
        now = self._now()
        check_request(kind, fmt, start, end, now)
        rec: dict[str, Any] = {
            "id": uuid.uuid4().hex, "kind": kind, "format": fmt, "period_start": start.isoformat(),
            "period_end": end.isoformat(), "status": "PENDING", "created_at": now.isoformat(), "created_by": by,
            "schedule_id": schedule_id,
        }
        seq = await self.store.append_record(JOB, rec)
        job = Job.of({**rec, "seq": seq})
        task = asyncio.create_task(self._run(job), name=f"report-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _run(self, job: Job) -> None:
        try:
            await self.store.update_record(JOB, job.seq, {"status": "RUNNING"})
            ctx = ReportContext(store=self.store, data=self.data, now=self._now(), generated_at=job.created_at,
                                historian_root=self.settings.historian_root, audit=self._audit())
            doc = await BUILDERS[job.kind](ctx, job.period_start, job.period_end)
            from server.reports.render import render

            body = await asyncio.to_thread(render, doc, job.format)
            await self.store.append_record(FILE, {"job_id": job.id, "content_b64": base64.b64encode(body).decode()})
            await asyncio.to_thread(self._write, job.file_name, body)
            await self.store.update_record(JOB, job.seq, {
                "status": "DONE", "finished_at": self._now().isoformat(), "sha256": hashlib.sha256(body).hexdigest(),
                "content_sha256": doc.content_sha256, "size_bytes": len(body), "no_data": doc.no_data is not None})
            log.info("report %s (%s %s) done: %d bytes", job.id, job.kind, job.format, len(body))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("report %s (%s) failed", job.id, job.kind)
            msg = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(Exception):
                await self.store.update_record(JOB, job.seq, {"status": "FAILED", "error": str(msg)[:2000],
                                                              "finished_at": self._now().isoformat()})

    def _write(self, name: str, body: bytes) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f".{name}.tmp"
        tmp.write_bytes(body)
        os.replace(tmp, self.dir / name)

    async def jobs(self, *, limit: int = 50, before_seq: int | None = None) -> list[Job]:
        rows = await self.store.list_records(JOB, limit=limit, before_seq=before_seq, newest_first=True)
        return [Job.of(r) for r in rows]

    async def get(self, job_id: str) -> Job:
        rows = await self.store.list_records(JOB, where={"id": job_id}, limit=1)
        if not rows:
            raise NotFound(f"report {job_id!r} not found; list them with reportJobs", element_id=job_id)
        return Job.of(rows[0])

    async def content(self, job: Job) -> bytes:
        """The job's file: the local copy when it is intact, else from the store (and cached here)."""
        if job.status != "DONE" or not job.sha256:
            raise NotFound(f"report {job.id!r} has no file ({job.status}); wait until it is DONE", element_id=job.id)
        path = self.dir / job.file_name
        with contextlib.suppress(OSError):
            body = await asyncio.to_thread(path.read_bytes)
            if hashlib.sha256(body).hexdigest() == job.sha256:
                return body
        rows = await self.store.list_records(FILE, where={"job_id": job.id}, limit=1, newest_first=True)
        body = base64.b64decode(str(rows[0]["content_b64"])) if rows else b""
        if hashlib.sha256(body).hexdigest() != job.sha256:
            raise NotFound(f"the file of report {job.id!r} is missing or damaged; create the report again",
                           element_id=job.id)
        with contextlib.suppress(OSError):
            await asyncio.to_thread(self._write, job.file_name, body)
        return body

    async def wait(self) -> None:
        """Until every running job has finished (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # -- schedules ---------------------------------------------------------------------------------

    async def schedules(self) -> list[Schedule]:
        return [Schedule.of(r) for r in await self.store.list_records(SCHEDULE, limit=ALL)
                if r.get("enabled", True)]

    async def add_schedule(self, kind: str, fmt: str, frequency: str, *, by: str) -> Schedule:
        if kind not in KINDS:
            raise BadInput(f"report kind {kind!r} is not one of {', '.join(KINDS)}")
        if fmt not in FORMATS:
            raise BadInput(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
        if frequency not in FREQUENCIES:
            raise BadInput(f"frequency {frequency!r} is not one of {', '.join(FREQUENCIES)}")
        rec = {"id": uuid.uuid4().hex, "kind": kind, "format": fmt, "frequency": frequency, "created_by": by,
               "created_at": self._now().isoformat(), "enabled": True}
        seq = await self.store.append_record(SCHEDULE, rec)
        sched = Schedule.of({**rec, "seq": seq})
        self._add_job(sched)
        return sched

    async def remove_schedule(self, schedule_id: str) -> Schedule:
        rows = await self.store.list_records(SCHEDULE, where={"id": schedule_id}, limit=1)
        if not rows or not rows[0].get("enabled", True):
            raise NotFound(f"report schedule {schedule_id!r} not found; list them with reportSchedules",
                           element_id=schedule_id)
        await self.store.update_record(SCHEDULE, int(rows[0]["seq"]), {"enabled": False})
        if self._scheduler is not None:
            with contextlib.suppress(Exception):
                self._scheduler.remove_job(schedule_id)
        return Schedule.of({**rows[0], "enabled": False})

    async def run_schedule(self, schedule_id: str, *, now: datetime | None = None) -> Job:
        """What the scheduler does when a schedule fires: the report of the period before ``now``."""
        rows = await self.store.list_records(SCHEDULE, where={"id": schedule_id}, limit=1)
        if not rows:
            raise NotFound(f"report schedule {schedule_id!r} not found", element_id=schedule_id)
        s = Schedule.of(rows[0])
        start, end = previous_period(s.frequency, now or self._now(), self.data.tz)
        for row in await self.store.list_records(JOB, where={"schedule_id": s.id, "period_start": start.isoformat()},
                                                 limit=10):
            if row.get("status") != "FAILED":
                return Job.of(row)  # made already (another replica's scheduler, or an earlier run)
        return await self.create(s.kind, start, end, s.format, by=f"schedule:{s.id}", schedule_id=s.id)

    def _add_job(self, s: Schedule) -> None:
        if self._scheduler is None:
            return
        from apscheduler.triggers.cron import CronTrigger

        self._scheduler.add_job(self.run_schedule, CronTrigger(timezone=self.data.tz, **_CRON[s.frequency]),
                                args=[s.id], id=s.id, name=f"{s.frequency} {s.kind} {s.format}",
                                replace_existing=True, coalesce=True, misfire_grace_time=6 * 3600)

    def next_run(self, schedule_id: str) -> datetime | None:
        job = self._scheduler.get_job(schedule_id) if self._scheduler is not None else None
        return getattr(job, "next_run_time", None)

    async def start(self) -> None:
        """Start the scheduler (when ``DMS_REPORT_SCHEDULER`` is on) with the stored schedules."""
        if not self.settings.report_scheduler:
            return
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        self._scheduler = AsyncIOScheduler(timezone=self.data.tz)
        await self.sync()
        self._scheduler.add_job(self.sync, "interval", minutes=SYNC_MINUTES, id="_sync", coalesce=True)
        self._scheduler.start()

    async def sync(self) -> None:
        """The scheduler's jobs follow the stored schedules (added or deleted through another replica)."""
        if self._scheduler is None:
            return
        try:
            stored = {s.id: s for s in await self.schedules()}
        except Exception:
            log.warning("report schedules could not be read; the scheduler keeps its jobs", exc_info=True)
            return
        for job in self._scheduler.get_jobs():
            if job.id != "_sync" and job.id not in stored:
                self._scheduler.remove_job(job.id)
        for s in stored.values():
            if self._scheduler.get_job(s.id) is None:
                self._add_job(s)

    async def stop(self) -> None:
        if self._scheduler is not None:
            with contextlib.suppress(Exception):
                self._scheduler.shutdown(wait=False)
            self._scheduler = None
        for t in list(self._tasks):
            t.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
