"""One builder per report kind: reads what it needs, computes, returns a :class:`ReportDoc`.

RELIABILITY   IEEE 1366-2022 indices with and without major event days, the MED list and threshold,
              per feeder, per zone, monthly and yearly trends, worst feeders, CEMIn (counts only).
POWER_QUALITY voltage compliance from the historian's 10-minute averages (EN 50160 95 % statistic,
              ANSI C84.1 range A/B split), per feeder and bus, worst locations first.
OPERATIONS    control actions by operator and by application, FDIR plans and their outcomes with
              timings, alarms and acknowledgement times, DER curtailment and DR delivery.
AUDIT         access and control audit entries of the period (who, what, when, from where) with the
              whole chain verified and the result stated.

No personal data: customers appear as counts; audit entries name token subjects, as the audit log does.
"""

from __future__ import annotations

import asyncio
import json
import statistics
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta, tzinfo
from typing import Any

from actors.cores.events import Event, EventKind
from actors.cores.reliability import EDITION, Indices, Interruption, compute_indices
from graph_schema.store import GraphStore
from server.reports.data import ALL, Reliability, ReportData, analyse, served_in_period
from server.reports.doc import Cell, Chart, ReportDoc, Table

KINDS = ("RELIABILITY", "POWER_QUALITY", "OPERATIONS", "AUDIT")
APPLICATIONS = frozenset({"fdir", "volt-var", "vvo", "der", "dr", "estimation"})


@dataclass
class ReportContext:
    store: GraphStore
    data: ReportData
    now: datetime
    generated_at: datetime
    historian_root: str | None = None
    audit: Any = None  # security.audit.AuditLog


def _r(v: float | None, digits: int = 6) -> float | None:
    return None if v is None else round(float(v), digits)


def _months(start: datetime, end: datetime, tz: tzinfo) -> list[tuple[str, datetime, datetime]]:
    out = []
    d = start.astimezone(tz).date().replace(day=1)
    while True:
        lo = datetime.combine(d, time(0), tzinfo=tz)
        nxt = (d.replace(day=28) + timedelta(days=4)).replace(day=1)
        hi = datetime.combine(nxt, time(0), tzinfo=tz)
        if lo >= end:
            break
        out.append((d.strftime("%Y-%m"), max(lo, start), min(hi, end)))
        d = nxt
    return out


def _index_row(label: str, ix: Indices) -> tuple[Cell, ...]:
    return (label, ix.customers_served, ix.interruptions, ix.customers_interrupted, _r(ix.customer_minutes, 3),
            _r(ix.saidi_min), _r(ix.saifi), _r(ix.caidi_min), _r(ix.caifi), _r(ix.asai, 9), _r(ix.maifi_e),
            ix.momentary_events, _r(ix.celid_s), _r(ix.celid_t))


INDEX_COLUMNS = ("scope", "customers_served", "sustained_interruptions", "customers_interrupted",
                 "customer_minutes", "saidi_min", "saifi", "caidi_min", "caifi", "asai", "maifi_e",
                 "momentary_events", "celid_s", "celid_t")


def method_notes_reliability(rel: Reliability) -> tuple[str, ...]:
    med = rel.med
    notes = [
        f"Indices per {EDITION} (IEEE Guide for Electric Power Distribution Reliability Indices).",
        f"Sustained interruption: longer than {rel.threshold_min:g} minutes; shorter ones are momentary "
        "(per restoration step: customers restored within the threshold had a momentary interruption).",
        "MAIFIe: momentary operations of a feeder within the threshold window of the first form one event; an "
        "event immediately followed by a sustained interruption is not counted.",
        f"Days are calendar days in {rel.timezone}; an interruption belongs to the day and period it began in.",
        "Major event days by the 2.5 beta method: daily SAIDI of the five years before the period, zero days left "
        f"out, alpha = mean and beta = {med.std} standard deviation of ln(SAIDI/day), T_MED = exp(alpha + 2.5 beta); "
        "MEDs are classified for the whole system and excluded from every scope's 'without MED' figures.",
        "Planned interruptions (PLANNED, PLANNED_SWITCHING) are excluded from the indices and counted apart.",
        "CEMIn/CELID/CAIFI: per load where the head-end's records name the loads; for imported history (counts only) "
        "the feeder's customers are assumed nested (the most exposed customers are hit first): CEMIn is then an "
        "upper bound, the customers interrupted at least once (CAIFI's denominator) a lower bound.",
        "Customers served: the model's customers per feeder, overridden per year by `dms customers import`; a "
        "period spanning years uses the mean of the yearly counts.",
    ]
    if med.fallback:
        notes.append(f"MED history fallback: {med.fallback}.")
    return tuple(notes)


