"""loadForecast over real HTTP, made in a real Ray task from a backfilled historian.

The forecasts read a historian of their own (backfilled here for the last 40 days), installed as the
runtime's forecast service for these tests, so no other test's history is touched. Checks: the
contract's fields, the backtest beating both baselines, that the job ran in a Ray worker and not in
this process nor in the feeder actor, the forward-looking alarm in the feeder actor, and the
refusals (unknown feeder, no token, a role without READ_GRID).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

F = "case33bw"
Q = """query($f: ID!, $h: ForecastHorizon!) { loadForecast(feederId: $f, horizon: $h) {
  feederId horizon issuedAt method fallback peakMw peakAt limitMw overLimit
  points { start pMw p10Mw p90Mw }
  backtest { origins points mape rmse pinballMw coverage baselineSeasonalNaiveMape baselineVanillaMape
             baselineSeasonalNaiveRmse baselineVanillaRmse } } }"""


@pytest.fixture(scope="module")
async def forecasts(runtime: Any, settings: Any, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Any]:
    from graph_schema.historian.backfill import backfill
    from server.forecast_service import EXTRAS_KEY, ForecastService

    root = str(tmp_path_factory.mktemp("forecast-historian"))
    model = await runtime.grid.model(F)
    await asyncio.to_thread(backfill, root, [model], days=40, tz=settings.timezone)
    before = runtime.extras.get(EXTRAS_KEY)
    svc = runtime.extras[EXTRAS_KEY] = ForecastService(runtime.grid, settings, root=root)
    yield svc
    if before is None:
        runtime.extras.pop(EXTRAS_KEY, None)
    else:
        runtime.extras[EXTRAS_KEY] = before


async def test_day_ahead_forecast_beats_both_baselines_and_runs_in_a_ray_worker(forecasts: Any, gql: Any,
                                                                                  runtime: Any) -> None:
    r = await gql(Q, {"f": F, "h": "DAY_AHEAD"})
    assert "errors" not in r, r
    f = r["data"]["loadForecast"]
    assert f["feederId"] == F and f["horizon"] == "DAY_AHEAD" and f["method"] == "lightgbm" and f["fallback"] is None
    issued = datetime.fromisoformat(f["issuedAt"])
    assert issued.minute % 15 == 0 and abs(issued - datetime.now(UTC)) < timedelta(minutes=20)
    pts = f["points"]
    assert len(pts) == 192
    assert datetime.fromisoformat(pts[0]["start"]) == issued
    assert datetime.fromisoformat(pts[-1]["start"]) == issued + timedelta(hours=48) - timedelta(minutes=15)
    assert all(p["p10Mw"] <= p["pMw"] <= p["p90Mw"] for p in pts)
    bt = f["backtest"]
    assert bt["mape"] < bt["baselineSeasonalNaiveMape"] and bt["mape"] < bt["baselineVanillaMape"], bt
    assert bt["rmse"] < bt["baselineSeasonalNaiveRmse"] and bt["rmse"] < bt["baselineVanillaRmse"], bt
    assert f["limitMw"] is None and f["overLimit"] is False  # case33bw's lines carry no rating
    # The job ran in a Ray worker: neither this process (the API server's) nor the feeder actor's.
    done = next(v for (fid, h), v in forecasts._cache.items() if fid == F and h.value == "DAY_AHEAD")
    actor_pid = (await runtime.fleet.call(F, "ping"))["pid"]
    assert done.extras["pid"] not in (str(os.getpid()), str(actor_pid))
    assert os.path.isfile(done.extras["model_path"])  # noqa: ASYNC240 (a test, one stat)
    jobs = forecasts.jobs
    again = await gql(Q, {"f": F, "h": "DAY_AHEAD"})
    assert again["data"]["loadForecast"]["issuedAt"] == f["issuedAt"] and forecasts.jobs == jobs  # kept for the day


async def test_intra_day_forecast_covers_the_next_24_hours(forecasts: Any, gql: Any) -> None:
    r = await gql(Q, {"f": F, "h": "INTRA_DAY"})
    assert "errors" not in r, r
    f = r["data"]["loadForecast"]
    assert f["horizon"] == "INTRA_DAY" and len(f["points"]) == 96 and f["method"] == "lightgbm"
    bt = f["backtest"]
    assert bt["origins"] >= 7 and bt["mape"] < min(bt["baselineSeasonalNaiveMape"], bt["baselineVanillaMape"]), bt


async def test_a_forecast_peak_over_the_limit_raises_an_alarm_in_the_feeder_actor(forecasts: Any, runtime: Any,
                                                                                   settings: Any) -> None:
    """The same path with a limit below the feeder's load: the actor's forecast application raises
    FORECAST_OVERLOAD (ahead of time: no measured value is over anything)."""
    from actors.cores.forecast import Horizon
    from actors.tasks import forecast_in_task
    from server.forecast_service import ForecastService

    async def low_limit(job: Any) -> Any:
        return await forecast_in_task(replace(job, limit_mw=0.5, with_backtest=False, store_model=False))

    svc = ForecastService(runtime.grid, settings, root=forecasts.root, run=low_limit)
    result = await svc.forecast(F, Horizon.INTRA_DAY)
    assert result.over_limit and result.peak_mw > 0.5
    for _ in range(50):
        alarms = await runtime.grid.alarms(F, True)
        mine = [a for a in alarms if a.kind == "FORECAST_OVERLOAD"]
        if mine:
            break
        await asyncio.sleep(0.1)
    assert mine and mine[0].element_id == f"{F}/INTRA_DAY", [a.kind for a in alarms]
    # the next forecast under the limit clears it
    await runtime.fleet.call_app(F, "forecast", "publish", "INTRA_DAY", "later", 0.4, None, 0.5)
    for _ in range(50):
        if not [a for a in await runtime.grid.alarms(F, True) if a.kind == "FORECAST_OVERLOAD"]:
            break
        await asyncio.sleep(0.1)
    assert not [a for a in await runtime.grid.alarms(F, True) if a.kind == "FORECAST_OVERLOAD"]


async def test_refusals(forecasts: Any, gql: Any) -> None:
    r = await gql(Q, {"f": "no-such-feeder", "h": "DAY_AHEAD"})
    assert r["errors"][0]["extensions"]["code"] == "NOT_FOUND" and "no-such-feeder" in r["errors"][0]["message"], r
    r = await gql(Q, {"f": F, "h": "DAY_AHEAD"}, role=None)
    assert r["errors"][0]["extensions"]["code"] == "UNAUTHENTICATED", r
    r = await gql(Q, {"f": F, "h": "DAY_AHEAD"}, role="CUSTOMER")
    assert r["errors"][0]["extensions"]["code"] == "FORBIDDEN", r
    r = await gql(Q, {"f": F, "h": "WEEK_AHEAD"}, expect_status=None)
    assert r["errors"][0]["extensions"]["code"] == "GRAPHQL_VALIDATION_FAILED", r
    assert "WEEK_AHEAD" in r["errors"][0]["message"], r
