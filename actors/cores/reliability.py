"""IEEE 1366 distribution reliability indices and major event days (pure).

Implements **IEEE Std 1366-2022** ("IEEE Guide for Electric Power Distribution Reliability
Indices"): SAIFI, SAIDI, CAIDI, CAIFI, ASAI, MAIFIe, CEMIn and CELID (clause 3 definitions,
clause 4 indices), and the 2.5 beta method for major event days (clause 4.5). Functions over
typed inputs with frozen results; no I/O, no clock, no Ray.

Choices the standard leaves open, made here (and stated in every report):

- **Momentary/sustained threshold**: an interruption of a customer lasting more than
  ``threshold_min`` (default 5 minutes, the standard's value; ``DMS_RELIABILITY_MOMENTARY_MIN``)
  is sustained, otherwise momentary. Classification is per group of customers (per restoration
  step): customers that a switching step restored within the threshold had a momentary
  interruption, the others of the same record a sustained one. A record flagged ``momentary`` is
  momentary for all its customers.
- **MAIFIe event rule** (IEEE 1366 clause 3: all operations of an interrupting device within the
  event window count as one momentary interruption event): per feeder, momentary records starting
  within ``threshold_min`` of an event's first one join that event; the event's customers are
  the most any of its operations interrupted. An event is not counted when a sustained
  interruption on the same feeder starts within its window (the momentary operations immediately
  preceded a sustained interruption, which the standard excludes from MAIFIe).
- **Day boundary**: days (major event days, daily SAIDI, monthly trends) are calendar days in the
  utility's time zone (``DMS_TIMEZONE``, default UTC); an interruption belongs wholly to the day
  (and the period) on which it began, as IEEE 1366 assigns multi-day events.
- **Standard deviation**: beta is the *sample* standard deviation (n - 1) of the natural logs of
  the non-zero daily SAIDI values. The standard says "standard deviation" without saying which;
  the days of five years are a sample of the utility's daily SAIDI distribution, whose log-normal
  sigma the sample form (n - 1) estimates without bias (it is also what a spreadsheet's STDEV
  gives). With five years of days the two differ by about 0.05 % (``med_threshold(ddof=0)``
  gives the population form).
- **History for T_MED**: the five years before the reported period (e.g. 2019-2023 for 2024).
  With fewer than five years recorded (the first record more than 31 days into the window), all
  available history is used, as clause 4.5 directs; the result says how many years were used.
  Fewer than two non-zero days: no threshold, no MEDs.
- **Planned interruptions** (causes PLANNED and PLANNED_SWITCHING) are not in the indices; they
  are counted apart (IEEE 1366 lets a utility exclude scheduled interruptions; the head-end's
  outage records already separate them).
- **CEMIn / CELID without per-customer data**: where records name the loads interrupted (the
  head-end's own outage records), customers are tracked per load exactly. Imported history gives
  counts only; there, customers of a feeder are assumed *nested* (each interruption hits the most
  exposed customers first, the longest-out groups first), which gives an upper bound of CEMIn.
- **Customers served** (N_T) of a period spanning several years is the mean of the yearly counts.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from actors.cores.outages import Outage

__all__ = [
    "EDITION",
    "Indices",
    "Interruption",
    "MedResult",
    "Segment",
    "compute_indices",
    "daily_saidi",
    "from_outage",
    "from_steps",
    "major_event_days",
    "med_threshold",
]

EDITION = "IEEE Std 1366-2022"
DEFAULT_THRESHOLD_MIN = 5.0
PLANNED_CAUSES = frozenset({"PLANNED", "PLANNED_SWITCHING"})
MED_HISTORY_YEARS = 5
HISTORY_START_TOLERANCE_DAYS = 31


@dataclass(frozen=True, slots=True)
class Segment:
    """``customers`` out from ``start`` to ``end`` (one restoration step of an interruption).

    ``group`` names who they are (a load id) when the model knows it; None for counts only."""

    customers: int
    start: datetime
    end: datetime
    group: str | None = None

    @property
    def minutes(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0) / 60.0


@dataclass(frozen=True, slots=True)
class Interruption:
    """One interruption record: a utility's imported row or a head-end outage record."""

    id: str
    feeder_id: str
    start: datetime
    end: datetime
    customers_interrupted: int
    cause: str
    momentary: bool
    segments: tuple[Segment, ...]
    # Customer minutes given by the utility (the optional CSV column): used instead of the sum
    # over the segments when present.
    customer_minutes: float | None = None
    source: str = "import"

    @property
    def planned(self) -> bool:
        return self.cause.upper() in PLANNED_CAUSES

    @property
    def duration_min(self) -> float:
        return max((self.end - self.start).total_seconds(), 0.0) / 60.0


