"""Real components for integration tests, started once per session and torn down at the end.

- ``arcadedb``/``store``: a local ArcadeDB server over Bolt (tests/integration/store_fixtures.py);
- ``ray_local``: a real local Ray with token authentication (token in the session's data dir);
- ``runtime``: graph store + the demo feeders + one feeder actor each (server.runtime);
- ``server``: the real Starlette app under uvicorn on 127.0.0.1 and a free port;
- ``gql``: POSTs GraphQL over real HTTP with a bearer token minted for a role;
- ``field_sim``: one field simulator per session (real Modbus TCP + OPC UA servers on loopback) for
  ``case33bw`` (switchgear on Modbus RTUs, analogs on OPC UA) and ``case33bw-ua``, a copy of it
  imported for the session with everything on OPC UA (``split="opcua_only"``).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from tests.integration.store_fixtures import *  # noqa: F403  (arcadedb, store fixtures)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dms-data")


@pytest.fixture(scope="session")
def ray_local(data_dir: Path):
    from actors.fleet import connect_ray, shutdown_ray

    started = connect_ray(address=None, data_dir=data_dir, num_cpus=2)
    yield
    if started:
        shutdown_ray()


@pytest.fixture(scope="session")
def settings(data_dir: Path, arcadedb: Any):
    from server.settings import Settings

    return Settings.from_env(
        {},
        data_dir=data_dir,
        neo4j_uri=arcadedb.uri,
        neo4j_user=arcadedb.user,
        neo4j_password=arcadedb.password,
        neo4j_database=arcadedb.database,
        rate_limit_per_minute=100_000,
        scan_interval_s=0.2,
        select_timeout_s=3.0,
        confirm_timeout_s=3.0,
        # FDIR holds plans for approval unless a test switches a feeder to AUTOMATIC itself.
        fdir_mode="ADVISORY",
        fdir_settle_s=0.5,
    )


@pytest.fixture(scope="session")
async def runtime(settings: Any, ray_local: None) -> AsyncIterator[Any]:
    from server.runtime import start_runtime

    rt = await start_runtime(settings, demo_feeders=True)
    yield rt
    await rt.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    base_url: str
    ws_url: str
    app: Any


@pytest.fixture(scope="session")
async def server(settings: Any, runtime: Any) -> AsyncIterator[RunningServer]:
    from server.app import create_app

    app = create_app(settings, runtime)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="on",
                            ws="websockets-sansio", ws_max_size=settings.max_body_bytes)
    srv = uvicorn.Server(config)
    task = asyncio.create_task(srv.serve())
    for _ in range(200):
        if srv.started:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.05)
    yield RunningServer(f"http://127.0.0.1:{port}", f"ws://127.0.0.1:{port}/graphql", app)
    srv.should_exit = True
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, timeout=15)


@pytest.fixture(scope="session")
def mint(settings: Any) -> Callable[..., str]:
    from security.tokens import LocalSigningKey, mint_token

    key = LocalSigningKey(settings.data_dir)

    def _mint(*roles: str, sub: str | None = None, ttl_s: int = 600, feeders: list[str] | None = None) -> str:
        return mint_token(key, role=list(roles), sub=sub or roles[0].lower(), ttl_s=ttl_s,
                          issuer=settings.auth_issuer, audience=settings.auth_audience, feeders=feeders)

    return _mint


@pytest.fixture(scope="session")
async def http(server: RunningServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
        yield client


GqlFn = Callable[..., Awaitable[dict[str, Any]]]


@pytest.fixture(scope="session")
def gql(http: httpx.AsyncClient, mint: Callable[..., str]) -> GqlFn:
    async def _gql(query: str, variables: dict[str, Any] | None = None, *, role: str | None = "VIEWER",
                   token: str | None = None, expect_status: int | None = 200) -> dict[str, Any]:
        headers = {}
        if token is None and role is not None:
            token = mint(role)
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        resp = await http.post("/graphql", json={"query": query, "variables": variables or {}}, headers=headers)
        if expect_status is not None:
            assert resp.status_code == expect_status, resp.text
        return resp.json()

    return _gql


async def wait_for(fn: Callable[[], Awaitable[Any]], timeout_s: float, step: float = 0.25) -> Any:
    """Await ``fn()`` until it answers something truthy (returned), at most ``timeout_s``; the
    failure names the last answer."""
    import time

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        last = await fn()
        if last:
            return last
        await asyncio.sleep(step)
    raise AssertionError(f"condition not reached in {timeout_s} s; last: {last}")


UA_FEEDER = "case33bw-ua"
_shared_sims: list[Any] = []  # the session's field_sim, once some module has started it


@contextlib.contextmanager
def shared_field_paused() -> Iterator[None]:
    """For a module that runs a simulator of its own: the session's shared simulator (unbound
    meanwhile) stops solving, so two simulators do not share the test process's two cores."""
    sims = list(_shared_sims)
    for sim in sims:
        sim.paused = True
    try:
        yield
    finally:
        for sim in sims:
            sim.paused = False


