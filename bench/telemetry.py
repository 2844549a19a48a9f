"""Telemetry benchmark: field -> feeder actor -> event bus -> GraphQL WebSocket subscriber.

Run: ``.venv/bin/python bench/telemetry.py [--seconds 10]``. Everything is real and on this machine:
an embedded ArcadeDB, local Ray (feeder actors + the ``dms-events`` bus), the field simulator's
Modbus TCP and OPC UA (SignAndEncrypt) servers, the Starlette app under uvicorn, and WebSocket
clients speaking graphql-transport-ws. The simulator, the server and the clients share this process
(the actors and the bus are Ray worker processes), so the clients' CPU counts against the result.

It prints:
1. machine info;
2. points/s one feeder actor ingests (its own counter) from Modbus (all points on RTUs, polled
   every ``--scan-ms``) and from OPC UA (subscription, values forced as fast as the simulator
   serves them);
3. latency from a value forced in the simulator to a GraphQL ``measurements`` subscriber receiving
   it, median and p99, at 1,000 and 5,000 points/s with 1 and 100 subscribers, and the baseline:
   the same forced values seen by a raw OPC UA client subscription (no actor, no bus, no GraphQL),
   with the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MB, UA = "bench-mb", "bench-ua"


def machine_info() -> str:
    import psutil

    mem = psutil.virtual_memory().total / 2**30
    return (f"{platform.platform()} | Python {platform.python_version()} | {os.cpu_count()} CPUs "
            f"({platform.processor() or platform.machine()}) | {mem:.1f} GiB RAM")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


class Driver:
    """Forces unique values on the OPC UA analog points at ``rate`` points/s; remembers when."""

    def __init__(self, sim: Any, point_ids: list[str]) -> None:
        self.sim = sim
        self.points = point_ids
        self.sent: dict[tuple[str, float], float] = {}
        self.counter = 0

    async def run(self, rate: int, seconds: float) -> int:
        step_s = 0.01
        per_step = max(1, round(rate * step_s))
        loop = asyncio.get_running_loop()
        start = loop.time()
        n = 0
        while loop.time() - start < seconds:
            t_step = loop.time()
            for _ in range(per_step):
                pid = self.points[self.counter % len(self.points)]
                self.counter += 1
                value = 0.5 + self.counter * 1e-7
                self.sent[(pid, value)] = time.perf_counter()
                await self.sim.force_value(pid, value)
                n += 1
            await asyncio.sleep(max(0.0, step_s - (loop.time() - t_step)))
        return n


async def ws_subscriber(url: str, token: str, feeder: str, driver: Driver, lat: list[float],
                        ready: asyncio.Event, stop: asyncio.Event) -> None:
    import websockets

    async with websockets.connect(url, subprotocols=["graphql-transport-ws"], max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
        await ws.recv()
        q = f'subscription {{ measurements(feederId: "{feeder}") {{ seq points {{ pointId value }} }} }}'
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": q}}))
        ready.set()
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            now = time.perf_counter()
            msg = json.loads(raw)
            if msg.get("type") != "next":
                if msg.get("type") == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                continue
            for p in msg["payload"]["data"]["measurements"]["points"]:
                t0 = driver.sent.get((p["pointId"], p["value"]))
                if t0 is not None:
                    lat.append(now - t0)


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0, help="run time of each cell")
    ap.add_argument("--scan-ms", type=float, default=50.0, help="Modbus scan interval for the ingest test")
    args = ap.parse_args()

    import uvicorn

    from graph_schema.importers import case33bw
    from protocols.base import make_field_client
    from protocols.certs import ensure_pki
    from protocols.pointmap import Direction, ProtocolKind, generate_point_map
    from protocols.simulator import FieldSimulator
    from security.tokens import LocalSigningKey, mint_token
    from server.app import create_app
    from server.field import attach
    from server.runtime import start_runtime
    from server.settings import Settings
    from tests.integration.conftest import free_port

    print("machine:", machine_info(), flush=True)
    data_dir = Path(tempfile.mkdtemp(prefix="dms-bench-"))
    settings = Settings.from_env({}, data_dir=data_dir, neo4j_uri=None, scan_interval_s=args.scan_ms / 1000,
                                 rate_limit_per_minute=10_000_000)
    runtime = await start_runtime(settings, demo_feeders=False)
    base = case33bw()
    mb, ua = replace(base, id=MB), replace(base, id=UA)
    for f in (mb, ua):
        await runtime.grid.import_feeder(f, replace=True)
    pki = ensure_pki(data_dir)
    maps = {MB: generate_point_map(mb, modbus_port=0, split="modbus_only"),
            UA: generate_point_map(ua, opcua_endpoint=f"opc.tcp://127.0.0.1:0/dms/{UA}", split="opcua_only")}
    sim = FieldSimulator([mb, ua], point_maps=maps, certificate=pki.simulator,
                         trusted_client_certs=[pki.headend.cert_path], tick_s=0.1)
    app = create_app(settings, runtime)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on",
                                           ws="websockets-sansio"))
    serve = asyncio.create_task(server.serve())
    try:
        await sim.start()
        for _ in range(600):
            if server.started:
                break
            await asyncio.sleep(0.05)

        # -- ingest: Modbus (every value changes at every simulator tick) -----------------------
        sim.set_value_hook(lambda pid, v, now: v + (time.monotonic() % 1) * 1e-6 if isinstance(v, float) else v)
        await attach(runtime, settings, sim.point_maps[MB])
        await asyncio.sleep(2)
        a = (await runtime.fleet.call(MB, "field_status"))["ingested"]
        await asyncio.sleep(args.seconds)
        b = (await runtime.fleet.call(MB, "field_status"))["ingested"]
        n_mb = len(maps[MB].points_of(f"{MB}/rtu1", Direction.READ))
        print(f"ingest Modbus: {(b - a) / args.seconds:,.0f} points/s in one feeder actor "
              f"(5 RTUs, scan every {args.scan_ms:g} ms, {n_mb} points on rtu1)", flush=True)
        await runtime.fleet.detach_field(MB)
        sim.set_value_hook(None)

        # -- latency through the actor, the bus and GraphQL ---------------------------------------
        await attach(runtime, settings, sim.point_maps[UA])
        await asyncio.sleep(2)
        analogs = [p.point_id for p in maps[UA].points
                   if p.direction is Direction.READ and p.quantity in ("VM_PU", "I_KA", "P_MW", "Q_MVAR")]
        key = LocalSigningKey(data_dir)
        token = mint_token(key, role=["VIEWER"], sub="bench", ttl_s=3600, issuer=settings.auth_issuer,
                           audience=settings.auth_audience)
        url = f"ws://127.0.0.1:{port}/graphql"
        rows = []
        for rate in (1000, 5000):
            for subs in (1, 100):
                driver = Driver(sim, analogs)
                lat: list[float] = []
                stop = asyncio.Event()
                readies = [asyncio.Event() for _ in range(subs)]
                tasks = [asyncio.create_task(ws_subscriber(url, token, UA, driver, lat, r, stop)) for r in readies]
                await asyncio.gather(*(r.wait() for r in readies))
                await asyncio.sleep(1.0)
                a = (await runtime.fleet.call(UA, "field_status"))["ingested"]
                t0 = time.perf_counter()
                sent = await driver.run(rate, args.seconds)
                took = time.perf_counter() - t0
                b = (await runtime.fleet.call(UA, "field_status"))["ingested"]
                await asyncio.sleep(2.0)
                stop.set()
                await asyncio.gather(*tasks, return_exceptions=True)
                got = len(lat) / max(1, subs)
                rows.append((rate, subs, sent / took, (b - a) / took, statistics.median(lat) if lat else float("nan"),
                             pct(lat, 0.99), got / max(1, sent)))
                r = rows[-1]
                print(f"GraphQL  rate {rate:>5}/s offered {r[2]:>6,.0f}/s  subs {subs:>3}: actor ingest "
                      f"{r[3]:>6,.0f}/s  median {r[4] * 1000:7.1f} ms  p99 {r[5] * 1000:7.1f} ms"
                      f"  delivered {r[6]:.0%}", flush=True)
        await runtime.fleet.detach_field(UA)

        # -- baseline: a raw OPC UA client subscription -------------------------------------------
        dev = next(d for d in sim.point_maps[UA].devices if d.protocol is ProtocolKind.OPCUA)
        for rate in (1000, 5000):
            driver = Driver(sim, analogs)
            lat = []
            client = make_field_client(dev, sim.point_maps[UA].points_of(dev.device_id), data_dir=str(data_dir),
                                       publishing_interval_ms=100.0)

            def on_values(values: list[Any], driver: Driver = driver, lat: list[float] = lat) -> None:
                now = time.perf_counter()
                for pv in values:
                    t = driver.sent.get((pv.point_id, pv.value))
                    if t is not None:
                        lat.append(now - t)

            client.subscribe(on_values)
            await client.connect()
            await asyncio.sleep(1.0)
            sent = await driver.run(rate, args.seconds)
            await asyncio.sleep(1.0)
            await client.close()
            med, p99 = statistics.median(lat) if lat else float("nan"), pct(lat, 0.99)
            gql = [r for r in rows if r[0] == rate]
            print(f"baseline rate {rate:>5}/s raw OPC UA subscription (100 ms publishing): median {med * 1000:.1f} ms "
                  f"p99 {p99 * 1000:.1f} ms delivered {len(lat) / max(1, sent):.0%}", flush=True)
            for r in gql:
                print(f"   ratio GraphQL/baseline at {rate}/s, {r[1]} subs: median x{r[4] / med:.1f}, "
                      f"p99 x{r[5] / p99:.1f}", flush=True)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serve, 15)
        await sim.stop()
        await runtime.stop()


if __name__ == "__main__":
    asyncio.run(main())
