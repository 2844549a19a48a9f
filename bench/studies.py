"""End-to-end time of N-1 and hosting capacity per feeder through the API (issue #14).

Run:  .venv/bin/python bench/studies.py [--repeats 2] [--n1-max-elements 60]

Starts what ``dms demo`` starts (ArcadeDB over Bolt, local Ray, one actor per feeder, the server on
loopback, no field) with the demo feeders plus the synthetic 1,000-bus feeder, and for each feeder
times, over real HTTP with a PLANNER token: ``runContingency`` (every line and transformer, or the
first ``--n1-max-elements`` of them on big feeders) and ``hostingCapacity`` (every bus, load level
0.3, unity power factor), from the mutation until ``job`` answers DONE (polled every 0.1 s).

Baseline, measured in the same run on the same snapshot: the pure core called in this process
(no API, no Ray task, no store). The ratio API/core is what the job machinery costs (Ray task
start, pandapower import in a worker, result JSON, store writes, polling). Medians over
``--repeats``.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from bench.api import serve
from bench.scenarios import machine
from graph_schema.synthetic import synthetic_mv_feeder
from security.tokens import LocalSigningKey, mint_token
from server.app import create_app
from server.runtime import start_runtime
from server.settings import Settings
from server.study_service import studies_of

JOB_Q = "query J($id: ID!) { job(id: $id) { status error percent } }"


async def run_job(client: httpx.AsyncClient, headers: dict[str, str], mutation: str, field: str,
                  variables: dict[str, Any]) -> float:
    t0 = time.perf_counter()
    r = (await client.post("/graphql", json={"query": mutation, "variables": variables}, headers=headers)).json()
    if "errors" in r:
        raise RuntimeError(r["errors"])
    job_id = r["data"][field]["id"]
    while True:
        j = (await client.post("/graphql", json={"query": JOB_Q, "variables": {"id": job_id}},
                               headers=headers)).json()["data"]["job"]
        if j["status"] in ("DONE", "FAILED", "CANCELLED"):
            if j["status"] != "DONE":
                raise RuntimeError(f"{field}: {j}")
            return time.perf_counter() - t0
        await asyncio.sleep(0.1)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--n1-max-elements", type=int, default=60, help="N-1 elements per feeder (big feeders)")
    ap.add_argument("--feeders", default="case33bw,cigre-mv,synthetic-1000")
    args = ap.parse_args()
    print("machine:", machine(), flush=True)
    wanted = args.feeders.split(",")
    with tempfile.TemporaryDirectory(prefix="dms-bench-studies-") as tmp:
        settings = Settings.from_env({}, data_dir=Path(tmp), neo4j_uri=None, rate_limit_per_minute=10_000_000)
        rt = await start_runtime(settings, demo_feeders=True)
        servers = []
        try:
            if "synthetic-1000" in wanted:
                await rt.grid.import_feeder(synthetic_mv_feeder(1000), replace=True)
            srv = await serve(create_app(settings, rt))
            servers.append(srv)
            token = mint_token(LocalSigningKey(settings.data_dir), role="PLANNER", sub="bench", ttl_s=7200,
                               issuer=settings.auth_issuer, audience=settings.auth_audience)
            headers = {"Authorization": f"Bearer {token}"}
            svc = studies_of(rt)
            rows = []
            async with httpx.AsyncClient(base_url=srv[2], timeout=600) as client:
                for fid in wanted:
                    feeder = await svc.live_base(fid)
                    elements = [ln.id for ln in feeder.lines if ln.in_service]
                    elements += [t.id for t in feeder.transformers if t.in_service]
                    elements = elements[: args.n1_max_elements]
                    n1_mut = ("mutation M($f: ID!, $e: [ID!]) { runContingency(feederId: $f, elementIds: $e) "
                              "{ id } }")
                    hc_mut = ("mutation M($f: ID!) { hostingCapacity(feederId: $f, loadLevel: 0.3, powerFactor: 1.0)"
                              " { id } }")
                    await run_job(client, headers, hc_mut, "hostingCapacity", {"f": "case33bw"})  # warm workers
                    api_n1, api_hc, core_n1, core_hc = [], [], [], []
                    for _ in range(args.repeats):
                        api_n1.append(await run_job(client, headers, n1_mut, "runContingency",
                                                    {"f": fid, "e": elements}))
                        api_hc.append(await run_job(client, headers, hc_mut, "hostingCapacity", {"f": fid}))
                        from actors.cores.contingency import run_contingency
                        from actors.cores.hosting import hosting_capacity

                        t0 = time.perf_counter()
                        await asyncio.to_thread(run_contingency, feeder, element_ids=elements)
                        core_n1.append(time.perf_counter() - t0)
                        t0 = time.perf_counter()
                        hc = await asyncio.to_thread(hosting_capacity, feeder, load_level=0.3, power_factor=1.0)
                        core_hc.append(time.perf_counter() - t0)
                    rows.append((fid, len(feeder.buses), len(elements), len(hc.buses),
                                 statistics.median(api_n1), statistics.median(core_n1),
                                 statistics.median(api_hc), statistics.median(core_hc)))
                    print(f"  {fid}: done", flush=True)
            print(f"\nmedians over {args.repeats} runs; API = mutation -> job DONE over HTTP (Ray task), "
                  "core = the pure core in this process (baseline)")
            print(f"{'feeder':<16}{'buses':>6}{'N-1 el.':>8}{'N-1 API s':>11}{'core s':>8}{'ratio':>7}"
                  f"{'HC buses':>9}{'HC API s':>10}{'core s':>8}{'ratio':>7}")
            for fid, nb, ne, nh, a1, c1, a2, c2 in rows:
                print(f"{fid:<16}{nb:>6}{ne:>8}{a1:>11.2f}{c1:>8.2f}{a1 / c1:>7.2f}{nh:>9}{a2:>10.2f}{c2:>8.2f}"
                      f"{a2 / c2:>7.2f}")
        finally:
            for server, task, _ in servers:
                server.should_exit = True
                await asyncio.wait_for(task, timeout=10)
            await rt.stop()


if __name__ == "__main__":
    asyncio.run(main())
