"""FLISR / FDIR core: fault detection, location, isolation and service restoration (IEC 61968-3
network operations, "fault management" and "switching plans"; IEEE 1366 counts of customers).

A pure core. Feeder model, switch states (switch id -> ``is_open``) and field indications in,
frozen results out; nothing the caller passes is mutated and the clock is injected. The steps:

1. :func:`detect` classifies what happened: MOMENTARY (a device tripped and reclosed, nothing
   stays dark), SUSTAINED (a protective device is open after a trip, or last-gasp meters sit on
   de-energized buses) or NONE, names the operated device and the interrupted area.
2. :func:`locate` walks downstream from the tripped device over the radial tree (pre-trip
   positions) and scores every *section* (buses and branches joined without crossing a switch)
   against the fault indicators: an indicator sees fault current when the fault lies downstream of
   it. The best-scoring sections are the faulted zone; missing (None) or contradictory indications
   give several ranked candidates and ``confident=False``.
3. :func:`isolate` opens every closed boundary switch of the zone; a boundary switch that cannot be
   operated remotely (fuse, disconnector) or is known to have failed pushes the boundary outward to
   the next controllable switch, and the customers given up are reported.
4. :func:`restore` re-closes the tripped device when the zone is not right behind it, then for
   every dark healthy area enumerates tie closures (up to ``max_ties``, splitting the area with
   sectionalizing switches so that each part is fed by exactly one tie, or shedding a far part when
   one tie cannot carry all) ordered by customers restored then switching operations, and checks
   them with a power flow: converged, radial (no loop or paralleled source beyond those of the
   post-isolation state), no new EMERGENCY-band violation. Ties on equal customers and operations
   are broken by lower losses, then higher minimum voltage. The search is bounded (evaluations,
   time budget) and says when it was cut.
5. :func:`plan` / :func:`plan_fault` produce a :class:`SwitchingPlan`: open isolation switches
   (verify each), close the upstream breaker, open split switches, close ties (verify each).
   :func:`replan_after_failure` answers a failed step or a second fault; :func:`plan_return_to_normal`
   brings the network back to its normal (``normally_open``) configuration.

:class:`FdirModel` precomputes sections, adjacency and a :class:`PowerFlowModel` once per feeder.
Fault indicators: a feeder's ``FaultIndicator`` objects are used when present (keyed by their id or
their line id); otherwise an indication keyed by a line id is an indicator at that line's from-bus.

The search budget (``time_budget_s``) is counted in the planning thread's own CPU time
(``time.thread_time``), not wall time, from after the baseline solve: a busy host makes planning
slower rather than different. CPU time still stretches on a contended host (shared caches, a
cold process), so time only cuts the tie-break among equally good candidates after one has
passed; finding a first passing candidate per dark island is bounded by ``max_evaluations``.
"""

from __future__ import annotations

import hashlib
import itertools
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Literal

from actors.cores.powerflow import PowerFlowModel, PowerFlowResult, Violation
from actors.cores.topology import TopologyGraph, TopologyResult
from graph_schema.errors import BadInput, NotFound
from graph_schema.model import ElementType, Feeder

__all__ = [
    "CandidateSection",
    "Detection",
    "FaultKind",
    "FdirModel",
    "Indications",
    "Isolation",
    "Location",
    "PlanAction",
    "PlanStep",
    "PowerFlowSummary",
    "Restoration",
    "SafeStop",
    "Section",
    "SwitchingPlan",
    "detect",
    "isolate",
    "locate",
    "plan",
    "plan_fault",
    "plan_return_to_normal",
    "replan_after_failure",
    "restore",
    "sections",
]

Band = Literal["NORMAL", "EMERGENCY"]
_EMPTY: Mapping[str, bool] = MappingProxyType({})


class FaultKind(StrEnum):
    NONE = "NONE"
    MOMENTARY = "MOMENTARY"
    SUSTAINED = "SUSTAINED"


class PlanAction(StrEnum):
    OPEN = "OPEN"
    CLOSE = "CLOSE"
    VERIFY = "VERIFY"


# ---------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Indications:
    """What the field reported about one disturbance.

    ``tripped_devices``: breakers/reclosers that opened by protection; ``reclosed``: those of them
    that reclosed successfully (momentary); ``fault_indicators``: indicator id (or line id) ->
    saw fault current (True/False) or None (no data, comm lost); ``last_gasp_loads``: load ids
    whose meters sent a power-off message.
    """

    tripped_devices: frozenset[str] = frozenset()
    reclosed: frozenset[str] = frozenset()
    fault_indicators: Mapping[str, bool | None] = field(default_factory=lambda: MappingProxyType({}))
    last_gasp_loads: frozenset[str] = frozenset()
    time: datetime | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "tripped_devices", frozenset(self.tripped_devices))
        object.__setattr__(self, "reclosed", frozenset(self.reclosed))
        object.__setattr__(self, "last_gasp_loads", frozenset(self.last_gasp_loads))
        object.__setattr__(self, "fault_indicators", MappingProxyType(dict(self.fault_indicators)))


# ---------------------------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class Section:
    """Buses and branches joined without crossing a switch, with the switches that bound it."""

    id: str
    bus_ids: tuple[str, ...]
    line_ids: tuple[str, ...]
    transformer_ids: tuple[str, ...]
    bounding_switch_ids: tuple[str, ...]
    load_ids: tuple[str, ...]
    customers: int


def sections(feeder: Feeder, graph: TopologyGraph | None = None) -> tuple[Section, ...]:
    """Maximal switch-free connected groups of buses and branches (see :class:`Section`).

    A line switched at one end belongs to the section of its other end; a line switched at both
    ends is a section of its own (no bus, no customer). ``graph`` is accepted for symmetry with
    the other cores and unused: sections depend on the model only, not on switch positions.
    """
    del graph
    return _build_sections(feeder)[0]


