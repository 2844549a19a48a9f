"""Applications hosted by the feeder actor (see :mod:`actors.applications`): one module each.

``DEFAULT_APPS`` is what every feeder hosts, in start order.
"""

from __future__ import annotations

from actors.apps.estimation_app import EstimationApp
from actors.apps.fdir_app import FdirApp
from actors.apps.forecast_app import ForecastApp
from actors.apps.historian_app import HistorianApp

# The estimator starts first: the other applications read the state it estimates.
DEFAULT_APPS = (EstimationApp, FdirApp, HistorianApp)
DEFAULT_APPS += (ForecastApp,)  # forward-looking alarms from load forecasts

__all__ = ["DEFAULT_APPS", "EstimationApp", "FdirApp", "ForecastApp", "HistorianApp"]
