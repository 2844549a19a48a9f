"""Ingesting smart-meter interval files from the drop folder into the historian (``kind=meter``).

Folders under the data directory: ``ami/inbox/`` (files arrive; names starting with ``.`` are
being written and are left alone), ``ami/done/`` (processed files), ``ami/rejects/`` (one
``<file>.rejects.txt`` per file with bad rows: one line per bad row with its row number, meter id
and what is wrong; each also logged as a warning). Good rows are kept whatever the bad ones.

Idempotent: a file's rows are written as parts named after the SHA-256 of its content
(``ami-<hash>.parquet`` in each feeder-day partition), so ingesting the same file again replaces
the same parts instead of adding rows; a file whose hash is already in ``ami/done/ingested.txt`` is
only moved. Last-gasp / restore flags become ``event`` rows (``METER_LAST_GASP`` /
``METER_RESTORE``) in the same parts' partitions.

:class:`AmiIngester` polls the inbox every ``poll_s`` seconds in a worker thread; the server's
runtime starts and stops it. It can also run a one-off backfill of an empty historian in the
background (``dms demo``), stopped with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graph_schema.aio import cancel_and_wait
from graph_schema.historian.ami import MeterInfo, Rejection, parse_intervals

log = logging.getLogger(__name__)

LEDGER = "ingested.txt"


@dataclass
class IngestResult:
    file: str
    rows_kept: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    duplicate: bool = False
    parts: list[str] = field(default_factory=list)


def ami_dirs(data_dir: str | Path) -> tuple[Path, Path, Path]:
    base = Path(data_dir) / "ami"
    return base / "inbox", base / "done", base / "rejects"


def ingest_file(path: Path, root: str, meters: dict[str, MeterInfo], done_dir: Path, rejects_dir: Path
                ) -> IngestResult:
    """Ingest one interval file (blocking) and move it to ``done_dir``."""
    data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()[:24]
    result = IngestResult(path.name)
    done_dir.mkdir(parents=True, exist_ok=True)
    ledger = done_dir / LEDGER
    seen = set(ledger.read_text().split()) if ledger.exists() else set()
    if digest in seen:
        result.duplicate = True
        log.info("ami: %s was ingested before (same content); moved to done without writing", path.name)
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            good, bad = [], [Rejection(1, "", f"not UTF-8 text ({exc.reason})")]
        else:
            good, bad = parse_intervals(text, meters)
        result.rejected = bad
        if bad:
            rejects_dir.mkdir(parents=True, exist_ok=True)
            (rejects_dir / f"{path.name}.rejects.txt").write_text("".join(f"{r.line()}\n" for r in bad))
            for r in bad:
                log.warning("ami: %s %s", path.name, r.line())
        by_feeder: dict[str, list[tuple[str, tuple[Any, ...]]]] = {}
        for iv in good:
            rows = by_feeder.setdefault(iv.feeder_id, [])
            if iv.kwh is not None:
                rows.append(("meter", (iv.meter_id, iv.load_id, iv.start, iv.end, iv.kwh)))
            for flag, kind in (("LG", "METER_LAST_GASP"), ("RS", "METER_RESTORE")):
                if flag in iv.flags:
                    rows.append(("event", (iv.end, iv.row, kind, iv.meter_id, "WARNING" if flag == "LG" else "INFO",
                                           f"meter {iv.meter_id} {'lost power' if flag == 'LG' else 'power restored'} "
                                           f"in {iv.start.isoformat()} .. {iv.end.isoformat()}")))
        for fid, rows in sorted(by_feeder.items()):
            result.parts += write_named_parts(root, fid, rows, f"ami-{digest}")
        result.rows_kept = sum(1 for iv in good if iv.kwh is not None)
        with ledger.open("a") as fh:
            fh.write(f"{digest} {path.name}\n")
    os.replace(path, done_dir / path.name)
    return result


def write_named_parts(root: str, feeder_id: str, rows: list[tuple[str, tuple[Any, ...]]], name: str) -> list[str]:
    """One part ``<name>.parquet`` per (kind, UTC day) of ``rows`` (blocking). Writing the same rows
    under the same name again replaces the parts (and a part a compaction already merged stays
    ignored by readers): what makes a load idempotent."""
    from graph_schema.historian import COLUMNS, PARTITION_TIME, partition_dir, utc
    from graph_schema.historian.writer import open_root, to_table, write_table  # pyarrow

    fs, base = open_root(root)
    groups: dict[tuple[str, Any], list[tuple[Any, ...]]] = {}
    for kind, row in rows:
        t = row[[c for c, _ in COLUMNS[kind]].index(PARTITION_TIME[kind])]  # type: ignore[index]
        groups.setdefault((kind, utc(t).date()), []).append(row)
    out = []
    for (kind, day), part_rows in sorted(groups.items()):
        path = f"{partition_dir(base, kind, feeder_id, day)}/{name}.parquet"  # type: ignore[arg-type]
        write_table(fs, path, to_table(kind, part_rows))  # type: ignore[arg-type]
        out.append(path)
    return out


def ingest_inbox(data_dir: str | Path, root: str, meters: dict[str, MeterInfo]) -> list[IngestResult]:
    """Ingest every finished file in the inbox, oldest name first (blocking)."""
    inbox, done, rejects = ami_dirs(data_dir)
    if not inbox.is_dir():
        return []
    out = []
    for path in sorted(inbox.iterdir()):
        if not path.is_file() or path.name.startswith((".", "_")):
            continue
        try:
            out.append(ingest_file(path, root, meters, done, rejects))
        except Exception:  # one bad file must not stop the others (it stays in the inbox)
            log.exception("ami: ingesting %s failed; left in the inbox", path)
    return out


class AmiIngester:
    """Polls ``<data_dir>/ami/inbox`` and writes what arrives into the historian."""

    def __init__(self, data_dir: str | Path, root: str, meters: Callable[[], Any], *, poll_s: float = 30.0,
                 tz: str = "UTC") -> None:
        self.data_dir = Path(data_dir)
        self.tz = tz
        self.root = root
        self._meters = meters  # async () -> dict[str, MeterInfo] (the feeders' models may change)
        self.poll_s = poll_s
        self._task: asyncio.Task[None] | None = None
        self._bg: asyncio.Task[Any] | None = None
        self._stop = threading.Event()
        self.files = 0

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="ami-ingest")

    async def run_once(self) -> list[IngestResult]:
        meters = await self._meters()
        results = await asyncio.to_thread(ingest_inbox, self.data_dir, self.root, meters)
        self.files += len(results)
        return results

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("ami: ingest pass failed")
            await asyncio.sleep(self.poll_s)

    def backfill_if_empty(self, feeders: Iterable[Any], *, days: int = 60) -> None:
        """Fill an empty historian with ``days`` of past data, in the background (``dms demo``)."""
        from graph_schema.historian.backfill import backfill, historian_is_empty

        feeders = list(feeders)

        def work() -> None:
            if not historian_is_empty(self.root):
                log.info("historian: not empty; no backfill")
                return
            stats = backfill(self.root, feeders, days=days, tz=self.tz, stop=self._stop)
            log.info("historian: backfilled %d days (%d rows in %d files)", days, stats.rows, stats.files)

        self._bg = asyncio.create_task(asyncio.to_thread(work), name="historian-backfill")

    async def wait_backfill(self) -> None:
        """Until the background backfill (if any) has finished."""
        if self._bg is not None:
            await asyncio.shield(self._bg)

    async def stop(self) -> None:
        self._stop.set()
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None
        if self._bg is not None:
            with contextlib.suppress(Exception):
                await self._bg  # the thread checks the stop flag between feeder-days (rerun
            # `dms history backfill` to complete an interrupted one: it rewrites the same parts)
            self._bg = None


def start_ami_ingest(settings: Any, grid: Any) -> AmiIngester:
    """The runtime's ingester: meters of every feeder in the store."""
    from graph_schema.historian.ami import meter_map

    async def meters() -> dict[str, MeterInfo]:
        models = [await grid.model(f.id) for f in await grid.list_feeders()]
        return meter_map(models)

    ing = AmiIngester(settings.data_dir, settings.historian_root, meters, tz=settings.timezone)
    ing.start()
    return ing
