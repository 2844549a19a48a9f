"""The historian: layout, bucketing (DST days included), the writer's bound, whole-part writes,
compaction, retention and DuckDB queries over real Parquet files in a temporary folder; the hosted
application with fake ports. No Ray, no store, no socket."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from graph_schema.errors import BadInput, ConfigError
from graph_schema.historian import (
    COMPACTED_NAME,
    Bucket,
    Sample,
    bucket_edges,
    bucket_samples,
    days_between,
    is_data_file,
    merge_series,
    parse_partition,
    partition_dir,
)
from graph_schema.historian.query import HistorianReader
from graph_schema.historian.writer import HistorianWriter, apply_retention, compact, compact_day

T0 = datetime(2026, 3, 1, 23, 0, tzinfo=UTC)


def _m(pid: str, ts: datetime, value: float | None, quality: str = "GOOD") -> tuple[Any, ...]:
    return (pid, "bus1", "vm_pu", value, quality, None, ts)


def _write(root: str, rows: list[tuple[Any, ...]], feeder: str = "f1") -> list[str]:
    w = HistorianWriter(root, feeder)
    for r in rows:
        w.append("measurement", r)
    return w.write(w.take())


def _parts(folder: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if is_data_file(n))


# -- layout ----------------------------------------------------------------------------------------

def test_layout_is_versioned_and_parsed_back() -> None:
    path = partition_dir("/h", "measurement", "case33bw", date(2026, 3, 29))
    assert path == "/h/v1/kind=measurement/feeder=case33bw/date=2026-03-29"
    assert parse_partition(path + "/x.parquet") == ("measurement", "case33bw", date(2026, 3, 29))
    assert parse_partition("/h/v1/kind=nope/feeder=a/date=2026-01-01") is None
    assert is_data_file("abc.parquet") and not is_data_file(".abc.parquet.1.tmp")
    assert not is_data_file("_corrupt-a.parquet")
    with pytest.raises(BadInput):
        partition_dir("/h", "solve", "../etc", date(2026, 1, 1))


def test_days_between_is_half_open() -> None:
    assert days_between(T0, T0 + timedelta(minutes=90)) == [date(2026, 3, 1), date(2026, 3, 2)]
    assert days_between(T0, T0 + timedelta(hours=1)) == [date(2026, 3, 1)]
    midnight = datetime(2026, 3, 2, tzinfo=UTC)
    assert days_between(midnight - timedelta(days=1), midnight) == [date(2026, 3, 1)]


# -- bucketing -------------------------------------------------------------------------------------

def test_fixed_buckets_align_to_start_and_clip_the_last() -> None:
    edges = bucket_edges(T0, T0 + timedelta(minutes=25), 600)
    assert [(e - T0).total_seconds() for e in edges] == [0, 600, 1200, 1500]


@pytest.mark.parametrize(("day", "hours"), [(date(2026, 3, 29), 23), (date(2026, 10, 25), 25), (date(2026, 6, 1), 24)])
def test_daily_buckets_follow_the_utility_time_zone(day: date, hours: int) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    start = datetime(day.year, day.month, day.day, tzinfo=UTC) - timedelta(days=1)
    edges = bucket_edges(start, start + timedelta(days=3), 86_400, "Europe/Berlin")
    assert all(e.astimezone(berlin).hour == 0 for e in edges[:-1])  # every bucket starts at local midnight
    i = next(i for i, e in enumerate(edges) if e.astimezone(berlin).date() == day)
    assert edges[i + 1] - edges[i] == timedelta(hours=hours)


def test_bad_ranges_and_bucket_counts_are_refused() -> None:
    with pytest.raises(BadInput, match="not before"):
        bucket_edges(T0, T0, 60)
    with pytest.raises(BadInput, match="over the limit"):
        bucket_edges(T0, T0 + timedelta(days=30), 1)
    with pytest.raises(BadInput, match="over 400 days"):
        bucket_edges(T0, T0 + timedelta(days=401), 86_400)
    with pytest.raises(BadInput, match="not positive"):
        bucket_edges(T0, T0 + timedelta(days=1), 0)


def test_bucket_samples_and_merge_with_stored_buckets() -> None:
    edges = bucket_edges(T0, T0 + timedelta(minutes=20), 600)
    samples = [Sample("p", T0 + timedelta(minutes=m), v, q) for m, v, q in
               [(1, 1.0, "GOOD"), (2, 3.0, "STALE"), (11, 5.0, "GOOD"), (30, 9.0, "GOOD")]]
    got = bucket_samples(samples, edges)["p"]
    assert got[0].avg == 2.0 and got[0].last == 3.0 and got[0].good_fraction == 0.5 and got[0].count == 2
    stored = [Bucket(edges[1], edges[2], 1.0, 1.0, 1.0, 1.0, 1, 1.0, T0 + timedelta(minutes=10))]
    merged = merge_series(stored, {1: got[1]}, edges)
    assert [b.start for b in merged] == [edges[1]]
    assert merged[0].avg == 3.0 and merged[0].count == 2 and merged[0].last == 5.0 and merged[0].min == 1.0


# -- writer ----------------------------------------------------------------------------------------

def test_buffer_is_bounded_and_drops_oldest(tmp_path: Path) -> None:
    w = HistorianWriter(str(tmp_path), "f1", max_rows=3)
    for i in range(5):
        w.append("measurement", _m("p", T0 + timedelta(seconds=i), float(i)))
    assert len(w) == 3 and w.dropped == 2
    assert [r[3] for _, r in w.rows()] == [2.0, 3.0, 4.0]
    batch = w.take()
    w.append("measurement", _m("p", T0 + timedelta(seconds=9), 9.0))
    w.requeue(batch)  # a failed write goes back in front; beyond the bound the oldest go
    assert [r[3] for _, r in w.rows()] == [3.0, 4.0, 9.0] and w.dropped == 3


def test_a_failed_write_leaves_nothing_visible(tmp_path: Path) -> None:
    (tmp_path / "v1").write_text("a file where the layout wants a folder")
    w = HistorianWriter(str(tmp_path), "f1")
    w.append("measurement", _m("p", T0, 1.0))
    with pytest.raises(OSError):
        w.write(w.take())
    assert [p.name for p in tmp_path.iterdir()] == ["v1"]


def test_one_part_per_partition_and_round_trip_across_midnight(tmp_path: Path) -> None:
    rows = [_m("p1", T0 + timedelta(minutes=10 * i), float(i)) for i in range(12)]  # 23:00 .. 00:50
    rows += [_m("p2", T0 + timedelta(minutes=10 * i), None, "COMM_LOST") for i in range(12)]
    paths = _write(str(tmp_path), rows)
    assert len(paths) == 2 and "date=2026-03-01" in paths[0] and "date=2026-03-02" in paths[1]
    r = HistorianReader(str(tmp_path))
    h = r.history(["p1", "p2", "p3"], T0, T0 + timedelta(hours=2), 3600)
    assert [(b.count, b.avg, b.min, b.max, b.last) for b in h["p1"]] == [(6, 2.5, 0.0, 5.0, 5.0),
                                                                          (6, 8.5, 6.0, 11.0, 11.0)]
    assert [(b.count, b.avg, b.good_fraction) for b in h["p2"]] == [(6, None, 0.0), (6, None, 0.0)]
    assert h["p3"] == []
    raw = r.history(["p1"], T0, T0 + timedelta(minutes=25), None)["p1"]
    assert [(b.start, b.last) for b in raw] == [(T0 + timedelta(minutes=10 * i), float(i)) for i in range(3)]


def test_raw_samples_over_the_limit_are_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import graph_schema.historian.query as q

    monkeypatch.setattr(q, "MAX_RAW_ROWS", 5)
    _write(str(tmp_path), [_m("p1", T0 + timedelta(seconds=i), 1.0) for i in range(6)])
    with pytest.raises(BadInput, match="more than 5 raw samples"):
        HistorianReader(str(tmp_path)).history(["p1"], T0, T0 + timedelta(minutes=1), None)


def test_daily_trend_over_dst_days_in_duckdb(tmp_path: Path) -> None:
    start = datetime(2026, 10, 24, 22, 0, tzinfo=UTC)  # local midnight of 25 Oct in Berlin (CEST)
    _write(str(tmp_path), [_m("p", start + timedelta(hours=h), 1.0) for h in range(49)])
    h = HistorianReader(str(tmp_path), tz="Europe/Berlin").history(["p"], start, start + timedelta(hours=49), 86_400)
    assert [b.count for b in h["p"]] == [25, 24]  # the 25-hour day, then a 24-hour one


def test_received_before_leaves_the_actors_rows_out(tmp_path: Path) -> None:
    _write(str(tmp_path), [_m("p", T0 + timedelta(minutes=i), float(i)) for i in range(10)])
    h = HistorianReader(str(tmp_path)).history(["p"], T0, T0 + timedelta(hours=1), None,
                                               received_before=T0 + timedelta(minutes=4))
    assert [b.last for b in h["p"]] == [0.0, 1.0, 2.0, 3.0]


# -- pruning and unreadable files ------------------------------------------------------------------

def test_a_one_day_query_opens_only_that_days_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = str(tmp_path)
    day1, day2 = datetime(2026, 5, 1, tzinfo=UTC), datetime(2026, 5, 2, tzinfo=UTC)
    _write(root, [_m("p", day1 + timedelta(hours=h), 1.0) for h in range(24)])
    _write(root, [_m("p", day2 + timedelta(hours=h), 2.0) for h in range(24)])
    other = tmp_path / "v1/kind=measurement/feeder=f1/date=2026-05-02"
    (other / "zz-corrupt.parquet").write_bytes(b"PAR1 not parquet at all")
    r = HistorianReader(root)
    h = r.history(["p"], day1, day2, 3600)
    assert len(h["p"]) == 24 and all(b.avg == 1.0 for b in h["p"])
    assert r.opened and all("date=2026-05-01" in f for f in r.opened) and r.skipped == []
    # a corrupt and a half-written part in the queried day: skipped with a warning naming it
    (other / "aa-truncated.parquet").write_bytes(open(_parts_path(other), "rb").read()[:100])
    with caplog.at_level(logging.WARNING, logger="graph_schema.historian.query"):
        h2 = r.history(["p"], day2, day2 + timedelta(days=1), 3600)
    assert len(h2["p"]) == 24 and all(b.avg == 2.0 for b in h2["p"])
    assert {os.path.basename(f) for f in r.skipped} == {"zz-corrupt.parquet", "aa-truncated.parquet"}
    assert "zz-corrupt.parquet" in caplog.text and "aa-truncated.parquet" in caplog.text


def _parts_path(folder: Path) -> str:
    return str(next(p for p in sorted(folder.iterdir()) if p.name[0].isdigit()))


def test_temporary_files_are_not_data(tmp_path: Path) -> None:
    _write(str(tmp_path), [_m("p", T0, 1.0)])
    folder = tmp_path / "v1/kind=measurement/feeder=f1/date=2026-03-01"
    (folder / ".part.parquet.1234.tmp").write_bytes(b"half")
    r = HistorianReader(str(tmp_path))
    assert r.history(["p"], T0, T0 + timedelta(hours=1), None)["p"][0].last == 1.0 and r.skipped == []


# -- compaction and retention ----------------------------------------------------------------------

def test_compaction_is_idempotent_and_safe_to_interrupt(tmp_path: Path) -> None:
    root = str(tmp_path)
    for i in range(4):  # four flushes: four small parts
        _write(root, [_m("p", T0 + timedelta(minutes=i * 5 + k), float(i)) for k in range(5)])
    folder = str(tmp_path / "v1/kind=measurement/feeder=f1/date=2026-03-01")
    assert len(_parts(folder)) == 4
    before = HistorianReader(root).history(["p"], T0, T0 + timedelta(hours=1), 600)
    assert compact(root, before=date(2026, 3, 2)) == 1
    assert _parts(folder) == [COMPACTED_NAME]
    assert compact_day(root, "measurement", "f1", date(2026, 3, 1)) is False  # nothing left to do
    assert HistorianReader(root).history(["p"], T0, T0 + timedelta(hours=1), 600) == before
    # interrupted after the swap, before the deletes: the merged parts are back beside the compacted
    # file; readers must not count them twice, and the next run deletes them
    late = _write(root, [_m("p", T0 + timedelta(minutes=30), 7.0)])
    import json

    import pyarrow.parquet as pq

    compact_day(root, "measurement", "f1", date(2026, 3, 1))
    sources = json.loads(pq.read_metadata(f"{folder}/{COMPACTED_NAME}").metadata[b"dms.sources"])
    assert sources == [os.path.basename(late[0])]
    Path(late[0]).write_bytes(b"")  # re-create the listed part (as if its delete had not happened)
    pq.write_table(pq.read_table(f"{folder}/{COMPACTED_NAME}").slice(0, 1), late[0])
    after = HistorianReader(root).history(["p"], T0, T0 + timedelta(hours=1), 600)
    assert sum(b.count for b in after["p"]) == 21
    assert compact_day(root, "measurement", "f1", date(2026, 3, 1)) is True
    assert _parts(folder) == [COMPACTED_NAME]
    assert HistorianReader(root).history(["p"], T0, T0 + timedelta(hours=1), 600) == after


def test_retention_drops_whole_partitions(tmp_path: Path) -> None:
    root = str(tmp_path)
    for d in range(5):
        _write(root, [_m("p", datetime(2026, 1, 1 + d, 12, tzinfo=UTC), 1.0)])
    assert apply_retention(root, keep_days=2, today=date(2026, 1, 5)) == 2
    left = sorted(os.listdir(tmp_path / "v1/kind=measurement/feeder=f1"))
    assert left == ["date=2026-01-03", "date=2026-01-04", "date=2026-01-05"]
    with pytest.raises(ValueError):
        apply_retention(root, keep_days=0)


# -- solve series ----------------------------------------------------------------------------------

def test_feeder_history_over_solve_rows(tmp_path: Path) -> None:
    w = HistorianWriter(str(tmp_path), "f1")
    for i in range(6):
        w.append("solve", (T0 + timedelta(minutes=10 * i), 0.1 * i, 0.95 - 0.01 * i, "b18", 1.0, "b1",
                           40.0 + i, 3.0, i, i != 5))
    w.write(w.take())
    r = HistorianReader(str(tmp_path))
    b = r.feeder_history("f1", T0, T0 + timedelta(hours=1), 1800)
    assert [x.count for x in b] == [3, 3]
    assert b[1].min_vm_pu == pytest.approx(0.90) and b[1].customers_out == 5 and b[1].converged_fraction == 2 / 3
    assert len(r.feeder_history("f1", T0, T0 + timedelta(hours=1), None)) == 6
    assert r.feeder_history("other", T0, T0 + timedelta(hours=1), 600) == []


# -- the hosted application ------------------------------------------------------------------------

async def _until(cond: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@dataclass
class _PV:
    point_id: str
    value: float | bool | None
    quality: str
    source_ts: datetime | None
    received_ts: datetime


class _Ports:
    feeder_id = "f1"
    app_name = "historian"

    def __init__(self) -> None:
        from graph_schema.model import Feeder, MeasurementPoint, Quantity

        self._model = Feeder(id="f1", name="f1", measurement_points=(
            MeasurementPoint("p1", "bus1", next(iter(Quantity))),))
        self.vals: dict[str, _PV] = {}
        self.tasks: list[asyncio.Task[Any]] = []

    def model(self) -> Any:
        return self._model

    def state(self) -> Any:
        raise RuntimeError("not solved")

    def values(self) -> dict[str, _PV]:
        return dict(self.vals)

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=name)
        self.tasks.append(task)
        return task

    def now(self) -> datetime:
        return datetime.now(UTC)


async def test_app_buffers_on_the_scan_path_and_flushes_off_it(tmp_path: Path) -> None:
    from actors.applications import TelemetryChange
    from actors.apps.historian_app import HistorianApp

    ports = _Ports()
    app = HistorianApp(str(tmp_path), flush_s=3600, flush_rows=3)
    await app.start(ports)  # type: ignore[arg-type]
    try:
        for i in range(3):
            ports.vals["p1"] = _PV("p1", float(i), "GOOD", None, T0 + timedelta(seconds=i))
            pv = ports.vals["p1"]
            app.on_telemetry(TelemetryChange(device_id="rtu", point_ids=(pv.point_id,), values=(pv,)))
        assert not os.listdir(tmp_path)  # no I/O on the scan path
        rec = app.recent(["p1"], None)
        assert [r[2] for r in rec["rows"]] == [0.0, 1.0, 2.0] and rec["oldest"] == T0
        await _until(lambda: app.counters()["written_rows"] >= 3)  # the row bound wakes the flusher
        assert app.recent(["p1"], None) == {"rows": [], "oldest": None}
        h = HistorianReader(str(tmp_path)).history(["p1"], T0, T0 + timedelta(minutes=1), None)
        assert [b.last for b in h["p1"]] == [0.0, 1.0, 2.0]
    finally:
        for t in ports.tasks:
            t.cancel()
        await asyncio.gather(*ports.tasks, return_exceptions=True)
        await app.close()


async def test_app_keeps_rows_when_the_sink_is_down(tmp_path: Path) -> None:
    from actors.applications import TelemetryChange
    from actors.apps.historian_app import HistorianApp

    blocker = tmp_path / "root"
    blocker.write_text("not a folder")
    ports = _Ports()
    app = HistorianApp(str(blocker), flush_s=3600, max_rows=2)
    await app.start(ports)  # type: ignore[arg-type]
    for t in ports.tasks:
        t.cancel()
    await asyncio.gather(*ports.tasks, return_exceptions=True)
    for i in range(3):
        ports.vals["p1"] = _PV("p1", float(i), "GOOD", None, T0 + timedelta(seconds=i))
        pv = ports.vals["p1"]
        app.on_telemetry(TelemetryChange(device_id="rtu", point_ids=(pv.point_id,), values=(pv,)))
    with pytest.raises(OSError):
        await app.flush()
    c = app.counters()
    assert c["buffered"] == 2 and c["dropped"] == 1 and c["failed_flushes"] == 1 and c["last_error"]
    assert [r[2] for r in app.recent(["p1"], None)["rows"]] == [1.0, 2.0]


def test_settings_read_the_historian_variables(tmp_path: Path) -> None:
    from server.settings import Settings

    s = Settings.from_env({"DMS_DATA_DIR": str(tmp_path), "DMS_TIMEZONE": "Europe/Berlin",
                           "DMS_HISTORIAN_FLUSH_S": "2.5", "DMS_HISTORIAN_RETENTION_DAYS": "30"})
    assert s.historian_root == str(tmp_path / "historian") and s.timezone == "Europe/Berlin"
    assert s.historian_flush_s == 2.5 and s.historian_retention_days == 30
    assert Settings.from_env({"DMS_HISTORIAN_URI": "s3://b/h"}).historian_root == "s3://b/h"
    with pytest.raises(ConfigError, match="DMS_TIMEZONE"):
        Settings.from_env({"DMS_TIMEZONE": "Mars/Olympus"})


def test_the_actor_process_never_imports_duckdb() -> None:
    import subprocess
    import sys

    code = ("import sys, actors.feeder_actor, actors.apps.historian_app, graph_schema.historian.writer; "
            "print('duckdb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "False"


async def test_app_keeps_values_by_exception_with_a_heartbeat(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    from actors.applications import TelemetryChange
    from actors.apps.historian_app import HistorianApp

    ports = _Ports()
    app = HistorianApp(None, heartbeat_s=60)  # no root: rows stay in memory (``recent`` only)
    await app.start(ports)  # type: ignore[arg-type]
    for s, v, q in [(0, 1.0, "GOOD"), (1, 1.0, "GOOD"), (2, 1.0, "STALE"), (3, 2.0, "STALE"), (70, 2.0, "STALE")]:
        ports.vals["f1/bus7/VM_PU"] = _PV("f1/bus7/VM_PU", v, q, None, T0 + timedelta(seconds=s))
        pv = ports.vals["f1/bus7/VM_PU"]
        app.on_telemetry(TelemetryChange(device_id="rtu", point_ids=(pv.point_id,), values=(pv,)))
    rows = app.recent(["f1/bus7/VM_PU"], None)["rows"]
    assert [(r[1] - T0).seconds for r in rows] == [0, 2, 3, 70]  # changes, then the heartbeat
    assert await app.flush() == 0 and app.counters()["written_files"] == 0
    await app.close()

    stored = HistorianApp(str(tmp_path), flush_s=3600, heartbeat_s=60)
    await stored.start(ports)  # type: ignore[arg-type]
    for t in ports.tasks:
        t.cancel()
    await asyncio.gather(*ports.tasks, return_exceptions=True)
    for s, v in [(0, 1.0), (1, 1.0), (2, 3.0)]:  # the state carries over from one flush to the next
        pv = _PV("f1/bus7/VM_PU", v, "GOOD", None, T0 + timedelta(seconds=s))
        stored.on_telemetry(TelemetryChange(device_id="rtu", point_ids=(pv.point_id,), values=(pv,)))
        await stored.flush()
    table = await asyncio.to_thread(pq.read_table, str(tmp_path / "v1" / "kind=measurement"))
    assert table.column("value").to_pylist() == [1.0, 3.0] and stored.counters()["written_files"] == 2
    # element and quantity from the point map's id
    assert set(table.column("element_id").to_pylist()) == {"bus7"}
    assert set(table.column("quantity").to_pylist()) == {"VM_PU"}
    await stored.close()


async def test_app_maintains_only_its_own_partitions(tmp_path: Path) -> None:
    from actors.apps.historian_app import HistorianApp

    root = str(tmp_path)
    today = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
    for feeder in ("f1", "f2"):
        for days_ago in (0, 1, 1, 5):
            await asyncio.to_thread(_write, root, [_m("p", today - timedelta(days=days_ago), 1.0)], feeder)
    ports = _Ports()
    app = HistorianApp(root, flush_s=3600, retention_days=3, maintain_every_s=3600)
    await app.start(ports)  # type: ignore[arg-type]
    try:
        await _until(lambda: app.counters()["compacted_days"] == 1)
        assert await app.maintain() == {"compacted_days": 0, "dropped_days": 0}  # idempotent
    finally:
        for t in ports.tasks:
            t.cancel()
        await asyncio.gather(*ports.tasks, return_exceptions=True)
    f1 = tmp_path / "v1/kind=measurement/feeder=f1"
    f2 = tmp_path / "v1/kind=measurement/feeder=f2"
    day = lambda n: f"date={(today - timedelta(days=n)).date().isoformat()}"  # noqa: E731
    assert sorted(os.listdir(f1)) == sorted([day(0), day(1)]) and app.counters()["dropped_days"] == 1
    assert os.listdir(f1 / day(1)) == [COMPACTED_NAME] and len(_parts(str(f1 / day(0)))) == 1
    assert len(os.listdir(f2)) == 3 and len(_parts(str(f2 / day(1)))) == 2  # another feeder's: untouched


def test_a_writer_killed_mid_batch_leaves_no_half_file(tmp_path: Path) -> None:
    """SIGKILL a process that writes parts in a loop: every visible part reads whole (a killed
    write leaves at most a hidden temporary file, which readers ignore)."""
    import signal
    import subprocess
    import sys

    code = f"""
