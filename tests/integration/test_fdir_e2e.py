"""FDIR end to end on the demo feeders: a permanent fault in the simulator is detected, located,
isolated and worked around through the real protocols (Modbus TCP and OPC UA on loopback), the
outage record follows each step in the graph store, the public feed shows it and then clears it."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.conftest import bound_field, wait_for

FDIR_Q = """query F($f: ID!) { fdir(feederId: $f) { mode activeOutageIds automaticSuspended
  pendingPlan { id state kind steps { order action deviceId } }
  lastOutcome { id state kind message customersRestored customersLeft executedSteps planSeconds restoreSeconds } } }"""
SWITCHES_Q = 'query S($f: ID!) { feeder(id: $f) { switches { id isOpen normallyOpen } } }'
OUTAGE_Q = """query O($id: ID!) { outage(id: $id) { id status cause customersOut customersInterrupted
  steps { action customersLost customersRestored } } }"""


def _commands(sim, feeder: str) -> int:
    """Commands the field simulator received for ``feeder``'s devices."""
    return sum(n for pid, n in sim.commands_received.items() if pid.startswith(f"{feeder}/"))


@pytest.fixture(scope="module")
async def grid_field(runtime, field_sim) -> AsyncIterator[Any]:
    async with bound_field(runtime, field_sim, ("case33bw", "cigre-mv")):
        yield field_sim


async def fdir(gql, feeder: str) -> dict[str, Any]:
    r = await gql(FDIR_Q, {"f": feeder}, role="OPERATOR")
    assert "errors" not in r, r
    return r["data"]["fdir"]


async def switch_states(gql, feeder: str) -> dict[str, bool]:
    r = await gql(SWITCHES_Q, {"f": feeder})
    return {s["id"]: s["isOpen"] for s in r["data"]["feeder"]["switches"]}


async def approve(gql, feeder: str, plan_id: str) -> dict[str, Any]:
    r = await gql('mutation A($f: ID!, $p: ID!) { approvePlan(feederId: $f, planId: $p) { id state } }',
                  {"f": feeder, "p": plan_id}, role="OPERATOR")
    assert "errors" not in r, r
    return r["data"]["approvePlan"]


async def completed_after(gql, feeder: str, not_id: str | None = None, timeout_s: float = 40) -> dict[str, Any]:
    async def done():
        last = (await fdir(gql, feeder))["lastOutcome"]
        return last if last and last["id"] != not_id and last["state"] in ("COMPLETED", "FAILED") else None

    return await wait_for(done, timeout_s)


async def _field_ready(runtime, fid: str) -> bool:
    st = await runtime.fleet.call(fid, "field_status")
    return bool(st["devices"]) and all(st["devices"].values())


