"""Topology processing (IEC 61968-3 network operations: energization and connectivity).

A pure core: feeder model and switch states in, a frozen :class:`TopologyResult` out. Nothing is
mutated, nothing outside the standard library is used.

Rules:

* a line or transformer is a *closed branch* when it is in service, not listed in
  ``out_of_service``, both its buses are in service, and every switch on it is closed;
* a switch with ``element_type`` BUS joins its two buses when it is closed;
* ``switch_states`` (switch id -> ``is_open``) overrides the model's ``is_open``; a switch listed in
  ``out_of_service`` counts as open;
* a bus is *energized* when a closed path joins it to an in-service source; the first source of a
  connected group (in feeder order) is its ``source_of_bus``;
* ``islands`` are connected groups of in-service buses with no source; ``loops`` are the independent
  cycles (one per closed branch beyond a spanning forest) as ids of the branches (lines,
  transformers, bus switches) on the cycle; ``paralleled_sources`` are groups of two or more
  sources joined by closed paths.

Build a :class:`TopologyGraph` once per feeder and call :meth:`TopologyGraph.process` for every
new set of switch states: adjacency is built once, each call is O(buses + branches).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from graph_schema.errors import NotFound
from graph_schema.model import ElementType, Feeder


@dataclass(frozen=True, slots=True)
class TopologyResult:
    energized_bus_ids: frozenset[str]
    source_of_bus: Mapping[str, str]  # energized bus id -> id of the source feeding it (read-only)
    deenergized_bus_ids: frozenset[str]
    islands: tuple[frozenset[str], ...]  # connected groups of in-service buses with no source
    loops: tuple[tuple[str, ...], ...]  # independent closed cycles: ids of the branches on each
    paralleled_sources: tuple[frozenset[str], ...]  # sources joined by a closed path (>= 2 each)
    # Spanning tree from the sources: bus id -> (upstream bus id, id of the branch between them).
    # Sources' buses are absent. Used by :func:`source_path` and :func:`downstream_buses`.
    feeding_branch: Mapping[str, tuple[str, str]]

    @property
    def is_radial(self) -> bool:
        """No closed cycle and no two sources tied together."""
        return not self.loops and not self.paralleled_sources


class TopologyGraph:
    """Adjacency of one feeder, built once; :meth:`process` evaluates a set of switch states."""

    def __init__(self, feeder: Feeder) -> None:
        self.feeder = feeder
        self._bus_ids: list[str] = [b.id for b in feeder.buses]
        self._bus_index: dict[str, int] = {b: i for i, b in enumerate(self._bus_ids)}
        self._bus_in_service: list[bool] = [b.in_service for b in feeder.buses]
        # Branches: index -> (element id, from bus index, to bus index, in service).
        self._branch_ids: list[str] = []
        self._branch_ends: list[tuple[int, int]] = []
        self._branch_in_service: list[bool] = []
        self._branch_index: dict[str, int] = {}
        # Switches on each branch, and which switch guards which branch.
        self._branch_switches: list[list[str]] = []
        self._switch_branch: dict[str, int] = {}
        self._switch_default_open: dict[str, bool] = {}
        self._switch_bus: dict[str, str] = {}

        def add_branch(element_id: str, a: str, b: str, in_service: bool) -> int:
            idx = len(self._branch_ids)
            self._branch_ids.append(element_id)
            self._branch_ends.append((self._bus_index[a], self._bus_index[b]))
            self._branch_in_service.append(in_service)
            self._branch_index[element_id] = idx
            self._branch_switches.append([])
            return idx

        for ln in feeder.lines:
            add_branch(ln.id, ln.from_bus_id, ln.to_bus_id, ln.in_service)
        for t in feeder.transformers:
            add_branch(t.id, t.hv_bus_id, t.lv_bus_id, t.in_service)
        for sw in feeder.switches:
            self._switch_default_open[sw.id] = sw.is_open
            self._switch_bus[sw.id] = sw.bus_id
            if sw.element_type == ElementType.BUS:
                idx = add_branch(sw.id, sw.bus_id, sw.element_id, True)
            else:
                idx = self._branch_index[sw.element_id]
            self._branch_switches[idx].append(sw.id)
            self._switch_branch[sw.id] = idx
        # Adjacency: bus index -> list of (branch index, other bus index).
        self._adj: list[list[tuple[int, int]]] = [[] for _ in self._bus_ids]
        for k, (a, b) in enumerate(self._branch_ends):
            self._adj[a].append((k, b))
            self._adj[b].append((k, a))
        self._sources: list[tuple[str, int]] = [(s.id, self._bus_index[s.bus_id]) for s in feeder.sources]
        # Branches touching an out-of-service bus never conduct.
        self._dead_bus_branches = sorted(
            {k for i, ok in enumerate(self._bus_in_service) if not ok for k, _ in self._adj[i]}
        )
        self._all_bus_ids = frozenset(self._bus_ids)

    def closed_branches(
        self, switch_states: Mapping[str, bool] | None = None, out_of_service: Iterable[str] = ()
    ) -> list[bool]:
        """For each branch (lines, transformers, bus switches in that order): is it closed?"""
        states = switch_states or {}
        oos = set(out_of_service)
        closed = list(self._branch_in_service)
        for eid in oos:
            k = self._branch_index.get(eid)
            if k is not None:
                closed[k] = False
        for sw_id, k in self._switch_branch.items():
            if closed[k] and (sw_id in oos or states.get(sw_id, self._switch_default_open[sw_id])):
                closed[k] = False
        for k in self._dead_bus_branches:
            closed[k] = False
        for eid in oos:
            i = self._bus_index.get(eid)
            if i is not None:
                for k, _ in self._adj[i]:
                    closed[k] = False
        return closed

    def process(
        self, switch_states: Mapping[str, bool] | None = None, *, out_of_service: Iterable[str] = ()
    ) -> TopologyResult:
        oos = set(out_of_service)
        closed = self.closed_branches(switch_states, oos)
        bus_ids = self._bus_ids
        n = len(bus_ids)
        bus_ok = self._bus_in_service
        if oos:
            bus_ok = [ok and bid not in oos for ok, bid in zip(bus_ok, bus_ids, strict=True)]
        adj = self._adj
        component = [-1] * n
        parent_bus = [-1] * n
        parent_branch = [-1] * n
        depth = [0] * n
        source_of: dict[str, str] = {}
        paralleled: list[frozenset[str]] = []
        islands: list[frozenset[str]] = []
        loops: list[tuple[str, ...]] = []
        tree_branch = [False] * len(closed)

        def bfs(root: int, comp: int) -> list[int]:
            component[root] = comp
            order = [root]
            i = 0
            while i < len(order):
                u = order[i]
                i += 1
                for k, v in adj[u]:
                    if closed[k] and component[v] < 0:
                        component[v] = comp
                        parent_bus[v] = u
                        parent_branch[v] = k
                        depth[v] = depth[u] + 1
                        tree_branch[k] = True
                        order.append(v)
            return order

        comp = 0
        comp_sources: dict[int, list[str]] = {}
        for src_id, b in self._sources:
            if src_id in oos or not bus_ok[b]:
                continue
            if component[b] >= 0:
                comp_sources[component[b]].append(src_id)
                continue
            comp_sources[comp] = [src_id]
            for u in bfs(b, comp):
                source_of[bus_ids[u]] = src_id
            comp += 1
        energized_comps = comp
        for b in range(n):
            if component[b] < 0 and bus_ok[b]:
                islands.append(frozenset(bus_ids[u] for u in bfs(b, comp)))
                comp += 1
        for srcs in comp_sources.values():
            if len(srcs) > 1:
                paralleled.append(frozenset(srcs))

        # Independent cycles: every closed branch outside the spanning forest closes one.
        branch_ids = self._branch_ids
        for k, is_closed in enumerate(closed):
            if not is_closed or tree_branch[k]:
                continue
            a, b = self._branch_ends[k]
            left: list[str] = []
            right: list[str] = []
            while a != b:
                if depth[a] >= depth[b]:
                    left.append(branch_ids[parent_branch[a]])
                    a = parent_bus[a]
                else:
                    right.append(branch_ids[parent_branch[b]])
                    b = parent_bus[b]
            loops.append((*left, branch_ids[k], *reversed(right)))

        energized = frozenset(source_of)
        feeding = {
            bus_ids[v]: (bus_ids[parent_bus[v]], branch_ids[parent_branch[v]])
            for v in range(n)
            if parent_bus[v] >= 0 and component[v] < energized_comps
        }
        return TopologyResult(
            energized_bus_ids=energized,
            source_of_bus=MappingProxyType(source_of),
            deenergized_bus_ids=self._all_bus_ids - energized,
            islands=tuple(islands),
            loops=tuple(loops),
            paralleled_sources=tuple(paralleled),
            feeding_branch=MappingProxyType(feeding),
        )

    def switches_on(self, branch_id: str) -> tuple[str, ...]:
        """Ids of the switches on a line, transformer (or the bus switch itself)."""
        k = self._branch_index.get(branch_id)
        return () if k is None else tuple(self._branch_switches[k])

    def source_path(self, topo: TopologyResult, bus_id: str) -> tuple[str, ...]:
        """Element ids from the feeding source to ``bus_id``: the source id, then per hop the switch at
        the upstream end, the branch, the switch at the downstream end (switches only where present).

        Empty when the bus is de-energized.
        """
        if bus_id not in self._bus_index:
            raise NotFound(
                f"bus {bus_id!r} is not in feeder {self.feeder.id!r}; check the id", element_id=bus_id
            )
        src = topo.source_of_bus.get(bus_id)
        if src is None:
            return ()
        hops: list[str] = []
        cur = bus_id
        while cur in topo.feeding_branch:
            up, branch = topo.feeding_branch[cur]
            k = self._branch_index[branch]
            sws = self._branch_switches[k]
            if branch in self._switch_branch:  # a bus switch is its own branch
                hops.append(branch)
            else:
                hops.extend(s for s in sws if self._switch_bus[s] == cur)
                hops.append(branch)
                hops.extend(s for s in sws if self._switch_bus[s] != cur)
            cur = up
        hops.reverse()
        return (src, *hops)

    def downstream_buses(self, topo: TopologyResult, element_id: str) -> frozenset[str]:
        """Energized buses whose supply passes through ``element_id`` (a bus, line, transformer or
        switch): what goes dark if it opens. Empty when the element carries no supply (open, dead,
        or a branch outside the spanning tree, i.e. a loop's closing branch)."""
        children: dict[str, list[str]] = {}
        for b, (up, _) in topo.feeding_branch.items():
            children.setdefault(up, []).append(b)
        if element_id in self._bus_index:
            roots = [element_id] if element_id in topo.energized_bus_ids else []
        else:
            k = self._branch_index.get(element_id)
            if k is None and element_id in self._switch_branch:
                k = self._switch_branch[element_id]
            if k is None:
                raise NotFound(
                    f"element {element_id!r} is not a bus, line, transformer or switch of feeder "
                    f"{self.feeder.id!r}; check the id",
                    element_id=element_id,
                )
            branch = self._branch_ids[k]
            a, b = (self._bus_ids[i] for i in self._branch_ends[k])
            roots = [bus for bus in (a, b) if topo.feeding_branch.get(bus, ("", ""))[1] == branch]
        out: set[str] = set()
        stack = list(roots)
        while stack:
            u = stack.pop()
            out.add(u)
            stack.extend(children.get(u, ()))
        return frozenset(out)


def process_topology(
    feeder: Feeder, switch_states: Mapping[str, bool] | None = None, *, out_of_service: Iterable[str] = ()
) -> TopologyResult:
    """One-shot topology processing; build a :class:`TopologyGraph` for repeated calls."""
    return TopologyGraph(feeder).process(switch_states, out_of_service=out_of_service)


def _graph_and_topo(
    feeder: Feeder | TopologyGraph, topo_or_states: TopologyResult | Mapping[str, bool] | None
) -> tuple[TopologyGraph, TopologyResult]:
    graph = feeder if isinstance(feeder, TopologyGraph) else TopologyGraph(feeder)
    topo = topo_or_states if isinstance(topo_or_states, TopologyResult) else graph.process(topo_or_states)
    return graph, topo


def source_path(
    feeder: Feeder | TopologyGraph, topo_or_states: TopologyResult | Mapping[str, bool] | None, bus_id: str
) -> tuple[str, ...]:
    """Ordered element ids from the feeding source to ``bus_id`` (see :meth:`TopologyGraph.source_path`)."""
    graph, topo = _graph_and_topo(feeder, topo_or_states)
    return graph.source_path(topo, bus_id)


def downstream_buses(
    feeder: Feeder | TopologyGraph, switch_states: TopologyResult | Mapping[str, bool] | None, element_id: str
) -> frozenset[str]:
    """Energized buses fed through ``element_id`` (see :meth:`TopologyGraph.downstream_buses`)."""
    graph, topo = _graph_and_topo(feeder, switch_states)
    return graph.downstream_buses(topo, element_id)
