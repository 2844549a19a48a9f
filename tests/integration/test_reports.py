"""Regulatory reports end to end: `dms outages import` / `dms customers import` into the real store,
``reliabilityIndices`` over HTTP checked against the pure core on the same rows, report jobs whose
PDF text and XLSX cells are read back and compared with the API's figures, downloads under
/reports/ with their permissions, and scheduled reports."""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from server.reports.data import analyse
from server.reports.imports import parse_outages_csv
from tests.integration.test_cli import adms, store_env

FEEDERS = ("case33bw", "cigre-mv")
YEAR = (datetime(2024, 1, 1, tzinfo=UTC), datetime(2025, 1, 1, tzinfo=UTC))
STORM = datetime(2024, 8, 14, 16, 0, tzinfo=UTC)


def codes(result):
    return [e.get("extensions", {}).get("code") for e in result.get("errors") or []]


def history_csv() -> str:
    """2019-2023: an interruption of 50-749 customers for 20-179 minutes every third day, alternating feeders;
    2024: a few interruptions, one restored in two steps, recloser operations, and a storm day."""
    rows = ["id,feeder_id,start,end,customers_interrupted,cause,momentary,steps,customer_minutes"]
    t = datetime(2019, 1, 2, 9, 0, tzinfo=UTC)
    k = 0
    while t < YEAR[0]:
        k += 1
        fid = FEEDERS[k % 2]
        rows.append(f"h{k},{fid},{t.isoformat()},{(t + timedelta(minutes=20 + (k * 13) % 160)).isoformat()},"
                    f"{50 + (k * 37) % 700},FAULT,false,,")
        t += timedelta(days=3, minutes=7)
    y = datetime(2024, 3, 1, 10, 0, tzinfo=UTC)
    rows += [
        f"y1,case33bw,{y.isoformat()},{(y + timedelta(hours=2)).isoformat()},200,FAULT,false,"
        f"{(y + timedelta(minutes=30)).isoformat()}:120,",
        "y2,cigre-mv,2024-05-01T00:00:00+02:00,2024-05-01T01:00:00+02:00,500,WEATHER,false,,",
        "y3,case33bw,2024-06-01T08:00:00+00:00,2024-06-01T08:00:30+00:00,300,MOMENTARY,true,,",
        "y4,case33bw,2024-06-01T08:02:00+00:00,2024-06-01T08:02:30+00:00,400,MOMENTARY,true,,",
        "y5,cigre-mv,2024-09-01T12:00:00+00:00,2024-09-01T16:00:00+00:00,1000,PLANNED,false,,",
        f"y6,cigre-mv,{STORM.isoformat()},{(STORM + timedelta(hours=20)).isoformat()},9000,WEATHER,false,,",
        f"y7,case33bw,{STORM.isoformat()},{(STORM + timedelta(hours=10)).isoformat()},1000,WEATHER,false,,600000",
    ]
    return "\n".join(rows) + "\n"


CUSTOMERS = "feeder_id,year,customers,zone\ncase33bw,2024,1300,north\ncigre-mv,2024,15000,south\n"


@pytest.fixture(scope="module")
async def imported(settings, data_dir, runtime, tmp_path_factory):
    folder = tmp_path_factory.mktemp("history")
    history, customers = folder / "history.csv", folder / "customers.csv"
    history.write_text(history_csv(), encoding="utf-8")
    customers.write_text(CUSTOMERS, encoding="utf-8")
    env = store_env(settings, data_dir)
    r = await adms("customers", "import", str(customers), env=env)
    assert r.returncode == 0, r.stderr
    r = await adms("outages", "import", str(history), env=env)
    assert r.returncode == 0, r.stderr
    assert "0 updated" in r.stdout, r.stdout
    return history


async def model_customers(runtime) -> dict[str, int]:
    """Customers per feeder as the server counts them: every feeder in the store (the session may
    hold more than the two demo feeders, e.g. the simulator's OPC UA copy of case33bw)."""
    return {f.id: sum(ld.customers for ld in (await runtime.grid.model(f.id)).loads)
            for f in await runtime.grid.list_feeders()}