async def test_automatic_fdir_on_case33bw_isolates_restores_and_returns_to_normal(gql, http, grid_field, runtime):
    sim = grid_field
    r = await gql('mutation { setFdirMode(feederId: "case33bw", mode: AUTOMATIC) }', role="OPERATOR")
    assert r["data"]["setFdirMode"] == "AUTOMATIC", r
    # The mode is persisted: an actor rebuilt from the store keeps it.
    runtime.fleet.kill("case33bw")
    await asyncio.sleep(0.3)
    assert (await fdir(gql, "case33bw"))["mode"] == "AUTOMATIC"
    from server.field import attach

    await attach(runtime, runtime.settings, sim.point_maps["case33bw"])  # as the fleet re-applies it
    await wait_for(lambda: _field_ready(runtime, "case33bw"), 30)
    assert (await gql('mutation { setFdirMode(feederId: "case33bw", mode: AUTOMATIC) }', role="VIEWER"))[
        "errors"][0]["extensions"]["code"] == "FORBIDDEN"
    try:
        before = (await fdir(gql, "case33bw"))["lastOutcome"]

        async def feed_open() -> int:  # outages other tests may have left open count here too
            body = (await http.get("/feeds/outages.geojson")).json()
            return len([f for f in body["features"] if f["properties"]["status"] != "RESTORED"])

        open_before = await feed_open()
        sim.inject_fault("case33bw", "line10")  # trips the feeder breaker sw1
        outcome = await completed_after(gql, "case33bw", before["id"] if before else None)
        assert outcome["state"] == "COMPLETED", outcome
        assert outcome["kind"] == "FAULT" and outcome["customersRestored"] > 0
        assert outcome["planSeconds"] < 5 and outcome["restoreSeconds"] < 30

        states = await switch_states(gql, "case33bw")
        assert states["sw10"] is True and states["sw11"] is True  # isolation around line10
        assert states["sw1"] is False  # upstream re-energized
        assert any(not states[t] for t in ("sw33", "sw34", "sw35", "sw36", "sw37"))  # a tie picked up the rest
        # ...and the simulator (the field) agrees: the faulted line is dead, everything else live.
        assert sim.switch_is_open("case33bw", "sw10") and sim.switch_is_open("case33bw", "sw11")
        assert "bus11" not in sim.energized_bus_ids("case33bw")
        assert "bus18" in sim.energized_bus_ids("case33bw")

        status = await fdir(gql, "case33bw")
        assert len(status["activeOutageIds"]) == 1
        outage_id = status["activeOutageIds"][0]
        o = (await gql(OUTAGE_Q, {"id": outage_id}))["data"]["outage"]
        assert o["cause"] == "FAULT" and o["status"] in ("PARTIALLY_RESTORED", "ISOLATED")
        assert o["customersInterrupted"] > o["customersOut"] > 0
        assert any(s["customersRestored"] > 0 for s in o["steps"])

        feed = (await http.get("/feeds/outages.geojson")).json()
        assert any(f["properties"]["customersAffected"] == o["customersOut"] for f in feed["features"])

        # Fault repaired: a return-to-normal plan is offered, never executed on its own.
        sim.clear("case33bw")
        pending = await wait_for(lambda: _pending(gql, "case33bw", "RETURN_TO_NORMAL"), 20)
        sent = _commands(sim, "case33bw")
        # offered, not executed: the plan waits and nothing was sent to the field since it was made
        assert (await fdir(gql, "case33bw"))["pendingPlan"]["id"] == pending["id"]
        assert _commands(sim, "case33bw") == sent
        await approve(gql, "case33bw", pending["id"])
        rtn = await completed_after(gql, "case33bw", outcome["id"])
        assert rtn["kind"] == "RETURN_TO_NORMAL" and rtn["state"] == "COMPLETED", rtn

        states = await switch_states(gql, "case33bw")
        normal = {s["id"]: s["normallyOpen"] for s in
                  (await gql(SWITCHES_Q, {"f": "case33bw"}))["data"]["feeder"]["switches"]}
        assert states == normal
        o = (await gql(OUTAGE_Q, {"id": outage_id}))["data"]["outage"]
        assert o["status"] == "RESTORED" and o["customersOut"] == 0

        async def feed_clear() -> bool:  # this outage no longer shows as open on the public feed
            return await feed_open() <= open_before

        await wait_for(feed_clear, 10)
        audit = await gql("{ auditLog(first: 50) { edges { node { action actor outcome } } } }", role="SECAUD")
        actions = [e["node"]["action"] for e in audit["data"]["auditLog"]["edges"]]
        assert "PLAN_APPROVE" in actions and "FDIR_MODE" in actions

        # #17.6: FDIR's own switching is audited (from the durable CONTROL events), once each.
        async def fdir_audited() -> list[dict[str, Any]]:
            r = await gql("{ auditLog(first: 200) { edges { node { action actor outcome target detail } } } }",
                          role="SECAUD")
            nodes = [e["node"] for e in r["data"]["auditLog"]["edges"] if e["node"]["actor"] == "fdir"]
            ok = {n["action"] for n in nodes} >= {"CONTROL_OPERATE", "CONTROL_RESULT"}
            return nodes if ok and any(n["target"] == "case33bw/sw10" for n in nodes) else []

        nodes = await wait_for(fdir_audited, 15)
        assert any(n["action"] == "CONTROL_RESULT" and n["outcome"] == "CONFIRMED" for n in nodes)
        seqs = [json.loads(n["detail"])["event_seq"] for n in nodes]
        assert len(seqs) == len(set(seqs)), "an application control was audited twice"
        assert (await runtime.audit.verify()).ok
    finally:
        await gql('mutation { setFdirMode(feederId: "case33bw", mode: ADVISORY) }', role="OPERATOR")
        await sim.reset()


