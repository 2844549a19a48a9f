"""FDIR core: time from indications to a validated switching plan, per feeder.

Run:  .venv/bin/python bench/fdir_core.py [--max-sections 60] [--repeats 3]

For case33bw, cigre-mv and the 2,940-bus lv_schutterwald it builds one ``FdirModel`` (not timed:
done once per feeder at actor start), then for a fault at every energized switchable section
(schutterwald: at most ``--max-sections``, sampled deterministically with an even stride) it
times ``plan_fault`` from the indications (breaker trip + fault indicators on every line) to the
power-flow-validated plan. It prints median and p95 over the sections (best of ``--repeats`` per
section), the number of sections, and a baseline measured in the same run: the median of one
plain ``PowerFlowModel.solve`` of the normal state, with the ratio plan / solve.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.cores.fdir import FdirModel, plan_fault
from graph_schema.importers import case33bw, cigre_mv, lv_schutterwald
from tests.unit.fdir_grids import fault_scenario


def _p95(xs: list[float]) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, round(0.95 * (len(s) - 1)))]


def bench(name: str, build, max_sections: int, repeats: int) -> None:  # type: ignore[no-untyped-def]
    t0 = time.perf_counter()
    m = FdirModel(build())
    m.powerflow.solve()
    setup = time.perf_counter() - t0
    base = []
    for _ in range(max(5, repeats * 3)):
        t = time.perf_counter()
        m.powerflow.solve(switch_states=m.normal_states)
        base.append(time.perf_counter() - t)
    topo = m.graph.process(m.normal_states)
    secs = [s.id for s in m.sections if s.bus_ids and set(s.bus_ids) & topo.energized_bus_ids]
    if len(secs) > max_sections:
        stride = len(secs) / max_sections
        secs = [secs[int(i * stride)] for i in range(max_sections)]
    times: list[float] = []
    pfs: list[int] = []
    cut = 0
    for sid in secs:
        try:
            states, ind, _ = fault_scenario(m, sid)
        except ValueError:
            continue  # a source bus: nothing upstream trips
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            p = plan_fault(m, states, ind)
            best = min(best, time.perf_counter() - t)
        times.append(best)
        pfs.append(p.evaluations)
        cut += p.search_cut
    med_base = statistics.median(base)
    med = statistics.median(times)
    print(
        f"{name:13s} sections={len(times):3d}  plan median={med * 1e3:7.1f} ms  p95={_p95(times) * 1e3:7.1f} ms  "
        f"max={max(times) * 1e3:7.1f} ms  power flows/plan median={statistics.median(pfs):.0f}  cut={cut}  | "
        f"baseline solve median={med_base * 1e3:6.1f} ms  ratio={med / med_base:5.1f}x  (model build {setup:.2f} s)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-sections", type=int, default=60)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    print(
        f"python {platform.python_version()} on {platform.platform()}; {os.cpu_count()} CPUs; "
        f"{platform.processor() or platform.machine()}"
    )
    for name, build in (("case33bw", case33bw), ("cigre-mv", cigre_mv), ("schutterwald", lv_schutterwald)):
        bench(name, build, args.max_sections, args.repeats)


if __name__ == "__main__":
    main()
