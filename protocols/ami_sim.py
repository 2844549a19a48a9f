"""The field simulator's smart meters: 15-minute interval files dropped in a folder, the way a
meter data head-end hands them on (one CSV per feeder and interval, format in
:mod:`graph_schema.historian.ami`).

:meth:`AmiRecorder.observe` is called after each power flow of a feeder with the simulated load
(MW, after scaling) and which loads are energised. Energy is integrated over simulated time (each
load's power held until the next observation); when simulated time crosses a quarter hour, the
interval is closed and written: a load's kWh is spread over its meters with fixed per-meter weights
(0.6..1.4, normalised so the meters add up to the load) and 3 % per-interval noise. A load that lost
power in the interval flags its meters ``LG`` (last gasp), one that got it back ``RS`` (restore).
The first interval after start is partial and is not written. Files are written under a hidden
temporary name and renamed, so an ingester never reads half a file.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from graph_schema.historian.ami import INTERVAL, format_intervals, meters_for


def floor_interval(ts: datetime) -> datetime:
    ts = ts.astimezone(UTC)
    return ts.replace(minute=ts.minute - ts.minute % 15, second=0, microsecond=0)


@dataclass
class _FeederAcc:
    interval_start: datetime
    last_ts: datetime
    last_p: dict[str, float]
    last_on: dict[str, bool]
    energy_mwh: dict[str, float] = field(default_factory=dict)
    flags: dict[str, set[str]] = field(default_factory=dict)
    partial: bool = True  # the interval began before the first observation


class AmiRecorder:
    def __init__(self, inbox: str | Path, feeders: Iterable[Any], *, seed: int = 0, noise: float = 0.03) -> None:
        self.inbox = Path(inbox)
        self.noise = noise
        self._rng = random.Random(seed)
        self._meters: dict[str, dict[str, list[tuple[str, float]]]] = {}  # feeder -> load -> (meter, weight)
        for f in feeders:
            loads: dict[str, list[tuple[str, float]]] = {}
            for ld in f.loads:
                n = meters_for(ld.customers)
                w = [random.Random(f"{f.id}/{ld.id}/{k}").uniform(0.6, 1.4) for k in range(n)]
                total = sum(w)
                loads[ld.id] = [(f"{f.id}/{ld.id}/m{k}", x / total) for k, x in enumerate(w)]
            self._meters[f.id] = loads
        self._acc: dict[str, _FeederAcc] = {}
        self.files_written = 0

    def observe(self, feeder_id: str, now: datetime, load_p_mw: Mapping[str, float],
                energized: Mapping[str, bool]) -> list[Path]:
        """Account for the time since the last observation; write the intervals it closed."""
        if feeder_id not in self._meters:
            return []
        now = now.astimezone(UTC)
        acc = self._acc.get(feeder_id)
        if acc is None:
            self._acc[feeder_id] = _FeederAcc(floor_interval(now), now, dict(load_p_mw), dict(energized))
            return []
        written: list[Path] = []
        t = acc.last_ts
        while t < now:
            end = acc.interval_start + INTERVAL
            step_to = min(end, now)
            hours = (step_to - t).total_seconds() / 3600
            for lid, p in acc.last_p.items():
                on = acc.last_on.get(lid, True)
                acc.energy_mwh[lid] = acc.energy_mwh.get(lid, 0.0) + (max(p, 0.0) * hours if on else 0.0)
            t = step_to
            if t >= end:
                if not acc.partial:
                    written.append(self._write(feeder_id, acc))
                acc.interval_start, acc.energy_mwh, acc.flags, acc.partial = end, {}, {}, False
        for lid, on in energized.items():
            was = acc.last_on.get(lid, True)
            if was and not on:
                acc.flags.setdefault(lid, set()).add("LG")
            elif on and not was:
                acc.flags.setdefault(lid, set()).add("RS")
        acc.last_ts, acc.last_p, acc.last_on = now, dict(load_p_mw), dict(energized)
        return written

    def _write(self, feeder_id: str, acc: _FeederAcc) -> Path:
        start, end = acc.interval_start, acc.interval_start + INTERVAL
        rows = []
        for lid, meters in self._meters[feeder_id].items():
            e_kwh = acc.energy_mwh.get(lid, 0.0) * 1000
            flags = sorted(acc.flags.get(lid, ()))
            for mid, w in meters:
                kwh = max(0.0, e_kwh * w * (1 + self._rng.gauss(0, self.noise)))
                rows.append((mid, start, end, kwh, flags))
        self.inbox.mkdir(parents=True, exist_ok=True)
        name = f"{feeder_id}-{start.strftime('%Y%m%dT%H%MZ')}.csv"
        tmp = self.inbox / f".{name}.tmp"
        tmp.write_text(format_intervals(rows), encoding="utf-8")
        os.replace(tmp, self.inbox / name)
        self.files_written += 1
        return self.inbox / name
