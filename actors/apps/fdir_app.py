"""FDIR as a hosted application: the :class:`actors.apps.fdir_engine.FdirEngine` on the feeder's ports.

Trips, fault indicators and last gasps reach it as telemetry changes; it reads the protection flags
through the ports, plans, and switches through the same select-before-operate path as an operator
(arbitrated at FDIR priority, audited as ``fdir``). Its mode (persisted ``Setting`` record) and its
active outages (``Outage`` records, faulted zones included) are read back when it starts, so an
actor rebuilt from the store keeps them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from actors.applications import FeederPorts, TelemetryChange
from actors.apps.fdir_engine import FdirEngine, FdirMode, FdirPorts, FdirStatus, PlanStatus
from actors.arbiter import Priority
from actors.cores.control import ControlAction
from actors.cores.events import EventKind, Scalar, Severity
from actors.cores.fdir import FdirModel, Indications
from actors.cores.outages import Outage, store_record
from graph_schema.errors import BadInput, DmsError

log = logging.getLogger(__name__)
FDIR_OPERATOR = "fdir"


class FdirApp:
    name = FDIR_OPERATOR
    priority = Priority.FDIR
    api = frozenset({"engine_status", "plans", "timings", "set_mode", "approve", "reject", "plan_counts"})
    read_only = frozenset({"engine_status", "plans", "timings", "plan_counts"})

    def __init__(self, default_mode: str = "ADVISORY", settle_s: float = 2.0) -> None:
        self._default_mode = default_mode
        self._settle_s = settle_s
        self._ports: FeederPorts | None = None
        self.engine: FdirEngine | None = None
        self._supply_dirty = False
        self._supply_task: asyncio.Task[Any] | None = None
        self._loads_fixed = False  # the pre-fault estimated loads are held for this disturbance

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, ports: FeederPorts) -> None:
        self._ports = ports
        restored: list[tuple[Outage, int]] = []
        for row in await ports.list_records("Outage", limit=200, newest_first=True):
            try:
                outage = Outage.from_record(row)
            except DmsError:
                log.error("feeder %s: outage record seq=%s is malformed; skipped", ports.feeder_id, row.get("seq"))
                continue
            if outage.active:
                restored.append((outage, int(row["seq"])))
        mode = FdirMode(self._default_mode)
        stored = await ports.list_records("Setting", where={"key": "fdir_mode"}, limit=1, newest_first=True)
        if stored:  # an operator's setFdirMode outlives restarts and wins over the start-up default
            with contextlib.suppress(ValueError):
                mode = FdirMode(str(stored[0]["value"]))
        fdir_ports = FdirPorts(operate=self._operate, switch_states=ports.switch_states,
                               persist_outage=self._persist_outage, emit=self._emit, now=lambda: datetime.now(UTC))
        model = await asyncio.to_thread(FdirModel, ports.model(), graph=ports.topology_graph())
        self.engine = FdirEngine(model, fdir_ports, mode=mode, settle_s=self._settle_s, outages=restored)
        self.engine.prime_supply()
        self.on_state(None)  # outages read back whose customers are supplied again end now

    async def close(self) -> None:
        if self.engine is not None:
            await self.engine.aclose()

    # -- host callbacks --------------------------------------------------------------------------

    def on_telemetry(self, change: TelemetryChange) -> None:
        ports, engine = self._ports, self.engine
        if ports is None or engine is None:
            return
        if change.switch_changes:  # who commanded what: their interruptions are planned, not faults
            engine.note_switching(change.switch_changes, change.commanded_by)
        if change.indications_changed:  # hand the engine what the field says now; it waits for the rest
            if not self._loads_fixed:
                self._hold_pre_fault_loads()
            ports.spawn(engine.on_indications(self._indications()), "fdir indications")
        if change.fault_cleared:
            self._loads_fixed = False
        if change.fault_cleared and engine.status().active_outage_ids:
            ports.clear_reclosed()
            ports.spawn(engine.on_fault_cleared(by="field"), "fdir fault cleared")

    def on_state(self, state: Any) -> None:
        """After every re-solve: outages are accounted against who is supplied now (one task at a
        time; states arriving meanwhile are folded into one more pass)."""
        if self._ports is None or self.engine is None:
            return
        self._supply_dirty = True
        if self._supply_task is None or self._supply_task.done():
            self._supply_task = self._ports.spawn(self._account_supply(), "fdir supply")

    async def _account_supply(self) -> None:
        engine = self.engine
        while self._supply_dirty and engine is not None:
            self._supply_dirty = False
            await engine.on_supply()

    def _hold_pre_fault_loads(self) -> None:
        """Plans are validated at the estimated load of the moment before the disturbance (the
        estimator's last result, taken before it runs again on the post-fault telemetry); without
        a fresh estimate, at the model's nominal load."""
        assert self._ports is not None and self.engine is not None
        est = getattr(self._ports.state(), "estimate", None)
        if est is not None and not est.stale and est.load_p_mw:
            self.engine.model.set_loads(est.load_p_mw, est.load_q_mvar)
        else:
            self.engine.model.set_loads(None, None)
        self._loads_fixed = True

    def status(self) -> Mapping[str, Any]:
        if self.engine is None:
            return {}
        st = self.engine.status()
        return {"mode": str(st.mode), "active_outages": len(st.active_outage_ids), "plans": self.plan_counts(),
                "load_basis": self.engine.model.load_basis}

    def _indications(self) -> Indications:
        assert self._ports is not None
        flags = self._ports.field_flags()
        return Indications(tripped_devices=frozenset(flags.tripped | flags.reclosed),
                           reclosed=frozenset(flags.reclosed - flags.tripped),
                           fault_indicators=dict(flags.fault_indicators), last_gasp_loads=flags.last_gasp,
                           time=datetime.now(UTC))

    # -- ports for the engine --------------------------------------------------------------------

    async def _operate(self, device_id: str, action: ControlAction) -> bool:
        # The engine checked this step against every faulted zone it located (more precisely than the
        # indicator-based guess operators' controls get), so the zone is not checked again here.
        assert self._ports is not None
        return await self._ports.operate(device_id, action, None)

    async def _persist_outage(self, record: dict[str, Any], seq: int | None) -> int:
        assert self._ports is not None
        props, _ = store_record(record)
        if seq is None:
            return await self._ports.append_record("Outage", props)
        await self._ports.update_record("Outage", seq, props)
        return seq

    async def _emit(self, kind: EventKind, severity: Severity, message: str, data: Mapping[str, Scalar]) -> None:
        assert self._ports is not None
        self._ports.emit(kind, severity, message, data)

    # -- API -------------------------------------------------------------------------------------

    def _engine(self) -> FdirEngine:
        if self.engine is None:
            raise DmsError("FDIR is still starting on this feeder; retry shortly", code="APPLICATION_UNAVAILABLE")
        return self.engine

    def engine_status(self) -> FdirStatus:
        return self._engine().status()

    def plans(self) -> list[PlanStatus]:
        return list(self._engine().plans.values())

    def timings(self) -> dict[str, Any]:
        return dict(self._engine().timings)

    def plan_counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for plan in (self.engine.plans.values() if self.engine is not None else ()):
            out[str(plan.state)] = out.get(str(plan.state), 0) + 1
        return out

    async def set_mode(self, mode: str, by: str) -> str:
        try:
            wanted = FdirMode(mode)
        except ValueError:
            raise BadInput(f"FDIR mode {mode!r} is unknown; use AUTOMATIC, ADVISORY or OFF") from None
        result = str(await self._engine().set_mode(wanted, by))
        assert self._ports is not None
        await self._ports.append_record("Setting", {"key": "fdir_mode", "value": result, "set_by": by,
                                                    "set_at": datetime.now(UTC).isoformat()})
        return result

    async def approve(self, plan_id: str, by: str) -> PlanStatus:
        return await self._engine().approve(plan_id, by)

    async def reject(self, plan_id: str, by: str, reason: str) -> PlanStatus:
        return await self._engine().reject(plan_id, by, reason)
