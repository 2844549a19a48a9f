"""ASGI middleware in front of everything: correlation ids, request limits, security headers.

Order (outermost first): correlation id -> security headers -> internal errors (masked 500) ->
body and WebSocket message size limit -> authentication and rate limit for ``/graphql``.
Each is a small pure-ASGI class so streaming responses and
WebSockets pass through untouched where a middleware does not apply.
"""

from __future__ import annotations

import json
import logging
import math
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from security.errors import RateLimited
from security.limits import RateLimiter
from server.auth import Authenticator, bearer_token
from server.logs import correlation_id
from server.metrics import METRICS

log = logging.getLogger("dms.http")

SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-store"),
    (b"cross-origin-opener-policy", b"same-origin"),
]
# The GraphiQL page (demo) loads its scripts and styles from this server (server/static/graphiql/):
# no inline script, no CDN. Its stylesheet embeds its fonts as data: URLs; its editors set inline
# styles. Everything else is JSON and needs nothing.
CSP_API = b"default-src 'none'; frame-ancestors 'none'"
CSP_IDE = (b"default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
           b"img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
           b"object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def _json_error(status: int, code: str, message: str, extra_headers: list[tuple[bytes, bytes]] = ()):  # type: ignore[assignment]
    body = json.dumps({"errors": [{"message": message, "extensions": {"code": code}}]}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               *extra_headers]

    async def respond(send: Send) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return respond


def client_host(scope: Scope) -> str:
    client = scope.get("client")
    return str(client[0]) if client else "unknown"


class CorrelationId:
    """Gives each request a correlation id (or keeps a sane incoming ``X-Request-Id``)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        incoming = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        cid = incoming if incoming and len(incoming) <= 64 and incoming.isprintable() else uuid.uuid4().hex[:16]
        token = correlation_id.set(cid)
        scope.setdefault("state", {})["correlation_id"] = cid
        route = scope.get("path", "")
        status_holder = {"status": 0}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", cid.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            if scope["type"] == "http":
                METRICS.http_requests.labels(_route_label(route), str(status_holder["status"])).inc()
            correlation_id.reset(token)


def _route_label(path: str) -> str:
    known = ("/graphql", "/healthz", "/readyz", "/metrics", "/feeds/outages.geojson")
    return path if path in known else "other"


class SecurityHeaders:
    def __init__(self, app: ASGIApp, *, hsts: bool) -> None:
        self.app = app
        self.hsts = hsts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {k.lower() for k, _ in headers}
                for k, v in SECURITY_HEADERS:
                    if k not in present:
                        headers.append((k, v))
                is_html = any(k.lower() == b"content-type" and v.startswith(b"text/html") for k, v in headers)
                headers.append((b"content-security-policy", CSP_IDE if is_html else CSP_API))
                if self.hsts:
                    headers.append((b"strict-transport-security", b"max-age=31536000; includeSubDomains"))
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


class _StartTracker:
    """``send`` that remembers whether the response has started (after that, no error response)."""

    def __init__(self, send: Send) -> None:
        self._send = send
        self.started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        await self._send(message)


class InternalErrors:
    """The last line behind the correlation id and the security headers: an exception that escapes
    the application becomes a masked ``500`` with the usual error shape (``INTERNAL`` and the
    request's correlation id), logged once in full. Without it Starlette's outermost handler answered
    plain text, without the request id or the security headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        tracked = _StartTracker(send)
        try:
            await self.app(scope, receive, tracked)
        except Exception:
            cid = str(scope.get("state", {}).get("correlation_id") or uuid.uuid4().hex[:16])
            log.error("internal error %s on %s %s", cid, scope.get("method"), scope.get("path"), exc_info=True)
            if tracked.started:
                return  # the response is under way: nothing more can be said to the client
            body = json.dumps({"errors": [{
                "message": f"internal error; quote correlation id {cid} to your administrator",
                "extensions": {"code": "INTERNAL", "correlationId": cid}}]}).encode()
            await send({"type": "http.response.start", "status": 500,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})


class BodySizeLimit:
    """Refuses request bodies over ``max_bytes`` with 413, before they are read in full, and WebSocket
    messages over ``max_bytes`` by closing the socket with 1009 (message too big, RFC 6455 7.4.1).

    The WebSocket check sees a message once the server has assembled it; the server's own frame limit
    (uvicorn's ``ws_max_size``) should be set to the same value so a huge message is not buffered.
    """

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = _json_error(413, "PAYLOAD_TOO_LARGE",
                              f"request body over {self.max_bytes} bytes; send a smaller query")
        if declared is not None:
            try:
                if int(declared) > self.max_bytes:
                    await too_big(send)
                    return
            except ValueError:
                await _json_error(400, "BAD_INPUT", "invalid Content-Length header")(send)
                return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge
            return message

        tracked = _StartTracker(send)
        try:
            await self.app(scope, limited_receive, tracked)
        except _BodyTooLarge:
            if not tracked.started:
                await too_big(send)


    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        closed = False

        def size(message: Message) -> int:
            text = message.get("text")
            if text is not None:
                # UTF-8 is at most 4 bytes a character: encode only when the count is in doubt.
                return len(text) if len(text) > self.max_bytes or 4 * len(text) <= self.max_bytes \
                    else len(text.encode("utf-8", "surrogatepass"))
            return len(message.get("bytes") or b"")

        async def limited_receive() -> Message:
            nonlocal closed
            message = await receive()
            if message["type"] == "websocket.receive" and size(message) > self.max_bytes:
                log.warning("WebSocket message over %d bytes from %s: closed with 1009", self.max_bytes,
                            client_host(scope))
                if not closed:
                    closed = True
                    await send({"type": "websocket.close", "code": 1009,
                                "reason": f"message over {self.max_bytes} bytes"})
                return {"type": "websocket.disconnect", "code": 1009}
            return message

        async def guarded_send(message: Message) -> None:
            if not closed:  # after our close frame the application's late frames go nowhere
                await send(message)

        await self.app(scope, limited_receive, guarded_send)


class _BodyTooLarge(Exception):
    pass


class GraphQLAuth:
    """Validates the bearer token of ``/graphql`` HTTP requests and applies the rate limit.

    The principal (or the refusal) is put in ``scope["state"]`` for the GraphQL context; the
    permission classes of the fields decide what it may do. Requests over the limit get ``429`` with
    ``RATE_LIMITED`` and ``Retry-After``; anonymous requests are limited per client address.
    """

    def __init__(self, app: ASGIApp, *, authenticator: Any, limiter: RateLimiter, path: str = "/graphql") -> None:
        self.app = app
        self.get_auth = authenticator  # callable returning the Authenticator (set in the lifespan)
        self.limiter = limiter
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("path") == self.path and scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http" or scope.get("path") != self.path:
            await self.app(scope, receive, send)
            return
        auth: Authenticator | None = self.get_auth()
        state = scope.setdefault("state", {})
        source = client_host(scope)
        if auth is None:
            await _json_error(503, "STARTING", "the server is starting; retry shortly")(send)
            return
        header = dict(scope.get("headers") or []).get(b"authorization")
        token = bearer_token(header.decode("latin-1") if header is not None else None)
        if scope.get("method") == "GET" and token is None:
            # GraphiQL page (when enabled) loads without a token; queries over GET are refused by the view.
            state["principal"], state["auth_error"] = None, None
            await self.app(scope, receive, send)
            return
        # Rate-limit before recording anything: a refused token is limited per client address, and
        # only the refusals the limiter lets through reach the (throttled) audit log.
        result = await auth.authenticate(token, source=source, record=False)
        key = f"sub:{result.principal.sub}" if result.principal else f"ip:{source}"
        try:
            self.limiter.check(key)
        except RateLimited as exc:
            retry = str(math.ceil(exc.retry_after_s)).encode()
            await _json_error(429, "RATE_LIMITED", exc.message, [(b"retry-after", retry)])(send)
            return
        if result.error is not None and token is not None:
            await auth.record_failure(result.error, source=source, channel="http")
        state["principal"], state["auth_error"] = result.principal, result.error
        state["auth_at"] = time.time()
        await self.app(scope, receive, send)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """WebSocket handshakes are limited per client address (the token only comes later, in
        ``connection_init``, and the public feed needs none): a client opening sockets in a loop
        gets ``429`` with ``RATE_LIMITED`` and ``Retry-After`` instead of a connection."""
        try:
            self.limiter.check(f"ws:{client_host(scope)}")
        except RateLimited as exc:
            retry = str(math.ceil(exc.retry_after_s)).encode()
            message = await receive()  # websocket.connect
            if message.get("type") != "websocket.connect":
                return
            if "websocket.http.response" in (scope.get("extensions") or {}):
                respond = _json_error(429, "RATE_LIMITED", exc.message, [(b"retry-after", retry)])

                async def as_ws_response(msg: Message) -> None:
                    await send({**msg, "type": "websocket." + msg["type"]})

                await respond(as_ws_response)
            else:  # the server cannot send a response body: a plain refusal (HTTP 403)
                await send({"type": "websocket.close", "code": 1008, "reason": "RATE_LIMITED"})
            return
        await self.app(scope, receive, send)
