"""OPC UA field client (asyncua ``Client``) behind :class:`FieldClient`.

* Security (OPC UA Part 2 / Part 4 5.4): ``Basic256Sha256`` + ``SignAndEncrypt`` with the client's
  application instance certificate; the server's certificate must be in the trust list (exact
  match by SHA-256 fingerprint), otherwise the connection is refused with
  :class:`CertificateUntrusted` before any session is created. ``NoSecurity`` is refused unless
  ``allow_nosecurity=True`` is passed (``DMS_OPCUA_ALLOW_NOSECURITY=true``; tests/demo only).
* Telemetry: one subscription (Part 4 5.13) with a data-change monitored item per point
  (publishing interval configurable); values are cached and pushed to ``subscribe`` callbacks.
  Servers without subscription support are polled with Read (Part 4 5.10.2) instead.
* Quality: StatusCode Good -> GOOD (then range-checked), Bad -> INVALID (Bad_NoCommunication,
  Bad_CommunicationError, Bad_ServerNotConnected -> COMM_LOST), Uncertain -> STALE. A lost session
  -> COMM_LOST for every point, then reconnect with capped exponential backoff and re-create the
  subscription.
* Commands: one Write of the node's Value (Part 4 5.10.4), never retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from asyncua import Client, ua
from asyncua.common.utils import ServiceError
from asyncua.crypto import security_policies

from graph_schema.errors import BadInput, ConfigError
from protocols.base import (
    CertificateUntrusted,
    DataChangeCallback,
    DeviceRejected,
    DeviceUnreachable,
    PointValue,
    Quality,
    utc_now,
)
from protocols.certs import CertPair, fingerprint, trusted_fingerprints
from protocols.codecs import DataType, range_quality, stale_quality
from protocols.pointmap import Device, Direction, PointMapping, ProtocolKind, SecurityPolicy

log = logging.getLogger(__name__)

_COMM_LOST_CODES = {
    ua.StatusCodes.BadNoCommunication,
    ua.StatusCodes.BadCommunicationError,
    ua.StatusCodes.BadServerNotConnected,
}


def quality_of_status(status: ua.StatusCode | None) -> Quality:
    """OPC UA StatusCode (Part 4 7.39) -> point quality."""
    if status is None or status.is_good():
        return Quality.GOOD
    if status.is_bad():
        return Quality.COMM_LOST if status.value in _COMM_LOST_CODES else Quality.INVALID
    return Quality.STALE  # Uncertain (e.g. Uncertain_LastUsableValue)


class _Handler:
    def __init__(self, owner: OpcUaClient) -> None:
        self.owner = owner

    def datachange_notification(self, node: Any, val: Any, data: Any) -> None:
        self.owner._on_datavalue(node.nodeid, data.monitored_item.Value)

    def status_change_notification(self, status: Any) -> None:
        code = getattr(status, "Status", None)
        if code is not None and not ua.StatusCode(code.value if hasattr(code, "value") else code).is_good():
            self.owner._mark_lost(f"subscription status {code}")


class OpcUaClient:
    """:class:`protocols.base.FieldClient` for one OPC UA server."""

    def __init__(
        self,
        device: Device,
        points: Sequence[PointMapping],
        *,
        certificate: CertPair | None = None,
        trusted_server_certs: Sequence[str | Any] = (),
        allow_nosecurity: bool = False,
        use_subscription: bool = True,
        publishing_interval_ms: float = 200.0,
        timeout_s: float = 2.0,
        watchdog_interval_s: float = 1.0,
        stale_after_s: float | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        if device.protocol is not ProtocolKind.OPCUA or not device.endpoint:
            raise ConfigError(f"device {device.device_id!r} is not an OPC UA device with an endpoint")
        self.device = device
        self.secure = device.security_policy is not SecurityPolicy.NONE
        if not self.secure and not allow_nosecurity:
            raise ConfigError(
                f"OPC UA device {device.device_id!r} ({device.endpoint}) is configured without security "
                "(NoSecurity); that is refused by default. Configure it for Basic256Sha256 SignAndEncrypt, "
                "or, for tests and demos only, set DMS_OPCUA_ALLOW_NOSECURITY=true"
            )
        if self.secure:
            if certificate is None:
                raise ConfigError(
                    f"OPC UA device {device.device_id!r} needs SignAndEncrypt: give the client a certificate "
                    "and key (protocols.certs.ensure_pki creates them in the data directory)"
                )
            self.trusted = trusted_fingerprints(trusted_server_certs)
            if not self.trusted:
                raise ConfigError(
                    f"OPC UA device {device.device_id!r}: the server-certificate trust list is empty; "
                    "add the server's certificate file (or a directory of them) to trusted_server_certs"
                )
        else:
            self.trusted = frozenset()
        self.certificate = certificate
        self.points = {p.point_id: p for p in points if p.device_id == device.device_id}
        self.read_points_list = [p for p in self.points.values() if p.direction is Direction.READ]
        self._by_node = {ua.NodeId.from_string(p.node_id): p for p in self.read_points_list if p.node_id}
        self.use_subscription = use_subscription
        self.publishing_interval_ms = publishing_interval_ms
        self.timeout_s = timeout_s
        self.watchdog_interval_s = watchdog_interval_s
        self.stale_after_s = stale_after_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._client: Client | None = None
        self._subscribed = False
        self._connected = False
        self._lost = asyncio.Event()
        self._supervisor: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._cache: dict[str, PointValue] = {}
        self._last_good: dict[str, float | bool] = {}
        self._callbacks: list[DataChangeCallback] = []
        self._closed = False
        self.notifications = 0
        self.reconnects = 0

    # -- certificates -----------------------------------------------------------------------------
    async def _validate_server_cert(self, cert: Any, app: Any) -> None:
        from cryptography.hazmat.primitives import serialization

        der = cert.public_bytes(serialization.Encoding.DER)
        if fingerprint(der) not in self.trusted:
            raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

    # -- connection -------------------------------------------------------------------------------
    async def _connect_once(self) -> None:
        assert self.device.endpoint is not None
        client = Client(
            self.device.endpoint, timeout=self.timeout_s, watchdog_intervall=self.watchdog_interval_s
        )
        try:
            if self.secure:
                assert self.certificate is not None
                client.application_uri = self.certificate.application_uri
                endpoints = await client.connect_and_get_server_endpoints()
                ep = next(
                    (
                        e
                        for e in endpoints
                        if e.SecurityPolicyUri == security_policies.SecurityPolicyBasic256Sha256.URI
                        and e.SecurityMode == ua.MessageSecurityMode.SignAndEncrypt
                    ),
                    None,
                )
                if ep is None:
                    raise DeviceRejected(
                        f"OPC UA server {self.device.endpoint} offers no "
                        "Basic256Sha256 SignAndEncrypt endpoint",
                        exception_code=int(ua.StatusCodes.BadSecurityPolicyRejected),
                        element_id=self.device.device_id,
                    )
                server_der = _first_cert(ep.ServerCertificate)
                if fingerprint(server_der) not in self.trusted:
                    raise CertificateUntrusted(
                        f"OPC UA server {self.device.endpoint} presented a certificate that is not trusted "
                        f"(sha256 {fingerprint(server_der)[:16]}...); "
                        "add it to the trust list if it is genuine",
                        element_id=self.device.device_id,
                    )
                client.certificate_validator = self._validate_server_cert
                await client.set_security(
                    security_policies.SecurityPolicyBasic256Sha256,
                    str(self.certificate.cert_path),
                    str(self.certificate.key_path),
                    server_certificate=server_der,
                    mode=ua.MessageSecurityMode.SignAndEncrypt,
                )
            client.connection_lost_callback = self._on_connection_lost
            await client.connect(auto_reconnect=False)
        except (CertificateUntrusted, DeviceRejected):
            await _quiet_disconnect(client)
            raise
        except (TimeoutError, OSError, ua.UaError, ConnectionError) as exc:
            await _quiet_disconnect(client)
            raise DeviceUnreachable(
                f"cannot connect to OPC UA server {self.device.endpoint} ({type(exc).__name__}: {exc})",
                element_id=self.device.device_id,
            ) from None
        self._client = client
        self._subscribed = False
        nodes = [client.get_node(nid) for nid in self._by_node]
        if self.use_subscription and nodes:
            try:
                sub = await client.create_subscription(self.publishing_interval_ms, _Handler(self))
                await sub.subscribe_data_change(nodes)
                self._subscribed = True
            except (ua.UaStatusCodeError, ua.UaError) as exc:
                log.info(
                    "OPC UA server %s: no subscriptions (%s); falling back to reads",
                    self.device.endpoint,
                    exc,
                )
        self._connected = True
        self._lost.clear()
        if not self._subscribed:
            await self._read_all()

    async def connect(self) -> None:
        self._closed = False
        async with self._lock:
            await self._connect_once()
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.create_task(
                self._supervise(), name=f"opcua-supervisor {self.device.device_id}"
            )

    async def close(self) -> None:
        self._closed = True
        if self._supervisor is not None:
            self._supervisor.cancel()
            # asyncio.wait, not ``await``: a cancellation of close() itself must not be swallowed.
            await asyncio.wait({self._supervisor}, timeout=5.0)
            self._supervisor = None
        async with self._lock:
            client, self._client = self._client, None
            self._connected = False
            if client is not None:
                await _quiet_disconnect(client)

    async def _on_connection_lost(self, exc: Exception) -> None:
        self._mark_lost(repr(exc))

    def _mark_lost(self, why: str) -> None:
        if self._closed or not self._connected:
            return
        log.warning("OPC UA device %s: session lost (%s)", self.device.device_id, why)
        self._connected = False
        self._lost.set()
        now = utc_now()
        changed = [self._failed(p, now, Quality.COMM_LOST) for p in self.read_points_list]
        for pv in changed:
            self._cache[pv.point_id] = pv
        self._emit(changed)

    async def _supervise(self) -> None:
        while not self._closed:
            await self._lost.wait()
            delay = self.backoff_initial_s
            while not self._closed:
                async with self._lock:
                    old, self._client = self._client, None
                    if old is not None:
                        await _quiet_disconnect(old)
                    try:
                        await self._connect_once()
                    except (DeviceUnreachable, DeviceRejected, CertificateUntrusted) as exc:
                        log.info(
                            "OPC UA device %s: reconnect failed (%s); next in %.1f s",
                            self.device.device_id,
                            exc.message,
                            delay,
                        )
                    else:
                        self.reconnects += 1
                        break
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max_s)

    # -- values -----------------------------------------------------------------------------------
    def subscribe(self, callback: DataChangeCallback) -> None:
        self._callbacks.append(callback)

    def _emit(self, values: list[PointValue]) -> None:
        for cb in list(self._callbacks):
            try:
                cb(values)
            except Exception:
                log.exception("data-change callback failed")

    def _failed(
        self, p: PointMapping, now: datetime, quality: Quality, code: int | None = None
    ) -> PointValue:
        return PointValue(p.point_id, self._last_good.get(p.point_id), quality, None, now, code)

    def _to_point_value(self, p: PointMapping, dv: Any, now: datetime) -> PointValue:
        status = dv.StatusCode
        q = quality_of_status(status)
        src = dv.SourceTimestamp
        if src is not None and src.tzinfo is None:
            src = src.replace(tzinfo=UTC)
        raw = dv.Value.Value if dv.Value is not None else None
        if q is not Quality.GOOD or raw is None:
            code = int(status.value) if status is not None else None
            return self._failed(p, now, Quality.INVALID if q is Quality.GOOD else q, code)
        value: float | bool = bool(raw) if p.data_type is DataType.BOOL else float(raw) * p.scale + p.offset
        q = range_quality(value, p.min_value, p.max_value)
        if q is Quality.GOOD:
            self._last_good[p.point_id] = value
        return PointValue(p.point_id, value, q, src, now)

    def _on_datavalue(self, nodeid: Any, dv: Any) -> None:
        p = self._by_node.get(nodeid)
        if p is None:
            return
        self.notifications += 1
        pv = self._to_point_value(p, dv, utc_now())
        self._cache[p.point_id] = pv
        self._emit([pv])

    async def _read_all(self) -> list[PointValue]:
        client = self._client
        assert client is not None
        nodes = [client.get_node(nid) for nid in self._by_node]
        dvs = await client.read_attributes(nodes, ua.AttributeIds.Value)
        now = utc_now()
        out = [self._to_point_value(p, dv, now) for p, dv in zip(self._by_node.values(), dvs, strict=True)]
        for pv in out:
            self._cache[pv.point_id] = pv
        return out

    def _aged(self, pv: PointValue) -> PointValue:
        if self.stale_after_s is None or pv.source_ts is None:
            return pv
        age = (utc_now() - pv.source_ts).total_seconds()
        q = stale_quality(pv.quality, age, self.stale_after_s)
        return pv if q is pv.quality else PointValue(pv.point_id, pv.value, q, pv.source_ts, pv.received_ts)

    async def read_points(self) -> list[PointValue]:
        now = utc_now()
        if not self._connected or self._client is None:
            return [self._failed(p, now, Quality.COMM_LOST) for p in self.read_points_list]
        if not self._subscribed:
            async with self._lock:
                try:
                    out = await self._read_all()
                except (TimeoutError, OSError, ua.UaError, ConnectionError) as exc:
                    self._mark_lost(repr(exc))
                    return [self._failed(p, now, Quality.COMM_LOST) for p in self.read_points_list]
            return [self._aged(pv) for pv in out]
        return [
            self._aged(self._cache.get(p.point_id) or self._failed(p, now, Quality.STALE))
            for p in self.read_points_list
        ]

    # -- commands ---------------------------------------------------------------------------------
    async def write_command(self, command_id: str, value: float | bool) -> None:
        p = self.points.get(command_id)
        if p is None or p.direction is not Direction.COMMAND or not p.node_id:
            raise BadInput(f"{command_id!r} is not a command point of device {self.device.device_id!r}")
        if p.data_type is DataType.BOOL:
            variant = ua.Variant(bool(value), ua.VariantType.Boolean)
        else:
            eng = float(value)
            if (p.min_value is not None and eng < p.min_value) or (
                p.max_value is not None and eng > p.max_value
            ):
                raise BadInput(
                    f"command {command_id!r}: {eng} is outside [{p.min_value}, {p.max_value}]",
                    element_id=command_id,
                )
            variant = ua.Variant((eng - p.offset) / p.scale, ua.VariantType.Double)
        client = self._client
        if not self._connected or client is None:
            raise DeviceUnreachable(
                f"OPC UA device {self.device.device_id!r} is not connected; command {command_id!r} not sent",
                element_id=command_id,
            )
        try:
            results = await client.uaclient.write_attributes(
                [ua.NodeId.from_string(p.node_id)], [ua.DataValue(variant)], ua.AttributeIds.Value
            )
        except (TimeoutError, OSError, ConnectionError, ua.UaError) as exc:
            if isinstance(exc, ua.UaStatusCodeError):
                raise DeviceRejected(
                    f"OPC UA device {self.device.device_id!r} rejected command {command_id!r}: {exc}",
                    exception_code=int(exc.code),
                    element_id=command_id,
                ) from None
            raise DeviceUnreachable(
                f"command {command_id!r} to OPC UA device {self.device.device_id!r} got no answer ({exc!r}); "
                "check the telemetry before retrying",
                element_id=command_id,
            ) from None
        status = results[0]
        if not status.is_good():
            raise DeviceRejected(
                f"OPC UA device {self.device.device_id!r} rejected command {command_id!r} "
                f"with status {status.name}",
                exception_code=int(status.value),
                element_id=command_id,
            )


def _first_cert(der: bytes) -> bytes:
    cert_len = int.from_bytes(der[2:4], byteorder="big", signed=False) + 4
    return der[:cert_len]


async def _quiet_disconnect(client: Client) -> None:
    try:
        await asyncio.wait_for(client.disconnect(), timeout=2.0)
    except Exception:  # a half-open session on a dead server: nothing more to do
        log.debug("disconnect failed", exc_info=True)
    with contextlib.suppress(Exception):
        client.disconnect_socket()
