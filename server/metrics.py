"""Prometheus metrics: per GraphQL operation (not just per path), subscriptions, actors, solvers.

One registry per process (``METRICS``); ``render`` adds the gauges read from the runtime at scrape
time (actor restarts, last solve durations), so nothing polls in the background.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from strawberry.extensions import SchemaExtension


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.graphql_requests = Counter(
            "dms_graphql_requests_total", "GraphQL operations by name, type and outcome",
            ["operation", "type", "outcome"], registry=self.registry,
        )
        self.graphql_seconds = Histogram(
            "dms_graphql_request_seconds", "GraphQL operation duration by name",
            ["operation", "type"], registry=self.registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.subscriptions = Gauge(
            "dms_graphql_subscriptions_active", "Open GraphQL subscriptions", ["subscription"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "dms_http_requests_total", "HTTP requests by route and status", ["route", "status"],
            registry=self.registry,
        )
        self.actor_restarts = Gauge(
            "dms_feeder_actor_restarts", "Times the fleet recreated a feeder's actor", ["feeder"],
            registry=self.registry,
        )
        self.solver_seconds = Gauge(
            "dms_solver_last_seconds", "Duration of the feeder's last power flow", ["feeder"],
            registry=self.registry,
        )
        self.feeder_up = Gauge("dms_feeder_actor_up", "1 when the feeder actor answers", ["feeder"],
                               registry=self.registry)
        self.telemetry_points = Counter(
            "dms_telemetry_points_total", "Telemetry point values applied, by feeder and quality",
            ["feeder", "quality"], registry=self.registry,
        )
        self.fdir_outcomes = Counter(
            "dms_fdir_outcomes_total", "FDIR runs by feeder and outcome", ["feeder", "outcome"],
            registry=self.registry,
        )


METRICS = Metrics()


class OperationMetrics(SchemaExtension):
    """Counts and times each GraphQL operation under its operation name."""

    def on_operation(self) -> Iterator[None]:
        start = time.perf_counter()
        yield
        ctx = self.execution_context
        name = ctx.operation_name or "anonymous"
        try:
            kind = ctx.operation_type.value
        except Exception:
            kind = "unknown"
        result = ctx.result
        outcome = "error" if result is not None and getattr(result, "errors", None) else "ok"
        METRICS.graphql_requests.labels(name, kind, outcome).inc()
        METRICS.graphql_seconds.labels(name, kind).observe(time.perf_counter() - start)


async def refresh_from_runtime(runtime: Any) -> None:
    if runtime is None:
        return
    for h in await runtime.fleet.health(timeout_s=2.0):
        METRICS.feeder_up.labels(h.feeder_id).set(1 if h.ok else 0)
        METRICS.actor_restarts.labels(h.feeder_id).set(h.restarts)


def render() -> bytes:
    return generate_latest(METRICS.registry)
