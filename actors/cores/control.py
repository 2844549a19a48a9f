"""Select-before-operate control of one feeder's devices: a pure core, no I/O.

It implements the SBO semantics of IEC 61850-7-2 (control model "SBO with enhanced security",
clause 20) and DNP3 (IEEE 1815, Select/Operate, function codes 3 and 4):

* ``select`` reserves one device for one operator for ``select_timeout_s``; the reservation is
  refused while another operator holds a live selection on the device (IEC 61850 AddCause
  ``Object-already-selected``), when the device carries a blocking tag, and when an interlock
  refuses the action. The same operator selecting again replaces their own selection.
* ``operate`` must name the selection and carry exactly the selected device, action and value
  (DNP3: an Operate that does not match its Select is refused with ``NO_SELECT``, and the select is
  void). Every check of ``select`` runs again, because the network may have changed in between.
  A selection is consumed by the first operate of its owner, whatever the outcome: it can be used
  once, and a refused operate means "select again" (IEC 61850 returns to *Unselected*).
* A selection is live in ``[created_at, expires_at)``: at ``expires_at`` exactly it has expired.
* ``cancel`` releases a selection; ``expire`` sweeps stale ones (called periodically).

Sending the command to the field, waiting for the confirmation by telemetry (compare the reported
position with :func:`expected_state`) and recording the outcome are the feeder actor's job: it
sends an operate ONCE and never retries it (raising :class:`DeviceUnreachable` or
:class:`NotConfirmed`, defined here so that every control refusal lives in one module).

Tags (safety documents of a switching programme, cf. OSHA 1910.269(d) / the utility's lockout-tagout
rules): ``DO_NOT_OPERATE``, ``HOLD`` and ``GROUND`` block every control of the device; ``WARNING`` is
information shown to the operator and does not block. Setting a blocking tag revokes live
selections on the device; an operate of a revoked selection answers :class:`DeviceTagged`.

The clock is injected (``now``: monotonic seconds; ``utc_now``: the wall clock shown to clients) so
that every rule is deterministic under test.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from actors.cores.topology import TopologyGraph, TopologyResult
from graph_schema.errors import BadInput, DmsError, NotFound
from graph_schema.model import Capacitor, Der, DerKind, ElementType, Feeder, Switch, SwitchKind, Transformer

__all__ = [
    "BadAction",
    "ControlAction",
    "ControlCore",
    "ControlError",
    "DeviceTagged",
    "DeviceUnreachable",
    "Interlock",
    "NoSelection",
    "NotConfirmed",
    "NotFound",
    "ParametersDiffer",
    "SelectedByOther",
    "Selection",
    "SelectionExpired",
    "Tag",
    "TagHeldByOther",
    "TagKind",
    "check_interlocks",
    "expected_state",
    "reconciled_status",
]


class ControlAction(StrEnum):
    OPEN = "OPEN"  # switch: open; capacitor bank: switch out
    CLOSE = "CLOSE"  # switch: close; capacitor bank: switch in
    RAISE = "RAISE"  # tap changer: one step up; multi-step capacitor bank: one more step in
    LOWER = "LOWER"  # tap changer: one step down; multi-step capacitor bank: one step out
    SET = "SET"  # tap changer: tap position; capacitor: steps in service; DER: p_mw set point
    # DER commands of the DER application (SunSpec, actors/apps/der_app.py): sent through the same
    # select-before-operate and recorded like any control, so the history carries them; an operator
    # sends them with setDerControl / releaseCurtailment, not selectControl.
    SET_DER_Q = "SET_DER_Q"
    CURTAIL_DER_P = "CURTAIL_DER_P"
    RELEASE_DER_P = "RELEASE_DER_P"
    DER_CONTROL = "DER_CONTROL"
    STORAGE_SCHEDULE = "STORAGE_SCHEDULE"
    # A local controller's setting (a bank's switch-in/out voltage, a tap changer's band) pushed by
    # Volt/VAR as the field's fallback: arbitrated and recorded like a control, not a switching
    # operation.
    SET_LOCAL_SETTING = "SET_LOCAL_SETTING"


class TagKind(StrEnum):
    DO_NOT_OPERATE = "DO_NOT_OPERATE"
    HOLD = "HOLD"  # hot-line / work hold: no reclosing, no operation
    WARNING = "WARNING"  # information only
    GROUND = "GROUND"  # portable grounds applied at this device

    @property
    def blocks_control(self) -> bool:
        return self is not TagKind.WARNING


def expected_state(action: ControlAction | str) -> bool | None:
    """The ``is_open`` telemetry must report after ``action`` succeeded (None: not a switch position)."""
    action = ControlAction(action)
    if action is ControlAction.OPEN:
        return True
    if action is ControlAction.CLOSE:
        return False
    return None


# -- errors ----------------------------------------------------------------------------------------


class ControlError(DmsError):
    """Root of the control refusals."""

    code = "CONTROL_ERROR"


class SelectedByOther(ControlError):
    """Another operator holds the device (or the selection named belongs to someone else)."""

    code = "SELECTED_BY_OTHER"

    def __init__(self, device_id: str, until: datetime | None, *, held_by: str | None = None) -> None:
        self.held_by = held_by  # for the audit log; not put in the message
        self.until = until
        when = f" until {until.isoformat(timespec='seconds')}" if until is not None else ""
        super().__init__(
            f"device {device_id!r} is selected by another operator{when}; wait for that selection to "
            f"be operated, cancelled or expire, then select again",
            element_id=device_id,
        )


class SelectionExpired(ControlError):
    code = "SELECTION_EXPIRED"

    def __init__(self, device_id: str, timeout_s: float) -> None:
        super().__init__(
            f"the selection of {device_id!r} expired (selections live {timeout_s:g} s); nothing was sent, "
            f"select the device again and operate within the time",
            element_id=device_id,
        )


class ParametersDiffer(ControlError):
    code = "PARAMETERS_DIFFER"

    def __init__(self, selection: Selection, device_id: str, action: str, value: float | None) -> None:
        super().__init__(
            f"operate ({device_id!r}, {action}, value={value}) does not match the selection "
            f"({selection.device_id!r}, {selection.action}, value={selection.value}); nothing was sent and "
            f"the selection is void: select again and operate with the same device, action and value",
            element_id=selection.device_id,
        )


class DeviceTagged(ControlError):
    code = "DEVICE_TAGGED"

    def __init__(self, device_id: str, tags: Iterable[Tag]) -> None:
        self.tags = tuple(tags)
        if not self.tags:
            super().__init__(
                f"device {device_id!r} was tagged after it was selected and the selection was revoked; "
                f"check its tags, then select again",
                element_id=device_id,
            )
            return
        listed = "; ".join(f"{t.kind} set by {t.set_by} ({t.reason})" for t in self.tags)
        super().__init__(
            f"device {device_id!r} carries blocking tag(s): {listed}; it cannot be operated until the "
            f"tag holder (or a SUPERVISOR) removes them",
            element_id=device_id,
        )


class TagHeldByOther(ControlError):
    """Only the tag's holder, or a caller with the ``OVERRIDE_TAG`` permission, removes a tag."""

    code = "TAG_HELD_BY_OTHER"

    def __init__(self, tag: Tag) -> None:
        super().__init__(
            f"tag {tag.id!r} ({tag.kind}) on {tag.device_id!r} is held by {tag.set_by}; only its holder or a "
            f"SUPERVISOR (permission OVERRIDE_TAG, after confirming the work is clear) may remove it",
            element_id=tag.device_id,
        )


