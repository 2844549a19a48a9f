"""Power flow through the feeder actor versus pandapower called directly, and fleet start-up cost.

Run:  .venv/bin/python bench/powerflow.py [--repeats N] [--fleet-sizes 1,4,16]

For each network (case33bw, cigre-mv, and pandapower's 2,940-bus lv_schutterwald) it times a fresh
power flow requested through the real stack's actor (Ray call -> actor -> pandapower -> results
back to the caller) against ``pandapower.runpp`` on the same network in this process, interleaving
the two so machine noise hits both alike, and prints medians and the ratio. Then it starts fleets
of 1, 4 and 16 feeder actors and reports start-up time (until every actor has loaded its feeder
from the graph store and solved once) and the USS memory of each actor process.

Everything runs on this machine: a local ArcadeDB over Bolt in a temporary directory and a local
Ray; all of it is stopped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandapower as pp
import pandapower.networks as pn

from actors.feeder_actor import StoreAddress
from actors.fleet import Fleet, connect_ray, shutdown_ray
from graph_schema.arcadedb import EmbeddedArcadeDB
from graph_schema.importers import case33bw, cigre_mv, lv_schutterwald
from graph_schema.store import GraphStore


def machine() -> str:
    import ray

    from bench.machine import describe

    return describe(f"pandapower {pp.__version__}", f"ray {ray.__version__}")


NETWORKS = {
    "case33bw": (case33bw, pn.case33bw),
    "cigre-mv": (cigre_mv, lambda: pn.create_cigre_network_mv(with_der="pv_wind")),
    "schutterwald": (lv_schutterwald, pn.lv_schutterwald),
}


async def bench_power_flow(fleet: Fleet, repeats: int) -> list[tuple[str, int, float, float, float]]:
    rows = []
    for fid, (_, build_net) in NETWORKS.items():
        net = build_net()
        if fid == "case33bw":
            net.line.loc[net.line.index[32:], "in_service"] = True  # ties present but open in our model
            for idx in net.line.index[32:]:
                pp.create_switch(net, net.line.at[idx, "from_bus"], idx, et="l", closed=False)
        pp.runpp(net, numba=False)  # warm both sides once
        await fleet.call(fid, "power_flow", fresh=True)
        actor_s, direct_s = [], []
        for _ in range(repeats):
            t0 = time.perf_counter()
            result = await fleet.call(fid, "power_flow", fresh=True)
            actor_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            pp.runpp(net, numba=False)
            direct_s.append(time.perf_counter() - t0)
            assert result.converged, f"{fid} did not converge: {result.reason}"
        a, d = statistics.median(actor_s), statistics.median(direct_s)
        rows.append((fid, len(net.bus), a * 1000, d * 1000, a / d))
    return rows


async def bench_fleet(
    store_addr: StoreAddress, store: GraphStore, sizes: list[int]
) -> list[tuple[int, float, float, float]]:
    base = case33bw()
    needed = max(sizes)
    ids = [f"bench-{i:02d}" for i in range(needed)]
    for fid in ids:
        await store.save_feeder(replace(base, id=fid, name=f"bench copy {fid}"), replace=True)
    rows = []
    try:
        for n in sizes:
            fleet = Fleet(store_addr)
            t0 = time.perf_counter()
            await fleet.start(ids[:n])
            startup = time.perf_counter() - t0
            uss = await fleet.memory_uss_bytes()
            await fleet.stop()
            per = [v / 2**20 for v in uss.values()]
            rows.append((n, startup, statistics.median(per), max(per)))
            await asyncio.sleep(1.0)
    finally:
        for fid in ids:
            await store.delete_feeder(fid)
    return rows


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=21)
    ap.add_argument("--fleet-sizes", default="1,4,16")
    args = ap.parse_args()
    sizes = [int(x) for x in args.fleet_sizes.split(",")]
    print("machine:", machine(), flush=True)
    with tempfile.TemporaryDirectory(prefix="dms-bench-") as tmp:
        data = Path(tmp)
        db = EmbeddedArcadeDB(data)
        await db.start()
        started_ray = False
        try:
            store = await GraphStore.connect(db.uri, db.user, db.password, db.database)
            await store.ensure_schema()
            for fid, (build, _) in NETWORKS.items():
                t0 = time.perf_counter()
                await store.save_feeder(build(), replace=True)
                print(f"stored {fid} in {time.perf_counter() - t0:.2f} s", flush=True)
            started_ray = connect_ray(address=None, data_dir=data)
            addr = StoreAddress(db.uri, db.user, db.password, db.database)
            fleet = Fleet(addr)
            await fleet.start(NETWORKS)
            rows = await bench_power_flow(fleet, args.repeats)
            await fleet.stop()
            print(f"\npower flow, median of {args.repeats} (actor = Ray call + solve + results back)")
            print(f"{'feeder':<14}{'buses':>7}{'actor ms':>11}{'runpp ms':>11}{'ratio':>8}")
            for fid, nb, a, d, r in rows:
                print(f"{fid:<14}{nb:>7}{a:>11.1f}{d:>11.1f}{r:>8.2f}")
            frows = await bench_fleet(addr, store, sizes)
            print("\nfleet start-up (all actors loaded from the store and solved once) and USS per actor")
            print(f"{'actors':>7}{'start s':>10}{'USS MiB median':>16}{'USS MiB max':>13}")
            for n, s, med, mx in frows:
                print(f"{n:>7}{s:>10.2f}{med:>16.1f}{mx:>13.1f}")
            await store.close()
        finally:
            if started_ray:
                shutdown_ray()
            await db.stop()


if __name__ == "__main__":
    asyncio.run(main())
