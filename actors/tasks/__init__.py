"""Heavy work as Ray tasks: the one place, besides the fleet supervisor, that calls Ray.

The modules of this package run in Ray workers, not in a feeder actor's process: they may import
what analyses need (LightGBM, DuckDB); nothing the actor imports may import them
(``tests/unit/test_layers.py``).

A task takes a frozen job and returns a frozen result; it runs in a Ray worker process (one CPU
each), never in a feeder actor, so the libraries only analyses need (LightGBM, DuckDB) load there.
The caller (the server, a benchmark) must already be connected to Ray
(:func:`actors.fleet.connect_ray`). A task that dies with its worker is run again once
(``max_retries=1``): a forecast job only reads the historian and writes its model under a fixed
name, so running it twice is harmless.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import ray

from actors.cores.forecast import Forecast
from actors.tasks.forecast import ForecastJob, run_forecast

_forecast_task: Any = ray.remote(num_cpus=1, max_retries=1)(run_forecast)


def submit_forecast(job: ForecastJob) -> Any:
    """Start one forecast job; returns its Ray object ref (awaitable)."""
    return _forecast_task.remote(job)


async def forecast_in_task(job: ForecastJob) -> Forecast:
    result: Forecast = await submit_forecast(job)
    return result


async def forecasts_in_tasks(jobs: Sequence[ForecastJob]) -> list[Forecast]:
    """Run the jobs in parallel, as many at once as the cluster has CPUs; results in job order."""
    return list(await asyncio.gather(*(submit_forecast(j) for j in jobs)))


def forecasts_blocking(jobs: Sequence[ForecastJob]) -> list[Forecast]:
    """The same from synchronous code (benchmarks)."""
    out: list[Forecast] = ray.get([submit_forecast(j) for j in jobs])
    return out
