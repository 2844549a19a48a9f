"""Authentication at the edge: bearer tokens on HTTP, ``connection_init`` on WebSocket.

The token is validated once per request (or once per WebSocket connection) by
:class:`security.tokens.TokenValidator`; the resulting principal (or the refusal) goes into the
GraphQL context, where every field's permission class decides. A refused token is logged with its
precise reason and the client address, recorded in the audit log as ``LOGIN_FAILED``, and answered
with a generic ``UNAUTHENTICATED``: nothing about which check failed is told to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from security.audit import AuditAction, AuditLog
from security.errors import Unauthenticated
from security.tokens import Principal, TokenValidator
from server.settings import Settings

log = logging.getLogger("dms.auth")


@dataclass(frozen=True, slots=True)
class AuthResult:
    principal: Principal | None
    error: Unauthenticated | None


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer":
        return ""  # present but not a bearer token: refused as malformed
    return token.strip()


class Authenticator:
    def __init__(self, validator: TokenValidator, audit: AuditLog | None = None) -> None:
        self.validator = validator
        self.audit = audit

    @classmethod
    def from_settings(cls, settings: Settings, audit: AuditLog | None = None) -> Authenticator:
        return cls(TokenValidator.from_settings(settings), audit)

    async def authenticate(self, token: str | None, *, source: str, channel: str = "http") -> AuthResult:
        if token is None:
            return AuthResult(None, Unauthenticated("missing", "authentication required; send a bearer token"))
        try:
            return AuthResult(await self.validator.validate(token), None)
        except Unauthenticated as exc:
            log.warning("login failed over %s from %s: %s", channel, source, exc.reason)
            await self._audit_failure(exc.reason, source, channel)
            return AuthResult(None, exc)

    async def _audit_failure(self, reason: str, source: str, channel: str) -> None:
        if self.audit is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                self.audit.record(AuditAction.LOGIN_FAILED, actor=None, target=channel, source=source,
                                  outcome="REFUSED", detail={"reason": reason}),
                timeout=5,
            )

    async def aclose(self) -> None:
        await self.validator.aclose()
