from __future__ import annotations

import math
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocols.base import Quality
from protocols.codecs import (
    CodecError,
    DataType,
    Order,
    RegisterFormat,
    decode_raw,
    decode_value,
    encode_raw,
    encode_value,
    exceeds_deadband,
    in_range,
    range_quality,
    register_count,
    stale_quality,
    to_engineering,
    to_raw,
)

ORDERS = st.sampled_from(list(Order))


def test_register_counts() -> None:
    assert [register_count(t) for t in DataType] == [1, 1, 1, 2, 2, 2, 4]


def test_known_layouts_abcd_cdab_badc_dcba() -> None:
    # 0x11223344 as UINT32 in the four classic layouts.
    v = 0x11223344
    assert encode_raw(v, DataType.UINT32) == [0x1122, 0x3344]
    assert encode_raw(v, DataType.UINT32, word_order=Order.LITTLE) == [0x3344, 0x1122]
    assert encode_raw(v, DataType.UINT32, byte_order=Order.LITTLE) == [0x2211, 0x4433]
    assert encode_raw(v, DataType.UINT32, byte_order=Order.LITTLE, word_order=Order.LITTLE) == [
        0x4433,
        0x2211,
    ]


def test_float32_known_value() -> None:
    assert encode_raw(1.0, DataType.FLOAT32) == [0x3F80, 0x0000]
    assert decode_raw([0x3F80, 0x0000], DataType.FLOAT32) == 1.0
    assert decode_raw([0x0000, 0x3F80], DataType.FLOAT32, word_order=Order.LITTLE) == 1.0


def test_signed_16() -> None:
    assert encode_raw(-1, DataType.INT16) == [0xFFFF]
    assert decode_raw([0xFFFF], DataType.INT16) == -1
    assert decode_raw([0xFFFF], DataType.UINT16) == 65535


@pytest.mark.parametrize(
    ("value", "dtype"),
    [
        (32768, DataType.INT16),
        (-1, DataType.UINT16),
        (2**32, DataType.UINT32),
        (-(2**31) - 1, DataType.INT32),
    ],
)
def test_integer_out_of_range_is_refused(value: int, dtype: DataType) -> None:
    with pytest.raises(CodecError, match="outside"):
        encode_raw(value, dtype)


def test_non_finite_and_bool_refused() -> None:
    with pytest.raises(CodecError):
        encode_raw(math.inf, DataType.FLOAT32)
    with pytest.raises(CodecError):
        encode_raw(1e39, DataType.FLOAT32)
    with pytest.raises(CodecError, match="coils"):
        encode_raw(1, DataType.BOOL)
    with pytest.raises(CodecError, match="needs 2"):
        decode_raw([1], DataType.FLOAT32)
    with pytest.raises(CodecError, match="16-bit"):
        decode_raw([70000], DataType.UINT16)


def test_scaling_and_inverse_rounding() -> None:
    assert to_engineering(1234, scale=0.001, offset=0.0) == pytest.approx(1.234)
    assert to_raw(1.2346, DataType.UINT16, scale=0.001) == 1235
    assert to_raw(-40.0, DataType.INT16, scale=0.1, offset=-50.0) == 100
    with pytest.raises(CodecError, match="outside"):
        to_raw(70.0, DataType.UINT16, scale=0.001)
    with pytest.raises(CodecError, match="scale 0"):
        to_raw(1.0, DataType.UINT16, scale=0.0)


def test_encode_decode_value_with_format() -> None:
    fmt = RegisterFormat(DataType.INT32, word_order=Order.LITTLE, scale=0.01, offset=10.0)
    regs = encode_value(12.34, fmt)
    assert decode_value(regs, fmt) == pytest.approx(12.34)
    assert fmt.count == 2


@given(
    st.integers(min_value=-(2**31), max_value=2**31 - 1),
    ORDERS,
    ORDERS,
)
def test_int32_round_trip(v: int, bo: Order, wo: Order) -> None:
    regs = encode_raw(v, DataType.INT32, byte_order=bo, word_order=wo)
    assert all(0 <= r <= 0xFFFF for r in regs)
    assert decode_raw(regs, DataType.INT32, byte_order=bo, word_order=wo) == v


