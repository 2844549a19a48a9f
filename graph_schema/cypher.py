"""Mapping of the grid model (:mod:`graph_schema.model`) to graph labels, properties and relationships.

The mapping is derived from the dataclasses themselves (``dataclasses.fields`` and their resolved
type hints), so adding a field to a model class needs no change here or in the store:

- every ``tuple[X, ...]`` field of :class:`~graph_schema.model.Feeder` is a collection of elements
  stored as nodes labelled ``X.__name__`` (``Bus``, ``Line``, ...);
- an element node carries every field of its class as a property (enums as their string value,
  ``None`` as an absent property), plus ``uid`` (``<feeder id>/<element id>``, unique per label),
  ``feeder_id`` and ``ord`` (its position in the feeder's tuple, so a loaded feeder compares equal);
- the ``Feeder`` node carries the feeder's scalar fields and, flattened without prefix, the fields
  of its nested dataclasses (``Limits``: ``vm_min_pu``, ...), plus ``uid`` (= the feeder id);
- :data:`RELATIONSHIPS` names the edges that make the topology traversable in Cypher, derived from
  reference fields (``bus_id``, ``from_bus_id``, ...). The properties stay the source of truth on
  load; the edges are for queries.

Nothing here performs I/O.
"""

from __future__ import annotations

import dataclasses
import functools
import re
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from graph_schema import model
from graph_schema.errors import ModelProblem

FEEDER_LABEL = "Feeder"
# One counter node per record label: (:Sequence {name: <label>, seq: <last assigned>}).
SEQUENCE_LABEL = "Sequence"
# Durable records kept beside the network (closed set; labels are interpolated into Cypher only
# after a membership check against this tuple).
RECORD_LABELS: tuple[str, ...] = ("ControlAction", "Event", "Outage", "AuditEntry", "Tag", "PointMap", "Setting")
APPEND_ONLY_LABELS: frozenset[str] = frozenset({"AuditEntry"})

# Properties the store adds to every element node; no model field may use these names.
RESERVED_ELEMENT_PROPS: frozenset[str] = frozenset({"uid", "feeder_id", "ord"})
RESERVED_RECORD_PROPS: frozenset[str] = frozenset({"seq", "feeder_id"})

Scalar = str | int | float | bool | None


@dataclass(frozen=True, slots=True)
class Relationship:
    """An edge ``(source_label)-[:type]->(target)`` taken from ``source_label``'s field ``field``.

    ``target_label`` is ``None`` when the target's label depends on the element (a switch's
    ``element_type``; a measurement point's ``element_id`` that may name any element).
    """

    source_label: str
    field: str
    type: str
    target_label: str | None


# (Feeder)-[:HAS]->(element) is written with every element node; these are the rest.
RELATIONSHIPS: tuple[Relationship, ...] = (
    Relationship("Source", "bus_id", "AT", "Bus"),
    Relationship("Line", "from_bus_id", "FROM", "Bus"),
    Relationship("Line", "to_bus_id", "TO", "Bus"),
    Relationship("Transformer", "hv_bus_id", "HV", "Bus"),
    Relationship("Transformer", "lv_bus_id", "LV", "Bus"),
    Relationship("Switch", "bus_id", "AT", "Bus"),
    Relationship("Switch", "element_id", "ON", None),  # by element_type: Line, Transformer or Bus
    Relationship("Load", "bus_id", "AT", "Bus"),
    Relationship("Der", "bus_id", "AT", "Bus"),
    Relationship("Capacitor", "bus_id", "AT", "Bus"),
    Relationship("MeasurementPoint", "element_id", "MEASURES", None),  # whichever element has the id
    Relationship("FaultIndicator", "line_id", "ON", "Line"),
    Relationship("FaultIndicator", "bus_id", "AT", "Bus"),
)

_SWITCH_TARGET = {
    model.ElementType.LINE: "Line",
    model.ElementType.TRANSFORMER: "Transformer",
    model.ElementType.BUS: "Bus",
}


