"""actors.cores.batched against pandapower (PowerFlowModel) on every shipped feeder and random scenarios."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.sparse.linalg import spsolve

from actors.cores.batched import (
    BatchedPowerFlow,
    BatchResult,
    Scenarios,
    Topology,
    _dissection_order,
    _LevelSolver,
    random_scenarios,
    solve_scenarios,
)
from actors.cores.powerflow import PowerFlowModel, PowerFlowResult
from graph_schema.errors import BadInput, NotFound
from graph_schema.importers import BENCH_FEEDERS, case33bw, cigre_mv
from graph_schema.synthetic import synthetic_mv_feeder

VM_TOL_PU = 1e-6
VA_TOL_DEG = 1e-4
LOSS_TOL_MW = 1e-6
LOADING_TOL_PERCENT = 1e-3


def _reference(model: PowerFlowModel, engine: BatchedPowerFlow, sc: Scenarios, i: int) -> PowerFlowResult:
    """Scenario ``i`` solved by pandapower through PowerFlowModel, inputs spelled out per element."""
    kwargs = (sc.topologies[i] if sc.topologies else Topology()).solve_kwargs()
    if sc.load_p_mw is not None:
        kwargs["load_p_mw"] = dict(zip(engine.load_ids, sc.load_p_mw[i].tolist(), strict=True))
    if sc.load_q_mvar is not None:
        kwargs["load_q_mvar"] = dict(zip(engine.load_ids, sc.load_q_mvar[i].tolist(), strict=True))
    if sc.der_p_mw is not None:
        kwargs["der_p_mw"] = dict(zip(engine.der_ids, sc.der_p_mw[i].tolist(), strict=True))
    if sc.der_q_mvar is not None:
        kwargs["der_q_mvar"] = dict(zip(engine.der_ids, sc.der_q_mvar[i].tolist(), strict=True))
    if sc.load_scale is not None:
        kwargs["load_scale"] = float(sc.load_scale[i])
    return model.solve(**kwargs)


def _assert_matches(r: BatchResult, i: int, ref: PowerFlowResult) -> None:
    assert ref.converged, ref.reason
    assert r.converged[i], r.reason[i]
    vm = np.array([np.nan if b.vm_pu is None else b.vm_pu for b in ref.buses])
    va = np.array([np.nan if b.va_degree is None else b.va_degree for b in ref.buses])
    assert np.array_equal(np.isnan(r.vm_pu[i]), np.isnan(vm)), "energized buses differ"
    assert np.nanmax(np.abs(r.vm_pu[i] - vm), initial=0.0) < VM_TOL_PU
    assert np.nanmax(np.abs(r.va_degree[i] - va), initial=0.0) < VA_TOL_DEG
    loading = np.array([ln.loading_percent for ln in ref.lines])
    assert np.abs(r.line_loading_percent[i] - loading).max(initial=0.0) < LOADING_TOL_PERCENT
    i_ka = np.array([ln.i_ka for ln in ref.lines])
    assert np.abs(r.line_i_ka[i] - i_ka).max(initial=0.0) < 1e-6
    t_loading = np.array([t.loading_percent for t in ref.transformers])
    assert np.abs(r.transformer_loading_percent[i] - t_loading).max(initial=0.0) < LOADING_TOL_PERCENT
    assert r.losses_mw[i] == pytest.approx(ref.losses_mw, abs=LOSS_TOL_MW)
    assert r.p_source_mw[i] == pytest.approx(ref.p_source_mw, abs=LOSS_TOL_MW)
    assert r.q_source_mvar[i] == pytest.approx(ref.q_source_mvar, abs=LOSS_TOL_MW)


@pytest.fixture(scope="module")
def bw() -> BatchedPowerFlow:
    return BatchedPowerFlow(case33bw())


@pytest.fixture(scope="module")
def cigre() -> BatchedPowerFlow:
    return BatchedPowerFlow(cigre_mv())


# Every shipped feeder (demo and benchmark), the synthetic 1,000-bus feeder and a weakly meshed one.
FEEDERS = {
    **BENCH_FEEDERS,
    "synthetic-1000": lambda: synthetic_mv_feeder(1000),
    "synthetic-meshed": lambda: synthetic_mv_feeder(300, closed_ties=3, feeder_id="meshed"),
}
SCENARIO_COUNT = {"schutterwald": 2, "synthetic-1000": 3}


@pytest.mark.parametrize("name", sorted(FEEDERS))
def test_random_load_and_der_scenarios_match_pandapower(name: str) -> None:
    feeder = FEEDERS[name]()
    engine = BatchedPowerFlow(feeder)
    count = SCENARIO_COUNT.get(name, 6)
    sc = random_scenarios(engine, count, seed=14, load_range=(0.3, 1.6), der_range=(0.0, 1.0))
    r = engine.solve(sc)
    assert r.count == count and r.topology_groups == 1
    assert r.engine == ("batched",) * count and r.reason == (None,) * count
    assert r.vm_pu.shape == (count, len(feeder.buses)) and r.line_loading_percent.shape == (count, len(feeder.lines))
    assert np.all(r.iterations > 0) and np.all(r.iterations < engine.max_iterations)
    model = engine.model  # the engine's own pandapower model: each solve starts from the feeder's baseline
    for i in range(count):
        _assert_matches(r, i, _reference(model, engine, sc, i))


def test_baran_wu_published_base_case(bw: BatchedPowerFlow) -> None:
    r = bw.solve(Scenarios(count=1))
    assert r.converged[0] and r.engine == ("batched",)
    assert round(float(r.losses_mw[0]) * 1000, 1) == 202.7  # Baran & Wu (1989): 202.7 kW
    assert round(float(r.min_vm_pu[0]), 3) == 0.913
    assert r.bus_ids[int(np.nanargmin(r.vm_pu[0]))] == "bus18"
    assert r.max_vm_pu[0] == pytest.approx(1.0)
    ties = [r.line_ids.index(f"line{i}") for i in range(33, 38)]
    assert np.all(r.line_i_ka[0, ties] < 1e-9)


def test_load_scale_and_partial_overrides(bw: BatchedPowerFlow) -> None:
    sc = Scenarios(count=3, load_scale=np.array([0.5, 1.0, 1.4]))
    r = bw.solve(sc)
    model = PowerFlowModel(bw.feeder)
    for i in range(3):
        _assert_matches(r, i, _reference(model, bw, sc, i))
    assert r.losses_mw[0] < r.losses_mw[1] < r.losses_mw[2]


def test_topology_scenarios_are_grouped_and_match_pandapower(bw: BatchedPowerFlow) -> None:
    topologies = (
        Topology(),
        Topology.of(switch_states={"sw6": True}),  # bus7..bus18 de-energized
        Topology.of(switch_states={"sw7": True, "sw35": False}),  # a reconfiguration: still radial
        Topology.of(switch_states={"sw33": False, "sw34": False}),  # two ties closed: meshed
        Topology.of(out_of_service={"load18", "line30"}),
        Topology.of(switch_states={"sw6": True}),  # same as the second: same group
    )
    sc = random_scenarios(bw, len(topologies), seed=3, topologies=topologies)
    r = bw.solve(sc)
    assert r.topology_groups == 5
    assert r.engine == ("batched",) * len(topologies)
    model = PowerFlowModel(bw.feeder)
    for i in range(len(topologies)):
        _assert_matches(r, i, _reference(model, bw, sc, i))
    dark = {b for b, v in zip(r.bus_ids, r.vm_pu[1], strict=True) if np.isnan(v)}
    assert dark == {f"bus{i}" for i in range(7, 19)}
    assert r.converged.all()


def test_taps_capacitors_and_der_outages_match_pandapower(cigre: BatchedPowerFlow) -> None:
    f = cigre.feeder
    tr = f.transformers[0]
    topologies = (
        Topology.of(tap_pos={tr.id: (tr.tap_pos or 0) + 2}),
        Topology.of(out_of_service={f.ders[0].id}, switch_states={f.switches[0].id: False}),
        Topology(),
    )
    sc = random_scenarios(cigre, 3, seed=5, topologies=topologies)
    r = cigre.solve(sc)
    model = PowerFlowModel(f)
    for i in range(3):
        _assert_matches(r, i, _reference(model, cigre, sc, i))
    assert not np.allclose(r.vm_pu[0], r.vm_pu[2])  # the tap moved the voltages


def test_capacitor_steps_are_part_of_the_network() -> None:
    feeder = synthetic_mv_feeder(60, feeders=2, open_ties=1, feeder_id="small")
    engine = BatchedPowerFlow(feeder)
    cap = feeder.capacitors[0].id
    sc = Scenarios(count=2, topologies=(Topology.of(capacitor_step={cap: 0}), Topology.of(capacitor_step={cap: 2})))
    r = engine.solve(sc)
    model = PowerFlowModel(feeder)
    for i in range(2):
        _assert_matches(r, i, _reference(model, engine, sc, i))
    assert r.q_source_mvar[1] < r.q_source_mvar[0]


def test_absurd_load_is_not_converged_not_an_exception(bw: BatchedPowerFlow) -> None:
    r = bw.solve(Scenarios(count=3, load_scale=np.array([1.0, 60.0, 0.8])))
    assert list(r.converged) == [True, False, True]
    assert r.engine == ("batched", "pandapower-fallback", "batched")
    assert "did not reach" in (r.reason[1] or "") and "pandapower failed too" in (r.reason[1] or "")
    assert np.isnan(r.vm_pu[1]).all() and np.isnan(r.losses_mw[1])
    assert np.isnan(r.min_vm_pu[1]) and not np.isnan(r.min_vm_pu[0])


def test_slow_scenarios_fall_back_to_pandapower_and_say_so() -> None:
    feeder = case33bw()
    sc = Scenarios(count=2, load_scale=np.array([1.0, 1.2]))
    r = solve_scenarios(feeder, sc, max_iterations=3)
    assert r.engine == ("pandapower-fallback",) * 2
    assert all("did not reach" in (why or "") and "solved by pandapower" in (why or "") for why in r.reason)
    assert list(r.fallback_indices) == [0, 1] and np.all(r.iterations == 0)
    model = PowerFlowModel(feeder)
    engine = BatchedPowerFlow(feeder)
    for i in range(2):
        _assert_matches(r, i, _reference(model, engine, sc, i))
    strict = solve_scenarios(feeder, sc, max_iterations=3, fallback=False)
    assert strict.engine == ("batched",) * 2 and not strict.converged.any()
    assert all("did not reach" in (why or "") for why in strict.reason)


def test_a_topology_without_source_falls_back_and_says_so(bw: BatchedPowerFlow) -> None:
    src = bw.feeder.sources[0].id
    assert bw.prepare() is None
    assert "no source" in (bw.prepare(Topology.of(out_of_service={src})) or "")
    r = bw.solve(Scenarios(count=2, topologies=(Topology.of(out_of_service={src}), Topology())))
    assert r.engine == ("pandapower-fallback", "batched")
    assert "does not handle this topology" in (r.reason[0] or "") and "no source" in (r.reason[0] or "")
    assert r.converged[0] and np.isnan(r.vm_pu[0]).all() and r.losses_mw[0] == 0.0
    assert r.converged[1]


def test_bad_input_and_unknown_ids(bw: BatchedPowerFlow) -> None:
    with pytest.raises(BadInput, match="load_p_mw"):
        bw.solve(Scenarios(count=2, load_p_mw=np.ones((2, 3))))
    with pytest.raises(BadInput, match="topologies"):
        bw.solve(Scenarios(count=2, topologies=(Topology(),)))
    with pytest.raises(BadInput, match="NaN"):
        bw.solve(Scenarios(count=1, load_q_mvar=np.full((1, len(bw.load_ids)), np.nan)))
    with pytest.raises(NotFound):
        bw.solve(Scenarios(count=1, topologies=(Topology.of(switch_states={"no-such-switch": True}),)))


def test_results_are_frozen_and_the_feeder_untouched(bw: BatchedPowerFlow) -> None:
    before = bw.feeder
    r = bw.solve(random_scenarios(bw, 4, seed=1))
    with pytest.raises(ValueError):
        r.vm_pu[0, 0] = 2.0
    with pytest.raises(AttributeError):
        r.converged = None  # type: ignore[misc]
    assert bw.feeder == before == case33bw()
    empty = bw.solve(Scenarios(count=0))
    assert empty.count == 0 and empty.vm_pu.shape == (0, 33)


def test_chunks_give_the_same_answer() -> None:
    feeder = case33bw()
    one = BatchedPowerFlow(feeder, chunk_size=3)
    many = BatchedPowerFlow(feeder)
    sc = random_scenarios(one, 10, seed=9)
    a, b = one.solve(sc), many.solve(sc)
    assert np.allclose(a.vm_pu, b.vm_pu, atol=1e-9, rtol=0) and np.array_equal(a.iterations, b.iterations)


def test_level_solver_matches_a_direct_solve() -> None:
    rng = np.random.default_rng(0)
    n = 40
    a = sp.random(n, n, density=0.08, random_state=1) + 1j * sp.random(n, n, density=0.08, random_state=2)
    a = (a + a.T + sp.identity(n) * 4).tocsc()
    b = rng.normal(size=(n, 5)) + 1j * rng.normal(size=(n, 5))
    solver = _LevelSolver(a)
    assert np.allclose(solver.solve(b), spsolve(a, b), atol=1e-10)
    assert np.allclose(solver.solve(b[:, 0]), spsolve(a, b[:, 0]), atol=1e-10)
    order = solver.absorb_symmetric_permutation()
    assert order is not None
    x = solver.solve(b[order])
    assert np.allclose(x, spsolve(a, b)[order], atol=1e-10)


def test_a_deep_radial_matrix_is_solved_in_few_levels() -> None:
    """A 400-bus chain with laterals (a feeder's admittance pattern): minimum degree leaves about
    its depth in levels; nested dissection about log2(n), and the answer is the same."""
    rng = np.random.default_rng(3)
    n = 400
    parent = [max(0, i - 1) if i % 10 else max(0, i - 5) for i in range(n)]
    rows = [i for i in range(1, n)] + [parent[i] for i in range(1, n)]
    cols = [parent[i] for i in range(1, n)] + [i for i in range(1, n)]
    y = -(1.0 - 2.0j) * rng.uniform(0.5, 2.0, size=n - 1)
    a = sp.csc_matrix((np.concatenate([y, y]), (rows, cols)), shape=(n, n))
    a = (a - sp.diags(np.asarray(a.sum(axis=1)).ravel() - (0.01 - 0.02j))).tocsc()  # a shunt keeps it regular
    solver = _LevelSolver(a)
    assert len(solver.lower) <= 2 * math.ceil(math.log2(n)) and len(solver.upper) <= 2 * math.ceil(math.log2(n))
    b = rng.normal(size=(n, 3)) + 1j * rng.normal(size=(n, 3))
    assert np.allclose(solver.solve(b), spsolve(a, b), atol=1e-9)
    order = _dissection_order(a)
    assert sorted(order.tolist()) == list(range(n))


def test_the_topology_cache_is_bounded() -> None:
    engine = BatchedPowerFlow(case33bw(), max_topologies=1)
    topologies = (Topology(), Topology.of(switch_states={"sw6": True}), Topology())
    r = engine.solve(random_scenarios(engine, 3, seed=4, topologies=topologies))
    assert r.converged.all() and r.topology_groups == 2 and len(engine._networks) == 1
    assert np.allclose(r.vm_pu[0], BatchedPowerFlow(case33bw()).solve(
        random_scenarios(engine, 3, seed=4)).vm_pu[0], atol=1e-9)
