"""Outage records: customer accounting across steps, status, ETR, records, public view."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from actors.cores.outages import (
    Cause,
    EtrPolicy,
    Outage,
    OutageStatus,
    OutageTracker,
    public_view,
    reliability_counts,
)
from graph_schema.errors import BadInput, NotFound
from tests.unit.fdir_grids import two_feeders

T0 = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
CUST = {"L1": 100, "L2": 80, "L3": 60, "L4": 40}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now


def tracker() -> tuple[OutageTracker, Clock]:
    c = Clock()
    return OutageTracker(utc_now=c), c


def test_customer_accounting_across_steps() -> None:
    tr, clock = tracker()
    o = tr.open("f1", Cause.FAULT, ["L1", "L2", "L3"], CUST, devices=["brk"], at=T0, by="fdir")
    assert (o.status, o.customers_out, o.customers_interrupted) == (OutageStatus.DETECTED, 240, 240)
    assert o.estimated_restoration == T0 + timedelta(minutes=120)
    o = tr.step(o.id, action="OPEN sw6", by="fdir", at=T0 + timedelta(minutes=1), isolated=True)
    assert o.status == OutageStatus.ISOLATED and o.customers_out == 240
    o = tr.step(o.id, restored={"L1"}, action="CLOSE brk", by="fdir", at=T0 + timedelta(minutes=2))
    assert (o.status, o.customers_out, o.customers_interrupted) == (OutageStatus.PARTIALLY_RESTORED, 140, 240)
    # A later step loses a load that was never out: it joins the interrupted count.
    o = tr.step(o.id, lost={"L4"}, restored={"L2"}, action="split", by="op", at=T0 + timedelta(minutes=3))
    assert (o.customers_out, o.customers_interrupted) == (100, 280)
    assert o.steps[-1].customers_lost == 40 and o.steps[-1].customers_restored == 80
    # Restoring a load that is not out changes nothing.
    o = tr.step(o.id, restored={"L1"}, action="noop", by="op", at=T0 + timedelta(minutes=4))
    assert o.customers_out == 100 and o.steps[-1].customers_restored == 0
    clock.now = T0 + timedelta(minutes=200)  # past the policy ETR: never in the past
    o = tr.step(o.id, action="crew on site", by="crew")
    assert o.estimated_restoration == clock.now
    o = tr.close(o.id, by="crew", at=T0 + timedelta(minutes=210))
    assert (o.status, o.customers_out, o.customers_interrupted) == (OutageStatus.RESTORED, 0, 280)
    assert o.restored_at == T0 + timedelta(minutes=210) and o.estimated_restoration is None
    assert not o.active and tr.outages(active=True) == []
    with pytest.raises(BadInput):
        tr.step(o.id, lost={"L1"}, action="x", by="y")


def test_errors_and_momentary() -> None:
    tr, _ = tracker()
    with pytest.raises(BadInput):
        tr.open("f1", Cause.FAULT, ["LX"], CUST)
    with pytest.raises(NotFound):
        tr.get("nope")
    m = tr.record_momentary("f1", ["rec1"], ["L1", "L2"], CUST, at=T0)
    assert m.momentary and m.status == OutageStatus.RESTORED and m.cause == Cause.MOMENTARY
    assert (m.customers_out, m.customers_interrupted) == (0, 180)


def test_etr_policy_per_cause_and_feeder() -> None:
    pol = EtrPolicy(per_feeder={"f2": {Cause.WEATHER: 30.0}})
    tr = OutageTracker(etr_policy=pol, utc_now=lambda: T0)
    w = tr.open("f1", Cause.WEATHER, ["L1"], CUST, at=T0)
    assert w.estimated_restoration == T0 + timedelta(minutes=240)
    w2 = tr.open("f2", "WEATHER", ["L1"], CUST, at=T0)
    assert w2.estimated_restoration == T0 + timedelta(minutes=30)


def test_record_round_trip_is_flat() -> None:
    tr, _ = tracker()
    o = tr.open("f1", Cause.EQUIPMENT, ["L1", "L2"], CUST, devices=["brk"], at=T0, section_bus_ids=["a2", "a3"])
    o = tr.step(o.id, restored={"L2"}, action="CLOSE tie", by="fdir", at=T0 + timedelta(minutes=5))
    rec = o.to_record()
    assert all(isinstance(v, str | int | float | bool) or v is None for v in rec.values())
    json.loads(rec["steps_json"])  # type: ignore[arg-type]
    back = Outage.from_record(rec)
    assert back == o or (back.to_record() == rec)
    with pytest.raises(BadInput):
        Outage.from_record({"id": "x"})


def test_public_view_has_no_internal_ids() -> None:
    feeder = two_feeders()
    tr, _ = tracker()
    o = tr.open(
        feeder.id,
        Cause.FAULT,
        ["la3_ld", "la4_ld"],
        {"la3_ld": 80, "la4_ld": 60},
        devices=["brk_a", "sa2"],
        at=T0,
        section_bus_ids=["a2", "a3", "a4"],
    )
    geo = {"a2": (8.0, 48.0), "a3": (8.1, 48.0), "a4": (8.05, 48.1)}
    view = public_view(o, feeder, geo)
    assert set(view) == {"id", "customersAffected", "startedAt", "estimatedRestoration", "cause", "status", "area"}
    assert view["customersAffected"] == 140 and view["cause"] == "FAULT"
    assert view["area"]["type"] == "Polygon" and len(view["area"]["coordinates"][0]) == 4
    values = json.dumps({k: v for k, v in view.items() if k != "id"})
    for secret in (o.id, feeder.id, "brk_a", "sa2", '"a2"', '"a3"', "la3_ld", "outage-"):
        assert secret not in values and secret not in view["id"]
    assert public_view(o, feeder, geo)["id"] == view["id"]  # stable
    one = tr.open(feeder.id, Cause.FAULT, ["la3_ld"], {"la3_ld": 80}, at=T0, section_bus_ids=["a3"])
    assert public_view(one, None, geo)["area"]["type"] == "Point"
    none = tr.open(feeder.id, Cause.FAULT, ["la3_ld"], {"la3_ld": 80}, at=T0)
    assert public_view(none, None, {})["area"] is None


def test_public_area_shrinks_to_who_is_still_out() -> None:
    feeder = two_feeders()
    tr, _ = tracker()
    o = tr.open(feeder.id, Cause.FAULT, ["la3_ld", "la4_ld"], {"la3_ld": 80, "la4_ld": 60}, at=T0,
                section_bus_ids=["a2", "a3", "a4"])
    o = tr.step(o.id, restored={"la4_ld"}, action="CLOSE tie", by="fdir", at=T0)
    geo = {"a2": (8.0, 48.0), "a3": (8.1, 48.0), "a4": (8.05, 48.1)}
    view = public_view(o, feeder, geo)
    bus_of_la3 = next(ld.bus_id for ld in feeder.loads if ld.id == "la3_ld")
    assert view["customersAffected"] == 80
    assert view["area"] == {"type": "Point", "coordinates": list(geo[bus_of_la3])}


def test_planned_switching_is_apart_from_faults_in_reliability_counts() -> None:
    """#17.1: IEEE 1366 counts planned interruptions separately from unplanned ones."""
    tr, _ = tracker()
    f = tr.open("f1", Cause.FAULT, ["L1"], CUST, at=T0, by="fdir")
    tr.step(f.id, restored={"L1"}, action="CLOSE brk", by="fdir", at=T0 + timedelta(minutes=30))
    p = tr.open("f1", Cause.PLANNED_SWITCHING, ["L2", "L3"], CUST, devices=["sw17"], at=T0, by="alice")
    assert p.planned and not f.planned and p.steps[0].by == "alice"
    assert Outage.from_record(json.loads(json.dumps(p.to_record()))).cause == Cause.PLANNED_SWITCHING
    tr.step(p.id, restored={"L2", "L3"}, action="SUPPLY_RESTORED", by="alice", at=T0 + timedelta(minutes=10))
    tr.record_momentary("f1", ["rec1"], ["L4"], CUST, at=T0)
    counts = reliability_counts(tr.outages())
    assert counts["unplanned"] == {"events": 1, "ci": 100, "cmi": 100 * 30}
    assert counts["planned"] == {"events": 1, "ci": 140, "cmi": 140 * 10}
    assert counts["momentary"] == {"events": 1, "ci": 40, "cmi": 0}
