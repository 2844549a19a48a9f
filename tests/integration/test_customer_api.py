"""Customers over real HTTP: ``customer`` answers only the token's account (meters, premises,
outages, DR events: each field checked against a second customer's data), ``optOut`` re-plans the
event (the operator sees the replacement), and every other DR/forecast field refuses a customer."""

from __future__ import annotations

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
