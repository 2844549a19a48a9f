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

Keyed entries (tamper evidence that does not trust the database). A SHA-256 chain alone can be
rebuilt by anyone who can write the store. So each entry also carries ``mac``, an HMAC-SHA256 under
a key the store never holds (:class:`AuditKey`: ``DMS_AUDIT_KEY_FILE``, a mounted Secret that every
API replica shares, or locally ``<data_dir>/audit/audit.key``, made 0600 on first use), and
``key_id`` (a fingerprint of the key, not the key). ``hash`` covers ``key_id``; ``mac`` covers the
same canonical bytes as ``hash``. Entries written before a key existed have neither field and their
hash is computed exactly as before. A writer with a key whose chain head has no MAC first appends an
``AUDIT_KEY_INTRODUCED`` entry (keyed); from it on, every entry must carry a valid MAC under the
verifier's key. So a chain rebuilt with valid SHA-256 links but without the key fails at the first
entry whose MAC does not match; stripping the MACs to pass it off as a legacy chain fails at the
first anchor (below) or at the first keyed entry left.

Anchors (against truncation and rollback, which a chain cannot show by itself): the writer records
the chain head (``seq``, ``mac``, ``key_id``, time, and an HMAC of those) outside the store at most
every ``anchor_interval_s`` and always at key introduction: a line in
``<data_dir>/audit/anchors.jsonl``, an INFO log line ``audit anchor seq=... mac=...`` for the log
pipeline, and the gauge ``dms_audit_anchor_seq``. :meth:`AuditLog.verify` reports a chain that ends
before an anchored seq, or whose entry at an anchored seq has another MAC, as tampered. The key is
never logged, rendered or stored; ``key_id`` and MACs are not secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import stat
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from prometheus_client import Gauge

from graph_schema.errors import ConfigError, SeqConflict, StoreUnavailable
from security.errors import AuditCorrupt

log = logging.getLogger(__name__)

LABEL = "AuditEntry"
APPEND_ATTEMPTS = 50  # conditional appends lost to other writers before giving up
GENESIS_HASH = "0" * 64
REDACTED = "[REDACTED]"
MAX_DETAIL_CHARS = 16_384
MIN_KEY_CHARS = 32  # a mounted key's text, e.g. `openssl rand -hex 32` (64 characters)
ANCHOR_INTERVAL_S = 10.0
_MAC_DOMAIN = b"dms-audit-entry-v1\n"
_ANCHOR_DOMAIN = b"dms-audit-anchor-v1\n"

# The newest anchor this process wrote (server/metrics.py registers these in its registry).
ANCHOR_SEQ = Gauge("dms_audit_anchor_seq", "seq of the newest audit chain head anchored outside the store",
                   registry=None)
ANCHOR_TIME = Gauge("dms_audit_anchor_timestamp_seconds", "When the newest audit anchor was written",
                    registry=None)

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
    VOLTVAR_MODE = "VOLTVAR_MODE"
    VOLTVAR_OBJECTIVE = "VOLTVAR_OBJECTIVE"
    VOLTVAR_PLAN_APPROVE = "VOLTVAR_PLAN_APPROVE"
    TAG_SET = "TAG_SET"
    TAG_REMOVE = "TAG_REMOVE"
    ALARM_ACK = "ALARM_ACK"
    SETTING_CHANGE = "SETTING_CHANGE"
    MODEL_IMPORT = "MODEL_IMPORT"
    ROLE_CHANGE = "ROLE_CHANGE"
    AUDIT_KEY_INTRODUCED = "AUDIT_KEY_INTRODUCED"
    VOLTVAR_PLAN_REQUEST = "VOLTVAR_PLAN_REQUEST"
    VOLTVAR_FALLBACK_PUSH = "VOLTVAR_FALLBACK_PUSH"
    DER_CONTROL = "DER_CONTROL"
    DER_RELEASE_CURTAILMENT = "DER_RELEASE_CURTAILMENT"
    DER_MODE = "DER_MODE"
    DER_LIMITS = "DER_LIMITS"
    DR_EVENT_CREATE = "DR_EVENT_CREATE"
    DR_EVENT_CANCEL = "DR_EVENT_CANCEL"
    DR_OPT_OUT = "DR_OPT_OUT"
    REPORT_CREATE = "REPORT_CREATE"
    REPORT_SCHEDULE_CREATE = "REPORT_SCHEDULE_CREATE"
    REPORT_SCHEDULE_DELETE = "REPORT_SCHEDULE_DELETE"
    REPORT_SCHEDULE_RUN = "REPORT_SCHEDULE_RUN"
    STUDY_CREATE = "STUDY_CREATE"
    STUDY_DELETE = "STUDY_DELETE"
    ANALYSIS_START = "ANALYSIS_START"
    ANALYSIS_CANCEL = "ANALYSIS_CANCEL"


