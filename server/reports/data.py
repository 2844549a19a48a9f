"""Reads and writes the records reports are built on (graph store), and answers
``reliabilityIndices``: interruption history (imported rows, label ``Interruption``, and the
head-end's own outage records, label ``Outage``), customers served per feeder and year (the
model's counts, overridden by ``CustomersServed`` records) and zones."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

from actors.cores.outages import Outage
from actors.cores.reliability import (
    DEFAULT_THRESHOLD_MIN,
    Indices,
    Interruption,
    MedResult,
    compute_indices,
    daily_saidi,
    from_outage,
    major_event_days,
    med_threshold,
    years_before,
)
from graph_schema.errors import BadInput, DmsError, NotFound
from graph_schema.store import GraphStore
from server.reports.imports import (
    interruption_from_record,
    interruption_record,
    parse_customers_csv,
    parse_outages_csv,
)

log = logging.getLogger(__name__)

INTERRUPTION = "Interruption"
CUSTOMERS = "CustomersServed"
ALL = 10_000_000  # list every record of a label (history is thousands of rows, not millions)
SCOPES = ("SYSTEM", "FEEDER", "ZONE")


@dataclass(frozen=True)
class ImportResult:
    added: int
    updated: int
    unchanged: int


@dataclass(frozen=True)
class Reliability:
    """Indices of one scope and period, the MED analysis, and what they were computed from."""

    scope: str
    scope_id: str | None
    start: datetime
    end: datetime
    feeders: tuple[str, ...]
    indices: Indices  # all days
    indices_excluding_med: Indices
    med: MedResult
    threshold_min: float
    timezone: str
    records: int  # interruption records that began in the period (all feeders of the scope)


class ReportData:
    def __init__(self, store: GraphStore, *, tz: str = "UTC", threshold_min: float = DEFAULT_THRESHOLD_MIN) -> None:
        self.store = store
        self.tz_name = tz
        self.tz: tzinfo = ZoneInfo(tz)
        self.threshold_min = threshold_min
        # Parsed imported history, kept while the store's Interruption version is unchanged (only
        # write_records writes that label, and every write changes the version).
        self._history: tuple[tuple[int, int], list[Interruption]] | None = None

    # -- imports ---------------------------------------------------------------------------------

    async def feeder_customers(self) -> dict[str, int]:
        """Feeder id -> the most customers it serves (the model, or any yearly override above it)."""
        out = {f.id: f.customers for f in await self.store.list_feeders()}
        for rec in await self.store.list_records(CUSTOMERS, limit=ALL):
            fid = rec.get("feeder_id")
            if fid in out:
                out[fid] = max(out[fid], int(rec.get("customers") or 0))
        return out

    async def import_outages(self, text: str, *, now: datetime) -> ImportResult:
        rows = parse_outages_csv(text, await self.feeder_customers(), now=now, threshold_min=self.threshold_min)
        existing = {str(r["id"]): r for r in await self.store.list_records(INTERRUPTION, limit=ALL)}
        new, updates, same = [], [], 0
        for i in rows:
            rec = interruption_record(i)
            old = existing.get(i.id)
            if old is None:
                new.append((rec, i.feeder_id))
            elif old.get("feeder_id") == i.feeder_id and all(old.get(k) == v for k, v in rec.items()):
                same += 1
            else:
                updates.append((int(old["seq"]), {**rec, "feeder_id": i.feeder_id}))
        await self.store.write_records(INTERRUPTION, new, updates)
        return ImportResult(len(new), len(updates), same)

    async def import_customers(self, text: str) -> ImportResult:
        feeders = {f.id for f in await self.store.list_feeders()}
        rows = parse_customers_csv(text, feeders)
        existing = {str(r.get("key")): r for r in await self.store.list_records(CUSTOMERS, limit=ALL)}
        new, updates, same = [], [], 0
        for row in rows:
            rec = row.to_record()
            old = existing.get(rec["key"])
            if old is None:
                new.append((rec, row.feeder_id))
            elif all(old.get(k) == v for k, v in rec.items()):
                same += 1
            else:
                updates.append((int(old["seq"]), rec))
        await self.store.write_records(CUSTOMERS, new, updates)
        return ImportResult(len(new), len(updates), same)

    # -- reads -----------------------------------------------------------------------------------

    async def imported(self) -> list[Interruption]:
        """The imported history (label Interruption), parsed once per version of the records."""
        version = await self.store.records_version(INTERRUPTION)
        if self._history is not None and self._history[0] == version:
            return self._history[1]
        out: list[Interruption] = []
        for rec in await self.store.list_records(INTERRUPTION, limit=ALL):
            try:
                out.append(interruption_from_record(rec))
            except (KeyError, ValueError, TypeError) as exc:
                log.error("interruption record seq=%s is malformed (%s); skipped", rec.get("seq"), exc)
        self._history = (version, out)
        return out

    async def interruptions(self, *, now: datetime) -> list[Interruption]:
        """Imported history and the head-end's own outage records (read each time: FDIR updates them)."""
        out = list(await self.imported())
        for rec in await self.store.list_records("Outage", limit=ALL):
            try:
                out.append(from_outage(Outage.from_record(rec), until=now))
            except (KeyError, ValueError, TypeError, DmsError):
                log.error("outage record seq=%s is malformed; skipped", rec.get("seq"))
        return out

    async def customers_by_year(self) -> tuple[dict[str, int], dict[int, dict[str, int]], dict[str, str]]:
        """(model customers per feeder, overrides year -> feeder -> customers, feeder -> zone)."""
        model = {f.id: f.customers for f in await self.store.list_feeders()}
        years: dict[int, dict[str, int]] = {}
        zones: dict[str, tuple[int, str]] = {}
        for rec in await self.store.list_records(CUSTOMERS, limit=ALL):
            fid, year = rec.get("feeder_id"), int(rec.get("year") or 0)
            if fid not in model:
                continue
            years.setdefault(year, {})[fid] = int(rec.get("customers") or 0)
            if rec.get("zone") and year >= zones.get(fid, (-1, ""))[0]:
                zones[fid] = (year, str(rec["zone"]))
        return model, years, {f: z for f, (_, z) in zones.items()}

    # -- indices -----------------------------------------------------------------------------------

    def local_midnight(self, d: date) -> datetime:
        return datetime.combine(d, time(0), tzinfo=self.tz)

    async def reliability(self, scope: str, scope_id: str | None, start: datetime, end: datetime, *,
                          now: datetime, records: Sequence[Interruption] | None = None,
                          feeders_in_scope: frozenset[str] | None = None) -> Reliability:
        """Indices of ``scope`` (SYSTEM, FEEDER id, ZONE id) for interruptions beginning in
        ``[start, end)``, with and without the major event days of the period (system MEDs: IEEE
        1366 classifies days for the reporting utility as a whole)."""
        if end <= start:
            raise BadInput(f"period end {end.isoformat()} is not after its start {start.isoformat()}; swap them")
        if start > now:
            raise BadInput(f"the period starts {start.isoformat()}, in the future; nothing has happened yet")
        model, years, zones = await self.customers_by_year()
        if records is None:
            records = await self.interruptions(now=now)
        return analyse(records, model, years, zones, scope, scope_id, start, end, tz=self.tz, tz_name=self.tz_name,
                       threshold_min=self.threshold_min, feeders_in_scope=feeders_in_scope)


