"""The historian through the real stack: the field simulator's telemetry reaches the feeder actor's
historian application, is written to Parquet files under the data directory, and comes back over
HTTP GraphQL (``history``, ``feederHistory``) as buckets read with DuckDB and merged with the
actor's unflushed rows. Waits are for conditions, bounded."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from tests.integration.conftest import bound_field

F = "case33bw"
HISTORY = """query($p: [ID!]!, $s: DateTime!, $e: DateTime!, $b: Int) {
  history(pointIds: $p, start: $s, end: $e, bucketS: $b) {
    pointId feederId buckets { start end avg min max last count goodFraction } } }"""
FEEDER_HISTORY = """query($f: ID!, $s: DateTime!, $e: DateTime!, $b: Int) {
  feederHistory(feederId: $f, start: $s, end: $e, bucketS: $b) {
    start lossesMw minVmPu maxVmPu maxLineLoadingPercent pMw customersOut count } }"""


async def _until(cond: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = await cond()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.2)


async def test_field_values_reach_parquet_and_history_over_http(runtime: Any, field_sim: Any, gql: Any) -> None:
    root = Path(runtime.settings.historian_root)
    start = datetime.now(UTC) - timedelta(minutes=5)
    async with bound_field(runtime, field_sim, (F,)):
        async def analogs() -> list[str]:
            ms = await runtime.grid.measurements(F)
            return sorted(m["point_id"] for m in ms if m["quantity"] == "VM_PU" and m["value"] is not None)[:3]

        points = await _until(analogs)
        async def buffered() -> bool:
            c = await runtime.fleet.call_app(F, "historian", "counters")
            return bool(c["buffered"] or c["written_rows"])

        await _until(buffered)
        written = await runtime.fleet.call_app(F, "historian", "flush")
        parts = sorted((root / "v1" / "kind=measurement" / f"feeder={F}").glob("date=*/*.parquet"))
        assert parts, f"no measurement parts under {root}"
        assert written > 0 or (await runtime.fleet.call_app(F, "historian", "counters"))["written_rows"] > 0
        assert list((root / "v1" / "kind=solve" / f"feeder={F}").glob("date=*/*.parquet"))

        end = datetime.now(UTC) + timedelta(minutes=1)
        variables = {"p": points, "s": start.isoformat(), "e": end.isoformat(), "b": 60}
        r = await gql(HISTORY, variables)
        assert "errors" not in r, r
        series = {s["pointId"]: s for s in r["data"]["history"]}
        assert set(series) == set(points) and all(s["feederId"] == F for s in series.values())
        total = sum(b["count"] for s in series.values() for b in s["buckets"])
        assert total > 0
        for s in series.values():
            for b in s["buckets"]:
                assert b["count"] >= 1 and 0.0 <= b["goodFraction"] <= 1.0
                assert b["min"] is None or b["min"] <= b["avg"] <= b["max"]

        # the newest values come from the actor's buffer (not flushed yet) and still count
        field_sim.load_scale(F, 1.3)

        async def grew() -> bool:
            again = await gql(HISTORY, variables)
            return sum(b["count"] for s in again["data"]["history"] for b in s["buckets"]) > total

        await _until(grew)

        raw = await gql(HISTORY, {**variables, "b": None})
        assert all(b["count"] == 1 for s in raw["data"]["history"] for b in s["buckets"])

        fh = await gql(FEEDER_HISTORY, {"f": F, "s": start.isoformat(), "e": end.isoformat(), "b": 60})
        assert "errors" not in fh, fh
        rows = fh["data"]["feederHistory"]
        assert rows and all(b["count"] >= 1 and b["minVmPu"] <= b["maxVmPu"] for b in rows)
        assert any(b["pMw"] is not None and b["pMw"] > 0 for b in rows)


async def test_history_bad_input(runtime: Any, gql: Any, mint: Any) -> None:
    now = datetime.now(UTC)
    point = f"{F}/bus18/VM_PU"
    cases = [
        ({"p": [point], "s": now.isoformat(), "e": now.isoformat(), "b": 60}, "not before"),
        ({"p": ["no-such-point"], "s": (now - timedelta(hours=1)).isoformat(), "e": now.isoformat(), "b": 60},
         "unknown point ids"),
        ({"p": [point], "s": (now - timedelta(days=30)).isoformat(), "e": now.isoformat(), "b": 1}, "over the limit"),
    ]
    for variables, message in cases:
        r = await gql(HISTORY, variables)
        assert r["errors"][0]["extensions"]["code"] == "BAD_INPUT", r
        assert message in r["errors"][0]["message"]
    # a token scoped to another feeder does not learn that the point exists
    scoped = mint("VIEWER", feeders=["cigre-mv"])
    hour = {"s": (now - timedelta(hours=1)).isoformat(), "e": now.isoformat(), "b": 60}
    r = await gql(HISTORY, {"p": [point], **hour}, token=scoped)
    assert r["errors"][0]["extensions"]["code"] == "BAD_INPUT" and "unknown point ids" in r["errors"][0]["message"]
    r = await gql(FEEDER_HISTORY, {"f": F, **hour}, token=scoped)
    assert r["errors"][0]["extensions"]["code"] == "FORBIDDEN", r
    r = await gql(HISTORY, {"p": [point], "s": now.isoformat(), "e": now.isoformat()}, role=None)
    assert r["errors"][0]["extensions"]["code"] in {"UNAUTHENTICATED", "FORBIDDEN"}


async def test_s3_round_trip_on_loopback(monkeypatch: Any) -> None:
    """The object-store path against a real S3 API (moto in server mode on 127.0.0.1): whole-object
    parts, pruned reads, compaction, and a sink that is down (the flush fails fast, rows stay)."""
    import boto3
    from moto.server import ThreadedMotoServer

    from actors.apps.historian_app import HistorianApp
    from graph_schema.historian.query import HistorianReader
    from graph_schema.historian.writer import HistorianWriter, compact_day
    from tests.integration.conftest import free_port

    for k, v in {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test",
                 "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    port = free_port()
    srv = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    srv.start()
    try:
        await asyncio.to_thread(lambda: boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}")
                                .create_bucket(Bucket="hist"))
        uri = f"s3://hist/dms?endpoint_override=127.0.0.1:{port}&scheme=http&region=us-east-1"
        t0 = datetime(2026, 3, 1, 12, tzinfo=UTC)

        def write_days() -> None:
            for day in (0, 0, 1):  # two parts on day one, one on day two
                w = HistorianWriter(uri, "f1")
                for i in range(10):
                    w.append("measurement", ("p", "b", "VM_PU", float(i), "GOOD", None,
                                             t0 + timedelta(days=day, minutes=i)))
                w.write(w.take())

        await asyncio.to_thread(write_days)
        reader = HistorianReader(uri)
        h = await asyncio.to_thread(reader.history, ["p"], t0, t0 + timedelta(hours=1), 600)
        assert [(b.count, b.avg) for b in h["p"]] == [(20, 4.5)]
        assert len(reader.opened) == 2 and all("date=2026-03-01" in f for f in reader.opened)
        assert await asyncio.to_thread(compact_day, uri, "measurement", "f1", t0.date()) is True
        assert await asyncio.to_thread(compact_day, uri, "measurement", "f1", t0.date()) is False
        reader = HistorianReader(uri)
        h2 = await asyncio.to_thread(reader.history, ["p"], t0, t0 + timedelta(hours=1), 600)
        assert h2 == h and [f.rsplit("/", 1)[1] for f in reader.opened] == ["compacted.parquet"]
    finally:
        await asyncio.to_thread(srv.stop)

    # the endpoint is gone now: a flush fails within seconds, the rows stay buffered (bounded)
    from dataclasses import dataclass

    from actors.applications import TelemetryChange
    from graph_schema.model import Feeder

    @dataclass
    class PV:
        point_id: str
        value: float
        quality: str
        source_ts: Any
        received_ts: datetime

    class Ports:
        feeder_id, app_name = "f1", "historian"
        vals: dict[str, PV] = {}

        def model(self) -> Feeder:
            return Feeder(id="f1", name="f1")

        def state(self) -> Any:
            raise RuntimeError

        def values(self) -> dict[str, PV]:
            return dict(self.vals)

        def spawn(self, coro: Any, name: str = "") -> Any:
            coro.close()  # no background flusher here: the test flushes itself

        def now(self) -> datetime:
            return datetime.now(UTC)

    ports = Ports()
    app = HistorianApp(uri + "&connect_timeout_s=1&request_timeout_s=1", flush_s=3600, max_rows=2)
    await app.start(ports)  # type: ignore[arg-type]
    for i in range(3):
        ports.vals["f1/b/VM_PU"] = PV("f1/b/VM_PU", float(i), "GOOD", None, t0 + timedelta(seconds=i))
        pv = ports.vals["f1/b/VM_PU"]
        app.on_telemetry(TelemetryChange(device_id="rtu", point_ids=(pv.point_id,), values=(pv,)))
    started = time.monotonic()
    try:
        await app.flush()
        raise AssertionError("the flush to a stopped S3 endpoint succeeded")
    except OSError:
        pass
    assert time.monotonic() - started < 30
    c = app.counters()
    assert c["buffered"] == 2 and c["dropped"] == 1 and c["failed_flushes"] == 1

