"""Point maps: which register (Modbus) or node (OPC UA) carries which model element's value.

A :class:`PointMap` lists the field devices of one feeder and every point (telemetry or command)
bound to a model element. It is plain data: JSON round-trips (``to_json``/``from_json``) so it can
be stored in the graph store beside the feeder, and validation reports every problem at once,
naming the point (:class:`graph_schema.errors.BadInput`).

Point id convention: ``<feeder_id>/<element_id>/<KIND>``, e.g. ``case33bw/bus5/VM_PU``,
``case33bw/sw_line_3/STATUS``, ``case33bw/sw_line_3/OPEN``. ``KIND`` is a
:class:`graph_schema.model.Quantity`, a :class:`Signal` or a :class:`CommandKind`.

Semantics of the generated points:

* ``STATUS`` of a switch: ``True`` = OPEN (the model's ``is_open``), a discrete input.
* ``OPEN`` / ``CLOSE``: trip / close relay coils of a switch; write ``True`` to operate (FC05).
* ``FAULT``: a fault indicator latched (discrete input); ``LAST_GASP``: a meter's power-fail flag.
* ``TAP_POS`` (input register, INT16) and ``SET_TAP`` (holding register, FC06) of a transformer.
* ``CAP_STEP`` (input register, INT16) and ``SET_CAP_STEP`` (holding register, FC06) of a switched
  capacitor bank: steps in service, 0..``steps``; on the first RTU after the tap changers.
* ``SET_V_ON`` / ``SET_V_OFF`` of a bank with a local controller and ``SET_BAND_CENTRE`` /
  ``SET_BANDWIDTH`` of a tap changer with a band (holding registers, FLOAT32, pu): the settings its
  own controller uses when the head-end does not command it.
* ``SET_P_MW``: a DER's active-power set point (OPC UA, writable Double).
"""

from __future__ import annotations

import itertools
import json
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from graph_schema.errors import BadInput
from graph_schema.model import Feeder, Quantity
from protocols.codecs import DataType, Order, RegisterFormat, register_count

FORMAT_VERSION = 1
# Namespace index of the simulator's (and a generated map's) OPC UA nodes: the first namespace a
# server registers after the standard ones (0: OPC UA, 1: the server's local namespace).
OPCUA_NS = 2
MAX_REGISTERS_PER_READ = 125  # FC03/FC04, Modbus Application Protocol 6.3
MAX_BITS_PER_READ = 2000  # FC01/FC02


class Direction(StrEnum):
    READ = "READ"
    COMMAND = "COMMAND"


class ProtocolKind(StrEnum):
    MODBUS = "MODBUS"
    OPCUA = "OPCUA"


class Table(StrEnum):
    COIL = "COIL"
    DISCRETE_INPUT = "DISCRETE_INPUT"
    HOLDING_REGISTER = "HOLDING_REGISTER"
    INPUT_REGISTER = "INPUT_REGISTER"

    @property
    def is_bit(self) -> bool:
        return self in (Table.COIL, Table.DISCRETE_INPUT)

    @property
    def writable(self) -> bool:
        return self in (Table.COIL, Table.HOLDING_REGISTER)


class Signal(StrEnum):
    """Read signals that are not a :class:`Quantity` of the model."""

    FAULT = "FAULT"
    LAST_GASP = "LAST_GASP"


class CommandKind(StrEnum):
    OPEN = "OPEN"
    CLOSE = "CLOSE"
    SET_TAP = "SET_TAP"
    SET_CAP_STEP = "SET_CAP_STEP"
    # Local controller settings (the fallback Volt/VAR pushes): a bank's switch-in / switch-out
    # voltages, a tap changer's band centre and width, all in pu.
    SET_V_ON = "SET_V_ON"
    SET_V_OFF = "SET_V_OFF"
    SET_BAND_CENTRE = "SET_BAND_CENTRE"
    SET_BANDWIDTH = "SET_BANDWIDTH"
    SET_P_MW = "SET_P_MW"


PointKind = Quantity | Signal | CommandKind


