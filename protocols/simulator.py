"""Field simulator: simulated feeders served over real Modbus TCP and OPC UA servers on loopback.

Each feeder is solved with :class:`actors.cores.powerflow.PowerFlowModel` on a simulated clock (``speed``
times real time) every ``tick_s`` real seconds and after every command or injected event. Loads
follow daily profiles (residential / commercial) with noise, PV a bell curve, wind a noisy random
walk. Each feeder gets one Modbus TCP server hosting all its RTUs (one unit id each) and one OPC UA
server (Basic256Sha256 SignAndEncrypt; NoSecurity only when ``allow_nosecurity``).

Commands obey the field: a trip/close coil moves the switch after ``operate_delay_s`` (unless it
is stuck) and the feeder is re-solved; closing onto a permanent fault re-trips the nearest
upstream breaker/recloser. Injected events: :meth:`FieldSimulator.inject_fault`,
:meth:`~FieldSimulator.clear`, :meth:`~FieldSimulator.comm_loss`,
:meth:`~FieldSimulator.malformed_frames`, :meth:`~FieldSimulator.load_scale`,
:meth:`~FieldSimulator.stick_switch`.

pymodbus note: 3.16 deprecates ``ModbusServerContext`` in favour of ``SimDevice``; the server still
accepts a context flagged ``old_simulator`` whose ``async_getValues``/``async_setValues`` it calls
for every request, which is what lets this simulator decide per request (and stay silent for a
unit id in comm loss). The pymodbus minor version is pinned in pyproject.toml.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
import socket
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from asyncua import Server, ua
from asyncua.common.utils import ServiceError
from asyncua.server.binary_server_asyncio import BinaryServer
from pymodbus.constants import ExcCodes
from pymodbus.datastore import ModbusServerContext
from pymodbus.exceptions import NoSuchIdException
from pymodbus.server import ModbusTcpServer

from actors.cores.powerflow import PowerFlowModel, PowerFlowResult
from actors.cores.topology import TopologyGraph
from graph_schema.aio import cancel_and_wait
from graph_schema.errors import BadInput, NotFound
from graph_schema.model import DerKind, Feeder, Quantity, SwitchKind
from protocols.certs import CertPair, fingerprint, trusted_fingerprints
from protocols.codecs import CodecError, DataType, decode_value, encode_value
from protocols.pointmap import (
    OPCUA_NS,
    CommandKind,
    Device,
    Direction,
    PointMap,
    PointMapping,
    ProtocolKind,
    SecurityPolicy,
    Signal,
    Table,
    generate_point_map,
)
from protocols.sunspec_sim import SunSpecField

log = logging.getLogger(__name__)

# How a Modbus RTU in ``malformed_frames`` garbles its answers to reads (FC01-FC04):
# truncate: byte count 1 and no data (a frame cut short); oversize: byte count and data twice what
# was asked; function: the answer carries another function code (FC + 0x10).
FRAME_FAULTS = ("truncate", "oversize", "function")

ValueHook = Callable[[str, float | bool, datetime], float | bool]

_FC_TABLE = {
    1: Table.COIL,
    5: Table.COIL,
    15: Table.COIL,
    2: Table.DISCRETE_INPUT,
    3: Table.HOLDING_REGISTER,
    6: Table.HOLDING_REGISTER,
    16: Table.HOLDING_REGISTER,
    22: Table.HOLDING_REGISTER,
    23: Table.HOLDING_REGISTER,
    4: Table.INPUT_REGISTER,
}


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


# ------------------------------------------------------------------------------------------------
# Profiles
# ------------------------------------------------------------------------------------------------


def residential_profile(hour: float) -> float:
    """Per-unit residential load: night trough, morning and evening peaks (peak 1.0)."""
    base = 0.45
    morning = 0.30 * math.exp(-(((hour - 7.5) / 1.5) ** 2))
    evening = 0.55 * math.exp(-(((hour - 19.5) / 2.0) ** 2))
    day = 0.15 * math.exp(-(((hour - 13.0) / 3.0) ** 2))
    return min(1.0, base + morning + evening + day)


def commercial_profile(hour: float) -> float:
    """Per-unit commercial load: plateau in business hours."""
    rise = 1 / (1 + math.exp(-(hour - 8.0) * 2))
    fall = 1 / (1 + math.exp((hour - 18.5) * 2))
    return 0.35 + 0.65 * rise * fall


def pv_profile(hour: float) -> float:
    """Per-unit PV output: a bell between sunrise (6 h) and sunset (20 h)."""
    if hour <= 6.0 or hour >= 20.0:
        return 0.0
    return math.exp(-(((hour - 13.0) / 3.0) ** 2))


# ------------------------------------------------------------------------------------------------
# Modbus datastore
# ------------------------------------------------------------------------------------------------


def compensated_voltage(v_pu: float, p_mw: float, q_mvar: float, r_ohm: float, x_ohm: float, vn_kv: float) -> float:
    """The voltage a regulator's line-drop compensator sees (pu): its own lv-side voltage less the
    drop to the load centre over ``r_ohm + j x_ohm`` for the power it sends out,
    ``dV = (R P + X Q) / V`` (three-phase, V line to line in kV, so dV in kV; then per unit of
    ``vn_kv``). With no compensation (R = X = 0) or no voltage it is ``v_pu`` itself."""
    if (not r_ohm and not x_ohm) or v_pu <= 0 or vn_kv <= 0:
        return v_pu
    return v_pu - (r_ohm * p_mw + x_ohm * q_mvar) / (v_pu * vn_kv * vn_kv)


def malformed_frame(frame: bytes, mode: str) -> bytes:
    """``frame`` (a Modbus TCP answer: MBAP header + PDU) garbled as ``mode`` (see ``FRAME_FAULTS``).

    Only normal answers to reads (FC01-FC04) are garbled; exception answers, writes and frames too
    short to be answers pass unchanged. The MBAP length always matches what is sent, so the stream
    stays framed: the defect is in the PDU, where a client must catch it.
    """
    if mode not in FRAME_FAULTS:
        raise BadInput(f"unknown frame fault {mode!r}; use one of {', '.join(FRAME_FAULTS)}")
    if len(frame) < 9 or frame[7] not in (1, 2, 3, 4):
        return frame
    head, unit, fc, data = frame[:4], frame[6], frame[7], frame[9:]
    if mode == "truncate":
        pdu = bytes([fc, 1])
    elif mode == "oversize":
        pdu = bytes([fc, min(2 * len(data), 250)]) + (data * 2)[:250]
    else:
        pdu = bytes([fc + 0x10, len(data)]) + data
    return head + (len(pdu) + 1).to_bytes(2, "big") + bytes([unit]) + pdu


class _UnitStore:
    def __init__(self) -> None:
        self.mem: dict[Table, dict[int, int | bool]] = {t: {} for t in Table}
        self.commands: dict[tuple[Table, int], PointMapping] = {}


class _SimModbusContext(ModbusServerContext):
    """A server context whose reads/writes go to the simulator (see module docstring)."""

    def __init__(self, sim: FieldSimulator, units: dict[int, _UnitStore], unit_devices: dict[int, str]) -> None:
        # Deliberately not calling super().__init__: it only builds the deprecated block devices.
        self.old_simulator = True
        self.simdevices = []
        self._devices = {}
        self.sim = sim
        self.units = units
        self.unit_devices = unit_devices

    def device_ids(self) -> list[int]:
        return list(self.units)

    def _unit(self, device_id: int) -> _UnitStore:
        unit = self.units.get(device_id)
        if unit is None or self.unit_devices.get(device_id) in self.sim._silent:
            # Unknown or in comm loss: the server is built with ignore_missing_devices=True, so no answer.
            raise NoSuchIdException(f"device_id {device_id} silent")
        return unit

    async def async_getValues(
        self, device_id: int, func_code: int, address: int, count: int = 1
    ) -> list[int] | list[bool] | ExcCodes:
        unit = self._unit(device_id)
        table = _FC_TABLE.get(func_code)
        if table is None:
            return ExcCodes.ILLEGAL_FUNCTION
        mem = unit.mem[table]
        out: list[Any] = []
        for a in range(address, address + count):
            if a not in mem:
                return ExcCodes.ILLEGAL_ADDRESS
            out.append(mem[a])
        return out

    async def async_setValues(
        self, device_id: int, func_code: int, address: int, values: Sequence[int] | Sequence[bool]
    ) -> ExcCodes | None:
        unit = self._unit(device_id)
        table = _FC_TABLE.get(func_code)
        if table is None or not table.writable:
            return ExcCodes.ILLEGAL_FUNCTION
        p = unit.commands.get((table, address))
        if p is None:
            return ExcCodes.ILLEGAL_ADDRESS
        if table is Table.COIL:
            if len(values) != 1:
                return ExcCodes.ILLEGAL_ADDRESS
            value: float | bool = bool(values[0])
        else:
            if len(values) != p.register_span:
                return ExcCodes.ILLEGAL_ADDRESS
            try:
                value = decode_value([int(v) for v in values], p.register_format)
            except CodecError:
                return ExcCodes.ILLEGAL_VALUE
        ok = self.sim._command(p, value)
        if not ok:
            return ExcCodes.ILLEGAL_VALUE
        mem = unit.mem[table]
        for i, v in enumerate(values):
            mem[address + i] = v
        return None


# ------------------------------------------------------------------------------------------------
# Per-feeder state
# ------------------------------------------------------------------------------------------------


_ANALOGS = frozenset({Quantity.VM_PU, Quantity.I_KA, Quantity.P_MW, Quantity.Q_MVAR})


@dataclass(frozen=True, slots=True)
class SimTruth:
    """The simulated grid's state: what an estimate should find."""

    feeder_id: str
    vm_pu: Mapping[str, float | None]
    loading_percent: Mapping[str, float]
    line_p_mw: Mapping[str, float]
    load_p_mw: Mapping[str, float]
    load_q_mvar: Mapping[str, float]
    der_p_mw: Mapping[str, float]
    switch_open: Mapping[str, bool]
    p_source_mw: float | None
    losses_mw: float | None = None
    tap_pos: Mapping[str, int] = field(default_factory=dict)
    cap_step: Mapping[str, int] = field(default_factory=dict)
    # tap changer id -> the voltage its own controller regulates: lv side less the line drop
    regulated_vm_pu: Mapping[str, float] = field(default_factory=dict)