class Interlock(ControlError):
    code = "INTERLOCK"

    def __init__(self, device_id: str, reason: str) -> None:
        self.reason = reason
        super().__init__(f"interlock refused control of {device_id!r}: {reason}", element_id=device_id)


class NoSelection(ControlError):
    code = "NO_SELECTION"

    def __init__(self) -> None:
        super().__init__(
            "no live selection with this id (unknown, already operated or cancelled); select the device first"
        )


class DeviceUnreachable(ControlError):
    """Raised by the actor: the command could not be delivered. It was not retried."""

    code = "DEVICE_UNREACHABLE"

    def __init__(self, device_id: str, detail: str = "") -> None:
        extra = f" ({detail})" if detail else ""
        super().__init__(
            f"device {device_id!r} could not be reached{extra}; the command was not retried. Check the "
            f"communication status and the device position before selecting again",
            element_id=device_id,
        )


class NotConfirmed(ControlError):
    """Raised by the actor: the command was sent but telemetry did not confirm it in time."""

    code = "NOT_CONFIRMED"

    def __init__(self, device_id: str, action: str, timeout_s: float) -> None:
        super().__init__(
            f"{action} of {device_id!r} was sent but not confirmed by telemetry within {timeout_s:g} s; "
            f"the command was not resent. Verify the device position (field crew or a fresh scan) "
            f"before any further control",
            element_id=device_id,
        )


