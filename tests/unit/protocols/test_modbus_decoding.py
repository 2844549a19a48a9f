"""Decoding Modbus answers: a malformed frame is a per-device failure, never an exception or GOOD values.

No sockets: the client is given a stand-in connection that returns real pymodbus PDU objects, as
pymodbus 3.16 decodes them from the wire (a coil answer with byte count 1 and no data decodes to no
bits at all; a register answer with byte count 0 to no registers; a wrong function code to another
PDU class).
"""

from __future__ import annotations

import logging
import struct
from typing import Any

import pytest
from pymodbus.exceptions import ModbusIOException
from pymodbus.pdu import ExceptionResponse
from pymodbus.pdu.bit_message import ReadCoilsResponse, ReadDiscreteInputsResponse, WriteSingleCoilResponse
from pymodbus.pdu.register_message import ReadInputRegistersResponse

from graph_schema.model import Quantity
from protocols.base import MalformedResponse, Quality
from protocols.codecs import DataType, FrameError, check_function_code, checked_bits, checked_registers
from protocols.modbus_client import ModbusClient
from protocols.pointmap import Device, Direction, PointMapping, ProtocolKind, Table

DEV = Device("f/rtu1", ProtocolKind.MODBUS, port=1502, unit_id=1)


def _p(pid: str, table: Table, address: int, dt: DataType = DataType.BOOL,
       direction: Direction = Direction.READ) -> PointMapping:
    return PointMapping(pid, "e", Quantity.STATUS, direction, ProtocolKind.MODBUS, DEV.device_id,
                        table=table, address=address, data_type=dt)


POINTS = [
    _p("sw1", Table.DISCRETE_INPUT, 0),
    _p("sw2", Table.DISCRETE_INPUT, 1),
    _p("p1", Table.INPUT_REGISTER, 0, DataType.FLOAT32),
    _p("p2", Table.INPUT_REGISTER, 2, DataType.UINT16),
    _p("trip", Table.COIL, 0, direction=Direction.COMMAND),
]


