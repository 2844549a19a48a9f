"""Ingest and alarm rules of one feeder (:class:`actors.ingest.Ingest`) on case33bw.

The point map is the generated demo map (``protocols.pointmap.generate_point_map``): switch status
and fault indicators on Modbus RTUs (``case33bw/rtu1`` holds sw1..sw8 and the fault indicators of
line1..line8), bus voltages and meters' last gasps on the OPC UA device (``case33bw/opcua``). Values
are hand-made :class:`protocols.base.PointValue`; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from actors.cores.events import ALARM_KIND_KEY, EventKind, Severity
from actors.cores.powerflow import PowerFlowModel
from actors.ingest import Ingest, IngestResult, QueuedEvent
from graph_schema.importers import case33bw
from graph_schema.model import Feeder, Quantity, SwitchKind
from protocols.base import PointValue, Quality
from protocols.pointmap import Direction, Signal, generate_point_map, point_id

FID = "case33bw"
RTU1 = f"{FID}/rtu1"
OPCUA = f"{FID}/opcua"
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


def _feeder() -> Feeder:
    """case33bw with sw2 made a recloser (the published case has one breaker and sectionalizers)."""
    f = case33bw()
    switches = tuple(replace(s, kind=SwitchKind.RECLOSER) if s.id == "sw2" else s for s in f.switches)
    return replace(f, switches=switches)


@pytest.fixture(scope="module")
def feeder() -> Feeder:
    return _feeder()


@pytest.fixture
def ingest(feeder: Feeder) -> Ingest:
    ing = Ingest(feeder)
    ing.bind({p.point_id: p for p in generate_point_map(feeder).points})
    return ing


def pid(element_id: str, kind: Quantity | Signal) -> str:
    return point_id(FID, element_id, kind)


def pv(point: str, value: float | bool | None, quality: Quality = Quality.GOOD, *,
       exception_code: int | None = None) -> PointValue:
    return PointValue(point, value, quality, T0, T0, exception_code=exception_code)


def status(sw: str, is_open: bool) -> PointValue:
    return pv(pid(sw, Quantity.STATUS), is_open)


def fault(line: str, on: bool) -> PointValue:
    return pv(pid(line, Signal.FAULT), on)


def vm(bus: str, vm_pu: float, quality: Quality = Quality.GOOD) -> PointValue:
    return pv(pid(bus, Quantity.VM_PU), vm_pu, quality)


def alarms(result: IngestResult | Sequence[QueuedEvent], alarm_kind: str | None = None) -> list[QueuedEvent]:
    """Events that raise or clear an alarm (optionally of one alarm kind)."""
    events = result.events if isinstance(result, IngestResult) else result
    return [e for e in events if e.alarm and (alarm_kind is None or e.data.get(ALARM_KIND_KEY) == alarm_kind)]


def measurements(result: IngestResult) -> list[QueuedEvent]:
    return [e for e in result.events if e.kind is EventKind.MEASUREMENT]


def read_points_of(ingest: Ingest, device_id: str) -> list[str]:
    return [p for p, m in ingest.points.items() if m.device_id == device_id and m.direction is Direction.READ]


# -- communication and quality ---------------------------------------------------------------------


def test_comm_loss_when_every_point_is_lost_and_restored_on_a_good_value(ingest: Ingest) -> None:
    points = read_points_of(ingest, RTU1)
    assert len(points) == 16  # 8 switch states + 8 fault indicators
    healthy = [pv(p, False) for p in points]
    assert alarms(ingest.apply(RTU1, healthy, {})) == []
    assert ingest.device_ok[RTU1] is True

    lost = [pv(p, False, Quality.COMM_LOST) for p in points]
    r = ingest.apply(RTU1, lost, {})
    [ev] = alarms(r)
    assert (ev.kind, ev.element_id, ev.alarm, ev.data[ALARM_KIND_KEY]) == (EventKind.COMM_LOSS, RTU1, "raise",
                                                                           "COMM_LOSS")
    assert ev.durable and ev.severity is Severity.ALARM
    assert ingest.device_ok[RTU1] is False
    assert alarms(ingest.apply(RTU1, lost, {})) == []  # raised once, not per scan

    r = ingest.apply(RTU1, [pv(points[0], False), *lost[1:]], {})
    [ev] = alarms(r)
    assert (ev.kind, ev.element_id, ev.alarm, ev.data[ALARM_KIND_KEY]) == (EventKind.COMM_RESTORED, RTU1, "clear",
                                                                           "COMM_LOSS")
    assert ingest.device_ok[RTU1] is True


def test_some_points_lost_is_not_a_comm_loss(ingest: Ingest) -> None:
    points = read_points_of(ingest, RTU1)
    r = ingest.apply(RTU1, [pv(points[0], None, Quality.COMM_LOST), *(pv(p, False) for p in points[1:])], {})
    assert alarms(r, "COMM_LOSS") == []
    assert ingest.device_ok[RTU1] is True


def test_a_device_lost_from_the_first_scan_raises_comm_loss(ingest: Ingest) -> None:
    r = ingest.apply(RTU1, [pv(p, None, Quality.COMM_LOST) for p in read_points_of(ingest, RTU1)], {})
    assert [e.kind for e in alarms(r)] == [EventKind.COMM_LOSS]
    assert ingest.apply(RTU1, [], {}) == IngestResult()


def test_bad_quality_raised_once_and_cleared_when_good(ingest: Ingest) -> None:
    p = pid("bus5", Quantity.VM_PU)
    r = ingest.apply(OPCUA, [pv(p, None, Quality.INVALID, exception_code=2)], {})
    [ev] = alarms(r)
    assert (ev.kind, ev.element_id, ev.alarm, ev.data[ALARM_KIND_KEY]) == (EventKind.ALARM, p, "raise", "BAD_QUALITY")
    assert ev.severity is Severity.WARNING and "2" in ev.message
    assert alarms(ingest.apply(OPCUA, [pv(p, None, Quality.INVALID, exception_code=2)], {})) == []
    # Not GOOD yet: still bad.
    assert alarms(ingest.apply(OPCUA, [pv(p, 1.0, Quality.STALE)], {}), "BAD_QUALITY") == []
    r = ingest.apply(OPCUA, [vm("bus5", 1.0)], {})
    [ev] = alarms(r)
    assert (ev.kind, ev.element_id, ev.alarm, ev.data[ALARM_KIND_KEY]) == (EventKind.ALARM_CLEARED, p, "clear",
                                                                           "BAD_QUALITY")


def test_points_not_in_the_map_are_ignored(ingest: Ingest) -> None:
    r = ingest.apply(OPCUA, [pv("elsewhere/bus1/VM_PU", 0.5)], {})
    assert measurements(r) == [] and "elsewhere/bus1/VM_PU" not in ingest.values
    assert ingest.ingested == 0


# -- switches, trips and reclosing -----------------------------------------------------------------


def test_breaker_opening_without_a_command_is_a_trip(ingest: Ingest) -> None:
    states = {"sw1": False, "sw3": False}
    r = ingest.apply(RTU1, [status("sw1", True)], states)
    assert dict(r.switch_changes) == {"sw1": True}
    assert states == {"sw1": False, "sw3": False}  # the host applies the changes, not the ingest
    assert r.state_changed and r.indications_changed and not r.fault_cleared
    [ev] = alarms(r)
    assert (ev.kind, ev.element_id, ev.alarm, ev.data[ALARM_KIND_KEY]) == (EventKind.BREAKER_TRIP, "sw1", "raise",
                                                                           "BREAKER_TRIP")
    assert ev.severity is Severity.CRITICAL
    assert ingest.field_flags().tripped == {"sw1"}


def test_breaker_opened_by_our_operate_is_not_a_trip(ingest: Ingest) -> None:
    ingest.expect("sw1", True)
    r = ingest.apply(RTU1, [status("sw1", True)], {"sw1": False})
    assert dict(r.switch_changes) == {"sw1": True} and r.state_changed
    assert not r.indications_changed
    assert alarms(r) == []
    assert ingest.field_flags().tripped == frozenset()
    # Once released, an opening is a trip again.
    ingest.release("sw1")
    ingest.apply(RTU1, [status("sw1", False)], {"sw1": True})
    r = ingest.apply(RTU1, [status("sw1", True)], {"sw1": False})
    assert r.indications_changed and [e.kind for e in alarms(r)] == [EventKind.BREAKER_TRIP]


def test_a_sectionalizer_opening_is_a_state_change_not_a_trip(ingest: Ingest) -> None:
    r = ingest.apply(RTU1, [status("sw3", True)], {"sw3": False})
    assert dict(r.switch_changes) == {"sw3": True} and r.state_changed
    assert not r.indications_changed and alarms(r) == []


def test_unchanged_or_unknown_switch_position_is_no_change(ingest: Ingest) -> None:
    r = ingest.apply(RTU1, [status("sw1", False), status("sw3", True)], {"sw1": False})
    assert dict(r.switch_changes) == {} and not r.state_changed


def test_recloser_reclosing_by_itself_is_remembered_until_fdir_consumes_it(ingest: Ingest) -> None:
    r = ingest.apply(RTU1, [status("sw2", True)], {"sw2": False})
    assert [e.kind for e in alarms(r)] == [EventKind.BREAKER_TRIP]
    r = ingest.apply(RTU1, [status("sw2", False)], {"sw2": True})
    assert dict(r.switch_changes) == {"sw2": False}
    [ev] = alarms(r)
    assert (ev.kind, ev.element_id, ev.alarm, ev.data[ALARM_KIND_KEY]) == (EventKind.ALARM_CLEARED, "sw2", "clear",
                                                                           "BREAKER_TRIP")
    flags = ingest.field_flags()
    assert flags.tripped == frozenset() and flags.reclosed == {"sw2"}
    ingest.clear_reclosed()
    assert ingest.field_flags().reclosed == frozenset()


def test_closing_a_tripped_recloser_ourselves_is_not_a_reclose(ingest: Ingest) -> None:
    ingest.apply(RTU1, [status("sw2", True)], {"sw2": False})
    ingest.expect("sw2", False)
    r = ingest.apply(RTU1, [status("sw2", False)], {"sw2": True})
    assert [e.alarm for e in alarms(r, "BREAKER_TRIP")] == ["clear"]
    assert ingest.field_flags().reclosed == frozenset()


# -- fault indicators and last gasps ---------------------------------------------------------------


def test_fault_indicators_latch_and_fault_cleared_only_when_the_last_resets(ingest: Ingest) -> None:
    assert ingest.field_flags().fault_indicators["line5"] is None  # no good value yet
    r = ingest.apply(RTU1, [fault("line5", True), fault("line6", True)], {})
    assert r.indications_changed and not r.state_changed
    assert sorted((e.kind, e.element_id, e.alarm) for e in alarms(r)) == [
        (EventKind.FAULT_INDICATION, "line5", "raise"), (EventKind.FAULT_INDICATION, "line6", "raise")]
    flags = ingest.field_flags()
    assert flags.fault_indicators["line5"] is True and flags.fault_indicators["line6"] is True

    r = ingest.apply(RTU1, [fault("line5", True)], {})  # still latched: nothing new
    assert alarms(r) == [] and not r.indications_changed

    r = ingest.apply(RTU1, [fault("line5", False)], {})
    assert [(e.kind, e.element_id) for e in alarms(r)] == [(EventKind.ALARM_CLEARED, "line5")]
    assert not r.fault_cleared and not r.indications_changed
    assert ingest.field_flags().fault_indicators["line5"] is False

    r = ingest.apply(RTU1, [fault("line6", False)], {})
    assert [(e.kind, e.element_id) for e in alarms(r)] == [(EventKind.ALARM_CLEARED, "line6")]
    assert r.fault_cleared


def test_latched_indicator_stays_latched_when_its_point_goes_bad(ingest: Ingest) -> None:
    ingest.apply(RTU1, [fault("line5", True)], {})
    ingest.apply(RTU1, [pv(pid("line5", Signal.FAULT), True, Quality.COMM_LOST)], {})
    assert ingest.field_flags().fault_indicators["line5"] is True


def test_faulted_elements_after_a_latched_indicator(ingest: Ingest) -> None:
    assert ingest.faulted_elements() == frozenset()
    ingest.apply(RTU1, [fault("line5", True)], {})
    # line5 (bus5 -> bus6) and the lines fed from bus6.
    assert ingest.faulted_elements() == {"line5", "line6", "line25"}
    ingest.apply(RTU1, [fault("line6", True)], {})
    # The deepest indicator wins: line6 (bus6 -> bus7) and line7 out of bus7.
    assert ingest.faulted_elements() == {"line6", "line7"}
    ingest.apply(RTU1, [fault("line5", False), fault("line6", False)], {})
    assert ingest.faulted_elements() == frozenset()


def test_last_gasp_latches_and_clears(ingest: Ingest) -> None:
    p = pid("load5", Signal.LAST_GASP)
    r = ingest.apply(OPCUA, [pv(p, True)], {})
    [ev] = alarms(r)
    assert (ev.kind, ev.element_id, ev.alarm, ev.severity) == (EventKind.LAST_GASP, "load5", "raise",
                                                               Severity.WARNING)
    assert r.indications_changed
    assert ingest.field_flags().last_gasp == {"load5"}
    r = ingest.apply(OPCUA, [pv(p, False)], {})
    assert [(e.kind, e.alarm, e.data[ALARM_KIND_KEY]) for e in alarms(r)] == [
        (EventKind.ALARM_CLEARED, "clear", "LAST_GASP")]
    assert not r.indications_changed and not r.fault_cleared
    assert ingest.field_flags().last_gasp == frozenset()


# -- measured voltage ------------------------------------------------------------------------------


def test_measured_voltage_outside_the_band(ingest: Ingest, feeder: Feeder) -> None:
    lim = feeder.limits
    assert (lim.vm_min_pu, lim.vm_max_pu) == (0.9, 1.05)
    assert alarms(ingest.apply(OPCUA, [vm("bus5", 1.0)], {})) == []

    r = ingest.apply(OPCUA, [vm("bus5", 0.85)], {})
    [ev] = alarms(r)
    assert (ev.kind, ev.element_id, ev.alarm, ev.data[ALARM_KIND_KEY]) == (EventKind.LIMIT_VIOLATION, "bus5", "raise",
                                                                           "VM_LOW")
    assert ev.data["vm_pu"] == pytest.approx(0.85)
    assert alarms(ingest.apply(OPCUA, [vm("bus5", 0.86)], {})) == []  # still low: raised once

    r = ingest.apply(OPCUA, [vm("bus5", 1.07)], {})  # low to high: one clear, one raise
    assert [(e.alarm, e.data[ALARM_KIND_KEY]) for e in alarms(r)] == [("clear", "VM_LOW"), ("raise", "VM_HIGH")]

    r = ingest.apply(OPCUA, [vm("bus5", 1.0)], {})
    assert [(e.kind, e.alarm, e.data[ALARM_KIND_KEY]) for e in alarms(r)] == [
        (EventKind.ALARM_CLEARED, "clear", "VM_HIGH")]


def test_below_a_tenth_pu_the_bus_is_dead_not_low(ingest: Ingest) -> None:
    assert alarms(ingest.apply(OPCUA, [vm("bus5", 0.05)], {})) == []
    assert alarms(ingest.apply(OPCUA, [vm("bus5", 0.0)], {})) == []
    ingest.apply(OPCUA, [vm("bus5", 0.85)], {})
    r = ingest.apply(OPCUA, [vm("bus5", 0.02)], {})  # de-energized: the low-voltage alarm clears
    assert [(e.alarm, e.data[ALARM_KIND_KEY]) for e in alarms(r)] == [("clear", "VM_LOW")]


# -- deadband --------------------------------------------------------------------------------------


def test_deadband_suppresses_small_moves_but_keeps_the_newest_value(ingest: Ingest) -> None:
    p = pid("bus5", Quantity.VM_PU)
    assert ingest.points[p].deadband == pytest.approx(0.001)
    r = ingest.apply(OPCUA, [vm("bus5", 1.0)], {})
    [m] = measurements(r)
    assert m.element_id == "bus5"
    assert (m.data["point_id"], m.data["value"], m.data["quality"], m.data["unit"]) == (p, 1.0, "GOOD", "pu")

    assert measurements(ingest.apply(OPCUA, [vm("bus5", 1.0005)], {})) == []
    assert ingest.values[p].value == 1.0005
    assert ingest.good_value(p) == 1.0005
    # Moves add up against the value last published, not the last received.
    assert measurements(ingest.apply(OPCUA, [vm("bus5", 1.0009)], {})) == []
    [m] = measurements(ingest.apply(OPCUA, [vm("bus5", 1.0015)], {}))
    assert m.data["value"] == 1.0015

    # A quality change is always published, even with the value unchanged.
    [m] = measurements(ingest.apply(OPCUA, [vm("bus5", 1.0015, Quality.STALE)], {}))
    assert m.data["quality"] == "STALE"
    assert ingest.good_value(p) is None
    assert measurements(ingest.apply(OPCUA, [vm("bus5", 1.0015, Quality.STALE)], {})) == []
    [m] = measurements(ingest.apply(OPCUA, [vm("bus5", 1.0015)], {}))
    assert m.data["quality"] == "GOOD"
    assert ingest.ingested == 7


def test_rebinding_drops_old_values_and_publishes_again(ingest: Ingest) -> None:
    points = dict(ingest.points)
    ingest.apply(OPCUA, [vm("bus5", 1.0)], {})
    ingest.bind(points)
    assert ingest.values == {} and ingest.device_ok == {}
    assert len(measurements(ingest.apply(OPCUA, [vm("bus5", 1.0)], {}))) == 1
    ingest.unbind()
    assert ingest.points == {} and ingest.measurements() == []


def test_measurements_and_quality_counts(ingest: Ingest) -> None:
    ingest.apply(OPCUA, [vm("bus5", 1.0), vm("bus6", 0.99, Quality.STALE)], {})
    rows = {r["point_id"]: r for r in ingest.measurements()}
    assert rows[pid("bus5", Quantity.VM_PU)]["element_id"] == "bus5"
    assert rows[pid("bus6", Quantity.VM_PU)]["quality"] == "STALE"
    assert ingest.quality_counts() == {"GOOD": 1, "STALE": 1}


# -- power-flow violations -------------------------------------------------------------------------


def test_power_flow_violations_raise_and_clear(ingest: Ingest, feeder: Feeder) -> None:
    model = PowerFlowModel(feeder)
    tight = replace(feeder.limits, vm_min_pu=0.95)
    heavy = model.solve(limits=tight)
    assert heavy.converged and heavy.violations
    expected = {v.element_id for v in heavy.violations if str(v.kind) == "UNDERVOLTAGE"}
    assert "bus18" in expected

    events = ingest.check_violations(heavy)
    assert {e.element_id for e in alarms(events, "PF_UNDERVOLTAGE")} == expected
    assert all(e.alarm == "raise" and e.kind is EventKind.LIMIT_VIOLATION for e in events)
    ev = next(e for e in events if e.element_id == "bus18")
    assert ev.data["value"] == pytest.approx(next(v.value for v in heavy.violations if v.element_id == "bus18"))
    assert ev.data["limit"] == pytest.approx(0.95)
    assert ingest.check_violations(heavy) == []  # raised once

    light = model.solve(limits=tight, load_scale=0.2)
    assert light.converged and not light.violations
    events = ingest.check_violations(light)
    assert {e.element_id for e in events} == expected
    assert all(e.alarm == "clear" and e.kind is EventKind.ALARM_CLEARED for e in events)
    assert ingest.check_violations(light) == []


def test_a_device_answering_malformed_frames_raises_its_alarm_not_one_per_point(ingest: Ingest) -> None:
    """#17.18: a garbled answer makes every point of the device INVALID (a device fault, with the
    client's reason); the device's COMM_LOSS alarm names the defect, and no BAD_QUALITY per point."""
    from dataclasses import replace

    points = read_points_of(ingest, RTU1)
    assert alarms(ingest.apply(RTU1, [pv(p, False) for p in points], {})) == []
    why = f"device {RTU1!r}: malformed answer to COIL 0 x16 (byte count 1, expected 2)"
    garbled = [replace(pv(p, False, Quality.INVALID), reason=why, device_fault=True) for p in points]
    r = ingest.apply(RTU1, garbled, {})
    [ev] = alarms(r)
    assert (ev.kind, ev.data[ALARM_KIND_KEY], ev.alarm) == (EventKind.COMM_LOSS, "COMM_LOSS", "raise")
    assert "malformed answer" in ev.message and "INVALID" in ev.message
    assert ingest.device_ok[RTU1] is False
    assert {m["quality"] for m in ingest.measurements() if m["device_id"] == RTU1} == {"INVALID"}
    [ev] = alarms(ingest.apply(RTU1, [pv(p, False) for p in points], {}))
    assert (ev.kind, ev.alarm) == (EventKind.COMM_RESTORED, "clear")
    # an INVALID point of its own (a device exception for that register) is still a point alarm
    [ev] = alarms(ingest.apply(RTU1, [pv(points[0], None, Quality.INVALID, exception_code=2)], {}))
    assert ev.data[ALARM_KIND_KEY] == "BAD_QUALITY"
