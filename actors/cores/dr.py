"""Demand response, the pure part: programme rules, dispatch, opt-out re-planning, baseline, performance.

Typed inputs, frozen results; no store, no clock (``now`` is an argument), no Ray.

* **Rules** (:func:`check_event`): an event must start in the future with the programme's notice,
  last at most its hours per event, fall inside its season, not overlap another live event of the
  same programme on the same feeder, and the programme must have events left this season. A broken
  rule is ``BAD_INPUT`` whose message names it (``rule=NOTICE`` ...), so a client can tell them apart.
* **Dispatch** (:func:`dispatch`): the resources enrolled on the event's day on the event's feeder,
  not opted out, with events left this season, are taken fewest-events-this-season first (fatigue
  spreading), then largest capacity, until the target is met. Short of it: the shortfall is stated,
  or the event is refused when the operator asked for all-or-nothing (rule ``SHORTFALL``).
* **Opt-out** (:func:`check_opt_out`, then :func:`dispatch` again): allowed until the programme's
  opt-out deadline before the start and within its opt-outs per season; dispatch re-plans without
  the resource, reaching for the next ones.
* **Baseline** (:func:`baseline_10_in_10`): the customer baseline load of the "10-in-10" method
  (the mean, per 15-minute interval, of the 10 most recent eligible days before the event day:
  weekdays without an event and without a holiday), with a same-day adjustment: the ratio of the
  metered load to that baseline over the 2 hours ending 1 hour before the event's start, capped at
  +-20 % (the common ISO practice, e.g. NYISO's CBL / CAISO's 10-in-10 with a 20 % cap).
* **Performance** (:func:`performance`): delivered kW = the mean of (baseline - metered) over the
  event's intervals.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from enum import StrEnum

import numpy as np

from graph_schema.errors import BadInput

INTERVAL = timedelta(minutes=15)
PER_DAY = 96
BASELINE_METHOD = ("10-in-10 (mean of the 10 most recent non-event weekdays per 15-min interval) with a same-day "
                   "multiplicative adjustment over the 2 h ending 1 h before the start, capped at +-20 %")
BASELINE_DAYS = 10
BASELINE_LOOKBACK_DAYS = 45
ADJUST_CAP = 0.2


class ProgramKind(StrEnum):
    CAPACITY = "CAPACITY"
    ENERGY = "ENERGY"
    CRITICAL_PEAK = "CRITICAL_PEAK"
    DIRECT_LOAD_CONTROL = "DIRECT_LOAD_CONTROL"


class ResourceKind(StrEnum):
    CUSTOMER_LOAD = "CUSTOMER_LOAD"
    THERMOSTAT = "THERMOSTAT"
    EV_CHARGER = "EV_CHARGER"
    STORAGE = "STORAGE"


class EventStatus(StrEnum):
    SCHEDULED = "SCHEDULED"
    ACTIVE = "ACTIVE"
    COMPLETED = "COMPLETED"
    CANCELLED = "CANCELLED"


@dataclass(frozen=True, slots=True)
class Program:
    id: str
    name: str
    kind: ProgramKind
    season_start: date
    season_end: date  # exclusive
    max_events_per_season: int
    max_hours_per_event: float
    min_notice_min: int
    opt_out_deadline_min: int = 0  # an opt-out must come at least this long before the start
    max_opt_outs_per_season: int = 3


@dataclass(frozen=True, slots=True)
class Resource:
    id: str
    program_id: str
    feeder_id: str
    load_id: str
    account: str
    kind: ResourceKind
    capacity_kw: float
    enrolled_from: date
    enrolled_until: date | None = None  # exclusive; None: open-ended

    def enrolled_on(self, day: date) -> bool:
        return self.enrolled_from <= day and (self.enrolled_until is None or day < self.enrolled_until)


@dataclass(frozen=True, slots=True)
class EventRequest:
    program_id: str
    feeder_id: str
    start: datetime
    end: datetime
    target_kw: float
    all_or_nothing: bool = False


@dataclass(frozen=True, slots=True)
class EventRecord:
    """An event as stored (what the rules and the fatigue count look at)."""

    id: str
    program_id: str
    feeder_id: str
    start: datetime
    end: datetime
    target_kw: float
    cancelled: bool = False
    resources: tuple[tuple[str, float], ...] = ()  # (resource id, kW) dispatched
    opted_out: tuple[str, ...] = ()

    def status(self, now: datetime) -> EventStatus:
        if self.cancelled:
            return EventStatus.CANCELLED
        if now < self.start:
            return EventStatus.SCHEDULED
        return EventStatus.ACTIVE if now < self.end else EventStatus.COMPLETED


@dataclass(frozen=True, slots=True)
class Dispatch:
    resources: tuple[tuple[str, float], ...]  # (resource id, kW), in dispatch order
    planned_kw: float
    shortfall_kw: float


def _bad(rule: str, message: str) -> BadInput:
    return BadInput(f"rule={rule}: {message}")


def _season_events(program: Program, events: Sequence[EventRecord]) -> list[EventRecord]:
    return [e for e in events if e.program_id == program.id and not e.cancelled
            and program.season_start <= e.start.date() < program.season_end]


def check_event(program: Program, req: EventRequest, events: Sequence[EventRecord], now: datetime) -> None:
    """Raise BAD_INPUT naming the first rule ``req`` breaks (see the module docstring)."""
    if req.program_id != program.id:
        raise _bad("PROGRAM", f"the request names programme {req.program_id!r}, not {program.id!r}")
    if not (req.target_kw > 0):
        raise _bad("TARGET", f"targetKw {req.target_kw} must be above 0 kW")
    if req.end <= req.start:
        raise _bad("WINDOW", f"end {req.end.isoformat()} is not after start {req.start.isoformat()}; give start < end")
    if req.start <= now:
        raise _bad("IN_THE_PAST", f"start {req.start.isoformat()} is not in the future (now {now.isoformat()})")
    notice = timedelta(minutes=program.min_notice_min)
    if req.start - now < notice:
        raise _bad("NOTICE", f"programme {program.id} needs {program.min_notice_min} min of notice; start at "
                             f"{(now + notice).isoformat()} or later")
    hours = (req.end - req.start).total_seconds() / 3600
    if hours > program.max_hours_per_event + 1e-9:
        raise _bad("MAX_HOURS_PER_EVENT", f"the event lasts {hours:.2f} h; programme {program.id} allows at most "
                                          f"{program.max_hours_per_event:g} h per event")
    if not (program.season_start <= req.start.date() < program.season_end):
        raise _bad("OUTSIDE_SEASON", f"programme {program.id}'s season is {program.season_start.isoformat()} .. "
                                     f"{program.season_end.isoformat()} (exclusive); the event starts on "
                                     f"{req.start.date().isoformat()}")
    for e in events:
        if (e.program_id == program.id and e.feeder_id == req.feeder_id and not e.cancelled
                and e.start < req.end and req.start < e.end):
            raise _bad("OVERLAPPING", f"event {e.id} of programme {program.id} on feeder {req.feeder_id} already runs "
                                      f"{e.start.isoformat()} .. {e.end.isoformat()}; choose a window that does not "
                                      f"overlap it or cancel it first")
    used = len(_season_events(program, events))
    if used >= program.max_events_per_season:
        raise _bad("MAX_EVENTS_PER_SEASON", f"programme {program.id} has used its {program.max_events_per_season} "
                                            f"events this season")


def resource_events(resource_id: str, program: Program, events: Sequence[EventRecord]) -> int:
    """Events of this season the resource was dispatched in (its fatigue)."""
    return sum(1 for e in _season_events(program, events) if any(r == resource_id for r, _ in e.resources))


def dispatch(program: Program, resources: Sequence[Resource], req: EventRequest, events: Sequence[EventRecord],
             opted_out: Sequence[str] = (), *, event_id: str | None = None) -> Dispatch:
    """Pick resources for ``req`` (see the module docstring). ``event_id`` names the event being
    re-planned, whose own dispatch does not count as fatigue. Raises BAD_INPUT (rule ``SHORTFALL``)
    when all-or-nothing cannot be met."""
    others = [e for e in events if e.id != event_id]
    day = req.start.date()
    out = set(opted_out)
    eligible = [r for r in resources if r.program_id == program.id and r.feeder_id == req.feeder_id
                and r.enrolled_on(day) and r.id not in out and r.capacity_kw > 0
                and resource_events(r.id, program, others) < program.max_events_per_season]
    eligible.sort(key=lambda r: (resource_events(r.id, program, others), -r.capacity_kw, r.id))
    chosen: list[tuple[str, float]] = []
    total = 0.0
    for r in eligible:
        if total >= req.target_kw - 1e-9:
            break
        chosen.append((r.id, r.capacity_kw))
        total += r.capacity_kw
    shortfall = max(0.0, req.target_kw - total)
    if shortfall > 1e-9 and req.all_or_nothing:
        raise _bad("SHORTFALL", f"the enrolled resources available on feeder {req.feeder_id} give {total:.1f} kW, "
                                f"{shortfall:.1f} kW short of the {req.target_kw:.1f} kW target; lower the target, "
                                f"or create the event without allOrNothing to accept the shortfall")
    return Dispatch(tuple(chosen), min(total, req.target_kw) if chosen else 0.0, shortfall)


def check_opt_out(program: Program, event: EventRecord, resource_id: str, events: Sequence[EventRecord],
                  now: datetime) -> None:
    """Raise BAD_INPUT naming the rule when ``resource_id`` may not opt out of ``event`` now."""
    if event.cancelled:
        raise _bad("CANCELLED", f"event {event.id} was cancelled; there is nothing to opt out of")
    if resource_id not in {r for r, _ in event.resources}:
        raise _bad("NOT_DISPATCHED", f"resource {resource_id} is not dispatched in event {event.id}")
    deadline = event.start - timedelta(minutes=program.opt_out_deadline_min)
    if now >= deadline:
        raise _bad("OPT_OUT_DEADLINE", f"opt-outs of event {event.id} closed at {deadline.isoformat()} "
                                       f"({program.opt_out_deadline_min} min before its start)")
    used = sum(1 for e in _season_events(program, events) if resource_id in e.opted_out)
    if used >= program.max_opt_outs_per_season:
        raise _bad("MAX_OPT_OUTS_PER_SEASON", f"resource {resource_id} has used its {program.max_opt_outs_per_season} "
                                              f"opt-outs this season")


# -- baseline and performance --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Baseline:
    kw: np.ndarray  # per 15-minute interval of the event day (96)
    days: tuple[date, ...]  # the days averaged
    adjustment: float  # the same-day factor applied (1.0: none)


def baseline_10_in_10(daily_kw: Mapping[date, np.ndarray], event_day: date, event_start_index: int,
                      excluded: Sequence[date] = ()) -> Baseline:
    """The baseline of ``event_day`` from per-day load profiles (96 kW values, NaN missing).

    Eligible days: before the event day, Monday..Friday, complete, not in ``excluded`` (event days,
    holidays). Fewer than 10 eligible days in :data:`BASELINE_LOOKBACK_DAYS`: as many as there are
    (at least one, else BAD_INPUT rule ``BASELINE``)."""
    skip = set(excluded)
    days: list[date] = []
    d = event_day - timedelta(days=1)
    while len(days) < BASELINE_DAYS and (event_day - d).days <= BASELINE_LOOKBACK_DAYS:
        prof = daily_kw.get(d)
        if d.weekday() < 5 and d not in skip and prof is not None and np.isfinite(prof).all():
            days.append(d)
        d -= timedelta(days=1)
    if not days:
        raise _bad("BASELINE", f"no eligible day (complete metered weekday without an event) in the "
                               f"{BASELINE_LOOKBACK_DAYS} days before {event_day.isoformat()}")
    base = np.mean([daily_kw[x] for x in days], axis=0)
    adj = 1.0
    today = daily_kw.get(event_day)
    lo, hi = event_start_index - 12, event_start_index - 4  # the 2 h ending 1 h before the start
    if today is not None and lo >= 0:
        a, b = today[lo:hi], base[lo:hi]
        if np.isfinite(a).all() and b.sum() > 0:
            adj = float(np.clip(a.sum() / b.sum(), 1 - ADJUST_CAP, 1 + ADJUST_CAP))
    return Baseline(kw=base * adj, days=tuple(days), adjustment=adj)


@dataclass(frozen=True, slots=True)
class Performance:
    target_kw: float
    delivered_kw: float
    baseline_kw: float  # mean over the event's intervals
    metered_kw: float
    intervals: int
    baseline_method: str = BASELINE_METHOD


def performance(target_kw: float, baseline: Baseline, metered_kw: np.ndarray, first: int, last: int) -> Performance:
    """Delivered reduction over intervals ``first .. last-1`` of the event day."""
    b = baseline.kw[first:last]
    m = metered_kw[first:last]
    ok = np.isfinite(b) & np.isfinite(m)
    if not ok.any():
        raise _bad("NO_METER_DATA", "no metered interval inside the event's window yet; ask after the event")
    return Performance(target_kw=target_kw, delivered_kw=float(np.mean(b[ok] - m[ok])),
                       baseline_kw=float(np.mean(b[ok])), metered_kw=float(np.mean(m[ok])), intervals=int(ok.sum()))
