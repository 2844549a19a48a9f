"""Load and DER growth over years with Monte Carlo uncertainty: the probability of each violation.

For each year ``y`` in ``0..years`` the feeder's loads grow by ``(1 + load_growth)^y`` and its DER
by ``(1 + der_growth)^y``; around that, ``samples`` Monte Carlo draws vary every load independently
(normal, relative standard deviation ``load_sigma``, clipped at 0, power factor kept) and every
DER's output (uniform share of its grown set point in ``[1 - der_sigma, 1]``, at least 0). All the
draws of all the years go through the batched engine (:mod:`actors.cores.batched`) in one batch.

Per year: the share of draws with each violation (element and kind against the normal band of
``feeder.limits``; undervoltage, overvoltage, overload of lines and transformers), the share with
any violation, and how many draws did not converge. A draw that does not converge is reported as
such (``converged`` count, and a ``DIVERGES`` entry), never an error. Seeded: same inputs, same
answer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from actors.cores.analysis import NO_PROGRESS, Progress, too_large
from actors.cores.batched import BatchedPowerFlow, Scenarios
from graph_schema.errors import BadInput
from graph_schema.model import Feeder

MAX_SCENARIOS = 50_000
MAX_YEARS = 50


@dataclass(frozen=True, slots=True)
class ViolationProbability:
    kind: str  # UNDERVOLTAGE / OVERVOLTAGE / OVERLOAD / DIVERGES
    element_id: str | None
    probability: float


@dataclass(frozen=True, slots=True)
class YearOutlook:
    year: int
    load_factor: float
    der_factor: float
    samples: int
    converged: int
    probability_any_violation: float
    min_vm_pu_p05: float | None  # 5th percentile of the lowest voltage over converged draws
    max_loading_percent_p95: float | None
    violations: tuple[ViolationProbability, ...]  # most likely first


@dataclass(frozen=True, slots=True)
class ScenarioAnalysis:
    feeder_id: str
    seed: int
    years: tuple[YearOutlook, ...]
    power_flows: int
    fallbacks: int  # draws the batched engine handed to pandapower


def check_request(*, years: int = 5, load_growth_percent: float = 2.0, der_growth_percent: float = 10.0,
                  samples: int = 200, load_sigma: float = 0.1, der_sigma: float = 0.5, seed: int = 0) -> None:
    """BadInput unless the request is usable and within MAX_SCENARIOS."""
    for name, v in (("loadGrowthPercent", load_growth_percent), ("derGrowthPercent", der_growth_percent)):
        if not math.isfinite(v) or v <= -100:
            raise BadInput(f"{name}={v}: give a yearly growth in percent above -100")
    for name, v in (("loadSigma", load_sigma), ("derSigma", der_sigma)):
        if not math.isfinite(v) or not 0 <= v <= 1:
            raise BadInput(f"{name}={v}: give a share between 0 and 1")
    if not 0 <= years <= MAX_YEARS:
        raise BadInput(f"years={years}: give 0..{MAX_YEARS}")
    if samples < 1:
        raise BadInput(f"samples={samples}: give at least 1")
    total = (years + 1) * samples
    if total > MAX_SCENARIOS:
        raise too_large("scenario analysis", total, "MAX_SCENARIOS", MAX_SCENARIOS,
                        "give fewer samples or fewer years ((years + 1) x samples power flows)")


def run_scenarios(
    feeder: Feeder,
    *,
    years: int = 5,
    load_growth_percent: float = 2.0,
    der_growth_percent: float = 10.0,
    samples: int = 200,
    load_sigma: float = 0.1,
    der_sigma: float = 0.5,
    seed: int = 0,
    progress: Progress = NO_PROGRESS,
) -> ScenarioAnalysis:
    check_request(years=years, load_growth_percent=load_growth_percent, der_growth_percent=der_growth_percent,
                  samples=samples, load_sigma=load_sigma, der_sigma=der_sigma)
    total = (years + 1) * samples
    engine = BatchedPowerFlow(feeder)
    rng = np.random.default_rng(seed)
    lp0, lq0 = engine._load_p, engine._load_q
    dp0 = engine._der_p
    in_service = np.array([ld.in_service for ld in feeder.loads], dtype=bool)
    lf = np.array([(1 + load_growth_percent / 100.0) ** y for y in range(years + 1)])
    df = np.array([(1 + der_growth_percent / 100.0) ** y for y in range(years + 1)])
    year_of = np.repeat(np.arange(years + 1), samples)
    draw = np.clip(rng.normal(1.0, load_sigma, size=(total, len(lp0))), 0.0, None) * lf[year_of, None]
    draw[:, ~in_service] = 1.0
    share = rng.uniform(1.0 - der_sigma, 1.0, size=(total, len(dp0)))
    der_p = np.clip(share * dp0 * df[year_of, None], 0.0, None)
    progress(0.05)
    r = engine.solve(Scenarios(count=total, load_p_mw=draw * lp0, load_q_mvar=draw * lq0, der_p_mw=der_p))
    progress(0.9)
    lim = feeder.limits
    out: list[YearOutlook] = []
    for y in range(years + 1):
        rows = np.flatnonzero(year_of == y)
        conv = rows[r.converged[rows]]
        counts: dict[tuple[str, str | None], int] = {}
        any_v = np.zeros(len(conv), dtype=bool)
        if len(conv):
            vm = r.vm_pu[conv]
            checks = [
                ("UNDERVOLTAGE", r.bus_ids, np.nan_to_num(vm, nan=np.inf) < lim.vm_min_pu),
                ("OVERVOLTAGE", r.bus_ids, np.nan_to_num(vm, nan=-np.inf) > lim.vm_max_pu),
                ("OVERLOAD", r.line_ids, r.line_loading_percent[conv] > lim.max_loading_percent),
                ("OVERLOAD", r.transformer_ids, r.transformer_loading_percent[conv] > lim.max_loading_percent),
            ]
            for kind, ids, hit in checks:
                if hit.size == 0:
                    continue
                any_v |= hit.any(axis=1)
                for j in np.flatnonzero(hit.any(axis=0)):
                    counts[(kind, ids[j])] = int(hit[:, j].sum())
        n_div = len(rows) - len(conv)
        if n_div:
            counts[("DIVERGES", None)] = n_div
        viol = sorted(
            (ViolationProbability(k, e, c / samples) for (k, e), c in counts.items()),
            key=lambda v: (-v.probability, v.kind, v.element_id or ""),
        )
        p_any = (int(any_v.sum()) + n_div) / samples
        out.append(YearOutlook(
            y, float(lf[y]), float(df[y]), samples, len(conv), p_any,
            float(np.percentile(r.min_vm_pu[conv], 5)) if len(conv) else None,
            float(np.percentile(r.max_line_loading_percent[conv], 95)) if len(conv) else None,
            tuple(viol),
        ))
    progress(1.0)
    return ScenarioAnalysis(feeder.id, seed, tuple(out), total, len(r.fallback_indices))