RELIABILITY_SOURCES = (
    "Graph store: Interruption records (utility history imported with `dms outages import`).",
    "Graph store: Outage records of the head-end (FDIR outage tracking, customers per load and step).",
    "Graph store: feeder models (customers per load) and CustomersServed overrides (`dms customers import`).",
)


def reliability_doc(records: Sequence[Interruption], model: Mapping[str, int], years: Mapping[int, Mapping[str, int]],
                    zones: Mapping[str, str], start: datetime, end: datetime, *, tz: tzinfo, tz_name: str,
                    threshold_min: float, generated_at: datetime, title: str | None = None) -> ReportDoc:
    """The RELIABILITY report (pure: records and customers given)."""
    rel = analyse(records, model, years, zones, "SYSTEM", None, start, end, tz=tz, tz_name=tz_name,
                  threshold_min=threshold_min)
    med_days = [d for d, _ in rel.med.major_event_days]
    served = served_in_period(model, years, start, end, tz)
    by_feeder: dict[str, list[Interruption]] = defaultdict(list)
    for r in records:
        by_feeder[r.feeder_id].append(r)
    # Each table below looks at one month or year: hand it only the records that begin in it.
    by_month: dict[str, list[Interruption]] = defaultdict(list)
    by_feeder_month: dict[tuple[str, str], list[Interruption]] = defaultdict(list)
    by_year: dict[int, list[Interruption]] = defaultdict(list)
    for r in records:
        local = r.start.astimezone(tz)
        by_year[local.year].append(r)
        if start <= r.start < end:
            key = local.strftime("%Y-%m")
            by_month[key].append(r)
            by_feeder_month[(r.feeder_id, key)].append(r)
    common: dict[str, Any] = {"threshold_min": threshold_min, "tz": tz}

    feeder_rows, worst = [], []
    for fid in sorted(model):
        recs = by_feeder.get(fid, [])
        ix = compute_indices(recs, {fid: served[fid]}, start, end, **common)
        ex = compute_indices(recs, {fid: served[fid]}, start, end, exclude_days=med_days, **common)
        feeder_rows.append((fid, served[fid], ex.interruptions, _r(ex.saidi_min), _r(ex.saifi), _r(ex.caidi_min),
                            _r(ex.maifi_e), _r(ex.asai, 9), _r(ix.saidi_min), _r(ix.saifi), _r(ex.cemi_n(3))))
        worst.append((ex.saidi_min, ex.saifi, fid))
    worst.sort(key=lambda w: (-w[0], -w[1], w[2]))

    months = _months(start, end, tz)
    monthly_rows: list[tuple[Cell, ...]] = []
    sys_month_saidi, sys_month_saidi_all = [], []
    for label, lo, hi in months:
        ex = compute_indices(by_month[label], served, lo, hi, exclude_days=med_days, **common)
        ix = compute_indices(by_month[label], served, lo, hi, **common)
        sys_month_saidi.append(ex.saidi_min)
        sys_month_saidi_all.append(ix.saidi_min)
        monthly_rows.append((label, "SYSTEM", _r(ex.saidi_min), _r(ex.saifi), _r(ex.maifi_e), _r(ix.saidi_min),
                             _r(ix.saifi)))
    for fid in sorted(model):
        for label, lo, hi in months:
            recs = by_feeder_month.get((fid, label), [])
            ex = compute_indices(recs, {fid: served[fid]}, lo, hi, exclude_days=med_days, **common)
            monthly_rows.append((label, fid, _r(ex.saidi_min), _r(ex.saifi), _r(ex.maifi_e), None, None))

    yearly_rows: list[tuple[Cell, ...]] = []
    y_end = (end - timedelta(microseconds=1)).astimezone(tz).year
    for y in range(y_end - 5, y_end + 1):
        lo = datetime(y, 1, 1, tzinfo=tz)
        hi = datetime(y + 1, 1, 1, tzinfo=tz)
        if lo >= end:
            continue
        served_y = served_in_period(model, years, lo, hi, tz)
        year_recs = by_year.get(y, [])
        year_by_feeder: dict[str, list[Interruption]] = defaultdict(list)
        for r in year_recs:
            year_by_feeder[r.feeder_id].append(r)
        sys_y = compute_indices(year_recs, served_y, lo, hi, **common)
        yearly_rows.append((y, "SYSTEM", _r(sys_y.saidi_min), _r(sys_y.saifi), _r(sys_y.maifi_e)))
        for fid in sorted(model):
            iy = compute_indices(year_by_feeder.get(fid, []), {fid: served_y[fid]}, lo, hi, **common)
            yearly_rows.append((y, fid, _r(iy.saidi_min), _r(iy.saifi), _r(iy.maifi_e)))

    zone_rows = []
    for zone in sorted(set(zones.values())):
        zf = {f: served[f] for f, z in zones.items() if z == zone and f in served}
        ex = compute_indices(records, zf, start, end, exclude_days=med_days, **common)
        zone_rows.append(_index_row(zone, ex))

    ix, ex = rel.indices, rel.indices_excluding_med
    med = rel.med
    summary: list[tuple[str, Cell]] = [
        ("Customers served (system)", ix.customers_served),
        ("SAIDI (min), excluding MED", _r(ex.saidi_min)), ("SAIFI, excluding MED", _r(ex.saifi)),
        ("CAIDI (min), excluding MED", _r(ex.caidi_min)), ("CAIFI, excluding MED", _r(ex.caifi)),
        ("ASAI, excluding MED", _r(ex.asai, 9)), ("MAIFIe, excluding MED", _r(ex.maifi_e)),
        ("SAIDI (min), all days", _r(ix.saidi_min)), ("SAIFI, all days", _r(ix.saifi)),
        ("CAIDI (min), all days", _r(ix.caidi_min)), ("MAIFIe, all days", _r(ix.maifi_e)),
        ("T_MED (min)", _r(med.t_med_min)), ("Major event days", len(med.major_event_days)),
        ("Interruption records in the period", rel.records),
        ("Planned interruptions (not in the indices)", ix.planned_interruptions),
    ]
    no_data = None
    if rel.records == 0:
        no_data = (f"No interruption records begin in this period ({start.date()} to {end.date()}): every index "
                   "below is zero because nothing was recorded, not because nothing could be computed.")
    tables = (
        Table("indices", "System indices", INDEX_COLUMNS,
              (_index_row("SYSTEM excluding MED", ex), _index_row("SYSTEM all days", ix))),
        Table("major_event_days", "Major event days (system)", ("date", "saidi_min"),
              tuple((d.isoformat(), _r(v)) for d, v in med.major_event_days),
              note="none" if not med.major_event_days else ""),
        Table("med_threshold", "2.5 beta threshold", ("quantity", "value"), (
            ("t_med_min", _r(med.t_med_min)), ("alpha", _r(med.alpha)), ("beta", _r(med.beta)),
            ("standard_deviation", med.std), ("history_start", med.history_start.isoformat()),
            ("history_end_exclusive", med.history_end.isoformat()),
            ("years_of_history", round(med.years_of_history, 2)),
            ("non_zero_days_used", med.days_used), ("fallback", med.fallback or "none"))),
        Table("feeders", "Per feeder (excluding MED unless stated)",
              ("feeder_id", "customers_served", "sustained_interruptions", "saidi_min", "saifi", "caidi_min",
               "maifi_e", "asai", "saidi_min_all_days", "saifi_all_days", "cemi_3"), tuple(feeder_rows)),
        Table("worst_feeders", "Worst-performing feeders by SAIDI (excluding MED)",
              ("rank", "feeder_id", "saidi_min", "saifi"),
              tuple((k + 1, fid, _r(sa), _r(sf)) for k, (sa, sf, fid) in enumerate(worst[:10]))),
        Table("cemi", "Customers experiencing multiple interruptions (system, excluding MED)",
              ("more_than_n_interruptions", "share_of_customers", "customers"),
              tuple((n, _r(v), round(v * ex.customers_served)) for n, v in ex.cemi)),
        Table("zones", "Per zone (excluding MED)", INDEX_COLUMNS, tuple(zone_rows),
              note="" if zone_rows else "no zones: give a zone column in `dms customers import`"),
        Table("monthly", "Monthly trend", ("month", "scope", "saidi_min", "saifi", "maifi_e", "saidi_min_all_days",
                                           "saifi_all_days"), tuple(monthly_rows)),
        Table("yearly", "Yearly trend (all days)", ("year", "scope", "saidi_min", "saifi", "maifi_e"),
              tuple(yearly_rows)),
    )
    charts = (
        Chart("Monthly system SAIDI (min)", tuple(m[0] for m in months),
              (("excluding MED", tuple(sys_month_saidi)), ("all days", tuple(sys_month_saidi_all))), "minutes"),
        Chart("Worst feeders: SAIDI excluding MED (min)", tuple(w[2] for w in worst[:10]),
              (("SAIDI", tuple(w[0] for w in worst[:10])),), "minutes"),
        Chart("Daily system SAIDI of the period and T_MED", tuple(d.isoformat() for d, _ in med.major_event_days),
              (("MED SAIDI", tuple(v for _, v in med.major_event_days)),), "minutes",
              hline=None if med.t_med_min is None else ("T_MED", med.t_med_min)),
    )
    return ReportDoc("RELIABILITY", title or f"Distribution reliability report {_period_label(start, end, tz)}",
                     start, end, generated_at, method_notes_reliability(rel), RELIABILITY_SOURCES, tuple(summary),
                     tables, charts, no_data)


