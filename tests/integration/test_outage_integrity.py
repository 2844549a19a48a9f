"""Outage records keep to what happened (issue #17): an operator's own switching is a planned
interruption attributed to them, not a fault; an outage ends when its customers are supplied again,
at that time; every change of customers out reaches the public subscription. Over the real stack:
HTTP and WebSocket against the server, Modbus/OPC UA against the field simulator."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

from tests.integration.conftest import bound_field
from tests.integration.test_fdir_e2e import anonymous_ws, wait_for

OUTAGES_Q = """query O($f: ID) { outages(feederId: $f, first: 50) { edges { node { id status cause customersOut
  customersInterrupted startedAt restoredAt devices steps { action by customersLost customersRestored } } } } }"""


@pytest.fixture(scope="module")
async def grid_field(runtime, field_sim) -> AsyncIterator[Any]:
    async with bound_field(runtime, field_sim, ("case33bw",)):
        yield field_sim


async def operate(gql, token: str, device: str, action: str) -> dict[str, Any]:
    sel = await gql('mutation S($d: ID!, $a: ControlAction!) { selectControl(deviceId: $d, action: $a, '
                    'feederId: "case33bw") { id } }', {"d": device, "a": action}, token=token)
    assert "errors" not in sel, sel
    op = await gql('mutation O($s: ID!, $d: ID!, $a: ControlAction!) { operateControl(selectionId: $s, '
                   'deviceId: $d, action: $a, feederId: "case33bw") { status code } }',
                   {"s": sel["data"]["selectControl"]["id"], "d": device, "a": action}, token=token)
    assert "errors" not in op, op
    return op["data"]["operateControl"]


async def outages(gql) -> list[dict[str, Any]]:
    r = await gql(OUTAGES_Q, {"f": "case33bw"})
    assert "errors" not in r, r
    return [e["node"] for e in r["data"]["outages"]["edges"]]


async def test_operator_switching_is_a_planned_interruption_that_ends_when_supplied(gql, http, server, mint,
                                                                                     grid_field):
    sim = grid_field
    token = mint("OPERATOR", sub="alice")
    known = {o["id"] for o in await outages(gql)}
    feed_cm = anonymous_ws(server)
    feed = await feed_cm.__aenter__()
    try:
        await feed.subscribe("subscription { outageFeed { id customersAffected status cause } }")
        await asyncio.sleep(0.3)  # the subscription is registered before the switching starts
        assert (await operate(gql, token, "sw17", "OPEN"))["status"] == "CONFIRMED"

        async def planned() -> dict[str, Any] | None:
            new = [o for o in await outages(gql) if o["id"] not in known]
            return next((o for o in new if o["cause"] == "PLANNED_SWITCHING"), None)

        o = await wait_for(planned, 15)
        assert o["status"] == "DETECTED" and o["customersOut"] > 0 and o["devices"] == ["sw17"]
        assert o["steps"][0]["by"] == "alice"
        # Public feed and subscription say the same, and name no fault.
        body = (await http.get("/feeds/outages.geojson")).json()
        assert any(f["properties"]["cause"] == "PLANNED_SWITCHING" for f in body["features"])
        msg = (await asyncio.wait_for(feed.next(), 15))["payload"]["data"]["outageFeed"]
        assert msg["cause"] == "PLANNED_SWITCHING" and msg["customersAffected"] == o["customersOut"]
        # Last gasps from the dark meters arrive and settle (settle window 0.5 s): still no fault.
        await asyncio.sleep(0)
        t_settle = time.monotonic() + 2.0
        while time.monotonic() < t_settle:
            new = [x for x in await outages(gql) if x["id"] not in known]
            assert not [x for x in new if x["cause"] == "FAULT"], new
            await asyncio.sleep(0.25)

        assert (await operate(gql, token, "sw17", "CLOSE"))["status"] == "CONFIRMED"
        closed_at = datetime.now().astimezone()

        async def restored() -> dict[str, Any] | None:
            x = next(x for x in await outages(gql) if x["id"] == o["id"])
            return x if x["status"] == "RESTORED" else None

        done = await wait_for(restored, 5)
        assert done["customersOut"] == 0 and done["steps"][-1]["by"] == "alice"
        assert abs((datetime.fromisoformat(done["restoredAt"]) - closed_at).total_seconds()) < 5
        async def feed_restored() -> dict[str, Any] | None:
            m = (await asyncio.wait_for(feed.next(), 10))["payload"]["data"]["outageFeed"]
            return m if m["status"] == "RESTORED" else None

        last = await wait_for(feed_restored, 15, step=0)
        assert last["cause"] == "PLANNED_SWITCHING"
        assert not [x for x in await outages(gql) if x["id"] not in known and x["cause"] == "FAULT"]
    finally:
        await feed_cm.__aexit__(None, None, None)
        await sim.reset()
