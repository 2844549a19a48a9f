"""Volt/VAR optimisation as a hosted application: :class:`actors.cores.voltvar.VoltVarPlanner` on the
feeder's ports.

* **Mode** per feeder (``OFF``, ``ADVISORY``, ``AUTOMATIC``; ``OFF`` until an operator chooses, so
  a feeder nobody set up costs nothing: the planner is built on first use) and **objective**
  (``LOSSES``, ``CVR``) are persisted as ``Setting`` records (keys ``voltvar_mode`` /
  ``voltvar_objective``) and read back at start, as FDIR's mode is: an operator's choice outlives
  actor restarts.
* **When it plans**: every ``period_s`` and on events: a load or DER swing in the estimated state
  (total load or DER output moved more than ``swing_fraction`` since the last plan), a topology
  change (a switch moved, e.g. after FDIR) or an indication clearing. Triggers arriving while a plan
  runs fold into one more pass.
* **What it plans on**: the estimated loads (``FeederState.estimate``, the estimation application's
  result) when fresh, else the model's nominal loads (said in the status); the devices' present
  positions from TAP_POS telemetry where bound, else the last known (model or last confirmed).
* **Who holds what** (precedence, as the arbiter decides: operators and tags, then FDIR, then the
  optimisers): while a fault indication, a trip or a switch out of its normal position is present
  the feeder is FDIR's (or the operators') zone and VVO *suspends* AUTOMATIC execution (it still
  advises), saying why in its status; at execution every step goes through the arbiter, and a
  ``DEVICE_HELD`` refusal (a tag, an operator's selection, FDIR's claim) stops the plan there and puts
  the device on the held list of the next plan.
* **ADVISORY** keeps the plan (predicted losses, min/max voltage, operations) for ``approve``;
  **AUTOMATIC** executes it through select-before-operate under the app's identity (``voltvar``),
  one operation at a time, each confirmed by telemetry before the next (taps first, then banks).
* **DER operations** (``SET_DER_Q``, ``CURTAIL_DER_P``) go through one named hook: the ports'
  optional ``der_setpoint(der_id, action, value) -> bool`` (the DER management path). Where the host
  has none they are skipped and the plan's status says so.
* **Wear**: operations per device per (UTC) day are counted; ``max_ops_per_day`` bounds each tap
  changer and bank (the planner is told what is left). The planner's deadbands stop hunting.
* **Local fallback**: :meth:`fallback_settings` gives each bank's controller (``v_on_pu``/
  ``v_off_pu``) and each regulator's band (centre, width, LDC) from the model. Writing them to the
  devices over their point maps, and the simulator running them while the head-end is away, are not
  built yet (see the wave-2 report).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from actors.applications import FeederPorts, TelemetryChange, field_hold, reported_positions
from actors.arbiter import Priority
from actors.cores.control import ControlAction
from actors.cores.events import EventKind, Severity
from actors.cores.voltvar import (
    DeviceKind,
    Objective,
    Operation,
    VoltVarOptions,
    VoltVarPlan,
    VoltVarPlanner,
    VoltVarState,
)
from graph_schema.errors import BadInput, DmsError, NotFound

log = logging.getLogger(__name__)
VOLTVAR_OPERATOR = "voltvar"


class VoltVarMode(StrEnum):
    OFF = "OFF"
    ADVISORY = "ADVISORY"
    AUTOMATIC = "AUTOMATIC"


class PlanState(StrEnum):
    PROPOSED = "PROPOSED"
    EXECUTING = "EXECUTING"
    EXECUTED = "EXECUTED"
    PARTIAL = "PARTIAL"
    FAILED = "FAILED"
    SUPERSEDED = "SUPERSEDED"
    NOTHING_TO_DO = "NOTHING_TO_DO"


@dataclass(slots=True)
class PlanRecord:
    """A plan and what became of it."""

    id: str
    plan: VoltVarPlan
    created_at: datetime
    state: PlanState = PlanState.PROPOSED
    trigger: str = ""
    load_basis: str = "MODEL"
    executed: list[str] = field(default_factory=list)  # "device:action=value" confirmed
    skipped: list[str] = field(default_factory=list)  # "device: reason"
    failed: str | None = None
    decided_by: str | None = None


class VoltVarApp:
    name = VOLTVAR_OPERATOR
    priority = Priority.OPTIMISER
    api = frozenset({"voltvar_status", "set_mode", "set_objective", "approve", "plan_now", "fallback_settings",
                     "push_fallback"})
    read_only = frozenset({"voltvar_status", "fallback_settings"})

    def __init__(self, default_mode: str = "OFF", period_s: float = 300.0, swing_fraction: float = 0.1,
                 max_ops_per_day: int = 30, debounce_s: float = 1.0) -> None:
        self._default_mode = default_mode
        self._period_s = period_s
        self._swing = swing_fraction
        self._max_ops = max_ops_per_day
        self._debounce_s = debounce_s
        self._ports: FeederPorts | None = None
        self.planner: VoltVarPlanner | None = None
        self.mode = VoltVarMode(default_mode)
        self.objective = Objective.LOSSES
        self.last: PlanRecord | None = None
        self.plans: list[PlanRecord] = []
        self.suspended: str | None = None
        self.held: dict[str, str] = {}  # device -> who holds it (from refusals)
        self.der_note: str | None = None
        self._positions: dict[str, int] = {}
        self._ops_today: dict[str, int] = {}
        self._ops_day: str = ""
        self._basis: tuple[float, float] | None = None
        self._wake = asyncio.Event()
        self._trigger = "start"
        self._lock = asyncio.Lock()
        self._loop_task: asyncio.Task[Any] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, ports: FeederPorts) -> None:
        self._ports = ports
        for key, apply in (("voltvar_mode", self._restore_mode), ("voltvar_objective", self._restore_objective)):
            stored = await ports.list_records("Setting", where={"key": key}, limit=1, newest_first=True)
            if stored:
                with contextlib.suppress(ValueError):
                    apply(str(stored[0]["value"]))
        feeder = ports.model()
        self._positions = {t.id: int(t.tap_pos if t.tap_pos is not None else (t.tap_neutral or 0))
                           for t in feeder.transformers if t.has_tap_changer}
        self._positions.update({c.id: c.step for c in feeder.capacitors})
        self._loop_task = ports.spawn(self._loop(), "voltvar loop")

    def _restore_mode(self, v: str) -> None:
        self.mode = VoltVarMode(v)

    def _restore_objective(self, v: str) -> None:
        self.objective = Objective(v)

    async def close(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()

    # -- host callbacks --------------------------------------------------------------------------

    def _kick(self, why: str) -> None:
        self._trigger = why
        self._wake.set()

    def on_telemetry(self, change: TelemetryChange) -> None:
        if change.switch_changes:
            self._kick("topology change")
        elif change.fault_cleared:
            self._kick("fault cleared")
        elif change.indications_changed:
            self._kick("indication")

    def on_state(self, state: Any) -> None:
        basis = self._load_basis(state)
        if basis is None or self._basis is None:
            return
        (load, der), (load0, der0) = basis, self._basis
        if abs(load - load0) > self._swing * max(abs(load0), 1e-6):
            self._kick("load change")
        elif abs(der - der0) > self._swing * max(abs(der0), 0.05 * max(abs(load0), 1e-6)):
            self._kick("DER swing")

    def status(self) -> Mapping[str, Any]:
        return {"mode": str(self.mode), "objective": str(self.objective), "status": self.status_text(),
                "plans": len(self.plans)}

    # -- planning --------------------------------------------------------------------------------

    def _load_basis(self, state: Any) -> tuple[float, float] | None:
        est = getattr(state, "estimate", None)
        if est is None or getattr(est, "stale", False) or not getattr(est, "load_p_mw", None):
            return None
        assert self._ports is not None
        der = sum(d.p_mw for d in self._ports.model().ders if d.in_service)
        return float(sum(est.load_p_mw.values())), float(der)

    async def _loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._period_s)
            await asyncio.sleep(self._debounce_s)  # let a burst of changes settle into one plan
            self._wake.clear()
            why, self._trigger = self._trigger, "period"
            if self.mode is VoltVarMode.OFF:
                continue
            try:
                await self.plan_now(trigger=why)
            except DmsError as exc:
                log.warning("feeder %s: Volt/VAR planning failed: %s", self._ports and self._ports.feeder_id, exc)

    def _suspension(self) -> str | None:
        """Why the feeder is someone else's now (None: VVO may act)."""
        assert self._ports is not None
        return field_hold(self._ports)

    def _state(self) -> tuple[VoltVarState, str]:
        assert self._ports is not None
        ports = self._ports
        feeder = ports.model()
        est = getattr(ports.state(), "estimate", None)
        basis = "MODEL"
        lp = lq = None
        if est is not None and not est.stale and est.load_p_mw:
            lp, lq, basis = dict(est.load_p_mw), dict(est.load_q_mvar), "ESTIMATED"
        taps = {t.id for t in feeder.transformers if t.has_tap_changer}
        reported_taps, reported_caps = reported_positions(ports.values(), ports.points())
        self._positions.update({k: v for k, v in reported_taps.items() if k in taps})
        self._positions.update(reported_caps)
        day = datetime.now(UTC).date().isoformat()
        if day != self._ops_day:
            self._ops_day, self._ops_today = day, {}
        ops_left = {d: max(0, self._max_ops - n) for d, n in self._ops_today.items()}
        state = VoltVarState(
            load_p_mw=lp, load_q_mvar=lq,
            tap_pos={k: v for k, v in self._positions.items() if k in taps},
            capacitor_step={k: v for k, v in self._positions.items() if k not in taps},
            switch_states=ports.switch_states(), held=frozenset(self.held), ops_left=ops_left,
        )
        return state, basis

    async def plan_now(self, trigger: str = "operator", execute: bool = True) -> PlanRecord:
        """Plan now; the loop's step executes in AUTOMATIC (``execute``). The API's "plan now" passes
        ``execute=False``: asking for a plan is a what-if that changes nothing in the field, so a
        planner may ask; in AUTOMATIC the loop's own next step, or an approval, executes."""
        if self._ports is None:
            raise DmsError("Volt/VAR is still starting on this feeder; retry shortly", code="APPLICATION_UNAVAILABLE")
        async with self._lock:
            if self.planner is None:  # built on first use: a feeder left OFF never pays for it
                self.planner = await asyncio.to_thread(VoltVarPlanner, self._ports.model())
            state, basis = self._state()
            self._basis = self._load_basis(self._ports.state())
            opt = VoltVarOptions(objective=self.objective)
            plan = await asyncio.to_thread(self.planner.plan, state, opt)
            if self.last is not None and self.last.state == "PROPOSED":
                self.last.state = PlanState.SUPERSEDED
            rec = PlanRecord(uuid.uuid4().hex[:12], plan, datetime.now(UTC), trigger=trigger, load_basis=basis,
                             state=PlanState.PROPOSED if plan.operations else PlanState.NOTHING_TO_DO)
            self.last = rec
            self.plans = [*self.plans[-19:], rec]
            self.suspended = self._suspension()
            self._emit_plan(rec, "planned")
            if execute and rec.state == "PROPOSED" and self.mode is VoltVarMode.AUTOMATIC and self.suspended is None:
                await self._execute(rec, by=VOLTVAR_OPERATOR)
            return rec

    def _emit_plan(self, rec: PlanRecord, what: str) -> None:
        assert self._ports is not None
        p = rec.plan
        self._ports.emit(
            EventKind.PLAN, Severity.INFO,
            f"Volt/VAR plan {rec.id} {what} ({rec.state}): {len(p.operations)} operations, losses "
            f"{p.before.losses_mw * 1000:.1f} -> {p.after.losses_mw * 1000:.1f} kW, "
            f"V {p.after.min_vm_pu:.3f}-{p.after.max_vm_pu:.3f} pu",
            {"application": VOLTVAR_OPERATOR, "plan_id": rec.id, "state": rec.state,
             "operations": len(p.operations), "predicted_losses_mw": p.after.losses_mw,
             "predicted_min_vm_pu": p.after.min_vm_pu, "predicted_max_vm_pu": p.after.max_vm_pu},
        )

    # -- execution -------------------------------------------------------------------------------

    async def _execute(self, rec: PlanRecord, by: str) -> None:
        assert self._ports is not None
        ports = self._ports
        rec.state, rec.decided_by = PlanState.EXECUTING, by
        hook = getattr(ports, "der_setpoint", None)
        failed_der: str | None = None
        for op in rec.plan.operations:
            label = f"{op.device_id}:{op.action}={op.value:g}"
            try:
                if op.device_kind is DeviceKind.DER:
                    if hook is None:
                        rec.skipped.append(f"{op.device_id}: {op.action} skipped: no DER executor on this host "
                                           "(the DER management path is not installed)")
                        self.der_note = "DER operations are skipped: no DER executor on this host"
                        continue
                    ok = await hook(op.device_id, str(op.action), op.value)
                else:
                    ok = await ports.operate(op.device_id, ControlAction.SET, op.value)
            except DmsError as exc:
                if exc.code == "DEVICE_HELD":
                    self.held[op.device_id] = str(getattr(exc, "held_by", "another holder"))
                elif op.device_kind is DeviceKind.DER:  # refused it or cannot be reached: plan without it
                    self.held[op.device_id] = f"its last command failed ({exc.code})"
                    failed_der = op.device_id
                rec.failed = f"{label}: {exc.code}: {exc.message}"
                break
            if not ok:
                rec.failed = f"{label}: not confirmed"
                if op.device_kind is DeviceKind.DER:  # no answer or another read-back: plan without it
                    self.held[op.device_id] = "its last command was not confirmed"
                    failed_der = op.device_id
                break
            rec.executed.append(label)
            if op.device_kind is not DeviceKind.DER:
                self._positions[op.device_id] = int(op.value)
                steps = abs(int(op.value - op.from_value))
                self._ops_today[op.device_id] = self._ops_today.get(op.device_id, 0) + steps
        if rec.failed is not None:
            rec.state = PlanState.FAILED if not rec.executed else PlanState.PARTIAL
        else:
            rec.state = PlanState.EXECUTED
            self.held = {}
        self._emit_plan(rec, f"executed by {by}")
        if failed_der is not None:  # re-plan at once without it (it is on the held list until a plan succeeds)
            self._kick(f"DER {failed_der} failed")

    # -- API -------------------------------------------------------------------------------------

    def status_text(self) -> str:
        parts: list[str] = []
        if self.mode is VoltVarMode.OFF:
            parts.append("OFF: not planning")
        if self.suspended:
            parts.append(f"AUTOMATIC suspended: {self.suspended}" if self.mode is VoltVarMode.AUTOMATIC
                         else f"held off: {self.suspended}")
        if self.held:
            parts.append("held devices: " + ", ".join(f"{d} by {w}" for d, w in sorted(self.held.items())))
        if self.last is not None:
            p = self.last.plan
            parts.append(f"last plan {self.last.id} {self.last.state} ({self.last.trigger}, "
                         f"loads {self.last.load_basis})")
            if p.reason:
                parts.append(p.reason)
            if self.last.failed:
                parts.append(f"stopped at {self.last.failed}")
            parts.extend(self.last.skipped)
        return "; ".join(parts) or "ready"

    def voltvar_status(self) -> dict[str, Any]:
        return {"mode": str(self.mode), "objective": str(self.objective), "status": self.status_text(),
                "last_plan": self.last, "held": dict(self.held), "suspended": self.suspended}

    async def set_mode(self, mode: str, by: str) -> str:
        try:
            wanted = VoltVarMode(mode)
        except ValueError:
            raise BadInput(f"Volt/VAR mode {mode!r} is unknown; use AUTOMATIC, ADVISORY or OFF") from None
        assert self._ports is not None
        await self._ports.append_record("Setting", {"key": "voltvar_mode", "value": str(wanted), "set_by": by,
                                                    "set_at": datetime.now(UTC).isoformat()})
        self.mode = wanted
        if wanted is not VoltVarMode.OFF:
            self._kick("mode change")
        return str(wanted)

    async def set_objective(self, objective: str, by: str) -> str:
        try:
            wanted = Objective(objective)
        except ValueError:
            raise BadInput(f"Volt/VAR objective {objective!r} is unknown; use LOSSES or CVR") from None
        assert self._ports is not None
        await self._ports.append_record("Setting", {"key": "voltvar_objective", "value": str(wanted),
                                                    "set_by": by, "set_at": datetime.now(UTC).isoformat()})
        self.objective = wanted
        self._kick("objective change")
        return str(wanted)

    async def approve(self, plan_id: str, by: str) -> PlanRecord:
        rec = self.last
        if rec is None or rec.id != plan_id:
            known = next((p for p in self.plans if p.id == plan_id), None)
            if known is None:
                raise NotFound(f"Volt/VAR plan {plan_id!r} is not known on this feeder; query voltVar for the "
                               "last plan", element_id=plan_id)
            raise BadInput(f"Volt/VAR plan {plan_id!r} is {known.state}, not the last proposed plan; approve "
                           f"{rec.id if rec else 'a new plan'} instead", element_id=plan_id)
        if rec.state != "PROPOSED":
            raise BadInput(f"Volt/VAR plan {plan_id!r} is {rec.state}; only a PROPOSED plan can be approved",
                           element_id=plan_id)
        self.suspended = self._suspension()
        if self.suspended is not None:
            raise DmsError(f"Volt/VAR plan {plan_id!r} was not executed: {self.suspended}", element_id=plan_id,
                           code="DEVICE_HELD")
        async with self._lock:
            await self._execute(rec, by=by)
        return rec

    def fallback_settings(self) -> list[dict[str, Any]]:
        """Local controller settings to push: banks (switch in/out voltages) and tap changers (band, LDC)."""
        assert self._ports is not None
        feeder = self._ports.model()
        out: list[dict[str, Any]] = []
        for c in feeder.capacitors:
            if c.local_control:
                out.append({"device_id": c.id, "kind": "CAPACITOR", "v_on_pu": c.v_on_pu, "v_off_pu": c.v_off_pu})
        for t in feeder.transformers:
            if t.has_tap_changer and t.band_centre_pu is not None:
                out.append({"device_id": t.id, "kind": "REGULATOR" if t.regulator else "OLTC",
                            "band_centre_pu": t.band_centre_pu, "bandwidth_pu": t.bandwidth_pu,
                            "ldc_r_ohm": t.ldc_r_ohm, "ldc_x_ohm": t.ldc_x_ohm})
        return out

    async def push_fallback(self, by: str) -> list[dict[str, Any]]:
        """Write every bank's and tap changer's local settings (:meth:`fallback_settings`) to the
        device, one setting at a time through :func:`actors.execution.write_setting`: what holds the
        voltage when the head-end is away. One result per setting; a device held by FDIR or an
        operator, or without a settings point, fails with the reason and the others still go."""
        assert self._ports is not None
        write = getattr(self._ports, "write_setting", None)
        if write is None:
            raise DmsError("this host cannot push controller settings", code="APPLICATION_UNAVAILABLE")
        results: list[dict[str, Any]] = []
        for item in self.fallback_settings():
            for attr, kind in _SETTING_KINDS:
                value = item.get(attr)
                if value is None:
                    continue
                try:
                    out = await write(item["device_id"], kind, float(value))
                    status, code, message = out.status, out.code, out.message
                except DmsError as exc:
                    status, code, message = "REFUSED", exc.code, exc.message
                results.append({"device_id": item["device_id"], "setting": kind, "value": float(value),
                                "status": status, "code": code, "message": message})
        ok = sum(1 for r in results if r["status"] == "ACCEPTED")
        self._ports.emit(EventKind.PLAN, Severity.INFO,
                         f"Volt/VAR pushed {ok} of {len(results)} local controller settings (by {by})",
                         {"application": VOLTVAR_OPERATOR, "phase": "FALLBACK_PUSHED", "accepted": ok,
                          "total": len(results)})
        return results


_SETTING_KINDS = (("v_on_pu", "SET_V_ON"), ("v_off_pu", "SET_V_OFF"), ("band_centre_pu", "SET_BAND_CENTRE"),
                  ("bandwidth_pu", "SET_BANDWIDTH"))


def operation_dict(op: Operation) -> dict[str, Any]:
    return {"device_id": op.device_id, "device_kind": str(op.device_kind), "action": str(op.action),
            "value": op.value, "from_value": op.from_value}
