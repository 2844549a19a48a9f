"""The feeder actor: one per feeder, owner of that feeder's live state.

A plain Python class (``actors/fleet.py`` is the only place that turns it into a Ray actor). It
loads its feeder and the recorded switch states from the graph store, keeps live state (switch
positions, load and DER values), runs topology processing and power flow through the pure cores
when that state changes, and answers queries. It never trusts memory it did not persist: after a
restart it rebuilds from the store.

Solves run in a worker thread (``asyncio.to_thread``) so the actor keeps answering pings while a
large feeder solves; one lock serializes state changes and solves.

Field binding (``attach_field``): one :class:`protocols.base.FieldClient` per device of the point
map; Modbus devices are polled every ``scan_interval_s`` (one serialized client each), OPC UA
devices push data changes through their subscription. Telemetry updates live state: the latest
value of every point with its quality and timestamps; switch STATUS changes the switch states (the
feeder is re-solved once per burst of changes, after ``debounce_s``, and the new state persisted);
fault indicators, last-gasp flags, measured voltages outside the feeder's limits, power-flow
violations, bad-quality points and devices that stop answering raise and clear alarms. A breaker
or recloser that opens without an operate of ours in flight is a BREAKER_TRIP.

Control (``select``/``operate``/``cancel``, ``set_tag``/``remove_tag``): the pure
:class:`actors.control.ControlCore` decides; an accepted operate is written ONCE through the
device's client and confirmed by telemetry within ``confirm_timeout_s``. Nothing is retried.
Each operate (also refused ones) is persisted as a ``ControlAction`` record, tags as ``Tag``
records (reloaded after a restart); every step is an event.

Events go to the cluster's event bus through an :class:`EventSink` (``actors/fleet.py`` supplies
the Ray one), batched every ``flush_interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import time
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from actors.control import ControlAction, ControlCore, DeviceUnreachable, NotConfirmed, Tag, TagKind, expected_state
from actors.events import ALARM_KIND_KEY, Alarm, AlarmBook, Event, EventKind, Scalar, Severity, parse_alarm_id
from actors.fdir import Indications
from actors.fdir_engine import FdirEngine, FdirMode, FdirPorts, FdirStatus, PlanStatus
from actors.outages import Outage, store_record
from actors.powerflow import PowerFlowModel, PowerFlowResult
from actors.topology import TopologyGraph, TopologyResult
from graph_schema.errors import BadInput, DmsError, NotFound
from graph_schema.model import Der, Feeder, Quantity, SwitchKind, Transformer
from graph_schema.secret import Secret
from graph_schema.store import GraphStore

log = logging.getLogger(__name__)
DETACH_TIMEOUT_S = 5.0  # field tasks and connections get this long to stop when the feeder is detached


@dataclass(frozen=True, slots=True)
class StoreAddress:
    """How an actor reaches the graph store (it opens its own driver on its own event loop)."""

    uri: str
    user: str
    password: Secret
    database: str | None


@dataclass(frozen=True, slots=True)
class FeederState:
    """The live part of a feeder, versioned: ``version`` grows with every change."""

    feeder_id: str
    version: int
    switch_states: Mapping[str, bool]
    load_scale: float
    topology: TopologyResult
    power_flow: PowerFlowResult
    updated_at: float = field(default_factory=time.time)


@dataclass(frozen=True, slots=True)
class ActorOptions:
    """Timing of one feeder actor (from :class:`server.settings.Settings`)."""

    scan_interval_s: float = 1.0
    select_timeout_s: float = 10.0
    confirm_timeout_s: float = 5.0
    flush_interval_s: float = 0.02  # events are batched this long before going to the bus
    debounce_s: float = 0.05  # switch changes within this window cause one re-solve
    modbus_timeout_s: float = 1.0
    opcua_publishing_interval_ms: float = 100.0
    backoff_max_s: float = 2.0  # reconnect back-off cap of the field clients
    fdir_mode: str = "ADVISORY"  # default FDIR mode; fdir_modes overrides it per feeder
    fdir_modes: tuple[tuple[str, str], ...] = ()
    fdir_settle_s: float = 2.0  # wait after the first indication for the rest to arrive


class EventSink(Protocol):
    async def publish(self, events: Sequence[Event]) -> list[int]: ...


class LocalEventSink:
    """Numbers events locally (tests and single-process use without the bus)."""

    def __init__(self) -> None:
        self.events: list[Event] = []

    async def publish(self, events: Sequence[Event]) -> list[int]:
        out = []
        for ev in events:
            self.events.append(replace(ev, seq=len(self.events) + 1))
            out.append(len(self.events))
        return out


UNITS = {"VM_PU": "pu", "P_MW": "MW", "Q_MVAR": "Mvar", "I_KA": "kA"}
ALARM_EVENT_KINDS = frozenset({
    EventKind.ALARM, EventKind.ALARM_CLEARED, EventKind.ALARM_ACKNOWLEDGED, EventKind.BREAKER_TRIP,
    EventKind.FAULT_INDICATION, EventKind.LAST_GASP, EventKind.COMM_LOSS, EventKind.COMM_RESTORED,
    EventKind.LIMIT_VIOLATION,
})


def _portable(exc: DmsError) -> DmsError:
    """The same error as a plain :class:`DmsError` (code, message, element id kept).

    Control errors take structured constructor arguments, which pickling (Ray) cannot replay."""
    if type(exc) in (DmsError, NotFound, BadInput):
        return exc
    return DmsError(exc.message, element_id=exc.element_id, code=exc.code)


@contextlib.contextmanager
def _portable_errors() -> Iterator[None]:
    try:
        yield
    except DmsError as exc:
        plain = _portable(exc)
        if plain is exc:
            raise
        raise plain from None


class FeederActor:
    def __init__(self, feeder_id: str, store: StoreAddress, options: ActorOptions | None = None,
                 events: EventSink | None = None) -> None:
        self.feeder_id = feeder_id
        self._store_address = store
        self._opts = options or ActorOptions()
        self._sink: EventSink = events if events is not None else LocalEventSink()
        # field binding and live telemetry
        self._pm: Any = None  # protocols.pointmap.PointMap
        self._pm_by_id: dict[str, Any] = {}
        self._clients: dict[str, Any] = {}
        self._field_tasks: list[asyncio.Task[None]] = []
        self._values: dict[str, Any] = {}  # point id -> PointValue
        self._device_ok: dict[str, bool] = {}
        self.ingested = 0
        self._telemetry_changed = asyncio.Event()
        # alarms and events
        self._alarms = AlarmBook()
        self._cleared: deque[Alarm] = deque(maxlen=500)
        self._pending: list[tuple[Event, str]] = []  # (event, "raise"|"clear"|"")
        self._pending_wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._tripped: set[str] = set()
        self._reclosed: set[str] = set()
        self._fdir: FdirEngine | None = None
        self._fdir_tasks: set[asyncio.Task[Any]] = set()
        self._fi_latched: set[str] = set()
        self._last_gasp: set[str] = set()
        self._vm_alarm: dict[str, str] = {}
        self._bad_points: set[str] = set()
        self._pf_violations: set[tuple[str, str]] = set()
        # switch changes from telemetry waiting for the debounced re-solve
        self._dirty_switches: set[str] = set()
        self._resolver: asyncio.Task[None] | None = None
        # control
        self._core: ControlCore | None = None
        self._expect: dict[str, bool] = {}  # switch id -> is_open an operate in flight expects
        self._fi_line: dict[str, str] = {}
        self._line_down_bus: dict[str, str] = {}
        self._line_up_bus: dict[str, str] = {}
        self._store: GraphStore | None = None
        self._feeder: Feeder | None = None
        self._pf: PowerFlowModel | None = None
        self._topo_graph: TopologyGraph | None = None
        self._switch_states: dict[str, bool] = {}
        self._load_scale = 1.0
        self._state: FeederState | None = None
        self._version = 0
        self._lock = asyncio.Lock()
        self._started_at = time.time()

    # -- lifecycle -------------------------------------------------------------------------------

    async def _ready(self) -> None:
        """Load from the store on first use (also after Ray restarted this actor)."""
        if self._state is not None:
            return
        async with self._lock:
            if self._state is not None:
                return
            await self._load()

    async def _load(self) -> None:
        if self._store is None:
            a = self._store_address
            self._store = await GraphStore.connect(a.uri, a.user, a.password, a.database)
        feeder = await self._store.load_feeder(self.feeder_id)
        states = await self._store.switch_states(self.feeder_id)
        self._feeder = feeder
        self._switch_states = dict(states)
        self._pf = await asyncio.to_thread(PowerFlowModel, feeder)
        self._topo_graph = TopologyGraph(feeder)
        self._core = ControlCore(feeder, select_timeout_s=self._opts.select_timeout_s)
        self._core.load_tags(await self._load_tags())
        normal = self._topo_graph.process({sw.id: sw.normally_open for sw in feeder.switches})
        line_ids = {ln.id for ln in feeder.lines}
        self._line_down_bus = {br: b for b, (_, br) in normal.feeding_branch.items() if br in line_ids}
        self._line_up_bus = {br: up for _, (up, br) in normal.feeding_branch.items() if br in line_ids}
        self._fi_line = {fi.id: fi.line_id for fi in feeder.fault_indicators}
        await self._resolve()
        await self._start_fdir(feeder)
        log.info("feeder %s loaded: %d buses, %d switches", self.feeder_id, len(feeder.buses), len(feeder.switches))

    async def _resolve(self) -> FeederState:
        assert self._pf is not None and self._topo_graph is not None
        states = dict(self._switch_states)
        scale = self._load_scale
        topology = self._topo_graph.process(states)
        result = await asyncio.to_thread(self._pf.solve, switch_states=states, load_scale=scale)
        self._version += 1
        self._state = FeederState(
            feeder_id=self.feeder_id,
            version=self._version,
            switch_states=states,
            load_scale=scale,
            topology=topology,
            power_flow=result,
        )
        return self._state

    async def reload(self) -> int:
        """Drop everything held in memory and rebuild from the store (after an import, say)."""
        async with self._lock:
            self._state = None
            await self._load()
            assert self._state is not None
            return self._state.version

    async def close(self) -> None:
        for task in list(self._fdir_tasks):
            task.cancel()
        if self._fdir is not None:
            await self._fdir.aclose()
        await self.detach_field()
        if self._flusher is not None:
            await self._flush_now()
            self._flusher.cancel()
            await asyncio.wait({self._flusher}, timeout=DETACH_TIMEOUT_S)
            self._flusher = None
        if self._store is not None:
            await self._store.close()
            self._store = None

    # -- queries ---------------------------------------------------------------------------------

    async def ping(self) -> dict[str, object]:
        await self._ready()
        assert self._state is not None
        return {
            "feeder_id": self.feeder_id,
            "version": self._state.version,
            "started_at": self._started_at,
            "pid": os.getpid(),
        }

    async def model(self) -> Feeder:
        await self._ready()
        assert self._feeder is not None
        return self._feeder

    async def state(self) -> FeederState:
        await self._ready()
        assert self._state is not None
        return self._state

    async def power_flow(self, *, fresh: bool = False) -> PowerFlowResult:
        """The latest result; ``fresh=True`` solves again now (what the benchmark measures)."""
        await self._ready()
        if fresh:
            async with self._lock:
                return (await self._resolve()).power_flow
        assert self._state is not None
        return self._state.power_flow

    # -- state changes ---------------------------------------------------------------------------

    async def set_switch_state(self, switch_id: str, is_open: bool, *, persist: bool = True) -> FeederState:
        """Record a switch position (from telemetry or a confirmed control) and re-solve."""
        await self._ready()
        assert self._feeder is not None and self._store is not None
        if switch_id not in self._switch_states:
            raise NotFound(
                f"switch {switch_id!r} is not on feeder {self.feeder_id!r}; query feeder.switches for its ids",
                element_id=switch_id,
            )
        async with self._lock:
            if persist:
                await self._store.set_switch_state(self.feeder_id, switch_id, is_open)
            self._switch_states[switch_id] = is_open
            return await self._resolve()

    async def set_load_scale(self, scale: float) -> FeederState:
        await self._ready()
        if not (0.0 <= scale <= 10.0):
            raise BadInput(f"load scale {scale} is out of range; use a factor between 0 and 10")
        async with self._lock:
            self._load_scale = scale
            return await self._resolve()


    # -- events and alarms -----------------------------------------------------------------------

    def _event(self, kind: EventKind, element_id: str | None, message: str, *, severity: Severity = Severity.INFO,
               data: Mapping[str, Scalar] | None = None, durable: bool = False, alarm: str = "") -> None:
        """Queue an event for the bus; ``alarm`` is "raise" or "clear" to update the alarm book."""
        ev = Event(seq=0, kind=kind, feeder_id=self.feeder_id, element_id=element_id, severity=severity,
                   message=message, at=datetime.now(UTC), data=data or {}, durable=durable)
        self._pending.append((ev, alarm))
        self._pending_wake.set()
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_loop(), name=f"events {self.feeder_id}")

    def _raise_alarm(self, kind: EventKind, element_id: str | None, alarm_kind: str, message: str,
                     severity: Severity = Severity.ALARM, **data: Scalar) -> None:
        self._event(kind, element_id, message, severity=severity, durable=True, alarm="raise",
                    data={ALARM_KIND_KEY: alarm_kind, **data})

    def _clear_alarm(self, element_id: str | None, alarm_kind: str, message: str,
                     kind: EventKind = EventKind.ALARM_CLEARED) -> None:
        self._event(kind, element_id, message, durable=True, alarm="clear", data={ALARM_KIND_KEY: alarm_kind})

    async def _flush_loop(self) -> None:
        while True:
            await self._pending_wake.wait()
            await asyncio.sleep(self._opts.flush_interval_s)
            await self._flush_now()

    async def _flush_now(self) -> None:
        self._pending_wake.clear()
        batch, self._pending = self._pending, []
        if not batch:
            return
        try:
            seqs = await self._sink.publish([ev for ev, _ in batch])
        except Exception:
            log.exception("feeder %s: %d events could not reach the event bus", self.feeder_id, len(batch))
            seqs = [0] * len(batch)
        for (ev, alarm), seq in zip(batch, seqs, strict=True):
            ev = replace(ev, seq=seq)
            if alarm == "raise":
                self._alarms.raise_(ev)
            elif alarm == "clear":
                key = AlarmBook.key_of(ev)
                old = self._alarms.get(key)
                if self._alarms.clear(key) and old is not None:
                    self._cleared.append(old)

    async def flush_events(self) -> int:
        """Send queued events now (tests); returns how many alarms are active."""
        await self._flush_now()
        return len(self._alarms)

    # -- field binding ---------------------------------------------------------------------------

    async def attach_field(self, point_map_json: str, data_dir: str | None = None,
                           allow_nosecurity: bool = False, pki_dir: str | None = None) -> dict[str, int]:
        """Bind the feeder to its field devices (replacing an earlier binding) and start scanning."""
        from protocols.base import make_field_client
        from protocols.pointmap import PointMap, ProtocolKind

        await self._ready()
        pm = PointMap.from_json(point_map_json, self._feeder)
        if pki_dir is not None and any(d.protocol is ProtocolKind.OPCUA for d in pm.devices):
            from protocols.certs import load_client_pki

            load_client_pki(pki_dir)  # refused before the old binding is dropped: nothing half-attached
        await self.detach_field()
        self._pm = pm
        self._pm_by_id = {p.point_id: p for p in pm.points}
        o = self._opts
        for dev in pm.devices:
            points = pm.points_of(dev.device_id)
            if dev.protocol is ProtocolKind.MODBUS:
                client = make_field_client(dev, points, timeout_s=o.modbus_timeout_s, backoff_max_s=o.backoff_max_s)
                self._clients[dev.device_id] = client
                self._field_tasks.append(asyncio.create_task(self._poll(dev.device_id, client),
                                                             name=f"poll {dev.device_id}"))
            else:
                client = make_field_client(dev, points, data_dir=data_dir, pki_dir=pki_dir,
                                           allow_nosecurity=allow_nosecurity,
                                           publishing_interval_ms=o.opcua_publishing_interval_ms,
                                           backoff_max_s=o.backoff_max_s)
                self._clients[dev.device_id] = client
                client.subscribe(lambda values, d=dev.device_id, c=client: self._bound(d, c) and self._apply(d, values))
                self._field_tasks.append(asyncio.create_task(self._connect_opcua(dev.device_id, client),
                                                             name=f"connect {dev.device_id}"))
        log.info("feeder %s attached to %d field devices (%d points)", self.feeder_id, len(pm.devices),
                 len(pm.points))
        return {"devices": len(pm.devices), "points": len(pm.points)}

    async def detach_field(self) -> None:
        """Stop scanning and close every field connection, in bounded time.

        A protocol library that swallows a cancellation (or a device that never answers a close)
        must not hang the actor: whatever has not stopped after ``DETACH_TIMEOUT_S`` is logged with
        its stack and left to finish on its own, and the binding is dropped regardless.
        """
        tasks, self._field_tasks = self._field_tasks, []
        clients, self._clients = self._clients, {}
        self._pm = None
        self._pm_by_id = {}
        for t in tasks:
            t.cancel()
        closers = [asyncio.create_task(c.close(), name=f"close {d}") for d, c in clients.items()]
        pending = [*tasks, *closers]
        if pending:
            _, stuck = await asyncio.wait(pending, timeout=DETACH_TIMEOUT_S)
            for t in stuck:
                stack = io.StringIO()
                t.print_stack(limit=8, file=stack)
                log.warning("feeder %s: %s did not stop within %.0f s and is left behind; it was at:\n%s",
                            self.feeder_id, t.get_name(), DETACH_TIMEOUT_S, stack.getvalue())
                t.cancel()
            for t in pending:
                if t.done() and not t.cancelled() and t.exception() is not None:
                    log.info("feeder %s: %s ended with %r", self.feeder_id, t.get_name(), t.exception())
        self._values.clear()
        self._device_ok.clear()

    def _bound(self, device_id: str, client: Any) -> bool:
        """Whether ``client`` is still the device's client. A scan task of an earlier binding that
        outlived its cancellation (a library that swallowed it) must not write into live state."""
        return self._clients.get(device_id) is client

    async def _poll(self, device_id: str, client: Any) -> None:
        loop = asyncio.get_running_loop()
        while self._bound(device_id, client):
            t0 = loop.time()
            try:
                values = await client.read_points()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("feeder %s: scan of %s failed", self.feeder_id, device_id)
                values = []
            if values and self._bound(device_id, client):
                self._apply(device_id, values)
            await asyncio.sleep(max(0.0, self._opts.scan_interval_s - (loop.time() - t0)))

    async def _connect_opcua(self, device_id: str, client: Any) -> None:
        """Connect once; the client's own supervisor reconnects after a later loss."""
        from protocols.base import ProtocolError

        delay = 0.5
        while self._bound(device_id, client):
            try:
                await client.connect()
                return
            except asyncio.CancelledError:
                raise
            except (ProtocolError, OSError, TimeoutError) as exc:
                log.info("feeder %s: OPC UA device %s not reachable (%s); retry in %.1f s", self.feeder_id,
                         device_id, exc, delay)
                values = await client.read_points()
                if self._bound(device_id, client):
                    self._apply(device_id, values)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._opts.backoff_max_s)

    def _apply(self, device_id: str, values: Sequence[Any]) -> None:
        """Telemetry of one device into live state, events and alarms (synchronous: no awaits)."""
        from protocols.base import Quality
        from protocols.pointmap import Signal

        if self._feeder is None or not values:
            return
        lost = any(pv.quality is Quality.COMM_LOST for pv in values)
        good = any(pv.quality is not Quality.COMM_LOST for pv in values)
        prev = self._device_ok.get(device_id)
        ok = True if good else (False if lost else prev)
        if ok is not None and ok != prev:
            self._device_ok[device_id] = ok
            if not ok:
                self._raise_alarm(EventKind.COMM_LOSS, device_id, "COMM_LOSS",
                                  f"field device {device_id} stopped answering; its points are COMM_LOST")
            elif prev is False:
                self._clear_alarm(device_id, "COMM_LOSS", f"field device {device_id} answers again",
                                  kind=EventKind.COMM_RESTORED)
        changed_state = False
        for pv in values:
            p = self._pm_by_id.get(pv.point_id)
            if p is None:
                continue
            self.ingested += 1
            old = self._values.get(pv.point_id)
            self._values[pv.point_id] = pv
            if old is not None and old.value == pv.value and old.quality is pv.quality:
                continue
            self._event(EventKind.MEASUREMENT, p.element_id, "", data={
                "point_id": pv.point_id, "quantity": str(p.quantity), "value": pv.value,
                "quality": str(pv.quality), "unit": UNITS.get(str(p.quantity), ""),
                "source_ts": pv.source_ts.isoformat() if pv.source_ts else None,
                "received_ts": pv.received_ts.isoformat(),
            })
            if pv.quality is Quality.INVALID and pv.point_id not in self._bad_points:
                self._bad_points.add(pv.point_id)
                self._raise_alarm(EventKind.ALARM, pv.point_id, "BAD_QUALITY",
                                  f"point {pv.point_id} is INVALID (device exception "
                                  f"{pv.exception_code} or value out of range)", severity=Severity.WARNING)
            elif pv.quality is Quality.GOOD and pv.point_id in self._bad_points:
                self._bad_points.discard(pv.point_id)
                self._clear_alarm(pv.point_id, "BAD_QUALITY", f"point {pv.point_id} is GOOD again")
            if pv.quality is not Quality.GOOD or pv.value is None:
                continue
            kind, eid = p.quantity, p.element_id
            if kind is Quantity.STATUS:
                changed_state |= self._on_status(eid, bool(pv.value))
            elif kind is Quantity.TAP_POS:
                changed_state = True
            elif kind is Signal.FAULT:
                self._on_flag(self._fi_latched, eid, bool(pv.value), EventKind.FAULT_INDICATION, "FAULT_INDICATION",
                              f"fault indicator {eid} latched", f"fault indicator {eid} reset", Severity.ALARM)
            elif kind is Signal.LAST_GASP:
                self._on_flag(self._last_gasp, eid, bool(pv.value), EventKind.LAST_GASP, "LAST_GASP",
                              f"meter {eid} sent a last gasp (power lost)", f"meter {eid} has power again",
                              Severity.WARNING)
            elif kind is Quantity.VM_PU:
                self._on_voltage(eid, float(pv.value))
        if changed_state:
            changed, self._telemetry_changed = self._telemetry_changed, asyncio.Event()
            changed.set()

    def _on_flag(self, active: set[str], eid: str, on: bool, kind: EventKind, alarm_kind: str, raise_msg: str,
                 clear_msg: str, severity: Severity) -> None:
        if on and eid not in active:
            active.add(eid)
            self._raise_alarm(kind, eid, alarm_kind, raise_msg, severity=severity)
            self._fdir_kick()
        elif not on and eid in active:
            active.discard(eid)
            self._clear_alarm(eid, alarm_kind, clear_msg)
            if kind is EventKind.FAULT_INDICATION and not self._fi_latched:
                self._fdir_spawn(self._fdir_fault_cleared())

    def _on_voltage(self, bus_id: str, vm_pu: float) -> None:
        assert self._feeder is not None
        lim = self._feeder.limits
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
            self._clear_alarm(bus_id, have, f"voltage at {bus_id} back within limits ({vm_pu:.3f} pu)")
        if want is not None:
            self._vm_alarm[bus_id] = want
            band = f"{lim.vm_min_pu:g}-{lim.vm_max_pu:g} pu"
            self._raise_alarm(EventKind.LIMIT_VIOLATION, bus_id, want,
                              f"measured voltage at {bus_id} is {vm_pu:.3f} pu, outside {band}",
                              severity=Severity.WARNING, vm_pu=vm_pu)

    def _on_status(self, switch_id: str, is_open: bool) -> bool:
        assert self._feeder is not None
        if switch_id not in self._switch_states or self._switch_states[switch_id] == is_open:
            return False
        self._switch_states[switch_id] = is_open
        kind = next((s.kind for s in self._feeder.switches if s.id == switch_id), None)
        if is_open and kind in (SwitchKind.BREAKER, SwitchKind.RECLOSER) and self._expect.get(switch_id) is not True:
            self._tripped.add(switch_id)
            self._raise_alarm(EventKind.BREAKER_TRIP, switch_id, "BREAKER_TRIP",
                              f"{str(kind).lower()} {switch_id} opened without a command (trip)",
                              severity=Severity.CRITICAL)
            self._fdir_kick()
        elif not is_open and switch_id in self._tripped:
            self._tripped.discard(switch_id)
            if self._expect.get(switch_id) is not False:  # closed by its own recloser, not by us
                self._reclosed.add(switch_id)
            self._clear_alarm(switch_id, "BREAKER_TRIP", f"{switch_id} is closed again")
        self._dirty_switches.add(switch_id)
        if self._resolver is None or self._resolver.done():
            self._resolver = asyncio.create_task(self._resolve_after_changes(), name=f"resolve {self.feeder_id}")
        return True

    async def _resolve_after_changes(self) -> None:
        await asyncio.sleep(self._opts.debounce_s)
        async with self._lock:
            dirty, self._dirty_switches = self._dirty_switches, set()
            assert self._store is not None
            for sw in sorted(dirty):
                try:
                    await self._store.set_switch_state(self.feeder_id, sw, self._switch_states[sw])
                except DmsError:
                    log.warning("feeder %s: could not persist the state of %s", self.feeder_id, sw, exc_info=True)
            state = await self._resolve()
        topo = state.topology
        self._event(EventKind.TOPOLOGY_CHANGE, None, f"switches changed: {', '.join(sorted(dirty))}", durable=True,
                    data={"switches": ",".join(sorted(dirty)), "version": state.version,
                          "energized_buses": len(topo.energized_bus_ids),
                          "deenergized_buses": len(topo.deenergized_bus_ids),
                          "open_switches": ",".join(sorted(s for s, o in state.switch_states.items() if o))})
        self._check_violations(state.power_flow)

    def _check_violations(self, pf: PowerFlowResult) -> None:
        now = {(str(v.kind), v.element_id): v for v in pf.violations} if pf.converged else {}
        for key in sorted(set(now) - self._pf_violations):
            v = now[key]
            self._raise_alarm(EventKind.LIMIT_VIOLATION, v.element_id, f"PF_{key[0]}",
                              f"power flow: {key[0].lower()} at {v.element_id} ({v.value:.3f}, limit {v.limit:g})",
                              severity=Severity.WARNING, value=float(v.value), limit=float(v.limit))
        for key in sorted(self._pf_violations - set(now)):
            self._clear_alarm(key[1], f"PF_{key[0]}", f"power flow: {key[0].lower()} at {key[1]} is gone")
        self._pf_violations = set(now)

    def _faulted_elements(self) -> frozenset[str]:
        """The section after the deepest latched fault indicators (lines out of it included)."""
        lines = {self._fi_line.get(fi, fi) for fi in self._fi_latched}
        deepest = {ln for ln in lines
                   if not any(self._line_up_bus.get(m) == self._line_down_bus.get(ln) for m in lines if m != ln)}
        out = set(deepest)
        for ln in deepest:
            down = self._line_down_bus.get(ln)
            out |= {m for m, up in self._line_up_bus.items() if down is not None and up == down}
        return frozenset(out)

    # -- telemetry queries -----------------------------------------------------------------------

    async def measurements(self) -> list[dict[str, Any]]:
        """The latest value of every telemetered point, with quality and timestamps."""
        await self._ready()
        out = []
        for pid, pv in self._values.items():
            p = self._pm_by_id.get(pid)
            if p is None:
                continue
            out.append({"point_id": pid, "element_id": p.element_id, "quantity": str(p.quantity),
                        "device_id": p.device_id, "value": pv.value, "quality": str(pv.quality),
                        "unit": UNITS.get(str(p.quantity), ""), "source_ts": pv.source_ts,
                        "received_ts": pv.received_ts})
        return out

    async def field_status(self) -> dict[str, Any]:
        await self._ready()
        return {"attached": self._pm is not None, "devices": dict(self._device_ok), "ingested": self.ingested,
                "points": len(self._values)}

    async def alarms(self, active: bool | None = True) -> list[Alarm]:
        await self._ready()
        out: list[Alarm] = []
        if active is not False:
            out += self._alarms.active()
        if active is not True:
            out += list(reversed(self._cleared))
        return out

    async def acknowledge_alarm(self, alarm_id: str, by: str) -> Alarm:
        """An operator takes on an active alarm (``alarm_id`` as :func:`alarm_id` makes it)."""
        await self._ready()
        key = parse_alarm_id(alarm_id)
        if key[0] != self.feeder_id:
            raise NotFound(f"alarm {alarm_id!r} is not on feeder {self.feeder_id!r}; list its alarms for their ids",
                           element_id=alarm_id)
        alarm = self._alarms.acknowledge(key, by)
        self._event(EventKind.ALARM_ACKNOWLEDGED, alarm.element_id, f"{alarm.kind} acknowledged by {by}",
                    durable=True, data={ALARM_KIND_KEY: alarm.kind, "by": by})
        return alarm

    # -- control ---------------------------------------------------------------------------------

    async def _load_tags(self) -> list[Tag]:
        assert self._store is not None
        rows = await self._store.list_records("Tag", feeder_id=self.feeder_id, where={"active": True}, limit=10_000)
        return [Tag(id=str(r["tag_id"]), device_id=str(r["device_id"]), kind=TagKind(r["kind"]),
                    reason=str(r["reason"]), set_by=str(r["set_by"]), set_at=datetime.fromisoformat(r["set_at"]))
                for r in rows]

    def has_device(self, device_id: str) -> bool:
        return self._core is not None and device_id in self._core._devices

    async def devices(self) -> list[str]:
        await self._ready()
        assert self._core is not None
        return sorted(self._core._devices)

    async def select(self, device_id: str, action: str, value: float | None, operator: str) -> dict[str, Any]:
        await self._ready()
        assert self._core is not None
        with _portable_errors():
            sel = self._core.select(device_id, action, value, operator, switch_states=self._switch_states,
                                    faulted_elements=self._faulted_elements())
        self._event(EventKind.CONTROL, device_id, f"{operator} selected {device_id} for {sel.action}", durable=True,
                    data={"phase": "SELECTED", "action": str(sel.action), "value": sel.value, "operator": operator})
        return {"id": sel.id, "expires_at": sel.expires_at_utc, "device_id": device_id, "action": str(sel.action),
                "value": sel.value}

    async def cancel(self, selection_id: str, operator: str) -> dict[str, Any]:
        await self._ready()
        assert self._core is not None
        sel = next((s for s in self._core.selections() if s.id == selection_id), None)
        with _portable_errors():
            self._core.cancel(selection_id, operator)
        assert sel is not None
        self._event(EventKind.CONTROL, sel.device_id, f"{operator} cancelled the selection of {sel.device_id}",
                    durable=True, data={"phase": "CANCELLED", "action": str(sel.action), "operator": operator})
        return {"device_id": sel.device_id, "action": str(sel.action), "value": sel.value}

    def owns_selection(self, selection_id: str) -> bool:
        return self._core is not None and any(s.id == selection_id for s in self._core.selections())

    async def operate(self, selection_id: str, device_id: str, action: str, value: float | None,
                      operator: str) -> dict[str, Any]:
        """Operate a selection: sent ONCE, confirmed by telemetry. Refusals raise (nothing sent)."""
        await self._ready()
        assert self._core is not None
        started = datetime.now(UTC)
        try:
            sel = self._core.operate(selection_id, device_id, action, value, operator,
                                     switch_states=self._switch_states, faulted_elements=self._faulted_elements())
        except DmsError as exc:
            await self._record_control(device_id, str(action), value, operator, "REFUSED", exc.code, exc.message,
                                       started)
            raise _portable(exc) from None
        self._event(EventKind.CONTROL, device_id, f"{operator} operates {device_id}: {sel.action}", durable=True,
                    data={"phase": "OPERATE_SENT", "action": str(sel.action), "value": sel.value, "operator": operator})
        status, code, message = await self._execute(sel.device_id, sel.action, sel.value)
        await self._record_control(device_id, str(sel.action), sel.value, operator, status, code, message, started)
        return {"status": status, "code": code, "message": message, "device_id": device_id,
                "action": str(sel.action), "value": sel.value}

    async def _record_control(self, device_id: str, action: str, value: float | None, operator: str, status: str,
                              code: str | None, message: str, started: datetime) -> None:
        record = {"device_id": device_id, "action": action, "value": value, "operator": operator, "status": status,
                  "code": code, "message": message, "requested_at": started.isoformat(),
                  "completed_at": datetime.now(UTC).isoformat()}
        try:
            assert self._store is not None
            await self._store.append_record("ControlAction", record, feeder_id=self.feeder_id)
        except DmsError:
            log.error("feeder %s: control record of %s could not be persisted: %s", self.feeder_id, device_id,
                      record, exc_info=True)
        severity = Severity.INFO if status in ("CONFIRMED", "ACCEPTED") else Severity.WARNING
        self._event(EventKind.CONTROL, device_id, f"{action} of {device_id}: {status}" + (f" ({code})" if code else ""),
                    severity=severity, durable=True,
                    data={"phase": "RESULT", "action": action, "value": value, "operator": operator, "status": status,
                          "code": code})

    async def _execute(self, device_id: str, action: ControlAction, value: float | None) -> tuple[str, str | None, str]:
        """Write the command once and wait for telemetry: (status, code, message)."""
        from protocols.base import DeviceRejected, ProtocolError
        from protocols.pointmap import CommandKind, point_id

        assert self._feeder is not None
        device = self._core._devices[device_id] if self._core is not None else None
        expect_open: bool | None = None
        target_tap: float | None = None
        command_value: float | bool = True
        if isinstance(device, Der):
            cmd = CommandKind.SET_P_MW
            command_value = float(value or 0.0)
        elif isinstance(device, Transformer):
            cmd = CommandKind.SET_TAP
            current = self._tap_position(device_id)
            if action is ControlAction.SET:
                target_tap = float(value or 0.0)
            elif current is None:
                return "FAILED", "DEVICE_UNREACHABLE", f"no tap position telemetry for {device_id}; use SET"
            else:
                target_tap = current + (1 if action is ControlAction.RAISE else -1)
            command_value = target_tap
        elif action in (ControlAction.OPEN, ControlAction.CLOSE):
            cmd = CommandKind(str(action))
            expect_open = expected_state(action)
        else:
            return "FAILED", "DEVICE_UNREACHABLE", f"{device_id} has no command point for {action}"
        pid = point_id(self.feeder_id, device_id, cmd)
        p = self._pm_by_id.get(pid)
        client = self._clients.get(p.device_id) if p is not None else None
        if p is None or client is None:
            return ("FAILED", "DEVICE_UNREACHABLE",
                    f"{device_id} has no field binding for {cmd}; nothing was sent (attach its point map)")
        is_switch = expect_open is not None
        if is_switch:
            self._expect[device_id] = bool(expect_open)
        try:
            try:
                await client.write_command(pid, command_value)
            except DeviceRejected as exc:
                return "FAILED", "DEVICE_UNREACHABLE", f"{exc.message} (not retried)"
            except ProtocolError as exc:
                return "FAILED", "DEVICE_UNREACHABLE", f"{exc.message} (not retried)"
            except BadInput as exc:
                return "FAILED", "BAD_INPUT", exc.message
            if not is_switch and target_tap is None:
                return "ACCEPTED", None, f"{device_id} accepted the {cmd} set point {command_value:g}"

            def confirmed() -> bool:
                if is_switch:
                    pv = self._values.get(point_id(self.feeder_id, device_id, Quantity.STATUS))
                    return self._switch_states.get(device_id) == expect_open and pv is not None
                return self._tap_position(device_id) == target_tap

            loop = asyncio.get_running_loop()
            deadline = loop.time() + self._opts.confirm_timeout_s
            while not confirmed():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return ("NOT_CONFIRMED", "NOT_CONFIRMED",
                            f"{action} of {device_id} was sent but telemetry did not confirm it within "
                            f"{self._opts.confirm_timeout_s:g} s; it was not resent. Verify the device position")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._telemetry_changed.wait(), remaining)
            resolver = self._resolver
            if resolver is not None and not resolver.done():  # answer with the re-solved state in place
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(asyncio.shield(resolver), 10)
            return "CONFIRMED", None, f"{action} of {device_id} confirmed by telemetry"
        finally:
            if is_switch:
                self._expect.pop(device_id, None)

    def _tap_position(self, transformer_id: str) -> float | None:
        from protocols.base import Quality
        from protocols.pointmap import point_id

        pv = self._values.get(point_id(self.feeder_id, transformer_id, Quantity.TAP_POS))
        return float(pv.value) if pv is not None and pv.quality is Quality.GOOD and pv.value is not None else None

    async def set_tag(self, device_id: str, kind: str, reason: str, set_by: str) -> Tag:
        await self._ready()
        assert self._core is not None and self._store is not None
        with _portable_errors():
            tag = self._core.set_tag(device_id, kind, reason, set_by)
        try:
            await self._store.append_record("Tag", {
                "tag_id": tag.id, "device_id": device_id, "kind": str(tag.kind), "reason": reason, "set_by": set_by,
                "set_at": tag.set_at.isoformat(), "active": True}, feeder_id=self.feeder_id)
        except DmsError as exc:
            self._core.remove_tag(tag.id, set_by)  # a tag that is not persisted would vanish at a restart
            raise _portable(exc) from None
        self._event(EventKind.CONTROL, device_id, f"{set_by} tagged {device_id} {tag.kind}: {reason}", durable=True,
                    data={"phase": "TAG_SET", "tag_id": tag.id, "tag_kind": str(tag.kind), "operator": set_by})
        return tag

    async def remove_tag(self, tag_id: str, removed_by: str) -> Tag:
        await self._ready()
        assert self._core is not None and self._store is not None
        with _portable_errors():
            tag = self._core.remove_tag(tag_id, removed_by)
        rows = await self._store.list_records("Tag", feeder_id=self.feeder_id, where={"tag_id": tag_id}, limit=5)
        for r in rows:
            await self._store.update_record("Tag", int(r["seq"]), {
                "active": False, "removed_by": removed_by, "removed_at": datetime.now(UTC).isoformat()})
        self._event(EventKind.CONTROL, tag.device_id, f"{removed_by} removed tag {tag.kind} from {tag.device_id}",
                    durable=True, data={"phase": "TAG_REMOVED", "tag_id": tag_id, "tag_kind": str(tag.kind),
                                        "operator": removed_by})
        return tag

    async def tags(self) -> list[Tag]:
        await self._ready()
        assert self._core is not None
        return self._core.tags()

    # -- FDIR ------------------------------------------------------------------------------------

    async def _start_fdir(self, feeder: Feeder) -> None:
        """The FDIR engine of this feeder, with its still-active outages read back from the store."""
        if self._fdir is not None:
            await self._fdir.aclose()
        assert self._store is not None
        restored: list[tuple[Outage, int]] = []
        for row in await self._store.list_records("Outage", feeder_id=self.feeder_id, limit=200, newest_first=True):
            try:
                outage = Outage.from_record(row)
            except DmsError:
                log.error("feeder %s: outage record seq=%s is malformed; skipped", self.feeder_id, row.get("seq"))
                continue
            if outage.active:
                restored.append((outage, int(row["seq"])))
        ports = FdirPorts(operate=self._fdir_operate, switch_states=lambda: dict(self._switch_states),
                          persist_outage=self._persist_outage, emit=self._fdir_emit, now=lambda: datetime.now(UTC))
        mode = FdirMode(dict(self._opts.fdir_modes).get(self.feeder_id, self._opts.fdir_mode))
        stored = await self._store.list_records("Setting", feeder_id=self.feeder_id, where={"key": "fdir_mode"},
                                                limit=1, newest_first=True)
        if stored:  # an operator's setFdirMode outlives restarts and wins over the start-up default
            with contextlib.suppress(ValueError):
                mode = FdirMode(str(stored[0]["value"]))
        self._fdir = await asyncio.to_thread(FdirEngine, feeder, ports, mode=mode, settle_s=self._opts.fdir_settle_s,
                                             outages=restored)

    def _fdir_spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro, name=f"fdir {self.feeder_id}")
        self._fdir_tasks.add(task)
        task.add_done_callback(self._fdir_done)

    def _fdir_done(self, task: asyncio.Task[Any]) -> None:
        self._fdir_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("feeder %s: FDIR task failed", self.feeder_id, exc_info=task.exception())

    def _fdir_kick(self) -> None:
        """Hand the engine what the field says now; it waits for the rest and decides."""
        if self._fdir is None:  # in OFF mode the engine still records outages
            return
        self._fdir_spawn(self._fdir.on_indications(self._indications()))

    def _indications(self) -> Indications:
        from protocols.base import Quality
        from protocols.pointmap import Signal

        fis: dict[str, bool | None] = {}
        for pid, p in self._pm_by_id.items():
            if p.quantity is Signal.FAULT:
                pv = self._values.get(pid)
                good = pv is not None and pv.quality is Quality.GOOD and pv.value is not None
                fis[p.element_id] = bool(pv.value) if good else None  # type: ignore[union-attr]
        for fi in self._fi_latched:
            fis[fi] = True
        return Indications(tripped_devices=frozenset(self._tripped | self._reclosed),
                           reclosed=frozenset(self._reclosed - self._tripped), fault_indicators=fis,
                           last_gasp_loads=frozenset(self._last_gasp), time=datetime.now(UTC))

    async def _fdir_fault_cleared(self) -> None:
        if self._fdir is not None and self._fdir.status().active_outage_ids:
            self._reclosed.clear()
            await self._fdir.on_fault_cleared(by="field")

    async def _fdir_operate(self, device_id: str, action: ControlAction) -> bool:
        """One FDIR switching step through the same select-before-operate path as an operator's."""
        assert self._core is not None
        states = self._switch_states
        # The engine checked this step against every faulted zone it located (more precisely than the
        # indicator-based guess operators' controls get), so the zone is not passed again here.
        sel = self._core.select(device_id, action, None, FDIR_OPERATOR, switch_states=states)
        self._core.operate(sel.id, device_id, action, None, FDIR_OPERATOR, switch_states=states)
        started = datetime.now(UTC)
        self._event(EventKind.CONTROL, device_id, f"FDIR operates {device_id}: {action}", durable=True,
                    data={"phase": "OPERATE_SENT", "action": str(action), "operator": FDIR_OPERATOR})
        status, code, message = await self._execute(device_id, ControlAction(action), None)
        await self._record_control(device_id, str(action), None, FDIR_OPERATOR, status, code, message, started)
        if status == "CONFIRMED":
            return True
        if code == "DEVICE_UNREACHABLE":
            raise DeviceUnreachable(device_id, message)
        raise NotConfirmed(device_id, str(action), self._opts.confirm_timeout_s)

    async def _persist_outage(self, record: dict[str, Any], seq: int | None) -> int:
        assert self._store is not None
        props, feeder_id = store_record(record)
        if seq is None:
            return await self._store.append_record("Outage", props, feeder_id=feeder_id)
        await self._store.update_record("Outage", seq, props)
        return seq

    async def _fdir_emit(self, kind: EventKind, severity: Severity, message: str, data: Mapping[str, Scalar]) -> None:
        element = data.get("device_id") if isinstance(data.get("device_id"), str) else None
        self._event(kind, element, message, severity=severity, durable=True, data=dict(data))  # type: ignore[arg-type]

    async def metrics(self) -> dict[str, Any]:
        """Running figures for the server's /metrics (telemetry, quality, last solve, FDIR outcomes)."""
        await self._ready()
        assert self._state is not None
        quality: dict[str, int] = {}
        for pv in self._values.values():
            quality[str(pv.quality)] = quality.get(str(pv.quality), 0) + 1
        fdir: dict[str, int] = {}
        for plan in (self._fdir.plans.values() if self._fdir is not None else ()):
            fdir[str(plan.state)] = fdir.get(str(plan.state), 0) + 1
        return {"ingested": self.ingested, "quality": quality, "solve_s": self._state.power_flow.solve_time_s,
                "fdir": fdir}

    async def fdir_status(self) -> FdirStatus:
        await self._ready()
        assert self._fdir is not None
        return self._fdir.status()

    async def fdir_plans(self) -> list[PlanStatus]:
        await self._ready()
        assert self._fdir is not None
        return list(self._fdir.plans.values())

    async def fdir_timings(self) -> dict[str, Any]:
        await self._ready()
        assert self._fdir is not None
        return dict(self._fdir.timings)

    async def set_fdir_mode(self, mode: str, by: str) -> str:
        await self._ready()
        assert self._fdir is not None
        try:
            wanted = FdirMode(mode)
        except ValueError:
            raise BadInput(f"FDIR mode {mode!r} is unknown; use AUTOMATIC, ADVISORY or OFF") from None
        with _portable_errors():
            result = str(await self._fdir.set_mode(wanted, by))
        assert self._store is not None
        await self._store.append_record("Setting", {"key": "fdir_mode", "value": result, "set_by": by,
                                                    "set_at": datetime.now(UTC).isoformat()},
                                        feeder_id=self.feeder_id)
        return result

    async def approve_plan(self, plan_id: str, by: str) -> PlanStatus:
        await self._ready()
        assert self._fdir is not None
        with _portable_errors():
            return await self._fdir.approve(plan_id, by)

    async def reject_plan(self, plan_id: str, by: str, reason: str) -> PlanStatus:
        await self._ready()
        assert self._fdir is not None
        with _portable_errors():
            return await self._fdir.reject(plan_id, by, reason)


FDIR_OPERATOR = "fdir"


def describe_error(exc: BaseException) -> str:
    """One line for logs and health reports, for errors raised inside an actor."""
    if isinstance(exc, DmsError):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"