class BadAction(BadInput):
    """An action or value the device cannot take (code ``BAD_INPUT``)."""

    def __init__(self, device_id: str, problem: str) -> None:
        super().__init__(f"cannot control {device_id!r}: {problem}", element_id=device_id)


# -- records ---------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Selection:
    id: str  # secrets.token_urlsafe: unguessable; never put it in a message or a log
    device_id: str
    action: ControlAction
    value: float | None
    operator: str  # the token's ``sub``
    created_at: float  # monotonic seconds
    expires_at: float  # monotonic seconds; expired when now >= expires_at
    expires_at_utc: datetime  # for clients

    def __repr__(self) -> str:  # keep the token out of logs
        return (f"Selection(device_id={self.device_id!r}, action={self.action}, value={self.value!r}, "
                f"operator={self.operator!r}, expires_at_utc={self.expires_at_utc.isoformat()})")


@dataclass(frozen=True, slots=True)
class Tag:
    id: str
    device_id: str
    kind: TagKind
    reason: str
    set_by: str
    set_at: datetime  # UTC

    @property
    def blocks_control(self) -> bool:
        return TagKind(self.kind).blocks_control


# -- interlocks ------------------------------------------------------------------------------------


def _live_elements(graph: TopologyGraph, topo: TopologyResult, states: Mapping[str, bool]) -> set[str]:
    """Buses, lines and transformers at voltage: an energized bus, and every line or transformer
    reached from an energized end through that end's closed switches (a line up to an open switch
    at its far end is live)."""
    feeder = graph.feeder
    live: set[str] = set(topo.energized_bus_ids)
    default_open = {s.id: s.is_open for s in feeder.switches}
    bus_of = {s.id: s.bus_id for s in feeder.switches}
    branches = [(ln.id, ln.from_bus_id, ln.to_bus_id, ln.in_service) for ln in feeder.lines]
    branches += [(t.id, t.hv_bus_id, t.lv_bus_id, t.in_service) for t in feeder.transformers]
    for element_id, a, b, in_service in branches:
        if not in_service:
            continue
        for end in (a, b):
            if end not in topo.energized_bus_ids:
                continue
            end_switches = [sw for sw in graph.switches_on(element_id) if bus_of[sw] == end]
            if all(not states.get(sw, default_open[sw]) for sw in end_switches):
                live.add(element_id)
                break
    return live


