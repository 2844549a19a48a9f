"""The spine end to end: import -> graph store (Bolt) -> feeder actor (Ray) -> GraphQL (HTTP)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

PF_QUERY = """
query PowerFlow($id: ID!) {
  feeder(id: $id) {
    id name
    powerFlow { converged reason lossesMw minVmPu minVmBusId maxVmPu maxLineLoadingPercent }
  }
}
"""


def codes(result: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in result.get("errors") or []]


async def test_feeders_lists_demo_feeders(gql):
    r = await gql("{ feeders { id name } }")
    assert "errors" not in r, r
    ids = {f["id"] for f in r["data"]["feeders"]}
    assert {"case33bw", "cigre-mv"} <= ids


async def test_baran_wu_published_results_through_the_whole_stack(gql):
    r = await gql(PF_QUERY, {"id": "case33bw"})
    assert "errors" not in r, r
    pf = r["data"]["feeder"]["powerFlow"]
    assert pf["converged"] is True
    # Baran & Wu (1989) base case: losses 202.7 kW, minimum voltage 0.913 pu at bus 18.
    assert pf["lossesMw"] * 1000 == pytest.approx(202.7, abs=0.1)
    assert pf["minVmPu"] == pytest.approx(0.9131, abs=0.0005)
    assert pf["minVmBusId"] == "bus18"


async def test_contract_fields_answer(gql):
    q = """{ feeder(id: "cigre-mv") { id name buses { id name vnKv vmPu } lines { id fromBusId toBusId }
            switches { id kind isOpen normallyOpen } loads { id customers energized } ders { id kind pMw }
            energization { customersOut islands }
            powerFlow { converged lossesMw minVmPu maxVmPu maxLineLoadingPercent } } }"""
    r = await gql(q)
    assert "errors" not in r, r
    f = r["data"]["feeder"]
    assert f["powerFlow"]["converged"] is True
    assert len(f["buses"]) == 15 and all(b["vmPu"] is not None for b in f["buses"] if b["vnKv"] < 100)
    assert {s["kind"] for s in f["switches"]} >= {"BREAKER", "LOAD_BREAK_SWITCH"}
    assert sum(1 for s in f["switches"] if s["normallyOpen"]) == 3
    assert f["ders"], "CIGRE MV with PV and wind has DER"


async def test_unknown_feeder_is_not_found(gql):
    r = await gql(PF_QUERY, {"id": "no-such-feeder"})
    assert codes(r) == ["NOT_FOUND"]
    assert "no-such-feeder" in r["errors"][0]["message"]
    # ...and the server keeps serving everything else.
    ok = await gql(PF_QUERY, {"id": "case33bw"})
    assert "errors" not in ok


async def test_switch_opened_in_store_deenergizes_buses_behind_it(gql, runtime):
    # sw on the branch bus6 -> bus7 of Baran & Wu: opening it cuts bus7..bus18.
    model = await runtime.grid.model("case33bw")
    line = next(ln for ln in model.lines if {ln.from_bus_id, ln.to_bus_id} == {"bus6", "bus7"})
    sw = next(s for s in model.switches if s.element_id == line.id)
    await runtime.store.set_switch_state("case33bw", sw.id, True)
    try:
        await runtime.fleet.call("case33bw", "reload")
        r = await gql('{ feeder(id: "case33bw") { energization { deenergizedBusIds customersOut } '
                      'buses { id vmPu energized } switches { id isOpen } } }')
        assert "errors" not in r, r
        f = r["data"]["feeder"]
        out = set(f["energization"]["deenergizedBusIds"])
        assert {f"bus{i}" for i in range(7, 19)} <= out
        assert "bus6" not in out and "bus19" not in out
        assert f["energization"]["customersOut"] > 0
        assert all(b["vmPu"] is None for b in f["buses"] if b["id"] in out)
        assert next(s for s in f["switches"] if s["id"] == sw.id)["isOpen"] is True
    finally:
        await runtime.store.set_switch_state("case33bw", sw.id, False)
        await runtime.fleet.call("case33bw", "reload")


async def test_killed_actor_comes_back_with_the_same_answers(gql, runtime):
    before = await gql(PF_QUERY, {"id": "cigre-mv"})
    runtime.fleet.kill("cigre-mv")  # ray.kill, no restart by Ray: the fleet must recreate it
    await asyncio.sleep(0.5)
    after = await gql(PF_QUERY, {"id": "cigre-mv"})
    assert "errors" not in after, after
    assert after["data"]["feeder"]["powerFlow"] == before["data"]["feeder"]["powerFlow"]
    assert runtime.fleet.restarts("cigre-mv") >= 1


async def test_diverging_feeder_still_answers_with_converged_false(gql, runtime):
    from dataclasses import replace

    from graph_schema.importers import case33bw

    base = case33bw()
    heavy = replace(base, id="case33bw-x40", name="Baran & Wu at 40x load",
                    loads=tuple(replace(ld, p_mw=ld.p_mw * 40, q_mvar=ld.q_mvar * 40) for ld in base.loads))
    await runtime.grid.import_feeder(heavy, replace=True)
    try:
        r = await gql(PF_QUERY, {"id": "case33bw-x40"})
        assert "errors" not in r, r
        pf = r["data"]["feeder"]["powerFlow"]
        assert pf["converged"] is False
        assert pf["reason"]
    finally:
        await runtime.store.delete_feeder("case33bw-x40")
        await runtime.fleet.stop_feeder("case33bw-x40")


async def test_health_and_readiness(http):
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    r = await http.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json()["checks"]["store"] == "ok"
    assert set(r.json()["checks"]["feeders"]) >= {"case33bw", "cigre-mv"}


async def test_metrics_count_operations_by_name(gql, http):
    await gql("query FeederList { feeders { id } }")
    text = (await http.get("/metrics")).text
    assert 'dms_graphql_requests_total{operation="FeederList",outcome="ok",type="query"}' in text
    assert "dms_feeder_actor_up" in text
