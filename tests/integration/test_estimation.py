"""State estimation end to end: a sparsely metered, noisy field simulator (Modbus TCP and OPC UA on
loopback) feeds the actors; the estimate served over GraphQL is compared with the simulator's truth,
a gross error is identified, alarmed and cleared, and the feeder goes back to the model when the
field is detached. No timing is asserted (generous waits only)."""

from __future__ import annotations

import statistics
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.conftest import bound_field, shared_field_paused
from tests.integration.test_realtime import wait_for

FEEDER_Q = """query F($id: ID!) { feeder(id: $id) { powerFlow { source stale converged }
  buses { id vmPu vmStdPu observed pseudoShare } loads { id pMw source } } }"""
SE_Q = """query S($id: ID!) { stateEstimation(feederId: $id) { feederId source converged stale staleReason runs
  chi2 chi2Threshold realMeasurements pseudoMeasurements observedBuses buses excludedBadQuality
  pseudoSources { source count }
  suspectMeasurements { pointIds quality value estimated normalizedResidual }
  suspectSwitchStatuses { switchId reportedOpen } } }"""


@pytest.fixture(scope="module")
async def sparse_field(settings, runtime) -> AsyncIterator[Any]:
    from graph_schema.importers import case33bw, cigre_mv
    from protocols.certs import ensure_pki
    from protocols.simulator import FieldSimulator

    pki = ensure_pki(settings.data_dir)
    sim = FieldSimulator([case33bw(), cigre_mv()], certificate=pki.simulator,
                         trusted_client_certs=[pki.headend.cert_path], tick_s=0.5, operate_delay_s=0.1,
                         metering="sparse", meas_noise=0.002, seed=11)
    with shared_field_paused():
        async with sim, bound_field(runtime, sim, ("case33bw", "cigre-mv")):
            yield sim


async def _estimated(gql, fid: str) -> dict[str, Any] | None:
    r = await gql(FEEDER_Q, {"id": fid})
    assert "errors" not in r, r
    f = r["data"]["feeder"]
    return f if f["powerFlow"]["source"] == "ESTIMATED" and all(b["vmStdPu"] for b in f["buses"] if b["vmPu"]) \
        else None


@pytest.mark.parametrize("fid", ["case33bw", "cigre-mv"])
async def test_sparse_estimate_is_within_its_stated_error_of_the_simulators_truth(gql, sparse_field, fid):
    f = await wait_for(lambda: _estimated(gql, fid), within_s=60, step=0.5)
    truth = sparse_field.truth(fid)
    errs, outside = [], []
    for b in f["buses"]:
        t = truth.vm_pu.get(b["id"])
        if b["vmPu"] is None or t is None:
            continue
        err = abs(b["vmPu"] - t)
        errs.append(err)
        if err > 4 * b["vmStdPu"] + 0.003:  # the truth moves a little between the scan and now
            outside.append((b["id"], err, b["vmStdPu"]))
    assert statistics.mean(errs) < 0.01 and max(errs) < 0.03, errs
    assert len(outside) <= len(errs) // 10, outside
    assert any(b["observed"] for b in f["buses"])
    assert [ld["id"] for ld in f["loads"] if ld["source"] != "ESTIMATED"] == []
    r = await gql(SE_Q, {"id": fid})
    se = r["data"]["stateEstimation"]
    assert se["source"] == "ESTIMATED" and se["converged"] and se["realMeasurements"] > 0
    assert se["pseudoMeasurements"] > 0 and se["observedBuses"] < se["buses"] + 1
    assert {"source": "PROFILE", "count": se["pseudoSources"][0]["count"]} in se["pseudoSources"]


async def test_a_gross_error_is_flagged_suspect_alarmed_and_cleared(gql, sparse_field, runtime):
    sim = sparse_field
    pid = "case33bw/line5/P_MW"
    true_value = sim.value(pid)
    assert true_value is not None
    await sim.force_value(pid, float(true_value) + 1.5)

    async def flagged():
        se = (await gql(SE_Q, {"id": "case33bw"}))["data"]["stateEstimation"]
        return se if any(pid in s["pointIds"] for s in se["suspectMeasurements"]) else None

    se = await wait_for(flagged, within_s=60, step=0.5)
    s = next(s for s in se["suspectMeasurements"] if pid in s["pointIds"])
    assert s["quality"] == "SUSPECT" and s["normalizedResidual"] > 3
    assert abs(s["estimated"] - float(true_value)) < 0.5
    alarms = await runtime.fleet.call("case33bw", "alarms")
    assert any(a.key[1] == pid and a.key[2] == "BAD_DATA" for a in alarms)
    ms = (await gql('query M($f: ID!) { measurements(feederId: $f) { pointId quality estimatorQuality '
                    'normalizedResidual } }', {"f": "case33bw"}))["data"]["measurements"]
    m = next(m for m in ms if m["pointId"] == pid)
    assert m["quality"] == "GOOD" and m["estimatorQuality"] == "SUSPECT" and m["normalizedResidual"] > 3
    assert all(x["estimatorQuality"] is None for x in ms if x["pointId"] not in s["pointIds"])
    await sim.force_value(pid, None)

    async def cleared():
        se = (await gql(SE_Q, {"id": "case33bw"}))["data"]["stateEstimation"]
        return not any(pid in s["pointIds"] for s in se["suspectMeasurements"])

    await wait_for(cleared, within_s=60, step=0.5)
    await wait_for(lambda: _no_bad_data_alarm(runtime, pid), within_s=30, step=0.5)


