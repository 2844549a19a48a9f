"""Customers over real HTTP: ``customer`` answers only the token's account (meters, premises,
outages, DR events: each field checked against a second customer's data), ``optOut`` re-plans the
event (the operator sees the replacement), and every other DR/forecast field refuses a customer."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

F = "case33bw"
P = f"{F}-capacity"
CUSTOMER = """{ customer { account meters premises { id feederId meterIds }
  outages { id status startedAt estimatedRestoration premisesIds }
  drEvents { id programId start end status resourceIds requestedKw optedOut } } }"""
OPT_OUT = "mutation($id: ID!) { optOut(eventId: $id) { id status resourceIds requestedKw optedOut } }"
CREATE = """mutation($s: DateTime!, $e: DateTime!) { createDrEvent(programId: "case33bw-capacity",
  feederId: "case33bw", start: $s, end: $e, targetKw: 30) { id plannedKw shortfallKw resources { resourceId kw } } }"""
EVENTS = "{ drEvents { id optedOut plannedKw resources { resourceId kw } } }"
CANCEL = 'mutation($id: ID!) { cancelDrEvent(eventId: $id) { id status } }'


def _token(settings: Any, account: str | None) -> str:
    from security.tokens import LocalSigningKey, mint_token

    return mint_token(LocalSigningKey(settings.data_dir), role="CUSTOMER", sub=f"cust-{account}", ttl_s=600,
                      issuer=settings.auth_issuer, audience=settings.auth_audience, customer_account=account)


def _code(r: dict[str, Any]) -> str:
    return str(r["errors"][0]["extensions"]["code"])


async def test_customer_scope_and_opt_out(gql: Any, settings: Any) -> None:
    d = (datetime.now(UTC) + timedelta(days=1)).date()
    start = datetime(d.year, d.month, d.day, 10, tzinfo=UTC)
    r = await gql(CREATE, {"s": start.isoformat(), "e": (start + timedelta(hours=1)).isoformat()}, role="OPERATOR")
    assert "errors" not in r, r
    ev = r["data"]["createDrEvent"]
    dispatched = [x["resourceId"] for x in ev["resources"]]
    progs = await gql("{ drPrograms { id resources { id loadId capacityKw } } }")
    res = next(p for p in progs["data"]["drPrograms"] if p["id"] == P)["resources"]
    load_of = {x["id"]: x["loadId"] for x in res}
    mine = dispatched[0]
    other = next(x["id"] for x in res if x["id"] not in dispatched)
    acct_a, acct_b = f"acct:{F}/{load_of[mine]}/0", f"acct:{F}/{load_of[other]}/0"
    tok_a, tok_b = _token(settings, acct_a), _token(settings, acct_b)
    try:
        # every field of customer is the account's own
        for acct, tok, load in ((acct_a, tok_a, load_of[mine]), (acct_b, tok_b, load_of[other])):
            r = await gql(CUSTOMER, token=tok)
            assert "errors" not in r, r
            c = r["data"]["customer"]
            assert c["account"] == acct and c["meters"] == [f"{F}/{load}/m0"]
            assert c["premises"] == [{"id": load, "feederId": F, "meterIds": [f"{F}/{load}/m0"]}]
            assert all(o["premisesIds"] == [load] for o in c["outages"])
            mine_events = {e["id"] for e in c["drEvents"]}
            if acct == acct_a:
                got = next(e for e in c["drEvents"] if e["id"] == ev["id"])
                assert got["resourceIds"] == [mine] and not got["optedOut"] and got["requestedKw"] > 0
            else:
                assert ev["id"] not in mine_events  # B is not dispatched in it: B does not see it

        # B cannot opt out of A's event (NOT_FOUND: says nothing of it)
        assert _code(await gql(OPT_OUT, {"id": ev["id"]}, token=tok_b)) == "NOT_FOUND"
        r = await gql(OPT_OUT, {"id": ev["id"]}, token=tok_a)
        assert "errors" not in r, r
        assert r["data"]["optOut"]["optedOut"] is True and r["data"]["optOut"]["resourceIds"] == []
        # dispatch re-planned: the operator sees A out and the target still met by others
        r = await gql(EVENTS)
        after = next(e for e in r["data"]["drEvents"] if e["id"] == ev["id"])
        assert mine in after["optedOut"] and mine not in {x["resourceId"] for x in after["resources"]}
        assert after["plannedKw"] == ev["plannedKw"] == 30
        r = await gql(OPT_OUT, {"id": ev["id"]}, token=tok_a)
        assert _code(r) == "BAD_INPUT" and "rule=NOT_DISPATCHED" in r["errors"][0]["message"]
        r = await gql(CUSTOMER, token=tok_a)  # still listed for A, as opted out
        assert next(e for e in r["data"]["customer"]["drEvents"] if e["id"] == ev["id"])["optedOut"] is True

        # refusals: no account claim, an operator, no token; and a customer on the operator's fields
        assert _code(await gql(CUSTOMER, token=_token(settings, None))) == "FORBIDDEN"
        assert _code(await gql(CUSTOMER, role="OPERATOR")) == "FORBIDDEN"
        assert _code(await gql(CUSTOMER, role=None)) == "UNAUTHENTICATED"
        for q, v in (("{ drPrograms { id } }", None), ("{ drEvents { id } }", None),
                     ('query($id: ID!) { drEventPerformance(eventId: $id) { deliveredKw } }', {"id": ev["id"]}),
                     ('{ loadForecast(feederId: "case33bw", horizon: DAY_AHEAD) { issuedAt } }', None),
                     (CANCEL, {"id": ev["id"]})):
            assert _code(await gql(q, v, token=tok_a)) == "FORBIDDEN", q
    finally:
        await gql(CANCEL, {"id": ev["id"]}, role="OPERATOR")


SUB = """subscription { customerEvents { kind at drEvent { id status resourceIds optedOut requestedKw }
  outage { id premisesIds } } }"""


async def _ws(server: Any, token: str) -> Any:
    import json

    import websockets

    conn = await websockets.connect(server.ws_url, subprotocols=["graphql-transport-ws"])
    await conn.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
    assert json.loads(await asyncio.wait_for(conn.recv(), 10))["type"] == "connection_ack"
    await conn.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": SUB}}))
    return conn


async def _next(conn: Any) -> dict[str, Any]:
    import json

    while True:
        msg = json.loads(await asyncio.wait_for(conn.recv(), 30))
        if msg["type"] == "ping":
            await conn.send(json.dumps({"type": "pong"}))
            continue
        assert msg["type"] == "next", msg
        return dict(msg["payload"]["data"]["customerEvents"])


async def test_customer_events_carry_only_the_accounts_own_changes(gql: Any, settings: Any, server: Any) -> None:
    d = (datetime.now(UTC) + timedelta(days=2)).date()
    start = datetime(d.year, d.month, d.day, 10, tzinfo=UTC)
    r = await gql(CREATE, {"s": start.isoformat(), "e": (start + timedelta(hours=1)).isoformat()}, role="OPERATOR")
    ev = r["data"]["createDrEvent"]
    progs = await gql("{ drPrograms { id resources { id loadId capacityKw } } }")
    res = next(p for p in progs["data"]["drPrograms"] if p["id"] == P)["resources"]
    load_of = {x["id"]: x["loadId"] for x in res}
    mine = ev["resources"][0]["resourceId"]
    other = next(x["id"] for x in res if x["id"] not in {y["resourceId"] for y in ev["resources"]})
    tok_a = _token(settings, f"acct:{F}/{load_of[mine]}/0")
    tok_b = _token(settings, f"acct:{F}/{load_of[other]}/0")
    conn_a, conn_b = await _ws(server, tok_a), await _ws(server, tok_b)
    big = None
    try:
        first = await _next(conn_a)  # A's current events, this one among them
        while first["drEvent"]["id"] != ev["id"]:
            first = await _next(conn_a)
        assert first["kind"] == "DR_EVENT" and first["drEvent"]["resourceIds"] == [mine]
        assert not first["drEvent"]["optedOut"]
        assert "errors" not in await gql(OPT_OUT, {"id": ev["id"]}, token=tok_a)
        change = await _next(conn_a)
        while change["drEvent"]["id"] != ev["id"]:
            change = await _next(conn_a)
        assert change["drEvent"]["optedOut"] is True and change["drEvent"]["resourceIds"] == []
        # an event that dispatches every resource reaches B; A's event, created and changed before, never did
        r = await gql(CREATE.replace("targetKw: 30", "targetKw: 100000"),
                      {"s": (start + timedelta(hours=3)).isoformat(), "e": (start + timedelta(hours=4)).isoformat()},
                      role="OPERATOR")
        big = r["data"]["createDrEvent"]["id"]
        got = await _next(conn_b)
        while got["drEvent"]["id"] != big:
            assert got["drEvent"]["id"] != ev["id"], got  # A's event never reaches B
            got = await _next(conn_b)
        assert got["drEvent"]["resourceIds"] == [other]
    finally:
        await conn_a.close()
        await conn_b.close()
        await gql(CANCEL, {"id": ev["id"]}, role="OPERATOR")
        if big is not None:
            await gql(CANCEL, {"id": big}, role="OPERATOR")