@contextlib.asynccontextmanager
async def anonymous_ws(server) -> AsyncIterator[Any]:
    import json

    import websockets

    from tests.integration.test_realtime import Ws

    conn = await websockets.connect(server.ws_url, subprotocols=["graphql-transport-ws"])
    try:
        await conn.send(json.dumps({"type": "connection_init", "payload": {}}))
        ack = json.loads(await asyncio.wait_for(conn.recv(), 10))
        assert ack["type"] == "connection_ack", ack
        yield Ws(conn)
    finally:
        await conn.close()


async def _pending(gql, feeder: str, kind: str) -> dict[str, Any] | None:
    p = (await fdir(gql, feeder))["pendingPlan"]
    return p if p and p["kind"] == kind else None


async def test_advisory_fdir_on_cigre_mv_waits_for_one_approval(gql, runtime, grid_field, server, mint):
    from tests.integration.test_realtime import ws_session

    sim = grid_field
    events = ws_session(server, mint("OPERATOR", sub="grid-desk"))
    feed = anonymous_ws(server)  # the public feed needs no token
    ws_events, ws_feed = await events.__aenter__(), await feed.__aenter__()
    try:
        await ws_events.subscribe('subscription { outageEvents(feederId: "cigre-mv") { seq kind message data } }')
        await ws_feed.subscribe("subscription { outageFeed { id customersAffected status cause startedAt } }")
        await asyncio.sleep(0.3)
        before = (await fdir(gql, "cigre-mv"))["lastOutcome"]
        model = await runtime.grid.model("cigre-mv")
        line = model.lines[2].id
        tripped = sim.inject_fault("cigre-mv", line)
        assert tripped, "a breaker must trip for a permanent fault"
        pending = await wait_for(lambda: _pending(gql, "cigre-mv", "FAULT"), 30)
        assert pending["state"] == "PENDING_APPROVAL"
        sent = _commands(sim, "cigre-mv")
        # advisory: nothing moves without the operator (the plan waits; no command reached the field)
        assert (await fdir(gql, "cigre-mv"))["pendingPlan"]["id"] == pending["id"]
        assert _commands(sim, "cigre-mv") == sent and sim.switch_is_open("cigre-mv", tripped)
        bad = await gql('mutation { approvePlan(feederId: "cigre-mv", planId: "nope") { id } }', role="OPERATOR")
        assert bad["errors"][0]["extensions"]["code"] == "NOT_FOUND"
        forbidden = await gql('mutation A($p: ID!) { approvePlan(feederId: "cigre-mv", planId: $p) { id } }',
                              {"p": pending["id"]}, role="VIEWER")
        assert forbidden["errors"][0]["extensions"]["code"] == "FORBIDDEN"
        await approve(gql, "cigre-mv", pending["id"])
        outcome = await completed_after(gql, "cigre-mv", before["id"] if before else None)
        assert outcome["state"] == "COMPLETED", outcome
        status = await fdir(gql, "cigre-mv")
        assert status["activeOutageIds"], "the fault leaves an outage record until repaired"
        # Control room: outage and plan events; customer app: the public projection only.
        kinds = set()
        while "OUTAGE" not in kinds or "PLAN" not in kinds:
            msg = await asyncio.wait_for(ws_events.next(), 15)
            kinds.add(msg["payload"]["data"]["outageEvents"]["kind"])
        public = (await asyncio.wait_for(ws_feed.next(), 15))["payload"]["data"]["outageFeed"]
        assert public["customersAffected"] >= 0 and public["cause"] == "FAULT"
        assert status["activeOutageIds"][0] not in str(public) and "cigre" not in str(public)
    finally:
        await events.__aexit__(None, None, None)
        await feed.__aexit__(None, None, None)
        await sim.reset()
