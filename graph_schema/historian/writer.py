"""Writing the historian's data set (pyarrow): a bounded row buffer, whole-part writes, compaction
and retention. Runs in the feeder actors (one writer per feeder, each writing its own partitions),
and in maintenance jobs; never imports DuckDB.

- :meth:`HistorianWriter.append` is cheap (a deque append) and never touches the disk, so it may run
  on the scan path. The buffer is bounded: when it is full (the sink is down), the oldest rows are
  dropped and counted in :attr:`HistorianWriter.dropped`.
- :meth:`HistorianWriter.write` (blocking: run it in a worker thread) writes one part per partition
  touched by the batch: under a temporary name, then renamed (local folders), or as one whole
  object (S3), so a reader never sees half a part and a crash loses at most the batch in flight.
- :func:`compact_day` merges a closed day's parts into ``compacted.parquet`` (write new, then swap,
  then delete the parts it lists; idempotent and safe to interrupt at any point).
- :func:`apply_retention` drops whole ``date=`` partitions older than the retention.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pyarrow.compute
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from graph_schema.historian import (
    COLUMNS,
    COMPACTED_NAME,
    KINDS,
    PARTITION_TIME,
    SOURCES_KEY,
    Kind,
    check_feeder_id,
    is_data_file,
    kind_dir,
    parse_partition,
    partition_dir,
)
from graph_schema.historian.timestamps import DAY_US, EPOCH, epoch_us, utc_day

log = logging.getLogger(__name__)

_TYPES = {"string": pa.string(), "float64": pa.float64(), "int64": pa.int64(), "bool": pa.bool_(),
          "timestamp": pa.timestamp("us", tz="UTC")}
SCHEMAS: dict[Kind, pa.Schema] = {k: pa.schema([(n, _TYPES[t]) for n, t in cols]) for k, cols in COLUMNS.items()}
_PART_TIME_INDEX = {k: [n for n, _ in COLUMNS[k]].index(PARTITION_TIME[k]) for k in KINDS}


def open_root(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and base path of a historian root: a local folder or ``s3://bucket/prefix``
    (``?endpoint_override=host:port&scheme=http&region=...&connect_timeout_s=3&request_timeout_s=10``;
    credentials from the environment, as the AWS SDK reads them)."""
    if uri.startswith("s3://"):
        return _s3(uri)
    if "://" in uri and not uri.startswith("file://"):
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path.rstrip("/")
    path = urlsplit(uri).path if uri.startswith("file://") else uri
    return pafs.LocalFileSystem(), os.path.abspath(path)


def _s3(uri: str) -> tuple[pafs.FileSystem, str]:
    """An S3 root with bounded timeouts and retries, so a sink that is down fails a flush in seconds
    (the rows stay buffered) rather than holding the writer thread for minutes."""
    parts = urlsplit(uri)
    q = dict(parse_qsl(parts.query))
    known = {"endpoint_override", "scheme", "region", "connect_timeout_s", "request_timeout_s"}
    if set(q) - known:
        raise ValueError(f"historian URI {uri!r}: unknown option(s) {sorted(set(q) - known)}; known: {sorted(known)}")
    fs = pafs.S3FileSystem(endpoint_override=q.get("endpoint_override"), scheme=q.get("scheme", "https"),
                           region=q.get("region"), connect_timeout=float(q.get("connect_timeout_s", 3)),
                           request_timeout=float(q.get("request_timeout_s", 10)),
                           retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=2))
    return fs, f"{parts.netloc}{parts.path}".rstrip("/")


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


ROW_GROUP_ROWS = 65_536


