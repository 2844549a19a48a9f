"""Ingest and alarm rules of one feeder: telemetry in, live values, events and alarms out.

A pure class (no awaits, no tasks, no Ray, no sockets): the host hands it each device's batch of
:class:`protocols.base.PointValue` and applies what comes back (:class:`IngestResult`): events to
queue (alarms raised or cleared), switch positions that changed (the host re-solves), and whether
protection indications changed (the applications, FDIR first, are told).

The rules:
- a device whose every point is ``COMM_LOST`` raises ``COMM_LOSS``; one good value clears it;
- an ``INVALID`` point raises ``BAD_QUALITY``; it clears when the point is ``GOOD`` again;
- a breaker or recloser that opens with no operate of ours in flight (:meth:`expect`) is a
  ``BREAKER_TRIP``; closing again clears it (a close we did not command is a reclose);
- fault indicators and meters' last gasps latch and clear with their flag;
- a measured bus voltage outside the feeder's band raises ``VM_LOW``/``VM_HIGH`` (below 0.1 pu the
  bus is de-energized, not in violation);
- power-flow violations raise ``PF_<kind>`` per element (:meth:`check_violations`);
- a ``MEASUREMENT`` event is published when the quality changes or the value moves beyond the
  point's deadband since the last value published (the newest value is always kept).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from actors.cores.events import ALARM_KIND_KEY, EventKind, Scalar, Severity
from actors.cores.powerflow import PowerFlowResult
from actors.cores.topology import TopologyGraph
from graph_schema.model import Feeder, Quantity, SwitchKind
from protocols.base import PointValue, Quality
from protocols.codecs import exceeds_deadband
from protocols.pointmap import Signal

UNITS = {"VM_PU": "pu", "P_MW": "MW", "Q_MVAR": "Mvar", "I_KA": "kA"}


@dataclass(frozen=True, slots=True)
class QueuedEvent:
    """An event for the outbox; ``alarm`` is "raise" or "clear" to update the alarm book."""

    kind: EventKind
    element_id: str | None
    message: str
    severity: Severity = Severity.INFO
    data: Mapping[str, Scalar] = field(default_factory=dict)
    durable: bool = False
    alarm: str = ""


def raise_alarm(kind: EventKind, element_id: str | None, alarm_kind: str, message: str,
                severity: Severity = Severity.ALARM, **data: Scalar) -> QueuedEvent:
    return QueuedEvent(kind, element_id, message, severity, {ALARM_KIND_KEY: alarm_kind, **data}, True, "raise")


def clear_alarm(element_id: str | None, alarm_kind: str, message: str,
                kind: EventKind = EventKind.ALARM_CLEARED) -> QueuedEvent:
    return QueuedEvent(kind, element_id, message, Severity.INFO, {ALARM_KIND_KEY: alarm_kind}, True, "clear")


@dataclass(frozen=True, slots=True)
class IngestResult:
    events: tuple[QueuedEvent, ...] = ()
    switch_changes: Mapping[str, bool] = field(default_factory=dict)  # switch id -> is_open, changed now
    state_changed: bool = False  # a switch position or a tap position changed
    indications_changed: bool = False  # a trip, a fault indicator or a last gasp was raised
    fault_cleared: bool = False  # the last latched fault indicator reset
    # switch id -> who commanded it ("" when not said), for the switch changes an operate of ours made
    commanded: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FieldFlags:
    """What protection and meters say now (read by FDIR through the ports)."""

    tripped: frozenset[str]
    reclosed: frozenset[str]
    fault_indicators: Mapping[str, bool | None]  # FI id -> latched (None: no good value)
    last_gasp: frozenset[str]


class Ingest:
    """Live telemetry of one feeder and the alarm rules over it. Not thread-safe (one event loop)."""

    def __init__(self, feeder: Feeder, graph: TopologyGraph | None = None) -> None:
        self.feeder = feeder
        self.ingested = 0
        self.values: dict[str, PointValue] = {}
        self.points: dict[str, Any] = {}  # point id -> protocols.pointmap.PointMapping
        self.device_ok: dict[str, bool] = {}
        self._reported: dict[str, PointValue] = {}  # last value published per point (deadband)
        self._switch_kind = {s.id: s.kind for s in feeder.switches}
        self._tripped: set[str] = set()
        self._reclosed: set[str] = set()
        self._fi_latched: set[str] = set()
        self._last_gasp: set[str] = set()
        self._vm_alarm: dict[str, str] = {}
        self._bad_points: set[str] = set()
        self._pf_violations: set[tuple[str, str]] = set()
        self._expect: dict[str, bool] = {}  # switch id -> is_open an operate in flight expects
        self._expect_by: dict[str, str] = {}  # switch id -> who sent that operate ("" when not said)
        graph = graph or TopologyGraph(feeder)
        normal = graph.process({sw.id: sw.normally_open for sw in feeder.switches})
        line_ids = {ln.id for ln in feeder.lines}
        self._line_down_bus = {br: b for b, (_, br) in normal.feeding_branch.items() if br in line_ids}
        self._line_up_bus = {br: up for _, (up, br) in normal.feeding_branch.items() if br in line_ids}
        self._fi_line = {fi.id: fi.line_id for fi in feeder.fault_indicators}

    # -- binding ---------------------------------------------------------------------------------

    def adopt(self, old: Ingest) -> None:
        """Carry the live memory of ``old`` (the same feeder before a model reload): values, raised
        alarms and flags, so that what was raised can still be cleared."""
        self.ingested = old.ingested
        self.points = dict(old.points)
        self.values = dict(old.values)
        self.device_ok = dict(old.device_ok)
        self._reported = dict(old._reported)
        self._tripped, self._reclosed = set(old._tripped), set(old._reclosed)
        self._fi_latched, self._last_gasp = set(old._fi_latched), set(old._last_gasp)
        self._vm_alarm, self._bad_points = dict(old._vm_alarm), set(old._bad_points)
        self._pf_violations, self._expect = set(old._pf_violations), dict(old._expect)
        self._expect_by = dict(old._expect_by)

    def bind(self, points: Mapping[str, Any]) -> None:
        """Use a new point map (point id -> mapping); values of the old one are dropped."""
        self.points = dict(points)
        self.values.clear()
        self._reported.clear()
        self.device_ok.clear()

    def unbind(self) -> None:
        self.bind({})

    # -- control in flight -----------------------------------------------------------------------

    def expect(self, switch_id: str, is_open: bool, by: str = "") -> None:
        """An operate of ours, sent by ``by`` (an operator or an application), is moving
        ``switch_id``: its opening is not a trip, and the change is reported as commanded by them."""
        self._expect[switch_id] = is_open
        self._expect_by[switch_id] = by

    def release(self, switch_id: str) -> None:
        self._expect.pop(switch_id, None)
        self._expect_by.pop(switch_id, None)

    def clear_reclosed(self) -> None:
        """FDIR consumed the reclose memory (the fault was declared cleared)."""
        self._reclosed.clear()

    # -- telemetry -------------------------------------------------------------------------------

    def apply(self, device_id: str, values: Sequence[PointValue], switch_states: Mapping[str, bool]) -> IngestResult:
        """One device's batch. ``switch_states`` is the host's live state (read, not changed)."""
        if not values:
            return IngestResult()
        events: list[QueuedEvent] = []
        switches: dict[str, bool] = {}
        state_changed = indications = cleared = False
        lost = any(_device_failed(pv) for pv in values)
        good = any(not _device_failed(pv) for pv in values)
        prev = self.device_ok.get(device_id)
        ok = True if good else (False if lost else prev)
        if ok is not None and ok != prev:
            self.device_ok[device_id] = ok
            if not ok:
                first = values[0]
                why = (f"answers with garbage ({first.reason}); its points are INVALID"
                       if first.quality is Quality.INVALID else "stopped answering; its points are COMM_LOST")
                events.append(raise_alarm(EventKind.COMM_LOSS, device_id, "COMM_LOSS",
                                          f"field device {device_id} {why}"))
            elif prev is False:
                events.append(clear_alarm(device_id, "COMM_LOSS", f"field device {device_id} answers again",
                                          kind=EventKind.COMM_RESTORED))
        for pv in values:
            p = self.points.get(pv.point_id)
            if p is None:
                continue
            self.ingested += 1
            self.values[pv.point_id] = pv
            old = self._reported.get(pv.point_id)
            if old is not None and old.quality is pv.quality and not exceeds_deadband(old.value, pv.value, p.deadband):
                continue
            self._reported[pv.point_id] = pv
            events.append(QueuedEvent(EventKind.MEASUREMENT, p.element_id, "", data={
                "point_id": pv.point_id, "quantity": str(p.quantity), "value": pv.value,
                "quality": str(pv.quality), "unit": UNITS.get(str(p.quantity), ""),
                "source_ts": pv.source_ts.isoformat() if pv.source_ts else None,
                "received_ts": pv.received_ts.isoformat(),
            }))
            if pv.quality is Quality.INVALID and _device_failed(pv):
                pass  # the device's own alarm (COMM_LOSS) speaks for all of its points
            elif pv.quality is Quality.INVALID and pv.point_id not in self._bad_points:
                self._bad_points.add(pv.point_id)
                events.append(raise_alarm(EventKind.ALARM, pv.point_id, "BAD_QUALITY",
                                          f"point {pv.point_id} is INVALID (device exception "
                                          f"{pv.exception_code} or value out of range)", severity=Severity.WARNING))
            elif pv.quality is Quality.GOOD and pv.point_id in self._bad_points:
                self._bad_points.discard(pv.point_id)
                events.append(clear_alarm(pv.point_id, "BAD_QUALITY", f"point {pv.point_id} is GOOD again"))
            if pv.quality is not Quality.GOOD or pv.value is None:
                continue
            kind, eid = p.quantity, p.element_id
            if kind is Quantity.STATUS:
                is_open = bool(pv.value)
                current = switches.get(eid, switch_states.get(eid))
                if current is None or current == is_open:
                    continue
                switches[eid] = is_open
                state_changed = True
                indications |= self._on_status(eid, is_open, events)
            elif kind in (Quantity.TAP_POS, Quantity.CAP_STEP):
                state_changed = True
            elif kind is Signal.FAULT:
                raised, reset = self._on_flag(self._fi_latched, eid, bool(pv.value), EventKind.FAULT_INDICATION,
                                              "FAULT_INDICATION", f"fault indicator {eid} latched",
                                              f"fault indicator {eid} reset", Severity.ALARM, events)
                indications |= raised
                cleared |= reset and not self._fi_latched
            elif kind is Signal.LAST_GASP:
                raised, _ = self._on_flag(self._last_gasp, eid, bool(pv.value), EventKind.LAST_GASP, "LAST_GASP",
                                          f"meter {eid} sent a last gasp (power lost)",
                                          f"meter {eid} has power again", Severity.WARNING, events)
                indications |= raised
            elif kind is Quantity.VM_PU:
                self._on_voltage(eid, float(pv.value), events)
        commanded = {sw: self._expect_by.get(sw, "") for sw, is_open in switches.items()
                     if self._expect.get(sw) is is_open}
        return IngestResult(tuple(events), switches, state_changed, indications, cleared, commanded)

    def _on_flag(self, active: set[str], eid: str, on: bool, kind: EventKind, alarm_kind: str, raise_msg: str,
                 clear_msg: str, severity: Severity, events: list[QueuedEvent]) -> tuple[bool, bool]:
        if on and eid not in active:
            active.add(eid)
            events.append(raise_alarm(kind, eid, alarm_kind, raise_msg, severity=severity))
            return True, False
        if not on and eid in active:
            active.discard(eid)
            events.append(clear_alarm(eid, alarm_kind, clear_msg))
            return False, True
        return False, False

    def _on_voltage(self, bus_id: str, vm_pu: float, events: list[QueuedEvent]) -> None:
        lim = self.feeder.limits
        want = None
        if vm_pu >= 0.1:  # below: de-energized, not a voltage violation
            if vm_pu < lim.vm_min_pu:
                want = "VM_LOW"
            elif vm_pu > lim.vm_max_pu:
                want = "VM_HIGH"
        have = self._vm_alarm.get(bus_id)
        if want == have:
            return
        if have is not None:
            del self._vm_alarm[bus_id]
            events.append(clear_alarm(bus_id, have, f"voltage at {bus_id} back within limits ({vm_pu:.3f} pu)"))
        if want is not None:
            self._vm_alarm[bus_id] = want
            band = f"{lim.vm_min_pu:g}-{lim.vm_max_pu:g} pu"
            events.append(raise_alarm(EventKind.LIMIT_VIOLATION, bus_id, want,
                                      f"measured voltage at {bus_id} is {vm_pu:.3f} pu, outside {band}",
                                      severity=Severity.WARNING, vm_pu=vm_pu))

    def _on_status(self, switch_id: str, is_open: bool, events: list[QueuedEvent]) -> bool:
        """A switch moved; returns True when that is a trip (a protection indication)."""
        kind = self._switch_kind.get(switch_id)
        if is_open and kind in (SwitchKind.BREAKER, SwitchKind.RECLOSER) and self._expect.get(switch_id) is not True:
            self._tripped.add(switch_id)
            events.append(raise_alarm(EventKind.BREAKER_TRIP, switch_id, "BREAKER_TRIP",
                                      f"{str(kind).lower()} {switch_id} opened without a command (trip)",
                                      severity=Severity.CRITICAL))
            return True
        if not is_open and switch_id in self._tripped:
            self._tripped.discard(switch_id)
            if self._expect.get(switch_id) is not False:  # closed by its own recloser, not by us
                self._reclosed.add(switch_id)
            events.append(clear_alarm(switch_id, "BREAKER_TRIP", f"{switch_id} is closed again"))
        return False

    def check_violations(self, pf: PowerFlowResult) -> list[QueuedEvent]:
        """Raise and clear ``PF_<kind>`` alarms for a new power-flow result."""
        events: list[QueuedEvent] = []
        now = {(str(v.kind), v.element_id): v for v in pf.violations} if pf.converged else {}
        for key in sorted(set(now) - self._pf_violations):
            v = now[key]
            events.append(raise_alarm(EventKind.LIMIT_VIOLATION, v.element_id, f"PF_{key[0]}",
                                      f"power flow: {key[0].lower()} at {v.element_id} ({v.value:.3f}, "
                                      f"limit {v.limit:g})", severity=Severity.WARNING, value=float(v.value),
                                      limit=float(v.limit)))
        for key in sorted(self._pf_violations - set(now)):
            events.append(clear_alarm(key[1], f"PF_{key[0]}", f"power flow: {key[0].lower()} at {key[1]} is gone"))
        self._pf_violations = set(now)
        return events

    # -- reads -----------------------------------------------------------------------------------

    def faulted_elements(self) -> frozenset[str]:
        """The section after the deepest latched fault indicators (lines out of it included)."""
        lines = {self._fi_line.get(fi, fi) for fi in self._fi_latched}
        deepest = {ln for ln in lines
                   if not any(self._line_up_bus.get(m) == self._line_down_bus.get(ln) for m in lines if m != ln)}
        out = set(deepest)
        for ln in deepest:
            down = self._line_down_bus.get(ln)
            out |= {m for m, up in self._line_up_bus.items() if down is not None and up == down}
        return frozenset(out)

    def field_flags(self) -> FieldFlags:
        fis: dict[str, bool | None] = {}
        for pid, p in self.points.items():
            if p.quantity is Signal.FAULT:
                pv = self.values.get(pid)
                good = pv is not None and pv.quality is Quality.GOOD and pv.value is not None
                fis[p.element_id] = bool(pv.value) if good else None  # type: ignore[union-attr]
        for fi in self._fi_latched:
            fis[fi] = True
        return FieldFlags(tripped=frozenset(self._tripped), reclosed=frozenset(self._reclosed),
                          fault_indicators=fis, last_gasp=frozenset(self._last_gasp))

    def good_value(self, point_id: str) -> float | bool | None:
        pv = self.values.get(point_id)
        return pv.value if pv is not None and pv.quality is Quality.GOOD else None

    def measurements(self) -> list[dict[str, Any]]:
        out = []
        for pid, pv in self.values.items():
            p = self.points.get(pid)
            if p is None:
                continue
            out.append({"point_id": pid, "element_id": p.element_id, "quantity": str(p.quantity),
                        "device_id": p.device_id, "value": pv.value, "quality": str(pv.quality),
                        "unit": UNITS.get(str(p.quantity), ""), "source_ts": pv.source_ts,
                        "received_ts": pv.received_ts})
        return out

    def quality_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for pv in self.values.values():
            out[str(pv.quality)] = out.get(str(pv.quality), 0) + 1
        return out


def _device_failed(pv: PointValue) -> bool:
    """A failure of the whole device: no answer (``COMM_LOST``), or an answer the client could not
    use at all (``INVALID`` with the client's ``reason``, e.g. a malformed Modbus frame)."""
    return pv.quality is Quality.COMM_LOST or (pv.quality is Quality.INVALID and pv.device_fault)
