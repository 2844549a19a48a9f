"""Studies, analysis jobs and recommendations (issue #14): the GraphQL side.

Studies (``createStudy``/``study``/``studies``/``deleteStudy``) need WHAT_IF; analysis jobs
(``optimalReconfiguration``, ``hostingCapacity``, ``runContingency``, ``runScenarios``, ``job``,
``cancelJob``, ``jobProgress``) need RUN_STUDIES; ``recommendations`` needs WHAT_IF. A feeder the
token cannot see is FORBIDDEN (``feeder_arg``); a study or job of such a feeder is FORBIDDEN too.
Nothing here operates a device: a recommended plan is a list of steps an operator executes with
``selectControl``/``operateControl``. The work is done by :mod:`server.study_service`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from datetime import datetime
from typing import Annotated, Any

import strawberry
from strawberry.types import Info

from actors.cores.study import ChangeKind, StudyChange
from security.audit import AuditAction
from security.roles import Permission, authorize, feeder_in_scope, requires
from server.schema.audit import audited
from server.schema.enums import (
    ControlAction,
    JobKind,
    JobStatus,
    LimitBand,
    ScenarioRiskKind,
    StudyChangeKind,
    ViolationKind,
)
from server.schema.feeder import Violation
from server.study_service import TERMINAL, JobRecord, StudyRecord, studies_of


@strawberry.input
class StudyChangeInput:
    kind: StudyChangeKind  # type: ignore[valid-type]
    element_id: strawberry.ID | None = None
    bus_id: strawberry.ID | None = None
    p_mw: float | None = None
    q_mvar: float | None = None
    is_open: bool | None = None
    scale: float | None = None


@strawberry.type
class StudyChangeType:
    kind: StudyChangeKind  # type: ignore[valid-type]
    element_id: strawberry.ID | None
    bus_id: strawberry.ID | None
    p_mw: float | None
    q_mvar: float | None
    is_open: bool | None
    scale: float | None


@strawberry.type
class StudyResult:
    """The live ``powerFlow`` figures of one state, plus customers out."""

    converged: bool
    reason: str | None
    losses_mw: float | None
    min_vm_pu: float | None
    min_vm_bus_id: strawberry.ID | None
    max_vm_pu: float | None
    max_vm_bus_id: strawberry.ID | None
    max_line_loading_percent: float | None
    violations: list[Violation]
    customers_out: int


@strawberry.type
class StudyDiff:
    """Study minus base, figure by figure (null where either side has none)."""

    losses_mw: float | None
    min_vm_pu: float | None
    max_vm_pu: float | None
    max_line_loading_percent: float | None
    customers_out: int
    violations_added: list[str]
    violations_removed: list[str]


@strawberry.type
class Study:
    id: strawberry.ID
    feeder_id: strawberry.ID
    owner: str
    at: datetime | None = strawberry.field(description="The past time studied; null: the feeder as it was when created")
    created_at: datetime
    changes: list[StudyChangeType]
    base: StudyResult
    result: StudyResult
    diff: StudyDiff


def _result(d: dict[str, Any]) -> StudyResult:
    return StudyResult(
        converged=bool(d["converged"]), reason=d.get("reason"), losses_mw=d.get("losses_mw"),
        min_vm_pu=d.get("min_vm_pu"), min_vm_bus_id=d.get("min_vm_bus_id"), max_vm_pu=d.get("max_vm_pu"),
        max_vm_bus_id=d.get("max_vm_bus_id"), max_line_loading_percent=d.get("max_line_loading_percent"),
        violations=[Violation(kind=ViolationKind(v["kind"]), element_id=strawberry.ID(v["element_id"]),
                              value=v["value"], limit=v["limit"], band=LimitBand(v["band"]))
                    for v in d.get("violations", ())],
        customers_out=int(d.get("customers_out") or 0),
    )


def study_type(s: StudyRecord) -> Study:
    return Study(
        id=strawberry.ID(s.id), feeder_id=strawberry.ID(s.feeder_id), owner=s.owner, at=s.at, created_at=s.created_at,
        changes=[StudyChangeType(kind=StudyChangeKind(c.kind), element_id=c.element_id, bus_id=c.bus_id,
                                 p_mw=c.p_mw, q_mvar=c.q_mvar, is_open=c.is_open, scale=c.scale) for c in s.changes],
        base=_result(s.base), result=_result(s.result),
        diff=StudyDiff(losses_mw=s.diff.get("losses_mw"), min_vm_pu=s.diff.get("min_vm_pu"),
                       max_vm_pu=s.diff.get("max_vm_pu"),
                       max_line_loading_percent=s.diff.get("max_line_loading_percent"),
                       customers_out=int(s.diff.get("customers_out") or 0),
                       violations_added=list(s.diff.get("violations_added", ())),
                       violations_removed=list(s.diff.get("violations_removed", ()))),
    )


# ------------------------------------------------------------------------------------ job results


@strawberry.type
class SwitchingStep:
    order: int
    device_id: strawberry.ID
    action: ControlAction = strawberry.field(description="OPEN or CLOSE")  # type: ignore[valid-type]
    losses_mw: float | None = strawberry.field(description="After the close/open pair this step completes")
    min_vm_pu: float | None


@strawberry.type
class ReconfigurationResult:
    base_losses_mw: float | None
    losses_mw: float | None
    base_min_vm_pu: float | None
    min_vm_pu: float | None
    max_loading_percent: float | None
    open_switch_ids: list[strawberry.ID]
    base_open_switch_ids: list[strawberry.ID]
    steps: list[SwitchingStep]
    sequence_complete: bool
    power_flows: int
    method: str
    explanation: str


@strawberry.type
class BusHostingCapacity:
    bus_id: strawberry.ID
    max_p_mw: float
    binding_constraint: str = strawberry.field(
        description="OVERVOLTAGE, UNDERVOLTAGE, OVERLOAD, DIVERGES, SEARCH_LIMIT (no limit up to the search bound) "
                    "or BASE_CASE (outside limits without any PV)")
    binding_element_id: strawberry.ID | None
    lon: float | None
    lat: float | None


@strawberry.type
class HostingCapacityResult:
    load_level: float
    power_factor: float
    tolerance_mw: float
    max_search_mw: float
    power_flows: int
    buses: list[BusHostingCapacity]


@strawberry.type
class ContingencyCase:
    element_id: strawberry.ID
    element_kind: str
    section_id: str
    customers_at_risk: int
    customers_in_section: int
    customers_restored: int
    customers_unserved: int
    restorable: bool
    converged: bool
    max_loading_percent: float | None
    min_vm_pu: float | None
    close_switch_ids: list[strawberry.ID]
    open_switch_ids: list[strawberry.ID]
    explanation: str


@strawberry.type
class ContingencyResult:
    cases: list[ContingencyCase]
    power_flows: int


@strawberry.type
class ViolationProbability:
    kind: ScenarioRiskKind
    element_id: strawberry.ID | None
    probability: float


@strawberry.type
class YearOutlook:
    year: int
    load_factor: float
    der_factor: float
    samples: int
    converged: int
    probability_any_violation: float
    min_vm_pu_p05: float | None
    max_loading_percent_p95: float | None
    violations: list[ViolationProbability]


@strawberry.type
class ScenarioResult:
    seed: int
    power_flows: int
    fallbacks: int
    years: list[YearOutlook]


AnalysisResult = Annotated[
    ReconfigurationResult | HostingCapacityResult | ContingencyResult | ScenarioResult,
    strawberry.union("AnalysisResult"),
]


def _pick(cls: type, d: dict[str, Any], **over: Any) -> Any:
    names = {f.python_name for f in cls.__strawberry_definition__.fields}  # type: ignore[attr-defined]
    return cls(**{**{k: v for k, v in d.items() if k in names}, **over})


def result_type(kind: str, d: dict[str, Any]) -> Any:
    if kind == "RECONFIGURATION":
        steps = [_pick(SwitchingStep, s, action=ControlAction(s["action"])) for s in d["steps"]]
        return _pick(ReconfigurationResult, d, steps=steps, power_flows=d["evaluations"])
    if kind == "HOSTING_CAPACITY":
        return _pick(HostingCapacityResult, d, buses=[_pick(BusHostingCapacity, b) for b in d["buses"]])
    if kind == "CONTINGENCY":
        return _pick(ContingencyResult, d, cases=[_pick(ContingencyCase, c) for c in d["cases"]])
    return _pick(ScenarioResult, d, years=[
        _pick(YearOutlook, y, violations=[_pick(ViolationProbability, v, kind=ScenarioRiskKind(v["kind"]))
                                          for v in y["violations"]])
        for y in d["years"]])


@strawberry.type
class Job:
    id: strawberry.ID
    kind: JobKind
    feeder_id: strawberry.ID
    study_id: strawberry.ID | None
    status: JobStatus
    percent: float
    error: str | None
    created_by: str
    created_at: datetime
    finished_at: datetime | None
    result: AnalysisResult | None  # type: ignore[valid-type]


def job_type(j: JobRecord) -> Job:
    return Job(id=strawberry.ID(j.id), kind=JobKind(j.kind), feeder_id=strawberry.ID(j.feeder_id),
               study_id=strawberry.ID(j.study_id) if j.study_id else None, status=JobStatus(j.status),
               percent=j.percent, error=j.error, created_by=j.created_by, created_at=j.created_at,
               finished_at=j.finished_at, result=result_type(j.kind, j.result) if j.result else None)


# ------------------------------------------------------------------------------------ recommendations


@strawberry.type
class PlanStepType:
    device_id: strawberry.ID
    action: ControlAction = strawberry.field(description="OPEN or CLOSE, in order")  # type: ignore[valid-type]


@strawberry.type
class Recommendation:
    rank: int
    title: str
    predicted_effect: str
    analysis: str = strawberry.field(description="The analysis behind it (and its job id when there is one)")
    plan: list[PlanStepType] = strawberry.field(description="Steps for an operator; empty for a planning item")


# ------------------------------------------------------------------------------------ resolvers


def _svc(info: Info) -> Any:
    return studies_of(info.context["services"].runtime)


def _sub(info: Info) -> str:
    return str(info.context["principal"].sub)


async def _visible_study(info: Info, study_id: str, permission: Permission) -> StudyRecord | None:
    s = await _svc(info).get(study_id)
    if s is not None:
        authorize(info.context["principal"], permission, feeder_id=s.feeder_id)
    return s


async def _visible_job(info: Info, job_id: str) -> JobRecord | None:
    j = await _svc(info).job(job_id)
    if j is not None:
        authorize(info.context["principal"], Permission.RUN_STUDIES, feeder_id=j.feeder_id)
    return j


async def _start(info: Info, kind: str, feeder_id: str, study_id: str | None, params: dict[str, Any]) -> Job:
    if study_id is not None:
        await _visible_study(info, study_id, Permission.WHAT_IF)
    job = await audited(info, AuditAction.ANALYSIS_START, f"{feeder_id}/{kind}", {"kind": kind, "study_id": study_id},
                        _svc(info).start(kind, feeder_id, study_id, params, by=_sub(info)))
    return job_type(job)


@strawberry.type
class StudyQuery:
    @strawberry.field(permission_classes=[requires(Permission.WHAT_IF)])
    async def study(self, info: Info, id: strawberry.ID) -> Study | None:
        s = await _visible_study(info, str(id), Permission.WHAT_IF)
        return study_type(s) if s is not None else None

    @strawberry.field(permission_classes=[requires(Permission.WHAT_IF, feeder_arg="feeder_id")])
    async def studies(self, info: Info, feeder_id: strawberry.ID | None = None) -> list[Study]:
        grid = info.context["services"].grid
        principal = info.context["principal"]
        if feeder_id is not None:
            grid.require_feeder(str(feeder_id))
            ids = [str(feeder_id)]
        else:
            ids = [f for f in grid.fleet.feeder_ids if feeder_in_scope(principal, f)]
        return [study_type(s) for s in await _svc(info).list(ids)]

    @strawberry.field(permission_classes=[requires(Permission.RUN_STUDIES)])
    async def job(self, info: Info, id: strawberry.ID) -> Job | None:
        j = await _visible_job(info, str(id))
        return job_type(j) if j is not None else None

    @strawberry.field(permission_classes=[requires(Permission.WHAT_IF, feeder_arg="feeder_id")],
                      description="What an operator or planner could do, best first, from the latest analyses")
    async def recommendations(self, info: Info, feeder_id: strawberry.ID) -> list[Recommendation]:
        from server.recommendations import recommendations

        items = await recommendations(_svc(info), str(feeder_id))
        return [Recommendation(rank=i + 1, title=r.title, predicted_effect=r.predicted_effect, analysis=r.analysis,
                               plan=[PlanStepType(device_id=strawberry.ID(d), action=ControlAction(a))
                                     for d, a in r.plan])
                for i, r in enumerate(items)]


@strawberry.type
class StudyMutation:
    @strawberry.mutation(permission_classes=[requires(Permission.WHAT_IF, feeder_arg="feeder_id")])
    async def create_study(self, info: Info, feeder_id: strawberry.ID, changes: list[StudyChangeInput],
                           at: datetime | None = None) -> Study:
        chg = [StudyChange(kind=ChangeKind(c.kind),
                           element_id=None if c.element_id is None else str(c.element_id),
                           bus_id=None if c.bus_id is None else str(c.bus_id), p_mw=c.p_mw, q_mvar=c.q_mvar,
                           is_open=c.is_open, scale=c.scale) for c in changes]
        s = await audited(info, AuditAction.STUDY_CREATE, str(feeder_id), {"changes": len(chg)},
                          _svc(info).create(str(feeder_id), at, chg, owner=_sub(info)))
        return study_type(s)

    @strawberry.mutation(permission_classes=[requires(Permission.WHAT_IF)],
                         description="Delete one of your own studies (FORBIDDEN for another's)")
    async def delete_study(self, info: Info, id: strawberry.ID) -> bool:
        s = await _visible_study(info, str(id), Permission.WHAT_IF)
        if s is None:
            return False
        return bool(await audited(info, AuditAction.STUDY_DELETE, f"{s.feeder_id}/{s.id}", {},
                                  _svc(info).delete(s.id, by=_sub(info))))

    @strawberry.mutation(permission_classes=[requires(Permission.RUN_STUDIES, feeder_arg="feeder_id")])
    async def optimal_reconfiguration(self, info: Info, feeder_id: strawberry.ID, study_id: strawberry.ID | None = None,
                                      switch_ids: list[strawberry.ID] | None = None) -> Job:
        params = {"switch_ids": [str(s) for s in switch_ids] if switch_ids else None}
        return await _start(info, "RECONFIGURATION", str(feeder_id), _opt(study_id), params)

    @strawberry.mutation(permission_classes=[requires(Permission.RUN_STUDIES, feeder_arg="feeder_id")])
    async def hosting_capacity(self, info: Info, feeder_id: strawberry.ID, load_level: float, power_factor: float,
                               study_id: strawberry.ID | None = None,
                               bus_ids: list[strawberry.ID] | None = None) -> Job:
        params = {"load_level": load_level, "power_factor": power_factor,
                  "bus_ids": [str(b) for b in bus_ids] if bus_ids else None}
        return await _start(info, "HOSTING_CAPACITY", str(feeder_id), _opt(study_id), params)

    @strawberry.mutation(permission_classes=[requires(Permission.RUN_STUDIES, feeder_arg="feeder_id")])
    async def run_contingency(self, info: Info, feeder_id: strawberry.ID, study_id: strawberry.ID | None = None,
                              element_ids: list[strawberry.ID] | None = None) -> Job:
        params = {"element_ids": [str(e) for e in element_ids] if element_ids else None}
        return await _start(info, "CONTINGENCY", str(feeder_id), _opt(study_id), params)

    @strawberry.mutation(permission_classes=[requires(Permission.RUN_STUDIES, feeder_arg="feeder_id")],
                         description="Load/DER growth over years with Monte Carlo draws: probability of each violation")
    async def run_scenarios(self, info: Info, feeder_id: strawberry.ID, study_id: strawberry.ID | None = None,
                            years: int = 5, load_growth_percent: float = 2.0, der_growth_percent: float = 10.0,
                            samples: int = 200, load_sigma: float = 0.1, der_sigma: float = 0.5,
                            seed: int = 0) -> Job:
        params = {"years": years, "load_growth_percent": load_growth_percent,
                  "der_growth_percent": der_growth_percent, "samples": samples, "load_sigma": load_sigma,
                  "der_sigma": der_sigma, "seed": seed}
        return await _start(info, "SCENARIOS", str(feeder_id), _opt(study_id), params)

    @strawberry.mutation(permission_classes=[requires(Permission.RUN_STUDIES)])
    async def cancel_job(self, info: Info, id: strawberry.ID) -> Job:
        j = await _visible_job(info, str(id))
        if j is None:
            from graph_schema.errors import NotFound

            raise NotFound(f"job {id!r} not found", element_id=str(id))
        return job_type(await audited(info, AuditAction.ANALYSIS_CANCEL, f"{j.feeder_id}/{j.id}", {"kind": j.kind},
                                      _svc(info).cancel(j.id)))


@strawberry.type
class StudySubscription:
    @strawberry.subscription(permission_classes=[requires(Permission.RUN_STUDIES)],
                             description="The job whenever its status or percent changes, until it ends")
    async def job_progress(self, info: Info, id: strawberry.ID) -> AsyncGenerator[Job, None]:
        j = await _visible_job(info, str(id))
        if j is None:
            from graph_schema.errors import NotFound

            raise NotFound(f"job {id!r} not found", element_id=str(id))
        svc = _svc(info)
        last: tuple[str, float] | None = None
        while True:
            cur = await svc.require_job(str(id))
            key = (cur.status, cur.percent)
            if key != last:
                last = key
                yield job_type(cur)
            if cur.status in TERMINAL:
                return
            await asyncio.sleep(0.25)


def _opt(x: strawberry.ID | None) -> str | None:
    return None if x is None else str(x)
