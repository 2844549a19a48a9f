"""Who may operate which device of one feeder, decided in one place.

Operators come first: a device tagged against operation, selected by an operator, or with an
operator's command in flight is refused to every application, and the refusal names who holds it.
Among applications, the stronger priority wins (FDIR before the optimisers: Volt/VAR, DER
management, demand response): a weaker application's claim that is not yet in flight is
withdrawn when a stronger one asks, while a command already sent is never recalled. Each refusal
raises :class:`DeviceHeld` (``DEVICE_HELD``) with the holder.

Pure: no awaits, no Ray. The control room asks :meth:`Arbiter.acquire` before an application's
select-before-operate and releases the claim when the command's outcome is known.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import IntEnum

from actors.cores.control import ControlError, Selection, Tag


class Priority(IntEnum):
    """Smaller is stronger."""

    OPERATOR = 0
    FDIR = 10
    OPTIMISER = 20


class DeviceHeld(ControlError):
    """An application asked for a device that someone with precedence holds."""

    code = "DEVICE_HELD"

    def __init__(self, device_id: str, held_by: str, why: str) -> None:
        self.held_by = held_by
        super().__init__(
            f"device {device_id!r} is held by {held_by} ({why}); the request was refused and nothing was "
            f"sent. It is free once {held_by} is done",
            element_id=device_id,
        )


@dataclass(frozen=True, slots=True)
class Claim:
    device_id: str
    holder: str  # an application's name
    priority: Priority
    in_flight: bool  # a command was sent for it: it is never withdrawn
    since: float  # monotonic seconds


class Arbiter:
    def __init__(
        self,
        *,
        tags: Callable[[str], Iterable[Tag]],
        selections: Callable[[str], Iterable[Selection]],
        application_names: Callable[[], Iterable[str]],
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        """``tags(device)``, ``selections(device)``: what the control core holds now;
        ``application_names()``: identities that are applications (any other selector is a person)."""
        self._tags = tags
        self._selections = selections
        self._apps = application_names
        self._now = now
        self._claims: dict[str, Claim] = {}
        self._operator_in_flight: dict[str, str] = {}  # device -> operator with a command sent

    def acquire(self, device_id: str, holder: str, priority: Priority) -> Claim:
        """Claim ``device_id`` for application ``holder``, or raise :class:`DeviceHeld`."""
        blocking = [t for t in self._tags(device_id) if t.blocks_control]
        if blocking:
            t = blocking[0]
            raise DeviceHeld(device_id, t.set_by, f"tagged {t.kind}: {t.reason}")
        operator = self._operator_in_flight.get(device_id)
        if operator is not None:
            raise DeviceHeld(device_id, operator, "an operator's command is in flight")
        apps = set(self._apps())
        for sel in self._selections(device_id):
            if sel.operator not in apps:
                raise DeviceHeld(device_id, sel.operator, "selected by an operator")
        held = self._claims.get(device_id)
        if held is not None and held.in_flight:  # its holder's too: re-claiming must not make it withdrawable
            raise DeviceHeld(device_id, held.holder, "its command is in flight")
        if held is not None and held.holder != holder:
            if held.priority <= priority:
                raise DeviceHeld(device_id, held.holder, f"claimed with priority {held.priority.name}")
        claim = Claim(device_id, holder, priority, False, self._now())
        self._claims[device_id] = claim
        return claim

    def sent(self, device_id: str, holder: str) -> None:
        """The holder's command went out: its claim can no longer be withdrawn."""
        held = self._claims.get(device_id)
        if held is not None and held.holder == holder:
            self._claims[device_id] = Claim(device_id, holder, held.priority, True, held.since)

    def release(self, device_id: str, holder: str) -> None:
        held = self._claims.get(device_id)
        if held is not None and held.holder == holder:
            del self._claims[device_id]

    def operator_sending(self, device_id: str, operator: str) -> None:
        """An operator's operate is being sent: applications' claims on the device yield now."""
        self._operator_in_flight[device_id] = operator
        held = self._claims.get(device_id)
        if held is not None and not held.in_flight:
            del self._claims[device_id]

    def operator_done(self, device_id: str) -> None:
        self._operator_in_flight.pop(device_id, None)

    def operator_selecting(self, device_id: str) -> str | None:
        """An operator selects ``device_id``: a claim not in flight is withdrawn (None returned); the
        name of an application whose command is in flight is returned (the select must be refused)."""
        held = self._claims.get(device_id)
        if held is None:
            return None
        if held.in_flight:
            return held.holder
        del self._claims[device_id]
        return None

    def holder(self, device_id: str) -> str | None:
        if device_id in self._operator_in_flight:
            return self._operator_in_flight[device_id]
        held = self._claims.get(device_id)
        return held.holder if held is not None else None

    def claims(self) -> list[Claim]:
        return sorted(self._claims.values(), key=lambda c: c.device_id)
