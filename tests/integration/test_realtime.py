"""Field telemetry, select-before-operate and subscriptions, end to end on loopback.

Real ArcadeDB over Bolt, local Ray (feeder actors + the ``dms-events`` bus), the simulator's real
Modbus TCP and OPC UA (SignAndEncrypt) servers, GraphQL over HTTP and graphql-transport-ws.
``case33bw`` has its switchgear on Modbus RTUs; ``case33bw-ua`` (a copy) has everything on OPC UA.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import websockets

from tests.integration.conftest import UA_FEEDER, bound_field

F = "case33bw"
SW = "sw25"  # a lateral sectionalizer on RTU 4 (Modbus)

SELECT = """mutation S($d: ID!, $a: ControlAction!, $f: ID) {
  selectControl(deviceId: $d, action: $a, feederId: $f) { id expiresAt deviceId feederId action value } }"""
OPERATE = """mutation O($s: ID!, $d: ID!, $a: ControlAction!, $f: ID) {
  operateControl(selectionId: $s, deviceId: $d, action: $a, feederId: $f) { status code message deviceId } }"""
CANCEL = "mutation C($s: ID!) { cancelControl(selectionId: $s) { cancelled deviceId } }"


def codes(result: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in result.get("errors") or []]


async def wait_for(pred: Callable[[], Any], within_s: float = 10.0, step: float = 0.1) -> Any:
    deadline = time.monotonic() + within_s
    while True:
        value = pred()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(step)


@pytest.fixture(scope="module")
async def field(runtime, field_sim) -> AsyncIterator[Any]:
    async with bound_field(runtime, field_sim, (F, UA_FEEDER), ready_within_s=20):
        yield field_sim


@pytest.fixture
async def sim(field) -> AsyncIterator[Any]:
    yield field
    await field.reset()


async def operate_once(gql, mint, device: str, action: str, feeder: str = F, sub: str = "op1") -> dict:
    token = mint("OPERATOR", sub=sub)
    r = await gql(SELECT, {"d": device, "a": action, "f": feeder}, token=token)
    assert "errors" not in r, r
    sel = r["data"]["selectControl"]
    r = await gql(OPERATE, {"s": sel["id"], "d": device, "a": action, "f": feeder}, token=token)
    assert "errors" not in r, r
    return r["data"]["operateControl"]


async def switch_open_in_actor(runtime, feeder: str, sw: str) -> bool:
    return bool((await runtime.fleet.call(feeder, "state")).switch_states[sw])


async def test_modbus_switch_operated_and_confirmed_by_telemetry(gql, mint, runtime, sim):
    result = await operate_once(gql, mint, SW, "OPEN")
    assert result["status"] == "CONFIRMED" and result["code"] is None, result
    assert sim.switch_is_open(F, SW)
    assert await switch_open_in_actor(runtime, F, SW)
    r = await gql('{ feeder(id: "case33bw") { switches { id isOpen } energization { deenergizedBusIds } } }')
    assert next(s for s in r["data"]["feeder"]["switches"] if s["id"] == SW)["isOpen"] is True
    result = await operate_once(gql, mint, SW, "CLOSE")
    assert result["status"] == "CONFIRMED", result
    assert not sim.switch_is_open(F, SW)
    hist = await gql('{ controlHistory(feederId: "case33bw", first: 2) { edges { node { deviceId action status '
                     'operator } } pageInfo { hasNextPage } } }')
    nodes = [e["node"] for e in hist["data"]["controlHistory"]["edges"]]
    assert nodes[0] == {"deviceId": SW, "action": "CLOSE", "status": "CONFIRMED", "operator": "op1"}
    assert nodes[1]["action"] == "OPEN"
    from security.audit import AuditLog

    audit = await AuditLog(runtime.store).page(newest_first=True, limit=20)
    results = [e for e in audit if e.action == "CONTROL_RESULT" and e.target == f"{F}/{SW}"]
    assert results and results[0].outcome == "CONFIRMED" and results[0].actor == "op1"


async def test_opcua_switch_operated_and_confirmed_by_telemetry(gql, mint, runtime, sim):
    # The same switch id exists on both feeders: without feederId the device is ambiguous.
    r = await gql(SELECT, {"d": SW, "a": "OPEN"}, token=mint("OPERATOR"))
    assert codes(r) == ["BAD_INPUT"]
    result = await operate_once(gql, mint, SW, "OPEN", feeder=UA_FEEDER)
    assert result["status"] == "CONFIRMED", result
    assert sim.switch_is_open(UA_FEEDER, SW) and not sim.switch_is_open(F, SW)
    assert await switch_open_in_actor(runtime, UA_FEEDER, SW)
    result = await operate_once(gql, mint, SW, "CLOSE", feeder=UA_FEEDER)
    assert result["status"] == "CONFIRMED", result
    assert not sim.switch_is_open(UA_FEEDER, SW)


async def test_two_operators_race_for_one_switch(gql, mint, sim):
    alice, bob = mint("OPERATOR", sub="alice"), mint("OPERATOR", sub="bob")
    first = await gql(SELECT, {"d": SW, "a": "OPEN", "f": F}, token=alice)
    assert "errors" not in first, first
    second = await gql(SELECT, {"d": SW, "a": "OPEN", "f": F}, token=bob)
    assert codes(second) == ["SELECTED_BY_OTHER"]
    # bob cannot operate (or cancel) alice's selection either
    sid = first["data"]["selectControl"]["id"]
    r = await gql(OPERATE, {"s": sid, "d": SW, "a": "OPEN", "f": F}, token=bob)
    assert codes(r) == ["SELECTED_BY_OTHER"]
    r = await gql(CANCEL, {"s": sid}, token=alice)
    assert r["data"]["cancelControl"] == {"cancelled": True, "deviceId": SW}
    assert not sim.switch_is_open(F, SW)


def sent(sim, device: str = SW, feeder: str = F) -> int:
    """Commands the field simulator received for ``device`` (OPEN and CLOSE): a refused operate must
    leave it unchanged. The actor answers only after a write completed, so no wait is needed."""
    return sum(n for pid, n in sim.commands_received.items() if pid.startswith(f"{feeder}/{device}/"))


async def test_selection_expires(gql, mint, settings, sim):
    token = mint("OPERATOR")
    sel = (await gql(SELECT, {"d": SW, "a": "OPEN", "f": F}, token=token))["data"]["selectControl"]
    before = sent(sim)
    await asyncio.sleep(settings.select_timeout_s + 0.3)  # let the selection expire (not a negative proof)
    r = await gql(OPERATE, {"s": sel["id"], "d": SW, "a": "OPEN", "f": F}, token=token)
    assert codes(r) == ["SELECTION_EXPIRED"]
    assert sent(sim) == before and not sim.switch_is_open(F, SW)


async def test_operate_with_other_parameters_is_refused(gql, mint, sim):
    token = mint("OPERATOR")
    before = sent(sim)
    sel = (await gql(SELECT, {"d": SW, "a": "OPEN", "f": F}, token=token))["data"]["selectControl"]
    r = await gql(OPERATE, {"s": sel["id"], "d": SW, "a": "CLOSE", "f": F}, token=token)
    assert codes(r) == ["PARAMETERS_DIFFER"]
    r = await gql(OPERATE, {"s": sel["id"], "d": SW, "a": "OPEN", "f": F}, token=token)
    assert codes(r) == ["NO_SELECTION"]  # a refused operate voids the selection
    assert sent(sim) == before and not sim.switch_is_open(F, SW)


async def test_operate_without_selection_sends_nothing(gql, mint, sim):
    before = sent(sim)
    r = await gql(OPERATE, {"s": "no-such-selection", "d": SW, "a": "OPEN", "f": F}, token=mint("OPERATOR"))
    assert codes(r) == ["NO_SELECTION"]
    assert sent(sim) == before and not sim.switch_is_open(F, SW)


async def test_tagged_device_cannot_be_operated(gql, mint, runtime, sim):
    token = mint("OPERATOR", sub="carol")
    before = sent(sim)
    sel = (await gql(SELECT, {"d": SW, "a": "OPEN", "f": F}, token=token))["data"]["selectControl"]
    r = await gql('mutation { setTag(deviceId: "sw25", feederId: "case33bw", kind: DO_NOT_OPERATE, '
                  'reason: "crew on lateral 25") { id kind setBy blocksControl } }', token=token)
    assert "errors" not in r, r
    tag = r["data"]["setTag"]
    assert tag["blocksControl"] and tag["setBy"] == "carol"
    try:
        r = await gql(OPERATE, {"s": sel["id"], "d": SW, "a": "OPEN", "f": F}, token=token)
        assert codes(r) == ["DEVICE_TAGGED"]  # the tag revoked the live selection
        r = await gql(SELECT, {"d": SW, "a": "OPEN", "f": F}, token=token)
        assert codes(r) == ["DEVICE_TAGGED"]
        # the tag is persisted: a restarted actor still has it
        runtime.fleet.kill(F)
        tags = await gql('{ tags(feederId: "case33bw") { id deviceId kind } }')
        assert {"id": tag["id"], "deviceId": SW, "kind": "DO_NOT_OPERATE"} in tags["data"]["tags"]
    finally:
        r = await gql('mutation R($t: ID!) { removeTag(tagId: $t) { id } }', {"t": tag["id"]}, token=token)
        assert "errors" not in r, r
    assert sent(sim) == before and not sim.switch_is_open(F, SW)  # nothing reached the field
    # the recreated actor got its field binding back
    await wait_for(lambda: _attached(runtime, F), 20)
    result = await operate_once(gql, mint, SW, "OPEN", feeder=F)
    assert result["status"] == "CONFIRMED", result
    assert (await operate_once(gql, mint, SW, "CLOSE", feeder=F))["status"] == "CONFIRMED"


async def _attached(runtime, feeder: str) -> bool:
    st = await runtime.fleet.call(feeder, "field_status")
    return st["attached"] and bool(st["devices"]) and all(st["devices"].values())


async def test_viewer_cannot_control(gql, mint, sim):
    r = await gql(SELECT, {"d": SW, "a": "OPEN", "f": F}, role="VIEWER")
    assert codes(r) == ["FORBIDDEN"]
    r = await gql('mutation { setTag(deviceId: "sw25", kind: HOLD, reason: "x", feederId: "case33bw") { id } }',
                  role="VIEWER")
    assert codes(r) == ["FORBIDDEN"]


async def test_feeder_scoped_operator_cannot_control_another_feeder(gql, mint, sim):
    token = mint("OPERATOR", sub="scoped", feeders=["cigre-mv"])
    r = await gql(SELECT, {"d": "sw30", "a": "OPEN", "f": F}, token=token)
    assert codes(r) == ["FORBIDDEN"], r
    # nor operate a selection of case33bw (the feeder is found from the selection)
    other = mint("OPERATOR", sub="unscoped")
    sel = (await gql(SELECT, {"d": "sw30", "a": "OPEN", "f": F}, token=other))["data"]["selectControl"]
    r = await gql(OPERATE, {"s": sel["id"], "d": "sw30", "a": "OPEN"}, token=token)
    assert codes(r) == ["FORBIDDEN"], r
    assert (await gql(CANCEL, {"s": sel["id"]}, token=other))["data"]["cancelControl"]["cancelled"]


async def test_device_comm_loss_is_flagged_and_clears(gql, sim):
    rtu = f"{F}/rtu2"

    async def points() -> dict[str, str]:
        r = await gql('{ measurements(feederId: "case33bw") { pointId quality } }')
        return {m["pointId"]: m["quality"] for m in r["data"]["measurements"]}

    async def alarm_active() -> bool:
        r = await gql('{ alarms(feederId: "case33bw") { elementId kind } }')
        return {"elementId": rtu, "kind": "COMM_LOSS"} in r["data"]["alarms"]

    async def only_rtu2_lost() -> bool:
        q = await points()
        return (q["case33bw/sw9/STATUS"] == "COMM_LOST"  # sw9..sw16 are on RTU 2
                and q["case33bw/sw1/STATUS"] == "GOOD" and q["case33bw/sw25/STATUS"] == "GOOD"  # RTUs 1, 4
                and q["case33bw/bus5/VM_PU"] == "GOOD")  # OPC UA keeps answering

    await sim.comm_loss(rtu, on=True)
    try:
        await wait_for(alarm_active, 10)
        # The other devices keep answering (a scan that timed out on a loaded machine recovers on
        # the next one; RTU 2 stays lost for as long as it is silent).
        await wait_for(only_rtu2_lost, 10)
    finally:
        await sim.comm_loss(rtu, on=False)

    async def cleared() -> bool:
        return (await points())["case33bw/sw9/STATUS"] == "GOOD" and not await alarm_active()

    await wait_for(cleared, 15)


# -- subscriptions -------------------------------------------------------------------------------


class Ws:
    def __init__(self, conn: Any) -> None:
        self.conn = conn
        self.next_id = 1

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None) -> str:
        sid = str(self.next_id)
        self.next_id += 1
        await self.conn.send(json.dumps({"id": sid, "type": "subscribe",
                                         "payload": {"query": query, "variables": variables or {}}}))
        return sid

    async def next(self, timeout_s: float = 10.0) -> dict[str, Any]:
        while True:
            msg = json.loads(await asyncio.wait_for(self.conn.recv(), timeout_s))
            if msg["type"] == "ping":
                await self.conn.send(json.dumps({"type": "pong"}))
                continue
            return msg


@contextlib.asynccontextmanager
async def ws_session(server, token: str) -> AsyncIterator[Ws]:
    conn = await websockets.connect(server.ws_url, subprotocols=["graphql-transport-ws"])
    try:
        await conn.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
        ack = json.loads(await asyncio.wait_for(conn.recv(), 10))
        assert ack["type"] == "connection_ack", ack
        yield Ws(conn)
    finally:
        await conn.close()


CONTROL_SUB = """subscription C($after: Int) { controlEvents(feederId: "case33bw", afterSeq: $after) {
  seq kind elementId message data } }"""


async def _select_cancel(gql, token: str) -> None:
    sel = (await gql(SELECT, {"d": SW, "a": "OPEN", "f": F}, token=token))["data"]["selectControl"]
    assert (await gql(CANCEL, {"s": sel["id"]}, token=token))["data"]["cancelControl"]["cancelled"]


async def test_subscriber_resumes_after_reconnect_without_gaps(gql, mint, server, sim):
    token = mint("OPERATOR", sub="dave")
    seen: list[dict[str, Any]] = []
    async with ws_session(server, token) as ws:
        await ws.subscribe(CONTROL_SUB)
        await asyncio.sleep(0.3)
        await _select_cancel(gql, token)
        while len(seen) < 2:
            msg = await ws.next()
            assert msg["type"] == "next", msg
            seen.append(msg["payload"]["data"]["controlEvents"])
    assert [e["data"]["phase"] for e in seen] == ["SELECTED", "CANCELLED"]
    last = seen[-1]["seq"]
    # Disconnected: these happen while nobody listens.
    for _ in range(3):
        await _select_cancel(gql, token)
    # Events reach the bus asynchronously (the actor batches them every few ms): wait until all six
    # are published before reconnecting.
    async def missed_events() -> list[int] | None:
        missed = await gql('query E($a: Int) { events(afterSeq: $a, feederId: "case33bw", kinds: ["CONTROL"]) '
                           '{ events { seq } nextSeq } }', {"a": last}, role="VIEWER")
        seqs = [e["seq"] for e in missed["data"]["events"]["events"]]
        return seqs if len(seqs) >= 6 else None

    expected = await wait_for(missed_events, 10)
    assert len(expected) == 6
    async with ws_session(server, token) as ws:
        await ws.subscribe(CONTROL_SUB, {"after": last})
        got = []
        while len(got) < 6:
            msg = await ws.next()
            assert msg["type"] == "next", msg
            got.append(msg["payload"]["data"]["controlEvents"]["seq"])
        assert got == expected  # every missed event, in order, none twice
        await _select_cancel(gql, token)  # ...and then live ones
        live = [(await ws.next())["payload"]["data"]["controlEvents"] for _ in range(2)]
        assert live[0]["seq"] > got[-1] and [e["data"]["phase"] for e in live] == ["SELECTED", "CANCELLED"]


async def test_breaker_trip_shows_up_as_an_alarm(gql, mint, server, runtime, sim):
    async with ws_session(server, mint("VIEWER")) as ws:
        await ws.subscribe('subscription { alarms(feederId: "case33bw") { seq kind elementId severity data } }')
        m = await ws.subscribe('subscription { measurements(feederId: "case33bw", minIntervalMs: 200) '
                               '{ seq points { pointId value quality } } }')
        await asyncio.sleep(0.3)
        tripped = sim.inject_fault(F, "line10")
        assert tripped == "sw1"
        trip = None
        statuses: dict[str, float] = {}
        deadline = time.monotonic() + 15
        while (trip is None or "case33bw/sw1/STATUS" not in statuses) and time.monotonic() < deadline:
            msg = await ws.next()
            assert msg["type"] == "next", msg
            data = msg["payload"]["data"]
            if msg["id"] == m:
                statuses.update({p["pointId"]: p["value"] for p in data["measurements"]["points"]})
            elif data["alarms"]["kind"] == "BREAKER_TRIP":
                trip = data["alarms"]
        assert trip is not None and trip["elementId"] == "sw1" and trip["severity"] == "CRITICAL"
        assert statuses["case33bw/sw1/STATUS"] == 1.0
    r = await gql('{ alarms(feederId: "case33bw") { elementId kind severity } }')
    assert {"elementId": "sw1", "kind": "BREAKER_TRIP", "severity": "CRITICAL"} in r["data"]["alarms"]
    await _acknowledge_the_trip(gql, mint)
    # reclosing the breaker onto the faulted section is refused (fault indicators latched up to line10)
    await wait_for(lambda: _fi_latched(gql), 10)
    r = await gql(SELECT, {"d": "sw1", "a": "CLOSE", "f": F}, token=mint("OPERATOR"))
    assert codes(r) == ["INTERLOCK"] and "line10" in r["errors"][0]["message"], r
    await sim.reset()

    async def trip_cleared() -> bool:
        r = await gql('{ alarms(feederId: "case33bw") { elementId kind } }')
        return {"elementId": "sw1", "kind": "BREAKER_TRIP"} not in r["data"]["alarms"]

    await wait_for(trip_cleared, 10)


async def _fi_latched(gql) -> bool:
    r = await gql('{ alarms(feederId: "case33bw") { kind } }')
    return any(a["kind"] == "FAULT_INDICATION" for a in r["data"]["alarms"])


async def test_measurement_batches_as_objects_and_as_parallel_arrays_agree(mint, server, sim):
    point = "case33bw/bus18/VM_PU"
    async with ws_session(server, mint("VIEWER")) as ws:
        await ws.subscribe('subscription { measurements(feederId: "case33bw") '
                           '{ seq points { pointId value quality seq } compact } }')
        await asyncio.sleep(0.3)
        await sim.force_value(point, 0.9123)
        deadline = time.monotonic() + 15
        seen = False
        try:
            while not seen and time.monotonic() < deadline:
                msg = await ws.next()
                assert msg["type"] == "next", msg
                batch = msg["payload"]["data"]["measurements"]
                points, c = batch["points"], batch["compact"]
                assert c["pointId"] == [p["pointId"] for p in points]
                assert c["value"] == [p["value"] for p in points]
                assert c["quality"] == [p["quality"] for p in points]
                assert c["seq"] == [p["seq"] for p in points] and c["seq"] == sorted(c["seq"])
                assert batch["seq"] == c["seq"][-1]
                assert all(len(col) == len(points) for col in c.values())
                seen = any(p == point and abs(v - 0.9123) < 1e-3 for p, v in zip(c["pointId"], c["value"],
                                                                                   strict=True))
        finally:
            await sim.force_value(point, None)
        assert seen, f"the forced value of {point} never reached the subscriber"


ACK = """mutation A($f: ID!, $a: ID!) { acknowledgeAlarm(feederId: $f, alarmId: $a) {
  id elementId kind active acknowledgedBy acknowledgedAt } }"""


async def _acknowledge_the_trip(gql, mint) -> None:
    """ISA-18.2 acknowledgement: an operator takes the alarm on, it stays active; audited."""
    r = await gql('{ alarms(feederId: "case33bw") { id elementId kind acknowledgedBy acknowledgedAt } }')
    trip = next(a for a in r["data"]["alarms"] if a["elementId"] == "sw1" and a["kind"] == "BREAKER_TRIP")
    assert trip["acknowledgedBy"] is None and trip["acknowledgedAt"] is None
    assert codes(await gql(ACK, {"f": F, "a": trip["id"]}, role="VIEWER")) == ["FORBIDDEN"]
    assert codes(await gql(ACK, {"f": F, "a": f"{F}|sw1|NO_SUCH_KIND"}, role="OPERATOR")) == ["NOT_FOUND"]
    assert codes(await gql(ACK, {"f": F, "a": "not an alarm id"}, role="OPERATOR")) == ["BAD_INPUT"]
    assert codes(await gql(ACK, {"f": F, "a": "cigre-mv|sw1|BREAKER_TRIP"}, role="OPERATOR")) == ["NOT_FOUND"]
    r = await gql(ACK, {"f": F, "a": trip["id"]}, token=mint("OPERATOR", sub="dana"))
    assert "errors" not in r, r
    acked = r["data"]["acknowledgeAlarm"]
    assert acked["id"] == trip["id"] and acked["active"] and acked["acknowledgedBy"] == "dana"
    assert acked["acknowledgedAt"] is not None
    r = await gql('{ alarms(feederId: "case33bw") { id acknowledgedBy } }')
    assert {"id": trip["id"], "acknowledgedBy": "dana"} in r["data"]["alarms"]
    audit = await gql("{ auditLog(first: 20) { edges { node { action actor outcome target } } } }", role="SECAUD")
    acks = [e["node"] for e in audit["data"]["auditLog"]["edges"] if e["node"]["action"] == "ALARM_ACK"]
    assert {"action": "ALARM_ACK", "actor": "dana", "outcome": "OK", "target": f"{F}/{trip['id']}"} in acks
    assert any(a["outcome"] == "NOT_FOUND" for a in acks)  # refused acknowledgements are audited too
