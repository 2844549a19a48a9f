"""Smart meters: ids and the meter-to-load mapping, the interval file format (bad rows named, good
rows kept), the simulator's interval files, and idempotent ingest into the historian."""

from __future__ import annotations

import logging
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from graph_schema.historian.ami import (
    MAX_METERS_PER_LOAD,
    account_of,
    format_intervals,
    meter_map,
    meters_for,
    meters_of_account,
    parse_intervals,
    parse_meter_id,
)

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
Q = timedelta(minutes=15)


def _feeder(fid: str = "f1") -> SimpleNamespace:
    loads = [SimpleNamespace(id="load1", bus_id="b1", p_mw=0.1, customers=3),
             SimpleNamespace(id="load2", bus_id="b2", p_mw=5.0, customers=5000)]
    return SimpleNamespace(id=fid, loads=loads, buses=[SimpleNamespace(id="b0")])


def test_meter_ids_are_per_customer_capped_and_deterministic() -> None:
    assert meters_for(0) == 1 and meters_for(3) == 3 and meters_for(5000) == MAX_METERS_PER_LOAD
    m = meter_map([_feeder()])
    assert sorted(k for k in m if "/load1/" in k) == ["f1/load1/m0", "f1/load1/m1", "f1/load1/m2"]
    assert len([k for k in m if "/load2/" in k]) == MAX_METERS_PER_LOAD
    assert m["f1/load2/m15"].load_id == "load2" and m["f1/load2/m15"].feeder_id == "f1"
    assert m == meter_map([_feeder()])
    assert parse_meter_id("f1/load1/m2") == ("f1", "load1", 2)
    assert parse_meter_id("f1/load1") is None and parse_meter_id("f1/load1/x2") is None


def test_demo_accounts_own_exactly_their_meter() -> None:
    acct = account_of("f1/load1/m2")
    assert acct == "acct:f1/load1/2"
    assert meters_of_account(acct) == {"f1/load1/m2"}
    assert meters_of_account("f1/load1/2") == frozenset() and meters_of_account("acct:junk") == frozenset()


def test_bad_rows_are_each_named_and_good_rows_kept() -> None:
    meters = meter_map([_feeder()])
    good = format_intervals([("f1/load1/m0", T0, T0 + Q, 0.5, []), ("f1/load1/m1", T0, T0 + Q, None, ["LG"])])
    text = good + "\n".join([
        "nope/load1/m0,2026-03-02T10:00:00Z,2026-03-02T10:15:00Z,1.0,",  # row 4: unknown meter
        "f1/load1/m0,2026-03-02T10:00:00,2026-03-02T10:15:00Z,1.0,",  # row 5: no offset
        "f1/load1/m0,2026-03-02T10:00:00Z,2026-03-02T10:30:00Z,1.0,",  # row 6: 30 minutes
        "f1/load1/m0,2026-03-02T10:15:00Z,2026-03-02T10:30:00Z,-1,",  # row 7: negative
        "f1/load1/m0,2026-03-02T10:15:00Z,2026-03-02T10:30:00Z,abc,",  # row 8: not a number
        "f1/load1/m0,2026-03-02T10:15:00Z,2026-03-02T10:30:00Z,1.0,XX",  # row 9: unknown flag
        "f1/load1/m0,2026-03-02T10:15:00Z,2026-03-02T10:30:00Z,,",  # row 10: empty without LG
        "f1/load1/m0,2026-03-02T10:15:00Z",  # row 11: too few fields
        "f1/load1/m2,2026-03-02T11:15:00+01:00,2026-03-02T11:30:00+01:00,0.25,EST",  # row 12: fine (offset)
    ]) + "\n"
    rows, bad = parse_intervals(text, meters)
    assert [(r.row, r.meter_id, r.kwh) for r in rows] == [(2, "f1/load1/m0", 0.5), (3, "f1/load1/m1", None),
                                                           (12, "f1/load1/m2", 0.25)]
    assert rows[2].start == T0 + Q and rows[1].flags == {"LG"}
    by_row = {r.row: r for r in bad}
    assert sorted(by_row) == [4, 5, 6, 7, 8, 9, 10, 11]
    assert "unknown meter" in by_row[4].reason and by_row[4].meter_id == "nope/load1/m0"
    assert "UTC offset" in by_row[5].reason and "15 minutes" in by_row[6].reason
    assert "finite number >= 0" in by_row[7].reason and "not a number" in by_row[8].reason
    assert "unknown flag" in by_row[9].reason and "LG" in by_row[10].reason and "fields" in by_row[11].reason
    assert by_row[4].line().startswith("row 4: meter nope/load1/m0: ")
    assert parse_intervals("a,b\n", meters)[1][0].row == 1  # wrong header: one rejection, nothing kept