def expected(model: dict[str, int], scope: str = "SYSTEM", scope_id: str | None = None):
    records = parse_outages_csv(history_csv(), {"case33bw": 1300, "cigre-mv": 15000}, now=datetime.now(UTC))
    assert model["case33bw"] == 1239 and model["cigre-mv"] == 14913
    years = {2024: {"case33bw": 1300, "cigre-mv": 15000}}
    return analyse(records, model, years, {"case33bw": "north", "cigre-mv": "south"}, scope, scope_id, *YEAR,
                   tz=ZoneInfo("UTC"), tz_name="UTC")


INDICES = """query($scope: ReliabilityScope!, $id: String, $start: DateTime!, $end: DateTime!, $ex: Boolean!) {
  reliabilityIndices(scope: $scope, id: $id, start: $start, end: $end, excludeMajorEvents: $ex) {
    saidiMin saifi caidiMin caifi asai maifiE customersServed interruptions noData
    majorEventDays { date saidiMin } tMedMin medFallback medHistoryYears edition thresholdMin timezone
    cemi { n share }
  }
}"""


def period(start: datetime = YEAR[0], end: datetime = YEAR[1]) -> dict[str, str]:
    return {"start": start.isoformat(), "end": end.isoformat()}


async def indices(gql, scope="SYSTEM", id=None, ex=False, role="VIEWER", token=None, **p):
    return await gql(INDICES, {"scope": scope, "id": id, "ex": ex, **(p or period())}, role=role, token=token)


async def test_reliability_indices_match_the_core_with_and_without_major_events(gql, imported, runtime):
    model = await model_customers(runtime)
    exp = expected(model)
    others = sum(n for f, n in model.items() if f not in FEEDERS)  # feeders without a 2024 override
    assert [d.isoformat() for d, _ in exp.med.major_event_days] == ["2024-08-14"]
    for ex, ix in ((False, exp.indices), (True, exp.indices_excluding_med)):
        r = await indices(gql, ex=ex)
        assert "errors" not in r, r
        got = r["data"]["reliabilityIndices"]
        assert got["saidiMin"] == pytest.approx(ix.saidi_min, rel=1e-9)
        assert got["saifi"] == pytest.approx(ix.saifi, rel=1e-9)
        assert got["maifiE"] == pytest.approx(ix.maifi_e, rel=1e-9)
        assert got["asai"] == pytest.approx(ix.asai, rel=1e-12)
        assert got["customersServed"] == 16300 + others
        assert got["majorEventDays"][0]["date"] == "2024-08-14"
        assert got["tMedMin"] == pytest.approx(exp.med.t_med_min)
        assert got["edition"] == "IEEE Std 1366-2022" and got["thresholdMin"] == 5 and got["timezone"] == "UTC"
        assert got["medFallback"] is None  # five full years (2019-2023) of history
    # The storm day carries most of the minutes: without it SAIDI falls.
    assert exp.indices_excluding_med.saidi_min < exp.indices.saidi_min / 2
    # Per-step restoration (y1): 120 customers for 30 min, 80 for 120 min; y7's given customer-minutes.
    feeder = (await indices(gql, scope="FEEDER", id="case33bw"))["data"]["reliabilityIndices"]
    assert feeder["customersServed"] == 1300
    assert feeder["saidiMin"] == pytest.approx((120 * 30 + 80 * 120 + 600000) / 1300)
    assert feeder["maifiE"] == pytest.approx(400 / 1300)  # y3 + y4: one MAIFIe event of 400 customers
    zone = (await indices(gql, scope="ZONE", id="south", ex=True))["data"]["reliabilityIndices"]
    assert zone["saidiMin"] == pytest.approx(500 * 60 / 15000)  # y2 only: y5 is planned, y6 on the MED