@dataclass(frozen=True, slots=True)
class ElementClass:
    """One collection of a feeder: its ``Feeder`` field, node label and model class."""

    collection: str
    label: str
    cls: type


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _element_classes() -> tuple[ElementClass, ...]:
    hints = typing.get_type_hints(model.Feeder)
    out: list[ElementClass] = []
    for f in dataclasses.fields(model.Feeder):
        tp = hints[f.name]
        if typing.get_origin(tp) is tuple:
            (cls, _ellipsis) = typing.get_args(tp)
            out.append(ElementClass(f.name, cls.__name__, cls))
    return tuple(out)


ELEMENT_CLASSES: tuple[ElementClass, ...] = _element_classes()
ELEMENT_LABELS: tuple[str, ...] = tuple(e.label for e in ELEMENT_CLASSES)
_BY_LABEL = {e.label: e for e in ELEMENT_CLASSES}

# Fields of the Feeder node: scalar fields, and the fields of nested dataclasses (flattened).
_FEEDER_SCALARS: tuple[str, ...] = tuple(
    f.name
    for f in dataclasses.fields(model.Feeder)
    if f.name not in {e.collection for e in ELEMENT_CLASSES}
    and not dataclasses.is_dataclass(typing.get_type_hints(model.Feeder)[f.name])
)
_FEEDER_NESTED: tuple[tuple[str, type], ...] = tuple(
    (f.name, typing.get_type_hints(model.Feeder)[f.name])
    for f in dataclasses.fields(model.Feeder)
    if dataclasses.is_dataclass(typing.get_type_hints(model.Feeder)[f.name])
)


def _check_mapping() -> None:
    """Fail at import when a model change would make the mapping ambiguous."""
    seen = set(_FEEDER_SCALARS) | {"uid"}
    for _name, cls in _FEEDER_NESTED:
        for f in dataclasses.fields(cls):
            if f.name in seen:
                raise TypeError(f"Feeder property {f.name!r} of {cls.__name__} collides; rename the field")
            seen.add(f.name)
    for e in ELEMENT_CLASSES:
        clash = RESERVED_ELEMENT_PROPS & {f.name for f in dataclasses.fields(e.cls)}
        if clash:
            raise TypeError(f"{e.label} fields {sorted(clash)} collide with the store's own properties")
    for r in RELATIONSHIPS:
        if r.source_label not in _BY_LABEL:
            raise TypeError(f"relationship from unknown label {r.source_label!r}")


_check_mapping()


def element_uid(feeder_id: str, element_id: str) -> str:
    return f"{feeder_id}/{element_id}"


def _to_value(value: object) -> Scalar:
    if isinstance(value, Enum):
        return value.value  # type: ignore[no-any-return]
    return value  # type: ignore[return-value]


def element_props(feeder_id: str, ord_: int, element: object) -> dict[str, Scalar]:
    """Node properties of one element; ``None`` fields are left out (an absent property)."""
    props: dict[str, Scalar] = {
        f.name: _to_value(getattr(element, f.name))
        for f in dataclasses.fields(element)  # type: ignore[arg-type]
        if getattr(element, f.name) is not None
    }
    props["uid"] = element_uid(feeder_id, element.id)  # type: ignore[attr-defined]
    props["feeder_id"] = feeder_id
    props["ord"] = ord_
    return props


def feeder_props(feeder: model.Feeder) -> dict[str, Scalar]:
    props: dict[str, Scalar] = {name: _to_value(getattr(feeder, name)) for name in _FEEDER_SCALARS}
    for name, _cls in _FEEDER_NESTED:
        nested = getattr(feeder, name)
        for f in dataclasses.fields(nested):
            props[f.name] = _to_value(getattr(nested, f.name))
    props["uid"] = feeder.id
    return {k: v for k, v in props.items() if v is not None}


