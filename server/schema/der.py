"""DER management: live DER state over SunSpec, DER commands, curtailment and the mode per feeder.

``ders(feederId)`` lists every DER of the feeder with its rating and what its SunSpec device last
reported (P, Q, voltage, limits, curves, state of charge, connection state), its curtailment (with
the reason) and its storage schedule. ``setDerControl`` commands one DER or a group (``derIds``: an
aggregator's fleet; ``zoneBusIds``; ``kind``; none: the whole feeder) with a P limit (or a group P
target shared pro rata to ratings), a power factor or Q set point, volt-var / volt-watt curves
(``useCategoryDefaults`` for the IEEE 1547-2018 defaults of each DER's category), enter service /
cease, a storage set point or a storage schedule. Bad input (beyond a rating, a curve not monotone
or outside the 1547 ranges) is ``BAD_INPUT`` naming the limit and nothing is sent; once sent, each
DER's result says ``CONFIRMED`` (read back from its SunSpec registers) or ``FAILED`` with the reason
(``DEVICE_UNREACHABLE``, ``DEVICE_REJECTED``, ``READ_BACK_MISMATCH``), or ``REFUSED`` (arbitration,
tags: nothing sent). Commands, mode changes and releases are audited; DER events (kind ``DER``) and
control events reach the existing event stream.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import strawberry
from strawberry.types import Info

from actors.apps.der_app import DerCommandResult as DerCommandRecord
from actors.apps.der_app import DerView
from actors.cores.der import DerControl, default_volt_var, default_volt_watt
from security.audit import AuditAction
from security.roles import Permission, requires
from server.schema.audit import audited
from server.schema.enums import DerCommandStatus, DerConnectionState, DerKind, DerMode


@strawberry.type
class CurvePoint:
    v_pct: float = strawberry.field(description="Voltage in % of nominal")
    value_pct: float = strawberry.field(description="Volt-var: % of the reactive capability (+ injects); "
                                                    "volt-watt: % of rated P")


@strawberry.input
class CurvePointInput:
    v_pct: float
    value_pct: float


@strawberry.type
class DerCurtailment:
    p_limit_mw: float
    reason: str
    element_id: strawberry.ID


@strawberry.type
class ScheduleEntry:
    starts_at: datetime
    p_mw: float = strawberry.field(description="+ discharges, - charges")


@strawberry.input
class ScheduleEntryInput:
    starts_at: datetime = strawberry.field(description="With a time zone")
    p_mw: float


@strawberry.type
class DerState:
    id: strawberry.ID
    name: str
    kind: DerKind  # type: ignore[valid-type]
    bus_id: strawberry.ID
    ieee1547_category: str
    sn_mva: float
    p_max_mw: float
    q_max_mvar: float
    connection_state: DerConnectionState = strawberry.field(  # type: ignore[valid-type]
        description="ONLINE, OFFLINE (does not answer) or UNBOUND")
    connected: bool | None = strawberry.field(description="Connected to the grid (SunSpec 701 ConnSt)")
    enter_service: bool | None
    p_mw: float | None
    q_mvar: float | None
    v_pu: float | None
    p_limit_mw: float | None = strawberry.field(description="The active P limit (SunSpec 704), None: none")
    q_setpoint_mvar: float | None
    power_factor: float | None
    power_factor_over_excited: bool | None
    storage_setpoint_mw: float | None
    soc_pct: float | None
    soc_min_pct: float
    soc_max_pct: float
    volt_var: list[CurvePoint] | None = strawberry.field(description="The active volt-var curve (SunSpec 705)")
    volt_var_enabled: bool | None
    volt_watt: list[CurvePoint] | None = strawberry.field(description="The active volt-watt curve (SunSpec 706)")
    volt_watt_enabled: bool | None
    read_at: datetime | None
    last_error: str | None
    curtailment: DerCurtailment | None
    proposed_curtailment: DerCurtailment | None
    schedule: list[ScheduleEntry]


@strawberry.type
class DerCommandResult:
    der_id: strawberry.ID
    status: DerCommandStatus  # type: ignore[valid-type]
    code: str | None
    message: str


@strawberry.type
class DerManagement:
    feeder_id: strawberry.ID
    mode: DerMode  # type: ignore[valid-type]
    suspended: str | None = strawberry.field(
        description="Why AUTOMATIC sends nothing now (a fault, an abnormal switching state); null: it acts")
    max_loading_percent: float | None = strawberry.field(description="setDerLimits' loading limit; null: the "
                                                                     "feeder's own")
    vm_max_pu: float | None = strawberry.field(description="setDerLimits' voltage limit; null: the feeder's own")
    curtailed_der_ids: list[strawberry.ID]
    proposed_der_ids: list[strawberry.ID] = strawberry.field(description="ADVISORY (or held-off) proposals")


def _curve(points: object) -> list[CurvePoint] | None:
    if points is None:
        return None
    return [CurvePoint(v_pct=v, value_pct=y) for v, y in points]  # type: ignore[attr-defined]


def _curt(c: object) -> DerCurtailment | None:
    if c is None:
        return None
    return DerCurtailment(p_limit_mw=c.p_limit_mw, reason=c.reason, element_id=strawberry.ID(c.element_id))  # type: ignore[attr-defined]


def _state(v: DerView) -> DerState:
    r = v.reading
    pmax = r.p_max_mw if r is not None and r.p_max_mw else v.rating.p_max_mw
    return DerState(
        id=strawberry.ID(v.der_id), name=v.name, kind=DerKind(v.kind), bus_id=strawberry.ID(v.bus_id),
        ieee1547_category=v.category, sn_mva=v.rating.s_mva, p_max_mw=v.rating.p_max_mw,
        q_max_mvar=v.rating.q_max_mvar, connection_state=DerConnectionState(v.comm_state),
        connected=r.connected if r is not None else None, enter_service=r.enter_service if r is not None else None,
        p_mw=r.p_mw if r is not None else None, q_mvar=r.q_mvar if r is not None else None,
        v_pu=r.v_pu if r is not None else None,
        p_limit_mw=(r.p_limit_pct / 100.0 * pmax) if r is not None and r.p_limit_pct is not None else None,
        q_setpoint_mvar=r.q_set_mvar if r is not None else None,
        power_factor=r.power_factor[0] if r is not None and r.power_factor else None,
        power_factor_over_excited=r.power_factor[1] if r is not None and r.power_factor else None,
        storage_setpoint_mw=r.p_set_mw if r is not None else None,
        soc_pct=r.soc_pct if r is not None else None, soc_min_pct=v.rating.soc_min_pct,
        soc_max_pct=v.rating.soc_max_pct,
        volt_var=_curve(r.volt_var) if r is not None else None,
        volt_watt=_curve(r.volt_watt) if r is not None else None,
        volt_var_enabled=r.volt_var_enabled if r is not None else None,
        volt_watt_enabled=r.volt_watt_enabled if r is not None else None,
        read_at=datetime.fromisoformat(v.read_at) if v.read_at else None, last_error=v.last_error,
        curtailment=_curt(v.curtailment),
        proposed_curtailment=_curt(v.proposed_curtailment),
        schedule=[ScheduleEntry(starts_at=datetime.fromisoformat(t), p_mw=p) for t, p in v.schedule],
    )


def _result(r: DerCommandRecord) -> DerCommandResult:
    return DerCommandResult(der_id=strawberry.ID(r.der_id), status=DerCommandStatus(r.status), code=r.code,
                            message=r.message)


@strawberry.type
class DerQuery:
    @strawberry.field(permission_classes=[requires(Permission.READ_GRID, feeder_arg="feeder_id")])
    async def ders(self, info: Info, feeder_id: strawberry.ID) -> list[DerState]:
        grid = info.context["services"].grid
        grid.require_feeder(str(feeder_id))
        views = await grid.fleet.call_app(str(feeder_id), "der", "ders")
        return [_state(v) for v in views]

    @strawberry.field(permission_classes=[requires(Permission.READ_GRID, feeder_arg="feeder_id")])
    async def der_management(self, info: Info, feeder_id: strawberry.ID) -> DerManagement:
        grid = info.context["services"].grid
        grid.require_feeder(str(feeder_id))
        m = await grid.fleet.call_app(str(feeder_id), "der", "management")
        return DerManagement(feeder_id=feeder_id, mode=DerMode(m["mode"]), suspended=m["suspended"],
                             max_loading_percent=m["limits"].get("max_loading_percent"),
                             vm_max_pu=m["limits"].get("vm_max_pu"),
                             curtailed_der_ids=[strawberry.ID(d) for d in m["curtailed"]],
                             proposed_der_ids=[strawberry.ID(d) for d in m["proposed"]])


@strawberry.type(description="Limits DER curtailment keeps; null: the feeder's own")
class DerLimits:
    vm_max_pu: float | None
    max_loading_percent: float | None


@strawberry.type
class DerMutation:
    @strawberry.mutation(permission_classes=[requires(Permission.CONTROL_DER, feeder_arg="feeder_id")])
    async def set_der_control(
        self, info: Info, feeder_id: strawberry.ID,
        der_ids: list[strawberry.ID] | None = None,
        zone_bus_ids: list[strawberry.ID] | None = None,
        kind: str | None = None,
        p_limit_mw: float | None = None,
        group_p_limit_mw: float | None = None,
        release_p_limit: bool = False,
        power_factor: float | None = None,
        power_factor_over_excited: bool = True,
        q_mvar: float | None = None,
        volt_var: list[CurvePointInput] | None = None,
        volt_var_enabled: bool | None = None,
        volt_watt: list[CurvePointInput] | None = None,
        volt_watt_enabled: bool | None = None,
        use_category_defaults: bool = False,
        enter_service: bool | None = None,
        storage_p_mw: float | None = None,
        schedule: list[ScheduleEntryInput] | None = None,
    ) -> list[DerCommandResult]:
        by = info.context["principal"].sub
        grid = info.context["services"].grid
        fid = str(feeder_id)
        grid.require_feeder(fid)
        fleet = grid.fleet
        vv = tuple((p.v_pct, p.value_pct) for p in volt_var) if volt_var is not None else None
        vw = tuple((p.v_pct, p.value_pct) for p in volt_watt) if volt_watt is not None else None
        control = DerControl(p_limit_mw=p_limit_mw, release_p_limit=release_p_limit,
                             power_factor=(power_factor, power_factor_over_excited) if power_factor is not None
                             else None, q_mvar=q_mvar, volt_var=vv, volt_var_enabled=volt_var_enabled,
                             volt_watt=vw, volt_watt_enabled=volt_watt_enabled, enter_service=enter_service,
                             storage_p_mw=storage_p_mw)
        ids = [str(d) for d in der_ids] if der_ids else None
        zone = [str(b) for b in zone_bus_ids] if zone_bus_ids else None
        detail = {"der_ids": ids, "zone": zone, "kind": kind, "group_p_limit_mw": group_p_limit_mw,
                  "control": control.describe(), "schedule": len(schedule) if schedule else None,
                  "category_defaults": use_category_defaults}
        if schedule is not None:
            if not ids or len(ids) != 1:
                from graph_schema.errors import BadInput

                raise BadInput("a storage schedule names exactly one DER in derIds")
            entries = [(e.starts_at.isoformat(), e.p_mw) for e in schedule]
            await audited(info, AuditAction.SETTING_CHANGE, f"{fid}/{ids[0]}", detail,
                          fleet.call_app(fid, "der", "set_schedule", ids[0], entries, by))
            return [DerCommandResult(der_id=strawberry.ID(ids[0]), status=DerCommandStatus.CONFIRMED, code=None,
                                     message=f"schedule of {len(entries)} entries stored; each entry is sent when "
                                             f"its time comes")]
        if use_category_defaults:
            views = await fleet.call_app(fid, "der", "ders")
            cats = {v.category for v in views if not ids or v.der_id in ids}
            results: list[DerCommandResult] = []
            for cat in sorted(cats):  # one command per category: each DER gets its own category's curves
                members = [v.der_id for v in views if v.category == cat and (not ids or v.der_id in ids)]
                c = replace(control, volt_var=default_volt_var(cat), volt_watt=default_volt_watt(cat),
                            volt_var_enabled=True, volt_watt_enabled=True)
                res = await audited(info, AuditAction.DER_CONTROL, f"{fid}/{','.join(members)}",
                                    {**detail, "category": cat},
                                    fleet.call_app(fid, "der", "set_control", c, by, der_ids=members, zone_bus_ids=zone,
                                                   kind=kind, group_p_limit_mw=group_p_limit_mw))
                results += [_result(r) for r in res]
            return results
        res = await audited(info, AuditAction.DER_CONTROL, f"{fid}/{','.join(ids) if ids else 'group'}", detail,
                            fleet.call_app(fid, "der", "set_control", control, by, der_ids=ids, zone_bus_ids=zone,
                                           kind=kind, group_p_limit_mw=group_p_limit_mw))
        return [_result(r) for r in res]

    @strawberry.mutation(permission_classes=[requires(Permission.CONTROL_DER, feeder_arg="feeder_id")])
    async def release_curtailment(self, info: Info, feeder_id: strawberry.ID,
                                  der_ids: list[strawberry.ID] | None = None) -> list[DerCommandResult]:
        by = info.context["principal"].sub
        grid = info.context["services"].grid
        fid = str(feeder_id)
        grid.require_feeder(fid)
        ids = [str(d) for d in der_ids] if der_ids else None
        res = await audited(info, AuditAction.DER_RELEASE_CURTAILMENT, f"{fid}/{','.join(ids) if ids else 'all'}",
                            {"der_ids": ids}, grid.fleet.call_app(fid, "der", "release_curtailment", ids, by))
        return [_result(r) for r in res]

    @strawberry.mutation(permission_classes=[requires(Permission.SET_DER_MODE, feeder_arg="feeder_id")],
                         description="The voltage and loading limits DER curtailment keeps on this feeder (a derated "
                                     "line, a voltage complaint); both null: the feeder's own limits again")
    async def set_der_limits(self, info: Info, feeder_id: strawberry.ID, vm_max_pu: float | None = None,
                             max_loading_percent: float | None = None) -> DerLimits:
        by = info.context["principal"].sub
        grid = info.context["services"].grid
        fid = str(feeder_id)
        grid.require_feeder(fid)
        lim = await audited(info, AuditAction.DER_LIMITS, fid,
                            {"vm_max_pu": vm_max_pu, "max_loading_percent": max_loading_percent},
                            grid.fleet.call_app(fid, "der", "set_limits", by, vm_max_pu=vm_max_pu,
                                                max_loading_percent=max_loading_percent))
        return DerLimits(vm_max_pu=lim.get("vm_max_pu"), max_loading_percent=lim.get("max_loading_percent"))

    @strawberry.mutation(permission_classes=[requires(Permission.SET_DER_MODE, feeder_arg="feeder_id")])
    async def set_der_mode(self, info: Info, feeder_id: strawberry.ID,
                           mode: DerMode) -> DerMode:  # type: ignore[valid-type]
        by = info.context["principal"].sub
        grid = info.context["services"].grid
        fid = str(feeder_id)
        grid.require_feeder(fid)
        result = await audited(info, AuditAction.DER_MODE, fid, {"mode": mode.value},
                               grid.fleet.call_app(fid, "der", "set_mode", mode.value, by))
        return DerMode(result)