class AuditKey:
    """The HMAC key of the audit chain. Never in ``repr``/``str``/logs; ``key_id`` identifies it.

    Production: every replica mounts the same Secret and points ``DMS_AUDIT_KEY_FILE`` at it (or sets
    ``DMS_AUDIT_KEY``). Locally: ``<data_dir>/audit/audit.key``, created 0600 on first use; a key file
    that group or others can read is refused.
    """

    __slots__ = ("_key", "key_id", "source")

    def __init__(self, material: bytes, *, source: str) -> None:
        if len(material) < MIN_KEY_CHARS:
            raise ConfigError(
                f"the audit key from {source} has {len(material)} bytes; it needs at least {MIN_KEY_CHARS} "
                "(make one with `openssl rand -hex 32`)"
            )
        self._key = material
        self.source = source
        self.key_id = hmac.new(material, b"dms-audit-key-id", hashlib.sha256).hexdigest()[:16]

    def __repr__(self) -> str:
        return f"AuditKey(key_id={self.key_id!r}, source={self.source!r})"

    __str__ = __repr__

    def mac(self, data: bytes, *, domain: bytes = _MAC_DOMAIN) -> str:
        return hmac.new(self._key, domain + data, hashlib.sha256).hexdigest()

    @classmethod
    def from_text(cls, text: str, *, source: str) -> AuditKey:
        return cls(text.strip().encode(), source=source)

    @classmethod
    def local_path(cls, data_dir: Path | str) -> Path:
        return Path(data_dir) / "audit" / "audit.key"

    @classmethod
    def load(cls, path: Path | str, *, create: bool = False) -> AuditKey | None:
        """The key in ``path``; ``None`` when absent and not ``create``."""
        path = Path(path)
        if not path.exists():
            if not create:
                return None
            cls._create(path)
        try:
            st = path.stat()
            if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(
                    f"audit key {str(path)!r} is readable by group or others (mode {stat.S_IMODE(st.st_mode):o}); "
                    "run chmod 600 on it if it has not leaked (a leaked key lets anyone rebuild the audit chain)"
                )
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"audit key {str(path)!r} cannot be read ({exc.strerror})") from None
        return cls.from_text(text, source=str(path))

    @staticmethod
    def _create(path: Path) -> None:
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(
                f"cannot create {str(path.parent)!r} for the audit key ({exc.strerror}); make the data "
                "directory writable or set DMS_AUDIT_KEY_FILE"
            ) from None
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(secrets.token_hex(32) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
            with contextlib.suppress(FileExistsError):  # another process made it meanwhile: use that one
                os.link(tmp, path)
                log.info("created the local audit key %s", path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)

    @classmethod
    def from_settings(cls, settings: Any, *, create: bool = True) -> AuditKey | None:
        """``settings.audit_key`` (``DMS_AUDIT_KEY`` / ``DMS_AUDIT_KEY_FILE``), else the local key file
        under ``settings.data_dir`` (created when ``create``)."""
        secret = getattr(settings, "audit_key", None)
        if secret:
            return cls.from_text(secret.reveal(), source="DMS_AUDIT_KEY(_FILE)")
        return cls.load(cls.local_path(settings.data_dir), create=create)


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
    key_id: str = ""  # the AuditKey's id; "" on entries written before the chain was keyed
    mac: str = ""  # HMAC-SHA256 of canonical() under that key; "" likewise

    @property
    def keyed(self) -> bool:
        return bool(self.key_id or self.mac)

    def canonical(self) -> bytes:
        """The bytes hashed and MACed: canonical JSON (sorted keys, no whitespace) of every field but
        ``hash`` and ``mac`` (``key_id`` only when set, so unkeyed entries hash as they always did)."""
        body = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("hash", "mac", "key_id")}
        if self.key_id:
            body["key_id"] = self.key_id
        body["roles"] = list(self.roles)
        return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()

    def computed_hash(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    def to_record(self) -> dict[str, str]:
        """Store properties (scalars only; ``seq`` is assigned by the store)."""
        out = {k: v for k, v in asdict(self).items() if k != "seq" and (v or k not in ("key_id", "mac"))}
        out["roles"] = json.dumps(list(self.roles), separators=(",", ":"))
        return out

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> AuditEntry:
        """Rebuild from store properties; raises ``ValueError`` on a malformed record."""
        try:
            roles = json.loads(record["roles"])
            values: dict[str, Any] = {f.name: record[f.name] for f in fields(cls)
                                      if f.name not in ("roles", "key_id", "mac")}
            values["key_id"] = record.get("key_id") or ""
            values["mac"] = record.get("mac") or ""
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
    unkeyed: int = 0  # entries checked by hash only (written before the key was introduced)
    anchors_checked: int = 0  # anchors (outside the store) the chain was checked against
    macs_checked: bool = False  # False: no key was at hand, keyed entries could not be checked

    @property
    def summary(self) -> str:
        """What the check covered, for people (no secrets)."""
        keyed = self.checked - self.unkeyed
        parts = [f"{keyed} with a valid MAC" if self.macs_checked else "MACs NOT checked (no audit key)"]
        if self.unkeyed:
            parts.append(f"{self.unkeyed} from before the audit key (hash chain only)")
        parts.append(f"{self.anchors_checked} anchor(s) matched")
        return "; ".join(parts)


@dataclass(frozen=True)
class Anchor:
    """One chain head recorded outside the store."""

    seq: int
    mac: str
    key_id: str
    at: str

    def signed_bytes(self) -> bytes:
        return f"{self.seq}|{self.mac}|{self.key_id}|{self.at}".encode()


class AnchorFile:
    """JSON lines ``{"seq", "mac", "key_id", "at", "sig"}`` appended to ``path``; ``sig`` is an HMAC of
    the other fields under the audit key, so a line cannot be forged without it."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @classmethod
    def local(cls, data_dir: Path | str) -> AnchorFile:
        return cls(Path(data_dir) / "audit" / "anchors.jsonl")

    def append(self, anchor: Anchor, key: AuditKey) -> None:
        line = json.dumps({**asdict(anchor), "sig": key.mac(anchor.signed_bytes(), domain=_ANCHOR_DOMAIN)},
                          sort_keys=True, separators=(",", ":")) + "\n"
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, line.encode())  # one write per line: concurrent writers do not interleave
        finally:
            os.close(fd)

    def read(self, key: AuditKey | None) -> list[Anchor]:
        """Anchors made with ``key`` (others, and unsigned or damaged lines, are skipped with a warning)."""
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return []
        out: list[Anchor] = []
        skipped = 0
        for line in lines:
            try:
                d = json.loads(line)
                anchor = Anchor(int(d["seq"]), str(d["mac"]), str(d["key_id"]), str(d["at"]))
                sig = str(d["sig"])
            except (ValueError, KeyError, TypeError):
                skipped += 1
                continue
            if key is None or anchor.key_id != key.key_id:
                continue
            if not hmac.compare_digest(sig, key.mac(anchor.signed_bytes(), domain=_ANCHOR_DOMAIN)):
                skipped += 1
                continue
            out.append(anchor)
        if skipped:
            log.warning("audit anchors: %d line(s) of %s are damaged or not signed by the audit key; ignored",
                        skipped, self.path)
        return out


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
    key: AuditKey | None = None,
) -> AuditEntry:
    """The entry that follows ``prev`` (``None``: the first entry, seq 1, genesis ``prev_hash``).

    ``detail`` may be a mapping (redacted and serialised here) or JSON text already made by
    :func:`detail_json`. With ``key`` the entry is keyed (``key_id`` and ``mac``).
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
        key_id=key.key_id if key is not None else "",
    )
    canonical = unhashed.canonical()
    return replace(unhashed, hash=hashlib.sha256(canonical).hexdigest(),
                   mac=key.mac(canonical) if key is not None else "")


