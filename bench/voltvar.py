"""Volt/VAR planning: time per feeder, losses and voltages before/after, found vs exhaustive optimum.

Run:  .venv/bin/python bench/voltvar.py [--buses 1000] [--reg-window 6] [--full] [--repeats 3]

Feeders: ``case33bw-vvo`` (OLTC -8..8, line regulator -16..16, banks of 3/2/4 steps, 6.5 MW PV) in two
states, midday (PV at full output: over-voltage) and evening (PV at zero: under-voltage); and a
synthetic 1,000-bus feeder (``graph_schema.synthetic``: 110/20 kV OLTC -9..9, two switched banks,
PV at about one bus in ten).

For each it prints the planning time of a cold planner (compiles its networks) and the median of
``--repeats`` warm ones (the application keeps its planner), the evaluations screened, losses and
minimum/maximum voltage before and after (validated by pandapower), and the baseline measured in the
same run: the median of one ``PowerFlowModel.solve``, with the ratio plan / solve.

Optimality on ``case33bw-vvo`` (discrete devices only, DER Q held, objective LOSSES and CVR): the
exhaustive search over every combination (with the regulator limited to +-``--reg-window`` steps of
its present position so that it runs in about a minute; ``--full`` for all 33,660 combinations,
several minutes) against the planner under the same limit; the ratio found/exhaustive objective is
printed (1.000 means the optimum was found).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from actors.cores.powerflow import PowerFlowModel
from actors.cores.voltvar import Objective, VoltVarOptions, VoltVarPlanner, VoltVarState
from bench.machine import describe
from graph_schema.importers import case33bw_vvo
from graph_schema.synthetic import synthetic_mv_feeder


def _solve_ms(feeder, repeats: int) -> float:  # type: ignore[no-untyped-def]
    m = PowerFlowModel(feeder)
    m.solve()
    ts = []
    for _ in range(max(3, repeats)):
        t = time.perf_counter()
        m.solve()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1000


def bench_plans(label: str, feeder, state: VoltVarState, repeats: int) -> None:  # type: ignore[no-untyped-def]
    base_ms = _solve_ms(feeder, repeats)
    for name, opt in (("LOSSES, taps+banks", VoltVarOptions(use_der_q=False)),
                      ("LOSSES, +DER Q", VoltVarOptions()),
                      ("CVR, +DER Q", VoltVarOptions(objective=Objective.CVR))):
        planner = VoltVarPlanner(feeder)
        t = time.perf_counter()
        plan = planner.plan(state, opt)
        cold = time.perf_counter() - t
        warm = []
        for _ in range(repeats):
            t = time.perf_counter()
            planner.plan(state, opt)
            warm.append(time.perf_counter() - t)
        w = statistics.median(warm)
        b, a = plan.before, plan.after
        print(f"  {label:<22} {name:<20} cold {cold:7.2f} s  warm {w:6.2f} s  ({plan.evaluations:5d} flows; "
              f"warm/solve {w * 1000 / base_ms:6.1f}x)  "
              f"losses {b.losses_mw * 1000:7.1f} -> {a.losses_mw * 1000:7.1f} kW"
              f"  V {b.min_vm_pu:.3f}-{b.max_vm_pu:.3f} -> {a.min_vm_pu:.3f}-{a.max_vm_pu:.3f} pu"
              f"  demand {b.demand_mw:.3f} -> {a.demand_mw:.3f} MW  ops {len(plan.operations)}"
              f"{'' if a.feasible else '  INFEASIBLE'}", flush=True)
    print(f"  {label:<22} baseline: one PowerFlowModel.solve {base_ms:.1f} ms (median)", flush=True)


def bench_exhaustive(feeder, state_name: str, state: VoltVarState, window: int | None) -> None:  # type: ignore[no-untyped-def]
    if window is not None:
        state = VoltVarState(**{**{f: getattr(state, f) for f in ("load_p_mw", "load_q_mvar", "der_p_mw")},
                                "ops_left": {"reg1": window}})
    for obj in Objective:
        opt = VoltVarOptions(objective=obj, use_der_q=False, allow_curtailment=False)
        planner = VoltVarPlanner(feeder)
        t = time.perf_counter()
        plan = planner.plan(state, opt)
        tp = time.perf_counter() - t
        t = time.perf_counter()
        best, fig, count = planner.exhaustive(state, opt)
        te = time.perf_counter() - t
        ratio = plan.after.objective_mw / fig.objective_mw
        print(f"  case33bw-vvo {state_name:<8} {obj:<6} planner {plan.after.objective_mw:.5f} MW in {tp:6.1f} s; "
              f"exhaustive {fig.objective_mw:.5f} MW over {count} combinations in {te:6.1f} s; "
              f"found/optimum {ratio:.4f}; optimum {best}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--buses", type=int, default=1000)
    ap.add_argument("--reg-window", type=int, default=6)
    ap.add_argument("--full", action="store_true", help="exhaustive over the regulator's whole range")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-exhaustive", action="store_true")
    args = ap.parse_args()
    print(describe())
    demo = case33bw_vvo()
    evening = VoltVarState(der_p_mw={d.id: 0.0 for d in demo.ders})
    print("Planning time and effect (pandapower-validated figures):")
    bench_plans("case33bw-vvo midday", demo, VoltVarState(), args.repeats)
    bench_plans("case33bw-vvo evening", demo, evening, args.repeats)
    big = synthetic_mv_feeder(args.buses)
    print(f"  synthetic-{args.buses}: {len(big.buses)} buses, {len(big.ders)} DER, {len(big.capacitors)} banks, "
          f"{sum(t.has_tap_changer for t in big.transformers)} tap changers")
    bench_plans(f"synthetic-{args.buses}", big, VoltVarState(), args.repeats)
    if not args.skip_exhaustive:
        print("Found vs exhaustive optimum (taps and banks, DER Q held):")
        window = None if args.full else args.reg_window
        bench_exhaustive(demo, "midday", VoltVarState(), window)
        bench_exhaustive(demo, "evening", evening, window)


if __name__ == "__main__":
    main()
