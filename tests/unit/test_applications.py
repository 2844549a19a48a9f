"""The application registry (:class:`actors.applications.AppRegistry`) with fake applications.

Failure isolation: an application that raises is logged with its stack, marked ``FAILED``, restarted
with back-off, and the other applications go on. Steps that hold the event loop are counted.
Every wait here is for a condition, bounded; no test proves a negative with a sleep.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

import pytest

from actors.applications import Application, AppRegistry, FeederPorts, TelemetryChange
from actors.arbiter import Priority
from graph_schema.errors import DmsError

FEEDER = "f1"
LOGGER = "actors.applications"


class FakePorts:
    """Only what the fakes use: identity and background work through the registry."""

    def __init__(self, registry: AppRegistry, app_name: str) -> None:
        self.feeder_id = registry.feeder_id
        self.app_name = app_name
        self._registry = registry

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task[Any]:
        return self._registry.spawn(self.app_name, coro, name)


class FakeApp:
    """A plain class implementing the Application protocol; ``fail_*`` make it raise."""

    priority = Priority.OPTIMISER
    api = frozenset({"echo", "slow_echo"})
    read_only = frozenset({"echo"})

    def __init__(self, name: str, journal: list[str], *, fail_start: bool = False,
                 fail_telemetry: bool = False) -> None:
        self.name = name
        self.journal = journal
        self.fail_start = fail_start
        self.fail_telemetry = fail_telemetry
        self.ports: FeederPorts | None = None
        self.telemetry: list[TelemetryChange] = []
        self.states: list[Any] = []
        self.closed = False

    async def start(self, ports: FeederPorts) -> None:
        self.journal.append(f"start {self.name}")
        await asyncio.sleep(0)
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")
        self.ports = ports

    def on_telemetry(self, change: TelemetryChange) -> None:
        if self.fail_telemetry:
            raise RuntimeError(f"{self.name} chokes on {change.device_id}")
        self.telemetry.append(change)

    def on_state(self, state: Any) -> None:
        self.states.append(state)

    def status(self) -> Mapping[str, Any]:
        return {"seen": len(self.telemetry)}

    async def close(self) -> None:
        self.journal.append(f"close {self.name}")
        self.closed = True

    def echo(self, x: int) -> int:
        return x

    async def slow_echo(self, x: int) -> int:
        await asyncio.sleep(0)
        return x

    def secret(self) -> str:  # not in api
        return "no"


class Factory:
    """Makes instances of one application; ``plan`` sets the options of the n-th instance."""

    def __init__(self, name: str, journal: list[str], plan: Callable[[int], dict[str, Any]] = lambda n: {}) -> None:
        self.name = name
        self.journal = journal
        self.plan = plan
        self.instances: list[FakeApp] = []

    def __call__(self) -> FakeApp:
        app = FakeApp(self.name, self.journal, **self.plan(len(self.instances)))
        self.instances.append(app)
        return app


async def wait_for(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


def change(device_id: str = "f1/rtu1") -> TelemetryChange:
    return TelemetryChange(device_id, (f"{device_id}/p",))


@pytest.fixture
async def make_registry() -> AsyncIterator[Callable[..., AppRegistry]]:
    """Registries with fake ports; each is closed at the end and its tasks are awaited (none left)."""
    made: list[AppRegistry] = []

    def make(**kw: Any) -> AppRegistry:
        kw.setdefault("backoff_s", 0.01)
        reg = AppRegistry(FEEDER, lambda name: FakePorts(reg, name), **kw)  # type: ignore[arg-type]
        made.append(reg)
        return reg

    before = asyncio.all_tasks()
    yield make
    for reg in made:
        await reg.close()
    me = asyncio.current_task()
    left = [t for t in asyncio.all_tasks() - before if t is not me]
    if left:
        await asyncio.wait(left, timeout=5)
    assert all(t.done() for t in left), f"tasks left behind: {left}"


def test_fake_is_an_application() -> None:
    assert isinstance(FakeApp("a", []), Application)


async def test_registration_and_start_order(make_registry: Callable[..., AppRegistry]) -> None:
    journal: list[str] = []
    reg = make_registry()
    for name in ("fdir", "volt_var", "der"):
        reg.register(name, Factory(name, journal))
    assert reg.names == ["fdir", "volt_var", "der"]
    with pytest.raises(DmsError) as info:
        reg.register("fdir", Factory("fdir", journal))
    assert info.value.code == "BAD_INPUT" and "fdir" in info.value.message
    assert {n: s["state"] for n, s in reg.status().items()} == dict.fromkeys(("fdir", "volt_var", "der"), "STARTING")

    await reg.start()
    assert journal == ["start fdir", "start volt_var", "start der"]
    status = reg.status()
    assert {n: s["state"] for n, s in status.items()} == dict.fromkeys(("fdir", "volt_var", "der"), "RUNNING")
    assert status["fdir"]["status"] == {"seen": 0} and status["fdir"]["error"] is None
    assert reg.get("volt_var").name == "volt_var"
    assert reg.read_only("volt_var") == frozenset({"echo"})


async def test_callbacks_reach_every_application(make_registry: Callable[..., AppRegistry]) -> None:
    journal: list[str] = []
    reg = make_registry()
    fa, fb = Factory("a", journal), Factory("b", journal)
    reg.register("a", fa)
    reg.register("b", fb)
    await reg.start()
    c = change()
    reg.on_telemetry(c)
    reg.on_state("state-1")
    for app in (fa.instances[0], fb.instances[0]):
        assert app.telemetry == [c] and app.states == ["state-1"]
    assert reg.status()["a"]["status"] == {"seen": 1}


async def test_a_failing_callback_is_isolated_logged_and_restarted(
        make_registry: Callable[..., AppRegistry], caplog: pytest.LogCaptureFixture) -> None:
    journal: list[str] = []
    reg = make_registry()
    bad = Factory("bad", journal, plan=lambda n: {"fail_telemetry": n == 0})  # the first instance fails
    good = Factory("good", journal)
    reg.register("bad", bad)
    reg.register("good", good)
    await reg.start()

    with caplog.at_level(logging.ERROR, logger=LOGGER):
        reg.on_telemetry(change("f1/rtu1"))
    [rec] = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert "bad" in rec.getMessage() and "on_telemetry" in rec.getMessage()
    assert rec.exc_info is not None and isinstance(rec.exc_info[1], RuntimeError)  # logged with its stack
    assert "chokes on f1/rtu1" in caplog.text and "Traceback" in caplog.text

    s = reg.status()["bad"]
    assert s["state"] == "FAILED" and s["failures"] == 1
    assert s["error"] == "on_telemetry: RuntimeError: bad chokes on f1/rtu1"
    assert good.instances[0].telemetry  # the other application got the callback

    reg.on_telemetry(change("f1/rtu2"))  # while it waits for its restart, the others go on
    assert [c.device_id for c in good.instances[0].telemetry] == ["f1/rtu1", "f1/rtu2"]

    await wait_for(lambda: reg.status()["bad"]["state"] == "RUNNING")
    s = reg.status()["bad"]
    assert s["restarts"] == 1 and s["failures"] == 1 and s["error"] is None
    assert len(bad.instances) == 2 and bad.instances[0].closed and not bad.instances[1].closed
    reg.on_telemetry(change("f1/rtu3"))
    assert [c.device_id for c in bad.instances[1].telemetry] == ["f1/rtu3"]


async def test_an_application_failing_again_is_restarted_again(make_registry: Callable[..., AppRegistry]) -> None:
    journal: list[str] = []
    reg = make_registry()
    bad = Factory("bad", journal, plan=lambda n: {"fail_telemetry": n < 2})
    reg.register("bad", bad)
    await reg.start()
    for expected in (1, 2):
        reg.on_telemetry(change())
        assert reg.status()["bad"]["state"] == "FAILED"
        await wait_for(lambda: reg.status()["bad"]["state"] == "RUNNING")
        assert reg.status()["bad"]["restarts"] == expected
    assert reg.status()["bad"]["failures"] == 2


async def test_start_failure_is_failed_and_retried(make_registry: Callable[..., AppRegistry]) -> None:
    journal: list[str] = []
    reg = make_registry()
    f = Factory("a", journal, plan=lambda n: {"fail_start": n == 0})
    reg.register("a", f)
    reg.register("b", Factory("b", journal))
    await reg.start()
    s = reg.status()
    assert s["a"]["state"] == "FAILED" and s["a"]["error"] == "start: RuntimeError: a cannot start"
    assert s["b"]["state"] == "RUNNING"  # the next one still started
    with pytest.raises(DmsError) as info:
        reg.get("a")
    assert info.value.code == "APPLICATION_UNAVAILABLE" and "FAILED" in info.value.message

    await wait_for(lambda: reg.status()["a"]["state"] == "RUNNING")
    assert reg.status()["a"]["restarts"] == 1
    assert reg.get("a") is f.instances[1]
    assert journal[:3] == ["start a", "start b", "start a"]


async def test_a_failing_background_task_restarts_the_application(make_registry: Callable[..., AppRegistry]) -> None:
    journal: list[str] = []
    reg = make_registry()
    f = Factory("a", journal)
    reg.register("a", f)
    await reg.start()
    go = asyncio.Event()

    async def work() -> None:
        await go.wait()
        raise ValueError("background work broke")

    app = f.instances[0]
    assert app.ports is not None
    task = app.ports.spawn(work(), "a work")
    assert task.get_name() == "a work"
    go.set()
    await wait_for(lambda: reg.status()["a"]["failures"] == 1)
    assert reg.status()["a"]["error"] == "task a work: ValueError: background work broke"
    await wait_for(lambda: reg.status()["a"]["state"] == "RUNNING")
    assert reg.status()["a"]["restarts"] == 1 and app.closed and len(f.instances) == 2


async def test_background_work_of_a_failed_application_is_cancelled(
        make_registry: Callable[..., AppRegistry]) -> None:
    # The old instance's other tasks must not outlive it (nor fail the new instance later).
    journal: list[str] = []
    reg = make_registry(backoff_s=60.0)
    f = Factory("a", journal, plan=lambda n: {"fail_telemetry": n == 0})
    reg.register("a", f)
    await reg.start()
    app = f.instances[0]
    assert app.ports is not None
    forever = app.ports.spawn(asyncio.Event().wait(), "a forever")
    reg.on_telemetry(change())
    await wait_for(forever.done)
    assert forever.cancelled()
    assert reg.status()["a"]["failures"] == 1


async def test_a_cancelled_background_task_is_not_a_failure(make_registry: Callable[..., AppRegistry]) -> None:
    reg = make_registry()
    f = Factory("a", [])
    reg.register("a", f)
    await reg.start()
    assert f.instances[0].ports is not None
    task = f.instances[0].ports.spawn(asyncio.Event().wait())
    task.cancel()
    await asyncio.wait([task])
    assert reg.status()["a"]["state"] == "RUNNING" and reg.status()["a"]["failures"] == 0


async def test_steps_that_block_the_loop_are_counted(make_registry: Callable[..., AppRegistry],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    journal: list[str] = []
    reg = make_registry(block_bound_s=0.1)
    f = Factory("a", journal)
    reg.register("a", f)
    await reg.start()
    assert reg.status()["a"]["slow_steps"] == 0
    app = f.instances[0]

    def slow_state(state: Any) -> None:
        time.sleep(0.2)  # a synchronous callback that holds the loop

    app.on_state = slow_state  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        reg.on_state("s")
    assert reg.status()["a"]["slow_steps"] == 1
    assert reg.status()["a"]["max_step_s"] >= 0.2
    assert "held the event loop" in caplog.text

    async def work() -> str:
        await asyncio.sleep(0)
        time.sleep(0.2)  # noqa: ASYNC251 (step 2 blocks the loop: what is measured)
        await asyncio.sleep(0)
        time.sleep(0.2)  # noqa: ASYNC251 (step 3 blocks the loop)
        await asyncio.sleep(0)
        return "done"

    assert app.ports is not None
    assert await app.ports.spawn(work()) == "done"
    assert reg.status()["a"]["slow_steps"] == 3
    assert reg.status()["a"]["state"] == "RUNNING"


async def test_call_dispatches_only_the_api(make_registry: Callable[..., AppRegistry]) -> None:
    reg = make_registry()
    reg.register("a", Factory("a", []))
    await reg.start()
    assert await reg.call("a", "echo", 3) == 3
    assert await reg.call("a", "slow_echo", x=4) == 4
    with pytest.raises(DmsError) as info:
        await reg.call("a", "secret")
    assert info.value.code == "BAD_INPUT" and "echo, slow_echo" in info.value.message
    with pytest.raises(DmsError) as info:
        await reg.call("nope", "echo", 1)
    assert info.value.code == "NOT_FOUND" and info.value.element_id == "nope"
    with pytest.raises(DmsError) as info:
        reg.get("nope")
    assert info.value.code == "NOT_FOUND" and "a" in info.value.message


async def test_get_of_a_failed_application_is_unavailable(make_registry: Callable[..., AppRegistry]) -> None:
    reg = make_registry(backoff_s=60.0)  # the restart waits: the application stays FAILED here
    reg.register("a", Factory("a", [], plan=lambda n: {"fail_telemetry": True}))
    await reg.start()
    reg.on_telemetry(change())
    for attempt in (lambda: reg.get("a"), None):
        with pytest.raises(DmsError) as info:
            if attempt is not None:
                attempt()
            else:
                await reg.call("a", "echo", 1)
        assert info.value.code == "APPLICATION_UNAVAILABLE"
        assert "FAILED" in info.value.message and "retry" in info.value.message
    assert reg.read_only("a") == frozenset()


async def test_close_closes_every_application_and_cancels_pending_restarts(
        make_registry: Callable[..., AppRegistry]) -> None:
    journal: list[str] = []
    reg = make_registry(backoff_s=60.0)
    fa = Factory("a", journal)
    fb = Factory("b", journal, plan=lambda n: {"fail_telemetry": True})
    reg.register("a", fa)
    reg.register("b", fb)
    await reg.start()
    reg.on_telemetry(change())
    restart = next(t for t in asyncio.all_tasks() if t.get_name() == f"restart b {FEEDER}")
    await wait_for(lambda: fb.instances[0].closed)  # the failed instance is closed before the back-off
    assert fa.instances[0].ports is not None
    work = fa.instances[0].ports.spawn(asyncio.Event().wait(), "a work")

    await reg.close()
    await asyncio.wait([restart, work], timeout=5)
    assert restart.cancelled() and work.cancelled()
    assert fa.instances[0].closed
    assert {n: s["state"] for n, s in reg.status().items()} == {"a": "STOPPED", "b": "FAILED"}
    assert len(fb.instances) == 1
    assert journal.count("close a") == 1 and journal.count("close b") == 1


async def test_a_failure_during_close_does_not_stop_the_others(make_registry: Callable[..., AppRegistry],
                                                              caplog: pytest.LogCaptureFixture) -> None:
    journal: list[str] = []
    reg = make_registry()
    fa, fb = Factory("a", journal), Factory("b", journal)
    reg.register("a", fa)
    reg.register("b", fb)
    await reg.start()

    async def broken_close() -> None:
        raise RuntimeError("close broke")

    fa.instances[0].close = broken_close  # type: ignore[method-assign]
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        await reg.close()
    assert fb.instances[0].closed
    assert "close broke" in caplog.text
    assert {s["state"] for s in reg.status().values()} == {"STOPPED"}


class EventsApp(FakeApp):
    """An application that observes the feeder's published events; ``fail_events`` makes it raise."""

    def __init__(self, name: str, journal: list[str], *, fail_events: bool = False) -> None:
        super().__init__(name, journal)
        self.fail_events = fail_events
        self.events: list[Any] = []

    def on_events(self, events: Any) -> None:
        if self.fail_events:
            raise RuntimeError(f"{self.name} chokes on events")
        self.events.extend(events)


