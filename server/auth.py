"""Authentication at the edge: bearer tokens on HTTP, ``connection_init`` on WebSocket.

The token is validated once per request (or once per WebSocket connection) by
:class:`security.tokens.TokenValidator`; the resulting principal (or the refusal) goes into the
GraphQL context, where every field's permission class decides. A refused token is logged with its
precise reason and the client address, recorded in the audit log as ``LOGIN_FAILED``, and answered
with a generic ``UNAUTHENTICATED``: nothing about which check failed is told to the client.

Refusals are audited through :class:`AuditThrottle`: one entry per client address (or subject) and
window, then one summary with the count, so a flood of bad tokens or denied calls cannot become a
flood of graph-store writes. Over HTTP the rate limiter runs before anything is recorded
(``server.middleware.GraphQLAuth``): a request refused with 429 costs no audit write.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from graph_schema.aio import cancel_and_wait
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


@dataclass
class _Window:
    started: float
    action: str
    actor: str | None
    roles: tuple[str, ...]
    target: str
    source: str
    outcome: str
    suppressed: int = 0
    detail: dict[str, Any] = field(default_factory=dict)


class AuditThrottle:
    """Records repeated refusals (``LOGIN_FAILED``, ``ACCESS_DENIED``) at a bounded rate.

    The first refusal of a key (action and client address or subject) in a window of ``window_s`` is
    recorded at once; the ones after it in the same window are counted, and recorded as one summary
    entry (``detail.repeated``: how many, ``detail.window_s``) when the window has passed: by the next
    refusal of that key, by a background flush, or at :meth:`aclose`. At most ``max_keys`` windows
    are open; beyond that the oldest is closed early (its summary written). So at most about
    ``2 * max_keys`` entries per window reach the audit log, whatever the request rate.
    """

    def __init__(self, audit: AuditLog | None, *, window_s: float = 60.0, max_keys: int = 1000,
                 clock: Callable[[], float] = time.monotonic, write_timeout_s: float = 5.0) -> None:
        self.audit = audit
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._timeout = write_timeout_s
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()  # oldest window first
        self._tasks: set[asyncio.Task[None]] = set()
        self._flusher: asyncio.Task[None] | None = None
        self.writes = 0  # entries handed to the audit log (for tests and metrics)

    async def note(self, action: str, *, key: str, actor: str | None, roles: Iterable[str] = (),
                   target: str = "", source: str = "", outcome: str = "REFUSED",
                   detail: Mapping[str, Any] | None = None) -> None:
        """Count one refusal; write it when it opens a window (awaited, so it is in the log on return)."""
        if self.audit is None:
            return
        now = self._clock()
        ripe = self._take_expired(now)
        wkey = (action, key)
        window = self._windows.get(wkey)
        opened: _Window | None = None
        if window is None:
            if len(self._windows) >= self.max_keys:
                ripe.append(self._windows.popitem(last=False)[1])
            opened = _Window(now, action, actor, tuple(roles), target, source, outcome, detail=dict(detail or {}))
            self._windows[wkey] = opened
        else:
            window.suppressed += 1
            window.detail = dict(detail or {})
            window.target, window.source = target, source
        for w in ripe:
            self._spawn(self._summary(w))
        if opened is not None:
            await self._write(opened.action, opened.actor, opened.roles, target, source, outcome,
                              dict(detail or {}))
        self._ensure_flusher()

    def note_nowait(self, action: str, **kwargs: Any) -> None:
        """:meth:`note` from synchronous code (needs a running loop); the write happens in a task."""
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to record with
            self._spawn(self.note(action, **kwargs))

    async def flush(self) -> None:
        """Write the summaries of every window with counted refusals, and wait for pending writes."""
        windows, self._windows = list(self._windows.values()), OrderedDict()
        for w in windows:
            self._spawn(self._summary(w))
        if self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        if self._flusher is not None:
            await cancel_and_wait(self._flusher)
            self._flusher = None
        await self.flush()

    # -- internals ----------------------------------------------------------------------------

    def _take_expired(self, now: float) -> list[_Window]:
        out = []
        while self._windows:
            wkey, w = next(iter(self._windows.items()))
            if now - w.started < self.window_s:
                break
            del self._windows[wkey]
            out.append(w)
        return out

    async def _summary(self, w: _Window) -> None:
        if w.suppressed:
            await self._write(w.action, w.actor, w.roles, w.target, w.source, w.outcome,
                              {**w.detail, "repeated": w.suppressed, "window_s": self.window_s})

    async def _write(self, action: str, actor: str | None, roles: Iterable[str], target: str, source: str,
                     outcome: str, detail: dict[str, Any]) -> None:
        if self.audit is None:
            return
        self.writes += 1
        try:
            await asyncio.wait_for(self.audit.record(action, actor=actor, roles=roles, target=target,
                                                     source=source, outcome=outcome, detail=detail),
                                   timeout=self._timeout)
        except Exception as exc:  # the refusal stands whether or not it could be recorded
            log.warning("audit entry %s from %s not recorded: %s", action, source, type(exc).__name__)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _ensure_flusher(self) -> None:
        if (self._flusher is None or self._flusher.done()) and any(w.suppressed for w in self._windows.values()):
            self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def _flush_loop(self) -> None:
        while any(w.suppressed for w in self._windows.values()):
            oldest = next(iter(self._windows.values()))
            await asyncio.sleep(max(0.05, oldest.started + self.window_s - self._clock()))
            for w in self._take_expired(self._clock()):
                await self._summary(w)


class Authenticator:
    def __init__(self, validator: TokenValidator, audit: AuditLog | AuditThrottle | None = None) -> None:
        self.validator = validator
        self.throttle = audit if isinstance(audit, AuditThrottle) else AuditThrottle(audit)

    @classmethod
    def from_settings(cls, settings: Settings, audit: AuditLog | AuditThrottle | None = None) -> Authenticator:
        return cls(TokenValidator.from_settings(settings), audit)

    async def authenticate(self, token: str | None, *, source: str, channel: str = "http",
                           record: bool = True) -> AuthResult:
        """Validate ``token``. A refused token is recorded (throttled) unless ``record`` is false: the
        caller then rate-limits first and calls :meth:`record_failure` for what it lets through."""
        if token is None:
            return AuthResult(None, Unauthenticated("missing", "authentication required; send a bearer token"))
        try:
            return AuthResult(await self.validator.validate(token), None)
        except Unauthenticated as exc:
            if record:
                await self.record_failure(exc, source=source, channel=channel)
            return AuthResult(None, exc)

    async def record_failure(self, error: Unauthenticated, *, source: str, channel: str) -> None:
        log.warning("login failed over %s from %s: %s", channel, source, error.reason)
        await self.throttle.note(AuditAction.LOGIN_FAILED, key=f"ip:{source}", actor=None, target=channel,
                                 source=source, outcome="REFUSED", detail={"reason": error.reason})

    async def aclose(self) -> None:
        await self.throttle.aclose()
        await self.validator.aclose()
