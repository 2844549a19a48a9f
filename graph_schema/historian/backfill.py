"""Plausible past data for an empty historian (``dms history backfill``, ``dms demo`` on first start).

Writes, for each of the last ``days`` days up to the current quarter hour, 15-minute rows into the
versioned layout: ``kind=weather/feeder=_site`` (the site's weather), and per feeder ``kind=solve``
(the feeder's load at the source and derived figures) and ``kind=meter`` (every meter of every
load, :mod:`graph_schema.historian.ami`). One part per kind and feeder-day, named
``backfill.parquet``: running it again rewrites the same parts (no duplicates).

Assumptions (a synthetic, mid-latitude, northern-hemisphere utility; nothing here is measured):

- Weather. Temperature (degC) = 11 + 9 cos(2 pi (day of year - 200) / 365.25) (seasonal, warmest
  mid-July) + 4.5 cos(2 pi (local hour - 15) / 24) (diurnal, warmest 15:00) + a daily anomaly,
  AR(1) from day to day (phi 0.7, sd 3 degC) + 0.3 degC noise. Irradiance (W/m2) = 850 x a bell
  between 06:00 and 20:00 local (peak 13:00, sd 3 h) x seasonal factor (0.55 + 0.45 cos(2 pi
  (doy - 172) / 365.25)) x a daily clearness drawn from Beta(5, 2).
- Load shape by local time (``DMS_TIMEZONE``; a daylight-saving day has 92 or 100 intervals and the
  peaks stay at their local hours): the simulator's residential profile (night trough, 07:30 and
  19:30 peaks) or commercial profile (business-hours plateau); as in the simulator every third load
  (model ids sorted, from the third) is commercial. Weekends: residential x 1.08, commercial x 0.55.
  Public holidays are not modelled.
- Temperature: load x (1 + 0.03 per degC above 20 degC (cooling) + 0.02 per degC below 14 degC
  (heating)), on the temperature of the same interval.
- Noise: 2 % per load and interval; meters split their load's energy with fixed weights
  (0.6..1.4, normalised) and 3 % noise, as the simulator does.
- Feeder (solve rows): ``p_source_mw`` = sum of loads + losses; ``losses_mw`` = 4 % of the nominal
  load x (load / nominal)^2; ``min_vm_pu`` = 1 - 0.07 x load / nominal (at the last load's bus),
  ``max_vm_pu`` 1.0 (at the first bus); ``max_line_loading_percent`` = 55 % x load / nominal; no
  customers out; converged. DER output is not modelled (the loads are gross).
"""

from __future__ import annotations

import math
import threading
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from graph_schema.historian import SITE, Kind, partition_dir
from graph_schema.historian.ami import INTERVAL_S, meter_id, meters_for
from graph_schema.historian.writer import SCHEMAS, open_root, partitions, write_table

PART = "backfill"
PER_DAY = 86_400 // INTERVAL_S


@dataclass(frozen=True, slots=True)
class BackfillStats:
    days: int
    rows: int
    files: int
    start: datetime
    end: datetime


def residential(hour: np.ndarray) -> np.ndarray:
    base = 0.45 + 0.30 * np.exp(-(((hour - 7.5) / 1.5) ** 2)) + 0.55 * np.exp(-(((hour - 19.5) / 2.0) ** 2))
    return np.minimum(1.0, base + 0.15 * np.exp(-(((hour - 13.0) / 3.0) ** 2)))


def commercial(hour: np.ndarray) -> np.ndarray:
    return 0.35 + 0.65 / (1 + np.exp(-(hour - 8.0) * 2)) / (1 + np.exp((hour - 18.5) * 2))


def temperature_factor(temp_c: np.ndarray) -> np.ndarray:
    return 1 + 0.03 * np.maximum(0.0, temp_c - 20.0) + 0.02 * np.maximum(0.0, 14.0 - temp_c)


def _times(start: datetime, n: int, tz: str) -> tuple[np.ndarray, pd.DatetimeIndex]:
    utc_idx = pd.date_range(start, periods=n, freq=f"{INTERVAL_S}s", tz="UTC")
    return utc_idx.asi8 // 1000, utc_idx.tz_convert(tz)  # epoch microseconds, local times