async def test_published_events_reach_the_applications_that_observe_them(
        make_registry: Callable[..., AppRegistry], caplog: pytest.LogCaptureFixture) -> None:
    from actors.cores.events import EventKind
    from actors.outbox import EventOutbox, LocalEventSink

    journal: list[str] = []
    reg = make_registry()
    watchers = [EventsApp("w1", journal), EventsApp("bad", journal, fail_events=True), EventsApp("w2", journal)]
    for app in watchers:
        reg.register(app.name, lambda a=app: a)  # type: ignore[misc]
    plain = Factory("plain", journal)  # no on_events: skipped, not failed
    reg.register("plain", plain)
    await reg.start()
    outbox = EventOutbox(FEEDER, LocalEventSink())
    outbox.watch(reg.on_events)
    outbox.event(EventKind.ALARM, "sw1", "tripped")
    outbox.event(EventKind.TOPOLOGY_CHANGE, None, "switches changed")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        await outbox.flush()
    try:
        for app in (watchers[0], watchers[2]):
            assert [(e.seq, e.kind, e.element_id) for e in app.events] == [
                (1, EventKind.ALARM, "sw1"), (2, EventKind.TOPOLOGY_CHANGE, None)]  # with the bus's numbers
        s = reg.status()
        assert s["bad"]["state"] == "FAILED" and s["bad"]["error"] == "on_events: RuntimeError: bad chokes on events"
        assert s["plain"]["state"] == "RUNNING" and s["plain"]["failures"] == 0
        assert s["w1"]["failures"] == s["w2"]["failures"] == 0
        reg.on_events([])  # nothing published: nobody called
        assert len(watchers[0].events) == 2
    finally:
        await outbox.close(1.0)


async def test_a_failing_event_watcher_does_not_stop_the_outbox(caplog: pytest.LogCaptureFixture) -> None:
    from actors.cores.events import EventKind
    from actors.outbox import EventOutbox, LocalEventSink

    seen: list[int] = []

    def bad(events: Any) -> None:
        raise RuntimeError("watcher down")

    outbox = EventOutbox(FEEDER, LocalEventSink())
    outbox.watch(bad)
    outbox.watch(lambda evs: seen.extend(e.seq for e in evs))
    outbox.event(EventKind.ALARM, "sw1", "tripped", alarm="raise")
    with caplog.at_level(logging.ERROR, logger="actors.outbox"):
        assert await outbox.flush() == 1  # the alarm book is updated all the same
    assert seen == [1] and "watcher down" in caplog.text
    await outbox.close(1.0)
