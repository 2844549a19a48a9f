"""The field simulator: injected faults, reclosing, stuck switches, load scaling, admin interface."""

from __future__ import annotations

import asyncio
import json
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from graph_schema.errors import DmsError
from graph_schema.importers import case33bw, cigre_mv
from protocols.base import Quality
from protocols.certs import Pki, ensure_pki
from protocols.modbus_client import ModbusClient
from protocols.opcua_client import OpcUaClient
from protocols.pointmap import ProtocolKind
from protocols.sim_admin import SimAdminServer, SimulatorNotRunning, sim_command, state_path
from protocols.simulator import FieldSimulator, commercial_profile, pv_profile, residential_profile

F = "case33bw"
C = "cigre-mv"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return ensure_pki(tmp_path_factory.mktemp("pki"))


@pytest_asyncio.fixture(scope="module")
async def sim_module(pki: Pki) -> AsyncIterator[FieldSimulator]:
    s = FieldSimulator(
        [case33bw(), cigre_mv()],
        certificate=pki.simulator,
        trusted_client_certs=[pki.headend.cert_path],
        tick_s=0.2,
        operate_delay_s=0.1,
        reclose_delay_s=0.6,
        speed=60.0,
    )
    async with s:
        yield s


@pytest_asyncio.fixture
async def sim(sim_module: FieldSimulator) -> AsyncIterator[FieldSimulator]:
    await sim_module.reset()
    yield sim_module
    await sim_module.reset()


async def wait_for(pred: Callable[[], object], within_s: float = 5.0, step: float = 0.02) -> None:
    deadline = time.monotonic() + within_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


def test_profiles_are_plausible() -> None:
    assert residential_profile(19.5) > residential_profile(3.0)
    assert commercial_profile(12.0) > commercial_profile(2.0)
    assert pv_profile(13.0) == pytest.approx(1.0) and pv_profile(2.0) == 0.0
    assert all(0 <= residential_profile(h / 4) <= 1.0 for h in range(96))


async def test_serves_every_feeder_on_both_protocols(sim: FieldSimulator) -> None:
    for fid in (F, C):
        pm = sim.point_maps[fid]
        kinds = {d.protocol for d in pm.devices}
        assert kinds == {ProtocolKind.MODBUS, ProtocolKind.OPCUA}
        assert all(d.port > 0 for d in pm.devices if d.protocol is ProtocolKind.MODBUS)
        assert all(":0/" not in (d.endpoint or "") for d in pm.devices)
    assert len({d.unit_id for d in sim.point_maps[F].devices if d.unit_id}) == 5  # 37 switches / 8 per RTU
    t0 = sim.sim_time()
    await asyncio.sleep(0.1)
    assert (sim.sim_time() - t0).total_seconds() >= 5.0  # speed 60


async def test_permanent_fault_trips_breaker_latches_indicators_and_sends_last_gasp(sim: FieldSimulator) -> None:
    # line10 joins bus10 and bus11; sw1 (on line1 at the source) is the feeder's only breaker.
    tripped = sim.inject_fault(F, "line10", permanent=True)
    assert tripped == "sw1"
    await sim.tick()
    assert sim.value(f"{F}/sw1/STATUS") is True
    for n in range(1, 11):  # lines on the source path, including the faulted line's source side
        assert sim.value(f"{F}/line{n}/FAULT") is True, n
    assert sim.value(f"{F}/line11/FAULT") is False
    assert sim.value(f"{F}/line18/FAULT") is False
    assert sim.energized_bus_ids(F) == frozenset({"bus1"})
    assert all(sim.value(f"{F}/load{n}/LAST_GASP") is True for n in range(1, 33))
    assert sim.value(f"{F}/bus11/VM_PU") == 0.0

    # The same, as the head-end sees it over Modbus.
    pm = sim.point_maps[F]
    dev = pm.device(f"{F}/rtu1")
    c = ModbusClient(dev, pm.points_of(dev.device_id), timeout_s=0.3)
    await c.connect()
    try:
        vals = {v.point_id: v for v in await c.read_points()}
        assert vals[f"{F}/sw1/STATUS"].value is True and vals[f"{F}/sw1/STATUS"].quality is Quality.GOOD
        assert vals[f"{F}/line1/FAULT"].value is True
        # Closing the breaker onto the permanent fault re-trips it.
        await c.write_command(f"{F}/sw1/CLOSE", True)
        await asyncio.sleep(0.3)
        assert sim.switch_is_open(F, "sw1")
        # After clear() the indicators reset; the breaker stays open until the head-end closes it.
        sim.clear(F)
        await sim.tick()
        assert sim.value(f"{F}/line1/FAULT") is False
        assert sim.switch_is_open(F, "sw1")
        await c.write_command(f"{F}/sw1/CLOSE", True)
        await wait_for(lambda: not sim.switch_is_open(F, "sw1"))
        await sim.tick()
        assert sim.value(f"{F}/load20/LAST_GASP") is False
        assert 0.85 < float(sim.value(f"{F}/bus18/VM_PU") or 0) < 1.0
    finally:
        await c.close()


