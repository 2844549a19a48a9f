"""Reports benchmark: a year's IEEE 1366 indices for 100 feeders over five years of imported history,
and a full annual reliability PDF.

Run: ``.venv/bin/python bench/reports.py [--feeders 100] [--repeats 5] [--store]``.

It prints:
1. machine info;
2. the generated history: six years (five of history for the major-event-day threshold plus the
   reported year) of interruptions per feeder as the utility's CSV (sustained ones, some restored
   in steps, momentary recloser operations, storm days that become major event days);
3. ``dms outages import`` validation of that CSV (``parse_outages_csv``, every row checked);
4. the year's indices: the system with and without MEDs (T_MED from the five years before) plus
   every feeder's indices with and without MEDs: median of ``--repeats`` (aim < 5 s), and a
   baseline measured in the same run on the same records: one pass summing customer interruptions
   and customer minutes (``actors.cores.outages.reliability_counts``'s arithmetic), the least any
   index computation must do; the ratio says what MEDs, steps, MAIFIe events and CEMIn cost;
5. the full annual RELIABILITY report (all tables: per feeder, monthly and yearly trends) and its
   PDF (charts included), XLSX and CSV: median times and sizes;
6. with ``--store``: the same history imported into an embedded ArcadeDB (one transaction) and
   the system indices computed from the store (``ReportData.reliability``): the first call (all
   records read and parsed) and the median of later ones (the parsed history is kept while the
   store's version of those records is unchanged).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.cores.reliability import compute_indices
from server.reports.builders import reliability_doc
from server.reports.data import analyse, served_in_period
from server.reports.imports import parse_outages_csv
from server.reports.render import to_csv, to_pdf, to_xlsx

YEAR = 2024


def machine() -> str:
    import psutil

    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
            f"(affinity {len(os.sched_getaffinity(0))}), {psutil.virtual_memory().total / 2**30:.0f} GiB, "
            f"Python {platform.python_version()}")


def history_csv(feeders: int, seed: int = 1) -> tuple[str, dict[str, int]]:
    rnd = random.Random(seed)
    served = {f"F{k:03d}": rnd.randint(800, 4000) for k in range(feeders)}
    storms = {datetime(y, m, d, tzinfo=UTC) for y in range(YEAR - 5, YEAR + 1)
              for m, d in ((rnd.randint(1, 12), rnd.randint(1, 28)), (rnd.randint(1, 12), rnd.randint(1, 28)))}
    lines = ["id,feeder_id,start,end,customers_interrupted,cause,momentary,steps"]
    n = 0
    t0 = datetime(YEAR - 5, 1, 1, tzinfo=UTC)
    days = (datetime(YEAR + 1, 1, 1, tzinfo=UTC) - t0).days
    for fid, cust in served.items():
        for _ in range(15 * 6):  # sustained, ~15 a year
            n += 1
            start = t0 + timedelta(days=rnd.randrange(days), minutes=rnd.randrange(1440))
            dur = rnd.lognormvariate(4.3, 0.8) + 6
            ci = rnd.randint(20, max(21, cust // 4))
            end = start + timedelta(minutes=dur)
            steps = ""
            if rnd.random() < 0.4:
                at = start + timedelta(minutes=dur * rnd.uniform(0.1, 0.6))
                steps = f"{at.isoformat()}:{ci // 2}"
            lines.append(f"r{n},{fid},{start.isoformat()},{end.isoformat()},{ci},FAULT,false,{steps}")
        for _ in range(10 * 6):  # momentary, ~10 a year
            n += 1
            start = t0 + timedelta(days=rnd.randrange(days), minutes=rnd.randrange(1440))
            lines.append(f"r{n},{fid},{start.isoformat()},{(start + timedelta(seconds=20)).isoformat()},"
                         f"{rnd.randint(50, cust)},MOMENTARY,true,")
        for storm in storms:  # storm days: many feeders out for hours
            if rnd.random() < 0.5:
                n += 1
                start = storm + timedelta(hours=rnd.randint(6, 18), minutes=rnd.randrange(60))
                end = start + timedelta(hours=rnd.uniform(3, 30))
                lines.append(f"r{n},{fid},{start.isoformat()},{end.isoformat()},{rnd.randint(cust // 4, cust // 2)},"
                             f"WEATHER,false,")
    return "\n".join(lines) + "\n", served


def median_time(fn, repeats: int) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--feeders", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tz", default="America/Chicago")
    ap.add_argument("--store", action="store_true", help="also import into an embedded ArcadeDB and compute from it")
    args = ap.parse_args()
    tz = ZoneInfo(args.tz)
    print(f"machine: {machine()}")
    text, served = history_csv(args.feeders)
    print(f"history: {args.feeders} feeders, {len(text.splitlines()) - 1} interruption rows {YEAR - 5}-{YEAR} "
          f"({len(text) / 1e6:.1f} MB CSV), {sum(served.values())} customers, days in {args.tz}")
    now = datetime(YEAR + 1, 2, 1, tzinfo=UTC)
    t_parse, records = median_time(lambda: parse_outages_csv(text, served, now=now), max(1, args.repeats // 2))
    print(f"import validation (every row checked): {t_parse:.2f} s")
    start, end = datetime(YEAR, 1, 1, tzinfo=tz), datetime(YEAR + 1, 1, 1, tzinfo=tz)

    def year_indices() -> object:
        rel = analyse(records, served, {}, {}, "SYSTEM", None, start, end, tz=tz, tz_name=args.tz)
        meds = [d for d, _ in rel.med.major_event_days]
        by_feeder: dict[str, list] = {}
        for r in records:
            by_feeder.setdefault(r.feeder_id, []).append(r)
        n_t = served_in_period(served, {}, start, end, tz)
        for fid in served:
            compute_indices(by_feeder.get(fid, []), {fid: n_t[fid]}, start, end, tz=tz)
            compute_indices(by_feeder.get(fid, []), {fid: n_t[fid]}, start, end, tz=tz, exclude_days=meds)
        return rel

    def baseline() -> float:
        ci = cmi = 0.0
        for r in records:
            if start <= r.start < end and not r.momentary:
                ci += r.customers_interrupted
                cmi += sum(s.customers * s.minutes for s in r.segments)
        return cmi / sum(served.values())

    t_base, _ = median_time(baseline, args.repeats)
    t_year, rel = median_time(year_indices, args.repeats)
    med = rel.med  # type: ignore[attr-defined]
    ex = rel.indices_excluding_med  # type: ignore[attr-defined]
    print(f"year's indices, system + {args.feeders} feeders, with and without MEDs: median {t_year:.3f} s "
          f"(aim < 5 s); baseline one-pass CI/CMI sum {t_base * 1000:.1f} ms; ratio {t_year / t_base:.0f}x")
    print(f"  T_MED {med.t_med_min:.2f} min from {med.days_used} non-zero days (alpha {med.alpha:.3f}, "
          f"beta {med.beta:.3f}, {med.std}); {len(med.major_event_days)} MEDs in {YEAR}; SAIDI excl. MED "
          f"{ex.saidi_min:.1f} min, SAIFI {ex.saifi:.3f}, MAIFIe {ex.maifi_e:.3f}")
    gen = datetime(YEAR + 1, 1, 2, tzinfo=UTC)
    t_doc, doc = median_time(lambda: reliability_doc(records, served, {}, {}, start, end, tz=tz, tz_name=args.tz,
                                                    threshold_min=5.0, generated_at=gen), args.repeats)
    t_pdf, pdf = median_time(lambda: to_pdf(doc), max(1, args.repeats // 2))  # type: ignore[arg-type]
    t_xlsx, xlsx = median_time(lambda: to_xlsx(doc), max(1, args.repeats // 2))  # type: ignore[arg-type]
    t_csv, csvb = median_time(lambda: to_csv(doc), args.repeats)  # type: ignore[arg-type]
    rows = sum(len(t.rows) for t in doc.tables)  # type: ignore[attr-defined]
    print(f"full annual reliability report ({rows} table rows): build {t_doc:.2f} s, PDF {t_pdf:.2f} s "
          f"({len(pdf) / 1e3:.0f} kB), XLSX {t_xlsx:.2f} s ({len(xlsx) / 1e3:.0f} kB), "  # type: ignore[arg-type]
          f"CSV {t_csv * 1000:.0f} ms ({len(csvb) / 1e3:.0f} kB); total with PDF {t_doc + t_pdf:.2f} s")  # type: ignore[arg-type]
    if args.store:
        asyncio.run(_store_path(text, served, start, end, args.tz, now, args.repeats))


async def _store_path(text: str, served: dict[str, int], start: datetime, end: datetime, tz: str, now: datetime,
                      repeats: int) -> None:
    from graph_schema.arcadedb import EmbeddedArcadeDB
    from graph_schema.model import Bus, Feeder, Load, Source
    from graph_schema.store import GraphStore
    from server.reports.data import ReportData

    with tempfile.TemporaryDirectory() as tmp:
        db = EmbeddedArcadeDB(Path(tmp), heap_mb=1024)
        await db.start()
        try:
            store = await GraphStore.connect(db.uri, db.user, db.password, db.database)
            await store.ensure_schema()
            for fid, cust in served.items():
                await store.save_feeder(Feeder(fid, fid, sources=(Source("s", "b0"),),
                                               buses=(Bus("b0", 20.0),), loads=(Load("l0", "b0", 1.0, 0.2, cust),)))
            data = ReportData(store, tz=tz)
            t = time.perf_counter()
            result = await data.import_outages(text, now=now)
            t_imp = time.perf_counter() - t
            t = time.perf_counter()
            await ReportData(store, tz=tz).reliability("SYSTEM", None, start, end, now=now)
            cold = time.perf_counter() - t
            times = []
            for _ in range(repeats):
                t = time.perf_counter()
                await data.reliability("SYSTEM", None, start, end, now=now)
                times.append(time.perf_counter() - t)
            t = time.perf_counter()
            rows = await store.list_records("Interruption", limit=10_000_000)
            t_read = time.perf_counter() - t
            print(f"store path (embedded ArcadeDB): import {result.added} rows in one transaction {t_imp:.1f} s; "
                  f"system indices from the store: first call {cold:.2f} s (reading the {len(rows)} records alone "
                  f"{t_read:.2f} s), then median {statistics.median(times):.2f} s (parsed history kept while the "
                  f"records' version is unchanged)")
            await store.close()
        finally:
            await db.stop()


if __name__ == "__main__":
    main()
