"""Real-time reads and subscriptions: measurements, alarms, events, control history, tags.

Subscriptions (``graphql-transport-ws``) read the server's :class:`server.services.EventHub`. Each
takes ``afterSeq``: the last event ``seq`` the client received. With it, the client first gets
every matching event after that seq - from the bus's window or, for what left the window, from
the durable store (durable events only: alarms, controls, trips, topology changes) - then the live
ones, in seq order, without duplicates. A subscriber that falls behind is ended with
``SLOW_SUBSCRIBER`` and resumes with ``afterSeq``.

``measurements`` sends batches: of the values of one point that arrive together, the newest (a
display shows the present, not every intermediate); ``compact`` carries a batch as parallel arrays,
one JSON value instead of an object per point, for high-rate clients. ``deadbandPu`` suppresses
VM_PU changes smaller than it (per subscriber, against the last value sent to it; quality changes
always pass) and ``minIntervalMs`` coalesces to at most one batch per interval (latest value per
point). ``pointIds``/``elementIds`` keep only those points (both given: points matching both), on
the server, before anything else: a client watching one breaker receives only its points.

Events of the ``alarms`` subscription carry ``alarmId``, the id ``acknowledgeAlarm`` takes.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Callable
from datetime import datetime
from typing import Annotated, Any

import strawberry
from strawberry.scalars import JSON
from strawberry.types import Info

from actors.cores.events import Alarm as AlarmRecord
from actors.cores.events import AlarmBook, alarm_id
from actors.cores.events import Event as EventRecord
from actors.feeder_actor import ALARM_EVENT_KINDS
from graph_schema.errors import BadInput
from security.audit import AuditAction
from security.roles import Permission, feeder_in_scope, requires
from server.metrics import METRICS
from server.schema.audit import audited
from server.schema.control import Tag
from server.schema.enums import (
    AlarmKind,
    ControlAction,
    ControlStatus,
    EstimatorQuality,
    EventKind,
    Quality,
    Severity,
    alarm_kind,
    coerce,
    parse_values,
)
from server.schema.relay import Connection, connection, decode_cursor, page_size

CONTROL_KINDS = frozenset({EventKind.CONTROL})
TOPOLOGY_KINDS = frozenset({EventKind.TOPOLOGY_CHANGE})


@strawberry.type
class Measurement:
    point_id: strawberry.ID
    element_id: strawberry.ID
    quantity: str
    value: float | None = strawberry.field(description="Numeric value; booleans as 1/0 (STATUS 1 = open)")
    quality: Quality = strawberry.field(description="GOOD, STALE, INVALID or COMM_LOST")  # type: ignore[valid-type]
    unit: str
    source_ts: datetime | None
    received_ts: datetime | None
    seq: int | None = strawberry.field(default=None, description="Event seq (subscriptions only)")
    estimator_quality: EstimatorQuality | None = strawberry.field(  # type: ignore[valid-type]
        default=None, description="SUSPECT when the state estimator's bad-data test left this value out of the "
                                  "estimate (the measurements query; null on subscriptions and when it fits)")
    normalized_residual: float | None = strawberry.field(
        default=None, description="The largest-normalized-residual test's figure for a SUSPECT value")


def _num(v: Any) -> float | None:
    if v is None:
        return None
    return float(v)


def _measurement_of_row(r: dict[str, Any]) -> Measurement:
    return Measurement(point_id=strawberry.ID(r["point_id"]), element_id=strawberry.ID(r["element_id"]),
                       quantity=r["quantity"], value=_num(r["value"]), quality=Quality(r["quality"]), unit=r["unit"],
                       source_ts=r["source_ts"], received_ts=r["received_ts"],
                       estimator_quality=EstimatorQuality(r["estimator_quality"]) if r.get("estimator_quality")
                       else None, normalized_residual=r.get("normalized_residual"))


def _ts(text: Any) -> datetime | None:
    return datetime.fromisoformat(text) if isinstance(text, str) else None


def _measurement_of_event(e: EventRecord) -> Measurement:
    """The GraphQL object of one measurement event, built once and shared by every subscriber."""
    # Keyed by the event object itself (the hub hands every subscriber the same objects); the
    # entry keeps the event alive, so its id cannot be reused while cached.
    hit = _MEASUREMENT_CACHE.get(id(e))
    if hit is not None and hit[0] is e:
        return hit[1]
    d = e.data
    m = Measurement(point_id=strawberry.ID(str(d["point_id"])), element_id=strawberry.ID(e.element_id or ""),
                    quantity=str(d["quantity"]), value=_num(d["value"]), quality=Quality(d["quality"]),
                    unit=str(d.get("unit") or ""), source_ts=_ts(d.get("source_ts")),
                    received_ts=_ts(d.get("received_ts")), seq=e.seq)
    if len(_MEASUREMENT_CACHE) >= _MEASUREMENT_CACHE_SIZE:
        _MEASUREMENT_CACHE.clear()  # events age out fast: a full reset is cheaper than an LRU
    _MEASUREMENT_CACHE[id(e)] = (e, m)
    return m


_MEASUREMENT_CACHE: dict[int, tuple[EventRecord, Measurement]] = {}
_MEASUREMENT_CACHE_SIZE = 50_000


@strawberry.type(description="Measurements that changed, newest value per point, in seq order")
class MeasurementBatch:
    seq: int = strawberry.field(description="Seq of the newest event in the batch (resume with afterSeq)")
    feeder_id: strawberry.ID
    events: strawberry.Private[list[EventRecord]]

    @strawberry.field(description="One object per point")
    def points(self) -> list[Measurement]:
        return [_measurement_of_event(e) for e in self.events]

    @strawberry.field(description=(
        "The same batch as parallel arrays: {pointId, elementId, quantity, value, quality, sourceTs, seq}, "
        "entry i of each array for the same point. One value to transfer instead of an object per point: "
        "for displays taking thousands of points a second."))
    def compact(self) -> JSON:
        ev = self.events
        return {
            "pointId": [e.data["point_id"] for e in ev],
            "elementId": [e.element_id for e in ev],
            "quantity": [e.data["quantity"] for e in ev],
            "value": [_num(e.data["value"]) for e in ev],
            "quality": [e.data["quality"] for e in ev],
            "sourceTs": [e.data.get("source_ts") for e in ev],
            "seq": [e.seq for e in ev],
        }


def event_alarm_id(e: EventRecord) -> str | None:
    """The id of the alarm an alarm event raises, clears or acknowledges (None for other events):
    the key the feeder's alarm book files it under, written as :func:`actors.cores.events.alarm_id` does."""
    if e.kind not in ALARM_EVENT_KINDS:
        return None
    feeder_id, element_id, kind = AlarmBook.key_of(e)
    return f"{feeder_id}|{element_id or ''}|{kind}"


