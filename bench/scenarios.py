"""Batched scenario engine versus a pandapower loop: scenarios per second on the same feeder and scenarios.

Run:  .venv/bin/python bench/scenarios.py [--scenarios 1000] [--repeats 3] [--loop 30,20,10]

For case33bw, the synthetic 1,000-bus MV feeder (graph_schema.synthetic) and the 2,940-bus
lv_schutterwald grid it draws seeded random scenarios (every load at 0.5-1.5 x its own value, every
DER at 0-100 % of its rating) and times, in alternating turns so machine noise hits both alike:

* the batched engine (actors.cores.batched) solving all of them in one call (the network compiled
  beforehand: its one-off cost is printed separately as "compile ms");
* pandapower's ``runpp`` in a loop over the first ``--loop`` of the same scenarios, on the very net
  the engine compiled from (loads and sgens written as arrays, ``numba=False`` as in the product),
  extrapolated to a rate.

It prints medians over ``--repeats``, the ratio, and the largest voltage difference between the
two on the looped scenarios. Everything runs in this one process on the CPU; a GPU path is not
implemented (see the engine's module docstring), so a GPU row is printed as not measured.
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandapower as pp
import scipy

from actors.cores.batched import ARRAY_BACKEND, BASE_TOPOLOGY, BatchedPowerFlow, Scenarios, random_scenarios
from graph_schema.importers import case33bw, lv_schutterwald
from graph_schema.model import Feeder
from graph_schema.synthetic import synthetic_mv_feeder

FEEDERS: dict[str, Callable[[], Feeder]] = {
    "case33bw": case33bw,
    "synthetic-1000": lambda: synthetic_mv_feeder(1000),
    "schutterwald": lv_schutterwald,
}


def machine() -> str:
    from bench.machine import describe

    return describe(f"pandapower {pp.__version__}", f"numpy {np.__version__}", f"scipy {scipy.__version__}")


def gpu_line() -> str:
    have = [m for m in ("torch", "cupy") if importlib.util.find_spec(m) is not None]
    if not have:
        return "GPU: not measured (neither torch nor cupy is installed; the engine runs on numpy/scipy only)"
    return f"GPU: not measured ({', '.join(have)} importable, but the engine has no GPU path yet)"


def pandapower_loop(net: object, sc: Scenarios, count: int) -> tuple[float, np.ndarray]:
    """Seconds for ``count`` runpp calls on ``net`` with the scenarios' loads and DER, and vm_pu."""
    vm = np.empty((count, len(net.bus)))  # type: ignore[attr-defined]
    t0 = time.perf_counter()
    for i in range(count):
        if sc.load_p_mw is not None:
            net.load["p_mw"] = sc.load_p_mw[i]  # type: ignore[attr-defined]
            net.load["q_mvar"] = sc.load_q_mvar[i]  # type: ignore[attr-defined,index]
        if sc.der_p_mw is not None and len(sc.der_p_mw[i]):
            net.sgen["p_mw"] = sc.der_p_mw[i]  # type: ignore[attr-defined]
            net.sgen["q_mvar"] = sc.der_q_mvar[i]  # type: ignore[attr-defined,index]
        pp.runpp(net, numba=False)
        vm[i] = net.res_bus["vm_pu"].to_numpy()  # type: ignore[attr-defined]
    return time.perf_counter() - t0, vm


def bench(name: str, build: Callable[[], Feeder], n: int, loop: int, repeats: int) -> dict[str, float | int | str]:
    feeder = build()
    engine = BatchedPowerFlow(feeder)
    t0 = time.perf_counter()
    unhandled = engine.prepare(BASE_TOPOLOGY)  # one zero-load runpp + the LU: paid once per topology
    assert unhandled is None, unhandled
    compile_s = time.perf_counter() - t0
    net = copy.deepcopy(engine.model._net)  # the net the engine compiled from, at the feeder's baseline
    sc = random_scenarios(engine, n, seed=2026)
    loop = min(loop, n)
    engine.solve(Scenarios(count=4, load_p_mw=sc.load_p_mw[:4], load_q_mvar=sc.load_q_mvar[:4],  # type: ignore[index]
                           der_p_mw=sc.der_p_mw[:4], der_q_mvar=sc.der_q_mvar[:4]))  # type: ignore[index]
    pp.runpp(net, numba=False)
    batched_s: list[float] = []
    loop_s: list[float] = []
    result = None
    vm_pp = np.empty(0)
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = engine.solve(sc)
        batched_s.append(time.perf_counter() - t0)
        dt, vm_pp = pandapower_loop(net, sc, loop)
        loop_s.append(dt)
    assert result is not None
    b = statistics.median(batched_s)
    lp = statistics.median(loop_s)
    rate_b = n / b
    rate_p = loop / lp
    dv = float(np.nanmax(np.abs(result.vm_pu[:loop] - vm_pp))) if loop else float("nan")
    return {
        "feeder": name,
        "buses": len(feeder.buses),
        "compile_ms": compile_s * 1000,
        "batched_per_s": rate_b,
        "pp_ms": lp / loop * 1000,
        "pp_per_s": rate_p,
        "ratio": rate_b / rate_p,
        "dvm": dv,
        "iters": f"{int(np.median(result.iterations))}/{int(result.iterations.max())}",
        "fallbacks": len(result.fallback_indices),
        "converged": int(result.converged.sum()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--scenarios", type=int, default=1000, help="scenarios per feeder for the batched engine")
    ap.add_argument("--loop", default="50,30,20", help="pandapower loop size per feeder (comma list, in order)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--feeders", default=",".join(FEEDERS))
    args = ap.parse_args()
    names = args.feeders.split(",")
    loops = [int(x) for x in args.loop.split(",")]
    loops += [loops[-1]] * (len(names) - len(loops))
    warnings.simplefilter("ignore")
    print("machine:", machine(), flush=True)
    print("load average at start (1/5/15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()), flush=True)
    print(f"array backend: {ARRAY_BACKEND}; BLAS threads as numpy sets them; one process", flush=True)
    rows = []
    for name, loop in zip(names, loops, strict=False):
        rows.append(bench(name, FEEDERS[name], args.scenarios, loop, args.repeats))
        r = rows[-1]
        print(f"  {name}: done ({r['batched_per_s']:.0f} scenarios/s batched)", flush=True)
    print(f"\nscenarios/s, median of {args.repeats}: batched engine on {args.scenarios} random load/DER scenarios "
          f"vs pandapower runpp looped over the first N of them (same net, same scenarios)")
    head = (f"{'feeder':<16}{'buses':>6}{'compile ms':>11}{'batched/s':>11}{'iter med/max':>13}"
            f"{'N loop':>7}{'runpp ms':>9}{'runpp/s':>9}{'ratio':>8}{'max |dVm| pu':>14}{'fallbacks':>10}")
    print(head)
    for r, loop in zip(rows, loops, strict=False):
        print(f"{r['feeder']:<16}{r['buses']:>6}{r['compile_ms']:>11.0f}{r['batched_per_s']:>11.0f}"
              f"{r['iters']:>13}{loop:>7}{r['pp_ms']:>9.1f}{r['pp_per_s']:>9.1f}{r['ratio']:>7.0f}x"
              f"{r['dvm']:>14.1e}{r['fallbacks']:>10}")
    print(gpu_line())
    print("load average at end (1/5/15 min): {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
