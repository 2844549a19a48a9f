"""The historian as a hosted application: the feeder's measurements, solves and events, kept as time series.

Telemetry, re-solves and the feeder's published events (``on_events``; MEASUREMENT events left
out) reach it synchronously; it only appends to bounded buffers (no disk I/O on the scan path;
a telemetry batch is kept as column tuples, no Python code runs per value there). Values are kept by
exception when the writing thread turns batches into columns: a value is kept when it or its
quality changed, or once per ``heartbeat_s`` window while it stays the same. Every
``historian_flush_s`` seconds, or as soon as ``flush_rows`` rows are waiting, a background task
hands the buffers to a worker thread that writes one Parquet part per partition
(:mod:`graph_schema.historian.writer`), so the scan never waits on the disk or the object store.
A crash loses at most the unflushed buffers; a write that fails (sink down) puts its rows back in
front of the buffers, which drop their oldest rows beyond their bound and count them.

``recent`` serves the rows not written yet, so a trend reaches "now" without reading tiny files.
pyarrow is imported when the application starts with a root; DuckDB is never imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from actors.applications import FeederPorts, TelemetryChange
from actors.arbiter import Priority
from actors.cores.events import EventKind

log = logging.getLogger(__name__)
HISTORIAN = "historian"


class HistorianApp:
    name = HISTORIAN
    priority = Priority.OPTIMISER  # it never operates a device
    api = frozenset({"recent", "recent_solves", "flush", "counters", "maintain"})
    read_only = frozenset({"recent", "recent_solves", "counters"})

    def __init__(self, root: str | None = None, flush_s: float = 10.0, *, flush_rows: int = 50_000,
                 max_rows: int = 500_000, heartbeat_s: float = 60.0, retention_days: int | None = None,
                 maintain_every_s: float = 3600.0) -> None:
        self._root = root
        self._retention_days = retention_days
        self._maintain_every_s = maintain_every_s
        self.compacted_days = 0
        self.dropped_days = 0
        self._heartbeat_s = heartbeat_s
        self._telemetry: Any = None  # graph_schema.historian.telemetry.TelemetryBuffer
        self._in_flight_values: list[Any] = []  # the telemetry batches being written
        self._flush_s = flush_s
        self._flush_rows = flush_rows
        self._max_rows = max_rows
        self._ports: FeederPorts | None = None
        self._writer: Any = None  # graph_schema.historian.writer.HistorianWriter
        self._points: dict[str, tuple[str, str]] = {}  # point id -> (element id, quantity)
        self._customers: dict[str, int] = {}  # bus id -> customers of its loads
        self._full = asyncio.Event()
        self._flush_lock = asyncio.Lock()
        self._in_flight: list[tuple[str, tuple[Any, ...]]] = []  # the batch being written
        self.failed_flushes = 0
        self.last_error: str | None = None

    @classmethod
    def from_options(cls, opts: Any) -> HistorianApp:
        return cls(getattr(opts, "historian_uri", None), getattr(opts, "historian_flush_s", 10.0),
                   retention_days=getattr(opts, "historian_retention_days", None))

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, ports: FeederPorts) -> None:
        self._ports = ports
        model = ports.model()
        self._points = {p.id: (p.element_id, str(p.quantity)) for p in model.measurement_points}
        for ld in model.loads:
            self._customers[ld.bus_id] = self._customers.get(ld.bus_id, 0) + ld.customers
        from graph_schema.historian.telemetry import TelemetryBuffer  # pyarrow: only once the app runs
        from graph_schema.historian.writer import HistorianWriter

        # without a root the rows stay in memory only (a short window for ``recent``)
        bound = self._max_rows if self._root else 10_000
        self._writer = HistorianWriter(self._root or ".", ports.feeder_id, max_rows=bound)
        self._telemetry = TelemetryBuffer(self._points, heartbeat_s=self._heartbeat_s, max_values=bound)
        if self._root:
            ports.spawn(self._flusher(), "historian flush")
            ports.spawn(self._maintainer(), "historian maintenance")
        with contextlib.suppress(Exception):  # the state solved before the app started
            self.on_state(ports.state())

    async def close(self) -> None:
        if self._writer is not None and self._root:
            try:
                await asyncio.wait_for(self.flush(), 10.0)
            except Exception as exc:
                log.warning("feeder %s: historian's last flush failed (%s); %d rows lost",
                            self._ports.feeder_id if self._ports else "?", exc, len(self._writer))

    # -- host callbacks (cheap: buffer appends only) ---------------------------------------------

    def on_telemetry(self, change: TelemetryChange) -> None:
        """Keep the batch as five column tuples (C-level maps, no Python code per value; the
        writing thread makes the table and keeps values by exception; see
        :mod:`graph_schema.historian.telemetry` for why the ``PointValue`` objects are not kept)."""
        buf = self._telemetry
        if buf is None:
            return
        buf.add(change.values)
        if len(buf) >= self._flush_rows:
            self._full.set()

    def on_state(self, state: Any) -> None:
        if self._writer is None or self._ports is None or state is None:
            return
        pf = state.power_flow
        out = sum(self._customers.get(b, 0) for b in state.topology.deenergized_bus_ids)
        self._writer.append("solve", (self._ports.now(), pf.losses_mw, pf.min_vm_pu, pf.min_vm_bus_id,
                                      pf.max_vm_pu, pf.max_vm_bus_id, pf.max_line_loading_percent,
                                      pf.p_source_mw, out, bool(pf.converged)))

    def on_events(self, events: Sequence[Any]) -> None:
        """The feeder's published events (``actors.cores.events.Event``, numbered) as ``event`` rows;
        MEASUREMENT events are left out (the values are already ``measurement`` rows)."""
        writer = self._writer
        if writer is None:
            return
        for ev in events:
            if ev.kind == EventKind.MEASUREMENT:
                continue
            writer.append("event", (ev.at, ev.seq, str(ev.kind), ev.element_id, str(ev.severity), ev.message))
        if len(writer) >= self._flush_rows:
            self._full.set()

    def status(self) -> Mapping[str, Any]:
        return self.counters()

    # -- flushing --------------------------------------------------------------------------------

    async def _flusher(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._full.wait(), self._flush_s)
            self._full.clear()
            try:
                await self.flush()
            except Exception:
                pass  # counted and logged in flush; the rows wait in the buffer for the next try

    async def _maintainer(self) -> None:
        while True:
            try:
                await self.maintain()
            except Exception as exc:  # the sink may be down: try again next time
                log.warning("feeder %s: historian maintenance failed: %s", self._ports.feeder_id if self._ports
                            else "?", exc)
            await asyncio.sleep(self._maintain_every_s)

    async def maintain(self) -> dict[str, int]:
        """Compact this feeder's closed (UTC) days and drop its days beyond the retention, in a worker
        thread. Each actor looks after its own partitions, so the work scales with the actors."""
        if not self._root or self._ports is None:
            return {"compacted_days": 0, "dropped_days": 0}
        from graph_schema.historian.writer import apply_retention, compact

        root, fid, today = self._root, self._ports.feeder_id, self._ports.now().date()
        dropped = 0
        if self._retention_days:
            dropped = await asyncio.to_thread(apply_retention, root, keep_days=self._retention_days, today=today,
                                              feeder_id=fid)
        compacted = await asyncio.to_thread(compact, root, before=today, feeder_id=fid)
        self.compacted_days += compacted
        self.dropped_days += dropped
        return {"compacted_days": compacted, "dropped_days": dropped}

    async def flush(self) -> int:
        """Write the buffered rows now (in a worker thread). Returns the rows written."""
        writer, buf = self._writer, self._telemetry
        if writer is None or buf is None or not self._root:
            return 0
        async with self._flush_lock:
            batch, values = writer.take(), buf.take()
            if not batch and not values:
                return 0
            self._in_flight, self._in_flight_values = batch, values
            done = {"values": False}

            def write() -> int:
                table, state = buf.to_table(values)
                writer.write_arrow("measurement", table)
                buf.state.update(state)
                done["values"] = True
                writer.write(batch)
                return table.num_rows + len(batch)

            try:
                return await asyncio.to_thread(write)
            except Exception as exc:
                writer.requeue(batch)
                if not done["values"]:
                    buf.requeue(values)
                self.failed_flushes += 1
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.warning("feeder %s: historian write failed (%s); %d rows buffered, %d dropped so far",
                            writer.feeder_id, self.last_error, len(writer) + len(buf), writer.dropped + buf.dropped)
                raise
            finally:
                self._in_flight, self._in_flight_values = [], []

    # -- API -------------------------------------------------------------------------------------

    def _unflushed(self) -> list[tuple[str, tuple[Any, ...]]]:
        if self._writer is None:
            return []
        return [*self._in_flight, *self._writer.rows()]

    def recent(self, point_ids: Sequence[str], since: datetime | None = None) -> dict[str, Any]:
        """The measurement rows not written yet for ``point_ids`` (received at or after ``since``):
        ``{"rows": [(point_id, received_ts, value, quality)], "oldest": received_ts of the oldest
        unflushed measurement row or None}``. Everything received before ``oldest`` is in the data set
        (or lost), so a caller reads the files for ``received_ts < oldest`` and merges these rows."""
        buf = self._telemetry
        if buf is None:
            return {"rows": [], "oldest": None}
        table, _ = buf.to_table([*self._in_flight_values, *buf.batches()])
        if table.num_rows == 0:
            return {"rows": [], "oldest": None}
        import pyarrow as pa
        import pyarrow.compute as pc

        oldest = pc.min(table["received_ts"]).as_py()
        mask = pc.is_in(table["point_id"], value_set=pa.array(list(point_ids), pa.string()))
        if since is not None:
            mask = pc.and_(mask, pc.greater_equal(table["received_ts"], pa.scalar(since, table["received_ts"].type)))
        wanted = table.filter(mask).sort_by([("point_id", "ascending"), ("received_ts", "ascending")])
        rows = [(p, ts, None if v is None or math.isnan(v) else v, q) for p, ts, v, q in zip(
            wanted["point_id"].to_pylist(), wanted["received_ts"].to_pylist(), wanted["value"].to_pylist(),
            wanted["quality"].to_pylist(), strict=True)]
        return {"rows": rows, "oldest": oldest}

    def recent_solves(self, since: datetime | None = None) -> dict[str, Any]:
        """The solve rows not written yet (tuples in the ``solve`` column order) and the oldest one's time."""
        rows = [row for kind, row in self._unflushed() if kind == "solve" and (since is None or row[0] >= since)]
        oldest = min((r[0] for k, r in self._unflushed() if k == "solve"), default=None)
        return {"rows": rows, "oldest": oldest}

    def counters(self) -> dict[str, Any]:
        w, buf = self._writer, self._telemetry
        if w is None or buf is None:
            return {"root": self._root, "buffered": 0, "dropped": 0, "written_rows": 0, "written_files": 0,
                    "write_cpu_s": 0.0, "failed_flushes": self.failed_flushes, "last_error": self.last_error,
                    "compacted_days": self.compacted_days, "dropped_days": self.dropped_days}
        return {"root": self._root, "buffered": len(w) + len(buf), "dropped": w.dropped + buf.dropped,
                "written_rows": w.written_rows, "written_files": w.written_files, "write_cpu_s": w.write_cpu_s,
                "failed_flushes": self.failed_flushes, "last_error": self.last_error,
                "compacted_days": self.compacted_days, "dropped_days": self.dropped_days}
