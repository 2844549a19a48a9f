"""The API as front-end authors and attackers meet it, over real HTTP and WebSocket: closed sets are
enums and unknown values are BAD_INPUT (never INTERNAL), timestamps are DateTime, Relay PageInfo is
complete, a feeder-scoped token gets full controlHistory pages, alarm events carry the id
acknowledgeAlarm takes, and the measurements subscription filters points on the server."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest

from tests.integration.conftest import bound_field
from tests.integration.test_realtime import ws_session

CODE = re.compile(r"^[A-Z][A-Z0-9_]*$")


def codes(r: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in r.get("errors") or []]


async def test_unknown_event_kind_is_bad_input_naming_the_value_and_the_choices(gql):
    r = await gql('{ events(kinds: ["foo"]) { nextSeq } }')
    assert codes(r) == ["BAD_INPUT"], r
    message = r["errors"][0]["message"]
    assert "'foo'" in message and "ALARM" in message and "eventKinds" in message
    # the deprecated string argument still works with known kinds; the enum argument beside it
    assert "errors" not in await gql('{ events(kinds: ["CONTROL"], first: 1) { nextSeq } }')
    r = await gql('query E($k: [EventKind!]) { events(eventKinds: $k, first: 3) { events { kind severity } } }',
                  {"k": ["CONTROL", "ALARM"]})
    assert "errors" not in r and all(e["kind"] in ("CONTROL", "ALARM") for e in r["data"]["events"]["events"]), r
    assert codes(await gql("{ events(eventKinds: [FOO]) { nextSeq } }")) == ["GRAPHQL_VALIDATION_FAILED"]


BAD = [
    ("VIEWER", '{ events(afterSeq: -1) { nextSeq } }'),
    ("VIEWER", '{ events(first: 0) { nextSeq } }'),
    ("VIEWER", '{ events(kinds: ["", "alarm"]) { nextSeq } }'),
    ("VIEWER", '{ controlHistory(after: "garbage") { edges { cursor } } }'),
    ("VIEWER", '{ controlHistory(first: 100000) { edges { cursor } } }'),
    ("VIEWER", '{ outages(after: "c2VxOng=") { edges { cursor } } }'),
    ("SECAUD", '{ auditLog(after: "Zm9vOjE=") { edges { cursor } } }'),
    ("VIEWER", '{ alarms(feederId: "nope") { id } }'),
    ("VIEWER", '{ measurements(feederId: "nope") { pointId } }'),
    ("VIEWER", '{ fdir(feederId: "nope") { mode } }'),
    ("VIEWER", '{ outage(id: "nope") { id } }'),
    ("VIEWER", '{ feeder(id: "nope") { id } }'),
    ("OPERATOR", 'mutation { acknowledgeAlarm(feederId: "case33bw", alarmId: "not-an-alarm") { id } }'),
    ("OPERATOR", 'mutation { acknowledgeAlarm(feederId: "case33bw", alarmId: "case33bw|sw7|VM_LOW") { id } }'),
    ("OPERATOR", 'mutation { selectControl(deviceId: "nope", action: OPEN) { id } }'),
    ("OPERATOR", 'mutation { selectControl(deviceId: "sw7", action: OPEN) { id } }'),
    ("OPERATOR", 'mutation { operateControl(selectionId: "nope", deviceId: "sw7", feederId: "case33bw", '
                 'action: OPEN) { status } }'),
    ("OPERATOR", 'mutation { cancelControl(selectionId: "nope") { cancelled } }'),
    ("OPERATOR", 'mutation { removeTag(tagId: "nope") { id } }'),
    ("OPERATOR", 'mutation { approvePlan(feederId: "cigre-mv", planId: "nope") { id } }'),
    ("OPERATOR", 'mutation { setTag(feederId: "case33bw", deviceId: "sw7", kind: NOPE, reason: "x") { id } }'),
]


@pytest.mark.parametrize(("role", "query"), BAD, ids=[q[:60] for _, q in BAD])
async def test_bad_input_is_refused_with_a_code_never_internal(gql, role, query):
    r = await gql(query, role=role)
    assert r.get("errors"), r
    for code in codes(r):
        assert code and CODE.match(code) and code != "INTERNAL", r
    # the message says what was wrong, not a bare code
    assert all(len(e["message"]) > 15 for e in r["errors"]), r


async def _control_record(gql, mint, feeder: str, device: str, action: str = "OPEN") -> None:
    """One ControlAction record: select and operate (no field is bound here, so nothing is sent:
    the record says FAILED)."""
    token = mint("OPERATOR", sub="contract")
    sel = await gql('mutation S($f: ID!, $d: ID!, $a: ControlAction!) { selectControl(feederId: $f, deviceId: $d, '
                    'action: $a) { id } }', {"f": feeder, "d": device, "a": action}, token=token)
    assert "errors" not in sel, sel
    op = await gql('mutation O($f: ID!, $s: ID!, $d: ID!, $a: ControlAction!) { operateControl(feederId: $f, '
                   'selectionId: $s, deviceId: $d, action: $a) { status code } }',
                   {"f": feeder, "s": sel["data"]["selectControl"]["id"], "d": device, "a": action}, token=token)
    assert "errors" not in op, op


HISTORY = """query H($after: String) { controlHistory(first: 2, after: $after) {
  edges { cursor node { seq feederId deviceId action status requestedAt completedAt } }
  pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }"""


async def test_control_history_of_a_feeder_scoped_token_has_full_pages(gql, mint, runtime):
    assert not (await runtime.fleet.call("case33bw", "field_status"))["attached"], "needs the field unbound"
    for _ in range(3):
        await _control_record(gql, mint, "case33bw", "sw25")
    for _ in range(3):  # the newest records are another feeder's
        await _control_record(gql, mint, "cigre-mv", "sw6")
    scoped = mint("VIEWER", sub="scoped", feeders=["case33bw"])
    first = (await gql(HISTORY, token=scoped))["data"]["controlHistory"]
    nodes = [e["node"] for e in first["edges"]]
    assert len(nodes) == 2 and {n["feederId"] for n in nodes} == {"case33bw"}, first
    info = first["pageInfo"]
    assert info["hasNextPage"] is True and info["hasPreviousPage"] is False
    assert info["startCursor"] == first["edges"][0]["cursor"] and info["endCursor"] == first["edges"][-1]["cursor"]
    second = (await gql(HISTORY, {"after": info["endCursor"]}, token=scoped))["data"]["controlHistory"]
    assert second["edges"] and second["pageInfo"]["hasPreviousPage"] is True
    assert all(e["node"]["feederId"] == "case33bw" and e["node"]["seq"] < nodes[-1]["seq"] for e in second["edges"])
    # enums and DateTime on the wire: the same strings as before, typed
    for n in nodes:
        assert n["action"] == "OPEN" and n["status"] in ("FAILED", "REFUSED", "CONFIRMED", "NOT_CONFIRMED")
        assert datetime.fromisoformat(n["completedAt"]) >= datetime.fromisoformat(n["requestedAt"])


async def test_audit_entries_keep_the_hashed_text_and_give_a_datetime(gql):
    q = """query A($after: String) { auditLog(first: 1, after: $after) { edges { node { seq at recordedAt } }
      pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }"""
    first = (await gql(q, role="SECAUD"))["data"]["auditLog"]
    node = first["edges"][0]["node"]
    assert node["at"].endswith("Z")  # the exact text the hash covers
    assert datetime.fromisoformat(node["recordedAt"]) == datetime.fromisoformat(node["at"])
    assert first["pageInfo"]["hasPreviousPage"] is False and first["pageInfo"]["startCursor"]
    second = (await gql(q, {"after": first["pageInfo"]["endCursor"]}, role="SECAUD"))["data"]["auditLog"]
    assert second["pageInfo"]["hasPreviousPage"] is True


async def test_outages_page_info_is_complete(gql):
    r = await gql("{ outages(first: 1) { pageInfo { hasNextPage hasPreviousPage startCursor endCursor } } }")
    assert "errors" not in r, r
    assert r["data"]["outages"]["pageInfo"]["hasPreviousPage"] is False


# -- with the field bound ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
async def field(runtime, field_sim) -> AsyncIterator[Any]:
    async with bound_field(runtime, field_sim, ("case33bw",)):
        yield field_sim


async def _next_data(ws, sid: str, timeout_s: float = 15.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        msg = await ws.next(max(0.1, deadline - time.monotonic()))
        if msg.get("id") == sid:
            assert msg["type"] == "next", msg
            return msg["payload"]


async def test_alarm_events_carry_the_id_acknowledge_alarm_takes(gql, mint, server, field):
    point = "case33bw/bus18/VM_PU"
    token = mint("OPERATOR", sub="alarm-desk")
    try:
        async with ws_session(server, token) as ws:
            sid = await ws.subscribe('subscription { alarms(feederId: "case33bw") { seq kind elementId severity '
                                     'alarmId } }')
            await asyncio.sleep(0.3)
            await field.force_value(point, 0.85)  # below the feeder's 0.90 pu: VM_LOW
            while True:
                event = (await _next_data(ws, sid))["data"]["alarms"]
                if event["elementId"] == "bus18" and event["kind"] == "LIMIT_VIOLATION":
                    break
        assert event["alarmId"] == "case33bw|bus18|VM_LOW", event
        r = await gql('mutation A($a: ID!) { acknowledgeAlarm(feederId: "case33bw", alarmId: $a) { id kind '
                      'acknowledgedBy } }', {"a": event["alarmId"]}, token=token)
        assert "errors" not in r, r
        assert r["data"]["acknowledgeAlarm"] == {"id": event["alarmId"], "kind": "VM_LOW",
                                                 "acknowledgedBy": "alarm-desk"}
    finally:
        await field.force_value(point, None)


async def test_measurements_subscription_sends_only_the_points_asked_for(mint, server, field):
    bus18, bus3 = "case33bw/bus18/VM_PU", "case33bw/bus3/VM_PU"
    try:
        async with ws_session(server, mint("VIEWER")) as ws:
            by_element = await ws.subscribe('subscription { measurements(feederId: "case33bw", '
                                            'elementIds: ["bus18"]) { points { pointId elementId value } } }')
            by_point = await ws.subscribe(f'subscription {{ measurements(feederId: "case33bw", '
                                          f'pointIds: ["{bus18}"]) {{ points {{ pointId elementId value }} }} }}')
            everything = await ws.subscribe('subscription { measurements(feederId: "case33bw") '
                                            '{ points { pointId value } } }')
            await asyncio.sleep(0.3)
            await field.force_value(bus3, 0.9321)
            await asyncio.sleep(1.0)
            await field.force_value(bus18, 0.9123)
            seen: dict[str, list[dict[str, Any]]] = {by_element: [], by_point: [], everything: []}

            def done(sid: str) -> bool:
                return any(p["pointId"] == bus18 and abs(p["value"] - 0.9123) < 1e-3 for p in seen[sid])

            deadline = time.monotonic() + 20
            while not all(done(s) for s in seen) and time.monotonic() < deadline:
                msg = await ws.next(max(0.1, deadline - time.monotonic()))
                if msg.get("id") in seen:
                    assert msg["type"] == "next", msg
                    seen[msg["id"]] += msg["payload"]["data"]["measurements"]["points"]
            assert all(done(s) for s in seen), {s: len(v) for s, v in seen.items()}
            assert {p["pointId"] for p in seen[everything]} - {bus18}, "the unfiltered subscriber sees other points"
            assert {p["elementId"] for p in seen[by_element]} == {"bus18"}
            assert {p["pointId"] for p in seen[by_point]} == {bus18}
    finally:
        await field.force_value(bus3, None)
        await field.force_value(bus18, None)


async def test_measurements_subscription_refuses_unknown_ids(mint, server, field):
    async with ws_session(server, mint("VIEWER")) as ws:
        sid = await ws.subscribe('subscription { measurements(feederId: "case33bw", elementIds: ["nope"]) '
                                 '{ seq } }')
        msg = await ws.next()
        assert msg["id"] == sid, msg
        errors = msg["payload"]["errors"] if msg["type"] == "next" else msg["payload"]
        assert errors[0]["extensions"]["code"] == "BAD_INPUT" and "nope" in errors[0]["message"], msg