@given(st.integers(min_value=0, max_value=2**32 - 1), ORDERS, ORDERS)
def test_uint32_round_trip(v: int, bo: Order, wo: Order) -> None:
    regs = encode_raw(v, DataType.UINT32, byte_order=bo, word_order=wo)
    assert decode_raw(regs, DataType.UINT32, byte_order=bo, word_order=wo) == v


@given(st.integers(min_value=-(2**15), max_value=2**15 - 1), ORDERS)
def test_int16_round_trip(v: int, bo: Order) -> None:
    assert decode_raw(encode_raw(v, DataType.INT16, byte_order=bo), DataType.INT16, byte_order=bo) == v


@given(st.floats(allow_nan=False, allow_infinity=False), ORDERS, ORDERS)
def test_float64_round_trip(v: float, bo: Order, wo: Order) -> None:
    regs = encode_raw(v, DataType.FLOAT64, byte_order=bo, word_order=wo)
    assert len(regs) == 4
    assert decode_raw(regs, DataType.FLOAT64, byte_order=bo, word_order=wo) == v


@given(st.floats(width=32, allow_nan=False, allow_infinity=False), ORDERS, ORDERS)
def test_float32_round_trip(v: float, bo: Order, wo: Order) -> None:
    regs = encode_raw(v, DataType.FLOAT32, byte_order=bo, word_order=wo)
    assert decode_raw(regs, DataType.FLOAT32, byte_order=bo, word_order=wo) == v


@given(st.lists(st.integers(min_value=0, max_value=0xFFFF), min_size=4, max_size=4), ORDERS, ORDERS)
def test_registers_round_trip_through_decode(regs: list[int], bo: Order, wo: Order) -> None:
    v = decode_raw(regs, DataType.FLOAT64, byte_order=bo, word_order=wo)
    if math.isnan(v):  # NaN payloads are not canonical; compare the bytes instead
        assert math.isnan(struct.unpack(">d", struct.pack(">d", v))[0])
        return
    assert encode_raw(v, DataType.FLOAT64, byte_order=bo, word_order=wo) == regs


@given(
    st.floats(min_value=-300.0, max_value=300.0),
    st.sampled_from([0.1, 0.01, 0.001, 2.0]),
    st.sampled_from([0.0, -100.0, 5.5]),
)
def test_scaled_int32_round_trip_within_half_a_step(eng: float, scale: float, offset: float) -> None:
    fmt = RegisterFormat(DataType.INT32, scale=scale, offset=offset)
    back = decode_value(encode_value(eng, fmt), fmt)
    assert abs(back - eng) <= scale / 2 + 1e-9


def test_deadband() -> None:
    assert exceeds_deadband(None, 1.0, 0.5)
    assert not exceeds_deadband(1.0, 1.4, 0.5)
    assert exceeds_deadband(1.0, 1.6, 0.5)
    assert exceeds_deadband(1.0, 1.0000001, 0.0)
    assert not exceeds_deadband(1.0, 1.0, 0.0)
    assert exceeds_deadband(False, True, 10.0)
    assert not exceeds_deadband(True, True, 0.0)
    assert exceeds_deadband(1.0, math.nan, 0.1)
    assert not exceeds_deadband(None, None, 0.1)


def test_range_quality() -> None:
    assert in_range(1.0, 0.9, 1.1)
    assert not in_range(1.2, 0.9, 1.1)
    assert not in_range(0.8, 0.9, None)
    assert in_range(1e9, None, None)
    assert not in_range(math.nan, None, None)
    assert not in_range(None, None, None)
    assert in_range(True, 0.0, 0.5)  # bools have no range
    assert range_quality(2.0, 0.0, 1.5) is Quality.INVALID
    assert range_quality(1.0, 0.0, 1.5) is Quality.GOOD


def test_stale_quality() -> None:
    assert stale_quality(Quality.GOOD, 11.0, 10.0) is Quality.STALE
    assert stale_quality(Quality.GOOD, 9.0, 10.0) is Quality.GOOD
    assert stale_quality(Quality.COMM_LOST, 100.0, 10.0) is Quality.COMM_LOST
    assert stale_quality(Quality.GOOD, 100.0, None) is Quality.GOOD
