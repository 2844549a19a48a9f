"""A control system of record never acts without a record, never loses one, never reports what did
not happen (#17 items 7, 11, 13, 14, 15, 16), over the real stack.

Faults are real: the graph store's java is SIGKILLed through its pid file (and brought back by
:meth:`EmbeddedArcadeDB.supervise`, the runtime's restart path), the feeder actor's worker process is
SIGKILLed through the pid its ``ping`` reports (Ray restarts it, the fleet re-attaches its field).
Each test then checks that the field, the ``ControlAction`` records, the stored switch state and
the audit chain agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from graph_schema.errors import DmsError
from tests.integration.conftest import bound_field
from tests.integration.test_realtime import CANCEL, OPERATE, SELECT, codes, operate_once, wait_for

# "Promptly": the store timeout is 2 s and the refusal used to come after 20-60 s; a loaded 2-core
# CI machine adds seconds, so the bound proves the fix without timing the machine.
PROMPT_S = 15.0
F = "case33bw"
SW = "sw17"  # a sectionalizer on a Modbus RTU
STATUS = f"{F}/{SW}/STATUS"
REMOVE_TAG = "mutation R($t: ID!) { removeTag(tagId: $t) { id setBy } }"
SET_TAG = """mutation T($d: ID!) { setTag(deviceId: $d, kind: DO_NOT_OPERATE, reason: "crew on line",
  feederId: "case33bw") { id setBy } }"""


@pytest.fixture(scope="module")
async def field(runtime, field_sim) -> AsyncIterator[Any]:
    async with bound_field(runtime, field_sim, (F,), ready_within_s=20):
        yield field_sim


@pytest.fixture
async def sim(field) -> AsyncIterator[Any]:
    yield field
    await field.reset()


async def audit_entries(runtime, since_seq: int) -> list[Any]:
    from security.audit import AuditLog

    return await AuditLog(runtime.store).page(after_seq=since_seq, limit=500)


async def audit_head(runtime) -> int:
    head = await runtime.audit.head()
    return head.seq if head is not None else 0


async def newest_control(runtime, device_id: str) -> dict[str, Any]:
    rows = await runtime.store.list_records("ControlAction", feeder_id=F, where={"device_id": device_id}, limit=1,
                                            newest_first=True)
    return rows[0] if rows else {}


@contextlib.asynccontextmanager
async def store_down(arcadedb) -> AsyncIterator[None]:
    """SIGKILL the store's java (pid file), and at the end bring it back the way the runtime does
    (its supervisor) and wait until it answers. A supervisor left by an earlier test is stopped
    first: it would bring the store back at once and the body would not see it down (seen in CI)."""
    await arcadedb.stop_supervising()
    pid = int((arcadedb.root / "server.pid").read_text().strip())
    os.kill(pid, signal.SIGKILL)
    await wait_for(lambda: arcadedb._proc is None or arcadedb._proc.poll() is not None, 10)
    try:
        yield
    finally:
        arcadedb.supervise(min_backoff_s=0.2, max_backoff_s=2.0)
        await wait_for(arcadedb_answers(arcadedb), 90, step=0.5)


def arcadedb_answers(arcadedb):
    async def check() -> bool:
        from graph_schema.store import GraphStore

        try:
            store = await GraphStore.connect(arcadedb.uri, arcadedb.user, arcadedb.password, arcadedb.database)
        except Exception:
            return False
        await store.close()
        return True

    return check


async def runtime_store_answers(runtime) -> bool:
    try:
        await runtime.store.ping(2.0)
    except Exception:
        return False
    return True


# -- tags (#17.11, #17.13) -------------------------------------------------------------------------


async def test_only_the_holder_or_a_supervisor_removes_a_tag_and_refusals_are_audited(gql, mint, runtime):
    alice, bob = mint("OPERATOR", sub="alice"), mint("OPERATOR", sub="bob")
    before = await audit_head(runtime)
    tag = (await gql(SET_TAG, {"d": "sw25"}, token=alice))["data"]["setTag"]
    r = await gql(REMOVE_TAG, {"t": tag["id"]}, token=bob)
    assert codes(r) == ["TAG_HELD_BY_OTHER"], r
    assert "held by alice; only its holder or a SUPERVISOR" in r["errors"][0]["message"]
    # A feeder-scoped operator learns nothing about a tag outside its scope: the same answer as a bogus id.
    scoped = mint("OPERATOR", sub="scoped", feeders=["cigre-mv"])
    assert codes(await gql(REMOVE_TAG, {"t": tag["id"]}, token=scoped)) == ["NOT_FOUND"]
    assert codes(await gql(REMOVE_TAG, {"t": "tag-bogus"}, token=scoped)) == ["NOT_FOUND"]
    assert codes(await gql(REMOVE_TAG, {"t": tag["id"]}, role="VIEWER")) == ["FORBIDDEN"]
    assert [t.id for t in await runtime.fleet.call(F, "tags")].count(tag["id"]) == 1  # still in force
    r = await gql(REMOVE_TAG, {"t": tag["id"]}, token=mint("SUPERVISOR", sub="sam"))
    assert r["data"]["removeTag"] == {"id": tag["id"], "setBy": "alice"}, r
    removals = [e for e in await audit_entries(runtime, before) if e.action == "TAG_REMOVE"]
    seen = [(e.actor, e.outcome, json.loads(e.detail).get("code")) for e in removals]
    assert ("bob", "REFUSED", "TAG_HELD_BY_OTHER") in seen
    assert ("scoped", "REFUSED", "NOT_FOUND") in seen
    assert seen[-1] == ("sam", "ACCEPTED", None) and json.loads(removals[-1].detail)["override"] is True
    rows = await runtime.store.list_records("Tag", feeder_id=F, where={"tag_id": tag["id"]})
    assert rows[0]["active"] is False and rows[0]["removed_by"] == "sam"


async def test_the_holder_removes_their_own_tag(gql, mint, runtime):
    alice = mint("OPERATOR", sub="alice")
    tag = (await gql(SET_TAG, {"d": "sw25"}, token=alice))["data"]["setTag"]
    r = await gql(REMOVE_TAG, {"t": tag["id"]}, token=alice)
    assert r["data"]["removeTag"]["id"] == tag["id"], r


# -- selections (#17.7, #17.16) --------------------------------------------------------------------


async def test_cancel_of_an_expired_selection_answers_selection_expired(gql, mint, settings, sim):
    token = mint("OPERATOR", sub="op-exp")
    sel = (await gql(SELECT, {"d": "sw25", "a": "OPEN", "f": F}, token=token))["data"]["selectControl"]
    await asyncio.sleep(settings.select_timeout_s + 0.2)  # let the selection's lifetime pass (a clock rule)
    r = await gql(CANCEL, {"s": sel["id"]}, token=token)
    assert codes(r) == ["SELECTION_EXPIRED"], r


async def test_select_and_operate_during_a_store_outage_are_refused_promptly(gql, mint, runtime, arcadedb, sim):
    token = mint("OPERATOR", sub="op-outage")
    r = await gql(SELECT, {"d": SW, "a": "OPEN", "f": F}, token=token)
    sel = r["data"]["selectControl"]
    before = await audit_head(runtime)
    async with store_down(arcadedb):
        started = time.monotonic()
        r = await gql(SELECT, {"d": "sw25", "a": "OPEN", "f": F}, token=mint("OPERATOR", sub="op-other"))
        assert codes(r) == ["STORE_UNAVAILABLE"], r
        assert time.monotonic() - started < PROMPT_S
        started = time.monotonic()
        r = await gql(OPERATE, {"s": sel["id"], "d": SW, "a": "OPEN", "f": F}, token=token)
        assert codes(r) == ["STORE_UNAVAILABLE"], r
        assert time.monotonic() - started < PROMPT_S
        assert not sim.switch_is_open(F, SW)  # nothing was sent
        # The actor refuses too when called directly: no intent record, no command.
        started = time.monotonic()
        with pytest.raises(DmsError) as refused:
            await runtime.fleet.call(F, "select", "sw25", "OPEN", None, "op-direct")
        assert refused.value.code == "STORE_UNAVAILABLE" and time.monotonic() - started < PROMPT_S
    await wait_for(lambda: runtime_store_answers(runtime), 30)
    # The refusals were audited once the store was back (kept and retried meanwhile).
    await wait_for(lambda: runtime.control.status()["unaudited"] == 0, 30)
    entries = await audit_entries(runtime, before)
    assert any(e.action == "CONTROL_SELECT" and e.outcome == "REFUSED" and e.actor == "op-other" for e in entries)
    assert any(e.action == "CONTROL_OPERATE" and e.outcome == "REFUSED" and e.actor == "op-outage" for e in entries)
    assert not sim.switch_is_open(F, SW)
    assert (await runtime.audit.verify()).ok


# -- operate: intent first, outcome kept until stored (#17.14) ---------------------------------------


async def test_an_actor_operate_whose_intent_cannot_be_recorded_sends_nothing(runtime, arcadedb, sim):
    sel = await runtime.fleet.call(F, "select", SW, "OPEN", None, "op-intent")
    async with store_down(arcadedb):
        started = time.monotonic()
        with pytest.raises(DmsError) as refused:
            await runtime.fleet.call(F, "operate", sel["id"], SW, "OPEN", None, "op-intent")
        assert refused.value.code == "STORE_UNAVAILABLE", refused.value
        assert time.monotonic() - started < PROMPT_S
        assert not sim.switch_is_open(F, SW)
        # kept for the store, or already stored late if the supervisor brought the store back first
        st = await runtime.fleet.call(F, "control_status")
        assert st["unrecorded"] >= 1 or st["stored_late"] >= 1, st
    # The refusal is recorded once the store is back.
    async def refusal_recorded() -> bool:
        row = await newest_control(runtime, SW)
        return row.get("operator") == "op-intent" and row.get("status") == "REFUSED"

    await wait_for(refusal_recorded, 40, step=0.5)
    row = await newest_control(runtime, SW)
    assert row["code"] == "STORE_UNAVAILABLE" and row["action"] == "OPEN"
    await wait_for(_nothing_unrecorded(runtime), 10)
    assert not sim.switch_is_open(F, SW)


async def test_an_outcome_the_store_cannot_take_is_kept_and_stored_when_it_is_back(gql, mint, runtime, arcadedb,
                                                                                   sim):
    """The intent is stored, then the store dies while the switch moves: the command is confirmed,
    its outcome, its audit entry and the switch's stored state are kept and stored once the store
    is back, and then the field, the records and the audit chain agree."""
    token = mint("OPERATOR", sub="op-late")
    assert (await operate_once(gql, mint, SW, "OPEN", sub="op-late"))["status"] == "CONFIRMED"
    sel = (await gql(SELECT, {"d": SW, "a": "CLOSE", "f": F}, token=token))["data"]["selectControl"]
    before = await audit_head(runtime)
    await sim.force_value(STATUS, True)  # telemetry holds the old position: the operate waits for it
    operate = asyncio.create_task(gql(OPERATE, {"s": sel["id"], "d": SW, "a": "CLOSE", "f": F}, token=token))
    try:
        async def intent_stored() -> bool:
            row = await newest_control(runtime, SW)
            return row.get("operator") == "op-late" and row.get("status") == "PENDING"

        await wait_for(intent_stored, 10)
        await wait_for(lambda: not sim.switch_is_open(F, SW), 10)  # the command reached the field
        async with store_down(arcadedb):
            await sim.force_value(STATUS, None)  # now telemetry confirms it
            r = await operate
            assert r["data"]["operateControl"]["status"] == "CONFIRMED", r
            status = await runtime.fleet.call(F, "control_status")
            # kept while the store is down (or already stored late if it came back first)
            assert status["unrecorded"] == 1 or status["stored_late"] >= 1, status
            assert runtime.control.status()["unaudited"] >= 1
    finally:
        await sim.force_value(STATUS, None)
        if not operate.done():
            await operate

    async def settled() -> bool:
        st = await runtime.fleet.call(F, "control_status")
        return st["unrecorded"] == 0 and not st["unpersisted_switches"] and runtime.control.status()["unaudited"] == 0

    await wait_for(settled, 40, step=0.5)
    row = await newest_control(runtime, SW)
    assert (row["operator"], row["status"], row["phase"]) == ("op-late", "CONFIRMED", "OUTCOME")
    assert row["requested_at"] < row["completed_at"] and "selection_expires_at" in row
    assert (await runtime.store.switch_states(F))[SW] is False  # the stored state follows the field
    assert not sim.switch_is_open(F, SW)
    entries = [e for e in await audit_entries(runtime, before) if e.actor == "op-late"]
    assert [(e.action, e.outcome) for e in entries] == [("CONTROL_OPERATE", "REQUESTED"),
                                                         ("CONTROL_RESULT", "CONFIRMED")]
    assert (await runtime.audit.verify()).ok


# -- an actor killed mid-control (#17.15) ----------------------------------------------------------


async def test_a_control_interrupted_by_an_actor_kill_is_reconciled_with_the_field(gql, mint, runtime, sim):
    token = mint("OPERATOR", sub="op-kill")
    assert (await operate_once(gql, mint, SW, "OPEN", sub="op-kill"))["status"] == "CONFIRMED"
    sel = (await gql(SELECT, {"d": SW, "a": "CLOSE", "f": F}, token=token))["data"]["selectControl"]
    pid = int((await runtime.fleet.call(F, "ping"))["pid"])
    await sim.force_value(STATUS, True)  # the operate waits for a confirmation that will not come in time
    operate = asyncio.create_task(gql(OPERATE, {"s": sel["id"], "d": SW, "a": "CLOSE", "f": F}, token=token))
    try:
        await wait_for(lambda: not sim.switch_is_open(F, SW), 10)  # the command reached the field...
        os.kill(pid, signal.SIGKILL)  # ...and the actor dies before it could record the outcome
        r = await operate
        assert codes(r) == ["ACTOR_UNAVAILABLE"], r
    finally:
        await sim.force_value(STATUS, None)
        if not operate.done():
            await operate

    async def reconciled() -> dict[str, Any] | None:
        with contextlib.suppress(DmsError):
            row = await newest_control(runtime, SW)
            if row.get("operator") == "op-kill" and row.get("status") != "PENDING":
                return row
        return None

    row = await wait_for(reconciled, 90, step=0.5)
    assert row["status"] == "CONFIRMED_AFTER_RESTART" and "interrupted by an actor restart" in row["message"], row
    assert int((await runtime.fleet.call(F, "ping"))["pid"]) != pid
    assert not sim.switch_is_open(F, SW)
    async def live_closed() -> bool:  # the live state follows the field after its debounced re-solve
        return (await runtime.fleet.call(F, "state")).switch_states[SW] is False

    await wait_for(live_closed, 20)
    await wait_for(lambda: _stored_closed(runtime), 20)
    entries = [e for e in await audit_entries(runtime, 0) if e.actor == "op-kill"]
    assert [(e.action, e.outcome) for e in entries][-2:] == [("CONTROL_OPERATE", "REQUESTED"),
                                                              ("CONTROL_RESULT", "UNKNOWN")]
    assert (await runtime.audit.verify()).ok


async def _stored_closed(runtime) -> bool:
    return (await runtime.store.switch_states(F))[SW] is False


def _nothing_unrecorded(runtime):
    async def check() -> bool:
        return (await runtime.fleet.call(F, "control_status"))["unrecorded"] == 0

    return check
