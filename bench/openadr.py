"""The OpenADR 3 VTN under polling: 1,000 VENs asking ``GET /openadr3/events``, against ``/healthz``.

Run:  .venv/bin/python bench/openadr.py [--vens 1000] [--polls 3] [--concurrency 50]

One runtime (the graph store, local Ray, the demo feeders) and the production app over real HTTP on
loopback. Each VEN has its own token (role VEN, the customer account of one demo load, spread over
the demo feeders' accounts) and polls the events endpoint ``--polls`` times; at most
``--concurrency`` requests are in flight (a VTN sees VENs' polls spread over their interval, not
all at once). The baseline is the same number of requests to ``/healthz`` (no token, no store) in
the same run, alternating rounds, so the ratio is what the VTN's work costs: the token check, the
programme/resource/event reads from the graph store and the per-VEN narrowing.
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
import uvicorn

from bench.api import free_port, p99
from bench.powerflow import machine
from security.tokens import LocalSigningKey, mint_token
from server.app import create_app
from server.dr_service import DrService
from server.runtime import start_runtime
from server.settings import Settings


async def serve(app: Any) -> tuple[uvicorn.Server, asyncio.Task[None], str]:
    """uvicorn on loopback with a keep-alive longer than a round (the default 5 s let idle pooled
    connections close under the client: ReadError)."""
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on",
                                        access_log=False, timeout_keep_alive=120))
    task = asyncio.create_task(srv.serve())
    for _ in range(400):  # uvicorn offers no started event to wait on
        if srv.started:
            break
        await asyncio.sleep(0.05)
    return srv, task, f"http://127.0.0.1:{port}"


async def poll(url: str, path: str, tokens: list[str | None], polls: int, concurrency: int
               ) -> tuple[float, list[float]]:
    """Every token asks ``path`` ``polls`` times, ``concurrency`` at a time: (seconds, latencies)."""
    lat: list[float] = []
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as c:

        async def one(tok: str | None) -> None:
            headers = {"Authorization": f"Bearer {tok}"} if tok else {}
            async with sem:
                t0 = time.perf_counter()
                r = await c.get(path, headers=headers)
                lat.append(time.perf_counter() - t0)
            if r.status_code != 200:
                raise RuntimeError(f"{path}: {r.status_code} {r.text[:300]}")

        t0 = time.perf_counter()
        for _ in range(polls):
            await asyncio.gather(*(one(t) for t in tokens))
        return time.perf_counter() - t0, lat


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vens", type=int, default=1000)
    ap.add_argument("--polls", type=int, default=1, help="polls per VEN and round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=50)
    args = ap.parse_args()
    print("machine:", machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="dms-bench-openadr-") as tmp:
        settings = Settings.from_env({}, data_dir=Path(tmp), neo4j_uri=None, rate_limit_per_minute=10_000_000)
        rt = await start_runtime(settings, demo_feeders=True)
        srv = None
        try:
            app = create_app(settings, rt)
            srv = await serve(app)
            url = srv[2]
            dr = DrService.of(rt)
            progs = await dr.programs()
            day = (datetime.now(UTC) + timedelta(days=1)).date()
            start = datetime(day.year, day.month, day.day, 14, tzinfo=UTC)
            for prog, fid, _ in progs:  # one scheduled event per programme for the VENs to see
                await dr.create_event(prog.id, fid, start, start + timedelta(hours=1), 500.0, False, "bench")
            accounts = sorted({r.account for _, _, rs in progs for r in rs})
            key = LocalSigningKey(settings.data_dir)
            tokens: list[str | None] = [
                mint_token(key, role="VEN", sub=f"ven-{i}", ttl_s=3600, issuer=settings.auth_issuer,
                           audience=settings.auth_audience, customer_account=accounts[i % len(accounts)])
                for i in range(args.vens)]
            await poll(url, "/openadr3/events", tokens[:20], 1, 10)  # warm
            res: dict[str, list[tuple[float, list[float]]]] = {"events": [], "healthz": []}
            for _ in range(args.rounds):
                res["events"].append(await poll(url, "/openadr3/events", tokens, args.polls, args.concurrency))
                res["healthz"].append(await poll(url, "/healthz", [None] * args.vens, args.polls, args.concurrency))
                print(f"round {len(res['events'])}: events {res['events'][-1][0]:.1f} s, "
                      f"healthz {res['healthz'][-1][0]:.1f} s", flush=True)
            print(f"\n{args.vens} VENs ({len(accounts)} customer accounts, {len(progs)} programmes with an event), "
                  f"{args.polls} polls each per round, {args.rounds} rounds, {args.concurrency} in flight")
            print(f"{'endpoint':<22}{'req/s':>9}{'median ms':>11}{'p99 ms':>9}")
            out = {}
            for name, rounds in res.items():
                secs = sum(s for s, _ in rounds)
                lat = [x for _, xs in rounds for x in xs]
                out[name] = (len(lat) / secs, statistics.median(lat) * 1000, p99(lat) * 1000)
                label = "GET /openadr3/events" if name == "events" else "GET /healthz (base)"
                print(f"{label:<22}{out[name][0]:>9.1f}{out[name][1]:>11.2f}{out[name][2]:>9.2f}")
            (r_e, m_e, p_e), (r_h, m_h, p_h) = out["events"], out["healthz"]
            print(f"\nevents vs healthz: throughput x{r_e / r_h:.3f}, median latency x{m_e / m_h:.1f}, "
                  f"p99 x{p_e / p_h:.1f}; one poll of all {args.vens} VENs takes {args.vens / r_e:.1f} s")
        finally:
            if srv is not None:
                srv[0].should_exit = True
                await asyncio.wait_for(srv[1], timeout=10)
            await rt.stop()


if __name__ == "__main__":
    asyncio.run(main())
