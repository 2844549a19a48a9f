"""IEEE 1366 indices on small interruption sets computed by hand, and the 2.5 beta method."""

from __future__ import annotations

import io
import math
import statistics
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from actors.cores.outages import OutageTracker
from actors.cores.reliability import (
    compute_indices,
    daily_saidi,
    from_outage,
    from_steps,
    major_event_days,
    med_threshold,
)


def t(s: str) -> datetime:
    return datetime.fromisoformat(s).replace(tzinfo=UTC) if "+" not in s else datetime.fromisoformat(s)


YEAR = (t("2024-01-01T00:00"), t("2025-01-01T00:00"))


def small_set() -> list:
    return [
        # 200 out at 10:00; 100 back at 10:30 (second step), the other 100 at 12:00.
        from_steps("A", "F1", t("2024-03-01T10:00"), t("2024-03-01T12:00"), 200, "FAULT", False,
                   [(t("2024-03-01T10:30"), 100)]),
        from_steps("B", "F1", t("2024-05-01T00:00"), t("2024-05-01T01:00"), 50, "WEATHER", False),
        # One recloser event: two operations 2 minutes apart (300 then 400 customers).
        from_steps("C1", "F1", t("2024-06-01T08:00"), t("2024-06-01T08:00:30"), 300, "MOMENTARY", True),
        from_steps("C2", "F1", t("2024-06-01T08:02"), t("2024-06-01T08:02:30"), 400, "MOMENTARY", True),
        # A momentary operation immediately before a lockout (sustained 3 minutes later): not MAIFIe.
        from_steps("D", "F1", t("2024-07-01T09:00"), t("2024-07-01T09:00:20"), 100, "MOMENTARY", True),
        from_steps("E", "F1", t("2024-07-01T09:03"), t("2024-07-01T10:03"), 100, "FAULT", False),
        # Planned work: counted apart, never in the indices.
        from_steps("P", "F1", t("2024-08-01T09:00"), t("2024-08-01T13:00"), 500, "PLANNED", False),
        # Outside the period.
        from_steps("X", "F1", t("2023-12-31T23:00"), t("2024-01-01T02:00"), 999, "FAULT", False),
    ]


def test_hand_computed_indices_with_per_step_restoration_and_maifie_events() -> None:
    ix = compute_indices(small_set(), {"F1": 1000}, *YEAR, celid_hours=2.0)
    # CI = 200 + 50 + 100; CMI = 100*30 + 100*120 + 50*60 + 100*60
    assert ix.customers_interrupted == 350
    assert ix.customer_minutes == pytest.approx(24000)
    assert ix.saifi == pytest.approx(0.35)
    assert ix.saidi_min == pytest.approx(24.0)
    assert ix.caidi_min == pytest.approx(24000 / 350)
    # Nested customers: ranks 0-49 hit by A, B, E; 50-99 by A, E; 100-199 by A: CN = 200.
    assert ix.customers_with_interruption == 200
    assert ix.caifi == pytest.approx(350 / 200)
    assert ix.cemi_n(1) == pytest.approx(100 / 1000)  # more than one interruption
    assert ix.cemi_n(2) == pytest.approx(50 / 1000)
    assert ix.cemi_n(3) == 0
    # One MAIFIe event of 400 customers (C1+C2); D preceded the sustained E.
    assert ix.momentary_events == 1
    assert ix.maifi_e == pytest.approx(0.4)
    assert ix.asai == pytest.approx(1 - 24000 / (1000 * 366 * 24 * 60))
    # Longest single >= 2 h: the 100 customers out 120 min in A. Total >= 2 h: ranks 0-99
    # (A 120 + E 60 [+ B 60]) -> 100 customers.
    assert ix.celid_s == pytest.approx(0.1)
    assert ix.celid_t == pytest.approx(0.1)
    assert ix.planned_interruptions == 1
    assert ix.interruptions == 3