async def test_reliability_bad_input_and_scope(gql, mint, imported):
    future = datetime.now(UTC) + timedelta(days=30)
    r = await indices(gql, start=future.isoformat(), end=(future + timedelta(days=1)).isoformat())
    assert codes(r) == ["BAD_INPUT"] and "future" in r["errors"][0]["message"]
    r = await indices(gql, start=YEAR[1].isoformat(), end=YEAR[0].isoformat())
    assert codes(r) == ["BAD_INPUT"] and "not after its start" in r["errors"][0]["message"]
    r = await indices(gql, scope="FEEDER", id="nope")
    assert codes(r) == ["NOT_FOUND"] and "nope" in r["errors"][0]["message"]
    r = await indices(gql, scope="ZONE", id="west")
    assert codes(r) == ["NOT_FOUND"] and "north" in r["errors"][0]["message"]
    scoped = mint("VIEWER", feeders=["case33bw"])
    assert codes(await indices(gql, token=scoped)) == ["FORBIDDEN"]
    assert "errors" not in await indices(gql, scope="FEEDER", id="case33bw", token=scoped)
    assert codes(await indices(gql, scope="FEEDER", id="cigre-mv", token=scoped)) == ["FORBIDDEN"]
    assert codes(await indices(gql, role="CUSTOMER")) == ["FORBIDDEN"]


async def test_a_period_without_data_and_short_history_are_stated(gql, imported):
    r = await indices(gql, start="2010-01-01T00:00:00+00:00", end="2011-01-01T00:00:00+00:00")
    got = r["data"]["reliabilityIndices"]
    assert got["noData"] is True and got["saidiMin"] == 0 and got["caidiMin"] is None
    r = await indices(gql, start="2021-01-01T00:00:00+00:00", end="2022-01-01T00:00:00+00:00")
    got = r["data"]["reliabilityIndices"]
    assert got["noData"] is False
    assert got["medHistoryYears"] == pytest.approx(2.0, abs=0.01)  # records start on 2019-01-02
    assert "all available history is used" in got["medFallback"]


async def test_import_refuses_bad_rows_whole_and_names_each(settings, data_dir, runtime, tmp_path, imported):
    future = (datetime.now(UTC) + timedelta(days=3)).isoformat()
    bad = tmp_path / "bad.csv"
    bad.write_text(
        "id,feeder_id,start,end,customers_interrupted,cause,momentary\n"
        "ok1,case33bw,2023-02-01T10:00:00+00:00,2023-02-01T11:00:00+00:00,10,FAULT,false\n"
        "rev,case33bw,2023-02-02T10:00:00+00:00,2023-02-02T09:00:00+00:00,10,FAULT,false\n"
        "unk,feeder-x,2023-02-03T10:00:00+00:00,2023-02-03T11:00:00+00:00,10,FAULT,false\n"
        "neg,case33bw,2023-02-04T10:00:00+00:00,2023-02-04T11:00:00+00:00,-5,FAULT,false\n"
        f"fut,case33bw,{future},{future},1,FAULT,false\n"
        "ov1,cigre-mv,2023-03-01T10:00:00+00:00,2023-03-01T12:00:00+00:00,9000,FAULT,false\n"
        "ov2,cigre-mv,2023-03-01T11:00:00+00:00,2023-03-01T13:00:00+00:00,9000,FAULT,false\n"
        "mom,case33bw,2023-02-05T10:00:00+00:00,2023-02-05T11:00:00+00:00,10,MOMENTARY,true\n"
        "naive,case33bw,2023-02-06T10:00:00,2023-02-06T11:00:00+00:00,10,FAULT,false\n",
        encoding="utf-8")
    r = await adms("outages", "import", str(bad), env=store_env(settings, data_dir))
    assert r.returncode == 2, r.stdout
    err = r.stderr
    assert "nothing written" in err and "fix the rows and import again" in err
    assert "row 2 (id 'rev'): end before start" in err
    assert "row 3 (id 'unk'): feeder 'feeder-x' is unknown" in err
    assert "row 4 (id 'neg'): customers_interrupted -5 is negative" in err
    assert "row 5 (id 'fut')" in err and "in the future" in err
    assert "(id 'ov2'): overlaps row 6 (id 'ov1')" in err
    assert "row 8 (id 'mom'): momentary but lasts 60.0 min" in err
    assert "row 9 (id 'naive'): start" in err and "no UTC offset" in err
    rows = await runtime.store.list_records("Interruption", where={"id": "ok1"}, limit=1)
    assert rows == []  # the good row was not written either
    cust = tmp_path / "customers.csv"
    cust.write_text("feeder_id,year,customers\ncase33bw,2024,-3\nnope,2024,10\n", encoding="utf-8")
    r = await adms("customers", "import", str(cust), env=store_env(settings, data_dir))
    assert r.returncode == 2
    assert "row 1: customers -3 is negative" in r.stderr and "row 2: feeder 'nope' is unknown" in r.stderr
    missing = tmp_path / "short.csv"
    missing.write_text("id,feeder_id,start\n", encoding="utf-8")
    r = await adms("outages", "import", str(missing), env=store_env(settings, data_dir))
    assert r.returncode == 2 and "the header lacks end, customers_interrupted, cause, momentary" in r.stderr