async def test_fault_on_a_tie_line_is_fed_from_its_live_end(sim: FieldSimulator) -> None:
    # line33 (bus21-bus8) has its normally-open switch sw33 at bus21: the conductor is live from bus8.
    assert sim.inject_fault(F, "line33", permanent=True) == "sw1"
    await sim.tick()
    assert sim.value(f"{F}/line7/FAULT") is True  # on the source path to bus8
    assert sim.value(f"{F}/line33/FAULT") is False  # its indicator sits at bus21, the dead end
    assert sim.value(f"{F}/line20/FAULT") is False


async def test_fault_on_a_dead_section_trips_nothing(sim: FieldSimulator) -> None:
    pm = sim.point_maps[F]
    dev = pm.device(f"{F}/rtu1")
    c = ModbusClient(dev, pm.points_of(dev.device_id), timeout_s=0.3)
    await c.connect()
    try:
        await c.write_command(f"{F}/sw5/OPEN", True)
        await wait_for(lambda: sim.switch_is_open(F, "sw5"))
    finally:
        await c.close()
    assert sim.inject_fault(F, "line10", permanent=True) is None
    assert not sim.switch_is_open(F, "sw1")


async def test_temporary_fault_trips_and_recloses(sim: FieldSimulator) -> None:
    seen: list[bool] = []

    async def watch() -> None:
        while True:
            v = sim.value(f"{F}/sw1/STATUS")
            if not seen or seen[-1] != v:
                seen.append(bool(v))
            await asyncio.sleep(0.02)

    task = asyncio.create_task(watch())
    try:
        await asyncio.sleep(0.05)
        assert sim.inject_fault(F, "line20", permanent=False) == "sw1"
        await wait_for(lambda: seen[-1] is True, within_s=2)
        await wait_for(lambda: seen[-1] is False and not sim.switch_is_open(F, "sw1"), within_s=3)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert seen == [False, True, False]
    assert sim.value(f"{F}/line1/FAULT") is True  # indicators stay latched until cleared
    assert sim.value(f"{F}/line19/FAULT") is True and sim.value(f"{F}/line2/FAULT") is False