def _build_sections(
    feeder: Feeder,
) -> tuple[tuple[Section, ...], dict[str, str], dict[str, str], dict[str, tuple[str, str]]]:
    # Union-find over nodes "b:<bus>" and "e:<branch>".
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def union(a: str, b: str) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[rb] = ra

    for b in feeder.buses:
        parent["b:" + b.id] = "b:" + b.id
    switched_ends: set[tuple[str, str]] = set()
    for sw in feeder.switches:
        if sw.element_type != ElementType.BUS:
            switched_ends.add((sw.element_id, sw.bus_id))
    branches: list[tuple[str, str, str, bool]] = [(ln.id, ln.from_bus_id, ln.to_bus_id, True) for ln in feeder.lines]
    branches += [(t.id, t.hv_bus_id, t.lv_bus_id, False) for t in feeder.transformers]
    for eid, a, b, _ in branches:
        parent["e:" + eid] = "e:" + eid
        for end in (a, b):
            if (eid, end) not in switched_ends:
                union("e:" + eid, "b:" + end)
    groups: dict[str, list[str]] = {}
    order = [("b:" + b.id) for b in feeder.buses] + [("e:" + e[0]) for e in branches]
    for node in order:
        groups.setdefault(find(node), []).append(node)
    sec_of: dict[str, str] = {}
    members: dict[str, list[str]] = {}
    for nodes in groups.values():
        sid = "sec-" + nodes[0][2:]
        members[sid] = nodes
        for n in nodes:
            sec_of[n] = sid
    sides: dict[str, tuple[str, str]] = {}
    bounding: dict[str, list[str]] = {sid: [] for sid in members}
    for sw in feeder.switches:
        a = sec_of["b:" + sw.bus_id]
        b = sec_of[("b:" if sw.element_type == ElementType.BUS else "e:") + sw.element_id]
        sides[sw.id] = (a, b)
        if a != b:
            bounding[a].append(sw.id)
            bounding[b].append(sw.id)
    is_line = {e[0]: e[3] for e in branches}
    loads_at: dict[str, list[tuple[str, int]]] = {}
    for ld in feeder.loads:
        loads_at.setdefault(ld.bus_id, []).append((ld.id, ld.customers if ld.in_service else 0))
    out: list[Section] = []
    for sid, nodes in members.items():
        bus_ids = tuple(n[2:] for n in nodes if n.startswith("b:"))
        eids = [n[2:] for n in nodes if n.startswith("e:")]
        lds = [x for b in bus_ids for x in loads_at.get(b, ())]
        out.append(
            Section(
                id=sid,
                bus_ids=bus_ids,
                line_ids=tuple(e for e in eids if is_line[e]),
                transformer_ids=tuple(e for e in eids if not is_line[e]),
                bounding_switch_ids=tuple(bounding[sid]),
                load_ids=tuple(x[0] for x in lds),
                customers=sum(x[1] for x in lds),
            )
        )
    bus_sec = {k[2:]: v for k, v in sec_of.items() if k.startswith("b:")}
    branch_sec = {k[2:]: v for k, v in sec_of.items() if k.startswith("e:")}
    return tuple(out), bus_sec, branch_sec, sides


class FdirModel:
    """Everything FDIR precomputes for one feeder: topology graph, sections, power flow model."""

    def __init__(
        self, feeder: Feeder, *, powerflow: PowerFlowModel | None = None, graph: TopologyGraph | None = None
    ) -> None:
        self.feeder = feeder
        self.graph = graph or TopologyGraph(feeder)
        self._powerflow = powerflow
        secs, bus_sec, branch_sec, sides = _build_sections(feeder)
        self.sections = secs
        self.section_by_id: Mapping[str, Section] = MappingProxyType({s.id: s for s in secs})
        self.section_of_bus: Mapping[str, str] = MappingProxyType(bus_sec)
        self.section_of_branch: Mapping[str, str] = MappingProxyType(branch_sec)
        self.switch_sides: Mapping[str, tuple[str, str]] = MappingProxyType(sides)
        self.switches = {s.id: s for s in feeder.switches}
        self.normal_states: Mapping[str, bool] = MappingProxyType({s.id: s.normally_open for s in feeder.switches})
        self.model_states: Mapping[str, bool] = MappingProxyType({s.id: s.is_open for s in feeder.switches})
        self.adjacency: dict[str, list[tuple[str, str]]] = {s.id: [] for s in secs}
        for sw_id, (a, b) in sides.items():
            if a != b:
                self.adjacency[a].append((sw_id, b))
                self.adjacency[b].append((sw_id, a))
        self.customers_at_bus: dict[str, int] = {}
        self.load_bus: dict[str, str] = {}
        for ld in feeder.loads:
            self.load_bus[ld.id] = ld.bus_id
            if ld.in_service:
                self.customers_at_bus[ld.bus_id] = self.customers_at_bus.get(ld.bus_id, 0) + ld.customers
        line_from = {ln.id: ln.from_bus_id for ln in feeder.lines}
        # Fault indicator points: key -> (line id, bus id at which it senses).
        fi: dict[str, tuple[str, str]] = {}
        for ind in feeder.fault_indicators:
            fi[ind.id] = (ind.line_id, ind.bus_id)
            fi.setdefault(ind.line_id, (ind.line_id, ind.bus_id))
        for lid, b in line_from.items():
            fi.setdefault(lid, (lid, b))
        self.fi_points: Mapping[str, tuple[str, str]] = MappingProxyType(fi)

    @property
    def powerflow(self) -> PowerFlowModel:
        if self._powerflow is None:
            self._powerflow = PowerFlowModel(self.feeder)
        return self._powerflow

    # Loads that plans are validated at: the state estimator's pre-fault loads when the caller set
    # them (set_loads), else the model's nominal loads. Loads missing from the mapping keep theirs.
    load_p_mw: Mapping[str, float] | None = None
    load_q_mvar: Mapping[str, float] | None = None

    def set_loads(self, p_mw: Mapping[str, float] | None, q_mvar: Mapping[str, float] | None = None) -> None:
        self.load_p_mw = dict(p_mw) if p_mw else None
        self.load_q_mvar = dict(q_mvar) if q_mvar else None

    @property
    def load_basis(self) -> str:
        """ESTIMATED when plans are validated at the estimator's loads, else MODEL."""
        return "ESTIMATED" if self.load_p_mw else "MODEL"

    def solve(self, switch_states: Mapping[str, bool]) -> PowerFlowResult:
        """The power flow a plan is validated with (at :attr:`load_basis` loads)."""
        return self.powerflow.solve(switch_states=switch_states, load_p_mw=self.load_p_mw,
                                    load_q_mvar=self.load_q_mvar)

    def states(self, switch_states: Mapping[str, bool] | None) -> dict[str, bool]:
        """A full id -> is_open map: the model's recorded positions overridden by ``switch_states``."""
        out = dict(self.model_states)
        if switch_states:
            for k, v in switch_states.items():
                if k not in out:
                    raise NotFound(f"switch {k!r} is not in feeder {self.feeder.id!r}; check the id", element_id=k)
                out[k] = bool(v)
        return out

    def customers_on(self, bus_ids: Iterable[str]) -> int:
        c = self.customers_at_bus
        return sum(c.get(b, 0) for b in bus_ids)

    def loads_on(self, bus_ids: Iterable[str]) -> tuple[str, ...]:
        bs = set(bus_ids)
        return tuple(ld.id for ld in self.feeder.loads if ld.bus_id in bs)

    def zone_buses(self, section_ids: Iterable[str]) -> frozenset[str]:
        return frozenset(b for s in section_ids for b in self.section_by_id[s].bus_ids)

    def energized_sections(self, topo: TopologyResult, states: Mapping[str, bool]) -> set[str]:
        out = {self.section_of_bus[b] for b in topo.energized_bus_ids}
        for sec in self.sections:  # bus-less sections: live through a closed switch to a live side
            if not sec.bus_ids and sec.id not in out:
                for sw_id, other in self.adjacency[sec.id]:
                    if not states.get(sw_id, True) and other in out:
                        out.add(sec.id)
                        break
        return out


