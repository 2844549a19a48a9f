"""DER over SunSpec Modbus: read and write round-trip time per DER, and commands per second.

Run:  .venv/bin/python bench/der.py [--rounds 30]

Starts the field simulator with cigre-mv (its 9 PV/wind DERs served as SunSpec devices on loopback)
and, with :class:`protocols.sunspec_client.SunSpecClient` (pysunspec2 underneath):

* read: one full DER reading (models 701-706, 713) per call;
* write: one command confirmed by read-back (a P limit and a Q set point: write model 704, read
  back every model), alternating two values so each write changes the registers;
* commands/s: every DER commanded at once (one client each, concurrently), rounds per second x DERs;

and as the baseline in the same run, a raw Modbus read of the same registers (pysunspec2's bare
``ModbusClientTCP.read`` of the DER's whole register map in one request series), so the ratio says
what the SunSpec decoding and the read-back cost beyond the wire. Medians and p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from importlib.metadata import version
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.cores.der import DerControl
from bench.machine import describe
from graph_schema.importers import cigre_mv
from protocols.simulator import FieldSimulator
from protocols.sunspec_client import SunSpecClient
from protocols.sunspec_sim import BASE_ADDR


def _p99(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(0.99 * (len(s) - 1)))]


def _ms(xs: list[float]) -> str:
    return f"median {statistics.median(xs) * 1e3:7.2f} ms  p99 {_p99(xs) * 1e3:7.2f} ms  (n={len(xs)})"


async def main(rounds: int) -> None:
    from sunspec2.modbus.modbus import ModbusClientTCP

    print(describe(f"pysunspec2 {version('pysunspec2')}", f"pymodbus {version('pymodbus')}"))
    async with FieldSimulator([cigre_mv()], allow_nosecurity=True, tick_s=1.0) as sim:
        eps = sim.sunspec.endpoints("cigre-mv")
        clients = [SunSpecClient(e.der_id, e.host, e.port, e.unit_id, timeout_s=2.0) for e in eps]
        try:
            for c in clients:
                await c.read()  # scan once (not timed)
            raw: list[float] = []
            for e in eps:
                n = len(sim.sunspec.inverter(e.der_id).image)
                mb = ModbusClientTCP(slave_id=e.unit_id, ipaddr=e.host, ipport=e.port, timeout=2.0)
                mb.connect()
                try:
                    for _ in range(rounds):
                        t = time.perf_counter()
                        await asyncio.to_thread(mb.read, BASE_ADDR, n)
                        raw.append(time.perf_counter() - t)
                finally:
                    mb.disconnect()
            reads: list[float] = []
            writes: list[float] = []
            for c in clients:
                der = sim.sunspec.inverter(c.der_id)
                for i in range(rounds):
                    t = time.perf_counter()
                    await c.read()
                    reads.append(time.perf_counter() - t)
                    lim = der.rating.p_max_mw * (0.5 if i % 2 else 0.6)
                    q = der.rating.q_max_mvar * (-0.2 if i % 2 else 0.2)
                    t = time.perf_counter()
                    await c.apply(DerControl(p_limit_mw=lim, q_mvar=q))
                    writes.append(time.perf_counter() - t)
            t0 = time.perf_counter()
            for i in range(rounds):
                await asyncio.gather(*(c.apply(DerControl(p_limit_mw=sim.sunspec.inverter(c.der_id).rating.p_max_mw
                                                          * (0.4 if i % 2 else 0.7)))
                                       for c in clients))
            wall = time.perf_counter() - t0
        finally:
            for c in clients:
                await c.close()
    print(f"DERs: {len(eps)} (cigre-mv), rounds per DER: {rounds}")
    print(f"baseline raw Modbus read of a DER's whole map  {_ms(raw)}")
    print(f"SunSpec read (701-706, 713, decoded)           {_ms(reads)}  "
          f"ratio {statistics.median(reads) / statistics.median(raw):.1f}x baseline")
    print(f"SunSpec command confirmed by read-back         {_ms(writes)}  "
          f"ratio {statistics.median(writes) / statistics.median(raw):.1f}x baseline")
    print(f"commands/s, all {len(eps)} DERs at once           {rounds * len(eps) / wall:7.1f} commands/s")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    asyncio.run(main(args.rounds))
