"""Closed sets of the GraphQL schema are enums, in one place (server/schema/enums.py), checked
against the domain code that produces them; timestamps are DateTime; unknown values are BAD_INPUT."""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import pytest
from graphql import GraphQLEnumType, GraphQLList, GraphQLNonNull, GraphQLObjectType, GraphQLScalarType

from graph_schema.errors import BadInput
from server.schema import enums

ROOT = Path(__file__).resolve().parents[3]

# Output fields whose names suggest a closed set but which are open on purpose, with why.
OPEN_SETS = {
    "AuditEntry.action",  # AuditLog.record takes any string beside AuditAction
    "AuditEntry.outcome",  # OK, an error code, or a control status
    "OutageStep.action",  # what the outage tracker was told happened (FAULT, ISOLATED, a plan step...)
    "Measurement.quantity",  # a point map kind: one of three domain enums (Quantity | Signal | CommandKind)
    "VoltVarStatus.status",  # free text: what Volt/VAR is doing, who holds it off and why (mode is the enum)
}
CLOSED_NAMES = {"kind", "severity", "status", "quality", "state", "cause", "action", "mode", "band"}
# Timestamps kept as text on purpose.
TEXT_TIMES = {"AuditEntry.at"}  # the exact text the audit hash covers; recordedAt is the DateTime


def _schema():
    from server.schema import build_schema
    from server.settings import Settings

    return build_schema(Settings.from_env({}))._schema


def _named(t):
    while isinstance(t, GraphQLNonNull | GraphQLList):
        t = t.of_type
    return t


def test_closed_set_fields_are_enums_and_timestamps_are_datetimes():
    strings, texts = [], []
    for name, t in _schema().type_map.items():
        if name.startswith("__") or not isinstance(t, GraphQLObjectType):
            continue
        for fname, f in t.fields.items():
            where = f"{name}.{fname}"
            leaf = _named(f.type)
            if fname in CLOSED_NAMES and where not in OPEN_SETS and not isinstance(leaf, GraphQLEnumType):
                strings.append(f"{where}: {leaf}")
            is_time = fname == "at" or fname.endswith("At") or fname in {"firstSeen", "lastSeen", "sourceTs",
                                                                          "receivedTs", "estimatedRestoration"}
            if is_time and where not in TEXT_TIMES and isinstance(leaf, GraphQLScalarType) \
                    and leaf.name != "DateTime":
                texts.append(f"{where}: {leaf}")
    assert not strings, f"closed sets served as plain strings (make them enums in server/schema/enums.py): {strings}"
    assert not texts, f"timestamps served as text (make them DateTime): {texts}"


def test_enum_wrappers_are_the_domain_enums():
    from actors.cores.control import ControlAction
    from actors.cores.events import EventKind, Severity
    from protocols.base import Quality

    assert enums.ControlAction is ControlAction and enums.EventKind is EventKind
    assert enums.Severity is Severity and enums.Quality is Quality


def _alarm_kinds_raised_by_the_actors() -> set[str]:
    """The alarm kinds the code under ``actors/`` raises: every function with an ``alarm_kind``
    parameter is found, and at its calls the value passed is read: a string literal, the literals
    assigned to the variable passed, or ``f"PF_{...}"`` (power-flow violations, one per
    ``actors.cores.powerflow.ViolationKind``)."""
    from actors.cores.powerflow import ViolationKind

    trees = [ast.parse(p.read_text()) for p in sorted((ROOT / "actors").rglob("*.py"))]
    position: dict[str, int] = {}
    for tree in trees:
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                names = [a.arg for a in fn.args.args]
                if "alarm_kind" in names:
                    position[fn.name] = names.index("alarm_kind") - (1 if names[:1] == ["self"] else 0)
    found: set[str] = set()
    for tree in trees:
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            assigned: dict[str, set[str]] = {}
            for node in ast.walk(fn):
                if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) \
                        and isinstance(node.value.value, str):
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            assigned.setdefault(target.id, set()).add(node.value.value)
            for node in ast.walk(fn):
                if not isinstance(node, ast.Call):
                    continue
                name = getattr(node.func, "attr", None) or getattr(node.func, "id", None)
                if name not in position:
                    continue
                arg = next((k.value for k in node.keywords if k.arg == "alarm_kind"), None)
                if arg is None and len(node.args) > position[name]:
                    arg = node.args[position[name]]
                if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                    found.add(arg.value)
                elif isinstance(arg, ast.Name):
                    found |= assigned.get(arg.id, set())
                elif isinstance(arg, ast.JoinedStr) and isinstance(arg.values[0], ast.Constant) \
                        and arg.values[0].value == "PF_":
                    found |= {f"PF_{v}" for v in typing.get_args(ViolationKind)}
    return found


def test_alarm_kind_enum_covers_every_alarm_the_actors_raise():
    raised = _alarm_kinds_raised_by_the_actors()
    # The scan must see the actor's alarms (a renamed helper would otherwise pass this vacuously).
    assert {"BREAKER_TRIP", "COMM_LOSS", "VM_LOW", "PF_OVERLOAD"} <= raised, raised
    missing = raised - {k.value for k in enums.AlarmKind}
    assert not missing, f"add {sorted(missing)} to AlarmKind in server/schema/enums.py"


def test_an_unknown_alarm_kind_is_answered_as_other_not_an_internal_error():
    assert enums.alarm_kind("VM_LOW") is enums.AlarmKind.VM_LOW
    assert enums.alarm_kind("SOMETHING_NEW") is enums.AlarmKind.OTHER
    assert enums.coerce(enums.ControlStatus, "WHATEVER", None) is None
    assert enums.coerce(enums.ControlStatus, "CONFIRMED") is enums.ControlStatus.CONFIRMED


def test_unknown_string_values_are_bad_input_naming_the_value_and_the_choices():
    from actors.cores.events import EventKind

    assert enums.parse_values(EventKind, ["ALARM", "CONTROL"], "kinds") == [EventKind.ALARM, EventKind.CONTROL]
    with pytest.raises(BadInput) as err:
        enums.parse_values(EventKind, ["ALARM", "foo"], "kinds", use_instead="eventKinds")
    assert err.value.code == "BAD_INPUT"
    assert "'foo'" in err.value.message and "ALARM" in err.value.message and "eventKinds" in err.value.message


def test_control_status_enum_covers_the_outcomes_the_actors_record():
    import re

    text = "\n".join(p.read_text() for p in sorted((ROOT / "actors").rglob("*.py")))
    # Outcomes are built as Outcome("STATUS", code, message) (or returned as ("STATUS", code, message)).
    found = set(re.findall(r'Outcome\(\s*"([A-Z_]+)"', text))
    found |= set(re.findall(r'return \(?"([A-Z_]+)", (?:None|"[A-Z_]+"),', text))
    assert {"CONFIRMED", "FAILED"} <= found, found
    missing = found - {s.value for s in enums.ControlStatus}
    assert not missing, f"add {sorted(missing)} to ControlStatus in server/schema/enums.py"