def _model(m: FdirModel | Feeder) -> FdirModel:
    return m if isinstance(m, FdirModel) else FdirModel(m)


# ---------------------------------------------------------------------------------------- detect


@dataclass(frozen=True, slots=True)
class Detection:
    kind: FaultKind
    device_id: str | None  # the protective device that operated (most upstream when several)
    device_ids: tuple[str, ...]
    deenergized_bus_ids: frozenset[str]  # interrupted by this event
    load_ids: tuple[str, ...]
    customers: int
    explanation: str


def detect(model: FdirModel | Feeder, switch_states: Mapping[str, bool] | None, indications: Indications) -> Detection:
    """Classify an event as MOMENTARY, SUSTAINED or NONE and find what it interrupted."""
    m = _model(model)
    states = m.states(switch_states)
    for d in indications.tripped_devices | indications.reclosed:
        if d not in states:
            raise NotFound(f"tripped device {d!r} is not a switch of feeder {m.feeder.id!r}", element_id=d)
    sustained = sorted(
        d
        for d in indications.tripped_devices - indications.reclosed
        if states[d] or (switch_states is not None and d not in switch_states)
    )
    now_states = {**states, **{d: True for d in sustained}}
    topo_now = m.graph.process(now_states)
    if sustained:
        before = m.graph.process({**now_states, **{d: False for d in sustained}})
        lost = before.energized_bus_ids - topo_now.energized_bus_ids
        # The most upstream device is the one whose closing alone restores the most buses.
        best = max(
            sustained,
            key=lambda d: (len(m.graph.process({**now_states, d: False}).energized_bus_ids), d),
        )
        loads = m.loads_on(lost)
        return Detection(
            FaultKind.SUSTAINED,
            best,
            tuple(sustained),
            lost,
            loads,
            m.customers_on(lost),
            f"sustained interruption: {', '.join(sustained)} tripped and stayed open; "
            f"{len(lost)} buses, {m.customers_on(lost)} customers without supply",
        )
    lg_dark = sorted(ld for ld in indications.last_gasp_loads if m.load_bus.get(ld) in topo_now.deenergized_bus_ids)
    if lg_dark:
        normal = m.graph.process(m.normal_states)
        lost = topo_now.deenergized_bus_ids & normal.energized_bus_ids
        lg_buses = {m.load_bus[ld] for ld in lg_dark}
        device = None
        for sw_id in sorted(states):
            sw = m.switches[sw_id]
            if states[sw_id] and not m.normal_states[sw_id] and sw.kind.interrupts_fault_current:
                trial = m.graph.process({**states, sw_id: False})
                if lg_buses & trial.energized_bus_ids:
                    device = sw_id
                    break
        loads = m.loads_on(lost)
        return Detection(
            FaultKind.SUSTAINED,
            device,
            (device,) if device else (),
            lost,
            loads,
            m.customers_on(lost),
            f"sustained interruption from last-gasp messages ({len(lg_dark)} meters on de-energized buses); "
            + (f"protective device {device} is open" if device else "no open protective device identified: patrol"),
        )
    operated = sorted(indications.tripped_devices | indications.reclosed)
    if operated:
        note = ""
        if indications.last_gasp_loads:
            note = "; last-gasp messages came from meters that are energized again (sent during the dead time)"
        return Detection(
            FaultKind.MOMENTARY,
            operated[0],
            tuple(operated),
            frozenset(),
            (),
            0,
            f"momentary interruption: {', '.join(operated)} tripped and reclosed successfully{note}",
        )
    return Detection(FaultKind.NONE, None, (), frozenset(), (), 0, "no trip and no de-energized last-gasp meter")


# ---------------------------------------------------------------------------------------- locate


@dataclass(frozen=True, slots=True)
class CandidateSection:
    section_id: str
    line_ids: tuple[str, ...]
    bus_ids: tuple[str, ...]
    bounding_switch_ids: tuple[str, ...]
    score: float  # consistency with the indicators with data, in [-1, 1]; 1 = all agree
    explanation: str


@dataclass(frozen=True, slots=True)
class Location:
    tripping_device: str
    candidates: tuple[CandidateSection, ...]  # best first (at most 10)
    faulted_section_ids: tuple[str, ...]  # the best-scoring sections: the zone to isolate
    confident: bool
    explanation: str


def locate(
    model: FdirModel | Feeder,
    switch_states: Mapping[str, bool] | None,
    tripping_device: str,
    indications: Indications,
) -> Location:
    """Rank the sections behind ``tripping_device`` by agreement with the fault indicators.

    ``switch_states`` are the pre-trip positions; the tripping device is taken as closed.
    """
    m = _model(model)
    if tripping_device not in m.switches:
        raise NotFound(
            f"device {tripping_device!r} is not a switch of feeder {m.feeder.id!r}", element_id=tripping_device
        )
    states = {**m.states(switch_states), tripping_device: False}
    topo = m.graph.process(states)
    fb = topo.feeding_branch
    down = m.graph.downstream_buses(topo, tripping_device)
    if not down:
        raise BadInput(
            f"nothing is fed through {tripping_device!r} in the pre-trip positions given; pass the positions "
            "before the trip",
            element_id=tripping_device,
        )
    children: dict[str, list[str]] = {}
    for b in down:
        up = fb.get(b)
        if up is not None and up[0] in down:
            children.setdefault(up[0], []).append(b)
    roots = [b for b in down if b not in fb or fb[b][0] not in down]
    tin: dict[str, int] = {}
    tout: dict[str, int] = {}
    depth: dict[str, int] = {}
    clock = 0
    for r in sorted(roots):
        stack: list[tuple[str, bool]] = [(r, False)]
        depth[r] = 0
        while stack:
            u, done = stack.pop()
            if done:
                tout[u] = clock
                continue
            tin[u] = clock
            clock += 1
            stack.append((u, True))
            for c in children.get(u, ()):
                depth[c] = depth[u] + 1
                stack.append((c, False))
    child_of_branch: dict[str, str] = {fb[b][1]: b for b in down if b in fb}
    # Candidate sections: every section with a bus downstream, and bus-less ones on the tree.
    cand: dict[str, str] = {}  # section -> representative bus (its shallowest)
    for b in down:
        s = m.section_of_bus[b]
        if s not in cand or depth[b] < depth[cand[s]]:
            cand[s] = b
    for br, b in child_of_branch.items():
        s = m.section_of_branch.get(br)
        if s is not None and not m.section_by_id[s].bus_ids:
            cand[s] = b

    def sees(point: tuple[str, str], sid: str) -> bool | None:
        line_id, at_bus = point
        sec = m.section_by_id[sid]
        child = child_of_branch.get(line_id)
        if child is None:
            return False  # the line carries nothing from this device
        reversed_flow = child == at_bus
        if line_id in sec.line_ids:
            if m.section_of_bus.get(at_bus) == sid and sec.bus_ids:
                return None  # indicator inside the section: the fault may be on either side
            return not reversed_flow
        x = at_bus if reversed_flow else child
        r = tin[cand[sid]]
        return tin[x] <= r < tout[x]

    readings = {k: v for k, v in indications.fault_indicators.items()}
    unknown = [k for k in readings if k not in m.fi_points]
    known = [(k, v) for k, v in readings.items() if v is not None and k in m.fi_points]
    missing = sorted(k for k, v in readings.items() if v is None)
    scored: list[tuple[float, int, str, str]] = []
    for sid, rep in cand.items():
        match = mism = 0
        bad: list[str] = []
        for k, v in known:
            p = sees(m.fi_points[k], sid)
            if p is None or p == v:  # inside the section: some fault point there agrees with it
                match += 1
            else:
                mism += 1
                bad.append(k)
        n = len(known)
        score = (match - mism) / n if n else 0.0
        expl = f"{match} of {n} indicators agree" + (f"; disagree: {', '.join(sorted(bad)[:5])}" if bad else "")
        scored.append((score, depth[rep], sid, expl))
    # Best score first; among equals the shallowest first (the conservative end of the zone).
    scored.sort(key=lambda x: (-x[0], x[1], x[2]))
    top = scored[0][0]
    zone = tuple(s[2] for s in scored if abs(s[0] - top) < 1e-9)
    cands = tuple(
        CandidateSection(
            sid,
            m.section_by_id[sid].line_ids,
            m.section_by_id[sid].bus_ids,
            m.section_by_id[sid].bounding_switch_ids,
            score,
            expl,
        )
        for score, _, sid, expl in scored[:10]
    )
    contradictory = top < 1.0 - 1e-9 and bool(known)
    confident = len(zone) == 1 and bool(known) and not contradictory
    parts = [f"tripped by {tripping_device}; {len(cand)} sections downstream"]
    seen = sorted(k for k, v in known if v)
    if seen:
        parts.append(f"indicators that saw fault current: {', '.join(seen[:8])}")
    if not known:
        parts.append("no fault indicator data: every section behind the device is suspect; patrol needed")
    if missing:
        parts.append(f"no data from {', '.join(missing[:8])}")
    if unknown:
        parts.append(f"ignored unknown indicator ids {', '.join(sorted(unknown)[:5])}")
    if contradictory:
        parts.append(f"indications are contradictory (best agreement {top:.2f}); candidates ranked")
    if len(zone) > 1 and known:
        parts.append(f"{len(zone)} sections tie; all are treated as faulted")
    if confident:
        parts.append(f"fault in {zone[0]}")
    return Location(tripping_device, cands, zone, confident, "; ".join(parts))


