"""actors.cores.scenarios: growth over years and Monte Carlo through the batched engine."""

from __future__ import annotations

import itertools

import pytest

from actors.cores.powerflow import run_power_flow
from actors.cores.scenarios import run_scenarios
from graph_schema.errors import BadInput
from graph_schema.importers import case33bw


@pytest.fixture(scope="module")
def feeder():
    return case33bw()


def test_without_uncertainty_each_year_is_pandapower_at_the_grown_load(feeder) -> None:
    r = run_scenarios(feeder, years=6, load_growth_percent=3.0, samples=1, load_sigma=0.0, der_sigma=0.0)
    for y in r.years:
        ref = run_power_flow(feeder, load_scale=y.load_factor)
        want = {(v.kind, v.element_id) for v in ref.violations}
        got = {(v.kind, v.element_id) for v in y.violations if v.probability == 1.0}
        assert got == want, y.year
        assert y.probability_any_violation == (1.0 if want else 0.0)
        assert y.min_vm_pu_p05 == pytest.approx(ref.min_vm_pu, abs=1e-6)
    assert r.years[0].probability_any_violation == 0.0 and r.years[-1].probability_any_violation == 1.0


def test_probability_grows_with_load_and_is_seeded(feeder) -> None:
    a = run_scenarios(feeder, years=6, load_growth_percent=3.0, samples=100, seed=7)
    b = run_scenarios(feeder, years=6, load_growth_percent=3.0, samples=100, seed=7)
    assert a == b
    p = [y.probability_any_violation for y in a.years]
    assert p[0] == 0.0 and p[-1] > 0.9
    assert all(x <= y + 0.05 for x, y in itertools.pairwise(p))
    assert a.power_flows == 700


def test_diverging_draws_are_counted_not_raised(feeder) -> None:
    r = run_scenarios(feeder, years=1, load_growth_percent=2500.0, samples=5, load_sigma=0.0)
    last = r.years[-1]
    assert last.converged == 0 and last.violations[0].kind == "DIVERGES" and last.probability_any_violation == 1.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"samples": 20_000, "years": 10}, r"MAX_SCENARIOS=50000.*fewer samples"),
        ({"load_sigma": 2.0}, "loadSigma"),
        ({"load_growth_percent": -150.0}, "loadGrowthPercent"),
        ({"years": -1}, "years"),
        ({"samples": 0}, "samples"),
    ],
)
def test_bad_input(feeder, kwargs, match) -> None:
    with pytest.raises(BadInput, match=match):
        run_scenarios(feeder, **kwargs)
