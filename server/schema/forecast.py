"""Load forecasts: ``loadForecast(feederId, horizon)``.

A forecast at 15-minute resolution with P10/P90 bounds, made in a Ray task
(:mod:`server.forecast_service`), with the rolling-origin backtest that says how good it is against
two baselines computed in the same run (seasonal naive: the same quarter hour a week before; vanilla:
a linear regression on trend, hour x weekday, month and a temperature polynomial x hour). When
history or weather is missing the forecast says what it fell back to (``method``, ``fallback``)
instead of failing. Needs READ_GRID on the feeder.
"""

from __future__ import annotations

import math
from datetime import datetime

import strawberry
from strawberry.types import Info

from actors.cores.forecast import Backtest, Forecast, Horizon
from security.roles import Permission, requires
from server.schema.enums import ForecastHorizon


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@strawberry.type
class LoadForecastPoint:
    start: datetime = strawberry.field(description="Start of the 15-minute interval (UTC)")
    p_mw: float = strawberry.field(description="Expected mean active power at the feeder head (P50)")
    p10_mw: float = strawberry.field(description="10 % of intervals are expected below this")
    p90_mw: float = strawberry.field(description="90 % of intervals are expected below this")


@strawberry.type(description="Rolling-origin backtest over the history: the model and both baselines, same run")
class ForecastBacktest:
    origins: int
    points: int
    mape: float | None = strawberry.field(description="The model's mean absolute percentage error (%)")
    rmse: float | None = strawberry.field(description="The model's root mean square error (MW)")
    pinball_mw: float | None = strawberry.field(description="The model's pinball loss, mean over P10/P50/P90 (MW)")
    coverage: float | None = strawberry.field(description="Share of measurements inside [P10, P90] (nominal 0.8)")
    baseline_seasonal_naive_mape: float | None
    baseline_seasonal_naive_rmse: float | None
    baseline_seasonal_naive_pinball_mw: float | None
    baseline_vanilla_mape: float | None
    baseline_vanilla_rmse: float | None
    baseline_vanilla_pinball_mw: float | None


@strawberry.type
class LoadForecast:
    feeder_id: strawberry.ID
    horizon: ForecastHorizon  # type: ignore[valid-type]
    issued_at: datetime
    method: str = strawberry.field(description="lightgbm, or the fallback used: seasonal-naive, last-day, none")
    fallback: str | None = strawberry.field(description="Why the forecast is not the model's (missing history or "
                                                        "weather); null when it is")
    points: list[LoadForecastPoint]
    backtest: ForecastBacktest | None
    peak_mw: float | None
    peak_at: datetime | None
    limit_mw: float | None = strawberry.field(description="The feeder's load limit at its head; a peak above it "
                                                         "raises the alarm FORECAST_OVERLOAD")
    over_limit: bool


def _backtest(b: Backtest | None) -> ForecastBacktest | None:
    if b is None:
        return None
    return ForecastBacktest(
        origins=b.origins, points=b.points, mape=_num(b.model.mape), rmse=_num(b.model.rmse),
        pinball_mw=_num(b.model.pinball), coverage=_num(b.model.coverage),
        baseline_seasonal_naive_mape=_num(b.seasonal_naive.mape),
        baseline_seasonal_naive_rmse=_num(b.seasonal_naive.rmse),
        baseline_seasonal_naive_pinball_mw=_num(b.seasonal_naive.pinball),
        baseline_vanilla_mape=_num(b.vanilla.mape), baseline_vanilla_rmse=_num(b.vanilla.rmse),
        baseline_vanilla_pinball_mw=_num(b.vanilla.pinball))


def to_graphql(f: Forecast) -> LoadForecast:
    return LoadForecast(
        feeder_id=strawberry.ID(f.feeder_id), horizon=f.horizon, issued_at=f.issued_at, method=f.method,
        fallback=f.fallback,
        points=[LoadForecastPoint(start=p.start, p_mw=p.p_mw, p10_mw=p.p10_mw, p90_mw=p.p90_mw) for p in f.points],
        backtest=_backtest(f.backtest), peak_mw=_num(f.peak_mw), peak_at=f.peak_at, limit_mw=_num(f.limit_mw),
        over_limit=f.over_limit)


@strawberry.type
class ForecastQuery:
    @strawberry.field(permission_classes=[requires(Permission.READ_GRID, feeder_arg="feeder_id")])
    async def load_forecast(self, info: Info, feeder_id: strawberry.ID,
                            horizon: ForecastHorizon = Horizon.DAY_AHEAD) -> LoadForecast:  # type: ignore[valid-type]
        from server.forecast_service import ForecastService

        runtime = info.context["services"].runtime
        if runtime is None:
            raise RuntimeError("the server is still starting")
        return to_graphql(await ForecastService.of(runtime).forecast(str(feeder_id), Horizon(horizon)))
