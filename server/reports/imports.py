"""CSV imports of a utility's interruption history and customers served, validated whole.

``dms outages import FILE``: the minimum header is ``id,feeder_id,start,end,customers_interrupted,
cause,momentary`` (ISO 8601 times with an offset, ``momentary`` true/false, ``id`` the utility's own
record id). Optional columns: ``steps`` (per-step restoration, ``time:customers_restored;...`` in
time order; customers not restored by a step are restored at ``end``) and ``customer_minutes``.

``dms customers import FILE``: ``feeder_id,year,customers`` and optionally ``zone`` (the region or
zone the feeder reports under). Overrides the model's customers per feeder for that year.

Every row is checked before anything is written: a file with any bad row is refused whole, each
bad row named with its problem and the fix. Importing is idempotent: by ``id`` for interruptions,
by (feeder, year) for customers; a second import of the same file changes nothing, and a changed
row replaces the stored one.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from actors.cores.reliability import DEFAULT_THRESHOLD_MIN, Interruption, from_steps
from graph_schema.errors import BadInput

OUTAGE_COLUMNS = ("id", "feeder_id", "start", "end", "customers_interrupted", "cause", "momentary")
OUTAGE_OPTIONAL = ("steps", "customer_minutes")
CUSTOMER_COLUMNS = ("feeder_id", "year", "customers")
MAX_LISTED = 25


@dataclass(frozen=True)
class CustomersRow:
    feeder_id: str
    year: int
    customers: int
    zone: str | None = None

    def to_record(self) -> dict[str, Any]:
        return {"key": f"{self.feeder_id}|{self.year}", "year": self.year, "customers": self.customers,
                "zone": self.zone}


def _refuse(what: str, problems: list[str]) -> BadInput:
    more = f"\n... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    return BadInput(f"{what} refused, nothing written ({len(problems)} problem(s)):\n"
                    + "\n".join(problems[:MAX_LISTED]) + more + "\nfix the rows and import again")


def _rows(text: str, required: tuple[str, ...], what: str) -> tuple[list[str], list[dict[str, str]]]:
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    header = [h.strip() for h in (reader.fieldnames or [])]
    missing = [c for c in required if c not in header]
    if missing:
        raise BadInput(f"{what}: the header lacks {', '.join(missing)}; the minimum header is {','.join(required)}")
    rows = [{(k or "").strip(): (v or "").strip() if isinstance(v, str) else "" for k, v in r.items()}
            for r in reader]
    return header, rows


def _time(value: str, column: str) -> datetime:
    try:
        t = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{column} {value!r} is not an ISO 8601 time (e.g. 2024-03-01T10:00:00+01:00)") from None
    if t.tzinfo is None:
        raise ValueError(f"{column} {value!r} has no UTC offset; add one (e.g. +00:00)")
    return t


def _count(value: str, column: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{column} {value!r} is not a whole number") from None
    if n < 0:
        raise ValueError(f"{column} {n} is negative; give a count >= 0")
    return n


def _bool(value: str) -> bool:
    low = value.lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ValueError(f"momentary {value!r} is not true or false")


def parse_outages_csv(
    text: str, known_feeders: Mapping[str, int], *, now: datetime, threshold_min: float = DEFAULT_THRESHOLD_MIN,
) -> list[Interruption]:
    """Every row as an :class:`Interruption`, or :class:`BadInput` listing every bad row.

    ``known_feeders`` maps feeder id -> customers served (the model's, or the most an override
    gives): a row interrupting more customers than that is refused."""
    _, rows = _rows(text, OUTAGE_COLUMNS, "outages import")
    problems: list[str] = []
    out: list[tuple[int, Interruption]] = []
    seen: dict[str, int] = {}
    for n, row in enumerate(rows, start=1):
        rid = row.get("id", "")
        where = f"row {n} (id {rid!r})" if rid else f"row {n}"
        try:
            if not rid:
                raise ValueError("id is empty; give the utility's record id")
            if rid in seen:
                raise ValueError(f"id repeats row {seen[rid]}; each record once per file")
            seen[rid] = n
            fid = row.get("feeder_id", "")
            if fid not in known_feeders:
                raise ValueError(f"feeder {fid!r} is unknown; import the feeder first (dms import) or fix feeder_id")
            start, end = _time(row["start"], "start"), _time(row["end"], "end")
            if end < start:
                raise ValueError(f"end before start ({row['end']} < {row['start']})")
            if start > now:
                raise ValueError(f"start {row['start']} is in the future")
            customers = _count(row["customers_interrupted"], "customers_interrupted")
            if customers > known_feeders[fid] > 0:
                raise ValueError(f"customers_interrupted {customers} exceeds the {known_feeders[fid]} customers "
                                 f"feeder {fid!r} serves")
            momentary = _bool(row["momentary"])
            minutes = (end - start).total_seconds() / 60.0
            if momentary and minutes > threshold_min:
                raise ValueError(f"momentary but lasts {minutes:.1f} min, longer than the {threshold_min:g}-min "
                                 "threshold; set momentary to false or fix the times")
            cause = row.get("cause") or "UNKNOWN"
            steps = _steps(row.get("steps", ""), start, end, customers)
            cm_raw = row.get("customer_minutes", "")
            cm: float | None = None
            if cm_raw:
                try:
                    cm = float(cm_raw)
                except ValueError:
                    raise ValueError(f"customer_minutes {cm_raw!r} is not a number") from None
                if not cm >= 0:
                    raise ValueError(f"customer_minutes {cm_raw} is negative; give minutes >= 0")
            out.append((n, from_steps(rid, fid, start, end, customers, cause.upper(), momentary, steps, cm)))
        except (ValueError, KeyError) as exc:
            problems.append(f"{where}: {exc}")
    problems += _overlaps(out, known_feeders)
    if problems:
        raise _refuse("outages import", problems)
    return [i for _, i in out]


def _steps(raw: str, start: datetime, end: datetime, customers: int) -> list[tuple[datetime, int]]:
    steps: list[tuple[datetime, int]] = []
    if not raw:
        return steps
    total = 0
    for part in raw.split(";"):
        part = part.strip()
        if not part:
            continue
        when, sep, count = part.rpartition(":")
        if not sep:
            raise ValueError(f"step {part!r} is not time:customers_restored")
        at = _time(when, "step time")
        n = _count(count, "step customers_restored")
        if at < start or at > end:
            raise ValueError(f"step at {when} is outside the interruption ({start.isoformat()} to {end.isoformat()})")
        if steps and at < steps[-1][0]:
            raise ValueError(f"step at {when} is before the step before it; list steps in time order")
        total += n
        steps.append((at, n))
    if total > customers:
        raise ValueError(f"steps restore {total} customers, more than the {customers} interrupted")
    return steps


def _overlaps(rows: list[tuple[int, Interruption]], served: Mapping[str, int]) -> list[str]:
    """Rows that cannot both be true: the same interruption under two ids, or overlapping
    sustained interruptions of one feeder that together interrupt more customers than it serves."""
    problems: list[str] = []
    by_feeder: dict[str, list[tuple[int, Interruption]]] = {}
    for n, i in rows:
        by_feeder.setdefault(i.feeder_id, []).append((n, i))
    for fid, items in by_feeder.items():
        items.sort(key=lambda x: x[1].start)
        for k, (n, a) in enumerate(items):
            for m, b in items[k + 1:]:
                if b.start >= a.end and not (b.start == a.start):
                    break
                if (a.start, a.end, a.customers_interrupted) == (b.start, b.end, b.customers_interrupted):
                    problems.append(f"row {m} (id {b.id!r}): the same interruption as row {n} (id {a.id!r}) "
                                    "under another id; keep one of them")
                elif (not a.momentary and not b.momentary and served.get(fid, 0) > 0
                      and a.customers_interrupted + b.customers_interrupted > served[fid]):
                    problems.append(f"row {m} (id {b.id!r}): overlaps row {n} (id {a.id!r}) on feeder {fid!r} and "
                                    f"together they interrupt more than its {served[fid]} customers; fix the times "
                                    "or the counts")
    return problems


def parse_customers_csv(text: str, known_feeders: Collection[str]) -> list[CustomersRow]:
    header, rows = _rows(text, CUSTOMER_COLUMNS, "customers import")
    problems: list[str] = []
    out: list[CustomersRow] = []
    seen: dict[tuple[str, int], int] = {}
    for n, row in enumerate(rows, start=1):
        try:
            fid = row.get("feeder_id", "")
            if fid not in known_feeders:
                raise ValueError(f"feeder {fid!r} is unknown; import the feeder first (dms import) or fix feeder_id")
            try:
                year = int(row["year"])
            except ValueError:
                raise ValueError(f"year {row['year']!r} is not a year (e.g. 2024)") from None
            if not 1900 <= year <= 2200:
                raise ValueError(f"year {year} is out of range; give a calendar year")
            customers = _count(row["customers"], "customers")
            if (fid, year) in seen:
                raise ValueError(f"feeder {fid!r} year {year} repeats row {seen[(fid, year)]}; "
                                 "one row per feeder and year")
            seen[(fid, year)] = n
            out.append(CustomersRow(fid, year, customers, (row.get("zone") or None) if "zone" in header else None))
        except (ValueError, KeyError) as exc:
            problems.append(f"row {n}: {exc}")
    if problems:
        raise _refuse("customers import", problems)
    return out


def interruption_record(i: Interruption) -> dict[str, Any]:
    """Flat properties of an imported interruption for the graph store (label ``Interruption``)."""
    steps = [(s.end.isoformat(), s.customers) for s in i.segments if s.end != i.end]
    return {
        "id": i.id, "start": i.start.isoformat(), "end": i.end.isoformat(),
        "customers_interrupted": i.customers_interrupted, "cause": i.cause, "momentary": i.momentary,
        "steps_json": json.dumps(steps), "customer_minutes": i.customer_minutes,
    }


def interruption_from_record(rec: Mapping[str, Any]) -> Interruption:
    steps = [(datetime.fromisoformat(t), int(n)) for t, n in json.loads(rec.get("steps_json") or "[]")]
    cm = rec.get("customer_minutes")
    return from_steps(str(rec["id"]), str(rec["feeder_id"]), datetime.fromisoformat(rec["start"]),
                      datetime.fromisoformat(rec["end"]), int(rec["customers_interrupted"]), str(rec["cause"]),
                      bool(rec["momentary"]), steps, None if cm is None else float(cm))
