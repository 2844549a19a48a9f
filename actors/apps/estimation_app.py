"""State estimation as a hosted application: the live state is estimated, not assumed.

Every scan burst marks the estimate dirty; after ``debounce_s`` of quiet (and at most once per
``min_interval_s``) the app builds the measurement set from the live values and runs
:class:`actors.cores.estimation.StateEstimator` in a worker thread, then publishes the result to
the host (``ports.publish_estimate``): from then on ``feeder { powerFlow buses lines }`` report the
estimate (``source: ESTIMATED``) and applications read it from ``ports.state().estimate``.

Measurements: every bound analog point of GOOD quality (bus VM_PU, line P/Q/I at the from end, DER
P); points of any other quality are left out and counted. Switch STATUS points give the topology
(through the host's switch states) and the candidates of the status-error test.

Pseudo-measurements, per load: the latest AMI intervals when the server pushed them
(:meth:`set_pseudo_loads`, source AMI) and they are younger than ``ami_max_age_s``; else the
model's nominal load times the feeder's load scale (source PROFILE, the largest sigma). The
historian's same-time profile is not read here: DuckDB stays out of the actor process, and the
server may push a historian profile through the same :meth:`set_pseudo_loads` (source PROFILE or
FORECAST).

While a trip or a latched fault indicator is up the estimator holds off: FDIR has the CPU and plans
at the pre-fault estimate, and the host shows the model with the new topology meanwhile.

Bad data becomes alarms (``BAD_DATA`` per point, ``SWITCH_STATUS_SUSPECT`` per switch) raised once
and cleared when the point or switch fits again. An estimate that fails keeps the last good one,
marked stale with the reason, and raises ``ESTIMATOR_STALE`` until an estimate succeeds again.
While no point is bound the feeder stays on the model (``source: MODEL``).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from actors.applications import FeederPorts, TelemetryChange, reported_positions
from actors.arbiter import Priority
from actors.cores.estimation import EstimationResult, MeasSource, Measurement, StateEstimator, default_std, stale
from actors.cores.events import EventKind, Severity
from graph_schema.errors import BadInput, DmsError, NotFound

log = logging.getLogger(__name__)

_ANALOG = {"VM_PU", "P_MW", "Q_MVAR", "I_KA"}


class EstimationApp:
    name = "estimation"
    priority = Priority.OPTIMISER
    api = frozenset({"report", "set_pseudo_loads", "estimate_now"})
    read_only = frozenset({"report"})
    COVARIANCE_LARGE_BUSES = 1000
    COVARIANCE_LARGE_EVERY_S = 900.0
    # Statuses are searched for a topology error only once the reported switch states have held this
    # long: while switching is under way (FDIR, an operator) scans of flows and statuses straddle the
    # change, and a search (an estimate per switch) would take the CPU the controls need.
    STATUS_SETTLE_S = 10.0

    def __init__(self, debounce_s: float = 0.3, min_interval_s: float = 1.0, ami_max_age_s: float = 1800.0,
                 covariance_every_s: float = 60.0) -> None:
        self._debounce_s = debounce_s
        self._min_interval_s = min_interval_s
        self._ami_max_age_s = ami_max_age_s
        self._covariance_every_s = covariance_every_s
        self._ports: FeederPorts | None = None
        self._estimator: StateEstimator | None = None
        self._dirty = False
        self._task: asyncio.Task[Any] | None = None
        self._last_run = 0.0
        self._last_cov = 0.0
        self.last: EstimationResult | None = None  # the last good estimate
        self.published: EstimationResult | None = None
        self.runs = 0
        self.failures = 0
        self.excluded_quality = 0
        self._pseudo: tuple[MeasSource, float, dict[str, float], dict[str, float]] | None = None
        self._alarmed: dict[str, str] = {}  # alarm element -> alarm kind (active ones we raised)
        self._one_at_a_time = asyncio.Lock()
        self._states_seen: tuple[tuple[str, bool], ...] = ()
        self._states_since = time.monotonic()

    @classmethod
    def from_options(cls, opts: Any) -> EstimationApp:
        return cls(debounce_s=max(0.05, float(getattr(opts, "estimation_debounce_s", 0.3))))

    async def start(self, ports: FeederPorts) -> None:
        self._ports = ports
        self._estimator = await asyncio.to_thread(StateEstimator, ports.model())
        if ports.values():
            self._mark()

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()

    # -- host callbacks --------------------------------------------------------------------------

    def on_telemetry(self, change: TelemetryChange) -> None:
        self._mark()

    def on_state(self, state: Any) -> None:
        if getattr(state, "estimate", None) is None and self._ports is not None and self._ports.values():
            self._mark()  # the topology changed: the host went back to the model until we estimate again

    def _mark(self) -> None:
        self._dirty = True
        if self._ports is not None and (self._task is None or self._task.done()):
            self._task = self._ports.spawn(self._run(), "estimation")

    async def _run(self) -> None:
        while self._dirty:
            await asyncio.sleep(max(self._debounce_s, self._last_run + self._min_interval_s - time.monotonic()))
            if self._disturbed():  # FDIR has the CPU; it plans with the pre-fault estimate
                await asyncio.sleep(self._min_interval_s)
                continue
            self._dirty = False
            await self.estimate_now()

    def _disturbed(self) -> bool:
        """A trip or a latched fault indicator is up: the estimator holds off (the host shows the
        model with the new topology meanwhile) and resumes when the indications reset."""
        assert self._ports is not None
        try:
            flags = self._ports.field_flags()
        except AssertionError:
            return False
        return bool(flags.tripped or any(flags.fault_indicators.values()))

    # -- estimation ------------------------------------------------------------------------------

    def _measurements(self) -> tuple[list[Measurement], list[str]]:
        assert self._ports is not None
        ports = self._ports
        model = ports.model()
        ders = {d.id for d in model.ders}
        points = ports.points()
        out: list[Measurement] = []
        status: list[str] = []
        excluded = 0
        for pid, pv in ports.values().items():
            p = points.get(pid)
            if p is None:
                continue
            q = str(p.quantity)
            if q == "STATUS":
                status.append(p.element_id)
                continue
            if q not in _ANALOG:
                continue
            if str(pv.quality) != "GOOD" or isinstance(pv.value, bool) or pv.value is None \
                    or not math.isfinite(float(pv.value)):
                excluded += 1
                continue
            src = MeasSource.DER if p.element_id in ders else MeasSource.SCADA
            v = float(pv.value)
            out.append(Measurement(pid, q, p.element_id, v, default_std(q, v, src), src))  # type: ignore[arg-type]
        self.excluded_quality = excluded
        out += self._pseudo_loads()
        return out, status

    def _pseudo_loads(self) -> list[Measurement]:
        assert self._ports is not None
        model = self._ports.model()
        scale = float(getattr(self._ports.state(), "load_scale", 1.0))
        src, p_by, q_by = MeasSource.PROFILE, {}, {}
        if self._pseudo is not None and time.time() - self._pseudo[1] <= self._ami_max_age_s:
            src, _, p_by, q_by = self._pseudo
        out = []
        for ld in model.loads:
            if not ld.in_service:
                continue
            p = p_by.get(ld.id, ld.p_mw * scale)
            q = q_by.get(ld.id, ld.q_mvar * (p / ld.p_mw if ld.p_mw else scale))
            s = src if ld.id in p_by else MeasSource.PROFILE
            out.append(Measurement(f"{ld.id}/PSEUDO_P", "P_MW", ld.id, p, default_std("P_MW", p, s), s))
            out.append(Measurement(f"{ld.id}/PSEUDO_Q", "Q_MVAR", ld.id, q, default_std("Q_MVAR", q, s), s))
        return out

    async def estimate_now(self) -> dict[str, Any]:
        """Estimate now from the live values (also what the debounced task runs). One estimate at a
        time: the estimator (its network and cached structures) is not safe to use from two threads,
        and an API call could otherwise meet the debounced run (seen as sporadic failed estimates)."""
        async with self._one_at_a_time:
            return await self._estimate_now()

    async def _estimate_now(self) -> dict[str, Any]:
        ports, est = self._ports, self._estimator
        if ports is None or est is None:
            raise DmsError("state estimation is still starting on this feeder; retry shortly",
                           code="APPLICATION_UNAVAILABLE")
        self._last_run = time.monotonic()
        meas, status = self._measurements()
        if not any(not m.pseudo for m in meas):  # nothing measured (no field bound): the model stands
            if self.published is not None:
                ports.publish_estimate(None)
                self.published = None
            return self.report()
        # The covariance (per-bus sigma, pseudo share) costs a solve per bus: reused while the structure
        # holds, refreshed every covariance_every_s; on a large feeder (seconds to tens of seconds on
        # two cores for 2,940 buses) reused whatever changed, and refreshed only every 15 minutes.
        large = len(ports.model().buses) > self.COVARIANCE_LARGE_BUSES
        every = self.COVARIANCE_LARGE_EVERY_S if large else self._covariance_every_s
        reuse = self.last if time.monotonic() - self._last_cov < every else None
        states = ports.switch_states()
        seen = tuple(sorted(states.items()))
        if seen != self._states_seen:
            self._states_seen, self._states_since = seen, time.monotonic()
        if time.monotonic() - self._states_since < self.STATUS_SETTLE_S:
            status = []
        try:
            taps, caps = reported_positions(ports.values(), ports.points())
            result = await asyncio.to_thread(est.estimate, meas, switch_states=states, status_candidates=status,
                                             covariance_from=reuse, reuse_any_covariance=large,
                                             tap_pos=taps or None, capacitor_step=caps or None)
        except (NotFound, ValueError) as exc:  # a measurement that fits no element: the point map is wrong
            result = None
            reason = str(exc)
        else:
            reason = result.reason or ""
        self.runs += 1
        if result is not None and result.converged:
            if reuse is None or (not large and result.structure_key != reuse.structure_key):
                self._last_cov = time.monotonic()
            self.last = result
            self.published = result
            ports.publish_estimate(result)
            self._clear("ESTIMATOR_STALE", ports.feeder_id)
            self._alarms(result)
        else:
            self.failures += 1
            if self.last is not None:
                self.published = stale(self.last, reason)
                ports.publish_estimate(self.published)
            self._raise("ESTIMATOR_STALE", ports.feeder_id, Severity.ALARM,
                        f"state estimation failed on {ports.feeder_id}: {reason}; "
                        + ("the last good estimate is kept, marked stale" if self.last is not None
                           else "the model's power flow is shown"), {"reason": reason})
        return self.report()

    # -- alarms ----------------------------------------------------------------------------------

    def _raise(self, kind: str, element: str, severity: Severity, message: str, data: Mapping[str, Any]) -> None:
        if self._alarmed.get(element) == kind or self._ports is None:
            return
        self._alarmed[element] = kind
        self._ports.emit(EventKind.ALARM, severity, message,
                         {"alarm_kind": kind, "device_id": element, **{k: v for k, v in data.items()}})

    def _clear(self, kind: str, element: str) -> None:
        if self._alarmed.get(element) != kind or self._ports is None:
            return
        del self._alarmed[element]
        self._ports.emit(EventKind.ALARM_CLEARED, Severity.INFO, f"{kind} on {element} cleared",
                         {"alarm_kind": kind, "device_id": element})

    def _alarms(self, r: EstimationResult) -> None:
        flagged: set[str] = set()
        for b in r.bad_data:
            for pid in b.point_ids:
                flagged.add(pid)
                self._raise("BAD_DATA", pid, Severity.WARNING,
                            f"measurement {pid} is suspect: {b.value:.4g} against an estimate of {b.estimated:.4g} "
                            f"(normalized residual {b.normalized_residual:.1f}); left out of the estimate",
                            {"point_id": pid, "value": b.value, "estimated": b.estimated,
                             "normalized_residual": round(b.normalized_residual, 2)})
        for s in r.status_suspects:
            flagged.add(s.switch_id)
            said = "open" if s.reported_open else "closed"
            self._raise("SWITCH_STATUS_SUSPECT", s.switch_id, Severity.ALARM,
                        f"switch {s.switch_id} reports {said}, but the measurements fit it "
                        f"{'closed' if s.reported_open else 'open'} (J {s.j_reported:.1f} -> {s.j_corrected:.1f}); "
                        "check the switch and its status point",
                        {"switch_id": s.switch_id, "reported_open": s.reported_open})
        for element, kind in list(self._alarmed.items()):
            if kind in ("BAD_DATA", "SWITCH_STATUS_SUSPECT") and element not in flagged:
                self._clear(kind, element)

    # -- API -------------------------------------------------------------------------------------

    def set_pseudo_loads(self, p_mw: Mapping[str, float], q_mvar: Mapping[str, float] | None = None,
                         source: str = "AMI") -> int:
        """Pseudo-measurements pushed by the server (AMI intervals, a forecast, a historian profile)."""
        try:
            src = MeasSource(source)
        except ValueError:
            raise BadInput(f"pseudo-measurement source {source!r} is unknown; use AMI, FORECAST or PROFILE") from None
        if src not in (MeasSource.AMI, MeasSource.FORECAST, MeasSource.PROFILE):
            raise BadInput("pseudo-measurement source must be AMI, FORECAST or PROFILE")
        assert self._ports is not None
        known = {ld.id for ld in self._ports.model().loads}
        unknown = sorted(set(p_mw) - known)
        if unknown:
            raise NotFound(f"loads {', '.join(unknown[:5])} are not on feeder {self._ports.feeder_id!r}",
                           element_id=unknown[0])
        self._pseudo = (src, time.time(), {k: float(v) for k, v in p_mw.items()},
                        {k: float(v) for k, v in (q_mvar or {}).items()})
        self._mark()
        return len(p_mw)

    def report(self) -> dict[str, Any]:
        r = self.published
        out: dict[str, Any] = {
            "source": "ESTIMATED" if r is not None else "MODEL", "runs": self.runs, "failures": self.failures,
            "excluded_bad_quality": self.excluded_quality,
            "at": datetime.now(UTC).isoformat(),
        }
        if r is None:
            return out
        out.update({
            "converged": r.converged, "stale": r.stale, "stale_reason": r.stale_reason,
            "chi2": r.chi2, "chi2_threshold": r.chi2_threshold, "iterations": r.iterations,
            "estimate_time_s": r.estimate_time_s, "covariance_time_s": r.covariance_time_s,
            "measurements": r.measurements, "real_measurements": r.real_measurements,
            "pseudo_measurements": r.pseudo_measurements, "pseudo_sources": dict(r.pseudo_sources),
            "observed_buses": r.observed_bus_count, "buses": len(r.buses),
            "bad_data": [{"point_ids": list(b.point_ids), "quantity": b.quantity, "element_id": b.element_id,
                          "value": b.value, "estimated": b.estimated, "residual": b.residual,
                          "normalized_residual": b.normalized_residual} for b in r.bad_data],
            "status_suspects": [{"switch_id": s.switch_id, "reported_open": s.reported_open,
                                 "j_reported": s.j_reported, "j_corrected": s.j_corrected}
                                for s in r.status_suspects],
        })
        return out

    def status(self) -> Mapping[str, Any]:
        rep = self.report()
        return {k: rep[k] for k in ("source", "runs", "failures", "observed_buses", "chi2", "stale",
                                     "estimate_time_s") if k in rep} | {
            "suspects": len(rep.get("bad_data", ())) + len(rep.get("status_suspects", ()))}