class FakeConnection:
    """Stands in for ``AsyncModbusTcpClient``: answers each read with what ``answers`` says."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.connected = True
        self.closed = 0

    def close(self) -> None:
        self.connected = False
        self.closed += 1

    def _answer(self, name: str, count: int) -> Any:
        a = self.answers[name]
        if isinstance(a, BaseException):
            raise a
        return a(count) if callable(a) else a

    async def read_discrete_inputs(self, address: int, *, count: int, device_id: int) -> Any:
        return self._answer("di", count)

    async def read_input_registers(self, address: int, *, count: int, device_id: int) -> Any:
        return self._answer("ir", count)

    async def read_coils(self, address: int, *, count: int, device_id: int) -> Any:
        return self._answer("co", count)

    async def write_coil(self, address: int, value: bool, *, device_id: int) -> Any:
        return self._answer("write", 1)


def good_answers() -> dict[str, Any]:
    return {
        "di": lambda n: ReadDiscreteInputsResponse(bits=[True, False] + [False] * 6),
        "ir": lambda n: ReadInputRegistersResponse(registers=[0x3F80, 0x0000, 7]),  # 1.0, 7
        "write": WriteSingleCoilResponse(address=0, bits=[True]),
    }


def client_with(conn: FakeConnection) -> ModbusClient:
    client = ModbusClient(DEV, POINTS, backoff_initial_s=0.0)
    client._client = conn  # type: ignore[assignment]
    return client


async def test_good_answers_decode_to_good_values() -> None:
    client = client_with(FakeConnection(good_answers()))
    values = {v.point_id: v for v in await client.read_points()}
    assert {k: (v.value, v.quality) for k, v in values.items()} == {
        "sw1": (True, Quality.GOOD), "sw2": (False, Quality.GOOD),
        "p1": (1.0, Quality.GOOD), "p2": (7.0, Quality.GOOD),
    }
    assert client.last_failure is None


MALFORMED = {
    # The frame: FC02 answer with byte count 1 and no data (pymodbus decodes no bits).
    "bits truncated": ("di", ReadDiscreteInputsResponse(bits=[]), "DISCRETE_INPUT 0..1", "truncated"),
    "registers truncated": ("ir", ReadInputRegistersResponse(registers=[0x3F80]), "INPUT_REGISTER 0..2",
                            "byte count 2 for 3 register(s)"),
    "registers empty": ("ir", ReadInputRegistersResponse(registers=[]), "INPUT_REGISTER 0..2", "truncated"),
    "registers oversized": ("ir", ReadInputRegistersResponse(registers=[1, 2, 3, 4]), "INPUT_REGISTER 0..2",
                            "oversized"),
    "bits oversized": ("di", ReadDiscreteInputsResponse(bits=[True] * 16), "DISCRETE_INPUT 0..1", "oversized"),
    "wrong function code": ("di", ReadCoilsResponse(bits=[True] * 8), "DISCRETE_INPUT 0..1",
                            "function code 1 in the answer to function code 2"),
    "not a word": ("ir", ReadInputRegistersResponse(registers=[0x3F80, 0, 70000]), "INPUT_REGISTER 0..2",
                   "not a 16-bit word"),
    "library raised IndexError": ("di", IndexError("list index out of range"), "DISCRETE_INPUT 0..1",
                                  "IndexError"),
    "library raised struct.error": ("ir", struct.error("unpack requires a buffer of 2 bytes"),
                                    "INPUT_REGISTER 0..2", "unpack requires"),
    "not a response": ("ir", None, "INPUT_REGISTER 0..2", "AttributeError"),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
async def test_a_malformed_answer_fails_the_whole_device_like_a_timeout(case: str, caplog) -> None:
    table_key, answer, where, defect = MALFORMED[case]
    answers = good_answers()
    client = client_with(FakeConnection(answers))
    before = {v.point_id: v.value for v in await client.read_points()}  # last good values

    conn = FakeConnection({**answers, table_key: answer})
    client._client = conn  # type: ignore[assignment]
    with caplog.at_level(logging.WARNING, "protocols.modbus_client"):
        values = await client.read_points()  # never raises
    assert {v.point_id for v in values} == {"sw1", "sw2", "p1", "p2"}
    # Every point of the device, also those of the batch that decoded fine: the scan is discarded.
    assert all(v.quality is Quality.INVALID and v.device_fault for v in values), values
    assert {v.point_id: v.value for v in values} == before  # last known values kept, as for a timeout
    reason = values[0].reason
    assert reason is not None and "'f/rtu1'" in reason and where in reason and defect in reason, reason
    assert all(v.reason == reason for v in values)
    assert client.last_failure == reason
    assert conn.closed >= 1  # the connection is re-opened: its framing cannot be trusted
    assert [r.getMessage() for r in caplog.records if "malformed" in r.getMessage()] == [
        f"{reason}; marking its points INVALID"]


async def test_a_device_that_is_malformed_from_the_first_scan_has_its_points_invalid() -> None:
    client = client_with(FakeConnection({**good_answers(), "di": ReadDiscreteInputsResponse(bits=[])}))
    values = await client.read_points()
    assert [(v.value, v.quality, v.device_fault) for v in values] == [(None, Quality.INVALID, True)] * 4


async def test_the_failure_is_logged_once_and_the_device_recovers(caplog) -> None:
    bad = {**good_answers(), "di": ReadDiscreteInputsResponse(bits=[])}
    client = client_with(FakeConnection(bad))
    with caplog.at_level(logging.INFO, "protocols.modbus_client"):
        for _ in range(3):
            client._client = FakeConnection(bad)  # type: ignore[assignment]
            await client.read_points()
        client._client = FakeConnection(good_answers())  # type: ignore[assignment]
        values = await client.read_points()
    assert all(v.quality is Quality.GOOD and v.reason is None for v in values)
    msgs = [r.getMessage() for r in caplog.records]
    assert sum("malformed" in m for m in msgs) == 1, msgs
    assert msgs[-1] == "device f/rtu1 answers correctly again"
    assert client.last_failure is None


async def test_an_exception_answer_still_marks_only_its_points_invalid() -> None:
    answers = {**good_answers(), "ir": ExceptionResponse(4, 4)}
    values = {v.point_id: v for v in await client_with(FakeConnection(answers)).read_points()}
    assert values["sw1"].quality is Quality.GOOD
    assert (values["p1"].quality, values["p1"].exception_code) == (Quality.INVALID, 4)


async def test_a_nan_float_is_an_invalid_point_not_a_malformed_frame() -> None:
    answers = {**good_answers(), "ir": ReadInputRegistersResponse(registers=[0x7FC0, 0, 7])}
    values = {v.point_id: v for v in await client_with(FakeConnection(answers)).read_points()}
    assert values["p1"].quality is Quality.INVALID and values["p2"].quality is Quality.GOOD


async def test_a_timeout_from_the_library_is_still_comm_lost_with_a_reason() -> None:
    answers = {**good_answers(), "ir": ModbusIOException("No response received after 0 retries")}
    values = {v.point_id: v for v in await client_with(FakeConnection(answers)).read_points()}
    assert values["sw1"].quality is Quality.GOOD
    assert values["p1"].quality is Quality.COMM_LOST and "INPUT_REGISTER 0" in (values["p1"].reason or "")


async def test_a_command_answered_with_a_malformed_frame_is_not_reported_as_done() -> None:
    conn = FakeConnection({**good_answers(), "write": ReadCoilsResponse(bits=[True] * 8)})
    client = client_with(conn)
    with pytest.raises(MalformedResponse, match="may or may not have been executed") as err:
        await client.write_command("trip", True)
    assert err.value.code == "MALFORMED_RESPONSE" and "function code 1" in err.value.message
    assert conn.closed >= 1


async def test_verify_names_a_malformed_answer() -> None:
    answers = {**good_answers(), "ir": lambda n: ReadInputRegistersResponse(registers=[0] * n),
               "di": ReadDiscreteInputsResponse(bits=[])}
    client = client_with(FakeConnection(answers))
    with pytest.raises(MalformedResponse, match="DISCRETE_INPUT 0"):
        await client.verify()


# -- the pure checks ------------------------------------------------------------------------------


def test_checked_bits_accepts_the_padded_byte_and_nothing_else() -> None:
    assert checked_bits([True, False, True] + [False] * 5, 3) == [True, False, True]
    assert checked_bits([True] * 16, 9) == [True] * 9
    for bits, count in (([], 1), ([True] * 8, 9), ([True] * 16, 8), (None, 1)):
        with pytest.raises(FrameError):
            checked_bits(bits, count)


def test_checked_registers_needs_exactly_count_words() -> None:
    assert checked_registers([1, 2], 2) == [1, 2]
    for regs in ([1], [1, 2, 3], None, [1, -1], [1, True], [1, "x"]):
        with pytest.raises(FrameError):
            checked_registers(regs, 2)  # type: ignore[arg-type]


def test_check_function_code() -> None:
    check_function_code(3, 3)
    for got in (4, None, 0x83, True, "3"):
        with pytest.raises(FrameError, match="function code"):
            check_function_code(3, got)