def _period_label(start: datetime, end: datetime, tz: tzinfo) -> str:
    a, b = start.astimezone(tz).date(), (end - timedelta(microseconds=1)).astimezone(tz).date()
    if a.month == 1 and a.day == 1 and b.month == 12 and b.day == 31 and a.year == b.year:
        return str(a.year)
    return f"{a.isoformat()} to {b.isoformat()}"


async def reliability_report(ctx: ReportContext, start: datetime, end: datetime) -> ReportDoc:
    records = await ctx.data.interruptions(now=ctx.now)
    model, years, zones = await ctx.data.customers_by_year()
    return await asyncio.to_thread(reliability_doc, records, model, years, zones, start, end, tz=ctx.data.tz,
                                   tz_name=ctx.data.tz_name, threshold_min=ctx.data.threshold_min,
                                   generated_at=ctx.generated_at)


# ------------------------------------------------------------------------------------ power quality

EN50160 = (0.90, 1.10)
ANSI_A = (0.95, 1.05)
ANSI_B = (0.917, 1.058)
CHUNK_DAYS = 60  # the historian answers at most 10,000 buckets per point


def voltage_rows(series: Mapping[tuple[str, str], Sequence[float]]) -> list[tuple[Cell, ...]]:
    """Per (feeder, bus): 10-minute averages counted in the EN 50160 band and ANSI C84.1 ranges."""
    rows = []
    for (fid, bus), values in series.items():
        vs = [v for v in values if v is not None]
        n = len(vs)
        if not n:
            continue
        en = sum(EN50160[0] <= v <= EN50160[1] for v in vs) / n
        a = sum(ANSI_A[0] <= v <= ANSI_A[1] for v in vs) / n
        b = sum(ANSI_B[0] <= v <= ANSI_B[1] for v in vs) / n
        rows.append((fid, bus, n, round(en * 100, 3), en >= 0.95, round(a * 100, 3), round((b - a) * 100, 3),
                     round((1 - b) * 100, 3), round(min(vs), 5), round(max(vs), 5)))
    rows.sort(key=lambda r: (r[5], r[3], r[0], r[1]))  # worst range-A share first
    return rows