def from_steps(
    id: str, feeder_id: str, start: datetime, end: datetime, customers: int, cause: str, momentary: bool,
    steps: Sequence[tuple[datetime, int]] = (), customer_minutes: float | None = None, source: str = "import",
) -> Interruption:
    """An interruption restored in ``steps`` ((time, customers restored), in time order); whoever
    is left is restored at ``end``. Inputs are assumed validated (see server.reports.imports)."""
    segments: list[Segment] = []
    left = customers
    for at, restored in steps:
        n = min(restored, left)
        if n > 0:
            segments.append(Segment(n, start, at))
        left -= n
    if left > 0 or not segments:
        segments.append(Segment(max(left, 0), start, end))
    return Interruption(id, feeder_id, start, end, customers, cause, momentary, tuple(segments),
                        customer_minutes, source)


def from_outage(outage: Outage, *, until: datetime | None = None) -> Interruption:
    """A head-end outage record (actors.cores.outages) as an interruption, per load: each load is
    out from the step that lost it to the step that restored it (``until``, or the last step, for
    a load still out)."""
    segs: list[Segment] = []
    since: dict[str, datetime] = {}
    cust = outage.customers_by_load
    for s in outage.steps:
        for ld in s.load_ids_lost:
            since.setdefault(ld, s.at)
        for ld in s.load_ids_restored:
            t0 = since.pop(ld, None)
            if t0 is not None:
                segs.append(Segment(int(cust.get(ld, 0)), t0, s.at, ld))
    last = until or outage.restored_at or (outage.steps[-1].at if outage.steps else outage.started_at)
    for ld, t0 in sorted(since.items()):
        segs.append(Segment(int(cust.get(ld, 0)), t0, max(last, t0), ld))
    end = max([outage.started_at, *(s.end for s in segs)])
    return Interruption(outage.id, outage.feeder_id, outage.started_at, end, outage.customers_interrupted,
                        outage.cause.value, outage.momentary, tuple(segs), None, "outage")


# ------------------------------------------------------------------------------------- indices


@dataclass(frozen=True, slots=True)
class Indices:
    """IEEE 1366-2022 indices of one scope and period. Ratios with a zero denominator are None."""

    start: datetime
    end: datetime
    customers_served: float
    interruptions: int  # sustained, unplanned records
    customers_interrupted: float  # CI: customer interruptions (sustained)
    customer_minutes: float  # CMI
    customers_with_interruption: float  # CN: distinct customers with >= 1 sustained interruption
    saidi_min: float
    saifi: float
    caidi_min: float | None
    caifi: float | None
    asai: float
    momentary_events: int
    momentary_customer_events: float  # sum of IM_E
    maifi_e: float
    cemi: tuple[tuple[int, float], ...]  # (n, CEMIn: share with more than n sustained interruptions)
    celid_s: float  # share with a single interruption >= celid_hours
    celid_t: float  # share with interruptions totalling >= celid_hours
    celid_hours: float
    planned_interruptions: int
    excluded_days: tuple[date, ...] = ()

    def cemi_n(self, n: int) -> float | None:
        return dict(self.cemi).get(n)


def _local_day(t: datetime, tz: tzinfo) -> date:
    return t.astimezone(tz).date()


def _sustained_segments(i: Interruption, threshold_min: float) -> list[Segment]:
    if i.momentary:
        return []
    return [s for s in i.segments if s.minutes > threshold_min and s.customers > 0]


