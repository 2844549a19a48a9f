"""Outage records: customer accounting, status, estimated restoration, public projection (pure).

An :class:`Outage` follows one disturbance from detection to restoration (IEEE 1366 counts:
``customers_interrupted`` is everyone who lost supply at any time during the outage, the CI of the
event; ``customers_out`` is who is without supply now). :class:`OutageTracker` keeps them; every
change returns a new frozen :class:`Outage`, nothing is mutated, and the clock is injected.

Status transitions: DETECTED -> ISOLATED (a step that only isolates) -> PARTIALLY_RESTORED (some
customers back, some still out) -> RESTORED (nobody out; ``restored_at`` set). A step that loses
customers again after a restoration moves back to PARTIALLY_RESTORED.

Causes: a fault (``FAULT`` and the other unplanned causes) is apart from ``PLANNED_SWITCHING``, the
interruption that a person or an application caused by a commanded operation (attributed to them in
its first step). IEEE 1366 counts planned interruptions separately from unplanned ones
(:func:`reliability_counts`): they never enter SAIFI/SAIDI of unplanned events.

ETR (estimated restoration time) comes from an :class:`EtrPolicy`: minutes from the start per cause,
optionally per feeder; recomputed at every step; None once restored. Sections restored by
switching are not in the outage any more, so they need no ETR.

``to_record``/``from_record`` give flat scalar properties (str/int/float/bool/None; lists as JSON
text) for a graph store. :func:`public_view` is the public feed's projection: no device, bus, load
or internal ids; the id is an opaque stable hash.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from graph_schema.errors import BadInput, NotFound
from graph_schema.model import Feeder

__all__ = [
    "Cause",
    "EtrPolicy",
    "Outage",
    "OutageStatus",
    "OutageStep",
    "OutageTracker",
    "public_view",
    "reliability_counts",
]


class OutageStatus(StrEnum):
    DETECTED = "DETECTED"
    ISOLATED = "ISOLATED"
    PARTIALLY_RESTORED = "PARTIALLY_RESTORED"
    RESTORED = "RESTORED"


class Cause(StrEnum):
    FAULT = "FAULT"
    EQUIPMENT = "EQUIPMENT"
    WEATHER = "WEATHER"
    PLANNED = "PLANNED"
    UNKNOWN = "UNKNOWN"
    MOMENTARY = "MOMENTARY"
    PLANNED_SWITCHING = "PLANNED_SWITCHING"  # a commanded operation (operator or application) interrupted them


PLANNED_CAUSES = frozenset({Cause.PLANNED, Cause.PLANNED_SWITCHING})


@dataclass(frozen=True, slots=True)
class OutageStep:
    at: datetime
    action: str
    by: str
    customers_lost: int
    customers_restored: int
    load_ids_lost: tuple[str, ...] = ()
    load_ids_restored: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True, slots=True)
class Outage:
    id: str
    feeder_id: str
    status: OutageStatus
    cause: Cause
    started_at: datetime
    devices: tuple[str, ...]
    section_bus_ids: tuple[str, ...]
    customers_out: int
    customers_interrupted: int
    estimated_restoration: datetime | None
    steps: tuple[OutageStep, ...]
    restored_at: datetime | None
    momentary: bool
    load_ids_out: tuple[str, ...] = ()
    load_ids_interrupted: tuple[str, ...] = ()
    customers_by_load: Mapping[str, int] = field(default_factory=lambda: MappingProxyType({}))
    # Buses of the located faulted zone (within ``section_bus_ids``, the whole dark area): never to
    # be re-energized until the fault is cleared, also by an actor restarted from the store.
    fault_zone_bus_ids: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        return self.status != OutageStatus.RESTORED

    @property
    def planned(self) -> bool:
        """Caused by commanded switching or planned work (IEEE 1366: not an unplanned interruption)."""
        return self.cause in PLANNED_CAUSES

    def to_record(self) -> dict[str, str | int | float | bool | None]:
        """Flat scalar properties (lists and maps as JSON text, datetimes as ISO 8601)."""
        return {
            "id": self.id,
            "feeder_id": self.feeder_id,
            "status": self.status.value,
            "cause": self.cause.value,
            "started_at": self.started_at.isoformat(),
            "devices_json": json.dumps(list(self.devices)),
            "section_bus_ids_json": json.dumps(list(self.section_bus_ids)),
            "customers_out": self.customers_out,
            "customers_interrupted": self.customers_interrupted,
            "estimated_restoration": self.estimated_restoration.isoformat() if self.estimated_restoration else None,
            "steps_json": json.dumps([_step_dict(s) for s in self.steps]),
            "restored_at": self.restored_at.isoformat() if self.restored_at else None,
            "momentary": self.momentary,
            "load_ids_out_json": json.dumps(list(self.load_ids_out)),
            "load_ids_interrupted_json": json.dumps(list(self.load_ids_interrupted)),
            "customers_by_load_json": json.dumps(dict(sorted(self.customers_by_load.items()))),
            "fault_zone_bus_ids_json": json.dumps(list(self.fault_zone_bus_ids)),
        }

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Outage:
        try:
            return cls(
                id=str(rec["id"]),
                feeder_id=str(rec["feeder_id"]),
                status=OutageStatus(rec["status"]),
                cause=Cause(rec["cause"]),
                started_at=datetime.fromisoformat(rec["started_at"]),
                devices=tuple(json.loads(rec["devices_json"])),
                section_bus_ids=tuple(json.loads(rec["section_bus_ids_json"])),
                customers_out=int(rec["customers_out"]),
                customers_interrupted=int(rec["customers_interrupted"]),
                estimated_restoration=_dt(rec.get("estimated_restoration")),
                steps=tuple(_step_from(d) for d in json.loads(rec["steps_json"])),
                restored_at=_dt(rec.get("restored_at")),
                momentary=bool(rec["momentary"]),
                load_ids_out=tuple(json.loads(rec.get("load_ids_out_json") or "[]")),
                load_ids_interrupted=tuple(json.loads(rec.get("load_ids_interrupted_json") or "[]")),
                customers_by_load=MappingProxyType(json.loads(rec.get("customers_by_load_json") or "{}")),
                fault_zone_bus_ids=tuple(json.loads(rec.get("fault_zone_bus_ids_json") or "[]")),
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise BadInput(
                f"outage record {rec.get('id')!r} is malformed ({exc}); it must come from Outage.to_record()"
            ) from exc


def store_record(record: Mapping[str, Any]) -> tuple[dict[str, Any], str]:
    """An ``Outage.to_record()`` split for the graph store: its properties, and the feeder id that the
    store keeps as its own field (``append_record(..., feeder_id=...)``)."""
    props = dict(record)
    return props, str(props.pop("feeder_id"))


def _dt(v: Any) -> datetime | None:
    return datetime.fromisoformat(v) if v else None


def _step_dict(s: OutageStep) -> dict[str, Any]:
    return {
        "at": s.at.isoformat(),
        "action": s.action,
        "by": s.by,
        "customers_lost": s.customers_lost,
        "customers_restored": s.customers_restored,
        "load_ids_lost": list(s.load_ids_lost),
        "load_ids_restored": list(s.load_ids_restored),
        "note": s.note,
    }


def _step_from(d: Mapping[str, Any]) -> OutageStep:
    return OutageStep(
        at=datetime.fromisoformat(d["at"]),
        action=d["action"],
        by=d["by"],
        customers_lost=int(d["customers_lost"]),
        customers_restored=int(d["customers_restored"]),
        load_ids_lost=tuple(d.get("load_ids_lost", ())),
        load_ids_restored=tuple(d.get("load_ids_restored", ())),
        note=d.get("note", ""),
    )


@dataclass(frozen=True, slots=True)
class EtrPolicy:
    """Minutes from the outage start to the estimated restoration, per cause (and per feeder).

    ``per_feeder`` maps feeder id -> {cause: minutes}, overriding ``minutes_by_cause``. A cause
    with no entry uses ``default_minutes``.
    """

    minutes_by_cause: Mapping[Cause, float] = field(
        default_factory=lambda: MappingProxyType(
            {
                Cause.FAULT: 120.0,
                Cause.EQUIPMENT: 180.0,
                Cause.WEATHER: 240.0,
                Cause.PLANNED: 240.0,
                Cause.UNKNOWN: 120.0,
                Cause.MOMENTARY: 0.0,
                Cause.PLANNED_SWITCHING: 60.0,
            }
        )
    )
    per_feeder: Mapping[str, Mapping[Cause, float]] = field(default_factory=lambda: MappingProxyType({}))
    default_minutes: float = 120.0

    def estimate(self, outage: Outage, now: datetime) -> datetime | None:
        """ETR for the customers still out; None when nobody is out. Never earlier than ``now``."""
        if outage.customers_out <= 0:
            return None
        minutes = self.per_feeder.get(outage.feeder_id, {}).get(
            outage.cause, self.minutes_by_cause.get(outage.cause, self.default_minutes)
        )
        etr = outage.started_at + timedelta(minutes=minutes)
        return max(etr, now)


def _utc_now() -> datetime:
    return datetime.now(UTC)


class OutageTracker:
    """Keeps the outages of a head-end (pure: in-memory, clock injected)."""

    def __init__(
        self,
        *,
        etr_policy: EtrPolicy | None = None,
        utc_now: Callable[[], datetime] = _utc_now,
        outages: Iterable[Outage] = (),
    ) -> None:
        self._etr = etr_policy or EtrPolicy()
        self._now = utc_now
        self._outages: dict[str, Outage] = {o.id: o for o in outages}
        self._seq = len(self._outages)

    def get(self, outage_id: str) -> Outage:
        try:
            return self._outages[outage_id]
        except KeyError:
            raise NotFound(
                f"outage {outage_id!r} does not exist; list outages to find its id", element_id=outage_id
            ) from None

    def outages(self, *, active: bool | None = None, feeder_id: str | None = None) -> list[Outage]:
        out = [
            o
            for o in self._outages.values()
            if (active is None or o.active == active) and (feeder_id is None or o.feeder_id == feeder_id)
        ]
        return sorted(out, key=lambda o: (o.started_at, o.id))

    def _new_id(self, feeder_id: str, at: datetime) -> str:
        self._seq += 1
        return f"outage-{feeder_id}-{at.strftime('%Y%m%dT%H%M%S')}-{self._seq}"

    def open(
        self,
        feeder_id: str,
        cause: Cause | str,
        affected_load_ids: Iterable[str],
        customers_by_load: Mapping[str, int],
        devices: Sequence[str] = (),
        at: datetime | None = None,
        by: str = "fdir",
        *,
        section_bus_ids: Iterable[str] = (),
        note: str = "",
    ) -> Outage:
        """A new outage: every affected load is out now and counted as interrupted."""
        at = at or self._now()
        loads = tuple(sorted(set(affected_load_ids)))
        missing = [ld for ld in loads if ld not in customers_by_load]
        if missing:
            raise BadInput(f"customers_by_load lacks {', '.join(missing[:5])}; give a customer count for every load")
        # Keep every count given: loads lost in later steps are counted from the same map.
        cust = {ld: int(v) for ld, v in customers_by_load.items()}
        n = sum(cust[ld] for ld in loads)
        outage = Outage(
            id=self._new_id(feeder_id, at),
            feeder_id=feeder_id,
            status=OutageStatus.DETECTED,
            cause=Cause(cause),
            started_at=at,
            devices=tuple(devices),
            section_bus_ids=tuple(sorted(set(section_bus_ids))),
            customers_out=n,
            customers_interrupted=n,
            estimated_restoration=None,
            steps=(OutageStep(at, "DETECTED", by, n, 0, loads, (), note),),
            restored_at=None,
            momentary=False,
            load_ids_out=loads,
            load_ids_interrupted=loads,
            customers_by_load=MappingProxyType(cust),
        )
        outage = replace(outage, estimated_restoration=self._etr.estimate(outage, at))
        self._outages[outage.id] = outage
        return outage

    def step(
        self,
        outage_id: str,
        *,
        lost: Iterable[str] = (),
        restored: Iterable[str] = (),
        action: str,
        by: str,
        at: datetime | None = None,
        customers_by_load: Mapping[str, int] | None = None,
        isolated: bool = False,
        note: str = "",
    ) -> Outage:
        """Apply one switching step: ``lost`` loads go out (newly interrupted ones join
        ``customers_interrupted``, which never decreases), ``restored`` loads come back."""
        o = self.get(outage_id)
        if not o.active:
            raise BadInput(f"outage {outage_id!r} is closed; open a new outage for a new event", element_id=outage_id)
        at = at or self._now()
        cust = dict(o.customers_by_load)
        lost_set, restored_set = set(lost), set(restored)
        if lost_set & restored_set:
            raise BadInput(f"loads {sorted(lost_set & restored_set)[:5]} are both lost and restored in one step")
        for ld in lost_set:
            if ld not in cust:
                if customers_by_load is None or ld not in customers_by_load:
                    raise BadInput(f"customer count of load {ld!r} unknown; pass customers_by_load")
                cust[ld] = int(customers_by_load[ld])
        out = set(o.load_ids_out)
        newly_lost = sorted(lost_set - out)
        really_restored = sorted(restored_set & out)
        out = (out | lost_set) - restored_set
        interrupted = set(o.load_ids_interrupted) | lost_set
        n_lost = sum(cust[ld] for ld in newly_lost)
        n_rest = sum(cust[ld] for ld in really_restored)
        customers_out = sum(cust[ld] for ld in out)
        if customers_out == 0:
            status = OutageStatus.RESTORED
        elif (
            really_restored
            or o.status == OutageStatus.PARTIALLY_RESTORED
            or (customers_out < sum(cust[ld] for ld in interrupted))
        ):
            status = OutageStatus.PARTIALLY_RESTORED
        elif isolated or o.status == OutageStatus.ISOLATED:
            status = OutageStatus.ISOLATED
        else:
            status = o.status
        new = replace(
            o,
            status=status,
            customers_out=customers_out,
            customers_interrupted=sum(cust[ld] for ld in interrupted),
            load_ids_out=tuple(sorted(out)),
            load_ids_interrupted=tuple(sorted(interrupted)),
            customers_by_load=MappingProxyType(cust),
            steps=(
                *o.steps,
                OutageStep(at, action, by, n_lost, n_rest, tuple(newly_lost), tuple(really_restored), note),
            ),
            restored_at=at if status == OutageStatus.RESTORED else None,
        )
        new = replace(new, estimated_restoration=self._etr.estimate(new, at))
        self._outages[new.id] = new
        return new

    def record_momentary(
        self,
        feeder_id: str,
        devices: Sequence[str],
        affected_load_ids: Iterable[str],
        customers_by_load: Mapping[str, int],
        at: datetime | None = None,
        by: str = "protection",
    ) -> Outage:
        """A trip-and-reclose: interrupted briefly, restored at once (IEEE 1366 MAIFI event)."""
        at = at or self._now()
        loads = tuple(sorted(set(affected_load_ids)))
        cust = {ld: int(customers_by_load.get(ld, 0)) for ld in loads}
        n = sum(cust.values())
        outage = Outage(
            id=self._new_id(feeder_id, at),
            feeder_id=feeder_id,
            status=OutageStatus.RESTORED,
            cause=Cause.MOMENTARY,
            started_at=at,
            devices=tuple(devices),
            section_bus_ids=(),
            customers_out=0,
            customers_interrupted=n,
            estimated_restoration=None,
            steps=(OutageStep(at, "MOMENTARY", by, n, n, loads, loads, "tripped and reclosed"),),
            restored_at=at,
            momentary=True,
            load_ids_out=(),
            load_ids_interrupted=loads,
            customers_by_load=MappingProxyType(cust),
        )
        self._outages[outage.id] = outage
        return outage

    def set_fault_zone(self, outage_id: str, bus_ids: Iterable[str]) -> Outage:
        """Record (or, with no buses, forget) the located faulted zone of an outage."""
        o = replace(self.get(outage_id), fault_zone_bus_ids=tuple(sorted(set(bus_ids))))
        self._outages[outage_id] = o
        return o

    def close(self, outage_id: str, *, by: str, at: datetime | None = None, note: str = "repaired") -> Outage:
        """Everyone still out is restored (crew repair done)."""
        o = self.get(outage_id)
        if not o.active:
            return o
        return self.step(outage_id, restored=o.load_ids_out, action="CLOSED", by=by, at=at, note=note)


def reliability_counts(outages: Iterable[Outage], *, until: datetime | None = None) -> dict[str, dict[str, float]]:
    """Customer interruptions (CI) and customer minutes interrupted (CMI) per IEEE 1366 class:
    ``unplanned`` sustained interruptions (SAIFI/SAIDI numerators), ``planned`` ones (commanded
    switching, planned work: reported separately, never in the unplanned figures) and ``momentary``
    (MAIFI numerator, no minutes). Minutes of a step count from its ``at`` to the step that restored
    the load (or ``until``/the last step for loads still out)."""
    out = {k: {"events": 0.0, "ci": 0.0, "cmi": 0.0} for k in ("unplanned", "planned", "momentary")}
    for o in outages:
        cls = "momentary" if o.momentary else "planned" if o.planned else "unplanned"
        acc = out[cls]
        acc["events"] += 1
        acc["ci"] += o.customers_interrupted
        if o.momentary:
            continue
        since: dict[str, datetime] = {}
        for s in o.steps:
            for ld in s.load_ids_lost:
                since.setdefault(ld, s.at)
            for ld in s.load_ids_restored:
                t0 = since.pop(ld, None)
                if t0 is not None:
                    acc["cmi"] += o.customers_by_load.get(ld, 0) * (s.at - t0).total_seconds() / 60.0
        end = until or (o.steps[-1].at if o.steps else o.started_at)
        for ld, t0 in since.items():
            acc["cmi"] += o.customers_by_load.get(ld, 0) * max((end - t0).total_seconds(), 0.0) / 60.0
    return out


# ---------------------------------------------------------------------------------------- public


def _hull(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Convex hull (Andrew's monotone chain), counter-clockwise, without repeating the first point."""
    pts = sorted(set(points))
    if len(pts) < 3:
        return pts

    def cross(o: tuple[float, float], a: tuple[float, float], b: tuple[float, float]) -> float:
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower: list[tuple[float, float]] = []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    upper: list[tuple[float, float]] = []
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    return lower[:-1] + upper[:-1]


