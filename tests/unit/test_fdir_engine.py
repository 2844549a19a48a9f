"""FDIR engine on case33bw with in-memory ports: a fake field that obeys (or refuses) commands,
a fake outage store, an event list and an injected clock. No Ray, no store, no socket."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from actors.apps.fdir_engine import (
    FdirEngine,
    FdirMode,
    FdirPorts,
    PlanKind,
    PlanState,
    merge_indications,
)
from actors.cores.control import ControlAction, DeviceUnreachable, NotConfirmed, expected_state
from actors.cores.events import EventKind, Severity
from actors.cores.fdir import FdirModel, Indications, PlanAction
from actors.cores.outages import Outage, OutageStatus
from graph_schema.errors import BadInput, NotFound
from graph_schema.importers import case33bw
from tests.unit import fdir_grids

TIES = {"sw33", "sw34", "sw35", "sw36", "sw37"}


@pytest.fixture(scope="module")
def c33() -> FdirModel:
    return FdirModel(case33bw())


class Clock:
    def __init__(self) -> None:
        self.t = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.t += timedelta(milliseconds=100)
        return self.t


@dataclass
class Field:
    """Switch positions that obey operate(); devices can be stuck (NotConfirmed) or unreachable.
    Records which buses were ever energized after each command."""

    model: FdirModel
    states: dict[str, bool]
    stuck: set[str] = field(default_factory=set)
    unreachable: set[str] = field(default_factory=set)
    ops: list[tuple[str, ControlAction]] = field(default_factory=list)
    energized_after: list[frozenset[str]] = field(default_factory=list)
    after_operate: Callable[[str, ControlAction], None] | None = None

    async def operate(self, device_id: str, action: ControlAction) -> bool:
        await asyncio.sleep(0)
        self.ops.append((device_id, action))
        if device_id in self.unreachable:
            raise DeviceUnreachable(device_id, "no answer from the RTU")
        if device_id in self.stuck:
            raise NotConfirmed(device_id, action.value, 5.0)
        target = expected_state(action)
        assert target is not None
        self.states[device_id] = target
        self.energized_after.append(self.model.graph.process(self.states).energized_bus_ids)
        if self.after_operate is not None:
            self.after_operate(device_id, action)
        return True

    def switch_states(self) -> Mapping[str, bool]:
        return dict(self.states)

    def ever_energized(self, buses: set[str]) -> set[str]:
        return {b for e in self.energized_after for b in e} & buses


@dataclass
class Store:
    records: dict[int, dict[str, Any]] = field(default_factory=dict)
    history: list[tuple[int | None, dict[str, Any]]] = field(default_factory=list)

    async def persist_outage(self, record: dict[str, Any], seq: int | None) -> int:
        self.history.append((seq, dict(record)))
        if seq is None:
            seq = len(self.records) + 1
        else:
            assert seq in self.records and self.records[seq]["id"] == record["id"]
        self.records[seq] = dict(record)
        return seq

    def outages(self) -> list[Outage]:
        return [Outage.from_record(r) for r in self.records.values()]

    def statuses(self, outage_id: str) -> list[str]:
        out: list[str] = []
        for _, r in self.history:
            if r["id"] == outage_id and (not out or out[-1] != r["status"]):
                out.append(r["status"])
        return out


@dataclass
class Rig:
    field: Field
    store: Store
    events: list[tuple[EventKind, Severity, str, dict[str, Any]]]
    engine: FdirEngine

    def kinds(self) -> list[EventKind]:
        return [e[0] for e in self.events]


def make_rig(model: FdirModel, states: Mapping[str, bool], mode: FdirMode, **kw: Any) -> Rig:
    fld = Field(model, dict(states))
    store = Store()
    events: list[tuple[EventKind, Severity, str, dict[str, Any]]] = []

    async def emit(kind: EventKind, sev: Severity, msg: str, data: Mapping[str, Any]) -> None:
        events.append((kind, sev, msg, dict(data)))

    ports = FdirPorts(
        operate=fld.operate,
        switch_states=fld.switch_states,
        persist_outage=store.persist_outage,
        emit=emit,
        now=Clock(),
    )
    engine = FdirEngine(model, ports, mode=mode, settle_s=0.01, **kw)
    return Rig(fld, store, events, engine)


def line10(model: FdirModel) -> tuple[dict[str, bool], Indications]:
    states, ind, tripped = fdir_grids.fault_scenario(model, "sec-bus11")  # fault on line10
    assert tripped == "sw1"
    return states, ind


def ops(rig: Rig) -> list[tuple[str, str]]:
    return [(d, a.value) for d, a in rig.field.ops]


LINE10_OPS = [("sw10", "OPEN"), ("sw11", "OPEN"), ("sw1", "CLOSE"), ("sw35", "CLOSE")]


# ---------------------------------------------------------------------------------------- automatic


async def test_automatic_line10_isolates_recloses_and_closes_tie(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.AUTOMATIC)
    ps = await rig.engine.on_indications(ind)
    assert ps is not None and ps.state == PlanState.COMPLETED and ps.kind == PlanKind.FAULT
    assert ps.decided_by == "fdir" and ps.failed_step is None
    assert ops(rig) == LINE10_OPS
    assert ps.executed_steps == tuple(s.order for s in ps.plan.steps)
    assert rig.field.states == dict(ps.plan.final_states)
    assert not rig.field.ever_energized({"bus11"})
    # Outage: one record, appended once then updated in place.
    assert len(rig.store.records) == 1 and rig.store.history[0][0] is None
    assert all(seq == 1 for seq, _ in rig.store.history[1:])
    (o,) = rig.store.outages()
    assert rig.store.statuses(o.id) == ["DETECTED", "ISOLATED", "PARTIALLY_RESTORED"]
    assert o.status == OutageStatus.PARTIALLY_RESTORED and o.customers_interrupted == c33.feeder.customers
    assert o.customers_out == c33.section_by_id["sec-bus11"].customers == 15
    assert o.load_ids_out == ("load10",) and o.estimated_restoration is not None
    assert [s.action for s in o.steps] == ["DETECTED", "ISOLATED", "CLOSE sw1", "CLOSE sw35"]
    assert o.steps[2].customers_restored == 1054 and o.steps[3].customers_restored == 170
    assert rig.engine.tracker.get(o.id) == o
    # Events: outage detected, plan, outage isolated / partially restored, plan completed.
    kinds = rig.kinds()
    assert kinds[0] == EventKind.OUTAGE and EventKind.PLAN in kinds
    assert any("partially restored" in e[2] for e in rig.events)
    assert rig.events[-1][0] == EventKind.PLAN and "completed" in rig.events[-1][2]
    # Timings, from the injected clock.
    t = rig.engine.timings[ps.id]
    assert t.t_indication is not None and t.t_plan is not None and t.t_done is not None
    assert t.t_indication < t.t_plan < t.t_done
    assert t.plan_s is not None and t.plan_s > 0 and t.restore_s is not None and t.restore_s > t.plan_s
    st = rig.engine.status()
    assert st.pending_plan is None and st.executing_plan is None and st.last_outcome == ps
    assert st.active_outage_ids == (o.id,)


async def test_healthy_sections_fully_restored_gives_restored_outage() -> None:
    # Two feeders: fault in a3; a2 back by the breaker, a4 by the tie; a3 (80 customers) left.
    m = FdirModel(fdir_grids.two_feeders())
    states, ind, _ = fdir_grids.fault_scenario(m, "sec-a3")
    rig = make_rig(m, states, FdirMode.AUTOMATIC)
    ps = await rig.engine.on_indications(ind)
    assert ps is not None and ps.state == PlanState.COMPLETED
    assert ops(rig) == [("sa2", "OPEN"), ("sa3", "OPEN"), ("brk_a", "CLOSE"), ("tie_ab", "CLOSE")]
    (o,) = rig.store.outages()
    assert (o.customers_interrupted, o.customers_out, o.load_ids_out) == (240, 80, ("la3_ld",))
    # Repair: return to normal brings everyone back and closes the outage.
    back = await rig.engine.on_fault_cleared()
    await rig.engine.approve(back.id, "op")
    (o,) = rig.store.outages()
    assert o.status == OutageStatus.RESTORED and o.customers_out == 0 and o.restored_at is not None
    assert o.estimated_restoration is None


# ---------------------------------------------------------------------------------------- advisory


async def test_advisory_holds_plan_until_approved(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.ADVISORY)
    ps = await rig.engine.on_indications(ind)
    assert ps is not None and ps.state == PlanState.PENDING_APPROVAL
    assert rig.field.ops == [] and rig.field.states == states
    assert rig.engine.status().pending_plan == ps
    (o,) = rig.store.outages()
    assert o.status == OutageStatus.DETECTED and o.customers_out == c33.feeder.customers
    assert any(e[0] == EventKind.PLAN and "awaiting approval" in e[2] for e in rig.events)
    with pytest.raises(NotFound, match="does not exist"):
        await rig.engine.approve("plan-nope", "op")
    done = await rig.engine.approve(ps.id, "alice")
    assert done.state == PlanState.COMPLETED and done.decided_by == "alice"
    assert ops(rig) == LINE10_OPS
    with pytest.raises(BadInput, match="COMPLETED and cannot be approved"):
        await rig.engine.approve(ps.id, "alice")
    (o,) = rig.store.outages()
    assert o.status == OutageStatus.PARTIALLY_RESTORED and o.customers_out == 15
    assert o.steps[-1].by == "alice"


async def test_reject_leaves_network_untouched(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.ADVISORY)
    ps = await rig.engine.on_indications(ind)
    assert ps is not None
    out = await rig.engine.reject(ps.id, "bob", "crew on site")
    assert out.state == PlanState.REJECTED and out.decided_by == "bob" and out.message == "crew on site"
    assert rig.field.ops == [] and rig.field.states == states
    with pytest.raises(BadInput, match="REJECTED"):
        await rig.engine.approve(ps.id, "bob")
    with pytest.raises(BadInput, match="REJECTED"):
        await rig.engine.reject(ps.id, "bob", "again")
    (o,) = rig.store.outages()
    assert o.active and o.status == OutageStatus.DETECTED
    assert rig.engine.status().last_outcome == out and rig.engine.status().pending_plan is None


async def test_stale_plan_is_superseded_on_approve(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.ADVISORY)
    ps = await rig.engine.on_indications(ind)
    assert ps is not None
    rig.field.states["sw25"] = True  # someone opened a sectionalizer by hand meanwhile
    with pytest.raises(BadInput, match="stale: sw25 changed") as err:
        await rig.engine.approve(ps.id, "op")
    assert rig.engine.plans[ps.id].state == PlanState.SUPERSEDED and rig.field.ops == []
    new = rig.engine.status().pending_plan
    assert new is not None and new.id in str(err.value) and new.replaces == ps.id
    assert new.plan.fault is not None and new.plan.fault.faulted_section_ids == ("sec-bus11",)
    done = await rig.engine.approve(new.id, "op")
    assert done.state == PlanState.COMPLETED and not rig.field.ever_energized({"bus11"})


async def test_replan_that_would_energize_known_fault_zone_is_refused(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.ADVISORY)
    ps = await rig.engine.on_indications(ind)
    assert ps is not None
    # A tie closed by hand makes a loop: the indicators now point elsewhere (sec-bus7), and the
    # core's fresh plan would re-close sw1 onto bus11. The engine remembers bus11 and refuses.
    rig.field.states["sw33"] = False
    with pytest.raises(BadInput, match="no new plan could be made"):
        await rig.engine.approve(ps.id, "op")
    refused = [p for p in rig.engine.plans.values() if p.replaces == ps.id]
    assert len(refused) == 1 and refused[0].state == PlanState.FAILED
    assert "CLOSE sw1) would energize the faulted zone (bus11)" in refused[0].message
    assert rig.field.ops == [] and rig.events[-1][1] == Severity.CRITICAL


# ---------------------------------------------------------------------------------------- failures


async def test_stuck_isolation_switch_expands_isolation(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.AUTOMATIC)
    rig.field.stuck.add("sw10")
    last = await rig.engine.on_indications(ind)
    assert last is not None and last.kind == PlanKind.ALTERNATIVE and last.state == PlanState.COMPLETED
    first = rig.engine.plans[last.replaces or ""]
    assert first.state == PlanState.FAILED and first.failed_step is not None
    assert (first.failed_step.device_id, first.failed_step.action) == ("sw10", PlanAction.OPEN)
    assert "not confirmed" in first.message
    assert ops(rig) == [("sw10", "OPEN"), ("sw9", "OPEN"), ("sw11", "OPEN"), ("sw1", "CLOSE"), ("sw35", "CLOSE")]
    assert not rig.field.ever_energized({"bus10", "bus11"})
    (o,) = rig.store.outages()
    assert o.customers_out == 35 and set(o.load_ids_out) == {"load9", "load10"}
    assert any(e[1] == Severity.ALARM and "re-planning" in e[2] for e in rig.events)
    assert rig.engine.timings[last.id].t_indication == rig.engine.timings[first.id].t_indication


async def test_stuck_isolation_without_budget_stops_safely(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.AUTOMATIC, max_replans=1)
    rig.field.stuck |= {"sw10", "sw9"}
    last = await rig.engine.on_indications(ind)
    assert last is not None and last.state == PlanState.FAILED and last.safe_stop is not None
    assert "operator needed" in last.safe_stop.explanation and "sw1" in last.safe_stop.keep_open_switch_ids
    assert ops(rig) == [("sw10", "OPEN"), ("sw9", "OPEN")]  # never closes toward the unisolated fault
    assert rig.field.states["sw1"] is True and not rig.field.ever_energized({"bus9", "bus10", "bus11"})
    assert rig.events[-1][1] == Severity.CRITICAL
    (o,) = rig.store.outages()
    assert o.status == OutageStatus.DETECTED and o.customers_out == c33.feeder.customers


async def test_tie_that_fails_to_close_uses_next_candidate(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.AUTOMATIC)
    rig.field.unreachable.add("sw35")
    last = await rig.engine.on_indications(ind)
    assert last is not None and last.state == PlanState.COMPLETED and last.kind == PlanKind.ALTERNATIVE
    assert "could not be reached" in rig.engine.plans[last.replaces or ""].message
    closes = [d for d, a in ops(rig) if a == "CLOSE"]
    assert closes[0] == "sw1" and closes[1] == "sw35" and closes[2] in TIES - {"sw35"}
    assert closes.count("sw1") == 1  # not re-closed by the alternative
    assert not rig.field.ever_energized({"bus11"})
    (o,) = rig.store.outages()
    assert o.status == OutageStatus.PARTIALLY_RESTORED and o.customers_out == 15


async def test_advisory_alternative_is_held_for_approval(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.ADVISORY)
    rig.field.unreachable.add("sw35")
    ps = await rig.engine.on_indications(ind)
    assert ps is not None
    alt = await rig.engine.approve(ps.id, "op")
    assert alt.kind == PlanKind.ALTERNATIVE and alt.state == PlanState.PENDING_APPROVAL
    n = len(rig.field.ops)
    done = await rig.engine.approve(alt.id, "op")
    assert done.state == PlanState.COMPLETED and len(rig.field.ops) == n + 1


async def test_plan_that_closes_onto_the_fault_is_refused(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.ADVISORY)
    ps = await rig.engine.on_indications(ind)
    assert ps is not None
    # The same steps, re-close first: it would energize the faulted line.
    steps = ps.plan.steps
    close_first = (*steps[4:6], *steps[:4], *steps[6:])
    bad = replace(ps.plan, id="plan-bad", steps=tuple(replace(s, order=i + 1) for i, s in enumerate(close_first)))
    out = await rig.engine.execute(bad, by="op")
    assert out.state == PlanState.FAILED and "energize the faulted zone (bus11)" in out.message
    assert rig.field.ops == []


async def test_a_restarted_engine_still_protects_the_faulted_zone(c33: FdirModel) -> None:
    """The faulted zone is persisted with the outage: an actor rebuilt from the store refuses to
    energize it, until the operator declares the fault cleared."""
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.ADVISORY)
    ps = await rig.engine.on_indications(ind)
    assert ps is not None
    (rec_seq, rec), = rig.store.records.items()
    assert "bus11" in Outage.from_record(rec).fault_zone_bus_ids

    ports = rig.engine._ports
    restarted = FdirEngine(c33, ports, mode=FdirMode.ADVISORY, settle_s=0.01,
                           outages=[(Outage.from_record(r), seq) for seq, r in rig.store.records.items()])
    steps = ps.plan.steps
    close_first = (*steps[4:6], *steps[:4], *steps[6:])
    bad = replace(ps.plan, id="plan-bad", steps=tuple(replace(s, order=i + 1) for i, s in enumerate(close_first)))
    out = await restarted.execute(bad, by="op")
    assert out.state == PlanState.FAILED and "energize the faulted zone (bus11)" in out.message
    assert rig.field.ops == []

    await restarted.on_fault_cleared("op")
    assert Outage.from_record(rig.store.records[rec_seq]).fault_zone_bus_ids == ()
    again = FdirEngine(c33, ports, outages=[(Outage.from_record(r), seq) for seq, r in rig.store.records.items()])
    assert again._fault_zones == {}


# ---------------------------------------------------------------------------------------- second fault


async def test_second_fault_during_execution_aborts_and_replans(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.AUTOMATIC)
    _, ind26, _ = fdir_grids.fault_scenario(c33, "sec-bus26")
    second: list[asyncio.Task[Any]] = []

    def trip(device: str, action: ControlAction) -> None:
        if device == "sw1" and action == ControlAction.CLOSE and not second:
            rig.field.states["sw1"] = True  # protection trips again: another fault on the bus26 lateral
            second.append(asyncio.ensure_future(rig.engine.on_indications(ind26)))

    rig.field.after_operate = trip
    first = await rig.engine.on_indications(ind)
    assert first is not None and first.state == PlanState.FAILED and first.safe_stop is not None
    assert "positions changed under the plan (sw1 now open)" in first.safe_stop.explanation
    assert ops(rig) == LINE10_OPS[:3]  # nothing after the trip
    again = await second[0]
    assert again is not None and again.state == PlanState.PENDING_APPROVAL  # never automatic after a safe stop
    assert "automatic switching suspended: safe stop of plan" in again.message
    assert rig.engine.status().automatic_suspended is not None
    assert again.plan.fault is not None and "sec-bus26" in again.plan.fault.faulted_section_ids
    assert rig.field.ops == [(d, ControlAction(a)) for d, a in LINE10_OPS[:3]]
    (o,) = rig.store.outages()  # everyone was still out: the second fault is noted in the same outage
    assert o.active and [s.action for s in o.steps][-1] == "FAULT"
    assert again.plan.isolation is not None and "sw1" in {s.device_id for s in again.plan.steps}
    n = len(rig.field.energized_after)
    done = await rig.engine.approve(again.id, "op")
    assert done.state == PlanState.COMPLETED
    assert not rig.field.ever_energized({"bus11"})
    assert not {b for e in rig.field.energized_after[n:] for b in e} & again.plan.isolation.zone_bus_ids
    await rig.engine.set_mode(FdirMode.AUTOMATIC, "op")  # re-arm
    assert rig.engine.status().automatic_suspended is None and "re-armed" in rig.events[-1][2]


async def test_new_trip_between_steps_aborts(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.AUTOMATIC)
    gate = asyncio.Event()
    release = asyncio.Event()
    orig = rig.field.operate

    async def slow_operate(device: str, action: ControlAction) -> bool:
        if device == "sw11":
            gate.set()
            await release.wait()
        return await orig(device, action)

    rig.engine._ports = replace(rig.engine._ports, operate=slow_operate)
    run = asyncio.ensure_future(rig.engine.on_indications(ind))
    await gate.wait()
    st = rig.engine.status()
    assert st.executing_plan is not None and st.executing_plan.state == PlanState.EXECUTING
    assert st.executing_step is not None and st.executing_step.device_id == "sw11"
    # Another protective device trips while sw11 is being operated (no re-trip of sw1 here: sw25
    # stands for a recloser on a lateral).
    second = asyncio.ensure_future(rig.engine.on_indications(Indications(tripped_devices={"sw25"})))
    await asyncio.sleep(0)
    release.set()
    first = await run
    assert first is not None and first.state == PlanState.FAILED and first.safe_stop is not None
    assert "new trip of sw25" in first.safe_stop.explanation
    assert ops(rig) == LINE10_OPS[:2]
    await second


# ---------------------------------------------------------------------------------------- momentary, off


async def test_momentary_records_outage_and_makes_no_plan(c33: FdirModel) -> None:
    normal = dict(c33.normal_states)
    rig = make_rig(c33, normal, FdirMode.AUTOMATIC)
    res = await rig.engine.on_indications(Indications(tripped_devices={"sw1"}, reclosed={"sw1"}))
    assert res is None and rig.engine.plans == {} and rig.field.ops == []
    (o,) = rig.store.outages()
    assert o.momentary and o.status == OutageStatus.RESTORED and o.customers_out == 0
    assert o.customers_interrupted == c33.feeder.customers
    assert rig.kinds() == [EventKind.OUTAGE] and "momentary" in rig.events[0][2]


async def test_off_mode_records_outage_without_plan(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.OFF)
    assert await rig.engine.on_indications(ind) is None
    assert rig.engine.plans == {} and rig.field.ops == []
    (o,) = rig.store.outages()
    assert o.status == OutageStatus.DETECTED
    assert await rig.engine.set_mode("ADVISORY", "op") == FdirMode.ADVISORY
    assert rig.engine.mode == FdirMode.ADVISORY and "changed from OFF to ADVISORY" in rig.events[-1][2]
    with pytest.raises(BadInput, match="unknown"):
        await rig.engine.set_mode("MANUAL", "op")


async def test_turning_off_rejects_pending_plan(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.ADVISORY)
    ps = await rig.engine.on_indications(ind)
    assert ps is not None
    await rig.engine.set_mode(FdirMode.OFF, "op")
    assert rig.engine.plans[ps.id].state == PlanState.REJECTED and rig.engine.status().pending_plan is None


# ---------------------------------------------------------------------------------------- return to normal


async def test_return_to_normal_is_held_then_restores_normal_states(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.AUTOMATIC)
    await rig.engine.on_indications(ind)
    n = len(rig.field.ops)
    back = await rig.engine.on_fault_cleared()
    held = rig.engine.plans[back.id]
    assert held.kind == PlanKind.RETURN_TO_NORMAL and held.state == PlanState.PENDING_APPROVAL
    assert len(rig.field.ops) == n  # never automatic
    done = await rig.engine.approve(back.id, "op")
    assert done.state == PlanState.COMPLETED
    assert rig.field.states == dict(c33.normal_states)
    assert [d for d, _ in ops(rig)[n:]] == [s.device_id for s in back.steps if s.action != PlanAction.VERIFY]
    (o,) = rig.store.outages()
    assert o.status == OutageStatus.RESTORED and o.customers_out == 0 and not o.active
    assert o.customers_interrupted == c33.feeder.customers
    assert rig.engine.status().active_outage_ids == ()


# ---------------------------------------------------------------------------------------- concurrency


async def test_two_quick_indications_give_one_plan(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.ADVISORY)
    trip = Indications(tripped_devices={"sw1"})
    fis = Indications(fault_indicators=ind.fault_indicators)

    async def later() -> Any:
        await asyncio.sleep(0.002)
        return await rig.engine.on_indications(fis)

    a, b = await asyncio.gather(rig.engine.on_indications(trip), later())
    assert a is not None and a == b and len(rig.engine.plans) == 1
    assert a.plan.fault is not None and a.plan.fault.confident  # the late indicators were used
    assert a.plan.fault.faulted_section_ids == ("sec-bus11",)
    assert len(rig.store.records) == 1
    assert rig.engine.timings[a.id].t_indication is not None


async def test_late_indications_supersede_pending_plan_under_same_outage(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.ADVISORY)
    first = await rig.engine.on_indications(Indications(tripped_devices={"sw1"}))
    assert first is not None and first.plan.fault is not None and not first.plan.fault.confident
    assert first.state == PlanState.COMPLETED and "nothing to switch" in first.message  # no FI data: patrol
    second = await rig.engine.on_indications(Indications(fault_indicators=ind.fault_indicators))
    assert second is not None and second.state == PlanState.PENDING_APPROVAL
    assert second.plan.fault is not None and second.plan.fault.confident
    assert second.outage_id == first.outage_id and len(rig.store.records) == 1


def test_merge_indications_lockout_after_reclose() -> None:
    a = Indications(tripped_devices={"sw1"}, reclosed={"sw1"}, fault_indicators={"line1": True, "line2": None})
    b = Indications(tripped_devices={"sw1"}, fault_indicators={"line1": None, "line2": False})
    m = merge_indications(a, b)
    assert m.reclosed == frozenset() and m.tripped_devices == {"sw1"}
    assert dict(m.fault_indicators) == {"line1": True, "line2": False}


async def test_failing_event_bus_and_store_do_not_stop_switching(c33: FdirModel) -> None:
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.AUTOMATIC)

    async def broken(*_: Any) -> Any:
        raise ConnectionError("down")

    rig.engine._ports = replace(rig.engine._ports, emit=broken, persist_outage=broken)
    ps = await rig.engine.on_indications(ind)
    assert ps is not None and ps.state == PlanState.COMPLETED and ops(rig) == LINE10_OPS
    (o,) = rig.engine.tracker.outages()
    assert o.status == OutageStatus.PARTIALLY_RESTORED


# ---------------------------------------------------------------------------------------- issue #17


def _dark_loads(model: FdirModel, states: Mapping[str, bool]) -> set[str]:
    buses = model.graph.process(model.states(states)).energized_bus_ids
    return {ld.id for ld in model.feeder.loads if ld.bus_id not in buses}


async def test_operator_switching_is_a_planned_interruption_not_a_fault(c33: FdirModel) -> None:
    """#17.1/#17.2: an operator opens sw17 (commanded): the customers behind it are a
    PLANNED_SWITCHING outage attributed to the operator, their last gasps are not a fault, and
    closing sw17 again ends the outage at that time."""
    rig = make_rig(c33, c33.normal_states, FdirMode.AUTOMATIC)
    rig.engine.prime_supply()
    rig.field.states["sw17"] = True
    rig.engine.note_switching({"sw17": True}, {"sw17": "alice"})
    await rig.engine.on_supply()
    dark = _dark_loads(c33, rig.field.states)
    assert dark
    ps = await rig.engine.on_indications(Indications(last_gasp_loads=frozenset(dark)))
    assert ps is None and rig.field.ops == []  # nothing planned, nothing switched
    (o,) = rig.store.outages()
    assert o.cause == "PLANNED_SWITCHING" and o.planned and o.devices == ("sw17",)
    assert o.steps[0].by == "alice" and set(o.load_ids_out) == dark
    assert o.customers_out == sum(ld.customers for ld in c33.feeder.loads if ld.id in dark)
    assert "no open protective device" not in str(rig.events)
    assert not [e for e in rig.events if e[0] == EventKind.OUTAGE and e[3].get("cause") == "FAULT"]
    # Closed again (commanded): restored when supplied, not by a later FDIR step.
    rig.field.states["sw17"] = False
    rig.engine.note_switching({"sw17": False}, {"sw17": "alice"})
    before = rig.engine._ports.now()
    await rig.engine.on_supply()
    (o,) = rig.store.outages()
    assert o.status == OutageStatus.RESTORED and o.customers_out == 0
    assert o.restored_at is not None and o.restored_at - before < timedelta(seconds=1)
    assert o.steps[-1].action == "SUPPLY_RESTORED" and o.steps[-1].by == "alice"
    assert rig.engine.commanded_positions() == {}


async def test_uncommanded_opening_is_left_to_the_protection_path(c33: FdirModel) -> None:
    rig = make_rig(c33, c33.normal_states, FdirMode.ADVISORY)
    rig.engine.prime_supply()
    rig.field.states["sw17"] = True
    rig.engine.note_switching({"sw17": True}, {})  # nobody commanded it
    await rig.engine.on_supply()
    assert rig.store.outages() == []
    dark = _dark_loads(c33, rig.field.states)
    await rig.engine.on_indications(Indications(last_gasp_loads=frozenset(dark)))
    (o,) = rig.store.outages()
    assert o.cause == "FAULT"


async def test_fault_outage_ends_when_supplied_again_and_every_change_is_published(c33: FdirModel) -> None:
    """#17.2/#17.3: an operator's switching that resupplies customers of a fault outage restores
    them at once; every change of customers out is an OUTAGE event (the public feed follows)."""
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.ADVISORY)
    rig.engine.prime_supply()
    await rig.engine.on_indications(ind)
    (o,) = rig.store.outages()
    out0 = o.customers_out
    n_events = len([e for e in rig.events if e[0] == EventKind.OUTAGE])
    # The operator isolates line10 by hand and recloses the breaker: most customers are back.
    moves = {"sw10": True, "sw11": True, "sw1": False}
    rig.field.states.update(moves)
    rig.engine.note_switching(moves, dict.fromkeys(moves, "bob"))
    await rig.engine.on_supply()
    (o,) = rig.store.outages()
    assert 0 < o.customers_out < out0 and o.steps[-1].by == "bob"
    outage_events = [e for e in rig.events if e[0] == EventKind.OUTAGE]
    assert len(outage_events) == n_events + 1
    assert outage_events[-1][3]["customers_out"] == o.customers_out


async def test_plan_events_carry_the_plan_state(c33: FdirModel) -> None:
    """#17.4: an AUTOMATIC plan is announced EXECUTING and finishes COMPLETED; an advisory plan is
    PENDING_APPROVAL."""
    states, ind = line10(c33)
    rig = make_rig(c33, states, FdirMode.AUTOMATIC)
    ps = await rig.engine.on_indications(ind)
    assert ps is not None and ps.state == PlanState.COMPLETED
    plan_states = [e[3]["state"] for e in rig.events if e[0] == EventKind.PLAN and e[3].get("plan_id") == ps.id]
    assert plan_states == ["EXECUTING", "COMPLETED"]
    rig = make_rig(c33, states, FdirMode.ADVISORY)
    ps = await rig.engine.on_indications(ind)
    assert ps is not None
    assert [e[3]["state"] for e in rig.events if e[0] == EventKind.PLAN] == ["PENDING_APPROVAL"]
