"""The small interface every field-device client implements, and the values it produces.

A client reads all mapped points of one device (``read_points``) and writes one command
(``write_command``). Telemetry never raises on a communication failure: each point comes back with
a :class:`Quality` (``COMM_LOST`` when the device does not answer or answers with a frame that cannot
be decoded, ``INVALID`` when it answered with an exception/bad status or the value is outside its
configured range, ``STALE`` when the last good value is too old). Commands do raise, and are sent
exactly once: an operate is never retried automatically (IEC 61850-7-2 / select-before-operate
practice; the head-end decides what to do).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Protocol, runtime_checkable

from graph_schema.errors import DmsError


class Quality(StrEnum):
    GOOD = "GOOD"
    STALE = "STALE"
    INVALID = "INVALID"
    COMM_LOST = "COMM_LOST"


@dataclass(frozen=True, slots=True)
class PointValue:
    """One telemetered value. ``value`` is the last known value (``None`` if never read).

    ``exception_code`` is the Modbus exception code (or the OPC UA StatusCode value) that made the
    value ``INVALID``, when there was one.
    """

    point_id: str
    value: float | bool | None
    quality: Quality
    source_ts: datetime | None
    received_ts: datetime
    exception_code: int | None = None
    reason: str | None = None  # why the value is not GOOD, when the client knows (device, register, defect)
    # INVALID because the whole device answered with something unusable (a malformed frame), not
    # because of this point: the device's alarm is raised rather than one alarm per point.
    device_fault: bool = False


DataChangeCallback = Callable[[list[PointValue]], None]


def utc_now() -> datetime:
    return datetime.now(UTC)


class ProtocolError(DmsError):
    """A field protocol failure."""

    code = "PROTOCOL_ERROR"


class DeviceUnreachable(ProtocolError):
    """The device did not answer (no connection, timeout). The command was not confirmed."""

    code = "DEVICE_UNREACHABLE"


class DeviceRejected(ProtocolError):
    """The device answered with an exception (Modbus) or a bad status code (OPC UA)."""

    code = "DEVICE_REJECTED"

    def __init__(self, message: str, *, exception_code: int, element_id: str | None = None) -> None:
        super().__init__(message, element_id=element_id)
        self.exception_code = exception_code

    def extensions(self) -> dict[str, object]:
        ext = super().extensions()
        ext["exceptionCode"] = self.exception_code
        return ext


class MalformedResponse(ProtocolError):
    """The device answered, but the answer cannot be decoded (truncated or oversized frame, wrong
    function code, a value the protocol library could not parse).

    Handled like a communication failure (Modbus Application Protocol v1.1b3 4.1: a client discards
    a frame it cannot use): the device's points go ``COMM_LOST`` with this message as their
    ``reason``, the connection is dropped and re-opened, and a command answered this way may or may
    not have been executed.
    """

    code = "MALFORMED_RESPONSE"


class CertificateUntrusted(ProtocolError):
    """The peer presented a certificate that is not in the trust list."""

    code = "CERTIFICATE_UNTRUSTED"


@runtime_checkable
class FieldClient(Protocol):
    """One connection to one field device (an RTU unit id, an OPC UA server)."""

    async def connect(self) -> None: ...

    async def close(self) -> None: ...

    async def read_points(self) -> list[PointValue]:
        """Every mapped READ point of the device; never raises on communication failure."""
        ...

    async def write_command(self, command_id: str, value: float | bool) -> None:
        """Send one command once. Raises DeviceUnreachable / DeviceRejected; never retries."""
        ...

    def subscribe(self, callback: DataChangeCallback) -> None:
        """Register a callback for pushed data changes (OPC UA); polling clients may ignore it."""
        ...


def make_field_client(
    device: object,
    points: object,
    *,
    data_dir: str | None = None,
    pki_dir: str | None = None,
    certificate: object | None = None,
    trusted_server_certs: object = (),
    allow_nosecurity: bool = False,
    **options: object,
) -> FieldClient:
    """The right client for ``device`` (a :class:`protocols.pointmap.Device`).

    For OPC UA the head-end's certificate and trust list come from, in this order:
    ``certificate``/``trusted_server_certs`` when given; ``pki_dir`` (``DMS_OPCUA_PKI_DIR``: the
    utility's own certificate, key and trusted RTU certificates, see
    :func:`protocols.certs.load_client_pki`); else, with ``data_dir`` (the demo), the self-signed
    ``<data_dir>/pki/headend`` trusting the simulator's certificate. ``options`` go to the client
    (``timeout_s``, ``publishing_interval_ms``, ...).
    """
    from protocols.pointmap import Device, ProtocolKind

    assert isinstance(device, Device)
    if device.protocol is ProtocolKind.MODBUS:
        from protocols.modbus_client import ModbusClient

        return ModbusClient(device, points, **options)  # type: ignore[arg-type]
    from protocols.opcua_client import OpcUaClient

    if pki_dir is not None and certificate is None:
        from protocols.certs import load_client_pki

        certificate, trusted = load_client_pki(pki_dir)
        trusted_server_certs = trusted_server_certs or trusted
    elif data_dir is not None and certificate is None:
        from protocols.certs import ensure_pki

        pki = ensure_pki(data_dir)
        certificate = pki.headend
        trusted_server_certs = trusted_server_certs or [pki.simulator.cert_path]
    return OpcUaClient(
        device,
        points,  # type: ignore[arg-type]
        certificate=certificate,  # type: ignore[arg-type]
        trusted_server_certs=trusted_server_certs,  # type: ignore[arg-type]
        allow_nosecurity=allow_nosecurity,
        **options,  # type: ignore[arg-type]
    )