class SecurityPolicy(StrEnum):
    BASIC256SHA256_SIGN_AND_ENCRYPT = "Basic256Sha256_SignAndEncrypt"
    NONE = "None"


def parse_kind(text: str) -> PointKind:
    for enum in (Quantity, Signal, CommandKind):
        try:
            return enum(text)
        except ValueError:
            continue
    raise ValueError(text)


@dataclass(frozen=True, slots=True)
class Device:
    """One field device: a Modbus TCP unit id on host:port, or an OPC UA server endpoint.

    ``register_counts`` is the size of each Modbus table the device has (from its configuration
    sheet); a point beyond it is refused when the map is loaded.
    """

    device_id: str
    protocol: ProtocolKind
    host: str = "127.0.0.1"
    port: int = 0
    unit_id: int | None = None
    endpoint: str | None = None
    security_policy: SecurityPolicy = SecurityPolicy.BASIC256SHA256_SIGN_AND_ENCRYPT
    register_counts: dict[Table, int] | None = field(default=None, hash=False, compare=True)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if self.register_counts is not None:
            d["register_counts"] = {str(k): v for k, v in self.register_counts.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Device:
        rc = d.get("register_counts")
        return cls(
            device_id=str(d["device_id"]),
            protocol=ProtocolKind(d["protocol"]),
            host=str(d.get("host", "127.0.0.1")),
            port=int(d.get("port", 0)),
            unit_id=None if d.get("unit_id") is None else int(d["unit_id"]),
            endpoint=d.get("endpoint"),
            security_policy=SecurityPolicy(
                d.get("security_policy", SecurityPolicy.BASIC256SHA256_SIGN_AND_ENCRYPT)
            ),
            register_counts=None if rc is None else {Table(k): int(v) for k, v in rc.items()},
        )


@dataclass(frozen=True, slots=True)
class PointMapping:
    point_id: str
    element_id: str
    quantity: PointKind
    direction: Direction
    protocol: ProtocolKind
    device_id: str
    # Modbus
    table: Table | None = None
    address: int | None = None
    data_type: DataType = DataType.FLOAT32
    byte_order: Order = Order.BIG
    word_order: Order = Order.BIG
    scale: float = 1.0
    offset: float = 0.0
    # OPC UA
    node_id: str | None = None
    # Reporting and validity
    deadband: float = 0.0
    min_value: float | None = None
    max_value: float | None = None

    @property
    def register_format(self) -> RegisterFormat:
        return RegisterFormat(self.data_type, self.byte_order, self.word_order, self.scale, self.offset)

    @property
    def register_span(self) -> int:
        """Registers (or bits) the point occupies in its table."""
        if self.table is not None and self.table.is_bit:
            return 1
        return register_count(self.data_type)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: (str(v) if isinstance(v, StrEnum) else v) for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PointMapping:
        table = d.get("table")
        return cls(
            point_id=str(d["point_id"]),
            element_id=str(d["element_id"]),
            quantity=parse_kind(str(d["quantity"])),
            direction=Direction(d["direction"]),
            protocol=ProtocolKind(d["protocol"]),
            device_id=str(d["device_id"]),
            table=None if table is None else Table(table),
            address=None if d.get("address") is None else int(d["address"]),
            data_type=DataType(d.get("data_type", DataType.FLOAT32)),
            byte_order=Order(d.get("byte_order", Order.BIG)),
            word_order=Order(d.get("word_order", Order.BIG)),
            scale=float(d.get("scale", 1.0)),
            offset=float(d.get("offset", 0.0)),
            node_id=d.get("node_id"),
            deadband=float(d.get("deadband", 0.0)),
            min_value=None if d.get("min_value") is None else float(d["min_value"]),
            max_value=None if d.get("max_value") is None else float(d["max_value"]),
        )


@dataclass(frozen=True, slots=True)
class PointMap:
    feeder_id: str
    devices: tuple[Device, ...]
    points: tuple[PointMapping, ...]

    # -- lookups ---------------------------------------------------------------------------------
    def device(self, device_id: str) -> Device:
        for d in self.devices:
            if d.device_id == device_id:
                return d
        raise KeyError(device_id)

    def point(self, point_id: str) -> PointMapping:
        for p in self.points:
            if p.point_id == point_id:
                return p
        raise KeyError(point_id)

    def points_of(self, device_id: str, direction: Direction | None = None) -> tuple[PointMapping, ...]:
        return tuple(
            p
            for p in self.points
            if p.device_id == device_id and (direction is None or p.direction is direction)
        )

    def with_devices(self, devices: Iterable[Device]) -> PointMap:
        """A copy with devices replaced by id (e.g. once a simulator knows its real ports)."""
        new = {d.device_id: d for d in devices}
        return replace(self, devices=tuple(new.get(d.device_id, d) for d in self.devices))

    # -- validation ------------------------------------------------------------------------------
    def problems(self, feeder: Feeder | None = None) -> list[str]:
        out: list[str] = []
        devices: dict[str, Device] = {}
        for d in self.devices:
            if d.device_id in devices:
                out.append(f"device {d.device_id!r}: duplicate device id")
            devices[d.device_id] = d
            if d.protocol is ProtocolKind.MODBUS and (d.unit_id is None or not 0 <= d.unit_id <= 255):
                out.append(f"device {d.device_id!r}: a Modbus device needs a unit_id 0..255")
            if d.protocol is ProtocolKind.OPCUA and not d.endpoint:
                out.append(f"device {d.device_id!r}: an OPC UA device needs an endpoint (opc.tcp://...)")
        element_ids = {getattr(e, "id", None) for e in feeder.elements()} if feeder is not None else None
        fits = _element_kinds(feeder) if feeder is not None else None
        seen: set[str] = set()
        spans: dict[tuple[str, Table], list[tuple[int, int, str]]] = defaultdict(list)
        for p in self.points:
            name = f"point {p.point_id!r}"
            if p.point_id in seen:
                out.append(f"{name}: duplicate point id")
            seen.add(p.point_id)
            dev = devices.get(p.device_id)
            if dev is None:
                out.append(f"{name}: unknown device {p.device_id!r}; add it to 'devices' or fix device_id")
            elif dev.protocol is not p.protocol:
                out.append(f"{name}: protocol {p.protocol} but device {p.device_id!r} is {dev.protocol}")
            if element_ids is not None and p.element_id not in element_ids:
                out.append(f"{name}: unknown element {p.element_id!r} in feeder {feeder.id!r}")  # type: ignore[union-attr]
            elif fits is not None and p.direction is Direction.READ and str(p.quantity) in _MEASURED_ON:
                want = _MEASURED_ON[str(p.quantity)]
                if fits.get(p.element_id) not in want:
                    out.append(f"{name}: {p.quantity} cannot be measured on {fits.get(p.element_id, 'element')} "
                               f"{p.element_id!r}; it needs a {' or '.join(sorted(want))}")
            if p.min_value is not None and p.max_value is not None and p.min_value > p.max_value:
                out.append(f"{name}: min_value {p.min_value} > max_value {p.max_value}")
            if p.protocol is ProtocolKind.OPCUA:
                if not p.node_id:
                    out.append(f"{name}: an OPC UA point needs a node_id (e.g. 'ns=2;s=...')")
                continue
            if p.table is None or p.address is None:
                out.append(f"{name}: a Modbus point needs a table and an address")
                continue
            if p.table.is_bit and p.data_type is not DataType.BOOL:
                out.append(f"{name}: {p.table} holds bits; data_type must be BOOL, not {p.data_type}")
            if not p.table.is_bit and p.data_type is DataType.BOOL:
                out.append(f"{name}: BOOL values live in COIL or DISCRETE_INPUT, not {p.table}")
                continue
            if p.direction is Direction.COMMAND and not p.table.writable:
                out.append(
                    f"{name}: commands need a writable table (COIL or HOLDING_REGISTER), not {p.table}"
                )
            end = p.address + p.register_span - 1
            if p.address < 0 or end > 0xFFFF:
                out.append(f"{name}: address {p.address} (+{p.register_span}) is outside 0..65535")
                continue
            if dev is not None and dev.register_counts is not None:
                size = dev.register_counts.get(p.table, 0)
                if end >= size:
                    out.append(
                        f"{name}: {p.table} {p.address}..{end} does not exist in device {dev.device_id!r} "
                        f"(it has {size} {p.table.lower()} entries: 0..{size - 1}); fix the address"
                    )
            spans[(p.device_id, p.table)].append((p.address, end, p.point_id))
        for (dev_id, table), items in spans.items():
            items.sort()
            for (a0, e0, p0), (a1, _e1, p1) in itertools.pairwise(items):
                if a1 <= e0:
                    out.append(
                        f"point {p1!r}: {table} {a1} overlaps point {p0!r} ({a0}..{e0}) on device {dev_id!r}"
                    )
        return out

    def validate(self, feeder: Feeder | None = None) -> PointMap:
        problems = self.problems(feeder)
        if problems:
            lines = "\n".join(f"  - {p}" for p in problems)
            raise BadInput(
                f"point map of feeder {self.feeder_id!r} is invalid ({len(problems)} problem(s)); "
                f"fix these in the point map file:\n{lines}",
                element_id=self.feeder_id,
            )
        return self

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "feeder_id": self.feeder_id,
            "devices": [d.to_dict() for d in self.devices],
            "points": [p.to_dict() for p in self.points],
        }

    def to_json(self, *, indent: int | None = None) -> str:
        return json.dumps(self.to_dict(), indent=indent, sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any], feeder: Feeder | None = None) -> PointMap:
        if not isinstance(data, dict) or data.get("version") != FORMAT_VERSION:
            raise BadInput(f"not a point map of format version {FORMAT_VERSION} (missing or other 'version')")
        try:
            pm = cls(
                feeder_id=str(data["feeder_id"]),
                devices=tuple(Device.from_dict(d) for d in data["devices"]),
                points=tuple(PointMapping.from_dict(p) for p in data["points"]),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise BadInput(f"malformed point map: {type(exc).__name__}: {exc}") from None
        return pm.validate(feeder)

    @classmethod
    def from_json(cls, text: str, feeder: Feeder | None = None) -> PointMap:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInput(f"point map is not valid JSON: {exc}") from None
        return cls.from_dict(data, feeder)

    @classmethod
    def load(cls, path: str | Path, feeder: Feeder | None = None) -> PointMap:
        p = Path(path)
        try:
            text = p.read_text(encoding="utf-8")
        except OSError as exc:
            raise BadInput(f"cannot read point map {str(p)!r}: {exc.strerror}") from None
        return cls.from_json(text, feeder)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(indent=2), encoding="utf-8")


