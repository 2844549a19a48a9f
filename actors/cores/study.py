"""Study mode: a frozen copy of a feeder's state plus changes, solved apart from the live system.

A study's *base* is a :class:`~graph_schema.model.Feeder` whose recorded state is the operating
point: :func:`snapshot` makes one from a model and a state (switch positions, load values, a load
scale), whether that state is live (the actor's snapshot) or rebuilt for a past time. The
*changes* (:class:`StudyChange`) make a second feeder with :func:`apply_changes`; both are solved
with the same power flow core as the live feeder and compared with :func:`diff`. Nothing here
touches live state or the field: the inputs are frozen values and the outputs are new ones.

Changes (``kind``: what it needs):

* ``SET_SWITCH``: ``element_id`` a switch, ``is_open``.
* ``SCALE_LOAD``: ``scale`` >= 0; ``element_id`` a load, or ``bus_id`` (every load at that bus),
  or neither (every load of the feeder).
* ``ADD_LOAD``: ``bus_id``, ``p_mw`` (``q_mvar`` default 0); hypothetical, 0 customers;
  ``element_id`` names it (default ``study-load-<n>``).
* ``ADD_DER``: ``bus_id``, ``p_mw`` (>= 0, rating = p), ``q_mvar`` default 0; a PV.
* ``ADD_CAPACITOR``: ``bus_id``, ``q_mvar`` > 0.
* ``SET_DER_OUTPUT``: ``element_id`` a DER, ``p_mw`` and/or ``q_mvar``.
* ``REMOVE_ELEMENT``: ``element_id`` a load, DER or capacitor (taken out of service).
* ``OUTAGE``: ``element_id`` a line or transformer (out of service).

An unknown element or bus is ``NotFound`` naming it; a change missing what it needs, or naming an
element of the wrong kind, is ``BadInput`` saying what to give. A study whose power flow does not
converge is an answer (``converged=False`` with the solver's reason), never an error.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

from actors.cores.powerflow import PowerFlowModel, PowerFlowResult, Violation
from actors.cores.topology import process_topology
from graph_schema.errors import BadInput, NotFound
from graph_schema.model import Capacitor, Der, DerKind, Feeder, Load

MAX_CHANGES = 500


class ChangeKind(StrEnum):
    SET_SWITCH = "SET_SWITCH"
    SCALE_LOAD = "SCALE_LOAD"
    ADD_LOAD = "ADD_LOAD"
    ADD_DER = "ADD_DER"
    ADD_CAPACITOR = "ADD_CAPACITOR"
    SET_DER_OUTPUT = "SET_DER_OUTPUT"
    REMOVE_ELEMENT = "REMOVE_ELEMENT"
    OUTAGE = "OUTAGE"


@dataclass(frozen=True, slots=True)
class StudyChange:
    kind: ChangeKind
    element_id: str | None = None
    bus_id: str | None = None
    p_mw: float | None = None
    q_mvar: float | None = None
    is_open: bool | None = None
    scale: float | None = None


@dataclass(frozen=True, slots=True)
class StudyResult:
    """The live ``powerFlow`` figures plus customers out, for one state."""

    converged: bool
    reason: str | None
    losses_mw: float | None
    min_vm_pu: float | None
    min_vm_bus_id: str | None
    max_vm_pu: float | None
    max_vm_bus_id: str | None
    max_line_loading_percent: float | None
    violations: tuple[Violation, ...]
    customers_out: int


@dataclass(frozen=True, slots=True)
class StudyDiff:
    """``result - base`` for each figure (None where either side has none)."""

    losses_mw: float | None
    min_vm_pu: float | None
    max_vm_pu: float | None
    max_line_loading_percent: float | None
    customers_out: int
    violations_added: tuple[str, ...]  # "KIND element" in the result, not in the base
    violations_removed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StudyOutcome:
    base: StudyResult
    result: StudyResult
    diff: StudyDiff
    feeder: Feeder  # the studied feeder (base + changes): the input of analyses on the study


def snapshot(
    model: Feeder,
    switch_states: Mapping[str, bool] | None = None,
    *,
    load_p_mw: Mapping[str, float] | None = None,
    load_q_mvar: Mapping[str, float] | None = None,
    load_scale: float = 1.0,
) -> Feeder:
    """A frozen copy of ``model`` at an operating point (its recorded state replaced)."""
    states = switch_states or {}
    lp = load_p_mw or {}
    lq = load_q_mvar or {}
    loads = tuple(
        replace(ld, p_mw=lp.get(ld.id, ld.p_mw) * load_scale, q_mvar=lq.get(ld.id, ld.q_mvar) * load_scale)
        for ld in model.loads
    )
    switches = tuple(replace(s, is_open=bool(states.get(s.id, s.is_open))) for s in model.switches)
    return replace(model, loads=loads, switches=switches)


def _num(c: StudyChange, name: str, *, minimum: float | None = None, positive: bool = False) -> float:
    v = getattr(c, name)
    camel = {"p_mw": "pMw", "q_mvar": "qMvar", "scale": "scale"}[name]
    if v is None:
        raise BadInput(f"{c.kind.value} needs {camel}; give it")
    if not math.isfinite(v) or (minimum is not None and v < minimum) or (positive and v <= 0):
        need = "> 0" if positive else (f">= {minimum}" if minimum is not None else "finite")
        raise BadInput(f"{c.kind.value}: {camel}={v} is not valid; give a value {need}")
    return float(v)


def apply_changes(base: Feeder, changes: Sequence[StudyChange]) -> Feeder:
    """``base`` with ``changes`` applied in order (see the module docstring)."""
    if len(changes) > MAX_CHANGES:
        raise BadInput(f"{len(changes)} changes exceed the limit MAX_CHANGES={MAX_CHANGES}; split the study")
    f = base
    buses = {b.id for b in base.buses}
    n_added = 0

    def need_id(c: StudyChange) -> str:
        if not c.element_id:
            raise BadInput(f"{c.kind.value} needs elementId; give the id of the element to change")
        return c.element_id

    def need_bus(c: StudyChange) -> str:
        if not c.bus_id:
            raise BadInput(f"{c.kind.value} needs busId; give the bus to place the new element at")
        if c.bus_id not in buses:
            raise NotFound(
                f"bus {c.bus_id!r} does not exist in feeder {base.id!r}; a hypothetical element must sit at an "
                "existing bus", element_id=c.bus_id)
        return c.bus_id

    def unknown(eid: str, what: str) -> NotFound:
        return NotFound(f"{what} {eid!r} is not in feeder {base.id!r}; check the id", element_id=eid)

    def new_id(c: StudyChange, prefix: str) -> str:
        nonlocal n_added
        n_added += 1
        eid = c.element_id or f"study-{prefix}-{n_added}"
        if any(getattr(e, "id", None) == eid for e in f.elements()):
            raise BadInput(f"elementId {eid!r} is already used in feeder {base.id!r}; give a new id", element_id=eid)
        return eid

    for c in changes:
        kind = ChangeKind(c.kind)
        if kind == ChangeKind.SET_SWITCH:
            eid = need_id(c)
            if eid not in {s.id for s in f.switches}:
                raise unknown(eid, "switch")
            if c.is_open is None:
                raise BadInput("SET_SWITCH needs isOpen; give true to open, false to close", element_id=eid)
            f = f.with_switch_states({eid: bool(c.is_open)})
        elif kind == ChangeKind.SCALE_LOAD:
            s = _num(c, "scale", minimum=0.0)
            if c.element_id is not None:
                if c.element_id not in {ld.id for ld in f.loads}:
                    raise unknown(c.element_id, "load")
                hit = lambda ld, e=c.element_id: ld.id == e  # noqa: E731
            elif c.bus_id is not None:
                if c.bus_id not in buses:
                    raise unknown(c.bus_id, "bus")
                hit = lambda ld, b=c.bus_id: ld.bus_id == b  # noqa: E731
            else:
                hit = lambda ld: True  # noqa: E731
            f = replace(f, loads=tuple(
                replace(ld, p_mw=ld.p_mw * s, q_mvar=ld.q_mvar * s) if hit(ld) else ld for ld in f.loads))
        elif kind == ChangeKind.ADD_LOAD:
            bus = need_bus(c)
            p = _num(c, "p_mw", minimum=0.0)
            q = 0.0 if c.q_mvar is None else _num(c, "q_mvar")
            f = replace(f, loads=(*f.loads, Load(id=new_id(c, "load"), bus_id=bus, p_mw=p, q_mvar=q, customers=0)))
        elif kind == ChangeKind.ADD_DER:
            bus = need_bus(c)
            p = _num(c, "p_mw", minimum=0.0)
            q = 0.0 if c.q_mvar is None else _num(c, "q_mvar")
            der = Der(id=new_id(c, "der"), bus_id=bus, kind=DerKind.PV, sn_mva=max(p, abs(q), 1e-6), p_mw=p, q_mvar=q)
            f = replace(f, ders=(*f.ders, der))
        elif kind == ChangeKind.ADD_CAPACITOR:
            bus = need_bus(c)
            q = _num(c, "q_mvar", positive=True)
            f = replace(f, capacitors=(*f.capacitors, Capacitor(id=new_id(c, "capacitor"), bus_id=bus, q_mvar=q)))
        elif kind == ChangeKind.SET_DER_OUTPUT:
            eid = need_id(c)
            if eid not in {d.id for d in f.ders}:
                raise unknown(eid, "DER")
            if c.p_mw is None and c.q_mvar is None:
                raise BadInput("SET_DER_OUTPUT needs pMw and/or qMvar; give the new set point", element_id=eid)
            p = None if c.p_mw is None else _num(c, "p_mw", minimum=0.0)
            q = None if c.q_mvar is None else _num(c, "q_mvar")
            f = replace(f, ders=tuple(
                replace(d, p_mw=d.p_mw if p is None else p, q_mvar=d.q_mvar if q is None else q) if d.id == eid else d
                for d in f.ders))
        elif kind == ChangeKind.REMOVE_ELEMENT:
            eid = need_id(c)
            if eid in {ld.id for ld in f.loads}:
                f = replace(f, loads=tuple(replace(x, in_service=False) if x.id == eid else x for x in f.loads))
            elif eid in {d.id for d in f.ders}:
                f = replace(f, ders=tuple(replace(x, in_service=False) if x.id == eid else x for x in f.ders))
            elif eid in {k.id for k in f.capacitors}:
                caps = tuple(replace(x, in_service=False) if x.id == eid else x for x in f.capacitors)
                f = replace(f, capacitors=caps)
            elif any(getattr(e, "id", None) == eid for e in f.elements()):
                raise BadInput(f"REMOVE_ELEMENT takes a load, DER or capacitor; {eid!r} is not one "
                               "(use OUTAGE for a line or transformer, SET_SWITCH for a switch)", element_id=eid)
            else:
                raise unknown(eid, "element")
        elif kind == ChangeKind.OUTAGE:
            eid = need_id(c)
            if eid in {ln.id for ln in f.lines}:
                f = replace(f, lines=tuple(replace(x, in_service=False) if x.id == eid else x for x in f.lines))
            elif eid in {t.id for t in f.transformers}:
                f = replace(f, transformers=tuple(
                    replace(x, in_service=False) if x.id == eid else x for x in f.transformers))
            elif any(getattr(e, "id", None) == eid for e in f.elements()):
                raise BadInput(f"OUTAGE takes a line or transformer; {eid!r} is not one", element_id=eid)
            else:
                raise unknown(eid, "line or transformer")
    return f


def solve(feeder: Feeder) -> StudyResult:
    """The feeder at its recorded state, solved (never raises for a solver failure)."""
    r: PowerFlowResult = PowerFlowModel(feeder).solve()
    topo = process_topology(feeder)
    out = sum(ld.customers for ld in feeder.loads if ld.bus_id in topo.deenergized_bus_ids)
    return StudyResult(
        r.converged, r.reason, r.losses_mw, r.min_vm_pu, r.min_vm_bus_id, r.max_vm_pu, r.max_vm_bus_id,
        r.max_line_loading_percent, tuple(r.violations), out,
    )


def _d(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else b - a


def diff(base: StudyResult, result: StudyResult) -> StudyDiff:
    kb = {f"{v.kind} {v.element_id}": v for v in base.violations}
    kr = {f"{v.kind} {v.element_id}": v for v in result.violations}
    return StudyDiff(
        _d(base.losses_mw, result.losses_mw), _d(base.min_vm_pu, result.min_vm_pu),
        _d(base.max_vm_pu, result.max_vm_pu), _d(base.max_line_loading_percent, result.max_line_loading_percent),
        result.customers_out - base.customers_out,
        tuple(k for k in kr if k not in kb), tuple(k for k in kb if k not in kr),
    )


def run_study(base: Feeder, changes: Sequence[StudyChange]) -> StudyOutcome:
    """Solve ``base`` and ``base`` + ``changes``; raises only for bad changes."""
    studied = apply_changes(base, changes)
    b = solve(base)
    r = solve(studied)
    return StudyOutcome(b, r, diff(b, r), studied)
