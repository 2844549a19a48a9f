"""VoltVarApp on fake ports: persisted mode/objective, advisory plans, approval, execution through the
operate port, DER hook, holds and suspension (no Ray, no store, no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pytest

from actors.apps.voltvar_app import VoltVarApp
from actors.arbiter import DeviceHeld
from actors.cores.voltvar import DeviceKind
from actors.ingest import FieldFlags
from graph_schema.errors import BadInput, DmsError, NotFound
from tests.unit.test_voltvar import small_vvo


@dataclass
class Ports:
    feeder: Any = field(default_factory=small_vvo)
    feeder_id: str = "small-vvo"
    app_name: str = "voltvar"
    records: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    operated: list[tuple[str, str, float | None]] = field(default_factory=list)
    events: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    refuse: dict[str, str] = field(default_factory=dict)
    switches: dict[str, bool] = field(default_factory=dict)
    flags: FieldFlags = field(default_factory=lambda: FieldFlags(frozenset(), frozenset(), {}, frozenset()))

    def model(self) -> Any:
        return self.feeder

    def state(self) -> Any:
        return None

    def switch_states(self) -> dict[str, bool]:
        return {s.id: self.switches.get(s.id, s.is_open) for s in self.feeder.switches}

    def values(self) -> Mapping[str, Any]:
        return {}

    def points(self) -> Mapping[str, Any]:
        return {}

    def field_flags(self) -> FieldFlags:
        return self.flags

    async def operate(self, device_id: str, action: Any, value: float | None = None) -> bool:
        if device_id in self.refuse:
            raise DeviceHeld(device_id, self.refuse[device_id], "tagged HOLD: crew on site")
        self.operated.append((device_id, str(action), value))
        return True

    async def append_record(self, label: str, props: Mapping[str, Any]) -> int:
        self.records.append((label, dict(props)))
        return len(self.records)

    async def list_records(self, label: str, *, where: Mapping[str, Any] | None = None, limit: int = 100,
                           newest_first: bool = False) -> list[dict[str, Any]]:
        rows = [p for lb, p in self.records if lb == label and all(p.get(k) == v for k, v in (where or {}).items())]
        return list(reversed(rows))[:limit] if newest_first else rows[:limit]

    def emit(self, kind: Any, severity: Any, message: str, data: Mapping[str, Any]) -> None:
        self.events.append((str(kind), message, dict(data)))

    def spawn(self, coro: Coroutine[Any, Any, Any], name: str = "") -> asyncio.Task[Any]:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.append(task)
        return task

    def now(self) -> datetime:
        return datetime.now(UTC)


class DerPorts(Ports):
    def __init__(self) -> None:
        super().__init__()
        self.der_calls: list[tuple[str, str, float]] = []

    async def der_setpoint(self, der_id: str, action: str, value: float) -> bool:
        self.der_calls.append((der_id, action, value))
        return True


async def started(ports: Ports, **kw: Any) -> VoltVarApp:
    app = VoltVarApp(default_mode=kw.pop("default_mode", "ADVISORY"), period_s=3600.0, **kw)
    await app.start(ports)
    return app


async def test_mode_and_objective_are_persisted_and_read_back() -> None:
    ports = Ports()
    app = await started(ports, default_mode="OFF")
    assert app.mode == "OFF" and app.objective == "LOSSES"
    assert await app.set_mode("ADVISORY", "alice") == "ADVISORY"
    assert await app.set_objective("CVR", "alice") == "CVR"
    await app.close()
    again = await started(ports, default_mode="OFF")
    assert again.mode == "ADVISORY" and again.objective == "CVR"  # the stored choice wins over the default
    await again.close()
    with pytest.raises(BadInput, match="AUTOMATIC, ADVISORY or OFF"):
        await again.set_mode("SOMETIMES", "alice")
    with pytest.raises(BadInput, match="LOSSES or CVR"):
        await again.set_objective("CHEAPEST", "alice")


async def test_advisory_plans_then_approval_executes_each_operation_in_order() -> None:
    ports = Ports()
    app = await started(ports)
    rec = await app.plan_now()
    assert rec.state == "PROPOSED" and rec.plan.operations and not ports.operated
    assert rec.plan.after.feasible and not rec.plan.before.feasible
    assert any(e[0] == "PLAN" and e[2]["plan_id"] == rec.id for e in ports.events)
    done = await app.approve(rec.id, "alice")
    discrete = [op for op in rec.plan.operations if op.device_kind is not DeviceKind.DER]
    assert [(d, v) for d, _, v in ports.operated] == [(op.device_id, op.value) for op in discrete]
    assert all(a == "SET" for _, a, _ in ports.operated)
    ders = [op for op in rec.plan.operations if op.device_kind is DeviceKind.DER]
    if ders:  # no DER executor on these ports: skipped with the reason
        assert done.skipped and "no DER executor" in app.status_text()
    assert done.state == "EXECUTED" and done.decided_by == "alice"
    with pytest.raises(BadInput, match="only a PROPOSED plan"):
        await app.approve(rec.id, "alice")
    with pytest.raises(NotFound):
        await app.approve("nope", "alice")
    await app.close()


async def test_automatic_executes_and_der_operations_use_the_der_hook() -> None:
    ports = DerPorts()
    app = await started(ports)
    await app.set_mode("AUTOMATIC", "alice")
    rec = await app.plan_now()
    assert rec.state == "EXECUTED" and rec.decided_by == "voltvar"
    ders = [op for op in rec.plan.operations if op.device_kind is DeviceKind.DER]
    assert [(d, v) for d, _, v in ports.der_calls] == [(op.device_id, op.value) for op in ders]
    # The positions it commanded are its new starting point: a second plan has nothing to do.
    again = await app.plan_now()
    assert again.state == "NOTHING_TO_DO" and "deadband" in (again.plan.reason or "")
    await app.close()


async def test_a_requested_plan_never_executes_even_in_automatic() -> None:
    """The API's planVoltVar is a what-if (a planner may ask): it proposes, an approval executes."""
    ports = DerPorts()
    app = await started(ports)
    await app.set_mode("AUTOMATIC", "alice")
    rec = await app.plan_now("operator", False)
    assert rec.state == "PROPOSED" and rec.plan.operations and not ports.operated and not ports.der_calls
    done = await app.approve(rec.id, "alice")
    assert done.state == "EXECUTED" and ports.operated
    await app.close()


