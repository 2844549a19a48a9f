"""Applications hosted by a feeder actor, the ports they see, and the registry that runs them.

An application decides something for one feeder (FDIR; later state estimation, Volt/VAR, DER
management, demand response). It is a pure planner plus a small engine that talks to its host only
through :class:`FeederPorts`: read the model, the live state and the measured values, solve on a
copy, operate a device through select-before-operate under its own identity (after arbitration),
persist records, emit events and spawn background work. It never sees the host's internals, so a new
application is a new module, not a new branch in the host (pandapower's ``Controller``, OpenDSS's
control objects).

The :class:`AppRegistry` isolates failures: an application that raises in a callback is logged with
its stack, marked ``FAILED`` in its status and restarted with back-off, while the host, the scan and
the other applications go on. Every synchronous callback and every step of the application's
background work is timed; steps that hold the event loop longer than ``block_bound_s`` are counted
and reported in metrics.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol, TypeVar, runtime_checkable

from actors.arbiter import Priority
from actors.cores.control import ControlAction
from actors.cores.events import Event, EventKind, Scalar, Severity
from actors.cores.powerflow import PowerFlowResult
from actors.cores.topology import TopologyGraph
from actors.ingest import FieldFlags
from graph_schema.errors import BadInput, DmsError, NotFound
from graph_schema.model import Feeder, Quantity

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class TelemetryChange:
    """What one batch of telemetry changed (handed to every application, synchronously)."""

    device_id: str
    point_ids: tuple[str, ...]
    switch_changes: Mapping[str, bool] = field(default_factory=dict)
    indications_changed: bool = False  # a trip, a fault indicator or a last gasp was raised
    fault_cleared: bool = False  # the last latched fault indicator reset
    # switch id -> who commanded it ("" when the control room did not say), for the changes in
    # ``switch_changes`` that an operate of ours made; a change not in it was not commanded (a trip)
    commanded_by: Mapping[str, str] = field(default_factory=dict)
    values: tuple[Any, ...] = ()  # the batch itself (protocols.base.PointValue), as the device sent it


def reported_positions(values: Mapping[str, Any], points: Mapping[str, Any]) -> tuple[dict[str, int], dict[str, int]]:
    """Tap positions (``TAP_POS``) and capacitor bank steps (``CAP_STEP``) as the field reports
    them, GOOD values only: what the live solve, the estimator and Volt/VAR take as the network's
    settings (a device without telemetry keeps the model's)."""
    taps: dict[str, int] = {}
    caps: dict[str, int] = {}
    for pid, mapping in points.items():
        q = str(getattr(mapping, "quantity", ""))
        if q not in (Quantity.TAP_POS, Quantity.CAP_STEP):
            continue
        pv = values.get(pid)
        v = getattr(pv, "value", None)
        if str(getattr(pv, "quality", "")) != "GOOD" or isinstance(v, bool) or not isinstance(v, int | float):
            continue
        (taps if q == Quantity.TAP_POS else caps)[mapping.element_id] = round(float(v))
    return taps, caps


def field_hold(ports: FeederPorts) -> str | None:
    """Why an optimiser (Volt/VAR, DER management) must keep its hands off this feeder now, or None:
    a fault indicated or a breaker tripped (FDIR and the operators have precedence), or any switch
    out of its normal position (restoration or operator switching has precedence)."""
    flags = ports.field_flags()
    if flags.tripped or any(flags.fault_indicators.values()):
        return "a fault is indicated on this feeder: FDIR and the operators have precedence"
    feeder = ports.model()
    states = ports.switch_states()
    abnormal = sorted(s.id for s in feeder.switches if states.get(s.id, s.is_open) != s.normally_open)
    if abnormal:
        return (f"abnormal switching state ({', '.join(abnormal[:5])}"
                f"{'...' if len(abnormal) > 5 else ''} out of normal position): restoration has precedence")
    return None


class FeederPorts(Protocol):
    """Everything an application may do with its feeder (one instance per application: the identity
    it operates and emits under is its own name)."""

    feeder_id: str
    app_name: str

    def model(self) -> Feeder: ...
    def topology_graph(self) -> TopologyGraph: ...
    def state(self) -> Any: ...  # actors.feeder_actor.FeederState
    def switch_states(self) -> dict[str, bool]: ...
    def values(self) -> Mapping[str, Any]: ...  # point id -> protocols.base.PointValue (a read-only live view)
    def points(self) -> Mapping[str, Any]: ...  # point id -> protocols.pointmap.PointMapping (bound map)
    def publish_estimate(self, estimate: Any) -> None: ...  # the live state becomes this estimate (None: model)
    def field_flags(self) -> FieldFlags: ...
    def clear_reclosed(self) -> None: ...
    async def solve(self, *, switch_states: Mapping[str, bool] | None = None,
                    load_scale: float | None = None) -> PowerFlowResult: ...
    async def operate(self, device_id: str, action: ControlAction | str, value: float | None = None) -> bool: ...
    async def append_record(self, label: str, props: Mapping[str, Any]) -> int: ...
    async def update_record(self, label: str, seq: int, props: Mapping[str, Any]) -> None: ...
    async def list_records(self, label: str, *, where: Mapping[str, Any] | None = None, limit: int = 100,
                           newest_first: bool = False) -> list[dict[str, Any]]: ...
    def emit(self, kind: EventKind, severity: Severity, message: str, data: Mapping[str, Scalar]) -> None: ...
    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task[Any]: ...
    def now(self) -> datetime: ...
    # DER set points (#12, actors.execution.operate_der): select-before-operate, ``write`` once (confirmed
    # by SunSpec read-back), recorded and emitted; ``operator`` set: on an operator's behalf.
    async def operate_der(self, der_id: str, action: str, value: float | None, describe: str,
                          write: Callable[[], Awaitable[str]], *, operator: str | None = None) -> Any: ...
    # A local controller setting (actors.execution.write_setting): arbitrated, recorded, written once.
    async def write_setting(self, device_id: str, kind: str, value: float) -> Any: ...


@runtime_checkable
class Application(Protocol):
    """The interface of a hosted application.

    ``api`` names the methods the API may call (``FeederActor.app_call``); ``read_only`` those of
    them that only read (retried once after an actor restart, like any read).

    Optional: ``on_events(events: Sequence[Event]) -> None`` (not part of the protocol: applications
    without it are skipped): the feeder's events once published, with the bus's ``seq``, in
    publication order. Cheap and synchronous like ``on_telemetry``; it only observes (an event it
    emits from there comes back in a later batch, so an application must not echo every event).
    """

    name: str
    priority: Priority
    api: frozenset[str]
    read_only: frozenset[str]

    async def start(self, ports: FeederPorts) -> None: ...
    def on_telemetry(self, change: TelemetryChange) -> None: ...  # cheap, synchronous
    def on_state(self, state: Any) -> None: ...  # after every re-solve of the live state
    def status(self) -> Mapping[str, Any]: ...
    async def close(self) -> None: ...


AppFactory = Callable[[], Application]


@dataclass(slots=True)
class AppHealth:
    """Running figures of one application (what /metrics and ``app_status`` report)."""

    name: str
    state: str = "STARTING"  # STARTING, RUNNING, FAILED, STOPPED
    error: str | None = None
    failures: int = 0
    restarts: int = 0
    slow_steps: int = 0  # callbacks or background steps that held the loop longer than the bound
    max_step_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "error": self.error, "failures": self.failures,
                "restarts": self.restarts, "slow_steps": self.slow_steps, "max_step_s": self.max_step_s}


