"""The hash-chained audit log: chain rules, tamper detection, redaction, and AuditLog over an
in-memory fake of the GraphStore record API (scalars only, store-assigned seq, append-only)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import stat
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from graph_schema.errors import ConfigError, SeqConflict, StoreUnavailable
from graph_schema.secret import Secret
from security.audit import (
    ANCHOR_SEQ,
    GENESIS_HASH,
    LABEL,
    REDACTED,
    AnchorFile,
    AuditAction,
    AuditEntry,
    AuditKey,
    AuditLog,
    chain_entry,
    detail_json,
    redact,
    utc_stamp,
    verify_chain,
)
from security.errors import AuditCorrupt


class FakeStore:
    """Mimics GraphStore.append_record/list_records for label AuditEntry."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.seq = 0
        self.fail_next = False

    async def append_record(
        self, label: str, record: Mapping[str, Any], *, feeder_id: str | None = None,
        expect_seq: int | None = None,
    ) -> int:
        assert label == LABEL
        if expect_seq is not None and expect_seq != self.seq + 1:
            raise SeqConflict(f"seq {expect_seq} is taken")
        assert "seq" not in record and "feeder_id" not in record
        for value in record.values():
            assert value is None or isinstance(value, str | int | float | bool), value
        if self.fail_next:
            self.fail_next = False
            raise ConnectionError("store went away")
        self.seq += 1
        self.rows.append({**record, "seq": self.seq, "feeder_id": feeder_id})
        return self.seq

    async def list_records(
        self,
        label: str,
        *,
        feeder_id: str | None = None,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
        where: Mapping[str, object] | None = None,
    ) -> list[dict[str, Any]]:
        rows = sorted(self.rows, key=lambda r: r["seq"], reverse=newest_first)
        if after_seq is not None:
            rows = [r for r in rows if r["seq"] > after_seq]
        if before_seq is not None:
            rows = [r for r in rows if r["seq"] < before_seq]
        return [dict(r) for r in rows[:limit]]