async def test_a_der_that_fails_is_left_out_of_the_next_plan() -> None:
    """A DER that does not confirm (no answer, another read-back): the plan stops there, the DER is
    held with the reason and the re-plan works without it."""
    class FailingDer(DerPorts):
        async def der_setpoint(self, der_id: str, action: str, value: float) -> bool:
            self.der_calls.append((der_id, action, value))
            return False

    ports = FailingDer()
    app = await started(ports)
    await app.set_mode("AUTOMATIC", "alice")
    rec = await app.plan_now()
    ders = [op.device_id for op in rec.plan.operations if op.device_kind is DeviceKind.DER]
    assert ders, "the small feeder's plan moves a DER's Q"
    first = ders[0]
    assert rec.state in ("FAILED", "PARTIAL") and "not confirmed" in (rec.failed or "")
    assert "not confirmed" in app.held[first] and f"{first} by its last command" in app.status_text()
    nxt = await app.plan_now("DER failed", False)
    assert first in nxt.plan.held and all(op.device_id != first for op in nxt.plan.operations)
    await app.close()


async def test_a_held_device_stops_the_plan_and_is_reported() -> None:
    ports = Ports()
    app = await started(ports)
    rec = await app.plan_now()
    first = rec.plan.operations[0].device_id
    ports.refuse[first] = "operator bob"
    done = await app.approve(rec.id, "alice")
    assert done.state == "FAILED" and "DEVICE_HELD" in (done.failed or "")
    assert not ports.operated
    assert f"{first} by operator bob" in app.status_text()
    nxt = await app.plan_now()
    assert first in nxt.plan.held and all(op.device_id != first for op in nxt.plan.operations)
    await app.close()


async def test_fault_or_abnormal_switching_suspends_automatic_execution() -> None:
    ports = Ports()
    app = await started(ports)
    await app.set_mode("AUTOMATIC", "alice")
    ports.switches["sw_b2"] = True  # normally closed, now open: restoration's zone
    rec = await app.plan_now()
    assert rec.state == "PROPOSED" and not ports.operated
    assert "AUTOMATIC suspended: abnormal switching state (sw_b2" in app.status_text()
    with pytest.raises(DmsError) as err:
        await app.approve(rec.id, "alice")
    assert err.value.code == "DEVICE_HELD" and not ports.operated
    ports.switches.clear()
    ports.flags = FieldFlags(frozenset({"sw_b1"}), frozenset(), {}, frozenset())
    await app.plan_now()
    assert "a fault is indicated" in app.status_text() and not ports.operated
    await app.close()


async def test_fallback_settings_come_from_the_model() -> None:
    from dataclasses import replace

    f = small_vvo()
    f = replace(f, capacitors=tuple(replace(c, local_control=True, v_on_pu=0.97, v_off_pu=1.03) for c in f.capacitors),
                transformers=tuple(replace(t, band_centre_pu=1.0, bandwidth_pu=0.02) for t in f.transformers))
    app = await started(Ports(feeder=f))
    kinds = {s["device_id"]: s["kind"] for s in app.fallback_settings()}
    assert kinds == {"cap4": "CAPACITOR", "cap5": "CAPACITOR", "tr1": "OLTC", "reg": "REGULATOR"}
    await app.close()