# ---------------------------------------------------------------------------------------- isolate


@dataclass(frozen=True, slots=True)
class Isolation:
    zone_section_ids: tuple[str, ...]  # the faulted zone after any expansion
    zone_bus_ids: frozenset[str]
    open_switch_ids: tuple[str, ...]  # to operate, upstream first
    already_open_switch_ids: tuple[str, ...]  # boundary switches already open (tripped device, ties)
    expanded_section_ids: tuple[str, ...]  # healthy sections given up to reach a controllable switch
    extra_customers_left: int
    explanation: str


def isolate(
    model: FdirModel,
    switch_states: Mapping[str, bool] | None,
    location: Location,
    *,
    blocked: Iterable[str] = (),
) -> Isolation:
    """The switches to open around the faulted zone; ``blocked`` switches (failed, tagged) count as
    not operable, like fuses and disconnectors, and push the boundary outward."""
    m = model
    states = m.states(switch_states)
    blocked_set = set(blocked)
    zone = set(location.faulted_section_ids)
    original = set(zone)
    notes: list[str] = []
    while True:
        grow: list[tuple[str, str]] = []
        for sid in sorted(zone):
            for sw_id, other in m.adjacency[sid]:
                if other in zone or states[sw_id]:
                    continue
                sw = m.switches[sw_id]
                if not sw.kind.remote_controllable or sw_id in blocked_set:
                    grow.append((sw_id, other))
        if not grow:
            break
        for sw_id, other in grow:
            if other not in zone:
                why = "failed/blocked" if sw_id in blocked_set else f"a {m.switches[sw_id].kind.value.lower()}"
                notes.append(f"{sw_id} is {why}: isolation extends into {other}")
                zone.add(other)
    boundary: list[str] = []
    already: list[str] = []
    for sid in sorted(zone):
        for sw_id, other in m.adjacency[sid]:
            if other in zone:
                continue
            if states[sw_id]:
                if sw_id not in already:
                    already.append(sw_id)
            elif sw_id not in boundary:
                boundary.append(sw_id)
    # Upstream first: the switch on the tripped device's side (the one its pre-trip path crosses).
    pre = m.graph.process({**states, location.tripping_device: False})
    depth_cache: dict[str, int] = {}

    def depth(bus: str) -> int:
        if bus in depth_cache:
            return depth_cache[bus]
        d, cur = 0, bus
        while cur in pre.feeding_branch:
            cur = pre.feeding_branch[cur][0]
            d += 1
        depth_cache[bus] = d
        return d

    boundary.sort(key=lambda s: (depth(m.switches[s].bus_id), s))
    expanded = tuple(sorted(zone - original))
    extra = sum(m.section_by_id[s].customers for s in expanded)
    zone_t = tuple(sorted(zone))
    expl = f"isolate {', '.join(zone_t)} by opening {', '.join(boundary) or 'nothing more'}"
    if already:
        expl += f"; already open: {', '.join(already)}"
    if notes:
        expl += "; " + "; ".join(notes) + f" ({extra} more customers left out)"
    return Isolation(zone_t, m.zone_buses(zone), tuple(boundary), tuple(already), expanded, extra, expl)


# ---------------------------------------------------------------------------------------- restore


@dataclass(frozen=True, slots=True)
class PowerFlowSummary:
    converged: bool
    min_vm_pu: float | None
    max_loading_percent: float | None
    losses_mw: float | None
    band: Band  # NORMAL: no new violation at all; EMERGENCY: new normal-band violations only


@dataclass(frozen=True, slots=True)
class Restoration:
    upstream_device_id: str | None  # tripped device re-closed, if any
    open_switch_ids: tuple[str, ...]  # sectionalizing switches opened to split/shed
    close_switch_ids: tuple[str, ...]  # ties closed
    final_states: Mapping[str, bool]
    customers_restored: int  # interrupted customers energized in the final state
    customers_left: int  # interrupted customers still without supply
    validation: PowerFlowSummary | None
    evaluations: int
    search_cut: bool
    rejected: tuple[str, ...]  # why candidates were refused
    explanation: str


def _summary(res: PowerFlowResult, band: Band) -> PowerFlowSummary:
    return PowerFlowSummary(res.converged, res.min_vm_pu, res.max_line_loading_percent, res.losses_mw, band)


def _violation_text(v: Violation) -> str:
    if v.kind == "OVERLOAD":
        return f"overload {v.element_id} at {v.value:.0f}% (> {v.limit:.0f}% {v.band.lower()})"
    sign = "<" if v.kind == "UNDERVOLTAGE" else ">"
    return f"leave {v.element_id} at {v.value:.3f} pu ({sign} {v.limit:.3f} pu {v.band.lower()})"


