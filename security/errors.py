"""Errors raised by the security layer.

All derive from :class:`graph_schema.errors.DmsError`, so ``server/errors.py`` maps them to GraphQL
``extensions.code`` in one place. Their client-visible messages are deliberately generic: the precise
cause of a refused token is kept in :attr:`Unauthenticated.reason` for server-side logs only, so a
client probing the validator learns nothing about which check failed.
"""

from __future__ import annotations

import math

from graph_schema.errors import DmsError

GENERIC_TOKEN_MESSAGE = "invalid or expired token"


class Unauthenticated(DmsError):
    """No credential, or one that did not validate. Send a fresh bearer token.

    ``reason`` is a short machine-readable cause (``expired``, ``bad_signature``, ...) for logs and
    metrics; it never appears in ``str(err)`` or in :meth:`extensions`.
    """

    code = "UNAUTHENTICATED"

    def __init__(self, reason: str, message: str = GENERIC_TOKEN_MESSAGE) -> None:
        super().__init__(message)
        self.reason = reason

    def __repr__(self) -> str:
        return f"Unauthenticated(reason={self.reason!r})"


class Forbidden(DmsError):
    """The identity is known but its roles (or feeder scope) do not grant the operation."""

    code = "FORBIDDEN"

    def __init__(self, message: str = "your roles do not permit this operation; ask a security "
                 "administrator (SECADM) for the role it needs") -> None:
        super().__init__(message)


class RateLimited(DmsError):
    """Too many requests from one identity or address; retry after ``retry_after_s`` seconds."""

    code = "RATE_LIMITED"

    def __init__(self, retry_after_s: float) -> None:
        self.retry_after_s = max(0.0, float(retry_after_s))
        super().__init__(
            f"too many requests; retry in {math.ceil(self.retry_after_s)} s",
        )

    def extensions(self) -> dict[str, object]:
        ext = super().extensions()
        ext["retryAfterS"] = math.ceil(self.retry_after_s)
        return ext


class AuditCorrupt(DmsError):
    """The audit log's newest entry cannot be read, so no entry can be chained onto it."""

    code = "AUDIT_CORRUPT"

