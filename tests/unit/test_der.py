"""DER core (actors.cores.der) and the simulated SunSpec inverter (protocols.sunspec_sim), without sockets.

The 1547 volt-var response is checked against IEEE 1547-2018 Table 8 (category B defaults) within
the standard's reactive power accuracy (Table 3: 5 % of rated S), in steady state and after the
open-loop response time (90 % of the step).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from actors.cores.der import (
    VV_Q_TOLERANCE_PCT_S,
    Curtailment,
    CurtailmentInput,
    DerControl,
    InverterSettings,
    curtailment,
    curve_value,
    default_volt_var,
    default_volt_watt,
    inverter_target,
    ramp_towards,
    rating,
    validate_control,
    validate_volt_var,
    validate_volt_watt,
)
from actors.cores.topology import TopologyGraph
from graph_schema.errors import BadInput
from graph_schema.importers import cigre_mv
from graph_schema.model import Der, DerKind
from protocols.sunspec_sim import BASE_ADDR, SimInverter, unit_ids

PV = Der(id="pv1", bus_id="b1", kind=DerKind.PV, sn_mva=1.0, p_mw=1.0)
BAT = Der(id="bat1", bus_id="b1", kind=DerKind.STORAGE, sn_mva=0.5, p_mw=0.0, max_e_mwh=1.0)


# -- curves ----------------------------------------------------------------------------------------


def test_category_b_defaults_are_table_8_and_10() -> None:
    assert default_volt_var("B") == ((92.0, 100.0), (98.0, 0.0), (102.0, 0.0), (108.0, -100.0))
    assert default_volt_watt("B") == ((106.0, 100.0), (110.0, 0.0))
    r = rating(PV)
    assert r.q_max_mvar == pytest.approx(0.44)  # 44 % of rated S for category B
    assert rating(replace(PV, ieee1547_category="A")).q_max_mvar == pytest.approx(0.25)


@pytest.mark.parametrize(("v_pu", "q_pct_s"), [
    (0.90, 44.0), (0.92, 44.0), (0.95, 22.0), (0.98, 0.0), (1.00, 0.0), (1.02, 0.0), (1.05, -22.0),
    (1.08, -44.0), (1.10, -44.0),
])
def test_volt_var_response_of_a_category_b_inverter_is_within_1547_tolerance(v_pu: float, q_pct_s: float) -> None:
    """Steady state: the inverter's Q at each voltage is Table 8's curve within 5 % of rated S."""
    inv = SimInverter(PV, 1, 230.0)
    assert inv.settings().volt_var is None  # shipped with the curve loaded, not enabled
    inv.set_local(705, "Ena", 1)
    p, q = inv.step(v_pu, 0.5, now=0.0)  # first step: settled at once
    assert abs(q / PV.sn_mva * 100.0 - q_pct_s) <= VV_Q_TOLERANCE_PCT_S
    assert math.hypot(p, q) <= PV.sn_mva + 1e-9


def test_volt_var_open_loop_response_reaches_90_percent_within_its_response_time() -> None:
    inv = SimInverter(PV, 1, 230.0)
    inv.set_local(705, "Ena", 1)
    inv.step(1.0, 0.5, now=0.0)
    q_final = -0.44  # at 1.08 pu
    t, q = 0.0, 0.0
    while t < 5.0 - 1e-9:  # 1547 category B default open-loop response time: 5 s
        t += 0.5
        _, q = inv.step(1.08, 0.5, now=t)
    assert abs(q - q_final) <= 0.1 * abs(q_final) + VV_Q_TOLERANCE_PCT_S / 100 * PV.sn_mva
    assert abs(q) < abs(q_final)  # it ramps: not a step


def test_reactive_priority_reduces_p_within_the_kva_rating() -> None:
    s = InverterSettings(s_mva=1.0, p_max_mw=1.0, q_max_mvar=0.44, volt_var=default_volt_var("B"))
    p, q = inverter_target(s, 1.10, 1.0)
    assert q == pytest.approx(-0.44)
    assert p == pytest.approx(math.sqrt(1 - 0.44**2))


def test_volt_watt_p_limit_and_ramp() -> None:
    s = InverterSettings(s_mva=1.0, p_max_mw=1.0, q_max_mvar=0.44, volt_watt=default_volt_watt("B"))
    assert inverter_target(s, 1.08, 1.0)[0] == pytest.approx(0.5)  # half way 106 -> 110 %
    assert inverter_target(replace(s, p_limit_pct=30.0), 1.0, 1.0)[0] == pytest.approx(0.3)
    assert inverter_target(replace(s, connected=False), 1.0, 1.0) == (0.0, 0.0)
    # P falls at once and rises at the ramp rate (10 %/s: 0.1 MW per second)
    slow = replace(s, ramp_pct_per_s=10.0)
    assert ramp_towards(0.8, 0.0, (0.2, 0.0), slow, 1.0)[0] == pytest.approx(0.2)
    assert ramp_towards(0.2, 0.0, (0.8, 0.0), slow, 1.0)[0] == pytest.approx(0.3)


def test_storage_respects_soc_limits() -> None:
    s = InverterSettings(s_mva=0.5, p_max_mw=0.5, q_max_mvar=0.22, storage=True, p_set_mw=0.4, soc_pct=9.0)
    assert inverter_target(s, 1.0, 0.0)[0] == 0.0  # empty: no discharge
    assert inverter_target(replace(s, p_set_mw=-0.4), 1.0, 0.0)[0] == pytest.approx(-0.4)
    assert inverter_target(replace(s, p_set_mw=-0.4, soc_pct=96.0), 1.0, 0.0)[0] == 0.0  # full: no charge


def test_curve_value_interpolates_and_is_flat_beyond_the_ends() -> None:
    c = default_volt_var("B")
    assert curve_value(c, 80.0) == 100.0
    assert curve_value(c, 95.0) == pytest.approx(50.0)
    assert curve_value(c, 120.0) == -100.0


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("curve", "names"), [
    (((92, 100), (98, 0), (102, 10), (108, -100)), "not monotone"),
    (((92, 100), (98, 0), (97, 0), (108, -100)), "not monotone"),
    (((92, 100), (95, 0), (102, 0), (108, -100)), "V2=95"),
    (((92, 100), (98, 0), (102, 0), (120, -100)), "V4=120"),
    (((70, 100), (98, 0), (102, 0), (108, -100)), "V1=70"),
    (((92, 120), (98, 0), (102, 0), (108, -100)), "Q1=120"),
    (((92, 100), (98, 0), (108, -100)), "exactly 4 points"),
])
def test_a_volt_var_curve_outside_1547_is_refused_naming_the_limit(curve: tuple, names: str) -> None:
    with pytest.raises(BadInput, match=names):
        validate_volt_var(curve)


@pytest.mark.parametrize(("curve", "names"), [
    (((104, 100), (110, 0)), "V1=104"),
    (((106, 100), (112, 0)), "V2=112"),
    (((106, 100), (108, 50), (110, 0)), "exactly 2"),
    (((106, 50), (110, 0)), "P1=50"),
])
def test_a_volt_watt_curve_outside_1547_is_refused(curve: tuple, names: str) -> None:
    with pytest.raises(BadInput, match=names):
        validate_volt_watt(curve)


@pytest.mark.parametrize(("control", "names"), [
    (DerControl(p_limit_mw=1.2), "p_max_mw=1"),
    (DerControl(p_limit_mw=-0.1), "p_max_mw=1"),
    (DerControl(q_mvar=0.5), "q_max_mvar=0.44"),
    (DerControl(power_factor=(0.5, True)), "between 0.915"),
    (DerControl(q_mvar=0.1, power_factor=(0.95, True)), "not both"),
    (DerControl(storage_p_mw=0.1), "not storage"),
    (DerControl(), "sets nothing"),
])
def test_a_setpoint_beyond_the_rating_is_refused_naming_the_limit(control: DerControl, names: str) -> None:
    with pytest.raises(BadInput, match=names):
        validate_control(rating(PV), control)


def test_storage_set_point_within_rating() -> None:
    validate_control(rating(BAT), DerControl(storage_p_mw=-0.5))
    with pytest.raises(BadInput, match=r"p_max_mw=0\.5"):
        validate_control(rating(BAT), DerControl(storage_p_mw=0.6))


# -- curtailment -----------------------------------------------------------------------------------


def test_curtailment_on_overload_and_its_release() -> None:
    f = cigre_mv()
    der_p = {d.id: d.sn_mva for d in f.ders}
    over = CurtailmentInput(vm_pu={}, line_loading_percent={"line3": 130.0}, der_p_mw=der_p)
    cut = curtailment(f, over)
    assert set(cut) == set(der_p)
    assert all(c.element_id == "line3" and "130.0 %" in c.reason for c in cut.values())
    assert cut["der8"].p_limit_mw == pytest.approx(1.5 * (1 - 0.3 - 0.05))
    # still near the limit after curtailing: kept (no hunting)
    near = CurtailmentInput(vm_pu={}, line_loading_percent={"line3": 96.0}, der_p_mw=der_p)
    assert set(curtailment(f, near, current=cut)) == set(der_p)
    # the reason is gone: released
    ok = CurtailmentInput(vm_pu={}, line_loading_percent={"line3": 60.0}, der_p_mw=der_p)
    assert curtailment(f, ok, current=cut) == {}


def test_curtailment_on_over_voltage() -> None:
    f = cigre_mv()
    st = CurtailmentInput(vm_pu={"bus7": 1.06}, line_loading_percent={}, der_p_mw={"der8": 1.5})
    cut = curtailment(f, st)
    assert set(cut) == {"der8"} and "bus7" in cut["der8"].reason and cut["der8"].p_limit_mw < 1.5


def _attributed(f, **kw) -> CurtailmentInput:  # type: ignore[no-untyped-def]
    """A state whose flows the decision can attribute (the host passes the same)."""
    graph = TopologyGraph(f)
    topo = graph.process({s.id: s.normally_open for s in f.switches})
    return CurtailmentInput(downstream=lambda e: graph.downstream_buses(topo, e),
                            source_of_bus=topo.source_of_bus, **kw)


def test_a_reverse_flow_overload_curtails_only_the_ders_behind_it() -> None:
    """cigre-mv: the wind (der8, 1.5 MW at bus7) feeds line5 back towards bus8; bus7 draws 0.0765 MW."""
    f = cigre_mv()
    der_p = {d.id: d.sn_mva for d in f.ders}
    st = _attributed(f, vm_pu={}, line_loading_percent={"line5": 200.0, "line0": 150.0}, der_p_mw=der_p)
    cut = curtailment(f, st, max_loading_percent=100.0)
    assert set(cut) == {"der8"}, "line0 carries load: no reason; only the wind is behind line5"
    c = cut["der8"]
    assert c.element_id == "line5" and "reverse power" in c.reason
    net = 1.5 - 0.0765
    target = net * 0.95 * 100.0 / 200.0  # the reverse flow falls to 95 % of the limit
    assert 1.5 - c.p_limit_mw == pytest.approx(net - target, rel=1e-6)
    # still near the limit, still reverse: kept; the wind drops (reverse flow gone): released
    near = _attributed(f, vm_pu={}, line_loading_percent={"line5": 96.0}, der_p_mw={**der_p, "der8": c.p_limit_mw})
    assert curtailment(f, near, max_loading_percent=100.0, current=cut) == cut
    calm = _attributed(f, vm_pu={}, line_loading_percent={"line5": 96.0}, der_p_mw={**der_p, "der8": 0.05})
    assert curtailment(f, calm, max_loading_percent=100.0, current=cut) == {}


def test_a_load_driven_overload_curtails_nothing_and_releases_what_it_held() -> None:
    """line1 feeds nine buses whose loads exceed every DER behind it: curtailing them would raise
    its loading. A curtailment held on it (the loads grew since) is released."""
    f = cigre_mv()
    der_p = {d.id: d.sn_mva for d in f.ders}
    st = _attributed(f, vm_pu={}, line_loading_percent={"line1": 140.0}, der_p_mw=der_p)
    assert curtailment(f, st) == {}
    held = {"der8": Curtailment("der8", 0.5, "line1 loaded 130.0 % beyond its limit 100 %", "line1")}
    assert curtailment(f, st, current=held) == {}


def test_a_loop_closing_branch_is_not_attributed() -> None:
    f = cigre_mv()
    st = _attributed(f, vm_pu={}, line_loading_percent={"line13": 150.0}, der_p_mw={"der8": 1.5})
    assert curtailment(f, st) == {}  # an open tie carries nothing: no buses behind it


def test_over_voltage_curtails_the_ders_fed_from_the_same_source_with_the_tightest_ask() -> None:
    f = cigre_mv()
    der_p = {d.id: d.sn_mva for d in f.ders}
    st = _attributed(f, vm_pu={"bus7": 1.06, "bus13": 1.01}, line_loading_percent={"line5": 200.0}, der_p_mw=der_p)
    cut = curtailment(f, st, max_loading_percent=100.0)
    assert set(cut) == set(der_p), "every DER is fed from tr0's source, as bus7 is"
    v_factor = 1 - (1.06 - 1.05) / 0.06 - 0.05
    assert cut["der0"].element_id == "bus7" and cut["der0"].p_limit_mw == pytest.approx(0.02 * v_factor, abs=1e-6)
    by_line = 1.5 - (1.5 - 0.0765) * (1 - 0.95 * 100.0 / 200.0)
    assert by_line < 1.5 * v_factor  # the wind: line5 asks more of it than the voltage does
    assert cut["der8"].element_id == "line5" and cut["der8"].p_limit_mw == pytest.approx(by_line, abs=1e-6)


# -- the simulated inverter's registers ------------------------------------------------------------


def test_register_image_starts_with_suns_and_lists_the_1547_models() -> None:
    inv = SimInverter(BAT, 3, 11547.0)
    assert inv.image[:2] == [0x5375, 0x6E53]  # "SunS"
    assert list(inv.addr) == [1, 701, 702, 703, 704, 705, 706, 711, 713]
    assert inv.image[inv.addr[705] - BASE_ADDR] == 705
    assert inv.image[-2:] == [0xFFFF, 0]


def test_a_write_to_a_read_only_register_or_beyond_range_is_refused() -> None:
    inv = SimInverter(PV, 1, 230.0)
    w_addr = inv.addr[701] + inv.pt(701, "W").offset
    assert inv.write(w_addr, [5]) is not None  # measurement: read-only
    lim = inv.addr[704] + inv.pt(704, "WMaxLimPct").offset
    assert inv.write(lim, [1500]) is not None  # 150 %: refused (SF -1)
    assert inv.write(lim, [500]) is None and inv.pt(704, "WMaxLimPct").cvalue == pytest.approx(50.0)
    assert inv.writes == 1


def test_unit_ids_are_distinct_per_feeder() -> None:
    f = cigre_mv()
    ids = unit_ids(f)
    assert len(set(ids.values())) == len(f.ders)
