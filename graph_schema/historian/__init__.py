"""The historian's data set: a versioned Parquet layout, and the pure parts of querying it.

Layout (version 1; a contract that analysts read with DuckDB, pandas or Spark directly)::

    <root>/v1/kind=<measurement|solve|event|meter|weather>/feeder=<feeder id>/date=<YYYY-MM-DD>/<part>.parquet

``date`` is the UTC calendar date of the row's partition time (:data:`PARTITION_TIME`). Every
timestamp is UTC (Parquet ``TIMESTAMP(MICROS, isAdjustedToUTC=true)``). A part is written whole,
under a temporary name first and then renamed (object stores: one PUT), so a reader never sees half
a part; names starting with ``.`` or ``_`` are not data. A closed day's parts are compacted into one
``compacted.parquet`` whose Parquet key-value metadata ``dms.sources`` lists the parts it replaced
(a reader ignores those parts should a compaction have been interrupted before deleting them).

Columns (units in the names where they have one, pandapower style):

- ``measurement`` (one row per telemetered value): ``point_id``, ``element_id``, ``quantity`` (the
  model's :class:`graph_schema.model.Quantity`, which names the unit: ``p_mw``, ``vm_pu``, ...),
  ``value`` (float64 in that unit; booleans 1.0/0.0; null when not read), ``quality`` (GOOD, STALE,
  INVALID, COMM_LOST), ``source_ts`` (device time, null when the protocol gives none),
  ``received_ts`` (head-end time).
- ``solve`` (one row per power flow of the live state): ``ts``, ``losses_mw``, ``min_vm_pu``,
  ``min_vm_bus_id``, ``max_vm_pu``, ``max_vm_bus_id``, ``max_line_loading_percent``,
  ``p_source_mw``, ``customers_out`` (customers on de-energised buses), ``converged``.
- ``event``: ``ts``, ``seq``, ``event_kind``, ``element_id``, ``severity``, ``message`` (not ``kind``:
  that is the partition key of the folder above).
- ``meter`` (AMI intervals): ``meter_id``, ``load_id``, ``interval_start``, ``interval_end``,
  ``kwh`` (energy delivered in the interval). A meter's last-gasp / restore flags are ``event`` rows
  (``event_kind`` ``METER_LAST_GASP`` / ``METER_RESTORE``, ``element_id`` the meter id). An interval
  delivered twice (a file sent again) may be stored twice: readers count it once
  (:meth:`graph_schema.historian.query.HistorianReader.energy_usage`).
- ``weather`` (added within v1; the site's weather beside the load): ``ts``, ``temperature_c``
  (air temperature, degC), ``ghi_w_m2`` (global horizontal irradiance, W/m2). Site-wide series are
  stored under the reserved feeder id ``_site`` (``kind=weather/feeder=_site``).

This module imports only the standard library: the writer (:mod:`graph_schema.historian.writer`,
pyarrow) runs in the feeder actors, the query module (:mod:`graph_schema.historian.query`, DuckDB)
only in the server or a Ray task.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from graph_schema.errors import BadInput

LAYOUT_VERSION = "v1"
Kind = Literal["measurement", "solve", "event", "meter", "weather"]
KINDS: tuple[Kind, ...] = ("measurement", "solve", "event", "meter", "weather")
SITE = "_site"  # the feeder id of site-wide series (weather)
COMPACTED_NAME = "compacted.parquet"
SOURCES_KEY = b"dms.sources"

# Column name -> logical type ("string", "float64", "int64", "bool", "timestamp": UTC, microseconds).
COLUMNS: dict[Kind, tuple[tuple[str, str], ...]] = {
    "measurement": (("point_id", "string"), ("element_id", "string"), ("quantity", "string"),
                    ("value", "float64"), ("quality", "string"), ("source_ts", "timestamp"),
                    ("received_ts", "timestamp")),
    "solve": (("ts", "timestamp"), ("losses_mw", "float64"), ("min_vm_pu", "float64"), ("min_vm_bus_id", "string"),
              ("max_vm_pu", "float64"), ("max_vm_bus_id", "string"), ("max_line_loading_percent", "float64"),
              ("p_source_mw", "float64"), ("customers_out", "int64"), ("converged", "bool")),
    "event": (("ts", "timestamp"), ("seq", "int64"), ("event_kind", "string"), ("element_id", "string"),
              ("severity", "string"), ("message", "string")),
    "meter": (("meter_id", "string"), ("load_id", "string"), ("interval_start", "timestamp"),
              ("interval_end", "timestamp"), ("kwh", "float64")),
    "weather": (("ts", "timestamp"), ("temperature_c", "float64"), ("ghi_w_m2", "float64")),
}
# The column whose UTC date chooses a row's partition.
PARTITION_TIME: dict[Kind, str] = {"measurement": "received_ts", "solve": "ts", "event": "ts",
                                   "meter": "interval_start", "weather": "ts"}

# Query limits (a request over them is BAD_INPUT, with the remedy in the message).
MAX_RANGE_DAYS = 400
MAX_BUCKETS = 10_000  # per point (or per feeder series)
MAX_RAW_ROWS = 100_000  # raw samples (bucketS null), all points together
MIN_BUCKET_S = 1
DAY_S = 86_400


def kind_dir(root: str, kind: Kind) -> str:
    return f"{root.rstrip('/')}/{LAYOUT_VERSION}/kind={kind}"


def partition_dir(root: str, kind: Kind, feeder_id: str, day: date) -> str:
    """``<root>/v1/kind=<kind>/feeder=<id>/date=<YYYY-MM-DD>`` (the id must be a safe path segment)."""
    check_feeder_id(feeder_id)
    return f"{kind_dir(root, kind)}/feeder={feeder_id}/date={day.isoformat()}"


def check_feeder_id(feeder_id: str) -> str:
    if not feeder_id or feeder_id in (".", "..") or any(c in feeder_id for c in "/\\=\0"):
        raise BadInput(f"feeder id {feeder_id!r} cannot name a historian partition; use an id without / \\ = or NUL")
    return feeder_id


def parse_partition(path: str) -> tuple[Kind, str, date] | None:
    """(kind, feeder id, date) of a path inside the layout, or None when it is not one."""
    kind: str | None = None
    feeder: str | None = None
    day: date | None = None
    for seg in path.replace("\\", "/").split("/"):
        if seg.startswith("kind="):
            kind = seg[5:]
        elif seg.startswith("feeder="):
            feeder = seg[7:]
        elif seg.startswith("date="):
            try:
                day = date.fromisoformat(seg[5:])
            except ValueError:
                return None
    if kind not in KINDS or feeder is None or day is None:
        return None
    return kind, feeder, day  # type: ignore[return-value]


def is_data_file(name: str) -> bool:
    """A finished part (temporary and hidden names are not)."""
    base = name.rsplit("/", 1)[-1]
    return base.endswith(".parquet") and not base.startswith((".", "_"))


def utc(ts: datetime) -> datetime:
    """``ts`` as an aware UTC datetime (a naive one is taken as UTC)."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def days_between(start: datetime, end: datetime) -> list[date]:
    """The UTC dates whose partitions can hold rows in ``[start, end)``."""
    s, e = utc(start), utc(end)
    last = (e - timedelta(microseconds=1)).date() if e > s else s.date()
    out, d = [], s.date()
    while d <= last:
        out.append(d)
        d += timedelta(days=1)
    return out