def _convert(tp: Any, value: object) -> object:
    base, _optional = _unwrap_optional(tp)
    if value is None:
        return None
    if isinstance(base, type):
        if issubclass(base, Enum):
            return base(value)
        if base is bool:
            return bool(value)
        if base is int and not isinstance(value, bool):
            return int(value)  # type: ignore[call-overload]
        if base is float and not isinstance(value, bool):
            return float(value)  # type: ignore[arg-type]
        if base is str:
            return str(value)
    return value


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_props(cls: type, props: Mapping[str, object]) -> Any:
    """Rebuild a model dataclass from node properties (extra properties are ignored).

    A missing property is ``None`` when the field admits ``None`` (that is how ``None`` is stored),
    otherwise the field's default (a field added to the model after the node was written).
    """
    hints = _hints(cls)
    kwargs: dict[str, object] = {}
    for f in dataclasses.fields(cls):
        if f.name in props and props[f.name] is not None:
            kwargs[f.name] = _convert(hints[f.name], props[f.name])
        elif _unwrap_optional(hints[f.name])[1]:
            kwargs[f.name] = None
    return cls(**kwargs)


def feeder_from_props(props: Mapping[str, object], collections: Mapping[str, tuple[object, ...]]) -> model.Feeder:
    kwargs: dict[str, object] = {}
    hints = typing.get_type_hints(model.Feeder)
    for name in _FEEDER_SCALARS:
        if name in props and props[name] is not None:
            kwargs[name] = _convert(hints[name], props[name])
        elif _unwrap_optional(hints[name])[1]:
            kwargs[name] = None
    for name, cls in _FEEDER_NESTED:
        kwargs[name] = from_props(cls, props)
    kwargs.update(collections)
    return model.Feeder(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class EdgeBatch:
    """Edges of one type between two labels, as rows ``{"a": source uid, "b": target uid}``."""

    source_label: str
    type: str
    target_label: str
    rows: tuple[dict[str, str], ...]


def edges(feeder: model.Feeder) -> tuple[tuple[EdgeBatch, ...], tuple[ModelProblem, ...]]:
    """The topology edges of ``feeder`` grouped per (source label, type, target label).

    Also returns the references that point at nothing (a missing target would silently drop an
    edge in Cypher's ``MATCH``); the store refuses such a feeder before writing anything.
    """
    ids: dict[str, set[str]] = {e.label: {el.id for el in getattr(feeder, e.collection)} for e in ELEMENT_CLASSES}
    owners: dict[str, list[str]] = {}
    for label, label_ids in ids.items():
        for i in label_ids:
            owners.setdefault(i, []).append(label)
    groups: dict[tuple[str, str, str], list[dict[str, str]]] = {}
    problems: list[ModelProblem] = []
    fid = feeder.id
    for rel in RELATIONSHIPS:
        for el in getattr(feeder, _BY_LABEL[rel.source_label].collection):
            target_id = getattr(el, rel.field)
            if target_id is None:
                continue
            if rel.target_label is not None:
                target = rel.target_label
            elif rel.source_label == "Switch":
                target = _SWITCH_TARGET[model.ElementType(el.element_type)]
            else:
                candidates = owners.get(target_id, [])
                if len(candidates) != 1:
                    # Unknown or ambiguous (the same id used by two kinds of element): the
                    # property is kept, no MEASURES edge is drawn; validation reports unknowns.
                    continue
                target = candidates[0]
            if target_id not in ids.get(target, set()):
                problems.append(
                    ModelProblem(
                        el.id,
                        f"{rel.field}={target_id!r} names no {target} of feeder {fid!r}; "
                        f"add that {target} or fix the reference",
                    )
                )
                continue
            groups.setdefault((rel.source_label, rel.type, target), []).append(
                {"a": element_uid(fid, el.id), "b": element_uid(fid, target_id)}
            )
    batches = tuple(EdgeBatch(s, t, g, tuple(rows)) for (s, t, g), rows in groups.items())
    return batches, tuple(problems)


_PROP_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def check_prop_name(name: str) -> bool:
    return bool(_PROP_NAME.match(name))
