"""Loss-minimising radial reconfiguration with a make-before-break switching sequence (pure core).

Input: a frozen feeder whose recorded switch positions, loads and DER are the operating point
(see :mod:`actors.cores.analysis`). Output: the radial configuration of least losses found within
limits, and the switching sequence from the present configuration to it.

Search (:func:`optimal_reconfiguration`):

1. *Sequential switch opening* (Shirmohammadi & Hong, 1989): close every candidate switch, solve
   the meshed network, open the closed candidate with the smallest current whose opening keeps
   every bus supplied; repeat until radial. In a meshed network the currents settle near the
   loss-minimising (optimal-flow) pattern, so this lands at or next to the optimum.
2. *Branch exchange* (Civanlar et al., 1988, generalised): from the best radial configuration so
   far, every neighbour that closes one open candidate and opens another candidate on the loop it
   forms is solved; the best improving neighbour within limits is taken, until none improves
   (from the present configuration when step 1 fails). The result is never worse than now.

Both start points and every neighbour are checked radial and fully supplied (every bus energized
now stays energized) with the topology core before any power flow; each power flow is pandapower
(:class:`~actors.cores.powerflow.PowerFlowModel`: each configuration is a different network, so
the batched engine's per-topology compile would cost the same). A configuration is within limits
when it converges and raises no violation (normal band) that the present configuration does not
already have. On Baran & Wu's 33-bus feeder this finds the published optimum (open 7, 9, 14, 32,
37; 139.5 kW from 202.7 kW); :func:`exhaustive_reconfiguration` proves optimality by enumerating
every radial configuration where that is feasible (``max_configurations``).

Candidates are the remote-controllable switches (fuses and manual disconnectors stay as they are),
or the ``switch_ids`` given. Switches on bus-bus couplers carry no current in the result tables;
they are opened last in step 1.

Sequence (:func:`switching_sequence`): pairs of (CLOSE one switch that must close, OPEN one that
must open on the loop it formed): make-before-break, so no customer is interrupted; after each
pair the network is radial, fully supplied and within limits (checked by power flow), and the
pair chosen at each point is the one with the lowest losses afterwards. When no such ordering
exists the sequence says so (``complete=False``) rather than proposing an unsafe step.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from actors.cores.analysis import NO_PROGRESS, Progress, switch_states, too_large
from actors.cores.powerflow import PowerFlowModel, PowerFlowResult
from actors.cores.topology import TopologyGraph
from graph_schema.errors import NotFound
from graph_schema.model import ElementType, Feeder

Action = Literal["OPEN", "CLOSE"]

MAX_CONFIGURATIONS = 20_000
MAX_EVALUATIONS = 5_000


@dataclass(frozen=True, slots=True)
class SwitchingStep:
    order: int
    device_id: str
    action: Action
    # Losses and lowest voltage once the pair this step belongs to is complete (after its OPEN).
    losses_mw: float | None
    min_vm_pu: float | None


@dataclass(frozen=True, slots=True)
class Reconfiguration:
    feeder_id: str
    base_losses_mw: float | None
    base_min_vm_pu: float | None
    losses_mw: float | None
    min_vm_pu: float | None
    max_loading_percent: float | None
    open_switch_ids: tuple[str, ...]  # every candidate switch open in the result (sorted)
    base_open_switch_ids: tuple[str, ...]
    steps: tuple[SwitchingStep, ...]
    sequence_complete: bool
    evaluations: int  # power flows solved
    method: str
    explanation: str

    @property
    def loss_reduction_percent(self) -> float | None:
        if not self.base_losses_mw or self.losses_mw is None:
            return None
        return 100.0 * (self.base_losses_mw - self.losses_mw) / self.base_losses_mw


class _Evaluator:
    """Topology checks and cached power flows of configurations (frozensets of open candidates)."""

    def __init__(self, feeder: Feeder, switch_ids: Iterable[str] | None, progress: Progress) -> None:
        self.feeder = feeder
        self.graph = TopologyGraph(feeder)
        self.model = PowerFlowModel(feeder)
        self.progress = progress
        self.base_states = switch_states(feeder)
        known = {s.id: s for s in feeder.switches}
        if switch_ids is None:
            cands = [s.id for s in feeder.switches if s.kind.remote_controllable]
        else:
            cands = list(dict.fromkeys(switch_ids))
            for sid in cands:
                if sid not in known:
                    raise NotFound(f"switch {sid!r} is not in feeder {feeder.id!r}; check the id", element_id=sid)
        self.candidates = tuple(cands)
        self.bus_switch = {s.id for s in feeder.switches if s.element_type == ElementType.BUS}
        self.switch_element = {s.id: s.element_id for s in feeder.switches}
        all_closed = self.states(frozenset())
        self.supplied = self.graph.process(all_closed).energized_bus_ids
        self.base_open = frozenset(c for c in self.candidates if self.base_states[c])
        self.cache: dict[frozenset[str], PowerFlowResult] = {}
        self.base = self.solve(self.base_open)
        self.base_viol = {(v.kind, v.element_id) for v in self.base.violations}

    def states(self, open_set: frozenset[str]) -> dict[str, bool]:
        st = dict(self.base_states)
        for c in self.candidates:
            st[c] = c in open_set
        return st

    def radial(self, open_set: frozenset[str]) -> bool:
        topo = self.graph.process(self.states(open_set))
        return topo.is_radial and topo.energized_bus_ids >= self.supplied

    def solve(self, open_set: frozenset[str]) -> PowerFlowResult:
        r = self.cache.get(open_set)
        if r is None:
            if len(self.cache) >= MAX_EVALUATIONS:
                raise too_large(
                    "reconfiguration search", len(self.cache) + 1, "MAX_EVALUATIONS", MAX_EVALUATIONS,
                    "give fewer candidate switches (switchIds)",
                )
            self.progress(min(0.95, len(self.cache) / 400.0))
            r = self.model.solve(switch_states=self.states(open_set))
            self.cache[open_set] = r
        return r

    def ok(self, r: PowerFlowResult) -> bool:
        return r.converged and all((v.kind, v.element_id) in self.base_viol for v in r.violations)

    def score(self, open_set: frozenset[str]) -> float:
        r = self.solve(open_set)
        return r.losses_mw if self.ok(r) and r.losses_mw is not None else math.inf

    def loop_switches(self, open_set: frozenset[str], closing: str) -> list[str]:
        """Closed candidates on the loop that closing ``closing`` forms."""
        topo = self.graph.process(self.states(open_set - {closing}))
        out: set[str] = set()
        for loop in topo.loops:
            for branch in loop:
                out.update(s for s in self.graph.switches_on(branch) if s in self.candidates)
        out.discard(closing)
        return sorted(s for s in out if s not in open_set)


def _sequential_opening(ev: _Evaluator) -> frozenset[str] | None:
    open_set: frozenset[str] = frozenset()
    while not ev.radial(open_set):
        r = ev.solve(open_set)
        if not r.converged:
            return None
        current = {ln.line_id: ln.i_ka for ln in r.lines}
        current.update({t.transformer_id: t.loading_percent for t in r.transformers})
        best: tuple[float, str] | None = None
        for c in ev.candidates:
            if c in open_set:
                continue
            trial = open_set | {c}
            topo = ev.graph.process(ev.states(trial))
            if not topo.energized_bus_ids >= ev.supplied:
                continue
            i = math.inf if c in ev.bus_switch else current.get(ev.switch_element[c], math.inf)
            if best is None or (i, c) < best:
                best = (i, c)
        if best is None:
            return None
        open_set = open_set | {best[1]}
    return open_set


def _branch_exchange(ev: _Evaluator, start: frozenset[str]) -> frozenset[str]:
    cur, cur_score = start, ev.score(start)
    while True:
        best, best_score = cur, cur_score
        for t in sorted(cur):
            for s in ev.loop_switches(cur, t):
                cand = (cur - {t}) | {s}
                if not ev.radial(cand):
                    continue
                sc = ev.score(cand)
                if sc < best_score - 1e-12:
                    best, best_score = cand, sc
        if best == cur:
            return cur
        cur, cur_score = best, best_score


def switching_sequence(
    ev: _Evaluator, start: frozenset[str], target: frozenset[str]
) -> tuple[tuple[SwitchingStep, ...], bool]:
    """Make-before-break pairs from ``start`` to ``target`` (see the module docstring)."""
    cur = start
    steps: list[SwitchingStep] = []
    while cur != target:
        to_close = sorted(cur - target)
        to_open = set(target - cur)
        best: tuple[float, str, str, PowerFlowResult] | None = None
        for c in to_close:
            for o in ev.loop_switches(cur, c):
                if o not in to_open:
                    continue
                cand = (cur - {c}) | {o}
                if not ev.radial(cand):
                    continue
                r = ev.solve(cand)
                if not ev.ok(r):
                    continue
                key = (r.losses_mw or 0.0, c, o, r)
                if best is None or key[:3] < best[:3]:
                    best = key
        if best is None:
            return tuple(steps), False
        _, c, o, r = best
        n = len(steps)
        steps.append(SwitchingStep(n + 1, c, "CLOSE", r.losses_mw, r.min_vm_pu))
        steps.append(SwitchingStep(n + 2, o, "OPEN", r.losses_mw, r.min_vm_pu))
        cur = (cur - {c}) | {o}
    return tuple(steps), True


def _result(ev: _Evaluator, best: frozenset[str], method: str, progress: Progress) -> Reconfiguration:
    steps, complete = switching_sequence(ev, ev.base_open, best)
    r = ev.solve(best)
    b = ev.base
    progress(1.0)
    if best == ev.base_open:
        expl = "the present configuration already has the least losses found within limits"
    else:
        red = 100.0 * ((b.losses_mw or 0.0) - (r.losses_mw or 0.0)) / (b.losses_mw or 1.0)
        expl = (
            f"open {', '.join(sorted(best - ev.base_open))} and close {', '.join(sorted(ev.base_open - best))}: "
            f"losses {1000 * (b.losses_mw or 0.0):.1f} -> {1000 * (r.losses_mw or 0.0):.1f} kW (-{red:.1f} %), "
            f"lowest voltage {b.min_vm_pu or 0.0:.4f} -> {r.min_vm_pu or 0.0:.4f} pu"
        )
        if not complete:
            expl += "; no make-before-break order keeps every step radial and within limits: switch manually"
    return Reconfiguration(
        feeder_id=ev.feeder.id,
        base_losses_mw=b.losses_mw,
        base_min_vm_pu=b.min_vm_pu,
        losses_mw=r.losses_mw,
        min_vm_pu=r.min_vm_pu,
        max_loading_percent=r.max_line_loading_percent,
        open_switch_ids=tuple(sorted(best)),
        base_open_switch_ids=tuple(sorted(ev.base_open)),
        steps=steps,
        sequence_complete=complete,
        evaluations=len(ev.cache),
        method=method,
        explanation=expl,
    )


def optimal_reconfiguration(
    feeder: Feeder, *, switch_ids: Iterable[str] | None = None, progress: Progress = NO_PROGRESS
) -> Reconfiguration:
    """The radial configuration of least losses within limits (heuristic search; see module doc)."""
    ev = _Evaluator(feeder, switch_ids, progress)
    base_ok = ev.radial(ev.base_open)
    best, best_score = ev.base_open, ev.score(ev.base_open) if base_ok else math.inf
    start = _sequential_opening(ev)
    if start is None and base_ok:
        start = ev.base_open
    if start is not None:
        found = _branch_exchange(ev, start)
        sc = ev.score(found)
        if sc < best_score:
            best, best_score = found, sc
    return _result(ev, best, "sequential switch opening + branch exchange", progress)


def exhaustive_reconfiguration(
    feeder: Feeder,
    *,
    switch_ids: Iterable[str] | None = None,
    max_configurations: int = MAX_CONFIGURATIONS,
    progress: Progress = NO_PROGRESS,
) -> Reconfiguration:
    """Every radial, fully supplied configuration of the candidate switches solved: the optimum.

    Raises ``BadInput`` naming ``max_configurations`` when the combinations to check exceed it.
    """
    ev = _Evaluator(feeder, switch_ids, progress)
    loops = len(ev.graph.process(ev.states(frozenset())).loops)
    combos = math.comb(len(ev.candidates), loops)
    if combos > max_configurations:
        raise too_large(
            f"exhaustive reconfiguration of {feeder.id!r} ({len(ev.candidates)} switches, {loops} loops)",
            combos, "max_configurations", max_configurations,
            "give fewer candidate switches (switchIds), or use the heuristic optimal_reconfiguration",
        )
    best, best_score = ev.base_open, ev.score(ev.base_open) if ev.radial(ev.base_open) else math.inf
    for k, combo in enumerate(itertools.combinations(ev.candidates, loops)):
        if k % 64 == 0:
            progress(0.9 * k / max(1, combos))
        cand = frozenset(combo)
        if not ev.radial(cand):
            continue
        sc = ev.score(cand)
        if sc < best_score:
            best, best_score = cand, sc
    return _result(ev, best, f"exhaustive ({len(ev.cache)} radial configurations solved)", progress)


def radial_configurations(feeder: Feeder, switch_ids: Iterable[str] | None = None) -> int:
    """How many radial, fully supplied configurations the candidate switches have (for tests)."""
    ev = _Evaluator(feeder, switch_ids, NO_PROGRESS)
    loops = len(ev.graph.process(ev.states(frozenset())).loops)
    return sum(1 for c in itertools.combinations(ev.candidates, loops) if ev.radial(frozenset(c)))


def open_set_states(feeder: Feeder, open_switch_ids: Iterable[str]) -> Mapping[str, bool]:
    """Switch states of ``feeder`` with exactly ``open_switch_ids`` open among the remote-controllable
    switches (others as recorded)."""
    ids = set(open_switch_ids)
    return {s.id: (s.id in ids) if s.kind.remote_controllable else s.is_open for s in feeder.switches}