def test_simulator_files_carry_the_load_energy_and_last_gasp(tmp_path: Path) -> None:
    from protocols.ami_sim import AmiRecorder

    rec = AmiRecorder(tmp_path, [_feeder()], noise=0.0)
    on = {"load1": True, "load2": True}
    t = T0 + timedelta(minutes=7)  # partial first interval: not written
    assert rec.observe("f1", t, {"load1": 0.1, "load2": 4.0}, on) == []
    while t < T0 + 2 * Q:
        t += timedelta(minutes=1)
        off = t >= T0 + Q + timedelta(minutes=10)
        written = rec.observe("f1", t, {"load1": 0.1, "load2": 4.0}, {"load1": not off, "load2": True})
    t += Q  # 10:45: power back
    written += rec.observe("f1", t, {"load1": 0.1, "load2": 4.0}, on)
    written += rec.observe("f1", t + Q, {"load1": 0.1, "load2": 4.0}, on)
    assert [p.name for p in written] == ["f1-20260302T1015Z.csv", "f1-20260302T1030Z.csv", "f1-20260302T1045Z.csv"]
    rows, bad = parse_intervals(written[0].read_text(), meter_map([_feeder()]))
    assert not bad and len(rows) == 3 + MAX_METERS_PER_LOAD
    by_load: dict[str, float] = {}
    for r in rows:
        by_load[r.load_id] = by_load.get(r.load_id, 0.0) + (r.kwh or 0.0)
    # 10 minutes powered: 0.1 MW x 10/60 h = 16.67 kWh (then a last gasp); load2 4 MW x 0.25 h
    assert by_load["load1"] == pytest.approx(100 * 10 / 60, abs=1e-3)  # CSV: 4 decimals
    assert by_load["load2"] == pytest.approx(1000.0, abs=1e-3)
    assert {r.flags for r in rows if r.load_id == "load1"} == {frozenset({"LG"})}
    rows2, _ = parse_intervals(written[1].read_text(), meter_map([_feeder()]))
    assert {r.kwh for r in rows2 if r.load_id == "load1"} == {0.0}  # off the whole interval
    rows3, _ = parse_intervals(written[2].read_text(), meter_map([_feeder()]))
    assert {r.flags for r in rows3 if r.load_id == "load1"} == {frozenset({"RS"})}
    assert not list(tmp_path.glob(".*"))  # no temporary file left


