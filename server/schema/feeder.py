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
from server.schema.enums import DerKind, LimitBand, SwitchKind, ViolationKind
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


def power_flow_type(r: PowerFlowResult) -> PowerFlow:
    return PowerFlow(
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
        res = {b.bus_id: b for b in v.state.power_flow.buses}
        energized = v.state.topology.energized_bus_ids
        out = []
        for b in v.model.buses:
            r = res.get(b.id)
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
                )
            )
        return out

    @strawberry.field
    async def lines(self, info: Info) -> list[Line]:
        v = await _view(info, self.id)
        res = {ln.line_id: ln for ln in v.state.power_flow.lines}
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
        res = {t.transformer_id: t for t in v.state.power_flow.transformers}
        return [
            Transformer(
                id=strawberry.ID(t.id),
                name=t.name,
                hv_bus_id=strawberry.ID(t.hv_bus_id),
                lv_bus_id=strawberry.ID(t.lv_bus_id),
                sn_mva=t.sn_mva,
                vn_hv_kv=t.vn_hv_kv,
                vn_lv_kv=t.vn_lv_kv,
                tap_pos=t.tap_pos,
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
        return [
            Load(
                id=strawberry.ID(ld.id),
                name=ld.name,
                bus_id=strawberry.ID(ld.bus_id),
                p_mw=ld.p_mw * scale,
                q_mvar=ld.q_mvar * scale,
                customers=ld.customers,
                energized=ld.bus_id in energized,
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
                      steps=c.steps, step=c.step)
            for c in v.model.capacitors
        ]

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

    @strawberry.field(name="powerFlow")
    async def power_flow(self, info: Info) -> PowerFlow:
        v = await _view(info, self.id)
        return power_flow_type(v.state.power_flow)


@strawberry.type
class FeederQuery:
    @strawberry.field(permission_classes=[requires(Permission.READ_GRID)])
    async def feeders(self, info: Info) -> list[FeederType]:
        principal = info.context["principal"]
        summaries = await grid(info).list_feeders()
        return [FeederType(id=strawberry.ID(s.id), name=s.name) for s in summaries
                if feeder_in_scope(principal, s.id)]

    @strawberry.field(permission_classes=[requires(Permission.READ_GRID, feeder_arg="id")])
    async def feeder(self, info: Info, id: strawberry.ID) -> FeederType:
        model_ = await grid(info).model(str(id))
        return FeederType(id=strawberry.ID(model_.id), name=model_.name)