# ------------------------------------------------------------------------------------------------
# Generated maps for demo feeders
# ------------------------------------------------------------------------------------------------

Split = Literal["by_kind", "modbus_only", "opcua_only"]

# Modbus layout of a generated RTU (addresses within each table).
DI_SWITCH_STATUS = 0  # + switch index in the RTU
DI_FAULT = 1000  # + fault indicator index in the RTU
COIL_SWITCH = 0  # OPEN at 2*i, CLOSE at 2*i + 1
IR_TAP = 0  # + transformer index (INT16)
HR_TAP = 0  # + transformer index (INT16)
IR_CAP = 50  # + capacitor bank index (INT16)
HR_CAP = 50  # + capacitor bank index (INT16)
HR_SETTINGS = 500  # local controller settings, FLOAT32 (2 registers each), in the order generated
IR_ANALOG = 100  # modbus_only: FLOAT32 analogs, 2 registers each
HR_SETPOINT = 100  # modbus_only: FLOAT32 set points
DI_LAST_GASP = 3000  # modbus_only
RTU_TABLE_SIZES = {
    Table.COIL: 1000,
    Table.DISCRETE_INPUT: 4000,
    Table.HOLDING_REGISTER: 1000,
    Table.INPUT_REGISTER: 2000,
}


def natural_key(text: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key that orders 'sw2' before 'sw10' (deterministic, human order)."""
    return tuple((0, int(tok)) if tok.isdigit() else (1, tok) for tok in re.split(r"(\d+)", text) if tok)


def point_id(feeder_id: str, element_id: str, kind: PointKind) -> str:
    return f"{feeder_id}/{element_id}/{kind}"


def opcua_node_id(pid: str) -> str:
    return f"ns={OPCUA_NS};s={pid}"


def virtual_fault_indicator_id(line_id: str) -> str:
    """Element id of the fault indicator a generated map gives a line that has none in the model."""
    return line_id


# What each measured quantity may be bound to (the state estimator relies on it).
_MEASURED_ON: dict[str, frozenset[str]] = {
    "VM_PU": frozenset({"bus"}),
    "I_KA": frozenset({"line"}),
    "P_MW": frozenset({"line", "DER", "load"}),
    "Q_MVAR": frozenset({"line", "DER", "load"}),
    "STATUS": frozenset({"switch"}),
    "TAP_POS": frozenset({"transformer"}),
    "CAP_STEP": frozenset({"capacitor"}),
}


def _element_kinds(feeder: Feeder) -> dict[str, str]:
    out: dict[str, str] = {}
    for kind, items in (("bus", feeder.buses), ("line", feeder.lines), ("DER", feeder.ders),
                        ("load", feeder.loads), ("switch", feeder.switches), ("transformer", feeder.transformers),
                        ("capacitor", feeder.capacitors)):
        for e in items:
            out[e.id] = kind
    return out


Metering = Literal["dense", "sparse"]


def sparse_metering(feeder: Feeder, line_sensors: int = 3) -> frozenset[str]:
    """Element ids metered on a sparse feeder, as on a real one: the feeder head (source bus voltage,
    the lines leaving the source: P, Q, I), ``line_sensors`` line sensors evenly spaced along the
    longest path (P, Q, I and the voltage at their far end), and every DER's output."""
    open_lines = {s.element_id for s in feeder.switches if s.is_open}
    adj: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for ln in feeder.lines:
        if ln.id not in open_lines and ln.in_service:
            adj[ln.from_bus_id].append((ln.to_bus_id, ln.id))
            adj[ln.to_bus_id].append((ln.from_bus_id, ln.id))
    for t in feeder.transformers:
        adj[t.hv_bus_id].append((t.lv_bus_id, ""))
        adj[t.lv_bus_id].append((t.hv_bus_id, ""))
    chosen: set[str] = set()
    for src in feeder.sources:
        chosen.add(src.bus_id)
        parent: dict[str, tuple[str, str]] = {}
        order = [src.bus_id]
        seen = {src.bus_id}
        for u in order:
            for v, lid in adj[u]:
                if v not in seen:
                    seen.add(v)
                    parent[v] = (u, lid)
                    order.append(v)
        path: list[tuple[str, str]] = []  # (bus, line feeding it), source side first
        b = order[-1]
        while b in parent:
            u, lid = parent[b]
            path.append((b, lid))
            b = u
        path.reverse()
        lines_on_path = [(bus, lid) for bus, lid in path if lid]
        if lines_on_path:
            chosen.add(lines_on_path[0][1])  # the feeder head
            n = len(lines_on_path)
            for k in range(1, line_sensors + 1):
                bus, lid = lines_on_path[min(n - 1, k * n // (line_sensors + 1))]
                chosen.update((bus, lid))
    # every feeder head below a substation transformer (CIGRE MV has two)
    src_buses = {s.bus_id for s in feeder.sources}
    for t in feeder.transformers:
        if t.hv_bus_id in src_buses:
            chosen.add(t.lv_bus_id)
            chosen.update(lid for _, lid in adj[t.lv_bus_id] if lid)
    chosen.update(d.id for d in feeder.ders)
    return frozenset(chosen)


def generate_point_map(
    feeder: Feeder,
    *,
    host: str = "127.0.0.1",
    modbus_port: int = 502,
    opcua_endpoint: str | None = None,
    split: Split = "by_kind",
    switches_per_rtu: int = 8,
    security_policy: SecurityPolicy = SecurityPolicy.BASIC256SHA256_SIGN_AND_ENCRYPT,
    metering: Metering = "dense",
) -> PointMap:
    """A deterministic point map for a demo feeder.

    ``metering="dense"`` meters every bus and line; ``"sparse"`` only :func:`sparse_metering`'s
    (switchgear, meters' last gasps and DER set points are the same in both).

    ``by_kind``: switch status/commands, fault indicators and tap changers over Modbus TCP (one RTU
    = one unit id per ``switches_per_rtu`` switches, all on ``host:modbus_port``); bus voltages,
    line-head currents and P/Q, meters' last-gasp flags and DER P (+ set point) over OPC UA (one
    server per feeder at ``opcua_endpoint``). ``modbus_only``/``opcua_only`` put everything on one
    protocol (benchmarks). Fault indicators are the feeder's own, or one per line (at its
    from-bus end, element id = line id) when the model has none.
    """
    if switches_per_rtu < 1:
        raise BadInput("switches_per_rtu must be >= 1")
    fid = feeder.id
    endpoint = opcua_endpoint or f"opc.tcp://{host}:4840/dms/{fid}"
    use_modbus_for_switchgear = split in ("by_kind", "modbus_only")
    use_modbus_for_analogs = split == "modbus_only"

    switches = sorted(
        (s for s in feeder.switches if s.kind.remote_controllable), key=lambda s: natural_key(s.id)
    )
    fis: list[tuple[str, str]] = (
        [(fi.id, fi.line_id) for fi in feeder.fault_indicators]
        if feeder.fault_indicators
        else [(virtual_fault_indicator_id(ln.id), ln.id) for ln in feeder.lines]
    )
    fis.sort(key=lambda x: natural_key(x[0]))
    tap_trafos = sorted(
        (t for t in feeder.transformers if t.has_tap_changer), key=lambda t: natural_key(t.id)
    )

    devices: list[Device] = []
    points: list[PointMapping] = []
    n_rtus = max(1, -(-len(switches) // switches_per_rtu))

    def rtu_id(k: int) -> str:
        return f"{fid}/rtu{k + 1}"

    if use_modbus_for_switchgear:
        for k in range(n_rtus):
            devices.append(
                Device(
                    rtu_id(k),
                    ProtocolKind.MODBUS,
                    host=host,
                    port=modbus_port,
                    unit_id=k + 1,
                    register_counts=dict(RTU_TABLE_SIZES),
                )
            )
    if split != "modbus_only":
        devices.append(
            Device(
                f"{fid}/opcua",
                ProtocolKind.OPCUA,
                host=host,
                endpoint=endpoint,
                security_policy=security_policy,
            )
        )
    opcua_dev = f"{fid}/opcua"

    def ua(element_id: str, kind: PointKind, direction: Direction = Direction.READ, **kw: Any) -> None:
        pid = point_id(fid, element_id, kind)
        points.append(
            PointMapping(
                pid,
                element_id,
                kind,
                direction,
                ProtocolKind.OPCUA,
                opcua_dev,
                node_id=opcua_node_id(pid),
                data_type=DataType.BOOL
                if kind in (Signal.FAULT, Signal.LAST_GASP, Quantity.STATUS)
                else DataType.FLOAT64,
                **kw,
            )
        )

    def mb(element_id: str, kind: PointKind, dev: str, table: Table, address: int, **kw: Any) -> None:
        direction = Direction.COMMAND if isinstance(kind, CommandKind) else Direction.READ
        points.append(
            PointMapping(
                point_id(fid, element_id, kind),
                element_id,
                kind,
                direction,
                ProtocolKind.MODBUS,
                dev,
                table=table,
                address=address,
                **kw,
            )
        )

    line_of_switch = {s.element_id: k for k, s in enumerate(switches)}
    # Switchgear: status + trip/close.
    for i, sw in enumerate(switches):
        if use_modbus_for_switchgear:
            dev, j = rtu_id(i // switches_per_rtu), i % switches_per_rtu
            mb(
                sw.id,
                Quantity.STATUS,
                dev,
                Table.DISCRETE_INPUT,
                DI_SWITCH_STATUS + j,
                data_type=DataType.BOOL,
            )
            mb(sw.id, CommandKind.OPEN, dev, Table.COIL, COIL_SWITCH + 2 * j, data_type=DataType.BOOL)
            mb(sw.id, CommandKind.CLOSE, dev, Table.COIL, COIL_SWITCH + 2 * j + 1, data_type=DataType.BOOL)
        else:
            ua(sw.id, Quantity.STATUS)
            ua(sw.id, CommandKind.OPEN, Direction.COMMAND)
            ua(sw.id, CommandKind.CLOSE, Direction.COMMAND)
    # Fault indicators: on the RTU of the switch of the same line when there is one.
    per_rtu_fi: dict[int, int] = defaultdict(int)
    for n, (fi_id, line_id) in enumerate(fis):
        if use_modbus_for_switchgear:
            k = line_of_switch.get(line_id, n * switches_per_rtu) // switches_per_rtu % n_rtus
            mb(
                fi_id,
                Signal.FAULT,
                rtu_id(k),
                Table.DISCRETE_INPUT,
                DI_FAULT + per_rtu_fi[k],
                data_type=DataType.BOOL,
            )
            per_rtu_fi[k] += 1
        else:
            ua(fi_id, Signal.FAULT)
    # Tap changers on the first RTU.
    for i, t in enumerate(tap_trafos):
        lo, hi = float(t.tap_min or 0), float(t.tap_max or 0)
        if use_modbus_for_switchgear:
            dev = rtu_id(0)
            mb(
                t.id,
                Quantity.TAP_POS,
                dev,
                Table.INPUT_REGISTER,
                IR_TAP + i,
                data_type=DataType.INT16,
                min_value=lo,
                max_value=hi,
            )
            mb(
                t.id,
                CommandKind.SET_TAP,
                dev,
                Table.HOLDING_REGISTER,
                HR_TAP + i,
                data_type=DataType.INT16,
                min_value=lo,
                max_value=hi,
            )
        else:
            ua(t.id, Quantity.TAP_POS, min_value=lo, max_value=hi)
            ua(t.id, CommandKind.SET_TAP, Direction.COMMAND, min_value=lo, max_value=hi)
    # Capacitor banks (steps in service), beside the tap changers.
    caps = sorted((c for c in feeder.capacitors if c.in_service), key=lambda c: natural_key(c.id))
    if len(caps) > IR_ANALOG - IR_CAP or len(tap_trafos) > IR_CAP - IR_TAP:
        raise BadInput(f"feeder {fid!r} has {len(tap_trafos)} tap changers and {len(caps)} capacitor banks; a "
                       f"generated RTU holds {IR_CAP - IR_TAP} and {IR_ANALOG - IR_CAP}: write its point map by hand")
    for i, c in enumerate(caps):
        hi = float(c.steps)
        if use_modbus_for_switchgear:
            dev = rtu_id(0)
            mb(c.id, Quantity.CAP_STEP, dev, Table.INPUT_REGISTER, IR_CAP + i, data_type=DataType.INT16,
               min_value=0.0, max_value=hi)
            mb(c.id, CommandKind.SET_CAP_STEP, dev, Table.HOLDING_REGISTER, HR_CAP + i, data_type=DataType.INT16,
               min_value=0.0, max_value=hi)
        else:
            ua(c.id, Quantity.CAP_STEP, min_value=0.0, max_value=hi)
            ua(c.id, CommandKind.SET_CAP_STEP, Direction.COMMAND, min_value=0.0, max_value=hi)
    # Local controller settings, pushed by Volt/VAR as the field's fallback.
    settings: list[tuple[str, CommandKind]] = [
        *((c.id, k) for c in caps if c.local_control for k in (CommandKind.SET_V_ON, CommandKind.SET_V_OFF)),
        *((t.id, k) for t in tap_trafos if t.band_centre_pu is not None
          for k in (CommandKind.SET_BAND_CENTRE, CommandKind.SET_BANDWIDTH)),
    ]
    if HR_SETTINGS + 2 * len(settings) > RTU_TABLE_SIZES[Table.HOLDING_REGISTER]:
        raise BadInput(f"feeder {fid!r} has {len(settings)} controller settings; a generated RTU holds "
                       f"{(RTU_TABLE_SIZES[Table.HOLDING_REGISTER] - HR_SETTINGS) // 2}: write its point map by hand")
    for k, (eid, kind) in enumerate(settings):
        if use_modbus_for_switchgear:
            mb(eid, kind, rtu_id(0), Table.HOLDING_REGISTER, HR_SETTINGS + 2 * k, data_type=DataType.FLOAT32,
               min_value=0.0, max_value=1.5)
        else:
            ua(eid, kind, Direction.COMMAND, min_value=0.0, max_value=1.5)

    # Analogs.
    analog: list[tuple[str, PointKind, dict[str, Any]]] = []
    metered = sparse_metering(feeder) if metering == "sparse" else None
    for b in sorted(feeder.buses, key=lambda b: natural_key(b.id)):
        if metered is not None and b.id not in metered:
            continue
        analog.append((b.id, Quantity.VM_PU, {"deadband": 0.001, "min_value": 0.0, "max_value": 2.0}))
    for ln in sorted(feeder.lines, key=lambda x: natural_key(x.id)):
        if metered is not None and ln.id not in metered:
            continue
        analog.append((ln.id, Quantity.I_KA, {"deadband": 0.0005, "min_value": 0.0}))
        analog.append((ln.id, Quantity.P_MW, {"deadband": 0.001}))
        analog.append((ln.id, Quantity.Q_MVAR, {"deadband": 0.001}))
    for d in sorted(feeder.ders, key=lambda x: natural_key(x.id)):
        analog.append((d.id, Quantity.P_MW, {"deadband": 0.001}))
    meters = [ld.id for ld in sorted(feeder.loads, key=lambda x: natural_key(x.id))]
    setpoints = [d.id for d in sorted(feeder.ders, key=lambda x: natural_key(x.id))]

    if use_modbus_for_analogs:
        dev = rtu_id(0)
        addr = IR_ANALOG
        for eid, kind, kw in analog:
            mb(eid, kind, dev, Table.INPUT_REGISTER, addr, data_type=DataType.FLOAT32, **kw)
            addr += 2
        for i, eid in enumerate(meters):
            mb(eid, Signal.LAST_GASP, dev, Table.DISCRETE_INPUT, DI_LAST_GASP + i, data_type=DataType.BOOL)
        for i, eid in enumerate(setpoints):
            mb(
                eid,
                CommandKind.SET_P_MW,
                dev,
                Table.HOLDING_REGISTER,
                HR_SETPOINT + 2 * i,
                data_type=DataType.FLOAT32,
            )
        if addr > RTU_TABLE_SIZES[Table.INPUT_REGISTER]:
            raise BadInput(f"feeder {fid!r} has too many analogs for one generated RTU; use split='by_kind'")
    else:
        for eid, kind, kw in analog:
            ua(eid, kind, **kw)
        for eid in meters:
            ua(eid, Signal.LAST_GASP)
        for eid in setpoints:
            ua(eid, CommandKind.SET_P_MW, Direction.COMMAND)

    return PointMap(fid, tuple(devices), tuple(points)).validate(feeder)


def points_by_device(points: Sequence[PointMapping]) -> dict[str, list[PointMapping]]:
    out: dict[str, list[PointMapping]] = defaultdict(list)
    for p in points:
        out[p.device_id].append(p)
    return dict(out)