import sys
from datetime import UTC, datetime, timedelta
from graph_schema.historian.writer import HistorianWriter
w = HistorianWriter({str(tmp_path)!r}, "f1")
t0 = datetime(2026, 3, 1, tzinfo=UTC)
n = 0
while True:
    for i in range(20000):
        w.append("measurement", ("p", "b", "VM_PU", float(i), "GOOD", None, t0 + timedelta(microseconds=n)))
        n += 1
    w.write(w.take())
    print(n, flush=True)
"""
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=os.getcwd())
    try:
        assert proc.stdout is not None
        for _ in range(3):  # a few whole parts, then kill it in the middle of the next ones
            assert proc.stdout.readline(), "the writer process died"
        time.sleep(0.05)  # not a wait for a condition: it spreads the kill into a later write
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
        if proc.stdout is not None:
            proc.stdout.close()
    r = HistorianReader(str(tmp_path))
    h = r.history(["p"], datetime(2026, 3, 1, tzinfo=UTC), datetime(2026, 3, 2, tzinfo=UTC), 86_400)
    assert r.skipped == [] and len(r.opened) >= 3
    assert h["p"][0].count == 20000 * len(r.opened)  # whole parts only


def test_compaction_removes_the_temporary_files_of_a_killed_writer_once_they_are_stale(tmp_path: Path) -> None:
    from graph_schema.historian.writer import STALE_TEMP_S

    day = date(2026, 3, 1)
    w = HistorianWriter(str(tmp_path), "f1")
    w.append("measurement", ("p", "b", "VM_PU", 1.0, "GOOD", None, datetime(2026, 3, 1, 1, tzinfo=UTC)))
    w.write(w.take())
    folder = tmp_path / "v1/kind=measurement/feeder=f1/date=2026-03-01"
    stale, fresh = folder / ".part-a.parquet.0badc0de.tmp", folder / ".part-b.parquet.1badc0de.tmp"
    stale.write_bytes(b"PAR1 half")
    fresh.write_bytes(b"PAR1 half")
    old = time.time() - STALE_TEMP_S - 60
    os.utime(stale, (old, old))
    assert compact_day(str(tmp_path), "measurement", "f1", day)
    assert sorted(os.listdir(folder)) == sorted([fresh.name, COMPACTED_NAME])  # a fresh one may be a live write


async def test_app_keeps_published_events_but_not_measurement_events(tmp_path: Path) -> None:
    from actors.apps.historian_app import HistorianApp
    from actors.cores.events import Event, EventKind, Severity

    ports = _Ports()
    app = HistorianApp(str(tmp_path), flush_s=3600)
    await app.start(ports)  # type: ignore[arg-type]
    for t in ports.tasks:
        t.cancel()
    await asyncio.gather(*ports.tasks, return_exceptions=True)
    app.on_events([
        Event(seq=7, kind=EventKind.ALARM, feeder_id="f1", element_id="sw1", severity=Severity.ALARM,
              message="sw1 tripped", at=T0),
        Event(seq=8, kind=EventKind.MEASUREMENT, feeder_id="f1", element_id="bus1", severity=Severity.INFO,
              message="value", at=T0 + timedelta(seconds=1)),
        Event(seq=9, kind=EventKind.TOPOLOGY_CHANGE, feeder_id="f1", element_id=None, severity=Severity.INFO,
              message="switches changed: sw1", at=T0 + timedelta(hours=23, minutes=59, seconds=59, milliseconds=500)),
        Event(seq=10, kind=EventKind.ALARM_CLEARED, feeder_id="f1", element_id="sw1", severity=Severity.INFO,
              message="sw1 closed", at=T0 + timedelta(days=1)),  # the next UTC day
    ])
    assert await app.flush() == 3
    day = tmp_path / "v1" / "kind=event" / "feeder=f1"
    assert sorted(p.name for p in day.iterdir()) == [f"date={T0.date()}", f"date={(T0 + timedelta(days=1)).date()}"]
    r = HistorianReader(str(tmp_path))
    rows = r.events_history("f1", T0, T0 + timedelta(days=2))
    assert [(e.seq, e.kind, e.element_id, e.severity, e.message) for e in rows] == [
        (7, "ALARM", "sw1", "ALARM", "sw1 tripped"), (9, "TOPOLOGY_CHANGE", None, "INFO", "switches changed: sw1"),
        (10, "ALARM_CLEARED", "sw1", "INFO", "sw1 closed")]
    assert rows[0].ts == T0
    assert [e.seq for e in r.events_history("f1", T0, T0 + timedelta(days=2), kinds=["ALARM", "ALARM_CLEARED"])] \
        == [7, 10]
    assert [e.seq for e in r.events_history("f1", T0, T0 + timedelta(days=1))] == [7, 9]  # half-open range
    assert [e.seq for e in r.events_history("f1", T0, T0 + timedelta(minutes=30))] == [7]
    assert len(r.opened) == 1  # one UTC day's file only
    assert r.events_history("other", T0, T0 + timedelta(days=1)) == []
    await app.close()
