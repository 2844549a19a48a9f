"""The feeder actor: one per feeder, the host of that feeder's live state and applications.

A plain Python class (``actors/fleet.py`` is the only place that turns it into a Ray actor). The host
keeps the lifecycle, the feeder model, the live state with its version, the one lock, re-solving and
the registry of applications. Everything else lives in its rooms:

- :class:`actors.field_binding.FieldBinding`: field clients, polls and subscriptions;
- :class:`actors.ingest.Ingest`: telemetry into live values, events and the alarm rules (pure);
- :class:`actors.outbox.EventOutbox`: events batched to the cluster's bus, the alarm book;
- :class:`actors.execution.ControlRoom`: select-before-operate, one command type per device kind,
  control records and tags, with :class:`actors.arbiter.Arbiter` deciding who may operate what;
- :class:`actors.applications.AppRegistry`: the hosted applications (FDIR first,
  :data:`actors.apps.DEFAULT_APPS`), each seeing the feeder only through its
  :class:`actors.applications.FeederPorts`.

It never trusts memory it did not persist: after a restart it rebuilds from the store plus a fresh
field scan. Solves run in a worker thread (``asyncio.to_thread``) so the actor keeps answering while
a large feeder solves; one lock serializes state changes and solves. Switch changes seen in
telemetry are re-solved once per burst (after ``debounce_s``) and persisted.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

from actors.applications import AppRegistry, FeederPorts, TelemetryChange, reported_positions
from actors.cores.control import ControlAction, ControlCore, Tag, expected_state
from actors.cores.events import Alarm, EventKind, Scalar, Severity
from actors.cores.powerflow import PowerFlowModel, PowerFlowResult
from actors.cores.topology import TopologyGraph, TopologyResult
from actors.execution import ControlRecorder, ControlRoom, raise_for
from actors.field_binding import FieldBinding
from actors.ingest import FieldFlags, Ingest
from actors.outbox import EventOutbox, EventSink, LocalEventSink
from graph_schema.errors import BadInput, DmsError, NotFound
from graph_schema.model import Feeder
from graph_schema.secret import Secret
from graph_schema.store import GraphStore

log = logging.getLogger(__name__)

__all__ = ["ALARM_EVENT_KINDS", "ActorOptions", "EventSink", "FeederActor", "FeederState", "LocalEventSink",
           "StoreAddress", "describe_error"]


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
    power_flow: PowerFlowResult  # the model's power flow (switch states, nominal loads)
    updated_at: float = field(default_factory=time.time)
    # The state estimator's latest result (actors.cores.estimation.EstimationResult), published by
    # the estimation application; None while no field is bound or before its first estimate.
    estimate: Any = None
    # Tap positions and capacitor bank steps as the field reports them (absent: the model's).
    tap_pos: Mapping[str, int] = field(default_factory=dict)
    capacitor_step: Mapping[str, int] = field(default_factory=dict)

    @property
    def live(self) -> PowerFlowResult:
        """What the API and the applications report: the estimate when there is one, else the model."""
        return self.estimate.power_flow if self.estimate is not None else self.power_flow

    @property
    def source(self) -> str:
        return "ESTIMATED" if self.estimate is not None else "MODEL"


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
    app_block_bound_s: float = 0.1  # an application step holding the loop longer is counted in metrics
    store_timeout_s: float = 2.0  # a control intent/outcome or a switch state the store does not take in time
    historian_uri: str | None = None  # the historian's root (folder or s3://); None: kept in memory only
    historian_flush_s: float = 10.0  # the historian writes its buffered rows this often
    historian_retention_days: int | None = None  # the historian drops the feeder's older days; None: keeps all


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
                 events: EventSink | None = None, apps: Sequence[type] | None = None) -> None:
        self.feeder_id = feeder_id
        self._store_address = store
        self._opts = options or ActorOptions()
        self.outbox = EventOutbox(feeder_id, events if events is not None else LocalEventSink(),
                                  flush_interval_s=self._opts.flush_interval_s)
        o = self._opts
        self.field = FieldBinding(feeder_id, self._on_values, scan_interval_s=o.scan_interval_s,
                                  modbus_timeout_s=o.modbus_timeout_s,
                                  opcua_publishing_interval_ms=o.opcua_publishing_interval_ms,
                                  backoff_max_s=o.backoff_max_s)
        self.apps = AppRegistry(feeder_id, self._ports_for, block_bound_s=o.app_block_bound_s)
        self.outbox.watch(self.apps.on_events)  # applications observe the published events
        self._app_classes = tuple(apps) if apps is not None else None
        self.ingest: Ingest | None = None
        self.control: ControlRoom | None = None
        self.recorder = ControlRecorder(feeder_id, self._store_now, timeout_s=o.store_timeout_s)
        self._reconciler: asyncio.Task[None] | None = None
        self._pending_intents = 0  # intents of a killed actor not reconciled yet
        self._telemetry_changed = asyncio.Event()
        self._dirty_switches: set[str] = set()
        self._unpersisted: set[str] = set()  # switch states the store did not take yet (retried)
        self._persister: asyncio.Task[None] | None = None
        self._resolver: asyncio.Task[None] | None = None
        self._store: GraphStore | None = None
        self._feeder: Feeder | None = None
        self._pf: PowerFlowModel | None = None
        self._graph: TopologyGraph | None = None
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
        self._graph = TopologyGraph(feeder)  # one per feeder: control, ingest and the applications share it
        ingest = Ingest(feeder, self._graph)
        if self.ingest is not None:  # a reload keeps what the field said and the alarms it raised
            ingest.adopt(self.ingest)
        self.ingest = ingest
        core = ControlCore(feeder, select_timeout_s=self._opts.select_timeout_s, graph=self._graph)
        first_load = self.control is None  # in this process: intents left pending are a killed actor's
        self.control = ControlRoom(
            self.feeder_id, core, field=self.field, ingest=ingest, outbox=self.outbox, store=self._store_now,
            recorder=self.recorder,
            switch_states=lambda: self._switch_states, state_changed=self._wait_state_changed,
            settled=self._wait_resolved, application_names=lambda: self.apps.names,
            confirm_timeout_s=self._opts.confirm_timeout_s)
        await self.control.load_tags()
        if first_load:
            intents: list[dict[str, Any]] | None = None
            with contextlib.suppress(DmsError):  # read now, before the field is attached; else retried
                intents = await self.control.pending_intents()
            self._expect_intents(intents or [])
            self._reconciler = asyncio.create_task(self._reconcile_intents(intents),
                                                   name=f"reconcile {self.feeder_id}")
        await self._resolve()
        await self._start_apps()
        # The model, the solver's tables and the imported libraries live as long as the actor: move
        # them out of the collector's reach, so that full collections (triggered by the scan's and the
        # historian's short-lived objects) do not walk them again and again (measured: the scan kept
        # 0.78 of its rate with the historian on, 0.86-0.95 with this).
        gc.freeze()
        log.info("feeder %s loaded: %d buses, %d switches", self.feeder_id, len(feeder.buses), len(feeder.switches))

    async def _start_apps(self) -> None:
        await self.apps.close()
        if not self.apps.names:
            from actors.apps import DEFAULT_APPS, FdirApp

            mode = dict(self._opts.fdir_modes).get(self.feeder_id, self._opts.fdir_mode)
            for cls in self._app_classes if self._app_classes is not None else DEFAULT_APPS:
                if cls is FdirApp:
                    self.apps.register(cls.name, lambda c=cls: c(mode, self._opts.fdir_settle_s))
                elif hasattr(cls, "from_options"):  # an application that needs options builds itself from them
                    self.apps.register(cls.name, lambda c=cls: c.from_options(self._opts))
                else:
                    self.apps.register(cls.name, cls)
        await self.apps.start()

    def _store_now(self) -> GraphStore:
        if self._store is None:
            raise DmsError(f"feeder {self.feeder_id!r} is not connected to the graph store", code="STORE_UNAVAILABLE")
        return self._store

    async def _resolve(self) -> FeederState:
        assert self._pf is not None and self._graph is not None
        states = dict(self._switch_states)
        scale = self._load_scale
        topology = self._graph.process(states)
        taps, caps = (reported_positions(self.ingest.values, self.ingest.points) if self.ingest is not None
                      else ({}, {}))
        result = await asyncio.to_thread(self._pf.solve, switch_states=states, load_scale=scale,
                                         tap_pos=taps or None, capacitor_step=caps or None)
        self._version += 1
        old = self._state  # an estimate holds until the topology changes (the estimator then runs again)
        estimate = old.estimate if old is not None and dict(old.switch_states) == states else None
        self._state = FeederState(feeder_id=self.feeder_id, version=self._version, switch_states=states,
                                  load_scale=scale, topology=topology, power_flow=result, estimate=estimate,
                                  tap_pos=taps, capacitor_step=caps)
        self.apps.on_state(self._state)
        return self._state

    async def reload(self) -> int:
        """Drop everything held in memory and rebuild from the store (after an import, say)."""
        async with self._lock:
            self._state = None
            await self._load()
            assert self._state is not None
            return self._state.version

    async def close(self) -> None:
        for task in (self._reconciler, self._persister):
            if task is not None:
                task.cancel()
        await self.recorder.close()
        await self.apps.close()
        await self.detach_field()
        await self.outbox.close(5.0)
        if self._store is not None:
            await self._store.close()
            self._store = None

    # -- queries ---------------------------------------------------------------------------------

    async def ping(self) -> dict[str, object]:
        await self._ready()
        assert self._state is not None
        return {"feeder_id": self.feeder_id, "version": self._state.version, "started_at": self._started_at,
                "pid": os.getpid()}

    async def model(self) -> Feeder:
        await self._ready()
        assert self._feeder is not None
        return self._feeder

    async def state(self) -> FeederState:
        await self._ready()
        assert self._state is not None
        return self._state

    async def power_flow(self, *, fresh: bool = False) -> PowerFlowResult:
        """The live result (the estimate when there is one); ``fresh=True`` solves the model again
        now (what the benchmark measures)."""
        await self._ready()
        if fresh:
            async with self._lock:
                return (await self._resolve()).power_flow
        assert self._state is not None
        return self._state.live

    def publish_estimate(self, estimate: Any) -> None:
        """The estimation application's latest result becomes the live state (None: back to the model).
        An estimate that arrives when no field is bound is dropped: it was computed from a binding
        that is gone (a detach while the estimator ran), and the model must stand, not its ghost."""
        if self._state is None:
            return
        if estimate is not None and (self.ingest is None or not self.ingest.points):
            log.info("feeder %s: an estimate finished after the field was detached; dropped", self.feeder_id)
            return
        self._version += 1
        self._state = replace(self._state, version=self._version, estimate=estimate, updated_at=time.time())

    # -- state changes ---------------------------------------------------------------------------

    async def set_switch_state(self, switch_id: str, is_open: bool, *, persist: bool = True) -> FeederState:
        """Record a switch position (from telemetry or a confirmed control) and re-solve."""
        await self._ready()
        assert self._store is not None
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

    # -- telemetry -------------------------------------------------------------------------------

    def _on_values(self, device_id: str, values: Sequence[Any]) -> None:
        """One device's telemetry (synchronous: no awaits): ingest, events, re-solve, applications."""
        if self.ingest is None or not values:
            return
        result = self.ingest.apply(device_id, values, self._switch_states)
        self.outbox.queue(result.events)
        if result.switch_changes:
            self._switch_states.update(result.switch_changes)
            self._dirty_switches.update(result.switch_changes)
            if self._resolver is None or self._resolver.done():
                self._resolver = asyncio.create_task(self._resolve_after_changes(), name=f"resolve {self.feeder_id}")
        self.apps.on_telemetry(TelemetryChange(
            device_id=device_id, point_ids=tuple(pv.point_id for pv in values), switch_changes=result.switch_changes,
            indications_changed=result.indications_changed, fault_cleared=result.fault_cleared,
            commanded_by=result.commanded, values=tuple(values)))
        if result.state_changed:
            changed, self._telemetry_changed = self._telemetry_changed, asyncio.Event()
            changed.set()
            # A tap or bank moved (state_changed without a switch change): solve at the new positions.
            if not result.switch_changes and (self._resolver is None or self._resolver.done()):
                self._resolver = asyncio.create_task(self._resolve_after_changes(), name=f"resolve {self.feeder_id}")

    async def _wait_state_changed(self) -> None:
        await self._telemetry_changed.wait()

    async def _wait_resolved(self) -> None:
        resolver = self._resolver
        if resolver is not None and not resolver.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(resolver), 10)

    async def _resolve_after_changes(self) -> None:
        await asyncio.sleep(self._opts.debounce_s)
        async with self._lock:
            dirty, self._dirty_switches = self._dirty_switches, set()
            failed = await self._persist_switches(dirty | self._unpersisted)
            self._unpersisted = failed
            if failed and (self._persister is None or self._persister.done()):
                self._persister = asyncio.create_task(self._persist_later(), name=f"persist {self.feeder_id}")
            state = await self._resolve()
        if not dirty:  # positions only (taps, banks): no topology change to report
            if self.ingest is not None:
                self.outbox.queue(self.ingest.check_violations(state.power_flow))
            return
        topo = state.topology
        self.outbox.event(EventKind.TOPOLOGY_CHANGE, None, f"switches changed: {', '.join(sorted(dirty))}",
                          durable=True,
                          data={"switches": ",".join(sorted(dirty)), "version": state.version,
                                "energized_buses": len(topo.energized_bus_ids),
                                "deenergized_buses": len(topo.deenergized_bus_ids),
                                "open_switches": ",".join(sorted(s for s, o in state.switch_states.items() if o))})
        if self.ingest is not None:
            self.outbox.queue(self.ingest.check_violations(state.power_flow))

    async def _persist_switches(self, switches: set[str]) -> set[str]:
        """Store the live state of ``switches`` (bounded); returns those the store did not take."""
        if self._store is None:
            return set(switches)
        store = self._store
        for i, sw in enumerate(ordered := sorted(switches)):
            try:
                await store.bounded(store.set_switch_state(self.feeder_id, sw, self._switch_states[sw]),
                                    self._opts.store_timeout_s, f"store the state of {sw}")
            except DmsError as exc:
                log.warning("feeder %s: the state of %s not stored yet (%s); retried until it is", self.feeder_id,
                            ", ".join(ordered[i:]), exc.message)
                return set(ordered[i:])  # the store is down: the rest waits for the retry too
        return set()

    async def _persist_later(self) -> None:
        """Retry, with backoff, the switch states the store did not take: the stored state follows
        confirmed telemetry once the store is back."""
        delay = 0.5
        while self._unpersisted:
            await asyncio.sleep(delay)
            async with self._lock:
                self._unpersisted = await self._persist_switches(self._unpersisted)
            delay = min(delay * 2, 10.0)
        log.info("feeder %s: switch states stored again", self.feeder_id)

    def _expect_intents(self, intents: list[dict[str, Any]]) -> None:
        """A switch a killed actor was moving is expected to move: its first scan after the restart
        is not a trip (and so no fault for FDIR) until the intent is reconciled."""
        assert self.ingest is not None
        for row in intents:
            want = expected_state(str(row.get("action")))
            if want is not None and str(row.get("device_id")) in self._switch_states:
                self.ingest.expect(str(row["device_id"]), want, by=str(row.get("operator") or ""))

    async def _reconcile_intents(self, intents: list[dict[str, Any]] | None = None) -> None:
        """After a restart: every control intent a killed actor left PENDING gets its outcome from
        what the field reports after its first scan (recorded, with an event)."""
        delay = 0.5
        while intents is None:
            try:
                intents = await self._control().pending_intents()
                self._expect_intents(intents)
            except DmsError as exc:
                log.warning("feeder %s: pending control intents not readable yet (%s)", self.feeder_id, exc.message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        if intents:
            log.warning("feeder %s: %d control intent(s) without an outcome; reconciling them with the field",
                        self.feeder_id, len(intents))
        while intents:
            self._pending_intents = len(intents)
            left = await self._control().reconcile(intents)
            done = {str(r.get("device_id")) for r in intents} - {str(r.get("device_id")) for r in left}
            for device_id in done:
                if self.ingest is not None:
                    self.ingest.release(device_id)
            intents = left
            if intents:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wait_state_changed(), 1.0)
        self._pending_intents = 0

    async def control_status(self) -> dict[str, Any]:
        """Control records not stored yet, intents awaiting reconciliation, switch states not stored."""
        return {**self.recorder.status(), "pending_intents": self._pending_intents,
                "unpersisted_switches": sorted(self._unpersisted)}

    # -- field binding ---------------------------------------------------------------------------

    async def attach_field(self, point_map_json: str, data_dir: str | None = None,
                           allow_nosecurity: bool = False, pki_dir: str | None = None) -> dict[str, int]:
        """Bind the feeder to its field devices (replacing an earlier binding) and start scanning."""
        from protocols.pointmap import PointMap, ProtocolKind

        await self._ready()
        pm = PointMap.from_json(point_map_json, self._feeder)
        if pki_dir is not None and any(d.protocol is ProtocolKind.OPCUA for d in pm.devices):
            from protocols.certs import load_client_pki

            load_client_pki(pki_dir)  # refused before the old binding is dropped: nothing half-attached
        await self.detach_field()
        assert self.ingest is not None
        self.ingest.bind({p.point_id: p for p in pm.points})
        self.field.attach(pm, data_dir=data_dir, allow_nosecurity=allow_nosecurity, pki_dir=pki_dir)
        return {"devices": len(pm.devices), "points": len(pm.points)}

    async def detach_field(self) -> None:
        """Stop scanning and close every field connection, in bounded time."""
        await self.field.detach()
        if self.ingest is not None:
            self.ingest.unbind()
        if self._state is not None and self._state.estimate is not None:  # nothing measured: the model again
            self.publish_estimate(None)

    async def measurements(self) -> list[dict[str, Any]]:
        """The latest value of every telemetered point, with quality and timestamps, and the state
        estimator's verdict: a point its bad-data test left out is ``SUSPECT`` with its normalized
        residual (the field's own quality stays as the device reported it)."""
        await self._ready()
        assert self.ingest is not None
        rows = self.ingest.measurements()
        est = self._state.estimate if self._state is not None else None
        flagged = {pid: b for b in getattr(est, "bad_data", ()) for pid in b.point_ids}
        for r in rows:
            b = flagged.get(r["point_id"])
            r["estimator_quality"] = "SUSPECT" if b is not None else None
            r["normalized_residual"] = round(b.normalized_residual, 2) if b is not None else None
        return rows

    async def field_status(self) -> dict[str, Any]:
        await self._ready()
        assert self.ingest is not None
        return {"attached": self.field.attached, "devices": dict(self.ingest.device_ok),
                "ingested": self.ingest.ingested, "points": len(self.ingest.values)}

    # -- events and alarms -----------------------------------------------------------------------

    async def flush_events(self) -> int:
        """Send queued events now (tests); returns how many alarms are active."""
        return await self.outbox.flush()

    async def alarms(self, active: bool | None = True) -> list[Alarm]:
        await self._ready()
        return self.outbox.alarms(active)

    async def acknowledge_alarm(self, alarm_id: str, by: str) -> Alarm:
        await self._ready()
        return self.outbox.acknowledge(alarm_id, by)

    # -- control ---------------------------------------------------------------------------------

    def _control(self) -> ControlRoom:
        assert self.control is not None
        return self.control

    def has_device(self, device_id: str) -> bool:
        return self.control is not None and self.control.core.device(device_id) is not None

    async def devices(self) -> list[str]:
        await self._ready()
        return self._control().core.device_ids()

    async def select(self, device_id: str, action: str, value: float | None, operator: str) -> dict[str, Any]:
        await self._ready()
        with _portable_errors():
            # An operate needs its intent recorded: a selection the store could not serve is refused now,
            # in store_timeout_s, not handed out to expire while the operator waits (#17.16).
            await self._control().recorder.ping()
            sel = self._control().select(device_id, action, value, operator)
        return {"id": sel.id, "expires_at": sel.expires_at_utc, "device_id": device_id, "action": str(sel.action),
                "value": sel.value}

    async def cancel(self, selection_id: str, operator: str) -> dict[str, Any]:
        await self._ready()
        with _portable_errors():
            sel = self._control().cancel(selection_id, operator)
        return {"device_id": sel.device_id, "action": str(sel.action), "value": sel.value}

    def owns_selection(self, selection_id: str) -> bool:
        return self.control is not None and any(s.id == selection_id for s in self.control.core.selections())

    async def operate(self, selection_id: str, device_id: str, action: str, value: float | None,
                      operator: str) -> dict[str, Any]:
        """Operate a selection: sent ONCE, confirmed by telemetry. Refusals raise (nothing sent)."""
        await self._ready()
        with _portable_errors():
            out = await self._control().operate(selection_id, device_id, action, value, operator)
        return {"status": out.status, "code": out.code, "message": out.message, "device_id": device_id,
                "action": str(action), "value": value}

    async def set_tag(self, device_id: str, kind: str, reason: str, set_by: str) -> Tag:
        await self._ready()
        with _portable_errors():
            return await self._control().set_tag(device_id, kind, reason, set_by)

    async def remove_tag(self, tag_id: str, removed_by: str, may_override: bool = False) -> Tag:
        """Remove a tag: its holder, or with ``may_override`` (the caller holds OVERRIDE_TAG) anyone."""
        await self._ready()
        with _portable_errors():
            return await self._control().remove_tag(tag_id, removed_by, may_override=may_override)

    async def tags(self) -> list[Tag]:
        await self._ready()
        return self._control().core.tags()

    # -- applications ----------------------------------------------------------------------------

    def _ports_for(self, app_name: str) -> FeederPorts:
        return _HostPorts(self, app_name)

    async def app_call(self, app: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call method ``method`` of hosted application ``app`` (one of the names in its ``api``)."""
        await self._ready()
        with _portable_errors():
            return await self.apps.call(app, method, *args, **kwargs)

    async def app_status(self) -> dict[str, dict[str, Any]]:
        await self._ready()
        return self.apps.status()

    async def metrics(self) -> dict[str, Any]:
        """Running figures for the server's /metrics (telemetry, quality, last solve, applications)."""
        await self._ready()
        assert self._state is not None and self.ingest is not None
        apps = self.apps.status()
        fdir = dict(apps.get("fdir", {}).get("status", {}).get("plans", {}))
        return {"ingested": self.ingest.ingested, "quality": self.ingest.quality_counts(),
                "solve_s": self._state.power_flow.solve_time_s, "fdir": fdir, "apps": apps,
                "control": await self.control_status()}


class _HostPorts:
    """:class:`FeederPorts` of one application on its host."""

    def __init__(self, host: FeederActor, app_name: str) -> None:
        self._host = host
        self.feeder_id = host.feeder_id
        self.app_name = app_name
        self._model: PowerFlowModel | None = None

    def model(self) -> Feeder:
        assert self._host._feeder is not None
        return self._host._feeder

    def topology_graph(self) -> TopologyGraph:
        assert self._host._graph is not None
        return self._host._graph

    def state(self) -> FeederState:
        assert self._host._state is not None
        return self._host._state

    def switch_states(self) -> dict[str, bool]:
        return dict(self._host._switch_states)

    def values(self) -> Mapping[str, Any]:
        """A read-only live view (no copy per call: applications read it on the scan path)."""
        return MappingProxyType(self._host.ingest.values) if self._host.ingest is not None else MappingProxyType({})

    def points(self) -> Mapping[str, Any]:
        """Point id -> its mapping (protocols.pointmap.PointMapping) in the bound point map."""
        return MappingProxyType(self._host.ingest.points) if self._host.ingest is not None else MappingProxyType({})

    def publish_estimate(self, estimate: Any) -> None:
        self._host.publish_estimate(estimate)

    def field_flags(self) -> FieldFlags:
        assert self._host.ingest is not None
        return self._host.ingest.field_flags()

    def clear_reclosed(self) -> None:
        if self._host.ingest is not None:
            self._host.ingest.clear_reclosed()

    async def solve(self, *, switch_states: Mapping[str, bool] | None = None,
                    load_scale: float | None = None) -> PowerFlowResult:
        """A power flow on a copy of the live state (the live state is not changed)."""
        assert self._host._feeder is not None
        states = dict(self._host._switch_states)
        states.update(switch_states or {})
        scale = self._host._load_scale if load_scale is None else load_scale
        if self._model is None:  # the application's own copy: the host's model is solved under its lock
            self._model = await asyncio.to_thread(PowerFlowModel, self._host._feeder)
        return await asyncio.to_thread(self._model.solve, switch_states=states, load_scale=scale)

    async def operate(self, device_id: str, action: ControlAction | str, value: float | None = None) -> bool:
        room = self._host._control()
        app = self._host.apps.get(self.app_name)
        outcome = await room.operate_as(self.app_name, device_id, action, value, app.priority, check_faulted=False)
        return raise_for(outcome, device_id, str(action), self._host._opts.confirm_timeout_s)

    async def append_record(self, label: str, props: Mapping[str, Any]) -> int:
        return await self._host._store_now().append_record(label, dict(props), feeder_id=self.feeder_id)

    async def update_record(self, label: str, seq: int, props: Mapping[str, Any]) -> None:
        await self._host._store_now().update_record(label, seq, dict(props))

    async def list_records(self, label: str, *, where: Mapping[str, Any] | None = None, limit: int = 100,
                           newest_first: bool = False) -> list[dict[str, Any]]:
        return await self._host._store_now().list_records(label, feeder_id=self.feeder_id, where=dict(where or {}),
                                                          limit=limit, newest_first=newest_first)

    def emit(self, kind: EventKind, severity: Severity, message: str, data: Mapping[str, Scalar]) -> None:
        element = data.get("device_id") if isinstance(data.get("device_id"), str) else None
        alarm = {EventKind.ALARM: "raise", EventKind.ALARM_CLEARED: "clear"}.get(kind, "")  # into the alarm book
        self._host.outbox.event(kind, element, message, severity=severity, durable=True,  # type: ignore[arg-type]
                                data=dict(data), alarm=alarm)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task[Any]:
        return self._host.apps.spawn(self.app_name, coro, name)

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def der_setpoint(self, der_id: str, action: str, value: float) -> bool:
        """A ``SET_DER_Q`` / ``CURTAIL_DER_P`` operation of this application (Volt/VAR) through the DER
        application's SunSpec path: the same checks, select-before-operate and read-back. A refusal
        (arbitration, a tag, a limit: nothing sent) raises with its code; a command sent but not
        confirmed answers False."""
        from actors.apps.der_app import execute_operation

        r = await execute_operation(self, der_id, action, value)
        if r.status == "CONFIRMED":
            return True
        if r.status == "REFUSED":
            raise DmsError(f"DER {der_id}: {action} refused: {r.message}", code=r.code or "REFUSED")
        return False

    async def write_setting(self, device_id: str, kind: str, value: float) -> Any:
        """Push a local controller setting under this application's identity and priority
        (:func:`actors.execution.write_setting`); answers the outcome, raises when arbitration refuses."""
        from actors.execution import write_setting

        room = self._host._control()
        return await write_setting(room, self.app_name, device_id, kind, value,
                                   self._host.apps.get(self.app_name).priority)

    async def operate_der(self, der_id: str, action: str, value: float | None, describe: str,
                          write: Callable[[], Awaitable[str]], *, operator: str | None = None) -> Any:
        """A DER command through select-before-operate (:func:`actors.execution.operate_der`): under
        this application's identity and priority, or an operator's (``operator``) at OPERATOR."""
        from actors.arbiter import Priority
        from actors.execution import operate_der

        room = self._host._control()
        if operator:
            holder, priority = operator, Priority.OPERATOR
        else:
            holder, priority = self.app_name, self._host.apps.get(self.app_name).priority
        return await operate_der(room, holder, der_id, action, value, describe, write, priority)


def describe_error(exc: BaseException) -> str:
    """One line for logs and health reports, for errors raised inside an actor."""
    if isinstance(exc, DmsError):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"