def test_ingest_keeps_good_rows_names_bad_ones_and_is_idempotent(tmp_path: Path,
                                                                  caplog: pytest.LogCaptureFixture) -> None:
    from graph_schema.historian.query import HistorianReader
    from server.ami_ingest import ami_dirs, ingest_inbox

    meters = meter_map([_feeder()])
    inbox, done, rejects = ami_dirs(tmp_path / "data")
    inbox.mkdir(parents=True)
    root = str(tmp_path / "hist")
    text = format_intervals([("f1/load1/m0", T0 + i * Q, T0 + (i + 1) * Q, 1.0 + i, ["LG"] if i == 2 else [])
                             for i in range(4)]) + "f1/load9/m0,2026-03-02T10:00:00Z,2026-03-02T10:15:00Z,1,\n"
    (inbox / "a.csv").write_text(text)
    (inbox / ".b.csv.tmp").write_text("being written")
    with caplog.at_level(logging.WARNING, logger="server.ami_ingest"):
        [res] = ingest_inbox(tmp_path / "data", root, meters)
    assert res.rows_kept == 4 and [r.row for r in res.rejected] == [6]
    assert "row 6: meter f1/load9/m0: unknown meter id" in caplog.text
    assert "row 6: meter f1/load9/m0: unknown meter id" in (rejects / "a.csv.rejects.txt").read_text()
    assert (done / "a.csv").exists() and not (inbox / "a.csv").exists() and (inbox / ".b.csv.tmp").exists()

    def usage() -> list[tuple[float, int]]:
        reader = HistorianReader(root)
        return [(b.kwh, b.intervals) for b in reader.energy_usage("f1/load1/m0", "f1", T0, T0 + 4 * Q, 3600)]

    assert usage() == [(10.0, 4)]
    shutil.copy(done / "a.csv", inbox / "a.csv")  # the same file again
    [again] = ingest_inbox(tmp_path / "data", root, meters)
    assert again.duplicate and usage() == [(10.0, 4)]
    (done / "ingested.txt").unlink()  # even without the ledger: the same parts are rewritten
    shutil.copy(done / "a.csv", inbox / "a.csv")
    ingest_inbox(tmp_path / "data", root, meters)
    assert usage() == [(10.0, 4)]
    (inbox / "c.csv").write_text(text.replace("\n", "\r\n"))  # the same intervals in another file
    ingest_inbox(tmp_path / "data", root, meters)
    assert usage() == [(10.0, 4)]
    raw = HistorianReader(root).energy_usage("f1/load1/m0", "f1", T0, T0 + 4 * Q, None)
    assert [(b.start, b.kwh) for b in raw] == [(T0 + i * Q, 1.0 + i) for i in range(4)]
    import duckdb

    events = duckdb.sql(f"SELECT event_kind, element_id FROM read_parquet('{root}/v1/kind=event/**/*.parquet', "
                        "hive_partitioning=true) GROUP BY ALL").fetchall()
    assert events == [("METER_LAST_GASP", "f1/load1/m0")]


async def test_ingester_task_ingests_and_backfills_an_empty_historian_then_stops(tmp_path: Path) -> None:
    from graph_schema.historian.backfill import historian_is_empty
    from server.ami_ingest import AmiIngester, ami_dirs

    meters = meter_map([_feeder()])

    async def get_meters() -> dict:  # type: ignore[type-arg]
        return meters

    root = str(tmp_path / "hist")
    inbox, done, _ = ami_dirs(tmp_path)
    inbox.mkdir(parents=True)
    (inbox / "a.csv").write_text(format_intervals([("f1/load1/m0", T0, T0 + Q, 1.0, [])]))
    ing = AmiIngester(tmp_path, root, get_meters, poll_s=3600)
    [res] = await ing.run_once()
    assert res.rows_kept == 1 and (done / "a.csv").exists()
    assert not historian_is_empty(root)  # meter rows from before today: no backfill over them
    ing.backfill_if_empty([_feeder()], days=1)
    await ing.stop()  # waits for the background backfill (or stops it between feeder-days)
    assert _parts(root) == 0
    fresh = AmiIngester(tmp_path, str(tmp_path / "fresh"), get_meters, poll_s=3600)
    assert historian_is_empty(fresh.root)
    fresh.backfill_if_empty([_feeder()], days=1)
    await fresh.wait_backfill()
    await fresh.stop()
    assert _parts(fresh.root) in (3, 6)  # weather, solve, meter over the UTC date(s) the day touches


def _parts(root: str) -> int:
    return len(list(Path(root).rglob("backfill.parquet")))