class ChainVerifier:
    """Incremental :func:`verify_chain`: feed entries oldest first, read :attr:`result`."""

    def __init__(self, prev: AuditEntry | None = None, *, key: AuditKey | None = None,
                 anchors: Iterable[Anchor] = ()) -> None:
        self._prev = prev
        self._checked = 0
        self._broken: tuple[int, str] | None = None
        self._key = key
        self._keyed_since: int | None = prev.seq if prev is not None and prev.keyed else None
        self._unkeyed = 0
        self._anchors: dict[int, list[Anchor]] = {}
        for a in anchors:
            self._anchors.setdefault(a.seq, []).append(a)
        self._anchors_checked = 0

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
        elif (problem := self._mac_problem(entry)) is not None:
            self.fail(entry.seq, problem)
        else:
            self._prev = entry
            self._checked += 1
            return True
        return False

    def _mac_problem(self, entry: AuditEntry) -> str | None:
        anchored = self._anchors.get(entry.seq, [])
        anchor = anchored[0] if anchored else None
        if not entry.keyed:
            if self._keyed_since is not None:
                return (f"entry has no MAC, but the chain is keyed since entry {self._keyed_since} "
                        "(entry replaced or chain rebuilt without the audit key)")
            if anchor is not None:
                return (f"entry has no MAC, but it was anchored with one at {anchor.at} "
                        "(chain rebuilt without the audit key)")
            self._unkeyed += 1
            return None
        if self._keyed_since is None and entry.action != AuditAction.AUDIT_KEY_INTRODUCED:
            return "the first keyed entry is not an AUDIT_KEY_INTRODUCED entry (chain rebuilt?)"
        if self._key is None:
            return (f"entry is keyed (key id {entry.key_id}) but no audit key is at hand to check it: set "
                    "DMS_AUDIT_KEY_FILE to the chain's key (or run where <data_dir>/audit/audit.key is)")
        if entry.key_id != self._key.key_id:
            return (f"entry is keyed with key id {entry.key_id}, not with this key ({self._key.key_id}): a writer "
                    "used another key (every API replica must mount the same DMS_AUDIT_KEY_FILE) or the "
                    "entry was forged")
        if not hmac.compare_digest(entry.mac, self._key.mac(entry.canonical())):
            return ("MAC does not match the entry (entry changed, or the chain was rebuilt without the audit "
                    "key)")
        for a in anchored:  # after a rollback an honest writer anchors the same seq again, differently
            if a.mac != entry.mac:
                return f"entry differs from the one anchored at {a.at} (chain rebuilt or rolled back)"
        self._anchors_checked += bool(anchored)
        if self._keyed_since is None:
            self._keyed_since = entry.seq
        return None

    def finish(self) -> None:
        """After the last entry: an anchored seq beyond it means the chain was truncated or rolled back."""
        last = self._prev.seq if self._prev is not None else 0
        beyond = [a for seq, anchored in self._anchors.items() if seq > last for a in anchored]
        if beyond and self._broken is None:
            a = max(beyond, key=lambda x: x.seq)
            self.fail(a.seq, f"the chain ends at entry {last}, but entry {a.seq} was anchored at {a.at}: "
                             "entries were deleted from the end (truncated or rolled back)")

    @property
    def result(self) -> VerifyResult:
        extra = {"unkeyed": self._unkeyed, "anchors_checked": self._anchors_checked,
                 "macs_checked": self._key is not None}
        if self._broken is not None:
            return VerifyResult(False, self._checked, self._broken[0], self._broken[1], **extra)
        return VerifyResult(True, self._checked, **extra)


