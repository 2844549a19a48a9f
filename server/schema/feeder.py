"""GraphQL types and query fields for feeders: network, energization and power flow.

Names are camelCase with units (``vnKv``, ``vmPu``, ``lossesMw``). A feeder's static model and its
live state are fetched at most once per request (``_view``), whatever fields the query selects.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import strawberry
from strawberry.types import Info

from actors.cores.powerflow import PowerFlowResult
from actors.feeder_actor import FeederState
from graph_schema import model as m
from security.roles import Permission, feeder_in_scope, requires
from server.schema.enums import DerKind, EstimatorQuality, LimitBand, StateSource, SwitchKind, ViolationKind
from server.schema.voltvar import Regulator, regulators_of
from server.services import GridService


@dataclass(frozen=True, slots=True)
class FeederView:
    model: m.Feeder
    state: FeederState


def grid(info: Info) -> GridService:
    return info.context["services"].grid


async def _view(info: Info, feeder_id: str) -> FeederView:
    """Model + live state of one feeder, fetched once per request."""
    cache: dict[str, asyncio.Future[FeederView]] = info.context.setdefault("feeder_views", {})
    fut = cache.get(feeder_id)
    if fut is None:
        fut = asyncio.get_running_loop().create_future()
        cache[feeder_id] = fut
        try:
            svc = grid(info)
            model_, state = await asyncio.gather(svc.model(feeder_id), svc.state(feeder_id))
            fut.set_result(FeederView(model_, state))
        except BaseException as exc:
            fut.set_exception(exc)
            cache.pop(feeder_id, None)
            raise
    return await fut


@strawberry.type
class Bus:
    id: strawberry.ID
    name: str
    vn_kv: float
    vm_pu: float | None = strawberry.field(description="Solved voltage magnitude; null when de-energized")
    va_degree: float | None
    energized: bool
    lon: float | None
    lat: float | None
    vm_std_pu: float | None = strawberry.field(
        default=None, description="Standard deviation of vmPu: the estimator's, from its gain matrix; null on MODEL")
    observed: bool | None = strawberry.field(
        default=None, description="Whether real measurements, not pseudo-measurements, determine this bus's "
                                  "voltage (null on MODEL)")
    pseudo_share: float | None = strawberry.field(
        default=None, description="Part (0..1) of vmPu's variance that comes from pseudo-measurements")


@strawberry.type
class Line:
    id: strawberry.ID
    name: str
    from_bus_id: strawberry.ID
    to_bus_id: strawberry.ID
    length_km: float
    r_ohm_per_km: float
    x_ohm_per_km: float
    max_i_ka: float
    loading_percent: float | None
    i_ka: float | None
    p_from_mw: float | None
    q_from_mvar: float | None
    energized: bool


@strawberry.type
class Transformer:
    id: strawberry.ID
    name: str
    hv_bus_id: strawberry.ID
    lv_bus_id: strawberry.ID
    sn_mva: float
    vn_hv_kv: float
    vn_lv_kv: float
    tap_pos: int | None
    loading_percent: float | None


@strawberry.type
class Switch:
    id: strawberry.ID
    name: str
    kind: SwitchKind  # type: ignore[valid-type]
    bus_id: strawberry.ID
    element_id: strawberry.ID
    is_open: bool
    normally_open: bool
    remote_controllable: bool


@strawberry.type
class Load:
    id: strawberry.ID
    name: str
    bus_id: strawberry.ID
    p_mw: float
    q_mvar: float
    customers: int
    energized: bool
    source: StateSource = strawberry.field(  # type: ignore[valid-type]
        default=StateSource.MODEL, description="ESTIMATED: pMw/qMvar are the estimator's allocation")


@strawberry.type
class Der:
    id: strawberry.ID
    name: str
    bus_id: strawberry.ID
    kind: DerKind  # type: ignore[valid-type]
    sn_mva: float
    p_mw: float
    q_mvar: float
    energized: bool


@strawberry.type
class Capacitor:
    id: strawberry.ID
    name: str
    bus_id: strawberry.ID
    q_mvar: float
    steps: int
    step: int


@strawberry.type
class Source:
    id: strawberry.ID
    name: str
    bus_id: strawberry.ID
    vm_pu: float


@strawberry.type
class Violation:
    kind: ViolationKind
    element_id: strawberry.ID
    value: float
    limit: float
    band: LimitBand


@strawberry.type
class PowerFlow:
    converged: bool
    reason: str | None
    losses_mw: float | None
    min_vm_pu: float | None
    min_vm_bus_id: strawberry.ID | None
    max_vm_pu: float | None
    max_vm_bus_id: strawberry.ID | None
    max_line_loading_percent: float | None
    p_source_mw: float | None
    q_source_mvar: float | None
    solve_time_ms: float
    violations: list[Violation]
    source: StateSource = strawberry.field(  # type: ignore[valid-type]
        default=StateSource.MODEL, description="Where these figures come from")
    stale: bool = strawberry.field(default=False, description="An estimate kept after the estimator failed")


@strawberry.type
class Energization:
    energized_bus_ids: list[strawberry.ID]
    deenergized_bus_ids: list[strawberry.ID]
    islands: list[list[strawberry.ID]] = strawberry.field(description="Groups of buses with no source")
    loops: list[list[strawberry.ID]] = strawberry.field(description="Closed cycles (ids of their branches)")
    customers_out: int = strawberry.field(description="Customers on de-energized buses now")


@strawberry.type
class Limits:
    vm_min_pu: float
    vm_max_pu: float
    emergency_vm_min_pu: float
    emergency_vm_max_pu: float
    max_loading_percent: float
    emergency_max_loading_percent: float


def power_flow_type(r: PowerFlowResult, source: str = "MODEL", stale: bool = False) -> PowerFlow:
    return PowerFlow(
        source=StateSource(source),
        stale=stale,
        converged=r.converged,
        reason=r.reason,
        losses_mw=r.losses_mw,
        min_vm_pu=r.min_vm_pu,
        min_vm_bus_id=r.min_vm_bus_id,
        max_vm_pu=r.max_vm_pu,
        max_vm_bus_id=r.max_vm_bus_id,
        max_line_loading_percent=r.max_line_loading_percent,
        p_source_mw=r.p_source_mw,
        q_source_mvar=r.q_source_mvar,
        solve_time_ms=r.solve_time_s * 1000.0,
        violations=[
            Violation(
                kind=ViolationKind(v.kind),
                element_id=strawberry.ID(v.element_id),
                value=v.value,
                limit=v.limit,
                band=LimitBand(v.band),
            )
            for v in r.violations
        ],
    )


@strawberry.type(name="Feeder")
class FeederType:
    id: strawberry.ID
    name: str

    @strawberry.field
    async def version(self, info: Info) -> int:
        return (await _view(info, self.id)).state.version

    @strawberry.field
    async def limits(self, info: Info) -> Limits:
        lim = (await _view(info, self.id)).model.limits
        return Limits(**{k: getattr(lim, k) for k in Limits.__annotations__})

    @strawberry.field
    async def customers(self, info: Info) -> int:
        return (await _view(info, self.id)).model.customers

    @strawberry.field
    async def sources(self, info: Info) -> list[Source]:
        v = await _view(info, self.id)
        return [Source(id=strawberry.ID(s.id), name=s.name, bus_id=strawberry.ID(s.bus_id), vm_pu=s.vm_pu)
                for s in v.model.sources]

    @strawberry.field
    async def buses(self, info: Info) -> list[Bus]:
        v = await _view(info, self.id)
        res = {b.bus_id: b for b in v.state.live.buses}
        est = {b.bus_id: b for b in v.state.estimate.buses} if v.state.estimate is not None else {}
        energized = v.state.topology.energized_bus_ids
        out = []
        for b in v.model.buses:
            r = res.get(b.id)
            e = est.get(b.id)
            out.append(
                Bus(
                    id=strawberry.ID(b.id),
                    name=b.name,
                    vn_kv=b.vn_kv,
                    vm_pu=r.vm_pu if r else None,
                    va_degree=r.va_degree if r else None,
                    energized=b.id in energized,
                    lon=b.lon,
                    lat=b.lat,
                    vm_std_pu=e.vm_std_pu if e else None,
                    observed=e.observed if e else None,
                    pseudo_share=e.pseudo_share if e else None,
                )
            )
        return out

    @strawberry.field
    async def lines(self, info: Info) -> list[Line]:
        v = await _view(info, self.id)
        res = {ln.line_id: ln for ln in v.state.live.lines}
        energized = v.state.topology.energized_bus_ids
        out = []
        for ln in v.model.lines:
            r = res.get(ln.id)
            out.append(
                Line(
                    id=strawberry.ID(ln.id),
                    name=ln.name,
                    from_bus_id=strawberry.ID(ln.from_bus_id),
                    to_bus_id=strawberry.ID(ln.to_bus_id),
                    length_km=ln.length_km,
                    r_ohm_per_km=ln.r_ohm_per_km,
                    x_ohm_per_km=ln.x_ohm_per_km,
                    max_i_ka=ln.max_i_ka,
                    loading_percent=r.loading_percent if r else None,
                    i_ka=r.i_ka if r else None,
                    p_from_mw=r.p_from_mw if r else None,
                    q_from_mvar=r.q_from_mvar if r else None,
                    energized=ln.from_bus_id in energized and ln.to_bus_id in energized,
                )
            )
        return out

    @strawberry.field
    async def transformers(self, info: Info) -> list[Transformer]:
        v = await _view(info, self.id)
        res = {t.transformer_id: t for t in v.state.live.transformers}
        return [
            Transformer(
                id=strawberry.ID(t.id),
                name=t.name,
                hv_bus_id=strawberry.ID(t.hv_bus_id),
                lv_bus_id=strawberry.ID(t.lv_bus_id),
                sn_mva=t.sn_mva,
                vn_hv_kv=t.vn_hv_kv,
                vn_lv_kv=t.vn_lv_kv,
                tap_pos=v.state.tap_pos.get(t.id, t.tap_pos),  # the field's position where telemetered
                loading_percent=res[t.id].loading_percent if t.id in res else None,
            )
            for t in v.model.transformers
        ]

    @strawberry.field
    async def switches(self, info: Info) -> list[Switch]:
        v = await _view(info, self.id)
        states = v.state.switch_states
        return [
            Switch(
                id=strawberry.ID(s.id),
                name=s.name,
                kind=s.kind,
                bus_id=strawberry.ID(s.bus_id),
                element_id=strawberry.ID(s.element_id),
                is_open=states.get(s.id, s.is_open),
                normally_open=s.normally_open,
                remote_controllable=s.kind.remote_controllable,
            )
            for s in v.model.switches
        ]

    @strawberry.field
    async def loads(self, info: Info) -> list[Load]:
        v = await _view(info, self.id)
        energized = v.state.topology.energized_bus_ids
        scale = v.state.load_scale
        est = v.state.estimate
        p_est = est.load_p_mw if est is not None else {}
        q_est = est.load_q_mvar if est is not None else {}
        return [
            Load(
                id=strawberry.ID(ld.id),
                name=ld.name,
                bus_id=strawberry.ID(ld.bus_id),
                p_mw=p_est.get(ld.id, ld.p_mw * scale),
                q_mvar=q_est.get(ld.id, ld.q_mvar * scale),
                customers=ld.customers,
                energized=ld.bus_id in energized,
                source=StateSource.ESTIMATED if ld.id in p_est else StateSource.MODEL,
            )
            for ld in v.model.loads
        ]

    @strawberry.field
    async def ders(self, info: Info) -> list[Der]:
        v = await _view(info, self.id)
        energized = v.state.topology.energized_bus_ids
        return [
            Der(
                id=strawberry.ID(d.id),
                name=d.name,
                bus_id=strawberry.ID(d.bus_id),
                kind=d.kind,
                sn_mva=d.sn_mva,
                p_mw=d.p_mw,
                q_mvar=d.q_mvar,
                energized=d.bus_id in energized,
            )
            for d in v.model.ders
        ]

    @strawberry.field
    async def capacitors(self, info: Info) -> list[Capacitor]:
        v = await _view(info, self.id)
        return [
            Capacitor(id=strawberry.ID(c.id), name=c.name, bus_id=strawberry.ID(c.bus_id), q_mvar=c.q_mvar,
                      steps=c.steps, step=v.state.capacitor_step.get(c.id, c.step))
            for c in v.model.capacitors
        ]

    @strawberry.field(description="Tap changers under voltage control (OLTCs and line regulators)")
    async def regulators(self, info: Info) -> list[Regulator]:
        v = await _view(info, self.id)
        return regulators_of(v.model, v.state.tap_pos)

    @strawberry.field
    async def energization(self, info: Info) -> Energization:
        v = await _view(info, self.id)
        t = v.state.topology
        out = t.deenergized_bus_ids
        return Energization(
            energized_bus_ids=[strawberry.ID(b) for b in sorted(t.energized_bus_ids)],
            deenergized_bus_ids=[strawberry.ID(b) for b in sorted(out)],
            islands=[[strawberry.ID(b) for b in sorted(i)] for i in t.islands],
            loops=[[strawberry.ID(e) for e in loop] for loop in t.loops],
            customers_out=sum(ld.customers for ld in v.model.loads if ld.bus_id in out),
        )

    @strawberry.field(name="powerFlow", description=(
        "The feeder's live state: the state estimator's result over the field's measurements when there is "
        "one (source ESTIMATED), else the model's power flow (source MODEL). source: MODEL asks for the "
        "model's power flow (current switch states, nominal loads) whatever the estimator knows."))
    async def power_flow(self, info: Info, source: StateSource | None = None) -> PowerFlow:  # type: ignore[valid-type]
        v = await _view(info, self.id)
        est = v.state.estimate
        if source == StateSource.MODEL:  # type: ignore[attr-defined]
            return power_flow_type(v.state.power_flow, "MODEL", False)
        return power_flow_type(v.state.live, v.state.source, bool(est is not None and est.stale))


@strawberry.type
class SuspectMeasurement:
    point_ids: list[strawberry.ID]
    quality: EstimatorQuality  # type: ignore[valid-type]
    quantity: str
    element_id: strawberry.ID
    value: float
    estimated: float
    residual: float
    normalized_residual: float


@strawberry.type
class SuspectSwitchStatus:
    switch_id: strawberry.ID
    reported_open: bool
    chi2_reported: float
    chi2_corrected: float


@strawberry.type
class PseudoSourceCount:
    source: str
    count: int


@strawberry.type
class StateEstimation:
    feeder_id: strawberry.ID
    source: StateSource  # type: ignore[valid-type]
    converged: bool | None
    stale: bool
    stale_reason: str | None
    runs: int
    failures: int
    excluded_bad_quality: int = strawberry.field(description="Measurements left out for quality other than GOOD")
    chi2: float | None
    chi2_threshold: float | None
    iterations: int | None
    estimate_time_ms: float | None
    covariance_time_ms: float | None
    measurements: int | None
    real_measurements: int | None
    pseudo_measurements: int | None
    pseudo_sources: list[PseudoSourceCount]
    observed_buses: int | None
    buses: int | None
    suspect_measurements: list[SuspectMeasurement]
    suspect_switch_statuses: list[SuspectSwitchStatus]


def _ms(v: float | None) -> float | None:
    return None if v is None else v * 1000.0


def state_estimation_type(feeder_id: str, r: dict) -> StateEstimation:  # type: ignore[type-arg]
    return StateEstimation(
        feeder_id=strawberry.ID(feeder_id), source=StateSource(r["source"]), converged=r.get("converged"),
        stale=bool(r.get("stale", False)), stale_reason=r.get("stale_reason"), runs=int(r["runs"]),
        failures=int(r["failures"]), excluded_bad_quality=int(r.get("excluded_bad_quality", 0)),
        chi2=r.get("chi2"), chi2_threshold=r.get("chi2_threshold"), iterations=r.get("iterations"),
        estimate_time_ms=_ms(r.get("estimate_time_s")), covariance_time_ms=_ms(r.get("covariance_time_s")),
        measurements=r.get("measurements"), real_measurements=r.get("real_measurements"),
        pseudo_measurements=r.get("pseudo_measurements"),
        pseudo_sources=[PseudoSourceCount(source=k, count=v) for k, v in sorted(r.get("pseudo_sources", {}).items())],
        observed_buses=r.get("observed_buses"), buses=r.get("buses"),
        suspect_measurements=[
            SuspectMeasurement(point_ids=[strawberry.ID(p) for p in b["point_ids"]],
                               quality=EstimatorQuality.SUSPECT, quantity=b["quantity"],
                               element_id=strawberry.ID(b["element_id"]), value=b["value"],
                               estimated=b["estimated"], residual=b["residual"],
                               normalized_residual=b["normalized_residual"])
            for b in r.get("bad_data", ())],
        suspect_switch_statuses=[
            SuspectSwitchStatus(switch_id=strawberry.ID(s["switch_id"]), reported_open=s["reported_open"],
                                chi2_reported=s["j_reported"], chi2_corrected=s["j_corrected"])
            for s in r.get("status_suspects", ())],
    )


@strawberry.type
class FeederQuery:
    @strawberry.field(permission_classes=[requires(Permission.READ_GRID)])
    async def feeders(self, info: Info) -> list[FeederType]:
        principal = info.context["principal"]
        summaries = await grid(info).list_feeders()
        return [FeederType(id=strawberry.ID(s.id), name=s.name) for s in summaries
                if feeder_in_scope(principal, s.id)]

    @strawberry.field(permission_classes=[requires(Permission.READ_GRID, feeder_arg="feeder_id")],
                      description="The state estimator of a feeder: fit, observability, suspect measurements")
    async def state_estimation(self, info: Info, feeder_id: strawberry.ID) -> StateEstimation:
        svc = grid(info)
        svc.require_feeder(str(feeder_id))
        report = await svc.fleet.call_app(str(feeder_id), "estimation", "report")
        return state_estimation_type(str(feeder_id), report)

    @strawberry.field(permission_classes=[requires(Permission.READ_GRID, feeder_arg="id")])
    async def feeder(self, info: Info, id: strawberry.ID) -> FeederType:
        model_ = await grid(info).model(str(id))
        return FeederType(id=strawberry.ID(model_.id), name=model_.name)
