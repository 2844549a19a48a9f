"""Querying the historian's data set with DuckDB (server side or a Ray task; never a feeder actor).

Partition pruning is explicit: a query lists only the ``date=`` folders of the UTC days its range
touches (and only the feeders asked for), so a one-day query opens that day's files and no others.
A file that cannot be read (corrupt, truncated) is skipped with a warning naming it, and the query
answers from the rest. Parts that an interrupted compaction already merged (listed in
``compacted.parquet``'s ``dms.sources``) are ignored. A local root is read by DuckDB directly; an
object-store root is read through pyarrow's filesystem (only the listed objects) and handed to
DuckDB as Arrow, so no DuckDB extension download is needed.

Trends are by ``received_ts`` (the head-end's clock, the partition time); ``source_ts`` stays in
the data set for analysts.
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from graph_schema.errors import BadInput
from graph_schema.historian import (
    COMPACTED_NAME,
    MAX_RAW_ROWS,
    Bucket,
    Kind,
    bucket_edges,
    check_range,
    days_between,
    is_data_file,
    kind_dir,
    utc,
)
from graph_schema.historian.writer import compacted_sources, open_root

log = logging.getLogger(__name__)


_DB: duckdb.DuckDBPyConnection | None = None
_DB_LOCK = threading.Lock()


def _cursor() -> duckdb.DuckDBPyConnection:
    """A cursor on one in-memory DuckDB per process (opening a database costs ~40 ms; a cursor is
    cheap, and each is its own connection, safe to use from its own thread)."""
    global _DB
    with _DB_LOCK:
        if _DB is None:
            _DB = duckdb.connect()
        return _DB.cursor()


def _us(ts: datetime) -> int:
    return int((utc(ts) - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def _dt(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(us))


def _f(x: Any) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


@dataclass(frozen=True, slots=True)
class SolveBucket:
    """The feeder's solve series over ``[start, end)``: losses and source power averaged, the
    voltage band, loading and customers out at their extremes."""

    start: datetime
    end: datetime
    losses_mw: float | None
    min_vm_pu: float | None
    max_vm_pu: float | None
    max_line_loading_percent: float | None
    p_source_mw: float | None
    customers_out: int | None
    count: int
    converged_fraction: float


@dataclass(frozen=True, slots=True)
class EventRow:
    """One ``event`` row of the data set (``seq`` is the bus's number; 0 when the bus was down)."""

    ts: datetime
    seq: int
    kind: str
    element_id: str | None
    severity: str
    message: str


@dataclass(frozen=True, slots=True)
class EnergyBucket:
    """A meter's energy over ``[start, end)`` (kWh), from ``intervals`` 15-minute readings."""

    start: datetime
    end: datetime
    kwh: float
    intervals: int


class HistorianReader:
    def __init__(self, root: str, *, tz: str = "UTC") -> None:
        self.root = root
        self.tz = tz
        self._fs, self._base = open_root(root)
        self._local = isinstance(self._fs, pafs.LocalFileSystem)
        self.opened: list[str] = []  # the files the last query read (tests check pruning with it)
        self.skipped: list[str] = []  # the files the last query skipped as unreadable

    # -- files -----------------------------------------------------------------------------------

    def files(self, kind: Kind, start: datetime, end: datetime, feeder_ids: Sequence[str] | None = None) -> list[str]:
        """The data files that can hold rows of ``kind`` in ``[start, end)`` (pruned by day and feeder)."""
        days = {d.isoformat() for d in days_between(start, end)}
        root = kind_dir(self._base, kind)
        if feeder_ids is None:
            feeders = [i.path for i in self._ls(root) if i.type == pafs.FileType.Directory
                       and i.base_name.startswith("feeder=")]
        else:
            feeders = [f"{root}/feeder={f}" for f in feeder_ids]
        out: list[str] = []
        for feeder in feeders:
            for day in sorted(days):
                folder = f"{feeder}/date={day}"
                names = {i.base_name for i in self._ls(folder) if i.type == pafs.FileType.File}
                if COMPACTED_NAME in names:
                    try:
                        names -= set(compacted_sources(self._fs, f"{folder}/{COMPACTED_NAME}"))
                    except (OSError, pa.ArrowException) as exc:
                        log.warning("historian: skipping unreadable file %s/%s: %s", folder, COMPACTED_NAME, exc)
                        self.skipped.append(f"{folder}/{COMPACTED_NAME}")
                        names.discard(COMPACTED_NAME)
                out.extend(f"{folder}/{n}" for n in sorted(names) if is_data_file(n))
        return out

    def _ls(self, folder: str) -> list[pafs.FileInfo]:
        return list(self._fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)))

    def _run(self, kind: Kind, files: list[str], sql: Callable[[str], str], params: list[Any],
             extra: dict[str, pa.Table] | None = None, *, hive: bool = True) -> list[tuple[Any, ...]]:
        """Run ``sql(source)`` over ``files``, skipping the ones that cannot be read. ``hive=False``
        reads the files' own columns only (no partition keys)."""
        files = list(files)
        while True:
            self.opened = list(files)
            if not files:
                return []
            con = _cursor()
            try:
                con.execute("SET TimeZone='UTC'")
                for name, table in (extra or {}).items():
                    con.register(name, table)
                if self._local:
                    source = "read_parquet($files)" if hive else "read_parquet($files, hive_partitioning = false)"
                    args: list[Any] = [files, *params]
                    rows = con.execute(sql(source).replace("$files", "?"), args).fetchall()
                else:
                    con.register("src", self._arrow(files))
                    rows = con.execute(sql("src"), params).fetchall()
                return rows
            except duckdb.Error as exc:
                bad = [f for f in files if f in str(exc)] or self._probe(files)
                if not bad:
                    raise
                for f in bad:
                    log.warning("historian: skipping unreadable file %s: %s", f, str(exc).splitlines()[0])
                    self.skipped.append(f)
                files = [f for f in files if f not in bad]
            finally:
                con.close()

    def _probe(self, files: list[str]) -> list[str]:
        bad = []
        for f in files:
            try:
                with _cursor() as con:
                    con.execute("SELECT * FROM read_parquet(?)", [f]).fetchall()
            except duckdb.Error:
                bad.append(f)
        return bad

    def _arrow(self, files: list[str]) -> pa.Table:
        tables = []
        for f in files:
            try:
                with self._fs.open_input_file(f) as fh:
                    tables.append(pq.read_table(fh))
            except (OSError, pa.ArrowException) as exc:
                log.warning("historian: skipping unreadable file %s: %s", f, exc)
                self.skipped.append(f)
        return pa.concat_tables(tables, promote_options="default") if tables else pa.table({})

    @staticmethod
    def _bucket_sql(edges: list[datetime], bucket_s: int) -> tuple[str, dict[str, pa.Table]]:
        """How a row's time ``t`` finds its bucket ``i``: arithmetic for fixed buckets, a range join
        on the edges for calendar days (23- and 25-hour days included)."""
        us = [_us(x) for x in edges]
        if bucket_s % 86_400:
            return f", LATERAL (SELECT CAST((t - {us[0]}) // {bucket_s * 1_000_000} AS BIGINT) AS i) AS b", {}
        edge_table = pa.table({"i": list(range(len(us) - 1)), "lo": us[:-1], "hi": us[1:]})
        return "JOIN edges AS e ON s.t >= e.lo AND s.t < e.hi", {"edges": edge_table}

    # -- measurement trends ----------------------------------------------------------------------

    def history(self, point_ids: Sequence[str], start: datetime, end: datetime, bucket_s: int | None, *,
                feeder_ids: Sequence[str] | None = None, received_before: datetime | None = None
                ) -> dict[str, list[Bucket]]:
        """Per point, buckets over ``[start, end)`` (see :func:`graph_schema.historian.bucket_edges`),
        or raw samples as one-sample buckets when ``bucket_s`` is None (at most
        :data:`~graph_schema.historian.MAX_RAW_ROWS`, else BAD_INPUT). ``received_before`` leaves
        out rows received from then on (the caller merges those from the actor's buffer)."""
        s, e = check_range(start, end, bucket_s)
        self.skipped = []
        out: dict[str, list[Bucket]] = {p: [] for p in point_ids}
        if not point_ids:
            return out
        hi = _us(min(e, utc(received_before)) if received_before is not None else e)
        files = self.files("measurement", s, e, feeder_ids)
        where = "point_id = ANY(?) AND epoch_us(received_ts) >= ? AND epoch_us(received_ts) < ?"
        params: list[Any] = [list(point_ids), _us(s), hi]
        if bucket_s is None:
            rows = self._run("measurement", files, lambda src: (
                f"SELECT point_id, epoch_us(received_ts) AS t, value, quality FROM {src} WHERE {where} "
                f"ORDER BY point_id, t LIMIT {MAX_RAW_ROWS + 1}"), params)
            if len(rows) > MAX_RAW_ROWS:
                raise BadInput(f"more than {MAX_RAW_ROWS} raw samples in the range; give bucketS or a shorter range")
            for pid, t, v, q in rows:
                ts, val = _dt(t), _f(v)
                out[pid].append(Bucket(start=ts, end=ts, avg=val, min=val, max=val, last=val, count=1,
                                       good_fraction=1.0 if q == "GOOD" else 0.0, last_ts=ts))
            return out
        edges = bucket_edges(s, e, bucket_s, self.tz)
        bucket_of, extra = self._bucket_sql(edges, bucket_s)
        rows = self._run("measurement", files, lambda src: (
            "SELECT point_id, i, avg(value), min(value), max(value), "
            "arg_max(value, t) FILTER (WHERE value IS NOT NULL AND NOT isnan(value)), "
            "max(t) FILTER (WHERE value IS NOT NULL AND NOT isnan(value)), count(*), "
            "avg(CASE WHEN quality = 'GOOD' THEN 1.0 ELSE 0.0 END) "
            f"FROM (SELECT point_id, value, quality, epoch_us(received_ts) AS t FROM {src} WHERE {where}) AS s "
            f"{bucket_of} GROUP BY point_id, i ORDER BY point_id, i"),
            params, extra=extra)
        for pid, i, avg, mn, mx, last, last_t, n, good in rows:
            out[pid].append(Bucket(start=edges[i], end=edges[i + 1], avg=_f(avg), min=_f(mn), max=_f(mx),
                                   last=_f(last), count=int(n), good_fraction=float(good),
                                   last_ts=_dt(last_t) if last_t is not None else None))
        return out

    # -- solve series ----------------------------------------------------------------------------

    def feeder_history(self, feeder_id: str, start: datetime, end: datetime, bucket_s: int | None, *,
                       before: datetime | None = None) -> list[SolveBucket]:
        """The feeder's solve series over ``[start, end)``, bucketed (or raw rows when ``bucket_s``
        is None, each a one-row bucket, at most MAX_RAW_ROWS)."""
        s, e = check_range(start, end, bucket_s)
        self.skipped = []
        hi = _us(min(e, utc(before)) if before is not None else e)
        files = self.files("solve", s, e, [feeder_id])
        where = "epoch_us(ts) >= ? AND epoch_us(ts) < ?"
        params: list[Any] = [_us(s), hi]
        if bucket_s is None:
            rows = self._run("solve", files, lambda src: (
                "SELECT epoch_us(ts) AS t, losses_mw, min_vm_pu, max_vm_pu, max_line_loading_percent, p_source_mw, "
                f"customers_out, converged FROM {src} WHERE {where} ORDER BY t LIMIT {MAX_RAW_ROWS + 1}"), params)
            if len(rows) > MAX_RAW_ROWS:
                raise BadInput(f"more than {MAX_RAW_ROWS} solve rows in the range; give bucketS or a shorter range")
            return [SolveBucket(start=_dt(t), end=_dt(t), losses_mw=_f(lo), min_vm_pu=_f(mn), max_vm_pu=_f(mx),
                                max_line_loading_percent=_f(ld), p_source_mw=_f(p),
                                customers_out=None if c is None else int(c), count=1,
                                converged_fraction=1.0 if conv else 0.0)
                    for t, lo, mn, mx, ld, p, c, conv in rows]
        edges = bucket_edges(s, e, bucket_s, self.tz)
        bucket_of, extra = self._bucket_sql(edges, bucket_s)
        rows = self._run("solve", files, lambda src: (
            "SELECT i, avg(losses_mw), min(min_vm_pu), max(max_vm_pu), max(max_line_loading_percent), "
            "avg(p_source_mw), max(customers_out), count(*), avg(CASE WHEN converged THEN 1.0 ELSE 0.0 END) "
            f"FROM (SELECT *, epoch_us(ts) AS t FROM {src} WHERE {where}) AS s "
            f"{bucket_of} GROUP BY i ORDER BY i"),
            params, extra=extra)
        return [SolveBucket(start=edges[i], end=edges[i + 1], losses_mw=_f(lo), min_vm_pu=_f(mn), max_vm_pu=_f(mx),
                            max_line_loading_percent=_f(ld), p_source_mw=_f(p),
                            customers_out=None if c is None else int(c), count=int(n), converged_fraction=float(cv))
                for i, lo, mn, mx, ld, p, c, n, cv in rows]

    # -- events ----------------------------------------------------------------------------------

    def events_history(self, feeder_id: str, start: datetime, end: datetime,
                       kinds: Sequence[str] | None = None) -> list[EventRow]:
        """The feeder's events in ``[start, end)`` (of ``kinds`` when given), oldest first, at most
        :data:`~graph_schema.historian.MAX_RAW_ROWS` (else BAD_INPUT)."""
        s, e = check_range(start, end, None)
        self.skipped = []
        files = self.files("event", s, e, [feeder_id])
        where = "epoch_us(ts) >= ? AND epoch_us(ts) < ?"
        params: list[Any] = [_us(s), _us(e)]
        if kinds is not None:
            where += " AND event_kind = ANY(?)"
            params.append([str(k) for k in kinds])
        rows = self._run("event", files, lambda src: (
            f"SELECT epoch_us(ts) AS t, seq, event_kind, element_id, severity, message FROM {src} WHERE {where} "
            f"ORDER BY t, seq LIMIT {MAX_RAW_ROWS + 1}"), params, hive=False)
        if len(rows) > MAX_RAW_ROWS:
            raise BadInput(f"more than {MAX_RAW_ROWS} events in the range; give a shorter range or fewer kinds")
        return [EventRow(ts=_dt(t), seq=int(q), kind=k, element_id=el, severity=sv, message=m)
                for t, q, k, el, sv, m in rows]

    # -- meter energy ----------------------------------------------------------------------------

    def energy_usage(self, meter_id: str, feeder_id: str, start: datetime, end: datetime,
                      bucket_s: int | None) -> list[EnergyBucket]:
        """A meter's kWh per bucket over ``[start, end)`` by interval start (raw intervals when
        ``bucket_s`` is None). An interval stored twice (a file delivered again) counts once."""
        s, e = check_range(start, end, bucket_s)
        self.skipped = []
        files = self.files("meter", s, e, [feeder_id])
        dedup = ("SELECT epoch_us(interval_start) AS t, epoch_us(interval_end) AS te, max(kwh) AS kwh FROM {src} "
                 "WHERE meter_id = ? AND epoch_us(interval_start) >= ? AND epoch_us(interval_start) < ? GROUP BY 1, 2")
        params: list[Any] = [meter_id, _us(s), _us(e)]
        if bucket_s is None:
            rows = self._run("meter", files, lambda src: (
                f"SELECT t, te, kwh FROM ({dedup.format(src=src)}) ORDER BY t LIMIT {MAX_RAW_ROWS + 1}"), params)
            if len(rows) > MAX_RAW_ROWS:
                raise BadInput(f"more than {MAX_RAW_ROWS} intervals in the range; give bucketS or a shorter range")
            return [EnergyBucket(_dt(t), _dt(te), float(k), 1) for t, te, k in rows]
        edges = bucket_edges(s, e, bucket_s, self.tz)
        bucket_of, extra = self._bucket_sql(edges, bucket_s)
        rows = self._run("meter", files, lambda src: (
            f"SELECT i, sum(kwh), count(*) FROM ({dedup.format(src=src)}) AS s {bucket_of} GROUP BY i ORDER BY i"),
            params, extra=extra)
        return [EnergyBucket(edges[i], edges[i + 1], float(k), int(c)) for i, k, c in rows]

    # -- weather ---------------------------------------------------------------------------------

    def weather(self, start: datetime, end: datetime, bucket_s: int = 900) -> list[tuple[datetime, float | None]]:
        """The site's temperature (degC) averaged per ``bucket_s`` bucket over ``[start, end)``
        (``kind=weather/feeder=_site``), oldest first; buckets without a row are left out."""
        from graph_schema.historian import SITE

        s, e = check_range(start, end, bucket_s)
        self.skipped = []
        edges = bucket_edges(s, e, bucket_s, self.tz)
        bucket_of, extra = self._bucket_sql(edges, bucket_s)
        files = self.files("weather", s, e, [SITE])
        rows = self._run("weather", files, lambda src: (
            "SELECT i, avg(temperature_c) FROM (SELECT temperature_c, epoch_us(ts) AS t FROM "
            f"{src} WHERE epoch_us(ts) >= ? AND epoch_us(ts) < ?) AS s {bucket_of} GROUP BY i ORDER BY i"),
            [_us(s), _us(e)], extra=extra, hive=False)
        return [(edges[i], _f(v)) for i, v in rows]

    # -- load energy (demand response baselines, the estimator's same-time profile) ----------------

    def load_energy(self, feeder_id: str, load_ids: Sequence[str], start: datetime, end: datetime
                    ) -> list[tuple[str, datetime, float]]:
        """(load id, interval start, kWh of all its meters) per 15-minute interval in ``[start, end)``;
        an interval delivered twice by a meter counts once."""
        s, e = check_range(start, end, None)
        self.skipped = []
        if not load_ids:
            return []
        files = self.files("meter", s, e, [feeder_id])
        rows = self._run("meter", files, lambda src: (
            "SELECT load_id, t, sum(kwh) FROM (SELECT meter_id, load_id, epoch_us(interval_start) AS t, "
            f"max(kwh) AS kwh FROM {src} WHERE load_id = ANY(?) AND epoch_us(interval_start) >= ? "
            "AND epoch_us(interval_start) < ? "
            "GROUP BY 1, 2, 3) GROUP BY 1, 2 ORDER BY 1, 2"), [list(load_ids), _us(s), _us(e)], hive=False)
        return [(str(ld), _dt(t), float(k)) for ld, t, k in rows]
