"""Pure parts of the field clients: batching, status mapping, security configuration (no sockets)."""

from __future__ import annotations

import pytest
from asyncua import ua

from graph_schema.errors import ConfigError
from graph_schema.model import Quantity
from protocols.base import DeviceRejected, Quality
from protocols.codecs import DataType
from protocols.modbus_client import ModbusClient, plan_batches
from protocols.opcua_client import OpcUaClient, quality_of_status
from protocols.pointmap import Device, Direction, PointMapping, ProtocolKind, SecurityPolicy, Table


def _p(pid: str, table: Table, address: int, dt: DataType, direction: Direction = Direction.READ) -> PointMapping:
    return PointMapping(
        pid, "e", Quantity.VM_PU, direction, ProtocolKind.MODBUS, "d", table=table, address=address, data_type=dt
    )


def test_batches_are_contiguous_per_table_and_capped_at_125_registers() -> None:
    pts = [_p(f"ir{i}", Table.INPUT_REGISTER, 2 * i, DataType.FLOAT32) for i in range(70)]  # 140 regs
    pts += [_p("gap", Table.INPUT_REGISTER, 500, DataType.UINT16)]
    pts += [_p(f"di{i}", Table.DISCRETE_INPUT, i, DataType.BOOL) for i in range(10)]
    pts += [_p("cmd", Table.COIL, 0, DataType.BOOL, Direction.COMMAND)]  # commands are not read
    batches = plan_batches(pts)
    summary = [(b.table, b.address, b.count, len(b.points)) for b in batches]
    assert summary == [
        (Table.DISCRETE_INPUT, 0, 10, 10),
        (Table.INPUT_REGISTER, 0, 124, 62),  # a FLOAT32 is never split across two reads
        (Table.INPUT_REGISTER, 124, 16, 8),
        (Table.INPUT_REGISTER, 500, 1, 1),
    ]


def test_opcua_status_codes_map_to_quality() -> None:
    assert quality_of_status(None) is Quality.GOOD
    assert quality_of_status(ua.StatusCode(ua.StatusCodes.Good)) is Quality.GOOD
    assert quality_of_status(ua.StatusCode(ua.StatusCodes.BadOutOfRange)) is Quality.INVALID
    assert quality_of_status(ua.StatusCode(ua.StatusCodes.BadNoCommunication)) is Quality.COMM_LOST
    assert quality_of_status(ua.StatusCode(ua.StatusCodes.UncertainLastUsableValue)) is Quality.STALE


def test_opcua_security_configuration_is_checked_up_front() -> None:
    dev = Device("ua", ProtocolKind.OPCUA, endpoint="opc.tcp://127.0.0.1:4840/x")
    with pytest.raises(ConfigError, match="certificate"):
        OpcUaClient(dev, [])
    insecure = Device(
        "ua", ProtocolKind.OPCUA, endpoint="opc.tcp://127.0.0.1:4840/x", security_policy=SecurityPolicy.NONE
    )
    with pytest.raises(ConfigError, match="DMS_OPCUA_ALLOW_NOSECURITY=true"):
        OpcUaClient(insecure, [])
    assert OpcUaClient(insecure, [], allow_nosecurity=True).secure is False


def test_modbus_client_needs_a_unit_id() -> None:
    with pytest.raises(ConfigError):
        ModbusClient(Device("x", ProtocolKind.MODBUS, port=502), [])


def test_device_rejected_carries_the_exception_code() -> None:
    err = DeviceRejected("nope", exception_code=2, element_id="p")
    assert err.extensions() == {"code": "DEVICE_REJECTED", "elementId": "p", "exceptionCode": 2}
