"""graph_schema.importers: pandapower networks -> validated feeders."""

from __future__ import annotations

import warnings
from dataclasses import replace
from pathlib import Path

import pandapower as pp
import pandapower.networks as pn
import pytest

from graph_schema.errors import BadInput, InvalidModel
from graph_schema.importers import (
    BENCH_FEEDERS,
    DEMO_FEEDERS,
    case33bw,
    cigre_mv,
    from_pandapower,
    from_pandapower_json,
)
from graph_schema.model import DerKind, ElementType, SwitchKind
from graph_schema.validate import validate_feeder


def quiet(build, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return build(*args, **kwargs)


@pytest.fixture(scope="module")
def bw():
    return case33bw()


def test_case33bw_ids_and_switches(bw) -> None:
    assert bw.id == "case33bw" and bw.name == "Baran & Wu 33-bus"
    assert [b.id for b in bw.buses] == [f"bus{i}" for i in range(1, 34)]
    assert bw.bus("bus18").name == "Bus 18"
    assert len(bw.lines) == 37 and all(ln.in_service for ln in bw.lines)
    assert len(bw.switches) == 37
    assert {s.element_id for s in bw.switches} == {ln.id for ln in bw.lines}  # one per branch
    ties = [s for s in bw.switches if s.normally_open]
    assert [s.id for s in ties] == ["sw33", "sw34", "sw35", "sw36", "sw37"]
    assert all(s.is_open and s.kind == SwitchKind.LOAD_BREAK_SWITCH for s in ties)
    head = bw.switch("sw1")
    assert (head.kind, head.bus_id, head.element_id) == (SwitchKind.BREAKER, "bus1", "line1")
    others = [s for s in bw.switches if s.id != "sw1" and not s.normally_open]
    assert len(others) == 31 and all(s.kind == SwitchKind.SECTIONALIZER and not s.is_open for s in others)
    assert [s.id for s in bw.sources] == ["src1"] and bw.sources[0].bus_id == "bus1"
    assert bw.limits.vm_min_pu == 0.90 and bw.limits.emergency_vm_min_pu == 0.88
    assert validate_feeder(bw) == []


def test_case33bw_loads_unchanged(bw) -> None:
    net = quiet(pn.case33bw)
    assert len(bw.loads) == len(net.load) == 32
    for ld, (_, row) in zip(bw.loads, net.load.iterrows(), strict=True):
        assert ld.bus_id == f"bus{int(row.bus) + 1}"
        assert ld.p_mw == row.p_mw and ld.q_mvar == row.q_mvar
        assert ld.customers > 0
    assert sum(ld.p_mw for ld in bw.loads) == pytest.approx(3.715)
    # 3 kW per customer: 100 kW -> 33 customers
    assert bw.loads[0].p_mw == 0.1 and bw.loads[0].customers == 33


def test_case33bw_geo_is_mapped(bw) -> None:
    assert all(b.lon is not None and b.lat is not None for b in bw.buses)


def test_cigre_mv() -> None:
    f = cigre_mv()
    assert f.id == "cigre-mv" and len(f.buses) == 15 and len(f.lines) == 15 and len(f.transformers) == 2
    open_ties = sorted(s.name for s in f.switches if s.normally_open)
    assert open_ties == ["S1", "S2", "S3"]
    assert all(s.is_open for s in f.switches if s.normally_open)
    trafo_cbs = [s for s in f.switches if s.element_type == ElementType.TRANSFORMER]
    assert len(trafo_cbs) == 2 and all(s.kind == SwitchKind.BREAKER for s in trafo_cbs)
    heads = {
        (s.bus_id, s.element_id)
        for s in f.switches
        if s.kind == SwitchKind.BREAKER and s.element_type == "LINE"
    }
    assert heads == {("bus1", "line0"), ("bus12", "line10")}
    kinds = sorted(d.kind for d in f.ders)
    assert kinds.count(DerKind.PV) == 8 and kinds.count(DerKind.WIND) == 1
    assert all(ld.customers > 0 for ld in f.loads)
    assert validate_feeder(f) == []


def test_registries() -> None:
    assert set(DEMO_FEEDERS) == {"case33bw", "cigre-mv"}
    assert set(BENCH_FEEDERS) == {"case33bw", "cigre-mv", "schutterwald"}


def test_schutterwald_validates_with_many_sources() -> None:
    f = BENCH_FEEDERS["schutterwald"]()
    assert f.id == "schutterwald"
    assert len(f.buses) == 2940 and len(f.sources) == 14
    assert sum(s.is_open for s in f.switches) == 88
    assert all(-180 <= (b.lon or 0) <= 180 for b in f.buses)
    assert validate_feeder(f) == []


def test_json_round_trip(tmp_path: Path) -> None:
    net = quiet(pn.create_cigre_network_mv, with_der="pv_wind")
    path = tmp_path / "my-feeder.json"
    pp.to_json(net, str(path))
    f = from_pandapower_json(path)
    assert f.id == "my-feeder" and len(f.buses) == 15 and len(f.switches) == 8
    g = from_pandapower_json(str(path), feeder_id="x", name="X")
    assert (g.id, g.name) == ("x", "X")
    ref = from_pandapower(net, "my-feeder", f.name)
    # JSON keeps floats to ~15 digits: loads compare within rounding, everything else exactly.
    assert replace(f, loads=()) == replace(ref, loads=())
    for a, b in zip(f.loads, ref.loads, strict=True):
        assert (a.id, a.bus_id, a.customers) == (b.id, b.bus_id, b.customers)
        assert a.p_mw == pytest.approx(b.p_mw, rel=1e-12) and a.q_mvar == pytest.approx(b.q_mvar, rel=1e-12)


def test_garbage_json_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "garbage.json"
    bad.write_text("{ this is not json")
    with pytest.raises(BadInput) as exc:
        from_pandapower_json(bad)
    assert str(bad) in str(exc.value) and "pandapower.to_json" in str(exc.value)
    other = tmp_path / "other.json"
    other.write_text('{"hello": [1, 2, 3]}')
    with pytest.raises(BadInput) as exc:
        from_pandapower_json(other)
    assert str(other) in str(exc.value)
    with pytest.raises(BadInput, match="no such file"):
        from_pandapower_json(tmp_path / "missing.json")


def test_invalid_network_raises_invalid_model() -> None:
    net = pp.create_empty_network()
    b0 = pp.create_bus(net, 20.0)
    b1 = pp.create_bus(net, 20.0)
    pp.create_bus(net, 20.0)  # island
    pp.create_ext_grid(net, b0)
    pp.create_line_from_parameters(
        net, b0, b1, length_km=-1.0, r_ohm_per_km=0.1, x_ohm_per_km=0.1, c_nf_per_km=0.0, max_i_ka=0.2
    )
    with pytest.raises(InvalidModel) as exc:
        from_pandapower(net, "bad", "bad")
    assert {p.element_id for p in exc.value.problems} == {"line0", "bus2"}


def test_storage_shunt_and_unsupported_elements() -> None:
    net = pp.create_empty_network()
    b0, b1 = pp.create_bus(net, 0.4), pp.create_bus(net, 0.4)
    pp.create_ext_grid(net, b0)
    pp.create_line_from_parameters(net, b0, b1, 0.1, 0.2, 0.08, 200.0, 0.2)
    pp.create_storage(net, b1, p_mw=0.01, max_e_mwh=0.05, sn_mva=0.02)  # charging 10 kW
    pp.create_shunt(net, b1, q_mvar=-0.02, max_step=3, step=2)
    pp.create_load(net, b1, p_mw=0.009, q_mvar=0.0)
    pp.create_switch(net, b0, 0, et="l", type="DS")
    f = from_pandapower(net, "lv", "lv", tie_lines=())
    (st,) = f.ders
    assert st.kind == DerKind.STORAGE and st.p_mw == -0.01 and st.max_e_mwh == 0.05
    (cap,) = f.capacitors
    assert (cap.q_mvar, cap.steps, cap.step) == (0.02, 3, 2)
    assert f.loads[0].customers == 3
    assert f.switches[0].kind == SwitchKind.DISCONNECTOR
    pp.create_shunt(net, b1, q_mvar=0.01)  # a reactor
    with pytest.raises(BadInput, match="capacitor"):
        from_pandapower(net, "lv", "lv")
    net.shunt = net.shunt.iloc[:1]
    pp.create_gen(net, b1, p_mw=0.01)
    with pytest.raises(BadInput, match="'gen'"):
        from_pandapower(net, "lv", "lv")


def test_tie_line_out_of_service_becomes_open_switch() -> None:
    net = pp.create_empty_network()
    b = [pp.create_bus(net, 12.47) for _ in range(3)]
    pp.create_ext_grid(net, b[0])
    for a, c in ((0, 1), (1, 2), (2, 0)):
        pp.create_line_from_parameters(net, b[a], b[c], 1.0, 0.2, 0.4, 10.0, 0.3)
    net.line.loc[2, "in_service"] = False
    f = from_pandapower(net, "t", "t", tie_lines=[2], add_line_switches=True, feeder_breakers=True)
    assert all(ln.in_service for ln in f.lines)
    kinds = {s.element_id: (s.kind, s.is_open, s.normally_open, s.bus_id) for s in f.switches}
    assert kinds["line0"] == (SwitchKind.BREAKER, False, False, "bus0")
    assert kinds["line1"] == (SwitchKind.SECTIONALIZER, False, False, "bus1")
    assert kinds["line2"] == (SwitchKind.LOAD_BREAK_SWITCH, True, True, "bus2")
    with pytest.raises(BadInput, match="tie_lines"):
        from_pandapower(net, "t", "t", tie_lines=[9])
    custom = from_pandapower(
        net, "t", "t", add_line_switches=True, switch_kind_map={None: SwitchKind.RECLOSER}
    )
    assert {s.kind for s in custom.switches} == {SwitchKind.RECLOSER}
    assert not custom.lines[2].in_service
