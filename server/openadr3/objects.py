"""OpenADR 3.0.1 objects made from the demand-response records, and the checks of what clients send.

Pure: no store, no HTTP. The graph-store DR records (server/dr_service.py) stay the one source of
truth; a programme, event or resource here is a *view* of them in the spec's shapes (field names as
in the 3.0.1 openapi schemas: ``objectType``, ``programName``, ``programID``, ``intervalPeriod``
``{start, duration}``, ``intervals[{id, payloads[{type, values}]}]``, targets as ``valuesMap``
``{type, values}``). Errors are the spec's Problem (RFC 7807, ``application/problem+json``).

Conventions of this VTN (the spec leaves them to the programme):
- An event's reduction is one interval with ``DISPATCH_SETPOINT_RELATIVE`` (units ``KW``), the
  negative kW asked for, and ``SIMPLE`` level 1 (shed). A VEN is shown the event with ``targets``
  and the relative setpoint narrowed to *its own* dispatched resources, so it learns its share and
  nothing of other customers.
- Opting out is a report whose resource carries the payload ``OPT_OUT`` ``[true]``: the DR core's
  opt-out rules apply and the event is re-planned.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from actors.cores import dr

SETPOINT = "DISPATCH_SETPOINT_RELATIVE"
OPT_OUT = "OPT_OUT"
PROBLEM_TYPE = "about:blank"
_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


class Problem(Exception):
    """An OpenADR 3 error: answered as ``application/problem+json`` with type/title/status/detail."""

    def __init__(self, status: int, title: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.title = title
        self.detail = detail

    def body(self, instance: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {"type": PROBLEM_TYPE, "title": self.title, "status": self.status, "detail": self.detail}
        if instance:
            out["instance"] = instance
        return out


def bad(detail: str) -> Problem:
    return Problem(400, "Bad Request", detail)


def iso(ts: datetime) -> str:
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def duration(text: Any, what: str) -> timedelta:
    """An ISO 8601 duration (``PT2H``, ``P1DT30M``), as the spec's ``intervalPeriod.duration``."""
    m = _DURATION.match(text) if isinstance(text, str) else None
    if m is None or text in ("P", "PT"):
        raise bad(f"{what} must be an ISO 8601 duration such as 'PT2H' or 'PT30M', not {text!r}")
    d, h, mi, s = m.groups()
    return timedelta(days=int(d or 0), hours=int(h or 0), minutes=int(mi or 0), seconds=float(s or 0))


def iso_duration(td: timedelta) -> str:
    total = int(td.total_seconds())
    h, rest = divmod(total, 3600)
    m, s = divmod(rest, 60)
    return "PT" + (f"{h}H" if h else "") + (f"{m}M" if m else "") + (f"{s}S" if s or not total else "")


def timestamp(text: Any, what: str) -> datetime:
    if not isinstance(text, str):
        raise bad(f"{what} must be an RFC 3339 date-time string such as '2026-07-01T14:00:00Z', not {text!r}")
    try:
        ts = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise bad(f"{what} {text!r} is not an RFC 3339 date-time; write e.g. '2026-07-01T14:00:00Z'") from None
    if ts.tzinfo is None:
        raise bad(f"{what} {text!r} has no UTC offset; add 'Z' or '+hh:mm'")
    return ts.astimezone(UTC)


def obj(body: Any, kind: str) -> dict[str, Any]:
    """The request body as a JSON object of ``objectType`` ``kind`` (when it names one)."""
    if not isinstance(body, dict):
        raise bad(f"the body must be a JSON {kind} object")
    ot = body.get("objectType")
    if ot is not None and ot != kind:
        raise bad(f"objectType is {ot!r}; this endpoint takes objectType {kind!r}")
    return body


def text(body: Mapping[str, Any], key: str, *, required: bool = True, max_len: int = 128) -> str | None:
    v = body.get(key)
    if v is None:
        if required:
            raise bad(f"'{key}' is required (a string of 1 to {max_len} characters)")
        return None
    if not isinstance(v, str) or not 1 <= len(v) <= max_len:
        raise bad(f"'{key}' must be a string of 1 to {max_len} characters, not {v!r:.60}")
    return v


# --- views of the DR records ----------------------------------------------------------------------


def program(prog: dr.Program, feeder_id: str, created: datetime) -> dict[str, Any]:
    start = datetime.combine(prog.season_start, datetime.min.time(), UTC)
    return {
        "id": prog.id, "createdDateTime": iso(created), "modificationDateTime": iso(created), "objectType": "PROGRAM",
        "programName": prog.id, "programLongName": prog.name, "retailerName": "DMS", "programType": prog.kind.value,
        "intervalPeriod": {"start": iso(start),
                           "duration": f"P{(prog.season_end - prog.season_start).days}D"},
        "programDescriptions": [], "bindingEvents": True, "localPrice": False,
        "payloadDescriptors": [{"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": SETPOINT, "units": "KW"}],
        "targets": [{"type": "GROUP", "values": [feeder_id]}],
    }


@dataclass(frozen=True, slots=True)
class EventShape:
    """What an event looks like to one requester: all its resources (business logic) or only some."""

    resources: tuple[tuple[str, float], ...]