def _pq_series(root: str, tz: str, feeders: Mapping[str, Any], start: datetime, end: datetime
               ) -> dict[tuple[str, str], list[float]]:
    from graph_schema.historian.query import HistorianReader
    from graph_schema.model import Quantity

    reader = HistorianReader(root, tz=tz)
    out: dict[tuple[str, str], list[float]] = defaultdict(list)
    for fid, feeder in feeders.items():
        points = {m.id: m.element_id for m in feeder.measurement_points if m.quantity == Quantity.VM_PU}
        lo = start
        while lo < end:
            hi = min(end, lo + timedelta(days=CHUNK_DAYS))
            if points:
                for pid, buckets in reader.history(list(points), lo, hi, 600, feeder_ids=[fid]).items():
                    out[(fid, points[pid])].extend(b.avg for b in buckets if b.avg is not None)
            else:  # no voltage telemetry: the solved extremes of the feeder's live state
                for b in reader.feeder_history(fid, lo, hi, 600):
                    if b.min_vm_pu is not None:
                        out[(fid, "min bus (solved)")].append(b.min_vm_pu)
                    if b.max_vm_pu is not None:
                        out[(fid, "max bus (solved)")].append(b.max_vm_pu)
            lo = hi
    return out


async def power_quality_report(ctx: ReportContext, start: datetime, end: datetime) -> ReportDoc:
    feeders = {f.id: await ctx.store.load_feeder(f.id) for f in await ctx.store.list_feeders()}
    series: dict[tuple[str, str], list[float]] = {}
    if ctx.historian_root:
        series = await asyncio.to_thread(_pq_series, ctx.historian_root, ctx.data.tz_name, feeders, start, end)
    rows = voltage_rows(series)
    per_feeder: dict[str, list[tuple[Cell, ...]]] = defaultdict(list)
    for r in rows:
        per_feeder[str(r[0])].append(r)
    feeder_rows = []
    for fid in sorted(per_feeder):
        rs = per_feeder[fid]
        n = sum(int(r[2]) for r in rs)  # type: ignore[arg-type]
        feeder_rows.append((fid, len(rs), n, min(float(r[3]) for r in rs), all(bool(r[4]) for r in rs),  # type: ignore[arg-type]
                            min(float(r[5]) for r in rs)))  # type: ignore[arg-type]
    compliant = sum(1 for r in rows if r[4])
    summary: list[tuple[str, Cell]] = [
        ("Locations (feeder, bus) with data", len(rows)),
        ("Locations meeting EN 50160 (95 % of 10-min means within +/-10 %)", compliant),
        ("10-minute averages evaluated", sum(int(r[2]) for r in rows)),  # type: ignore[arg-type]
        ("Worst location (ANSI range A share %)", f"{rows[0][0]} / {rows[0][1]}: {rows[0][5]}" if rows else "none"),
    ]
    cols = ("feeder_id", "bus_id", "ten_minute_values", "en50160_within_pct", "en50160_compliant",
            "ansi_range_a_pct", "ansi_range_b_only_pct", "outside_range_b_pct", "min_vm_pu", "max_vm_pu")
    return ReportDoc(
        "POWER_QUALITY", f"Voltage compliance report {_period_label(start, end, ctx.data.tz)}", start, end,
        ctx.generated_at,
        ("10-minute averages of the historian's VM_PU measurements per bus (feeders without voltage telemetry: the "
         "solved minimum and maximum bus voltage of the live state, also as 10-minute averages).",
         f"EN 50160-style statistic: share of 10-minute means within {EN50160[0]:.2f}-{EN50160[1]:.2f} pu; compliant "
         "when at least 95 %.",
         f"ANSI C84.1: range A {ANSI_A[0]}-{ANSI_A[1]} pu, range B {ANSI_B[0]}-{ANSI_B[1]} pu (service voltage); "
         "'range B only' is within B but outside A.",
         f"Buckets are aligned in the utility's time zone ({ctx.data.tz_name})."),
        ("Historian (Parquet data set, layout v1): kind=measurement and kind=solve.",
         "Graph store: feeder models (measurement points)."),
        tuple(summary),
        (Table("locations", "Voltage compliance per feeder and bus (worst first)", cols, tuple(rows)),
         Table("feeders", "Per feeder", ("feeder_id", "locations", "ten_minute_values", "worst_en50160_pct",
                                         "all_compliant", "worst_ansi_a_pct"), tuple(feeder_rows)),
         Table("worst_locations", "Worst 10 locations", cols, tuple(rows[:10]))),
        (Chart("Share within ANSI range A, worst locations (%)", tuple(f"{r[0]}/{r[1]}" for r in rows[:10]),
               (("range A %", tuple(float(r[5]) for r in rows[:10])),), "percent"),),  # type: ignore[arg-type]
        None if rows else "No voltage data in the historian for this period: nothing to evaluate.",
    )


