"""The Starlette application factory.

The lifespan owns the real components (graph store, Ray, the feeder fleet) through
:class:`server.runtime.Runtime`, hands them to resolvers through the GraphQL context, and closes
them on shutdown. Tests may pass a runtime they started themselves; the app then leaves it running.

Routes: ``GET /healthz`` (process alive), ``GET /readyz`` (200 only when the store and every feeder
actor answer), ``POST /graphql`` and WebSocket ``/graphql`` (``graphql-transport-ws`` only),
``GET /metrics``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.websockets import WebSocket
from strawberry.asgi import GraphQL
from strawberry.subscriptions import GRAPHQL_TRANSPORT_WS_PROTOCOL

from server.auth import Authenticator
from server.metrics import refresh_from_runtime, render
from server.runtime import Runtime, start_runtime
from server.schema import build_schema
from server.settings import Settings

log = logging.getLogger(__name__)


class Services:
    """What resolvers may use; filled by the lifespan."""

    def __init__(self) -> None:
        self.runtime: Runtime | None = None
        self.auth: Authenticator | None = None

    @property
    def grid(self) -> Any:
        if self.runtime is None:
            raise RuntimeError("the server is still starting")
        return self.runtime.grid


class DmsGraphQL(GraphQL):
    def __init__(self, services: Services, settings: Settings) -> None:
        super().__init__(
            build_schema(settings),
            graphql_ide="graphiql" if settings.graphiql else None,
            allow_queries_via_get=False,
            subscription_protocols=(GRAPHQL_TRANSPORT_WS_PROTOCOL,),
        )
        self.services = services

    async def get_context(self, request: Request | WebSocket, response: Any) -> dict[str, Any]:
        ctx: dict[str, Any] = {"request": request, "response": response, "services": self.services}
        auth = self.services.auth
        if auth is not None and isinstance(request, Request):
            ctx["principal"], ctx["auth_error"] = await auth.from_header(
                request.headers.get("authorization"), source=_client(request)
            )
        return ctx


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
        services.auth = Authenticator.from_settings(settings)
        try:
            yield
        finally:
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
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_route("/graphql", graphql, methods=["GET", "POST"])
    app.add_websocket_route("/graphql", graphql)
    app.state.services = services
    return app