def test_latest_load_mw_averages_the_newest_interval_and_counts_a_late_meter_at_its_loads_mean() -> None:
    from graph_schema.historian.ami import Interval, MeterInfo
    from server.ami_ingest import latest_load_mw

    t0 = datetime(2026, 3, 1, 12, tzinfo=UTC)
    q = timedelta(minutes=15)
    meters = {f"f1/load{j}/m{k}": MeterInfo(f"f1/load{j}/m{k}", "f1", f"load{j}", k, 2, 10)
              for j in (1, 2) for k in (0, 1)}
    ivs = [Interval(1, "f1/load1/m0", "load1", "f1", t0, t0 + q, 1.0, frozenset()),  # older: ignored
           Interval(2, "f1/load1/m0", "load1", "f1", t0 + q, t0 + 2 * q, 2.0, frozenset()),
           Interval(3, "f1/load1/m1", "load1", "f1", t0 + q, t0 + 2 * q, 4.0, frozenset()),
           Interval(4, "f1/load2/m0", "load2", "f1", t0 + q, t0 + 2 * q, 1.5, frozenset()),  # m1 is late
           Interval(5, "f1/load2/m1", "load2", "f1", t0 + q, t0 + 2 * q, None, frozenset({"LG"}))]
    end, loads = latest_load_mw(ivs, meters)["f1"]
    assert end == t0 + 2 * q
    assert loads["load1"] == pytest.approx((2.0 + 4.0) * 4 / 1000)  # kWh per quarter hour -> MW
    assert loads["load2"] == pytest.approx(1.5 * 4 * 2 / 1000)  # the late meter counted at the load's mean


def test_the_historian_profile_is_the_mean_of_the_same_quarter_hour_in_past_weeks(tmp_path: Path) -> None:
    """15 days of backfilled meter data: two past weeks hold the same weekday's quarter hour; the
    profile is their mean per load, near the load's size (the generator's daily/weekly pattern)."""
    from graph_schema.historian.backfill import backfill
    from graph_schema.historian.query import HistorianReader
    from server.ami_ingest import profile_loads_mw

    root = str(tmp_path / "hist")
    end = datetime(2026, 3, 16, 12, 0, tzinfo=UTC)
    backfill(root, [_feeder()], days=15, end=end)
    at = end + timedelta(minutes=7)  # in the quarter hour starting at `end`
    profile = profile_loads_mw(root, "f1", ["load1", "load2"], at, weeks=4)
    assert set(profile) == {"load1", "load2"}
    reader = HistorianReader(root)
    expect = {}
    for k in (1, 2):  # weeks 3 and 4 are before the backfill
        s = end - timedelta(weeks=k)
        for ld, _, kwh in reader.load_energy("f1", ["load1", "load2"], s, s + Q):
            expect.setdefault(ld, []).append(kwh * 4 / 1000)
    assert profile == pytest.approx({ld: sum(v) / len(v) for ld, v in expect.items()})
    assert 0.02 < profile["load1"] < 0.5 and 1.0 < profile["load2"] < 25.0
    assert profile_loads_mw(root, "f1", ["load1"], end - timedelta(days=40)) == {}  # no history: nothing


async def test_a_feeder_whose_ami_is_late_gets_the_profile_once_per_quarter_hour(tmp_path: Path) -> None:
    from graph_schema.historian.backfill import backfill
    from server.ami_ingest import AmiIngester

    root = str(tmp_path / "hist")
    now = datetime(2026, 3, 16, 12, 3, tzinfo=UTC)
    backfill(root, [_feeder()], days=8, end=now.replace(minute=0))
    pushes: list[tuple[str, str, dict]] = []  # type: ignore[type-arg]

    async def push(fid: str, loads: dict, source: str = "AMI") -> None:  # type: ignore[type-arg]
        pushes.append((fid, source, loads))

    async def feeder_loads() -> dict[str, list[str]]:
        return {"f1": ["load1", "load2"], "no-history": ["x"]}

    async def no_meters() -> dict:  # type: ignore[type-arg]
        return {}

    ing = AmiIngester(tmp_path, root, no_meters, poll_s=3600, push_loads=push, feeder_loads=feeder_loads)
    assert await ing.push_profiles(now) == 1
    assert [(f, s, sorted(lo)) for f, s, lo in pushes] == [("f1", "PROFILE", ["load1", "load2"])]
    assert await ing.push_profiles(now + timedelta(minutes=5)) == 0  # same quarter hour
    ing._last_ami["f1"] = now + timedelta(minutes=16)  # fresh AMI arrived: no profile over it
    assert await ing.push_profiles(now + timedelta(minutes=17)) == 0
    assert await ing.push_profiles(now + timedelta(minutes=60)) == 1  # AMI late again (> 30 min)
    await ing.stop()
