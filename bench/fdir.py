"""FDIR end to end through the real stack: fault in the simulator -> validated plan -> restored.

Run:  .venv/bin/python bench/fdir.py [--faults-per-feeder N]

For case33bw and cigre-mv (both in AUTOMATIC mode) it injects a permanent fault on every line that
can carry one (a section of its own, energized in normal positions; or a sample of N)
in the field simulator (real Modbus TCP and OPC UA servers on loopback), and reads from the feeder
actor's FDIR engine the time from the first fault telemetry arriving at the actor to a validated
switching plan, and to the last restoring step confirmed by telemetry. Between faults it does what
an operator does: clears the fault and approves the return-to-normal plan. The baseline, measured
in the same run, is the pure core planning the same fault from the same indications in this
process (``actors.cores.fdir.plan_fault``); the ratio shows what detection, settling and the actor cost.
The engine waits ``--settle`` seconds after the first indication for the rest to arrive, which is
part of the time to a plan. For a feeder of 1,000+ buses see ``bench/fdir_core.py``
(lv_schutterwald, 2,940 buses, 88 ties): the simulator does not serve that size in real time here.
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

from bench.powerflow import machine
from server.runtime import start_runtime
from server.settings import Settings

FEEDERS = ("case33bw", "cigre-mv")


async def until(fn: Any, timeout_s: float, step: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = await fn()
        if value:
            return value
        await asyncio.sleep(step)
    raise TimeoutError(f"not reached within {timeout_s} s")


async def one_fault(rt: Any, sim: Any, fid: str, line_id: str) -> tuple[float, float] | None:
    fleet = rt.fleet
    known = {p.id for p in await fleet.call_app(fid, "fdir", "plans")}
    if not sim.inject_fault(fid, line_id):
        return None

    async def finished() -> Any:
        for p in await fleet.call_app(fid, "fdir", "plans"):
            if p.id not in known and str(p.kind) == "FAULT" and str(p.state) in ("COMPLETED", "FAILED"):
                return p
        return None

    plan = await until(finished, 60)
    timings = plan.timings
    # Operator: fault repaired -> approve the return to normal.
    sim.clear(fid)

    async def rtn_pending() -> Any:
        st = await fleet.call_app(fid, "fdir", "engine_status")
        p = st.pending_plan
        return p if p is not None and str(p.kind) == "RETURN_TO_NORMAL" else None

    try:
        rtn = await until(rtn_pending, 20)
        await fleet.call_app(fid, "fdir", "approve", rtn.id, "bench")

        async def rtn_done() -> bool:
            return not (await fleet.call_app(fid, "fdir", "engine_status")).active_outage_ids

        await until(rtn_done, 60)
    except TimeoutError:
        await sim.reset()
        await asyncio.sleep(2)
    if str(plan.state) != "COMPLETED" or timings.plan_s is None or timings.restore_s is None:
        return None
    return timings.plan_s, timings.restore_s


def faultable_lines(feeder: Any) -> list[str]:
    """Lines that are energized in normal positions and have a switch (a section of their own)."""
    from actors.cores.fdir import FdirModel
    from tests.unit.fdir_grids import fault_scenario

    model = FdirModel(feeder)
    switched = {s.element_id for s in feeder.switches}
    out = []
    for ln in feeder.lines:
        section = next((sec.id for sec in model.sections if ln.id in sec.line_ids), None)
        if ln.id not in switched or section is None:
            continue
        try:
            fault_scenario(model, section)
        except ValueError:
            continue  # a tie's line: dead in normal positions
        out.append(ln.id)
    return out


def core_plan_time(feeder: Any, line_id: str, repeats: int = 3) -> float:
    """The same fault planned by the pure core in this process (the baseline)."""
    from actors.cores.fdir import FdirModel, plan_fault
    from tests.unit.fdir_grids import fault_scenario

    model = FdirModel(feeder)
    section = next(sec.id for sec in model.sections if line_id in sec.line_ids)
    states, ind, _ = fault_scenario(model, section)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        plan_fault(model, states, ind)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--faults-per-feeder", type=int, default=0,
                    help="sample this many sections per feeder (default 0: every section that can carry a fault)")
    ap.add_argument("--settle", type=float, default=0.5, help="FDIR settle time after the first indication (s)")
    args = ap.parse_args()
    print("machine:", machine(), flush=True)
    from protocols.certs import ensure_pki
    from protocols.simulator import FieldSimulator
    from server.field import attach

    with tempfile.TemporaryDirectory(prefix="dms-bench-fdir-") as tmp:
        settings = Settings.from_env({}, data_dir=Path(tmp), neo4j_uri=None, scan_interval_s=0.2,
                                     fdir_mode="AUTOMATIC", fdir_settle_s=args.settle, confirm_timeout_s=5.0)
        rt = await start_runtime(settings, demo_feeders=True)
        try:
            models = {fid: await rt.grid.model(fid) for fid in FEEDERS}
            pki = ensure_pki(settings.data_dir)
            sim = FieldSimulator(list(models.values()), certificate=pki.simulator,
                                 trusted_client_certs=[pki.headend.cert_path], tick_s=0.1, operate_delay_s=0.1)
            async with sim:
                for fid in FEEDERS:
                    await attach(rt, settings, sim.point_maps[fid])
                await asyncio.sleep(3)
                rows = []
                for fid, model in models.items():
                    lines = faultable_lines(model)
                    if args.faults_per_feeder > 0:
                        step = max(1, len(lines) // args.faults_per_feeder)
                        sample = lines[1::step][: args.faults_per_feeder]
                    else:
                        sample = lines
                    plans, restores, cores = [], [], []
                    for line_id in sample:
                        got = await one_fault(rt, sim, fid, line_id)
                        if got is None:
                            continue
                        plans.append(got[0])
                        restores.append(got[1])
                        cores.append(core_plan_time(model, line_id))
                    rows.append((fid, len(sample), len(plans), plans, restores, cores))
                for fid in FEEDERS:  # before the simulator stops: no reconnect noise from the actors
                    await rt.fleet.detach_field(fid)
            print(f"\nFDIR end to end, AUTOMATIC, settle {args.settle:g} s (times from the first fault telemetry "
                  "at the actor)")
            print(f"{'feeder':<10}{'faults':>7}{'ok':>4}{'plan med s':>12}{'plan max s':>12}{'restored med s':>16}"
                  f"{'restored max s':>16}{'core plan ms':>14}{'ratio':>8}")
            for fid, n, ok, plans, restores, cores in rows:
                if not plans:
                    print(f"{fid:<10}{n:>7}{ok:>4}  (no fault produced a completed plan)")
                    continue
                pm, cm = statistics.median(plans), statistics.median(cores)
                print(f"{fid:<10}{n:>7}{ok:>4}{pm:>12.2f}{max(plans):>12.2f}{statistics.median(restores):>16.2f}"
                      f"{max(restores):>16.2f}{cm * 1000:>14.1f}{pm / cm:>8.1f}")
        finally:
            await rt.stop()


if __name__ == "__main__":
    asyncio.run(main())
