"""Load forecasting, the pure part: features, baselines, metrics, intervals and the backtest.

Everything works on one 15-minute grid (:data:`STEP_S`): index ``i`` is ``start + i * 15 min``
(UTC). ``load_p_mw`` holds the feeder's history (NaN where missing) up to the issue time; a
forecast covers the indices after it. The regression model is handed in (:class:`Regressor`), so
this module imports neither LightGBM nor Ray: the task that trains (``actors/tasks/forecast.py``, run
in a Ray worker) supplies it.

Method:

* **Features** per target time: local hour (``DMS_TIMEZONE``), day of week, weekend, public holiday
  (the ``holidays`` library, the utility's country), day of year (sine, cosine), temperature and its
  heating / cooling degrees (below 14 degC, above 20 degC), and the load one and two weeks before.
  Training uses the observed temperature; a forecast uses the temperature outlook: observed where the
  weather series already holds the time, else the mean of the same quarter hour over the last three
  days before the origin (persistence of the recent diurnal profile; a utility's temperature
  forecast takes its place when configured).
* **Baselines**, computed in the same run: *seasonal naive* (the same quarter hour one week
  before; two weeks when that is missing) and a *vanilla* linear regression (trend, hour x weekday,
  month, a cubic temperature polynomial x hour; least squares with a tiny ridge).
* **Intra-day**: the day-ahead point forecast corrected by the latest residual (the mean of the last
  hour's ``measured - forecast``), decaying with the residuals' lag-one autocorrelation per step.
* **Intervals**: split conformal. P10/P90 are the point forecast times ``1 + q`` where ``q`` are the
  10th/90th percentiles of the relative backtest residuals of the same horizon band (6 hours). In
  the backtest, each origin's interval uses the residuals of earlier origins only, so coverage and
  pinball loss are out of sample.
* **Rolling-origin backtest** over the history's last days: refit at every origin on the data before
  it, predict the horizon, score MAPE (%), RMSE (MW) and the pinball loss (MW, mean over P10, P50,
  P90) for the model and both baselines.
* **Fallback**: without weather, or with too little history to train (:data:`MIN_TRAIN_DAYS`), the
  forecast is seasonal naive and says so in ``fallback``; with less than a week, the last day
  repeated; with no history at all, no points.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from functools import cache
from typing import Protocol

import numpy as np
import pandas as pd

STEP_S = 900
PER_DAY = 96
PER_WEEK = 7 * PER_DAY
DAY_AHEAD_STEPS = 2 * PER_DAY  # the next 48 hours
INTRA_DAY_STEPS = PER_DAY  # the next 24 hours
MIN_TRAIN_DAYS = 21  # history before the first backtest origin (two weekly lags plus a week to learn from)
BACKTEST_DAY_AHEAD_ORIGINS = 14  # daily origins
BACKTEST_INTRA_DAY_ORIGINS = 28  # every 6 hours over the last week
BAND_STEPS = 24  # intervals are calibrated per 6-hour horizon band
MIN_CALIBRATION_ORIGINS = 3
QUANTILES = (0.1, 0.5, 0.9)
HEATING_BELOW_C = 14.0
COOLING_ABOVE_C = 20.0


class Horizon(StrEnum):
    DAY_AHEAD = "DAY_AHEAD"
    INTRA_DAY = "INTRA_DAY"


def steps_of(horizon: Horizon) -> int:
    return DAY_AHEAD_STEPS if horizon is Horizon.DAY_AHEAD else INTRA_DAY_STEPS


class Predictor(Protocol):
    def predict(self, x: np.ndarray) -> np.ndarray: ...


# A regressor: (features, targets) -> something that predicts. NaN features are allowed (LightGBM).
Regressor = Callable[[np.ndarray, np.ndarray], Predictor]


@dataclass(frozen=True, slots=True)
class ForecastInput:
    """One feeder's history on the 15-minute grid, up to ``issued_at`` (exclusive)."""

    feeder_id: str
    start: datetime  # UTC time of index 0 (a quarter hour)
    load_p_mw: np.ndarray  # float64, NaN where missing; index len-1 is the last quarter before issued_at
    temperature_c: np.ndarray | None = None  # same grid, may run past the load (a weather forecast); NaN missing
    tz: str = "UTC"
    country: str = "US"
    limit_mw: float | None = None  # the feeder's limit for the forward-looking alarm

    @property
    def issued_at(self) -> datetime:
        return self.start + timedelta(seconds=STEP_S * len(self.load_p_mw))