# ------------------------------------------------------------------------------------ operations


def _in(ts: str | None, start: datetime, end: datetime) -> bool:
    if not ts:
        return False
    try:
        t = datetime.fromisoformat(ts)
    except ValueError:
        return False
    return start <= t < end


async def _events(store: GraphStore, start: datetime, end: datetime) -> list[Event]:
    """Durable events of the period (newest pages first until older than ``start``)."""
    out: list[Event] = []
    before: int | None = None
    while True:
        rows = await store.list_records("Event", before_seq=before, limit=1000, newest_first=True)
        if not rows:
            break
        older = False
        for row in rows:
            try:
                e = Event.from_dict(json.loads(str(row["payload"])))
            except (KeyError, ValueError, TypeError):
                continue
            if e.at < start:
                older = True
            elif e.at < end:
                out.append(e)
        if older or len(rows) < 1000:
            break
        before = int(rows[-1]["seq"])
    out.sort(key=lambda e: (e.at, e.seq))
    return out


def operations_tables(controls: Iterable[Mapping[str, Any]], events: Sequence[Event]
                      ) -> tuple[list[tuple[str, Cell]], list[Table]]:
    by_op: Counter[tuple[str, str]] = Counter()
    by_app: Counter[tuple[str, str]] = Counter()
    n_controls = 0
    for c in controls:
        n_controls += 1
        op = str(c.get("operator") or "unknown")
        status = str(c.get("status") or "UNKNOWN")
        by_op[(op, status)] += 1
        app = op if op in APPLICATIONS or op.startswith("app:") else "operator (manual)"
        by_app[(app, status)] += 1
    plans: dict[str, dict[str, Any]] = {}
    raised: dict[tuple[str, str | None, str], datetime] = {}
    ack_s: list[float] = []
    alarm_counts: Counter[str] = Counter()
    for e in events:
        if e.kind == EventKind.PLAN and e.data.get("plan_id"):
            p = plans.setdefault(str(e.data["plan_id"]), {"feeder": e.feeder_id, "first": e.at,
                                                          "kind": e.data.get("plan_kind")})
            p["last"], p["state"] = e.at, e.data.get("state")
            p["restored"], p["left"] = e.data.get("customers_restored"), e.data.get("customers_left")
        elif e.kind == EventKind.ALARM:
            kind = str(e.data.get("alarm_kind") or e.message.split(" ")[0])
            alarm_counts[str(e.severity)] += 1
            raised.setdefault((e.feeder_id, e.element_id, kind), e.at)
        elif e.kind == EventKind.ALARM_ACKNOWLEDGED:
            kind = str(e.data.get("alarm_kind") or "")
            t0 = raised.pop((e.feeder_id, e.element_id, kind), None)
            if t0 is not None:
                ack_s.append((e.at - t0).total_seconds())
    plan_rows = tuple((pid, p["feeder"], p.get("kind"), p.get("state"), p["first"].isoformat(),
                       p["last"].isoformat(), round((p["last"] - p["first"]).total_seconds(), 3), p.get("restored"),
                       p.get("left")) for pid, p in sorted(plans.items(), key=lambda x: x[1]["first"]))
    outcomes = Counter(str(p.get("state")) for p in plans.values())
    summary: list[tuple[str, Cell]] = [
        ("Control actions", n_controls), ("FDIR plans", len(plans)),
        ("FDIR plans completed", outcomes.get("COMPLETED", 0)), ("Alarms raised", sum(alarm_counts.values())),
        ("Alarms acknowledged (matched)", len(ack_s)),
        ("Median acknowledgement time (s)", round(statistics.median(ack_s), 3) if ack_s else None),
    ]
    tables = [
        Table("controls_by_operator", "Control actions by operator", ("operator", "status", "count"),
              tuple((o, s, n) for (o, s), n in sorted(by_op.items()))),
        Table("controls_by_application", "Control actions by application", ("application", "status", "count"),
              tuple((o, s, n) for (o, s), n in sorted(by_app.items()))),
        Table("fdir_plans", "FDIR plans and outcomes", ("plan_id", "feeder_id", "kind", "outcome", "first_event",
                                                        "last_event", "duration_s", "customers_restored",
                                                        "customers_left"), plan_rows),
        Table("alarms", "Alarms by severity and acknowledgement", ("quantity", "value"),
              (*((f"raised_{k.lower()}", v) for k, v in sorted(alarm_counts.items())),
               ("acknowledged_matched", len(ack_s)),
               ("ack_time_median_s", round(statistics.median(ack_s), 3) if ack_s else None),
               ("ack_time_max_s", round(max(ack_s), 3) if ack_s else None))),
        Table("der_curtailment", "DER curtailment (hours, energy)", ("der_id", "hours", "energy_mwh"), (),
              note="no DER curtailment records: this head-end has no DER management application writing them yet"),
        Table("demand_response", "DR events delivered versus targeted", ("event_id", "targeted_mw", "delivered_mw"),
              (), note="no DR event records: this head-end has no DR dispatch application writing them yet"),
    ]
    return summary, tables