def test_customer_restored_in_the_second_step_counts_the_longer_duration() -> None:
    one_step = from_steps("S", "F", t("2024-01-02T00:00"), t("2024-01-02T02:00"), 10, "FAULT", False)
    two_steps = from_steps("S", "F", t("2024-01-02T00:00"), t("2024-01-02T02:00"), 10, "FAULT", False,
                           [(t("2024-01-02T00:20"), 4)])
    assert compute_indices([one_step], {"F": 10}, *YEAR).customer_minutes == pytest.approx(1200)
    assert compute_indices([two_steps], {"F": 10}, *YEAR).customer_minutes == pytest.approx(4 * 20 + 6 * 120)


def test_customers_restored_within_the_threshold_are_momentary() -> None:
    r = from_steps("S", "F", t("2024-01-02T00:00"), t("2024-01-02T01:00"), 10, "FAULT", False,
                   [(t("2024-01-02T00:03"), 4)])
    ix = compute_indices([r], {"F": 100}, *YEAR)
    assert ix.customers_interrupted == 6
    assert ix.customer_minutes == pytest.approx(360)
    assert ix.momentary_customer_events == 4


def test_indices_from_outage_records_count_per_load_exactly() -> None:
    tr = OutageTracker(utc_now=lambda: t("2024-04-01T10:00"))
    o = tr.open("F", "FAULT", ["L1", "L2"], {"L1": 30, "L2": 70}, at=t("2024-04-01T10:00"))
    tr.step(o.id, restored=["L2"], action="CLOSE", by="fdir", at=t("2024-04-01T10:10"))
    o1 = tr.close(o.id, by="crew", at=t("2024-04-01T11:00"))
    o2 = tr.open("F", "FAULT", ["L1"], {"L1": 30}, at=t("2024-05-01T10:00"))
    o2 = tr.close(o2.id, by="crew", at=t("2024-05-01T10:30"))
    ix = compute_indices([from_outage(o1), from_outage(o2)], {"F": 200}, *YEAR, celid_hours=1.5)
    assert ix.customers_interrupted == 30 + 70 + 30
    assert ix.customer_minutes == pytest.approx(30 * 60 + 70 * 10 + 30 * 30)
    assert ix.customers_with_interruption == 100
    assert ix.cemi_n(1) == pytest.approx(30 / 200)
    assert ix.celid_t == pytest.approx(30 / 200)  # L1: 60 + 30 minutes
    assert ix.celid_s == 0


def test_an_empty_period_gives_zero_indices_not_an_error() -> None:
    ix = compute_indices([], {"F": 100}, *YEAR)
    assert (ix.saidi_min, ix.saifi, ix.caidi_min, ix.caifi, ix.asai) == (0, 0, None, None, 1.0)


def test_day_boundary_follows_the_utility_time_zone() -> None:
    ny = ZoneInfo("America/New_York")
    r = from_steps("N", "F", t("2024-03-02T03:30+00:00"), t("2024-03-02T04:30+00:00"), 10, "FAULT", False)
    assert list(daily_saidi([r], {"F": 10}, tz=ny)) == [date(2024, 3, 1)]
    assert list(daily_saidi([r], {"F": 10}, tz=UTC)) == [date(2024, 3, 2)]


def _synthetic_history() -> tuple[list, dict[date, float]]:
    """Five years (2019-2023) of daily interruptions like the standard's worked example: most days
    a few customer minutes, a pattern of values, and days with no interruption at all (zero SAIDI,
    left out of the logs)."""
    records, expected = [], {}
    day = date(2019, 1, 1)
    k = 0
    while day < date(2024, 1, 1):
        k += 1
        if k % 7 != 0:  # every seventh day has no interruption
            minutes = 6 + (k * 37) % 23  # 6..28 minutes (sustained), every customer of the feeder
            start = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
            records.append(from_steps(f"h{k}", "F", start, start + timedelta(minutes=minutes), 100, "FAULT", False))
            expected[day] = minutes * 100 / 100
        day += timedelta(days=1)
    return records, expected