@dataclass(frozen=True, slots=True)
class Scores:
    mape: float  # percent
    rmse: float  # MW
    pinball: float | None  # MW, mean over P10/P50/P90 (None: not enough origins to calibrate)
    coverage: float | None = None  # share of measurements inside [P10, P90] (nominal 0.8)


@dataclass(frozen=True, slots=True)
class Backtest:
    origins: int
    points: int
    model: Scores
    seasonal_naive: Scores
    vanilla: Scores
    phi: float = 0.0  # lag-one autocorrelation of the residuals per step (the intra-day decay)
    # Relative residual quantiles (P10, P90) per 6-hour band of the horizon.
    bands: tuple[tuple[float, float], ...] = ()


@dataclass(frozen=True, slots=True)
class ForecastPoint:
    start: datetime
    p_mw: float
    p10_mw: float
    p90_mw: float


@dataclass(frozen=True, slots=True)
class Forecast:
    feeder_id: str
    horizon: Horizon
    issued_at: datetime
    method: str  # "lightgbm", "seasonal-naive", "last-day", "none"
    points: tuple[ForecastPoint, ...]
    backtest: Backtest | None
    fallback: str | None = None  # why the method is not the model
    peak_mw: float | None = None
    peak_at: datetime | None = None
    limit_mw: float | None = None
    over_limit: bool = False
    corrected_by_mw: float = 0.0  # the intra-day correction at the first step
    extras: dict[str, str] = field(default_factory=dict)


# -- calendar and features -----------------------------------------------------------------------


@cache
def _holiday_calendar(country: str, years: tuple[int, ...]) -> frozenset[object]:
    import holidays

    try:
        return frozenset(holidays.country_holidays(country, years=list(years)).keys())
    except NotImplementedError as exc:  # holidays raises this for an unknown country code
        raise ValueError(f"holidays knows no country {country!r}; give an ISO 3166 code such as US, DE, FR") from exc


@dataclass(frozen=True, slots=True)
class Calendar:
    hour: np.ndarray  # local fractional hour
    hour_int: np.ndarray
    dow: np.ndarray
    weekend: np.ndarray
    holiday: np.ndarray
    month: np.ndarray
    doy_sin: np.ndarray
    doy_cos: np.ndarray
    trend_days: np.ndarray


def calendar(start: datetime, n: int, tz: str, country: str) -> Calendar:
    idx = pd.date_range(start.astimezone(UTC), periods=n, freq=f"{STEP_S}s", tz="UTC").tz_convert(tz)
    hour = np.asarray(idx.hour + idx.minute / 60.0, dtype=float)
    dates = idx.date
    years = tuple(sorted({d.year for d in (dates[0], dates[-1])} | {dates[0].year + 1})) if n else ()
    days = _holiday_calendar(country, years) if n else frozenset()
    holiday = np.fromiter((d in days for d in dates), dtype=float, count=n)
    doy = np.asarray(idx.dayofyear, dtype=float)
    dow = np.asarray(idx.dayofweek, dtype=float)
    return Calendar(hour=hour, hour_int=np.asarray(idx.hour, dtype=int), dow=dow,
                    weekend=((dow >= 5) | (holiday > 0)).astype(float), holiday=holiday,
                    month=np.asarray(idx.month, dtype=int), doy_sin=np.sin(2 * np.pi * doy / 365.25),
                    doy_cos=np.cos(2 * np.pi * doy / 365.25), trend_days=np.arange(n) / PER_DAY)


def temperature_outlook(temp: np.ndarray, origin: int, n: int) -> np.ndarray:
    """Temperature on indices ``0..n-1`` as known at ``origin``: observed before it (and after it
    where the series holds a forecast), else the mean of the same quarter hour over the three days
    before the origin."""
    out = np.full(n, np.nan)
    m = min(len(temp), n)
    out[:m] = temp[:m]
    known = temp[:origin]
    for j in range(origin, n):
        if math.isfinite(out[j]):  # the series holds a forecast for this time
            continue
        k0 = (j - origin) // PER_DAY + 1
        vals = [known[j - PER_DAY * k] for k in range(k0, k0 + 3) if 0 <= j - PER_DAY * k < origin]
        vals = [v for v in vals if not math.isnan(v)]
        out[j] = float(np.mean(vals)) if vals else np.nan
    return out


