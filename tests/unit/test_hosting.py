"""actors.cores.hosting against a bisection with pandapower, bus by bus."""

from __future__ import annotations

import pytest

from actors.cores.analysis import Cancelled, Progress
from actors.cores.hosting import HC_PREFIX, hosting_capacity, with_candidate_pv
from actors.cores.powerflow import PowerFlowModel
from graph_schema.errors import BadInput, NotFound
from graph_schema.importers import case33bw, cigre_mv

TOL_MW = 0.001


def _pandapower_bisection(feeder, bus_id: str, load_level: float, power_factor: float, hi_mw: float) -> float:
    """Reference: the largest PV at ``bus_id`` with no violation at all, by pandapower runpp."""
    import math

    model = PowerFlowModel(with_candidate_pv(feeder, [bus_id]))
    tan_phi = math.tan(math.acos(power_factor))

    def ok(p: float) -> bool:
        r = model.solve(load_scale=load_level, der_p_mw={HC_PREFIX + bus_id: p},
                        der_q_mvar={HC_PREFIX + bus_id: -p * tan_phi})
        return r.converged and not r.violations

    lo, hi = 0.0, hi_mw
    if ok(hi):
        return hi
    while hi - lo > TOL_MW:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if ok(mid) else (lo, mid)
    return lo


@pytest.mark.parametrize(("load_level", "power_factor"), [(0.3, 1.0), (1.0, 0.95)])
def test_case33bw_matches_pandapower_bisection(load_level: float, power_factor: float) -> None:
    feeder = case33bw()
    checked = ("bus5", "bus18", "bus25", "bus33")
    hc = hosting_capacity(feeder, load_level=load_level, power_factor=power_factor, bus_ids=checked,
                          tolerance_mw=TOL_MW)
    for b in hc.buses:
        ref = _pandapower_bisection(feeder, b.bus_id, load_level, power_factor, hc.max_search_mw)
        assert b.max_p_mw == pytest.approx(ref, abs=2 * TOL_MW), b.bus_id
        assert b.binding_constraint == "OVERVOLTAGE"  # case33bw's lines have no thermal rating


def test_thermal_limit_binds_near_the_substation_on_cigre_mv() -> None:
    feeder = cigre_mv()
    hc = hosting_capacity(feeder, load_level=0.3, power_factor=1.0, bus_ids=["bus2"], tolerance_mw=TOL_MW)
    (b,) = hc.buses
    assert (b.binding_constraint, b.binding_element_id) == ("OVERLOAD", "line0")
    ref = _pandapower_bisection(feeder, "bus2", 0.3, 1.0, hc.max_search_mw)
    assert b.max_p_mw == pytest.approx(ref, abs=2 * TOL_MW)


def test_every_supplied_bus_by_default_and_far_end_hosts_least() -> None:
    hc = hosting_capacity(case33bw(), load_level=0.3, power_factor=1.0)
    by_bus = {b.bus_id: b.max_p_mw for b in hc.buses}
    assert len(by_bus) == 32 and "bus1" not in by_bus  # the source bus is not a candidate
    assert by_bus["bus18"] < by_bus["bus10"] < by_bus["bus3"]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"load_level": -1.0}, BadInput, "loadLevel"),
        ({"power_factor": 0.0}, BadInput, "powerFactor"),
        ({"power_factor": 1.2}, BadInput, "powerFactor"),
        ({"bus_ids": ["nope"]}, NotFound, "nope"),
    ],
)
def test_bad_input(kwargs, error, match) -> None:
    with pytest.raises(error, match=match):
        hosting_capacity(case33bw(), **kwargs)


def test_cancel() -> None:
    with pytest.raises(Cancelled):
        hosting_capacity(case33bw(), progress=Progress(stopped=lambda: True))
