"""Studies and analysis jobs (issue #14): saved what-if studies and heavy analyses as Ray tasks.

**Studies.** ``create`` takes a frozen copy of a feeder's state (now: the model plus the live
state the feeder actor holds, with the estimator's loads when there is an estimate; at a past
time: :meth:`StudyService.state_at` from the historian), applies the changes and solves base and
study (:mod:`actors.cores.study`) in a worker thread: two power flows, no field access, no write to
the live state. The study is saved as a ``Study`` record in the graph store with its owner, the
base state (switch positions and load values, so that an analysis of the study rebuilds exactly
the same feeder on any replica), the changes and the answers. Deleting a study marks the record
deleted (records are a log); only its owner may delete it.

**Jobs.** ``start`` validates the request, writes an ``AnalysisJob`` record (QUEUED), and runs
the analysis as a Ray task (:mod:`actors.analysis_jobs`) on the live snapshot or on the study's
feeder. A watcher task in this server polls the task's progress (from the tracker actor) into the
record (RUNNING, percent) and writes the result as JSON when it is DONE, the reason when it FAILED,
or CANCELLED. Any replica reads jobs from the store; the replica that started a job is the one that
can cancel it while it runs (its Ray object reference lives there).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from actors.cores.study import ChangeKind, StudyChange, StudyOutcome, apply_changes, run_study, snapshot
from graph_schema.errors import BadInput, DmsError, NotFound
from graph_schema.model import Feeder
from security.errors import Forbidden

log = logging.getLogger(__name__)

STUDY = "Study"
JOB = "AnalysisJob"
KINDS = ("RECONFIGURATION", "HOSTING_CAPACITY", "CONTINGENCY", "SCENARIOS")
TERMINAL = ("DONE", "FAILED", "CANCELLED")
POLL_S = 0.25
MAX_BUSES_HOSTING = 5_000


def _now() -> datetime:
    return datetime.now(UTC)


@dataclasses.dataclass(frozen=True)
class StudyRecord:
    seq: int
    id: str
    feeder_id: str
    owner: str
    at: datetime | None
    created_at: datetime
    changes: tuple[StudyChange, ...]
    base: dict[str, Any]
    result: dict[str, Any]
    diff: dict[str, Any]
    switch_states: dict[str, bool]
    load_p_mw: dict[str, float]
    load_q_mvar: dict[str, float]

    @classmethod
    def of(cls, r: dict[str, Any]) -> StudyRecord:
        state = json.loads(r["state_json"])
        changes = tuple(StudyChange(kind=ChangeKind(c.pop("kind")), **c) for c in json.loads(r["changes_json"]))
        return cls(int(r["seq"]), str(r["id"]), str(r["feeder_id"]), str(r["owner"]),
                   datetime.fromisoformat(r["at"]) if r.get("at") else None, datetime.fromisoformat(r["created_at"]),
                   changes, json.loads(r["base_json"]), json.loads(r["result_json"]), json.loads(r["diff_json"]),
                   state["switch_states"], state["load_p_mw"], state["load_q_mvar"])


@dataclasses.dataclass(frozen=True)
class JobRecord:
    seq: int
    id: str
    kind: str
    feeder_id: str
    study_id: str | None
    status: str
    percent: float
    error: str | None
    created_by: str
    created_at: datetime
    finished_at: datetime | None
    result: dict[str, Any] | None

    @classmethod
    def of(cls, r: dict[str, Any]) -> JobRecord:
        return cls(int(r["seq"]), str(r["id"]), str(r["kind"]), str(r["feeder_id"]), r.get("study_id"),
                   str(r["status"]), float(r.get("percent") or 0.0), r.get("error"), str(r.get("created_by") or ""),
                   datetime.fromisoformat(r["created_at"]),
                   datetime.fromisoformat(r["finished_at"]) if r.get("finished_at") else None,
                   json.loads(r["result_json"]) if r.get("result_json") else None)


def _jsonable(x: Any) -> Any:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {f.name: _jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


class StudyService:
    def __init__(self, grid: Any, store: Any, *, historian_root: str | None = None, tz: str = "UTC",
                 utc_now: Callable[[], datetime] = _now) -> None:
        self.grid = grid
        self.store = store
        self.historian_root = historian_root
        self.tz = tz
        self._now = utc_now
        self._tasks: set[asyncio.Task[None]] = set()
        self._running: dict[str, tuple[Any, Any]] = {}  # job id -> (object ref, tracker)

    # -- base states ------------------------------------------------------------------------------

    async def live_base(self, feeder_id: str) -> Feeder:
        """The feeder now: the model at the live switch positions and loads (the estimator's loads
        when there is an estimate, else the model's loads times the live load scale)."""
        model = await self.grid.model(feeder_id)
        state = await self.grid.state(feeder_id)
        est = state.estimate
        if est is not None and getattr(est, "load_p_mw", None):
            return snapshot(model, dict(state.switch_states), load_p_mw=dict(est.load_p_mw),
                            load_q_mvar=dict(est.load_q_mvar))
        return snapshot(model, dict(state.switch_states), load_scale=float(state.load_scale))

    async def state_at(self, feeder_id: str, at: datetime) -> Feeder:
        """The feeder as it was at ``at``, rebuilt from the historian and the graph store: the model
        (graph store) with each switch at its last STATUS and each load at its last P/Q measurement
        in the hour before ``at``; unmeasured loads keep their model values, scaled so that the total
        load matches the feeder's last solve before ``at`` (source power minus losses) when there
        is one. A switch without a STATUS sample in that hour keeps the position the graph store
        records now (the store keeps current positions only). NOT_FOUND when the historian has
        nothing of the feeder in that hour."""
        if at.tzinfo is None:
            raise BadInput("at needs a UTC offset (e.g. 2024-01-01T12:00:00+00:00)")
        if at > self._now():
            raise BadInput(f"at={at.isoformat()} is in the future; give a past time or leave at out for now")
        if not self.historian_root:
            raise BadInput("no historian is configured (DMS_HISTORIAN_ROOT); leave at out to study the feeder now")
        model = await self.grid.model(feeder_id)
        return await asyncio.to_thread(self._rebuild, model, at)

    def _rebuild(self, model: Feeder, at: datetime) -> Feeder:
        from graph_schema.historian.query import HistorianReader  # DuckDB: server side only

        reader = HistorianReader(str(self.historian_root), tz=self.tz)
        start = at - timedelta(hours=1)
        switch_ids = {s.id for s in model.switches}
        load_ids = {ld.id for ld in model.loads}
        points: dict[str, tuple[str, str]] = {}
        for p in model.measurement_points:
            points[p.id] = (p.element_id, p.quantity.value)
        for sid in switch_ids:
            points.setdefault(f"{model.id}/{sid}/STATUS", (sid, "STATUS"))
        for lid in load_ids:
            points.setdefault(f"{model.id}/{lid}/P_MW", (lid, "P_MW"))
            points.setdefault(f"{model.id}/{lid}/Q_MVAR", (lid, "Q_MVAR"))
        wanted = {pid: eq for pid, eq in points.items()
                  if (eq[0] in switch_ids and eq[1] == "STATUS") or (eq[0] in load_ids and eq[1] in ("P_MW", "Q_MVAR"))}
        series = reader.history(sorted(wanted), start, at, None, feeder_ids=[model.id]) if wanted else {}
        states: dict[str, bool] = {}
        lp: dict[str, float] = {}
        lq: dict[str, float] = {}
        for pid, buckets in series.items():
            vals = [b.last for b in buckets if b.last is not None]
            if not vals:
                continue
            element, quantity = wanted[pid]
            if quantity == "STATUS":
                states[element] = bool(vals[-1] >= 0.5)  # 1.0 = open (the status point's convention)
            elif quantity == "P_MW":
                lp[element] = float(vals[-1])
            else:
                lq[element] = float(vals[-1])
        solves = reader.feeder_history(model.id, start, at, None)
        if not states and not lp and not solves:
            raise NotFound(f"the historian has no values of feeder {model.id!r} in the hour before "
                           f"{at.isoformat()}; choose a time the historian covers", element_id=model.id)
        scale = 1.0
        if solves and solves[-1].p_source_mw is not None and solves[-1].losses_mw is not None:
            total = solves[-1].p_source_mw - solves[-1].losses_mw
            measured = sum(lp.values())
            nominal = sum(ld.p_mw for ld in model.loads if ld.id not in lp)
            if nominal > 0 and total > measured:
                scale = (total - measured) / nominal
        for ld in model.loads:
            if ld.id not in lp:
                lp[ld.id] = ld.p_mw * scale
                lq.setdefault(ld.id, ld.q_mvar * scale)
        return snapshot(model, states, load_p_mw=lp, load_q_mvar=lq)

    # -- studies ----------------------------------------------------------------------------------

    async def create(self, feeder_id: str, at: datetime | None, changes: Sequence[StudyChange], *,
                     owner: str) -> StudyRecord:
        self.grid.require_feeder(feeder_id)
        base = await (self.state_at(feeder_id, at) if at is not None else self.live_base(feeder_id))
        outcome: StudyOutcome = await asyncio.to_thread(run_study, base, list(changes))
        state = {"switch_states": {s.id: s.is_open for s in base.switches},
                 "load_p_mw": {ld.id: ld.p_mw for ld in base.loads},
                 "load_q_mvar": {ld.id: ld.q_mvar for ld in base.loads}}
        rec: dict[str, Any] = {
            "id": uuid.uuid4().hex, "owner": owner,
            "at": at.isoformat() if at is not None else None, "created_at": self._now().isoformat(),
            "changes_json": json.dumps([_jsonable(c) for c in changes]),
            "base_json": json.dumps(_jsonable(outcome.base)), "result_json": json.dumps(_jsonable(outcome.result)),
            "diff_json": json.dumps(_jsonable(outcome.diff)), "state_json": json.dumps(state),
        }
        seq = await self.store.append_record(STUDY, rec, feeder_id=feeder_id)
        return StudyRecord.of({**rec, "seq": seq, "feeder_id": feeder_id})

    async def get(self, study_id: str) -> StudyRecord | None:
        rows = await self.store.list_records(STUDY, where={"id": study_id, "deleted": None}, limit=1)
        return StudyRecord.of(rows[0]) if rows else None

    async def require(self, study_id: str) -> StudyRecord:
        s = await self.get(study_id)
        if s is None:
            raise NotFound(f"study {study_id!r} not found; list them with studies(feederId)", element_id=study_id)
        return s

    async def list(self, feeder_ids: Sequence[str], *, limit: int = 100) -> list[StudyRecord]:
        rows = await self.store.list_records(STUDY, feeder_ids=list(feeder_ids), where={"deleted": None},
                                             limit=limit, newest_first=True)
        return [StudyRecord.of(r) for r in rows]

    async def delete(self, study_id: str, *, by: str) -> bool:
        s = await self.require(study_id)
        if s.owner != by:
            raise Forbidden()
        await self.store.update_record(STUDY, s.seq, {"deleted": True, "state_json": "{}", "base_json": "{}",
                                                      "result_json": "{}", "diff_json": "{}"})
        return True

    async def study_feeder(self, study: StudyRecord) -> Feeder:
        """The studied feeder (base state + changes), rebuilt from the record."""
        model = await self.grid.model(study.feeder_id)
        base = snapshot(model, study.switch_states, load_p_mw=study.load_p_mw, load_q_mvar=study.load_q_mvar)
        return apply_changes(base, list(study.changes))

    # -- jobs -------------------------------------------------------------------------------------

    async def start(self, kind: str, feeder_id: str, study_id: str | None, params: dict[str, Any], *,
                    by: str) -> JobRecord:
        if kind not in KINDS:
            raise BadInput(f"analysis kind {kind!r} is not one of {', '.join(KINDS)}")
        self.grid.require_feeder(feeder_id)
        if study_id is not None:
            study = await self.require(study_id)
            if study.feeder_id != feeder_id:
                raise BadInput(f"study {study_id!r} is of feeder {study.feeder_id!r}, not {feeder_id!r}; "
                               "give the study's feeder", element_id=study_id)
            feeder = await self.study_feeder(study)
        else:
            feeder = await self.live_base(feeder_id)
        _check(kind, feeder, params)
        rec: dict[str, Any] = {"id": uuid.uuid4().hex, "kind": kind, "study_id": study_id,
                               "status": "QUEUED", "percent": 0.0, "created_by": by,
                               "created_at": self._now().isoformat(), "params_json": json.dumps(params),
                               "switch_key": switch_key(feeder)}
        seq = await self.store.append_record(JOB, rec, feeder_id=feeder_id)
        job = JobRecord.of({**rec, "seq": seq, "feeder_id": feeder_id})
        from actors import analysis_jobs

        ref, tracker = analysis_jobs.submit(kind, feeder, params, job.id)
        self._running[job.id] = (ref, tracker)
        task = asyncio.create_task(self._watch(job, ref, tracker), name=f"analysis-{job.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return job

    async def _watch(self, job: JobRecord, ref: Any, tracker: Any) -> None:
        from actors import analysis_jobs

        status, percent = "QUEUED", 0.0
        try:
            while True:
                done, _ = await asyncio.wait([asyncio.ensure_future(_await_ref(ref))], timeout=POLL_S)
                if done:
                    result = done.pop().result()
                    break
                frac = await tracker.fraction.remote(job.id)
                if frac is not None and (status != "RUNNING" or 100 * frac - percent >= 1.0):
                    status, percent = "RUNNING", round(100 * frac, 1)
                    await self.store.update_record(JOB, job.seq, {"status": status, "percent": percent})
            await self.store.update_record(JOB, job.seq, {
                "status": "DONE", "percent": 100.0, "result_json": json.dumps(_jsonable(result)),
                "finished_at": self._now().isoformat()})
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a task error is an answer on the job, never a crash here
            inner = analysis_jobs.unwrap(exc)
            cancelled = isinstance(exc, analysis_jobs.TaskCancelled) or getattr(inner, "code", "") == "CANCELLED"
            if cancelled:
                fields: dict[str, Any] = {"status": "CANCELLED", "error": "cancelled by the user"}
            else:
                msg = inner.message if isinstance(inner, DmsError) else f"{type(inner).__name__}: {inner}"
                if not isinstance(inner, DmsError):
                    log.error("analysis %s (%s) failed: %s", job.id, job.kind, msg)
                fields = {"status": "FAILED", "error": str(msg)[:2000]}
            with contextlib.suppress(Exception):
                await self.store.update_record(JOB, job.seq, {**fields, "finished_at": self._now().isoformat()})
        finally:
            self._running.pop(job.id, None)
            with contextlib.suppress(Exception):
                tracker.forget.remote(job.id)

    async def job(self, job_id: str) -> JobRecord | None:
        rows = await self.store.list_records(JOB, where={"id": job_id}, limit=1)
        return JobRecord.of(rows[0]) if rows else None

    async def require_job(self, job_id: str) -> JobRecord:
        j = await self.job(job_id)
        if j is None:
            raise NotFound(f"job {job_id!r} not found", element_id=job_id)
        return j

    async def cancel(self, job_id: str) -> JobRecord:
        job = await self.require_job(job_id)
        if job.status in TERMINAL:
            return job
        running = self._running.get(job_id)
        if running is None:
            raise BadInput(f"job {job_id!r} runs on another server replica; cancel it there", element_id=job_id)
        from actors import analysis_jobs

        analysis_jobs.cancel(running[0], running[1], job_id)
        return job

    async def latest_done(self, feeder_id: str, kind: str, *, switch_key: str | None = None,
                          max_age_s: float | None = None) -> JobRecord | None:
        """The newest DONE job of ``kind`` on the live feeder (not a study); with ``switch_key``, one
        started at those switch positions; with ``max_age_s``, one finished that recently."""
        where: dict[str, object] = {"kind": kind, "status": "DONE", "study_id": None}
        if switch_key is not None:
            where["switch_key"] = switch_key
        rows = await self.store.list_records(JOB, feeder_id=feeder_id, where=where, limit=1, newest_first=True)
        if not rows:
            return None
        job = JobRecord.of(rows[0])
        if max_age_s is not None and (job.finished_at is None
                                      or (self._now() - job.finished_at).total_seconds() > max_age_s):
            return None
        return job

    async def wait(self) -> None:
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def stop(self) -> None:
        for job_id, (ref, tracker) in list(self._running.items()):
            with contextlib.suppress(Exception):
                from actors import analysis_jobs

                analysis_jobs.cancel(ref, tracker, job_id)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.wait(), timeout=10)


def switch_key(feeder: Feeder) -> str:
    """A short digest of the feeder's switch positions (which configuration an analysis ran on)."""
    import hashlib

    text = ",".join(f"{s.id}={int(s.is_open)}" for s in sorted(feeder.switches, key=lambda s: s.id))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


async def _await_ref(ref: Any) -> Any:
    return await ref


def _check(kind: str, feeder: Feeder, params: dict[str, Any]) -> None:
    """Refuse before starting what the analysis would refuse (bad values, too large)."""
    if kind == "HOSTING_CAPACITY":
        from actors.cores.hosting import check_request

        check_request(params["load_level"], params["power_factor"])
        n = len(feeder.buses)
        if n > MAX_BUSES_HOSTING:
            raise BadInput(f"hosting capacity of {n} buses exceeds the limit MAX_BUSES_HOSTING={MAX_BUSES_HOSTING}; "
                           "give busIds to narrow it")
    elif kind == "SCENARIOS":
        from actors.cores.scenarios import check_request as check_scenarios

        check_scenarios(**params)
    elif kind == "RECONFIGURATION":
        ids = params.get("switch_ids")
        known = {s.id for s in feeder.switches}
        for sid in ids or ():
            if sid not in known:
                raise NotFound(f"switch {sid!r} is not in feeder {feeder.id!r}; check the id", element_id=sid)
    elif kind == "CONTINGENCY":
        ids = params.get("element_ids")
        known = {ln.id for ln in feeder.lines} | {t.id for t in feeder.transformers}
        for e in ids or ():
            if e not in known:
                raise NotFound(f"{e!r} is not a line or transformer of feeder {feeder.id!r}", element_id=e)


def studies_of(runtime: Any) -> StudyService:
    """The runtime's study service, created on first use (kept in ``runtime.extras``, stopped with it)."""
    svc = runtime.extras.get("studies")
    if svc is None:
        settings = runtime.settings
        svc = StudyService(runtime.grid, runtime.store, historian_root=settings.historian_root, tz=settings.timezone)
        runtime.extras["studies"] = svc
    return svc
