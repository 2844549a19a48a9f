"""State estimation: time per feeder and error against the truth, sparse and dense metering.

Run:  .venv/bin/python bench/estimation.py [--repeats N] [--networks case33bw,cigre-mv,lv_schutterwald]

For each network (case33bw, cigre-mv and pandapower's 2,940-bus lv_schutterwald) it makes a truth
the way the field simulator does (a power flow at loads 0.7-1.3 x nominal and DER at 0.3-1.0 of
their rating, seeded), meters it sparsely (``protocols.pointmap.sparse_metering``: feeder heads, three
line sensors per source, DERs) or densely (every bus voltage, every closed line's P, Q and I, DERs)
with Gaussian noise of each measurement's stated sigma, adds pseudo-measurements (nominal loads,
PROFILE sigma) and times :meth:`actors.cores.estimation.StateEstimator.estimate`:

* ``estimate``: the WLS fit with load allocation and the chi-square test (covariance reused, as the
  application does while the measurement structure is unchanged);
* ``+covariance``: the same plus per-bus standard deviations and pseudo shares (the first estimate,
  and whenever the structure changes);
* ``pf``: the model's power flow on the same network in the same run (the baseline; ratio = estimate/pf).

Errors are against the truth: mean and max |vm| in pu over energized buses, mean and max line
loading error in percentage points. Medians of ``--repeats`` runs; prints the machine it ran on.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import pandapower as pp

from actors.cores.estimation import MeasSource, Measurement, StateEstimator, default_std
from actors.cores.powerflow import PowerFlowModel, PowerFlowResult
from graph_schema.importers import case33bw, cigre_mv, lv_schutterwald
from graph_schema.model import Feeder
from protocols.pointmap import sparse_metering


def machine() -> str:
    from bench.machine import describe

    return describe(f"pandapower {pp.__version__}")


NETWORKS: dict[str, Callable[[], Feeder]] = {"case33bw": case33bw, "cigre-mv": cigre_mv,
                                             "lv_schutterwald": lv_schutterwald}


def truth(feeder: Feeder, rng: np.random.Generator) -> tuple[PowerFlowResult, dict[str, float]]:
    p = {ld.id: ld.p_mw * rng.uniform(0.7, 1.3) for ld in feeder.loads}
    q = {ld.id: ld.q_mvar * p[ld.id] / ld.p_mw if ld.p_mw else 0.0 for ld in feeder.loads}
    der = {d.id: d.sn_mva * rng.uniform(0.3, 1.0) for d in feeder.ders}
    res = PowerFlowModel(feeder).solve(load_p_mw=p, load_q_mvar=q, der_p_mw=der or None)
    if not res.converged:
        raise RuntimeError(f"truth of {feeder.id} did not converge: {res.reason}")
    return res, der


def measurements(feeder: Feeder, res: PowerFlowResult, der: dict[str, float], dense: bool,
                 rng: np.random.Generator) -> list[Measurement]:
    metered = None if dense else sparse_metering(feeder)
    open_lines = {s.element_id for s in feeder.switches if s.is_open}
    vm = {b.bus_id: b.vm_pu for b in res.buses}
    out: list[Measurement] = []

    def add(pid: str, q: str, eid: str, v: float, src: MeasSource = MeasSource.SCADA) -> None:
        s = default_std(q, v, src)  # type: ignore[arg-type]
        out.append(Measurement(pid, q, eid, v + float(rng.normal(0, s)), s, src))  # type: ignore[arg-type]

    for b in feeder.buses:
        if (metered is None or b.id in metered) and vm.get(b.id) is not None:
            add(f"{b.id}/VM_PU", "VM_PU", b.id, float(vm[b.id]))  # type: ignore[arg-type]
    for ln in res.lines:
        if ln.line_id in open_lines or (metered is not None and ln.line_id not in metered):
            continue
        add(f"{ln.line_id}/P", "P_MW", ln.line_id, ln.p_from_mw)
        add(f"{ln.line_id}/Q", "Q_MVAR", ln.line_id, ln.q_from_mvar)
        add(f"{ln.line_id}/I", "I_KA", ln.line_id, ln.i_ka)
    for d, p in der.items():
        add(f"{d}/P", "P_MW", d, p, MeasSource.DER)
    for ld in feeder.loads:
        src = MeasSource.PROFILE
        out.append(Measurement(f"{ld.id}/PP", "P_MW", ld.id, ld.p_mw, default_std("P_MW", ld.p_mw, src), src))
        out.append(Measurement(f"{ld.id}/PQ", "Q_MVAR", ld.id, ld.q_mvar, default_std("Q_MVAR", ld.q_mvar, src), src))
    return out


def errors(est: PowerFlowResult, res: PowerFlowResult) -> tuple[float, float, float, float]:
    ev = np.array([np.nan if b.vm_pu is None else b.vm_pu for b in est.buses], dtype=float)
    tv = np.array([np.nan if b.vm_pu is None else b.vm_pu for b in res.buses], dtype=float)
    dv = np.abs(ev - tv)
    dl = np.abs(np.array([ln.loading_percent for ln in est.lines]) - np.array([ln.loading_percent for ln in res.lines]))
    return float(np.nanmean(dv)), float(np.nanmax(dv)), float(dl.mean()), float(dl.max())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--networks", default=",".join(NETWORKS))
    args = ap.parse_args()
    print(machine())
    print(f"{'network':16} {'buses':>5} {'set':6} {'real':>5} {'pseudo':>6} {'estimate ms':>11} "
          f"{'+cov ms':>8} {'pf ms':>7} {'ratio':>6} {'it':>3} {'V mean pu':>9} {'V max pu':>9} "
          f"{'load mean %':>11} {'load max %':>10} {'observed':>8}")
    for name in args.networks.split(","):
        feeder = NETWORKS[name]()
        rng = np.random.default_rng(7)
        res, der = truth(feeder, rng)
        se = StateEstimator(feeder)
        pf = PowerFlowModel(feeder)
        for dense in (False, True):
            meas = measurements(feeder, res, der, dense, rng)
            first = se.estimate(meas)  # warm-up + the covariance the next ones reuse
            if not first.converged:
                print(f"{name:16} {'dense' if dense else 'sparse':6} did not converge: {first.reason}")
                continue
            t_est, t_cov, t_pf = [], [], []
            est = first
            for _ in range(args.repeats):  # interleaved so machine noise hits all three alike
                t0 = time.perf_counter()
                est = se.estimate(meas, covariance_from=first)
                t_est.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                se.estimate(meas)
                t_cov.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                pf.solve()
                t_pf.append(time.perf_counter() - t0)
            vmean, vmax, lmean, lmax = errors(est.power_flow, res)
            me, mc, mp = (statistics.median(t) * 1000 for t in (t_est, t_cov, t_pf))
            print(f"{name:16} {len(feeder.buses):5d} {'dense' if dense else 'sparse':6} {est.real_measurements:5d} "
                  f"{est.pseudo_measurements:6d} {me:11.1f} {mc:8.1f} {mp:7.1f} {me / mp:6.2f} {est.iterations:3d} "
                  f"{vmean:9.5f} {vmax:9.5f} {lmean:11.3f} {lmax:10.3f} "
                  f"{est.observed_bus_count:4d}/{len(feeder.buses)}")


if __name__ == "__main__":
    main()