async def operations_report(ctx: ReportContext, start: datetime, end: datetime) -> ReportDoc:
    controls = [c for c in await ctx.store.list_records("ControlAction", limit=ALL)
                if _in(c.get("requested_at"), start, end)]
    events = await _events(ctx.store, start, end)
    summary, tables = operations_tables(controls, events)
    empty = not controls and not events
    return ReportDoc(
        "OPERATIONS", f"Operations report {_period_label(start, end, ctx.data.tz)}", start, end, ctx.generated_at,
        ("Control actions: ControlAction records requested in the period, by the identity that operated "
         "(applications operate under their own identity, e.g. 'fdir').",
         "FDIR plans: PLAN events grouped by plan id; duration from the first to the last event of a plan.",
         "Alarm acknowledgement time: from an ALARM event to the ALARM_ACKNOWLEDGED event of the same feeder, "
         "element and alarm kind."),
        ("Graph store: ControlAction records.", "Graph store: durable Event records (alarms, FDIR plans)."),
        tuple(summary), tuple(tables), (), "No control actions or events in this period." if empty else None)


# ------------------------------------------------------------------------------------------- audit


async def audit_report(ctx: ReportContext, start: datetime, end: datetime) -> ReportDoc:
    rows: list[tuple[Cell, ...]] = []
    result = None
    if ctx.audit is not None:
        result = await ctx.audit.verify()
        after: int | None = None
        while True:
            page = await ctx.audit.page(after_seq=after, limit=1000)
            for e in page:
                if _in(e.at.replace("Z", "+00:00"), start, end):
                    rows.append((e.seq, e.at, e.actor, ",".join(e.roles), e.action, e.target, e.source, e.outcome))
            if len(page) < 1000:
                break
            after = page[-1].seq
    verified = ("not verified: no audit log at hand" if result is None else
                f"INTACT: {result.checked} entries verified ({result.summary})" if result.ok else
                f"BROKEN at entry seq={result.first_broken_seq}: {result.reason} ({result.checked} entries checked)")
    actions = Counter(str(r[4]) for r in rows)
    actors = Counter(str(r[2]) for r in rows)
    summary: list[tuple[str, Cell]] = [
        ("Audit chain verification", verified), ("Entries in the period", len(rows)),
        ("Distinct actors", len(actors)), ("Refused or failed entries", sum(1 for r in rows if r[7] != "OK")),
    ]
    return ReportDoc(
        "AUDIT", f"Access and control audit report {_period_label(start, end, ctx.data.tz)}", start, end,
        ctx.generated_at,
        ("Every audit entry of the period: who (token subject and roles), what (action, target, outcome), when "
         "(UTC) and from where (client address).",
         "The whole hash chain is verified from its first entry (hashes, links, HMACs under the audit key, "
         "anchors kept outside the store) each time this report is produced; the result is stated above."),
        ("Graph store: AuditEntry records (hash-chained, keyed HMAC).", "Audit anchors outside the store."),
        tuple(summary),
        (Table("entries", "Audit entries", ("seq", "at_utc", "actor", "roles", "action", "target", "source",
                                            "outcome"), tuple(rows)),
         Table("by_action", "Entries by action", ("action", "count"), tuple(sorted(actions.items()))),
         Table("by_actor", "Entries by actor", ("actor", "count"), tuple(sorted(actors.items())))),
        (), None if rows else "No audit entries in this period.",
        meta={"audit_ok": None if result is None else result.ok},
    )


BUILDERS = {"RELIABILITY": reliability_report, "POWER_QUALITY": power_quality_report,
            "OPERATIONS": operations_report, "AUDIT": audit_report}