def weather(local: pd.DatetimeIndex, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(temperature_c, ghi_w_m2) at the given local times (see the module docstring)."""
    hour = np.asarray(local.hour + local.minute / 60.0, dtype=float)
    doy = np.asarray(local.dayofyear, dtype=float)
    day_codes, day_index = np.unique(np.asarray(local.normalize().asi8), return_inverse=True)
    anomaly = np.zeros(len(day_codes))
    for i in range(len(day_codes)):
        anomaly[i] = (0.7 * anomaly[i - 1] if i else 0.0) + rng.normal(0, 3.0 * math.sqrt(1 - 0.49))
    temp = (11 + 9 * np.cos(2 * np.pi * (doy - 200) / 365.25) + 4.5 * np.cos(2 * np.pi * (hour - 15) / 24)
            + anomaly[day_index] + rng.normal(0, 0.3, len(hour)))
    clear = rng.beta(5, 2, len(day_codes))[day_index]
    bell = np.where((hour > 6) & (hour < 20), np.exp(-(((hour - 13.0) / 3.0) ** 2)), 0.0)
    ghi = 850 * bell * (0.55 + 0.45 * np.cos(2 * np.pi * (doy - 172) / 365.25)) * clear
    return temp, ghi


def load_series(feeder: Any, local: pd.DatetimeIndex, temp_c: np.ndarray, rng: np.random.Generator
                ) -> dict[str, np.ndarray]:
    """Load id -> MW per interval (see the module docstring)."""
    hour = np.asarray(local.hour + local.minute / 60.0, dtype=float)
    weekend = np.asarray(local.dayofweek >= 5)
    com_ids = set(sorted(ld.id for ld in feeder.loads)[2::3])
    res = residential(hour) * np.where(weekend, 1.08, 1.0)
    com = commercial(hour) * np.where(weekend, 0.55, 1.0)
    tf = temperature_factor(temp_c)
    return {ld.id: ld.p_mw * (com if ld.id in com_ids else res) * tf * (1 + rng.normal(0, 0.02, len(hour)))
            for ld in feeder.loads}


def historian_is_empty(root: str) -> bool:
    """No weather and no solve/meter partition before today (UTC): nothing to forecast from yet."""
    today = datetime.now(UTC).date()
    found = partitions(root, ("solve", "meter", "weather"))
    return not any(kind == "weather" or day < today for kind, _, day, _ in found)


def backfill(root: str, feeders: Iterable[Any], *, days: int = 60, end: datetime | None = None, tz: str = "UTC",
             seed: int = 0, stop: threading.Event | None = None) -> BackfillStats:
    """Write ``days`` days of 15-minute history ending at ``end`` (default: the current quarter hour)."""
    if days < 1:
        raise ValueError(f"days {days} must be at least 1")
    feeders = list(feeders)
    if end is None:
        now = datetime.now(UTC)
        end = now.replace(minute=now.minute - now.minute % 15, second=0, microsecond=0)
    end = end.astimezone(UTC)
    start = end - timedelta(days=days)
    n = days * PER_DAY
    ts_us, local = _times(start, n, tz)
    rng = np.random.default_rng(seed)
    temp, ghi = weather(local, rng)
    day_of = (ts_us // 86_400_000_000).astype(np.int64)  # UTC day number per row
    cuts = np.flatnonzero(np.diff(day_of)) + 1
    bounds = list(zip([0, *cuts.tolist()], [*cuts.tolist(), n], strict=True))
    fs, base = open_root(root)
    rows = files = 0

    def put(kind: Kind, fid: str, day: date, table: pa.Table) -> None:
        nonlocal rows, files
        write_table(fs, f"{partition_dir(base, kind, fid, day)}/{PART}.parquet", table)
        rows += table.num_rows
        files += 1

    ts_type = pa.timestamp("us", tz="UTC")
    for a, b in bounds:
        day = date(1970, 1, 1) + timedelta(days=int(day_of[a]))
        put("weather", SITE, day, pa.Table.from_arrays(
            [pa.array(ts_us[a:b], ts_type), pa.array(temp[a:b]), pa.array(ghi[a:b])], schema=SCHEMAS["weather"]))
    for feeder in feeders:
        frng = np.random.default_rng([seed, zlib.crc32(feeder.id.encode())])
        series = load_series(feeder, local, temp, frng)
        nominal = sum(ld.p_mw for ld in feeder.loads) or 1.0
        total = np.sum(list(series.values()), axis=0)
        ratio = total / nominal
        losses = 0.04 * nominal * ratio ** 2
        first_bus = feeder.buses[0].id if getattr(feeder, "buses", None) else ""
        last_bus = feeder.loads[-1].bus_id if feeder.loads else first_bus
        meters: list[tuple[str, str, np.ndarray]] = []  # (meter id, load id, kWh per interval)
        for ld in feeder.loads:
            k_n = meters_for(ld.customers)
            w = frng.uniform(0.6, 1.4, k_n)
            w /= w.sum()
            kwh = series[ld.id] * 1000 * INTERVAL_S / 3600
            noise = 1 + frng.normal(0, 0.03, (k_n, n))
            per = np.maximum(0.0, kwh[None, :] * w[:, None] * noise)
            meters += [(meter_id(feeder.id, ld.id, k), ld.id, per[k]) for k in range(k_n)]
        mids = pa.array([m[0] for m in meters]).dictionary_encode()
        lids = pa.array([m[1] for m in meters]).dictionary_encode()
        kwh_all = np.stack([m[2] for m in meters]) if meters else np.zeros((0, n))
        for a, b in bounds:
            if stop is not None and stop.is_set():
                return BackfillStats(days, rows, files, start, end)
            day = date(1970, 1, 1) + timedelta(days=int(day_of[a]))
            m = b - a
            put("solve", feeder.id, day, pa.Table.from_arrays([
                pa.array(ts_us[a:b], ts_type), pa.array(losses[a:b]), pa.array(1 - 0.07 * ratio[a:b]),
                pa.array([last_bus] * m, pa.string()), pa.array(np.ones(m)), pa.array([first_bus] * m, pa.string()),
                pa.array(55.0 * ratio[a:b]), pa.array(total[a:b] + losses[a:b]), pa.array(np.zeros(m, np.int64)),
                pa.array(np.ones(m, bool))], schema=SCHEMAS["solve"]))
            if not meters:
                continue
            n_m = len(meters)
            take = np.repeat(np.arange(n_m), m)
            starts = np.tile(ts_us[a:b], n_m)
            put("meter", feeder.id, day, pa.Table.from_arrays([
                mids.take(pa.array(take)).cast(pa.string()), lids.take(pa.array(take)).cast(pa.string()),
                pa.array(starts, ts_type), pa.array(starts + INTERVAL_S * 1_000_000, ts_type),
                pa.array(kwh_all[:, a:b].reshape(-1))], schema=SCHEMAS["meter"]))
    return BackfillStats(days, rows, files, start, end)


def demo_feeders() -> Sequence[Any]:
    from graph_schema.importers import DEMO_FEEDERS

    return [build() for build in DEMO_FEEDERS.values()]
