"""A whole Volt/VAR cycle through the field: the case33bw-vvo feeder (OLTC, line regulator, three
switched banks, 6.5 MW of PV) simulated at midday, where PV lifts the far end above 1.05 pu.
AUTOMATIC Volt/VAR plans on the live state, operates each tap and bank through select-before-operate
over Modbus (SET_TAP / SET_CAP_STEP, confirmed by TAP_POS / CAP_STEP telemetry) and each DER's Q over
SunSpec; the simulated grid then has every voltage in band and fewer losses than before. The
simulator's own controllers (bank and tap-changer bands) act only when no remote command came."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest

from tests.integration.conftest import bound_field, shared_field_paused, wait_for

F = "case33bw-vvo"
MIDDAY = datetime(2026, 6, 21, 12, 0, tzinfo=UTC)
STATUS_Q = """query($f: ID!) { voltVar(feederId: $f) { mode status suspended lastPlan { id state trigger
  predictedLossesMw predictedMaxVmPu operations { deviceId deviceKind action value } executed skipped failed } } }"""


@pytest.fixture(scope="module")
async def vvo_field(runtime: Any, settings: Any) -> AsyncIterator[Any]:
    from graph_schema.importers import case33bw_vvo
    from protocols.certs import ensure_pki
    from protocols.simulator import FieldSimulator

    feeder = case33bw_vvo()
    await runtime.grid.import_feeder(feeder, replace=True)
    pki = ensure_pki(settings.data_dir)
    # Midday all along (speed 0: the clock stands), no profile noise, the devices' own controllers off
    # (tests/integration/test_simulator.py covers them): the over-voltage stays until Volt/VAR acts.
    sim = FieldSimulator([feeder], certificate=pki.simulator, trusted_client_certs=[pki.headend.cert_path],
                         tick_s=0.5, operate_delay_s=0.1, sim_start=MIDDAY, speed=0.0, noise=0.0,
                         local_control=False)
    try:
        with shared_field_paused():
            async with sim, bound_field(runtime, sim, (F,)):
                eps = [e.to_dict() for e in sim.sunspec.endpoints(F)]
                assert await runtime.fleet.call_app(F, "der", "attach", eps, "test") == len(eps)
                try:
                    yield sim
                finally:
                    await runtime.fleet.call_app(F, "voltvar", "set_mode", "OFF", "test")
                    await runtime.fleet.call_app(F, "der", "attach", [], "test")
    finally:
        with contextlib.suppress(Exception):
            await runtime.fleet.stop_feeder(F)
            await runtime.store.delete_feeder(F)


async def test_an_automatic_cycle_through_the_field_ends_in_band_with_fewer_losses(gql, vvo_field) -> None:
    sim = vvo_field
    feeder = await _model(gql)
    before = sim.truth(F)
    live = [v for v in before.vm_pu.values() if v]
    assert max(live) > 1.05, f"the midday case should start above 1.05 pu (max {max(live):.3f})"
    r = await gql('mutation { setVoltVarObjective(feederId: "case33bw-vvo", objective: LOSSES) }', role="OPERATOR")
    assert "errors" not in r, r
    r = await gql('mutation { setVoltVarMode(feederId: "case33bw-vvo", mode: AUTOMATIC) }', role="OPERATOR")
    assert r["data"]["setVoltVarMode"] == "AUTOMATIC", r

    async def done() -> dict[str, Any] | None:
        r = await gql(STATUS_Q, {"f": F})
        assert "errors" not in r, r
        p = r["data"]["voltVar"]["lastPlan"]
        return p if p is not None and p["state"] in ("EXECUTED", "PARTIAL", "FAILED") else None

    plan = await wait_for(done, 240)  # planning on two busy cores takes tens of seconds
    assert plan["state"] == "EXECUTED" and plan["failed"] is None and not plan["skipped"], plan
    ops = plan["operations"]
    assert ops and len(plan["executed"]) == len(ops)
    discrete = {o["deviceId"]: round(o["value"]) for o in ops if o["deviceKind"] != "DER"}
    assert discrete, "the plan should move a tap or a bank"

    # Every discrete operation reached the field (the simulator's own positions) ...
    truth = sim.truth(F)
    for dev, value in discrete.items():
        got = truth.tap_pos.get(dev, truth.cap_step.get(dev))
        assert got == value, f"{dev}: the field holds {got}, the plan set {value}"
    # ... and the grid is in band with fewer losses than it started with.
    async def settled() -> Any:
        t = sim.truth(F)
        vm = [v for v in t.vm_pu.values() if v]
        return t if max(vm) <= feeder["limits"]["vmMaxPu"] + 1e-3 and min(vm) >= feeder["limits"]["vmMinPu"] - 1e-3 \
            else None

    after = await wait_for(settled, 20)
    assert after.losses_mw < before.losses_mw, (before.losses_mw, after.losses_mw)
    # Each operation is a confirmed control in the feeder's history, by the voltvar identity.
    r = await gql('{ controlHistory(feederId: "case33bw-vvo", first: 50) { edges { node { deviceId status operator } '
                  '} } }', role="OPERATOR")
    assert "errors" not in r, r
    confirmed = {e["node"]["deviceId"] for e in r["data"]["controlHistory"]["edges"]
                 if e["node"]["status"] == "CONFIRMED" and e["node"]["operator"] == "voltvar"}
    assert set(discrete) <= confirmed, (discrete, confirmed)
    # The feeder query shows the positions the field reports, not the model's.
    r = await gql('{ feeder(id: "case33bw-vvo") { capacitors { id step } regulators { id tapPos } } }')
    shown = {c["id"]: c["step"] for c in r["data"]["feeder"]["capacitors"]}
    shown |= {t["id"]: t["tapPos"] for t in r["data"]["feeder"]["regulators"]}
    assert {d: shown[d] for d in discrete} == discrete


async def _model(gql: Any) -> dict[str, Any]:
    r = await gql('{ feeder(id: "case33bw-vvo") { limits { vmMinPu vmMaxPu } } }')
    assert "errors" not in r, r
    return r["data"]["feeder"]


async def test_the_local_controller_settings_are_pushed_to_the_field(gql, vvo_field) -> None:
    """The fallback: each bank's switch-in/out voltages and each tap changer's band, written to the
    device over Modbus (arbitrated, recorded, audited), and what its own controller then uses."""
    sim = vvo_field
    q = 'mutation { pushVoltVarFallback(feederId: "case33bw-vvo") { deviceId setting value status code message } }'
    denied = await gql(q)
    assert denied["errors"][0]["extensions"]["code"] == "FORBIDDEN"
    r = await gql(q, role="ENGINEER")
    assert "errors" not in r, r
    rows = r["data"]["pushVoltVarFallback"]
    assert len(rows) == 3 * 2 + 2 * 2, rows  # three banks (v_on, v_off), OLTC and regulator (centre, width)
    assert all(x["status"] == "ACCEPTED" for x in rows), rows
    assert sim.local_settings(F) == {(x["deviceId"], x["setting"]): pytest.approx(x["value"]) for x in rows}
    hist = await gql('{ controlHistory(feederId: "case33bw-vvo", first: 50) { edges { node { deviceId action '
                     'status operator } } } }', role="OPERATOR")
    pushed = [e["node"] for e in hist["data"]["controlHistory"]["edges"] if e["node"]["action"] == "SET_LOCAL_SETTING"]
    assert len(pushed) >= len(rows) and {p["operator"] for p in pushed} == {"voltvar"}
    trail = await gql("{ auditLog(first: 50) { edges { node { action outcome target } } } }", role="SECAUD")
    assert {"action": "VOLTVAR_FALLBACK_PUSH", "outcome": "OK", "target": F} in [
        e["node"] for e in trail["data"]["auditLog"]["edges"]]


async def test_a_fault_suspends_automatic_volt_var_fdir_has_precedence(gql, runtime, vvo_field) -> None:
    """A fault mid-cycle: the breaker trips and indicators latch; Volt/VAR re-plans on the event but
    sends nothing, and says why, until the feeder is back to normal."""
    sim = vvo_field
    r = await gql('mutation { setFdirMode(feederId: "case33bw-vvo", mode: ADVISORY) }', role="OPERATOR")
    assert "errors" not in r, r
    last = (await gql(STATUS_Q, {"f": F}))["data"]["voltVar"]["lastPlan"]
    r = await gql('mutation { setVoltVarMode(feederId: "case33bw-vvo", mode: AUTOMATIC) }', role="OPERATOR")
    assert r["data"]["setVoltVarMode"] == "AUTOMATIC", r

    async def mode_change_plan_done() -> dict[str, Any] | None:  # setting the mode plans (and may act) once
        p = (await gql(STATUS_Q, {"f": F}))["data"]["voltVar"]["lastPlan"]
        fresh = p is not None and (last is None or p["id"] != last["id"])
        return p if fresh and p["state"] in ("EXECUTED", "NOTHING_TO_DO", "PARTIAL", "FAILED") else None

    await wait_for(mode_change_plan_done, 240)

    async def voltvar_controls() -> int:
        r = await gql('{ controlHistory(feederId: "case33bw-vvo", first: 200) { edges { node { operator } } } }',
                      role="OPERATOR")
        return sum(1 for e in r["data"]["controlHistory"]["edges"] if e["node"]["operator"] == "voltvar")

    sent_before = await voltvar_controls()
    sim.inject_fault(F, "line10")
    try:
        async def suspended() -> dict[str, Any] | None:
            st = (await gql(STATUS_Q, {"f": F}))["data"]["voltVar"]
            return st if st["suspended"] and "fault" in st["suspended"] else None

        st = await wait_for(suspended, 60)
        assert "FDIR and the operators have precedence" in st["status"]
        await asyncio.sleep(2.0)
        assert await voltvar_controls() == sent_before  # nothing sent while the fault stands
    finally:
        await runtime.fleet.call_app(F, "voltvar", "set_mode", "OFF", "test")
        sim.clear(F)