def check_interlocks(
    feeder: Feeder | TopologyGraph,
    device_id: str,
    action: ControlAction | str,
    switch_states: Mapping[str, bool],
    *,
    faulted_elements: Collection[str] = frozenset(),
    grounded_elements: Collection[str] = frozenset(),
    allow_parallel_sources: bool = False,
    allow_loops: bool = False,
) -> str | None:
    """The reason an action must be refused, or None. Pure; only switches have topology interlocks.

    ``switch_states`` maps switch id -> ``is_open`` (missing switches keep the model's state);
    ``faulted_elements`` are ids of lines, transformers or buses known to be faulted (fault location
    not yet repaired); ``grounded_elements`` are ids of buses, lines or transformers with grounds
    applied. Rules, in order:

    1. CLOSE must not energize a faulted element ("closing onto a fault": switching practice forbids
       re-energizing a section before the fault is isolated and repaired; FDIR isolates first).
    2. CLOSE must not energize a grounded element (energizing grounds is a bolted fault on a work
       site; lockout-tagout: grounds are removed and the clearance released first).
    3. CLOSE must not tie two different sources unless ``allow_parallel_sources`` (a closed-loop
       transfer between substations needs matched voltage and phase angle and protection settings
       that allow it; the default is open-transition transfer: open first, then close).
    4. CLOSE must not close a loop within one energized area unless ``allow_loops`` (distribution
       feeders are operated radially: protection coordination assumes one source path).
    5. A DISCONNECTOR must not OPEN while it carries load, i.e. while buses downstream of it are
       energized through it, nor CLOSE when that would energize buses (IEC 62271-102: a
       disconnector has no load breaking or making capacity; the load-break device opens first and
       closes last). :class:`ControlCore` already refuses remote control of disconnectors (they have
       no remote mechanism in this model); the rule serves switching orders and restoration plans.

    A CLOSE of a switch already closed changes nothing and is not refused here.
    """
    graph = feeder if isinstance(feeder, TopologyGraph) else TopologyGraph(feeder)
    model = graph.feeder
    action = ControlAction(action)
    try:
        sw = model.switch(device_id)
    except KeyError:
        return None
    states = dict(switch_states)
    before = graph.process(states)
    if action is ControlAction.OPEN:
        if sw.kind is SwitchKind.DISCONNECTOR and graph.downstream_buses(before, sw.id):
            return (f"disconnector {sw.id} cannot break load current; open the upstream breaker "
                    f"(or load-break switch) first")
        return None
    if action is not ControlAction.CLOSE:
        return None

    after_states = {**states, sw.id: False}
    after = graph.process(after_states)
    newly_live = _live_elements(graph, after, after_states) - _live_elements(graph, before, states)

    faulted = sorted(newly_live & set(faulted_elements))
    if faulted:
        what = ", ".join(_describe(model, e) for e in faulted)
        return (f"closing onto a faulted section ({what}) through {sw.id}; isolate and repair the "
                f"fault, then restore")
    grounded = sorted(newly_live & set(grounded_elements))
    if grounded:
        what = ", ".join(_describe(model, e) for e in grounded)
        return (f"closing onto a grounded section ({what}) through {sw.id}; remove the grounds and "
                f"release the clearance first")

    if not allow_parallel_sources:
        for group in after.paralleled_sources:
            if any(group <= old for old in before.paralleled_sources):
                continue
            # Two sources of this group that were apart before the close.
            owner = {s: next((g for g in before.paralleled_sources if s in g), frozenset({s})) for s in group}
            ordered = sorted(group)
            first = ordered[0]
            second = next(s for s in ordered if owner[s] != owner[first])
            return (f"paralleling sources {first} and {second} by closing {sw.id} is not allowed on this "
                    f"feeder; transfer load open-transition (open the other tie point first)")
    if not allow_loops and len(after.loops) > len(before.loops) and sw.bus_id in after.energized_bus_ids:
        return f"closing {sw.id} would create a loop (meshed operation not allowed on this feeder)"

    if sw.kind is SwitchKind.DISCONNECTOR and after.energized_bus_ids - before.energized_bus_ids:
        return (f"disconnector {sw.id} cannot make load current; close it with the downstream side dead, "
                f"then close the breaker")
    return None


def _describe(feeder: Feeder, element_id: str) -> str:
    if any(ln.id == element_id for ln in feeder.lines):
        return f"line {element_id}"
    if any(t.id == element_id for t in feeder.transformers):
        return f"transformer {element_id}"
    return f"bus {element_id}"


# -- the core --------------------------------------------------------------------------------------

_Device = Switch | Transformer | Capacitor | Der


def _utc_now() -> datetime:
    return datetime.now(UTC)