async def test_stuck_switch_does_not_move(sim: FieldSimulator, caplog: pytest.LogCaptureFixture) -> None:
    """The stuck switch's command is received and ignored; a healthy switch on the same RTU, commanded
    just after it, moving is what bounds the wait (no sleep-then-assert)."""
    sim.stick_switch("sw5", feeder_id=F)
    pm = sim.point_maps[F]
    dev = pm.device(f"{F}/rtu1")
    points = pm.points_of(dev.device_id)
    healthy = next(p.element_id for p in points
                   if p.point_id.endswith("/OPEN") and p.element_id != "sw5"
                   and not sim.switch_is_open(F, p.element_id))
    c = ModbusClient(dev, points, timeout_s=0.3)
    await c.connect()
    try:
        with caplog.at_level("INFO", logger="protocols.simulator"):
            await c.write_command(f"{F}/sw5/OPEN", True)  # accepted by the RTU...
            await c.write_command(f"{F}/{healthy}/OPEN", True)
            # The healthy switch operates after the same delay, scheduled after sw5's: once it has
            # moved, sw5 would have too.
            await wait_for(lambda: sim.switch_is_open(F, healthy), within_s=3)
        assert f"switch {F}/sw5 is stuck" in caplog.text  # ...the simulator got the command...
        assert not sim.switch_is_open(F, "sw5")  # ...but the contacts never move
        vals = {v.point_id: v for v in await c.read_points()}
        assert vals[f"{F}/sw5/STATUS"].value is False
    finally:
        await c.close()


async def test_load_scale_raises_feeder_head_flow(sim: FieldSimulator) -> None:
    await sim.tick()
    sim.set_value_hook(None)
    base = float(sim.value(f"{F}/line1/P_MW") or 0)
    sim.load_scale(F, 1.5)
    await sim.tick()
    assert float(sim.value(f"{F}/line1/P_MW") or 0) > base * 1.3


async def test_a_pinned_resource_holds_a_der_output_and_bad_pins_are_refused(sim: FieldSimulator) -> None:
    sim.set_resource(C, "der8", 1.0)  # wind, 1.5 MVA; the inverter ramps to it
    await wait_for(lambda: sim.truth(C).der_p_mw["der8"] > 1.49, within_s=30)
    sim.set_resource(C, "der8", 0.0)
    await wait_for(lambda: sim.truth(C).der_p_mw["der8"] < 0.01, within_s=30)
    with pytest.raises(DmsError, match=r"outside 0\.\.1"):
        sim.set_resource(C, "der8", 1.5)
    with pytest.raises(DmsError, match="not a PV or wind DER"):
        sim.set_resource(C, "load1", 0.5)
    sim.set_resource(C, "der8", None)


async def test_der_set_point_over_opcua_caps_output(sim: FieldSimulator, pki: Pki) -> None:
    pm = sim.point_maps[C]
    dev = pm.device(f"{C}/opcua")
    c = OpcUaClient(
        dev, pm.points_of(dev.device_id), certificate=pki.headend, trusted_server_certs=[pki.simulator.cert_path]
    )
    await c.connect()
    try:
        await c.write_command(f"{C}/der0/SET_P_MW", 0.0)
        await wait_for(lambda: sim.value(f"{C}/der0/P_MW") == 0.0, within_s=3)
    finally:
        await c.close()


async def test_value_hook_and_forced_values(sim: FieldSimulator) -> None:
    sim.set_value_hook(lambda pid, v, t: 1.234 if pid == f"{F}/bus5/VM_PU" else v)
    await sim.tick()
    assert sim.value(f"{F}/bus5/VM_PU") == 1.234
    sim.set_value_hook(None)
    await sim.force_value(f"{F}/bus6/VM_PU", 0.5)
    await sim.tick()
    assert sim.value(f"{F}/bus6/VM_PU") == 0.5