@strawberry.type
class Event:
    seq: int
    kind: EventKind  # type: ignore[valid-type]
    feeder_id: strawberry.ID
    element_id: strawberry.ID | None
    severity: Severity  # type: ignore[valid-type]
    message: str
    at: datetime
    data: JSON
    alarm_id: strawberry.ID | None = strawberry.field(
        default=None, description="Alarm events: the id of the alarm, as acknowledgeAlarm takes it; null otherwise")

    @classmethod
    def of(cls, e: EventRecord) -> Event:
        aid = event_alarm_id(e)
        return cls(seq=e.seq, kind=EventKind(e.kind), feeder_id=strawberry.ID(e.feeder_id),
                   element_id=None if e.element_id is None else strawberry.ID(e.element_id),
                   severity=Severity(e.severity), message=e.message, at=e.at, data=dict(e.data),
                   alarm_id=None if aid is None else strawberry.ID(aid))


@strawberry.type
class EventsPage:
    events: list[Event]
    next_seq: int = strawberry.field(description="Pass as afterSeq to continue")


@strawberry.type
class Alarm:
    id: strawberry.ID = strawberry.field(description="Give it to acknowledgeAlarm")
    feeder_id: strawberry.ID
    element_id: strawberry.ID | None
    kind: AlarmKind = strawberry.field(description="OTHER: a kind this server version does not know (see message)")
    severity: Severity  # type: ignore[valid-type]
    message: str
    first_seen: datetime
    last_seen: datetime
    count: int
    active: bool
    acknowledged_by: str | None = strawberry.field(
        description="Who took the alarm on; null until acknowledged, and again after it escalates")
    acknowledged_at: datetime | None

    @classmethod
    def of(cls, a: AlarmRecord, active: bool) -> Alarm:
        return cls(id=strawberry.ID(alarm_id(a)), feeder_id=strawberry.ID(a.feeder_id),
                   element_id=None if a.element_id is None else strawberry.ID(a.element_id),
                   kind=alarm_kind(a.kind), severity=Severity(a.severity), message=a.message, first_seen=a.first_seen,
                   last_seen=a.last_seen,
                   count=a.count, active=active, acknowledged_by=a.acknowledged_by, acknowledged_at=a.acknowledged_at)