def _worst(vs: list[Violation]) -> Violation:
    return max(vs, key=lambda v: abs(v.value - v.limit) / max(abs(v.limit), 1e-9))


@dataclass
class _Check:
    ok: bool
    band: Band
    result: PowerFlowResult | None
    why: str


class _Validator:
    """Power flow + radiality checks against the post-isolation baseline."""

    def __init__(self, m: FdirModel, base_states: dict[str, bool]) -> None:
        self.m = m
        self.base_topo = m.graph.process(base_states)
        self.base = m.solve(base_states)
        self.base_viol = {(v.kind, v.element_id): v.band for v in self.base.violations}
        self.evaluations = 1

    def check(self, states: dict[str, bool]) -> _Check:
        topo = self.m.graph.process(states)
        if len(topo.loops) > len(self.base_topo.loops) or len(topo.paralleled_sources) > len(
            self.base_topo.paralleled_sources
        ):
            what = "parallel sources" if topo.paralleled_sources else "close a loop"
            return _Check(False, "EMERGENCY", None, f"would {what} (radial operation required)")
        self.evaluations += 1
        res = self.m.solve(states)
        if not res.converged:
            return _Check(False, "EMERGENCY", res, f"power flow does not converge ({res.reason})")
        new = [
            v
            for v in res.violations
            if self.base_viol.get((v.kind, v.element_id)) != v.band
            and not (v.band == "NORMAL" and self.base_viol.get((v.kind, v.element_id)) == "EMERGENCY")
        ]
        emergency = [v for v in new if v.band == "EMERGENCY"]
        if emergency:
            return _Check(False, "EMERGENCY", res, "would " + _violation_text(_worst(emergency)))
        return _Check(True, "EMERGENCY" if new else "NORMAL", res, "")


@dataclass(frozen=True)
class _Candidate:
    ties: tuple[str, ...]
    cuts: tuple[str, ...]
    restored_sections: frozenset[str]
    customers: int
    fed: tuple[tuple[str, frozenset[str]], ...]  # tie -> sections it feeds

    @property
    def ops(self) -> int:
        return len(self.ties) + len(self.cuts)

    def describe(self) -> str:
        s = "tie " + " + ".join(self.ties)
        if self.cuts:
            s += " with " + ", ".join(self.cuts) + " opened"
        return s


def _island_tree(
    m: FdirModel, island: set[str], states: Mapping[str, bool]
) -> tuple[dict[str, tuple[str, str] | None], dict[str, int]]:
    root = min(island)
    par: dict[str, tuple[str, str] | None] = {root: None}
    dep = {root: 0}
    stack = [root]
    while stack:
        u = stack.pop()
        for sw_id, v in m.adjacency[u]:
            if v in island and v not in par and not states[sw_id]:
                par[v] = (u, sw_id)
                dep[v] = dep[u] + 1
                stack.append(v)
    return par, dep


def _path_switches(par: dict[str, tuple[str, str] | None], dep: dict[str, int], a: str, b: str) -> list[str]:
    out: list[str] = []
    while a != b:
        if dep[a] >= dep[b]:
            p = par[a]
            assert p is not None
            out.append(p[1])
            a = p[0]
        else:
            p = par[b]
            assert p is not None
            out.append(p[1])
            b = p[0]
    return out


def _parts(m: FdirModel, island: set[str], states: Mapping[str, bool], cuts: Iterable[str]) -> dict[str, int]:
    """Section -> part number after opening ``cuts`` inside the island."""
    cut = set(cuts)
    part: dict[str, int] = {}
    n = 0
    for s in sorted(island):
        if s in part:
            continue
        part[s] = n
        stack = [s]
        while stack:
            u = stack.pop()
            for sw_id, v in m.adjacency[u]:
                if v in island and v not in part and not states[sw_id] and sw_id not in cut:
                    part[v] = n
                    stack.append(v)
        n += 1
    return part


def _evaluate_candidate(
    m: FdirModel, island: set[str], states: Mapping[str, bool], ties: tuple[tuple[str, str], ...], cuts: tuple[str, ...]
) -> _Candidate | None:
    part = _parts(m, island, states, cuts)
    by_part: dict[int, list[str]] = {}
    for t, entry in ties:
        by_part.setdefault(part[entry], []).append(t)
    if any(len(v) > 1 for v in by_part.values()):
        return None  # two ties into one part would parallel sources / close a loop
    if len(by_part) < len(ties):
        return None
    fed: list[tuple[str, frozenset[str]]] = []
    restored: set[str] = set()
    for p, ts in by_part.items():
        secs = frozenset(s for s, q in part.items() if q == p)
        fed.append((ts[0], secs))
        restored |= secs
    if cuts:
        # Every cut must matter: it separates two parts, one of which is fed.
        for c in cuts:
            a, b = m.switch_sides[c]
            if part[a] == part[b]:
                return None
    cust = sum(m.section_by_id[s].customers for s in restored)
    return _Candidate(tuple(t for t, _ in ties), tuple(sorted(cuts)), frozenset(restored), cust, tuple(fed))


def _enumerate(
    m: FdirModel,
    island: set[str],
    states: Mapping[str, bool],
    ties: list[tuple[str, str]],
    inner: list[str],
    par: dict[str, tuple[str, str] | None],
    dep: dict[str, int],
    max_ties: int,
    max_candidates: int,
) -> tuple[list[_Candidate], bool]:
    """Tie/cut combinations for one dark island: each tie alone; k ties (k <= max_ties) with k-1
    cuts on the paths between their entry sections; one tie shedding a far part with one cut."""
    cands: dict[tuple[tuple[str, ...], tuple[str, ...]], _Candidate] = {}
    cut = False

    def add(ts: tuple[tuple[str, str], ...], cs: tuple[str, ...]) -> None:
        key = (tuple(sorted(t for t, _ in ts)), tuple(sorted(cs)))
        if key not in cands:
            c = _evaluate_candidate(m, island, states, ts, cs)
            if c is not None and c.customers > 0:
                cands[key] = c

    for t in ties:
        add((t,), ())
    for k in range(2, min(max_ties, len(ties)) + 1):
        for combo in itertools.combinations(ties, k):
            if len(cands) >= max_candidates:
                cut = True
                break
            entries = [e for _, e in combo]
            if len(set(entries)) < k:
                continue
            on_paths = {sw for a, b in itertools.combinations(entries, 2) for sw in _path_switches(par, dep, a, b)}
            pool = sorted(sw for sw in on_paths if sw in inner)
            for cs in itertools.combinations(pool, k - 1):
                add(combo, cs)
    for t in ties:  # one tie, shedding a far part
        for c in inner:
            if len(cands) >= max_candidates:
                cut = True
                break
            add((t,), (c,))
    return list(cands.values()), cut


