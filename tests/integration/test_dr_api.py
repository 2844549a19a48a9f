"""Demand response over real HTTP against the real graph store: the demo programme, an event
dispatched to meet its target, every rule refused with its name, a shortfall stated or refused
(all-or-nothing), cancelling, roles, and the measured performance against the 10-in-10 baseline
from meter intervals written into the historian (a known reduction during the event's window)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

F = "case33bw"
P = f"{F}-capacity"
EVENT = """fragment E on DrEvent { id programId feederId start end status targetKw plannedKw shortfallKw
  allOrNothing resources { resourceId kw } optedOut createdBy }"""
CREATE = EVENT + """
mutation($p: ID!, $f: ID!, $s: DateTime!, $e: DateTime!, $kw: Float!, $all: Boolean!) {
  createDrEvent(programId: $p, feederId: $f, start: $s, end: $e, targetKw: $kw, allOrNothing: $all) { ...E } }"""
CANCEL = EVENT + "mutation($id: ID!) { cancelDrEvent(eventId: $id) { ...E } }"
EVENTS = EVENT + "query($st: DrEventStatus) { drEvents(status: $st) { ...E } }"
PROGRAMS = """{ drPrograms { id name kind feederId seasonStart seasonEnd maxEventsPerSeason maxHoursPerEvent
  minNoticeMin optOutDeadlineMin maxOptOutsPerSeason resources { id loadId kind capacityKw enrolledFrom } } }"""
PERF = """query($id: ID!) { drEventPerformance(eventId: $id) { eventId targetKw deliveredKw baselineKw meteredKw
  intervals baselineMethod } }"""


def _tomorrow(hour: int) -> datetime:
    d = (datetime.now(UTC) + timedelta(days=1)).date()
    return datetime(d.year, d.month, d.day, hour, tzinfo=UTC)


def _vars(start: datetime, hours: float, kw: float, all_or_nothing: bool = False) -> dict[str, Any]:
    return {"p": P, "f": F, "s": start.isoformat(), "e": (start + timedelta(hours=hours)).isoformat(), "kw": kw,
            "all": all_or_nothing}


def _code(r: dict[str, Any]) -> tuple[str, str]:
    return r["errors"][0]["extensions"]["code"], r["errors"][0]["message"]


async def test_dr_programme_event_rules_and_performance(gql: Any, settings: Any) -> None:
    r = await gql(PROGRAMS)
    assert "errors" not in r, r
    prog = next(p for p in r["data"]["drPrograms"] if p["id"] == P)
    assert prog["kind"] == "CAPACITY" and prog["feederId"] == F and len(prog["resources"]) == 32
    capacity = {x["id"]: x["capacityKw"] for x in prog["resources"]}
    loads = {x["id"]: x["loadId"] for x in prog["resources"]}

    start = _tomorrow(14)
    r = await gql(CREATE, _vars(start, 2, 100.0), role="OPERATOR")
    assert "errors" not in r, r
    ev = r["data"]["createDrEvent"]
    assert ev["status"] == "SCHEDULED" and ev["shortfallKw"] == 0 and ev["plannedKw"] == 100.0
    assert sum(x["kw"] for x in ev["resources"]) >= 100.0
    kws = [x["kw"] for x in ev["resources"]]
    assert kws == sorted(kws, reverse=True) and kws[0] == max(capacity.values())  # largest first (no fatigue yet)

    # rules, each named
    for v, rule in ((_vars(start + timedelta(hours=1), 2, 10.0), "OVERLAPPING"),
                    (_vars(datetime.now(UTC) - timedelta(hours=1), 1, 10.0), "IN_THE_PAST"),
                    (_vars(datetime.now(UTC) + timedelta(minutes=5), 1, 10.0), "NOTICE"),
                    (_vars(_tomorrow(2), 5, 10.0), "MAX_HOURS_PER_EVENT"),
                    (_vars(_tomorrow(2), 1, 1e6, True), "SHORTFALL")):
        code, msg = _code(await gql(CREATE, v, role="OPERATOR"))
        assert code == "BAD_INPUT" and msg.startswith(f"rule={rule}:"), (rule, msg)
    code, _ = _code(await gql(CREATE, {**_vars(_tomorrow(2), 1, 10.0), "p": "nope"}, role="OPERATOR"))
    assert code == "NOT_FOUND"
    code, _ = _code(await gql(CREATE, _vars(_tomorrow(2), 1, 10.0), role="VIEWER"))
    assert code == "FORBIDDEN"

    # a shortfall stated, then cancelled
    r = await gql(CREATE, _vars(_tomorrow(19), 1, 1e6), role="OPERATOR")
    big = r["data"]["createDrEvent"]
    total = sum(capacity.values())
    assert abs(big["plannedKw"] - total) < 1e-6 and abs(big["shortfallKw"] - (1e6 - total)) < 1e-3
    r = await gql(EVENTS, {"st": "SCHEDULED"})
    assert {ev["id"], big["id"]} <= {e["id"] for e in r["data"]["drEvents"]}
    r = await gql(CANCEL, {"id": big["id"]}, role="OPERATOR")
    assert r["data"]["cancelDrEvent"]["status"] == "CANCELLED"
    code, msg = _code(await gql(CANCEL, {"id": big["id"]}, role="OPERATOR"))
    assert code == "BAD_INPUT" and "rule=NOT_CANCELLABLE" in msg
    code, _ = _code(await gql(PERF, {"id": big["id"]}))
    assert code == "BAD_INPUT"
    code, _ = _code(await gql(PERF, {"id": "ev-999999"}))
    assert code == "NOT_FOUND"

    # performance: the dispatched loads' meters at 40 kW each for 20 days; on the event day they drop
    # by 20 % of their load during the window: delivered = 8 kW per dispatched load
    from server.ami_ingest import write_named_parts

    dispatched = [loads[x["resourceId"]] for x in ev["resources"]]
    q = timedelta(minutes=15)
    day0 = datetime(start.year, start.month, start.day, tzinfo=UTC)
    rows = []
    for k in range(0, 21):
        d = day0 - timedelta(days=k)
        for i in range(96):
            t = d + i * q
            in_window = k == 0 and start <= t < start + timedelta(hours=2)
            for ld in dispatched:
                rows.append(("meter", (f"{F}/{ld}/m0", ld, t, t + q, (32.0 if in_window else 40.0) / 4)))
    await asyncio.to_thread(write_named_parts, settings.historian_root, F, rows, "test-dr-performance")
    r = await gql(PERF, {"id": ev["id"]})
    assert "errors" not in r, r
    perf = r["data"]["drEventPerformance"]
    assert perf["intervals"] == 8 and abs(perf["deliveredKw"] - 8.0 * len(dispatched)) < 1e-6, perf
    assert perf["targetKw"] == 100.0 and "10-in-10" in perf["baselineMethod"]
    r = await gql(CANCEL, {"id": ev["id"]}, role="OPERATOR")  # leave no scheduled event behind
    assert r["data"]["cancelDrEvent"]["status"] == "CANCELLED"
