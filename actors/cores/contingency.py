"""N-1 contingency analysis: each line and transformer out in turn, restored by FDIR's logic (pure core).

For every in-service line and transformer of the feeder (its recorded state is the operating
point, see :mod:`actors.cores.analysis`):

1. *At risk*: the buses the element's loss de-energizes (downstream of it on the present radial
   tree) and the customers on them.
2. *Isolation and restoration* by FDIR's own core (:func:`actors.cores.fdir.isolate` and
   :func:`actors.cores.fdir.restore`, no second copy): the element's section (switch-bounded zone)
   is isolated by its boundary switches, then the healthy dark area is re-supplied through ties
   when a candidate passes FDIR's power-flow and radiality checks. Sections are computed once:
   two elements of one section share one restoration.
3. The case reports who stays out: customers inside the isolated section (they wait for the
   repair, no switching reaches them) and healthy customers no tie could carry; ``restorable`` is
   True when every healthy customer at risk gets supply back. ``max_loading_percent`` and
   ``min_vm_pu`` are those of the post-restoration state (FDIR's validating power flow) or, when
   nothing is de-energized (a loop's branch, an open tie), of the feeder with the element out.

Cases are ranked by customers at risk, then customers left without supply, then element id.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from actors.cores.analysis import NO_PROGRESS, Progress, switch_states
from actors.cores.fdir import FdirModel, Isolation, Location, Restoration, isolate, restore
from graph_schema.errors import NotFound
from graph_schema.model import Feeder


@dataclass(frozen=True, slots=True)
class ContingencyCase:
    element_id: str
    element_kind: str  # LINE / TRANSFORMER
    section_id: str
    customers_at_risk: int
    customers_in_section: int  # out until repaired
    customers_restored: int  # healthy customers re-supplied by switching
    customers_unserved: int  # healthy customers no tie could carry
    restorable: bool
    converged: bool
    max_loading_percent: float | None
    min_vm_pu: float | None
    close_switch_ids: tuple[str, ...]
    open_switch_ids: tuple[str, ...]
    explanation: str


@dataclass(frozen=True, slots=True)
class ContingencyAnalysis:
    feeder_id: str
    cases: tuple[ContingencyCase, ...]  # ranked, most customers at risk first
    power_flows: int


def run_contingency(
    feeder: Feeder, *, element_ids: Iterable[str] | None = None, progress: Progress = NO_PROGRESS
) -> ContingencyAnalysis:
    """N-1 over ``element_ids`` (default: every in-service line and transformer)."""
    m = FdirModel(feeder)
    states = switch_states(feeder)
    kinds = {ln.id: "LINE" for ln in feeder.lines if ln.in_service}
    kinds.update({t.id: "TRANSFORMER" for t in feeder.transformers if t.in_service})
    if element_ids is None:
        ids = list(kinds)
    else:
        ids = list(dict.fromkeys(element_ids))
        for e in ids:
            if e not in kinds:
                raise NotFound(
                    f"{e!r} is not an in-service line or transformer of feeder {feeder.id!r}; check the id",
                    element_id=e,
                )
    topo = m.graph.process(states)
    flows = 0
    by_section: dict[str, tuple[Isolation, Restoration]] = {}
    cases: list[ContingencyCase] = []
    for k, eid in enumerate(ids):
        progress(k / max(1, len(ids)))
        sec = m.section_of_branch[eid]
        at_risk = m.graph.downstream_buses(topo, eid)
        risk = m.customers_on(at_risk)
        if not at_risk:
            r = m.powerflow.solve(switch_states=states, out_of_service=(eid,))
            flows += 1
            cases.append(ContingencyCase(
                eid, kinds[eid], sec, 0, 0, 0, 0, True, r.converged, r.max_line_loading_percent, r.min_vm_pu,
                (), (), "nothing loses supply" + ("" if r.converged else f"; power flow: {r.reason}"),
            ))
            continue
        if sec not in by_section:
            # The upstream switch of the section on the present tree stands in for the tripped device
            # (isolate uses it only to order the switches it opens).
            path = m.graph.source_path(topo, next(iter(sorted(at_risk))))
            upstream = next((x for x in reversed(path) if x in m.switches), None)
            loc = Location(upstream or next(iter(m.switches)), (), (sec,), True, f"{eid} out")
            iso = isolate(m, states, loc)
            after = dict(states)
            for sw in iso.open_switch_ids:
                after[sw] = True
            dark = m.graph.process(after).deenergized_bus_ids | at_risk
            res = restore(m, after, iso, None, dark)
            flows += res.evaluations
            by_section[sec] = (iso, res)
        iso, res = by_section[sec]
        in_zone = m.customers_on(at_risk & iso.zone_bus_ids)
        healthy = risk - in_zone
        restored = min(healthy, m.customers_on(at_risk - iso.zone_bus_ids) - _left_on(m, res, at_risk, iso))
        val = res.validation
        cases.append(ContingencyCase(
            eid, kinds[eid], sec, risk, in_zone, restored, healthy - restored, healthy == restored,
            val.converged if val else False,
            val.max_loading_percent if val else None,
            val.min_vm_pu if val else None,
            res.close_switch_ids, tuple(iso.open_switch_ids) + res.open_switch_ids,
            iso.explanation + "; " + res.explanation,
        ))
    progress(1.0)
    cases.sort(key=lambda c: (-c.customers_at_risk, -(c.customers_in_section + c.customers_unserved), c.element_id))
    return ContingencyAnalysis(feeder.id, tuple(cases), flows)


def _left_on(m: FdirModel, res: Restoration, at_risk: frozenset[str], iso: Isolation) -> int:
    """Healthy customers at risk still dark after the restoration's final switch states."""
    final = m.graph.process(res.final_states)
    return m.customers_on((at_risk - iso.zone_bus_ids) - final.energized_bus_ids)