async def test_import_twice_does_not_double_count(settings, data_dir, gql, imported):
    before = (await indices(gql))["data"]["reliabilityIndices"]
    r = await adms("outages", "import", str(imported), env=store_env(settings, data_dir))
    assert r.returncode == 0, r.stderr
    n = len(history_csv().splitlines()) - 1
    assert f"0 added, 0 updated, {n} unchanged" in r.stdout
    after = (await indices(gql))["data"]["reliabilityIndices"]
    assert after == before


CREATE = """mutation($kind: ReportKind!, $period: ReportPeriodInput!, $format: ReportFormat!) {
  createReport(kind: $kind, period: $period, format: $format) { id status }
}"""
REPORT = "query($id: ID!) { report(id: $id) { id status url sha256 contentSha256 noData error kind format } }"


async def run_report(gql, kind, fmt, p=None, role="VIEWER", token=None):
    r = await gql(CREATE, {"kind": kind, "period": p or period(), "format": fmt}, role=role, token=token)
    assert "errors" not in r, r
    job_id = r["data"]["createReport"]["id"]
    for _ in range(600):
        got = (await gql(REPORT, {"id": job_id}, role=role, token=token))["data"]["report"]
        if got["status"] in ("DONE", "FAILED"):
            assert got["status"] == "DONE", got
            return got
        await asyncio.sleep(0.1)
    raise AssertionError(f"report {job_id} did not finish")


async def download(http, mint, job, role="VIEWER", token=None):
    resp = await http.get(job["url"], headers={"Authorization": f"Bearer {token or mint(role)}"})
    assert resp.status_code == 200, resp.text
    assert hashlib.sha256(resp.content).hexdigest() == job["sha256"]
    return resp.content


def fmt4(v: float) -> str:
    return f"{v:.4f}"


async def test_reliability_report_pdf_xlsx_csv_read_back(gql, http, mint, imported):
    from openpyxl import load_workbook
    from pypdf import PdfReader

    api = (await indices(gql, ex=True))["data"]["reliabilityIndices"]
    api_all = (await indices(gql))["data"]["reliabilityIndices"]
    pdf_job = await run_report(gql, "RELIABILITY", "PDF")
    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(await download(http, mint, pdf_job))).pages)
    assert "Distribution reliability report 2024" in text
    assert pdf_job["contentSha256"] in text.replace("\n", "")
    assert "IEEE Std 1366-2022" in text and "Data sources" in text and "Generated at" in text
    assert fmt4(round(api["saidiMin"], 6)) in text and fmt4(round(api_all["saidiMin"], 6)) in text
    assert "2024-08-14" in text

    xlsx_job = await run_report(gql, "RELIABILITY", "XLSX")
    wb = load_workbook(io.BytesIO(await download(http, mint, xlsx_job)))
    summary = {r[0]: r[1] for r in wb["report"].iter_rows(values_only=True) if r and r[0]}
    assert summary["content_sha256"] == xlsx_job["contentSha256"] == pdf_job["contentSha256"]
    assert summary["SAIDI (min), excluding MED"] == pytest.approx(api["saidiMin"], abs=1e-6)
    assert summary["SAIFI, excluding MED"] == pytest.approx(api["saifi"], abs=1e-6)
    assert summary["MAIFIe, all days"] == pytest.approx(api_all["maifiE"], abs=1e-6)
    assert summary["T_MED (min)"] == pytest.approx(api["tMedMin"], abs=1e-6)
    meds = [r for r in wb["major_event_days"].iter_rows(values_only=True)][1:]
    assert [(d, pytest.approx(v, abs=1e-6)) for d, v in meds] == [
        (m["date"], m["saidiMin"]) for m in api["majorEventDays"]]
    feeders = {r[0]: r for r in wb["feeders"].iter_rows(values_only=True)}
    case = (await indices(gql, scope="FEEDER", id="case33bw", ex=True))["data"]["reliabilityIndices"]
    assert feeders["case33bw"][3] == pytest.approx(case["saidiMin"], abs=1e-6)

    csv_job = await run_report(gql, "RELIABILITY", "CSV")
    rows = list(csv.reader(io.StringIO((await download(http, mint, csv_job)).decode())))
    assert ["# content_sha256", csv_job["contentSha256"]] in rows
    # Reproducible: the same inputs give the same figures and the same hash.
    assert len({pdf_job["contentSha256"], xlsx_job["contentSha256"], csv_job["contentSha256"]}) == 1