@pytest.mark.parametrize("mode", ["truncate", "oversize", "function"])
async def test_malformed_frames_of_one_rtu_are_a_comm_failure_of_that_rtu_only(sim: FieldSimulator, mode: str) -> None:
    """Real pymodbus on both ends: the garbled RTU's points go INVALID (a device fault) with a reason, its neighbour
    on the same server keeps answering, and the RTU is GOOD again when its frames are."""
    pm = sim.point_maps[F]
    bad, good = f"{F}/rtu2", f"{F}/rtu3"
    clients = {d: ModbusClient(pm.device(d), pm.points_of(d), timeout_s=0.5, backoff_initial_s=0.05)
               for d in (bad, good)}
    try:
        for c in clients.values():
            assert {v.quality for v in await c.read_points()} == {Quality.GOOD}
        sim.malformed_frames(bad, mode)
        assert sim.status()["malformed_frames"] == {bad: mode}
        values = await clients[bad].read_points()
        # A frame pymodbus reads but that does not fit the request is a device fault (INVALID); one
        # with a wrong function code it cannot even match to the request: no answer (COMM_LOST).
        expected = (Quality.COMM_LOST, False) if mode == "function" else (Quality.INVALID, True)
        seen = {(v.quality, v.device_fault) for v in values}
        assert seen == {expected}, seen
        assert all(v.value is not None for v in values)  # last good values kept
        reason = values[0].reason or ""
        tables = ("COIL", "DISCRETE_INPUT", "HOLDING_REGISTER", "INPUT_REGISTER")
        assert repr(bad) in reason and any(t in reason for t in tables), reason
        assert {v.quality for v in await clients[good].read_points()} == {Quality.GOOD}
        sim.malformed_frames(bad, None)

        async def recovered() -> bool:
            return {v.quality for v in await clients[bad].read_points()} == {Quality.GOOD}

        deadline = time.monotonic() + 5
        while not await recovered():
            assert time.monotonic() < deadline, "the RTU did not recover"
            await asyncio.sleep(0.05)
    finally:
        for c in clients.values():
            await c.close()


def test_malformed_frames_refuses_unknown_devices_and_modes(sim: FieldSimulator) -> None:
    with pytest.raises(DmsError, match="not a simulated Modbus device"):
        sim.malformed_frames("nope")
    with pytest.raises(DmsError, match="unknown frame fault"):
        sim.malformed_frames(f"{F}/rtu1", "scramble")


