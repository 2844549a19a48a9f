"""Prometheus metrics: per GraphQL operation (not just per path), subscriptions, actors, solvers.

One registry per process (``METRICS``); ``render`` adds the gauges read from the runtime at scrape
time (actor restarts, last solve durations), so nothing polls in the background.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from strawberry.extensions import SchemaExtension

from security.audit import ANCHOR_SEQ, ANCHOR_TIME


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
        self.feeder_up = Gauge("dms_feeder_actor_up", "1 when the feeder actor answers", ["feeder"],
                               registry=self.registry)
        self.audit_unstored = Gauge("dms_audit_entries_unstored", "Control audit entries kept by the API until "
                                    "the graph store takes them", registry=self.registry)
        self.actors = ActorCollector()
        self.registry.register(self.actors)
        # The newest audit chain head anchored outside the store (security.audit).
        self.registry.register(ANCHOR_SEQ)
        self.registry.register(ANCHOR_TIME)


class ActorCollector:
    """Figures that live in the feeder actors, read from them at scrape time (``refresh_from_runtime``).

    Running totals are exposed as counters: after an actor restart they start again from zero, which
    Prometheus' ``rate()`` treats as a counter reset.
    """

    def __init__(self) -> None:
        self.snapshot: dict[str, dict[str, Any]] = {}

    def collect(self) -> Iterator[Any]:
        values = CounterMetricFamily("dms_telemetry_values", "Telemetry values applied by the feeder actor",
                                     labels=["feeder"])
        points = GaugeMetricFamily("dms_telemetry_points", "Telemetry points by their current quality",
                                   labels=["feeder", "quality"])
        solve = GaugeMetricFamily("dms_solver_last_seconds", "Duration of the feeder's last power flow",
                                  labels=["feeder"])
        plans = CounterMetricFamily("dms_fdir_plans", "FDIR switching plans by outcome", labels=["feeder", "outcome"])
        app_up = GaugeMetricFamily("dms_app_up", "1 when the feeder's hosted application is RUNNING",
                                   labels=["feeder", "app", "state"])
        app_failures = CounterMetricFamily("dms_app_failures", "Failures of a hosted application (each restarts it)",
                                           labels=["feeder", "app"])
        app_restarts = CounterMetricFamily("dms_app_restarts", "Restarts of a hosted application after a failure",
                                           labels=["feeder", "app"])
        app_slow = CounterMetricFamily("dms_app_slow_steps", "Application steps that held the actor's event loop "
                                       "longer than the bound", labels=["feeder", "app"])
        app_max = GaugeMetricFamily("dms_app_max_step_seconds", "Longest step of a hosted application",
                                    labels=["feeder", "app"])
        unrecorded = GaugeMetricFamily("dms_control_outcomes_unrecorded", "Control outcomes kept in the actor "
                                       "until the graph store takes them", labels=["feeder"])
        intents = GaugeMetricFamily("dms_control_intents_pending", "Control intents of a killed actor not yet "
                                    "reconciled with the field", labels=["feeder"])
        unpersisted = GaugeMetricFamily("dms_switch_states_unpersisted", "Switch positions seen in the field and "
                                        "not yet stored", labels=["feeder"])
        for fid, snap in sorted(self.snapshot.items()):
            ctl = snap.get("control", {})
            unrecorded.add_metric([fid], float(ctl.get("unrecorded", 0)))
            intents.add_metric([fid], float(ctl.get("pending_intents", 0)))
            unpersisted.add_metric([fid], float(len(ctl.get("unpersisted_switches", ()))))
            for app, h in sorted(snap.get("apps", {}).items()):
                app_up.add_metric([fid, app, str(h.get("state"))], 1.0 if h.get("state") == "RUNNING" else 0.0)
                app_failures.add_metric([fid, app], float(h.get("failures", 0)))
                app_restarts.add_metric([fid, app], float(h.get("restarts", 0)))
                app_slow.add_metric([fid, app], float(h.get("slow_steps", 0)))
                app_max.add_metric([fid, app], float(h.get("max_step_s", 0.0)))
            values.add_metric([fid], float(snap.get("ingested", 0)))
            for quality, n in sorted(snap.get("quality", {}).items()):
                points.add_metric([fid, quality], float(n))
            if snap.get("solve_s") is not None:
                solve.add_metric([fid], float(snap["solve_s"]))
            for outcome, n in sorted(snap.get("fdir", {}).items()):
                plans.add_metric([fid, outcome], float(n))
        yield from (values, points, solve, plans, app_up, app_failures, app_restarts, app_slow, app_max, unrecorded,
                    intents, unpersisted)


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
    snapshot: dict[str, dict[str, Any]] = {}
    for h in await runtime.fleet.health(timeout_s=2.0):
        METRICS.feeder_up.labels(h.feeder_id).set(1 if h.ok else 0)
        METRICS.actor_restarts.labels(h.feeder_id).set(h.restarts)
        if h.ok:
            try:
                snapshot[h.feeder_id] = await asyncio.wait_for(runtime.fleet.call(h.feeder_id, "metrics"), 2.0)
            except Exception:  # a scrape must answer even when one actor is busy
                continue
    METRICS.actors.snapshot = snapshot
    control = getattr(runtime, "control", None)
    if control is not None:
        METRICS.audit_unstored.set(control.status().get("unaudited", 0))


def render() -> bytes:
    return generate_latest(METRICS.registry)
