"""Field binding of one feeder: one client per device of its point map, scanned or subscribed.

Modbus devices are polled every ``scan_interval_s`` (one serialized client each); OPC UA devices push
data changes through their subscription (the client's own supervisor reconnects after a loss).
Every batch of values goes to ``on_values(device_id, values)``, synchronously.

A scan task of an earlier binding that outlived its cancellation (a protocol library that swallowed
it) never delivers values: each delivery checks that its client still serves the device.
:meth:`FieldBinding.detach` finishes in bounded time whatever the libraries do.
"""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger(__name__)
DETACH_TIMEOUT_S = 5.0  # field tasks and connections get this long to stop when the feeder is detached

OnValues = Callable[[str, Sequence[Any]], None]


class FieldBinding:
    def __init__(self, feeder_id: str, on_values: OnValues, *, scan_interval_s: float = 1.0,
                 modbus_timeout_s: float = 1.0, opcua_publishing_interval_ms: float = 100.0,
                 backoff_max_s: float = 2.0) -> None:
        self.feeder_id = feeder_id
        self._on_values = on_values
        self._scan_interval_s = scan_interval_s
        self._modbus_timeout_s = modbus_timeout_s
        self._opcua_publishing_interval_ms = opcua_publishing_interval_ms
        self._backoff_max_s = backoff_max_s
        self.point_map: Any = None  # protocols.pointmap.PointMap
        self.points: dict[str, Any] = {}  # point id -> PointMapping
        self.clients: dict[str, Any] = {}
        self.tasks: list[asyncio.Task[None]] = []

    @property
    def attached(self) -> bool:
        return self.point_map is not None

    def client_for(self, point_id: str) -> Any:
        """The client of the device that serves ``point_id`` (None when unbound)."""
        p = self.points.get(point_id)
        return self.clients.get(p.device_id) if p is not None else None

    def attach(self, pm: Any, *, data_dir: str | None = None, allow_nosecurity: bool = False,
               pki_dir: str | None = None) -> None:
        """Start clients for every device of ``pm`` (call :meth:`detach` first)."""
        from protocols.base import make_field_client
        from protocols.pointmap import ProtocolKind

        self.point_map = pm
        self.points = {p.point_id: p for p in pm.points}
        for dev in pm.devices:
            points = pm.points_of(dev.device_id)
            if dev.protocol is ProtocolKind.MODBUS:
                client = make_field_client(dev, points, timeout_s=self._modbus_timeout_s,
                                           backoff_max_s=self._backoff_max_s)
                self.clients[dev.device_id] = client
                self.tasks.append(asyncio.create_task(self.poll(dev.device_id, client), name=f"poll {dev.device_id}"))
            else:
                client = make_field_client(dev, points, data_dir=data_dir, pki_dir=pki_dir,
                                           allow_nosecurity=allow_nosecurity,
                                           publishing_interval_ms=self._opcua_publishing_interval_ms,
                                           backoff_max_s=self._backoff_max_s)
                self.clients[dev.device_id] = client
                client.subscribe(lambda values, d=dev.device_id, c=client: self._deliver(d, c, values))
                self.tasks.append(asyncio.create_task(self.connect_opcua(dev.device_id, client),
                                                      name=f"connect {dev.device_id}"))
        log.info("feeder %s attached to %d field devices (%d points)", self.feeder_id, len(pm.devices),
                 len(pm.points))

    async def detach(self) -> None:
        """Stop scanning and close every connection; what has not stopped after ``DETACH_TIMEOUT_S`` is
        logged with its stack and left to finish on its own, and the binding is dropped regardless."""
        tasks, self.tasks = self.tasks, []
        clients, self.clients = self.clients, {}
        self.point_map = None
        self.points = {}
        for t in tasks:
            t.cancel()
        closers = [asyncio.create_task(c.close(), name=f"close {d}") for d, c in clients.items()]
        pending = [*tasks, *closers]
        if not pending:
            return
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

    def bound(self, device_id: str, client: Any) -> bool:
        """Whether ``client`` still serves the device."""
        return self.clients.get(device_id) is client

    def _deliver(self, device_id: str, client: Any, values: Sequence[Any]) -> None:
        if values and self.bound(device_id, client):
            self._on_values(device_id, values)

    async def poll(self, device_id: str, client: Any) -> None:
        loop = asyncio.get_running_loop()
        while self.bound(device_id, client):
            t0 = loop.time()
            try:
                values = await client.read_points()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("feeder %s: scan of %s failed", self.feeder_id, device_id)
                values = []
            self._deliver(device_id, client, values)
            await asyncio.sleep(max(0.0, self._scan_interval_s - (loop.time() - t0)))

    async def connect_opcua(self, device_id: str, client: Any) -> None:
        """Connect once; the client's own supervisor reconnects after a later loss."""
        from protocols.base import ProtocolError

        delay = 0.5
        while self.bound(device_id, client):
            try:
                await client.connect()
                return
            except asyncio.CancelledError:
                raise
            except (ProtocolError, OSError, TimeoutError) as exc:
                log.info("feeder %s: OPC UA device %s not reachable (%s); retry in %.1f s", self.feeder_id,
                         device_id, exc, delay)
                self._deliver(device_id, client, await client.read_points())
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._backoff_max_s)
