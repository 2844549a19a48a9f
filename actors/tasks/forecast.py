"""The load-forecast job: read the historian, train, backtest, forecast, store the model.

A plain function over a frozen :class:`ForecastJob` that returns a frozen
:class:`actors.cores.forecast.Forecast`; :mod:`actors.tasks` runs it as a Ray task, so LightGBM and
DuckDB load in a Ray worker and never in a feeder actor's process (``tests/unit/test_layers.py``
checks that no module the actor imports reaches this one). The maths is in
:mod:`actors.cores.forecast`; this module only feeds it and supplies the regressor.

Model artefacts are stored beside the historian's data set (not inside its versioned layout)::

    <historian root>/models/load-forecast/v1/feeder=<id>/<issued at, UTC>-<horizon>.txt

a LightGBM text model (``Booster.model_to_string``) whose first line is a JSON header naming the
format version, the feeder, the horizon, the issue time, the feature names and the backtest scores,
so a stored model says what it was trained on and how good it was.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np

from actors.cores.forecast import (
    PER_DAY,
    STEP_S,
    Forecast,
    ForecastInput,
    Horizon,
    Predictor,
    forecast,
    steps_of,
)

MODEL_FORMAT = "v1"
FEATURES = ("hour", "dow", "weekend", "holiday", "doy_sin", "doy_cos", "temperature_c", "heating_deg_c",
            "cooling_deg_c", "lag_1w_mw", "lag_2w_mw")
LGBM_PARAMS = {"objective": "regression", "learning_rate": 0.05, "num_leaves": 31, "min_data_in_leaf": 20,
               "feature_fraction": 0.9, "bagging_fraction": 0.9, "bagging_freq": 1, "lambda_l2": 1.0,
               "verbose": -1, "num_threads": 1, "deterministic": True, "seed": 7}
LGBM_ROUNDS = 300


@dataclass(frozen=True, slots=True)
class ForecastJob:
    """What a task needs (picklable, no handles): where the history is and whose forecast to make."""

    feeder_id: str
    horizon: Horizon
    historian_root: str
    issued_at: datetime  # a quarter hour (UTC); the history ends there
    history_days: int = 60
    tz: str = "UTC"
    country: str = "US"
    limit_mw: float | None = None
    with_backtest: bool = True
    store_model: bool = True
    # Rows newer than the data set's last part (the actor's unflushed solves): (UTC time, MW).
    recent: tuple[tuple[datetime, float], ...] = ()


class _Booster:
    def __init__(self, booster: object) -> None:
        self.booster = booster

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.booster.predict(x), dtype=float)  # type: ignore[attr-defined]


def lightgbm_regressor(x: np.ndarray, y: np.ndarray) -> Predictor:
    """A gradient-boosted tree model (LightGBM) of the load on the core's features."""
    import lightgbm as lgb  # only in the task's process

    data = lgb.Dataset(x, label=y, feature_name=list(FEATURES), free_raw_data=True)
    return _Booster(lgb.train(LGBM_PARAMS, data, num_boost_round=LGBM_ROUNDS))


def quarter_floor(ts: datetime) -> datetime:
    ts = ts.astimezone(UTC)
    return ts.replace(minute=ts.minute - ts.minute % 15, second=0, microsecond=0)


def load_input(job: ForecastJob) -> ForecastInput:
    """The feeder's 15-minute load (the source's active power) and the site's temperature, on one grid
    ending at ``job.issued_at``; the weather may run on past it (a forecast in the series)."""
    from graph_schema.historian.query import HistorianReader

    end = quarter_floor(job.issued_at)
    start = end - timedelta(days=job.history_days)
    n = job.history_days * PER_DAY
    reader = HistorianReader(job.historian_root, tz="UTC")
    load = np.full(n, np.nan)
    for b in reader.feeder_history(job.feeder_id, start, end, STEP_S):
        i = int((b.start - start).total_seconds() // STEP_S)
        if 0 <= i < n and b.p_source_mw is not None:
            load[i] = b.p_source_mw
    sums: dict[int, list[float]] = {}
    for ts, p in job.recent:
        i = int((ts.astimezone(UTC) - start).total_seconds() // STEP_S)
        if 0 <= i < n and math.isfinite(p):
            sums.setdefault(i, []).append(p)
    for i, ps in sums.items():
        if math.isnan(load[i]):
            load[i] = float(np.mean(ps))
    steps = steps_of(job.horizon)
    temp = np.full(n + steps, np.nan)
    for ts, t in reader.weather(start, end + timedelta(seconds=STEP_S * steps), STEP_S):
        i = int((ts - start).total_seconds() // STEP_S)
        if 0 <= i < n + steps and t is not None:
            temp[i] = t
    return ForecastInput(feeder_id=job.feeder_id, start=start, load_p_mw=load,
                         temperature_c=temp if np.isfinite(temp).any() else None, tz=job.tz, country=job.country,
                         limit_mw=job.limit_mw)


def run_forecast(job: ForecastJob) -> Forecast:
    """Read, train, backtest, forecast and store: the body of one Ray task."""
    inp = load_input(job)
    fitted: list[Predictor] = []

    def fit(x: np.ndarray, y: np.ndarray) -> Predictor:
        model = lightgbm_regressor(x, y)
        fitted.append(model)
        return model

    result = forecast(inp, job.horizon, fit, with_backtest=job.with_backtest)
    extras = dict(result.extras)
    extras["pid"] = str(os.getpid())
    if job.store_model and fitted and result.method == "lightgbm":
        extras["model_path"] = store_model(job, result, fitted[-1])
    return replace(result, extras=extras)


def model_path(root: str, feeder_id: str, issued_at: datetime, horizon: Horizon) -> str:
    from graph_schema.historian import check_feeder_id
    from graph_schema.historian.writer import open_root

    _, base = open_root(root)
    stamp = issued_at.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{base.rstrip('/')}/models/load-forecast/{MODEL_FORMAT}/feeder={check_feeder_id(feeder_id)}/" \
           f"{stamp}-{horizon.value}.txt"


def store_model(job: ForecastJob, result: Forecast, model: Predictor) -> str:
    """Write the model with its header (under a temporary name, then renamed: never half a model)."""
    from graph_schema.historian.writer import open_root

    fs, _ = open_root(job.historian_root)
    path = model_path(job.historian_root, job.feeder_id, result.issued_at, job.horizon)
    bt = result.backtest
    header = {"format": MODEL_FORMAT, "feeder_id": job.feeder_id, "horizon": job.horizon.value,
              "issued_at": result.issued_at.isoformat(), "features": list(FEATURES), "params": LGBM_PARAMS,
              "rounds": LGBM_ROUNDS,
              "backtest": None if bt is None else {"mape": bt.model.mape, "rmse": bt.model.rmse,
                                                   "seasonal_naive_mape": bt.seasonal_naive.mape,
                                                   "vanilla_mape": bt.vanilla.mape}}
    text = json.dumps(header) + "\n" + model.booster.model_to_string()  # type: ignore[attr-defined]
    folder = path.rsplit("/", 1)[0]
    fs.create_dir(folder, recursive=True)
    tmp = f"{folder}/.{path.rsplit('/', 1)[1]}.tmp"
    with fs.open_output_stream(tmp) as fh:
        fh.write(text.encode())
    fs.move(tmp, path)
    return path


def read_model_header(root: str, path: str) -> dict[str, object]:
    from graph_schema.historian.writer import open_root

    fs, _ = open_root(root)
    with fs.open_input_stream(path) as fh:
        first = fh.read(1 << 16).split(b"\n", 1)[0]
    header: dict[str, object] = json.loads(first)
    return header