def event(ev: dr.EventRecord, status: dr.EventStatus, created: datetime, only: Iterable[str] | None = None
          ) -> dict[str, Any]:
    keep = None if only is None else set(only)
    res = [(r, kw) for r, kw in ev.resources if keep is None or r in keep]
    kw = sum(k for _, k in res) if keep is not None else ev.target_kw
    period = {"start": iso(ev.start), "duration": iso_duration(ev.end - ev.start)}
    return {
        "id": ev.id, "createdDateTime": iso(created), "modificationDateTime": iso(created), "objectType": "EVENT",
        "programID": ev.program_id, "eventName": f"{ev.program_id} {ev.id} ({status.value})",
        "priority": 0 if status is dr.EventStatus.CANCELLED else 1,
        "targets": [{"type": "RESOURCE_NAME", "values": [r for r, _ in res]}],
        "reportDescriptors": [{"payloadType": "USAGE", "readingType": "DIRECT_READ", "units": "KW",
                               "aggregate": False, "frequency": -1, "repeat": 1}],
        "payloadDescriptors": [{"objectType": "EVENT_PAYLOAD_DESCRIPTOR", "payloadType": SETPOINT, "units": "KW"}],
        "intervalPeriod": period,
        "intervals": [{"id": 0, "intervalPeriod": period, "payloads": [
            {"type": "SIMPLE", "values": [0 if status is dr.EventStatus.CANCELLED else 1]},
            {"type": SETPOINT, "values": [round(-kw, 3)]},
        ]}],
    }


def resource(res: dr.Resource, ven_id: str, created: datetime) -> dict[str, Any]:
    return {"id": res.id.replace("/", "."), "createdDateTime": iso(created), "modificationDateTime": iso(created),
            "objectType": "RESOURCE", "resourceName": res.id, "venID": ven_id,
            "attributes": [{"type": "KIND", "values": [res.kind.value]},
                           {"type": "CAPACITY_KW", "values": [res.capacity_kw]}],
            "targets": [{"type": "GROUP", "values": [res.feeder_id]}]}


# --- what clients send -----------------------------------------------------------------------------


def _payload(p: Any) -> bool:
    return isinstance(p, dict) and isinstance(p.get("type"), str) and isinstance(p.get("values"), list)


@dataclass(frozen=True, slots=True)
class NewEvent:
    program_id: str
    start: datetime
    end: datetime
    target_kw: float


def new_event(body: Any) -> NewEvent:
    """A business-logic ``POST /events``: programID, intervalPeriod {start, duration}, and one interval
    whose ``DISPATCH_SETPOINT_RELATIVE`` payload is the (negative) kW to shed."""
    b = obj(body, "EVENT")
    pid = text(b, "programID")
    period = b.get("intervalPeriod")
    if not isinstance(period, dict):
        raise bad("'intervalPeriod' is required: {\"start\": \"<RFC 3339>\", \"duration\": \"PT<n>H\"}")
    start = timestamp(period.get("start"), "intervalPeriod.start")
    length = duration(period.get("duration"), "intervalPeriod.duration")
    if length <= timedelta(0):
        raise bad("intervalPeriod.duration must be longer than zero")
    intervals = b.get("intervals")
    if not isinstance(intervals, list) or not intervals:
        raise bad(f"'intervals' is required: a list with one interval whose payloads hold {SETPOINT} [-kW]")
    kw: float | None = None
    for i, iv in enumerate(intervals):
        if not isinstance(iv, dict) or not isinstance(iv.get("payloads"), list):
            raise bad(f"intervals[{i}] must be an object with 'id' and a 'payloads' list")
        for p in iv["payloads"]:
            if not isinstance(p, dict) or not isinstance(p.get("type"), str) or not isinstance(p.get("values"), list):
                raise bad(f"intervals[{i}].payloads holds {p!r:.60}; a payload is {{\"type\": str, \"values\": [...]}}")
            if p["type"] == SETPOINT:
                vals = p["values"]
                if len(vals) != 1 or not isinstance(vals[0], int | float) or isinstance(vals[0], bool) or vals[0] >= 0:
                    raise bad(f"{SETPOINT} values must be one negative number (kW to shed), not {vals!r:.60}")
                kw = -float(vals[0])
    if kw is None:
        raise bad(f"no {SETPOINT} payload: put {{\"type\": \"{SETPOINT}\", \"values\": [-kW]}} in the interval")
    assert pid is not None
    return NewEvent(pid, start, start + length, kw)


@dataclass(frozen=True, slots=True)
class NewReport:
    program_id: str
    event_id: str
    client_name: str
    report_name: str | None
    resource_names: tuple[str, ...]
    opt_outs: tuple[str, ...]


def new_report(body: Any) -> NewReport:
    b = obj(body, "REPORT")
    pid, eid, client = text(b, "programID"), text(b, "eventID"), text(b, "clientName")
    resources = b.get("resources")
    if not isinstance(resources, list) or not resources:
        raise bad("'resources' is required: a list of {resourceName, intervals[{id, payloads}]}")
    names: list[str] = []
    outs: list[str] = []
    for i, r in enumerate(resources):
        if not isinstance(r, dict):
            raise bad(f"resources[{i}] must be an object with resourceName and intervals")
        name = text(r, "resourceName", max_len=256)
        assert name is not None
        ivs = r.get("intervals")
        if not isinstance(ivs, list):
            raise bad(f"resources[{i}].intervals must be a list of {{id, payloads}}")
        for iv in ivs:
            if not isinstance(iv, dict) or not isinstance(iv.get("payloads"), list):
                raise bad(f"resources[{i}].intervals holds {iv!r:.60}; an interval is {{id: int, payloads: [...]}}")
            for p in iv["payloads"]:
                if not _payload(p):
                    raise bad(f"resources[{i}] payload {p!r:.60} is not {{\"type\": str, \"values\": [...]}}")
                if p["type"] == OPT_OUT and p["values"] == [True]:
                    outs.append(name)
        names.append(name)
    assert pid is not None and eid is not None and client is not None
    return NewReport(pid, eid, client, text(b, "reportName", required=False), tuple(names), tuple(outs))
