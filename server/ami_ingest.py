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

When a feeder's AMI is late (no fresh interval pushed within ``ami_max_age_s``), its estimator gets
the historian's same-time profile instead, once per quarter hour: per load, the mean of the same
15-minute interval on the same weekday of the last ``PROFILE_WEEKS`` weeks (:func:`profile_loads_mw`),
as source ``PROFILE``. A feeder without meter history keeps the model's nominal loads.

Pseudo-measurements for the state estimator: after each pass, the newest complete interval of each
feeder in the files just ingested (:func:`latest_load_mw`: mean kW per meter present, times the
load's meters, so a late meter does not shrink its load) is pushed to that feeder's ``estimation``
application as source ``AMI`` (``set_pseudo_loads``), when the interval ended less than
``ami_max_age_s`` ago; older files (a backlog, a backfill) only fill the historian. The estimator
then scales these loads to the real measurements (load allocation) before its fit.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from graph_schema.aio import cancel_and_wait
from graph_schema.historian.ami import Interval, MeterInfo, Rejection, parse_intervals

log = logging.getLogger(__name__)

LEDGER = "ingested.txt"


@dataclass
class IngestResult:
    file: str
    rows_kept: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    duplicate: bool = False
    parts: list[str] = field(default_factory=list)
    # feeder id -> (end of its newest interval in the file, load id -> average MW over it)
    latest: dict[str, tuple[datetime, dict[str, float]]] = field(default_factory=dict)


def latest_load_mw(intervals: Sequence[Interval], meters: dict[str, MeterInfo]
                   ) -> dict[str, tuple[datetime, dict[str, float]]]:
    """Per feeder, the newest interval's average load per load id in MW: the mean energy of the
    meters that reported it, times the load's meter count, over the interval's length."""
    newest: dict[str, datetime] = {}
    for iv in intervals:
        if iv.kwh is not None and iv.end > iv.start and iv.end > newest.get(iv.feeder_id, iv.start):
            newest[iv.feeder_id] = iv.end
    sums: dict[tuple[str, str], list[float]] = {}
    for iv in intervals:
        if iv.kwh is None or newest.get(iv.feeder_id) != iv.end:
            continue
        hours = (iv.end - iv.start).total_seconds() / 3600.0
        sums.setdefault((iv.feeder_id, iv.load_id), []).append(iv.kwh / hours)  # kW
    meters_of: dict[tuple[str, str], int] = {}
    for m in meters.values():
        meters_of[(m.feeder_id, m.load_id)] = m.of
    out: dict[str, tuple[datetime, dict[str, float]]] = {}
    for (fid, load), kw in sorted(sums.items()):
        n = meters_of.get((fid, load), len(kw))
        out.setdefault(fid, (newest[fid], {}))[1][load] = sum(kw) / len(kw) * n / 1000.0
    return out


PROFILE_WEEKS = 4


def profile_loads_mw(root: str, feeder_id: str, load_ids: Sequence[str], at: datetime, *,
                     weeks: int = PROFILE_WEEKS) -> dict[str, float]:
    """The historian's same-time profile: per load, the mean power (MW) of the 15-minute interval
    holding ``at`` on the same weekday of each of the last ``weeks`` weeks that has meter data
    (one day's partition read per week). Loads with no such data are left out."""
    from datetime import timedelta

    from graph_schema.historian.query import HistorianReader

    at = at.astimezone(UTC)
    slot = at.replace(minute=at.minute - at.minute % 15, second=0, microsecond=0)
    reader = HistorianReader(root)
    seen: dict[str, list[float]] = {}
    for k in range(1, weeks + 1):
        start = slot - timedelta(weeks=k)
        for load_id, _, kwh in reader.load_energy(feeder_id, list(load_ids), start, start + timedelta(minutes=15)):
            seen.setdefault(load_id, []).append(kwh * 4.0 / 1000.0)  # kWh in 15 min -> MW
    return {ld: sum(v) / len(v) for ld, v in sorted(seen.items())}


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
        result.latest = latest_load_mw(good, meters)
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
                 tz: str = "UTC",
                 push_loads: Callable[..., Awaitable[Any]] | None = None,
                 ami_max_age_s: float = 1800.0,
                 feeder_loads: Callable[[], Awaitable[dict[str, list[str]]]] | None = None) -> None:
        self.data_dir = Path(data_dir)
        # (feeder id, load id -> MW, source): the estimator's pseudo-measurements (AMI, or PROFILE)
        self._push_loads = push_loads
        self._feeder_loads = feeder_loads  # async () -> feeder id -> its load ids (the live feeders)
        self._last_ami: dict[str, datetime] = {}  # feeder id -> when its last fresh AMI interval was pushed
        self._profile_slot: dict[str, datetime] = {}  # feeder id -> the quarter hour its profile was pushed for
        self.profiles_pushed = 0
        self.ami_max_age_s = ami_max_age_s
        self.pushed = 0
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
        await self._push(results)
        await self.push_profiles()
        return results

    async def push_profiles(self, now: datetime | None = None) -> int:
        """The historian's same-time profile to each live feeder whose AMI is late, once per quarter
        hour; returns how many feeders got one."""
        if self._push_loads is None or self._feeder_loads is None:
            return 0
        now = (now or datetime.now(UTC)).astimezone(UTC)
        slot = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
        pushed = 0
        for fid, loads in sorted((await self._feeder_loads()).items()):
            last = self._last_ami.get(fid)
            if (last is not None and (now - last).total_seconds() <= self.ami_max_age_s) \
                    or self._profile_slot.get(fid) == slot:
                continue
            self._profile_slot[fid] = slot
            try:
                profile = await asyncio.to_thread(profile_loads_mw, self.root, fid, loads, now)
                if profile:
                    await self._push_loads(fid, profile, "PROFILE")
                    pushed += 1
            except Exception as exc:
                log.warning("historian profile for feeder %s's estimator not given: %s", fid, exc)
        self.profiles_pushed += pushed
        return pushed

    async def _push(self, results: Sequence[IngestResult]) -> None:
        """The newest fresh interval of each feeder to its estimator (a feeder that cannot take it,
        e.g. its actor is restarting, gets the next file's)."""
        if self._push_loads is None:
            return
        newest: dict[str, tuple[datetime, dict[str, float]]] = {}
        for r in results:
            for fid, (end, loads) in r.latest.items():
                if fid not in newest or end > newest[fid][0]:
                    newest[fid] = (end, loads)
        now = datetime.now(UTC)
        for fid, (end, loads) in sorted(newest.items()):
            if (now - end).total_seconds() > self.ami_max_age_s:
                continue
            try:
                await self._push_loads(fid, loads, "AMI")
                self.pushed += 1
                self._last_ami[fid] = now
            except Exception as exc:
                log.warning("ami: the interval ending %s not given to feeder %s's estimator: %s", end.isoformat(),
                            fid, exc)

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

    async def push_loads(feeder_id: str, loads: dict[str, float], source: str = "AMI") -> None:
        if feeder_id in grid.fleet.feeder_ids:
            await grid.fleet.call_app(feeder_id, "estimation", "set_pseudo_loads", loads, None, source)

    async def feeder_loads() -> dict[str, list[str]]:
        out = {}
        for fid in list(grid.fleet.feeder_ids):
            with contextlib.suppress(Exception):  # a feeder being replaced: next quarter hour
                out[fid] = [ld.id for ld in (await grid.model(fid)).loads]
        return out

    ing = AmiIngester(settings.data_dir, settings.historian_root, meters, tz=settings.timezone,
                      push_loads=push_loads, feeder_loads=feeder_loads)
    ing.start()
    return ing
