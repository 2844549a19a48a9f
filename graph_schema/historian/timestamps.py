"""Timestamps of buffered historian rows: an aware datetime or UTC epoch microseconds (an int).

A hot caller (the historian application on the scan path) converts a batch's shared timestamp once
and buffers ints; the writer hands ints to pyarrow, which converts datetimes ~20x slower (a
``utcoffset`` call each) while holding the GIL the scan needs. Standard library only.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DAY_US = 86_400_000_000


def epoch_us(ts: datetime | int | None) -> int | None:
    """UTC epoch microseconds of a timestamp (a naive one is taken as UTC; an int is already that)."""
    if ts is None or ts.__class__ is int:
        return ts  # type: ignore[return-value]
    dt: datetime = ts  # type: ignore[assignment]
    return round((dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)).timestamp() * 1e6)


def from_epoch_us(us: int | datetime) -> datetime:
    """The aware UTC datetime of epoch microseconds (a datetime is returned as it is)."""
    return us if isinstance(us, datetime) else EPOCH + timedelta(microseconds=us)


def utc_day(ts: datetime | int) -> date:
    """The UTC calendar date of a timestamp (a naive datetime is taken as UTC)."""
    if ts.__class__ is int:
        return (EPOCH + timedelta(days=ts // DAY_US)).date()  # type: ignore[operator]
    dt: datetime = ts  # type: ignore[assignment]
    return (dt if dt.tzinfo is None else dt.astimezone(UTC)).date()