async def test_admin_http_round_trip(sim: FieldSimulator, tmp_path: Path) -> None:
    with pytest.raises(SimulatorNotRunning, match="dms demo"):
        await sim_command(tmp_path, "status")
    admin = SimAdminServer(sim, tmp_path)
    await admin.start()
    try:
        path = state_path(tmp_path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        state = json.loads(path.read_text())
        assert state["host"] == "127.0.0.1" and state["port"] > 0 and state["token"]

        answer = await sim_command(tmp_path, "fault", feeder=F, line="line10", permanent=True)
        assert answer == {"ok": True, "tripped": "sw1"}
        status = await sim_command(tmp_path, "status")
        assert status["feeders"][F]["faults"] == ["line10"]
        assert "sw1" in status["feeders"][F]["open_switches"]
        await sim_command(tmp_path, "clear")
        assert (await sim_command(tmp_path, "status"))["feeders"][F]["faults"] == []
        await sim_command(tmp_path, "load", feeder=F, scale=1.2)
        await sim_command(tmp_path, "stick", switch="sw7")
        await sim_command(tmp_path, "comm-loss", device=f"{F}/rtu3", on=True)
        status = await sim_command(tmp_path, "status")
        assert status["comm_loss"] == [f"{F}/rtu3"] and status["stuck"] == [f"{F}/sw7"]
        await sim_command(tmp_path, "comm-loss", device=f"{F}/rtu3", on=False)
        await sim_command(tmp_path, "malformed", device=f"{F}/rtu3", mode="oversize")
        assert (await sim_command(tmp_path, "status"))["malformed_frames"] == {f"{F}/rtu3": "oversize"}
        await sim_command(tmp_path, "malformed", device=f"{F}/rtu3", on=False)
        assert (await sim_command(tmp_path, "status"))["malformed_frames"] == {}

        with pytest.raises(DmsError) as ei:
            await sim_command(tmp_path, "fault", feeder="nope", line="line1")
        assert ei.value.code == "NOT_FOUND"
        with pytest.raises(DmsError) as ei:
            await sim_command(tmp_path, "load", feeder=F)
        assert ei.value.code == "BAD_INPUT"

        state["token"] = "wrong"
        path.write_text(json.dumps(state))
        with pytest.raises(DmsError) as ei:
            await sim_command(tmp_path, "status")
        assert ei.value.code == "UNAUTHENTICATED"
    finally:
        await admin.stop()
    with pytest.raises(SimulatorNotRunning, match=str(tmp_path)):
        await sim_command(tmp_path, "status")


async def test_capacitor_steps_over_modbus_and_the_local_controllers_when_nobody_commands(pki: Pki) -> None:
    """case33bw-vvo: the head-end sets a bank's steps (SET_CAP_STEP, read back as CAP_STEP) and an
    out-of-range step is refused; the banks' and tap changers' own controllers step toward their
    bands, but not within remote_override_s of a remote command."""
    from datetime import UTC, datetime

    from graph_schema.importers import case33bw_vvo

    v = "case33bw-vvo"
    evening = datetime(2026, 6, 21, 21, 0, tzinfo=UTC)  # PV at zero: the far end sags below the banks' 0.96 pu
    s = FieldSimulator([case33bw_vvo()], certificate=pki.simulator, trusted_client_certs=[pki.headend.cert_path],
                       tick_s=0.1, sim_start=evening, speed=0.0, noise=0.0, local_delay_s=0.05,
                       remote_override_s=3600.0)
    async with s:
        pm = s.point_maps[v]
        dev = pm.device(f"{v}/rtu1")
        c = ModbusClient(dev, pm.points_of(dev.device_id), timeout_s=0.5)
        await c.connect()
        try:
            await c.write_command(f"{v}/cap12/SET_CAP_STEP", 2)  # remote: cap12 stays where it is put
            await wait_for(lambda: s.truth(v).cap_step["cap12"] == 2, within_s=5)
            await s.tick()  # solved and published
            vals = {p.point_id: p for p in await c.read_points()}
            assert vals[f"{v}/cap12/CAP_STEP"].value == 2 and vals[f"{v}/cap12/CAP_STEP"].quality is Quality.GOOD
            with pytest.raises(DmsError):
                await c.write_command(f"{v}/cap25/SET_CAP_STEP", 3)  # cap25 has 2 steps
        finally:
            await c.close()
        # The other banks step in on their own until their bus is back above v_on (0.96 pu) or they are
        # full; the OLTC and the line regulator hold the voltage they regulate (the line regulator's
        # through its line-drop compensation) within their bands.
        feeder = case33bw_vvo()

        def settled() -> bool:
            t = s.truth(v)
            banks = all(t.cap_step[c.id] == c.steps or (t.vm_pu[c.bus_id] or 0) >= (c.v_on_pu or 0)
                        for c in feeder.capacitors if c.id != "cap12")
            taps = all(abs(t.regulated_vm_pu[tr.id] - (tr.band_centre_pu or 1)) <= (tr.bandwidth_pu or 0) / 2
                       for tr in feeder.transformers if tr.has_tap_changer)
            return banks and taps

        await wait_for(settled, within_s=10)
        t = s.truth(v)
        assert t.cap_step["cap30"] > 0 and t.tap_pos["reg1"] > 0  # the sagging far end got help
        assert t.cap_step["cap12"] == 2  # commanded: its controller stays off
        # Settings pushed by the head-end are what the controller then keeps: cap30 switching out above
        # 0.955 pu now steps out; a switch-out voltage below the switch-in one is refused (it would hunt).
        stepped = t.cap_step["cap30"]
        c = ModbusClient(dev, pm.points_of(dev.device_id), timeout_s=0.5)
        await c.connect()
        try:
            with pytest.raises(DmsError):
                await c.write_command(f"{v}/cap30/SET_V_OFF", 0.95)  # below its v_on 0.96
            await c.write_command(f"{v}/cap30/SET_V_ON", 0.90)
            await c.write_command(f"{v}/cap30/SET_V_OFF", 0.955)
        finally:
            await c.close()
        assert s.local_settings(v) == {("cap30", "SET_V_ON"): pytest.approx(0.90),
                                       ("cap30", "SET_V_OFF"): pytest.approx(0.955)}
        await wait_for(lambda: s.truth(v).cap_step["cap30"] < stepped, within_s=10)
