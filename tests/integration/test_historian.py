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


async def test_history_bad_input(runtime: Any, gql: Any) -> None:
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
    r = await gql(HISTORY, {"p": [point], "s": now.isoformat(), "e": now.isoformat()}, role=None)
    assert r["errors"][0]["extensions"]["code"] in {"UNAUTHENTICATED", "FORBIDDEN"}