T0 = datetime(2025, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def make_chain(n: int) -> list[AuditEntry]:
    out: list[AuditEntry] = []
    prev = None
    for i in range(n):
        prev = chain_entry(prev, action=AuditAction.CONTROL_OPERATE, actor=f"op{i}", roles=["OPERATOR"],
                           target=f"switch:s{i}", source="10.0.0.1", outcome="OK", detail={"i": i},
                           at=T0 + timedelta(seconds=i))
        out.append(prev)
    return out


# --- pure chain --------------------------------------------------------------------------------


def test_genesis_and_links() -> None:
    chain = make_chain(3)
    assert [e.seq for e in chain] == [1, 2, 3]
    assert chain[0].prev_hash == GENESIS_HASH
    assert chain[1].prev_hash == chain[0].hash and chain[2].prev_hash == chain[1].hash
    assert chain[0].at == "2025-03-01T12:00:00.123456Z"


def test_hash_is_sha256_of_canonical_json() -> None:
    e = make_chain(1)[0]
    body = {"seq": 1, "at": e.at, "actor": "op0", "roles": ["OPERATOR"], "action": "CONTROL_OPERATE",
            "target": "switch:s0", "source": "10.0.0.1", "outcome": "OK", "detail": '{"i":0}',
            "prev_hash": GENESIS_HASH}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    assert e.canonical() == canonical
    assert e.hash == hashlib.sha256(canonical).hexdigest()


def test_anonymous_actor_and_sorted_roles() -> None:
    e = chain_entry(None, action="LOGIN_FAILED", actor=None, roles=["VIEWER", "OPERATOR", "VIEWER"])
    assert e.actor == "anonymous" and e.roles == ("OPERATOR", "VIEWER")
    assert e.at.endswith("Z") and len(e.at) == len("2025-03-01T12:00:00.123456Z")


def test_intact_chain_verifies() -> None:
    assert verify_chain(make_chain(5)).ok
    assert verify_chain([]).ok and verify_chain([]).checked == 0
    r = verify_chain(make_chain(5))
    assert (r.checked, r.first_broken_seq, r.reason) == (5, None, None)


@pytest.mark.parametrize("field,value", [
    ("actor", "mallory"), ("outcome", "FAILED"), ("detail", '{"i":99}'), ("roles", ("SECADM",)),
    ("at", "2025-03-01T13:00:00.000000Z"), ("target", "switch:x"), ("source", "1.2.3.4"),
    ("action", "TAG_SET"),
])
def test_changed_field_is_named(field: str, value: Any) -> None:
    chain = make_chain(5)
    chain[2] = replace(chain[2], **{field: value})
    r = verify_chain(chain)
    assert not r.ok and r.first_broken_seq == 3 and r.checked == 2
    assert "changed" in (r.reason or "")


def test_changed_entry_rehashed_breaks_the_next_link() -> None:
    chain = make_chain(5)
    forged = replace(chain[2], actor="mallory")
    chain[2] = replace(forged, hash=forged.computed_hash())
    r = verify_chain(chain)
    assert not r.ok and r.first_broken_seq == 4 and "prev_hash" in (r.reason or "")


def test_deleted_entry() -> None:
    chain = make_chain(5)
    del chain[2]
    r = verify_chain(chain)
    assert not r.ok and r.first_broken_seq == 4 and "entry 3 missing" in (r.reason or "")


def test_deleted_first_entry() -> None:
    r = verify_chain(make_chain(3)[1:])
    assert not r.ok and r.first_broken_seq == 2 and r.checked == 0


def test_reordered_entries() -> None:
    chain = make_chain(5)
    chain[1], chain[2] = chain[2], chain[1]
    r = verify_chain(chain)
    assert not r.ok and r.first_broken_seq == 3 and r.checked == 1


def test_reordered_by_swapping_seq_values() -> None:
    chain = make_chain(5)
    a, b = chain[1], chain[2]
    chain[1], chain[2] = replace(b, seq=2), replace(a, seq=3)
    r = verify_chain(chain)
    assert not r.ok and r.first_broken_seq == 2


def test_inserted_forged_entry() -> None:
    chain = make_chain(5)
    forged = chain_entry(chain[1], action="TAG_REMOVE", actor="mallory", detail={})
    chain.insert(2, forged)  # seq 3 and a correct link to entry 2: looks fine alone...
    r = verify_chain(chain)
    # ...but the genuine entry 3 now follows it: duplicated seq
    assert not r.ok and r.first_broken_seq == 3 and r.checked == 3
    assert "duplicated" in (r.reason or "")


def test_inserted_entry_with_bad_hash() -> None:
    chain = make_chain(4)
    chain.insert(2, replace(chain[2], actor="mallory"))
    r = verify_chain(chain)
    assert not r.ok and r.first_broken_seq == 3 and r.checked == 2


def test_verify_from_anchor() -> None:
    chain = make_chain(6)
    assert verify_chain(chain[3:], prev=chain[2]).ok
    assert not verify_chain(chain[3:], prev=chain[1]).ok


# --- redaction ---------------------------------------------------------------------------------


def test_redaction() -> None:
    detail = {"password": "hunter2", "api_key": "k", "Authorization": "Bearer x", "nested": {"token": "t",
              "value": 1}, "items": [{"client_secret": "s", "ok": True}], "feeder": "f1", "value": 0.5}
    red = redact(detail)
    assert red == {"password": REDACTED, "api_key": REDACTED, "Authorization": REDACTED,
                   "nested": {"token": REDACTED, "value": 1},
                   "items": [{"client_secret": REDACTED, "ok": True}], "feeder": "f1", "value": 0.5}
    text = detail_json(detail)
    for secret in ("hunter2", "Bearer x", '"t"', '"s"'):
        assert secret not in text
    assert json.loads(text)["feeder"] == "f1"
    assert detail == {**detail}  # the caller's mapping is untouched
    assert detail["password"] == "hunter2"


def test_oversized_detail_is_replaced_by_its_digest() -> None:
    big = json.loads(detail_json({"blob": "x" * 20_000}))
    assert big["truncated"] is True and len(big["sha256"]) == 64


def test_utc_stamp_requires_aware_time() -> None:
    assert utc_stamp(datetime(2025, 1, 1, 1, 0, tzinfo=UTC)) == "2025-01-01T01:00:00.000000Z"
    with pytest.raises(ValueError):
        utc_stamp(datetime(2025, 1, 1))


# --- AuditLog over the fake store --------------------------------------------------------------


async def _fill(log: AuditLog, n: int) -> list[AuditEntry]:
    return [await log.record(AuditAction.CONTROL_SELECT, actor="op", roles=["OPERATOR"], target=f"sw{i}",
                             source="10.0.0.2", outcome="OK", detail={"i": i}) for i in range(n)]


async def test_audit_log_appends_and_verifies() -> None:
    store = FakeStore()
    log = AuditLog(store)
    entries = await _fill(log, 7)
    assert [e.seq for e in entries] == list(range(1, 8))
    assert (await log.verify(page_size=3)) == verify_chain(entries)
    r = await log.verify(page_size=3)
    assert r.ok and r.checked == 7
    assert (await log.head()) == entries[-1]
    page = await log.page(after_seq=2, limit=3)
    assert [e.seq for e in page] == [3, 4, 5] and page == entries[2:5]
    newest = await log.page(limit=2, newest_first=True)
    assert [e.seq for e in newest] == [7, 6]


async def test_records_are_scalars_and_roundtrip() -> None:
    store = FakeStore()
    e = await AuditLog(store).record("LOGIN_FAILED", actor=None, source="1.2.3.4", outcome="DENIED",
                                     detail={"reason": "expired"})
    row = store.rows[0]
    assert row["roles"] == "[]" and row["actor"] == "anonymous"
    assert AuditEntry.from_record(row) == e


async def test_audit_log_resumes_from_stored_tail() -> None:
    store = FakeStore()
    await _fill(AuditLog(store), 3)
    log2 = AuditLog(store)  # e.g. after a restart
    e = await log2.record("TAG_SET", actor="op", target="sw1")
    assert e.seq == 4 and e.prev_hash == store.rows[2]["hash"]
    assert (await log2.verify()).ok


async def test_concurrent_records_stay_chained() -> None:
    store = FakeStore()
    log = AuditLog(store)
    await asyncio.gather(*(log.record("CONTROL_RESULT", actor=f"a{i}", detail={"i": i}) for i in range(20)))
    r = await log.verify()
    assert r.ok and r.checked == 20


async def test_audit_log_redacts_before_hashing() -> None:
    store = FakeStore()
    log = AuditLog(store)
    e = await log.record("SETTING_CHANGE", actor="eng", detail={"name": "neo4j", "password": "s3cret"})
    assert "s3cret" not in json.dumps(store.rows)
    assert json.loads(e.detail) == {"name": "neo4j", "password": REDACTED}
    assert (await log.verify()).ok


async def test_audit_log_detects_tampering_in_store() -> None:
    store = FakeStore()
    log = AuditLog(store)
    await _fill(log, 5)
    store.rows[3]["outcome"] = "FAILED"
    r = await AuditLog(store).verify()
    assert not r.ok and r.first_broken_seq == 4 and r.checked == 3


async def test_audit_log_detects_deleted_row() -> None:
    store = FakeStore()
    await _fill(AuditLog(store), 5)
    del store.rows[1]
    r = await AuditLog(store).verify()
    assert not r.ok and r.first_broken_seq == 3


async def test_audit_log_detects_truncated_tail_it_wrote() -> None:
    store = FakeStore()
    log = AuditLog(store)
    await _fill(log, 5)
    del store.rows[-2:]
    assert (await AuditLog(store).verify()).ok  # a fresh reader cannot know...
    r = await log.verify()  # ...but the writer remembers its head
    assert not r.ok and r.first_broken_seq == 5 and "truncated" in (r.reason or "")


async def test_audit_log_malformed_row() -> None:
    store = FakeStore()
    await _fill(AuditLog(store), 3)
    store.rows[1]["roles"] = "not json"
    r = await AuditLog(store).verify()
    assert not r.ok and r.first_broken_seq == 2 and "malformed" in (r.reason or "")
    store.rows[2].pop("hash")
    with pytest.raises(AuditCorrupt):
        await AuditLog(store).record("X", actor="a")


async def test_failed_append_rereads_the_tail() -> None:
    store = FakeStore()
    log = AuditLog(store)
    await _fill(log, 2)
    store.fail_next = True
    with pytest.raises(ConnectionError):
        await log.record("TAG_SET", actor="op")
    e = await log.record("TAG_SET", actor="op")
    assert e.seq == 3 and (await log.verify()).ok


async def test_two_writers_share_one_chain_without_forking() -> None:
    store = FakeStore()
    a, b = AuditLog(store), AuditLog(store)
    await a.record("TAG_SET", actor="a")
    await b.record("TAG_SET", actor="b")  # b read the tail: chains correctly onto a's entry
    e = await a.record("TAG_SET", actor="a")  # a's head is stale: its append loses, it re-reads and re-chains
    assert e.seq == 3 and e.prev_hash == AuditEntry.from_record(store.rows[1]).hash
    assert (await AuditLog(store).verify()).ok


async def test_a_fork_written_some_other_way_is_reported() -> None:
    store = FakeStore()
    log = AuditLog(store)
    await _fill(log, 2)
    stale = chain_entry(AuditEntry.from_record(store.rows[0]), action="TAG_SET", actor="x", roles=(), target="",
                        source="", outcome="", detail="{}", at=T0)  # hashed as seq 2
    await store.append_record(LABEL, stale.to_record())  # unconditional: stored as seq 3
    r = await AuditLog(store).verify()
    assert not r.ok and r.first_broken_seq == 3


async def test_a_writer_that_always_loses_gives_up_with_a_clear_error(monkeypatch) -> None:
    store = FakeStore()

    async def always_taken(*a: Any, **kw: Any) -> int:
        raise SeqConflict("taken")

    monkeypatch.setattr(store, "append_record", always_taken)
    with pytest.raises(StoreUnavailable, match="lost to another writer"):
        await AuditLog(store).record("TAG_SET", actor="a")


async def test_page_limit_bounds() -> None:
    log = AuditLog(FakeStore())
    with pytest.raises(ValueError):
        await log.page(limit=0)
    with pytest.raises(ValueError):
        await log.page(limit=1001)


# --- keyed chain and anchors (#17.9) -------------------------------------------------------------

KEY = AuditKey.from_text("k" * 64, source="test")
OTHER_KEY = AuditKey.from_text("m" * 64, source="attacker")


def keyed_log(store: FakeStore, tmp_path: Path, key: AuditKey | None = KEY, **kw: Any) -> AuditLog:
    kw.setdefault("anchor_interval_s", 0.0)
    return AuditLog(store, key=key, anchors=AnchorFile.local(tmp_path), **kw)


def rechain(store: FakeStore, start: int, key: AuditKey | None, keep_mac: bool = False) -> None:
    """What someone with write access to the store does after editing entry ``start``: recompute
    every hash (and, with a key, MAC) from there on, so the SHA-256 chain is valid again."""
    prev = AuditEntry.from_record(store.rows[start - 2]) if start > 1 else None
    for row in store.rows[start - 1:]:
        e = AuditEntry.from_record(row)
        e = replace(e, prev_hash=prev.hash if prev else GENESIS_HASH, key_id=key.key_id if key else
                    (e.key_id if keep_mac else ""))
        e = replace(e, hash=e.computed_hash(), mac=key.mac(e.canonical()) if key else (e.mac if keep_mac else ""))
        row.clear()
        row.update({**e.to_record(), "seq": e.seq, "feeder_id": None})
        prev = e


async def test_keyed_chain_starts_with_key_introduced_and_verifies(tmp_path: Path) -> None:
    store = FakeStore()
    log = keyed_log(store, tmp_path)
    entries = await _fill(log, 3)
    assert [e.seq for e in entries] == [2, 3, 4]
    first = AuditEntry.from_record(store.rows[0])
    assert first.action == AuditAction.AUDIT_KEY_INTRODUCED and first.key_id == KEY.key_id
    assert json.loads(first.detail) == {"earlier_entries": 0, "fingerprint": KEY.key_id}
    assert all(row["key_id"] == KEY.key_id and len(row["mac"]) == 64 for row in store.rows)
    r = await keyed_log(store, tmp_path).verify()
    assert r.ok and r.checked == 4 and r.unkeyed == 0 and r.macs_checked and r.anchors_checked == 4
    assert "4 with a valid MAC" in r.summary


async def test_rebuilt_chain_with_valid_sha_but_wrong_mac_is_tampered_at_the_first_bad_entry(tmp_path: Path) -> None:
    store = FakeStore()
    await _fill(keyed_log(store, tmp_path), 6)
    store.rows[3]["outcome"] = "FAILED"  # entry 4
    rechain(store, 4, key=None, keep_mac=True)  # hashes fixed, MACs cannot be
    entries = [AuditEntry.from_record(r) for r in store.rows]
    assert all(e.computed_hash() == e.hash and e.prev_hash == (p.hash if p else GENESIS_HASH)
               for p, e in zip([None, *entries], entries, strict=False))  # SHA-256 alone: looks fine
    r = await keyed_log(store, tmp_path).verify()
    assert not r.ok and r.first_broken_seq == 4 and "MAC does not match" in (r.reason or "")
    assert r.checked == 3


async def test_chain_rebuilt_under_another_key_is_tampered(tmp_path: Path) -> None:
    store = FakeStore()
    await _fill(keyed_log(store, tmp_path), 4)
    store.rows[2]["actor"] = "mallory"
    rechain(store, 3, key=OTHER_KEY)
    r = await AuditLog(store, key=KEY).verify()  # no anchors even: the key alone catches it
    assert not r.ok and r.first_broken_seq == 3 and "not with this key" in (r.reason or "")


async def test_chain_stripped_of_its_macs_is_caught_by_the_anchors(tmp_path: Path) -> None:
    store = FakeStore()
    await _fill(keyed_log(store, tmp_path), 3)
    store.rows[2]["outcome"] = "FAILED"
    rechain(store, 1, key=None)  # passed off as a chain from before the key
    assert all("mac" not in row for row in store.rows)
    r = await keyed_log(store, tmp_path).verify()
    assert not r.ok and r.first_broken_seq == 1 and "anchored with one" in (r.reason or "")
    # Without the anchor file it reads as a legacy chain, and the result says so.
    r = await AuditLog(store, key=KEY).verify()
    assert r.ok and r.unkeyed == 4 and "from before the audit key" in r.summary


async def test_truncated_chain_behind_the_last_anchor_is_tampered(tmp_path: Path) -> None:
    store = FakeStore()
    await _fill(keyed_log(store, tmp_path), 5)
    del store.rows[-2:]
    store.seq -= 2
    r = await keyed_log(store, tmp_path).verify()  # a fresh reader: the anchors are outside the store
    assert not r.ok and r.first_broken_seq == 6 and "truncated or rolled back" in (r.reason or "")
    assert r.checked == 4


async def test_rolled_back_chain_written_on_again_is_tampered(tmp_path: Path) -> None:
    store = FakeStore()
    await _fill(keyed_log(store, tmp_path), 4)
    backup = [dict(r) for r in store.rows[:3]]
    await _fill(keyed_log(store, tmp_path), 2)
    store.rows, store.seq = backup, 3  # restored from an older backup...
    await _fill(keyed_log(store, tmp_path), 3)  # ...and written on by an honest server (seqs 4..6 again)
    r = await keyed_log(store, tmp_path).verify()
    assert not r.ok and r.first_broken_seq == 4 and "anchored" in (r.reason or "")


async def test_entries_from_before_the_key_stay_valid_and_are_counted(tmp_path: Path) -> None:
    store = FakeStore()
    await _fill(AuditLog(store), 3)  # a version without keys
    log = keyed_log(store, tmp_path)
    await _fill(log, 2)
    intro = AuditEntry.from_record(store.rows[3])
    assert intro.action == AuditAction.AUDIT_KEY_INTRODUCED and json.loads(intro.detail)["earlier_entries"] == 3
    assert intro.prev_hash == store.rows[2]["hash"]
    r = await log.verify()
    assert r.ok and r.checked == 6 and r.unkeyed == 3
    # A MAC removed after the key was introduced is not "legacy".
    del store.rows[5]["mac"], store.rows[5]["key_id"]
    rechain(store, 6, key=None)
    r = await AuditLog(store, key=KEY).verify()
    assert not r.ok and r.first_broken_seq == 6 and "keyed since entry 4" in (r.reason or "")


async def test_replicas_sharing_the_key_share_one_chain(tmp_path: Path) -> None:
    store = FakeStore()
    a, b = keyed_log(store, tmp_path), keyed_log(store, tmp_path)
    await asyncio.gather(*(w.record("TAG_SET", actor=f"{n}{i}") for i in range(5) for n, w in (("a", a), ("b", b))))
    actions = [row["action"] for row in store.rows]
    assert actions.count(AuditAction.AUDIT_KEY_INTRODUCED) == 1 and len(actions) == 11
    assert (await keyed_log(store, tmp_path).verify()).ok


async def test_a_replica_with_another_key_is_logged_and_reported(tmp_path: Path, caplog) -> None:
    store = FakeStore()
    await _fill(keyed_log(store, tmp_path), 2)
    with caplog.at_level(logging.ERROR, "security.audit"):
        await keyed_log(store, tmp_path / "other", key=OTHER_KEY).record("TAG_SET", actor="b")
    assert any("must mount the same audit key" in r.getMessage() for r in caplog.records)
    r = await keyed_log(store, tmp_path).verify()
    assert not r.ok and r.first_broken_seq == 4


async def test_a_writer_without_the_key_does_not_append_to_a_keyed_chain(tmp_path: Path) -> None:
    store = FakeStore()
    await _fill(keyed_log(store, tmp_path), 1)
    with pytest.raises(ConfigError, match="keyed"):
        await AuditLog(store).record("TAG_SET", actor="x")
    assert len(store.rows) == 2


async def test_verify_without_the_key_cannot_pass_a_keyed_chain(tmp_path: Path) -> None:
    store = FakeStore()
    await _fill(keyed_log(store, tmp_path), 1)
    settings = SimpleNamespace(data_dir=tmp_path / "elsewhere", audit_key=Secret(""))
    r = await AuditLog.from_settings(store, settings, create_key=False).verify()
    assert not r.ok and r.first_broken_seq == 1 and "no audit key" in (r.reason or "")
    assert not AuditKey.local_path(settings.data_dir).exists()  # verify never makes a key


async def test_anchors_are_written_to_the_file_the_log_and_the_gauge(tmp_path: Path, caplog) -> None:
    store = FakeStore()
    log = keyed_log(store, tmp_path, anchor_interval_s=0.05)
    with caplog.at_level(logging.INFO, "security.audit"):
        entries = await _fill(log, 3)  # intro and first entry anchored at once, the rest within 50 ms
        path = AnchorFile.local(tmp_path).path
        assert [a.seq for a in AnchorFile.local(tmp_path).read(KEY)] == [1]
        await asyncio.sleep(0.15)
    anchors = AnchorFile.local(tmp_path).read(KEY)
    assert [a.seq for a in anchors] == [1, 4] and anchors[-1].mac == entries[-1].mac
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert f"audit anchor seq=4 mac={entries[-1].mac} key_id={KEY.key_id}" in [r.getMessage() for r in caplog.records]
    assert ANCHOR_SEQ._value.get() == 4
    # A forged line (no key to sign it) is ignored, with a warning.
    with path.open("a") as fh:
        fh.write(json.dumps({"seq": 99, "mac": "0" * 64, "key_id": KEY.key_id, "at": "x", "sig": "0" * 64}) + "\n")
    with caplog.at_level(logging.WARNING, "security.audit"):
        assert [a.seq for a in AnchorFile.local(tmp_path).read(KEY)] == [1, 4]
    assert any("not signed by the audit key" in r.getMessage() for r in caplog.records)
    assert (await log.verify()).ok


async def test_flush_anchor_covers_the_newest_entry(tmp_path: Path) -> None:
    store = FakeStore()
    log = keyed_log(store, tmp_path, anchor_interval_s=3600)
    await _fill(log, 3)
    log.flush_anchor()
    assert [a.seq for a in AnchorFile.local(tmp_path).read(KEY)] == [1, 4]


def test_local_key_file_is_private_reused_and_never_shown(tmp_path: Path, caplog) -> None:
    settings = SimpleNamespace(data_dir=tmp_path, audit_key=Secret(""))
    with caplog.at_level(logging.DEBUG):
        key = AuditKey.from_settings(settings)
    assert key is not None
    path = AuditKey.local_path(tmp_path)
    material = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(material) == 64
    assert AuditKey.from_settings(settings).key_id == key.key_id  # type: ignore[union-attr]
    assert material not in repr(key) and material not in str(key) and material not in caplog.text
    path.chmod(0o640)
    with pytest.raises(ConfigError, match="readable by group or others"):
        AuditKey.from_settings(settings)


def test_mounted_key_wins_and_short_keys_are_refused(tmp_path: Path) -> None:
    mounted = AuditKey.from_settings(SimpleNamespace(data_dir=tmp_path, audit_key=Secret("k" * 64 + "\n")))
    assert mounted is not None and mounted.key_id == KEY.key_id
    assert not AuditKey.local_path(tmp_path).exists()
    with pytest.raises(ConfigError, match="at least 32") as err:
        AuditKey.from_text("short-secret", source="DMS_AUDIT_KEY(_FILE)")
    assert "short-secret" not in str(err.value)


def test_unkeyed_entries_hash_exactly_as_before() -> None:
    e = make_chain(1)[0]
    assert "key_id" not in e.to_record() and "mac" not in e.to_record()
    assert AuditEntry.from_record({**e.to_record(), "seq": 1}) == e
    keyed = chain_entry(None, action="X", actor="a", key=KEY, at=T0)
    assert keyed.hash == hashlib.sha256(keyed.canonical()).hexdigest() and b'"key_id"' in keyed.canonical()
    assert keyed.mac == hmac.new(b"k" * 64, b"dms-audit-entry-v1\n" + keyed.canonical(), hashlib.sha256).hexdigest()