def scope_feeders(model: Mapping[str, int], zones: Mapping[str, str], scope: str, scope_id: str | None) -> list[str]:
    if scope not in SCOPES:
        raise BadInput(f"scope {scope!r} is not one of {', '.join(SCOPES)}")
    if scope == "SYSTEM":
        return sorted(model)
    if scope == "FEEDER":
        if scope_id not in model:
            raise NotFound(f"feeder {scope_id!r} does not exist; list feeders to find its id", element_id=scope_id)
        return [str(scope_id)]
    feeders = sorted(f for f, z in zones.items() if z == scope_id)
    if not feeders:
        known = sorted(set(zones.values()))
        raise NotFound(f"zone {scope_id!r} has no feeders; zones come from `dms customers import` "
                       f"(column zone); known: {', '.join(known) or 'none'}", element_id=scope_id)
    return feeders


def analyse(records: Sequence[Interruption], model: Mapping[str, int], years: Mapping[int, Mapping[str, int]],
            zones: Mapping[str, str], scope: str, scope_id: str | None, start: datetime, end: datetime, *,
            tz: tzinfo, tz_name: str, threshold_min: float = DEFAULT_THRESHOLD_MIN,
            feeders_in_scope: frozenset[str] | None = None) -> Reliability:
    """The pure part of :meth:`ReportData.reliability` (records and customers given)."""
    feeders = scope_feeders(model, zones, scope, scope_id)
    if feeders_in_scope is not None:
        feeders = [f for f in feeders if f in feeders_in_scope]
    med = system_med(records, model, years, start, end, tz=tz, threshold_min=threshold_min)
    served = served_in_period(model, years, start, end, tz)
    mine = {f: served[f] for f in feeders}
    common: dict[str, Any] = {"threshold_min": threshold_min, "tz": tz}
    ix = compute_indices(records, mine, start, end, **common)
    ex = compute_indices(records, mine, start, end, exclude_days=[d for d, _ in med.major_event_days], **common)
    n = sum(1 for r in records if r.feeder_id in mine and start <= r.start < end)
    return Reliability(scope, scope_id, start, end, tuple(feeders), ix, ex, med, threshold_min, tz_name, n)


