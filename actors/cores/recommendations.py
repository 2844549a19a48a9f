"""Recommendations: what an operator or planner could do on a feeder, ranked, each with its
predicted effect and the analysis behind it (pure core; inputs are analyses' results as dicts,
the shape :mod:`actors.analysis_jobs` returns).

Ranked in this order (operational items with a switching plan first, then planning items):

1. **Reconfiguration** (from an ``optimal_reconfiguration`` result) when it cuts losses by at least
   ``min_loss_reduction_percent``: the make-before-break sequence as the plan, executed by an
   operator through select-before-operate.
2. **Capacitor** at the bus of the lowest voltage when the feeder is below its normal band: the
   smallest of a few standard sizes that brings it back into the band (or the best of them),
   checked with a power flow of the feeder plus the bank.
3. **N-1 weak points** (from a ``run_contingency`` result): each line or transformer whose loss
   leaves healthy customers without supply after FDIR's restoration, most customers first.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from actors.cores.study import ChangeKind, StudyChange, apply_changes, solve
from graph_schema.model import Feeder

CAPACITOR_SIZES_MVAR = (0.3, 0.6, 0.9, 1.2)
MAX_N1_ITEMS = 5


@dataclass(frozen=True, slots=True)
class Recommendation:
    title: str
    predicted_effect: str
    analysis: str
    plan: tuple[tuple[str, str], ...]  # (device id, OPEN/CLOSE), in order; empty for planning items


def recommend(
    feeder: Feeder,
    *,
    reconfiguration: Mapping[str, Any] | None = None,
    reconfiguration_ref: str = "optimalReconfiguration",
    contingency: Mapping[str, Any] | None = None,
    contingency_ref: str = "runContingency",
    min_loss_reduction_percent: float = 1.0,
) -> tuple[Recommendation, ...]:
    out: list[Recommendation] = []
    lim = feeder.limits
    base = solve(feeder)
    r = reconfiguration
    if r is not None and r.get("base_losses_mw") and r.get("losses_mw") is not None and r.get("steps"):
        red = 100.0 * (r["base_losses_mw"] - r["losses_mw"]) / r["base_losses_mw"]
        if red >= min_loss_reduction_percent:
            steps = [(s["device_id"], s["action"]) for s in r["steps"]]
            closes = [d for d, a in steps if a == "CLOSE"]
            opens = [d for d, a in steps if a == "OPEN"]
            within = r.get("min_vm_pu") is not None and r["min_vm_pu"] >= lim.vm_min_pu
            out.append(Recommendation(
                title=f"close {', '.join(closes)} and open {', '.join(opens)}",
                predicted_effect=(
                    f"-{red:.0f} % losses ({1000 * r['base_losses_mw']:.1f} -> {1000 * r['losses_mw']:.1f} kW), "
                    f"lowest voltage {r.get('base_min_vm_pu') or 0:.3f} -> {r['min_vm_pu']:.3f} pu"
                    + (", all voltages within limits" if within else "")
                    + ("" if r.get("sequence_complete", True) else "; no safe make-before-break order: switch manually")
                ),
                analysis=f"{reconfiguration_ref}: {r.get('method', '')}",
                plan=tuple(steps),
            ))
    if base.converged and base.min_vm_pu is not None and base.min_vm_pu < lim.vm_min_pu and base.min_vm_bus_id:
        bus = base.min_vm_bus_id
        best: tuple[float, float, Any] | None = None
        for q in CAPACITOR_SIZES_MVAR:
            res = solve(apply_changes(feeder, [StudyChange(ChangeKind.ADD_CAPACITOR, bus_id=bus, q_mvar=q)]))
            if not res.converged or res.min_vm_pu is None or (res.max_vm_pu or 0) > lim.vm_max_pu:
                continue
            if best is None or res.min_vm_pu > best[1] + 1e-6:
                best = (q, res.min_vm_pu, res)
            if res.min_vm_pu >= lim.vm_min_pu:
                break
        if best is not None:
            q, vmin, res = best
            out.append(Recommendation(
                title=f"add a {q:.1f} Mvar capacitor bank at {bus}",
                predicted_effect=(f"lowest voltage {base.min_vm_pu:.3f} -> {vmin:.3f} pu "
                                  f"(band {lim.vm_min_pu:.2f}); losses {1000 * (base.losses_mw or 0):.1f} -> "
                                  f"{1000 * (res.losses_mw or 0):.1f} kW"),
                analysis="study: ADD_CAPACITOR at the lowest-voltage bus, solved with the live power flow",
                plan=(),
            ))
    if contingency is not None:
        weak: Sequence[Mapping[str, Any]] = sorted(
            (c for c in contingency.get("cases", ()) if c.get("customers_unserved", 0) > 0),
            key=lambda c: (-c["customers_unserved"], c["element_id"]))
        for c in weak[:MAX_N1_ITEMS]:
            out.append(Recommendation(
                title=f"N-1: reinforce around {c['element_id']} (a new tie or sectionalizer)",
                predicted_effect=(f"today its loss leaves {c['customers_unserved']} of {c['customers_at_risk']} "
                                  "customers at risk without supply after FDIR's restoration"),
                analysis=f"{contingency_ref}: {c.get('explanation', '')[:300]}",
                plan=(),
            ))
    return tuple(out)