@strawberry.type
class ControlRecord:
    seq: int
    feeder_id: strawberry.ID
    device_id: strawberry.ID
    action: ControlAction  # type: ignore[valid-type]
    value: float | None
    operator: str
    status: ControlStatus
    code: str | None
    message: str | None
    requested_at: datetime
    completed_at: datetime | None  # None while the intent is PENDING

    @classmethod
    def of(cls, r: dict[str, Any]) -> ControlRecord:
        status = coerce(ControlStatus, r["status"], ControlStatus.FAILED)
        action = coerce(ControlAction, r["action"], ControlAction.SET)  # a record of another version
        assert status is not None and action is not None
        return cls(seq=int(r["seq"]), feeder_id=strawberry.ID(r["feeder_id"] or ""),
                   device_id=strawberry.ID(r["device_id"]), action=action, value=r.get("value"),
                   operator=r["operator"], status=status, code=r.get("code"), message=r.get("message"),
                   requested_at=datetime.fromisoformat(r["requested_at"]),
                   completed_at=datetime.fromisoformat(r["completed_at"]) if r.get("completed_at") else None)


def _feeders_in_scope(info: Info, feeder_id: str | None) -> list[str]:
    principal = info.context.get("principal")
    ids = [str(feeder_id)] if feeder_id is not None else info.context["services"].grid.fleet.feeder_ids
    return [f for f in ids if principal is not None and feeder_in_scope(principal, f)]


def _feeder_visible(info: Info) -> Callable[[str], bool]:
    principal = info.context.get("principal")
    return lambda feeder_id: principal is not None and feeder_in_scope(principal, feeder_id)


def _visible(info: Info) -> Callable[[EventRecord], bool]:
    feeder_visible = _feeder_visible(info)
    return lambda e: feeder_visible(e.feeder_id)


@strawberry.type
class RealtimeQuery:
    @strawberry.field(permission_classes=[requires(Permission.READ_GRID, feeder_arg="feeder_id")],
                      description="Latest telemetered value of every point of a feeder")
    async def measurements(self, info: Info, feeder_id: strawberry.ID) -> list[Measurement]:
        rows = await info.context["services"].grid.measurements(str(feeder_id))
        return [_measurement_of_row(r) for r in sorted(rows, key=lambda r: r["point_id"])]

    @strawberry.field(permission_classes=[requires(Permission.READ_ALARMS, feeder_arg="feeder_id")],
                      description="Active alarms (active: false: recently cleared ones; null: both)")
    async def alarms(self, info: Info, feeder_id: strawberry.ID | None = None,
                     active: bool | None = True) -> list[Alarm]:
        grid = info.context["services"].grid
        out: list[Alarm] = []
        for fid in _feeders_in_scope(info, feeder_id):
            live = {a.key for a in await grid.alarms(fid, True)} if active is None else set()
            for a in await grid.alarms(fid, active):
                out.append(Alarm.of(a, active is True or a.key in live))
        return out

    @strawberry.field(permission_classes=[requires(Permission.READ_GRID, feeder_arg="feeder_id")],
                      description="Safety tags in force")
    async def tags(self, info: Info, feeder_id: strawberry.ID | None = None) -> list[Tag]:
        grid = info.context["services"].grid
        return [Tag.of(fid, t) for fid in _feeders_in_scope(info, feeder_id) for t in await grid.tags(fid)]

    @strawberry.field(permission_classes=[requires(Permission.READ_ALARMS, feeder_arg="feeder_id")],
                      description="Operates and their outcomes, newest first")
    async def control_history(self, info: Info, feeder_id: strawberry.ID | None = None, first: int | None = 50,
                              after: str | None = None) -> Connection[ControlRecord]:
        limit = page_size(first)
        grid = info.context["services"].grid
        # The scope is part of the query (not a filter on its page): a feeder-scoped token gets full
        # pages and a true hasNextPage.
        scope = _feeders_in_scope(info, feeder_id)
        rows = await grid.control_history(scope, limit=limit + 1, before_seq=decode_cursor(after))
        return connection([(int(r["seq"]), ControlRecord.of(r)) for r in rows], limit, after=after)

    @strawberry.field(permission_classes=[requires(Permission.READ_ALARMS, feeder_arg="feeder_id")],
                      description="Events after afterSeq (from the window, or the durable store beyond it)")
    async def events(
        self, info: Info, after_seq: int | None = 0, first: int | None = 100, feeder_id: strawberry.ID | None = None,
        kinds: Annotated[list[str] | None, strawberry.argument(
            deprecation_reason="Use eventKinds (enum values, e.g. eventKinds: [ALARM]); kinds will be removed in "
                               "the next release")] = None,
        event_kinds: Annotated[list[EventKind] | None, strawberry.argument(  # type: ignore[valid-type]
            description="Only events of these kinds")] = None,
    ) -> EventsPage:
        limit = page_size(first)
        hub = info.context["services"].hub
        after = 0 if after_seq is None else after_seq
        if after < 0:
            raise BadInput(f"afterSeq={after} must be >= 0")
        wanted = _event_kinds(kinds, event_kinds)
        events, next_seq = await hub.history(after, feeder_id=None if feeder_id is None else str(feeder_id),
                                             kinds=wanted, limit=limit)
        visible = _visible(info)
        shown = [e for e in events if visible(e)]
        if len(events) == limit:
            next_seq = events[-1].seq
        return EventsPage(events=[Event.of(e) for e in shown], next_seq=next_seq)


