"""OAuth2 client credentials for OpenADR 3 clients, from the head-end's local identity provider.

Why: a VEN is a machine; the spec has it fetch a bearer token with a client id and secret
(``GET /auth/server`` names the token URL, ``POST /auth/token`` with ``grant_type=client_credentials``).
The demo identity (security/tokens.py, ``dms token``) mints tokens for people; here the same signing
key mints them for registered clients, so the VTN checks one kind of token.

- ``POST /openadr3/auth/clients`` (a VTN_BL token): ``{"clientName", "role": "VEN"|"VTN_BL",
  "customerAccount"}`` (a VEN client needs its account) registers a client and answers its
  ``clientID`` and ``clientSecret`` once. Only the secret's SHA-256 is stored (``OadrClient``
  records): the secret is 32 random bytes, so a fast hash is enough. Audited ``OADR_CLIENT_CREATE``.
- ``POST /openadr3/auth/token``: form ``grant_type=client_credentials&client_id&client_secret``
  (or HTTP Basic) answers ``{access_token, token_type: "Bearer", expires_in}``: a token with the
  client's role, its account and the issuer/audience the validator expects. A wrong id or secret is
  401 ``invalid_client`` (RFC 6749 section 5.2, with the Problem fields too).
With an external identity provider (``DMS_AUTH_JWKS_URL``/``_FILE``) these answer 404: clients get
their tokens there.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from security.tokens import LocalSigningKey, mint_token
from server.openadr3 import objects as o
from server.openadr3.objects import Problem

TOKEN_TTL_S = 3600
ROLES = ("VEN", "VTN_BL")


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def routes(vtn: Any) -> list[Route]:
    services = vtn.services

    def settings() -> Any:
        rt = services.runtime
        if rt is None:
            raise Problem(503, "Service Unavailable", "the VTN is starting; retry shortly")
        s = rt.settings
        if s.auth_jwks_url or s.auth_jwks_file:
            raise Problem(404, "Not Found", "tokens come from the external identity provider "
                                            f"({s.auth_issuer}); ask it for client credentials")
        return s

    async def server(request: Request) -> Response:
        try:
            settings()
        except Problem as p:
            return JSONResponse(p.body(request.url.path), status_code=p.status, media_type="application/problem+json")
        return JSONResponse({"tokenURL": str(request.url_for("openadr3_token"))})

    async def create_client(request: Request, c: Any) -> Any:
        vtn._require_bl(c, "registering an OpenADR client")
        settings()
        b = o.obj(await vtn._body(request), "CLIENT")
        name = o.text(b, "clientName")
        role = b.get("role")
        if role not in ROLES:
            raise o.bad(f"'role' must be one of {', '.join(ROLES)}, not {role!r:.40}")
        account = o.text(b, "customerAccount", required=role == "VEN", max_len=256)
        if role == "VTN_BL" and account is not None:
            raise o.bad("a VTN_BL client acts for no customer account; leave customerAccount out")
        client_id, secret = f"oadr-{uuid.uuid4().hex[:16]}", secrets.token_urlsafe(32)
        await services.runtime.store.append_record("OadrClient", {
            "client_id": client_id, "secret_sha256": _digest(secret), "role": role, "account": account,
            "name": name, "by": c.principal.sub, "created": datetime.now(UTC).isoformat()})
        await vtn._audit(request, c, "OADR_CLIENT_CREATE", client_id, "OK",
                         {"role": role, "account": account, "name": name})
        return {"clientID": client_id, "clientSecret": secret, "clientName": name, "role": role,
                "customerAccount": account}

    async def token(request: Request) -> Response:
        def refuse(status: int, error: str, detail: str) -> Response:
            title = "Unauthorized" if status == 401 else "Bad Request"
            return JSONResponse({"error": error, "error_description": detail, "type": "about:blank", "title": title,
                                 "status": status, "detail": detail}, status_code=status,
                                media_type="application/problem+json")

        try:
            s = settings()
        except Problem as p:
            return JSONResponse(p.body(request.url.path), status_code=p.status, media_type="application/problem+json")
        form = {k: v[0] for k, v in parse_qs((await request.body()).decode("utf-8", "replace")).items()}
        client_id, secret = form.get("client_id"), form.get("client_secret")
        basic = request.headers.get("authorization", "")
        if basic.lower().startswith("basic "):
            try:
                client_id, _, secret = base64.b64decode(basic[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return refuse(401, "invalid_client", "the Basic authorization header is not base64 of id:secret")
        if form.get("grant_type") != "client_credentials":
            return refuse(400, "unsupported_grant_type", "grant_type must be client_credentials "
                                                         "(form-encoded, with client_id and client_secret)")
        if not client_id or not secret:
            return refuse(401, "invalid_client", "client_id and client_secret are required")
        rows = await services.runtime.store.list_records("OadrClient", where={"client_id": client_id}, limit=1)
        if not rows or not hmac.compare_digest(rows[0]["secret_sha256"], _digest(secret)):
            return refuse(401, "invalid_client", "unknown client or wrong secret")
        row = rows[0]
        access = mint_token(LocalSigningKey(s.data_dir), role=row["role"], sub=client_id, ttl_s=TOKEN_TTL_S,
                            issuer=s.auth_issuer, audience=s.auth_audience, customer_account=row.get("account"))
        return JSONResponse({"access_token": access, "token_type": "Bearer", "expires_in": TOKEN_TTL_S},
                            headers={"Cache-Control": "no-store"})

    return [
        Route("/auth/server", server, methods=["GET"]),
        Route("/auth/token", token, methods=["POST"], name="openadr3_token"),
        Route("/auth/clients", vtn.route(create_client, 201), methods=["POST"]),
    ]
