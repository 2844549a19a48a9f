"""Applications hosted by the feeder actor (see :mod:`actors.applications`): one module each.

``DEFAULT_APPS`` is what every feeder hosts, in start order.
"""

from __future__ import annotations

from actors.apps.fdir_app import FdirApp

DEFAULT_APPS = (FdirApp,)

__all__ = ["DEFAULT_APPS", "FdirApp"]
