"""Outage records in the graph store, served as GraphQL queries and as the public GeoJSON feed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from actors.cores.outages import Cause, EtrPolicy, OutageTracker

FEED = "/feeds/outages.geojson"


def codes(result):
    return [e.get("extensions", {}).get("code") for e in result.get("errors") or []]


@pytest.fixture
async def outage_on_cigre(runtime):
    """A fault outage on cigre-mv: 3 loads lost, then 2 restored by switching; removed afterwards."""
    model = await runtime.grid.model("cigre-mv")
    loads = model.loads[:3]
    clock = [datetime(2026, 11, 24, 6, 0, tzinfo=UTC)]
    tracker = OutageTracker(etr_policy=EtrPolicy(), utc_now=lambda: clock[0])
    o = tracker.open("cigre-mv", Cause.FAULT, [ld.id for ld in loads], {ld.id: ld.customers for ld in loads},
                     devices=["sw_test"], at=clock[0], by="fdir", section_bus_ids=[ld.bus_id for ld in loads])
    seq = await runtime.outages.save(o)
    clock[0] += timedelta(seconds=40)
    o = tracker.step(o.id, lost=set(), restored={loads[0].id, loads[1].id}, action="CLOSE sw_tie", by="fdir",
                     at=clock[0])
    await runtime.outages.save(o, seq)
    yield o, seq
    async with runtime.store.driver.session(database=runtime.store.database) as s:
        await s.run("MATCH (r:Outage {seq: $seq}) DETACH DELETE r", seq=seq)


async def test_feed_is_public_valid_geojson_and_empty_when_no_outage(http):
    r = await http.get(FEED)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/geo+json")
    body = r.json()
    assert body["type"] == "FeatureCollection"
    assert isinstance(body["features"], list)
    assert "max-age" in r.headers["cache-control"] and r.headers["etag"]
    again = await http.get(FEED, headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304


async def test_feed_shows_active_outage_without_internal_ids(http, outage_on_cigre):
    outage, _ = outage_on_cigre
    body = (await http.get(FEED)).json()
    assert len(body["features"]) == 1
    f = body["features"][0]
    assert set(f["properties"]) == {"customersAffected", "startedAt", "estimatedRestoration", "cause", "status"}
    assert f["properties"]["customersAffected"] == outage.customers_out
    assert f["properties"]["status"] == "PARTIALLY_RESTORED"
    text = str(body)
    for secret in ("cigre-mv", "sw_test", outage.id, *outage.section_bus_ids, *outage.load_ids_interrupted):
        assert secret not in text, secret
    # geometry: CIGRE MV buses carry coordinates -> an area, or null geometry; never a bare id
    assert f["geometry"] is None or f["geometry"]["type"] in {"Polygon", "Point"}


async def test_outages_query_relay_and_customer_accounting(gql, outage_on_cigre):
    outage, _ = outage_on_cigre
    q = """query O($active: Boolean, $feeder: ID) { outages(active: $active, feederId: $feeder, first: 10) {
             edges { cursor node { id feederId status cause startedAt estimatedRestoration customersOut
                     customersInterrupted steps { action customersLost customersRestored } } }
             pageInfo { hasNextPage endCursor } } }"""
    r = await gql(q, {"active": True, "feeder": "cigre-mv"})
    assert "errors" not in r, r
    nodes = [e["node"] for e in r["data"]["outages"]["edges"]]
    node = next(n for n in nodes if n["id"] == outage.id)
    assert node["customersInterrupted"] > node["customersOut"] > 0
    assert node["status"] == "PARTIALLY_RESTORED" and node["cause"] == "FAULT"
    assert [s["action"] for s in node["steps"]][-1] == "CLOSE sw_tie"
    one = await gql('query($id: ID!) { outage(id: $id) { id customersOut } }', {"id": outage.id})
    assert one["data"]["outage"]["customersOut"] == outage.customers_out
    assert codes(await gql('{ outage(id: "nope") { id } }')) == ["NOT_FOUND"]


async def test_outages_respect_feeder_scope_and_roles(gql, mint, outage_on_cigre):
    outage, _ = outage_on_cigre
    scoped = mint("OPERATOR", sub="east-op", feeders=["case33bw"])
    q = "{ outages(first: 50) { edges { node { id feederId } } } }"
    r = await gql(q, token=scoped)
    assert all(e["node"]["feederId"] == "case33bw" for e in r["data"]["outages"]["edges"])
    assert codes(await gql('query($id: ID!) { outage(id: $id) { id } }', {"id": outage.id}, token=scoped)) == [
        "FORBIDDEN"]
    assert codes(await gql(q, role="CUSTOMER")) == ["FORBIDDEN"]
    assert codes(await gql("{ outages(first: 5000) { edges { cursor } } }")) == ["BAD_INPUT"]
