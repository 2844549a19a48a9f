"""Every closed set of the GraphQL schema, in one place.

Where the domain already has the enum (``actors.cores.events.EventKind``, ``actors.cores.control.ControlAction``,
``protocols.base.Quality``, ...) it is wrapped here with ``strawberry.enum``: the GraphQL values are
the domain's values, so they cannot drift apart. Where the domain passes plain strings (alarm kinds,
control outcomes) the enum is declared here, and a unit test checks it against the domain's code.

An enum value travels as the same string a ``String`` field sent before, so turning an output field
from ``String`` into an enum changes nothing on the wire. Arguments are different (a string literal
``"ALARM"`` is not an enum literal ``ALARM``): string arguments stay, deprecated and validated with
:func:`parse_values`, beside their enum successors.

Values read back from stored records go through :func:`coerce`, which never lets an unknown value
fail a whole response: it logs it and answers the enum's fallback.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from enum import Enum, StrEnum
from typing import TypeVar

import strawberry

from actors.apps import der_app as _der_app
from actors.apps import fdir_engine as _fdir_engine
from actors.cores import control as _control
from actors.cores import dr as _dr
from actors.cores import events as _events
from actors.cores import fdir as _fdir
from actors.cores import forecast as _forecast
from actors.cores import outages as _outages
from graph_schema import model as _model
from graph_schema.errors import BadInput
from protocols import base as _protocols

log = logging.getLogger(__name__)

E = TypeVar("E", bound=Enum)

# -- wrapped domain enums ---------------------------------------------------------------------------

ControlAction = strawberry.enum(_control.ControlAction, description=(
    "OPEN, CLOSE, RAISE, LOWER, SET; in the control history also the DER application's commands "
    "(SET_DER_Q, CURTAIL_DER_P, RELEASE_DER_P, DER_CONTROL, STORAGE_SCHEDULE), which selectControl refuses"))
TagKind = strawberry.enum(_control.TagKind, description="Safety tags; all but WARNING block control")
EventKind = strawberry.enum(_events.EventKind, description="What an event reports")
Severity = strawberry.enum(_events.Severity, description="INFO < WARNING < ALARM < CRITICAL")
Quality = strawberry.enum(_protocols.Quality, description="Quality of a telemetered value")
FdirMode = strawberry.enum(_fdir_engine.FdirMode, name="FdirMode")
PlanState = strawberry.enum(_fdir_engine.PlanState, description="Where a switching plan is in its life")
PlanKind = strawberry.enum(_fdir_engine.PlanKind, description="Why a switching plan was made")
PlanAction = strawberry.enum(_fdir.PlanAction, description="What a switching plan step does")
OutageStatus = strawberry.enum(_outages.OutageStatus)


class _StateSource(StrEnum):
    ESTIMATED = "ESTIMATED"
    MODEL = "MODEL"


class _EstimatorQuality(StrEnum):
    SUSPECT = "SUSPECT"


StateSource = strawberry.enum(_StateSource, name="StateSource",
                              description="ESTIMATED: the state estimator's result over the field's measurements; "
                                          "MODEL: the model's power flow (switch states, nominal loads)")
EstimatorQuality = strawberry.enum(_EstimatorQuality, name="EstimatorQuality",
                                   description="SUSPECT: the bad-data test identified the measurement and left it out")
OutageCause = strawberry.enum(_outages.Cause, name="OutageCause")
SwitchKind = strawberry.enum(_model.SwitchKind, description="IEC 61970 switch classes")
DerKind = strawberry.enum(_model.DerKind)
DrProgramKind = strawberry.enum(_dr.ProgramKind, name="DrProgramKind")
DrResourceKind = strawberry.enum(_dr.ResourceKind, name="DrResourceKind")
DrEventStatus = strawberry.enum(_dr.EventStatus, name="DrEventStatus",
                                description="SCHEDULED before its start, ACTIVE in its window, then COMPLETED; "
                                            "or CANCELLED")
ForecastHorizon = strawberry.enum(_forecast.Horizon, name="ForecastHorizon",
                                  description="DAY_AHEAD: the next 48 hours, made daily; INTRA_DAY: the next 24 "
                                              "hours, made every quarter hour with the latest telemetry")


# -- enums of sets the domain passes as strings -----------------------------------------------------


@strawberry.enum(description="Power-flow limit violations")
class ViolationKind(StrEnum):
    UNDERVOLTAGE = "UNDERVOLTAGE"
    OVERVOLTAGE = "OVERVOLTAGE"
    OVERLOAD = "OVERLOAD"


@strawberry.enum(description="Which limits a violation is counted against")
class LimitBand(StrEnum):
    NORMAL = "NORMAL"
    EMERGENCY = "EMERGENCY"


@strawberry.enum(description="Outcome of a control. operateControl answers the first four; REFUSED (nothing "
                             "was sent) appears in controlHistory only")
class ControlStatus(StrEnum):
    CONFIRMED = "CONFIRMED"  # telemetry shows the expected position
    ACCEPTED = "ACCEPTED"  # a set point the device took; no telemetry to confirm it
    NOT_CONFIRMED = "NOT_CONFIRMED"  # sent; telemetry did not follow within the confirm timeout
    FAILED = "FAILED"  # the write failed (DEVICE_UNREACHABLE) or nothing could be sent
    REFUSED = "REFUSED"  # refused before sending (selection, tag, interlock, STORE_UNAVAILABLE...)
    PENDING = "PENDING"  # control history only: the intent is recorded, its outcome not yet
    CONFIRMED_AFTER_RESTART = "CONFIRMED_AFTER_RESTART"  # history: interrupted by a restart, field shows it done


@strawberry.enum(description="What an alarm is about (alarms are deduplicated per element and kind)")
class AlarmKind(StrEnum):
    BREAKER_TRIP = "BREAKER_TRIP"
    FAULT_INDICATION = "FAULT_INDICATION"
    LAST_GASP = "LAST_GASP"
    COMM_LOSS = "COMM_LOSS"
    BAD_QUALITY = "BAD_QUALITY"  # a point's quality is not GOOD
    VM_LOW = "VM_LOW"  # measured voltage below the normal band
    VM_HIGH = "VM_HIGH"  # measured voltage above the normal band
    PF_UNDERVOLTAGE = "PF_UNDERVOLTAGE"  # power flow: undervoltage
    PF_OVERVOLTAGE = "PF_OVERVOLTAGE"  # power flow: overvoltage
    PF_OVERLOAD = "PF_OVERLOAD"  # power flow: overload
    FORECAST_OVERLOAD = "FORECAST_OVERLOAD"  # a load forecast's peak is above the feeder's limit (ahead of time)
    OTHER = "OTHER"  # a kind this server version does not know; the message says what it is


# -- conversions ------------------------------------------------------------------------------------


def coerce(enum: type[E], value: object, fallback: E | None = None) -> E | None:
    """``value`` as a member of ``enum``; an unknown value is logged and answered as ``fallback``
    (a stored record written by another version must not fail a whole response)."""
    if isinstance(value, enum):
        return value
    try:
        return enum(str(value))
    except ValueError:
        log.warning("unknown %s value %r; answered as %s", enum.__name__, value, fallback)
        return fallback


def alarm_kind(value: object) -> AlarmKind:
    kind = coerce(AlarmKind, value, AlarmKind.OTHER)
    assert kind is not None
    return kind


def parse_values(enum: type[E], values: Iterable[str], arg: str, *, use_instead: str | None = None) -> list[E]:
    """String arguments naming members of ``enum``; an unknown one is ``BAD_INPUT`` naming it and
    the accepted values."""
    out: list[E] = []
    bad: list[str] = []
    for v in values:
        try:
            out.append(enum(v))
        except ValueError:
            bad.append(v)
    if bad:
        accepted = ", ".join(m.value for m in enum)
        hint = f"; or pass {use_instead} (an enum)" if use_instead else ""
        raise BadInput(f"{arg}: unknown value(s) {', '.join(repr(b) for b in bad)}; use one of {accepted}{hint}")
    return out


# -- studies and analysis jobs (#14, server/schema/studies.py) ----------------------------------------

from actors.cores import study as _study  # noqa: E402  (kept with its enums: merged additively)

StudyChangeKind = strawberry.enum(_study.ChangeKind, name="StudyChangeKind",
                                  description="What a study change does (actors.cores.study)")


@strawberry.enum(description="Where an analysis job is")
class JobStatus(StrEnum):
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    DONE = "DONE"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"


@strawberry.enum(description="Which analysis a job runs")
class JobKind(StrEnum):
    RECONFIGURATION = "RECONFIGURATION"
    HOSTING_CAPACITY = "HOSTING_CAPACITY"
    CONTINGENCY = "CONTINGENCY"
    SCENARIOS = "SCENARIOS"


@strawberry.enum(description="A scenario outcome counted in a probability: a violation, or no solution")
class ScenarioRiskKind(StrEnum):
    UNDERVOLTAGE = "UNDERVOLTAGE"
    OVERVOLTAGE = "OVERVOLTAGE"
    OVERLOAD = "OVERLOAD"
    DIVERGES = "DIVERGES"

# -- DER management (#12) ---------------------------------------------------------------------------

DerMode = strawberry.enum(_der_app.DerMode, name="DerMode", description="DER management mode of a feeder")
DerCommandStatus = strawberry.enum(_der_app.DerCommandStatus, name="DerCommandStatus",
                                   description="CONFIRMED (read back), FAILED (sent; see code) or REFUSED (not sent)")
DerConnectionState = strawberry.enum(_der_app.DerConnectionState, name="DerConnectionState")

# Volt/VAR optimisation (server/schema/voltvar.py).
from actors.apps import voltvar_app as _voltvar_app  # noqa: E402
from actors.cores import voltvar as _voltvar  # noqa: E402

VoltVarMode = strawberry.enum(_voltvar_app.VoltVarMode, name="VoltVarMode",
                              description="OFF, ADVISORY (plans wait for approval), AUTOMATIC")
VoltVarObjective = strawberry.enum(_voltvar.Objective, name="VoltVarObjective",
                                   description="LOSSES: least losses; CVR: lowest voltage in the service band "
                                               "(load voltage dependence: CVR factor 0.8 %P per %V)")
VoltVarAction = strawberry.enum(_voltvar.VoltVarAction, name="VoltVarAction",
                                description="What a Volt/VAR operation sets")
VoltVarDeviceKind = strawberry.enum(_voltvar.DeviceKind, name="VoltVarDeviceKind")
VoltVarPlanState = strawberry.enum(_voltvar_app.PlanState, name="VoltVarPlanState",
                                   description="Where a Volt/VAR plan is in its life")
RegulatorKind = strawberry.enum(_voltvar.RegulatorKind, name="RegulatorKind",
                                description="OLTC: substation on-load tap changer; REGULATOR: line regulator")

@strawberry.enum(description="What a customer notification is about")
class CustomerNotificationKind(StrEnum):
    DR_EVENT = "DR_EVENT"
    OUTAGE = "OUTAGE"