def public_id(outage: Outage, salt: str = "dms-public-outage") -> str:
    """Opaque, stable id for the public feed (reveals neither feeder nor device)."""
    return hashlib.sha256(f"{salt}:{outage.id}".encode()).hexdigest()[:20]


def public_view(
    outage: Outage,
    feeder: Feeder | None = None,
    bus_geo: Mapping[str, tuple[float, float]] | None = None,
    *,
    salt: str = "dms-public-outage",
) -> dict[str, Any]:
    """The public outage feed's projection of ``outage``: counts, times, cause category, status
    and an area (GeoJSON Polygon of the convex hull of the affected buses' lon/lat when at least
    three distinct points exist, a Point for one or two, else None). Bus positions come from
    ``bus_geo`` (bus id -> (lon, lat)) or the feeder's buses. Nothing else: no ids of the model."""
    geo: dict[str, tuple[float, float]] = dict(bus_geo or {})
    if feeder is not None:
        for b in feeder.buses:
            if b.id not in geo and b.lon is not None and b.lat is not None:
                geo[b.id] = (b.lon, b.lat)
    # The area of who is without supply now: the de-energized section until someone is restored,
    # then the buses of the loads still out (all interrupted buses once over or without the feeder).
    area_buses: list[str] | tuple[str, ...] = outage.section_bus_ids
    partly_restored = set(outage.load_ids_out) != set(outage.load_ids_interrupted)
    if feeder is not None and outage.active and outage.load_ids_out and partly_restored:
        out = set(outage.load_ids_out)
        area_buses = [ld.bus_id for ld in feeder.loads if ld.id in out]
    pts = [geo[b] for b in area_buses if b in geo]
    hull = _hull(pts)
    area: dict[str, Any] | None
    if len(hull) >= 3:
        ring = [[round(x, 6), round(y, 6)] for x, y in hull]
        area = {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}
    elif hull:
        cx = sum(p[0] for p in hull) / len(hull)
        cy = sum(p[1] for p in hull) / len(hull)
        area = {"type": "Point", "coordinates": [round(cx, 6), round(cy, 6)]}
    else:
        area = None
    return {
        "id": public_id(outage, salt),
        "customersAffected": outage.customers_out if outage.active else outage.customers_interrupted,
        "startedAt": outage.started_at.isoformat(),
        "estimatedRestoration": outage.estimated_restoration.isoformat() if outage.estimated_restoration else None,
        "cause": outage.cause.value,
        "status": outage.status.value,
        "area": area,
    }