class ControlCore:
    """Selections and tags of one feeder. Not thread-safe: the actor calls it from its event loop."""

    def __init__(
        self,
        feeder: Feeder,
        *,
        select_timeout_s: float = 10.0,
        now: Callable[[], float] = time.monotonic,
        utc_now: Callable[[], datetime] = _utc_now,
        allow_parallel_sources: bool = False,
        allow_loops: bool = False,
        graph: TopologyGraph | None = None,
    ) -> None:
        if not (select_timeout_s > 0 and math.isfinite(select_timeout_s)):
            raise BadInput(f"select_timeout_s={select_timeout_s!r}: use a positive number of seconds")
        self.feeder = feeder
        self.select_timeout_s = float(select_timeout_s)
        self.allow_parallel_sources = allow_parallel_sources
        self.allow_loops = allow_loops
        self._now = now
        self._utc_now = utc_now
        self._graph = graph if graph is not None else TopologyGraph(feeder)
        self._devices: dict[str, _Device] = {}
        for group in (feeder.switches, feeder.transformers, feeder.capacitors, feeder.ders):
            for d in group:
                self._devices[d.id] = d
        self._other_ids = {str(getattr(e, "id", "")) for e in feeder.elements()}
        self._selections: dict[str, Selection] = {}  # selection id -> selection
        # Selections revoked by a blocking tag: id -> (expires_at, device id), so that their operate
        # answers DEVICE_TAGGED rather than NO_SELECTION. Pruned by expire().
        self._revoked: dict[str, tuple[float, str]] = {}
        self._tags: dict[str, Tag] = {}

    # -- selections --------------------------------------------------------------------------------

    def select(
        self,
        device_id: str,
        action: ControlAction | str,
        value: float | None,
        operator: str,
        *,
        switch_states: Mapping[str, bool],
        faulted_elements: Collection[str] = frozenset(),
        grounded_elements: Collection[str] = frozenset(),
    ) -> Selection:
        action = self._validate(device_id, action, value, operator)
        self._refuse_if_tagged(device_id)
        now = self._now()
        for sel in list(self._selections.values()):
            if sel.device_id != device_id:
                continue
            if now >= sel.expires_at:
                del self._selections[sel.id]
            elif sel.operator != operator:
                raise SelectedByOther(device_id, sel.expires_at_utc, held_by=sel.operator)
        self._refuse_if_interlocked(device_id, action, switch_states, faulted_elements, grounded_elements)
        for sel in list(self._selections.values()):  # the same operator reselecting replaces theirs
            if sel.device_id == device_id:
                del self._selections[sel.id]
        selection = Selection(
            id=secrets.token_urlsafe(24),
            device_id=device_id,
            action=action,
            value=None if value is None else float(value),
            operator=operator,
            created_at=now,
            expires_at=now + self.select_timeout_s,
            expires_at_utc=self._utc_now() + timedelta(seconds=self.select_timeout_s),
        )
        self._selections[selection.id] = selection
        return selection

    def operate(
        self,
        selection_id: str,
        device_id: str,
        action: ControlAction | str,
        value: float | None,
        operator: str,
        *,
        switch_states: Mapping[str, bool],
        faulted_elements: Collection[str] = frozenset(),
        grounded_elements: Collection[str] = frozenset(),
    ) -> Selection:
        """Consume the selection and return it; the caller then sends the command once."""
        sel = self._selections.get(selection_id)
        if sel is None:
            revoked = self._revoked.get(selection_id)
            if revoked is not None and revoked[1] == device_id:
                del self._revoked[selection_id]
                raise DeviceTagged(revoked[1], [t for t in self.tags(revoked[1]) if t.blocks_control])
            raise NoSelection()
        if self._now() >= sel.expires_at:
            del self._selections[selection_id]
            raise SelectionExpired(sel.device_id, self.select_timeout_s)
        if sel.operator != operator:
            raise SelectedByOther(sel.device_id, sel.expires_at_utc, held_by=sel.operator)
        # From here on the owner has used the selection: it is consumed whatever the outcome.
        del self._selections[selection_id]
        try:
            same_action = ControlAction(action) is sel.action
        except ValueError:
            same_action = False
        if device_id != sel.device_id or not same_action or not _same_value(value, sel.value):
            raise ParametersDiffer(sel, device_id, str(action), value)
        self._refuse_if_tagged(device_id)
        self._refuse_if_interlocked(device_id, sel.action, switch_states, faulted_elements, grounded_elements)
        return sel

    def cancel(self, selection_id: str, operator: str) -> Selection:
        """Cancel a live selection and return it. An expired one is dropped and refused
        ``SELECTION_EXPIRED`` (there is nothing left to cancel)."""
        sel = self._selections.get(selection_id)
        if sel is None:
            raise NoSelection()
        if sel.operator != operator:
            raise SelectedByOther(sel.device_id, sel.expires_at_utc, held_by=sel.operator)
        del self._selections[selection_id]
        if self._now() >= sel.expires_at:
            raise SelectionExpired(sel.device_id, self.select_timeout_s)
        return sel

    def expire(self) -> list[Selection]:
        """Drop and return the selections that have expired (now >= expires_at)."""
        now = self._now()
        gone = [s for s in self._selections.values() if now >= s.expires_at]
        for s in gone:
            del self._selections[s.id]
        for sid, (expires_at, _) in list(self._revoked.items()):
            if now >= expires_at:
                del self._revoked[sid]
        return gone

    def device(self, device_id: str) -> _Device | None:
        """The controllable device ``device_id`` (None when the feeder has none of that id)."""
        return self._devices.get(device_id)

    def device_ids(self) -> list[str]:
        return sorted(self._devices)

    def selections(self, device_id: str | None = None) -> list[Selection]:
        """Live selections (expired ones are left out, even before ``expire`` swept them)."""
        now = self._now()
        return [s for s in self._selections.values()
                if now < s.expires_at and (device_id is None or s.device_id == device_id)]

    # -- tags --------------------------------------------------------------------------------------

    def set_tag(self, device_id: str, kind: TagKind | str, reason: str, set_by: str) -> Tag:
        self._device(device_id)
        try:
            kind = TagKind(kind)
        except ValueError:
            raise BadAction(device_id, f"unknown tag kind {kind!r}; use one of "
                                       f"{', '.join(TagKind)}") from None
        if not reason.strip():
            raise BadAction(device_id, "a tag needs a reason (the work or the hazard it protects)")
        if not set_by.strip():
            raise BadAction(device_id, "a tag needs the name of who sets it")
        tag = Tag(id=f"tag-{secrets.token_urlsafe(9)}", device_id=device_id, kind=kind, reason=reason,
                  set_by=set_by, set_at=self._utc_now())
        self._tags[tag.id] = tag
        if kind.blocks_control:
            for sel in [s for s in self._selections.values() if s.device_id == device_id]:
                del self._selections[sel.id]
                self._revoked[sel.id] = (sel.expires_at, device_id)
        return tag

    def remove_tag(self, tag_id: str, removed_by: str, *, may_override: bool = False) -> Tag:
        """Remove a tag. Lockout-tagout rule (OSHA 1910.269(d)(2)(v)): the holder (``set_by``) removes
        their own tag; anyone else only with ``may_override`` (the SUPERVISOR's ``OVERRIDE_TAG``),
        otherwise :class:`TagHeldByOther`."""
        tag = self._tags.get(tag_id)
        if tag is None:
            raise NotFound(f"tag {tag_id!r} not found (already removed?); list the device's tags for "
                           f"their ids", element_id=tag_id)
        if not removed_by.strip():
            raise BadAction(tag.device_id, "removing a tag needs the name of who removes it")
        if removed_by != tag.set_by and not may_override:
            raise TagHeldByOther(tag)
        del self._tags[tag_id]
        return tag

    def tags(self, device_id: str | None = None) -> list[Tag]:
        """Tags by time set (then in the order they were set or loaded)."""
        return sorted((t for t in self._tags.values() if device_id is None or t.device_id == device_id),
                      key=lambda t: t.set_at)

    def load_tags(self, tags: Iterable[Tag]) -> None:
        """Replace the tags held with those recorded in the store (after a restart)."""
        self._tags = {t.id: t for t in tags}

    # -- checks ------------------------------------------------------------------------------------

    def _device(self, device_id: str) -> _Device:
        device = self._devices.get(device_id)
        if device is not None:
            return device
        if device_id in self._other_ids:
            raise BadAction(device_id, "it is not a controllable device (switches, tap changers, "
                                       "capacitor banks and DERs are)")
        raise NotFound(f"device {device_id!r} is not on feeder {self.feeder.id!r}; query the feeder's "
                       f"switches for their ids", element_id=device_id)

    def _validate(self, device_id: str, action: ControlAction | str, value: float | None,
                  operator: str) -> ControlAction:
        device = self._device(device_id)
        if not isinstance(operator, str) or not operator.strip():
            raise BadAction(device_id, "the operator (token subject) is missing")
        try:
            act = ControlAction(action)
        except ValueError:
            raise BadAction(device_id, f"unknown action {action!r}; use one of "
                                       f"{', '.join(ControlAction)}") from None
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)
                                  or not math.isfinite(value)):
            raise BadAction(device_id, f"value {value!r} is not a finite number")

        def need(allowed: Collection[ControlAction], what: str) -> None:
            if act not in allowed:
                raise BadAction(device_id, f"{act} does not apply to {what}; use {' or '.join(allowed)}")

        def no_value() -> None:
            if value is not None:
                raise BadAction(device_id, f"{act} takes no value; leave value empty")

        def int_value(lo: int, hi: int, what: str) -> None:
            if value is None:
                raise BadAction(device_id, f"SET needs a value: {what} between {lo} and {hi}")
            if value != int(value) or not lo <= value <= hi:
                raise BadAction(device_id, f"value {value:g} is out of range: {what} must be an integer "
                                           f"between {lo} and {hi}")

        if isinstance(device, Switch):
            need((ControlAction.OPEN, ControlAction.CLOSE), f"a switch ({device.kind})")
            if not device.kind.remote_controllable:
                raise BadAction(device_id, f"a {device.kind} has no remote operating mechanism; "
                                           f"dispatch a field crew with a switching order")
            no_value()
        elif isinstance(device, Transformer):
            if not device.has_tap_changer:
                raise BadAction(device_id, "this transformer has no tap changer to control")
            need((ControlAction.RAISE, ControlAction.LOWER, ControlAction.SET), "a tap changer")
            if act is ControlAction.SET:
                assert device.tap_min is not None and device.tap_max is not None
                int_value(min(device.tap_min, device.tap_max), max(device.tap_min, device.tap_max),
                          "the tap position")
            else:
                no_value()
        elif isinstance(device, Capacitor):
            allowed = [ControlAction.OPEN, ControlAction.CLOSE, ControlAction.SET]
            if device.steps > 1:
                allowed += [ControlAction.RAISE, ControlAction.LOWER]
            need(allowed, f"a capacitor bank of {device.steps} step(s)")
            if act is ControlAction.SET:
                int_value(0, device.steps, "the number of steps in service")
            else:
                no_value()
        else:
            need((ControlAction.SET,), "a DER (its active power set point)")
            lo = -device.sn_mva if device.kind is DerKind.STORAGE else 0.0
            if value is None or not lo <= value <= device.sn_mva:
                raise BadAction(device_id, f"SET needs a p_mw set point between {lo:g} and "
                                           f"{device.sn_mva:g} MW")
        return act

    def _refuse_if_tagged(self, device_id: str) -> None:
        blocking = [t for t in self.tags(device_id) if t.blocks_control]
        if blocking:
            raise DeviceTagged(device_id, blocking)

    def _refuse_if_interlocked(self, device_id: str, action: ControlAction, switch_states: Mapping[str, bool],
                               faulted_elements: Collection[str], grounded_elements: Collection[str]) -> None:
        grounded = set(grounded_elements)
        for tag in self._tags.values():
            if tag.kind is TagKind.GROUND:
                device = self._devices.get(tag.device_id)
                if isinstance(device, Switch):
                    grounded.add(device.bus_id)
                    if device.element_type is not ElementType.BUS:
                        grounded.add(device.element_id)
        reason = check_interlocks(
            self._graph, device_id, action, switch_states,
            faulted_elements=faulted_elements, grounded_elements=grounded,
            allow_parallel_sources=self.allow_parallel_sources, allow_loops=self.allow_loops,
        )
        if reason is not None:
            raise Interlock(device_id, reason)


