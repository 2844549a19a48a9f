"""Volt/VAR over real HTTP GraphQL against the live server (ArcadeDB, Ray actors): status, mode and
objective with their own permission, a plan on demand, approval refusals, and the feeder's
regulators/capacitors. The demo feeders carry no Volt/VAR devices, so the plan has nothing to do;
the planner itself is tested in tests/unit/test_voltvar*.py."""

from __future__ import annotations

from typing import Any

from tests.integration.conftest import wait_for

STATUS_Q = """query($f: ID!) { voltVar(feederId: $f) { feederId mode objective status
  lastPlan { id state trigger feasible predictedLossesMw predictedMinVmPu predictedMaxVmPu
             operations { deviceId action value } } } }"""


def codes(r: dict[str, Any]) -> list[str]:
    return [e["extensions"]["code"] for e in r.get("errors", [])]


async def test_voltvar_status_mode_objective_and_plan(gql) -> None:
    r = await gql(STATUS_Q, {"f": "case33bw"})
    assert "errors" not in r, r
    st = r["data"]["voltVar"]
    assert st["feederId"] == "case33bw" and st["mode"] in ("OFF", "ADVISORY", "AUTOMATIC")

    denied = await gql('mutation { setVoltVarMode(feederId: "case33bw", mode: ADVISORY) }', role="VIEWER")
    assert codes(denied) == ["FORBIDDEN"]
    try:
        r = await gql('mutation { setVoltVarMode(feederId: "case33bw", mode: ADVISORY) }', role="OPERATOR")
        assert r["data"]["setVoltVarMode"] == "ADVISORY", r
        r = await gql('mutation { setVoltVarObjective(feederId: "case33bw", objective: CVR) }', role="ENGINEER")
        assert r["data"]["setVoltVarObjective"] == "CVR", r

        async def kicked_plan_done() -> bool:  # a mode or objective change plans in the background
            last = (await gql(STATUS_Q, {"f": "case33bw"}))["data"]["voltVar"]["lastPlan"]
            return last is not None and last["trigger"] == "objective change"

        await wait_for(kicked_plan_done, 30)  # else it could land after (and replace) the one asked for
        r = await gql('mutation { planVoltVar(feederId: "case33bw") { id state objective operations { deviceId } '
                      'predictedMinVmPu } }', role="OPERATOR")
        assert "errors" not in r, r
        plan = r["data"]["planVoltVar"]
        assert plan["state"] == "NOTHING_TO_DO" and plan["operations"] == [] and plan["objective"] == "CVR"
        trail = await gql("{ auditLog(first: 50) { edges { node { action outcome target } } } }", role="SECAUD")
        assert {"action": "VOLTVAR_PLAN_REQUEST", "outcome": "OK", "target": "case33bw"} in [
            e["node"] for e in trail["data"]["auditLog"]["edges"]]
        st = (await gql(STATUS_Q, {"f": "case33bw"}))["data"]["voltVar"]
        assert st["mode"] == "ADVISORY" and st["objective"] == "CVR" and st["lastPlan"]["id"] == plan["id"]
        again = await gql('mutation($f: ID!, $p: ID!) { approveVoltVarPlan(feederId: $f, planId: $p) { id } }',
                          {"f": "case33bw", "p": plan["id"]}, role="OPERATOR")
        assert codes(again) == ["BAD_INPUT"]  # nothing to do: not a PROPOSED plan
        unknown = await gql('mutation { approveVoltVarPlan(feederId: "case33bw", planId: "nope") { id } }',
                            role="OPERATOR")
        assert codes(unknown) == ["NOT_FOUND"]
    finally:  # the server is shared by the session: leave Volt/VAR as every other test expects it
        await gql('mutation { setVoltVarObjective(feederId: "case33bw", objective: LOSSES) }', role="OPERATOR")
        await gql('mutation { setVoltVarMode(feederId: "case33bw", mode: OFF) }', role="OPERATOR")


async def test_feeder_lists_capacitors_and_regulators(gql) -> None:
    r = await gql('{ feeder(id: "case33bw") { capacitors { id step steps qMvar } '
                  'regulators { id kind tapPos tapMin tapMax bandCentrePu } } }')
    assert "errors" not in r, r
    assert r["data"]["feeder"]["capacitors"] == [] and r["data"]["feeder"]["regulators"] == []
    r = await gql('{ voltVar(feederId: "no-such-feeder") { mode } }')
    assert codes(r) == ["NOT_FOUND"]