def _event_kinds(kinds: list[str] | None, event_kinds: list[Any] | None) -> list[str] | None:
    """The kinds asked for by the deprecated ``kinds`` (strings, checked) and/or ``eventKinds``."""
    if kinds is None and event_kinds is None:
        return None
    out = [str(k) for k in parse_values(EventKind, kinds or [], "kinds", use_instead="eventKinds")]
    out += [str(k) for k in event_kinds or []]
    return sorted(set(out)) or None  # empty: every kind, as before


async def _event_stream(info: Info, name: str, feeder_id: strawberry.ID | None, kinds: frozenset[EventKind],
                        after_seq: int | None) -> AsyncGenerator[Event, None]:
    hub = info.context["services"].hub
    METRICS.subscriptions.labels(name).inc()
    try:
        async for batch in hub.stream(after_seq=after_seq, feeder_id=None if feeder_id is None else str(feeder_id),
                                      kinds={str(k) for k in kinds}, feeder_visible=_feeder_visible(info)):
            for e in batch:
                yield Event.of(e)
    finally:
        METRICS.subscriptions.labels(name).dec()


@strawberry.type
class RealtimeMutation:
    @strawberry.mutation(permission_classes=[requires(Permission.ACK_ALARMS, feeder_arg="feeder_id")],
                         description="Take on an active alarm (ISA-18.2): it stays active until it clears, "
                                     "and needs acknowledging again if it escalates")
    async def acknowledge_alarm(self, info: Info, feeder_id: strawberry.ID, alarm_id: strawberry.ID) -> Alarm:
        principal = info.context["principal"]
        grid = info.context["services"].grid
        grid.require_feeder(str(feeder_id))
        a = await audited(info, AuditAction.ALARM_ACK, f"{feeder_id}/{alarm_id}", {"alarm_id": str(alarm_id)},
                           grid.fleet.call(str(feeder_id), "acknowledge_alarm", str(alarm_id), principal.sub))
        return Alarm.of(a, True)


MAX_FILTER_IDS = 10_000


async def _point_filter(info: Info, feeder_id: str, point_ids: list[strawberry.ID] | None,
                        element_ids: list[strawberry.ID] | None) -> Callable[[EventRecord], bool] | None:
    """The measurement events a subscriber asked for (None: all). Element ids are checked against
    the feeder's model; point ids against its telemetered points (while it has none, e.g. before
    its field is attached, any point id is taken)."""
    if point_ids is None and element_ids is None:
        return None
    grid = info.context["services"].grid
    points = {str(p) for p in point_ids} if point_ids is not None else None
    elements = {str(e) for e in element_ids} if element_ids is not None else None
    for name, ids in (("pointIds", points), ("elementIds", elements)):
        if ids is not None and not ids:
            raise BadInput(f"{name} is empty; leave it out for every point, or name at least one")
        if ids is not None and len(ids) > MAX_FILTER_IDS:
            raise BadInput(f"{name} names {len(ids)} ids; at most {MAX_FILTER_IDS} (leave it out for every point)")
    if elements is not None:
        model = await grid.model(feeder_id)
        known = {str(getattr(x, "id", "")) for x in model.elements()}
        unknown = sorted(elements - known)
        if unknown:
            raise BadInput(f"elementIds: {', '.join(unknown[:10])} not on feeder {feeder_id!r}; query "
                           f"feeder(id: {feeder_id!r}) for its element ids", element_id=unknown[0])
    if points is not None:
        telemetered = {str(r["point_id"]) for r in await grid.measurements(feeder_id)}
        unknown = sorted(points - telemetered) if telemetered else []
        if unknown:
            raise BadInput(f"pointIds: {', '.join(unknown[:10])} not telemetered on feeder {feeder_id!r}; query "
                           f"measurements(feederId: {feeder_id!r}) for its point ids", element_id=unknown[0])

    def wanted(e: EventRecord) -> bool:
        return ((points is None or str(e.data.get("point_id")) in points)
                and (elements is None or (e.element_id or "") in elements))

    return wanted