async def test_downloads_need_report_permission(gql, http, mint, imported):
    job = await run_report(gql, "RELIABILITY", "CSV", p=period(datetime(2023, 1, 1, tzinfo=UTC),
                                                                datetime(2023, 2, 1, tzinfo=UTC)))
    assert (await http.get(job["url"])).status_code == 401
    assert (await http.get(job["url"], headers={"Authorization": f"Bearer {mint('CUSTOMER')}"})).status_code == 403
    scoped = mint("VIEWER", feeders=["case33bw"])
    assert (await http.get(job["url"], headers={"Authorization": f"Bearer {scoped}"})).status_code == 403
    wrong = job["url"].replace(".csv", ".pdf")
    assert (await http.get(wrong, headers={"Authorization": f"Bearer {mint('VIEWER')}"})).status_code == 404
    assert (await http.get("/reports/../../etc/passwd", headers={"Authorization": f"Bearer {mint('VIEWER')}"})
            ).status_code == 404
    r = await gql(CREATE, {"kind": "RELIABILITY", "period": period(), "format": "PDF"}, token=scoped)
    assert codes(r) == ["FORBIDDEN"]


async def test_a_report_of_a_period_without_data_says_so(gql, http, mint, imported):
    job = await run_report(gql, "RELIABILITY", "PDF", p=period(datetime(2012, 1, 1, tzinfo=UTC),
                                                                datetime(2013, 1, 1, tzinfo=UTC)))
    assert job["noData"] is True
    from pypdf import PdfReader

    text = "\n".join(p.extract_text() for p in PdfReader(io.BytesIO(await download(http, mint, job))).pages)
    assert "No interruption records begin in this period" in text
    future = datetime.now(UTC) + timedelta(days=40)
    r = await gql(CREATE, {"kind": "RELIABILITY", "period": period(future, future + timedelta(days=30)),
                           "format": "PDF"})
    assert codes(r) == ["BAD_INPUT"] and "future" in r["errors"][0]["message"]


async def test_operations_power_quality_and_audit_reports(gql, http, mint, imported):
    from openpyxl import load_workbook

    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    recent = period(today - timedelta(days=2), datetime.now(UTC))
    ops = await run_report(gql, "OPERATIONS", "XLSX", p=recent)
    wb = load_workbook(io.BytesIO(await download(http, mint, ops)))
    assert {"controls_by_operator", "fdir_plans", "alarms", "der_curtailment"} <= set(wb.sheetnames)
    pq = await run_report(gql, "POWER_QUALITY", "CSV", p=recent)
    body = (await download(http, mint, pq)).decode()
    assert "# table: locations" in body and "ansi_range_a_pct" in body
    # The audit report needs READ_AUDIT as well as READ_REPORTS.
    r = await gql(CREATE, {"kind": "AUDIT", "period": recent, "format": "PDF"}, role="VIEWER")
    assert codes(r) == ["FORBIDDEN"]
    auditor = mint("VIEWER", "SECAUD", sub="auditor-1")
    job = await run_report(gql, "AUDIT", "XLSX", p=recent, token=auditor)
    wb = load_workbook(io.BytesIO(await download(http, mint, job, token=auditor)))
    summary = {r[0]: r[1] for r in wb["report"].iter_rows(values_only=True) if r and r[0]}
    assert str(summary["Audit chain verification"]).startswith("INTACT")
    entries = list(wb["entries"].iter_rows(values_only=True))
    assert entries[0] == ("seq", "at_utc", "actor", "roles", "action", "target", "source", "outcome")
    assert any(e[4] == "REPORT_CREATE" for e in entries[1:])  # the reports created by the tests above
    viewer_jobs = await gql("{ reportJobs(first: 200) { edges { node { id kind } } } }")
    assert job["id"] not in {e["node"]["id"] for e in viewer_jobs["data"]["reportJobs"]["edges"]}
    assert (await http.get(job["url"], headers={"Authorization": f"Bearer {mint('VIEWER')}"})).status_code == 403


