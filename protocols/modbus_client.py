"""Modbus TCP field client (pymodbus 3.16 ``AsyncModbusTcpClient``) behind :class:`FieldClient`.

One client = one device (a unit id on host:port) = one serialized connection (pymodbus clients
are not safe for concurrent use; an ``asyncio.Lock`` orders every request). Reads are batched per
table over contiguous addresses (FC01/02 up to 2000 bits, FC03/04 up to 125 registers, Modbus
Application Protocol v1.1b3 6.1-6.4). Quality per point:

* exception response -> ``INVALID`` with the exception code; a batch refused with ILLEGAL DATA
  ADDRESS is split and its points read one by one from then on, so one bad point does not blind
  its neighbours;
* timeout / disconnect -> ``COMM_LOST`` (last value kept), then reconnect with capped exponential
  backoff;
* an answer that cannot be decoded (truncated or oversized byte count, another function code, any
  error while decoding it) -> :class:`~protocols.base.MalformedResponse`: the whole scan of the
  device is discarded and every point goes ``INVALID`` with a ``reason`` naming the device, the
  registers and the defect, as for a timeout (so the head-end's comm-loss alarm fires), and the
  connection is re-opened (its framing can no longer be trusted);
* value outside [min, max] -> ``INVALID``.

Commands: FC05 (write single coil) for switch trip/close, FC06/FC16 for set points, sent exactly
once (``retries=0``); pymodbus' own automatic reconnect is switched off so nothing is replayed.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime

from pymodbus.client import AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from graph_schema.errors import BadInput, ConfigError
from protocols.base import (
    DataChangeCallback,
    DeviceRejected,
    DeviceUnreachable,
    MalformedResponse,
    PointValue,
    Quality,
    utc_now,
)
from protocols.codecs import (
    CodecError,
    DataType,
    FrameError,
    check_function_code,
    checked_bits,
    checked_registers,
    decode_value,
    encode_value,
    range_quality,
)
from protocols.pointmap import (
    MAX_BITS_PER_READ,
    MAX_REGISTERS_PER_READ,
    Device,
    Direction,
    PointMapping,
    ProtocolKind,
    Table,
)

log = logging.getLogger(__name__)

ILLEGAL_DATA_ADDRESS = 0x02
# Modbus Application Protocol v1.1b3 6.1-6.4: the read function code of each table.
READ_FUNCTION_CODE = {Table.COIL: 1, Table.DISCRETE_INPUT: 2, Table.HOLDING_REGISTER: 3, Table.INPUT_REGISTER: 4}
WRITE_FUNCTION_CODE = {"write_coil": 5, "write_register": 6, "write_registers": 16}
# What decoding a garbled answer can raise, here or inside the protocol library.
DECODE_ERRORS = (FrameError, IndexError, KeyError, struct.error, ValueError, TypeError, AttributeError,
                 OverflowError)


@dataclass
class _Batch:
    table: Table
    address: int
    count: int
    points: list[PointMapping]
    split: bool = False  # read point by point (a previous batch read hit an exception)


def plan_batches(points: Sequence[PointMapping]) -> list[_Batch]:
    """Group READ points into contiguous per-table reads within the protocol's size limits."""
    batches: list[_Batch] = []
    by_table: dict[Table, list[PointMapping]] = {}
    for p in points:
        if p.direction is Direction.READ and p.table is not None and p.address is not None:
            by_table.setdefault(p.table, []).append(p)
    for table in Table:
        pts = sorted(by_table.get(table, []), key=lambda p: p.address or 0)
        limit = MAX_BITS_PER_READ if table.is_bit else MAX_REGISTERS_PER_READ
        cur: _Batch | None = None
        for p in pts:
            assert p.address is not None
            span = p.register_span
            if cur is not None and p.address == cur.address + cur.count and cur.count + span <= limit:
                cur.count += span
                cur.points.append(p)
            else:
                cur = _Batch(table, p.address, span, [p])
                batches.append(cur)
    return batches