@dataclass
class _FeederSim:
    feeder: Feeder
    model: PowerFlowModel
    graph: TopologyGraph
    point_map: PointMap
    switch_open: dict[str, bool]
    status_open: dict[str, bool]
    tap_pos: dict[str, int]
    cap_step: dict[str, int] = field(default_factory=dict)  # capacitor bank id -> steps in service
    # device id -> monotonic time of its last remote command (capacitor banks, tap changers): the
    # local controller stays off for remote_override_s after one, as a field controller in REMOTE does.
    remote_at: dict[str, float] = field(default_factory=dict)
    local_at: dict[str, float] = field(default_factory=dict)  # device id -> its controller's last step
    # (device id, SET_V_ON | SET_V_OFF | SET_BAND_CENTRE | SET_BANDWIDTH) -> pu: what the head-end pushed
    # to a local controller; absent: the model's setting, as the device left the factory.
    settings: dict[tuple[str, str], float] = field(default_factory=dict)
    der_setpoint: dict[str, float] = field(default_factory=dict)
    load_scale: float = 1.0
    faults: dict[str, bool] = field(default_factory=dict)  # line id -> permanent
    fi_latched: set[str] = field(default_factory=set)  # FI element ids
    commercial: frozenset[str] = frozenset()
    wind_state: dict[str, float] = field(default_factory=dict)
    last_result: PowerFlowResult | None = None
    last_ders: dict[str, float] = field(default_factory=dict)
    last_loads: dict[str, tuple[float, float]] = field(default_factory=dict)  # load id -> (p_mw, q_mvar) served
    energized: frozenset[str] = frozenset()
    dirty: bool = True
    load_reduction_kw: dict[str, float] = field(default_factory=dict)  # load id -> kW shed (demand response)
    resource: dict[str, float] = field(default_factory=dict)  # PV/wind DER id -> pinned share of its rating


@dataclass
class _OpcuaServer:
    device: Device
    server: Server
    host: str
    port: int
    nodes: dict[str, tuple[ua.NodeId, ua.VariantType]]
    down: bool = False