async def test_scheduled_reports(gql, runtime, imported):
    q = ("mutation($k: ReportKind!, $f: ReportFormat!, $q: ReportFrequency!) { createReportSchedule(kind: $k, "
         "format: $f, frequency: $q) { id frequency nextRunAt } }")
    v = {"k": "RELIABILITY", "f": "CSV", "q": "MONTHLY"}
    assert codes(await gql(q, v, role="VIEWER")) == ["FORBIDDEN"]
    r = await gql(q, v, role="ENGINEER")
    assert "errors" not in r, r
    sched = r["data"]["createReportSchedule"]
    nxt = datetime.fromisoformat(sched["nextRunAt"])
    assert nxt.astimezone(UTC).day == 1 and nxt.astimezone(UTC).hour == 2  # 02:00 on the 1st (DMS_TIMEZONE=UTC)
    listed = await gql("{ reportSchedules { id kind format frequency } }")
    assert sched["id"] in {s["id"] for s in listed["data"]["reportSchedules"]}
    # What the scheduler runs when it fires: last month's report (run it now rather than wait a month).
    job = (await gql("mutation($id: ID!) { runReportSchedule(id: $id) { id scheduleId periodStart periodEnd } }",
                     {"id": sched["id"]}, role="ENGINEER"))["data"]["runReportSchedule"]
    assert job["scheduleId"] == sched["id"]
    again = (await gql("mutation($id: ID!) { runReportSchedule(id: $id) { id } }", {"id": sched["id"]},
                       role="ENGINEER"))["data"]["runReportSchedule"]
    assert again["id"] == job["id"]  # a period's report is made once (a second replica's firing finds it)
    start, end = datetime.fromisoformat(job["periodStart"]), datetime.fromisoformat(job["periodEnd"])
    assert start.day == 1 and end.day == 1 and end > start and end <= datetime.now(UTC)
    await runtime.reports.wait()
    done = (await gql(REPORT, {"id": job["id"]}))["data"]["report"]
    assert done["status"] == "DONE" and done["url"].endswith(".csv")
    gone = await gql("mutation($id: ID!) { deleteReportSchedule(id: $id) { id } }", {"id": sched["id"]},
                     role="ENGINEER")
    assert "errors" not in gone
    listed = await gql("{ reportSchedules { id } }")
    assert sched["id"] not in {s["id"] for s in listed["data"]["reportSchedules"]}
    assert runtime.reports.next_run(sched["id"]) is None


async def test_a_replica_without_the_local_copy_serves_the_file_from_the_store(settings, gql, http, mint, imported):
    job = await run_report(gql, "RELIABILITY", "CSV", p=period(datetime(2022, 1, 1, tzinfo=UTC),
                                                                datetime(2022, 4, 1, tzinfo=UTC)))
    local = Path(settings.reports_root) / job["url"].rsplit("/", 1)[1]
    assert local.is_file()
    local.unlink()  # as on another API replica, which never wrote it
    body = await download(http, mint, job)
    assert local.read_bytes() == body  # cached again
    local.write_bytes(b"damaged")
    assert await download(http, mint, job) == body  # a damaged copy is not served