def restore(
    model: FdirModel,
    switch_states: Mapping[str, bool] | None,
    isolation: Isolation,
    tripped_device: str | None,
    interrupted_bus_ids: Iterable[str],
    *,
    blocked: Iterable[str] = (),
    max_ties: int = 3,
    max_evaluations: int = 24,
    max_candidates: int = 5000,
    time_budget_s: float = 0.8,
    clock: Callable[[], float] = time.thread_time,
) -> Restoration:
    """Restore the interrupted healthy area after ``isolation`` (switch_states: after isolation)."""
    m = model
    t0 = clock()
    blocked_set = set(blocked)
    states = m.states(switch_states)
    for sw in isolation.open_switch_ids:
        states[sw] = True
    zone = set(isolation.zone_section_ids)
    notes: list[str] = []
    upstream = None
    if tripped_device is not None and states.get(tripped_device):
        bounding_zone = bool(set(m.switch_sides[tripped_device]) & zone)
        if bounding_zone:
            notes.append(f"{tripped_device} stays open: the fault is directly behind it")
        elif tripped_device in blocked_set:
            notes.append(f"{tripped_device} cannot be closed (failed/blocked)")
        else:
            states[tripped_device] = False
            upstream = tripped_device
    val = _Validator(m, states)
    rejected: list[str] = []
    if upstream is not None and not val.base.converged:
        states[upstream] = True
        notes.append(f"re-closing {upstream} fails the power flow; it stays open")
        upstream = None
        val = _Validator(m, states)
    # The budget bounds the candidate search, not the baseline solve before it: that first solve in
    # a fresh process pays pandapower's warm-up (about 0.3 s of CPU), and counting it left a cold
    # actor with no time to try a single tie.
    t0 = clock()
    interrupted = set(interrupted_bus_ids)
    zone_buses = isolation.zone_bus_ids
    chosen_res: PowerFlowResult | None = val.base if val.base.converged else None
    chosen_band: Band = "NORMAL"
    opens: list[str] = []
    closes: list[str] = []
    cut_search = False
    topo = val.base_topo
    live = m.energized_sections(topo, states)
    dark_buses = interrupted - topo.energized_bus_ids - zone_buses
    dark_secs = {m.section_of_bus[b] for b in dark_buses} - zone
    # Dark islands (connected over closed switches).
    islands: list[set[str]] = []
    seen: set[str] = set()
    for s in sorted(dark_secs):
        if s in seen:
            continue
        comp = {s}
        stack = [s]
        while stack:
            u = stack.pop()
            for sw_id, v in m.adjacency[u]:
                if v not in comp and not states[sw_id] and v not in zone and v not in live:
                    comp.add(v)
                    stack.append(v)
        seen |= comp
        islands.append(comp)
    islands.sort(key=lambda isl: -sum(m.section_by_id[s].customers for s in isl))
    left_notes: list[str] = []
    for island in islands:
        isl_cust = sum(m.section_by_id[s].customers for s in island)
        if isl_cust == 0:
            continue
        ties: list[tuple[str, str]] = []  # (tie switch, entry section in island)
        for s in sorted(island):
            for sw_id, other in m.adjacency[s]:
                sw = m.switches[sw_id]
                if (
                    states[sw_id]
                    and other in live
                    and other not in zone
                    and sw.kind.remote_controllable
                    and sw_id not in blocked_set
                    and sw_id != tripped_device
                ):
                    ties.append((sw_id, s))
        ties.sort(key=lambda t: (not m.normal_states[t[0]], t[0]))  # normally-open ties first
        if not ties:
            left_notes.append(
                f"{isl_cust} customers in {', '.join(sorted(island)[:6])} left: no tie switch reaches a live feeder"
            )
            continue
        par, dep = _island_tree(m, island, states)
        inner = [
            sw_id
            for s in island
            for sw_id, v in m.adjacency[s]
            if v in island
            and s < v
            and not states[sw_id]
            and m.switches[sw_id].kind.remote_controllable
            and sw_id not in blocked_set
        ]
        inner.sort()
        cand_list, enum_cut = _enumerate(m, island, states, ties, inner, par, dep, max_ties, max_candidates)
        cut_search = cut_search or enum_cut
        order = sorted(cand_list, key=lambda c: (-c.customers, c.ops, c.ties, c.cuts))
        failed_parts: list[tuple[str, frozenset[str]]] = []
        best: tuple[_Candidate, _Check] | None = None
        for c in order:
            if best is not None and (c.customers, c.ops) != (best[0].customers, best[0].ops):
                break
            if any(t == ft and secs >= fs for t, secs in c.fed for ft, fs in failed_parts):
                continue  # feeds a superset of what already failed through the same tie
            # Time only cuts the tie-break among equally good candidates once one has passed; the
            # search for a first passing candidate is bounded by max_evaluations alone. On a slow or
            # contended host the choice may get narrower, never empty.
            if val.evaluations >= max_evaluations or (best is not None and clock() - t0 > time_budget_s):
                cut_search = True
                break
            trial = dict(states)
            for t in c.ties:
                trial[t] = False
            for s in c.cuts:
                trial[s] = True
            chk = val.check(trial)
            if not chk.ok:
                rejected.append(f"{c.describe()} rejected: {chk.why}")
                if len(c.ties) == 1:
                    failed_parts.append(c.fed[0])
                continue
            assert chk.result is not None
            if best is None:
                best = (c, chk)
            else:
                r0, r1 = best[1].result, chk.result
                assert r0 is not None
                if (r1.losses_mw or 0.0, -(r1.min_vm_pu or 0.0)) < (r0.losses_mw or 0.0, -(r0.min_vm_pu or 0.0)):
                    best = (c, chk)
        if best is None:
            left_notes.append(f"{isl_cust} customers in {', '.join(sorted(island)[:6])} left: no candidate passes")
            continue
        c, chk = best
        for t in c.ties:
            states[t] = False
            closes.append(t)
        for s in c.cuts:
            states[s] = True
            opens.append(s)
        chosen_res, chosen_band = chk.result, chk.band
        if chk.band == "EMERGENCY":
            notes.append(f"{c.describe()} holds within the emergency band only")
        if c.customers < isl_cust:
            left_notes.append(
                f"{isl_cust - c.customers} customers left in {', '.join(sorted(island - c.restored_sections)[:6])}: "
                "no tie combination can carry them within emergency limits"
            )
    final_topo = m.graph.process(states)
    restored = m.customers_on(interrupted & final_topo.energized_bus_ids)
    total = m.customers_on(interrupted)
    summary = _summary(chosen_res, chosen_band) if chosen_res is not None else None
    parts = []
    if upstream:
        parts.append(f"re-close {upstream}")
    if closes:
        parts.append(f"close {', '.join(closes)}" + (f" after opening {', '.join(opens)}" if opens else ""))
    expl = ("restore: " + "; ".join(parts) if parts else "no restoration possible") + (
        f"; {restored} of {total} interrupted customers restored"
    )
    if notes:
        expl += "; " + "; ".join(notes)
    if left_notes:
        expl += "; " + "; ".join(left_notes)
    if rejected:
        expl += "; rejected: " + "; ".join(rejected[:4])
    if cut_search:
        expl += (
            f"; search cut at {val.evaluations} power flows / {clock() - t0:.2f} s "
            f"(limits {max_evaluations}, {time_budget_s} s)"
        )
    return Restoration(
        upstream,
        tuple(opens),
        tuple(closes),
        MappingProxyType(states),
        restored,
        total - restored,
        summary,
        val.evaluations,
        cut_search,
        tuple(rejected),
        expl,
    )


