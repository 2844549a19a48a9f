"""The fleet supervisor: the one place that calls Ray.

It connects to Ray (a local ``ray.init()`` or ``DMS_RAY_ADDRESS``), starts one named
:class:`~actors.feeder_actor.FeederActor` per feeder (``num_cpus=0``: actors are I/O- and
event-driven, and a 2-core node must host many), watches them, and recreates one that died; the
new one rebuilds from the graph store. Actor methods are never retried by Ray
(``max_task_retries=0``): a control must be sent at most once. Read-only calls that hit a dead
actor are retried once here, after the actor was recreated.

The fleet also starts the cluster's event bus (:class:`actors.eventbus.EventBus`, one named actor
``dms-events``, ``num_cpus=0``, restarted by Ray when it crashes) and hands every feeder actor a
:class:`RayEventSink` to publish to it. A feeder's field binding (``attach_field``) is remembered
here and applied again to an actor that was recreated or restarted, so it rebuilds from the store
plus a fresh field scan.

Local Ray uses token authentication with a token generated in the data directory, so no run
depends on a token an earlier run left in ``~/.ray``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, GetTimeoutError, RayActorError

from actors.apps import DEFAULT_APPS
from actors.cores.events import Event, EventsPage
from actors.eventbus import EventBus
from actors.feeder_actor import ActorOptions, FeederActor, StoreAddress, describe_error
from graph_schema.errors import ActorUnavailable, DmsError, NotFound

log = logging.getLogger(__name__)

NAMESPACE = "dms"

# Calls that only read may be retried after the actor was recreated; anything else may not.
READ_ONLY = frozenset({"ping", "model", "state", "power_flow", "measurements", "alarms", "tags", "field_status",
                       "metrics", "devices", "app_status"})
READ_ONLY_APP_METHODS = frozenset(f"{app.name}.{m}" for app in DEFAULT_APPS for m in app.read_only)
EVENT_BUS_NAME = "dms-events"
SUPERVISOR_NAME = "dms-fleet"


def actor_name(feeder_id: str) -> str:
    return f"feeder:{feeder_id}"


def prepare_local_ray_auth(data_dir: Path) -> None:
    """Turn on Ray token auth with a token of our own (0600) before a local ``ray.init``."""
    ray_dir = data_dir / "ray"
    ray_dir.mkdir(parents=True, exist_ok=True)
    token_path = ray_dir / "auth_token"
    if not token_path.exists():
        fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32))
    # Ray reads these from its environment (the raylet and workers inherit them).
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path.resolve())
    os.environ.pop("RAY_AUTH_TOKEN", None)
    # Ray caches its config and token when first imported; refresh both the way Ray itself does
    # when it turns token mode on (ray/_private/authentication/authentication_token_setup.py).
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _bind_local_ray_to_loopback() -> None:
    """Make a local Ray listen on 127.0.0.1 only, with 127.0.0.1 as its node IP.

    Ray's gRPC servers (GCS, raylet, every worker) listen on loopback only when the node IP is
    literally ``127.0.0.1``; on Linux ``ray.init(_node_ip_address="127.0.0.1")`` alone is not
    enough, because Ray replaces a loopback node IP with the host's external address unless it
    runs in single-machine mode (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, its default on macOS and
    Windows). The variable reaches Ray's own processes through the environment; the module flag
    covers a Ray already imported in this process (it is read when the constant module loads).
    """
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    import ray._private.ray_constants as ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


# An AF_UNIX socket path holds at most 107 bytes; Ray puts its object store socket at
# <temp dir>/session_<date>_<time>_<usec>_<pid>/sockets/plasma_store (64 bytes after the temp dir
# with a 7-digit pid).
_UNIX_PATH_MAX = 107
_RAY_SOCKET_SUFFIX = 64


def local_ray_temp_dir(data_dir: Path) -> Path:
    """Where a local Ray keeps its session folders (sockets, logs): ``<data_dir>/ray``.

    Not Ray's default ``/tmp/ray``, which every user and run on the host shares. When the data
    directory's path is too long for Ray's AF_UNIX socket paths, a short private folder is used
    instead: ``<tmp>/dms-ray-<uid>/<hash of the data dir>`` (0700, owned by this user), one per
    data directory, so runs on different data directories still do not share one.
    """
    preferred = Path(data_dir).resolve() / "ray"
    if len(str(preferred)) + _RAY_SOCKET_SUFFIX <= _UNIX_PATH_MAX:
        preferred.mkdir(parents=True, exist_ok=True, mode=0o700)
        return preferred
    import hashlib
    import tempfile

    digest = hashlib.sha256(str(preferred).encode()).hexdigest()[:12]
    base = Path(tempfile.gettempdir())
    if len(str(base)) + 30 + _RAY_SOCKET_SUFFIX > _UNIX_PATH_MAX:
        base = Path("/tmp")
    user_dir = base / f"dms-ray-{os.getuid()}"
    user_dir.mkdir(mode=0o700, exist_ok=True)
    st = user_dir.lstat()
    if user_dir.is_symlink() or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise DmsError(
            f"{user_dir} (Ray's session folder for a data directory with a long path) is not a private "
            "folder of this user; remove it, or use a data directory with a shorter path (--data-dir)"
        )
    short = user_dir / digest
    short.mkdir(mode=0o700, exist_ok=True)
    log.info("data directory path too long for Ray's sockets; Ray session folders are in %s", short)
    return short


def connect_ray(*, address: str | None, data_dir: Path, num_cpus: int | None = None) -> bool:
    """Connect to Ray; returns True when this call started it (and so must shut it down)."""
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {
        "namespace": NAMESPACE,
        "include_dashboard": False,
        "logging_level": logging.WARNING,
        "log_to_driver": True,
        "configure_logging": False,
    }
    if address is None:
        prepare_local_ray_auth(data_dir)
        _bind_local_ray_to_loopback()
        kwargs["_node_ip_address"] = "127.0.0.1"
        kwargs["_temp_dir"] = str(local_ray_temp_dir(data_dir))
        kwargs["num_cpus"] = num_cpus if num_cpus is not None else os.cpu_count()
        # Keep Ray's object store small: actors exchange results of a few MB at most.
        kwargs["object_store_memory"] = 200 * 1024 * 1024
        # Ray runs its workers at nice 15 by default, a batch-computing choice. Here the workers
        # are the feeder actors doing the real-time work (scan, control, FDIR): at nice 15 a busy
        # server, simulator or graph store on the same host starves them for tens of seconds.
        kwargs["_system_config"] = {"worker_niceness": 0}
    else:
        kwargs["address"] = address
    ray.init(**kwargs)
    return True


def shutdown_ray() -> None:
    if ray.is_initialized():
        ray.shutdown()


@dataclass(frozen=True, slots=True)
class ActorHealth:
    feeder_id: str
    ok: bool
    detail: str
    restarts: int


_RemoteFeederActor = ray.remote(
    num_cpus=0,
    max_restarts=-1,  # Ray restarts a crashed actor in place; the supervisor recreates a killed one.
    max_task_retries=0,  # never resend a call: a control is sent at most once.
    max_concurrency=64,
)(FeederActor)


_RemoteEventBus = ray.remote(
    num_cpus=0,
    max_restarts=-1,
    max_task_retries=0,
    max_concurrency=1000,  # long polls of every server wait here concurrently (one event loop)
)(EventBus)


class RayEventSink:
    """What a feeder actor publishes its events through: the named event-bus actor.

    A publish that meets a dead or restarting bus is tried again (up to 3 times): events are not
    commands, and a duplicate is better than a gap."""

    def __init__(self, name: str = EVENT_BUS_NAME, namespace: str = NAMESPACE) -> None:
        self._name = name
        self._namespace = namespace
        self._handle: Any = None

    def __reduce__(self) -> tuple[Any, ...]:
        return (RayEventSink, (self._name, self._namespace))

    async def publish(self, events: list[Event]) -> list[int]:
        for attempt in range(3):
            try:
                if self._handle is None:
                    self._handle = ray.get_actor(self._name, namespace=self._namespace)
                seqs: list[int] = await self._handle.publish.remote(events)
                return seqs
            except (RayActorError, ValueError):
                self._handle = None
                if attempt == 2:
                    raise
                await asyncio.sleep(0.2 * (attempt + 1))
        raise AssertionError("unreachable")


class EventBusClient:
    """The server's side of the event bus (long polls and reads)."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    async def latest_seq(self) -> int:
        return int(await self._handle.latest_seq.remote())

    async def since(self, seq: int, *, feeder_id: str | None = None, kinds: list[str] | None = None,
                    limit: int = 1000) -> EventsPage:
        page: EventsPage = await self._handle.since.remote(seq, feeder_id=feeder_id, kinds=kinds, limit=limit)
        return page

    async def wait_since(self, seq: int, timeout_s: float, *, limit: int = 5000) -> EventsPage:
        page: EventsPage = await self._handle.wait_since.remote(seq, timeout_s, limit=limit)
        return page

    async def flush(self) -> int:
        return int(await self._handle.flush.remote())