def _momentary_segments(i: Interruption, threshold_min: float) -> list[Segment]:
    if i.momentary:
        return [s for s in i.segments if s.customers > 0]
    return [s for s in i.segments if s.minutes <= threshold_min and s.customers > 0]


def _ci(segs: Sequence[Segment]) -> float:
    """Customers interrupted: a group (load) counted once however many of its segments."""
    by_group: dict[str, int] = {}
    n = 0.0
    for s in segs:
        if s.group is None:
            n += s.customers
        else:
            by_group[s.group] = max(by_group.get(s.group, 0), s.customers)
    return n + sum(by_group.values())


def _cmi(i: Interruption, segs: Sequence[Segment]) -> float:
    if i.customer_minutes is not None and not i.momentary:
        return float(i.customer_minutes)
    return sum(s.customers * s.minutes for s in segs)


@dataclass(frozen=True, slots=True)
class _Exposure:
    """Customers of one feeder with the same interruption experience."""

    customers: float
    count: int
    total_min: float
    longest_min: float


def _exposures(records: Sequence[Interruption], threshold_min: float, served: float) -> list[_Exposure]:
    sustained = [(_sustained_segments(i, threshold_min), i) for i in records]
    sustained = [(segs, i) for segs, i in sustained if segs]
    if not sustained:
        return []
    if all(s.group is not None for segs, _ in sustained for s in segs):  # exact, per load
        per: dict[str, list[float]] = {}
        size: dict[str, int] = {}
        for segs, _ in sustained:
            mins: dict[str, float] = defaultdict(float)
            for s in segs:
                assert s.group is not None
                mins[s.group] += s.minutes
                size[s.group] = max(size.get(s.group, 0), s.customers)
            for g, m in mins.items():
                per.setdefault(g, []).append(m)
        return [_Exposure(size[g], len(ms), sum(ms), max(ms)) for g, ms in per.items()]
    # Nested: each record covers ranks [0, CI) of the feeder's customers, longest-out first.
    profiles: list[tuple[list[float], list[float]]] = []  # (cumulative customers, minutes)
    cuts: set[float] = {0.0}
    for segs, _ in sustained:
        cum: list[float] = []
        durations: list[float] = []
        c = 0.0
        for s in sorted(segs, key=lambda s: -s.minutes):
            c += s.customers
            cum.append(c)
            durations.append(s.minutes)
            cuts.add(min(c, served) if served > 0 else c)
        profiles.append((cum, durations))
    edges = sorted(cuts)
    out: list[_Exposure] = []
    for a, b in itertools.pairwise(edges):
        if b <= a:
            continue
        count, total, longest = 0, 0.0, 0.0
        for cum_i, dur_i in profiles:
            k = bisect.bisect_right(cum_i, a)
            if k < len(cum_i):
                count += 1
                total += dur_i[k]
                longest = max(longest, dur_i[k])
        if count:
            out.append(_Exposure(b - a, count, total, longest))
    return out


def _maifi_events(records: Sequence[Interruption], threshold_min: float) -> tuple[int, float]:
    """Momentary interruption events of one feeder and the customers they interrupted (sum IM_E)."""
    window = timedelta(minutes=threshold_min)
    hits: list[tuple[datetime, float]] = []
    within_sustained = 0.0
    events_within = 0
    sustained_starts: list[datetime] = []
    for i in records:
        mom = _momentary_segments(i, threshold_min)
        sus = _sustained_segments(i, threshold_min)
        if sus:
            sustained_starts.append(min(s.start for s in sus))
            if mom:  # customers restored quickly by switching inside a sustained outage
                within_sustained += _ci(mom)
                events_within += 1
        elif mom:
            hits.append((i.start, _ci(mom)))
    sustained_starts.sort()
    hits.sort()
    events, customers = events_within, within_sustained
    k = 0
    while k < len(hits):
        t0, most = hits[k]
        k += 1
        while k < len(hits) and hits[k][0] < t0 + window:
            most = max(most, hits[k][1])
            k += 1
        j = bisect.bisect_left(sustained_starts, t0)
        if j < len(sustained_starts) and sustained_starts[j] <= t0 + window:
            continue  # immediately preceded a sustained interruption: not a MAIFIe event
        events += 1
        customers += most
    return events, customers


