"""Heavy analyses as Ray tasks: reconfiguration, hosting capacity, N-1, scenarios (issue #14).

Each analysis runs as one Ray task (``num_cpus=1``, never retried: a retry would repeat minutes of
work the caller may have cancelled) on a frozen feeder, never in a feeder actor's process, so the
actors keep their scan period and a cluster spreads the work. The task imports only the pure cores.

Progress and cancellation go through one small named actor per cluster, :class:`JobTracker`
(``num_cpus=0``): the task reports its fraction done at most every ``REPORT_EVERY_S`` and learns
in the same call whether the job was cancelled, then stops at its next power flow
(:class:`~actors.cores.analysis.Cancelled`); the server reads the fraction from the tracker. A
job cancelled before it starts is cancelled by Ray itself (``ray.cancel``).

Results leave the task as plain dicts (``dataclasses.asdict`` of the core's frozen result): they
are stored as JSON records by the server (:mod:`server.study_service`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Mapping
from typing import Any

import ray

from actors.cores.analysis import Progress
from graph_schema.model import Feeder

TRACKER_NAME = "dms-analysis-jobs"
REPORT_EVERY_S = 0.2


class JobTracker:
    """Fraction done and cancel flags of running analyses (plain class; Ray applied below)."""

    def __init__(self) -> None:
        self._fraction: dict[str, float] = {}
        self._cancelled: set[str] = set()

    def report(self, job_id: str, fraction: float) -> bool:
        """Record progress; True when the job was cancelled (the task then stops)."""
        self._fraction[job_id] = fraction
        return job_id in self._cancelled

    def cancel(self, job_id: str) -> None:
        self._cancelled.add(job_id)

    def fraction(self, job_id: str) -> float | None:
        return self._fraction.get(job_id)

    def forget(self, job_id: str) -> None:
        self._fraction.pop(job_id, None)
        self._cancelled.discard(job_id)


def _run_core(kind: str, feeder: Feeder, params: Mapping[str, Any], progress: Progress) -> Any:
    if kind == "RECONFIGURATION":
        from actors.cores.reconfiguration import optimal_reconfiguration

        return optimal_reconfiguration(feeder, switch_ids=params.get("switch_ids"), progress=progress)
    if kind == "HOSTING_CAPACITY":
        from actors.cores.hosting import hosting_capacity

        return hosting_capacity(feeder, load_level=params["load_level"], power_factor=params["power_factor"],
                                bus_ids=params.get("bus_ids"), progress=progress)
    if kind == "CONTINGENCY":
        from actors.cores.contingency import run_contingency

        return run_contingency(feeder, element_ids=params.get("element_ids"), progress=progress)
    if kind == "SCENARIOS":
        from actors.cores.scenarios import run_scenarios

        return run_scenarios(feeder, progress=progress, **params)
    raise ValueError(f"unknown analysis kind {kind!r}")


def run_analysis(kind: str, feeder: Feeder, params: Mapping[str, Any], job_id: str, tracker: Any) -> dict[str, Any]:
    """The task body (also callable in-process with ``tracker=None``, for unit tests)."""
    last = [0.0]

    def report(fraction: float) -> None:
        now = time.monotonic()
        if tracker is not None and (now - last[0] >= REPORT_EVERY_S or fraction >= 1.0):
            last[0] = now
            if ray.get(tracker.report.remote(job_id, fraction)):
                cancelled[0] = True

    cancelled = [False]
    progress = Progress(report=report, stopped=lambda: cancelled[0])
    result = _run_core(kind, feeder, params, progress)
    return dataclasses.asdict(result)


_remote_run = ray.remote(num_cpus=1, max_retries=0)(run_analysis)
_RemoteTracker = ray.remote(num_cpus=0)(JobTracker)


def tracker() -> Any:
    """The cluster's tracker actor (created by the first caller)."""
    from actors.fleet import NAMESPACE

    return _RemoteTracker.options(name=TRACKER_NAME, namespace=NAMESPACE, get_if_exists=True).remote()


def submit(kind: str, feeder: Feeder, params: Mapping[str, Any], job_id: str) -> tuple[Any, Any]:
    """Start the task; returns (object ref, tracker handle)."""
    t = tracker()
    return _remote_run.remote(kind, feeder, dict(params), job_id, t), t


def cancel(ref: Any, tracker_handle: Any, job_id: str) -> None:
    tracker_handle.cancel.remote(job_id)
    ray.cancel(ref, force=False)


TaskCancelled: type[BaseException] = ray.exceptions.TaskCancelledError
TaskError: type[BaseException] = ray.exceptions.RayTaskError


def unwrap(exc: BaseException) -> BaseException:
    """The analysis's own exception inside a Ray task error (e.g. ``Cancelled``, ``BadInput``)."""
    cause: Callable[[], BaseException] | None = getattr(exc, "as_instanceof_cause", None)
    if cause is not None:
        inner = cause()
        return getattr(inner, "cause", None) or inner
    return exc
