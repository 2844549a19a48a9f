"""Load forecasting: the pure core (features, baselines, metrics, intervals, fallbacks), the LightGBM
job on a backfilled historian (it must beat both baselines, and its intervals cover about their
nominal share), the forward-looking alarm application and the server's forecast cache."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from actors.cores import forecast as fc
from actors.cores.forecast import ForecastInput, Horizon

T0 = datetime(2026, 9, 1, tzinfo=UTC)
END = datetime(2026, 11, 2, 6, 0, tzinfo=UTC)  # the backfill's end; a Monday, 06:00 UTC


def _flat_fit(x: np.ndarray, y: np.ndarray) -> Any:
    class Mean:
        def predict(self, xx: np.ndarray) -> np.ndarray:
            return np.full(len(xx), float(np.mean(y)))

    return Mean()


def _series(days: int, *, temp: bool = True) -> ForecastInput:
    n = days * fc.PER_DAY
    i = np.arange(n)
    load = 2.0 + np.sin(2 * np.pi * i / fc.PER_DAY)
    t = 10 + 5 * np.cos(2 * np.pi * i / fc.PER_DAY) if temp else None
    return ForecastInput("f1", T0, load, t)


# -- metrics and baselines -----------------------------------------------------------------------


def test_metrics_on_known_numbers() -> None:
    y = np.array([1.0, 2.0, 4.0])
    f = np.array([1.0, 1.0, 5.0])
    assert fc.mape(y, f) == pytest.approx((0 + 0.5 + 0.25) / 3 * 100)
    assert fc.rmse(y, f) == pytest.approx(math.sqrt(2 / 3))
    # under-forecast by 1 at q=0.9 costs 0.9; over-forecast by 1 costs 0.1
    assert fc.pinball(np.array([2.0]), np.array([1.0]), 0.9) == pytest.approx(0.9)
    assert fc.pinball(np.array([1.0]), np.array([2.0]), 0.9) == pytest.approx(0.1)
    assert math.isnan(fc.mape(np.array([0.0]), np.array([1.0])))


def test_seasonal_naive_is_last_week_and_never_reads_after_the_origin() -> None:
    y = np.arange(3 * fc.PER_WEEK, dtype=float)
    origin = 2 * fc.PER_WEEK + 10
    rows = np.arange(origin, origin + fc.PER_DAY)
    assert np.array_equal(fc.seasonal_naive(y, rows, origin), y[rows - fc.PER_WEEK])
    y2 = y.copy()
    y2[rows - fc.PER_WEEK] = np.nan  # last week missing: two weeks before
    assert np.array_equal(fc.seasonal_naive(y2, rows, origin), y[rows - 2 * fc.PER_WEEK])
    # a horizon beyond a week would need values after the origin: those are left NaN, not read
    far = np.arange(origin + fc.PER_WEEK, origin + fc.PER_WEEK + 4)
    assert np.isnan(fc._lag(y, far, fc.PER_WEEK, origin)).all()


def test_temperature_outlook_repeats_the_last_three_days_and_keeps_a_forecast_in_the_series() -> None:
    day = np.linspace(0, 10, fc.PER_DAY)
    temp = np.concatenate([day, day + 3, day + 6])  # three days, warming by 3 degC a day
    out = fc.temperature_outlook(temp, 3 * fc.PER_DAY, 4 * fc.PER_DAY)
    assert np.allclose(out[:3 * fc.PER_DAY], temp)
    assert np.allclose(out[3 * fc.PER_DAY:], day + 3)  # mean of the three days at the same quarter hour
    with_fc = np.concatenate([temp, np.full(fc.PER_DAY, 20.0)])
    assert np.allclose(fc.temperature_outlook(with_fc, 3 * fc.PER_DAY, 4 * fc.PER_DAY)[3 * fc.PER_DAY:], 20.0)


def test_calendar_knows_holidays_weekends_and_local_hours() -> None:
    cal = fc.calendar(datetime(2026, 12, 24, 23, 0, tzinfo=UTC), 8, "Europe/Berlin", "DE")
    assert cal.hour[0] == 0.0  # 23:00 UTC is midnight in Berlin (winter)
    assert cal.holiday[0] == 1.0 and cal.weekend[0] == 1.0  # Christmas Day
    cal = fc.calendar(datetime(2026, 11, 2, 12, 0, tzinfo=UTC), 1, "UTC", "US")
    assert cal.dow[0] == 0 and cal.weekend[0] == 0.0 and cal.holiday[0] == 0.0
    with pytest.raises(ValueError, match="ISO 3166"):
        fc.calendar(T0, 4, "UTC", "XX")


def test_intervals_follow_the_band_quantiles() -> None:
    rel = [np.full(fc.DAY_AHEAD_STEPS, -0.05), np.full(fc.DAY_AHEAD_STEPS, 0.05)] * 5
    bands = fc.band_quantiles(rel, fc.DAY_AHEAD_STEPS)
    assert len(bands) == fc.DAY_AHEAD_STEPS // fc.BAND_STEPS
    p10, p90 = fc.interval(np.full(fc.DAY_AHEAD_STEPS, 2.0), bands)
    assert np.all(p10 < 2.0) and np.all(p90 > 2.0) and np.all(p10 >= 1.9 - 1e-9) and np.all(p90 <= 2.1 + 1e-9)


# -- fallbacks -----------------------------------------------------------------------------------


def test_without_weather_the_forecast_is_seasonal_naive_and_says_so() -> None:
    f = fc.forecast(_series(30, temp=False), Horizon.DAY_AHEAD, _flat_fit)
    assert f.method == "seasonal-naive" and "weather" in (f.fallback or "")
    assert len(f.points) == fc.DAY_AHEAD_STEPS and f.backtest is None
    assert f.points[0].start == T0 + timedelta(days=30)
    assert all(p.p10_mw <= p.p_mw <= p.p90_mw for p in f.points)


def test_short_history_falls_back_and_no_history_answers_no_points() -> None:
    f = fc.forecast(_series(10), Horizon.INTRA_DAY, _flat_fit)
    assert f.method == "seasonal-naive" and "under the 21" in (f.fallback or "")
    assert len(f.points) == fc.INTRA_DAY_STEPS
    f = fc.forecast(_series(3), Horizon.DAY_AHEAD, _flat_fit)
    assert f.method == "last-day" and "under a week" in (f.fallback or "")
    first_day = _series(3).load_p_mw[2 * fc.PER_DAY:3 * fc.PER_DAY]
    assert np.allclose([p.p_mw for p in f.points[:fc.PER_DAY]], first_day)
    empty = ForecastInput("f1", T0, np.full(fc.PER_DAY, np.nan), None)
    f = fc.forecast(empty, Horizon.DAY_AHEAD, _flat_fit)
    assert f.method == "none" and f.points == () and "no load history" in (f.fallback or "")


def test_a_peak_over_the_limit_is_flagged() -> None:
    inp = _series(10)
    over = fc.forecast(ForecastInput("f1", T0, inp.load_p_mw, None, limit_mw=2.5), Horizon.DAY_AHEAD, _flat_fit)
    assert over.over_limit and over.peak_mw == pytest.approx(3.0, abs=0.01)
    under = fc.forecast(ForecastInput("f1", T0, inp.load_p_mw, None, limit_mw=5.0), Horizon.DAY_AHEAD, _flat_fit)
    assert not under.over_limit


def test_feeder_limit_from_the_source_transformers_or_rated_head_lines() -> None:
    from dataclasses import replace

    from graph_schema.importers import DEMO_FEEDERS

    cigre = DEMO_FEEDERS["cigre-mv"]()
    assert fc.feeder_limit_mw(cigre) == pytest.approx(50.0)  # two 25 MVA HV/MV transformers at 100 %
    case33 = DEMO_FEEDERS["case33bw"]()
    assert fc.feeder_limit_mw(case33) is None  # its lines carry pandapower's 99999 kA "unrated" placeholder
    rated = replace(case33, lines=tuple(replace(ln, max_i_ka=0.4) for ln in case33.lines))
    assert fc.feeder_limit_mw(rated) == pytest.approx(math.sqrt(3) * 12.66 * 0.4)


# -- the LightGBM job on a backfilled historian --------------------------------------------------


@pytest.fixture(scope="module")
def backfilled(tmp_path_factory: pytest.TempPathFactory) -> str:
    from graph_schema.historian.backfill import backfill
    from graph_schema.importers import DEMO_FEEDERS

    root = str(tmp_path_factory.mktemp("historian"))
    backfill(root, [DEMO_FEEDERS["case33bw"]()], days=60, end=END, tz="Europe/Berlin", seed=3)
    return root


@pytest.mark.parametrize("horizon", [Horizon.DAY_AHEAD, Horizon.INTRA_DAY])
def test_the_model_beats_both_baselines_on_the_backfilled_history(backfilled: str, horizon: Horizon) -> None:
    from actors.tasks.forecast import ForecastJob, read_model_header, run_forecast

    f = run_forecast(ForecastJob("case33bw", horizon, backfilled, END, tz="Europe/Berlin", country="DE"))
    assert f.method == "lightgbm" and f.fallback is None
    assert len(f.points) == fc.steps_of(horizon) and f.points[0].start == END
    bt = f.backtest
    assert bt is not None and bt.origins >= 7
    assert bt.model.mape < bt.seasonal_naive.mape and bt.model.mape < bt.vanilla.mape, bt
    assert bt.model.rmse < bt.seasonal_naive.rmse and bt.model.rmse < bt.vanilla.rmse, bt
    assert bt.model.pinball is not None and bt.model.pinball < bt.vanilla.pinball < bt.seasonal_naive.pinball * 1.5
    # P10..P90 holds about 80 % of the measurements (out of sample)
    assert bt.model.coverage is not None and 0.6 <= bt.model.coverage <= 0.95, bt.model
    assert all(p.p10_mw <= p.p_mw <= p.p90_mw for p in f.points)
    header = read_model_header(backfilled, f.extras["model_path"])
    assert header["feeder_id"] == "case33bw" and header["horizon"] == horizon.value and header["format"] == "v1"
    assert Path(f.extras["model_path"]).is_file() and "/models/load-forecast/v1/feeder=case33bw/" in f.extras[
        "model_path"]


def test_intra_day_corrects_with_the_latest_telemetry(backfilled: str) -> None:
    """Measurements of the last hour 10 % over what the model expects pull the next steps up, less so later."""
    from actors.tasks.forecast import ForecastJob, load_input, run_forecast

    base = ForecastJob("case33bw", Horizon.INTRA_DAY, backfilled, END, tz="Europe/Berlin", country="DE",
                       with_backtest=False, store_model=False)
    plain = run_forecast(base)
    inp = load_input(base)
    later = END + timedelta(hours=1)
    recent = tuple((END + timedelta(minutes=15 * k), 1.1 * plain.points[k].p_mw) for k in range(4))
    bumped = run_forecast(ForecastJob(**{**{s: getattr(base, s) for s in base.__slots__},
                                         "issued_at": later, "recent": recent}))
    assert np.isnan(inp.load_p_mw[-1]) is np.False_
    assert bumped.corrected_by_mw > 0.5 * 0.1 * plain.points[4].p_mw
    gain = [b.p_mw - p.p_mw for b, p in zip(bumped.points[:8], plain.points[4:12], strict=True)]
    assert gain[0] > gain[-1] > 0


def test_missing_weather_in_the_historian_falls_back(tmp_path: Path) -> None:
    from actors.tasks.forecast import ForecastJob, run_forecast
    from graph_schema.historian.backfill import backfill
    from graph_schema.importers import DEMO_FEEDERS

    backfill(str(tmp_path), [DEMO_FEEDERS["case33bw"]()], days=9, end=END)
    import shutil

    shutil.rmtree(tmp_path / "v1" / "kind=weather")
    f = run_forecast(ForecastJob("case33bw", Horizon.DAY_AHEAD, str(tmp_path), END))
    assert f.method == "seasonal-naive" and "weather" in (f.fallback or "") and len(f.points) == 192
    f = run_forecast(ForecastJob("nope", Horizon.DAY_AHEAD, str(tmp_path), END))
    assert f.method == "none" and f.points == ()


# -- the forward-looking alarm -------------------------------------------------------------------


class _Ports:
    feeder_id = "f1"
    app_name = "forecast"

    def __init__(self) -> None:
        self.events: list[tuple[Any, Any, str, Mapping[str, Any]]] = []

    def emit(self, kind: Any, severity: Any, message: str, data: Mapping[str, Any]) -> None:
        self.events.append((kind, severity, message, data))


async def test_a_forecast_peak_over_the_limit_raises_and_a_later_one_clears_the_alarm() -> None:
    from actors.apps.forecast_app import ALARM_KIND, ForecastApp
    from actors.cores.events import EventKind, Severity

    app = ForecastApp()
    ports = _Ports()
    await app.start(ports)  # type: ignore[arg-type]
    assert await app.publish("DAY_AHEAD", "t0", 5.0, "t1", 4.0) is True
    assert await app.publish("DAY_AHEAD", "t0", 5.5, "t1", 4.0) is True  # still over: no second alarm
    assert await app.publish("INTRA_DAY", "t0", 3.0, "t1", 4.0) is False
    assert await app.publish("DAY_AHEAD", "t2", 3.0, "t3", 4.0) is False
    kinds = [(e[0], e[1], e[3]["alarm_kind"], e[3]["device_id"]) for e in ports.events]
    assert kinds == [(EventKind.ALARM, Severity.WARNING, ALARM_KIND, "f1/DAY_AHEAD"),
                     (EventKind.ALARM_CLEARED, Severity.INFO, ALARM_KIND, "f1/DAY_AHEAD")]
    assert "above the feeder's limit" in ports.events[0][2]
    assert await app.publish("DAY_AHEAD", "t4", 3.0, None, None) is False  # no limit known: never an alarm
    assert app.status()["alarms"] == []


# -- the server's cache --------------------------------------------------------------------------


class _Grid:
    def __init__(self) -> None:
        self.fleet = self
        self.calls: list[tuple[str, str]] = []

    def require_feeder(self, feeder_id: str) -> None:
        from graph_schema.errors import NotFound

        if feeder_id != "case33bw":
            raise NotFound(f"feeder {feeder_id!r} not found", element_id=feeder_id)

    async def model(self, feeder_id: str) -> Any:
        from graph_schema.importers import DEMO_FEEDERS

        return DEMO_FEEDERS["case33bw"]()

    async def call_app(self, feeder_id: str, app: str, method: str, *args: Any) -> Any:
        self.calls.append((app, method))
        return {"rows": [], "oldest": None} if method == "recent_solves" else False


async def test_the_service_refreshes_intra_day_each_quarter_hour_and_day_ahead_each_day() -> None:
    from graph_schema.errors import NotFound
    from server.forecast_service import ForecastService
    from server.settings import Settings

    clock = [datetime(2026, 11, 2, 10, 1, tzinfo=UTC)]
    jobs: list[Any] = []

    async def run(job: Any) -> Any:
        jobs.append(job)
        return fc.Forecast(job.feeder_id, job.horizon, job.issued_at, "seasonal-naive", (), None)

    grid = _Grid()
    svc = ForecastService(grid, Settings.from_env({}), root="/nowhere", run=run, now=lambda: clock[0])
    a, b = await asyncio.gather(*(svc.forecast("case33bw", Horizon.INTRA_DAY) for _ in range(2)))
    assert a is b and len(jobs) == 1 and jobs[0].issued_at == datetime(2026, 11, 2, 10, 0, tzinfo=UTC)
    assert jobs[0].limit_mw is None and jobs[0].country == "US"  # case33bw's lines are unrated
    clock[0] += timedelta(minutes=10)
    await svc.forecast("case33bw", Horizon.INTRA_DAY)
    assert len(jobs) == 1  # 10:11: the same quarter hour
    clock[0] += timedelta(minutes=5)
    await svc.forecast("case33bw", Horizon.INTRA_DAY)
    assert len(jobs) == 2  # a new quarter hour began
    await svc.forecast("case33bw", Horizon.DAY_AHEAD)
    clock[0] += timedelta(hours=5)
    await svc.forecast("case33bw", Horizon.DAY_AHEAD)
    assert len(jobs) == 3  # the same day: kept
    clock[0] += timedelta(days=1)
    await svc.forecast("case33bw", Horizon.DAY_AHEAD)
    assert len(jobs) == 4
    assert ("forecast", "publish") in grid.calls and ("historian", "recent_solves") in grid.calls
    with pytest.raises(NotFound):
        await svc.forecast("nope", Horizon.DAY_AHEAD)