async def _no_bad_data_alarm(runtime, pid: str) -> bool:
    return not any(a.key[1] == pid and a.key[2] == "BAD_DATA" for a in await runtime.fleet.call("case33bw", "alarms"))


async def test_fresh_meter_intervals_become_the_estimators_pseudo_measurements(gql, sparse_field, runtime, settings):
    """A 15-minute AMI file that just arrived in the drop folder: the ingester writes it to the
    historian and hands each load's average to the feeder's estimator (source AMI)."""
    from datetime import UTC, datetime, timedelta

    from graph_schema.importers import case33bw
    from protocols.ami_sim import AmiRecorder, floor_interval
    from server.ami_ingest import ami_dirs

    feeder = case33bw()
    truth = sparse_field.truth("case33bw").load_p_mw
    rec = AmiRecorder(ami_dirs(settings.data_dir)[0], [feeder], seed=3, noise=0.0)
    end = floor_interval(datetime.now(UTC))
    on = {ld.id: True for ld in feeder.loads}
    for t in (end - timedelta(minutes=29), end - timedelta(minutes=15), end):  # a partial interval, then a whole one
        rec.observe("case33bw", t, truth, on)
    assert rec.files_written == 1
    ingester = runtime.extras["ami_ingest"]
    pushed = ingester.pushed

    async def handed_over():  # by this call, or by the ingester's own loop if it found the file first
        await ingester.run_once()
        return ingester.pushed > pushed

    await wait_for(handed_over, within_s=30, step=0.5)

    async def from_ami():
        se = (await gql(SE_Q, {"id": "case33bw"}))["data"]["stateEstimation"]
        counts = {p["source"]: p["count"] for p in se["pseudoSources"]}
        return counts if counts.get("AMI", 0) >= len(feeder.loads) else None  # P and Q of every load

    counts = await wait_for(from_ami, within_s=60, step=0.5)
    assert "PROFILE" not in counts, counts


async def test_state_estimation_of_an_unknown_feeder_is_not_found(gql):
    r = await gql(SE_Q, {"id": "no-such-feeder"})
    assert r["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    assert "no-such-feeder" in r["errors"][0]["message"]


async def test_detached_feeder_goes_back_to_the_model(gql, runtime, field_sim):
    """cigre-mv's own module-less state: not bound here (the sparse field above belongs to its
    tests); a feeder with no field reports MODEL and its estimator says so."""
    r = await gql(SE_Q, {"id": "case33bw-ua"})
    if "errors" in r:  # the OPC UA copy is made by the session simulator; absent, use the report directly
        pytest.skip("case33bw-ua not imported in this session")
    se = r["data"]["stateEstimation"]
    assert se["source"] == "MODEL"
    f = (await gql(FEEDER_Q, {"id": "case33bw-ua"}))["data"]["feeder"]
    assert f["powerFlow"]["source"] == "MODEL"
    assert all(b["vmStdPu"] is None for b in f["buses"])


@pytest.mark.parametrize(("fid", "switch"), [("case33bw", "sw33"), ("cigre-mv", "sw4")])
async def test_a_wrong_switch_status_is_reported_as_suspect_and_not_accepted(gql, sparse_field, runtime, fid, switch):
    """A normally-open tie whose status point says closed: the measurements fit it open, so the
    estimator reports the status as suspect, alarms, and estimates with the tie open."""
    sim = sparse_field
    assert sim.switch_is_open(fid, switch)
    sim.report_wrong_status(fid, switch)
    try:
        async def suspected():
            se = (await gql(SE_Q, {"id": fid}))["data"]["stateEstimation"]
            return se if {"switchId": switch, "reportedOpen": False} in se["suspectSwitchStatuses"] else None

        se = await wait_for(suspected, within_s=90, step=0.5)
        assert se["converged"] and not se["stale"]
        assert se["chi2"] <= se["chi2Threshold"], "the estimate is the one with the corrected status"
        alarms = await runtime.fleet.call(fid, "alarms")
        assert any(a.key[1] == switch and a.key[2] == "SWITCH_STATUS_SUSPECT" for a in alarms)
    finally:
        sim.report_wrong_status(fid, switch, on=False)

    async def cleared():
        se = (await gql(SE_Q, {"id": fid}))["data"]["stateEstimation"]
        alarms = await runtime.fleet.call(fid, "alarms")
        return not se["suspectSwitchStatuses"] and not any(
            a.key[1] == switch and a.key[2] == "SWITCH_STATUS_SUSPECT" for a in alarms)

    await wait_for(cleared, within_s=90, step=0.5)