@contextlib.asynccontextmanager
async def bound_field(runtime: Any, sim: Any, feeders: tuple[str, ...], ready_within_s: float = 30.0
                      ) -> AsyncIterator[Any]:
    """Attach ``feeders`` to the simulator, wait until every device answers, and hand them back as
    built at the end (:func:`release_field`)."""
    import time

    from server.field import attach

    for fid in feeders:
        await attach(runtime, runtime.settings, sim.point_maps[fid])
    deadline = time.monotonic() + ready_within_s
    while True:
        states = [await runtime.fleet.call(fid, "field_status") for fid in feeders]
        if all(st["devices"] and all(st["devices"].values()) for st in states):
            break
        if time.monotonic() > deadline:
            raise AssertionError(f"field devices not all answering within {ready_within_s} s: {states}")
        await asyncio.sleep(0.25)
    try:
        yield sim
    finally:
        await release_field(runtime, sim, feeders)


async def release_field(runtime: Any, sim: Any, feeders: tuple[str, ...], timeout_s: float = 20.0) -> None:
    """End of a module that drove the field: reset the simulator, let the actors see the normal
    switch states, detach, and put back any switch the actor (and so the store) still holds
    off-normal, so the next module starts from the feeder as built whatever happened here."""
    import time

    await sim.reset()
    models = {fid: await runtime.grid.model(fid) for fid in feeders}

    async def off_normal(fid: str) -> dict[str, bool]:
        state = await runtime.fleet.call(fid, "state")
        return {s.id: s.normally_open for s in models[fid].switches if state.switch_states[s.id] != s.normally_open}

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any([await off_normal(fid) for fid in feeders]):
            break
        await asyncio.sleep(0.25)
    for fid in feeders:
        await runtime.fleet.detach_field(fid)
        for switch_id, normal in (await off_normal(fid)).items():
            await runtime.fleet.call(fid, "set_switch_state", switch_id, normal)


@pytest.fixture(scope="session")
async def field_sim(settings: Any, runtime: Any) -> AsyncIterator[Any]:
    """The simulator (not yet attached: test modules attach and detach the actors themselves)."""
    from dataclasses import replace

    from graph_schema.importers import case33bw, cigre_mv
    from protocols.certs import ensure_pki
    from protocols.pointmap import generate_point_map
    from protocols.simulator import FieldSimulator

    base = case33bw()
    ua = replace(base, id=UA_FEEDER, name="Baran & Wu, all on OPC UA")
    await runtime.grid.import_feeder(ua, replace=True)
    pki = ensure_pki(settings.data_dir)
    maps = {UA_FEEDER: generate_point_map(ua, opcua_endpoint=f"opc.tcp://127.0.0.1:0/dms/{UA_FEEDER}",
                                          split="opcua_only")}
    sim = FieldSimulator([base, ua, cigre_mv()], point_maps=maps, certificate=pki.simulator,
                         trusted_client_certs=[pki.headend.cert_path], tick_s=0.2, operate_delay_s=0.1,
                         reclose_delay_s=0.6)
    async with sim:
        _shared_sims.append(sim)
        try:
            yield sim
        finally:
            _shared_sims.remove(sim)
    with contextlib.suppress(Exception):
        await runtime.store.delete_feeder(UA_FEEDER)
        await runtime.fleet.stop_feeder(UA_FEEDER)
