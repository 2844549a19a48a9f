from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from graph_schema.errors import BadInput
from graph_schema.model import (
    Bus,
    Der,
    DerKind,
    ElementType,
    Feeder,
    Line,
    Load,
    Quantity,
    Source,
    Switch,
    SwitchKind,
    Transformer,
)
from protocols.codecs import DataType
from protocols.pointmap import (
    CommandKind,
    Device,
    Direction,
    PointMap,
    PointMapping,
    ProtocolKind,
    Signal,
    Table,
    generate_point_map,
)


def _line(i: int, a: str, b: str) -> Line:
    return Line(f"l{i}", a, b, 1.0, 0.1, 0.1, 0.0, 0.4)


def small_feeder() -> Feeder:
    return Feeder(
        id="f1",
        name="small",
        sources=(Source("src", "b0"),),
        buses=tuple(Bus(f"b{i}", 12.66) for i in range(5)),
        lines=(_line(1, "b1", "b2"), _line(2, "b2", "b3"), _line(3, "b3", "b4")),
        transformers=(
            Transformer(
                "t1",
                "b0",
                "b1",
                10.0,
                110.0,
                12.66,
                10.0,
                0.5,
                tap_side="hv",
                tap_neutral=0,
                tap_min=-8,
                tap_max=8,
                tap_step_percent=1.25,
                tap_pos=0,
            ),
        ),
        switches=(
            Switch("cb1", SwitchKind.BREAKER, "b1", ElementType.LINE, "l1"),
            Switch("sw2", SwitchKind.LOAD_BREAK_SWITCH, "b2", ElementType.LINE, "l2"),
            Switch("fu3", SwitchKind.FUSE, "b3", ElementType.LINE, "l3"),
        ),
        loads=(Load("ld3", "b3", 0.1, 0.05, 10), Load("ld4", "b4", 0.2, 0.1, 20)),
        ders=(Der("pv4", "b4", DerKind.PV, 0.5, 0.2),),
    )


def test_generated_map_is_deterministic_valid_and_uses_both_protocols() -> None:
    f = small_feeder()
    pm1 = generate_point_map(f, modbus_port=5020, opcua_endpoint="opc.tcp://127.0.0.1:4841/x")
    pm2 = generate_point_map(f, modbus_port=5020, opcua_endpoint="opc.tcp://127.0.0.1:4841/x")
    assert pm1 == pm2
    assert pm1.to_json() == pm2.to_json()
    ids = {p.point_id for p in pm1.points}
    # Fuses are not remote controllable.
    assert "f1/fu3/STATUS" not in ids
    st = pm1.point("f1/cb1/STATUS")
    assert (st.protocol, st.table, st.data_type) == (ProtocolKind.MODBUS, Table.DISCRETE_INPUT, DataType.BOOL)
    op, cl = pm1.point("f1/cb1/OPEN"), pm1.point("f1/cb1/CLOSE")
    assert op.table is Table.COIL and cl.table is Table.COIL and op.address != cl.address
    assert op.direction is Direction.COMMAND
    assert pm1.point("f1/b3/VM_PU").protocol is ProtocolKind.OPCUA
    assert pm1.point("f1/b3/VM_PU").node_id == "ns=2;s=f1/b3/VM_PU"
    for line in ("l1", "l2", "l3"):
        for q in ("I_KA", "P_MW", "Q_MVAR"):
            assert f"f1/{line}/{q}" in ids
        assert pm1.point(f"f1/{line}/FAULT").protocol is ProtocolKind.MODBUS
    assert pm1.point("f1/ld4/LAST_GASP").quantity is Signal.LAST_GASP
    assert pm1.point("f1/t1/TAP_POS").table is Table.INPUT_REGISTER
    assert pm1.point("f1/t1/SET_TAP").table is Table.HOLDING_REGISTER
    assert pm1.point("f1/pv4/SET_P_MW").quantity is CommandKind.SET_P_MW
    assert pm1.point("f1/pv4/P_MW").quantity is Quantity.P_MW
    modbus = [d for d in pm1.devices if d.protocol is ProtocolKind.MODBUS]
    assert [d.unit_id for d in modbus] == [1] and modbus[0].port == 5020


def test_rtus_split_by_switch_count_each_with_its_unit_id() -> None:
    pm = generate_point_map(small_feeder(), switches_per_rtu=1)
    modbus = [d for d in pm.devices if d.protocol is ProtocolKind.MODBUS]
    assert [(d.device_id, d.unit_id) for d in modbus] == [("f1/rtu1", 1), ("f1/rtu2", 2)]
    assert pm.point("f1/sw2/STATUS").device_id == "f1/rtu2"
    assert pm.point("f1/l2/FAULT").device_id == "f1/rtu2"  # FI on the RTU of its line's switch


