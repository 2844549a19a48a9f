"""Field clients against the real simulator servers on 127.0.0.1 (Modbus TCP, OPC UA)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

from graph_schema.errors import BadInput, ConfigError
from graph_schema.importers import case33bw
from graph_schema.model import Quantity
from protocols.base import CertificateUntrusted, DeviceRejected, FieldClient, PointValue, ProtocolError, Quality
from protocols.certs import Pki, ensure_pki, generate_self_signed
from protocols.codecs import DataType
from protocols.modbus_client import ModbusClient
from protocols.opcua_client import OpcUaClient
from protocols.pointmap import Direction, PointMapping, ProtocolKind, SecurityPolicy, Table
from protocols.simulator import FieldSimulator

FID = "case33bw"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return ensure_pki(tmp_path_factory.mktemp("pki"))


@pytest_asyncio.fixture(scope="module")
async def sim(pki: Pki) -> AsyncIterator[FieldSimulator]:
    s = FieldSimulator(
        [case33bw()],
        certificate=pki.simulator,
        trusted_client_certs=[pki.headend.cert_path],
        tick_s=0.2,
        operate_delay_s=0.1,
    )
    async with s:
        yield s


@pytest_asyncio.fixture
async def fresh(sim: FieldSimulator) -> AsyncIterator[FieldSimulator]:
    yield sim
    await sim.reset()


def modbus(sim: FieldSimulator, device_id: str, **kw: object) -> ModbusClient:
    pm = sim.point_maps[FID]
    return ModbusClient(pm.device(device_id), pm.points_of(device_id), timeout_s=0.3, **kw)  # type: ignore[arg-type]


def opcua(sim: FieldSimulator, pki: Pki, **kw: object) -> OpcUaClient:
    pm = sim.point_maps[FID]
    dev = pm.device(f"{FID}/opcua")
    kw.setdefault("certificate", pki.headend)
    kw.setdefault("trusted_server_certs", [pki.simulator.cert_path])
    return OpcUaClient(dev, pm.points_of(dev.device_id), **kw)  # type: ignore[arg-type]


async def wait_for(pred: Callable[[], object], within_s: float = 5.0, step: float = 0.05) -> None:
    deadline = time.monotonic() + within_s
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


def by_id(values: list[PointValue]) -> dict[str, PointValue]:
    return {v.point_id: v for v in values}


async def test_modbus_reads_statuses_and_a_coil_write_opens_the_switch(fresh: FieldSimulator) -> None:
    c = modbus(fresh, f"{FID}/rtu1")
    assert isinstance(c, FieldClient)
    await c.connect()
    try:
        vals = by_id(await c.read_points())
        statuses = {k: v for k, v in vals.items() if k.endswith("/STATUS")}
        assert len(statuses) == 8
        assert all(v.quality is Quality.GOOD and v.value is False for v in statuses.values())
        await c.write_command(f"{FID}/sw5/OPEN", True)
        latest: dict[str, PointValue] = {}

        async def opened() -> bool:
            latest.update(by_id(await c.read_points()))
            return latest[f"{FID}/sw5/STATUS"].value is True

        deadline = time.monotonic() + 3
        while not await opened():
            assert time.monotonic() < deadline, "switch status did not follow the command"
            await asyncio.sleep(0.05)
        assert fresh.switch_is_open(FID, "sw5")
        # Downstream of sw5 (bus6..bus18) is dead now.
        await wait_for(lambda: fresh.value(f"{FID}/bus10/VM_PU") == 0.0)
        await wait_for(lambda: fresh.value(f"{FID}/load9/LAST_GASP") is True)
        await c.write_command(f"{FID}/sw5/CLOSE", True)
        await wait_for(lambda: not fresh.switch_is_open(FID, "sw5"))
    finally:
        await c.close()


async def test_opcua_sign_and_encrypt_pushes_bus_voltage_changes(sim: FieldSimulator, pki: Pki) -> None:
    c = opcua(sim, pki, publishing_interval_ms=100)
    pushed: list[PointValue] = []
    c.subscribe(pushed.extend)
    await c.connect()
    try:
        from asyncua import ua

        assert c._client is not None
        assert c._client.security_policy.Mode == ua.MessageSecurityMode.SignAndEncrypt
        assert c._subscribed
        pid = f"{FID}/bus18/VM_PU"
        await wait_for(lambda: sum(1 for v in pushed if v.point_id == pid) >= 2, within_s=5)
        v = [v for v in pushed if v.point_id == pid][-1]
        assert v.quality is Quality.GOOD and 0.85 < float(v.value or 0) < 1.0  # type: ignore[arg-type]
        assert v.source_ts is not None
        vals = by_id(await c.read_points())
        assert vals[f"{FID}/bus1/VM_PU"].value == pytest.approx(1.0)
        assert vals[f"{FID}/load5/LAST_GASP"].value is False
    finally:
        await c.close()


async def test_untrusted_server_certificate_is_refused(sim: FieldSimulator, pki: Pki, tmp_path: Path) -> None:
    stranger = generate_self_signed(tmp_path / "other", "urn:someone:else")
    c = opcua(sim, pki, trusted_server_certs=[stranger.cert_path])
    with pytest.raises(CertificateUntrusted, match="not trusted"):
        await c.connect()
    await c.close()


async def test_nosecurity_is_refused_unless_allowed(sim: FieldSimulator, pki: Pki) -> None:
    pm = sim.point_maps[FID]
    dev = dataclasses.replace(pm.device(f"{FID}/opcua"), security_policy=SecurityPolicy.NONE)
    with pytest.raises(ConfigError, match="DMS_OPCUA_ALLOW_NOSECURITY=true"):
        OpcUaClient(dev, pm.points_of(dev.device_id))
    # Allowed on the client, but this simulator serves SignAndEncrypt only: the server refuses it.
    c = OpcUaClient(dev, pm.points_of(dev.device_id), allow_nosecurity=True, timeout_s=1.0)
    with pytest.raises(Exception):  # noqa: B017 - DeviceUnreachable or DeviceRejected, both mean "refused"
        await c.connect()
    await c.close()
    with pytest.raises(BadInput, match="DMS_OPCUA_ALLOW_NOSECURITY"):
        FieldSimulator([case33bw()])


async def test_modbus_comm_loss_gives_comm_lost_then_good(fresh: FieldSimulator) -> None:
    c = modbus(fresh, f"{FID}/rtu2", backoff_initial_s=0.1, backoff_max_s=0.4)
    await c.connect()
    try:
        assert {v.quality for v in await c.read_points()} == {Quality.GOOD}
        await fresh.comm_loss(f"{FID}/rtu2")
        vals = await c.read_points()
        assert {v.quality for v in vals} == {Quality.COMM_LOST}
        assert all(v.value is not None for v in vals)  # last known value kept
        other = modbus(fresh, f"{FID}/rtu1")  # same TCP server, other unit id: unaffected
        await other.connect()
        assert {v.quality for v in await other.read_points()} == {Quality.GOOD}
        await other.close()
        await fresh.comm_loss(f"{FID}/rtu2", on=False)
        deadline = time.monotonic() + 5
        while {v.quality for v in await c.read_points()} != {Quality.GOOD}:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
    finally:
        await c.close()


async def test_opcua_session_loss_gives_comm_lost_then_resubscribes(fresh: FieldSimulator, pki: Pki) -> None:
    c = opcua(fresh, pki, publishing_interval_ms=100, watchdog_interval_s=0.3, backoff_initial_s=0.2, backoff_max_s=0.5)
    pushed: list[PointValue] = []
    c.subscribe(pushed.extend)
    await c.connect()
    pid = f"{FID}/bus18/VM_PU"
    try:
        await fresh.comm_loss(f"{FID}/opcua")

        async def all_lost() -> bool:
            return {v.quality for v in await c.read_points()} == {Quality.COMM_LOST}

        deadline = time.monotonic() + 5
        while not await all_lost():
            assert time.monotonic() < deadline, "session loss not detected"
            await asyncio.sleep(0.1)
        assert any(v.point_id == pid and v.quality is Quality.COMM_LOST for v in pushed)
        await fresh.comm_loss(f"{FID}/opcua", on=False)
        pushed.clear()
        await wait_for(lambda: any(v.point_id == pid and v.quality is Quality.GOOD for v in pushed), within_s=8)
        assert c.reconnects >= 1
        vals = by_id(await c.read_points())
        assert vals[pid].quality is Quality.GOOD
    finally:
        await c.close()


def _extra_point(sim: FieldSimulator, table: Table, address: int) -> PointMapping:
    return PointMapping(
        f"{FID}/bus2/{Quantity.VM_PU}-bogus",
        "bus2",
        Quantity.VM_PU,
        Direction.READ,
        ProtocolKind.MODBUS,
        f"{FID}/rtu1",
        table=table,
        address=address,
        data_type=DataType.BOOL,
    )


async def test_modbus_exception_marks_only_that_point_invalid(sim: FieldSimulator) -> None:
    pm = sim.point_maps[FID]
    dev = pm.device(f"{FID}/rtu1")
    # Discrete input 8 is contiguous with the 8 switch statuses (0..7) but not served by the RTU.
    bogus = _extra_point(sim, Table.DISCRETE_INPUT, 8)
    c = ModbusClient(dev, [*pm.points_of(dev.device_id), bogus], timeout_s=0.3)
    await c.connect()
    try:
        for _ in range(2):  # first scan splits the refused batch, the second reads point by point
            vals = by_id(await c.read_points())
            assert vals[bogus.point_id].quality is Quality.INVALID
            assert vals[bogus.point_id].exception_code == 2  # ILLEGAL DATA ADDRESS
            others = [v for k, v in vals.items() if k != bogus.point_id]
            assert others and all(v.quality is Quality.GOOD for v in others)
        assert c.last_exception[bogus.point_id] == 2
        with pytest.raises(BadInput, match=r"bus2/VM_PU-bogus.*DISCRETE_INPUT 8"):
            await c.verify()
    finally:
        await c.close()


async def test_modbus_write_to_a_read_only_address_is_rejected_once(sim: FieldSimulator) -> None:
    pm = sim.point_maps[FID]
    dev = pm.device(f"{FID}/rtu1")
    cmd = dataclasses.replace(
        _extra_point(sim, Table.COIL, 900), point_id=f"{FID}/sw1/OPEN-bogus", direction=Direction.COMMAND
    )
    c = ModbusClient(dev, [cmd], timeout_s=0.3)
    await c.connect()
    try:
        before = c.reads
        with pytest.raises(DeviceRejected) as ei:
            await c.write_command(cmd.point_id, True)
        assert ei.value.exception_code == 2 and ei.value.code == "DEVICE_REJECTED"
        assert c.reads == before + 1  # sent exactly once
    finally:
        await c.close()


async def test_read_throughput(sim: FieldSimulator, pki: Pki) -> None:
    """Measured scan rates (printed; run with -s to see them)."""
    pm = sim.point_maps[FID]
    clients = [modbus(sim, d.device_id) for d in pm.devices if d.protocol is ProtocolKind.MODBUS]
    for c in clients:
        await c.connect()
    n, t0 = 0, time.perf_counter()
    for _ in range(20):
        for c in clients:
            n += len(await c.read_points())
    mb_rate = n / (time.perf_counter() - t0)
    for c in clients:
        await c.close()
    ua_read = opcua(sim, pki, use_subscription=False)
    await ua_read.connect()
    n, t0 = 0, time.perf_counter()
    for _ in range(20):
        vals = await ua_read.read_points()
        n += len(vals)
    ua_rate = n / (time.perf_counter() - t0)
    assert {v.quality for v in vals} == {Quality.GOOD}
    await ua_read.close()
    print(f"\nModbus TCP read_points: {mb_rate:.0f} points/s; OPC UA (SignAndEncrypt Read): {ua_rate:.0f} points/s")
    assert mb_rate > 200 and ua_rate > 200


async def test_operator_certificate_folder_is_what_opcua_uses(pki: Pki, tmp_path: Path) -> None:
    """DMS_OPCUA_PKI_DIR: the utility's own certificate and its trusted RTU certificates, not the
    demo's: a server that trusts only the utility's certificate accepts it and refuses the demo's."""
    import shutil

    from protocols.base import make_field_client

    own = generate_self_signed(tmp_path / "gen", "urn:utility:dms-headend")
    folder = tmp_path / "opcua"
    folder.mkdir()
    shutil.copy(own.cert_path, folder / "cert.der")
    shutil.copy(own.key_path, folder / "key.pem")
    shutil.copy(pki.simulator.cert_path, folder / "rtu-simulator.der")
    s = FieldSimulator([case33bw()], certificate=pki.simulator, trusted_client_certs=[own.cert_path], tick_s=0.2)
    async with s:
        pm = s.point_maps[FID]
        dev = pm.device(f"{FID}/opcua")
        c = make_field_client(dev, pm.points_of(dev.device_id), pki_dir=str(folder), timeout_s=2.0)
        pushed: list[PointValue] = []
        c.subscribe(pushed.extend)
        await c.connect()
        try:
            await wait_for(lambda: any(v.point_id == f"{FID}/bus1/VM_PU" and v.quality is Quality.GOOD
                                       for v in pushed), within_s=5)
        finally:
            await c.close()
        demo = opcua(s, pki, timeout_s=2.0)  # the demo certificate: not in this server's trust list
        with pytest.raises(ProtocolError):
            await demo.connect()
        await demo.close()
