"""Applications hosted by the feeder actor (see :mod:`actors.applications`): one module each.

``DEFAULT_APPS`` is what every feeder hosts, in start order.
"""

from __future__ import annotations

from actors.apps.der_app import DerApp
from actors.apps.estimation_app import EstimationApp
from actors.apps.fdir_app import FdirApp
from actors.apps.forecast_app import ForecastApp
from actors.apps.historian_app import HistorianApp
from actors.apps.voltvar_app import VoltVarApp

# The estimator starts first: the other applications read the state it estimates.
# DER management (#12): SunSpec telemetry, commands, curtailment. Volt/VAR is OFF until an operator
# sets a mode: it costs nothing before. The forecast application raises forward-looking alarms from
# load forecasts (made in Ray tasks, never here).
DEFAULT_APPS = (EstimationApp, FdirApp, HistorianApp, DerApp, VoltVarApp, ForecastApp)

__all__ = ["DEFAULT_APPS", "DerApp", "EstimationApp", "FdirApp", "ForecastApp", "HistorianApp", "VoltVarApp"]