class FieldSimulator:
    """Simulated field devices of one or more feeders. ``async with FieldSimulator(...) as sim``."""

    def __init__(
        self,
        feeders: Sequence[Feeder],
        *,
        point_maps: Mapping[str, PointMap] | None = None,
        host: str = "127.0.0.1",
        certificate: CertPair | None = None,
        trusted_client_certs: Sequence[str | Path] = (),
        allow_nosecurity: bool = False,
        speed: float = 1.0,
        tick_s: float = 1.0,
        sim_start: datetime | None = None,
        operate_delay_s: float = 0.2,
        reclose_delay_s: float = 1.0,
        noise: float = 0.01,
        seed: int = 0,
        switches_per_rtu: int = 8,
        ami_inbox: str | Path | None = None,
        metering: str = "dense",
        meas_noise: float = 0.0,
        bad_value_rate: float = 0.0,
        remote_override_s: float = 900.0,
        local_delay_s: float = 30.0,
        local_control: bool = True,
    ) -> None:
        if not feeders:
            raise BadInput("the field simulator needs at least one feeder")
        if certificate is None and not allow_nosecurity:
            raise BadInput(
                "the field simulator's OPC UA servers need a certificate (protocols.certs.ensure_pki) "
                "unless NoSecurity is allowed (DMS_OPCUA_ALLOW_NOSECURITY=true)"
            )
        self.host = host
        self.certificate = certificate
        self.trusted_client = trusted_fingerprints(trusted_client_certs) if trusted_client_certs else None
        self.allow_nosecurity = allow_nosecurity
        self.speed = speed
        self.tick_s = tick_s
        self.operate_delay_s = operate_delay_s
        self.reclose_delay_s = reclose_delay_s
        self.noise = noise
        # What the field meters (generated maps only): "dense" every bus and line, "sparse" the head,
        # a few line sensors and the DERs (protocols.pointmap.sparse_metering). Measurement noise is
        # relative (sigma = meas_noise x |value|) on every analog served; bad_value_rate is the chance
        # per analog and tick of a gross error (the value x 1.5 + 0.1): the truth stays clean.
        if metering not in ("dense", "sparse"):
            raise BadInput(f"metering {metering!r} is unknown; use 'dense' or 'sparse'")
        if not (0.0 <= meas_noise < 1.0 and 0.0 <= bad_value_rate <= 1.0):
            raise BadInput("meas_noise must be in [0, 1) and bad_value_rate in [0, 1]")
        self.metering = metering
        # Local controllers (capacitor banks with local_control; tap changers with a band): each steps
        # at most once per local_delay_s (its time delay) toward its band, and not at all within
        # remote_override_s of a remote command to it: what the field does when the head-end is away.
        if remote_override_s < 0 or local_delay_s <= 0:
            raise BadInput("remote_override_s must be >= 0 and local_delay_s > 0")
        self.remote_override_s = remote_override_s
        self.local_control = local_control  # False: the devices' own controllers are switched off
        # Paused: no solving and no publishing (the servers keep answering with the last values). A
        # test session's shared simulator pauses while a module drives a simulator of its own: two
        # simulators solving in one process starved the event loop on two cores.
        self.paused = False
        self.local_delay_s = local_delay_s
        self.meas_noise = meas_noise
        self.bad_value_rate = bad_value_rate
        self._wrong_status: set[str] = set()  # "<feeder>/<switch>": the status point reports the opposite
        self.switches_per_rtu = switches_per_rtu
        self._rng = random.Random(seed)
        self._feeders_in = list(feeders)
        self._maps_in = dict(point_maps or {})
        self._sim_start = sim_start or datetime.now(UTC)
        self._real_start = time.monotonic()
        self.point_maps: dict[str, PointMap] = {}
        self._sims: dict[str, _FeederSim] = {}
        self._values: dict[str, float | bool] = {}
        self._points: dict[str, tuple[str, PointMapping]] = {}  # point id -> (feeder id, mapping)
        self._modbus_servers: list[ModbusTcpServer] = []
        self._modbus_stores: dict[str, tuple[_UnitStore, PointMap]] = {}  # device id -> store
        self._opcua: dict[str, _OpcuaServer] = {}  # device id -> server
        self._silent: set[str] = set()
        self._garbled: dict[str, str] = {}  # Modbus device id -> frame fault (FRAME_FAULTS)
        self._stuck: set[str] = set()  # "<feeder>/<switch>"
        # Every command a protocol server handed over, by command point id (accepted or not): what
        # tests assert on to prove that nothing was sent, instead of waiting to see nothing move.
        self.commands_received: Counter[str] = Counter()
        self._forced: dict[str, float | bool] = {}
        self._value_hook: ValueHook | None = None
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._timers: set[asyncio.TimerHandle] = set()
        self._bg: set[asyncio.Task[Any]] = set()
        self._started = False
        self.solves = 0
        # DER inverters over SunSpec Modbus (protocols.sunspec_sim): one server per feeder with DERs.
        self.sunspec = SunSpecField(host, self._resolve_soon)
        # Smart meters: 15-minute interval files in ``ami_inbox`` (protocols.ami_sim), when given.
        self.ami: Any = None
        if ami_inbox is not None:
            from protocols.ami_sim import AmiRecorder

            self.ami = AmiRecorder(ami_inbox, self._feeders_in, seed=seed)

    # -- lifecycle --------------------------------------------------------------------------------
    async def __aenter__(self) -> FieldSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            for feeder in self._feeders_in:
                await self._start_feeder(feeder)
            for fs in self._sims.values():
                await asyncio.to_thread(self._solve, fs)
                await self._publish(fs)
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._run(), name="field-simulator")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        for h in self._timers:
            h.cancel()
        self._timers.clear()
        for t in list(self._bg):
            await cancel_and_wait(t)
        for srv in self._modbus_servers:
            with contextlib.suppress(Exception):
                await srv.shutdown()
        self._modbus_servers.clear()
        await self.sunspec.stop()
        for o in self._opcua.values():
            with contextlib.suppress(Exception):
                if o.down:
                    await o.server.iserver.stop()
                else:
                    await o.server.stop()
        self._opcua.clear()
        self._started = False

    async def _start_feeder(self, feeder: Feeder) -> None:
        pm = self._maps_in.get(feeder.id)
        if pm is None:
            mport, oport = free_port(self.host), free_port(self.host)
            policy = SecurityPolicy.BASIC256SHA256_SIGN_AND_ENCRYPT if self.certificate else SecurityPolicy.NONE
            pm = generate_point_map(
                feeder,
                host=self.host,
                modbus_port=mport,
                opcua_endpoint=f"opc.tcp://{self.host}:{oport}/dms/{feeder.id}",
                switches_per_rtu=self.switches_per_rtu,
                security_policy=policy,
                metering=self.metering,  # type: ignore[arg-type]
            )
        else:
            pm = pm.validate(feeder)
            pm = self._assign_ports(pm)
        self.point_maps[feeder.id] = pm
        taps = {t.id: int(t.tap_pos or t.tap_neutral or 0) for t in feeder.transformers if t.has_tap_changer}
        loads = sorted(ld.id for ld in feeder.loads)
        fs = _FeederSim(
            feeder=feeder,
            model=await asyncio.to_thread(PowerFlowModel, feeder),
            graph=TopologyGraph(feeder),
            point_map=pm,
            switch_open={s.id: s.is_open for s in feeder.switches},
            status_open={s.id: s.is_open for s in feeder.switches},
            tap_pos=taps,
            cap_step={c.id: c.step for c in feeder.capacitors if c.in_service},
            commercial=frozenset(loads[2::3]),
        )
        self._sims[feeder.id] = fs
        for p in pm.points:
            self._points[p.point_id] = (feeder.id, p)
        await self._start_modbus(pm)
        await self._start_opcua(pm)
        await self.sunspec.start_feeder(feeder, free_port(self.host))

    def _assign_ports(self, pm: PointMap) -> PointMap:
        """Replace port 0 / ':0' endpoints by free ports (devices sharing host:0 share one port)."""
        chosen: dict[tuple[str, int], int] = {}
        devices = []
        for d in pm.devices:
            if d.protocol is ProtocolKind.MODBUS and d.port == 0:
                key = (d.host, 0)
                chosen.setdefault(key, free_port(d.host))
                d = replace(d, port=chosen[key])
            elif d.protocol is ProtocolKind.OPCUA and d.endpoint and ":0/" in d.endpoint:
                d = replace(d, endpoint=d.endpoint.replace(":0/", f":{free_port(d.host)}/", 1))
            devices.append(d)
        return pm.with_devices(devices)

    async def _start_modbus(self, pm: PointMap) -> None:
        by_port: dict[tuple[str, int], list[Device]] = {}
        for d in pm.devices:
            if d.protocol is ProtocolKind.MODBUS:
                by_port.setdefault((d.host, d.port), []).append(d)
        for (host, port), devs in by_port.items():
            units: dict[int, _UnitStore] = {}
            unit_devices: dict[int, str] = {}
            for d in devs:
                assert d.unit_id is not None
                store = _UnitStore()
                for p in pm.points_of(d.device_id):
                    assert p.table is not None and p.address is not None
                    for i in range(p.register_span):
                        store.mem[p.table][p.address + i] = False if p.table.is_bit else 0
                    if p.direction is Direction.COMMAND:
                        store.commands[(p.table, p.address)] = p
                units[d.unit_id] = store
                unit_devices[d.unit_id] = d.device_id
                self._modbus_stores[d.device_id] = (store, pm)
            ctx = _SimModbusContext(self, units, unit_devices)
            server = ModbusTcpServer(ctx, address=(host, port), ignore_missing_devices=True,
                                     trace_packet=self._frame_hook(dict(unit_devices)))
            await server.serve_forever(background=True)
            self._modbus_servers.append(server)
            log.info("simulator: Modbus TCP on %s:%s units %s", host, port, sorted(units))

    def _frame_hook(self, unit_devices: dict[int, str]) -> Callable[[bool, bytes], bytes]:
        """pymodbus' ``trace_packet`` hook of one server: garbles the answers of devices in
        :attr:`_garbled` (pymodbus calls it with each whole frame it sends)."""

        def hook(sending: bool, data: bytes) -> bytes:
            if not sending or not self._garbled or len(data) < 9:
                return data
            mode = self._garbled.get(unit_devices.get(data[6], ""))
            return data if mode is None else malformed_frame(data, mode)

        return hook

    async def _start_opcua(self, pm: PointMap) -> None:
        for d in pm.devices:
            if d.protocol is not ProtocolKind.OPCUA:
                continue
            assert d.endpoint is not None
            secure = d.security_policy is not SecurityPolicy.NONE
            if not secure and not self.allow_nosecurity:
                raise BadInput(
                    f"device {d.device_id!r} asks for NoSecurity; set DMS_OPCUA_ALLOW_NOSECURITY=true to allow it"
                )
            server = Server()
            await server.init()
            server.set_endpoint(d.endpoint)
            server.set_server_name(f"DMS field simulator {pm.feeder_id}")
            policies = []
            if self.certificate is not None:
                await server.set_application_uri(self.certificate.application_uri)
                await server.load_certificate(str(self.certificate.cert_path))
                await server.load_private_key(str(self.certificate.key_path))
                policies.append(ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt)
            if self.allow_nosecurity:
                policies.append(ua.SecurityPolicyType.NoSecurity)
            server.set_security_policy(policies)
            if self.trusted_client is not None:
                trusted = self.trusted_client

                async def validate(cert: Any, app: Any, trusted: frozenset[str] = trusted) -> None:
                    from cryptography.hazmat.primitives import serialization

                    if fingerprint(cert.public_bytes(serialization.Encoding.DER)) not in trusted:
                        raise ServiceError(ua.StatusCodes.BadCertificateUntrusted)

                server.set_certificate_validator(validate)
            idx = await server.register_namespace(f"urn:dms-headend:sim:{pm.feeder_id}")
            if idx != OPCUA_NS:
                raise RuntimeError(f"expected namespace index {OPCUA_NS}, got {idx}")
            folder = await server.nodes.objects.add_folder(idx, pm.feeder_id)
            nodes: dict[str, tuple[ua.NodeId, ua.VariantType]] = {}
            for p in pm.points_of(d.device_id):
                assert p.node_id is not None
                nid = ua.NodeId.from_string(p.node_id)
                vt = ua.VariantType.Boolean if p.data_type is DataType.BOOL else ua.VariantType.Double
                init: Any = False if vt is ua.VariantType.Boolean else 0.0
                var = await folder.add_variable(nid, p.point_id, ua.Variant(init, vt))
                nodes[p.point_id] = (nid, vt)
                if p.direction is Direction.COMMAND:
                    await var.set_writable()
                    server.set_attribute_value_setter(nid, self._opcua_setter(p))
            _, port = _host_port(d.endpoint)
            await server.start()
            self._opcua[d.device_id] = _OpcuaServer(d, server, d.host, port, nodes)
            log.info("simulator: OPC UA on %s (%d nodes)", d.endpoint, len(nodes))

    def _opcua_setter(self, p: PointMapping) -> Callable[[Any, Any, ua.DataValue], None]:
        def setter(node: Any, attr: Any, value: ua.DataValue) -> None:
            raw = value.Value.Value if value.Value is not None else None
            if raw is None:
                return
            eng: float | bool = bool(raw) if p.data_type is DataType.BOOL else float(raw) * p.scale + p.offset
            if self._command(p, eng):
                node.attributes[attr].value = value

        return setter

    # -- simulation loop --------------------------------------------------------------------------
    def sim_time(self) -> datetime:
        return self._sim_start + timedelta(seconds=(time.monotonic() - self._real_start) * self.speed)

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.tick_s)
            self._wake.clear()
            if self.paused:
                continue
            for fs in list(self._sims.values()):
                try:
                    await asyncio.to_thread(self._solve, fs)
                    await self._publish(fs)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("simulator: tick of feeder %s failed", fs.feeder.id)

    def _resolve_soon(self) -> None:
        self._wake.set()

    def _profile_inputs(self, fs: _FeederSim, now: datetime) -> tuple[dict[str, float], dict[str, float]]:
        hour = now.hour + now.minute / 60 + now.second / 3600
        rng = self._rng
        loads: dict[str, float] = {}
        for ld in fs.feeder.loads:
            shape = commercial_profile(hour) if ld.id in fs.commercial else residential_profile(hour)
            loads[ld.id] = ld.p_mw * shape * (1 + rng.gauss(0, self.noise))
            if ld.id in fs.load_reduction_kw:  # a VEN shedding load (protocols/ven_sim.py)
                loads[ld.id] = max(0.0, loads[ld.id] - fs.load_reduction_kw[ld.id] / 1000)
        ders: dict[str, float] = {}
        for d in fs.feeder.ders:
            if d.id in fs.resource:  # pinned (set_resource): no profile, no random walk
                p = d.sn_mva * fs.resource[d.id]
            elif d.kind is DerKind.PV:
                p = d.sn_mva * pv_profile(hour) * (1 + rng.gauss(0, self.noise))
            elif d.kind is DerKind.WIND:
                w = fs.wind_state.get(d.id, 0.4)
                w = min(1.0, max(0.0, w + rng.gauss(0, 0.05)))
                fs.wind_state[d.id] = w
                p = d.sn_mva * w
            else:
                p = d.p_mw
            sp = fs.der_setpoint.get(d.id)
            if sp is not None:
                p = min(p, sp) if d.kind in (DerKind.PV, DerKind.WIND) else sp
            ders[d.id] = max(0.0, p)
        return loads, ders

    def _solve(self, fs: _FeederSim) -> None:
        now = self.sim_time()
        loads, ders = self._profile_inputs(fs, now)
        vm_last = {b.bus_id: b.vm_pu for b in fs.last_result.buses} if fs.last_result is not None else {}
        ders, der_q = self.sunspec.outputs(fs.feeder.id, ders, vm_last)  # the inverters follow their settings
        res = fs.model.solve(
            switch_states=dict(fs.switch_open),
            load_p_mw=loads,
            load_q_mvar={ld.id: ld.q_mvar / ld.p_mw * loads[ld.id] if ld.p_mw else 0.0 for ld in fs.feeder.loads},
            der_p_mw=ders or None,
            der_q_mvar=der_q or None,
            tap_pos=fs.tap_pos or None,
            capacitor_step=fs.cap_step or None,
            load_scale=fs.load_scale,
        )
        self.solves += 1
        fs.last_ders = ders
        fs.last_loads = {ld.id: (loads[ld.id] * fs.load_scale,
                                 (ld.q_mvar / ld.p_mw * loads[ld.id] if ld.p_mw else 0.0) * fs.load_scale)
                         for ld in fs.feeder.loads}
        if res.converged:
            fs.last_result = res
            fs.energized = frozenset(b.bus_id for b in res.buses if b.energized)
            if self.local_control:
                self._local_control(fs, res)  # (in the solver's thread: the next tick shows its step)
        else:
            log.warning("simulator: power flow of %s did not converge (%s)", fs.feeder.id, res.reason)
            fs.energized = fs.graph.process(dict(fs.switch_open)).energized_bus_ids
        self.sunspec.publish(fs.feeder.id, fs.energized, {b.bus_id: b.vm_pu for b in fs.last_result.buses}
                             if fs.last_result is not None else {})
        if self.ami is not None:
            try:
                self.ami.observe(fs.feeder.id, now, {k: v * fs.load_scale for k, v in loads.items()},
                                 {ld.id: ld.bus_id in fs.energized for ld in fs.feeder.loads})
            except OSError as exc:
                log.warning("simulator: AMI interval file of %s not written: %s", fs.feeder.id, exc)

    @staticmethod
    def _model_setting(fs: _FeederSim, p: PointMapping) -> float | None:
        """The setting a device left the factory with (the model's), for a settings point."""
        dev: Any = next((d for d in (*fs.feeder.capacitors, *fs.feeder.transformers) if d.id == p.element_id), None)
        attr = {CommandKind.SET_V_ON: "v_on_pu", CommandKind.SET_V_OFF: "v_off_pu",
                CommandKind.SET_BAND_CENTRE: "band_centre_pu", CommandKind.SET_BANDWIDTH: "bandwidth_pu"}[
            CommandKind(p.quantity)]
        return getattr(dev, attr, None)

    def _set_setting(self, fs: _FeederSim, device_id: str, kind: Any, value: float) -> bool:
        """A local controller setting from the head-end; an implausible one is refused (False)."""
        k = str(kind)
        if not math.isfinite(value):
            return False
        if k == CommandKind.SET_BANDWIDTH:
            ok = 0.005 <= value <= 0.1
        else:
            ok = 0.85 <= value <= 1.15
        cap = next((c for c in fs.feeder.capacitors if c.id == device_id), None)
        if ok and cap is not None:  # switch in below v_on, out above v_off: v_on < v_off or it hunts
            now = {CommandKind.SET_V_ON: fs.settings.get((device_id, CommandKind.SET_V_ON), cap.v_on_pu),
                   CommandKind.SET_V_OFF: fs.settings.get((device_id, CommandKind.SET_V_OFF), cap.v_off_pu), k: value}
            v_on, v_off = now[CommandKind.SET_V_ON], now[CommandKind.SET_V_OFF]
            ok = v_on is None or v_off is None or v_on < v_off
        if not ok:
            log.info("simulator: %s/%s refuses %s=%s", fs.feeder.id, device_id, k, value)
            return False
        fs.settings[(device_id, k)] = value
        return True

    def local_settings(self, feeder_id: str) -> dict[tuple[str, str], float]:
        """The settings the head-end pushed to this feeder's local controllers (tests)."""
        return dict(self._fs(feeder_id).settings)

    @staticmethod
    def _regulated(fs: _FeederSim, res: PowerFlowResult) -> dict[str, float]:
        """Tap changer id -> the voltage its controller regulates (pu): its lv-side voltage less the
        line drop to the load centre (:func:`compensated_voltage` for the power the lines leaving
        its lv bus carry away, losses neglected)."""
        vm = {b.bus_id: b.vm_pu for b in res.buses if b.energized and b.vm_pu is not None}
        lines = {ln.id: ln for ln in fs.feeder.lines}
        out: dict[str, float] = {}
        for t in fs.feeder.transformers:
            v = vm.get(t.lv_bus_id)
            if not t.has_tap_changer or v is None:
                continue
            p_out = q_out = 0.0
            if t.ldc_r_ohm or t.ldc_x_ohm:
                for lr in res.lines:
                    ln = lines.get(lr.line_id)
                    sign = 1.0 if ln is not None and ln.from_bus_id == t.lv_bus_id else (
                        -1.0 if ln is not None and ln.to_bus_id == t.lv_bus_id else 0.0)
                    p_out, q_out = p_out + sign * lr.p_from_mw, q_out + sign * lr.q_from_mvar
            out[t.id] = compensated_voltage(v, p_out, q_out, t.ldc_r_ohm, t.ldc_x_ohm, t.vn_lv_kv)
        return out

    def _local_control(self, fs: _FeederSim, res: PowerFlowResult) -> bool:
        """One step of each device's own controller, where it is due; True when one stepped.

        A capacitor bank with ``local_control`` switches one step in below ``v_on_pu`` and one out
        above ``v_off_pu`` at its bus. A tap changer with a band (``band_centre_pu`` +-
        ``bandwidth_pu``/2) steps the voltage it regulates back toward it: its lv-side voltage less
        the line drop to the load centre (:func:`compensated_voltage` over ``ldc_r_ohm`` +
        j ``ldc_x_ohm`` for the power the lines leaving its lv bus carry away)."""
        now = time.monotonic()
        vm = {b.bus_id: b.vm_pu for b in res.buses if b.energized and b.vm_pu is not None}

        def due(dev: str) -> bool:
            if now - fs.remote_at.get(dev, -math.inf) < self.remote_override_s:
                return False
            return now - fs.local_at.get(dev, -math.inf) >= self.local_delay_s

        moved = False
        for c in fs.feeder.capacitors:
            v = vm.get(c.bus_id)
            if not c.local_control or v is None or c.id not in fs.cap_step or not due(c.id):
                continue
            step = fs.cap_step[c.id]
            v_on = fs.settings.get((c.id, CommandKind.SET_V_ON), c.v_on_pu)
            v_off = fs.settings.get((c.id, CommandKind.SET_V_OFF), c.v_off_pu)
            if v_on is not None and v < v_on and step < c.steps:
                fs.cap_step[c.id], fs.local_at[c.id], moved = step + 1, now, True
            elif v_off is not None and v > v_off and step > 0:
                fs.cap_step[c.id], fs.local_at[c.id], moved = step - 1, now, True
        regulated = self._regulated(fs, res)
        for t in fs.feeder.transformers:
            v = regulated.get(t.id)
            centre = fs.settings.get((t.id, CommandKind.SET_BAND_CENTRE), t.band_centre_pu)
            width = fs.settings.get((t.id, CommandKind.SET_BANDWIDTH), t.bandwidth_pu)
            if (not t.has_tap_changer or centre is None or not width or v is None
                    or t.id not in fs.tap_pos or not due(t.id)):
                continue
            # pandapower's convention: a higher tap on the hv side lowers the lv voltage; on the lv side raises it.
            raise_v = -1 if (t.tap_side or "hv") == "hv" else 1
            want = 0
            if v < centre - width / 2:
                want = raise_v
            elif v > centre + width / 2:
                want = -raise_v
            pos = fs.tap_pos[t.id] + want
            assert t.tap_min is not None and t.tap_max is not None
            if want and min(t.tap_min, t.tap_max) <= pos <= max(t.tap_min, t.tap_max):
                fs.tap_pos[t.id], fs.local_at[t.id], moved = pos, now, True
        return moved

    def _feeder_values(self, fs: _FeederSim) -> dict[str, float | bool]:
        res = fs.last_result
        vals: dict[str, float | bool] = {}
        load_bus = {ld.id: ld.bus_id for ld in fs.feeder.loads}
        der_bus = {d.id: d.bus_id for d in fs.feeder.ders}
        bus_vm = {b.bus_id: (b.vm_pu or 0.0) if b.energized else 0.0 for b in res.buses} if res else {}
        line_res = {ln.line_id: ln for ln in res.lines} if res else {}
        ders = fs.last_ders
        for p in fs.point_map.points:
            if p.direction is not Direction.READ:
                continue
            k, e = p.quantity, p.element_id
            v: float | bool | None = None
            if k is Quantity.STATUS:
                v = fs.status_open.get(e)
                if v is not None and f"{fs.feeder.id}/{e}" in self._wrong_status:
                    v = not fs.switch_open[e]
            elif k is Quantity.VM_PU:
                v = bus_vm.get(e, 0.0) if e in fs.energized else 0.0
            elif k in (Quantity.I_KA, Quantity.P_MW, Quantity.Q_MVAR) and e in line_res:
                lr = line_res[e]
                v = {Quantity.I_KA: lr.i_ka, Quantity.P_MW: lr.p_from_mw, Quantity.Q_MVAR: lr.q_from_mvar}[k]
            elif k is Quantity.P_MW and e in der_bus:
                v = ders.get(e, 0.0) if der_bus[e] in fs.energized else 0.0
            elif k is Quantity.TAP_POS:
                v = float(fs.tap_pos.get(e, 0))
            elif k is Quantity.CAP_STEP:
                v = float(fs.cap_step.get(e, 0))
            elif k is Signal.FAULT:
                v = e in fs.fi_latched
            elif k is Signal.LAST_GASP:
                v = load_bus.get(e) not in fs.energized
            if v is None:
                continue
            if isinstance(v, float) and not math.isfinite(v):
                v = 0.0
            if isinstance(v, float) and k in _ANALOGS:
                v = self._measured(v)
            vals[p.point_id] = v
        for cmd in fs.point_map.points:
            if cmd.direction is Direction.COMMAND and cmd.quantity is CommandKind.SET_TAP:
                vals[cmd.point_id] = float(fs.tap_pos.get(cmd.element_id, 0))
            elif cmd.direction is Direction.COMMAND and cmd.quantity is CommandKind.SET_CAP_STEP:
                vals[cmd.point_id] = float(fs.cap_step.get(cmd.element_id, 0))
            elif cmd.direction is Direction.COMMAND and cmd.quantity in _SETTINGS:
                current = fs.settings.get((cmd.element_id, str(cmd.quantity)), self._model_setting(fs, cmd))
                if current is not None:
                    vals[cmd.point_id] = float(current)
        return vals

    def _measured(self, v: float) -> float:
        """What a field instrument reports for a true value ``v`` (noise, an occasional gross error)."""
        if self.meas_noise:
            v *= 1.0 + self._rng.gauss(0.0, self.meas_noise)
        if self.bad_value_rate and self._rng.random() < self.bad_value_rate:
            v = v * 1.5 + 0.1
        return v

    async def _publish(self, fs: _FeederSim) -> None:
        vals = self._feeder_values(fs)
        now = self.sim_time()
        if self._value_hook is not None:
            vals = {pid: self._value_hook(pid, v, now) for pid, v in vals.items()}
        vals.update({pid: v for pid, v in self._forced.items() if pid in vals})
        await self._serve_values(vals)

    async def _serve_values(self, vals: Mapping[str, float | bool]) -> None:
        ts = datetime.now(UTC)
        pending: list[tuple[_OpcuaServer, ua.NodeId, ua.DataValue]] = []
        for pid, v in vals.items():
            if self._values.get(pid) == v and pid in self._values:
                continue
            self._values[pid] = v
            _, p = self._points[pid]
            if p.protocol is ProtocolKind.MODBUS:
                self._set_modbus(p, v)
            else:
                srv = self._opcua.get(p.device_id)
                if srv is None or pid not in srv.nodes:
                    continue
                nid, vt = srv.nodes[pid]
                raw: Any = bool(v) if vt is ua.VariantType.Boolean else (float(v) - p.offset) / p.scale
                pending.append((srv, nid, ua.DataValue(ua.Variant(raw, vt), SourceTimestamp=ts, ServerTimestamp=ts)))
        for srv, nid, dv in pending:
            await srv.server.write_attribute_value(nid, dv)

    def _set_modbus(self, p: PointMapping, v: float | bool) -> None:
        entry = self._modbus_stores.get(p.device_id)
        if entry is None or p.table is None or p.address is None:
            return
        mem = entry[0].mem[p.table]
        if p.table.is_bit:
            mem[p.address] = bool(v)
            return
        try:
            regs = encode_value(float(v), p.register_format)
        except CodecError:
            log.debug("simulator: %s=%s does not fit its register format", p.point_id, v)
            return
        for i, r in enumerate(regs):
            mem[p.address + i] = r

    # -- commands ---------------------------------------------------------------------------------
    def _command(self, p: PointMapping, value: float | bool) -> bool:
        """Apply a command from a protocol server. False: refuse (illegal value)."""
        self.commands_received[p.point_id] += 1
        fid, _ = self._points[p.point_id]
        fs = self._sims[fid]
        k, e = p.quantity, p.element_id
        if k in (CommandKind.OPEN, CommandKind.CLOSE):
            if not value:
                return True  # releasing the relay: nothing to do
            want_open = k is CommandKind.OPEN
            if f"{fid}/{e}" in self._stuck:
                log.info("simulator: switch %s/%s is stuck; %s ignored", fid, e, k)
                self._later(self.operate_delay_s, self._release_coil, p)
                return True
            self._later(self.operate_delay_s, self._operate, fs, e, want_open, p)
            return True
        if k is CommandKind.SET_TAP:
            t = next((t for t in fs.feeder.transformers if t.id == e), None)
            pos = round(float(value))
            if t is None or t.tap_min is None or t.tap_max is None or not t.tap_min <= pos <= t.tap_max:
                return False
            fs.tap_pos[e] = pos
            fs.remote_at[e] = time.monotonic()
            self._resolve_soon()
            return True
        if k in _SETTINGS:
            return self._set_setting(fs, e, k, float(value))
        if k is CommandKind.SET_CAP_STEP:
            c = next((c for c in fs.feeder.capacitors if c.id == e), None)
            step = round(float(value))
            if c is None or not c.in_service or not 0 <= step <= c.steps or step != float(value):
                return False
            fs.cap_step[e] = step
            fs.remote_at[e] = time.monotonic()
            self._resolve_soon()
            return True
        if k is CommandKind.SET_P_MW:
            if float(value) < 0:
                return False
            fs.der_setpoint[e] = float(value)
            self._resolve_soon()
            return True
        return False

    def _later(self, delay: float, fn: Callable[..., None], *args: Any) -> None:
        loop = asyncio.get_running_loop()
        handle: asyncio.TimerHandle | None = None

        def run() -> None:
            if handle is not None:
                self._timers.discard(handle)
            fn(*args)

        handle = loop.call_later(delay, run)
        self._timers.add(handle)

    def _release_coil(self, p: PointMapping) -> None:
        self._set_modbus(p, False)

    def _operate(self, fs: _FeederSim, switch_id: str, want_open: bool, p: PointMapping | None = None) -> None:
        fs.switch_open[switch_id] = want_open
        fs.status_open[switch_id] = want_open
        if p is not None:
            self._release_coil(p)
        if not want_open:
            self._check_close_onto_fault(fs)
        self._resolve_soon()

    def _check_close_onto_fault(self, fs: _FeederSim) -> None:
        for line_id, permanent in list(fs.faults.items()):
            if permanent:
                self._trip_for_fault(fs, line_id)

    def _trip_for_fault(self, fs: _FeederSim, line_id: str) -> str | None:
        """If the faulted line is energized, open its nearest upstream breaker/recloser and latch FIs."""
        topo = fs.graph.process(dict(fs.switch_open))
        line = next(ln for ln in fs.feeder.lines if ln.id == line_id)
        # The conductor is live from an energized end whose switches on this line are all closed.
        ends = [
            b
            for b in (line.from_bus_id, line.to_bus_id)
            if b in topo.energized_bus_ids
            and not any(
                fs.switch_open.get(sw.id, False)
                for sw in fs.feeder.switches
                if sw.element_id == line_id and sw.bus_id == b
            )
        ]
        if not ends:
            return None
        fed = [b for b in ends if topo.feeding_branch.get(b, ("", ""))[1] == line_id]
        if fed:
            path = list(fs.graph.source_path(topo, fed[0]))
            upstream = path[: path.index(line_id)]
            upstream_bus = line.from_bus_id if fed[0] == line.to_bus_id else line.to_bus_id
        else:  # the line closes a loop or hangs off one end: fault fed from the energized end
            upstream_bus = ends[0]
            upstream = list(fs.graph.source_path(topo, upstream_bus))
            upstream += [s.id for s in fs.feeder.switches if s.element_id == line_id and s.bus_id == upstream_bus]
        kinds = {s.id: s.kind for s in fs.feeder.switches}
        breaker = next(
            (
                eid
                for eid in reversed(upstream)
                if kinds.get(eid) in (SwitchKind.BREAKER, SwitchKind.RECLOSER) and not fs.switch_open.get(eid, False)
            ),
            None,
        )
        # Fault indicators that saw fault current: every FI on the lines of the source path, and on the
        # faulted line only the one(s) at its upstream end.
        path_lines = {eid for eid in upstream if eid in {ln.id for ln in fs.feeder.lines}}
        if fs.feeder.fault_indicators:
            for fi in fs.feeder.fault_indicators:
                if fi.line_id in path_lines or (fi.line_id == line_id and fi.bus_id == upstream_bus):
                    fs.fi_latched.add(fi.id)
        else:  # generated virtual FIs: element id = line id, at the line's from-bus end
            fs.fi_latched.update(path_lines)
            if line.from_bus_id == upstream_bus:
                fs.fi_latched.add(line_id)
        if breaker is None:
            log.warning(
                "simulator: no breaker/recloser upstream of %s/%s; the source clears it",
                fs.feeder.id,
                line_id,
            )
            return None
        fs.switch_open[breaker] = True
        fs.status_open[breaker] = True
        log.info("simulator: fault on %s/%s tripped %s", fs.feeder.id, line_id, breaker)
        self._resolve_soon()
        return breaker

    # -- injected events --------------------------------------------------------------------------
    def _fs(self, feeder_id: str) -> _FeederSim:
        fs = self._sims.get(feeder_id)
        if fs is None:
            raise NotFound(f"feeder {feeder_id!r} is not simulated (have: {sorted(self._sims)})", element_id=feeder_id)
        return fs

    def inject_fault(self, feeder_id: str, line_id: str, permanent: bool = True) -> str | None:
        """A short circuit on ``line_id``; returns the id of the breaker/recloser that tripped."""
        fs = self._fs(feeder_id)
        if line_id not in {ln.id for ln in fs.feeder.lines}:
            raise NotFound(f"line {line_id!r} is not in feeder {feeder_id!r}", element_id=line_id)
        fs.faults[line_id] = permanent
        breaker = self._trip_for_fault(fs, line_id)
        if not permanent:
            fs.faults.pop(line_id, None)
            if breaker is not None:
                self._later(self.reclose_delay_s, self._reclose, fs, breaker)
        return breaker

    def _reclose(self, fs: _FeederSim, breaker: str) -> None:
        log.info("simulator: %s/%s recloses", fs.feeder.id, breaker)
        self._operate(fs, breaker, False)

    def clear(self, feeder_id: str | None = None) -> None:
        """Clear faults and reset fault indicators (switches stay where they are)."""
        for fid, fs in self._sims.items():
            if feeder_id is None or fid == feeder_id:
                fs.faults.clear()
                fs.fi_latched.clear()
        self._resolve_soon()

    def load_scale(self, feeder_id: str, scale: float) -> None:
        if not 0 <= scale <= 10:
            raise BadInput(f"load scale {scale} is outside 0..10")
        self._fs(feeder_id).load_scale = scale
        self._resolve_soon()

    def reduce_load(self, feeder_id: str, load_id: str, kw: float) -> None:
        """Shed ``kw`` from one load (0 ends it): what a simulated VEN does during a DR event, so the
        feeder's measurements and the meters' intervals show the reduction."""
        fs = self._fs(feeder_id)
        if load_id not in {ld.id for ld in fs.feeder.loads}:
            raise BadInput(f"load {load_id!r} is not on feeder {feeder_id}; the feeder's loads are in its model")
        if not 0 <= kw <= 1e6:
            raise BadInput(f"load reduction {kw} kW is outside 0..1e6")
        if kw:
            fs.load_reduction_kw[load_id] = kw
        else:
            fs.load_reduction_kw.pop(load_id, None)
        self._resolve_soon()

    def _switch_key(self, switch_id: str, feeder_id: str | None) -> str:
        for fid, fs in self._sims.items():
            if (feeder_id is None or fid == feeder_id) and switch_id in fs.switch_open:
                return f"{fid}/{switch_id}"
        raise NotFound(f"switch {switch_id!r} is not in any simulated feeder", element_id=switch_id)

    def stick_switch(self, switch_id: str, on: bool = True, *, feeder_id: str | None = None) -> None:
        """A switch that will not move (commands are accepted, the contacts stay put)."""
        key = self._switch_key(switch_id, feeder_id)
        if on:
            self._stuck.add(key)
        else:
            self._stuck.discard(key)

    def device_ids(self) -> list[str]:
        return [d.device_id for pm in self.point_maps.values() for d in pm.devices]

    async def comm_loss(self, device_id: str, on: bool = True) -> None:
        """The device stops answering (Modbus: silent unit id; OPC UA: the server goes away)."""
        if device_id not in self.device_ids():
            raise NotFound(f"device {device_id!r} is not simulated (have: {self.device_ids()})", element_id=device_id)
        if device_id in self._opcua:
            o = self._opcua[device_id]
            if on and not o.down:
                assert o.server.bserver is not None
                await o.server.bserver.stop()
                o.down = True
            elif not on and o.down:
                bs = BinaryServer(o.server.iserver, o.host, o.port, o.server.limits)
                bs.set_policies(o.server._policies)  # the policies the server was started with
                await bs.start()
                o.server.bserver = bs
                o.down = False
        if on:
            self._silent.add(device_id)
        else:
            self._silent.discard(device_id)

    def malformed_frames(self, device_id: str, mode: str | None = "truncate") -> None:
        """A Modbus device answers reads with malformed frames (``mode`` in ``FRAME_FAULTS``) until
        called again with ``None``. Writes are still answered correctly."""
        if device_id not in self._modbus_stores:
            modbus = sorted(self._modbus_stores)
            raise NotFound(f"device {device_id!r} is not a simulated Modbus device (have: {modbus})",
                           element_id=device_id)
        if mode is None:
            self._garbled.pop(device_id, None)
            return
        if mode not in FRAME_FAULTS:
            raise BadInput(f"unknown frame fault {mode!r}; use one of {', '.join(FRAME_FAULTS)}")
        self._garbled[device_id] = mode

    def set_resource(self, feeder_id: str, der_id: str, share: float | None) -> None:
        """Pin the sun or wind a PV / wind DER offers to ``share`` of its rating (None: back to the
        daily PV curve or the wind's random walk, which can sit at zero for minutes). The
        inverter's own P limit still applies on top."""
        fs = self._fs(feeder_id)
        der = next((d for d in fs.feeder.ders if d.id == der_id), None)
        if der is None or der.kind not in (DerKind.PV, DerKind.WIND):
            raise BadInput(f"{der_id!r} is not a PV or wind DER of feeder {feeder_id}; its DERs are in its model")
        if share is None:
            fs.resource.pop(der_id, None)
        elif not 0.0 <= share <= 1.0:
            raise BadInput(f"resource share {share} for {der_id} is outside 0..1 (a share of its rating)")
        else:
            fs.resource[der_id] = share
        self._resolve_soon()

    async def reset(self) -> None:
        """Back to the model's normal state: switches as modelled, no faults, no injected conditions."""
        for h in self._timers:
            h.cancel()
        self._timers.clear()
        for fs in self._sims.values():
            fs.switch_open = {s.id: s.is_open for s in fs.feeder.switches}
            fs.status_open = dict(fs.switch_open)
            fs.faults.clear()
            fs.fi_latched.clear()
            fs.load_scale = 1.0
            fs.cap_step = {c.id: c.step for c in fs.feeder.capacitors if c.in_service}
            fs.remote_at.clear()
            fs.local_at.clear()
            fs.settings.clear()
            fs.der_setpoint.clear()
            fs.resource.clear()
            fs.tap_pos = {
                t.id: int(t.tap_pos or t.tap_neutral or 0) for t in fs.feeder.transformers if t.has_tap_changer
            }
        for dev in list(self._silent):
            await self.comm_loss(dev, on=False)
        self._garbled.clear()
        self._stuck.clear()
        self._wrong_status.clear()
        self._forced.clear()
        self._value_hook = None
        self.sunspec.reset()
        await self.tick()

    # -- for tests and benchmarks -----------------------------------------------------------------
    def value(self, point_id: str) -> float | bool | None:
        """The value the simulator serves now for ``point_id``."""
        return self._values.get(point_id)

    def truth(self, feeder_id: str) -> SimTruth:
        """The state the simulator solved last (what estimates are compared with)."""
        fs = self._fs(feeder_id)
        res = fs.last_result
        if res is None:
            raise BadInput(f"feeder {feeder_id!r} has not been solved yet; await tick() first")
        return SimTruth(
            feeder_id=feeder_id,
            vm_pu={b.bus_id: b.vm_pu for b in res.buses},
            loading_percent={ln.line_id: ln.loading_percent for ln in res.lines},
            line_p_mw={ln.line_id: ln.p_from_mw for ln in res.lines},
            load_p_mw={k: v[0] for k, v in fs.last_loads.items()},
            load_q_mvar={k: v[1] for k, v in fs.last_loads.items()},
            der_p_mw=dict(fs.last_ders),
            switch_open=dict(fs.switch_open),
            p_source_mw=res.p_source_mw,
            losses_mw=res.losses_mw,
            tap_pos=dict(fs.tap_pos),
            cap_step=dict(fs.cap_step),
            regulated_vm_pu=self._regulated(fs, res),
        )

    def report_wrong_status(self, feeder_id: str, switch_id: str, on: bool = True) -> None:
        """The status point of ``switch_id`` reports the opposite of the switch (a topology error)."""
        key = self._switch_key(switch_id, feeder_id)
        if on:
            self._wrong_status.add(key)
        else:
            self._wrong_status.discard(key)
        self._resolve_soon()

    def switch_is_open(self, feeder_id: str, switch_id: str) -> bool:
        return self._fs(feeder_id).switch_open[switch_id]

    def energized_bus_ids(self, feeder_id: str) -> frozenset[str]:
        return self._fs(feeder_id).energized

    def set_value_hook(self, hook: ValueHook | None) -> None:
        """Install ``hook(point_id, value, sim_time) -> value`` applied to every served value per tick."""
        self._value_hook = hook

    async def force_value(self, point_id: str, value: float | bool | None) -> None:
        """Serve ``value`` for ``point_id`` until forced again with ``None``."""
        if point_id not in self._points:
            raise NotFound(f"point {point_id!r} is not simulated", element_id=point_id)
        if value is None:
            self._forced.pop(point_id, None)
            self._resolve_soon()
            return
        self._forced[point_id] = value
        await self._serve_values({point_id: value})

    async def tick(self) -> None:
        """Re-solve and publish every feeder now (tests)."""
        for fs in self._sims.values():
            await asyncio.to_thread(self._solve, fs)
            await self._publish(fs)

    def status(self) -> dict[str, Any]:
        return {
            "sim_time": self.sim_time().isoformat(),
            "speed": self.speed,
            "feeders": {
                fid: {
                    "devices": [d.to_dict() for d in pm.devices],
                    "open_switches": sorted(s for s, o in self._sims[fid].switch_open.items() if o),
                    "faults": sorted(self._sims[fid].faults),
                }
                for fid, pm in self.point_maps.items()
            },
            "comm_loss": sorted(self._silent),
            "malformed_frames": dict(sorted(self._garbled.items())),
            "stuck": sorted(self._stuck),
            "sunspec": {fid: [e.to_dict() for e in self.sunspec.endpoints(fid)] for fid in self._sims},
        }


_SETTINGS = frozenset({CommandKind.SET_V_ON, CommandKind.SET_V_OFF, CommandKind.SET_BAND_CENTRE,
                       CommandKind.SET_BANDWIDTH})


def _host_port(endpoint: str) -> tuple[str, int]:
    rest = endpoint.split("://", 1)[1]
    hostport = rest.split("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    return host, int(port)
