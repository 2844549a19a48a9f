"""graph_schema.validate: every problem class is caught, all problems are listed at once."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from graph_schema.errors import InvalidModel
from graph_schema.model import (
    Bus,
    ElementType,
    FaultIndicator,
    Feeder,
    Limits,
    Load,
    MeasurementPoint,
    Quantity,
    Switch,
    SwitchKind,
)
from graph_schema.validate import ensure_valid, validate_feeder
from tests.unit import grids


def problems(feeder: Feeder) -> list[str]:
    return [str(p) for p in validate_feeder(feeder)]


def only(feeder: Feeder, element_id: str, *words: str) -> None:
    found = validate_feeder(feeder)
    assert len(found) == 1, found
    assert found[0].element_id == element_id
    for w in words:
        assert w in found[0].problem, found[0].problem


def repl(items: tuple, idx: int, **changes: object) -> tuple:
    return (*items[:idx], replace(items[idx], **changes), *items[idx + 1 :])


@pytest.mark.parametrize(
    "build",
    [grids.radial, grids.two_feeders_with_tie, grids.ring_with_tie, grids.with_substation_transformer],
)
def test_hand_made_grids_are_valid(build) -> None:
    assert validate_feeder(build()) == []
    assert ensure_valid(build()) == build()


def test_duplicate_ids_across_kinds() -> None:
    f = grids.radial()
    f = replace(f, loads=repl(f.loads, 0, id="l1"))  # same id as a line
    only(f, "l1", "2 elements", "Line", "Load", "unique")


def test_dangling_bus_reference() -> None:
    f = grids.radial()
    f = replace(f, loads=repl(f.loads, 0, bus_id="nowhere"))
    only(f, "ld2", "'nowhere'", "not a bus")


def test_switch_element_must_match_its_type() -> None:
    f = grids.radial()
    f = replace(f, switches=repl(f.switches, 1, element_type=ElementType.TRANSFORMER))
    only(f, "sw_b2", "not a transformer", "element_type")


def test_switch_bus_must_be_an_end_of_its_line() -> None:
    f = grids.radial()
    f = replace(f, switches=repl(f.switches, 1, bus_id="b4"))
    only(f, "sw_b2", "not an end of line 'l2'")


def test_line_bus_references() -> None:
    f = grids.radial()
    f = replace(f, lines=repl(f.lines, 2, to_bus_id="b9"))
    found = problems(f)
    assert any("l3: to_bus_id 'b9'" in p for p in found)
    assert any(p.startswith("b4: bus cannot be reached") for p in found)


def test_measurement_point_and_fault_indicator_references() -> None:
    f = grids.radial()
    f = replace(
        f,
        measurement_points=(MeasurementPoint(id="mp", element_id="ghost", quantity=Quantity.I_KA),),
        fault_indicators=(
            FaultIndicator(id="fi", line_id="l2", bus_id="b4"),
            FaultIndicator(id="fi2", line_id="lx", bus_id="b2"),
        ),
    )
    found = problems(f)
    assert len(found) == 3, found
    assert any(p.startswith("mp: element_id 'ghost'") for p in found)
    assert any(p.startswith("fi: bus 'b4' is not an end of line 'l2'") for p in found)
    assert any(p.startswith("fi2: line_id 'lx'") for p in found)


def test_no_source() -> None:
    f = replace(grids.radial(), sources=())
    only(f, "radial", "no source")


def test_island_without_source() -> None:
    found = validate_feeder(grids.with_island())
    assert {p.element_id for p in found} == {"x1", "x2"}
    assert all("island" in p.problem for p in found)


def test_open_switches_do_not_make_islands() -> None:
    f = grids.radial()
    f = replace(f, switches=tuple(replace(s, is_open=True) for s in f.switches))
    assert validate_feeder(f) == []


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"length_km": 0.0}, "length_km"),
        ({"length_km": -1.0}, "length_km"),
        ({"r_ohm_per_km": -0.1}, "negative"),
        ({"x_ohm_per_km": -0.1}, "negative"),
        ({"max_i_ka": 0.0}, "max_i_ka"),
        ({"r_ohm_per_km": 0.0, "x_ohm_per_km": 0.0}, "zero impedance"),
    ],
)
def test_impossible_line_values(change: dict, words: str) -> None:
    f = grids.radial()
    only(replace(f, lines=repl(f.lines, 0, **change)), "l1", words)


def test_bus_voltage_must_be_positive() -> None:
    f = grids.radial()
    found = validate_feeder(replace(f, buses=repl(f.buses, 4, vn_kv=0.0)))
    assert any(p.element_id == "b5" and "vn_kv=0.0" in p.problem for p in found)


def test_line_between_different_voltages() -> None:
    f = grids.radial()
    f = replace(f, buses=repl(f.buses, 4, vn_kv=0.4))
    only(f, "l4", "cannot change voltage", "Transformer")
    f2 = grids.radial()
    assert validate_feeder(replace(f2, buses=repl(f2.buses, 4, vn_kv=12.0))) == []  # within 10 %


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"sn_mva": 0.0}, "sn_mva"),
        ({"vk_percent": 0.0}, "vk_percent"),
        ({"vkr_percent": 9.0}, "exceeds vk_percent"),
        ({"tap_pos": 9}, "outside [tap_min=-8, tap_max=8]"),
        ({"tap_min": 9}, "tap_min=9 is above"),
    ],
)
def test_impossible_transformer_values(change: dict, words: str) -> None:
    f = grids.with_substation_transformer()
    found = validate_feeder(replace(f, transformers=repl(f.transformers, 0, **change)))
    assert any(p.element_id == "tr1" and words in p.problem for p in found), found


def test_negative_customers() -> None:
    f = grids.radial()
    only(replace(f, loads=repl(f.loads, 1, customers=-3)), "ld3", "customers=-3")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers(value: float) -> None:
    f = grids.radial()
    f = replace(f, loads=repl(f.loads, 0, q_mvar=value), buses=repl(f.buses, 1, lon=value, lat=1.0))
    found = problems(f)
    assert any(p.startswith("ld2: q_mvar=") and "finite" in p for p in found), found
    assert any(p.startswith("b2: lon=") and "finite" in p for p in found), found


@pytest.mark.parametrize(
    ("limits", "words"),
    [
        (
            Limits(vm_min_pu=1.06, vm_max_pu=1.05, emergency_vm_min_pu=0.9, emergency_vm_max_pu=1.1),
            "below vm_max_pu",
        ),
        (Limits(emergency_vm_min_pu=0.96), "must contain the normal band"),
        (Limits(emergency_vm_max_pu=1.04), "must contain the normal band"),
        (Limits(emergency_max_loading_percent=90.0), "at least max_loading_percent"),
        (Limits(vm_min_pu=math.nan), "limits.vm_min_pu=nan"),
    ],
)
def test_limits_ordering(limits: Limits, words: str) -> None:
    found = problems(replace(grids.radial(), limits=limits))
    assert found and all(p.startswith("radial: limits") for p in found), found
    assert any(words in p for p in found), found


def test_ensure_valid_lists_every_problem_at_once() -> None:
    f = grids.with_island()
    f = replace(
        f,
        lines=repl(f.lines, 0, length_km=-1.0),
        loads=(
            *repl(f.loads, 0, customers=-1),
            Load(id="l2", bus_id="b2", p_mw=0.1, q_mvar=0.0, customers=1),
        ),
        switches=(
            *f.switches,
            Switch(
                id="sw_bad",
                kind=SwitchKind.SECTIONALIZER,
                bus_id="b5",
                element_type=ElementType.LINE,
                element_id="l1",
            ),
        ),
        buses=(*f.buses, Bus(id="b_nan", vn_kv=math.nan)),
        limits=Limits(emergency_vm_min_pu=0.99),
    )
    with pytest.raises(InvalidModel) as exc:
        ensure_valid(f)
    err = exc.value
    ids = {p.element_id for p in err.problems}
    assert {"l1", "ld2", "l2", "sw_bad", "b_nan", "x1", "x2", "island"} <= ids
    assert err.code == "INVALID_MODEL"
    assert f"({len(err.problems)} problem(s))" in str(err)
    for p in err.problems:
        assert str(p) in str(err)
