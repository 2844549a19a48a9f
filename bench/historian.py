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

5. the same comparison on the real path (``--actor``, on by default; ``--no-actor`` skips it):
   two feeder actors under a local Ray, copies of case33bw, one with the historian writing Parquet
   under a temporary folder and one without it, each scanning the field simulator's Modbus RTUs
   (analogs moving at every simulator tick, no deadband) in turns of ``--actor-seconds``:
   points/s each ingests (its own counter), the ratio (aim >= 0.95), and the worker process's CPU
   time per 1,000 points with and without, from the operating system (psutil).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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


class GcClock:
    """CPU time the cyclic garbage collector spends in this thread (``gc.callbacks``): a figure that
    other load on the machine barely moves, unlike rates."""

    def __init__(self) -> None:
        self.total = 0.0
        self._start = 0.0
        gc.callbacks.append(self._tick)

    def _tick(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._start = time.thread_time()
        else:
            self.total += time.thread_time() - self._start

    def close(self) -> None:
        gc.callbacks.remove(self._tick)


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

    gc_clock = GcClock()
    gc_s = {True: 0.0, False: 0.0}

    async def run(with_app: bool, dur: float) -> tuple[int, float, float]:
        nonlocal n
        scans = 0
        g0 = gc_clock.total
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
        gc_s[with_app] += gc_clock.total - g0
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
    gc_clock.close()
    return {"gc_without": gc_s[False] / c_without, "gc_with": gc_s[True] / c_with,
            "without": without / t_without, "with": with_ / t_with, "values_s": rows0 / t_with,
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


# -- the real path: feeder actors under Ray, scanning the simulator over Modbus TCP -----------------

ON, OFF = "hist-on", "hist-off"


async def _field_main(conn: Any, scan_tick_s: float) -> None:
    from dataclasses import replace

    from graph_schema.importers import case33bw
    from protocols.pointmap import generate_point_map
    from protocols.simulator import FieldSimulator

    feeders = [replace(case33bw(), id=fid) for fid in (ON, OFF)]
    maps = {f.id: generate_point_map(f, modbus_port=0, split="modbus_only") for f in feeders}
    maps = {fid: replace(pm, points=tuple(replace(p, deadband=0.0) for p in pm.points)) for fid, pm in maps.items()}
    sim = FieldSimulator(feeders, point_maps=maps, tick_s=scan_tick_s, allow_nosecurity=True)  # Modbus only
    await sim.start()
    # every analog moves at every tick by more than a FLOAT32 register resolves (1e-5 steps)
    sim.set_value_hook(lambda pid, v, now: v + (int(time.monotonic() / scan_tick_s) % 100) * 1e-5
                       if isinstance(v, float) else v)
    try:
        conn.send({fid: sim.point_maps[fid].to_json() for fid in (ON, OFF)})
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
    finally:
        await sim.stop()


def _field_process(conn: Any, scan_tick_s: float) -> None:
    asyncio.run(_field_main(conn, scan_tick_s))


async def actor_rates(seconds: float, rounds: int, scan_ms: float) -> dict[str, Any]:
    import multiprocessing as mp
    from dataclasses import replace

    import psutil

    from actors.apps import DEFAULT_APPS, HistorianApp
    from actors.fleet import NAMESPACE, RayEventSink, _RemoteFeederActor
    from graph_schema.importers import case33bw
    from server.runtime import actor_options, start_runtime, store_address
    from server.settings import Settings

    data_dir = Path(tempfile.mkdtemp(prefix="dms-bench-historian-"))
    settings = Settings.from_env({}, data_dir=data_dir, neo4j_uri=None, scan_interval_s=scan_ms / 1000,
                                 historian_flush_s=2.0)
    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe()
    field = ctx.Process(target=_field_process, args=(child, 0.05), name="bench-field", daemon=True)
    field.start()
    runtime = await start_runtime(settings, demo_feeders=False)
    handles: dict[str, Any] = {}
    try:
        for fid in (ON, OFF):
            await runtime.grid.import_feeder(replace(case33bw(), id=fid), replace=True)
        for _ in range(600):
            if conn.poll() or not field.is_alive():
                break
            await asyncio.sleep(0.1)
        if not conn.poll():
            raise RuntimeError(f"the field process did not start (exit code {field.exitcode}); see its traceback")
        maps = conn.recv()
        opts = actor_options(settings)
        address = store_address(settings, runtime.arcadedb)
        without = tuple(c for c in DEFAULT_APPS if c is not HistorianApp)
        for fid, apps in ((ON, DEFAULT_APPS), (OFF, without)):
            handles[fid] = _RemoteFeederActor.options(name=f"bench-{fid}", namespace=NAMESPACE).remote(
                fid, address, opts, RayEventSink(), apps=apps)
        procs = {fid: psutil.Process(int((await h.ping.remote())["pid"])) for fid, h in handles.items()}
        apps_on = await handles[ON].app_status.remote()
        assert "historian" in apps_on and "historian" not in await handles[OFF].app_status.remote()
        points: dict[str, float] = {ON: 0, OFF: 0}
        took: dict[str, float] = {ON: 0.0, OFF: 0.0}
        cpu: dict[str, float] = {ON: 0.0, OFF: 0.0}
        scanned: dict[str, float] = {ON: 0, OFF: 0}  # the warm-up's too
        for r in range(rounds + 1):  # the first round warms up and is not counted
            for fid in ((ON, OFF) if r % 2 == 0 else (OFF, ON)):
                h = handles[fid]
                await h.attach_field.remote(maps[fid], str(data_dir))
                await asyncio.sleep(2.0)  # connected and scanning
                a = (await h.field_status.remote())["ingested"]
                c0 = sum(procs[fid].cpu_times()[:2])
                t0 = time.perf_counter()
                await asyncio.sleep(seconds)
                b = (await h.field_status.remote())["ingested"]
                c1 = sum(procs[fid].cpu_times()[:2])
                t1 = time.perf_counter()
                await h.detach_field.remote()
                scanned[fid] += b - a
                if r:
                    points[fid] += b - a
                    took[fid] += t1 - t0
                    cpu[fid] += c1 - c0
        await handles[ON].app_call.remote("historian", "flush")
        written = (await handles[ON].app_call.remote("historian", "counters"))["written_rows"]
        return {"on": points[ON] / took[ON], "off": points[OFF] / took[OFF],
                "cpu_on": cpu[ON] / points[ON] * 1e6, "cpu_off": cpu[OFF] / points[OFF] * 1e6,
                "scanned": scanned[ON],
                "written": written}
    finally:
        import ray

        for h in handles.values():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(h.close.remote(), 10)
            with contextlib.suppress(Exception):
                ray.kill(h, no_restart=True)
        with contextlib.suppress(Exception):
            conn.send("stop")
        field.join(20)
        if field.is_alive():
            field.kill()
        await runtime.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--points", type=int, default=100)
    ap.add_argument("--queries", type=int, default=40)
    ap.add_argument("--gc-freeze", action="store_true",
                    help="gc.freeze() after start-up: the buffered values then no longer make full collections "
                         "walk every long-lived object of the process")
    ap.add_argument("--actor", action=argparse.BooleanOptionalAction, default=True,
                    help="also compare two real feeder actors under Ray scanning the simulator (default: on)")
    ap.add_argument("--actor-seconds", type=float, default=8.0, help="length of each actor turn")
    ap.add_argument("--actor-rounds", type=int, default=3, help="counted turns per actor (alternating)")
    ap.add_argument("--scan-ms", type=float, default=50.0, help="the actors' Modbus scan interval")
    a = ap.parse_args()
    print("machine:", machine())
    with tempfile.TemporaryDirectory() as tmp:
        r = asyncio.run(scan_rates(a.seconds, os.path.join(tmp, "ingest"), a.gc_freeze))
        print(f"scan path, {r['points']} analog points, every value changing: {r['without']:,.0f} scans/s without "
              f"the historian, {r['with']:,.0f} with it (ratio {r['with'] / r['without']:.3f}, aim >= 0.95; "
              f"by CPU time per scan, robust to other load: {r['cpu_ratio']:.3f}); historian took "
              f"{r['values_s']:,.0f} values/s; the garbage collector took {r['gc_without']:.1%} of the scan's CPU "
              f"without the historian, {r['gc_with']:.1%} with it")
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
    if a.actor:
        r = asyncio.run(actor_rates(a.actor_seconds, a.actor_rounds, a.scan_ms))
        print(f"real feeder actors under Ray, case33bw over Modbus TCP (scan every {a.scan_ms:g} ms, analogs "
              f"moving at every simulator tick): {r['off']:,.0f} points/s without the historian, "
              f"{r['on']:,.0f} with it "
              f"(ratio {r['on'] / r['off']:.3f}, aim >= 0.95); worker CPU {r['cpu_off']:.1f} ms per 1,000 points "
              f"without, {r['cpu_on']:.1f} with (x{r['cpu_on'] / r['cpu_off']:.2f}); "
              f"{r['written']:,} rows written to Parquet for {r['scanned']:,.0f} points scanned (kept by exception: "
              f"a value is written when it changed, and once a heartbeat window)")


if __name__ == "__main__":
    main()
