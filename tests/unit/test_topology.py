"""actors.cores.topology on hand-made feeders and on the published ones."""

from __future__ import annotations

import time
from dataclasses import FrozenInstanceError, replace

import pytest

from actors.cores.topology import TopologyGraph, downstream_buses, process_topology, source_path
from graph_schema.errors import NotFound
from tests.unit import grids


def test_radial_all_energized() -> None:
    t = process_topology(grids.radial())
    assert t.energized_bus_ids == {"b1", "b2", "b3", "b4", "b5"}
    assert t.deenergized_bus_ids == frozenset()
    assert t.islands == () and t.loops == () and t.paralleled_sources == ()
    assert t.is_radial
    assert dict(t.source_of_bus) == dict.fromkeys(t.energized_bus_ids, "src1")


def test_result_is_frozen() -> None:
    t = process_topology(grids.radial())
    with pytest.raises(FrozenInstanceError):
        t.islands = ()  # type: ignore[misc]
    with pytest.raises(TypeError):
        t.source_of_bus["b1"] = "x"  # type: ignore[index]


def test_open_switch_deenergizes_downstream() -> None:
    f = grids.radial()
    t = process_topology(f, {"sw_b2": True})
    assert t.deenergized_bus_ids == {"b3", "b4"}
    assert t.islands == (frozenset({"b3", "b4"}),)
    assert "b3" not in t.source_of_bus
    # the model is untouched and the override is per call
    assert f.switch("sw_b2").is_open is False
    assert process_topology(f).deenergized_bus_ids == frozenset()


def test_open_breaker_deenergizes_whole_feeder_but_source_bus() -> None:
    t = process_topology(grids.radial(), {"sw_b1": True})
    assert t.energized_bus_ids == {"b1"}
    assert t.islands == (frozenset({"b2", "b3", "b4", "b5"}),)


def test_out_of_service_line_and_bus() -> None:
    f = grids.radial()
    t = process_topology(f, out_of_service=["l4"])
    assert t.deenergized_bus_ids == {"b5"}
    t = process_topology(f, out_of_service=["b3"])
    assert t.deenergized_bus_ids == {"b3", "b4"}
    assert t.islands == (frozenset({"b4"}),)  # an out-of-service bus belongs to no island
    t = process_topology(replace(f, lines=(*f.lines[:3], replace(f.lines[3], in_service=False))))
    assert t.deenergized_bus_ids == {"b5"}
    t = process_topology(f, out_of_service=["src1"])
    assert t.energized_bus_ids == frozenset()


def test_closing_tie_makes_a_loop() -> None:
    f = grids.ring_with_tie()
    assert process_topology(f).is_radial
    t = process_topology(f, {"tie": False})
    assert len(t.loops) == 1
    assert set(t.loops[0]) == {"lr1", "lr2", "lrt", "lr4", "lr3"}
    assert not t.is_radial
    assert t.paralleled_sources == ()


def test_two_sources_paralleled_through_tie() -> None:
    f = grids.two_feeders_with_tie()
    t = process_topology(f)
    assert t.source_of_bus["a3"] == "s1" and t.source_of_bus["c3"] == "s2"
    assert t.paralleled_sources == ()
    t = process_topology(f, {"tie": False})
    assert t.paralleled_sources == (frozenset({"s1", "s2"}),)
    assert t.loops == ()  # no cycle in the graph itself
    assert not t.is_radial
    # open a breaker and close the tie: feeder c is backfed from s1
    t = process_topology(f, {"tie": False, "brk_c": True})
    assert t.paralleled_sources == ()
    assert t.source_of_bus["c2"] == "s1"
    assert t.energized_bus_ids == {b.id for b in f.buses}


def test_island_detection() -> None:
    t = process_topology(grids.with_island())
    assert t.islands == (frozenset({"x1", "x2"}),)
    assert t.deenergized_bus_ids == {"x1", "x2"}


def test_bus_switch_connects_buses() -> None:
    from graph_schema.model import ElementType, Switch, SwitchKind

    f = grids.with_island()
    f = replace(
        f,
        switches=(
            *f.switches,
            Switch(
                id="bs",
                kind=SwitchKind.DISCONNECTOR,
                bus_id="b4",
                element_type=ElementType.BUS,
                element_id="x1",
            ),
        ),
    )
    t = process_topology(f)
    assert t.islands == ()
    assert source_path(f, t, "x2") == ("src1", "sw_b1", "l1", "sw_b2", "l2", "l3", "bs", "lx")
    assert process_topology(f, {"bs": True}).islands == (frozenset({"x1", "x2"}),)


def test_parallel_lines_form_a_loop() -> None:
    f = grids.radial()
    f = replace(f, lines=(*f.lines, grids.line("l4b", "b2", "b5")))
    t = process_topology(f)
    assert len(t.loops) == 1 and set(t.loops[0]) == {"l4", "l4b"}


def test_source_path_and_downstream() -> None:
    f = grids.radial()
    g = TopologyGraph(f)
    t = g.process()
    assert source_path(g, t, "b4") == ("src1", "sw_b1", "l1", "sw_b2", "l2", "l3")
    assert source_path(f, None, "b1") == ("src1",)
    assert source_path(f, {"sw_b2": True}, "b4") == ()
    assert downstream_buses(g, t, "l2") == {"b3", "b4"}
    assert downstream_buses(g, t, "sw_b2") == {"b3", "b4"}
    assert downstream_buses(f, None, "b2") == {"b2", "b3", "b4", "b5"}
    assert downstream_buses(f, {"sw_b2": True}, "sw_b2") == frozenset()
    with pytest.raises(NotFound):
        downstream_buses(g, t, "nope")
    with pytest.raises(NotFound):
        source_path(g, t, "nope")


def test_source_path_with_upstream_switch_at_far_end() -> None:
    """A switch at the downstream end of its line comes after the line in the path."""
    f = grids.two_feeders_with_tie()
    t = process_topology(f, {"tie": False, "brk_c": True})
    assert source_path(f, t, "c3") == ("s1", "brk_a", "la1", "la2", "tie", "lt")
    assert source_path(f, t, "c1") == ("s2",)


def test_transformer_is_a_branch() -> None:
    f = grids.with_substation_transformer()
    t = process_topology(f)
    assert t.energized_bus_ids == {b.id for b in f.buses}
    assert process_topology(f, out_of_service=["tr1"]).energized_bus_ids == {"hv"}


def test_case33bw_radial_and_ties_make_loops() -> None:
    from graph_schema.importers import case33bw

    f = case33bw()
    g = TopologyGraph(f)
    assert g.process().is_radial
    assert len(g.process().energized_bus_ids) == 33
    all_closed = g.process(dict.fromkeys((s.id for s in f.switches), False))
    assert len(all_closed.loops) == 5
    path = source_path(g, g.process(), "bus18")
    assert path[0] == "src1" and path[1] == "sw1" and path[-1] == "line17"


def test_large_feeder_is_fast() -> None:
    from graph_schema.importers import lv_schutterwald

    f = lv_schutterwald()
    g = TopologyGraph(f)
    t = g.process()
    assert len(t.energized_bus_ids) == 2940
    assert t.paralleled_sources == ()
    n = 20
    start = time.perf_counter()
    for _ in range(n):
        g.process()
    per_call = (time.perf_counter() - start) / n
    assert per_call < 0.05  # ~5 ms on 2 cores; generous for loaded CI machines
