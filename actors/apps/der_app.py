"""DER management as a hosted application: SunSpec telemetry, commands and curtailment per feeder.

* **Telemetry.** Each DER's SunSpec device (its endpoint bound by :meth:`DerApp.attach`, persisted
  as a ``Setting`` record so a rebuilt actor binds again) is read every ``poll_s`` with
  :class:`protocols.sunspec_client.SunSpecClient`: P, Q, voltage, limits, curves, SOC and
  connection state live in the feeder actor; a DER that stops answering is ``OFFLINE`` (an event).
* **Commands** (:meth:`DerApp.set_control`, per DER or per group: the feeder, a zone of buses, an
  aggregator's fleet given as DER ids, optionally with a group P target shared pro rata to
  ratings). Each is checked against the DER's rating and the 1547 ranges
  (:func:`actors.cores.der.validate_control`: ``BAD_INPUT`` naming the limit, nothing sent), then
  goes through select-before-operate (:func:`actors.execution.operate_der`, recorded and emitted)
  and is confirmed by reading the SunSpec registers back. A DER that does not answer, refuses or
  reads back another value fails with that reason; nothing is retried.
* **Storage schedules** (:meth:`DerApp.set_schedule`): charge/discharge set points by time, checked
  against the SOC limits from the reported SOC before anything is stored; the entry in force is
  sent when its time comes.
* **Curtailment** (:func:`actors.cores.der.curtailment` on the estimated state after every
  re-solve, with the feeder's topology so that a line or transformer overloaded by reverse power
  curtails only the DERs behind it, and a load-driven overload curtails none): ``AUTOMATIC``
  sends the P limits (``CURTAIL_DER_P``) and lifts them when the reason is gone; ``ADVISORY``
  only proposes (events); ``OFF`` does neither. The mode is a persisted ``Setting``
  (``der_mode``). An operator's :meth:`release_curtailment` lifts a limit now and keeps the app
  from limiting that DER again for the same reason until the reason has cleared.
* **Other applications** (the Volt/VAR planner) send ``SET_DER_Q`` / ``CURTAIL_DER_P`` through
  :func:`execute_operation` with their own ports: same checks, same path, their own identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from actors.applications import FeederPorts, TelemetryChange, field_hold
from actors.arbiter import Priority
from actors.cores.der import Curtailment, CurtailmentInput, DerControl, DerRating, curtailment, rating, validate_control
from actors.cores.events import EventKind, Severity
from graph_schema.errors import BadInput, DmsError, NotFound
from graph_schema.model import Der, DerKind

log = logging.getLogger(__name__)
DER_OPERATOR = "der"
DER_ACTIONS = ("SET_DER_Q", "CURTAIL_DER_P")  # what other applications' plans may carry

# feeder id -> the DER application of that feeder in this process (for execute_operation)
_APPS: weakref.WeakValueDictionary[str, DerApp] = weakref.WeakValueDictionary()


class DerMode(StrEnum):
    AUTOMATIC = "AUTOMATIC"  # curtailment is sent and released by the application
    ADVISORY = "ADVISORY"  # curtailment is proposed (events), not sent
    OFF = "OFF"  # no curtailment decisions (operators' commands still go)


class DerCommandStatus(StrEnum):
    CONFIRMED = "CONFIRMED"  # sent once and read back from the SunSpec registers
    FAILED = "FAILED"  # sent; the device did not answer, refused or read back another value (code says which)
    REFUSED = "REFUSED"  # not sent: arbitration, a tag, a selection by someone else, the store


class DerConnectionState(StrEnum):
    ONLINE = "ONLINE"
    OFFLINE = "OFFLINE"  # bound, does not answer
    UNBOUND = "UNBOUND"  # no SunSpec endpoint bound


@dataclass(frozen=True, slots=True)
class DerCommandResult:
    der_id: str
    status: str  # DerCommandStatus
    code: str | None
    message: str


@dataclass(frozen=True, slots=True)
class DerView:
    """What the API shows of one DER: model, rating, last SunSpec reading, curtailment, schedule."""

    der_id: str
    name: str
    kind: str
    bus_id: str
    category: str
    rating: DerRating
    comm_state: str  # ONLINE, OFFLINE, UNBOUND
    reading: Any  # protocols.sunspec_client.DerReading | None
    read_at: str | None
    last_error: str | None
    curtailment: Curtailment | None
    proposed_curtailment: Curtailment | None
    schedule: tuple[tuple[str, float], ...]


class DerApp:
    name = DER_OPERATOR
    priority = Priority.OPTIMISER
    api = frozenset({"ders", "mode_of", "set_mode", "set_control", "release_curtailment", "attach", "set_schedule",
                     "set_limits", "evaluate_now", "operation", "management"})
    read_only = frozenset({"ders", "mode_of", "management"})

    def __init__(self, default_mode: str = "ADVISORY", poll_s: float = 1.0, timeout_s: float = 1.0) -> None:
        self._default_mode = default_mode
        self.poll_s = poll_s
        self.timeout_s = timeout_s
        self._ports: FeederPorts | None = None
        self.mode = DerMode(default_mode)
        self._clients: dict[str, Any] = {}
        self._endpoints: list[dict[str, Any]] = []
        self._readings: dict[str, Any] = {}
        self._read_at: dict[str, str] = {}
        self._errors: dict[str, str] = {}
        self._online: dict[str, bool] = {}
        self._curtailed: dict[str, Curtailment] = {}
        self._proposed: dict[str, Curtailment] = {}
        self._exempt: dict[str, str] = {}  # der id -> element whose reason an operator overrode
        self._schedules: dict[str, list[tuple[datetime, float]]] = {}
        self._sched_sent: dict[str, datetime] = {}
        self._limits: dict[str, float] = {}  # vm_max_pu / max_loading_percent overrides
        self._poll_task: asyncio.Task[Any] | None = None
        self._eval_task: asyncio.Task[Any] | None = None
        self._eval_dirty = False
        self.suspended: str | None = None  # why AUTOMATIC sends nothing now (a fault, abnormal switching)

    # -- lifecycle -------------------------------------------------------------------------------

    async def start(self, ports: FeederPorts) -> None:
        self._ports = ports
        stored = await ports.list_records("Setting", where={"key": "der_mode"}, limit=1, newest_first=True)
        if stored:
            with contextlib.suppress(ValueError):
                self.mode = DerMode(str(stored[0]["value"]))
        eps = await ports.list_records("Setting", where={"key": "der_endpoints"}, limit=1, newest_first=True)
        if eps:
            try:
                self._bind(json.loads(str(eps[0]["value"])))
            except (ValueError, KeyError, TypeError):
                log.error("feeder %s: stored DER endpoints are malformed; DERs stay unbound", ports.feeder_id)
        lim = await ports.list_records("Setting", where={"key": "der_limits"}, limit=1, newest_first=True)
        if lim:
            with contextlib.suppress(ValueError, TypeError):
                self._limits = {k: float(v) for k, v in json.loads(str(lim[0]["value"])).items()}
        # What this application had curtailed before a restart: the devices keep their P limits, so it
        # must still know them to release them when the reason goes.
        cur = await ports.list_records("Setting", where={"key": "der_curtailed"}, limit=1, newest_first=True)
        if cur:
            try:
                self._curtailed = {d: Curtailment(d, float(c["p_limit_mw"]), str(c["reason"]), str(c["element_id"]))
                                   for d, c in json.loads(str(cur[0]["value"])).items()}
            except (ValueError, KeyError, TypeError, AttributeError):
                log.error("feeder %s: the stored DER curtailments are malformed; releases need an operator",
                          ports.feeder_id)
        _APPS[ports.feeder_id] = self
        self._poll_task = ports.spawn(self._poll_loop(), "der poll")

    async def close(self) -> None:
        for t in (self._poll_task, self._eval_task):
            if t is not None:
                t.cancel()
        for c in self._clients.values():
            with contextlib.suppress(Exception):
                await c.close()
        self._clients.clear()

    def _bind(self, endpoints: Sequence[Mapping[str, Any]]) -> None:
        from protocols.sunspec_client import SunSpecClient

        ders = self._ders()
        clients: dict[str, Any] = {}
        for e in endpoints:
            did = str(e["der_id"])
            if did not in ders:
                raise NotFound(f"DER {did!r} is not in feeder {self._feeder_id()!r}; have: {', '.join(sorted(ders))}",
                               element_id=did)
            port, unit = int(e["port"]), int(e["unit_id"])
            if not (0 < port < 65536 and 0 <= unit <= 247):
                raise BadInput(f"SunSpec endpoint of {did}: port must be 1..65535 and unit_id 0..247")
            clients[did] = SunSpecClient(did, str(e["host"]), port, unit, timeout_s=self.timeout_s)
        old, self._clients = self._clients, clients
        self._endpoints = [dict(e) for e in endpoints]
        for c in old.values():
            task = asyncio.get_running_loop().create_task(c.close())
            task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    # -- helpers ---------------------------------------------------------------------------------

    def _feeder_id(self) -> str:
        return self._ports.feeder_id if self._ports is not None else "?"

    def _ders(self) -> dict[str, Der]:
        assert self._ports is not None
        return {d.id: d for d in self._ports.model().ders}

    def _emit(self, severity: Severity, message: str, **data: Any) -> None:
        if self._ports is not None:
            self._ports.emit(EventKind.DER, severity, message, {k: v for k, v in data.items() if v is not None})

    # -- telemetry -------------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while True:
            await self.poll_once()
            await asyncio.sleep(self.poll_s)

    async def poll_once(self) -> None:
        clients = dict(self._clients)
        if not clients:
            return
        results = await asyncio.gather(*(c.read() for c in clients.values()), return_exceptions=True)
        for did, res in zip(clients, results, strict=True):
            if self._clients.get(did) is not clients[did]:
                continue  # re-bound meanwhile
            was = self._online.get(did)
            if isinstance(res, BaseException):
                if isinstance(res, asyncio.CancelledError):
                    raise res
                self._online[did] = False
                self._errors[did] = res.message if isinstance(res, DmsError) else repr(res)
                if was is not False:
                    self._emit(Severity.WARNING, f"DER {did} does not answer over SunSpec: {self._errors[did]}",
                               device_id=did, phase="COMM_LOSS")
                continue
            self._readings[did] = res
            self._read_at[did] = datetime.now(UTC).isoformat()
            self._online[did] = True
            self._errors.pop(did, None)
            if was is False:
                self._emit(Severity.INFO, f"DER {did} answers over SunSpec again", device_id=did,
                           phase="COMM_RESTORED")
        await self._run_schedules()

    # -- host callbacks --------------------------------------------------------------------------

    def on_telemetry(self, change: TelemetryChange) -> None:
        return None

    def on_state(self, state: Any) -> None:
        if self._ports is None or self.mode is DerMode.OFF:
            return
        self._eval_dirty = True
        if self._eval_task is None or self._eval_task.done():
            self._eval_task = self._ports.spawn(self._evaluate_loop(), "der curtailment")

    async def _evaluate_loop(self) -> None:
        while self._eval_dirty:
            self._eval_dirty = False
            await self.evaluate_now()

    def management(self) -> dict[str, Any]:
        """Mode, why AUTOMATIC is held off (None: it is not), the limits in force and what is curtailed
        or proposed."""
        return {"mode": str(self.mode), "suspended": self.suspended, "limits": dict(self._limits),
                "curtailed": sorted(self._curtailed), "proposed": sorted(self._proposed)}

    def status(self) -> Mapping[str, Any]:
        return {"mode": str(self.mode), "bound": len(self._clients),
                "online": sum(1 for v in self._online.values() if v), "curtailed": sorted(self._curtailed),
                "proposed": sorted(self._proposed)}

    # -- curtailment -----------------------------------------------------------------------------

    async def evaluate_now(self) -> dict[str, Any]:
        """Decide curtailment on the live (estimated) state now; act on it per the mode."""
        assert self._ports is not None
        if self.mode is DerMode.OFF:
            return {"mode": str(self.mode), "curtailed": {}}
        state = self._ports.state()
        live = state.live
        feeder = self._ports.model()
        der_p = {did: r.p_mw for did, r in self._readings.items() if r is not None and r.p_mw is not None}
        for d in feeder.ders:
            der_p.setdefault(d.id, d.p_mw)
        est = getattr(state, "estimate", None)
        if est is not None and not est.stale and est.load_p_mw:  # what the loads draw now, as estimated
            load_p = dict(est.load_p_mw)
        else:
            load_p = {ld.id: ld.p_mw * float(getattr(state, "load_scale", 1.0)) for ld in feeder.loads}
        graph, topo = self._ports.topology_graph(), state.topology

        def downstream(element_id: str) -> frozenset[str]:
            try:
                return graph.downstream_buses(topo, element_id)
            except NotFound:  # not a branch of this feeder's graph: not attributable
                return frozenset()

        inp = CurtailmentInput(
            vm_pu={b.bus_id: b.vm_pu for b in live.buses if b.energized},
            line_loading_percent={ln.line_id: ln.loading_percent for ln in live.lines},
            trafo_loading_percent={t.transformer_id: t.loading_percent for t in live.transformers},
            der_p_mw=der_p, load_p_mw=load_p, downstream=downstream, source_of_bus=topo.source_of_bus)
        current = self._curtailed if self.mode is DerMode.AUTOMATIC else self._proposed
        # An operator's release holds until its element is no longer the reason.
        wanted = curtailment(feeder, inp, vm_max_pu=self._limits.get("vm_max_pu"),
                             max_loading_percent=self._limits.get("max_loading_percent"), current=current)
        for did, element in list(self._exempt.items()):
            if did in wanted and wanted[did].element_id == element:
                del wanted[did]
            elif not any(c.element_id == element for c in wanted.values()):
                del self._exempt[did]
        self.suspended = field_hold(self._ports) if self.mode is DerMode.AUTOMATIC else None
        if self.mode is DerMode.ADVISORY or self.suspended is not None:  # proposals only
            if self.suspended is not None and wanted != self._proposed:
                self._emit(Severity.INFO, f"DER curtailment held off: {self.suspended}", phase="SUSPENDED",
                           reason=self.suspended)
            for did, c in wanted.items():
                if self._proposed.get(did) != c:
                    self._emit(Severity.INFO, f"DER {did}: curtailment to {c.p_limit_mw:g} MW proposed ({c.reason})",
                               device_id=did, phase="CURTAILMENT_PROPOSED", p_limit_mw=c.p_limit_mw,
                               reason=c.reason)
            self._proposed = wanted
            return {"mode": str(self.mode), "suspended": self.suspended,
                    "proposed": {k: asdict(v) for k, v in wanted.items()}}
        self._proposed = {}
        before = dict(self._curtailed)
        for did, c in wanted.items():
            if self._curtailed.get(did) == c:
                continue
            res = await self._command(did, DerControl(p_limit_mw=c.p_limit_mw), "CURTAIL_DER_P", c.p_limit_mw,
                                      operator=None)
            if res.status == "CONFIRMED":
                self._curtailed[did] = c
                self._emit(Severity.WARNING, f"DER {did} curtailed to {c.p_limit_mw:g} MW: {c.reason}",
                           device_id=did, phase="CURTAILED", p_limit_mw=c.p_limit_mw, reason=c.reason,
                           element_id=c.element_id)
        for did in [d for d in self._curtailed if d not in wanted]:
            prev = self._curtailed[did]
            res = await self._command(did, DerControl(release_p_limit=True), "RELEASE_DER_P", None, operator=None)
            if res.status == "CONFIRMED":
                del self._curtailed[did]
                self._emit(Severity.INFO, f"DER {did} curtailment released: the reason is gone ({prev.reason})",
                           device_id=did, phase="CURTAILMENT_RELEASED", reason=prev.reason,
                           element_id=prev.element_id)
        await self._remember_curtailed(before)
        return {"mode": str(self.mode), "curtailed": {k: asdict(v) for k, v in self._curtailed.items()}}

    # -- commands --------------------------------------------------------------------------------

    async def _remember_curtailed(self, before: Mapping[str, Curtailment]) -> None:
        """Persist what is curtailed when it changed (read back at start)."""
        if self._ports is None or dict(before) == self._curtailed:
            return
        value = json.dumps({d: {"p_limit_mw": c.p_limit_mw, "reason": c.reason, "element_id": c.element_id}
                            for d, c in sorted(self._curtailed.items())})
        try:
            await self._ports.append_record("Setting", {"key": "der_curtailed", "value": value, "set_by": DER_OPERATOR,
                                                        "set_at": datetime.now(UTC).isoformat()})
        except DmsError as exc:  # the store is away: the devices still hold their limits; retried next change
            log.warning("feeder %s: DER curtailments not stored (%s)", self._feeder_id(), exc.message)

    async def _command(self, der_id: str, control: DerControl, action: str, value: float | None, *,
                       operator: str | None, ports: FeederPorts | None = None) -> DerCommandResult:
        """One DER command through select-before-operate; refusals become REFUSED results."""
        from protocols.base import DeviceUnreachable

        ports = ports or self._ports
        assert ports is not None

        async def write() -> str:
            client = self._clients.get(der_id)
            if client is None:
                raise DeviceUnreachable(f"DER {der_id} has no SunSpec endpoint bound; nothing was sent (bind it "
                                        f"with the DER application's attach)", element_id=der_id)
            reading = await client.apply(control)
            self._readings[der_id] = reading
            self._read_at[der_id] = datetime.now(UTC).isoformat()
            self._online[der_id] = True
            return control.describe()

        try:
            out = await ports.operate_der(der_id, action, value, control.describe(), write, operator=operator)
        except DmsError as exc:
            return DerCommandResult(der_id, "REFUSED", exc.code, exc.message)
        if out.status != "CONFIRMED":
            self._errors[der_id] = out.message
        return DerCommandResult(der_id, out.status, out.code, out.message)

    def _targets(self, der_ids: Sequence[str] | None, zone_bus_ids: Sequence[str] | None,
                 kind: str | None) -> list[Der]:
        ders = self._ders()
        if der_ids:
            missing = [d for d in der_ids if d not in ders]
            if missing:
                raise NotFound(f"DER {missing[0]!r} is not in feeder {self._feeder_id()!r}; have: "
                               f"{', '.join(sorted(ders))}", element_id=missing[0])
            chosen = [ders[d] for d in dict.fromkeys(der_ids)]
        else:
            chosen = list(ders.values())
        if zone_bus_ids:
            zone = set(zone_bus_ids)
            chosen = [d for d in chosen if d.bus_id in zone]
        if kind:
            try:
                k = DerKind(kind)
            except ValueError:
                raise BadInput(f"DER kind {kind!r} is unknown; use one of {', '.join(DerKind)}") from None
            chosen = [d for d in chosen if d.kind is k]
        if not chosen:
            raise BadInput("the group selects no DER; check derIds, zoneBusIds and kind")
        return chosen

    async def set_control(self, control: DerControl, by: str, *, der_ids: Sequence[str] | None = None,
                          zone_bus_ids: Sequence[str] | None = None, kind: str | None = None,
                          group_p_limit_mw: float | None = None) -> list[DerCommandResult]:
        """An operator's command to one DER or a group. Every target is checked before anything is
        sent (one bad target: ``BAD_INPUT`` and nothing sent); then sent one by one."""
        targets = self._targets(der_ids, zone_bus_ids, kind)
        plans: list[tuple[Der, DerControl]] = []
        if group_p_limit_mw is not None:
            total = sum(rating(d).p_max_mw for d in targets)
            if not 0.0 <= group_p_limit_mw <= total + 1e-9:
                raise BadInput(f"group P target {group_p_limit_mw:g} MW is beyond the group's rating: between 0 and "
                               f"{total:g} MW (the sum of p_max_mw of {len(targets)} DER)")
            for d in targets:
                share = group_p_limit_mw * rating(d).p_max_mw / total if total else 0.0
                plans.append((d, replace(control, p_limit_mw=round(share, 6))))
        else:
            plans = [(d, control) for d in targets]
        for d, c in plans:
            validate_control(rating(d), c)
        results = []
        for d, c in plans:
            action = "CURTAIL_DER_P" if c == DerControl(p_limit_mw=c.p_limit_mw) else "DER_CONTROL"
            results.append(await self._command(d.id, c, action, c.p_limit_mw if c.p_limit_mw is not None else c.q_mvar,
                                               operator=by))
        return results

    async def release_curtailment(self, der_ids: Sequence[str] | None, by: str) -> list[DerCommandResult]:
        """Lift the P limit of these DERs (all curtailed ones when none given) now."""
        ders = self._ders()
        targets = list(der_ids) if der_ids else sorted(set(self._curtailed) | set(self._proposed))
        for did in targets:
            if did not in ders:
                raise NotFound(f"DER {did!r} is not in feeder {self._feeder_id()!r}", element_id=did)
        results = []
        before = dict(self._curtailed)
        for did in targets:
            res = await self._command(did, DerControl(release_p_limit=True), "RELEASE_DER_P", None, operator=by)
            if res.status == "CONFIRMED":
                prev = self._curtailed.pop(did, None) or self._proposed.pop(did, None)
                if prev is not None:
                    self._exempt[did] = prev.element_id
                self._emit(Severity.INFO, f"DER {did} curtailment released by {by}", device_id=did,
                           phase="CURTAILMENT_RELEASED", operator=by)
            results.append(res)
        await self._remember_curtailed(before)
        return results

    async def operation(self, der_id: str, action: str, value: float, by: str) -> DerCommandResult:
        """A plan's operation (``SET_DER_Q`` Mvar / ``CURTAIL_DER_P`` MW) approved by operator ``by``."""
        return await self._operation(der_id, action, value, operator=by, ports=None)

    async def _operation(self, der_id: str, action: str, value: float, *, operator: str | None,
                         ports: FeederPorts | None) -> DerCommandResult:
        der = self._ders().get(der_id)
        if der is None:
            raise NotFound(f"DER {der_id!r} is not in feeder {self._feeder_id()!r}", element_id=der_id)
        if action == "SET_DER_Q":
            control = DerControl(q_mvar=float(value))
        elif action == "CURTAIL_DER_P":
            control = DerControl(p_limit_mw=float(value))
        else:
            raise BadInput(f"DER action {action!r} is unknown; use one of {', '.join(DER_ACTIONS)}")
        validate_control(rating(der), control)
        return await self._command(der_id, control, action, float(value), operator=operator, ports=ports)

    # -- schedules -------------------------------------------------------------------------------

    async def set_schedule(self, der_id: str, entries: Sequence[tuple[str, float]], by: str) -> list[tuple[str, float]]:
        """A storage schedule: (start time ISO 8601 with zone, p_mw: + discharge / - charge) in time
        order; each entry holds until the next. Refused (``BAD_INPUT``, nothing stored) when an entry
        exceeds the rating or the SOC would leave [soc_min_pct, soc_max_pct] from the reported SOC."""
        der = self._ders().get(der_id)
        if der is None:
            raise NotFound(f"DER {der_id!r} is not in feeder {self._feeder_id()!r}", element_id=der_id)
        r = rating(der)
        if not r.storage or not r.max_e_mwh:
            raise BadInput(f"{der_id} is not storage with an energy rating (max_e_mwh): a schedule needs one")
        parsed: list[tuple[datetime, float]] = []
        for ts, p in entries:
            try:
                t = datetime.fromisoformat(ts)
            except ValueError:
                raise BadInput(f"schedule time {ts!r} is not ISO 8601 (e.g. 2026-06-01T12:00:00+00:00)") from None
            if t.tzinfo is None:
                raise BadInput(f"schedule time {ts!r} has no time zone; add one (e.g. +00:00)")
            validate_control(r, DerControl(storage_p_mw=float(p)))
            parsed.append((t, float(p)))
        if [t for t, _ in parsed] != sorted(t for t, _ in parsed) or len({t for t, _ in parsed}) != len(parsed):
            raise BadInput("schedule entries must be in strictly increasing time order")
        reading = self._readings.get(der_id)
        soc = reading.soc_pct if reading is not None and reading.soc_pct is not None else None
        if soc is None:
            raise BadInput(f"{der_id} has not reported its state of charge yet; bind it and retry")
        for (t0, p), (t1, _) in itertools.pairwise(parsed):
            soc -= p * (t1 - t0).total_seconds() / 3600.0 / r.max_e_mwh * 100.0
            if soc < r.soc_min_pct - 1e-6 or soc > r.soc_max_pct + 1e-6:
                raise BadInput(f"the schedule takes {der_id} to {soc:.1f} % state of charge at {t1.isoformat()}, "
                               f"outside its limits soc_min_pct={r.soc_min_pct:g} .. soc_max_pct={r.soc_max_pct:g}")
        self._schedules[der_id] = parsed
        self._sched_sent.pop(der_id, None)
        self._emit(Severity.INFO, f"{by} set a storage schedule of {len(parsed)} entries on {der_id}",
                   device_id=der_id, phase="SCHEDULE_SET", operator=by)
        await self._run_schedules()
        return [(t.isoformat(), p) for t, p in parsed]

    async def _run_schedules(self) -> None:
        now = datetime.now(UTC)
        for did, entries in list(self._schedules.items()):
            due = [(t, p) for t, p in entries if t <= now]
            if not due:
                continue
            t, p = due[-1]
            if self._sched_sent.get(did) == t:
                continue
            self._sched_sent[did] = t
            await self._command(did, DerControl(storage_p_mw=p), "STORAGE_SCHEDULE", p, operator=None)

    # -- API -------------------------------------------------------------------------------------

    def ders(self) -> list[DerView]:
        out = []
        for d in self._ders().values():
            bound = d.id in self._clients
            online = self._online.get(d.id)
            comm = "UNBOUND" if not bound else ("ONLINE" if online else "OFFLINE")
            sched = tuple((t.isoformat(), p) for t, p in self._schedules.get(d.id, []))
            out.append(DerView(der_id=d.id, name=d.name, kind=str(d.kind), bus_id=d.bus_id,
                               category=d.ieee1547_category, rating=rating(d), comm_state=comm,
                               reading=self._readings.get(d.id), read_at=self._read_at.get(d.id),
                               last_error=self._errors.get(d.id), curtailment=self._curtailed.get(d.id),
                               proposed_curtailment=self._proposed.get(d.id), schedule=sched))
        return out

    def mode_of(self) -> str:
        return str(self.mode)

    async def set_mode(self, mode: str, by: str) -> str:
        try:
            wanted = DerMode(mode)
        except ValueError:
            raise BadInput(f"DER management mode {mode!r} is unknown; use AUTOMATIC, ADVISORY or OFF") from None
        assert self._ports is not None
        await self._ports.append_record("Setting", {"key": "der_mode", "value": str(wanted), "set_by": by,
                                                    "set_at": datetime.now(UTC).isoformat()})
        self.mode = wanted
        if wanted is not DerMode.ADVISORY:
            self._proposed = {}
        self._emit(Severity.INFO, f"{by} set DER management of {self._feeder_id()} to {wanted}", phase="MODE",
                   operator=by, mode=str(wanted))
        if wanted is not DerMode.OFF:
            self.on_state(None)
        return str(wanted)

    async def attach(self, endpoints: Sequence[Mapping[str, Any]], by: str = "system") -> int:
        """Bind DERs to their SunSpec endpoints ({der_id, host, port, unit_id}); persisted."""
        assert self._ports is not None
        self._bind(endpoints)
        await self._ports.append_record("Setting", {"key": "der_endpoints", "value": json.dumps(self._endpoints),
                                                    "set_by": by, "set_at": datetime.now(UTC).isoformat()})
        await self.poll_once()
        return len(self._clients)

    async def set_limits(self, by: str, vm_max_pu: float | None = None,
                         max_loading_percent: float | None = None) -> dict[str, float]:
        """Override the feeder's voltage / loading limits that curtailment keeps (None: the feeder's)."""
        lim: dict[str, float] = {}
        if vm_max_pu is not None:
            if not 1.0 < vm_max_pu <= 1.2:
                raise BadInput(f"vm_max_pu={vm_max_pu:g} must be in (1.0, 1.2]")
            lim["vm_max_pu"] = vm_max_pu
        if max_loading_percent is not None:
            if not 0.0 < max_loading_percent <= 200.0:
                raise BadInput(f"max_loading_percent={max_loading_percent:g} must be in (0, 200]")
            lim["max_loading_percent"] = max_loading_percent
        assert self._ports is not None
        await self._ports.append_record("Setting", {"key": "der_limits", "value": json.dumps(lim), "set_by": by,
                                                    "set_at": datetime.now(UTC).isoformat()})
        self._limits = lim
        self.on_state(None)
        return lim


async def execute_operation(ports: FeederPorts, device_id: str, action: str, value: float) -> DerCommandResult:
    """For other applications (Volt/VAR): a ``SET_DER_Q`` / ``CURTAIL_DER_P`` operation on a DER of
    the caller's feeder, under the caller's identity and priority, through the DER application's
    SunSpec binding (checks, select-before-operate, read-back, record, event)."""
    app = _APPS.get(ports.feeder_id)
    if app is None:
        raise DmsError(f"DER management is not running on feeder {ports.feeder_id!r}; retry shortly",
                       code="APPLICATION_UNAVAILABLE")
    return await app._operation(device_id, action, value, operator=None, ports=ports)
