"""The append-only, hash-chained audit log (IEC 62351-8 / NERC CIP style accountability).

Every security-relevant act (failed login, control select/operate/cancel and its result, FDIR plan
approval, safety tags, setting and model changes) becomes an :class:`AuditEntry`. Each entry carries
the SHA-256 of its predecessor (``prev_hash``; the first one has 64 zeros) and its own ``hash`` over a
canonical JSON of every other field, so changing, removing, reordering or inserting an entry breaks
the chain at a point :func:`verify_chain` names.

The pure core (:func:`chain_entry`, :func:`verify_chain`) knows nothing of storage. :class:`AuditLog`
writes entries through a :class:`RecordStore` (``graph_schema.store.GraphStore``: label
``AuditEntry``, which the store keeps append-only and numbers with ``seq`` from 1).

Many writers (every server replica) share one chain: the head is kept in memory after one read of
the tail, appends are serialised in-process, and each entry is stored only at the ``seq`` it was
hashed for (the store's conditional append). An entry that lost to another writer is chained again
onto the newest one, so the chain never forks. A fork made some other way (an old version, a
hand-edited store) is still reported by :meth:`AuditLog.verify`, naming the entry.

``detail`` is JSON text; keys that look secret (password, token, secret, key, ...) are redacted
before hashing, so no secret ever enters the chain.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Protocol

from graph_schema.errors import SeqConflict, StoreUnavailable
from security.errors import AuditCorrupt

log = logging.getLogger(__name__)

LABEL = "AuditEntry"
APPEND_ATTEMPTS = 50  # conditional appends lost to other writers before giving up
GENESIS_HASH = "0" * 64
REDACTED = "[REDACTED]"
MAX_DETAIL_CHARS = 16_384

# Key names whose values are never written: any key containing one of these words.
_SECRET_KEY = re.compile(r"pass(word|wd|phrase)?|token|secret|key|authori[sz]ation|credential|cookie|private",
                         re.IGNORECASE)


class AuditAction(StrEnum):
    """The actions the head-end records (``AuditLog.record`` also takes any other string)."""

    LOGIN_FAILED = "LOGIN_FAILED"
    ACCESS_DENIED = "ACCESS_DENIED"
    CONTROL_SELECT = "CONTROL_SELECT"
    CONTROL_OPERATE = "CONTROL_OPERATE"
    CONTROL_CANCEL = "CONTROL_CANCEL"
    CONTROL_RESULT = "CONTROL_RESULT"
    PLAN_APPROVE = "PLAN_APPROVE"
    PLAN_REJECT = "PLAN_REJECT"
    FDIR_MODE = "FDIR_MODE"
    TAG_SET = "TAG_SET"
    TAG_REMOVE = "TAG_REMOVE"
    ALARM_ACK = "ALARM_ACK"
    SETTING_CHANGE = "SETTING_CHANGE"
    MODEL_IMPORT = "MODEL_IMPORT"
    ROLE_CHANGE = "ROLE_CHANGE"


@dataclass(frozen=True)
class AuditEntry:
    seq: int
    at: str  # ISO-8601 UTC with microseconds, e.g. 2025-01-31T12:00:00.000000Z
    actor: str  # token subject, or "anonymous"
    roles: tuple[str, ...]
    action: str
    target: str
    source: str  # client address
    outcome: str
    detail: str  # JSON text, secrets redacted
    prev_hash: str
    hash: str

    def canonical(self) -> bytes:
        """The bytes hashed: canonical JSON (sorted keys, no whitespace) of every field but ``hash``."""
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "hash"}
        body["roles"] = list(self.roles)
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def computed_hash(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    def to_record(self) -> dict[str, str]:
        """Store properties (scalars only; ``seq`` is assigned by the store)."""
        out = {k: v for k, v in asdict(self).items() if k != "seq"}
        out["roles"] = json.dumps(list(self.roles), separators=(",", ":"))
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> AuditEntry:
        """Rebuild from store properties; raises ``ValueError`` on a malformed record."""
        try:
            roles = json.loads(record["roles"])
            values: dict[str, Any] = {f.name: record[f.name] for f in fields(cls) if f.name != "roles"}
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"malformed audit record ({type(exc).__name__}: {exc})") from None
        if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
            raise ValueError("malformed audit record (roles)")
        seq = values["seq"]
        if isinstance(seq, bool) or not isinstance(seq, int):
            raise ValueError("malformed audit record (seq)")
        for name, value in values.items():
            if name != "seq" and not isinstance(value, str):
                raise ValueError(f"malformed audit record ({name})")
        return cls(roles=tuple(roles), **values)


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    checked: int
    first_broken_seq: int | None = None
    reason: str | None = None


def utc_stamp(moment: datetime | None = None) -> str:
    """ISO-8601 UTC with microseconds and a ``Z``."""
    moment = datetime.now(UTC) if moment is None else moment
    if moment.tzinfo is None:
        raise ValueError("audit timestamps must be timezone-aware")
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def redact(value: Any) -> Any:
    """A copy of ``value`` with every secret-looking key's value replaced by ``[REDACTED]``."""
    if isinstance(value, Mapping):
        return {str(k): REDACTED if _SECRET_KEY.search(str(k)) else redact(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [redact(v) for v in value]
    return value


def detail_json(detail: Mapping[str, Any] | None) -> str:
    """Canonical JSON of ``detail`` after redaction; an oversized detail is replaced by its digest."""
    text = json.dumps(redact(dict(detail or {})), sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)
    if len(text) > MAX_DETAIL_CHARS:
        digest = hashlib.sha256(text.encode()).hexdigest()
        text = json.dumps({"truncated": True, "chars": len(text), "sha256": digest}, sort_keys=True,
                          separators=(",", ":"))
    return text


def chain_entry(
    prev: AuditEntry | None,
    *,
    action: str,
    actor: str | None,
    roles: Iterable[str] = (),
    target: str = "",
    source: str = "",
    outcome: str = "",
    detail: Mapping[str, Any] | str | None = None,
    at: str | datetime | None = None,
    seq: int | None = None,
) -> AuditEntry:
    """The entry that follows ``prev`` (``None``: the first entry, seq 1, genesis ``prev_hash``).

    ``detail`` may be a mapping (redacted and serialised here) or JSON text already made by
    :func:`detail_json`.
    """
    if not action:
        raise ValueError("an audit entry needs an action")
    stamp = at if isinstance(at, str) else utc_stamp(at)
    unhashed = AuditEntry(
        seq=seq if seq is not None else (prev.seq + 1 if prev is not None else 1),
        at=stamp,
        actor=actor or "anonymous",
        roles=tuple(sorted({str(r) for r in roles})),
        action=str(action),
        target=str(target),
        source=str(source),
        outcome=str(outcome),
        detail=detail if isinstance(detail, str) else detail_json(detail),
        prev_hash=prev.hash if prev is not None else GENESIS_HASH,
        hash="",
    )
    return replace(unhashed, hash=unhashed.computed_hash())


class ChainVerifier:
    """Incremental :func:`verify_chain`: feed entries oldest first, read :attr:`result`."""

    def __init__(self, prev: AuditEntry | None = None) -> None:
        self._prev = prev
        self._checked = 0
        self._broken: tuple[int, str] | None = None

    @property
    def broken(self) -> bool:
        return self._broken is not None

    @property
    def last(self) -> AuditEntry | None:
        return self._prev

    def fail(self, seq: int, reason: str) -> None:
        if self._broken is None:
            self._broken = (seq, reason)

    def feed(self, entry: AuditEntry) -> bool:
        """Check one entry; False (and the result fixed) at the first break."""
        if self._broken is not None:
            return False
        prev = self._prev
        expected_seq = prev.seq + 1 if prev is not None else 1
        expected_prev = prev.hash if prev is not None else GENESIS_HASH
        if entry.seq > expected_seq:
            last_missing = entry.seq - 1
            missing = f"{expected_seq}" if last_missing == expected_seq else f"{expected_seq}..{last_missing}"
            self.fail(entry.seq, f"seq jumps to {entry.seq}: entry {missing} missing (deleted or moved)")
        elif entry.seq < expected_seq:
            self.fail(entry.seq, f"seq {entry.seq} after {expected_seq - 1}: entry out of order or "
                                 f"duplicated (reordered or inserted)")
        elif entry.prev_hash != expected_prev:
            self.fail(entry.seq, "prev_hash does not match the previous entry's hash (inserted, reordered or "
                                 "the previous entry changed)")
        elif entry.computed_hash() != entry.hash:
            self.fail(entry.seq, "hash does not match the entry's content (entry changed)")
        else:
            self._prev = entry
            self._checked += 1
            return True
        return False

    @property
    def result(self) -> VerifyResult:
        if self._broken is not None:
            return VerifyResult(False, self._checked, self._broken[0], self._broken[1])
        return VerifyResult(True, self._checked)


def verify_chain(entries: Iterable[AuditEntry], *, prev: AuditEntry | None = None) -> VerifyResult:
    """Verify entries oldest first, from genesis (or from the trusted ``prev``).

    ``checked`` counts the entries that verified; ``first_broken_seq`` is the ``seq`` of the first
    entry that did not, and ``reason`` says what was wrong with it.
    """
    verifier = ChainVerifier(prev)
    for entry in entries:
        if not verifier.feed(entry):
            break
    return verifier.result


class RecordStore(Protocol):
    """The part of ``graph_schema.store.GraphStore`` the audit log uses."""

    async def append_record(
        self,
        label: str,
        record: Mapping[str, str | int | float | bool | None],
        *,
        feeder_id: str | None = None,
        expect_seq: int | None = None,
    ) -> int: ...

    async def list_records(
        self,
        label: str,
        *,
        after_seq: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
        **kwargs: Any,
    ) -> list[dict[str, Any]]: ...


class AuditLog:
    """Appends to and reads the ``AuditEntry`` records of a :class:`RecordStore`."""

    def __init__(self, store: RecordStore, *, clock: Callable[[], datetime] | None = None) -> None:
        self._store = store
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = asyncio.Lock()
        self._head: AuditEntry | None = None
        self._head_loaded = False

    async def record(
        self,
        action: str,
        *,
        actor: str | None,
        roles: Iterable[str] = (),
        target: str = "",
        source: str = "",
        outcome: str = "",
        detail: Mapping[str, Any] | None = None,
    ) -> AuditEntry:
        """Append one entry chained onto the newest one and return it as stored.

        Every server replica writes to the same chain: an entry is stored only at the seq it was
        hashed for (a conditional append); when another writer got there first, the newest entry
        is re-read and the entry chained onto it again, so the chain never forks.
        """
        detail_text = detail_json(detail)  # outside the lock: may be the slow part
        async with self._lock:
            for _ in range(APPEND_ATTEMPTS):
                head = await self._load_head()
                entry = chain_entry(head, action=action, actor=actor, roles=roles, target=target, source=source,
                                    outcome=outcome, detail=detail_text, at=self._clock())
                try:
                    await self._store.append_record(LABEL, entry.to_record(), expect_seq=entry.seq)
                except SeqConflict:
                    self._head_loaded = False  # another writer appended: chain onto its entry
                    continue
                except BaseException:
                    self._head_loaded = False  # unknown whether it was written: re-read the tail next time
                    raise
                self._head = entry
                return entry
            raise StoreUnavailable(
                f"could not append to the audit log: {APPEND_ATTEMPTS} attempts each lost to another writer; "
                "the action was not recorded. Check how many servers write the audit log and retry"
            )

    async def head(self) -> AuditEntry | None:
        async with self._lock:
            return await self._load_head()

    async def page(
        self,
        after_seq: int | None = None,
        limit: int = 100,
        *,
        before_seq: int | None = None,
        newest_first: bool = False,
    ) -> list[AuditEntry]:
        """Entries by ``seq`` (exclusive cursors), at most ``limit`` (1..1000)."""
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit={limit} must be between 1 and 1000")
        kwargs: dict[str, Any] = {"after_seq": after_seq, "limit": limit, "newest_first": newest_first}
        if before_seq is not None:
            kwargs["before_seq"] = before_seq
        rows = await self._store.list_records(LABEL, **kwargs)
        return [AuditEntry.from_record(r) for r in rows]

    async def verify(self, *, page_size: int = 500) -> VerifyResult:
        """Verify the whole chain from genesis, paging through the store."""
        verifier = ChainVerifier()
        after: int | None = None
        while True:
            rows = await self._store.list_records(LABEL, after_seq=after, limit=page_size)
            if not rows:
                break
            for row in rows:
                try:
                    entry = AuditEntry.from_record(row)
                except ValueError as exc:
                    seq = row.get("seq")
                    verifier.fail(seq if isinstance(seq, int) else -1, str(exc))
                    return verifier.result
                if not verifier.feed(entry):
                    return verifier.result
                after = entry.seq
            if len(rows) < page_size:
                break
        # Entries this process wrote must still be there: catches a truncated tail.
        head = self._head if self._head_loaded else None
        last = verifier.last
        if head is not None and (last is None or last.seq < head.seq or last.hash != head.hash):
            verifier.fail(head.seq, f"entry {head.seq} written by this process is missing or changed "
                                    f"(log truncated?)")
        return verifier.result

    async def _load_head(self) -> AuditEntry | None:
        if not self._head_loaded:
            rows = await self._store.list_records(LABEL, limit=1, newest_first=True)
            if rows:
                try:
                    self._head = AuditEntry.from_record(rows[0])
                except ValueError as exc:
                    raise AuditCorrupt(
                        f"the newest audit entry is unreadable ({exc}); run `dms audit verify` and "
                        f"restore the audit log from backup"
                    ) from None
            else:
                self._head = None
            self._head_loaded = True
        return self._head
