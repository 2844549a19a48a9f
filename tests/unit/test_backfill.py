"""The historian backfill: shape of what it writes, its daily/weekly/temperature patterns, a
daylight-saving day in the utility's time zone, and that running it again adds nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import duckdb
import numpy as np
import pytest

from graph_schema.historian import SITE
from graph_schema.historian.ami import MAX_METERS_PER_LOAD
from graph_schema.historian.backfill import backfill, historian_is_empty
from graph_schema.historian.query import HistorianReader

TZ = "Europe/London"


def _feeder() -> SimpleNamespace:
    # sorted ids: la, lb, lc (commercial: every third from the third), ld
    loads = [SimpleNamespace(id=i, bus_id=f"b{i}", p_mw=p, customers=c)
             for i, p, c in (("la", 0.2, 60), ("lb", 0.1, 3), ("lc", 0.5, 10), ("ld", 0.3, 90))]
    return SimpleNamespace(id="fx", loads=loads, buses=[SimpleNamespace(id="b0")])


def _sql(q: str) -> list[tuple]:  # type: ignore[type-arg]
    return duckdb.sql(q).fetchall()


@pytest.fixture(scope="module")
def winter(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, object]:
    root = str(tmp_path_factory.mktemp("hist"))
    # 28 days ending 2026-04-05: includes the spring-forward day 2026-03-29 in Europe/London
    stats = backfill(root, [_feeder()], days=28, end=datetime(2026, 4, 5, tzinfo=UTC), tz=TZ, seed=1)
    return root, stats


def test_shape_one_part_per_kind_and_feeder_day(winter: tuple[str, object]) -> None:
    root, stats = winter
    assert not historian_is_empty(root) and historian_is_empty(str(Path(root) / "empty"))
    meters = 16 + 3 + 10 + 16  # la 60 customers -> capped; lb 3; lc 10; ld capped
    assert MAX_METERS_PER_LOAD == 16
    assert stats.files == 28 * 3 and stats.rows == 28 * 96 * (1 + 1 + meters)  # type: ignore[attr-defined]
    parts = sorted(p.name for p in Path(root).rglob("*.parquet"))
    assert set(parts) == {"backfill.parquet"}
    (n, first, last), = _sql(f"SELECT count(*), min(interval_start), max(interval_start) FROM "
                             f"read_parquet('{root}/v1/kind=meter/**/*.parquet', hive_partitioning=false) "
                             "WHERE meter_id = 'fx/la/m0'")
    assert n == 28 * 96 and first == datetime(2026, 3, 8, tzinfo=UTC) and last == datetime(2026, 4, 4, 23, 45,
                                                                                              tzinfo=UTC)
    # meters add up to their load; the source carries loads + losses
    (kwh,), = _sql(f"SELECT sum(kwh) FROM read_parquet('{root}/v1/kind=meter/**/*.parquet', hive_partitioning=false)")
    (p_mwh, loss_mwh), = _sql(f"SELECT sum(p_source_mw) * 0.25, sum(losses_mw) * 0.25 FROM "
                              f"read_parquet('{root}/v1/kind=solve/**/*.parquet', hive_partitioning=false)")
    assert kwh / 1000 == pytest.approx(p_mwh - loss_mwh, rel=0.01)
    assert (Path(root) / f"v1/kind=weather/feeder={SITE}/date=2026-03-29/backfill.parquet").exists()


def test_again_replaces_instead_of_adding(tmp_path: Path) -> None:
    end = datetime(2026, 1, 10, tzinfo=UTC)
    backfill(str(tmp_path), [_feeder()], days=2, end=end)
    backfill(str(tmp_path), [_feeder()], days=2, end=end)
    (n,), = _sql(f"SELECT count(*) FROM read_parquet('{tmp_path}/v1/kind=solve/**/*.parquet')")
    assert n == 2 * 96


def _solve(root: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows = _sql(f"SELECT epoch(timezone('{TZ}', ts)), p_source_mw, isodow(timezone('{TZ}', ts)) FROM "
                f"read_parquet('{root}/v1/kind=solve/**/*.parquet', hive_partitioning=false) ORDER BY ts")
    a = np.array(rows, dtype=float)
    return a[:, 0], a[:, 1], a[:, 2]


def test_weekdays_carry_more_load_than_weekends(winter: tuple[str, object]) -> None:
    _, p, dow = _solve(winter[0])
    assert p[dow >= 6].mean() < 0.95 * p[dow < 6].mean()
    (com_wd, com_we), = _sql(
        f"SELECT avg(kwh) FILTER (WHERE isodow(timezone('{TZ}', interval_start)) < 6), "
        f"avg(kwh) FILTER (WHERE isodow(timezone('{TZ}', interval_start)) >= 6) FROM "
        f"read_parquet('{winter[0]}/v1/kind=meter/**/*.parquet', hive_partitioning=false) WHERE load_id = 'lc'")
    assert com_we < 0.7 * com_wd  # the commercial load: weekends are quiet


def test_daily_load_follows_temperature(tmp_path: Path) -> None:
    root = str(tmp_path)
    backfill(root, [_feeder()], days=60, end=datetime(2026, 2, 15, tzinfo=UTC), tz=TZ, seed=3)  # winter: heating
    rows = _sql(
        f"SELECT s.d, s.p, w.t FROM (SELECT CAST(ts AS DATE) AS d, avg(p_source_mw) AS p FROM "
        f"read_parquet('{root}/v1/kind=solve/**/*.parquet', hive_partitioning=false) WHERE isodow(ts) < 6 "
        f"GROUP BY 1) s JOIN "
        f"(SELECT CAST(ts AS DATE) AS d, avg(temperature_c) AS t FROM "
        f"read_parquet('{root}/v1/kind=weather/**/*.parquet', hive_partitioning=false) GROUP BY 1) w USING (d)")
    p, t = (np.array(x, dtype=float) for x in list(zip(*rows, strict=True))[1:])
    assert len(p) > 40  # weekdays (the weekly pattern aside)
    assert np.corrcoef(p, t)[0, 1] < -0.6  # colder days, more load
    assert -15 < t.min() and t.max() < 25


def test_dst_day_has_92_intervals_and_peaks_at_local_evening(winter: tuple[str, object]) -> None:
    root, _ = winter
    reader = HistorianReader(root, tz=TZ)
    days = reader.energy_usage("fx/la/m0", "fx", datetime(2026, 3, 27, tzinfo=UTC),
                               datetime(2026, 3, 31, tzinfo=UTC), 86_400)
    counts = {b.start.isoformat(): b.intervals for b in days}
    # local midnights: 00:00Z before the change, 23:00Z after; 2026-03-29 is 23 hours long
    assert counts == {"2026-03-27T00:00:00+00:00": 96, "2026-03-28T00:00:00+00:00": 96,
                      "2026-03-29T00:00:00+00:00": 92, "2026-03-29T23:00:00+00:00": 96,
                      "2026-03-30T23:00:00+00:00": 4}
    for day in ("2026-03-28", "2026-03-29", "2026-03-30"):  # residential meter: evening peak in local time
        rows = _sql(f"SELECT hour(timezone('{TZ}', interval_start)) + minute(timezone('{TZ}', interval_start)) / 60.0,"
                    f" kwh FROM read_parquet('{root}/v1/kind=meter/**/*.parquet', hive_partitioning=false) "
                    f"WHERE load_id = 'la' AND CAST(timezone('{TZ}', interval_start) AS DATE) = DATE '{day}'")
        hours = np.array([r[0] for r in rows])
        kwh = np.array([r[1] for r in rows])
        assert 17.5 <= hours[kwh.argmax()] <= 21.5, (day, hours[kwh.argmax()])
        assert 0 <= hours[kwh.argmin()] <= 6.0


def test_past_data_is_recent_and_stops_at_the_quarter_hour(tmp_path: Path) -> None:
    stats = backfill(str(tmp_path), [], days=1)
    assert stats.end.minute % 15 == 0 and datetime.now(UTC) - stats.end < timedelta(minutes=15)
    assert stats.files == 2  # weather only (no feeders), over two UTC dates
