"""Smart meters (AMI): meter ids, the meter-to-load mapping, demo customer accounts, and the
interval file format the head-end ingests. Pure functions (standard library only).

Meters: every load's customers get meters, ``<feeder>/<load>/m<k>`` for
``k < meters_for(load.customers)``. A load with more customers than :data:`MAX_METERS_PER_LOAD`
(cigre-mv's 5,000-customer aggregate loads) gets that many meters, each standing for
``customers / meters`` customers: the meters of a load always add up to the load's energy, and the
data set stays small enough for the demo (case33bw: 32 x 16 meters, cigre-mv: 18 x 16).

Demo customer accounts: one account per meter, ``acct:<feeder>/<load>/<k>`` owns meter
``<feeder>/<load>/m<k>`` (a CUSTOMER token names its account in the ``customer_account`` claim).

Interval files (CSV, UTF-8, header row; one file per feeder and 15-minute interval from the
simulator; any number of rows per file from a real head-end)::

    meter_id,interval_start,interval_end,kwh,flags
    case33bw/load1/m0,2026-11-29T06:00:00Z,2026-11-29T06:15:00Z,0.612,

``interval_start``/``interval_end``: ISO 8601 with a UTC offset (``Z`` or ``+00:00``; another offset
is converted; none is a bad row), 15 minutes apart, start on a quarter hour. ``kwh``: energy delivered
in the interval, finite and >= 0 (empty only with the ``LG`` flag: no reading). ``flags``: empty or
``|``-separated from :data:`FLAGS` (``LG`` last gasp: the meter lost power in the interval; ``RS``
restore: power came back; ``EST`` estimated reading).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

MAX_METERS_PER_LOAD = 16
INTERVAL_S = 900
INTERVAL = timedelta(seconds=INTERVAL_S)
HEADER = ("meter_id", "interval_start", "interval_end", "kwh", "flags")
FLAGS = frozenset({"LG", "RS", "EST"})
ACCOUNT_PREFIX = "acct:"


class _Load(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def customers(self) -> int: ...


class _Feeder(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def loads(self) -> Iterable[_Load]: ...


def meters_for(customers: int) -> int:
    """How many meters a load with ``customers`` customers gets (at least 1, at most the cap)."""
    return max(1, min(int(customers), MAX_METERS_PER_LOAD))


def meter_id(feeder_id: str, load_id: str, k: int) -> str:
    return f"{feeder_id}/{load_id}/m{k}"


def parse_meter_id(mid: str) -> tuple[str, str, int] | None:
    """(feeder id, load id, k) of a well-formed meter id, else None (says nothing of existence)."""
    parts = mid.split("/")
    if len(parts) != 3 or not all(parts) or not parts[2].startswith("m") or not parts[2][1:].isdigit():
        return None
    return parts[0], parts[1], int(parts[2][1:])


@dataclass(frozen=True, slots=True)
class MeterInfo:
    meter_id: str
    feeder_id: str
    load_id: str
    index: int
    of: int  # meters on the load
    customers: int  # customers on the load


def meter_map(feeders: Iterable[_Feeder]) -> dict[str, MeterInfo]:
    """Meter id -> where it is, for every load of ``feeders`` (deterministic: same model, same map)."""
    out: dict[str, MeterInfo] = {}
    for f in feeders:
        for ld in f.loads:
            n = meters_for(ld.customers)
            for k in range(n):
                mid = meter_id(f.id, ld.id, k)
                out[mid] = MeterInfo(mid, f.id, ld.id, k, n, int(ld.customers))
    return out


def account_of(mid: str) -> str:
    """The demo's customer account that owns meter ``mid``."""
    parsed = parse_meter_id(mid)
    if parsed is None:
        raise ValueError(f"{mid!r} is not a meter id (<feeder>/<load>/m<k>)")
    f, ld, k = parsed
    return f"{ACCOUNT_PREFIX}{f}/{ld}/{k}"