def write_table(fs: pafs.FileSystem, path: str, table: pa.Table) -> None:
    """Write ``table`` to ``path`` whole: locally to a temporary name in the same folder, then renamed
    over ``path`` (atomic on POSIX); on an object store as one object (a PUT is atomic)."""
    folder, name = path.rsplit("/", 1)
    fs.create_dir(folder, recursive=True)
    if not _is_local(fs):
        pq.write_table(table, path, filesystem=fs, compression="zstd", row_group_size=ROW_GROUP_ROWS)
        return
    tmp = f"{folder}/.{name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, compression="zstd", row_group_size=ROW_GROUP_ROWS)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def to_table(kind: Kind, rows: Sequence[tuple[Any, ...]]) -> pa.Table:
    schema = SCHEMAS[kind]
    cols = list(zip(*rows, strict=True)) if rows else [() for _ in schema]
    return pa.Table.from_arrays([_column(c, f.type) for c, f in zip(cols, schema, strict=True)], schema=schema)


def _column(values: Sequence[Any], typ: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(typ):
        # pyarrow converts aware datetimes ~20x slower than integers (a utcoffset call each); the
        # writer runs beside the scan and shares the GIL with it, so hand it epoch microseconds
        return pa.array([v if v is None or v.__class__ is int else epoch_us(v) for v in values], typ)
    return pa.array(values if isinstance(values, list) else list(values), type=typ)


class HistorianWriter:
    """The buffered writer of one feeder's partitions (rows are tuples in :data:`COLUMNS` order;
    a timestamp is an aware datetime or UTC epoch microseconds, see :func:`epoch_us`)."""

    def __init__(self, root: str, feeder_id: str, *, max_rows: int = 500_000) -> None:
        self.root = root
        self.feeder_id = check_feeder_id(feeder_id)
        self.max_rows = max_rows
        self._fs, self._base = open_root(root)
        self._buf: deque[tuple[Kind, tuple[Any, ...]]] = deque()
        self.dropped = 0  # rows dropped because the buffer was full (the sink was down)
        self.written_rows = 0
        self.written_files = 0
        self.write_cpu_s = 0.0  # CPU time the writing thread spent in write() (shares the GIL with the scan)

    def __len__(self) -> int:
        return len(self._buf)

    def append(self, kind: Kind, row: tuple[Any, ...]) -> None:
        """Buffer one row (cheap; no I/O). Drops the oldest row when the buffer is full."""
        if len(self._buf) >= self.max_rows:
            self._buf.popleft()
            self.dropped += 1
        self._buf.append((kind, row))

    def rows(self) -> Iterable[tuple[Kind, tuple[Any, ...]]]:
        """The buffered rows, oldest first (a view: do not keep it across appends)."""
        return self._buf

    def take(self) -> list[tuple[Kind, tuple[Any, ...]]]:
        """Hand over the buffered rows (to :meth:`write`); the buffer starts empty."""
        batch, self._buf = list(self._buf), deque()
        return batch

    def requeue(self, batch: Sequence[tuple[Kind, tuple[Any, ...]]]) -> None:
        """Put a batch that could not be written back in front of the buffer (older rows dropped
        first when that overflows the bound)."""
        merged = deque(batch)
        merged.extend(self._buf)
        over = len(merged) - self.max_rows
        for _ in range(max(over, 0)):
            merged.popleft()
        self.dropped += max(over, 0)
        self._buf = merged

    def write(self, batch: Sequence[tuple[Kind, tuple[Any, ...]]], *, name: str | None = None) -> list[str]:
        """Write a batch: one part per (kind, day). Blocking; raises when the sink fails (nothing
        half-written stays visible). Returns the paths written.

        ``name`` (optional) names the parts ``<name>.parquet`` instead of a unique name: writing the
        same batch again under the same name replaces the part (an idempotent load, e.g. one AMI
        file or a backfill), and a part a compaction already merged stays ignored by readers."""
        cpu0 = time.thread_time()
        try:
            return self._write(batch, name)
        finally:
            self.write_cpu_s += time.thread_time() - cpu0

    def _write(self, batch: Sequence[tuple[Kind, tuple[Any, ...]]], name: str | None) -> list[str]:
        groups: dict[tuple[Kind, date], list[tuple[Any, ...]]] = {}
        last: tuple[Kind, Any, list[tuple[Any, ...]]] | None = None  # rows come in runs of one kind and time
        for kind, row in batch:
            t = row[_PART_TIME_INDEX[kind]]
            if last is None or last[0] != kind or last[1] != t:
                last = (kind, t, groups.setdefault((kind, utc_day(t)), []))
            last[2].append(row)
        written: list[str] = []
        stamp = datetime.now(UTC).strftime("%H%M%S%f")
        for (kind, day), rows in sorted(groups.items()):
            part = f"{name}.parquet" if name is not None else f"{stamp}-{uuid.uuid4().hex[:10]}.parquet"
            if not is_data_file(part) or "/" in part:
                raise ValueError(f"part name {name!r} is not a data file name; use letters, digits, - and _")
            path = f"{partition_dir(self._base, kind, self.feeder_id, day)}/{part}"
            write_table(self._fs, path, to_table(kind, rows))
            written.append(path)
            self.written_rows += len(rows)
            self.written_files += 1
        return written


    def write_arrow(self, kind: Kind, table: pa.Table) -> list[str]:
        """Write rows already in columns (``table`` in the kind's schema): one part per UTC day of
        the partition time. Blocking, whole parts only, like :meth:`write`."""
        cpu0 = time.thread_time()
        try:
            if table.num_rows == 0:
                return []
            day_no = pa.compute.cast(table[PARTITION_TIME[kind]], pa.int64()).to_numpy() // DAY_US
            written: list[str] = []
            stamp = datetime.now(UTC).strftime("%H%M%S%f")
            days = sorted(set(day_no.tolist()))
            for d in days:
                part = table if len(days) == 1 else table.filter(pa.array(day_no == d))
                day = (EPOCH + timedelta(days=d)).date()
                path = f"{partition_dir(self._base, kind, self.feeder_id, day)}/{stamp}-{uuid.uuid4().hex[:10]}.parquet"
                write_table(self._fs, path, part)
                written.append(path)
                self.written_rows += part.num_rows
                self.written_files += 1
            return written
        finally:
            self.write_cpu_s += time.thread_time() - cpu0


# -- maintenance -----------------------------------------------------------------------------------

def _list(fs: pafs.FileSystem, folder: str) -> list[pafs.FileInfo]:
    return list(fs.get_file_info(pafs.FileSelector(folder, allow_not_found=True)))


def compacted_sources(fs: pafs.FileSystem, path: str) -> list[str]:
    """The part names a compacted file replaced (its ``dms.sources`` metadata)."""
    with fs.open_input_file(path) as fh:
        meta = pq.read_metadata(fh).metadata or {}
    raw = meta.get(SOURCES_KEY)
    return list(json.loads(raw)) if raw else []


def compact_day(root: str, kind: Kind, feeder_id: str, day: date) -> bool:
    """Merge one feeder-day's parts into ``compacted.parquet``. Returns whether anything changed.

    Steps: (0) temporary files of a killed writer, an hour old, are deleted; (1) parts listed by an
    existing compacted file are deleted (an interrupted run);
    (2) the compacted file and the remaining parts are read (a corrupt part is renamed
    ``_corrupt-<name>`` with a warning, so it no longer counts as data), sorted by time and written
    under a temporary name, renamed over ``compacted.parquet`` with the merged parts' names in its
    metadata; (3) those parts are deleted. Interrupted anywhere, the data set stays readable and
    without duplicates (readers ignore parts listed by the compacted file), and the next run
    finishes the job; run again after it finished, it changes nothing.
    """
    fs, base = open_root(root)
    folder = partition_dir(base, kind, feeder_id, day)
    target = f"{folder}/{COMPACTED_NAME}"
    infos = {i.base_name: i for i in _list(fs, folder) if i.type == pafs.FileType.File}
    changed = _remove_stale_temporaries(fs, folder, infos)
    if COMPACTED_NAME in infos:
        for name in compacted_sources(fs, target):
            if name in infos:
                fs.delete_file(f"{folder}/{name}")
                del infos[name]
                changed = True
    parts = sorted(n for n in infos if is_data_file(n) and n != COMPACTED_NAME)
    if not parts:
        return changed
    tables: list[pa.Table] = []
    if COMPACTED_NAME in infos:
        tables.append(_read(fs, target))
    merged: list[str] = []
    for name in parts:
        try:
            tables.append(_read(fs, f"{folder}/{name}"))
            merged.append(name)
        except (OSError, pa.ArrowException) as exc:
            log.warning("historian: part %s/%s is corrupt (%s); renamed _corrupt-%s and left out of compaction",
                        folder, name, exc, name)
            fs.move(f"{folder}/{name}", f"{folder}/_corrupt-{name}")
    if not merged:
        return True
    # measurements by point, then time: a trend of a few points reads few row groups
    order = [("point_id", "ascending")] if kind == "measurement" else []
    table = pa.concat_tables([t.cast(SCHEMAS[kind]) for t in tables]).sort_by([*order, (PARTITION_TIME[kind],
                                                                                         "ascending")])
    table = table.replace_schema_metadata({SOURCES_KEY: json.dumps(merged).encode()})
    write_table(fs, target, table)
    for name in merged:
        fs.delete_file(f"{folder}/{name}")
    return True


STALE_TEMP_S = 3600.0


def _remove_stale_temporaries(fs: pafs.FileSystem, folder: str, infos: dict[str, pafs.FileInfo]) -> bool:
    """Delete the temporary files (``.<part>.<hex>.tmp``) that a writer killed before its rename left
    behind, once they are an hour old (no live writer takes that long). Readers never see them; this
    only gives the disk back. Removes them from ``infos``; returns whether any was deleted."""
    now = time.time()
    stale = [n for n, i in infos.items() if n.startswith(".") and n.endswith(".tmp") and i.mtime is not None
             and now - i.mtime.timestamp() > STALE_TEMP_S]
    for name in stale:
        log.info("historian: removing %s/%s, left by a writer that died before renaming it", folder, name)
        fs.delete_file(f"{folder}/{name}")
        del infos[name]
    return bool(stale)


def _read(fs: pafs.FileSystem, path: str) -> pa.Table:
    with fs.open_input_file(path) as fh:
        return pq.read_table(fh)


def partitions(root: str, kinds: Sequence[Kind] = KINDS, feeder_id: str | None = None
               ) -> list[tuple[Kind, str, date, str]]:
    """Every (kind, feeder id, date, folder) of the data set (of one feeder when ``feeder_id`` is given)."""
    fs, base = open_root(root)
    out: list[tuple[Kind, str, date, str]] = []
    for kind in kinds:
        for feeder in _list(fs, kind_dir(base, kind)):
            if feeder.type != pafs.FileType.Directory or (feeder_id is not None and
                                                          feeder.base_name != f"feeder={feeder_id}"):
                continue
            for day in _list(fs, feeder.path):
                parsed = parse_partition(day.path) if day.type == pafs.FileType.Directory else None
                if parsed is not None:
                    out.append((parsed[0], parsed[1], parsed[2], day.path))
    return out


def compact(root: str, *, before: date, kinds: Sequence[Kind] = KINDS, feeder_id: str | None = None) -> int:
    """Compact every feeder-day older than ``before`` (closed days). Returns the days changed."""
    return sum(compact_day(root, kind, feeder, day) for kind, feeder, day, _ in partitions(root, kinds, feeder_id)
               if day < before)


def apply_retention(root: str, *, keep_days: int, today: date | None = None, feeder_id: str | None = None) -> int:
    """Delete whole partitions older than ``keep_days`` days before ``today`` (UTC). Returns how
    many were deleted."""
    if keep_days < 1:
        raise ValueError(f"keep_days {keep_days} must be at least 1")
    cutoff = (today or datetime.now(UTC).date()) - timedelta(days=keep_days)
    fs, _ = open_root(root)
    dropped = 0
    for _, _, day, folder in partitions(root, KINDS, feeder_id):
        if day < cutoff:
            fs.delete_dir(folder)
            dropped += 1
    return dropped