@pytest.mark.parametrize("split", ["modbus_only", "opcua_only"])
def test_single_protocol_splits(split: str) -> None:
    pm = generate_point_map(small_feeder(), split=split)  # type: ignore[arg-type]
    assert {p.protocol for p in pm.points} == {
        ProtocolKind.MODBUS if split == "modbus_only" else ProtocolKind.OPCUA
    }


def test_json_round_trip_and_file(tmp_path: Path) -> None:
    f = small_feeder()
    pm = generate_point_map(f)
    again = PointMap.from_json(pm.to_json(), feeder=f)
    assert again == pm
    path = tmp_path / "map.json"
    pm.save(path)
    assert PointMap.load(path, feeder=f) == pm
    json.loads(path.read_text())  # plain JSON


def _pm_with(*points: PointMapping, counts: dict[Table, int] | None = None) -> PointMap:
    dev = Device("rtu", ProtocolKind.MODBUS, port=502, unit_id=1, register_counts=counts)
    return PointMap("f1", (dev,), points)


def _mb(pid: str, table: Table, address: int, dt: DataType, element: str = "b1") -> PointMapping:
    return PointMapping(
        pid,
        element,
        Quantity.VM_PU,
        Direction.READ,
        ProtocolKind.MODBUS,
        "rtu",
        table=table,
        address=address,
        data_type=dt,
    )


def test_validation_lists_every_problem_naming_the_point() -> None:
    pm = _pm_with(
        _mb("a", Table.HOLDING_REGISTER, 10, DataType.FLOAT32),
        _mb("b", Table.HOLDING_REGISTER, 11, DataType.UINT16),  # overlaps a (10..11)
        _mb("a", Table.INPUT_REGISTER, 0, DataType.UINT16),  # duplicate id
        _mb("c", Table.INPUT_REGISTER, 5, DataType.UINT16, element="nope"),  # unknown element
        dataclasses.replace(_mb("d", Table.INPUT_REGISTER, 6, DataType.UINT16), device_id="ghost"),
    )
    with pytest.raises(BadInput) as ei:
        pm.validate(small_feeder())
    msg = str(ei.value)
    assert "point 'b'" in msg and "overlaps point 'a'" in msg
    assert "point 'a': duplicate point id" in msg
    assert "point 'c': unknown element 'nope'" in msg
    assert "point 'd': unknown device 'ghost'" in msg
    assert "4 problem(s)" in msg


def test_register_beyond_the_device_is_refused_at_load() -> None:
    pm = _pm_with(
        _mb("ok", Table.INPUT_REGISTER, 98, DataType.FLOAT32),
        _mb("far", Table.INPUT_REGISTER, 99, DataType.FLOAT32, element="b2"),
        counts={Table.INPUT_REGISTER: 100},
    )
    with pytest.raises(
        BadInput, match=r"point 'far': INPUT_REGISTER 99\.\.100 does not exist in device 'rtu'"
    ):
        PointMap.from_json(pm.to_json())


def test_type_and_table_mismatches() -> None:
    bad = _pm_with(
        _mb("x", Table.COIL, 0, DataType.FLOAT32),
        _mb("y", Table.HOLDING_REGISTER, 0, DataType.BOOL),
        dataclasses.replace(_mb("z", Table.INPUT_REGISTER, 1, DataType.UINT16), direction=Direction.COMMAND),
        _mb("w", Table.INPUT_REGISTER, 65535, DataType.FLOAT32),
    )
    probs = bad.problems()
    assert any(p.startswith("point 'x'") and "BOOL" in p for p in probs)
    assert any(p.startswith("point 'y'") for p in probs)
    assert any(p.startswith("point 'z'") and "writable" in p for p in probs)
    assert any(p.startswith("point 'w'") and "outside 0..65535" in p for p in probs)


def test_malformed_json_is_bad_input() -> None:
    with pytest.raises(BadInput, match="not valid JSON"):
        PointMap.from_json("{")
    with pytest.raises(BadInput, match="version"):
        PointMap.from_json("{}")
    with pytest.raises(BadInput, match="malformed"):
        PointMap.from_json(json.dumps({"version": 1, "feeder_id": "f", "devices": [], "points": [{}]}))