def compute_indices(
    records: Iterable[Interruption],
    customers_served: Mapping[str, float],
    start: datetime,
    end: datetime,
    *,
    threshold_min: float = DEFAULT_THRESHOLD_MIN,
    tz: tzinfo = UTC,
    exclude_days: Iterable[date] = (),
    cemi_ns: Sequence[int] = (1, 2, 3, 4, 5),
    celid_hours: float = 8.0,
) -> Indices:
    """Indices over the feeders of ``customers_served`` (feeder id -> N_T) for interruptions that
    begin in ``[start, end)``, leaving out those that begin on ``exclude_days`` (local days)."""
    if end <= start:
        raise ValueError(f"period end {end.isoformat()} is not after its start {start.isoformat()}")
    excluded = frozenset(exclude_days)
    n_t = float(sum(customers_served.values()))
    by_feeder: dict[str, list[Interruption]] = defaultdict(list)
    planned = 0
    for i in records:
        if i.feeder_id not in customers_served or not (start <= i.start < end):
            continue
        if excluded and _local_day(i.start, tz) in excluded:
            continue
        if i.planned:
            planned += 1
            continue
        by_feeder[i.feeder_id].append(i)
    ci = cmi = 0.0
    n_sus = 0
    events = 0
    im = 0.0
    exposures: list[_Exposure] = []
    for fid, recs in by_feeder.items():
        for i in recs:
            segs = _sustained_segments(i, threshold_min)
            if segs:
                n_sus += 1
                ci += _ci(segs)
                cmi += _cmi(i, segs)
        e, c = _maifi_events(recs, threshold_min)
        events += e
        im += c
        exposures.extend(_exposures(recs, threshold_min, float(customers_served[fid])))
    cn = sum(x.customers for x in exposures)
    minutes = (end - start).total_seconds() / 60.0

    def share(v: float) -> float:
        return v / n_t if n_t > 0 else 0.0

    saifi, saidi = share(ci), share(cmi)
    return Indices(
        start=start, end=end, customers_served=n_t, interruptions=n_sus, customers_interrupted=ci,
        customer_minutes=cmi, customers_with_interruption=cn, saidi_min=saidi, saifi=saifi,
        caidi_min=(cmi / ci) if ci > 0 else None, caifi=(ci / cn) if cn > 0 else None,
        asai=(1.0 - cmi / (n_t * minutes)) if n_t > 0 else 1.0,
        momentary_events=events, momentary_customer_events=im, maifi_e=share(im),
        cemi=tuple((n, share(sum(x.customers for x in exposures if x.count > n))) for n in cemi_ns),
        celid_s=share(sum(x.customers for x in exposures if x.longest_min >= celid_hours * 60.0)),
        celid_t=share(sum(x.customers for x in exposures if x.total_min >= celid_hours * 60.0)),
        celid_hours=celid_hours, planned_interruptions=planned, excluded_days=tuple(sorted(excluded)),
    )


# ------------------------------------------------------------------------------ major event days


def daily_saidi(
    records: Iterable[Interruption],
    customers_served: Mapping[str, float] | Mapping[int, Mapping[str, float]],
    *,
    tz: tzinfo = UTC,
    threshold_min: float = DEFAULT_THRESHOLD_MIN,
    start: date | None = None,
    end: date | None = None,
) -> dict[date, float]:
    """SAIDI (minutes) of each local day with sustained unplanned interruptions beginning on it,
    over the feeders of ``customers_served`` (feeder -> N_T, or year -> feeder -> N_T)."""
    yearly = _by_year(customers_served)
    cmi: dict[date, float] = defaultdict(float)
    feeders = set().union(*(m.keys() for m in yearly.values())) if yearly else set()
    for i in records:
        if i.feeder_id not in feeders or i.planned:
            continue
        d = _local_day(i.start, tz)
        if (start is not None and d < start) or (end is not None and d >= end):
            continue
        segs = _sustained_segments(i, threshold_min)
        if segs:
            cmi[d] += _cmi(i, segs)
    out: dict[date, float] = {}
    for d, v in cmi.items():
        n_t = sum(_served_in(yearly, d.year).values())
        if n_t > 0 and v > 0:
            out[d] = v / n_t
    return out


