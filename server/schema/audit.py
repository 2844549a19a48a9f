"""The audit log query (security auditors, IEC 62351-8 SECAUD): newest first, Relay paging."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import strawberry
from strawberry.types import Info

from graph_schema.errors import DmsError
from security.audit import AuditEntry as AuditRecord
from security.roles import Permission, requires
from server.schema.relay import Connection, connection, decode_cursor, page_size


@strawberry.type
class AuditEntry:
    seq: int
    at: str = strawberry.field(description=(
        "When it was recorded, as the exact text the hash covers (ISO 8601 UTC, e.g. "
        "2025-01-31T12:00:00.000000Z): recompute hashes from this; read the instant from recordedAt"))
    recorded_at: datetime = strawberry.field(description="When it was recorded (the instant of at, as DateTime)")
    actor: str
    roles: list[str]
    action: str
    target: str
    source: str
    outcome: str
    detail: str = strawberry.field(description="JSON text; secrets are redacted before hashing")
    prev_hash: str
    hash: str

    @classmethod
    def of(cls, e: AuditRecord) -> AuditEntry:
        return cls(seq=e.seq, at=e.at, recorded_at=datetime.fromisoformat(e.at),
                   actor=e.actor, roles=list(e.roles), action=e.action, target=e.target,
                   source=e.source, outcome=e.outcome, detail=e.detail, prev_hash=e.prev_hash, hash=e.hash)


@strawberry.type
class AuditQuery:
    @strawberry.field(permission_classes=[requires(Permission.READ_AUDIT)],
                      description="The hash-chained audit log, newest first")
    async def audit_log(self, info: Info, first: int | None = 50, after: str | None = None) -> Connection[AuditEntry]:
        limit = page_size(first)
        before = decode_cursor(after)
        audit = info.context["services"].audit
        entries = await audit.page(limit=limit + 1, before_seq=before, newest_first=True)
        return connection([(e.seq, AuditEntry.of(e)) for e in entries], limit, after=after)


async def audited(info: Info, action: str, target: str, detail: dict[str, Any], call: Any) -> Any:
    """Await ``call`` (an operator's change) and record it in the audit log with its outcome: the
    error code when it was refused, ``OK`` otherwise."""
    principal = info.context["principal"]
    rt = info.context["services"].runtime
    try:
        result = await call
    except DmsError as exc:
        await rt.audit.record(action, actor=principal.sub, roles=sorted(principal.roles), target=target,
                              source=info.context["source"], outcome=exc.code, detail=detail)
        raise
    await rt.audit.record(action, actor=principal.sub, roles=sorted(principal.roles), target=target,
                          source=info.context["source"], outcome="OK", detail=detail)
    return result
