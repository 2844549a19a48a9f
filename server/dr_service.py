"""Demand response for the API: programmes, enrolled resources and events in the graph store;
rules, dispatch and performance from :mod:`actors.cores.dr`; baselines from the historian's meters.

Records (graph store, system of record): ``DrProgram`` (one per programme, its rules),
``DrResource`` (one per enrolment: load, customer account, kind, kW, dates), ``DrEvent`` (window,
target, dispatch as JSON, opt-outs as JSON, cancelled). Ids: ``<programme>`` / ``ev-<seq>``.

Demo programmes: when the store holds no programme, one CAPACITY programme per feeder is enrolled
(``<feeder>-capacity``, the calendar year as its season, 10 events of at most 4 h, 30 min notice,
opt-outs until 15 min before, 3 per season) with every load of the feeder as a resource owned by
the customer account of its first meter, at 10 % of the load's nominal kW, the kinds in turn
(thermostat, EV charger, storage, customer load).

Events are created and re-planned under one lock per process; two API replicas creating events on
the same programme at the same instant could both pass the overlap rule (a known limit: the graph
store has no per-programme lock yet).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np

from actors.cores import dr
from graph_schema.errors import BadInput, NotFound

log = logging.getLogger(__name__)
DEMO_CAPACITY_SHARE = 0.10
_KINDS = (dr.ResourceKind.THERMOSTAT, dr.ResourceKind.EV_CHARGER, dr.ResourceKind.STORAGE,
          dr.ResourceKind.CUSTOMER_LOAD)
EXTRAS_KEY = "dr"


@dataclass(frozen=True, slots=True)
class EventView:
    event: dr.EventRecord
    status: dr.EventStatus
    planned_kw: float
    shortfall_kw: float
    all_or_nothing: bool
    created_by: str


def _dt(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


class DrService:
    def __init__(self, store: Any, grid: Any, historian_root: str, *, now: Any = lambda: datetime.now(UTC)) -> None:
        self.store = store
        self.grid = grid
        self.root = historian_root
        self._now = now
        self._lock = asyncio.Lock()
        self._seeded = False

    @classmethod
    def of(cls, runtime: Any) -> DrService:
        svc = runtime.extras.get(EXTRAS_KEY)
        if svc is None:
            svc = runtime.extras[EXTRAS_KEY] = cls(runtime.store, runtime.grid, runtime.settings.historian_root)
        return svc  # type: ignore[no-any-return]

    # -- programmes ------------------------------------------------------------------------------

    async def _seed(self) -> None:
        if self._seeded:
            return
        if not await self.store.list_records("DrProgram", limit=1):
            year = self._now().year
            from graph_schema.historian.ami import account_of, meter_id

            for fid in sorted(self.grid.fleet.feeder_ids):
                model = await self.grid.model(fid)
                pid = f"{fid}-capacity"
                await self.store.append_record("DrProgram", {
                    "id": pid, "name": f"{fid} summer/winter capacity", "kind": dr.ProgramKind.CAPACITY.value,
                    "season_start": date(year, 1, 1).isoformat(), "season_end": date(year + 1, 1, 1).isoformat(),
                    "max_events_per_season": 10, "max_hours_per_event": 4.0, "min_notice_min": 30,
                    "opt_out_deadline_min": 15, "max_opt_outs_per_season": 3}, feeder_id=fid)
                for i, ld in enumerate(sorted(model.loads, key=lambda x: x.id)):
                    await self.store.append_record("DrResource", {
                        "id": f"{pid}/{ld.id}", "program_id": pid, "load_id": ld.id,
                        "account": account_of(meter_id(fid, ld.id, 0)), "kind": _KINDS[i % len(_KINDS)].value,
                        "capacity_kw": round(ld.p_mw * 1000 * DEMO_CAPACITY_SHARE, 1),
                        "enrolled_from": date(year, 1, 1).isoformat()}, feeder_id=fid)
        self._seeded = True

    async def programs(self) -> list[tuple[dr.Program, str, list[dr.Resource]]]:
        """(programme, feeder id, resources)."""
        await self._seed()
        resources: dict[str, list[dr.Resource]] = {}
        for r in await self.store.list_records("DrResource", limit=100_000):
            resources.setdefault(r["program_id"], []).append(dr.Resource(
                id=r["id"], program_id=r["program_id"], feeder_id=r["feeder_id"], load_id=r["load_id"],
                account=r["account"], kind=dr.ResourceKind(r["kind"]), capacity_kw=float(r["capacity_kw"]),
                enrolled_from=date.fromisoformat(r["enrolled_from"]),
                enrolled_until=date.fromisoformat(r["enrolled_until"]) if r.get("enrolled_until") else None))
        out = []
        for p in await self.store.list_records("DrProgram", limit=10_000):
            prog = dr.Program(id=p["id"], name=p["name"], kind=dr.ProgramKind(p["kind"]),
                              season_start=date.fromisoformat(p["season_start"]),
                              season_end=date.fromisoformat(p["season_end"]),
                              max_events_per_season=int(p["max_events_per_season"]),
                              max_hours_per_event=float(p["max_hours_per_event"]),
                              min_notice_min=int(p["min_notice_min"]),
                              opt_out_deadline_min=int(p["opt_out_deadline_min"]),
                              max_opt_outs_per_season=int(p["max_opt_outs_per_season"]))
            out.append((prog, p["feeder_id"], resources.get(prog.id, [])))
        return out

    async def _program(self, program_id: str) -> tuple[dr.Program, str, list[dr.Resource]]:
        progs = await self.programs()
        for p in progs:
            if p[0].id == program_id:
                return p
        known = ", ".join(p[0].id for p in progs) or "none"
        raise NotFound(f"DR programme {program_id!r} not found; drPrograms lists them (known: {known})",
                       element_id=program_id)

    # -- events ----------------------------------------------------------------------------------

    async def _event_rows(self) -> list[dict[str, Any]]:
        return list(await self.store.list_records("DrEvent", limit=100_000))

    @staticmethod
    def _record(row: dict[str, Any]) -> dr.EventRecord:
        return dr.EventRecord(id=f"ev-{row['seq']}", program_id=row["program_id"], feeder_id=row["feeder_id"],
                              start=_dt(row["start"]), end=_dt(row["end"]), target_kw=float(row["target_kw"]),
                              cancelled=bool(row.get("cancelled", False)),
                              resources=tuple((r, float(k)) for r, k in json.loads(row.get("resources") or "[]")),
                              opted_out=tuple(json.loads(row.get("opted_out") or "[]")))

    def _view(self, row: dict[str, Any]) -> EventView:
        ev = self._record(row)
        return EventView(event=ev, status=ev.status(self._now()), planned_kw=float(row.get("planned_kw", 0.0)),
                         shortfall_kw=float(row.get("shortfall_kw", 0.0)),
                         all_or_nothing=bool(row.get("all_or_nothing", False)), created_by=row.get("created_by", ""))

    async def events(self, status: dr.EventStatus | None = None, visible: Any = lambda fid: True) -> list[EventView]:
        await self._seed()
        views = [self._view(r) for r in await self._event_rows() if visible(r["feeder_id"])]
        return [v for v in views if status is None or v.status is status]

    async def event(self, event_id: str) -> tuple[EventView, int]:
        for row in await self._event_rows():
            if f"ev-{row['seq']}" == event_id:
                return self._view(row), int(row["seq"])
        raise NotFound(f"DR event {event_id!r} not found; drEvents lists them", element_id=event_id)

    async def create_event(self, program_id: str, feeder_id: str, start: datetime, end: datetime, target_kw: float,
                           all_or_nothing: bool, by: str) -> EventView:
        async with self._lock:
            prog, prog_feeder, resources = await self._program(program_id)
            if feeder_id != prog_feeder:
                raise BadInput(f"rule=FEEDER: programme {program_id} enrols resources on feeder {prog_feeder}, not "
                               f"{feeder_id}; choose one of its feeder's programmes", element_id=feeder_id)
            req = dr.EventRequest(program_id, feeder_id, start.astimezone(UTC), end.astimezone(UTC), float(target_kw),
                                  all_or_nothing)
            events = [self._record(r) for r in await self._event_rows()]
            dr.check_event(prog, req, events, self._now())
            plan = dr.dispatch(prog, resources, req, events)
            seq = await self.store.append_record("DrEvent", {
                "program_id": program_id, "start": req.start.isoformat(), "end": req.end.isoformat(),
                "target_kw": req.target_kw, "all_or_nothing": all_or_nothing, "cancelled": False,
                "resources": json.dumps(plan.resources), "opted_out": "[]", "planned_kw": plan.planned_kw,
                "shortfall_kw": plan.shortfall_kw, "created_by": by,
                "created_at": self._now().isoformat()}, feeder_id=feeder_id)
            view, _ = await self.event(f"ev-{seq}")
            return view

    async def cancel_event(self, event_id: str) -> EventView:
        async with self._lock:
            view, seq = await self.event(event_id)
            if view.status in (dr.EventStatus.COMPLETED, dr.EventStatus.CANCELLED):
                raise BadInput(f"rule=NOT_CANCELLABLE: event {event_id} is {view.status.value}; only scheduled or "
                               f"active events can be cancelled", element_id=event_id)
            await self.store.update_record("DrEvent", seq, {"cancelled": True})
            return (await self.event(event_id))[0]

    async def opt_out(self, event_id: str, resource_id: str) -> EventView:
        """Take ``resource_id`` out of the event (within the programme's rules) and re-plan it."""
        async with self._lock:
            view, seq = await self.event(event_id)
            ev = view.event
            prog, _, resources = await self._program(ev.program_id)
            events = [self._record(r) for r in await self._event_rows()]
            dr.check_opt_out(prog, ev, resource_id, events, self._now())
            out = (*ev.opted_out, resource_id)
            req = dr.EventRequest(ev.program_id, ev.feeder_id, ev.start, ev.end, ev.target_kw, False)
            plan = dr.dispatch(prog, resources, req, events, out, event_id=ev.id)
            await self.store.update_record("DrEvent", seq, {
                "opted_out": json.dumps(out), "resources": json.dumps(plan.resources), "planned_kw": plan.planned_kw,
                "shortfall_kw": plan.shortfall_kw})
            return (await self.event(event_id))[0]

    # -- performance -----------------------------------------------------------------------------

    async def performance(self, event_id: str, tz: str = "UTC") -> dr.Performance:
        view, _ = await self.event(event_id)
        ev = view.event
        if view.status is dr.EventStatus.CANCELLED:
            raise BadInput(f"rule=CANCELLED: event {event_id} was cancelled; it has no performance",
                           element_id=event_id)
        prog, _, resources = await self._program(ev.program_id)
        by_id = {r.id: r for r in resources}
        loads = sorted({by_id[r].load_id for r, _ in ev.resources if r in by_id})
        day0 = datetime.combine(ev.start.date(), datetime.min.time(), UTC)
        start = day0 - timedelta(days=dr.BASELINE_LOOKBACK_DAYS)
        end = day0 + timedelta(days=1)

        def read() -> list[tuple[str, datetime, float]]:
            from graph_schema.historian.query import HistorianReader  # DuckDB: server side only

            return HistorianReader(self.root).load_energy(ev.feeder_id, loads, start, end)

        rows = await asyncio.to_thread(read)
        daily: dict[date, np.ndarray] = {}
        for _, ts, kwh in rows:
            d = ts.date()
            prof = daily.setdefault(d, np.zeros(dr.PER_DAY))
            prof[(ts.hour * 60 + ts.minute) // 15] += kwh * 4  # kWh per quarter hour -> kW
        counts: dict[date, int] = {}
        for _, ts, _ in rows:
            counts[ts.date()] = counts.get(ts.date(), 0) + 1
        for d, prof in daily.items():  # a day missing intervals is not complete
            if counts[d] < dr.PER_DAY * len(loads) and d != ev.start.date():
                prof[:] = np.nan
        event_days = [e.start.date() for e in (self._record(r) for r in await self._event_rows())
                      if e.program_id == prog.id and e.id != ev.id and not e.cancelled]
        first = (ev.start - day0) // dr.INTERVAL
        last = -(-(ev.end - day0) // dr.INTERVAL)
        base = dr.baseline_10_in_10(daily, ev.start.date(), first, excluded=event_days)
        metered = daily.get(ev.start.date(), np.full(dr.PER_DAY, np.nan)).copy()
        if ev.start.date() in daily:
            seen = np.zeros(dr.PER_DAY)
            for _, ts, _ in rows:
                if ts.date() == ev.start.date():
                    seen[(ts.hour * 60 + ts.minute) // 15] += 1
            metered[seen < len(loads)] = np.nan
        return dr.performance(ev.target_kw, base, metered, int(first), int(min(last, dr.PER_DAY)))


def resources_of_account(programs: Sequence[tuple[dr.Program, str, list[dr.Resource]]], account: str) -> list[str]:
    return [r.id for _, _, rs in programs for r in rs if r.account == account]
