"""Pure register codecs: Modbus register words <-> engineering values, and value quality.

No I/O here. A Modbus register is a 16-bit word (Modbus Application Protocol v1.1b3, 4.2: "big
endian" byte order within a register). Multi-register values (32/64-bit) have no standard word
order, so both are configurable:

* ``byte_order`` - order of the two bytes inside each register (``BIG``: the standard AB);
* ``word_order`` - order of the registers of a multi-register value (``BIG``: most significant
  register first, the "ABCD" layout; ``LITTLE``: "CDAB").

Engineering value = raw * scale + offset. The inverse rounds to the nearest integer for integer
types and refuses values that do not fit the type.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from graph_schema.errors import BadInput
from protocols.base import Quality


class DataType(StrEnum):
    BOOL = "BOOL"
    INT16 = "INT16"
    UINT16 = "UINT16"
    INT32 = "INT32"
    UINT32 = "UINT32"
    FLOAT32 = "FLOAT32"
    FLOAT64 = "FLOAT64"


class Order(StrEnum):
    BIG = "BIG"
    LITTLE = "LITTLE"


_STRUCT = {
    DataType.INT16: "h",
    DataType.UINT16: "H",
    DataType.INT32: "i",
    DataType.UINT32: "I",
    DataType.FLOAT32: "f",
    DataType.FLOAT64: "d",
}

_INT_RANGE = {
    DataType.INT16: (-(2**15), 2**15 - 1),
    DataType.UINT16: (0, 2**16 - 1),
    DataType.INT32: (-(2**31), 2**31 - 1),
    DataType.UINT32: (0, 2**32 - 1),
}

_FLOAT32_MAX = 3.4028234663852886e38


class CodecError(BadInput):
    """A value that cannot be encoded (out of the type's range, not finite) or malformed registers."""


class FrameError(CodecError):
    """A read response whose payload does not fit its request (truncated, too long, wrong function).

    The device answered, but nothing in the answer can be trusted: the caller treats it as a
    communication failure of the whole device, never as values.
    """


def check_function_code(expected: int, got: object) -> None:
    """The answer must carry the request's function code (an exception answer has +0x80 and is
    handled before this check)."""
    if isinstance(got, bool) or not isinstance(got, int) or got != expected:
        raise FrameError(f"function code {got!r} in the answer to function code {expected}")


def checked_bits(bits: Sequence[object] | None, count: int) -> list[bool]:
    """The first ``count`` bits of an FC01/FC02 answer, after checking its length.

    The answer's byte count must be ``ceil(count / 8)`` (6.1: the last byte is zero-padded); the
    decoded bit list is that many bytes times 8.
    """
    if count < 1:
        raise ValueError(f"count={count} must be >= 1")
    if bits is None:
        raise FrameError(f"no bits in the answer to a read of {count} bit(s)")
    n = len(bits)
    want_bytes, got_bytes = -(-count // 8), -(-n // 8)
    if n < count or got_bytes != want_bytes:
        raise FrameError(
            f"byte count {got_bytes} for {count} bit(s) (expected {want_bytes}): "
            f"{'truncated' if n < count else 'oversized'} frame"
        )
    return [bool(b) for b in bits[:count]]


def checked_registers(registers: Sequence[object] | None, count: int) -> list[int]:
    """The registers of an FC03/FC04 answer, after checking there are exactly ``count`` 16-bit words."""
    if count < 1:
        raise ValueError(f"count={count} must be >= 1")
    if registers is None:
        raise FrameError(f"no registers in the answer to a read of {count} register(s)")
    n = len(registers)
    if n != count:
        raise FrameError(
            f"byte count {2 * n} for {count} register(s) (expected {2 * count}): "
            f"{'truncated' if n < count else 'oversized'} frame"
        )
    out: list[int] = []
    for i, w in enumerate(registers):
        if isinstance(w, bool) or not isinstance(w, int) or not 0 <= w <= 0xFFFF:
            raise FrameError(f"register {i} of the answer is {w!r}, not a 16-bit word")
        out.append(w)
    return out


def register_count(data_type: DataType) -> int:
    """Registers (16-bit words) one value occupies; 1 for BOOL (one coil / discrete input)."""
    if data_type is DataType.BOOL:
        return 1
    return struct.calcsize(">" + _STRUCT[data_type]) // 2


def is_integer_type(data_type: DataType) -> bool:
    return data_type in _INT_RANGE


def _check_word(word: int) -> None:
    if not 0 <= word <= 0xFFFF:
        raise CodecError(f"register value {word} is not a 16-bit word (0..65535)")


def encode_raw(
    raw: int | float, data_type: DataType, *, byte_order: Order = Order.BIG, word_order: Order = Order.BIG
) -> list[int]:
    """Raw (already scaled) value -> register words."""
    if data_type is DataType.BOOL:
        raise CodecError("BOOL values are coils/discrete inputs, not registers; write them as bits")
    if is_integer_type(data_type):
        lo, hi = _INT_RANGE[data_type]
        if isinstance(raw, float):
            if not raw.is_integer():
                raise CodecError(f"{raw} is not an integer; {data_type} needs a whole number")
            raw = int(raw)
        if not lo <= raw <= hi:
            raise CodecError(f"{raw} is outside the {data_type} range {lo}..{hi}")
    else:
        if not math.isfinite(raw):
            raise CodecError(f"{raw} is not a finite number")
        if data_type is DataType.FLOAT32 and abs(raw) > _FLOAT32_MAX:
            raise CodecError(f"{raw} is outside the FLOAT32 range")
    data = struct.pack(">" + _STRUCT[data_type], raw)
    words = [data[i : i + 2] for i in range(0, len(data), 2)]
    if word_order is Order.LITTLE:
        words.reverse()
    if byte_order is Order.LITTLE:
        words = [w[::-1] for w in words]
    return [int.from_bytes(w, "big") for w in words]


def decode_raw(
    registers: Sequence[int],
    data_type: DataType,
    *,
    byte_order: Order = Order.BIG,
    word_order: Order = Order.BIG,
) -> int | float:
    """Register words -> raw value (inverse of :func:`encode_raw`)."""
    if data_type is DataType.BOOL:
        raise CodecError("BOOL values are coils/discrete inputs, not registers")
    n = register_count(data_type)
    if len(registers) != n:
        raise CodecError(f"{data_type} needs {n} register(s), got {len(registers)}")
    for w in registers:
        _check_word(w)
    words = [int(w).to_bytes(2, "big") for w in registers]
    if byte_order is Order.LITTLE:
        words = [w[::-1] for w in words]
    if word_order is Order.LITTLE:
        words.reverse()
    (value,) = struct.unpack(">" + _STRUCT[data_type], b"".join(words))
    return value


def to_engineering(raw: int | float, *, scale: float = 1.0, offset: float = 0.0) -> float:
    return raw * scale + offset


def to_raw(eng: float, data_type: DataType, *, scale: float = 1.0, offset: float = 0.0) -> int | float:
    """Engineering value -> raw value; rounds for integer types and checks the type's range."""
    if scale == 0:
        raise CodecError("scale 0 cannot be inverted; give the point a non-zero scale")
    if not math.isfinite(eng):
        raise CodecError(f"{eng} is not a finite number")
    raw = (eng - offset) / scale
    if is_integer_type(data_type):
        raw_int = round(raw)
        lo, hi = _INT_RANGE[data_type]
        if not lo <= raw_int <= hi:
            raise CodecError(
                f"{eng} (raw {raw_int} with scale {scale} and offset {offset}) is outside the "
                f"{data_type} range {lo}..{hi}"
            )
        return raw_int
    if data_type is DataType.FLOAT32 and abs(raw) > _FLOAT32_MAX:
        raise CodecError(f"{eng} is outside the FLOAT32 range")
    return raw


@dataclass(frozen=True, slots=True)
class RegisterFormat:
    """How one point is laid out in registers and scaled to engineering units."""

    data_type: DataType
    byte_order: Order = Order.BIG
    word_order: Order = Order.BIG
    scale: float = 1.0
    offset: float = 0.0

    @property
    def count(self) -> int:
        return register_count(self.data_type)


def encode_value(eng: float, fmt: RegisterFormat) -> list[int]:
    raw = to_raw(eng, fmt.data_type, scale=fmt.scale, offset=fmt.offset)
    return encode_raw(raw, fmt.data_type, byte_order=fmt.byte_order, word_order=fmt.word_order)


def decode_value(registers: Sequence[int], fmt: RegisterFormat) -> float:
    raw = decode_raw(registers, fmt.data_type, byte_order=fmt.byte_order, word_order=fmt.word_order)
    return to_engineering(raw, scale=fmt.scale, offset=fmt.offset)


def exceeds_deadband(previous: float | bool | None, new: float | bool | None, deadband: float) -> bool:
    """True when ``new`` should be reported: first value, a bool change, or a move beyond ``deadband``.

    A deadband of 0 reports every change. NaN compared with anything counts as a change.
    """
    if previous is None or new is None:
        return previous is not new
    if isinstance(previous, bool) or isinstance(new, bool):
        return bool(previous) != bool(new)
    if math.isnan(previous) or math.isnan(new):
        return not (math.isnan(previous) and math.isnan(new))
    if deadband <= 0:
        return previous != new
    return abs(new - previous) > deadband


def in_range(value: float | bool | None, min_value: float | None, max_value: float | None) -> bool:
    """Whether a value lies inside its configured [min, max] (open bounds are ``None``)."""
    if value is None:
        return False
    if isinstance(value, bool):
        return True
    if math.isnan(value):
        return False
    if min_value is not None and value < min_value:
        return False
    return not (max_value is not None and value > max_value)


def range_quality(value: float | bool | None, min_value: float | None, max_value: float | None) -> Quality:
    """``GOOD`` inside the configured range, ``INVALID`` outside it (or NaN / missing)."""
    return Quality.GOOD if in_range(value, min_value, max_value) else Quality.INVALID


def stale_quality(quality: Quality, age_s: float, stale_after_s: float | None) -> Quality:
    """A GOOD value older than ``stale_after_s`` becomes STALE; other qualities are kept."""
    if quality is Quality.GOOD and stale_after_s is not None and age_s > stale_after_s:
        return Quality.STALE
    return quality