def test_two_and_a_half_beta_threshold_and_med_classification() -> None:
    history, expected = _synthetic_history()
    daily = daily_saidi(history, {"F": 100}, start=date(2019, 1, 1), end=date(2024, 1, 1))
    assert daily == pytest.approx(expected)
    assert all(v > 0 for v in daily.values())  # zero days are not in the map
    logs = [math.log(v) for v in expected.values()]
    alpha, beta = statistics.mean(logs), statistics.stdev(logs)  # sample standard deviation
    res = med_threshold(daily, date(2019, 1, 1), date(2024, 1, 1))
    assert res.fallback is None
    assert res.days_used == len(expected)
    assert res.alpha == pytest.approx(alpha)
    assert res.beta == pytest.approx(beta)
    t_med = math.exp(alpha + 2.5 * beta)
    assert res.t_med_min == pytest.approx(t_med)
    # An explicit zero day changes nothing.
    zero_day = next(d for d in (date(2020, 2, 1) + timedelta(days=i) for i in range(7)) if d not in daily)
    assert med_threshold({**daily, zero_day: 0.0}, date(2019, 1, 1), date(2024, 1, 1)).t_med_min == \
        pytest.approx(t_med)
    # The reported year: one day above T_MED, one just below it.
    above = from_steps("big", "F", t("2024-06-10T08:00"), t("2024-06-10T08:00") + timedelta(minutes=t_med * 1.01),
                       100, "WEATHER", False)
    below = from_steps("near", "F", t("2024-07-10T08:00"), t("2024-07-10T08:00") + timedelta(minutes=t_med * 0.99),
                       100, "WEATHER", False)
    reported = daily_saidi([above, below], {"F": 100}, start=date(2024, 1, 1), end=date(2025, 1, 1))
    meds = major_event_days(res, reported)
    assert [d for d, _ in meds.major_event_days] == [date(2024, 6, 10)]
    assert meds.major_event_days[0][1] == pytest.approx(t_med * 1.01)
    with_med = compute_indices([above, below], {"F": 100}, *YEAR)
    without = compute_indices([above, below], {"F": 100}, *YEAR, exclude_days=[date(2024, 6, 10)])
    assert with_med.saidi_min == pytest.approx(t_med * 2.0)
    assert without.saidi_min == pytest.approx(t_med * 0.99)


def test_population_standard_deviation_is_available_and_differs_little() -> None:
    _, expected = _synthetic_history()
    s = med_threshold(expected, date(2019, 1, 1), date(2024, 1, 1))
    p = med_threshold(expected, date(2019, 1, 1), date(2024, 1, 1), ddof=0)
    assert p.std.startswith("population") and s.std.startswith("sample")
    assert p.t_med_min is not None and s.t_med_min is not None
    assert abs(p.t_med_min / s.t_med_min - 1) < 0.01


def test_fewer_than_five_years_uses_all_available_history_and_says_so() -> None:
    _, expected = _synthetic_history()
    res = med_threshold(expected, date(2019, 1, 1), date(2024, 1, 1), data_since=date(2022, 1, 1))
    assert res.fallback is not None and "2.0 years" in res.fallback and "all available history" in res.fallback
    assert res.days_used == sum(1 for d in expected if d >= date(2022, 1, 1))
    none = med_threshold({}, date(2019, 1, 1), date(2024, 1, 1), data_since=date(2023, 12, 1))
    assert none.t_med_min is None and "no day is classed as a major event day" in (none.fallback or "")


def test_reversed_period_is_refused() -> None:
    with pytest.raises(ValueError, match="not after its start"):
        compute_indices([], {"F": 1}, YEAR[1], YEAR[0])


# -- the CSV import's parser (pure: text in, interruptions or BadInput out) -------------------------

