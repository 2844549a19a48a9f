"""Telemetry benchmark: field -> feeder actor -> event bus -> GraphQL WebSocket subscriber.

Run: ``.venv/bin/python bench/telemetry.py [--seconds 10]``. Everything is real and on this machine,
in the processes it would have in service:
- this process: the head-end (embedded ArcadeDB started by it, the Starlette app under uvicorn,
  local Ray with the feeder actors and the ``dms-events`` bus as worker processes);
- a field process: the simulator's Modbus TCP and OPC UA (SignAndEncrypt) servers and the driver
  that forces values on them;
- a client process: the WebSocket subscribers (graphql-transport-ws). They stamp each message
  on arrival and decode after the run, so their own CPU does not queue what they measure.
Sent and received times are ``time.perf_counter()`` (CLOCK_MONOTONIC, shared by the processes).

It prints:
1. machine info;
2. points/s one feeder actor ingests (its own counter) from Modbus (all points on RTUs, polled
   every ``--scan-ms``) and from OPC UA (subscription, values forced as fast as offered);
3. latency from a value forced in the simulator to a GraphQL ``measurements`` subscriber receiving
   it, median and p99, at 1,000 and 5,000 points/s with 1 and 100 subscribers; and the baseline
   measured in the same run: the same forced values seen by a raw OPC UA client subscription (no
   actor, no bus, no GraphQL), with the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

MB, UA = "bench-mb", "bench-ua"
Sent = dict[tuple[str, float], float]


class Row(NamedTuple):
    form: str
    rate: int
    subs: int
    offered: float
    ingest: float
    median: float
    p99: float
    # Share of the forced values that reached each subscriber. Below 100% by design at high rates: of the
    # values of one point that reach the server together, subscribers get the newest only.
    delivered: float


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


# -- the field process ----------------------------------------------------------------------------

def _feeders() -> tuple[Any, Any]:
    from graph_schema.importers import case33bw

    base = case33bw()
    return replace(base, id=MB), replace(base, id=UA)


async def _drive(sim: Any, points: list[str], rate: int, seconds: float, start_counter: int) -> tuple[int, Sent]:
    """Force unique values on ``points`` at ``rate`` points/s; remember when each was forced."""
    sent: Sent = {}
    step_s = 0.01
    per_step = max(1, round(rate * step_s))
    loop = asyncio.get_running_loop()
    start = loop.time()
    counter = start_counter
    while loop.time() - start < seconds:
        t_step = loop.time()
        for _ in range(per_step):
            pid = points[counter % len(points)]
            counter += 1
            value = 0.5 + counter * 1e-7
            sent[(pid, value)] = time.perf_counter()
            await sim.force_value(pid, value)
        await asyncio.sleep(max(0.0, step_s - (loop.time() - t_step)))
    return counter - start_counter, sent


async def _field_main(conn: Any, data_dir: str) -> None:
    from protocols.certs import ensure_pki
    from protocols.pointmap import generate_point_map
    from protocols.simulator import FieldSimulator

    mb, ua = _feeders()
    pki = ensure_pki(Path(data_dir))
    maps = {MB: generate_point_map(mb, modbus_port=0, split="modbus_only"),
            UA: generate_point_map(ua, opcua_endpoint=f"opc.tcp://127.0.0.1:0/dms/{UA}", split="opcua_only")}
    # Every forced value differs by 1e-7 so that each one can be traced: no deadband here (the
    # demo maps' deadbands would rightly hold such moves back), the bench measures transport.
    maps = {fid: replace(pm, points=tuple(replace(p, deadband=0.0) for p in pm.points))
            for fid, pm in maps.items()}
    sim = FieldSimulator([mb, ua], point_maps=maps, certificate=pki.simulator,
                         trusted_client_certs=[pki.headend.cert_path], tick_s=0.1)
    await sim.start()
    loop = asyncio.get_running_loop()
    counter = 0
    try:
        conn.send({fid: sim.point_maps[fid].to_json() for fid in (MB, UA)})
        while True:
            cmd, *args = await loop.run_in_executor(None, conn.recv)
            if cmd == "jitter":  # every value changes at every tick (the Modbus ingest test)
                sim.set_value_hook((lambda pid, v, now: v + (time.monotonic() % 1) * 1e-6
                                    if isinstance(v, float) else v) if args[0] else None)
                conn.send(True)
            elif cmd == "drive":
                n, sent = await _drive(sim, args[0], args[1], args[2], counter)
                counter += n
                conn.send((n, sent))
            else:
                break
    finally:
        await sim.stop()


def field_process(conn: Any, data_dir: str) -> None:
    asyncio.run(_field_main(conn, data_dir))


# -- the client process ---------------------------------------------------------------------------

SELECTIONS = {
    "points": "points { pointId value }",  # an object per point
    "compact": "compact",  # parallel arrays in one JSON value
}


async def _subscriber(url: str, token: str, feeder: str, form: str, arrivals: list[tuple[float, str | bytes]],
                      ready: asyncio.Event, stop: asyncio.Event) -> None:
    import websockets

    async with websockets.connect(url, subprotocols=["graphql-transport-ws"], max_size=2**24) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
        await ws.recv()
        q = f'subscription {{ measurements(feederId: "{feeder}") {{ seq {SELECTIONS[form]} }} }}'
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": q}}))
        ready.set()
        while not stop.is_set():
            try:
                raw = await asyncio.wait_for(ws.recv(), 0.5)
            except TimeoutError:
                continue
            arrivals.append((time.perf_counter(), raw))
            if b'"ping"' in (raw if isinstance(raw, bytes) else raw.encode()):
                await ws.send(json.dumps({"type": "pong"}))


async def _clients_main(conn: Any, url: str, token: str, feeder: str, form: str, subs: int) -> None:
    per_sub: list[list[tuple[float, str | bytes]]] = [[] for _ in range(subs)]
    stop = asyncio.Event()
    readies = [asyncio.Event() for _ in range(subs)]
    tasks = [asyncio.create_task(_subscriber(url, token, feeder, form, per_sub[i], readies[i], stop))
             for i in range(subs)]
    await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 60)
    conn.send("ready")
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, conn.recv)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    received: list[tuple[str, float, float]] = []  # (point id, value, arrival)
    for arrivals in per_sub:
        for t, raw in arrivals:
            msg = json.loads(raw)
            if msg.get("type") != "next":
                continue
            batch = msg["payload"]["data"]["measurements"]
            if form == "compact":
                c = batch["compact"]
                received.extend((pid, v, t) for pid, v in zip(c["pointId"], c["value"], strict=True))
            else:
                received.extend((p["pointId"], p["value"], t) for p in batch["points"])
    conn.send(received)


def clients_process(conn: Any, url: str, token: str, feeder: str, form: str, subs: int) -> None:
    asyncio.run(_clients_main(conn, url, token, feeder, form, subs))


# -- the head-end (this process) ------------------------------------------------------------------

async def ask(conn: Any, *msg: Any) -> Any:
    loop = asyncio.get_running_loop()
    conn.send(msg)
    return await loop.run_in_executor(None, conn.recv)


async def recv(conn: Any) -> Any:
    return await asyncio.get_running_loop().run_in_executor(None, conn.recv)


def latencies(sent: Sent, received: list[tuple[str, float, float]]) -> list[float]:
    out = []
    for pid, value, t in received:
        t0 = sent.get((pid, value))
        if t0 is not None:
            out.append(t - t0)
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0, help="run time of each cell")
    ap.add_argument("--scan-ms", type=float, default=50.0, help="Modbus scan interval for the ingest test")
    args = ap.parse_args()

    import uvicorn

    from actors.feeder_actor import ActorOptions
    from bench.powerflow import machine
    from protocols.base import make_field_client
    from protocols.pointmap import Direction, PointMap, ProtocolKind
    from security.tokens import LocalSigningKey, mint_token
    from server.app import create_app
    from server.field import attach
    from server.runtime import start_runtime
    from server.settings import Settings
    from tests.integration.conftest import free_port

    print("machine:", machine(), flush=True)
    data_dir = Path(tempfile.mkdtemp(prefix="dms-bench-"))
    settings = Settings.from_env({}, data_dir=data_dir, neo4j_uri=None, scan_interval_s=args.scan_ms / 1000,
                                 rate_limit_per_minute=10_000_000)
    from protocols.certs import ensure_pki

    ensure_pki(data_dir)  # before the field process reads the same folder
    ctx = mp.get_context("spawn")
    field_conn, child = ctx.Pipe()
    field = ctx.Process(target=field_process, args=(child, str(data_dir)), name="bench-field", daemon=True)
    field.start()
    runtime = await start_runtime(settings, demo_feeders=False)
    mb, ua = _feeders()
    for f in (mb, ua):
        await runtime.grid.import_feeder(f, replace=True)
    maps = {fid: PointMap.from_json(text, f) for (fid, text), f in zip((await recv(field_conn)).items(), (mb, ua),
                                                                       strict=True)}
    app = create_app(settings, runtime)
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on",
                                           ws="websockets-sansio"))
    serve = asyncio.create_task(server.serve())
    try:
        for _ in range(600):
            if server.started:
                break
            await asyncio.sleep(0.05)

        # -- ingest: Modbus (every value changes at every simulator tick) -----------------------
        await ask(field_conn, "jitter", True)
        await attach(runtime, settings, maps[MB])
        await asyncio.sleep(2)
        a = (await runtime.fleet.call(MB, "field_status"))["ingested"]
        await asyncio.sleep(args.seconds)
        b = (await runtime.fleet.call(MB, "field_status"))["ingested"]
        n_mb = len(maps[MB].points_of(f"{MB}/rtu1", Direction.READ))
        print(f"ingest Modbus: {(b - a) / args.seconds:,.0f} points/s in one feeder actor "
              f"(5 RTUs, scan every {args.scan_ms:g} ms, {n_mb} points on rtu1)", flush=True)
        await runtime.fleet.detach_field(MB)
        await ask(field_conn, "jitter", False)

        # -- latency through the actor, the bus and GraphQL ---------------------------------------
        await attach(runtime, settings, maps[UA])
        await asyncio.sleep(2)
        analogs = [p.point_id for p in maps[UA].points
                   if p.direction is Direction.READ and p.quantity in ("VM_PU", "I_KA", "P_MW", "Q_MVAR")]
        key = LocalSigningKey(data_dir)
        token = mint_token(key, role=["VIEWER"], sub="bench", ttl_s=3600, issuer=settings.auth_issuer,
                           audience=settings.auth_audience)
        url = f"ws://127.0.0.1:{port}/graphql"
        rows: list[Row] = []
        for form, rate, subs in [(f, r, n) for f in SELECTIONS for r in (1000, 5000) for n in (1, 100)]:
            c_conn, c_child = ctx.Pipe()
            clients = ctx.Process(target=clients_process, args=(c_child, url, token, UA, form, subs),
                                  name="bench-clients", daemon=True)
            clients.start()
            assert await recv(c_conn) == "ready"
            await asyncio.sleep(1.0)
            a = (await runtime.fleet.call(UA, "field_status"))["ingested"]
            t0 = time.perf_counter()
            sent_n, sent = await ask(field_conn, "drive", analogs, rate, args.seconds)
            took = time.perf_counter() - t0
            b = (await runtime.fleet.call(UA, "field_status"))["ingested"]
            await asyncio.sleep(2.0)
            received = await ask(c_conn, "stop")
            clients.join(30)
            lat = latencies(sent, received)
            r = Row(form, rate, subs, sent_n / took, (b - a) / took, statistics.median(lat) if lat else float("nan"),
                    pct(lat, 0.99), len(lat) / subs / max(1, sent_n))
            rows.append(r)
            print(f"GraphQL {form:>7} rate {rate:>5}/s offered {r.offered:>6,.0f}/s  subs {subs:>3}: actor ingest "
                  f"{r.ingest:>6,.0f}/s  median {r.median * 1000:7.1f} ms  p99 {r.p99 * 1000:7.1f} ms"
                  f"  delivered {r.delivered:.0%}", flush=True)
        await runtime.fleet.detach_field(UA)

        # -- baseline: a raw OPC UA client subscription -------------------------------------------
        dev = next(d for d in maps[UA].devices if d.protocol is ProtocolKind.OPCUA)
        for rate in (1000, 5000):
            arrivals: list[tuple[str, float, float]] = []
            client = make_field_client(dev, maps[UA].points_of(dev.device_id), data_dir=str(data_dir),
                                       publishing_interval_ms=ActorOptions().opcua_publishing_interval_ms)

            def on_values(values: list[Any], arrivals: list[tuple[str, float, float]] = arrivals) -> None:
                now = time.perf_counter()
                arrivals.extend((pv.point_id, pv.value, now) for pv in values)

            client.subscribe(on_values)
            await client.connect()
            await asyncio.sleep(1.0)
            sent_n, sent = await ask(field_conn, "drive", analogs, rate, args.seconds)
            await asyncio.sleep(1.0)
            await client.close()
            lat = latencies(sent, arrivals)
            med, p99 = statistics.median(lat) if lat else float("nan"), pct(lat, 0.99)
            print(f"baseline rate {rate:>5}/s raw OPC UA subscription "
                  f"({ActorOptions().opcua_publishing_interval_ms:g} ms publishing): median {med * 1000:.1f} ms "
                  f"p99 {p99 * 1000:.1f} ms delivered {len(lat) / max(1, sent_n):.0%}", flush=True)
            for r in (r for r in rows if r.rate == rate):
                print(f"   ratio GraphQL ({r.form}) / baseline at {rate}/s, {r.subs} subs: "
                      f"median x{r.median / med:.1f}, p99 x{r.p99 / p99:.1f}", flush=True)
    finally:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(serve, 15)
        with contextlib.suppress(Exception):
            field_conn.send(("stop",))
        field.join(20)
        if field.is_alive():
            field.kill()
        await runtime.stop()


if __name__ == "__main__":
    asyncio.run(main())