@strawberry.type
class RealtimeSubscription:
    @strawberry.subscription(permission_classes=[requires(Permission.READ_GRID, feeder_arg="feeder_id")],
                             description="Telemetry changes of a feeder, in batches")
    async def measurements(
        self, info: Info, feeder_id: strawberry.ID, deadband_pu: float | None = None,
        min_interval_ms: int | None = None, after_seq: int | None = None,
        point_ids: Annotated[list[strawberry.ID] | None, strawberry.argument(
            description="Only these points (ids as the measurements query gives them)")] = None,
        element_ids: Annotated[list[strawberry.ID] | None, strawberry.argument(
            description="Only the points of these elements (switch, bus, line... ids of the feeder)")] = None,
    ) -> AsyncGenerator[MeasurementBatch, None]:
        if deadband_pu is not None and not deadband_pu >= 0:
            raise BadInput(f"deadbandPu={deadband_pu} must be >= 0")
        if min_interval_ms is not None and not 0 <= min_interval_ms <= 3_600_000:
            raise BadInput(f"minIntervalMs={min_interval_ms} must be between 0 and 3600000")
        wanted = await _point_filter(info, str(feeder_id), point_ids, element_ids)
        hub = info.context["services"].hub
        interval_s = (min_interval_ms or 0) / 1000
        sent: dict[str, tuple[Any, Any]] = {}  # point id -> (value, quality) last sent to this subscriber
        pending: dict[str, EventRecord] = {}
        last_yield = 0.0
        METRICS.subscriptions.labels("measurements").inc()
        try:
            async for batch in hub.stream(after_seq=after_seq, feeder_id=str(feeder_id),
                                          kinds={str(EventKind.MEASUREMENT)}, feeder_visible=_feeder_visible(info),
                                          tick_s=interval_s if interval_s > 0 else None, newest_per_point=True):
                if wanted is not None:
                    batch = [e for e in batch if wanted(e)]
                if not deadband_pu and interval_s <= 0:
                    if batch:  # no deadband, no interval: the hub's page (newest value per point) as it is
                        yield MeasurementBatch(seq=batch[-1].seq, feeder_id=feeder_id, events=batch)
                    continue
                for e in batch:
                    pid = str(e.data["point_id"])
                    value, quality = e.data["value"], e.data["quality"]
                    if deadband_pu and e.data["quantity"] == "VM_PU" and pid in sent:
                        old_v, old_q = sent[pid]
                        if (old_q == quality and isinstance(value, float) and isinstance(old_v, float)
                                and abs(value - old_v) < deadband_pu):
                            continue
                    sent[pid] = (value, quality)
                    pending[pid] = e
                now = time.monotonic()
                if pending and now - last_yield >= interval_s:
                    events = sorted(pending.values(), key=lambda ev: ev.seq)
                    pending.clear()
                    last_yield = now
                    yield MeasurementBatch(seq=events[-1].seq, feeder_id=feeder_id, events=events)
        finally:
            METRICS.subscriptions.labels("measurements").dec()

    @strawberry.subscription(permission_classes=[requires(Permission.READ_ALARMS, feeder_arg="feeder_id")],
                             description="Alarms raised and cleared (trips, fault indications, comm loss, limits...)")
    async def alarms(self, info: Info, feeder_id: strawberry.ID | None = None,
                     after_seq: int | None = None) -> AsyncGenerator[Event, None]:
        async for e in _event_stream(info, "alarms", feeder_id, ALARM_EVENT_KINDS, after_seq):
            yield e

    @strawberry.subscription(permission_classes=[requires(Permission.READ_ALARMS, feeder_arg="feeder_id")],
                             description="Selections, operates, results, cancels and tags")
    async def control_events(self, info: Info, feeder_id: strawberry.ID | None = None,
                             after_seq: int | None = None) -> AsyncGenerator[Event, None]:
        async for e in _event_stream(info, "controlEvents", feeder_id, CONTROL_KINDS, after_seq):
            yield e

    @strawberry.subscription(permission_classes=[requires(Permission.READ_GRID, feeder_arg="feeder_id")],
                             description="Switch position changes and the re-solved energization")
    async def topology_changes(self, info: Info, feeder_id: strawberry.ID,
                               after_seq: int | None = None) -> AsyncGenerator[Event, None]:
        async for e in _event_stream(info, "topologyChanges", feeder_id, TOPOLOGY_KINDS, after_seq):
            yield e
