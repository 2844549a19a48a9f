"""Historian benchmark: ingest beside the scan, trend queries over 60 days, bytes per point-day.

Run: ``.venv/bin/python bench/historian.py [--seconds 5] [--days 60] [--points 100]``.

It prints:
1. machine info;
2. the scan path of one feeder (``actors.ingest.Ingest.apply`` on every analog point of case33bw,
   each value changing every scan, as fast as the event loop allows) with and without the
   historian application (``on_telemetry`` appends, flushes to Parquet in a worker thread every
   second; each slice with it ends by writing what it buffered, and the writing thread's CPU time
   is added to the slice's time, as if the writer had no core of its own), interleaved
   in one run: scans/s each, the ratio (aim >= 0.95), the same ratio by CPU time per scan (the
   event loop's thread plus the writer's; it holds up when other work loads the machine), and
   values/s the historian took in (``--gc-freeze``: the same after ``gc.freeze()``; the values
   the historian buffers survive into the cyclic GC's oldest generation, whose full collections
   then walk every long-lived object of the process);
3. a 24-hour, 5-minute-bucket trend of 10 points over ``--days`` days of generated history
   (``--points`` points, one sample a minute each, compacted one file per feeder-day), through
   ``HistorianReader.history`` (DuckDB): median and p99 (aim < 200 ms);
4. the data set's size per point-day on disk.

What it does not measure: the actor under Ray with the field simulator (protocol decoding, the
event bus); see bench/telemetry.py for that path.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def machine() -> str:
    import duckdb
    import psutil
    import pyarrow

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
            f"(affinity {len(os.sched_getaffinity(0))}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"Python {platform.python_version()}, pyarrow {pyarrow.__version__}, duckdb {duckdb.__version__}")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class _Ports:
    feeder_id = "bench"
    app_name = "historian"

    def __init__(self, model: Any, ingest: Any) -> None:
        self._model, self._ingest = model, ingest
        self.tasks: list[asyncio.Task[Any]] = []

    def model(self) -> Any:
        return self._model

    def state(self) -> Any:
        raise RuntimeError("no state in the bench")

    def values(self) -> Any:
        return dict(self._ingest.values)

    def spawn(self, coro: Any, name: str = "") -> asyncio.Task[Any]:
        t = asyncio.create_task(coro, name=name)
        self.tasks.append(t)
        return t

    def now(self) -> datetime:
        return datetime.now(UTC)


async def scan_rates(seconds: float, root: str, gc_freeze: bool = False) -> dict[str, float]:
    from actors.applications import TelemetryChange
    from actors.apps.historian_app import HistorianApp
    from actors.cores.topology import TopologyGraph
    from actors.ingest import Ingest
    from graph_schema.importers import case33bw
    from protocols.base import PointValue, Quality
    from protocols.pointmap import generate_point_map

    feeder = case33bw()
    ingest = Ingest(feeder, TopologyGraph(feeder))
    pm = generate_point_map(feeder)
    ingest.bind({p.point_id: p for p in pm.points})
    analogs = [p for p in pm.points if str(p.quantity) not in ("STATUS", "FAULT") and str(p.direction) != "COMMAND"]
    by_device: dict[str, list[Any]] = {}
    for p in analogs:
        by_device.setdefault(p.device_id, []).append(p)
    states = {s.id: s.is_open for s in feeder.switches}
    ports = _Ports(feeder, ingest)
    app = HistorianApp(root, flush_s=1.0, heartbeat_s=60)
    await app.start(ports)  # type: ignore[arg-type]
    n = 0

    async def run(with_app: bool, dur: float) -> tuple[int, float]:
        nonlocal n
        scans = 0
        t0, c0 = time.perf_counter(), time.thread_time()
        end = t0 + dur
        while time.perf_counter() < end:
            now = datetime.now(UTC)
            n += 1
            for dev, pts in by_device.items():
                values = [PointValue(p.point_id, 1.0 + (n % 97) * 1e-4, Quality.GOOD, now, now) for p in pts]
                ingest.apply(dev, values, states)
                if with_app:
                    app.on_telemetry(TelemetryChange(device_id=dev, point_ids=tuple(v.point_id for v in values),
                                                     values=tuple(values)))
            scans += 1
            await asyncio.sleep(0)
        took, cpu = time.perf_counter() - t0, time.thread_time() - c0
        if with_app:  # the slice pays the CPU time of writing what it buffered (the writer shares the GIL)
            w0 = app.counters()["write_cpu_s"]
            await app.flush()
            w = app.counters()["write_cpu_s"] - w0
            took, cpu = took + w, cpu + w
        return scans, took, cpu

    await run(True, 0.5)  # warm-up, not counted: pyarrow's first conversions initialise kernels (once a process)
    if gc_freeze:  # what a host could do once started: its long-lived objects leave the cyclic GC's sight
        gc.collect()
        gc.freeze()
    without = with_ = 0
    t_without = t_with = c_without = c_with = 0.0
    rows0 = 0
    slices = 12
    for _ in range(slices):  # interleaved, so drift (and other load on the machine) hits both alike
        s, t, c = await run(False, seconds / slices / 2)
        without, t_without, c_without = without + s, t_without + t, c_without + c
        before = app.counters()["written_rows"] + app.counters()["buffered"]
        s, t, c = await run(True, seconds / slices / 2)
        with_, t_with, c_with = with_ + s, t_with + t, c_with + c
        rows0 += app.counters()["written_rows"] + app.counters()["buffered"] - before
    for t in ports.tasks:
        t.cancel()
    await asyncio.gather(*ports.tasks, return_exceptions=True)
    return {"without": without / t_without, "with": with_ / t_with, "values_s": rows0 / t_with,
            "points": len(analogs), "cpu_ratio": (c_without / without) / (c_with / with_)}


def generate(root: str, days: int, points: int, end_day: datetime) -> tuple[int, int]:
    """``points`` points, one sample a minute, ``days`` days, one compacted file per day."""
    import numpy as np
    import pyarrow as pa

    from graph_schema.historian import COMPACTED_NAME, partition_dir
    from graph_schema.historian.writer import SCHEMAS, open_root, write_table

    fs, base = open_root(root)
    ids = [f"bench/bus{i}/VM_PU" for i in range(points)]
    minutes = 1440
    rng = np.random.default_rng(1)
    rows = 0
    for d in range(days):
        day = end_day - timedelta(days=days - d)
        t = np.datetime64(day.replace(tzinfo=None), "us") + np.arange(minutes) * np.timedelta64(60, "s")
        ts = np.tile(t, points)
        pid = np.repeat(np.array(ids, dtype=object), minutes)
        hour = (np.arange(minutes) / 60.0)
        daily = 1.0 - 0.03 * np.sin((hour - 6) / 24 * 2 * np.pi)
        value = (np.tile(daily, points) + rng.normal(0, 0.002, points * minutes)).astype("float64")
        n = points * minutes
        element = np.repeat(np.array([i.split("/")[1] for i in ids], dtype=object), minutes)
        utc_ts = pa.array(ts, pa.timestamp("us", tz="UTC"))
        table = pa.table({
            "point_id": pa.array(pid, pa.string()), "element_id": pa.array(element, pa.string()),
            "quantity": pa.array(["VM_PU"] * n, pa.string()), "value": value,
            "quality": pa.array(["GOOD"] * n, pa.string()), "source_ts": utc_ts, "received_ts": utc_ts,
        }, schema=SCHEMAS["measurement"])
        write_table(fs, f"{partition_dir(base, 'measurement', 'bench', day.date())}/{COMPACTED_NAME}", table)
        rows += table.num_rows
    size = sum(f.stat().st_size for f in Path(base).rglob("*.parquet"))
    return rows, size


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() after start-up: the buffered values then no longer make full collections "
                         "walk every long-lived object of the process")
    a = ap.parse_args()
    print("machine:", machine())
    with tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(scan_rates(a.seconds, os.path.join(tmp, "ingest"), a.gc_freeze))
        print(f"scan path, {r['points']} analog points, every value changing: {r['without']:,.0f} scans/s without "
              f"the historian, {r['with']:,.0f} with it (ratio {r['with'] / r['without']:.3f}, aim >= 0.95; "
              f"by CPU time per scan, robust to other load: {r['cpu_ratio']:.3f}); historian took "
              f"{r['values_s']:,.0f} values/s")
        root = os.path.join(tmp, "history")
        end_day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        t0 = time.perf_counter()
        rows, size = generate(root, a.days, a.points, end_day)
        took = time.perf_counter() - t0
        print(f"generated {a.days} days x {a.points} points x 1/min = {rows:,} rows in {took:.1f} s; "
              f"{size / 2**20:.1f} MiB: {size / (a.days * a.points) / 1024:.1f} KiB per point-day "
              f"({size / rows:.2f} bytes per sample)")
        from graph_schema.historian.query import HistorianReader

        ids = [f"bench/bus{i}/VM_PU" for i in range(10)]
        times = []
        for q in range(a.queries):
            end = end_day - timedelta(days=q % (a.days - 1), hours=q % 24)
            reader = HistorianReader(root)
            t = time.perf_counter()
            h = reader.history(ids, end - timedelta(hours=24), end, 300, feeder_ids=["bench"])
            times.append(time.perf_counter() - t)
            assert all(len(b) == 288 for b in h.values()), {k: len(v) for k, v in h.items()}
        print(f"24 h x 5-min trend of 10 points over {a.days} days: median {statistics.median(times) * 1000:.1f} ms, "
              f"p99 {pct(times, 0.99) * 1000:.1f} ms over {a.queries} queries (aim < 200 ms)")


if __name__ == "__main__":
    main()