# ---------------------------------------------------------------------------------------- plan


@dataclass(frozen=True, slots=True)
class PlanStep:
    order: int
    action: PlanAction
    device_id: str
    expected_is_open: bool
    customers_restored_or_lost: int  # > 0 restored by this step, < 0 lost
    explanation: str


@dataclass(frozen=True, slots=True)
class SwitchingPlan:
    id: str
    feeder_id: str
    fault: Location | None
    steps: tuple[PlanStep, ...]
    customers_interrupted: int
    customers_restored: int
    customers_left: int
    validated_power_flow: PowerFlowSummary | None
    warnings: tuple[str, ...]
    explanation: str
    tripped_device: str | None = None
    isolation: Isolation | None = None
    interrupted_bus_ids: frozenset[str] = frozenset()
    final_states: Mapping[str, bool] = field(default_factory=lambda: _EMPTY)
    blocked_device_ids: frozenset[str] = frozenset()
    evaluations: int = 0
    search_cut: bool = False


@dataclass(frozen=True, slots=True)
class SafeStop:
    """Stop switching: keep ``keep_open_switch_ids`` open and hand over to the operator."""

    feeder_id: str
    keep_open_switch_ids: tuple[str, ...]
    explanation: str


def _plan_id(feeder_id: str, *parts: object) -> str:
    h = hashlib.sha256(repr((feeder_id, *parts)).encode()).hexdigest()[:16]
    return f"plan-{h}"


def _steps(
    m: FdirModel, start: Mapping[str, bool], ops: list[tuple[str, bool, str]]
) -> tuple[tuple[PlanStep, ...], dict[str, bool]]:
    """Each operation (device, is_open target, why) as an OPEN/CLOSE step then a VERIFY step."""
    states = dict(start)
    steps: list[PlanStep] = []
    energized = m.customers_on(m.graph.process(states).energized_bus_ids)
    for dev, target, why in ops:
        if states[dev] == target:
            continue
        states[dev] = target
        now = m.customers_on(m.graph.process(states).energized_bus_ids)
        delta = now - energized
        energized = now
        action = PlanAction.OPEN if target else PlanAction.CLOSE
        steps.append(PlanStep(len(steps) + 1, action, dev, target, delta, why))
        steps.append(
            PlanStep(
                len(steps) + 1,
                PlanAction.VERIFY,
                dev,
                target,
                0,
                f"confirm {dev} reports {'open' if target else 'closed'} before the next step",
            )
        )
    return tuple(steps), states


def plan(
    model: FdirModel,
    switch_states: Mapping[str, bool] | None,
    detection: Detection,
    location: Location,
    *,
    blocked: Iterable[str] = (),
    interrupted_bus_ids: Iterable[str] | None = None,
    warnings: Iterable[str] = (),
    time_budget_s: float = 0.8,
    max_ties: int = 3,
    max_evaluations: int = 24,
    clock: Callable[[], float] = time.thread_time,
) -> SwitchingPlan:
    """Isolation then restoration steps for a located fault, from the present ``switch_states``."""
    m = model
    t0 = clock()
    blocked_set = frozenset(blocked)
    now = m.states(switch_states)
    iso = isolate(m, now, location, blocked=blocked_set)
    interrupted = frozenset(detection.deenergized_bus_ids if interrupted_bus_ids is None else interrupted_bus_ids)
    rest = restore(
        m,
        now,
        iso,
        location.tripping_device,
        interrupted,
        blocked=blocked_set,
        max_ties=max_ties,
        max_evaluations=max_evaluations,
        time_budget_s=max(0.0, time_budget_s - (clock() - t0)),
        clock=clock,
    )
    ops: list[tuple[str, bool, str]] = [
        (s, True, f"isolate the faulted zone ({', '.join(iso.zone_section_ids)})") for s in iso.open_switch_ids
    ]
    if rest.upstream_device_id:
        ops.append((rest.upstream_device_id, False, "re-close the tripped device: the fault is isolated downstream"))
    ops += [(s, True, "split the dark area so that each part is fed by one tie") for s in rest.open_switch_ids]
    ops += [(s, False, "close tie to restore healthy sections from a live feeder") for s in rest.close_switch_ids]
    steps, final = _steps(m, now, ops)
    # Safety: the faulted zone must stay dead in the final state.
    final_topo = m.graph.process(final)
    warns = list(warnings)
    if iso.zone_bus_ids & final_topo.energized_bus_ids:
        return SwitchingPlan(
            _plan_id(m.feeder.id, "unsafe", iso.zone_section_ids),
            m.feeder.id,
            location,
            (),
            len(interrupted),
            0,
            0,
            None,
            ("the plan would energize the faulted zone: refused",),
            "refused: unsafe",
            location.tripping_device,
            iso,
            interrupted,
            MappingProxyType(now),
            blocked_set,
        )
    if not location.confident:
        warns.append("fault location is not certain: " + location.explanation)
    if iso.expanded_section_ids:
        warns.append(iso.explanation)
    if rest.search_cut:
        warns.append("restoration search was cut by its bounds; a better plan may exist")
    total = m.customers_on(interrupted)
    expl = f"{location.explanation}. {iso.explanation}. {rest.explanation}"
    return SwitchingPlan(
        id=_plan_id(
            m.feeder.id,
            location.tripping_device,
            iso.zone_section_ids,
            tuple(s.device_id for s in steps),
            sorted(blocked_set),
        ),
        feeder_id=m.feeder.id,
        fault=location,
        steps=steps,
        customers_interrupted=total,
        customers_restored=rest.customers_restored,
        customers_left=rest.customers_left,
        validated_power_flow=rest.validation,
        warnings=tuple(warns),
        explanation=expl,
        tripped_device=location.tripping_device,
        isolation=iso,
        interrupted_bus_ids=interrupted,
        final_states=MappingProxyType(final),
        blocked_device_ids=blocked_set,
        evaluations=rest.evaluations,
        search_cut=rest.search_cut,
    )


def _empty_plan(m: FdirModel, states: Mapping[str, bool], det: Detection, why: str) -> SwitchingPlan:
    return SwitchingPlan(
        _plan_id(m.feeder.id, det.kind, det.device_ids),
        m.feeder.id,
        None,
        (),
        det.customers,
        0,
        det.customers,
        None,
        (),
        why,
        det.device_id,
        None,
        det.deenergized_bus_ids,
        MappingProxyType(dict(states)),
    )