class ModbusClient:
    """:class:`protocols.base.FieldClient` for one Modbus TCP device (unit id)."""

    def __init__(
        self,
        device: Device,
        points: Sequence[PointMapping],
        *,
        timeout_s: float = 1.0,
        stale_after_s: float | None = None,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
    ) -> None:
        if device.protocol is not ProtocolKind.MODBUS or device.unit_id is None:
            raise ConfigError(f"device {device.device_id!r} is not a Modbus device with a unit id")
        self.device = device
        self.points = {p.point_id: p for p in points if p.device_id == device.device_id}
        self.timeout_s = timeout_s
        self.stale_after_s = stale_after_s
        self.backoff_initial_s = backoff_initial_s
        self.backoff_max_s = backoff_max_s
        self._batches = plan_batches(list(self.points.values()))
        self._lock = asyncio.Lock()
        self._client: AsyncModbusTcpClient | None = None
        self._backoff_s = backoff_initial_s
        self._next_attempt = 0.0  # monotonic time before which no reconnect is tried
        self._last: dict[str, tuple[float | bool, datetime, float]] = {}  # value, ts, monotonic
        self._closed = False
        self.last_exception: dict[str, int] = {}  # point id -> last Modbus exception code
        self.last_failure: str | None = None  # why the last scan failed as a whole (None: it did not)
        self.reads = 0  # requests sent (for metrics/benchmarks)

    # -- connection -------------------------------------------------------------------------------
    def _new_client(self) -> AsyncModbusTcpClient:
        return AsyncModbusTcpClient(
            self.device.host,
            port=self.device.port,
            timeout=self.timeout_s,
            retries=0,  # never resend: a command must go out at most once
            reconnect_delay=0,  # we reconnect ourselves, with our own backoff
            name=self.device.device_id,
        )

    async def _ensure_connected(self) -> AsyncModbusTcpClient:
        if self._closed:
            raise DeviceUnreachable(f"device {self.device.device_id!r}: the client is closed",
                                    element_id=self.device.device_id)
        if self._client is not None and self._client.connected:
            return self._client
        now = time.monotonic()
        if now < self._next_attempt:
            raise DeviceUnreachable(
                f"device {self.device.device_id!r} is down; "
                f"next reconnect in {self._next_attempt - now:.1f} s",
                element_id=self.device.device_id,
            )
        self._drop()
        client = self._new_client()
        ok = False
        try:
            ok = await client.connect()
        except (TimeoutError, OSError, ModbusException):
            ok = False
        if not ok:
            client.close()
            self._schedule_backoff()
            raise DeviceUnreachable(
                f"cannot connect to Modbus device {self.device.device_id!r} at "
                f"{self.device.host}:{self.device.port}; check that the RTU is powered and reachable",
                element_id=self.device.device_id,
            )
        self._client = client
        self._backoff_s = self.backoff_initial_s
        self._next_attempt = 0.0
        return client

    def _schedule_backoff(self) -> None:
        self._next_attempt = time.monotonic() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, self.backoff_max_s)

    def _drop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def _lost(self) -> None:
        self._drop()
        self._schedule_backoff()

    async def connect(self) -> None:
        self._closed = False
        async with self._lock:
            self._next_attempt = 0.0
            await self._ensure_connected()

    async def close(self) -> None:
        self._closed = True
        # First without the lock: a read waiting on a dead connection is released by the close
        # instead of holding the lock until its own timeout; then under it, for a connect in flight.
        self._drop()
        async with self._lock:
            self._drop()

    def subscribe(self, callback: DataChangeCallback) -> None:
        """Modbus has no push; the caller polls :meth:`read_points`."""

    # -- reads ------------------------------------------------------------------------------------
    async def _read(self, client: AsyncModbusTcpClient, table: Table, address: int, count: int):  # type: ignore[no-untyped-def]
        self.reads += 1
        unit = self.device.unit_id
        assert unit is not None
        if table is Table.COIL:
            return await client.read_coils(address, count=count, device_id=unit)
        if table is Table.DISCRETE_INPUT:
            return await client.read_discrete_inputs(address, count=count, device_id=unit)
        if table is Table.HOLDING_REGISTER:
            return await client.read_holding_registers(address, count=count, device_id=unit)
        return await client.read_input_registers(address, count=count, device_id=unit)

    def _value(self, p: PointMapping, now: datetime, value: float | bool) -> PointValue:
        q = range_quality(value, p.min_value, p.max_value)
        if q is Quality.GOOD:
            self._last[p.point_id] = (value, now, time.monotonic())
            self.last_exception.pop(p.point_id, None)
        return PointValue(p.point_id, value, q, None, now)

    def _failed(
        self, p: PointMapping, now: datetime, quality: Quality, code: int | None = None, reason: str | None = None
    ) -> PointValue:
        last = self._last.get(p.point_id)
        if code is not None:
            self.last_exception[p.point_id] = code
        return PointValue(p.point_id, None if last is None else last[0], quality, None, now, code, reason)

    def _malformed(self, table: Table, address: int, count: int, defect: str) -> MalformedResponse:
        last = address + count - 1
        where = f"{table} {address}" if count == 1 else f"{table} {address}..{last}"
        return MalformedResponse(
            f"device {self.device.device_id!r} (unit {self.device.unit_id} at {self.device.host}:"
            f"{self.device.port}) sent a malformed answer to the read of {where}: {defect}",
            element_id=self.device.device_id,
        )

    def _payload(self, b: _Batch, rsp: object) -> list[bool] | list[int]:
        """The bits or registers of a read answer, checked against the request (raises MalformedResponse)."""
        try:
            check_function_code(READ_FUNCTION_CODE[b.table], getattr(rsp, "function_code", None))
            if b.table.is_bit:
                return checked_bits(getattr(rsp, "bits", None), b.count)
            return checked_registers(getattr(rsp, "registers", None), b.count)
        except DECODE_ERRORS as exc:
            defect = str(exc) if isinstance(exc, FrameError) else f"{type(exc).__name__}: {exc}"
            raise self._malformed(b.table, b.address, b.count, defect) from None

    def _decode(self, b: _Batch, rsp: object, now: datetime) -> list[PointValue]:
        """Point values of one batch's answer. A frame that does not fit the request raises
        :class:`MalformedResponse` (the whole device fails); a well-formed value that is not a number
        (e.g. a NaN float) makes only its point ``INVALID``."""
        payload = self._payload(b, rsp)
        out: list[PointValue] = []
        for p in b.points:
            assert p.address is not None
            i = p.address - b.address
            if not 0 <= i or i + p.register_span > len(payload):  # cannot happen for a planned batch
                raise self._malformed(b.table, b.address, b.count, f"point {p.point_id!r} lies outside the answer")
            if b.table.is_bit:
                out.append(self._value(p, now, bool(payload[i])))
                continue
            regs = payload[i : i + p.register_span]
            try:
                v = decode_value(regs, p.register_format)  # type: ignore[arg-type]
            except CodecError as exc:
                out.append(self._failed(p, now, Quality.INVALID, reason=f"{p.point_id}: {exc.message}"))
                continue
            if p.data_type not in (DataType.FLOAT32, DataType.FLOAT64) and p.scale == 1 and p.offset == 0:
                v = float(int(v))
            out.append(self._value(p, now, v))
        return out

    async def _read_batch(self, client: AsyncModbusTcpClient, b: _Batch, now: datetime) -> list[PointValue]:
        if b.split and len(b.points) > 1:
            out: list[PointValue] = []
            for p in b.points:
                assert p.address is not None
                out += await self._read_batch(client, _Batch(b.table, p.address, p.register_span, [p]), now)
            return out
        rsp = await self._read(client, b.table, b.address, b.count)
        try:
            is_error = rsp.isError()
        except DECODE_ERRORS as exc:
            raise self._malformed(b.table, b.address, b.count, f"{type(exc).__name__}: {exc}") from None
        if is_error:
            code = int(getattr(rsp, "exception_code", 0) or 0)
            if code == ILLEGAL_DATA_ADDRESS and len(b.points) > 1:
                b.split = True
                log.warning(
                    "device %s refused %s %s..%s (exception %s); reading its points one by one",
                    self.device.device_id,
                    b.table,
                    b.address,
                    b.address + b.count - 1,
                    code,
                )
                return await self._read_batch(client, b, now)
            return [self._failed(p, now, Quality.INVALID, code) for p in b.points]
        return self._decode(b, rsp, now)

    async def read_points(self) -> list[PointValue]:
        async with self._lock:
            now = utc_now()
            try:
                client = await self._ensure_connected()
            except DeviceUnreachable as exc:
                return self._all_lost(now, exc.message)
            out: list[PointValue] = []
            for i, b in enumerate(self._batches):
                try:
                    out += await self._read_batch(client, b, now)
                except MalformedResponse as exc:
                    return self._scan_failed(now, exc.message)
                except (TimeoutError, ModbusException, OSError) as exc:
                    reason = f"device {self.device.device_id!r}: read of {b.table} {b.address} failed ({exc})"
                    self._note_failure(reason)
                    self._lost()
                    for rest in self._batches[i:]:
                        out += [self._failed(p, now, Quality.COMM_LOST, reason=reason) for p in rest.points]
                    return out
                except Exception as exc:  # anything else a garbled answer made the library raise
                    malformed = self._malformed(b.table, b.address, b.count, f"{type(exc).__name__}: {exc}")
                    return self._scan_failed(now, malformed.message)
            if self.last_failure is not None:
                log.info("device %s answers correctly again", self.device.device_id)
                self.last_failure = None
            return out

    def _all_lost(self, now: datetime, reason: str) -> list[PointValue]:
        return [self._failed(p, now, Quality.COMM_LOST, reason=reason) for b in self._batches for p in b.points]

    def _scan_failed(self, now: datetime, reason: str) -> list[PointValue]:
        """A malformed answer: nothing read in this scan is trusted, the connection is re-opened, and
        every point of the device is ``INVALID`` with the ``reason`` (a per-device failure: the
        device answers, but not with anything we can use; the actor raises the device's alarm)."""
        self._note_failure(reason, Quality.INVALID)
        self._drop()  # re-open at the next scan, without back-off: the device answers, just not usably
        return [replace(self._failed(p, now, Quality.INVALID, reason=reason), device_fault=True)
                for b in self._batches for p in b.points]

    def _note_failure(self, reason: str, quality: Quality = Quality.COMM_LOST) -> None:
        """Log a failure once when it starts or changes, not at every scan."""
        if reason != self.last_failure:
            log.warning("%s; marking its points %s", reason, quality)
        self.last_failure = reason

    async def verify(self) -> None:
        """Probe every mapped point once; raise BadInput naming each point the device refuses.

        Use after loading a point map to catch addresses that do not exist in the real device.
        """
        async with self._lock:
            client = await self._ensure_connected()
            bad: list[str] = []
            for p in sorted(self.points.values(), key=lambda p: p.point_id):
                if p.table is None or p.address is None:
                    continue
                rsp = await self._read(client, p.table, p.address, p.register_span)
                try:
                    refused = rsp.isError()
                    if not refused:
                        self._payload(_Batch(p.table, p.address, p.register_span, [p]), rsp)
                except MalformedResponse as exc:
                    self._lost()
                    raise exc from None
                except DECODE_ERRORS as exc:
                    self._lost()
                    raise self._malformed(p.table, p.address, p.register_span,
                                          f"{type(exc).__name__}: {exc}") from None
                if refused:
                    bad.append(
                        f"point {p.point_id!r}: {p.table} {p.address} refused by device "
                        f"{self.device.device_id!r} (Modbus exception {rsp.exception_code})"
                    )
            if bad:
                lines = "\n".join(f"  - {b}" for b in bad)
                raise BadInput(
                    f"{len(bad)} point(s) do not exist in device {self.device.device_id!r}; "
                    "fix the point map:\n"
                    f"{lines}",
                    element_id=self.device.device_id,
                )

    # -- commands ---------------------------------------------------------------------------------
    async def write_command(self, command_id: str, value: float | bool) -> None:
        p = self.points.get(command_id)
        if p is None or p.direction is not Direction.COMMAND or p.table is None or p.address is None:
            raise BadInput(f"{command_id!r} is not a command point of device {self.device.device_id!r}")
        unit = self.device.unit_id
        assert unit is not None
        if p.table is Table.COIL:
            request = ("write_coil", p.address, bool(value))
        else:
            try:
                regs = encode_value(float(value), p.register_format)
            except CodecError as exc:
                raise BadInput(f"command {command_id!r}: {exc.message}", element_id=command_id) from None
            request = (
                ("write_register", p.address, regs[0])
                if len(regs) == 1
                else ("write_registers", p.address, regs)
            )
        async with self._lock:
            client = await self._ensure_connected()
            method, address, payload = request
            try:
                self.reads += 1
                rsp = await getattr(client, method)(address, payload, device_id=unit)
            except (TimeoutError, ModbusException, OSError) as exc:
                self._lost()
                raise DeviceUnreachable(
                    f"command {command_id!r} to device {self.device.device_id!r} got no answer ({exc}); "
                    "it may or may not have been executed: check the status telemetry before retrying",
                    element_id=command_id,
                ) from None
            try:
                rejected = rsp.isError()
                if not rejected:
                    check_function_code(WRITE_FUNCTION_CODE[method], getattr(rsp, "function_code", None))
            except DECODE_ERRORS as exc:
                self._lost()
                defect = str(exc) if isinstance(exc, FrameError) else f"{type(exc).__name__}: {exc}"
                raise MalformedResponse(
                    f"command {command_id!r} to device {self.device.device_id!r} ({p.table} {address}) got a "
                    f"malformed answer ({defect}); it may or may not have been executed: check the status "
                    "telemetry before retrying",
                    element_id=command_id,
                ) from None
            if rejected:
                code = int(getattr(rsp, "exception_code", 0) or 0)
                raise DeviceRejected(
                    f"device {self.device.device_id!r} rejected command {command_id!r} "
                    f"with Modbus exception {code}",
                    exception_code=code,
                    element_id=command_id,
                )
