"""The Starlette application factory.

The lifespan owns the real components (graph store, Ray, the feeder fleet) through
:class:`server.runtime.Runtime`, hands them to resolvers through the GraphQL context, and closes
them on shutdown. Tests may pass a runtime they started themselves; the app then leaves it running.

Routes: ``GET /healthz`` (process alive), ``GET /readyz`` (200 only when the store and every feeder
actor answer), ``POST /graphql`` and WebSocket ``/graphql`` (``graphql-transport-ws`` only),
``GET /metrics``, ``GET /reports/<id>.<ext>`` (a finished report's file, READ_REPORTS).
With GraphiQL on (``DMS_GRAPHIQL``, the demo), ``GET /graphql`` from a browser is
the IDE page and ``GET /static/graphiql/*`` its assets, vendored in ``server/static/graphiql/`` so
the page needs no internet and no inline script.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.exceptions import ConnectionRejectionError
from strawberry.http.base import HTTPException  # re-exported from cross_web
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from security.audit import AuditLog
from security.limits import RateLimiter
from server import openadr3
from server.auth import AuditThrottle, Authenticator, bearer_token
from server.feeds import outages_geojson
from server.metrics import refresh_from_runtime, render
from server.middleware import BodySizeLimit, CorrelationId, GraphQLAuth, InternalErrors, SecurityHeaders
from server.reports.http import report_file
from server.runtime import Runtime, start_runtime
from server.schema import build_schema
from server.settings import Settings

log = logging.getLogger(__name__)


class Services:
    """What resolvers may use; filled by the lifespan."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.auth: Authenticator | None = None
        self.audit: AuditLog | None = None
        self.audit_throttle: AuditThrottle | None = None  # refusals (logins, denials), aggregated

    @property
    def grid(self) -> Any:
        if self.runtime is None:
            raise RuntimeError("the server is still starting")
        return self.runtime.grid

    @property
    def control(self) -> Any:
        if self.runtime is None or self.runtime.control is None:
            raise RuntimeError("the server is still starting")
        return self.runtime.control

    @property
    def hub(self) -> Any:
        if self.runtime is None or self.runtime.hub is None:
            raise RuntimeError("the server is still starting")
        return self.runtime.hub

    @property
    def settings(self) -> Any:
        if self.runtime is None:
            raise RuntimeError("the server is still starting")
        return self.runtime.settings


GRAPHIQL_DIR = Path(__file__).parent / "static" / "graphiql"


class DmsGraphQL(GraphQL):
    def __init__(self, services: Services, settings: Settings) -> None:
        super().__init__(
            build_schema(settings),
            graphql_ide="graphiql" if settings.graphiql else None,
            allow_queries_via_get=False,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
        )
        self.services = services
        self.introspection = settings.introspection

    async def render_graphql_ide(self, request: Request) -> Response:
        """The GraphiQL page with every asset served by this server (``/static/graphiql/``), not
        strawberry's page, which loads React and GraphiQL from a CDN and runs an inline script."""
        return HTMLResponse((GRAPHIQL_DIR / "index.html").read_text(encoding="utf-8"))

    def decode_json(self, data: str | bytes) -> object:
        """``json.loads`` with every refusal as ``JSONDecodeError``, which strawberry answers with 400
        over HTTP and with close code 4400 over WebSocket.

        Invalid UTF-8 (``UnicodeDecodeError``) and nesting beyond the interpreter's recursion limit
        (``RecursionError``, 5,000 ``[``) escaped as 500s over HTTP and dropped the socket without a
        close frame."""
        try:
            return json.loads(data)
        except json.JSONDecodeError:
            raise
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise json.JSONDecodeError(f"not valid JSON ({type(exc).__name__})", "", 0) from None

    async def run(self, request: Any, *args: Any, **kwargs: Any) -> Any:
        """Strawberry's own HTTP refusals (bad JSON, batching, methods) in the API's error shape."""
        try:
            return await super().run(request, *args, **kwargs)
        except HTTPException as exc:
            if isinstance(request, WebSocket):
                raise
            code = _HTTP_CODES.get(exc.status_code, "BAD_INPUT")
            return JSONResponse({"errors": [{"message": exc.reason, "extensions": {"code": code}}]},
                                status_code=exc.status_code)

    def parse_json(self, data: str | bytes) -> Any:
        """Refuse JSON that is not an object (``0``, ``"x"``, arrays: no batching) with 400.

        Strawberry 0.341 answers such bodies with a 500; found by the fuzzing test."""
        parsed = super().parse_json(data)
        if not isinstance(parsed, dict):
            raise HTTPException(400, "request body must be a JSON object with a 'query' string")
        for key, kind in (("query", str), ("operationName", str), ("variables", dict), ("extensions", dict)):
            if parsed.get(key) is not None and not isinstance(parsed[key], kind):
                raise HTTPException(400, f"'{key}' in the request body must be a {kind.__name__} or null")
        return parsed

    async def get_context(self, request: Request | WebSocket, response: Any) -> dict[str, Any]:
        state = request.scope.get("state", {})
        return {
            "request": request,
            "response": response,
            "services": self.services,
            "principal": state.get("principal"),
            "auth_error": state.get("auth_error"),
            "source": _client(request),
            "introspection": self.introspection,  # server.errors keeps "Did you mean" only then
        }

    async def on_ws_connect(self, context: dict[str, Any]) -> Any:
        """Authenticate a WebSocket in ``connection_init``: ``{"authorization": "Bearer <token>"}``.

        A refused token closes the socket (4403); an accepted one is closed (4401) when it expires,
        which ends every subscription on it. Without any token the connection is anonymous: only the
        public ``outageFeed`` answers on it (security.roles.ANONYMOUS_PERMISSIONS), every other
        subscription is refused with UNAUTHENTICATED.
        """
        auth = self.services.auth
        params = context.get("connection_params") or {}
        raw = (params.get("authorization") or params.get("Authorization")) if isinstance(params, dict) else None
        if auth is None:
            raise ConnectionRejectionError({"code": "STARTING"})
        if raw is None:
            context["principal"] = None
            return {"sub": None}
        token = bearer_token(raw) if isinstance(raw, str) else ""
        result = await auth.authenticate(token, source=context["source"], channel="websocket")
        if result.principal is None:
            raise ConnectionRejectionError({"code": "UNAUTHENTICATED", "message": "invalid or expired token"})
        context["principal"] = result.principal
        ws: WebSocket = context["request"]
        delay = max(0.0, result.principal.expires_at.timestamp() - time.time())
        context["expiry_task"] = asyncio.create_task(_close_at_expiry(ws, delay))
        return {"sub": result.principal.sub}