def plan_fault(
    model: FdirModel,
    switch_states: Mapping[str, bool] | None,
    indications: Indications,
    *,
    time_budget_s: float = 0.8,
    max_ties: int = 3,
    max_evaluations: int = 24,
    clock: Callable[[], float] = time.thread_time,
) -> SwitchingPlan:
    """Indications to a validated switching plan in one call."""
    m = model
    now = m.states(switch_states)
    det = detect(m, switch_states, indications)
    if det.kind == FaultKind.MOMENTARY:
        return _empty_plan(m, now, det, det.explanation + "; no switching needed")
    if det.kind == FaultKind.NONE:
        return _empty_plan(m, now, det, det.explanation)
    if det.device_id is None:
        return _empty_plan(m, now, det, det.explanation + "; no plan without the operated device")
    now = {**now, **{d: True for d in det.device_ids}}
    pre = {**now, det.device_id: False}
    loc = locate(m, pre, det.device_id, indications)
    return plan(
        m, now, det, loc, time_budget_s=time_budget_s, max_ties=max_ties, max_evaluations=max_evaluations, clock=clock
    )


def replan_after_failure(
    model: FdirModel,
    failed_plan: SwitchingPlan,
    failed_step: PlanStep,
    switch_states: Mapping[str, bool] | None,
    indications: Indications,
    *,
    time_budget_s: float = 0.8,
    clock: Callable[[], float] = time.thread_time,
) -> SwitchingPlan | SafeStop:
    """A new plan from the present positions after ``failed_step`` failed, or a safe stop.

    The failed device is treated as not operable: a switch that did not open pushes the isolation
    outward (upstream: to the next switch towards the source, at worst the tripped device, which
    then stays open); a tie that did not close is replaced by the next best candidate. A trip of
    another device (a second fault) stops the plan: everything open stays open.
    """
    m = model
    now = m.states(switch_states)
    loc = failed_plan.fault
    if loc is None:
        return SafeStop(m.feeder.id, (), "the plan had no located fault; nothing to re-plan")
    new_trips = sorted(indications.tripped_devices - indications.reclosed - {failed_plan.tripped_device or ""})
    open_now = tuple(sorted(s for s, v in now.items() if v and not m.normal_states[s]))
    if new_trips:
        return SafeStop(
            m.feeder.id,
            open_now,
            f"second fault: {', '.join(new_trips)} tripped during restoration; switching stopped, keep "
            f"{', '.join(open_now)} open and run fault location again with the new indications",
        )
    blocked = failed_plan.blocked_device_ids | {failed_step.device_id}
    dev = failed_step.device_id
    what = "open" if failed_step.expected_is_open else "close"
    # A switch that did not open keeps its reported (closed) position; it is not operated again.
    new = plan(
        m,
        now,
        Detection(FaultKind.SUSTAINED, failed_plan.tripped_device, (), failed_plan.interrupted_bus_ids, (), 0, ""),
        loc,
        blocked=blocked,
        interrupted_bus_ids=failed_plan.interrupted_bus_ids,
        warnings=(f"re-planned: step {failed_step.order} ({dev} failed to {what})",),
        time_budget_s=time_budget_s,
        clock=clock,
    )
    if not new.steps and new.isolation is None:
        return SafeStop(m.feeder.id, open_now, "no safe plan: " + new.explanation)
    if new.isolation is not None and new.isolation.zone_bus_ids & m.graph.process(new.final_states).energized_bus_ids:
        return SafeStop(m.feeder.id, open_now, "no plan keeps the faulted zone dead; stop switching")
    return new


def plan_return_to_normal(
    model: FdirModel,
    switch_states: Mapping[str, bool] | None,
    *,
    make_before_break: bool = False,
) -> SwitchingPlan:
    """Steps from the present positions back to the normal configuration (repair done).

    Break-before-make by default: ties that are closed but normally open are opened first (their
    customers see a short interruption), then normally-closed switches are closed, each one next
    to the live area first. ``make_before_break`` closes first: it is offered only when the
    temporary state stays radial; otherwise it falls back to break-before-make and says why.
    """
    m = model
    now = m.states(switch_states)
    target = dict(m.normal_states)
    to_open = sorted(s for s in now if not now[s] and target[s])
    to_close = [s for s in now if now[s] and not target[s]]
    warns: list[str] = []
    # Close order: each switch next to the live area first (breadth-first from the sources).
    states = dict(now)
    for s in to_open:
        states[s] = True
    ordered: list[str] = []
    pending = list(to_close)
    while pending:
        topo = m.graph.process(states)
        live = m.energized_sections(topo, states)
        nxt = next((s for s in sorted(pending) if set(m.switch_sides[s]) & live), sorted(pending)[0])
        ordered.append(nxt)
        pending.remove(nxt)
        states[nxt] = False
    mbb_ok = False
    if make_before_break and to_open:
        trial = dict(now)
        for s in to_close:
            trial[s] = False
        t = m.graph.process(trial)
        base = m.graph.process(m.normal_states)
        mbb_ok = len(t.loops) <= len(base.loops) and len(t.paralleled_sources) <= len(base.paralleled_sources)
        if not mbb_ok:
            warns.append(
                "make-before-break refused: closing before opening the ties would "
                + ("parallel sources" if t.paralleled_sources else "close a loop")
                + "; break-before-make used (short interruption)"
            )
    if mbb_ok:
        ops = [(s, False, "return to normal: close (make before break)") for s in ordered]
        ops += [(s, True, "return to normal: open tie") for s in to_open]
    else:
        ops = [
            (
                s,
                True,
                "return to normal: open tie first (break-before-make, short interruption; closing "
                "first would loop or parallel the feeders)",
            )
            for s in to_open
        ]
        ops += [(s, False, "return to normal: close normally-closed switch") for s in ordered]
    steps, final = _steps(m, now, ops)
    res = m.solve(final)
    band: Band = "EMERGENCY" if any(v.band == "EMERGENCY" for v in res.violations) else "NORMAL"
    brief = sum(-s.customers_restored_or_lost for s in steps if s.customers_restored_or_lost < 0)
    restored = sum(s.customers_restored_or_lost for s in steps if s.customers_restored_or_lost > 0)
    # Who is without supply now and gets it back, plus who the break-before-make steps interrupt
    # briefly: all of them are interrupted during the plan, and its steps restore them.
    dark_now = m.graph.process(now).deenergized_bus_ids & m.graph.process(final).energized_bus_ids
    interrupted = m.customers_on(dark_now) + brief
    expl = f"return to normal in {len([s for s in steps if s.action != PlanAction.VERIFY])} operations; " + (
        "make-before-break" if mbb_ok else f"break-before-make: {brief} customers see a short interruption"
    )
    return SwitchingPlan(
        _plan_id(m.feeder.id, "normal", tuple(s.device_id for s in steps)),
        m.feeder.id,
        None,
        steps,
        interrupted,
        restored,
        max(interrupted - restored, 0),
        _summary(res, band) if res.converged else None,
        tuple(warns),
        expl,
        final_states=MappingProxyType(final),
    )