def start_event_bus(store: StoreAddress) -> EventBusClient:
    """The cluster's event bus (created if absent; several servers share one)."""
    handle = _RemoteEventBus.options(name=EVENT_BUS_NAME, namespace=NAMESPACE, get_if_exists=True).remote(store)
    return EventBusClient(handle)


def _actor_id(handle: Any) -> str:
    return str(handle._actor_id.hex())


class FleetSupervisor:
    """The one owner of the feeder actors of a Ray cluster (a named, detached actor, ``dms-fleet``).

    Every API replica finds it by name and asks it for the actors; only it creates, recreates and
    kills them, so any number of replicas share one set of feeder actors. A dead actor is recreated
    exactly once: a report names the actor that died (its id), and a report about an actor that was
    already replaced returns the replacement. Feeder actors are detached too, so they outlive a
    restart of the supervisor, which finds them again by name.
    """

    def __init__(self, store: StoreAddress, options: ActorOptions) -> None:
        self._store = store
        self._options = options
        self._handles: dict[str, Any] = {}
        self._restarts: dict[str, int] = {}
        self._started_at: dict[str, float] = {}
        self._bindings: dict[str, tuple[str, str | None, bool, str | None]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._watch_task: asyncio.Task[None] | None = None
        self._watch_paused = 0
        self._graph: Any = None

    def store_uri(self) -> str:
        return self._store.uri

    def _lock(self, feeder_id: str) -> asyncio.Lock:
        return self._locks.setdefault(feeder_id, asyncio.Lock())

    def _spawn(self, feeder_id: str) -> Any:
        """The feeder's actor: the live one of that name if there is one (never killed), else a new one."""
        handle = _RemoteFeederActor.options(
            name=actor_name(feeder_id), namespace=NAMESPACE, get_if_exists=True, lifetime="detached",
        ).remote(feeder_id, self._store, self._options, RayEventSink())
        self._handles[feeder_id] = handle
        return handle

    async def ensure(self, feeder_ids: list[str]) -> dict[str, Any]:
        """Handles for ``feeder_ids``, creating the actors that do not exist yet."""
        for fid in feeder_ids:
            if fid not in self._handles:
                async with self._lock(fid):
                    if fid not in self._handles:
                        self._spawn(fid)
        return {fid: self._handles[fid] for fid in feeder_ids}

    def handles(self) -> dict[str, Any]:
        return dict(self._handles)

    def restarts(self) -> dict[str, int]:
        return dict(self._restarts)

    async def report_dead(self, feeder_id: str, dead_actor_id: str, reason: str) -> tuple[Any, int]:
        """An actor was found dead: recreate it, once. Returns (current handle, restarts)."""
        async with self._lock(feeder_id):
            current = self._handles.get(feeder_id)
            if current is None or _actor_id(current) == dead_actor_id:
                log.warning("feeder actor %s died (%s); recreating it from the graph store", feeder_id, reason)
                self._handles.pop(feeder_id, None)
                with contextlib.suppress(Exception):  # a dead name may linger a moment in the GCS
                    ray.kill(current, no_restart=True) if current is not None else None
                self._restarts[feeder_id] = self._restarts.get(feeder_id, 0) + 1
                self._started_at.pop(feeder_id, None)
                current = await self._respawn(feeder_id, dead_actor_id)
                if feeder_id in self._bindings:
                    asyncio.get_running_loop().create_task(self._reattach(feeder_id, current))
            return current, self._restarts.get(feeder_id, 0)

    async def _respawn(self, feeder_id: str, dead_actor_id: str) -> Any:
        for _ in range(50):
            handle = self._spawn(feeder_id)
            if _actor_id(handle) != dead_actor_id:
                return handle
            await asyncio.sleep(0.1)  # the GCS still lists the dead actor under the name
        raise ActorUnavailable(f"feeder {feeder_id!r}: the dead actor's name was not released", element_id=feeder_id)

    async def bind(self, feeder_id: str, binding: tuple[str, str | None, bool, str | None] | None) -> None:
        if binding is None:
            self._bindings.pop(feeder_id, None)
        else:
            self._bindings[feeder_id] = binding

    async def _reattach(self, feeder_id: str, handle: Any) -> None:
        binding = self._bindings.get(feeder_id)
        if binding is None:
            return
        try:
            await handle.attach_field.remote(*binding)
            log.info("feeder %s: field binding applied to the new actor", feeder_id)
        except Exception:
            log.warning("feeder %s: could not re-attach the field binding", feeder_id, exc_info=True)

    async def remove(self, feeder_id: str) -> None:
        """Stop and forget one feeder's actor (its feeder was deleted)."""
        async with self._lock(feeder_id):
            handle = self._handles.pop(feeder_id, None)
            self._bindings.pop(feeder_id, None)
            if handle is not None:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(handle.close.remote(), timeout=5)
                with contextlib.suppress(Exception):
                    ray.kill(handle, no_restart=True)

    def pause(self, delta: int) -> int:
        self._watch_paused = max(0, self._watch_paused + delta)
        return self._watch_paused

    def start_watching(self, interval_s: float = 5.0, discover: bool = False) -> bool:
        """Recreate dead actors in the background (one watcher per cluster, however many replicas
        ask); with ``discover``, also start actors for feeders that appeared in the store and stop
        those of deleted feeders. Returns False when it was already watching."""
        if self._watch_task is not None and not self._watch_task.done():
            return False
        self._watch_task = asyncio.get_running_loop().create_task(self._watch(interval_s, discover),
                                                                  name="fleet-watch")
        return True

    async def _discover(self) -> None:
        from graph_schema.store import GraphStore

        if self._graph is None:
            a = self._store
            self._graph = await GraphStore.connect(a.uri, a.user, a.password, a.database)
        present = {f.id for f in await self._graph.list_feeders()}
        for fid in sorted(present - set(self._handles)):
            log.info("new feeder %s in the store; starting its actor", fid)
            await self.ensure([fid])
        for fid in sorted(set(self._handles) - present):
            log.info("feeder %s was deleted from the store; stopping its actor", fid)
            await self.remove(fid)

    async def _watch(self, interval_s: float, discover: bool) -> None:
        while True:
            await asyncio.sleep(interval_s)
            if self._watch_paused:
                continue
            if discover:
                try:
                    await self._discover()
                except Exception:
                    log.warning("could not list feeders in the store", exc_info=True)
            for fid, handle in list(self._handles.items()):
                try:
                    info = await asyncio.wait_for(handle.ping.remote(), timeout=interval_s * 4)
                    started = float(info["started_at"])
                    if self._started_at.setdefault(fid, started) != started:
                        # Ray restarted the actor in place: it lost its field binding.
                        self._started_at[fid] = started
                        await self._reattach(fid, handle)
                except (ActorDiedError, ActorUnavailableError) as exc:
                    if not self._watch_paused:
                        await self.report_dead(fid, _actor_id(handle), describe_error(exc))
                except Exception:
                    log.debug("health ping of %s failed", fid, exc_info=True)

    async def shutdown(self) -> None:
        """Close and kill every feeder actor (the cluster's fleet is going away)."""
        if self._watch_task is not None:
            self._watch_task.cancel()
            await asyncio.wait({self._watch_task}, timeout=5)
            self._watch_task = None
        for handle in self._handles.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(handle.close.remote(), timeout=5)
            with contextlib.suppress(Exception):
                ray.kill(handle, no_restart=True)
        self._handles.clear()
        if self._graph is not None:
            with contextlib.suppress(Exception):
                await self._graph.close()
            self._graph = None


_RemoteSupervisor = ray.remote(
    num_cpus=0,
    max_restarts=-1,
    max_task_retries=0,
    max_concurrency=1000,
)(FleetSupervisor)


class Fleet:
    """An API replica's view of the cluster's feeder actors: finds the one supervisor, calls actors.

    Creating, recreating and killing actors is the supervisor's alone; this side reports an actor it
    found dead and retries read-only calls once on the replacement.
    """

    def __init__(self, store: StoreAddress, *, call_timeout_s: float = 60.0,
                 options: ActorOptions | None = None) -> None:
        self._store = store
        self._options = options or ActorOptions()
        self._bindings: dict[str, tuple[str, str | None, bool, str | None]] = {}
        self._handles: dict[str, Any] = {}
        self._restarts: dict[str, int] = {}
        self._call_timeout_s = call_timeout_s
        self._sup: Any = None
        self._refresh_task: asyncio.Task[None] | None = None

    async def _supervisor(self) -> Any:
        if self._sup is None:
            sup = _RemoteSupervisor.options(name=SUPERVISOR_NAME, namespace=NAMESPACE, get_if_exists=True,
                                            lifetime="detached").remote(self._store, self._options)
            uri = await sup.store_uri.remote()
            if uri != self._store.uri:
                raise DmsError(f"this Ray cluster's fleet serves the graph store at {uri}, not {self._store.uri}; "
                               f"point DMS_NEO4J_URI at the same store on every API replica, or use another "
                               f"Ray cluster", code="CONFIG_MISMATCH")
            self._sup = sup
        return self._sup

    @property
    def feeder_ids(self) -> list[str]:
        return sorted(self._handles)

    def restarts(self, feeder_id: str) -> int:
        return self._restarts.get(feeder_id, 0)

    async def start(self, feeder_ids: Iterable[str], *, wait: bool = True) -> None:
        sup = await self._supervisor()
        self._handles.update(await sup.ensure.remote(list(feeder_ids)))
        if wait:
            await asyncio.gather(*(self.call(fid, "ping") for fid in list(self._handles)))

    async def add(self, feeder_id: str) -> None:
        """Start the actor of a newly imported feeder, or make an existing one reload."""
        if feeder_id in self._handles:
            await self.call(feeder_id, "reload")
        else:
            await self.start([feeder_id])

    async def refresh(self) -> None:
        """Take the supervisor's current set of actors (new feeders, replacements, restarts)."""
        sup = await self._supervisor()
        self._handles = dict(await sup.handles.remote())
        self._restarts.update(await sup.restarts.remote())

    async def call(self, feeder_id: str, method: str, *args: Any, **kwargs: Any) -> Any:
        handle = self._handles.get(feeder_id)
        if handle is None:
            raise NotFound(
                f"feeder {feeder_id!r} not found; known feeders: {', '.join(self.feeder_ids) or 'none'}",
                element_id=feeder_id,
            )
        try:
            return await self._invoke(handle, method, args, kwargs)
        except (ActorDiedError, ActorUnavailableError) as exc:
            if not _read_only(method, args):
                await self._replaced(feeder_id, handle, describe_error(exc))
                raise ActorUnavailable(
                    f"feeder {feeder_id!r} actor was unavailable during {method}; it is being restarted "
                    f"and the request was NOT sent again. Check the device state and retry if needed.",
                    element_id=feeder_id,
                ) from exc
            handle = await self._replaced(feeder_id, handle, describe_error(exc))
            return await self._invoke(handle, method, args, kwargs)

    async def call_app(self, feeder_id: str, app: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """Call a method of an application hosted by the feeder's actor (see ``FeederActor.app_call``)."""
        return await self.call(feeder_id, "app_call", app, method, *args, **kwargs)

    async def _replaced(self, feeder_id: str, dead: Any, reason: str) -> Any:
        sup = await self._supervisor()
        ref = sup.report_dead.remote(feeder_id, _actor_id(dead), reason)
        try:  # bounded like every other call: a request never waits on the supervisor forever
            handle, restarts = await asyncio.wait_for(ref, timeout=self._call_timeout_s * 2)
        except TimeoutError:
            ray.cancel(ref)
            raise ActorUnavailable(f"feeder {feeder_id!r} actor died and the fleet supervisor did not recreate it "
                                   f"within {self._call_timeout_s * 2:.0f} s; retry shortly",
                                   element_id=feeder_id) from None
        self._handles[feeder_id] = handle
        self._restarts[feeder_id] = restarts
        return handle

    async def _invoke(self, handle: Any, method: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ref = getattr(handle, method).remote(*args, **kwargs)
        try:
            return await asyncio.wait_for(ref, timeout=self._call_timeout_s)
        except TimeoutError:
            ray.cancel(ref)
            raise ActorUnavailable(
                f"feeder actor did not answer {method} within {self._call_timeout_s:.0f} s"
            ) from None
        except RayActorError:
            raise
        except ray.exceptions.RayTaskError as exc:
            # The original exception keeps instance attributes (a control refusal's ``code``);
            # ``as_instanceof_cause`` rebuilds the class and loses them.
            original = getattr(exc, "cause", None)
            if isinstance(original, DmsError):
                raise original from None
            cause = exc.as_instanceof_cause()
            if isinstance(cause, DmsError):
                raise cause from None
            raise

    async def attach_field(self, feeder_id: str, point_map_json: str, data_dir: str | None,
                           allow_nosecurity: bool, pki_dir: str | None = None) -> dict[str, int]:
        """Bind a feeder actor to its field devices; the supervisor applies it to actors recreated later."""
        binding = (point_map_json, data_dir, allow_nosecurity, pki_dir)
        self._bindings[feeder_id] = binding
        await (await self._supervisor()).bind.remote(feeder_id, binding)
        result: dict[str, int] = await self.call(feeder_id, "attach_field", *binding)
        return result

    async def detach_field(self, feeder_id: str) -> None:
        self._bindings.pop(feeder_id, None)
        await (await self._supervisor()).bind.remote(feeder_id, None)
        if feeder_id in self._handles:
            await self.call(feeder_id, "detach_field")

    async def health(self, *, timeout_s: float = 5.0) -> list[ActorHealth]:
        async def one(fid: str) -> ActorHealth:
            try:
                ref = self._handles[fid].ping.remote()
                info = await asyncio.wait_for(ref, timeout=timeout_s)
                return ActorHealth(fid, True, f"version {info['version']}", self.restarts(fid))
            except (TimeoutError, GetTimeoutError):
                return ActorHealth(fid, False, f"no answer within {timeout_s} s", self.restarts(fid))
            except Exception as exc:  # report, never raise: health must answer
                return ActorHealth(fid, False, describe_error(exc), self.restarts(fid))

        return list(await asyncio.gather(*(one(fid) for fid in self.feeder_ids)))

    async def stop_feeder(self, feeder_id: str) -> None:
        """Stop and forget one feeder's actor (its feeder was deleted)."""
        self._handles.pop(feeder_id, None)
        self._bindings.pop(feeder_id, None)
        await (await self._supervisor()).remove.remote(feeder_id)

    @contextlib.contextmanager
    def watch_paused(self) -> Iterator[None]:
        """Hold the cluster's watcher (no recreation, no discovery) while inside: for drills that must
        see a dead actor as dead. Calls still recreate the actor they need."""
        ray.get(self._sup.pause.remote(1))
        try:
            yield
        finally:
            ray.get(self._sup.pause.remote(-1))

    def start_watching(self, interval_s: float = 5.0, discover: bool = False) -> None:
        """Ask the supervisor to watch (it does so once per cluster) and follow its set of actors here."""

        async def follow() -> None:
            sup = await self._supervisor()
            await sup.start_watching.remote(interval_s, discover)
            while True:
                await asyncio.sleep(interval_s)
                try:
                    await self.refresh()
                except Exception:
                    log.debug("could not refresh the fleet from its supervisor", exc_info=True)

        if self._refresh_task is None:
            self._refresh_task = asyncio.create_task(follow(), name="fleet-follow")

    async def stop(self, *, shutdown: bool = True) -> None:
        """Stop following; with ``shutdown`` (the replica that owns a local cluster, a benchmark) also
        close and kill the cluster's feeder actors and the supervisor."""
        if self._refresh_task is not None:
            self._refresh_task.cancel()
            await asyncio.wait({self._refresh_task}, timeout=5)
            self._refresh_task = None
        if shutdown and self._sup is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._sup.shutdown.remote(), timeout=60)
            with contextlib.suppress(Exception):
                ray.kill(self._sup, no_restart=True)
            self._sup = None
        self._handles.clear()

    def kill(self, feeder_id: str, *, no_restart: bool = True) -> None:
        """Kill an actor (tests and chaos drills); the supervisor recreates it."""
        ray.kill(self._handles[feeder_id], no_restart=no_restart)

    async def memory_uss_bytes(self) -> dict[str, int]:
        """USS of each feeder actor's worker process (same host only; used by the benchmark)."""
        import psutil

        out: dict[str, int] = {}
        for fid in self.feeder_ids:
            info = await self.call(fid, "ping")
            with contextlib.suppress(psutil.Error):
                out[fid] = psutil.Process(int(info["pid"])).memory_full_info().uss
        return out


def _read_only(method: str, args: tuple[Any, ...]) -> bool:
    if method == "app_call" and len(args) >= 2:
        return f"{args[0]}.{args[1]}" in READ_ONLY_APP_METHODS
    return method in READ_ONLY
