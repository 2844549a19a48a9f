"""Hand-made feeders for FDIR tests, each with a known right answer, and a fault-scenario helper.

``two_feeders()`` (12.47 kV, 1 km spans)::

    s1 - a1 --brk_a-- a2 --sa2-- a3 --sa3-- a4 --tie_ab(open)-- b4 --sb3-- b3 --sb2-- b2 --brk_b-- b1 - s2

  Fault in a3 (between sa2 and sa3): open sa2, sa3; re-close brk_a; close tie_ab (a4 from feeder B).

``split_two_ties()``: main feeder m1 --brk_m-- m2 --sm2-- m3 --sm3-- m4 --sm4-- m5, 1 MW at each of
m3, m4, m5; tie t_p joins m3 to the end of a weak feeder P, tie t_q joins m5 to the end of a weak
feeder Q (each can carry its own 0.5 MW plus about 2 MW within 120 %). A fault right behind the
breaker (section m2) leaves 3 MW dark: neither tie alone carries it, only a split across both
(open sm3 or sm4) restores everything.

``overloaded_tie()``: ``two_feeders()`` with feeder B's head line too thin: the tie would overload
it; closing the tie is rejected and nothing more can be restored.

``with_fuse()``: ``two_feeders()`` with ``sa3`` a fuse: isolation expands to the tie side.
"""

from __future__ import annotations

from dataclasses import replace

from actors.cores.fdir import FdirModel, Indications
from graph_schema.model import Bus, ElementType, Feeder, Line, Load, Source, Switch, SwitchKind

VN_KV = 12.47


def _bus(i: str) -> Bus:
    return Bus(id=i, vn_kv=VN_KV, name=i, lon=8.0 + 0.01 * len(i) + 0.001 * (hash(i) % 7), lat=48.0)


def _line(i: str, a: str, b: str, max_i_ka: float = 0.4) -> Line:
    return Line(i, a, b, length_km=1.0, r_ohm_per_km=0.19, x_ohm_per_km=0.38, c_nf_per_km=10.0, max_i_ka=max_i_ka)


def _sw(i: str, bus: str, line: str, kind: SwitchKind = SwitchKind.LOAD_BREAK_SWITCH, open_: bool = False) -> Switch:
    return Switch(i, kind, bus, ElementType.LINE, line, is_open=open_, normally_open=open_)


def _load(i: str, bus: str, p_mw: float, customers: int) -> Load:
    return Load(i, bus, p_mw, p_mw * 0.3, customers)


def two_feeders(b_head_max_i_ka: float = 0.4) -> Feeder:
    buses = tuple(_bus(b) for b in ("a1", "a2", "a3", "a4", "b1", "b2", "b3", "b4"))
    return Feeder(
        id="fdir-two",
        name="Two feeders and a tie",
        sources=(Source("s1", "a1"), Source("s2", "b1")),
        buses=buses,
        lines=(
            _line("la1", "a1", "a2"),
            _line("la2", "a2", "a3"),
            _line("la3", "a3", "a4"),
            _line("lt", "a4", "b4"),
            _line("lb3", "b3", "b4"),
            _line("lb2", "b2", "b3"),
            _line("lb1", "b1", "b2", max_i_ka=b_head_max_i_ka),
        ),
        switches=(
            _sw("brk_a", "a1", "la1", SwitchKind.BREAKER),
            _sw("sa2", "a2", "la2"),
            _sw("sa3", "a3", "la3"),
            _sw("tie_ab", "a4", "lt", open_=True),
            _sw("sb3", "b3", "lb3"),
            _sw("sb2", "b2", "lb2"),
            _sw("brk_b", "b1", "lb1", SwitchKind.BREAKER),
        ),
        loads=(
            _load("la2_ld", "a2", 0.5, 100),
            _load("la3_ld", "a3", 0.5, 80),
            _load("la4_ld", "a4", 0.5, 60),
            _load("lb2_ld", "b2", 0.5, 100),
            _load("lb3_ld", "b3", 0.5, 100),
            _load("lb4_ld", "b4", 0.5, 100),
        ),
    )