HEADER = "id,feeder_id,start,end,customers_interrupted,cause,momentary,steps,customer_minutes\n"
NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_csv_steps_parse_times_with_colons_and_round_trip_through_the_store_record() -> None:
    from server.reports.imports import interruption_from_record, interruption_record, parse_outages_csv

    text = HEADER + ("a,F,2024-03-01T10:00:00+01:00,2024-03-01T12:00:00+01:00,200,fault,false,"
                     "2024-03-01T10:30:00+01:00:120;2024-03-01T11:00:00+01:00:50,\n")
    (rec,) = parse_outages_csv(text, {"F": 1000}, now=NOW)
    assert rec.cause == "FAULT"
    assert [(s.customers, s.minutes) for s in rec.segments] == [(120, 30.0), (50, 60.0), (30, 120.0)]
    back = interruption_from_record({**interruption_record(rec), "feeder_id": "F"})
    assert compute_indices([back], {"F": 1000}, *YEAR).customer_minutes == pytest.approx(120 * 30 + 50 * 60 + 30 * 120)


@pytest.mark.parametrize(("row", "message"), [
    ("b,F,2024-03-01T10:00:00+00:00,2024-03-01T11:00:00+00:00,10,FAULT,false,2024-03-01T12:00:00+00:00:5,",
     "row 1 (id 'b'): step at 2024-03-01T12:00:00+00:00 is outside the interruption"),
    ("b,F,2024-03-01T10:00:00+00:00,2024-03-01T11:00:00+00:00,10,FAULT,false,2024-03-01T10:10:00+00:00:11,",
     "steps restore 11 customers, more than the 10 interrupted"),
    ("b,F,2024-03-01T10:00:00+00:00,2024-03-01T11:00:00+00:00,10,FAULT,maybe,,", "momentary 'maybe' is not true"),
    ("b,F,2024-03-01T10:00:00+00:00,2024-03-01T11:00:00+00:00,10,FAULT,false,,-1",
     "customer_minutes -1 is negative"),
    ("b,F,2024-03-01T10:00:00+00:00,2024-03-01T11:00:00+00:00,5000,FAULT,false,,",
     "customers_interrupted 5000 exceeds the 1000 customers feeder 'F' serves"),
    ("b,F,yesterday,2024-03-01T11:00:00+00:00,10,FAULT,false,,", "start 'yesterday' is not an ISO 8601 time"),
])
def test_csv_bad_rows_are_named_with_the_fix(row: str, message: str) -> None:
    from graph_schema.errors import BadInput
    from server.reports.imports import parse_outages_csv

    with pytest.raises(BadInput) as err:
        parse_outages_csv(HEADER + row + "\n", {"F": 1000}, now=NOW)
    assert message in err.value.message
    assert "nothing written" in err.value.message and "fix the rows and import again" in err.value.message


def test_csv_the_same_interruption_under_two_ids_is_refused() -> None:
    from graph_schema.errors import BadInput
    from server.reports.imports import parse_outages_csv

    row = ",F,2024-03-01T10:00:00+00:00,2024-03-01T11:00:00+00:00,10,FAULT,false,,\n"
    with pytest.raises(BadInput, match=r"row 2 \(id 'y'\): the same interruption as row 1 \(id 'x'\)"):
        parse_outages_csv(HEADER + "x" + row + "y" + row, {"F": 1000}, now=NOW)


# -- pure parts of the report builders and the renderers -----------------------------------------------


def test_voltage_compliance_counts_ten_minute_values_in_each_band() -> None:
    from server.reports.builders import voltage_rows

    values = [1.0] * 90 + [0.93] * 4 + [1.055] * 2 + [0.89] * 4  # 100 ten-minute averages
    (row,) = voltage_rows({("F", "bus7"): values})
    fid, bus, n, en, en_ok, a, b_only, out_b, vmin, vmax = row
    assert (fid, bus, n) == ("F", "bus7", 100)
    assert en == 96.0 and en_ok is True  # 0.89 is outside 0.90-1.10: 96 % within, >= 95 %
    assert a == 90.0 and b_only == 6.0 and out_b == 4.0
    assert (vmin, vmax) == (0.89, 1.055)
    worst, best = voltage_rows({("F", "good"): [1.0] * 10, ("F", "bad"): [0.94] * 10})
    assert worst[1] == "bad" and best[1] == "good"