def _lag(y: np.ndarray, j: np.ndarray, lag: int, origin: int | None) -> np.ndarray:
    src = j - lag
    ok = src >= 0
    if origin is not None:
        ok &= src < origin
    out = np.full(len(j), np.nan)
    out[ok] = y[src[ok]]
    return out


def model_features(cal: Calendar, y: np.ndarray, temp: np.ndarray, rows: np.ndarray,
                   origin: int | None) -> np.ndarray:
    """The model's design matrix for ``rows`` (lags only from before ``origin`` when given)."""
    t = temp[rows]
    return np.column_stack([
        cal.hour[rows], cal.dow[rows], cal.weekend[rows], cal.holiday[rows], cal.doy_sin[rows], cal.doy_cos[rows],
        t, np.maximum(0.0, HEATING_BELOW_C - t), np.maximum(0.0, t - COOLING_ABOVE_C),
        _lag(y, rows, PER_WEEK, origin), _lag(y, rows, 2 * PER_WEEK, origin),
    ])


def vanilla_features(cal: Calendar, temp: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Trend, hour x weekday, month, (T, T^2, T^3) x hour: the textbook linear load model."""
    n = len(rows)
    hw = np.zeros((n, 168))
    hw[np.arange(n), (cal.dow[rows].astype(int) * 24 + cal.hour_int[rows])] = 1.0
    month = np.zeros((n, 12))
    month[np.arange(n), cal.month[rows] - 1] = 1.0
    hour = np.zeros((n, 24))
    hour[np.arange(n), cal.hour_int[rows]] = 1.0
    t = np.nan_to_num(temp[rows], nan=float(np.nanmean(temp)) if np.isfinite(temp).any() else 0.0) / 10.0
    poly = np.concatenate([hour * t[:, None], hour * (t ** 2)[:, None], hour * (t ** 3)[:, None]], axis=1)
    return np.concatenate([cal.trend_days[rows][:, None], hw, month, poly], axis=1)


class _Linear:
    def __init__(self, x: np.ndarray, y: np.ndarray, ridge: float = 1e-3) -> None:
        mu = x.mean(axis=0)
        self.mu = mu
        xc = x - mu
        self.b0 = float(y.mean())
        a = xc.T @ xc + ridge * len(y) * np.eye(x.shape[1])
        self.w = np.linalg.solve(a, xc.T @ (y - self.b0))

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray((x - self.mu) @ self.w + self.b0)


def seasonal_naive(y: np.ndarray, rows: np.ndarray, origin: int) -> np.ndarray:
    """The same quarter hour one week earlier (two weeks when missing), never after ``origin``."""
    a = _lag(y, rows, PER_WEEK, origin)
    b = _lag(y, rows, 2 * PER_WEEK, origin)
    return np.where(np.isnan(a), b, a)


def last_day(y: np.ndarray, rows: np.ndarray, origin: int) -> np.ndarray:
    """The last complete day before the origin, repeated (when there is less than a week)."""
    out = np.full(len(rows), np.nan)
    for k, j in enumerate(rows):
        src = j - PER_DAY * ((j - origin) // PER_DAY + 1)
        while src >= 0 and math.isnan(y[src]):
            src -= PER_DAY
        if src >= 0:
            out[k] = y[src]
    return out


# -- scoring -------------------------------------------------------------------------------------


def mape(y: np.ndarray, f: np.ndarray) -> float:
    ok = np.isfinite(y) & np.isfinite(f) & (np.abs(y) > 1e-9)
    return float(np.mean(np.abs((y[ok] - f[ok]) / y[ok])) * 100) if ok.any() else float("nan")


def rmse(y: np.ndarray, f: np.ndarray) -> float:
    ok = np.isfinite(y) & np.isfinite(f)
    return float(np.sqrt(np.mean((y[ok] - f[ok]) ** 2))) if ok.any() else float("nan")


def pinball(y: np.ndarray, f: np.ndarray, q: float) -> float:
    ok = np.isfinite(y) & np.isfinite(f)
    d = y[ok] - f[ok]
    return float(np.mean(np.maximum(q * d, (q - 1) * d))) if ok.any() else float("nan")


def band_quantiles(rel: Sequence[np.ndarray], steps: int) -> tuple[tuple[float, float], ...]:
    """(P10, P90) of the relative residuals per horizon band, from per-origin residual rows."""
    if not rel:
        return ()
    stack = np.vstack(rel)
    out = []
    for b0 in range(0, steps, BAND_STEPS):
        vals = stack[:, b0:b0 + BAND_STEPS].ravel()
        vals = vals[np.isfinite(vals)]
        out.append((float(np.quantile(vals, 0.1)), float(np.quantile(vals, 0.9))) if len(vals) else (0.0, 0.0))
    return tuple(out)


def interval(point: np.ndarray, bands: Sequence[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray]:
    if not bands:
        return point.copy(), point.copy()
    lo = np.array([bands[min(h // BAND_STEPS, len(bands) - 1)][0] for h in range(len(point))])
    hi = np.array([bands[min(h // BAND_STEPS, len(bands) - 1)][1] for h in range(len(point))])
    p10 = point * (1 + np.minimum(lo, 0.0))
    p90 = point * (1 + np.maximum(hi, 0.0))
    return p10, p90


def _scores(ys: list[np.ndarray], fs: list[np.ndarray], steps: int) -> tuple[Scores, tuple[tuple[float, float], ...]]:
    """Scores of one method over the origins (oldest first); intervals from earlier origins only."""
    y = np.concatenate(ys)
    f = np.concatenate(fs)
    rel = [yy / ff - 1 for yy, ff in zip(ys, fs, strict=True)]
    losses, inside, n_in = [], 0, 0
    for k in range(MIN_CALIBRATION_ORIGINS, len(ys)):
        bands = band_quantiles(rel[:k], steps)
        p10, p90 = interval(fs[k], bands)
        losses.append(np.mean([pinball(ys[k], p10, 0.1), pinball(ys[k], fs[k], 0.5), pinball(ys[k], p90, 0.9)]))
        ok = np.isfinite(ys[k])
        inside += int(np.sum((ys[k][ok] >= p10[ok]) & (ys[k][ok] <= p90[ok])))
        n_in += int(ok.sum())
    return (Scores(mape=mape(y, f), rmse=rmse(y, f), pinball=float(np.mean(losses)) if losses else None,
                   coverage=inside / n_in if n_in else None), band_quantiles(rel, steps))


# -- the forecaster ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Grid:
    """The history and the horizon on one index (built once per forecast)."""

    y: np.ndarray
    temp: np.ndarray | None
    cal: Calendar
    n_hist: int


def grid(inp: ForecastInput, steps: int) -> Grid:
    n_hist = len(inp.load_p_mw)
    n = n_hist + steps
    temp = None
    has_load = np.isfinite(inp.load_p_mw)
    if inp.temperature_c is not None and has_load.any() and \
            np.isfinite(inp.temperature_c[:n_hist][has_load]).mean() > 0.9:  # weather for most of the history
        temp = np.full(n, np.nan)
        m = min(n, len(inp.temperature_c))
        temp[:m] = inp.temperature_c[:m]
    y = np.full(n, np.nan)
    y[:n_hist] = inp.load_p_mw
    return Grid(y=y, temp=temp, cal=calendar(inp.start, n, inp.tz, inp.country), n_hist=n_hist)


def _fit_predict(g: Grid, origin: int, steps: int, fit: Regressor, *, live: bool = False
                 ) -> tuple[np.ndarray, np.ndarray, Predictor]:
    """(model forecast, vanilla forecast, fitted model) for ``origin .. origin+steps``. Only a live
    forecast reads temperatures after the origin (a weather forecast in the series); a backtest
    origin sees the outlook made from what was known then."""
    assert g.temp is not None
    y = g.y.copy()
    y[origin:] = np.nan  # nothing after the origin is known
    train = np.arange(0, origin)
    train = train[np.isfinite(y[train]) & np.isfinite(g.temp[train])]
    rows = np.arange(origin, origin + steps)
    temp_all = temperature_outlook(g.temp if live else g.temp[:origin], origin, origin + steps)
    model = fit(model_features(g.cal, y, g.temp, train, None), y[train])
    f_model = model.predict(model_features(g.cal, y, temp_all, rows, origin))
    lin = _Linear(vanilla_features(g.cal, g.temp, train), y[train])
    f_lin = lin.predict(vanilla_features(g.cal, temp_all, rows))
    return np.asarray(f_model, dtype=float), f_lin, model


def _residual_correction(g: Grid, origin: int, model: Predictor, phi: float, steps: int) -> np.ndarray:
    """The intra-day correction per step: the last hour's mean residual, decayed by ``phi`` per step."""
    assert g.temp is not None
    temp = g.temp[:origin].copy()
    finite = np.flatnonzero(np.isfinite(temp))
    if len(finite) and finite[-1] + 1 < origin:  # the weather series ends before the telemetry does
        temp = temperature_outlook(temp[:finite[-1] + 1], int(finite[-1]) + 1, origin)
    rows = np.arange(max(0, origin - 4), origin)
    rows = rows[np.isfinite(g.y[rows]) & np.isfinite(temp[rows])]
    if len(rows) == 0:
        return np.zeros(steps)
    f = model.predict(model_features(g.cal, g.y, temp, rows, None))
    r = float(np.mean(g.y[rows] - f))
    return r * phi ** np.arange(1, steps + 1)


def backtest(g: Grid, horizon: Horizon, fit: Regressor) -> Backtest | None:
    """Rolling-origin backtest over the history's last days; None when the history is too short."""
    steps = steps_of(horizon)
    first = MIN_TRAIN_DAYS * PER_DAY
    last = g.n_hist - steps
    if g.temp is None or last < first:
        return None
    if horizon is Horizon.DAY_AHEAD:
        origins = [last - PER_DAY * k for k in range(BACKTEST_DAY_AHEAD_ORIGINS) if last - PER_DAY * k >= first]
    else:
        origins = [last - BAND_STEPS * k for k in range(BACKTEST_INTRA_DAY_ORIGINS) if last - BAND_STEPS * k >= first]
    origins.sort()
    ys, fm, fn, fv = [], [], [], []
    models: dict[int, Predictor] = {}  # intra-day: one fit per day, as the live service refits daily
    for o in origins:
        rows = np.arange(o, o + steps)
        if horizon is Horizon.DAY_AHEAD:
            f_model, f_lin, _ = _fit_predict(g, o, steps, fit)
        else:
            day0 = o - o % PER_DAY
            if day0 not in models:
                models[day0] = _fit_predict(g, day0, 1, fit)[2]
            model = models[day0]
            y_known = g.y.copy()
            y_known[o:] = np.nan
            temp_all = temperature_outlook(g.temp[:o], o, o + steps)
            f_model = model.predict(model_features(g.cal, y_known, temp_all, rows, day0))
            lin_train = np.arange(0, day0)
            lin_train = lin_train[np.isfinite(g.y[lin_train]) & np.isfinite(g.temp[lin_train])]
            lin = _Linear(vanilla_features(g.cal, g.temp, lin_train), g.y[lin_train])
            f_lin = lin.predict(vanilla_features(g.cal, temp_all, rows))
            f_model = np.asarray(f_model) + _residual_correction(g, o, model, _PHI_PRIOR, steps)
        ys.append(g.y[rows])
        fm.append(f_model)
        fn.append(seasonal_naive(g.y, rows, o))
        fv.append(f_lin)
    model_scores, bands = _scores(ys, fm, steps)
    phi = _phi(ys, fm)
    return Backtest(origins=len(origins), points=sum(len(y) for y in ys), model=model_scores,
                    seasonal_naive=_scores(ys, fn, steps)[0], vanilla=_scores(ys, fv, steps)[0], phi=phi,
                    bands=bands)


_PHI_PRIOR = 0.98  # residual persistence per 15 minutes used in the intra-day backtest


def _phi(ys: list[np.ndarray], fs: list[np.ndarray]) -> float:
    num = den = 0.0
    for y, f in zip(ys, fs, strict=True):
        r = y - f
        r = r[np.isfinite(r)]
        if len(r) > 2:
            r = r - r.mean()
            num += float(np.sum(r[1:] * r[:-1]))
            den += float(np.sum(r * r))
    return float(min(0.995, max(0.0, num / den))) if den > 0 else 0.0


def forecast(inp: ForecastInput, horizon: Horizon, fit: Regressor, *, with_backtest: bool = True) -> Forecast:
    """The forecast for the ``horizon`` after ``inp.issued_at`` (see the module docstring)."""
    steps = steps_of(horizon)
    g = grid(inp, steps)
    origin = g.n_hist
    rows = np.arange(origin, origin + steps)
    times = [inp.issued_at + timedelta(seconds=STEP_S * h) for h in range(steps)]
    valid_days = int(np.isfinite(inp.load_p_mw).sum()) / PER_DAY
    fallback = None
    bt = None
    correction = np.zeros(steps)
    if valid_days == 0:
        return Forecast(inp.feeder_id, horizon, inp.issued_at, "none", (), None,
                        fallback="no load history for this feeder in the historian; nothing to forecast from")
    if g.temp is None:
        fallback = "no weather series in the historian (kind=weather/feeder=_site); seasonal naive used"
    elif valid_days < MIN_TRAIN_DAYS:
        fallback = (f"{valid_days:.1f} days of load history, under the {MIN_TRAIN_DAYS} the model needs; "
                    f"seasonal naive used")
    if fallback is None:
        bt = backtest(g, horizon, fit) if with_backtest else None
        point, _, model = _fit_predict(g, origin, steps, fit, live=True)
        if horizon is Horizon.INTRA_DAY:
            correction = _residual_correction(g, origin, model, _PHI_PRIOR, steps)  # as backtested
            point = point + correction
        method = "lightgbm"
    elif valid_days >= 7:
        point = seasonal_naive(g.y, rows, origin)
        method = "seasonal-naive"
        if np.isnan(point).any():
            point = np.where(np.isnan(point), last_day(g.y, rows, origin), point)
    else:
        point = last_day(g.y, rows, origin)
        method = "last-day"
        fallback = f"{valid_days:.1f} days of load history, under a week: the last day repeated"
    bands = bt.bands if bt else ((-0.1, 0.1),)  # fallbacks: a stated +-10 % band, not a calibrated one
    if bt is None and fallback is not None:
        fallback += "; the P10/P90 band is a fixed +-10 %"
    point = np.maximum(point, 0.0)
    p10, p90 = interval(point, bands)
    pts = tuple(ForecastPoint(start=t, p_mw=float(p), p10_mw=float(lo), p90_mw=float(hi))
                for t, p, lo, hi in zip(times, point, p10, p90, strict=True) if np.isfinite(p))
    peak = max(pts, key=lambda p: p.p_mw) if pts else None
    over = bool(peak is not None and inp.limit_mw is not None and peak.p_mw > inp.limit_mw)
    return Forecast(inp.feeder_id, horizon, inp.issued_at, method, pts, bt, fallback=fallback,
                    peak_mw=peak.p_mw if peak else None, peak_at=peak.start if peak else None, limit_mw=inp.limit_mw,
                    over_limit=over, corrected_by_mw=float(correction[0]) if steps else 0.0)


UNRATED_KA = 1000.0


def feeder_limit_mw(feeder: object) -> float | None:
    """The feeder's load limit at its head (MW, unity power factor): the rating of the transformers
    at its source buses, else the thermal limit of the lines leaving them, times the feeder's
    ``max_loading_percent``. None when neither is known (a line rated at :data:`UNRATED_KA` or more
    is pandapower's "no limit" placeholder, as in the Baran & Wu case)."""
    sources = {s.bus_id for s in getattr(feeder, "sources", ())}
    limits = getattr(feeder, "limits", None)
    pct = getattr(limits, "max_loading_percent", 100.0) / 100.0
    trafos = [t for t in getattr(feeder, "transformers", ()) if getattr(t, "hv_bus_id", None) in sources]
    if trafos:
        return sum(float(t.sn_mva) for t in trafos) * pct
    volts = {b.id: b.vn_kv for b in getattr(feeder, "buses", ())}
    lines = [ln for ln in getattr(feeder, "lines", ()) if ln.from_bus_id in sources or ln.to_bus_id in sources]
    if not lines or any(ln.max_i_ka >= UNRATED_KA for ln in lines):
        return None
    side = [ln.from_bus_id if ln.from_bus_id in sources else ln.to_bus_id for ln in lines]
    return sum(math.sqrt(3) * volts.get(b, 0.0) * ln.max_i_ka for ln, b in zip(lines, side, strict=True)) * pct