def verify_chain(entries: Iterable[AuditEntry], *, prev: AuditEntry | None = None, key: AuditKey | None = None,
                 anchors: Iterable[Anchor] = ()) -> VerifyResult:
    """Verify entries oldest first, from genesis (or from the trusted ``prev``), their MACs with
    ``key`` and the chain against ``anchors``.

    ``checked`` counts the entries that verified; ``first_broken_seq`` is the ``seq`` of the first
    entry that did not, and ``reason`` says what was wrong with it.
    """
    verifier = ChainVerifier(prev, key=key, anchors=anchors)
    for entry in entries:
        if not verifier.feed(entry):
            break
    verifier.finish()
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
    """Appends to and reads the ``AuditEntry`` records of a :class:`RecordStore`.

    Without ``key`` entries are unkeyed (hash chain only, as before #17.9): use
    :meth:`from_settings`, which keys the chain and anchors it under the data directory.
    """

    def __init__(self, store: RecordStore, *, clock: Callable[[], datetime] | None = None,
                 key: AuditKey | None = None, anchors: AnchorFile | None = None,
                 anchor_interval_s: float = ANCHOR_INTERVAL_S) -> None:
        self._store = store
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = asyncio.Lock()
        self._head: AuditEntry | None = None
        self._head_loaded = False
        self._key = key
        self._anchors = anchors
        self._anchor_interval_s = anchor_interval_s
        self._anchored: tuple[int, float] | None = None  # seq, monotonic time of the last anchor
        self._unanchored: AuditEntry | None = None  # newest entry written since then
        self._anchor_timer: asyncio.TimerHandle | None = None
        self._warned_key_ids: set[str] = set()

    @classmethod
    def from_settings(cls, store: RecordStore, settings: Any, *, create_key: bool = True,
                      **kwargs: Any) -> AuditLog:
        """The keyed, anchored log of a server (``create_key``) or of ``dms audit verify`` (which
        never makes a key: without one it reports keyed entries as unverifiable)."""
        key = AuditKey.from_settings(settings, create=create_key)
        return cls(store, key=key, anchors=AnchorFile.local(settings.data_dir), **kwargs)

    @property
    def key_id(self) -> str | None:
        return self._key.key_id if self._key is not None else None

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
                introduce = self._key is not None and (head is None or not head.keyed)
                if introduce:
                    assert self._key is not None
                    entry = chain_entry(head, action=AuditAction.AUDIT_KEY_INTRODUCED, actor="dms", target="audit",
                                        outcome="OK", at=self._clock(), key=self._key,
                                        detail={"fingerprint": self._key.key_id,
                                                "earlier_entries": head.seq if head is not None else 0})
                else:
                    if self._key is None and head is not None and head.keyed:
                        raise ConfigError(
                            f"the audit chain is keyed (key id {head.key_id}) but this writer holds no audit key, "
                            "so its entries would break the chain; open the log with AuditLog.from_settings "
                            "(DMS_AUDIT_KEY_FILE or <data_dir>/audit/audit.key)"
                        )
                    self._check_head_key(head)
                    entry = chain_entry(head, action=action, actor=actor, roles=roles, target=target,
                                        source=source, outcome=outcome, detail=detail_text, at=self._clock(),
                                        key=self._key)
                try:
                    await self._store.append_record(LABEL, entry.to_record(), expect_seq=entry.seq)
                except SeqConflict:
                    self._head_loaded = False  # another writer appended: chain onto its entry
                    continue
                except BaseException:
                    self._head_loaded = False  # unknown whether it was written: re-read the tail next time
                    raise
                self._head = entry
                if introduce:
                    log.info("audit chain keyed from entry %d on (key id %s; %d earlier entries are hash-chained "
                             "only)", entry.seq, entry.key_id, entry.seq - 1)
                    self._anchor(entry)
                    continue
                self._anchor_soon(entry)
                return entry
            raise StoreUnavailable(
                f"could not append to the audit log: {APPEND_ATTEMPTS} attempts each lost to another writer; "
                "the action was not recorded. Check how many servers write the audit log and retry"
            )

    def _check_head_key(self, head: AuditEntry | None) -> None:
        if self._key is None or head is None or head.key_id == self._key.key_id:
            return
        if head.key_id not in self._warned_key_ids:
            self._warned_key_ids.add(head.key_id)
            log.error("audit entry %d is keyed with key id %s, this server holds key id %s: every API replica "
                      "must mount the same audit key (DMS_AUDIT_KEY_FILE); `dms audit verify` will report the "
                      "chain as broken there", head.seq, head.key_id, self._key.key_id)

    # -- anchors ----------------------------------------------------------------------------------

    def _anchor_soon(self, entry: AuditEntry) -> None:
        """Anchor ``entry`` now if the last anchor is older than the interval, else when it is."""
        if self._key is None or self._anchors is None:
            return
        now = time.monotonic()
        due = 0.0 if self._anchored is None else self._anchored[1] + self._anchor_interval_s - now
        if due <= 0:
            self._anchor(entry)
            return
        self._unanchored = entry
        if self._anchor_timer is None:
            self._anchor_timer = asyncio.get_running_loop().call_later(due, self._anchor_pending)

    def _anchor_pending(self) -> None:
        self._anchor_timer = None
        entry, self._unanchored = self._unanchored, None
        if entry is not None:
            self._anchor(entry)

    def flush_anchor(self) -> None:
        """Anchor the newest entry now (at shutdown, so the last entries are covered too)."""
        if self._anchor_timer is not None:
            self._anchor_timer.cancel()
        self._anchor_pending()

    def _anchor(self, entry: AuditEntry) -> None:
        if self._key is None or not entry.keyed:
            return
        if self._anchored is not None and self._anchored[0] >= entry.seq:
            return
        anchor = Anchor(entry.seq, entry.mac, entry.key_id, utc_stamp())
        self._anchored = (entry.seq, time.monotonic())
        if self._unanchored is not None and self._unanchored.seq <= entry.seq:
            self._unanchored = None
        if self._anchors is not None:
            try:
                self._anchors.append(anchor, self._key)
            except OSError as exc:
                log.error("audit anchor seq=%d could not be written to %s (%s)", entry.seq, self._anchors.path,
                          exc.strerror)
        log.info("audit anchor seq=%d mac=%s key_id=%s", anchor.seq, anchor.mac, anchor.key_id)
        ANCHOR_SEQ.set(anchor.seq)
        ANCHOR_TIME.set(time.time())

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
        """Verify the whole chain from genesis, paging through the store: hashes and links, MACs with
        this log's key, and against the anchors written outside the store."""
        anchors = self._anchors.read(self._key) if self._anchors is not None else []
        verifier = ChainVerifier(key=self._key, anchors=anchors)
        # What this process had written when the check began: an entry appended while it reads (a
        # concurrent control, a background job) is not a truncated tail.
        head = self._head if self._head_loaded else None
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
        verifier.finish()
        # Entries this process wrote must still be there: catches a truncated tail.
        last = verifier.last
        if head is not None and (last is None or last.seq < head.seq or (last.seq == head.seq
                                                                          and last.hash != head.hash)):
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
