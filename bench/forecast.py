"""Load forecasting: training and prediction time per feeder and for 100 feeders through Ray tasks;
backtest accuracy of the model against both baselines, in the same run.

Run:  .venv/bin/python bench/forecast.py [--feeders 100] [--repeats 3] [--days 60]

1. Backfills ``--days`` of 15-minute history for case33bw into a temporary historian
   (``graph_schema.historian.backfill``: daily/weekly shapes, temperature, noise) and copies its
   feeder-load partitions to ``--feeders`` feeder ids (the same series under 100 names: the
   timing does not depend on the values).
2. Per feeder, in this process: reading the history (DuckDB), training LightGBM on it, predicting
   the next 48 hours; medians of ``--repeats``.
3. The rolling-origin backtest of one feeder, day-ahead (14 daily origins, 48 h) and intra-day
   (28 origins every 6 h, 24 h, with the latest-residual correction): MAPE, RMSE and pinball loss of
   the model and of both baselines (seasonal naive, vanilla linear regression), and the ratios.
4. ``--feeders`` day-ahead forecasts (read, train, predict, store the model) as Ray tasks on a local
   Ray with one CPU per task; the baseline is the same work one feeder after another in this
   process (the per-feeder median x N), so the ratio is the speed-up the cluster gives.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from actors.cores import forecast as fc
from actors.cores.forecast import Horizon
from actors.tasks.forecast import ForecastJob, lightgbm_regressor, load_input, run_forecast


def machine() -> str:
    import lightgbm

    from bench.machine import describe

    return describe(f"lightgbm {lightgbm.__version__}")


def _median(fn, repeats: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--feeders", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--days", type=int, default=60)
    ap.add_argument("--tz", default="Europe/Berlin")
    ap.add_argument("--country", default="DE")
    args = ap.parse_args()
    print(machine())
    from graph_schema.historian.backfill import backfill
    from graph_schema.importers import DEMO_FEEDERS

    work = Path(tempfile.mkdtemp(prefix="dms-bench-forecast-"))
    try:
        root = str(work / "historian")
        now = datetime.now(UTC)
        end = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
        t = time.perf_counter()
        backfill(root, [DEMO_FEEDERS["case33bw"]()], days=args.days, end=end, tz=args.tz)
        solve = Path(root) / "v1" / "kind=solve"
        ids = [f"bench-{k:03d}" for k in range(args.feeders)]
        for fid in ids:
            shutil.copytree(solve / "feeder=case33bw", solve / f"feeder={fid}")
        print(f"history: {args.days} days x 96 quarter hours, {args.feeders} feeders "
              f"(prepared in {time.perf_counter() - t:.1f} s)")

        # -- per feeder, in this process --------------------------------------------------------
        job = ForecastJob("case33bw", Horizon.DAY_AHEAD, root, end, history_days=args.days, tz=args.tz,
                          country=args.country, with_backtest=False, store_model=False)
        read_s = _median(lambda: load_input(job), args.repeats)
        inp = load_input(job)
        g = fc.grid(inp, fc.DAY_AHEAD_STEPS)
        assert g.temp is not None
        train = np.arange(g.n_hist)
        train = train[np.isfinite(g.y[train]) & np.isfinite(g.temp[train])]
        x = fc.model_features(g.cal, g.y, g.temp, train, None)
        y = g.y[train]
        train_s = _median(lambda: lightgbm_regressor(x, y), args.repeats)
        model = lightgbm_regressor(x, y)
        rows = np.arange(g.n_hist, g.n_hist + fc.DAY_AHEAD_STEPS)
        temp_fc = fc.temperature_outlook(g.temp, g.n_hist, g.n_hist + fc.DAY_AHEAD_STEPS)
        x_fc = fc.model_features(g.cal, g.y, temp_fc, rows, g.n_hist)
        predict_s = _median(lambda: model.predict(x_fc), args.repeats)
        whole_s = _median(lambda: run_forecast(job), args.repeats)
        print(f"\nper feeder, one process (median of {args.repeats}):")
        print(f"  read history (DuckDB)      {read_s * 1000:8.1f} ms")
        print(f"  train LightGBM ({len(y)} rows) {train_s * 1000:8.1f} ms")
        print(f"  predict 48 h (192 points)  {predict_s * 1000:8.1f} ms")
        print(f"  whole day-ahead forecast   {whole_s * 1000:8.1f} ms  (read, features, LightGBM, vanilla, intervals)")

        # -- backtest ---------------------------------------------------------------------------
        for horizon in (Horizon.DAY_AHEAD, Horizon.INTRA_DAY):
            t = time.perf_counter()
            f = run_forecast(ForecastJob("case33bw", horizon, root, end, history_days=args.days, tz=args.tz,
                                         country=args.country, store_model=False))
            took = time.perf_counter() - t
            bt = f.backtest
            assert bt is not None, f.fallback
            print(f"\nbacktest {horizon.value}: {bt.origins} origins, {bt.points} points ({took:.1f} s)")
            print(f"  {'method':<16}{'MAPE %':>9}{'RMSE MW':>10}{'pinball MW':>12}{'P10-P90 cover':>15}")
            for name, s in (("model (LightGBM)", bt.model), ("seasonal naive", bt.seasonal_naive),
                            ("vanilla linear", bt.vanilla)):
                pin = f"{s.pinball:.4f}" if s.pinball is not None else "-"
                cov = f"{s.coverage:.2f}" if s.coverage is not None else "-"
                print(f"  {name:<16}{s.mape:9.2f}{s.rmse:10.4f}{pin:>12}{cov:>15}")
            print(f"  MAPE ratio model/seasonal naive {bt.model.mape / bt.seasonal_naive.mape:.2f}, "
                  f"model/vanilla {bt.model.mape / bt.vanilla.mape:.2f}")

        # -- N feeders through Ray tasks --------------------------------------------------------
        from actors.fleet import connect_ray, shutdown_ray

        started = connect_ray(address=None, data_dir=work / "data", num_cpus=os.cpu_count())
        try:
            from actors.tasks import forecasts_blocking

            jobs = [ForecastJob(fid, Horizon.DAY_AHEAD, root, end, history_days=args.days, tz=args.tz,
                                country=args.country, with_backtest=False) for fid in ids]
            forecasts_blocking(jobs[:2])  # warm the workers (imports), not timed
            t = time.perf_counter()
            results = forecasts_blocking(jobs)
            ray_s = time.perf_counter() - t
            assert all(r.method == "lightgbm" and len(r.points) == 192 for r in results)
            workers = len({r.extras["pid"] for r in results})
        finally:
            if started:
                shutdown_ray()
        serial = whole_s * len(jobs)
        print(f"\n{len(jobs)} feeders, day-ahead, Ray tasks (1 CPU each, {workers} worker processes): "
              f"{ray_s:.1f} s wall, {ray_s / len(jobs) * 1000:.0f} ms per feeder")
        print(f"  baseline: one after another in one process {serial:.1f} s (median x {len(jobs)}); "
              f"speed-up {serial / ray_s:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

