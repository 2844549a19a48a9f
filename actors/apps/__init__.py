"""Applications hosted by the feeder actor (see :mod:`actors.applications`): one module each.

``DEFAULT_APPS`` is what every feeder hosts, in start order.
"""

from __future__ import annotations

from actors.apps.estimation_app import EstimationApp
from actors.apps.fdir_app import FdirApp
from actors.apps.historian_app import HistorianApp
from actors.apps.voltvar_app import VoltVarApp

# The estimator starts first: the other applications read the state it estimates.
DEFAULT_APPS = (EstimationApp, FdirApp, HistorianApp)
DEFAULT_APPS = (*DEFAULT_APPS, VoltVarApp)  # OFF until an operator sets a mode: costs nothing before

__all__ = ["DEFAULT_APPS", "EstimationApp", "FdirApp", "HistorianApp", "VoltVarApp"]
