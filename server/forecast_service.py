"""Load forecasts for the API: made in Ray tasks, kept per feeder and horizon, alarms handed to the actor.

A day-ahead forecast (the next 48 hours) is made on the first request of the utility's local day and
kept for that day; an intra-day forecast (the next 24 hours) is made again once a new quarter hour
has begun, with the feeder actor's newest solves (not yet in the data set) as the latest
telemetry. Concurrent requests for the same forecast wait for one job. Each forecast's peak goes to
the feeder's ``forecast`` application, which raises or clears the forward-looking alarm
``FORECAST_OVERLOAD`` against the feeder's limit (:func:`actors.cores.forecast.feeder_limit_mw`).

The job runs as a Ray task (:mod:`actors.tasks`), never in this process's event loop nor in a feeder
actor.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from actors.cores.forecast import Forecast, Horizon, feeder_limit_mw
from actors.tasks.forecast import ForecastJob, quarter_floor
from graph_schema.errors import DmsError

log = logging.getLogger(__name__)
HISTORIAN_APP = "historian"
FORECAST_APP = "forecast"
EXTRAS_KEY = "forecast"


async def _ray_forecast(job: ForecastJob) -> Forecast:
    from actors.tasks import forecast_in_task  # Ray: the server is a Ray driver already

    return await forecast_in_task(job)


class ForecastService:
    def __init__(self, grid: Any, settings: Any, *, root: str | None = None,
                 run: Callable[[ForecastJob], Awaitable[Forecast]] = _ray_forecast,
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.grid = grid
        self.root = root or settings.historian_root
        self.tz = settings.timezone
        self.country = settings.forecast_holidays_country
        self._run = run
        self._now = now
        self._cache: dict[tuple[str, Horizon], Forecast] = {}
        self._locks: dict[tuple[str, Horizon], asyncio.Lock] = {}
        self.jobs = 0  # jobs started (tests and metrics)

    @classmethod
    def of(cls, runtime: Any) -> ForecastService:
        """The runtime's one service (so its cache is shared by every request)."""
        svc = runtime.extras.get(EXTRAS_KEY)
        if svc is None:
            svc = runtime.extras[EXTRAS_KEY] = cls(runtime.grid, runtime.settings)
        return svc  # type: ignore[no-any-return]

    def _fresh(self, f: Forecast, issued: datetime) -> bool:
        if f.horizon is Horizon.INTRA_DAY:
            return f.issued_at >= issued
        zone = ZoneInfo(self.tz)
        return f.issued_at.astimezone(zone).date() == issued.astimezone(zone).date()

    async def forecast(self, feeder_id: str, horizon: Horizon) -> Forecast:
        self.grid.require_feeder(feeder_id)
        key = (feeder_id, horizon)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            issued = quarter_floor(self._now())
            have = self._cache.get(key)
            if have is not None and self._fresh(have, issued):
                return have
            model = await self.grid.model(feeder_id)
            job = ForecastJob(feeder_id=feeder_id, horizon=horizon, historian_root=self.root, issued_at=issued,
                              tz=self.tz, country=self.country, limit_mw=feeder_limit_mw(model),
                              recent=await self._recent(feeder_id, issued - timedelta(days=1), issued))
            self.jobs += 1
            result = await self._run(job)
            self._cache[key] = result
            await self._publish(result)
            return result

    async def _recent(self, feeder_id: str, since: datetime, before: datetime) -> tuple[tuple[datetime, float], ...]:
        """The actor's solves not yet in the data set: (time, source MW)."""
        try:
            recent = await self.grid.fleet.call_app(feeder_id, HISTORIAN_APP, "recent_solves", since)
        except DmsError as exc:
            log.warning("forecast: recent solves of feeder %s unavailable: %s", feeder_id, exc.message)
            return ()
        out = []
        for row in recent.get("rows", []):
            ts = row[0] if row[0].tzinfo else row[0].replace(tzinfo=UTC)
            if since <= ts < before and row[7] is not None:
                out.append((ts, float(row[7])))
        return tuple(out)

    async def _publish(self, f: Forecast) -> None:
        try:
            await self.grid.fleet.call_app(f.feeder_id, FORECAST_APP, "publish", f.horizon.value,
                                           f.issued_at.isoformat(), f.peak_mw,
                                           f.peak_at.isoformat() if f.peak_at else None, f.limit_mw)
        except DmsError as exc:  # the alarm follows with the next forecast
            log.warning("forecast: could not hand feeder %s its forecast peak: %s", f.feeder_id, exc.message)
