"""Trends from the historian: the Parquet data set read with DuckDB (in a worker thread), merged
with the rows each feeder actor has not written yet, so a trend reaches "now".

Merging without double counting: the actor answers ``recent`` with its unflushed rows and the
receive time of the oldest of them; the data set is read for rows received before that time only.
Rows written between the two reads are then counted once (from the actor's answer).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from typing import Any

from graph_schema.errors import BadInput, DmsError
from graph_schema.historian import (
    MAX_RAW_ROWS,
    Bucket,
    Sample,
    bucket_edges,
    bucket_samples,
    check_range,
    merge_series,
    utc,
)

log = logging.getLogger(__name__)
HISTORIAN_APP = "historian"
MAX_POINTS = 100


class HistoryService:
    def __init__(self, grid: Any, settings: Any) -> None:
        self.grid = grid
        self.root: str = settings.historian_root
        self.tz: str = settings.timezone

    def _reader(self) -> Any:
        from graph_schema.historian.query import HistorianReader  # DuckDB: server side only

        return HistorianReader(self.root, tz=self.tz)

    async def feeders_of(self, point_ids: Sequence[str], visible: Any) -> dict[str, str]:
        """Point id -> feeder id; an unknown point (or one on a feeder out of scope) is BAD_INPUT."""
        where: dict[str, str] = {}
        wanted = set(point_ids)
        for summary in await self.grid.list_feeders():
            if not visible(summary.id):
                continue
            model = await self.grid.model(summary.id)
            for p in model.measurement_points:
                if p.id in wanted:
                    where[p.id] = summary.id
            elements: set[str] | None = None
            for pid in wanted - where.keys():  # a point map's point: <feeder>/<element>/<KIND>
                feeder, _, rest = pid.partition("/")
                if feeder == summary.id and rest.count("/") == 1:
                    if elements is None:
                        elements = {str(getattr(e, "id", "")) for e in model.elements()}
                    if rest.split("/")[0] in elements:
                        where[pid] = summary.id
        unknown = [p for p in point_ids if p not in where]
        if unknown:
            raise BadInput(f"unknown point ids: {', '.join(sorted(unknown)[:10])}; query feeder.measurementPoints "
                           f"for the ids", element_id=unknown[0])
        return where

    async def _recent(self, feeder_id: str, method: str, *args: Any) -> dict[str, Any]:
        try:
            result: dict[str, Any] = await self.grid.fleet.call_app(feeder_id, HISTORIAN_APP, method, *args)
            return result
        except DmsError as exc:  # the actor is restarting: the trend ends at the data set's last part
            log.warning("historian: recent rows of feeder %s unavailable: %s", feeder_id, exc.message)
            return {"rows": [], "oldest": None}

    async def history(self, point_ids: Sequence[str], start: datetime, end: datetime, bucket_s: int | None,
                      visible: Any) -> list[tuple[str, str, list[Bucket]]]:
        """(point id, feeder id, buckets) per point, in the order asked."""
        s, e = check_range(start, end, bucket_s)
        ids = list(dict.fromkeys(point_ids))
        if not ids:
            return []
        if len(ids) > MAX_POINTS:
            raise BadInput(f"{len(ids)} points at once is over the limit of {MAX_POINTS}; ask in smaller groups")
        edges = bucket_edges(s, e, bucket_s, self.tz) if bucket_s is not None else None  # limits first
        where = await self.feeders_of(ids, visible)
        by_feeder: dict[str, list[str]] = {}
        for pid in ids:
            by_feeder.setdefault(where[pid], []).append(pid)
        out: dict[str, list[Bucket]] = {}
        for fid, pids in by_feeder.items():
            recent = await self._recent(fid, "recent", pids, s)
            oldest = recent.get("oldest")
            reader = self._reader()
            stored = await asyncio.to_thread(reader.history, pids, s, e, bucket_s, feeder_ids=[fid],
                                             received_before=oldest)
            samples = [Sample(pid, utc(ts), v, q) for pid, ts, v, q in recent["rows"] if s <= utc(ts) < e]
            for pid in pids:
                if edges is None:
                    raw = stored.get(pid, []) + [
                        Bucket(start=x.ts, end=x.ts, avg=x.value, min=x.value, max=x.value, last=x.value, count=1,
                               good_fraction=1.0 if x.quality == "GOOD" else 0.0, last_ts=x.ts)
                        for x in samples if x.point_id == pid]
                    out[pid] = sorted(raw, key=lambda b: b.start)
                else:
                    mine = bucket_samples((x for x in samples if x.point_id == pid), edges).get(pid, {})
                    out[pid] = merge_series(stored.get(pid, []), mine, edges)
        if edges is None and sum(len(v) for v in out.values()) > MAX_RAW_ROWS:
            raise BadInput(f"more than {MAX_RAW_ROWS} raw samples in the range; give bucketS or a shorter range")
        return [(pid, where[pid], out.get(pid, [])) for pid in ids]

    async def energy_usage(self, meter_id: str, start: datetime, end: datetime, bucket_s: int | None,
                           principal: Any) -> list[Any]:
        """A meter's kWh per bucket. Who may ask: a principal with READ_GRID for any meter on a
        feeder in its scope; a CUSTOMER token for the meters of its ``customer_account`` only
        (any other meter, known or not, is FORBIDDEN: it says nothing of other customers' meters).
        A malformed or unknown meter id is BAD_INPUT for the others."""
        from graph_schema.historian.ami import meter_map, meters_of_account, parse_meter_id
        from security.errors import Forbidden, Unauthenticated
        from security.roles import Permission, Role, feeder_in_scope, permissions_of

        s, e = check_range(start, end, bucket_s)
        if bucket_s is not None:
            bucket_edges(s, e, bucket_s, self.tz)  # the bucket limit before any work
        if principal is None:
            raise Unauthenticated("missing", "authentication required; send a bearer token")
        operator = Permission.READ_GRID in permissions_of(principal.roles)
        if not operator:
            account = principal.customer_account
            if Role.CUSTOMER not in principal.roles or not account or meter_id not in meters_of_account(account):
                raise Forbidden("this meter is not one of your account's meters; ask with a token whose "
                                "customer_account claim owns it")
        parsed = parse_meter_id(meter_id)
        if parsed is None:
            raise BadInput(f"{meter_id!r} is not a meter id; meter ids are <feeder>/<load>/m<k>", element_id=meter_id)
        feeder_id = parsed[0]
        if operator and not feeder_in_scope(principal, feeder_id):
            raise Forbidden("this meter's feeder is outside the scope of your token; ask for a token that includes it")
        try:
            model = await self.grid.model(feeder_id)
        except DmsError:
            model = None
        if model is None or meter_id not in meter_map([model]):
            raise BadInput(f"unknown meter id {meter_id!r}; meters are <feeder>/<load>/m<k> for the loads of the "
                           f"feeder's model", element_id=meter_id)
        reader = self._reader()
        return list(await asyncio.to_thread(reader.energy_usage, meter_id, feeder_id, s, e, bucket_s))

    async def feeder_history(self, feeder_id: str, start: datetime, end: datetime, bucket_s: int | None) -> list[Any]:
        from graph_schema.historian.query import SolveBucket

        s, e = check_range(start, end, bucket_s)
        edges = bucket_edges(s, e, bucket_s, self.tz) if bucket_s is not None else None
        self.grid.require_feeder(feeder_id)
        recent = await self._recent(feeder_id, "recent_solves", s)
        reader = self._reader()
        stored = await asyncio.to_thread(reader.feeder_history, feeder_id, s, e, bucket_s, before=recent.get("oldest"))
        rows = [r for r in recent["rows"] if s <= utc(r[0]) < e]
        fresh = [SolveBucket(start=utc(r[0]), end=utc(r[0]), losses_mw=r[1], min_vm_pu=r[2], max_vm_pu=r[4],
                             max_line_loading_percent=r[6], p_source_mw=r[7], customers_out=r[8], count=1,
                             converged_fraction=1.0 if r[9] else 0.0) for r in rows]
        if edges is None:
            return sorted([*stored, *fresh], key=lambda b: b.start)
        by_start = {b.start: b for b in stored}
        import bisect

        for f in fresh:
            i = bisect.bisect_right(edges, f.start) - 1
            key = edges[i]
            f = replace(f, start=edges[i], end=edges[i + 1])
            by_start[key] = _merge_solve(by_start[key], f) if key in by_start else f
        return [by_start[k] for k in sorted(by_start)]


def _avg(a: float | None, na: int, b: float | None, nb: int) -> float | None:
    if a is None:
        return b
    if b is None:
        return a
    return (a * na + b * nb) / (na + nb)


def _ext(fn: Any, a: Any, b: Any) -> Any:
    return b if a is None else a if b is None else fn(a, b)


def _merge_solve(a: Any, b: Any) -> Any:
    n = a.count + b.count
    return replace(a, losses_mw=_avg(a.losses_mw, a.count, b.losses_mw, b.count),
                   min_vm_pu=_ext(min, a.min_vm_pu, b.min_vm_pu), max_vm_pu=_ext(max, a.max_vm_pu, b.max_vm_pu),
                   max_line_loading_percent=_ext(max, a.max_line_loading_percent, b.max_line_loading_percent),
                   p_source_mw=_avg(a.p_source_mw, a.count, b.p_source_mw, b.count),
                   customers_out=_ext(max, a.customers_out, b.customers_out), count=n,
                   converged_fraction=(a.converged_fraction * a.count + b.converged_fraction * b.count) / n)