def test_operations_tables_group_controls_plans_and_acknowledgements() -> None:
    from actors.cores.events import Event, EventKind, Severity
    from server.reports.builders import operations_tables

    t0 = datetime(2024, 5, 1, 10, tzinfo=UTC)
    controls = [{"operator": "alice", "status": "CONFIRMED"}, {"operator": "fdir", "status": "CONFIRMED"},
                {"operator": "alice", "status": "FAILED"}]
    events = [
        Event(1, EventKind.ALARM, "F", "sw1", Severity.ALARM, "BREAKER_TRIP sw1", t0, {"alarm_kind": "BREAKER_TRIP"}),
        Event(2, EventKind.PLAN, "F", None, Severity.INFO, "plan", t0 + timedelta(seconds=5),
              {"plan_id": "p1", "state": "PROPOSED", "plan_kind": "RESTORATION"}),
        Event(3, EventKind.PLAN, "F", None, Severity.INFO, "plan", t0 + timedelta(seconds=35),
              {"plan_id": "p1", "state": "COMPLETED", "customers_restored": 40, "customers_left": 10}),
        Event(4, EventKind.ALARM_ACKNOWLEDGED, "F", "sw1", Severity.INFO, "ack", t0 + timedelta(seconds=90),
              {"alarm_kind": "BREAKER_TRIP", "by": "alice"}),
    ]
    summary, tables = operations_tables(controls, events)
    s = dict(summary)
    assert s["Control actions"] == 3 and s["FDIR plans completed"] == 1
    assert s["Median acknowledgement time (s)"] == 90.0
    by = {t.name: t for t in tables}
    assert ("alice", "FAILED", 1) in by["controls_by_operator"].rows
    assert ("fdir", "CONFIRMED", 1) in by["controls_by_application"].rows
    assert ("operator (manual)", "CONFIRMED", 1) in by["controls_by_application"].rows
    (plan,) = by["fdir_plans"].rows
    assert plan[0] == "p1" and plan[3] == "COMPLETED" and plan[6] == 30.0 and plan[7] == 40


def test_renderers_carry_the_same_figures_and_hash() -> None:
    from openpyxl import load_workbook
    from pypdf import PdfReader

    from server.reports.builders import reliability_doc
    from server.reports.render import to_csv, to_pdf, to_xlsx

    gen = datetime(2025, 1, 2, tzinfo=UTC)
    doc = reliability_doc(small_set(), {"F1": 1000}, {}, {}, *YEAR, tz=UTC, tz_name="UTC", threshold_min=5.0,
                          generated_at=gen)
    again = reliability_doc(small_set(), {"F1": 1000}, {}, {}, *YEAR, tz=UTC, tz_name="UTC", threshold_min=5.0,
                            generated_at=gen + timedelta(days=9))
    assert doc.content_sha256 == again.content_sha256  # generated-at is not part of the figures
    assert dict(doc.summary)["SAIDI (min), all days"] == pytest.approx(24.0)
    assert to_pdf(doc) == to_pdf(doc)  # byte for byte: fixed creation date, no PNG timestamps
    text = "".join(p.extract_text() for p in PdfReader(io.BytesIO(to_pdf(doc))).pages).replace("\n", "")
    assert doc.content_sha256 in text and "SAIDI (min), all days 24" in text and "reliability report 2024" in text
    wb = load_workbook(io.BytesIO(to_xlsx(doc)))
    cells = {r[0]: r[1] for r in wb["report"].iter_rows(values_only=True) if r and r[0]}
    assert cells["SAIDI (min), all days"] == pytest.approx(24.0) and cells["content_sha256"] == doc.content_sha256
    assert f"# content_sha256,{doc.content_sha256}" in to_csv(doc).decode()
