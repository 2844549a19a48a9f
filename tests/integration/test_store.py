"""GraphStore over Bolt against the embedded ArcadeDB (and a real Neo4j when DMS_NEO4J_URI is set)."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest

from graph_schema.arcadedb import EmbeddedArcadeDB, free_port
from graph_schema.errors import BadInput, InvalidModel, NotFound, StoreUnavailable
from graph_schema.model import Bus, Feeder, Line
from graph_schema.store import FeederSummary, GraphStore
from server.settings import Secret, Settings
from tests.integration.store_fixtures import radial_feeder, small_feeder, unique_id


async def _query(store: GraphStore, cypher: str, **params: Any) -> list[dict[str, Any]]:
    async with store.driver.session(database=store.database) as session:
        result = await session.run(cypher, params)
        return await result.data()


async def _count_feeder_nodes(store: GraphStore, feeder_id: str) -> int:
    rows = await _query(store, "MATCH (n) WHERE n.feeder_id = $fid OR n.uid = $fid RETURN count(n) AS n", fid=feeder_id)
    return int(rows[0]["n"])


async def _count_all_nodes(store: GraphStore) -> int:
    return int((await _query(store, "MATCH (n) RETURN count(n) AS n"))[0]["n"])


def _elements(feeder: Feeder) -> int:
    return sum(1 for _ in feeder.elements())


# -- round trip --------------------------------------------------------------------------------


@pytest.mark.parametrize("all_optional", [True, False], ids=["optional-set", "optional-unset"])
async def test_round_trip_is_equal(store: GraphStore, all_optional: bool) -> None:
    feeder = small_feeder(unique_id(), all_optional=all_optional)
    await store.save_feeder(feeder)
    loaded = await store.load_feeder(feeder.id)
    assert loaded == feeder
    # Enums come back as enums, None as None, tuple order as saved.
    assert type(loaded.switches[0].kind) is type(feeder.switches[0].kind)
    assert loaded.transformers[0].tap_pos == feeder.transformers[0].tap_pos
    assert [b.id for b in loaded.buses] == [b.id for b in feeder.buses]
    assert await store.feeder_exists(feeder.id)
    assert await _count_feeder_nodes(store, feeder.id) == 1 + _elements(feeder)
    await store.delete_feeder(feeder.id)
    assert not await store.feeder_exists(feeder.id)
    assert await _count_feeder_nodes(store, feeder.id) == 0


async def test_topology_is_traversable(store: GraphStore) -> None:
    feeder = small_feeder(unique_id())
    await store.save_feeder(feeder)
    fid = feeder.id
    rows = await _query(
        store,
        "MATCH (f:Feeder {uid: $fid})-[:HAS]->(l:Line)-[:FROM]->(a:Bus), (l)-[:TO]->(b:Bus) "
        "RETURN l.id AS line, a.id AS a, b.id AS b ORDER BY line",
        fid=fid,
    )
    assert [(r["line"], r["a"], r["b"]) for r in rows] == [
        (ln.id, ln.from_bus_id, ln.to_bus_id) for ln in sorted(feeder.lines, key=lambda x: x.id)
    ]
    # Buses reachable from the source over lines (a variable-length path), both directions.
    rows = await _query(
        store,
        "MATCH (s:Source {uid: $src})-[:AT]->(:Bus)<-[:HV]-(:Transformer)-[:LV]->(b1:Bus) "
        "MATCH (b1)-[:FROM|TO*0..6]-(b:Bus) RETURN DISTINCT b.id AS id ORDER BY id",
        src=f"{fid}/src",
    )
    assert [r["id"] for r in rows] == ["b1", "b2", "b3"]
    rows = await _query(
        store,
        "MATCH (s:Switch)-[:ON]->(e) WHERE s.feeder_id = $fid RETURN s.id AS s, labels(e) AS l ORDER BY s",
        fid=fid,
    )
    assert {r["s"]: r["l"] for r in rows} == {
        "cb1": ["Line"],
        "tie": ["Line"],
        "ds1": ["Transformer"],
        "fu1": ["Bus"],
    }
    rows = await _query(
        store,
        "MATCH (m:MeasurementPoint)-[:MEASURES]->(e) WHERE m.feeder_id = $fid RETURN m.id AS m, e.id AS e ORDER BY m",
        fid=fid,
    )
    assert [(r["m"], r["e"]) for r in rows] == [("m1", "b2"), ("m2", "l1"), ("m3", "cb1")]
    rows = await _query(
        store,
        "MATCH (x)-[:AT]->(b:Bus {uid: $b2}) RETURN labels(x)[0] AS label, x.id AS id ORDER BY id",
        b2=f"{fid}/b2",
    )
    assert {(r["label"], r["id"]) for r in rows} == {
        ("Load", "ld1"),
        ("Der", "pv1"),
        ("Capacitor", "c1"),
        ("Switch", "fu1"),
    }
    await store.delete_feeder(fid)


# -- refusals leave the store unchanged -------------------------------------------------------


async def test_save_twice_without_replace_is_refused(store: GraphStore) -> None:
    feeder = small_feeder(unique_id())
    await store.save_feeder(feeder)
    renamed = dataclasses.replace(
        feeder, name="Changed", buses=(*feeder.buses, Bus(id="b9", vn_kv=20.0, in_service=False))
    )
    before = await _count_feeder_nodes(store, feeder.id)
    with pytest.raises(BadInput) as info:
        await store.save_feeder(renamed)
    assert feeder.id in str(info.value)
    assert "replace" in str(info.value)
    assert await _count_feeder_nodes(store, feeder.id) == before
    assert await store.load_feeder(feeder.id) == feeder

    new = small_feeder(feeder.id, name="Replaced", all_optional=False)
    await store.save_feeder(new, replace=True)
    assert await store.load_feeder(feeder.id) == new
    assert await _count_feeder_nodes(store, feeder.id) == 1 + _elements(new)
    await store.delete_feeder(feeder.id)


async def test_invalid_feeder_writes_nothing(store: GraphStore) -> None:
    good = small_feeder(unique_id())
    bad_line = Line(
        id="lx",
        from_bus_id="b2",
        to_bus_id="nowhere",
        length_km=1.0,
        r_ohm_per_km=0.1,
        x_ohm_per_km=0.1,
        c_nf_per_km=0.0,
        max_i_ka=0.1,
    )
    bad = dataclasses.replace(good, lines=(*good.lines, bad_line))
    before = await _count_all_nodes(store)
    with pytest.raises(InvalidModel) as info:
        await store.save_feeder(bad)
    assert "nowhere" in str(info.value)
    assert await _count_all_nodes(store) == before

    # An invalid replacement leaves the old feeder in place.
    await store.save_feeder(good)
    with pytest.raises(InvalidModel):
        await store.save_feeder(dataclasses.replace(bad, id=good.id), replace=True)
    assert await store.load_feeder(good.id) == good
    await store.delete_feeder(good.id)


@pytest.mark.parametrize("fail_at", [1, 4, 12], ids=["first", "nodes", "edges"])
async def test_failure_mid_save_writes_nothing(
    store: GraphStore, monkeypatch: pytest.MonkeyPatch, fail_at: int
) -> None:
    feeder = small_feeder(unique_id())
    original = GraphStore._run_batch
    calls = 0

    async def failing(self: GraphStore, tx: Any, query: str, params: dict[str, Any]) -> int:
        nonlocal calls
        calls += 1
        if calls == fail_at:
            raise RuntimeError("injected failure")
        return await original(self, tx, query, params)

    before = await _count_all_nodes(store)
    monkeypatch.setattr(GraphStore, "_run_batch", failing)
    with pytest.raises(RuntimeError, match="injected"):
        await store.save_feeder(feeder)
    monkeypatch.setattr(GraphStore, "_run_batch", original)
    assert await _count_all_nodes(store) == before
    assert not await store.feeder_exists(feeder.id)


async def test_failure_mid_replace_keeps_the_old_feeder(store: GraphStore, monkeypatch: pytest.MonkeyPatch) -> None:
    old = small_feeder(unique_id())
    await store.save_feeder(old)
    original = GraphStore._run_batch
    calls = 0

    async def failing(self: GraphStore, tx: Any, query: str, params: dict[str, Any]) -> int:
        nonlocal calls
        calls += 1
        if "CREATE (a)-[:" in query:  # after the delete and the new nodes
            raise RuntimeError("injected failure")
        return await original(self, tx, query, params)

    monkeypatch.setattr(GraphStore, "_run_batch", failing)
    with pytest.raises(RuntimeError):
        await store.save_feeder(small_feeder(old.id, all_optional=False), replace=True)
    monkeypatch.setattr(GraphStore, "_run_batch", original)
    assert calls > len(old.buses)
    assert await store.load_feeder(old.id) == old
    assert await _count_feeder_nodes(store, old.id) == 1 + _elements(old)
    await store.delete_feeder(old.id)


# -- lookups --------------------------------------------------------------------------------------


async def test_unknown_feeder_is_not_found(store: GraphStore) -> None:
    known = small_feeder(unique_id("known"))
    await store.save_feeder(known)
    missing = unique_id("missing")
    with pytest.raises(NotFound) as info:
        await store.load_feeder(missing)
    assert missing in str(info.value)
    assert "known feeders" in str(info.value)
    assert known.id in str(info.value)
    assert info.value.code == "NOT_FOUND"
    with pytest.raises(NotFound):
        await store.switch_states(missing)
    with pytest.raises(NotFound):
        await store.set_switch_state(missing, "tie", True)
    with pytest.raises(NotFound):
        await store.delete_feeder(missing)
    assert not await store.feeder_exists(missing)
    await store.delete_feeder(known.id)


async def test_list_feeders(store: GraphStore) -> None:
    a = small_feeder(unique_id("list-b"))
    b = small_feeder(unique_id("list-a"), name="Other")
    await store.save_feeder(a)
    await store.save_feeder(b)
    summaries = await store.list_feeders()
    ids = [s.id for s in summaries]
    assert ids == sorted(ids)
    mine = {s.id: s for s in summaries if s.id in (a.id, b.id)}
    assert mine[a.id] == FeederSummary(a.id, a.name, len(a.buses), a.customers)
    assert mine[b.id] == FeederSummary(b.id, "Other", len(b.buses), b.customers)
    await store.delete_feeder(a.id)
    await store.delete_feeder(b.id)


async def test_switch_state(store: GraphStore) -> None:
    feeder = small_feeder(unique_id())
    await store.save_feeder(feeder)
    states = await store.switch_states(feeder.id)
    assert states == {s.id: s.is_open for s in feeder.switches}
    await store.set_switch_state(feeder.id, "tie", False)
    await store.set_switch_state(feeder.id, "cb1", True)
    states = await store.switch_states(feeder.id)
    assert states["tie"] is False
    assert states["cb1"] is True
    loaded = await store.load_feeder(feeder.id)
    assert loaded == feeder.with_switch_states({"tie": False, "cb1": True})
    with pytest.raises(NotFound) as info:
        await store.set_switch_state(feeder.id, "nope", True)
    assert "nope" in str(info.value)
    await store.delete_feeder(feeder.id)


# -- durable records ------------------------------------------------------------------------------


async def test_append_record_concurrent_seqs_are_distinct(store: GraphStore) -> None:
    fid = unique_id("events")
    seqs = await asyncio.gather(
        *(store.append_record("Event", {"kind": "TRIP", "n": i}, feeder_id=fid) for i in range(50))
    )
    assert len(set(seqs)) == 50
    assert all(s >= 1 for s in seqs)
    records = await store.list_records("Event", feeder_id=fid, limit=100)
    assert [r["seq"] for r in records] == sorted(seqs)
    assert {r["n"]: r["seq"] for r in records} == dict(enumerate(seqs))
    assert all(r["feeder_id"] == fid and r["kind"] == "TRIP" for r in records)
    # A later append gets a larger seq.
    later = await store.append_record("Event", {"kind": "CLEAR"}, feeder_id=fid)
    assert later > max(seqs)


async def test_list_records_paging_and_filters(store: GraphStore) -> None:
    fid = unique_id("ctl")
    seqs = [
        await store.append_record(
            "ControlAction",
            {"device_id": f"sw{i % 2}", "ok": i % 3 == 0, "value": i * 0.5, "note": None},
            feeder_id=fid,
        )
        for i in range(6)
    ]
    assert seqs == sorted(seqs)
    everything = await store.list_records("ControlAction", feeder_id=fid)
    assert [r["seq"] for r in everything] == seqs
    assert "note" not in everything[0]  # None is stored as an absent property
    assert everything[1]["value"] == 0.5
    assert everything[0]["ok"] is True
    newest = await store.list_records("ControlAction", feeder_id=fid, newest_first=True, limit=2)
    assert [r["seq"] for r in newest] == seqs[:-3:-1]
    page = await store.list_records("ControlAction", feeder_id=fid, after_seq=seqs[1], limit=2)
    assert [r["seq"] for r in page] == seqs[2:4]
    page = await store.list_records("ControlAction", feeder_id=fid, before_seq=seqs[3], newest_first=True)
    assert [r["seq"] for r in page] == seqs[2::-1]
    sw0 = await store.list_records("ControlAction", feeder_id=fid, where={"device_id": "sw0"})
    assert [r["seq"] for r in sw0] == seqs[0::2]
    no_note = await store.list_records("ControlAction", feeder_id=fid, where={"note": None, "ok": True})
    assert [r["seq"] for r in no_note] == [seqs[0], seqs[3]]
    assert await store.list_records("ControlAction", feeder_id=fid, limit=0) == []
    # Records without a feeder.
    seq = await store.append_record("Tag", {"text": "no feeder"})
    tags = await store.list_records("Tag", after_seq=seq - 1)
    assert tags[0]["seq"] == seq and tags[0]["feeder_id"] is None


async def test_update_record(store: GraphStore, settings) -> None:
    fid = unique_id("outage")
    seq = await store.append_record(
        "Outage", {"status": "ACTIVE", "customers_out": 120, "cause": "fault"}, feeder_id=fid
    )
    await store.update_record("Outage", seq, {"status": "RESTORED", "customers_out": 0, "cause": None})
    (row,) = await store.list_records("Outage", feeder_id=fid)
    assert row["status"] == "RESTORED" and row["customers_out"] == 0 and "cause" not in row
    with pytest.raises(NotFound):
        await store.update_record("Outage", 10**9, {"status": "X"})
    from security.audit import AuditLog

    # A real entry under the session's audit key: the chain (keyed by the runtime too) stays valid.
    audit = (await AuditLog.from_settings(store, settings).record("TAG_SET", actor="op")).seq
    with pytest.raises(BadInput, match="append-only"):
        await store.update_record("AuditEntry", audit, {"action": "CLOSE"})


async def test_record_input_is_checked(store: GraphStore) -> None:
    with pytest.raises(BadInput, match="unknown record label"):
        await store.append_record("Feeder", {"x": 1})
    with pytest.raises(BadInput, match="set by the store"):
        await store.append_record("Event", {"seq": 5})
    with pytest.raises(BadInput, match="identifier"):
        await store.append_record("Event", {"bad key`": 1})
    with pytest.raises(BadInput, match="list"):
        await store.append_record("Event", {"k": [1, 2]})  # type: ignore[dict-item]
    with pytest.raises(BadInput, match="identifier"):
        await store.list_records("Event", where={"a) DETACH DELETE (n": 1})
    with pytest.raises(BadInput):
        await store.list_records("Event", limit=-1)


# -- connection failures --------------------------------------------------------------------------


async def test_wrong_password_names_the_setting(arcadedb: EmbeddedArcadeDB) -> None:
    wrong = "definitely-Wrong-pw-4711"
    with pytest.raises(StoreUnavailable) as info:
        await GraphStore.connect(arcadedb.uri, "root", Secret(wrong), arcadedb.database)
    message = str(info.value)
    assert "DMS_NEO4J_PASSWORD" in message
    assert wrong not in message
    assert arcadedb.password.reveal() not in message
    assert "\n" not in message


async def test_unreachable_server_names_the_uri() -> None:
    uri = f"bolt://127.0.0.1:{free_port()}"
    with pytest.raises(StoreUnavailable) as info:
        await GraphStore.connect(uri, "root", "some-password-1", "grid")
    message = str(info.value)
    assert uri in message
    assert "DMS_NEO4J_URI" in message
    assert "running" in message
    assert "some-password-1" not in message


async def test_unknown_database_names_the_setting(arcadedb: EmbeddedArcadeDB) -> None:
    with pytest.raises(StoreUnavailable) as info:
        await GraphStore.connect(arcadedb.uri, arcadedb.user, arcadedb.password, "no_such_db")
    assert "no_such_db" in str(info.value)
    assert "DMS_NEO4J_DATABASE" in str(info.value)


async def test_bad_uri_names_the_setting() -> None:
    with pytest.raises(StoreUnavailable, match="DMS_NEO4J_URI"):
        await GraphStore.connect("http://127.0.0.1:1", "root", "x-password", "grid")


async def test_ping_and_schema_are_idempotent(store: GraphStore) -> None:
    assert await store.ping() is None  # a query answered (it raises StoreUnavailable otherwise)
    feeder = small_feeder(unique_id("schema"))
    await store.save_feeder(feeder)
    try:
        await store.ensure_schema()
        await store.ensure_schema()
        # Running it again neither failed nor touched the data, and the uniqueness still holds.
        assert await store.load_feeder(feeder.id) == feeder
        with pytest.raises(BadInput, match="already exists"):
            await store.save_feeder(feeder)
        assert [f.id for f in await store.list_feeders()].count(feeder.id) == 1
    finally:
        await store.delete_feeder(feeder.id)


# -- size ----------------------------------------------------------------------------------------


async def test_large_radial_feeder_round_trip(store: GraphStore) -> None:
    import time

    feeder = radial_feeder(unique_id("radial"), 3000)
    t0 = time.perf_counter()
    await store.save_feeder(feeder)
    t1 = time.perf_counter()
    loaded = await store.load_feeder(feeder.id)
    t2 = time.perf_counter()
    assert loaded == feeder
    print(f"\n3000-bus feeder: save {t1 - t0:.2f} s, load {t2 - t1:.2f} s")
    assert t1 - t0 < 60 and t2 - t1 < 60
    await store.delete_feeder(feeder.id)


# -- the same against a real Neo4j ---------------------------------------------------------------


@pytest.fixture
async def neo4j_store() -> AsyncIterator[GraphStore]:
    settings = Settings.from_env()
    if settings.neo4j_uri is None:
        pytest.skip("DMS_NEO4J_URI is not set; no real Neo4j to test against")
    gs = await GraphStore.connect(
        settings.neo4j_uri, settings.neo4j_user, settings.neo4j_password, settings.neo4j_database
    )
    try:
        await gs.ensure_schema()
        yield gs
    finally:
        await gs.close()


@pytest.mark.neo4j
async def test_neo4j_round_trip(neo4j_store: GraphStore) -> None:
    feeder = small_feeder(unique_id("neo4j"))
    await neo4j_store.save_feeder(feeder)
    try:
        assert await neo4j_store.load_feeder(feeder.id) == feeder
        with pytest.raises(BadInput):
            await neo4j_store.save_feeder(feeder)
        await neo4j_store.set_switch_state(feeder.id, "tie", False)
        assert (await neo4j_store.switch_states(feeder.id))["tie"] is False
        seqs = await asyncio.gather(
            *(neo4j_store.append_record("Event", {"n": i}, feeder_id=feeder.id) for i in range(20))
        )
        assert len(set(seqs)) == 20
    finally:
        await neo4j_store.delete_feeder(feeder.id)


async def test_two_audit_writers_on_one_store_keep_one_unbroken_chain(arcadedb, store, settings):
    """Two server replicas (two GraphStore connections, two AuditLogs) appending at the same time:
    every entry lands, seqs are contiguous and each entry chains onto the one before it."""
    from security.audit import LABEL, AuditEntry, AuditKey, AuditLog, verify_chain

    other = await GraphStore.connect(arcadedb.uri, arcadedb.user, arcadedb.password, arcadedb.database)
    try:
        key = AuditKey.from_settings(settings)  # the replicas share one key, as the runtime's log does
        a, b = AuditLog(store, key=key), AuditLog(other, key=key)
        start = await a.record("TAG_SET", actor="setup")  # keys the chain first if it was not yet

        async def burst(log: AuditLog, who: str) -> None:
            for i in range(15):
                await log.record("TAG_SET", actor=who, target=f"sw{i}", outcome="OK")

        await asyncio.gather(burst(a, "replica-a"), burst(b, "replica-b"))
        rows = await store.list_records(LABEL, after_seq=start.seq if start else 0, limit=100)
        entries = [AuditEntry.from_record(r) for r in rows]
        assert len(entries) == 30
        assert [e.seq for e in entries] == list(range((start.seq if start else 0) + 1,
                                                      (start.seq if start else 0) + 31))
        result = verify_chain(entries, prev=start, key=key)
        assert result.ok, result
        assert {e.actor for e in entries} == {"replica-a", "replica-b"}
    finally:
        await other.close()
