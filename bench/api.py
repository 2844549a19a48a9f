"""What security costs the API: a typical operator query with authentication and limits on vs off.

Run:  .venv/bin/python bench/api.py [--seconds 8] [--concurrency 8]

Both variants serve the same schema types from the same runtime (ArcadeDB over Bolt, local Ray, the
demo feeders' actors) over real HTTP on loopback:
- ``on``: the production app (``server.app.create_app``): bearer-token validation (ES256 signature,
  claims), per-identity rate limit, body-size limit, security headers, correlation ids, query depth /
  alias / token / field-count limits, error masking, metrics;
- ``off``: a bare Strawberry view of the same Query type with a fixed principal and no extension or
  middleware (built here only: the product has no switch that turns security off).
Rounds alternate between the two so machine noise hits both alike; each prints requests/s, median
and p99 latency, and the ratio on/off.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx
import strawberry
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route
from strawberry.asgi import GraphQL

from bench.powerflow import machine
from security.roles import Role
from security.tokens import LocalSigningKey, Principal, mint_token
from server.app import Services, create_app
from server.runtime import start_runtime
from server.schema import Query
from server.settings import Settings

QUERY = """query OperatorView { feeder(id: "case33bw") { id name
  switches { id kind isOpen normallyOpen }
  powerFlow { converged lossesMw minVmPu minVmBusId maxLineLoadingPercent } } }"""


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bare_app(runtime: Any) -> Starlette:
    services = Services()
    services.runtime = runtime
    principal = Principal(sub="bench", roles=frozenset({Role.OPERATOR}), feeders=None, token_id="bench",
                          expires_at=datetime.now(UTC) + timedelta(days=1))

    class View(GraphQL):
        async def get_context(self, request: Any, response: Any) -> dict[str, Any]:
            return {"request": request, "response": response, "services": services, "principal": principal,
                    "auth_error": None, "source": "127.0.0.1"}

    view = View(strawberry.Schema(query=Query), graphql_ide=None)
    return Starlette(routes=[Route("/graphql", view, methods=["POST"])])


async def serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on",
                                        access_log=False))
    task = asyncio.create_task(srv.serve())
    for _ in range(400):  # uvicorn offers no started event to wait on
        if srv.started:
            break
        await asyncio.sleep(0.05)
    return srv, task, f"http://127.0.0.1:{port}"


async def load(url: str, headers: dict[str, str], seconds: float, concurrency: int) -> tuple[int, list[float]]:
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=httpx.Limits(max_connections=concurrency)) as c:

        async def worker() -> None:
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                r = await c.post("/graphql", json={"query": QUERY}, headers=headers)
                latencies.append(time.perf_counter() - t0)
                if r.status_code != 200 or "errors" in r.json():
                    raise RuntimeError(f"request failed: {r.status_code} {r.text[:300]}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return len(latencies), latencies


def p99(xs: list[float]) -> float:
    return sorted(xs)[max(0, int(len(xs) * 0.99) - 1)]


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=8.0, help="per round and variant")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    print("machine:", machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="dms-bench-api-") as tmp:
        settings = Settings.from_env({}, data_dir=Path(tmp), neo4j_uri=None, rate_limit_per_minute=10_000_000)
        rt = await start_runtime(settings, demo_feeders=True)
        servers = []
        try:
            on = await serve(create_app(settings, rt))
            off = await serve(bare_app(rt))
            servers = [on, off]
            token = mint_token(LocalSigningKey(settings.data_dir), role="OPERATOR", sub="bench", ttl_s=3600,
                               issuer=settings.auth_issuer, audience=settings.auth_audience)
            variants = {"on": (on[2], {"Authorization": f"Bearer {token}"}), "off": (off[2], {})}
            for url, headers in variants.values():  # warm both
                await load(url, headers, 1.0, 2)
            results: dict[str, list[tuple[int, list[float]]]] = {"on": [], "off": []}
            for _ in range(args.rounds):
                for name, (url, headers) in variants.items():
                    results[name].append(await load(url, headers, args.seconds, args.concurrency))
            print(f"\n{QUERY.split('{')[0].strip()}: {args.rounds} rounds x {args.seconds:g} s per variant, "
                  f"{args.concurrency} concurrent clients")
            print(f"{'security':<10}{'req/s':>9}{'median ms':>11}{'p99 ms':>9}")
            summary = {}
            for name, rounds in results.items():
                count = sum(n for n, _ in rounds)
                lat = [x for _, xs in rounds for x in xs]
                rps = count / (args.seconds * args.rounds)
                summary[name] = (rps, statistics.median(lat) * 1000, p99(lat) * 1000)
                print(f"{name:<10}{rps:>9.1f}{summary[name][1]:>11.2f}{summary[name][2]:>9.2f}")
            (r_on, m_on, p_on), (r_off, m_off, p_off) = summary["on"], summary["off"]
            print(f"\nsecurity overhead: throughput {100 * (1 - r_on / r_off):+.1f} %, "
                  f"median latency x{m_on / m_off:.2f}, p99 x{p_on / p_off:.2f}")
        finally:
            for srv, task, _ in servers:
                srv.should_exit = True
                await asyncio.wait_for(task, timeout=10)
            await rt.stop()


if __name__ == "__main__":
    asyncio.run(main())