def _by_year(served: Mapping[str, float] | Mapping[int, Mapping[str, float]]) -> dict[int | None, Mapping[str, float]]:
    if served and all(isinstance(k, int) for k in served):
        return dict(served)  # type: ignore[arg-type]
    return {None: served}  # type: ignore[dict-item]


def _served_in(yearly: Mapping[int | None, Mapping[str, float]], year: int) -> Mapping[str, float]:
    if None in yearly:
        return yearly[None]
    if year in yearly:
        return yearly[year]
    nearest = min(yearly, key=lambda y: abs(int(y or 0) - year))  # type: ignore[arg-type]
    return yearly[nearest]


@dataclass(frozen=True, slots=True)
class MedResult:
    """The 2.5 beta threshold (IEEE 1366-2022 clause 4.5) and the major event days it finds."""

    t_med_min: float | None
    alpha: float | None
    beta: float | None
    history_start: date
    history_end: date  # exclusive
    years_of_history: float
    days_used: int  # non-zero days in the history
    fallback: str | None  # what was done instead of five full years, in words; None when not needed
    major_event_days: tuple[tuple[date, float], ...] = ()  # (day, SAIDI min) of the reported period
    std: str = "sample (n-1)"
    notes: tuple[str, ...] = field(default=())


def med_threshold(
    history: Mapping[date, float], history_start: date, history_end: date, *, data_since: date | None = None,
    ddof: int = 1,
) -> MedResult:
    """T_MED = exp(alpha + 2.5 beta) from the daily SAIDI of ``[history_start, history_end)``:
    alpha the mean and beta the standard deviation (``ddof=1``: sample) of ln(SAIDI/day), days with
    zero SAIDI left out (their log is undefined). ``data_since`` is the first day any record
    exists: history before it is missing, not zero."""
    first = max(history_start, data_since) if data_since is not None else history_start
    first = min(first, history_end)
    years = (history_end - first).days / 365.25
    logs = [math.log(v) for d, v in history.items() if first <= d < history_end and v > 0]
    fallback: str | None = None
    full = (history_end - history_start).days >= int(MED_HISTORY_YEARS * 365)
    # A history whose first record falls within its first month counts as complete: the first
    # interruption of a utility's records rarely falls on the window's first day.
    if (first - history_start).days > HISTORY_START_TOLERANCE_DAYS or not full:
        fallback = (f"only {years:.1f} years of history (from {first.isoformat()}); IEEE 1366-2022 4.5 asks for "
                    f"five years and, until five exist, all available history is used")
    if len(logs) < 2:
        return MedResult(None, None, None, first, history_end, years, len(logs),
                         (fallback + "; " if fallback else "")
                         + f"{len(logs)} day(s) with interruptions in the history, too few for a threshold: "
                           "no day is classed as a major event day")
    n = len(logs)
    alpha = sum(logs) / n
    var = sum((x - alpha) ** 2 for x in logs) / (n - ddof)
    beta = math.sqrt(var)
    return MedResult(math.exp(alpha + 2.5 * beta), alpha, beta, first, history_end, years, n, fallback,
                     std="sample (n-1)" if ddof == 1 else "population (n)")


def major_event_days(threshold: MedResult, reported: Mapping[date, float]) -> MedResult:
    """``threshold`` with the days of ``reported`` (day -> SAIDI) whose SAIDI exceeds T_MED."""
    if threshold.t_med_min is None:
        return threshold
    days = tuple(sorted((d, v) for d, v in reported.items() if v > threshold.t_med_min))
    return replace(threshold, major_event_days=days)


def years_before(day: date, years: int) -> date:
    """The same calendar day ``years`` earlier (28 February for 29 February)."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)