def check_range(start: datetime, end: datetime, bucket_s: int | None) -> tuple[datetime, datetime]:
    s, e = utc(start), utc(end)
    if s >= e:
        raise BadInput(f"start {s.isoformat()} is not before end {e.isoformat()}; give start < end")
    if e - s > timedelta(days=MAX_RANGE_DAYS):
        raise BadInput(f"the range {s.isoformat()} .. {e.isoformat()} is over {MAX_RANGE_DAYS} days; ask less at once")
    if bucket_s is not None and bucket_s < MIN_BUCKET_S:
        raise BadInput(f"bucketS {bucket_s} is not positive; give seconds >= {MIN_BUCKET_S}, or null for raw samples")
    return s, e


def bucket_edges(start: datetime, end: datetime, bucket_s: int, tz: str | ZoneInfo = "UTC") -> list[datetime]:
    """UTC edges of the buckets covering ``[start, end)``: ``edges[i] .. edges[i+1]`` is bucket i.

    Buckets shorter than a day are fixed lengths aligned to ``start``. A whole number of days is
    calendar days in the utility's time zone ``tz`` (``DMS_TIMEZONE``): they start at local midnight,
    so a daylight-saving day is 23 or 25 hours long. The first edge is ``start`` (floored to local
    midnight for days), the last is ``end``.
    """
    s, e = check_range(start, end, bucket_s)
    zone = tz if isinstance(tz, ZoneInfo) else ZoneInfo(tz)
    if bucket_s % DAY_S == 0:
        step = bucket_s // DAY_S
        n_est = math.ceil((e - s).total_seconds() / bucket_s) + 1
        _check_buckets(n_est, bucket_s)
        local = s.astimezone(zone).date()
        edges = [datetime.combine(local, time(0), zone).astimezone(UTC)]
        while edges[-1] < e:
            local += timedelta(days=step)
            edges.append(datetime.combine(local, time(0), zone).astimezone(UTC))
        edges[-1] = min(edges[-1], e)
        return edges
    n = math.ceil((e - s).total_seconds() / bucket_s)
    _check_buckets(n, bucket_s)
    return [min(s + timedelta(seconds=bucket_s * i), e) for i in range(n + 1)]


