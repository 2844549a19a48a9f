"""The security surface over real HTTP and WebSocket: tokens, roles, limits, headers, audit."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from tests.integration.conftest import free_port

FEEDERS = "{ feeders { id } }"


def codes(result: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in result.get("errors") or []]


def _b64(obj: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()


def forged(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"sig") -> str:
    return f"{_b64(header)}.{_b64(claims)}.{base64.urlsafe_b64encode(signature).rstrip(b'=').decode()}"


@pytest.fixture(scope="module")
def good_claims(settings) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": settings.auth_issuer, "aud": settings.auth_audience, "sub": "mallory", "iat": now,
            "nbf": now, "exp": now + 600, "roles": ["OPERATOR"], "jti": "x"}


# -- authentication ------------------------------------------------------------------------------


async def test_no_token_is_unauthenticated(gql):
    r = await gql(FEEDERS, role=None)
    assert codes(r) == ["UNAUTHENTICATED"]
    assert r.get("data") is None


@pytest.mark.parametrize("kind", ["malformed", "garbage_segments", "alg_none", "hs256_confusion",
                                  "wrong_signature", "not_bearer"])
async def test_bad_tokens_are_refused_without_detail(gql, http, settings, good_claims, kind):
    from security.tokens import LocalSigningKey

    pub = json.dumps(LocalSigningKey(settings.data_dir).public_jwks()).encode()
    tokens = {
        "malformed": "not-a-jwt",
        "garbage_segments": "a.b.c",
        "alg_none": forged({"alg": "none", "typ": "JWT"}, good_claims, b""),
        "hs256_confusion": _hs256(pub, good_claims),
        "wrong_signature": forged({"alg": "ES256", "typ": "JWT"}, good_claims, os.urandom(64)),
    }
    if kind == "not_bearer":
        resp = await http.post("/graphql", json={"query": FEEDERS}, headers={"Authorization": "Basic dXNlcjpw"})
        r = resp.json()
    else:
        r = await gql(FEEDERS, token=tokens[kind])
    assert codes(r) == ["UNAUTHENTICATED"]
    msg = r["errors"][0]["message"]
    assert "signature" not in msg and "alg" not in msg  # the reason stays in the server log


def _hs256(secret: bytes, claims: dict[str, Any]) -> str:
    import hashlib
    import hmac

    signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(claims)}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{base64.urlsafe_b64encode(sig).rstrip(b'=').decode()}"


async def test_expired_wrong_audience_and_future_tokens(gql, settings):
    from security.tokens import LocalSigningKey, mint_token

    key = LocalSigningKey(settings.data_dir)
    expired = mint_token(key, role="VIEWER", sub="v", ttl_s=60, issuer=settings.auth_issuer,
                         audience=settings.auth_audience, now=time.time() - 3600)
    not_yet = mint_token(key, role="VIEWER", sub="v", ttl_s=600, issuer=settings.auth_issuer,
                         audience=settings.auth_audience, now=time.time() + 3600)
    wrong_aud = mint_token(key, role="VIEWER", sub="v", issuer=settings.auth_issuer, audience="someone-else")
    wrong_iss = mint_token(key, role="VIEWER", sub="v", issuer="evil", audience=settings.auth_audience)
    for token in (expired, not_yet, wrong_aud, wrong_iss):
        assert codes(await gql(FEEDERS, token=token)) == ["UNAUTHENTICATED"]


async def test_login_failures_are_audited(gql, runtime):
    from security.audit import AuditLog

    await gql(FEEDERS, token="a.b.c")
    page = await AuditLog(runtime.store).page(newest_first=True, limit=20)
    assert any(e.action == "LOGIN_FAILED" and e.outcome == "REFUSED" for e in page)


# -- authorization -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("role", "allowed"),
    [("VIEWER", True), ("OPERATOR", True), ("ENGINEER", True), ("SECAUD", False), ("CUSTOMER", False),
     ("RBACMNT", False)],
)
async def test_grid_reads_follow_the_role_table(gql, role, allowed):
    r = await gql(FEEDERS, role=role)
    if allowed:
        assert "errors" not in r, r
    else:
        assert codes(r) == ["FORBIDDEN"]


async def test_feeder_scoped_token(gql, mint):
    token = mint("OPERATOR", sub="scoped", feeders=["cigre-mv"])
    listed = await gql(FEEDERS, token=token)
    assert [f["id"] for f in listed["data"]["feeders"]] == ["cigre-mv"]
    other = await gql('{ feeder(id: "case33bw") { id } }', token=token)
    assert codes(other) == ["FORBIDDEN"]
    own = await gql('{ feeder(id: "cigre-mv") { id } }', token=token)
    assert "errors" not in own


def test_every_root_field_names_its_permission(settings):
    from security.roles import assert_every_field_guarded
    from server.schema import build_schema

    assert assert_every_field_guarded(build_schema(settings)) == []


# -- hostile queries: refused before execution ---------------------------------------------------


async def test_deep_query_refused(gql):
    deep = "{ feeders { id " + "".join("... on Query { feeders { id " for _ in range(1)) + "} } } }"
    nested = "query { " + "feeders { id name " * 1 + "} }"
    assert "errors" not in await gql(nested)
    # Depth cannot grow through the schema's own types; introspection is the classic path and is off.
    intro = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { ofType { name } } } } } } } } } }"
    r = await gql(intro)
    assert codes(r) and r.get("data") is None
    del deep


async def test_aliases_over_limit_refused(gql, settings):
    q = "{ " + " ".join(f"a{i}: feeders {{ id }}" for i in range(settings.max_aliases + 5)) + " }"
    r = await gql(q)
    assert r.get("data") is None
    assert r["errors"]


async def test_aliases_through_fragments_refused(gql, settings):
    frag = "fragment F on Query { " + " ".join(f"a{i}: feeders {{ id }}" for i in range(settings.max_aliases)) + " }"
    q = "{ ...F ...F }\n" + frag
    r = await gql(q)
    assert r.get("data") is None


async def test_too_many_tokens_refused(gql, settings):
    q = "{ feeders { " + " ".join(["id"] * (settings.max_tokens + 10)) + " } }"
    r = await gql(q)
    assert r.get("data") is None and r["errors"]


async def test_introspection_off_by_default(gql):
    r = await gql("{ __schema { queryType { name } } }")
    assert r.get("data") is None
    assert r["errors"]


async def test_batched_request_refused(http, mint):
    token = mint("VIEWER")
    resp = await http.post("/graphql", content=json.dumps([{"query": FEEDERS}] * 50),
                           headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    assert resp.status_code == 400


async def test_query_over_get_refused(http, mint):
    token = mint("VIEWER")
    resp = await http.get("/graphql", params={"query": FEEDERS}, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code in (400, 405)


async def test_body_size_limit(http, settings, mint):
    token = mint("VIEWER")
    big = "{ feeders { id } }" + " " * (settings.max_body_bytes + 10)
    resp = await http.post("/graphql", json={"query": big}, headers={"Authorization": f"Bearer {token}"})
    assert resp.status_code == 413
    assert resp.json()["errors"][0]["extensions"]["code"] == "PAYLOAD_TOO_LARGE"


async def test_security_headers_and_correlation_id(http):
    resp = await http.get("/healthz")
    for h in ("x-content-type-options", "x-frame-options", "content-security-policy", "referrer-policy"):
        assert h in resp.headers
    assert resp.headers["x-request-id"]


async def test_internal_errors_are_masked_with_a_correlation_id():
    from graphql.error import GraphQLError

    from server.errors import map_error

    err = map_error(GraphQLError("boom", original_error=KeyError("secret-internal-detail")))
    assert "secret-internal-detail" not in err.message
    assert err.extensions["code"] == "INTERNAL" and err.extensions["correlationId"]


# -- rate limits ---------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def limited_server(settings, runtime, per_minute: int) -> AsyncIterator[int]:
    """A second server on the same runtime with a tight rate limit; yields its port."""
    from dataclasses import replace

    from server.app import create_app

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(create_app(replace(settings, rate_limit_per_minute=per_minute), runtime),
                                        host="127.0.0.1", port=port, log_config=None, lifespan="on",
                                        ws="websockets-sansio"))
    task = asyncio.create_task(srv.serve())
    try:
        for _ in range(200):
            if srv.started:
                break
            await asyncio.sleep(0.05)
        yield port
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, timeout=10)


async def test_rate_limit_per_identity(settings, runtime, mint):
    async with limited_server(settings, runtime, 5) as port:
        a, b = mint("VIEWER", sub="alice"), mint("VIEWER", sub="bob")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            statuses = []
            for _ in range(8):
                resp = await c.post("/graphql", json={"query": FEEDERS}, headers={"Authorization": f"Bearer {a}"})
                statuses.append(resp.status_code)
            assert statuses[:5] == [200] * 5 and 429 in statuses[5:]
            limited = await c.post("/graphql", json={"query": FEEDERS}, headers={"Authorization": f"Bearer {a}"})
            assert limited.json()["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
            assert int(limited.headers["retry-after"]) >= 1
            # another identity is not affected
            ok = await c.post("/graphql", json={"query": FEEDERS}, headers={"Authorization": f"Bearer {b}"})
            assert ok.status_code == 200


async def test_websocket_handshakes_are_rate_limited_per_client_address(settings, runtime):
    """The public feed needs no token, so sockets are limited before any token is seen."""
    async with limited_server(settings, runtime, 3) as port:
        url = f"ws://127.0.0.1:{port}/graphql"
        opened, refused = 0, []
        for _ in range(6):
            try:
                conn = await websockets.connect(url, subprotocols=["graphql-transport-ws"])
            except websockets.exceptions.InvalidStatus as exc:
                refused.append(exc.response)
                continue
            opened += 1
            await conn.close()
        assert opened == 3 and len(refused) == 3
        assert refused[0].status_code == 429 and int(refused[0].headers["retry-after"]) >= 1
        assert json.loads(refused[0].body)["errors"][0]["extensions"]["code"] == "RATE_LIMITED"
        # HTTP from the same address has its own bucket: the feed and health still answer
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as c:
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/feeds/outages.geojson")).status_code == 200


# -- WebSocket -----------------------------------------------------------------------------------


async def _ws_init(server, payload: dict[str, Any] | None) -> tuple[Any, dict[str, Any] | None]:
    ws = await websockets.connect(server.ws_url, subprotocols=["graphql-transport-ws"])
    await ws.send(json.dumps({"type": "connection_init", "payload": payload or {}}))
    try:
        msg = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
    except websockets.ConnectionClosed:
        msg = None
    return ws, msg


async def test_websocket_refuses_bad_tokens_and_serves_anonymous_callers_only_the_public_feed(server):
    ws, msg = await _ws_init(server, {"authorization": "Bearer a.b.c"})
    assert msg is None and ws.close_code == 4403  # a refused token never falls back to anonymous
    ws, msg = await _ws_init(server, {"authorization": "Basic dXNlcjpw"})
    assert msg is None and ws.close_code == 4403
    ws, msg = await _ws_init(server, None)
    assert msg == {"type": "connection_ack", "payload": {"sub": None}}
    try:
        await ws.send(json.dumps({"id": "1", "type": "subscribe",
                                  "payload": {"query": 'subscription { alarms(feederId: "case33bw") { seq } }'}}))
        reply = json.loads(await asyncio.wait_for(ws.recv(), timeout=10))
        assert reply["type"] == "error" or reply["payload"].get("errors"), reply
        assert "UNAUTHENTICATED" in json.dumps(reply)
        await ws.send(json.dumps({"id": "2", "type": "subscribe",
                                  "payload": {"query": "subscription { outageFeed { customersAffected } }"}}))
        with pytest.raises(TimeoutError):  # accepted: it waits for outages instead of erroring
            reply = json.loads(await asyncio.wait_for(ws.recv(), timeout=1.5))
            raise AssertionError(f"public feed refused: {reply}")
    finally:
        await ws.close()


async def test_websocket_closes_when_the_token_expires(server, mint):
    ws, msg = await _ws_init(server, {"authorization": f"Bearer {mint('VIEWER', ttl_s=2)}"})
    assert msg == {"type": "connection_ack", "payload": {"sub": "viewer"}}
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), timeout=10)
    assert ws.close_code == 4401


async def test_legacy_graphql_ws_protocol_is_not_served(server):
    with contextlib.suppress(Exception):
        ws = await websockets.connect(server.ws_url, subprotocols=["graphql-ws"])
        await ws.send(json.dumps({"type": "connection_init", "payload": {}}))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), timeout=5)


# -- fuzzing -------------------------------------------------------------------------------------

# JSON cannot carry NaN/inf: those go in through the raw-body fuzzing instead.
_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                    st.floats(allow_nan=False, allow_infinity=False),
                    st.text(max_size=40))


async def test_fuzzed_inputs_never_cause_a_server_error(server, mint):
    """Property-based fuzzing against the running server: no 5xx, no traceback, ever.

    Hypothesis drives a blocking client, so it runs in a worker thread while this test's event
    loop keeps serving (the server shares the loop).
    """
    token = mint("VIEWER")
    queries = st.sampled_from([
        "query Q($id: ID!) { feeder(id: $id) { id powerFlow { converged } } }",
        "query Q($id: ID!) { feeder(id: $id) { buses { id vmPu } } }",
    ])

    @hsettings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(feeder_id=_scalar, query=queries, junk=st.text(max_size=200))
    def fuzz(feeder_id: Any, query: str, junk: str) -> None:
        with httpx.Client(base_url=server.base_url, timeout=30) as c:
            r1 = c.post("/graphql", json={"query": query, "variables": {"id": feeder_id}},
                        headers={"Authorization": f"Bearer {token}"})
            r2 = c.post("/graphql", content=junk.encode("utf-8", "surrogatepass"),
                        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        for r in (r1, r2):
            assert r.status_code < 500, r.text
            assert "Traceback" not in r.text

    await asyncio.to_thread(fuzz)


# -- audit verify --------------------------------------------------------------------------------


async def test_audit_verify_finds_a_tampered_entry(settings, runtime, data_dir):

    audit = runtime.audit  # the server's keyed log: `dms audit verify` checks MACs with the same key
    entry = await audit.record("SETTING_CHANGE", actor="eve", roles=["ENGINEER"], target="fdir.mode",
                               source="127.0.0.1", outcome="OK", detail={"to": "AUTOMATIC"})
    env = {**os.environ, "DMS_NEO4J_URI": settings.neo4j_uri, "DMS_NEO4J_USER": settings.neo4j_user,
           "DMS_NEO4J_PASSWORD": settings.neo4j_password.reveal(), "DMS_NEO4J_DATABASE": settings.neo4j_database,
           "DMS_DATA_DIR": str(data_dir)}
    cmd = [sys.executable, "-m", "server.cli", "audit", "verify"]
    ok = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    async with runtime.store.driver.session(database=runtime.store.database) as s:
        await s.run("MATCH (a:AuditEntry {seq: $seq}) SET a.actor = 'mallory'", seq=entry.seq)
    try:
        bad = await asyncio.to_thread(subprocess.run, cmd, env=env, capture_output=True, text=True, timeout=120)
        assert bad.returncode != 0
        assert f"seq={entry.seq}" in bad.stderr
    finally:
        async with runtime.store.driver.session(database=runtime.store.database) as s:
            await s.run("MATCH (a:AuditEntry {seq: $seq}) SET a.actor = 'eve'", seq=entry.seq)


async def test_audit_log_query_is_for_security_auditors(gql, runtime):

    await runtime.audit.record("TAG_SET", actor="op1", roles=["OPERATOR"], target="case33bw/sw5",
                                         source="127.0.0.1", outcome="OK", detail={"kind": "HOLD"})
    q = "query A($after: String) { auditLog(first: 2, after: $after) { edges { cursor node { seq action actor "\
        "hash prevHash } } pageInfo { hasNextPage endCursor } } }"
    assert codes(await gql(q, role="OPERATOR")) == ["FORBIDDEN"]
    assert codes(await gql(q, role="SECADM")) == ["FORBIDDEN"]  # the auditor audits the administrator
    first = await gql(q, role="SECAUD")
    assert "errors" not in first, first
    conn = first["data"]["auditLog"]
    seqs = [e["node"]["seq"] for e in conn["edges"]]
    assert seqs == sorted(seqs, reverse=True) and len(seqs) == 2
    assert conn["pageInfo"]["hasNextPage"] is True
    nxt = await gql(q, {"after": conn["pageInfo"]["endCursor"]}, role="SECAUD")
    assert all(e["node"]["seq"] < seqs[-1] for e in nxt["data"]["auditLog"]["edges"])
    bad = await gql(q, {"after": "garbage!"}, role="SECAUD")
    assert codes(bad) == ["BAD_INPUT"]
