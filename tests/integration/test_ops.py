"""What an operator of the deployment relies on: readiness, health, metrics, logs."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import time

import httpx
import neo4j
import pytest
import uvicorn

from tests.integration.conftest import free_port


async def _serve(app):
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on"))
    task = asyncio.create_task(srv.serve())
    for _ in range(200):
        if srv.started:
            break
        await asyncio.sleep(0.05)
    return srv, task, f"http://127.0.0.1:{port}"


async def test_readyz_is_false_while_the_graph_store_is_down(settings, runtime):
    from graph_schema.store import GraphStore
    from server.app import create_app

    dead = GraphStore(neo4j.AsyncGraphDatabase.driver(f"bolt://127.0.0.1:{free_port()}",
                                                      auth=("root", "x"), connection_timeout=1.0), "grid")
    rt = dataclasses.replace(runtime, store=dead)
    srv, task, url = await _serve(create_app(settings, rt))
    try:
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            r = await c.get("/readyz")
            assert r.status_code == 503
            assert r.json()["checks"]["store"].startswith("unavailable")
            assert (await c.get("/healthz")).status_code == 200  # the process itself is fine
    finally:
        srv.should_exit = True
        await asyncio.wait_for(task, timeout=10)
        await dead.close()


async def test_readyz_is_false_while_a_feeder_actor_is_down_and_recovers(http, runtime, gql):
    with runtime.fleet.watch_paused():  # else the watcher may recreate it before /readyz looks
        runtime.fleet.kill("cigre-mv")
        deadline = time.monotonic() + 15  # ray.kill is asynchronous: wait for the actor to be gone
        while True:
            r = await http.get("/readyz")
            if r.status_code == 503 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert r.status_code == 503, r.text
        assert r.json()["checks"]["feeders"]["cigre-mv"] == "down"
        # The next call recreates it from the store (the watcher would too).
        assert "errors" not in await gql('{ feeder(id: "cigre-mv") { id } }')
    for _ in range(50):
        if (await http.get("/readyz")).status_code == 200:
            break
        await asyncio.sleep(0.2)
    assert (await http.get("/readyz")).status_code == 200


async def test_metrics_expose_http_graphql_and_actor_series(http, gql):
    await gql("query OpsProbe { feeders { id } }")
    text = (await http.get("/metrics")).text
    assert 'dms_graphql_request_seconds_count{operation="OpsProbe",type="query"}' in text
    assert 'dms_http_requests_total{route="/graphql",status="200"}' in text
    assert 'dms_feeder_actor_restarts{feeder="cigre-mv"}' in text
    assert 'dms_solver_last_seconds{feeder="case33bw"}' in text
    assert 'dms_telemetry_values_total{feeder="case33bw"}' in text
    assert 'dms_app_up{app="fdir",feeder="case33bw",state="RUNNING"} 1.0' in text  # hosted applications
    assert 'dms_app_slow_steps_total{app="fdir",feeder="case33bw"}' in text
    assert 'dms_control_outcomes_unrecorded{feeder="case33bw"} 0.0' in text  # records before the field
    assert "dms_audit_entries_unstored 0.0" in text
    assert "dms_graphql_subscriptions_active" in text or "# HELP dms_graphql_subscriptions_active" in text


async def test_a_bad_opcua_certificate_folder_stops_start_up_naming_it(settings, tmp_path):
    from graph_schema.errors import ConfigError
    from server.runtime import start_runtime

    with pytest.raises(ConfigError, match=r"DMS_OPCUA_PKI_DIR=.*lacks cert\.der or cert\.pem and key\.pem"):
        await start_runtime(dataclasses.replace(settings, opcua_pki_dir=str(tmp_path)))


async def test_a_killed_embedded_store_is_reaped_restarted_and_readyz_recovers(settings, runtime, tmp_path):
    """SIGKILL the java of an embedded store started the way the runtime starts it: /readyz turns
    503, the dead child is reaped (no zombie), the store is restarted on the same port with its
    data, and /readyz is 200 again within a bound, without restarting the server."""
    import psutil

    from server.app import create_app
    from server.runtime import start_store
    from tests.integration.store_fixtures import small_feeder, unique_id

    own = dataclasses.replace(settings, neo4j_uri=None, data_dir=tmp_path)
    store, arcadedb = await start_store(own)
    assert arcadedb is not None
    srv = task = None
    try:
        feeder = small_feeder(unique_id("wal"))
        await store.save_feeder(feeder)
        rt = dataclasses.replace(runtime, store=store, arcadedb=arcadedb)
        srv, task, url = await _serve(create_app(own, rt))
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:

            async def ready_status_within(status: int, bound_s: float) -> float:
                started = time.monotonic()
                while (await c.get("/readyz")).status_code != status:
                    assert time.monotonic() - started < bound_s, f"/readyz not {status} within {bound_s} s"
                    await asyncio.sleep(0.1)
                return time.monotonic() - started

            await ready_status_within(200, 30)
            dead_pid, uri = arcadedb.pid, arcadedb.uri
            assert dead_pid is not None
            os.kill(dead_pid, signal.SIGKILL)
            await ready_status_within(503, 10)
            await ready_status_within(200, 90)
            # /readyz can answer as soon as the new java does, a moment before the supervisor counts it
            for _ in range(300):  # up to 30 s
                if arcadedb.restarts:
                    break
                await asyncio.sleep(0.1)
        assert arcadedb.restarts == 1 and arcadedb.uri == uri and arcadedb.pid != dead_pid
        zombie = psutil.pid_exists(dead_pid) and psutil.Process(dead_pid).status() == psutil.STATUS_ZOMBIE
        assert not zombie, f"the killed ArcadeDB (pid {dead_pid}) was left a zombie"
        assert await store.feeder_exists(feeder.id)  # recovered from its write-ahead log
    finally:
        if srv is not None and task is not None:
            srv.should_exit = True
            await asyncio.wait_for(task, timeout=10)
        await store.close()
        await arcadedb.stop()
    assert not arcadedb.running