def overloaded_tie() -> Feeder:
    # Feeder B's 1.5 MW on a 0.078 kA head: ~93 % before; +0.5 MW through the tie: ~124 % (> 120 %).
    f = two_feeders(b_head_max_i_ka=0.078)
    return replace(f, id="fdir-overload")


def with_fuse() -> Feeder:
    f = two_feeders()
    sws = tuple(replace(s, kind=SwitchKind.FUSE) if s.id == "sa3" else s for s in f.switches)
    return replace(f, id="fdir-fuse", switches=sws)


def split_two_ties() -> Feeder:
    names = ("m1", "m2", "m3", "m4", "m5", "p1", "p2", "q1", "q2")
    return Feeder(
        id="fdir-split",
        name="Main feeder with two weak ties",
        sources=(Source("sm", "m1"), Source("sp", "p1"), Source("sq", "q1")),
        buses=tuple(_bus(b) for b in names),
        lines=(
            _line("lm1", "m1", "m2"),
            _line("lm2", "m2", "m3"),
            _line("lm3", "m3", "m4"),
            _line("lm4", "m4", "m5"),
            _line("lp", "p1", "p2", max_i_ka=0.13),
            _line("lq", "q1", "q2", max_i_ka=0.13),
            _line("ltp", "m3", "p2"),
            _line("ltq", "m5", "q2"),
        ),
        switches=(
            _sw("brk_m", "m1", "lm1", SwitchKind.BREAKER),
            _sw("sm2", "m2", "lm2"),
            _sw("sm3", "m3", "lm3"),
            _sw("sm4", "m4", "lm4"),
            _sw("brk_p", "p1", "lp", SwitchKind.BREAKER),
            _sw("brk_q", "q1", "lq", SwitchKind.BREAKER),
            _sw("t_p", "m3", "ltp", open_=True),
            _sw("t_q", "m5", "ltq", open_=True),
        ),
        loads=(
            _load("ld_m2", "m2", 0.5, 50),
            _load("ld_m3", "m3", 1.0, 300),
            _load("ld_m4", "m4", 1.0, 300),
            _load("ld_m5", "m5", 1.0, 300),
            _load("ld_p2", "p2", 0.5, 100),
            _load("ld_q2", "q2", 0.5, 100),
        ),
    )


def fault_scenario(
    model: FdirModel, section_id: str, *, fi_keys: str = "line"
) -> tuple[dict[str, bool], Indications, str]:
    """Post-trip switch states, indications and the tripped device for a fault at the shallowest
    point of ``section_id`` under normal positions: the nearest upstream protective device trips,
    every line on the path from it to the fault sees fault current, every other line does not."""
    normal = dict(model.normal_states)
    topo = model.graph.process(normal)
    sec = model.section_by_id[section_id]
    buses = [b for b in sec.bus_ids if b in topo.energized_bus_ids]
    if not buses:
        raise ValueError(f"{section_id} is not energized in normal positions")

    def depth(b: str) -> int:
        d = 0
        while b in topo.feeding_branch:
            b = topo.feeding_branch[b][0]
            d += 1
        return d

    fault_bus = min(buses, key=lambda b: (depth(b), b))
    path = model.graph.source_path(topo, fault_bus)
    tripped = None
    start = 0
    for i, el in enumerate(path):
        sw = model.switches.get(el)
        if sw is not None and sw.kind.interrupts_fault_current and not normal[el]:
            tripped, start = el, i
    if tripped is None:
        raise ValueError(f"no protective device upstream of {section_id}")
    on_path = {el for el in path[start:] if el in model.section_of_branch}
    fis = {ln.id: ln.id in on_path for ln in model.feeder.lines}
    states = {**normal, tripped: True}
    return states, Indications(tripped_devices=frozenset({tripped}), fault_indicators=fis), tripped
