"""Forward-looking alarms from load forecasts, as a hosted application.

The forecast itself is made elsewhere (a Ray task, :mod:`actors.tasks.forecast`: LightGBM and DuckDB
never load in the feeder actor's process); the server hands this application the summary of each
new forecast (``publish``). A forecast peak above the feeder's limit raises the alarm
``FORECAST_OVERLOAD`` (kind ALARM, severity WARNING: nothing is wrong yet, the operator has time to
plan: demand response, reconfiguration); a later forecast of the same horizon under the limit clears
it. One alarm per horizon, so a day-ahead warning stays while intra-day refreshes come and go.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from actors.applications import FeederPorts, TelemetryChange
from actors.arbiter import Priority
from actors.cores.events import EventKind, Severity

FORECAST = "forecast"
ALARM_KIND = "FORECAST_OVERLOAD"


class ForecastApp:
    name = FORECAST
    priority = Priority.OPTIMISER  # it never operates a device
    api = frozenset({"publish", "latest"})
    read_only = frozenset({"latest"})

    def __init__(self) -> None:
        self._ports: FeederPorts | None = None
        self._latest: dict[str, dict[str, Any]] = {}  # horizon -> the last summary
        self._active: set[str] = set()  # horizons whose alarm is raised

    async def start(self, ports: FeederPorts) -> None:
        self._ports = ports

    async def close(self) -> None:
        self._ports = None

    def on_telemetry(self, change: TelemetryChange) -> None:
        return None

    def on_state(self, state: Any) -> None:
        return None

    def status(self) -> Mapping[str, Any]:
        return {"forecasts": len(self._latest), "alarms": sorted(self._active)}

    async def latest(self) -> dict[str, dict[str, Any]]:
        return dict(self._latest)

    async def publish(self, horizon: str, issued_at: str, peak_mw: float | None, peak_at: str | None,
                      limit_mw: float | None) -> bool:
        """Take a new forecast's summary; raise or clear the horizon's alarm. Returns whether it is raised."""
        if self._ports is None:
            return False
        over = peak_mw is not None and limit_mw is not None and peak_mw > limit_mw
        self._latest[horizon] = {"issued_at": issued_at, "peak_mw": peak_mw, "peak_at": peak_at, "limit_mw": limit_mw,
                                 "over_limit": over}
        element = f"{self._ports.feeder_id}/{horizon}"
        if over and horizon not in self._active:
            self._active.add(horizon)
            self._ports.emit(EventKind.ALARM, Severity.WARNING,
                             f"{horizon} forecast peak {peak_mw:.3f} MW at {peak_at} is above the feeder's limit "
                             f"{limit_mw:.3f} MW", {"alarm_kind": ALARM_KIND, "device_id": element,
                                                    "peak_mw": peak_mw, "limit_mw": limit_mw, "peak_at": peak_at or ""})
        elif not over and horizon in self._active:
            self._active.discard(horizon)
            self._ports.emit(EventKind.ALARM_CLEARED, Severity.INFO,
                             f"{horizon} forecast back under the feeder's limit",
                             {"alarm_kind": ALARM_KIND, "device_id": element})
        return over