def _check_buckets(n: int, bucket_s: int) -> None:
    if n > MAX_BUCKETS:
        raise BadInput(f"{n} buckets of {bucket_s} s is over the limit of {MAX_BUCKETS}; give a larger bucketS "
                       f"or a shorter range")


@dataclass(frozen=True, slots=True)
class Bucket:
    """Aggregates of one point over ``[start, end)``. ``avg``/``min``/``max``/``last`` are over the
    samples with a value (any quality); ``good_fraction`` is the share of samples of GOOD quality."""

    start: datetime
    end: datetime
    avg: float | None
    min: float | None
    max: float | None
    last: float | None
    count: int
    good_fraction: float
    last_ts: datetime | None = None  # time of ``last`` (to merge buckets)


@dataclass(frozen=True, slots=True)
class Sample:
    point_id: str
    ts: datetime
    value: float | None
    quality: str


def bucket_samples(samples: Iterable[Sample], edges: Sequence[datetime]) -> dict[str, dict[int, Bucket]]:
    """Aggregate samples into the buckets ``edges`` describe: point id -> bucket index -> bucket.
    Samples outside ``[edges[0], edges[-1])`` are left out."""
    acc: dict[tuple[str, int], list[Sample]] = {}
    for smp in samples:
        ts = utc(smp.ts)
        i = bisect.bisect_right(edges, ts) - 1
        if i < 0 or i >= len(edges) - 1:
            continue
        acc.setdefault((smp.point_id, i), []).append(smp)
    out: dict[str, dict[int, Bucket]] = {}
    for (pid, i), group in acc.items():
        vals = [s for s in group if s.value is not None and not math.isnan(s.value)]
        last = max(vals, key=lambda s: utc(s.ts)) if vals else None
        out.setdefault(pid, {})[i] = Bucket(
            start=edges[i], end=edges[i + 1],
            avg=sum(s.value for s in vals) / len(vals) if vals else None,  # type: ignore[misc]
            min=min(s.value for s in vals) if vals else None,  # type: ignore[type-var]
            max=max(s.value for s in vals) if vals else None,  # type: ignore[type-var]
            last=last.value if last else None, last_ts=utc(last.ts) if last else None,
            count=len(group), good_fraction=sum(s.quality == "GOOD" for s in group) / len(group))
    return out


def merge_bucket(a: Bucket, b: Bucket) -> Bucket:
    """One bucket from two disjoint sets of samples of the same interval."""
    n = a.count + b.count
    if n == 0:
        return a
    na = _valued(a)
    nb = _valued(b)
    avg = None
    if a.avg is not None and b.avg is not None:
        avg = (a.avg * na + b.avg * nb) / (na + nb) if na + nb else None
    else:
        avg = a.avg if a.avg is not None else b.avg
    later = b if (b.last_ts is not None and (a.last_ts is None or b.last_ts >= a.last_ts)) else a
    return replace(a, avg=avg, min=_opt(min, a.min, b.min), max=_opt(max, a.max, b.max), last=later.last,
                   last_ts=later.last_ts, count=n,
                   good_fraction=(a.good_fraction * a.count + b.good_fraction * b.count) / n)


def _valued(b: Bucket) -> int:
    # samples with a value: not stored separately; the count weights the average (a bucket from the
    # data set and one from the actor's buffer rarely both hold valueless samples)
    return b.count if b.avg is not None else 0


def _opt(fn, x: float | None, y: float | None) -> float | None:  # type: ignore[no-untyped-def]
    if x is None:
        return y
    if y is None:
        return x
    return fn(x, y)  # type: ignore[no-any-return]


def merge_series(stored: Sequence[Bucket], recent: dict[int, Bucket], edges: Sequence[datetime]) -> list[Bucket]:
    """The data set's buckets of one point with those of the actor's unflushed samples, in order."""
    by_start = {b.start: b for b in stored}
    for i, b in recent.items():
        have = by_start.get(edges[i])
        by_start[edges[i]] = merge_bucket(have, b) if have is not None else b
    return [by_start[k] for k in sorted(by_start)]
