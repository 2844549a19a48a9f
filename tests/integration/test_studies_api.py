"""Studies, analysis jobs and recommendations end to end (issue #14): GraphQL over real HTTP and
WebSocket, the graph store (ArcadeDB over Bolt), analyses as real Ray tasks on local Ray, and the
field simulator on loopback as the truth that a study never touches."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import websockets

from tests.integration.conftest import bound_field

F = "case33bw"

STUDY_FIELDS = """id feederId owner changes { kind elementId isOpen scale }
  base { converged lossesMw minVmPu minVmBusId maxVmPu maxLineLoadingPercent customersOut
         violations { kind elementId } }
  result { converged reason lossesMw minVmPu minVmBusId maxVmPu maxLineLoadingPercent customersOut
           violations { kind elementId band } }
  diff { lossesMw minVmPu maxVmPu maxLineLoadingPercent customersOut violationsAdded violationsRemoved }"""
CREATE = f"""mutation C($f: ID!, $c: [StudyChangeInput!]!) {{
  createStudy(feederId: $f, changes: $c) {{ {STUDY_FIELDS} }} }}"""
GET = f"query S($id: ID!) {{ study(id: $id) {{ {STUDY_FIELDS} }} }}"
LIST = "query L($f: ID) { studies(feederId: $f) { id feederId owner } }"
DELETE = "mutation D($id: ID!) { deleteStudy(id: $id) }"
JOB_FIELDS = """id kind status percent error studyId result {
  __typename
  ... on ReconfigurationResult { baseLossesMw lossesMw minVmPu openSwitchIds steps { deviceId action } }
  ... on HostingCapacityResult { loadLevel powerFactor buses { busId maxPMw bindingConstraint bindingElementId } }
  ... on ContingencyResult { cases { elementId customersAtRisk restorable maxLoadingPercent minVmPu
                                    customersUnserved } }
  ... on ScenarioResult { years { year converged probabilityAnyViolation violations { kind elementId probability } } }
}"""
JOB = f"query J($id: ID!) {{ job(id: $id) {{ {JOB_FIELDS} }} }}"


def codes(r: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in r.get("errors", [])]


@pytest.fixture(scope="module")
async def grid_field(runtime, field_sim) -> AsyncIterator[Any]:
    async with bound_field(runtime, field_sim, (F,)):
        yield field_sim


async def wait_job(gql, job_id: str, *, within_s: float = 240.0, role: str = "PLANNER") -> dict[str, Any]:
    deadline = time.monotonic() + within_s
    while True:
        r = await gql(JOB, {"id": job_id}, role=role)
        assert "errors" not in r, r
        job = r["data"]["job"]
        if job["status"] in ("DONE", "FAILED", "CANCELLED"):
            return job
        assert time.monotonic() < deadline, f"job {job_id} still {job['status']} ({job['percent']} %)"
        await asyncio.sleep(0.5)


async def test_study_is_solved_apart_from_live_state_and_field(gql, mint, runtime, grid_field) -> None:
    sim = grid_field
    commands_before = sum(sim.commands_received.values())
    sim_states = {s.id: sim.switch_is_open(F, s.id) for s in (await runtime.grid.model(F)).switches}
    actor_before = await runtime.fleet.call(F, "state")
    changes = [
        {"kind": "SET_SWITCH", "elementId": "sw33", "isOpen": False},
        {"kind": "SET_SWITCH", "elementId": "sw7", "isOpen": True},
        {"kind": "OUTAGE", "elementId": "line17"},
        {"kind": "SCALE_LOAD", "scale": 1.1},
    ]
    token = mint("PLANNER", sub="pia")
    r = await gql(CREATE, {"f": F, "c": changes}, token=token)
    assert "errors" not in r, r
    study = r["data"]["createStudy"]
    assert study["owner"] == "pia" and [c["kind"] for c in study["changes"]] == [c["kind"] for c in changes]
    assert study["base"]["converged"] and study["result"]["converged"]
    assert study["result"]["customersOut"] == 30 and study["diff"]["customersOut"] == 30  # bus18 behind line17
    assert study["diff"]["lossesMw"] == pytest.approx(study["result"]["lossesMw"] - study["base"]["lossesMw"])

    # Nothing reached the field or the live state.
    await asyncio.sleep(1.0)
    assert sum(sim.commands_received.values()) == commands_before
    assert {k: sim.switch_is_open(F, k) for k in sim_states} == sim_states
    actor_after = await runtime.fleet.call(F, "state")
    assert dict(actor_after.switch_states) == dict(actor_before.switch_states)
    assert actor_after.load_scale == actor_before.load_scale

    # Saved in the graph store: read back, listed, deleted by its owner only.
    got = (await gql(GET, {"id": study["id"]}, role="OPERATOR"))["data"]["study"]
    assert got == study
    listed = (await gql(LIST, {"f": F}, role="ENGINEER"))["data"]["studies"]
    assert study["id"] in [s["id"] for s in listed]
    other = await gql(DELETE, {"id": study["id"]}, token=mint("PLANNER", sub="someone-else"))
    assert codes(other) == ["FORBIDDEN"]
    assert (await gql(DELETE, {"id": study["id"]}, token=token))["data"]["deleteStudy"] is True
    assert (await gql(GET, {"id": study["id"]}, token=token))["data"]["study"] is None
    # Each change to the store is audited with its outcome, the refused delete too.
    trail = await audit_of(gql, study["id"])
    assert ("STUDY_DELETE", "someone-else", "FORBIDDEN") in trail and ("STUDY_DELETE", "pia", "OK") in trail
    created = await gql("{ auditLog(first: 100) { edges { node { action actor outcome target } } } }", role="SECAUD")
    assert any(e["node"]["action"] == "STUDY_CREATE" and e["node"]["actor"] == "pia" and e["node"]["target"] == F
               for e in created["data"]["auditLog"]["edges"])


async def audit_of(gql, needle: str) -> list[tuple[str, str, str]]:
    r = await gql("{ auditLog(first: 100) { edges { node { action actor outcome target } } } }", role="SECAUD")
    assert "errors" not in r, r
    return [(n["action"], n["actor"], n["outcome"]) for n in (e["node"] for e in r["data"]["auditLog"]["edges"])
            if needle in n["target"]]


async def test_diverging_study_answers_converged_false(gql, grid_field) -> None:
    r = await gql(CREATE, {"f": F, "c": [{"kind": "SCALE_LOAD", "scale": 25.0}]}, role="PLANNER")
    assert "errors" not in r, r
    res = r["data"]["createStudy"]["result"]
    assert res["converged"] is False and res["reason"]


@pytest.mark.parametrize(
    ("change", "code", "text"),
    [
        ({"kind": "SET_SWITCH", "elementId": "sw999", "isOpen": True}, "NOT_FOUND", "sw999"),
        ({"kind": "ADD_DER", "busId": "bus999", "pMw": 1.0}, "NOT_FOUND", "bus999"),
        ({"kind": "SET_SWITCH", "elementId": "sw7"}, "BAD_INPUT", "isOpen"),
    ],
)
async def test_bad_changes(gql, grid_field, change, code, text) -> None:
    r = await gql(CREATE, {"f": F, "c": [change]}, role="PLANNER")
    assert codes(r) == [code], r
    assert text in r["errors"][0]["message"]


async def test_feeder_outside_the_token_and_roles_without_permission(gql, mint, grid_field) -> None:
    scoped = mint("PLANNER", sub="scoped", feeders=["cigre-mv"])
    r = await gql(CREATE, {"f": F, "c": []}, token=scoped)
    assert codes(r) == ["FORBIDDEN"]
    r = await gql("mutation { runContingency(feederId: \"case33bw\") { id } }", token=scoped)
    assert codes(r) == ["FORBIDDEN"]
    r = await gql(CREATE, {"f": F, "c": []}, role="VIEWER")
    assert codes(r) == ["FORBIDDEN"]
    r = await gql("mutation { runContingency(feederId: \"case33bw\") { id } }", role="OPERATOR")
    assert codes(r) == ["FORBIDDEN"]  # analyses are the planner's (RUN_STUDIES)


async def test_too_large_scenario_request_names_the_limit(gql, grid_field) -> None:
    r = await gql('mutation { runScenarios(feederId: "case33bw", years: 20, samples: 5000) { id } }', role="PLANNER")
    assert codes(r) == ["BAD_INPUT"]
    assert "MAX_SCENARIOS=50000" in r["errors"][0]["message"] and "fewer samples" in r["errors"][0]["message"]


async def test_contingency_job_on_a_study(gql, grid_field) -> None:
    r = await gql(CREATE, {"f": F, "c": [{"kind": "SET_SWITCH", "elementId": "sw35", "isOpen": False},
                                         {"kind": "SET_SWITCH", "elementId": "sw7", "isOpen": True}]}, role="PLANNER")
    study_id = r["data"]["createStudy"]["id"]
    r = await gql('mutation R($s: ID!) { runContingency(feederId: "case33bw", studyId: $s, '
                  'elementIds: ["line1", "line17", "line33"]) { id status studyId } }', {"s": study_id}, role="PLANNER")
    assert "errors" not in r, r
    job = await wait_job(gql, r["data"]["runContingency"]["id"])
    assert job["status"] == "DONE", job
    assert job["studyId"] == study_id and job["result"]["__typename"] == "ContingencyResult"
    cases = {c["elementId"]: c for c in job["result"]["cases"]}
    assert job["result"]["cases"][0]["elementId"] == "line1"
    assert cases["line1"]["customersAtRisk"] == 1239 and not cases["line1"]["restorable"]
    assert cases["line17"]["customersAtRisk"] == 30
    # On the study sw35 is closed, so line33 (the sw33 tie, still open) carries nothing.
    assert cases["line33"]["customersAtRisk"] == 0


async def test_hosting_capacity_job(gql, grid_field) -> None:
    r = await gql('mutation { hostingCapacity(feederId: "case33bw", loadLevel: 0.3, powerFactor: 1.0, '
                  'busIds: ["bus18", "bus3"]) { id status } }', role="PLANNER")
    assert "errors" not in r, r
    job = await wait_job(gql, r["data"]["hostingCapacity"]["id"])
    assert job["status"] == "DONE", job
    buses = {b["busId"]: b for b in job["result"]["buses"]}
    assert buses["bus18"]["bindingConstraint"] == "OVERVOLTAGE"
    assert 0.5 < buses["bus18"]["maxPMw"] < buses["bus3"]["maxPMw"]
    bad = await gql('mutation { hostingCapacity(feederId: "case33bw", loadLevel: 0.3, powerFactor: 1.5) { id } }',
                    role="PLANNER")
    assert codes(bad) == ["BAD_INPUT"] and "powerFactor" in bad["errors"][0]["message"]


async def test_cancelled_job_ends_cancelled(gql, mint, grid_field) -> None:
    token = mint("PLANNER", sub="pia")
    r = await gql('mutation { optimalReconfiguration(feederId: "case33bw") { id status } }', token=token)
    cancelled_id = r["data"]["optimalReconfiguration"]["id"]
    await asyncio.sleep(1.0)
    r = await gql("mutation C($id: ID!) { cancelJob(id: $id) { id status } }", {"id": cancelled_id}, token=token)
    assert "errors" not in r, r
    job = await wait_job(gql, cancelled_id)
    assert job["status"] == "CANCELLED" and job["result"] is None  # never FAILED, nothing half-written
    assert ("ANALYSIS_CANCEL", "pia", "OK") in await audit_of(gql, cancelled_id)
    assert ("ANALYSIS_START", "pia", "OK") in await audit_of(gql, "case33bw/RECONFIGURATION")


async def test_reconfiguration_job_progress_and_recommendations(gql, mint, server, grid_field) -> None:
    token = mint("PLANNER", sub="pia")
    commands_before = sum(grid_field.commands_received.values())
    # A full run, followed over the jobProgress subscription until it is DONE.
    r = await gql('mutation { optimalReconfiguration(feederId: "case33bw") { id status } }', token=token)
    job_id = r["data"]["optimalReconfiguration"]["id"]
    seen: list[dict[str, Any]] = []
    conn = await websockets.connect(server.ws_url, subprotocols=["graphql-transport-ws"])
    try:
        await conn.send(json.dumps({"type": "connection_init", "payload": {"authorization": f"Bearer {token}"}}))
        assert json.loads(await asyncio.wait_for(conn.recv(), 10))["type"] == "connection_ack"
        await conn.send(json.dumps({"id": "1", "type": "subscribe", "payload": {
            "query": "subscription P($id: ID!) { jobProgress(id: $id) { id status percent } }",
            "variables": {"id": job_id}}}))
        while True:
            msg = json.loads(await asyncio.wait_for(conn.recv(), 240))
            if msg["type"] == "ping":
                await conn.send(json.dumps({"type": "pong"}))
                continue
            if msg["type"] == "complete":
                break
            assert msg["type"] == "next", msg
            seen.append(msg["payload"]["data"]["jobProgress"])
    finally:
        await conn.close()
    assert seen[-1]["status"] == "DONE"
    percents = [s["percent"] for s in seen]
    assert percents == sorted(percents) and percents[-1] == 100.0
    job = await wait_job(gql, job_id)
    res = job["result"]
    assert res["__typename"] == "ReconfigurationResult"
    assert res["lossesMw"] < res["baseLossesMw"]
    assert [s["action"] for s in res["steps"]][:2] == ["CLOSE", "OPEN"]
    assert sum(grid_field.commands_received.values()) == commands_before

    # Recommendations: the reconfiguration as a plan for an operator (who may read them).
    r = await gql("query R($f: ID!) { recommendations(feederId: $f) { rank title predictedEffect analysis "
                  "plan { deviceId action } } }", {"f": F}, role="OPERATOR")
    assert "errors" not in r, r
    items = r["data"]["recommendations"]
    assert items and items[0]["rank"] == 1 and items[0]["plan"]
    assert "losses" in items[0]["predictedEffect"]
    assert items[0]["analysis"].startswith(f"optimalReconfiguration job {job_id}")  # the job's answer, reused
    assert sum(grid_field.commands_received.values()) == commands_before