def system_med(records: Sequence[Interruption], model: Mapping[str, int], years: Mapping[int, Mapping[str, int]],
               start: datetime, end: datetime, *, tz: tzinfo, threshold_min: float) -> MedResult:
    """Major event days of ``[start, end)`` for the whole system, T_MED from the five years before."""
    all_feeders = sorted(model)
    y0, y1 = start.astimezone(tz).year, (end - timedelta(microseconds=1)).astimezone(tz).year
    system_yearly = {y: {f: served_for_year(model, years, y)[f] for f in all_feeders} for y in range(y0 - 6, y1 + 1)}
    d0 = start.astimezone(tz).date()
    d1 = (end - timedelta(microseconds=1)).astimezone(tz).date() + timedelta(days=1)
    h0 = years_before(d0, 5)
    history = daily_saidi(records, system_yearly, tz=tz, threshold_min=threshold_min, start=h0, end=d0)
    reported = daily_saidi(records, system_yearly, tz=tz, threshold_min=threshold_min, start=d0, end=d1)
    first = min((r.start for r in records), default=None)
    data_since = first.astimezone(tz).date() if first is not None else d0
    return major_event_days(med_threshold(history, h0, d0, data_since=data_since), reported)


def served_for_year(model: Mapping[str, int], years: Mapping[int, Mapping[str, int]], year: int) -> dict[str, int]:
    """Customers per feeder in ``year``: the override for that year, else the nearest earlier year's,
    else the model's."""
    out = dict(model)
    for fid in out:
        earlier = [y for y in years if y <= year and fid in years[y]]
        if earlier:
            out[fid] = years[max(earlier)][fid]
    return out


def served_in_period(model: Mapping[str, int], years: Mapping[int, Mapping[str, int]], start: datetime,
                     end: datetime, tz: tzinfo) -> dict[str, float]:
    """N_T per feeder for a period: the mean over the calendar years it touches."""
    ys = range(start.astimezone(tz).year, (end - timedelta(microseconds=1)).astimezone(tz).year + 1)
    per = [served_for_year(model, years, y) for y in ys]
    return {f: sum(p[f] for p in per) / len(per) for f in model}
