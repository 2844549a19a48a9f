"""FDIR orchestration: from field indications to executed (or offered) switching and outage records.

The feeder actor hosts one :class:`FdirEngine` per feeder. The engine is plain asyncio: it knows
nothing of Ray, Bolt or sockets; every side effect goes through the injected :class:`FdirPorts`
(send one select-before-operate command and wait for its telemetry confirmation, read the live
switch positions, persist an outage record, emit an event, read the clock). The pure core
(:mod:`actors.cores.fdir`) detects, locates, isolates and plans; this module sequences it (IEC 61968-3
"fault management" / "switching plans"; IEEE 1366 customer counts through :mod:`actors.cores.outages`).

Flow of one disturbance:

1. :meth:`FdirEngine.on_indications` opens a *settle window* of ``settle_s`` at the first
   indication: fault indicators and last-gasp meters arrive after the protective trip, and every
   indication in the window is merged (later readings win, a lockout after a reclose counts as
   sustained). Concurrent callers in the same window share one result: one disturbance, one plan.
2. :func:`~actors.cores.fdir.detect`: MOMENTARY gives a momentary outage record (IEEE 1366 MAIFI event)
   and an event, no plan. SUSTAINED opens an outage record (DETECTED, cause FAULT, customers) and
   asks :func:`~actors.cores.fdir.plan_fault` for a validated plan (emitted as a PLAN event).
3. AUTOMATIC executes it at once; ADVISORY holds it as PENDING_APPROVAL until :meth:`approve` or
   :meth:`reject`; OFF records the outage and plans nothing.
4. Execution runs step by step, one plan at a time (one :class:`asyncio.Lock`). Before every
   command the live positions must equal what the plan has done so far (anything else moved: stop)
   and the step must not newly energize a known faulted zone (never close towards an unisolated
   fault). OPEN/CLOSE go through ``ports.operate`` (sent once, never retried); VERIFY reads
   ``ports.switch_states``. When isolation is complete the outage goes ISOLATED; every step that
   changes who is energized is an outage step (restored / lost loads), persisted.
5. A command that fails (exception or not confirmed) stops the plan and calls
   :func:`~actors.cores.fdir.replan_after_failure` with the failed device blocked. A :class:`SafeStop` is
   reported; an alternative plan is reported and, in AUTOMATIC, executed only if it passes the same
   safety check (at most ``max_replans`` alternatives per disturbance); in ADVISORY it is held for
   approval. A position that changes under the plan (a device reported other than commanded, a
   re-trip) or a new protective trip while executing aborts at the next step boundary with a
   safe stop: nothing more is switched, and the new indications are detected and planned again.
   A plan made after such a second fault is always held for approval, even in AUTOMATIC.
6. :meth:`on_fault_cleared` (repair done) offers the return-to-normal plan, always held for
   approval; executing it restores the remaining customers and closes the outage (RESTORED).

Timings per plan (``timings``, read by the benchmark, from ``ports.now``): ``t_indication`` the
first indication of the disturbance, ``t_plan`` the validated plan ready, ``t_done`` the last
step that restored customers confirmed (the completion time when the plan restores nobody).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from typing import Any

from actors.cores.control import ControlAction
from actors.cores.events import EventKind, Severity
from actors.cores.fdir import (
    FaultKind,
    FdirModel,
    Indications,
    PlanAction,
    PlanStep,
    SafeStop,
    SwitchingPlan,
    detect,
    plan_fault,
    plan_return_to_normal,
    replan_after_failure,
)
from actors.cores.outages import Cause, EtrPolicy, Outage, OutageStatus, OutageTracker
from graph_schema.errors import BadInput, DmsError, NotFound
from graph_schema.model import Feeder

__all__ = [
    "FdirEngine",
    "FdirMode",
    "FdirPorts",
    "FdirStatus",
    "PlanKind",
    "PlanState",
    "PlanStatus",
    "PlanTimings",
    "merge_indications",
]

log = logging.getLogger(__name__)
FDIR_NAME = "fdir"  # the identity FDIR operates under

Scalar = str | int | float | bool | None


class FdirMode(StrEnum):
    AUTOMATIC = "AUTOMATIC"  # plans execute without an operator
    ADVISORY = "ADVISORY"  # plans wait for approve()/reject()
    OFF = "OFF"  # outages are still recorded; nothing is planned or switched


class PlanState(StrEnum):
    PENDING_APPROVAL = "PENDING_APPROVAL"
    EXECUTING = "EXECUTING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"  # a step failed, the plan was aborted or refused as unsafe
    REJECTED = "REJECTED"
    SUPERSEDED = "SUPERSEDED"  # replaced before it ran (new indications, stale positions)


class PlanKind(StrEnum):
    FAULT = "FAULT"
    ALTERNATIVE = "ALTERNATIVE"  # re-plan after a failed step
    RETURN_TO_NORMAL = "RETURN_TO_NORMAL"
    MANUAL = "MANUAL"  # handed to execute() from outside


@dataclass(frozen=True)
class FdirPorts:
    """Every side effect of the engine.

    ``operate(device_id, action)`` sends ONE command through select-before-operate and returns True
    when telemetry confirmed it; it raises the control errors (``NotConfirmed``,
    ``DeviceUnreachable``, ``Interlock``, ``DeviceTagged``...) on failure. ``switch_states()`` is the
    live ``is_open`` per switch. ``persist_outage(record, seq)`` appends a record (``seq`` None) and
    returns its seq, or updates the record at ``seq``. ``emit(kind, severity, message, data)``
    publishes an event. ``now()`` is the wall clock (timezone-aware).
    """

    operate: Callable[[str, ControlAction], Awaitable[bool]]
    switch_states: Callable[[], Mapping[str, bool]]
    persist_outage: Callable[[dict[str, Any], int | None], Awaitable[int]]
    emit: Callable[[EventKind, Severity, str, Mapping[str, Scalar]], Awaitable[None]]
    now: Callable[[], datetime]


@dataclass(frozen=True, slots=True)
class PlanTimings:
    t_indication: datetime | None = None
    t_plan: datetime | None = None
    t_done: datetime | None = None

    @property
    def plan_s(self) -> float | None:
        """Seconds from the first indication to the validated plan."""
        if self.t_indication is None or self.t_plan is None:
            return None
        return (self.t_plan - self.t_indication).total_seconds()

    @property
    def restore_s(self) -> float | None:
        """Seconds from the first indication to the last restoration step confirmed."""
        if self.t_indication is None or self.t_done is None:
            return None
        return (self.t_done - self.t_indication).total_seconds()


@dataclass(frozen=True, slots=True)
class PlanStatus:
    plan: SwitchingPlan
    state: PlanState
    kind: PlanKind
    executed_steps: tuple[int, ...] = ()  # orders of the steps done (commands confirmed, checks passed)
    failed_step: PlanStep | None = None
    message: str = ""
    decided_by: str | None = None  # who approved/rejected it ("fdir" when automatic)
    outage_id: str | None = None
    replaces: str | None = None  # the plan this one replaces (alternative, stale re-plan)
    safe_stop: SafeStop | None = None
    timings: PlanTimings = field(default_factory=PlanTimings)

    @property
    def id(self) -> str:
        return self.plan.id


@dataclass(frozen=True, slots=True)
class FdirStatus:
    mode: FdirMode
    pending_plan: PlanStatus | None
    executing_plan: PlanStatus | None
    executing_step: PlanStep | None
    last_outcome: PlanStatus | None  # the last plan that finished (COMPLETED/FAILED/REJECTED)
    active_outage_ids: tuple[str, ...]
    automatic_suspended: str | None = None  # AUTOMATIC holds plans after a safe stop until re-armed


def merge_indications(first: Indications, later: Indications) -> Indications:
    """One disturbance's indications: ``later`` readings win, except that a missing (None) fault
    indicator reading never hides a real one; a device that trips again without reclosing is no
    longer counted as reclosed (lockout after a reclose shot)."""
    sustained_later = later.tripped_devices - later.reclosed
    fis = dict(first.fault_indicators)
    for k, v in later.fault_indicators.items():
        if v is not None or k not in fis:
            fis[k] = v
    return Indications(
        tripped_devices=first.tripped_devices | later.tripped_devices,
        reclosed=(first.reclosed - sustained_later) | later.reclosed,
        fault_indicators=fis,
        last_gasp_loads=first.last_gasp_loads | later.last_gasp_loads,
        time=first.time or later.time,
    )


# ---------------------------------------------------------------------------------------- internals


@dataclass
class _Window:
    first_at: datetime
    indications: Indications
    during_execution: bool
    second_fault: bool = False
    task: asyncio.Task[PlanStatus | None] | None = None


@dataclass
class _Ctx:
    """What the engine keeps about a plan beside its status (not exposed)."""

    indications: Indications
    start_states: dict[str, bool]
    attempt: int = 0  # alternatives made so far for this disturbance
    second_fault: bool = False
    remake: Callable[[dict[str, bool]], SwitchingPlan | SafeStop] | None = None


@dataclass
class _Outcome:
    kind: str  # "done" | "failed" | "stop"
    step: PlanStep | None = None
    why: str = ""
    stop: SafeStop | None = None


class FdirEngine:
    """Hosts FDIR for one feeder; see the module docstring. Safe to call concurrently from the
    actor's methods (one event loop)."""

    def __init__(
        self,
        feeder: Feeder | FdirModel,
        ports: FdirPorts,
        *,
        mode: FdirMode | str = FdirMode.ADVISORY,
        etr_policy: EtrPolicy | None = None,
        settle_s: float = 2.0,
        time_budget_s: float = 0.8,
        max_replans: int = 3,
        outages: Iterable[tuple[Outage, int]] = (),
    ) -> None:
        """``outages``: the feeder's active outages and their record seqs, read back from the store
        by a restarted actor; their located faulted zones stay protected."""
        self.model = feeder if isinstance(feeder, FdirModel) else FdirModel(feeder)
        self.feeder_id = self.model.feeder.id
        self._ports = ports
        self._mode = _mode(mode)
        if settle_s < 0 or time_budget_s <= 0 or max_replans < 0:
            raise BadInput(
                f"settle_s={settle_s}, time_budget_s={time_budget_s}, max_replans={max_replans}: "
                "use settle_s >= 0, time_budget_s > 0 and max_replans >= 0"
            )
        self._settle_s = settle_s
        self._time_budget_s = time_budget_s
        self._max_replans = max_replans
        given = list(outages)
        self.tracker = OutageTracker(etr_policy=etr_policy, utc_now=ports.now, outages=[o for o, _ in given])
        self._seqs: dict[str, int | None] = {o.id: seq for o, seq in given}
        self._customers = {ld.id: ld.customers if ld.in_service else 0 for ld in self.model.feeder.loads}
        self.plans: dict[str, PlanStatus] = {}
        self.timings: dict[str, PlanTimings] = {}
        self._ctx: dict[str, _Ctx] = {}
        self._lock = asyncio.Lock()
        self._window: _Window | None = None
        self._pending_id: str | None = None
        self._executing_id: str | None = None
        self._executing_step: PlanStep | None = None
        self._last_id: str | None = None
        self._abort: str | None = None
        self._commanded_open: set[str] = set()
        self._commanded: dict[str, tuple[str, bool]] = {}  # switch -> (who, position before) held by command
        self._changed_by: list[tuple[str, str]] = []  # switch changes since the last supply account, by whom
        self._supplied: frozenset[str] | None = None  # loads energized at the last supply account
        # outage id -> faulted zone buses (persisted with the outage, so a restarted actor keeps them)
        self._fault_zones: dict[str, frozenset[str]] = {
            o.id: frozenset(o.fault_zone_bus_ids) for o, _ in given if o.active and o.fault_zone_bus_ids
        }
        self._auto_blocked: str | None = None  # why automatic switching is suspended (after a safe stop)
        self._tasks: set[asyncio.Task[Any]] = set()

    # ------------------------------------------------------------------------------------ mode

    @property
    def mode(self) -> FdirMode:
        return self._mode

    async def set_mode(self, mode: FdirMode | str, by: str) -> FdirMode:
        """Change the mode. OFF rejects the pending plan and stops an executing one at its next
        step boundary; AUTOMATIC does not execute a plan already pending (it stays for approval).
        Any call re-arms automatic switching suspended by a safe stop."""
        new = _mode(mode)
        old, self._mode = self._mode, new
        rearmed, self._auto_blocked = self._auto_blocked, None
        if new == FdirMode.OFF:
            pend = self._pending()
            if pend is not None:
                await self._finish(pend.id, PlanState.REJECTED, message="FDIR turned off", decided_by=by)
            if self._executing_id is not None:
                self._abort = f"FDIR turned off by {by}"
        if old != new or rearmed:
            await self._emit(
                EventKind.PLAN,
                Severity.WARNING if new == FdirMode.OFF else Severity.INFO,
                f"FDIR mode of {self.feeder_id} changed from {old} to {new} by {by}"
                + (f" (automatic switching re-armed after {rearmed})" if rearmed else ""),
                {"fdir_mode": new.value, "previous_mode": old.value, "by": by},
            )
        return new

    # ------------------------------------------------------------------------------------ status

    def status(self) -> FdirStatus:
        return FdirStatus(
            mode=self._mode,
            pending_plan=self._pending(),
            executing_plan=self.plans.get(self._executing_id) if self._executing_id else None,
            executing_step=self._executing_step,
            last_outcome=self.plans.get(self._last_id) if self._last_id else None,
            active_outage_ids=tuple(o.id for o in self.tracker.outages(active=True, feeder_id=self.feeder_id)),
            automatic_suspended=self._auto_blocked,
        )

    def _last_fault_plan(self) -> PlanStatus | None:
        return next((p for p in reversed(self.plans.values()) if p.kind == PlanKind.FAULT), None)

    def _pending(self) -> PlanStatus | None:
        return self.plans.get(self._pending_id) if self._pending_id else None

    async def aclose(self) -> None:
        """Cancel settle windows still running (actor shutdown)."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(BaseException):
                await t

    # ------------------------------------------------------------------------------------ indications

    async def on_indications(self, ind: Indications) -> PlanStatus | None:
        """A protective trip, fault indication or last gasp. Returns the disturbance's plan status
        (after execution in AUTOMATIC, PENDING_APPROVAL in ADVISORY), or None when no plan is made
        (momentary, nothing found, mode OFF, or echoes of the engine's own switching)."""
        at = self._ports.now()
        new_trip = bool(ind.tripped_devices - ind.reclosed - self._commanded_open)
        if self._executing_id is not None and new_trip and self._abort is None:
            self._abort = f"new trip of {', '.join(sorted(ind.tripped_devices - ind.reclosed))} during execution"
            log.warning("FDIR %s: %s; aborting plan %s", self.feeder_id, self._abort, self._executing_id)
        win = self._window
        if win is not None:
            win.indications = merge_indications(win.indications, ind)
            win.second_fault = win.second_fault or (self._executing_id is not None and new_trip)
        else:
            executing = self._executing_id is not None
            win = _Window(at, ind, during_execution=executing, second_fault=executing and new_trip)
            self._window = win
            task = asyncio.create_task(self._settle_then_handle(win), name=f"fdir-settle-{self.feeder_id}")
            win.task = task
            self._tasks.add(task)
            task.add_done_callback(self._task_done)
        assert win.task is not None
        return await asyncio.shield(win.task)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("FDIR %s: handling indications failed", self.feeder_id, exc_info=task.exception())

    async def _settle_then_handle(self, win: _Window) -> PlanStatus | None:
        await asyncio.sleep(self._settle_s)
        if self._window is win:
            self._window = None
        async with self._lock:
            return await self._handle(win)

    async def _handle(self, win: _Window) -> PlanStatus | None:
        ind = win.indications
        if ind.time is None:
            ind = replace(ind, time=win.first_at)
        if win.during_execution and not win.second_fault:
            log.info("FDIR %s: indications during switching without a new trip ignored (echoes)", self.feeder_id)
            return None
        live = self._live()
        # Late indications of the disturbance whose plan is pending (nothing switched yet, no new
        # device tripped) are merged with it: it is re-planned under the same outage record.
        first_at = win.first_at
        reuse: Outage | None = None
        pend = self._pending()
        last = self._last_fault_plan()
        if last is not None and not win.second_fault and last.outage_id is not None:
            unswitched = last.state == PlanState.PENDING_APPROVAL or (
                last.state == PlanState.COMPLETED and not last.plan.steps
            )
            lctx = self._ctx[last.id]
            o = self.tracker.get(last.outage_id)
            if (
                unswitched
                and o.status == OutageStatus.DETECTED
                and ind.tripped_devices <= lctx.indications.tripped_devices
            ):
                reuse = o
                ind = merge_indications(lctx.indications, ind)
                first_at = last.timings.t_indication or first_at
        # Meters dark because of commanded switching (an operator opened a switch) sent last gasps
        # for a planned interruption, not for a fault.
        planned_out = {
            ld for o in self.tracker.outages(active=True, feeder_id=self.feeder_id) if o.planned
            for ld in o.load_ids_out
        }
        explained = self._explained_by_switching(live) | planned_out
        if ind.last_gasp_loads & explained:
            ind = replace(ind, last_gasp_loads=ind.last_gasp_loads - explained)
        det = detect(self.model, live, ind)
        if det.kind == FaultKind.NONE:
            log.info("FDIR %s: %s", self.feeder_id, det.explanation)
            return None
        if det.kind == FaultKind.MOMENTARY:
            await self._momentary(det.device_ids, live, det.explanation)
            return None
        if reuse is not None:  # the same disturbance, better known: its zone is located again
            self._fault_zones.pop(reuse.id, None)
        # SUSTAINED: a pending plan is stale now.
        if pend is not None and self.plans[pend.id].state == PlanState.PENDING_APPROVAL:
            await self._finish(pend.id, PlanState.SUPERSEDED, message="superseded by new indications")
        outage = await self._open_outage(det.load_ids, det.device_ids, det.deenergized_bus_ids, reuse, det.explanation)
        if self._mode == FdirMode.OFF:
            await self._emit(
                EventKind.PLAN, Severity.WARNING, f"FDIR is OFF on {self.feeder_id}: no plan made", self._odata(outage)
            )
            return None
        try:
            sp = await asyncio.to_thread(plan_fault, self.model, live, ind, time_budget_s=self._time_budget_s)
        except DmsError as exc:
            log.warning("FDIR %s: planning failed: %s", self.feeder_id, exc)
            await self._emit(
                EventKind.PLAN, Severity.ALARM, f"FDIR {self.feeder_id}: no plan: {exc}", self._odata(outage)
            )
            return None
        timings = PlanTimings(t_indication=first_at, t_plan=self._ports.now())
        ctx = _Ctx(indications=ind, start_states=live, second_fault=win.second_fault)
        ctx.remake = lambda states: plan_fault(self.model, states, ind, time_budget_s=self._time_budget_s)
        return await self._offer(sp, PlanKind.FAULT, outage.id if outage else None, ctx, timings)

    async def _offer(
        self,
        sp: SwitchingPlan,
        kind: PlanKind,
        outage_id: str | None,
        ctx: _Ctx,
        timings: PlanTimings,
        *,
        replaces: str | None = None,
        run: bool | None = None,
    ) -> PlanStatus:
        """Register a new plan, check it, then execute it (AUTOMATIC) or hold it for approval.
        Called with the lock held."""
        ps = self._register(sp, kind, outage_id, ctx, timings, replaces)
        sp = ps.plan
        if sp.isolation is not None and outage_id is not None and kind != PlanKind.RETURN_TO_NORMAL:
            zone = self._fault_zones.get(outage_id, frozenset()) | sp.isolation.zone_bus_ids
            self._fault_zones[outage_id] = zone
            if set(self.tracker.get(outage_id).fault_zone_bus_ids) != zone:
                await self._persist(self.tracker.set_fault_zone(outage_id, zone))
        # Every PLAN event carries the state the plan is in once the event is out (never the
        # registration's PENDING_APPROVAL for a plan that completed, failed or is executing).
        if not sp.steps:
            state = PlanState.FAILED if sp.explanation.startswith("refused") else PlanState.COMPLETED
            msg = f"nothing to switch: {sp.explanation}"
            done = await self._finish(
                ps.id, state, message=msg, timings=replace(ps.timings, t_done=self._ports.now())
            )
            await self._emit(EventKind.PLAN, Severity.WARNING, f"FDIR {self.feeder_id}: {msg}", self._pdata(done))
            return done
        unsafe = self._plan_unsafe(sp, ctx.start_states, kind)
        if unsafe:
            refused = await self._finish(ps.id, PlanState.FAILED, message=f"refused: {unsafe}")
            await self._emit(
                EventKind.PLAN, Severity.CRITICAL, f"FDIR {self.feeder_id}: plan refused: {unsafe}",
                self._pdata(refused),
            )
            return refused
        auto = (
            self._mode == FdirMode.AUTOMATIC
            and not ctx.second_fault
            and self._auto_blocked is None
            and kind != PlanKind.RETURN_TO_NORMAL
        )
        if run is not None:
            auto = run and auto
        ops = [f"{s.action} {s.device_id}" for s in sp.steps if s.action != PlanAction.VERIFY]
        if auto:
            ps = self._set(ps.id, state=PlanState.EXECUTING, decided_by="fdir")
        else:
            why = "held for approval"
            if ctx.second_fault:
                why += " (made after a second fault: never automatic)"
            elif self._auto_blocked is not None and self._mode == FdirMode.AUTOMATIC:
                why += f" (automatic switching suspended: {self._auto_blocked})"
            elif kind == PlanKind.RETURN_TO_NORMAL:
                why += " (return to normal is never automatic)"
            self._pending_id = ps.id
            ps = self._set(ps.id, state=PlanState.PENDING_APPROVAL, message=why)
        await self._emit(
            EventKind.PLAN,
            Severity.WARNING,
            f"FDIR {self.feeder_id}: {kind.lower().replace('_', ' ')} plan {sp.id} "
            f"({', '.join(ops)}; {sp.customers_restored} of {sp.customers_interrupted} customers restored)"
            + (": executing" if auto else ": awaiting approval"),
            self._pdata(ps),
        )
        if not auto:
            return ps
        return await self._execute_locked(ps.id, "fdir")

    def _register(
        self,
        sp: SwitchingPlan,
        kind: PlanKind,
        outage_id: str | None,
        ctx: _Ctx,
        timings: PlanTimings,
        replaces: str | None,
    ) -> PlanStatus:
        pid, n = sp.id, 1
        while pid in self.plans:  # the core's ids are content hashes: the same fault twice repeats them
            n += 1
            pid = f"{sp.id}-{n}"
        if pid != sp.id:
            sp = replace(sp, id=pid)
        ps = PlanStatus(sp, PlanState.PENDING_APPROVAL, kind, outage_id=outage_id, replaces=replaces, timings=timings)
        self.plans[pid] = ps
        self.timings[pid] = timings
        self._ctx[pid] = ctx
        return ps

    # ------------------------------------------------------------------------------------ decisions

    def _get(self, plan_id: str) -> PlanStatus:
        ps = self.plans.get(plan_id)
        if ps is None:
            raise NotFound(
                f"FDIR plan {plan_id!r} does not exist on feeder {self.feeder_id!r}; read the FDIR status for "
                f"the pending plan ({self._pending_id or 'none now'})",
                element_id=plan_id,
            )
        return ps

    def _check_pending(self, ps: PlanStatus, verb: str) -> None:
        if ps.state != PlanState.PENDING_APPROVAL or self._pending_id != ps.id:
            raise BadInput(
                f"FDIR plan {ps.id!r} is {ps.state} and cannot be {verb}; only the pending plan "
                f"({self._pending_id or 'none now'}) can",
                element_id=ps.id,
            )

    async def approve(self, plan_id: str, by: str) -> PlanStatus:
        """Execute the pending plan for operator ``by``. A plan whose starting positions no longer
        match the field is superseded by a fresh one (held for approval) and BadInput names it."""
        self._check_pending(self._get(plan_id), "approved")
        if self._mode == FdirMode.OFF:
            raise BadInput("FDIR is OFF on this feeder; set the mode to ADVISORY or AUTOMATIC before approving")
        async with self._lock:
            ps = self._get(plan_id)
            self._check_pending(ps, "approved")
            ctx = self._ctx[plan_id]
            live = self._live()
            changed = sorted(s for s in live if live[s] != ctx.start_states.get(s))
            if changed:
                await self._finish(
                    plan_id, PlanState.SUPERSEDED, message=f"stale: {', '.join(changed[:6])} moved since it was made"
                )
                new = await self._remake(ps, ctx, live)
                raise BadInput(
                    f"FDIR plan {plan_id!r} is stale: {', '.join(changed[:6])} changed position since it was made; "
                    + (
                        f"review the new plan {new.id!r} instead"
                        if new is not None and new.state == PlanState.PENDING_APPROVAL
                        else "no new plan could be made; check the feeder"
                    ),
                    element_id=plan_id,
                )
            self._pending_id = None
            self._set(plan_id, state=PlanState.EXECUTING, decided_by=by)
            await self._emit(
                EventKind.PLAN, Severity.INFO, f"FDIR plan {plan_id} approved by {by}", self._pdata(self.plans[plan_id])
            )
            return await self._execute_locked(plan_id, by)

    async def _remake(self, old: PlanStatus, ctx: _Ctx, live: dict[str, bool]) -> PlanStatus | None:
        if ctx.remake is None:
            return None
        sp = await asyncio.to_thread(ctx.remake, live)
        if isinstance(sp, SafeStop):
            await self._emit(EventKind.PLAN, Severity.ALARM, f"FDIR {self.feeder_id}: {sp.explanation}", {})
            return None
        nctx = _Ctx(ctx.indications, live, ctx.attempt, ctx.second_fault, ctx.remake)
        timings = replace(old.timings, t_plan=self._ports.now(), t_done=None)
        return await self._offer(sp, old.kind, old.outage_id, nctx, timings, replaces=old.id, run=False)

    async def reject(self, plan_id: str, by: str, reason: str) -> PlanStatus:
        """Drop the pending plan; nothing is switched (the outage stays open)."""
        ps = self._get(plan_id)
        self._check_pending(ps, "rejected")
        self._pending_id = None
        out = await self._finish(plan_id, PlanState.REJECTED, message=reason or "rejected", decided_by=by)
        await self._emit(
            EventKind.PLAN, Severity.INFO, f"FDIR plan {plan_id} rejected by {by}: {reason}", self._pdata(out)
        )
        return out

    async def execute(self, plan: SwitchingPlan | str, *, by: str = "fdir") -> PlanStatus:
        """Execute ``plan`` now (the pending plan's id is an approval). A plan the engine does not
        know is registered as MANUAL and checked like any other before its first command."""
        pid = plan if isinstance(plan, str) else plan.id
        if self._pending_id == pid:
            return await self.approve(pid, by)
        if isinstance(plan, str):
            ps = self._get(plan)
            raise BadInput(f"FDIR plan {pid!r} is {ps.state}; only the pending plan can be executed", element_id=pid)
        async with self._lock:
            live = self._live()
            ctx = _Ctx(Indications(), live)
            timings = PlanTimings(t_indication=self._ports.now(), t_plan=self._ports.now())
            ps = self._register(plan, PlanKind.MANUAL, self._latest_outage_id(), ctx, timings, None)
            unsafe = self._plan_unsafe(ps.plan, live, PlanKind.MANUAL)
            if unsafe:
                refused = await self._finish(ps.id, PlanState.FAILED, message=f"refused: {unsafe}", decided_by=by)
                await self._emit(
                    EventKind.PLAN, Severity.CRITICAL, f"FDIR plan {ps.id} refused: {unsafe}", self._pdata(refused)
                )
                return refused
            self._set(ps.id, state=PlanState.EXECUTING, decided_by=by)
            return await self._execute_locked(ps.id, by)

    async def on_fault_cleared(self, by: str = "operator") -> SwitchingPlan:
        """The repair is done: offer the return-to-normal plan (always held for approval). The
        faulted zones stop being protected from here on."""
        async with self._lock:
            pend = self._pending()
            if pend is not None:
                self._pending_id = None
                await self._finish(pend.id, PlanState.SUPERSEDED, message="superseded: fault cleared")
            for outage_id in list(self._fault_zones):
                if self.tracker.get(outage_id).fault_zone_bus_ids:
                    await self._persist(self.tracker.set_fault_zone(outage_id, ()))
            self._fault_zones.clear()
            self._auto_blocked = None
            live = self._live()
            t0 = self._ports.now()
            sp = await asyncio.to_thread(plan_return_to_normal, self.model, live)
            ctx = _Ctx(Indications(), live)
            ctx.remake = lambda states: plan_return_to_normal(self.model, states)
            ps = await self._offer(
                sp,
                PlanKind.RETURN_TO_NORMAL,
                self._latest_outage_id(),
                ctx,
                PlanTimings(t_indication=t0, t_plan=self._ports.now()),
            )
            if not ps.plan.steps:
                await self._reconcile(by, "network already in normal configuration")
            log.info("FDIR %s: fault cleared by %s; return-to-normal plan %s", self.feeder_id, by, ps.id)
            return ps.plan

    # ------------------------------------------------------------------------------------ execution

    async def _execute_locked(self, plan_id: str, by: str) -> PlanStatus:
        """Run the plan (lock held). On a failed step the alternative is offered and, in AUTOMATIC,
        run the same way (at most ``max_replans`` deep). Returns the status of the last plan run."""
        pid = plan_id
        ps = self.plans[pid]
        ctx = self._ctx[pid]
        self._executing_id = pid
        self._abort = None
        self._commanded_open = set()
        try:
            out = await self._run_steps(ps, by)
        except Exception as exc:  # a bug or a failing port outside operate(): stop, never leave EXECUTING
            self._auto_blocked = f"internal error in plan {pid}"
            await self._finish(pid, PlanState.FAILED, message=f"internal error, switching stopped: {exc!r}")
            raise
        finally:
            self._executing_id = None
            self._executing_step = None
        ps = self.plans[pid]
        if out.kind == "done":
            await self._reconcile(by, f"plan {pid} completed")
            t = ps.timings if ps.timings.t_done is not None else replace(ps.timings, t_done=self._ports.now())
            msg = f"completed: {ps.plan.customers_restored} of {ps.plan.customers_interrupted} customers restored"
            done = await self._finish(pid, PlanState.COMPLETED, message=msg, timings=t)
            await self._emit(EventKind.PLAN, Severity.INFO, f"FDIR plan {pid} {msg}", self._pdata(done))
            return done
        if out.kind == "stop":
            assert out.stop is not None
            self._auto_blocked = f"safe stop of plan {pid}"
            stopped = await self._finish(
                pid,
                PlanState.FAILED,
                message=f"safe stop: {out.stop.explanation}",
                safe_stop=out.stop,
                failed_step=out.step,
            )
            await self._emit(
                EventKind.PLAN,
                Severity.CRITICAL,
                f"FDIR plan {pid} stopped safely: {out.stop.explanation}",
                {**self._pdata(stopped), "keep_open": ",".join(out.stop.keep_open_switch_ids)},
            )
            return stopped
        # A step failed: stop there and re-plan with the failed device blocked.
        assert out.step is not None
        step = out.step
        live = self._live()
        failed = await self._finish(
            pid,
            PlanState.FAILED,
            message=f"step {step.order} ({step.action} {step.device_id}) failed: {out.why}",
            failed_step=step,
        )
        await self._emit(
            EventKind.PLAN,
            Severity.ALARM,
            f"FDIR plan {pid}: step {step.order} ({step.action} {step.device_id}) failed: {out.why}; re-planning",
            {**self._pdata(failed), "device_id": step.device_id},
        )
        result: SwitchingPlan | SafeStop
        if ps.kind == PlanKind.RETURN_TO_NORMAL or ps.plan.fault is None:
            result = _stop(self.model, live, f"{step.device_id} failed in a plan without a located fault")
        elif ctx.attempt >= self._max_replans:
            result = _stop(self.model, live, f"{ctx.attempt} alternative plan(s) failed already; operator needed")
        else:
            result = await asyncio.to_thread(
                replan_after_failure,
                self.model,
                ps.plan,
                step,
                live,
                ctx.indications,
                time_budget_s=self._time_budget_s,
            )
        if isinstance(result, SafeStop):
            self._auto_blocked = f"safe stop after plan {pid}"
            stopped = await self._finish(
                pid, PlanState.FAILED, message=f"{failed.message}; safe stop: {result.explanation}", safe_stop=result
            )
            await self._emit(
                EventKind.PLAN,
                Severity.CRITICAL,
                f"FDIR {self.feeder_id}: safe stop after plan {pid}: {result.explanation}",
                {**self._pdata(stopped), "keep_open": ",".join(result.keep_open_switch_ids)},
            )
            return stopped
        failed_plan = ps.plan
        nctx = _Ctx(ctx.indications, live, ctx.attempt + 1, ctx.second_fault)
        nctx.remake = lambda states: replan_after_failure(
            self.model, failed_plan, step, states, nctx.indications, time_budget_s=self._time_budget_s
        )
        # AUTOMATIC runs the alternative only when it passes the safety check (done in _offer);
        # ADVISORY holds it for approval.
        return await self._offer(
            result,
            PlanKind.ALTERNATIVE,
            ps.outage_id,
            nctx,
            replace(ps.timings, t_plan=self._ports.now(), t_done=None),
            replaces=pid,
        )

    async def _run_steps(self, ps: PlanStatus, by: str) -> _Outcome:
        plan = ps.plan
        m = self.model
        expected = self._live()
        iso_left = set(plan.isolation.open_switch_ids) if plan.isolation is not None else set()
        iso_left = {s for s in iso_left if not expected.get(s, True)}
        if plan.isolation is not None and not iso_left and ps.kind != PlanKind.RETURN_TO_NORMAL:
            await self._isolated(ps, by)
        energized = self._energized_loads(expected)
        done: list[int] = list(ps.executed_steps)
        for step in plan.steps:
            if self._abort is not None:
                return _Outcome("stop", step, stop=self._abort_stop(ps, step, self._abort))
            if self._mode == FdirMode.OFF:
                return _Outcome("stop", step, stop=_stop(m, self._live(), "FDIR turned off"))
            live = self._live()
            moved = sorted(s for s in expected if live.get(s) != expected[s])
            if moved:
                what = ", ".join(f"{s} now {'open' if live.get(s) else 'closed'}" for s in moved[:6])
                return _Outcome(
                    "stop",
                    step,
                    stop=_stop(
                        m,
                        live,
                        f"positions changed under the plan ({what}): a trip or another control; "
                        "switching stopped, run fault location again",
                    ),
                )
            self._executing_step = step
            if step.action == PlanAction.VERIFY:
                if live.get(step.device_id) != step.expected_is_open:
                    return _Outcome(
                        "stop", step, stop=_stop(m, live, f"{step.device_id} does not report the commanded position")
                    )
                done.append(step.order)
                self._set(ps.id, executed_steps=tuple(done))
                continue
            trial = {**live, step.device_id: step.expected_is_open}
            hazard = self._energizes_zone(live, trial, self._protected(ps))
            if hazard:
                return _Outcome(
                    "stop", step, stop=_stop(m, live, f"{step.action} {step.device_id} refused: it would {hazard}")
                )
            action = ControlAction.OPEN if step.expected_is_open else ControlAction.CLOSE
            if step.expected_is_open:
                self._commanded_open.add(step.device_id)
            try:
                ok = await self._ports.operate(step.device_id, action)
            except Exception as exc:  # control errors and anything else: the step failed, stop
                log.warning("FDIR %s: %s %s failed: %s", self.feeder_id, action, step.device_id, exc)
                return _Outcome("failed", step, why=str(exc) or type(exc).__name__)
            if not ok:
                return _Outcome("failed", step, why="not confirmed by telemetry")
            expected[step.device_id] = step.expected_is_open
            done.append(step.order)
            self._set(ps.id, executed_steps=tuple(done))
            after = self._live()
            now_energized = self._energized_loads(after)
            restored, lost = now_energized - energized, energized - now_energized
            energized = now_energized
            if step.device_id in iso_left:
                iso_left.discard(step.device_id)
                if not iso_left and ps.kind != PlanKind.RETURN_TO_NORMAL:
                    await self._isolated(ps, by)
            if restored or lost:
                await self._account(ps, restored, lost, f"{action} {step.device_id}", by)
            if restored:
                self._set(ps.id, timings=replace(self.plans[ps.id].timings, t_done=self._ports.now()))
        return _Outcome("done")

    def _abort_stop(self, ps: PlanStatus, step: PlanStep, why: str) -> SafeStop:
        live = self._live()
        return _stop(self.model, live, f"{why}; switching stopped before step {step.order} of plan {ps.id}")

    # ------------------------------------------------------------------------------------ safety

    def _protected(self, ps: PlanStatus) -> frozenset[str]:
        if ps.kind == PlanKind.RETURN_TO_NORMAL:
            return frozenset()
        zones = frozenset().union(*self._fault_zones.values()) if self._fault_zones else frozenset()
        if ps.plan.isolation is not None:
            zones |= ps.plan.isolation.zone_bus_ids
        return zones

    def _energizes_zone(self, before: Mapping[str, bool], after: Mapping[str, bool], zone: frozenset[str]) -> str:
        if not zone:
            return ""
        g = self.model.graph
        newly = (g.process(dict(after)).energized_bus_ids - g.process(dict(before)).energized_bus_ids) & zone
        if newly:
            return f"energize the faulted zone ({', '.join(sorted(newly)[:6])})"
        return ""

    def _plan_unsafe(self, sp: SwitchingPlan, start: Mapping[str, bool], kind: PlanKind) -> str:
        """Simulate every command from ``start``: '' when none newly energizes a protected zone."""
        zone = self._protected(PlanStatus(sp, PlanState.PENDING_APPROVAL, kind))
        states = dict(start)
        for st in sp.steps:
            if st.action == PlanAction.VERIFY:
                continue
            trial = {**states, st.device_id: st.expected_is_open}
            hazard = self._energizes_zone(states, trial, zone)
            if hazard:
                return f"step {st.order} ({st.action} {st.device_id}) would {hazard}"
            states = trial
        return ""

    # ------------------------------------------------------------------------------------ outages

    def _live(self) -> dict[str, bool]:
        known = self.model.switches
        return {k: bool(v) for k, v in self._ports.switch_states().items() if k in known}

    def _energized_loads(self, states: Mapping[str, bool]) -> frozenset[str]:
        buses = self.model.graph.process(self.model.states(states)).energized_bus_ids
        return frozenset(ld.id for ld in self.model.feeder.loads if ld.bus_id in buses)

    def _latest_outage_id(self) -> str | None:
        """The newest active fault outage (planned switching outages are not FDIR's to restore)."""
        act = [o for o in self.tracker.outages(active=True, feeder_id=self.feeder_id) if not o.planned]
        return act[-1].id if act else None

    async def _persist(self, o: Outage) -> None:
        seq = self._seqs.get(o.id)
        try:
            self._seqs[o.id] = await self._ports.persist_outage(o.to_record(), seq)
        except Exception:  # a store failure must not stop switching; the next change carries the record
            log.exception("FDIR %s: persisting outage %s failed", self.feeder_id, o.id)

    async def _save(
        self, old: Outage | None, new: Outage, message: str = "", severity: Severity = Severity.INFO
    ) -> Outage:
        """Persist ``new`` and, when anything a customer or an operator sees changed (status, cause,
        customers out or interrupted, ETR, who is out), publish it as an OUTAGE event: the public
        feed and ``outageFeed`` follow every change, not only changes of status."""
        await self._persist(new)
        if old is None or _public_facts(old) != _public_facts(new):
            if not message:
                message = (
                    f"outage {new.id} {new.status.lower().replace('_', ' ')}: {new.customers_out} customers out"
                )
            await self._emit(EventKind.OUTAGE, severity, message, self._odata(new))
        return new

    async def _open_outage(
        self,
        load_ids: Iterable[str],
        devices: Iterable[str],
        bus_ids: Iterable[str],
        reuse: Outage | None,
        note: str,
    ) -> Outage | None:
        # Loads already out in another active outage stay counted there.
        taken = {ld for o in self.tracker.outages(active=True, feeder_id=self.feeder_id) for ld in o.load_ids_out}
        if reuse is not None:
            taken -= set(reuse.load_ids_out)
            newly = sorted(set(load_ids) - taken - set(reuse.load_ids_out))
            if not newly:
                return reuse
            o = self.tracker.step(
                reuse.id, lost=newly, action="MORE_LOST", by="fdir", customers_by_load=self._customers, note=note
            )
            return await self._save(reuse, o, severity=Severity.ALARM)
        loads = sorted(set(load_ids) - taken)
        active = self.tracker.outages(active=True, feeder_id=self.feeder_id)
        if not loads and active:
            # Nobody newly dark (a second fault where everyone is already out): the customers stay
            # counted in the outage they are in; the event is noted there.
            target = next((o for o in reversed(active) if set(load_ids) & set(o.load_ids_out)), active[-1])
            o = self.tracker.step(target.id, action="FAULT", by="fdir", at=self._ports.now(), note=note)
            await self._persist(o)
            await self._emit(
                EventKind.OUTAGE,
                Severity.ALARM,
                f"another fault on {self.feeder_id} inside outage {o.id} ({note})",
                self._odata(o),
            )
            return o
        o = self.tracker.open(
            self.feeder_id,
            Cause.FAULT,
            loads,
            self._customers,
            tuple(devices),
            at=self._ports.now(),
            by="fdir",
            section_bus_ids=bus_ids,
            note=note,
        )
        return await self._save(
            None, o, f"outage on {self.feeder_id}: {o.customers_out} customers without supply ({note})", Severity.ALARM
        )

    async def _momentary(self, devices: tuple[str, ...], live: dict[str, bool], note: str) -> None:
        blink = {**live, **{d: True for d in devices}}
        affected = self._energized_loads(live) - self._energized_loads(blink)
        o = self.tracker.record_momentary(
            self.feeder_id, devices, sorted(affected), self._customers, at=self._ports.now()
        )
        await self._save(
            None, o, f"momentary interruption on {self.feeder_id}: {o.customers_interrupted} customers ({note})"
        )

    async def _isolated(self, ps: PlanStatus, by: str) -> None:
        if ps.outage_id is None:
            return
        o = self.tracker.get(ps.outage_id)
        if not o.active or o.status != OutageStatus.DETECTED:
            return
        assert ps.plan.isolation is not None
        new = self.tracker.step(
            o.id, action="ISOLATED", by=by, isolated=True, note=ps.plan.isolation.explanation, at=self._ports.now()
        )
        await self._save(o, new, f"outage {o.id}: faulted zone isolated")

    async def _account(
        self, ps: PlanStatus, restored: frozenset[str], lost: frozenset[str], action: str, by: str
    ) -> None:
        active = self.tracker.outages(active=True, feeder_id=self.feeder_id)
        lost_to: dict[str, set[str]] = {}
        for ld in sorted(lost):
            owner = next((o.id for o in reversed(active) if ld in o.load_ids_interrupted), None)
            if owner is None:
                owner = ps.outage_id if any(o.id == ps.outage_id for o in active) else None
            if owner is None and active:
                owner = active[-1].id
            if owner is None:  # switching darkened customers outside every outage: record it
                o = self.tracker.open(
                    self.feeder_id,
                    Cause.PLANNED_SWITCHING,
                    [ld],
                    self._customers,
                    (),
                    at=self._ports.now(),
                    by=by,
                    note=f"interrupted by {action}",
                )
                await self._save(None, o)
                active.append(o)
                continue
            lost_to.setdefault(owner, set()).add(ld)
        for o in active:
            r = set(restored) & set(o.load_ids_out)
            lo = lost_to.get(o.id, set())
            if not r and not lo:
                continue
            new = self.tracker.step(
                o.id,
                lost=lo,
                restored=r,
                action=action,
                by=by,
                at=self._ports.now(),
                customers_by_load=self._customers,
                note=f"plan {ps.id}",
            )
            await self._save(o, new)

    async def _reconcile(self, by: str, note: str) -> None:
        """Loads of active outages that the live positions energize are restored."""
        energized = self._energized_loads(self._live())
        for o in self.tracker.outages(active=True, feeder_id=self.feeder_id):
            back = energized & set(o.load_ids_out)
            if back:
                new = self.tracker.step(o.id, restored=back, action="RECONCILED", by=by, note=note)
                await self._save(o, new)

    # ------------------------------------------------------------------------------------ supply

    def note_switching(self, changes: Mapping[str, bool], commanded: Mapping[str, str]) -> None:
        """Switch positions that telemetry reported changed (synchronous, from the host's callback).

        ``commanded`` names the switches among them that moved by a command of ours, and who sent it
        ("" when the control room did not say). A position commanded by someone other than FDIR is
        remembered with the position before it (until the switch moves back or moves uncommanded):
        customers it darkens are a planned interruption, not a fault, and their last gasps are not
        fault indications."""
        for sw, is_open in changes.items():
            if sw not in self.model.switches:
                continue
            if sw not in commanded:  # a trip or a field operation: the position is not ours any more
                self._commanded.pop(sw, None)
                self._changed_by.append((sw, "field"))
                continue
            by = commanded[sw]
            own = by == FDIR_NAME or (
                not by and self._executing_step is not None and self._executing_step.device_id == sw
            )
            by = FDIR_NAME if own else (by or "operator")
            self._changed_by.append((sw, by))
            if own:
                self._commanded.pop(sw, None)
                continue
            prior = self._commanded[sw][1] if sw in self._commanded else not is_open
            if prior == is_open:
                self._commanded.pop(sw, None)
            else:
                self._commanded[sw] = (by, prior)

    def commanded_positions(self) -> dict[str, tuple[str, bool]]:
        """Switch id -> (who commanded it, its position before) for positions others than FDIR hold."""
        return dict(self._commanded)

    def _explained_by_switching(self, live: Mapping[str, bool]) -> frozenset[str]:
        """Loads dark only because of commanded positions (their supply comes back if those
        switches go back to where they were before the command)."""
        if not self._commanded:
            return frozenset()
        reverted = {**live, **{sw: prior for sw, (_, prior) in self._commanded.items() if sw in live}}
        return self._energized_loads(reverted) - self._energized_loads(live)

    def prime_supply(self) -> None:
        """Start supply accounting from the live positions (an application starting)."""
        self._supplied = self._energized_loads(self._live())

    async def on_supply(self) -> None:
        """Account outages against who is supplied now (after every re-solve of the live state).

        An outage's loads that are energized again are restored at this time, whoever switched;
        customers that commanded switching (not FDIR's own plan, which accounts its steps itself)
        newly leaves without supply are a PLANNED_SWITCHING outage attributed to who commanded it.
        A de-energization nobody commanded is left to the protection indications (a fault)."""
        async with self._lock:
            live = self._live()
            energized = self._energized_loads(live)
            prev, self._supplied = self._supplied, energized
            changed, self._changed_by = self._changed_by, []
            who = sorted({b for _, b in changed}) or ["field"]
            at = self._ports.now()
            moved = ", ".join(sorted({sw for sw, _ in changed})) or "a re-solve"
            for o in self.tracker.outages(active=True, feeder_id=self.feeder_id):
                back = energized & set(o.load_ids_out)
                if back:
                    new = self.tracker.step(
                        o.id, restored=back, action="SUPPLY_RESTORED", by=",".join(who), at=at,
                        note=f"supplied again after {moved}",
                    )
                    await self._save(o, new)
            if prev is None:
                return
            out = {ld for o in self.tracker.outages(active=True, feeder_id=self.feeder_id) for ld in o.load_ids_out}
            dark = (prev - energized) - out
            explained = self._explained_by_switching(live)
            planned = sorted(ld for ld in dark & explained if self._customers.get(ld, 0) > 0)
            if not planned:
                return
            devices = tuple(sorted(sw for sw in self._commanded if sw in {s for s, _ in changed}))
            devices = devices or tuple(sorted(self._commanded))
            operators = sorted({self._commanded[d][0] for d in devices})
            ops = ", ".join(f"{'OPEN' if live.get(d) else 'CLOSE'} {d}" for d in devices)
            bus_ids = [self.model.load_bus[ld] for ld in planned if ld in self.model.load_bus]
            o = self.tracker.open(
                self.feeder_id, Cause.PLANNED_SWITCHING, planned, self._customers, devices, at=at,
                by=",".join(operators), section_bus_ids=bus_ids, note=f"commanded switching: {ops}",
            )
            await self._save(
                None, o, f"planned interruption on {self.feeder_id}: {o.customers_out} customers without supply "
                f"after {ops} by {', '.join(operators)}", Severity.WARNING,
            )

    # ------------------------------------------------------------------------------------ bookkeeping

    def _set(self, plan_id: str, **changes: Any) -> PlanStatus:
        ps = dataclasses.replace(self.plans[plan_id], **changes)
        self.plans[plan_id] = ps
        self.timings[plan_id] = ps.timings
        return ps

    async def _finish(self, plan_id: str, state: PlanState, **changes: Any) -> PlanStatus:
        if self._pending_id == plan_id:
            self._pending_id = None
        ps = self._set(plan_id, state=state, **changes)
        if state in (PlanState.COMPLETED, PlanState.FAILED, PlanState.REJECTED):
            self._last_id = plan_id
        return ps

    def _pdata(self, ps: PlanStatus) -> dict[str, Scalar]:
        return {
            "plan_id": ps.id,
            "plan_kind": ps.kind.value,
            "state": ps.state.value,
            "outage_id": ps.outage_id,
            "customers_interrupted": ps.plan.customers_interrupted,
            "customers_restored": ps.plan.customers_restored,
            "customers_left": ps.plan.customers_left,
            "replaces": ps.replaces,
        }

    @staticmethod
    def _odata(o: Outage | None) -> dict[str, Scalar]:
        if o is None:
            return {}
        return {
            "outage_id": o.id,
            "status": o.status.value,
            "cause": o.cause.value,
            "customers_out": o.customers_out,
            "customers_interrupted": o.customers_interrupted,
            "momentary": o.momentary,
        }

    async def _emit(self, kind: EventKind, severity: Severity, message: str, data: Mapping[str, Scalar]) -> None:
        try:
            await self._ports.emit(kind, severity, message, dict(data))
        except Exception:  # an event bus failure must not stop switching
            log.exception("FDIR %s: emitting %s event failed", self.feeder_id, kind)


def _public_facts(o: Outage) -> tuple[Any, ...]:
    return (o.status, o.cause, o.customers_out, o.customers_interrupted, o.estimated_restoration,
            o.load_ids_out, o.section_bus_ids)


def _mode(mode: FdirMode | str) -> FdirMode:
    try:
        return FdirMode(mode)
    except ValueError:
        raise BadInput(f"FDIR mode {mode!r} is unknown; use one of {', '.join(m.value for m in FdirMode)}") from None


def _stop(m: FdirModel, live: Mapping[str, bool], why: str) -> SafeStop:
    keep = tuple(sorted(s for s, v in live.items() if v and not m.normal_states.get(s, False)))
    return SafeStop(m.feeder.id, keep, f"{why}; keep {', '.join(keep) or 'the present positions'} open")
