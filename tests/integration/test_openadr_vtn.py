"""The OpenADR 3 VTN over real HTTP against the real graph store, with raw httpx requests that follow
the 3.0.1 spec (openadr3-client needs Python >= 3.12; this venv is 3.11): a business-logic client
creates an event, VENs register, see only their own ven/resources and their share of the event,
report and opt out (the event is re-planned); an event made through GraphQL ``createDrEvent``
appears to the VENs; every refusal is a Problem (application/problem+json)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

F = "cigre-mv"
P = f"{F}-capacity"
SETPOINT = "DISPATCH_SETPOINT_RELATIVE"
PROGRAMS = "{ drPrograms { id resources { id loadId } } }"
CREATE = """mutation($s: DateTime!, $e: DateTime!) { createDrEvent(programId: "cigre-mv-capacity",
  feederId: "cigre-mv", start: $s, end: $e, targetKw: 20) { id } }"""


def _token(settings: Any, role: str, sub: str, account: str | None = None) -> str:
    from security.tokens import LocalSigningKey, mint_token

    return mint_token(LocalSigningKey(settings.data_dir), role=role, sub=sub, ttl_s=600,
                      issuer=settings.auth_issuer, audience=settings.auth_audience, customer_account=account)


def _h(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _event(start: datetime, kw: float, duration: str = "PT1H", program: str = P) -> dict[str, Any]:
    return {"objectType": "EVENT", "programID": program, "eventName": "test",
            "intervalPeriod": {"start": start.isoformat().replace("+00:00", "Z"), "duration": duration},
            "intervals": [{"id": 0, "payloads": [{"type": SETPOINT, "values": [-kw]}]}]}


def _problem(r: httpx.Response, status: int, *words: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json"), r.headers
    body = r.json()
    assert body["status"] == status and body["title"] and body["type"], body
    for w in words:
        assert w in body["detail"], (w, body)


def _report(event: dict[str, Any], names: list[str], payload: dict[str, Any]) -> dict[str, Any]:
    return {"objectType": "REPORT", "programID": event["programID"], "eventID": event["id"], "clientName": "ven",
            "reportName": "usage", "resources": [{"resourceName": n, "intervals": [{"id": 0, "payloads": [payload]}]}
                                                 for n in names]}


async def test_vtn_round_trip_scoping_and_refusals(http: httpx.AsyncClient, gql: Any, settings: Any) -> None:
    base = "/openadr3"
    bl = _h(_token(settings, "VTN_BL", "bl-client"))
    d = (datetime.now(UTC) + timedelta(days=3)).date()
    start = datetime(d.year, d.month, d.day, 12, tzinfo=UTC)

    r = await http.get(f"{base}/programs", headers=bl)
    assert r.status_code == 200, r.text
    prog = next(p for p in r.json() if p["id"] == P)
    assert prog["objectType"] == "PROGRAM" and prog["programName"] == P and prog["intervalPeriod"]["start"]

    # the business-logic client creates an event: the DR core dispatches it
    r = await http.post(f"{base}/events", json=_event(start, 50.0), headers=bl)
    assert r.status_code == 201, r.text
    ev = r.json()
    assert ev["objectType"] == "EVENT" and ev["programID"] == P and ev["intervalPeriod"]["duration"] == "PT1H"
    dispatched = ev["targets"][0]["values"]
    assert dispatched and ev["intervals"][0]["payloads"][1] == {"type": SETPOINT, "values": [-50.0]}

    res = next(p for p in (await gql(PROGRAMS))["data"]["drPrograms"] if p["id"] == P)["resources"]
    load_of = {x["id"]: x["loadId"] for x in res}
    mine, other = dispatched[0], next(x["id"] for x in res if x["id"] not in dispatched)
    acct_a, acct_b = f"acct:{F}/{load_of[mine]}/0", f"acct:{F}/{load_of[other]}/0"
    ven_a = _h(_token(settings, "VEN", "ven-client-a", acct_a))
    ven_b = _h(_token(settings, "VEN", "ven-client-b", acct_b))

    # registration: resources need a ven; one ven per account
    _problem(await http.get(f"{base}/resources", headers=ven_a), 404, "POST /vens")
    r = await http.post(f"{base}/vens", json={"objectType": "VEN", "venName": "ven-a"}, headers=ven_a)
    assert r.status_code == 201, r.text
    a = r.json()
    assert a["objectType"] == "VEN" and a["venName"] == "ven-a" and a["id"]
    _problem(await http.post(f"{base}/vens", json={"venName": "ven-a2"}, headers=ven_a), 409, "already")
    _problem(await http.post(f"{base}/vens", json={"venName": "ven-a"}, headers=ven_b), 409, "taken")
    r = await http.post(f"{base}/vens", json={"objectType": "VEN", "venName": "ven-b"}, headers=ven_b)
    assert r.status_code == 201, r.text
    b = r.json()

    # a VEN sees only its own ven and resources; another VEN's ids answer as absent
    assert [v["id"] for v in (await http.get(f"{base}/vens", headers=ven_a)).json()] == [a["id"]]
    assert {v["id"] for v in (await http.get(f"{base}/vens", headers=bl)).json()} >= {a["id"], b["id"]}
    _problem(await http.get(f"{base}/vens/{b['id']}", headers=ven_a), 404, "not found")
    _problem(await http.get(f"{base}/vens/{b['id']}/resources", headers=ven_a), 404)
    r = await http.get(f"{base}/resources", headers=ven_a)
    assert [x["resourceName"] for x in r.json()] == [mine] and r.json()[0]["venID"] == a["id"]
    assert r.json()[0]["objectType"] == "RESOURCE"

    # the event as each VEN sees it: its own share only
    got = next(e for e in (await http.get(f"{base}/events", headers=ven_a)).json() if e["id"] == ev["id"])
    assert got["targets"] == [{"type": "RESOURCE_NAME", "values": [mine]}]
    share = -got["intervals"][0]["payloads"][1]["values"][0]
    assert share > 0  # its resource's dispatched kW
    got_b = (await http.get(f"{base}/events/{ev['id']}", headers=ven_b)).json()
    assert got_b["targets"] == [{"type": "RESOURCE_NAME", "values": []}]

    # an event made through GraphQL appears to the VENs (one source of truth: the DrEvent records)
    s2 = start + timedelta(hours=3)
    r = await gql(CREATE, {"s": s2.isoformat(), "e": (s2 + timedelta(hours=1)).isoformat()}, role="OPERATOR")
    assert "errors" not in r, r
    gql_id = r["data"]["createDrEvent"]["id"]
    assert gql_id in {e["id"] for e in (await http.get(f"{base}/events", headers=ven_a)).json()}
    assert gql_id in {e["id"] for e in (await http.get(f"{base}/events?programID={P}", headers=bl)).json()}

    # reports: a VEN reports its own resources; others' are refused; reports are private to their VEN
    usage = {"type": "USAGE", "values": [12.5]}
    r = await http.post(f"{base}/reports", json=_report(ev, [mine], usage), headers=ven_a)
    assert r.status_code == 201, r.text
    rep = r.json()
    assert rep["objectType"] == "REPORT" and rep["eventID"] == ev["id"] and rep["id"]
    _problem(await http.post(f"{base}/reports", json=_report(ev, [mine], usage), headers=ven_b), 403, "not this VEN")
    assert rep["id"] not in {x["id"] for x in (await http.get(f"{base}/reports", headers=ven_b)).json()}
    assert rep["id"] in {x["id"] for x in (await http.get(f"{base}/reports?eventID={ev['id']}", headers=bl)).json()}

    # opting out (a report with OPT_OUT [true]) re-plans the event without the resource
    r = await http.post(f"{base}/reports", json=_report(ev, [mine], {"type": "OPT_OUT", "values": [True]}),
                        headers=ven_a)
    assert r.status_code == 201, r.text
    after = (await http.get(f"{base}/events/{ev['id']}", headers=bl)).json()
    assert mine not in after["targets"][0]["values"]
    _problem(await http.post(f"{base}/reports", json=_report(ev, [mine], {"type": "OPT_OUT", "values": [True]}),
                             headers=ven_a), 400, "rule=")

    # subscriptions are stored per client
    sub = {"objectType": "SUBSCRIPTION", "clientName": "ven-a", "programID": P,
           "objectOperations": [{"objects": ["EVENT"], "operations": ["POST"], "callbackUrl": "http://127.0.0.1:9/cb"}]}
    r = await http.post(f"{base}/subscriptions", json=sub, headers=ven_a)
    assert r.status_code == 201, r.text
    assert [x["id"] for x in (await http.get(f"{base}/subscriptions", headers=ven_a)).json()] == [r.json()["id"]]
    assert (await http.get(f"{base}/subscriptions", headers=ven_b)).json() == []

    # refusals, each a Problem naming the fix
    _problem(await http.get(f"{base}/events"), 401, "bearer token")
    _problem(await http.get(f"{base}/events", headers=_h("not-a-token")), 401)
    _problem(await http.get(f"{base}/events", headers=_h(_token(settings, "VIEWER", "viewer"))), 403, "VEN")
    _problem(await http.get(f"{base}/events", headers=_h(_token(settings, "VEN", "ven-x"))), 403, "customer_account")
    _problem(await http.post(f"{base}/events", json=_event(start, 5.0), headers=ven_a), 403, "VTN_BL")
    _problem(await http.delete(f"{base}/events/{ev['id']}", headers=ven_a), 403, "VTN_BL")
    _problem(await http.post(f"{base}/vens", json={"venName": "bl"}, headers=bl), 403)
    s3 = start + timedelta(hours=6)
    for body, words in (
        ({**_event(s3, 5.0), "intervalPeriod": None}, ("intervalPeriod",)),
        (_event(s3, 5.0, duration="2 hours"), ("ISO 8601",)),
        (_event(s3, -5.0), ("negative",)),
        ({**_event(s3, 5.0), "objectType": "PROGRAM"}, ("objectType",)),
        ({**_event(s3, 5.0), "intervals": [{"id": 0, "payloads": [{"type": "SIMPLE", "values": [1]}]}]}, (SETPOINT,)),
        ({**_event(s3, 5.0), "intervalPeriod": {"start": "tomorrow", "duration": "PT1H"}}, ("RFC 3339",)),
        (_event(datetime.now(UTC) - timedelta(hours=2), 5.0), ("rule=IN_THE_PAST",)),
        ([1, 2], ("JSON EVENT object",)),
    ):
        _problem(await http.post(f"{base}/events", json=body, headers=bl), 400, *words)
    _problem(await http.post(f"{base}/events", content=b"{not json", headers=bl), 400, "not valid JSON")
    _problem(await http.post(f"{base}/events", json=_event(s3, 5.0, program="nope"), headers=bl), 404, "nope")
    _problem(await http.post(f"{base}/reports", json={"objectType": "REPORT", "programID": P}, headers=ven_a),
             400, "eventID")
    _problem(await http.post(f"{base}/reports", json={**_report(ev, [mine], usage), "eventID": "ev-999999"},
                             headers=ven_a), 404)
    _problem(await http.post(f"{base}/subscriptions", json={"clientName": "x", "objectOperations": "all"},
                             headers=ven_a), 400, "objectOperations")
    _problem(await http.get(f"{base}/events?limit=0", headers=bl), 400, "limit")

    # the business-logic client cancels; VENs see the event shed level go to 0
    r = await http.delete(f"{base}/events/{ev['id']}", headers=bl)
    assert r.status_code == 200, r.text
    got = (await http.get(f"{base}/events/{ev['id']}", headers=ven_b)).json()
    assert got["priority"] == 0 and got["intervals"][0]["payloads"][0] == {"type": "SIMPLE", "values": [0]}
    assert (await http.delete(f"{base}/events/{gql_id}", headers=bl)).status_code == 200


async def test_simulated_vens_shed_in_the_field_and_report(http: httpx.AsyncClient, settings: Any, field_sim: Any,
                                                           gql: Any) -> None:
    """Simulated VENs (protocols/ven_sim.py) on the real VTN and field simulator: at the event's
    start they shed their share (seeded partial compliance), the simulator's loads carry it, they
    report once, and the reduction ends with the event's cancellation."""
    import random

    from protocols.ven_sim import SimulatedVen, poll_all

    base = "/openadr3"
    bl = _h(_token(settings, "VTN_BL", "bl-client"))
    d = (datetime.now(UTC) + timedelta(days=4)).date()
    start = datetime(d.year, d.month, d.day, 12, tzinfo=UTC)
    r = await http.post(f"{base}/events", json=_event(start, 1e5), headers=bl)  # all resources (a shortfall)
    assert r.status_code == 201, r.text
    ev = r.json()
    names = ev["targets"][0]["values"]
    accounts = sorted({f"acct:{F}/{n.partition('/')[2]}/0" for n in names})
    clock = [start - timedelta(minutes=5)]
    vens = [SimulatedVen(http, _token(settings, "VEN", f"sim-{a}", a), f"sim-{a}", field_sim, seed=11,
                         participation=0.7, delivery=(0.6, 1.0), now=lambda: clock[0]) for a in accounts]
    try:
        assert all(not x for x in await poll_all(vens))  # before the start: nothing shed
        clock[0] = start + timedelta(minutes=1)
        shed = await poll_all(vens)
        total = sum(s.get(ev["id"], 0.0) for s in shed)
        acting = [v for v, s in zip(vens, shed, strict=True) if s]
        assert 0 < total and 0 < len(acting) < len(vens)  # partial compliance: some decline
        # the same seed decides the same way
        again = [SimulatedVen(http, "x", v.ven_name, None, seed=11, participation=0.7) for v in vens]
        assert [a._fraction(ev["id"]) > 0 for a in again] == [bool(s) for s in shed]
        # the field simulator's loads carry the reduction
        fs = field_sim._fs(F)
        shed_by_load = {n.partition("/")[2]: kw for v in acting for n, kw in v.state.acting[ev["id"]].items()}
        assert fs.load_reduction_kw == shed_by_load
        load, kw = next(iter(shed_by_load.items()))
        now = datetime.now(UTC)
        field_sim._rng = random.Random(3)
        with_dr, _ = field_sim._profile_inputs(fs, now)
        saved = fs.load_reduction_kw.pop(load)
        field_sim._rng = random.Random(3)
        without, _ = field_sim._profile_inputs(fs, now)
        fs.load_reduction_kw[load] = saved
        assert abs((without[load] - with_dr[load]) * 1000 - min(kw, without[load] * 1000)) < 1e-6
        # each acting VEN reported once, with its kW per resource
        await poll_all(vens)
        reps = [x for x in (await http.get(f"{base}/reports?eventID={ev['id']}", headers=bl)).json()]
        assert len(reps) == len(acting)
        assert sum(p["values"][0] for x in reps for res in x["resources"] for iv in res["intervals"]
                   for p in iv["payloads"]) == pytest.approx(total)
    finally:
        assert (await http.delete(f"{base}/events/{ev['id']}", headers=bl)).status_code == 200
        await poll_all(vens)
    assert fs.load_reduction_kw == {}