def reconciled_status(action: ControlAction | str, value: float | None, reported: float | bool | None,
                      reported_tap_pos: float | None = None) -> tuple[str, str]:
    """(status, reason) of a control intent found without an outcome after a restart, judged by
    what the field reports now: ``CONFIRMED_AFTER_RESTART`` when the device is where the control
    wanted it, ``NOT_CONFIRMED`` otherwise (or when telemetry cannot tell). ``reported`` is the
    device's ``is_open`` status (switches, capacitor banks); ``reported_tap_pos`` a tap position."""
    try:
        act = ControlAction(action)
    except ValueError:
        return "NOT_CONFIRMED", f"unknown action {action!r}"
    want_open = expected_state(act)
    if want_open is not None:
        if reported is None:
            return "NOT_CONFIRMED", "no status telemetry to verify it; verify the device position"
        if bool(reported) == want_open:
            return "CONFIRMED_AFTER_RESTART", f"the field reports it {'open' if want_open else 'closed'}"
        return "NOT_CONFIRMED", f"the field reports it {'open' if reported else 'closed'}, not as intended"
    if act is ControlAction.SET and reported_tap_pos is not None and value is not None:
        if float(reported_tap_pos) == float(value):
            return "CONFIRMED_AFTER_RESTART", f"the field reports tap position {reported_tap_pos:g}"
        return "NOT_CONFIRMED", f"the field reports tap position {reported_tap_pos:g}, not {value:g}"
    return "NOT_CONFIRMED", "telemetry cannot tell whether it took effect; verify the device"


def _same_value(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or not isinstance(a, int | float):
        return False
    return float(a) == float(b)
