"""What every analysis core (reconfiguration, hosting capacity, N-1, scenarios) shares.

An analysis takes a frozen :class:`~graph_schema.model.Feeder` whose recorded state *is* the
operating point to study: switch positions in ``Switch.is_open``, loads and DER set points in their
``p_mw``/``q_mvar``, outages as ``in_service=False``. A study (:mod:`actors.cores.study`) or a live
snapshot produces such a feeder; the cores never see live state, Ray, sockets or files.

Long analyses report progress and can be stopped between power flows: the caller passes a
:class:`Progress` whose ``report(fraction)`` is called now and then and whose ``stopped()`` is
polled; when it answers True the core raises :class:`Cancelled` (nothing half-written: a core
returns a result or raises, it never returns a partial one).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from graph_schema.errors import BadInput, DmsError
from graph_schema.model import Feeder


class Cancelled(DmsError):
    """The caller stopped the analysis (``Progress.stopped()`` answered True)."""

    code = "CANCELLED"


@dataclass(frozen=True)
class Progress:
    """Callbacks of a running analysis; both optional. ``report`` gets a fraction in [0, 1]."""

    report: Callable[[float], None] | None = None
    stopped: Callable[[], bool] | None = None

    def __call__(self, fraction: float) -> None:
        if self.stopped is not None and self.stopped():
            raise Cancelled("the analysis was cancelled")
        if self.report is not None:
            self.report(min(1.0, max(0.0, float(fraction))))


NO_PROGRESS = Progress()


def too_large(what: str, count: int, limit_name: str, limit: int, narrow: str) -> BadInput:
    """The error of a combinatorial request over its limit: names the limit and how to narrow it."""
    return BadInput(f"{what}: {count} cases exceed the limit {limit_name}={limit}; {narrow}")


def switch_states(feeder: Feeder) -> dict[str, bool]:
    """The feeder's recorded switch positions (id -> is_open)."""
    return {s.id: s.is_open for s in feeder.switches}
