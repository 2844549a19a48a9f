"""Simulated OpenADR 3 VENs: the simulator's customers poll the VTN, shed load when an event asks
them to, not always fully, and report back.

Why: demand response is only credible when the reduction shows up where the utility measures it.
A VEN here sheds through a :class:`LoadSink` (the field simulator's ``reduce_load``), so the
feeder's measurements and the meters' AMI intervals carry the reduction.

Compliance is partial and seeded (reproducible): per (VEN, event) a VEN takes part with
``participation`` probability, and then delivers a fraction of its share drawn uniformly from
``delivery`` (e.g. 0.6..1.0: thermostats drift back, EV owners override). Each VEN reports once per
event it acted on (``USAGE`` = kW shed per resource, OpenADR report shape) and ends its reduction
when the event ends or is cancelled (the VTN shows a cancelled event with ``SIMPLE`` 0).
"""

from __future__ import annotations

import asyncio
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

SETPOINT = "DISPATCH_SETPOINT_RELATIVE"


class LoadSink(Protocol):
    def reduce_load(self, feeder_id: str, load_id: str, kw: float) -> None: ...


@dataclass
class VenState:
    acting: dict[str, dict[str, float]] = field(default_factory=dict)  # event id -> resource name -> kW shed
    reported: set[str] = field(default_factory=set)
    decided: dict[str, float] = field(default_factory=dict)  # event id -> delivered fraction (0: declined)


def _parse_ts(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


_DURATION = re.compile(r"^P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def _duration_s(text: str) -> float:
    """An ISO 8601 duration in seconds (the VTN's ``intervalPeriod.duration``)."""
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"not an ISO 8601 duration: {text!r}")
    d, h, mi, s = (float(x or 0) for x in m.groups())
    return d * 86400 + h * 3600 + mi * 60 + s


class SimulatedVen:
    """One customer's VEN. ``token``: a VEN bearer token naming its customer account."""

    def __init__(self, client: httpx.AsyncClient, token: str, ven_name: str, sink: LoadSink | None, *,
                 seed: int = 0, participation: float = 0.85, delivery: tuple[float, float] = (0.6, 1.0),
                 now: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.client = client
        self.headers = {"Authorization": f"Bearer {token}"}
        self.ven_name = ven_name
        self.sink = sink
        self.seed = seed
        self.participation = participation
        self.delivery = delivery
        self.now = now
        self.state = VenState()
        self.ven_id: str | None = None
        self.resources: dict[str, str] = {}  # resource name -> feeder id

    async def _json(self, method: str, path: str, **kw: Any) -> Any:
        r = await self.client.request(method, f"/openadr3{path}", headers=self.headers, **kw)
        if r.status_code >= 400:
            raise RuntimeError(f"VEN {self.ven_name}: {method} {path} -> {r.status_code} {r.text[:200]}")
        return r.json()

    async def register(self) -> None:
        vens = await self._json("GET", "/vens")
        if vens:
            self.ven_id = vens[0]["id"]
        else:
            body = {"objectType": "VEN", "venName": self.ven_name}
            self.ven_id = (await self._json("POST", "/vens", json=body))["id"]
        for r in await self._json("GET", "/resources"):
            self.resources[r["resourceName"]] = r["targets"][0]["values"][0]

    def _fraction(self, event_id: str) -> float:
        if event_id not in self.state.decided:
            rng = random.Random(f"{self.seed}/{self.ven_name}/{event_id}")
            takes_part = rng.random() < self.participation
            self.state.decided[event_id] = rng.uniform(*self.delivery) if takes_part else 0.0
        return self.state.decided[event_id]

    def _apply(self, name: str, kw: float) -> None:
        if self.sink is not None:
            _, _, load = name.partition("/")
            self.sink.reduce_load(self.resources[name], load, kw)

    async def poll(self) -> dict[str, float]:
        """One poll of the events: start, keep or end reductions; report newly acted-on events.
        Returns the kW this VEN sheds now, per event."""
        if self.ven_id is None:
            await self.register()
        now = self.now()
        live: set[str] = set()
        for ev in await self._json("GET", "/events"):
            mine = [n for n in ev["targets"][0]["values"] if n in self.resources] if ev.get("targets") else []
            start = _parse_ts(ev["intervalPeriod"]["start"])
            end_s = _duration_s(ev["intervalPeriod"]["duration"])
            payloads = {p["type"]: p["values"] for p in ev["intervals"][0]["payloads"]}
            on = payloads.get("SIMPLE") == [1] and start <= now and (now - start).total_seconds() < end_s
            if not (mine and on):
                continue
            frac = self._fraction(ev["id"])
            if frac <= 0:
                continue
            live.add(ev["id"])
            share = -float(payloads[SETPOINT][0]) / len(mine)
            acting = self.state.acting.setdefault(ev["id"], {})
            for n in mine:
                if n not in acting:
                    acting[n] = round(share * frac, 3)
                    self._apply(n, acting[n])
            if ev["id"] not in self.state.reported:
                await self._json("POST", "/reports", json={
                    "objectType": "REPORT", "programID": ev["programID"], "eventID": ev["id"],
                    "clientName": self.ven_name, "reportName": "shed",
                    "payloadDescriptors": [{"objectType": "REPORT_PAYLOAD_DESCRIPTOR", "payloadType": "USAGE",
                                            "readingType": "DIRECT_READ", "units": "KW"}],
                    "resources": [{"resourceName": n, "intervalPeriod": ev["intervalPeriod"],
                                   "intervals": [{"id": 0, "payloads": [{"type": "USAGE", "values": [kw]}]}]}
                                  for n, kw in acting.items()]})
                self.state.reported.add(ev["id"])
        for eid in [e for e in self.state.acting if e not in live]:  # ended or cancelled
            for n in self.state.acting.pop(eid):
                self._apply(n, 0.0)
        return {e: sum(self.state.acting[e].values()) for e in live}


async def poll_all(vens: Sequence[SimulatedVen]) -> list[dict[str, float]]:
    return list(await asyncio.gather(*(v.poll() for v in vens)))


async def run(vens: Sequence[SimulatedVen], interval_s: float, stop: asyncio.Event) -> None:
    """Poll every ``interval_s`` until ``stop`` is set (the demo's loop); one VEN's failure is logged
    by its exception and does not stop the others."""
    while not stop.is_set():
        await asyncio.gather(*(v.poll() for v in vens), return_exceptions=True)
        try:
            await asyncio.wait_for(stop.wait(), timeout=interval_s)
        except TimeoutError:
            pass