def meters_of_account(account: str) -> frozenset[str]:
    """The meters a demo customer account owns (empty for an account that is not one)."""
    if not account.startswith(ACCOUNT_PREFIX):
        return frozenset()
    parts = account[len(ACCOUNT_PREFIX):].split("/")
    if len(parts) != 3 or not all(parts) or not parts[2].isdigit():
        return frozenset()
    return frozenset({meter_id(parts[0], parts[1], int(parts[2]))})


# -- interval files --------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Interval:
    row: int  # 1-based line number in the file (the header is line 1)
    meter_id: str
    load_id: str
    feeder_id: str
    start: datetime
    end: datetime
    kwh: float | None
    flags: frozenset[str]


@dataclass(frozen=True, slots=True)
class Rejection:
    row: int
    meter_id: str
    reason: str

    def line(self) -> str:
        return f"row {self.row}: meter {self.meter_id or '?'}: {self.reason}"


def _ts(text: str, what: str) -> datetime:
    try:
        ts = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{what} {text!r} is not an ISO 8601 time") from None
    if ts.tzinfo is None:
        raise ValueError(f"{what} {text!r} has no UTC offset; write it as ...Z")
    return ts.astimezone(UTC)


def format_ts(ts: datetime) -> str:
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_intervals(text: str, meters: dict[str, MeterInfo]) -> tuple[list[Interval], list[Rejection]]:
    """Parse an interval file: the good rows, and each bad row with what is wrong with it.
    A file without the expected header is one rejection of row 1 (nothing kept)."""
    reader = csv.reader(io.StringIO(text))
    good: list[Interval] = []
    bad: list[Rejection] = []
    header = next(reader, None)
    if header is None or tuple(h.strip() for h in header) != HEADER:
        return [], [Rejection(1, "", f"header {header!r} is not {','.join(HEADER)}")]
    for row_no, row in enumerate(reader, start=2):
        if not row or all(not c.strip() for c in row):
            continue
        mid = row[0].strip() if row else ""
        try:
            if len(row) != len(HEADER):
                raise ValueError(f"{len(row)} fields, expected {len(HEADER)}")
            info = meters.get(mid)
            if info is None:
                raise ValueError("unknown meter id")
            start = _ts(row[1], "interval_start")
            end = _ts(row[2], "interval_end")
            if end - start != INTERVAL:
                raise ValueError(f"interval {format_ts(start)} .. {format_ts(end)} is not {INTERVAL_S // 60} minutes")
            if start.minute % 15 or start.second or start.microsecond:
                raise ValueError(f"interval_start {format_ts(start)} is not on a quarter hour")
            flags = frozenset(f.strip() for f in row[4].split("|") if f.strip())
            if flags - FLAGS:
                raise ValueError(f"unknown flag(s) {sorted(flags - FLAGS)}; known: {sorted(FLAGS)}")
            kwh: float | None
            if not row[3].strip():
                if "LG" not in flags:
                    raise ValueError("kwh is empty (allowed only with the LG flag)")
                kwh = None
            else:
                try:
                    kwh = float(row[3])
                except ValueError:
                    raise ValueError(f"kwh {row[3]!r} is not a number") from None
                if not math.isfinite(kwh) or kwh < 0:
                    raise ValueError(f"kwh {row[3]!r} is not a finite number >= 0")
            good.append(Interval(row_no, mid, info.load_id, info.feeder_id, start, end, kwh, flags))
        except ValueError as exc:
            bad.append(Rejection(row_no, mid, str(exc)))
    return good, bad


def format_intervals(rows: Iterable[tuple[str, datetime, datetime, float | None, Iterable[str]]]) -> str:
    """CSV text of ``(meter id, start, end, kwh, flags)`` rows, header first."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(HEADER)
    for mid, start, end, kwh, flags in rows:
        w.writerow([mid, format_ts(start), format_ts(end), "" if kwh is None else f"{kwh:.4f}", "|".join(flags)])
    return buf.getvalue()