@types.coroutine
def _timed(coro: Coroutine[Any, Any, T], report: Callable[[float], None]) -> Generator[Any, Any, T]:
    """Drive ``coro`` step by step, reporting how long each step held the event loop."""
    send: Any = None
    throw: BaseException | None = None
    while True:
        t0 = time.perf_counter()
        try:
            yielded = coro.throw(throw) if throw is not None else coro.send(send)
        except StopIteration as stop:
            report(time.perf_counter() - t0)
            return stop.value  # type: ignore[no-any-return]
        except BaseException:
            report(time.perf_counter() - t0)
            raise
        report(time.perf_counter() - t0)
        try:
            send, throw = (yield yielded), None
        except BaseException as exc:  # cancellation and errors thrown into the task go to coro
            send, throw = None, exc


class AppRegistry:
    """The applications of one feeder host, with failure isolation and restart with back-off."""

    def __init__(self, feeder_id: str, make_ports: Callable[[str], FeederPorts], *, block_bound_s: float = 0.1,
                 backoff_s: float = 1.0, backoff_max_s: float = 60.0) -> None:
        self.feeder_id = feeder_id
        self._make_ports = make_ports
        self.block_bound_s = block_bound_s
        self._backoff_s = backoff_s
        self._backoff_max_s = backoff_max_s
        self._factories: dict[str, AppFactory] = {}
        self._apps: dict[str, Application] = {}
        self._health: dict[str, AppHealth] = {}
        self._tasks: dict[asyncio.Task[Any], str] = {}  # background task -> its application
        self._restart: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    # -- registration and lifecycle --------------------------------------------------------------

    def register(self, name: str, factory: AppFactory) -> None:
        if name in self._factories:
            raise BadInput(f"application {name!r} is registered twice on feeder {self.feeder_id!r}")
        self._factories[name] = factory
        self._health[name] = AppHealth(name)

    @property
    def names(self) -> list[str]:
        return list(self._factories)

    async def start(self) -> None:
        self._closed = False
        for name in self._factories:
            await self._start_one(name)

    async def _start_one(self, name: str) -> None:
        health = self._health[name]
        try:
            app = self._factories[name]()
            await self._timed_call(name, app.start(self._make_ports(name)))
        except Exception as exc:
            self._failed(name, "start", exc)
            return
        self._apps[name] = app
        health.state, health.error = "RUNNING", None

    async def close(self) -> None:
        self._closed = True
        for task in [*self._restart.values(), *self._tasks]:
            task.cancel()
        self._restart.clear()
        for name, app in list(self._apps.items()):
            try:
                await app.close()
            except Exception:
                log.exception("feeder %s: application %s failed to close", self.feeder_id, name)
            self._health[name].state = "STOPPED"
        self._apps.clear()

    def get(self, name: str) -> Application:
        app = self._apps.get(name)
        if app is None:
            if name not in self._factories:
                raise NotFound(f"application {name!r} is not hosted on feeder {self.feeder_id!r}; hosted: "
                               f"{', '.join(self._factories) or 'none'}", element_id=name)
            h = self._health[name]
            raise DmsError(f"application {name!r} of feeder {self.feeder_id!r} is {h.state} ({h.error or 'starting'});"
                           f" it is restarted with back-off, retry shortly", element_id=name,
                           code="APPLICATION_UNAVAILABLE")
        return app

    # -- calls from the host and the API ---------------------------------------------------------

    def on_telemetry(self, change: TelemetryChange) -> None:
        for name, app in list(self._apps.items()):
            self._guard(name, "on_telemetry", lambda a=app: a.on_telemetry(change))

    def on_state(self, state: Any) -> None:
        for name, app in list(self._apps.items()):
            self._guard(name, "on_state", lambda a=app: a.on_state(state))

    def on_events(self, events: Sequence[Event]) -> None:
        """Published events to the applications that define ``on_events`` (others are skipped)."""
        if not events:
            return
        for name, app in list(self._apps.items()):
            fn = getattr(app, "on_events", None)
            if fn is not None:
                self._guard(name, "on_events", lambda f=fn: f(events))

    async def call(self, name: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """An API call to an application's method named in its ``api``."""
        app = self.get(name)
        if method not in app.api:
            raise BadInput(f"application {name!r} has no method {method!r}; its methods: {', '.join(sorted(app.api))}")
        result = getattr(app, method)(*args, **kwargs)
        if inspect.isawaitable(result):
            result = await self._timed_call(name, result)
        return result

    def spawn(self, name: str, coro: Coroutine[Any, Any, Any], task_name: str = "") -> asyncio.Task[Any]:
        """Background work of application ``name``: timed per step; a failure restarts the application."""
        task = asyncio.create_task(self._timed_call(name, coro), name=task_name or f"{name} {self.feeder_id}")
        self._tasks[task] = name
        task.add_done_callback(lambda t: self._task_done(name, t, coro))
        return task

    def _task_done(self, name: str, task: asyncio.Task[Any], coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.pop(task, None)
        coro.close()  # a task cancelled before its first step never started ``coro`` ("never awaited")
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._failed(name, f"task {task.get_name()}", exc)

    def status(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name, h in self._health.items():
            d = h.as_dict()
            app = self._apps.get(name)
            if app is not None:
                try:
                    d["status"] = dict(app.status())
                except Exception as exc:
                    d["status"] = {"error": f"{type(exc).__name__}: {exc}"}
            out[name] = d
        return out

    def read_only(self, name: str) -> frozenset[str]:
        app = self._apps.get(name)
        return app.read_only if app is not None else frozenset()

    # -- isolation -------------------------------------------------------------------------------

    def _guard(self, name: str, what: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        try:
            fn()
        except Exception as exc:
            self._failed(name, what, exc)
        finally:
            self._step(name, time.perf_counter() - t0)

    async def _timed_call(self, name: str, awaitable: Awaitable[T]) -> T:
        if inspect.iscoroutine(awaitable):
            return await _timed(awaitable, lambda s: self._step(name, s))
        return await awaitable

    def _step(self, name: str, seconds: float) -> None:
        h = self._health.get(name)
        if h is None:
            return
        h.max_step_s = max(h.max_step_s, seconds)
        if seconds > self.block_bound_s:
            h.slow_steps += 1
            log.warning("feeder %s: application %s held the event loop for %.3f s (bound %.3f s)",
                        self.feeder_id, name, seconds, self.block_bound_s)

    def _failed(self, name: str, what: str, exc: BaseException) -> None:
        h = self._health[name]
        h.failures += 1
        h.state, h.error = "FAILED", f"{what}: {type(exc).__name__}: {exc}"
        log.error("feeder %s: application %s failed in %s; restarting it with back-off", self.feeder_id, name, what,
                  exc_info=exc)
        app = self._apps.pop(name, None)
        current = asyncio.current_task()
        for task, owner in list(self._tasks.items()):  # the failed instance's work does not outlive it
            if owner == name and task is not current:
                task.cancel()
        if self._closed or name in self._restart:
            return
        delay = min(self._backoff_s * 2 ** min(h.failures - 1, 16), self._backoff_max_s)
        self._restart[name] = asyncio.get_running_loop().create_task(self._restart_after(name, app, delay),
                                                                     name=f"restart {name} {self.feeder_id}")

    async def _restart_after(self, name: str, old: Application | None, delay: float) -> None:
        if old is not None:
            try:
                await old.close()
            except Exception:
                log.warning("feeder %s: failed application %s did not close cleanly", self.feeder_id, name,
                            exc_info=True)
        await asyncio.sleep(delay)
        self._restart.pop(name, None)  # a failure of the new instance schedules its own restart
        if self._closed:
            return
        self._health[name].restarts += 1
        self._health[name].state = "STARTING"
        await self._start_one(name)