_HTTP_CODES = {404: "NOT_FOUND", 405: "METHOD_NOT_ALLOWED", 413: "PAYLOAD_TOO_LARGE",
               415: "UNSUPPORTED_MEDIA_TYPE"}


async def _close_at_expiry(ws: WebSocket, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    with contextlib.suppress(Exception):
        await ws.close(code=4401, reason="token expired")


def _client(request: Request | WebSocket) -> str:
    return request.client.host if request.client else "unknown"


def create_app(settings: Settings, runtime: Runtime | None = None, *, demo_feeders: bool = False) -> Starlette:
    services = Services()
    graphql = DmsGraphQL(services, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        owned = runtime is None
        rt = runtime if runtime is not None else await start_runtime(settings, demo_feeders=demo_feeders)
        services.runtime = rt
        services.audit = rt.audit
        services.audit_throttle = AuditThrottle(rt.audit)
        services.auth = Authenticator.from_settings(settings, services.audit_throttle)
        try:
            yield
        finally:
            await services.auth.aclose()  # also writes the throttle's pending summaries
            services.auth = None
            services.audit_throttle = None
            services.runtime = None
            if owned:
                await rt.stop()

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        rt = services.runtime
        if rt is None:
            return JSONResponse({"status": "starting"}, status_code=503)
        checks: dict[str, Any] = {}
        ok = True
        try:
            await asyncio.wait_for(rt.store.ping(), timeout=5)
            checks["store"] = "ok"
        except Exception as exc:
            ok = False
            checks["store"] = f"unavailable: {type(exc).__name__}"
        feeders = {}
        for h in await rt.fleet.health():
            feeders[h.feeder_id] = "ok" if h.ok else "down"
            ok = ok and h.ok
        checks["feeders"] = feeders
        return JSONResponse({"status": "ready" if ok else "not ready", "checks": checks},
                            status_code=200 if ok else 503)

    async def metrics(request: Request) -> Response:
        await refresh_from_runtime(services.runtime)
        return Response(render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/feeds/outages.geojson", outages_geojson, methods=["GET"]),
        Route("/reports/{name}", report_file, methods=["GET"]),
        Route("/graphql", graphql, methods=["GET", "POST"]),
        WebSocketRoute("/graphql", graphql),
        openadr3.mount(services),  # the OpenADR 3 VTN under /openadr3/ (server/openadr3)
    ]
    if settings.graphiql:
        routes.append(Mount("/static/graphiql", StaticFiles(directory=GRAPHIQL_DIR), name="graphiql"))
    middleware = [
        Middleware(CorrelationId),
        Middleware(SecurityHeaders, hsts=bool(settings.tls_cert_file)),
        Middleware(InternalErrors),
    ]
    if settings.cors_origins:
        middleware.append(Middleware(CORSMiddleware, allow_origins=list(settings.cors_origins),
                                     allow_methods=["GET", "POST"],
                                     allow_headers=["authorization", "content-type", "x-request-id"]))
    middleware += [
        Middleware(BodySizeLimit, max_bytes=settings.max_body_bytes),
        Middleware(GraphQLAuth, authenticator=lambda: services.auth,
                   limiter=RateLimiter(settings.rate_limit_per_minute)),
    ]
    app = Starlette(routes=routes, lifespan=lifespan, middleware=middleware)
    app.state.services = services
    return app