async def test_client_credentials(http: httpx.AsyncClient, settings: Any, gql: Any) -> None:
    """Business logic registers a VEN client; the VEN fetches a token with its client credentials
    (the URL from /auth/server) and acts as that account's VEN; wrong credentials are refused."""
    base = "/openadr3"
    bl = _h(_token(settings, "VTN_BL", "bl-client"))
    # case33bw: the other tests register VENs for cigre-mv's accounts (one ven per account)
    res = next(p for p in (await gql(PROGRAMS))["data"]["drPrograms"] if p["id"] == "case33bw-capacity")["resources"]
    account = f"acct:case33bw/{res[-1]['loadId']}/0"
    r = await http.post(f"{base}/auth/clients", json={"clientName": "meter-gw", "role": "VEN",
                                                      "customerAccount": account}, headers=bl)
    assert r.status_code == 201, r.text
    cred = r.json()
    url = (await http.get(f"{base}/auth/server")).json()["tokenURL"]
    assert url.endswith("/openadr3/auth/token")
    form = {"grant_type": "client_credentials", "client_id": cred["clientID"], "client_secret": cred["clientSecret"]}
    r = await http.post(url, data=form)
    assert r.status_code == 200, r.text
    tok = r.json()
    assert tok["token_type"] == "Bearer" and tok["expires_in"] == 3600
    ven = _h(tok["access_token"])
    r = await http.post(f"{base}/vens", json={"venName": "meter-gw"}, headers=ven)
    assert r.status_code == 201, r.text
    assert [x["resourceName"] for x in (await http.get(f"{base}/resources", headers=ven)).json()] == [res[-1]["id"]]
    # HTTP Basic works too
    import base64

    basic = base64.b64encode(f"{cred['clientID']}:{cred['clientSecret']}".encode()).decode()
    r = await http.post(url, data={"grant_type": "client_credentials"}, headers={"Authorization": f"Basic {basic}"})
    assert r.status_code == 200, r.text

    # refusals
    for data, status, error in (({**form, "client_secret": "wrong"}, 401, "invalid_client"),
                                ({**form, "client_id": "oadr-nope"}, 401, "invalid_client"),
                                ({**form, "grant_type": "password"}, 400, "unsupported_grant_type"),
                                ({"grant_type": "client_credentials"}, 401, "invalid_client")):
        r = await http.post(url, data=data)
        assert r.status_code == status and r.json()["error"] == error, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
    _problem(await http.post(f"{base}/auth/clients", json={"clientName": "x", "role": "VEN", "customerAccount": "a"},
                             headers=ven), 403, "VTN_BL")
    _problem(await http.post(f"{base}/auth/clients", json={"clientName": "x", "role": "VEN"}, headers=bl),
             400, "customerAccount")
    _problem(await http.post(f"{base}/auth/clients", json={"clientName": "x", "role": "ADMIN"}, headers=bl),
             400, "role")
