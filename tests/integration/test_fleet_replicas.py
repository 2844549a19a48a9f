"""Two API replicas on one Ray cluster share one set of feeder actors (issue #9).

The session's runtime is replica A; replica B is a real ``dms serve`` process connected to the same
local Ray (``DMS_RAY_ADDRESS``) and the same graph store. Both run a fleet, both ask the cluster's
supervisor to watch. Actors are killed on purpose while both run: each dead actor is recreated
exactly once (one new actor id per kill), and no live actor is ever replaced. ``DMS_SOAK_S`` makes
the soak longer (default 40 s; several minutes by hand).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import ray

from tests.integration.conftest import free_port

FEEDERS = ("case33bw", "cigre-mv")


def _actor_ids() -> dict[str, str | None]:
    """The live actor id of each feeder (None while its name is not registered: dead, being recreated)."""
    from actors.fleet import NAMESPACE, actor_name

    out: dict[str, str | None] = {}
    for fid in FEEDERS:
        try:
            out[fid] = ray.get_actor(actor_name(fid), namespace=NAMESPACE)._actor_id.hex()
        except ValueError:
            out[fid] = None
    return out


async def _wait(cond, timeout_s: float, what: str) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = await cond()
        if got:
            return got
        await asyncio.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def _start_serve(env: dict[str, str], log: Any) -> subprocess.Popen[bytes]:
    """``dms serve`` as an operator runs it (its own session, so a stuck one can be killed whole)."""
    return subprocess.Popen([sys.executable, "-m", "server.cli", "serve"], env=env, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
async def replica_b(settings: Any, runtime: Any, arcadedb: Any, tmp_path: Path):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_")}
    env.update({
        "DMS_DATA_DIR": str(tmp_path / "replica-b"),
        "DMS_HOST": "127.0.0.1",
        "DMS_PORT": str(port),
        "DMS_NEO4J_URI": arcadedb.uri,
        "DMS_NEO4J_USER": arcadedb.user,
        "DMS_NEO4J_PASSWORD": arcadedb.password.reveal(),
        "DMS_NEO4J_DATABASE": arcadedb.database,
        "DMS_RAY_ADDRESS": ray.get_runtime_context().gcs_address,
        "DMS_AUDIT_KEY_FILE": str(settings.data_dir / "audit" / "audit.key"),  # replicas share the key
        "DMS_LOG_LEVEL": "WARNING",
    })
    log = (tmp_path / "replica-b.log").open("w")
    proc = _start_serve(env, log)
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=5) as http:

            async def ready() -> bool:
                if proc.poll() is not None:
                    raise AssertionError(f"replica B exited {proc.returncode}: "
                                         f"{(tmp_path / 'replica-b.log').read_text()[-3000:]}")
                try:
                    return (await http.get("/readyz")).status_code == 200
                except httpx.HTTPError:
                    return False

            await _wait(ready, 120, "replica B to be ready")
            yield http
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        log.close()


async def test_two_replicas_share_the_actors_and_each_dead_actor_is_recreated_once(runtime: Any, replica_b: Any):
    fleet = runtime.fleet
    sup = await fleet._supervisor()
    before = _actor_ids()
    restarts_before = await sup.restarts.remote()
    soak_s = float(os.environ.get("DMS_SOAK_S", "40"))
    kills: dict[str, list[str]] = {fid: [] for fid in FEEDERS}
    assert all(before.values()), before
    seen: dict[str, list[str | None]] = {fid: [before[fid]] for fid in FEEDERS}
    t_end = time.monotonic() + soak_s
    n = 0
    while time.monotonic() < t_end:
        victim = FEEDERS[n % len(FEEDERS)]
        current = _actor_ids()
        for fid in FEEDERS:
            if seen[fid][-1] != current[fid]:
                seen[fid].append(current[fid])
        kills[victim].append(current[victim])
        ray.kill(ray.get_actor(f"feeder:{victim}", namespace="dms"), no_restart=True)

        async def replaced(victim: str = victim, dead: str = current[victim]) -> bool:
            ids = _actor_ids()
            if ids[victim] in (None, dead):
                return False
            ping = await fleet.call(victim, "ping")  # served by the replacement
            return bool(ping["feeder_id"] == victim)

        await _wait(replaced, 90, f"{victim} to be recreated")
        # both replicas keep serving through it
        assert (await replica_b.get("/readyz")).status_code in (200, 503)
        n += 1
        await asyncio.sleep(min(5.0, max(0.0, t_end - time.monotonic())))
    after = _actor_ids()
    for fid in FEEDERS:
        if seen[fid][-1] != after[fid]:
            seen[fid].append(after[fid])
    restarts_after = await sup.restarts.remote()
    for fid in FEEDERS:
        # exactly one new actor per kill: no replica recreated it twice, none killed a live one
        assert len(seen[fid]) == len(kills[fid]) + 1, (fid, seen[fid], kills[fid])
        assert seen[fid][:-1] == kills[fid], (fid, seen[fid], kills[fid])
        assert restarts_after.get(fid, 0) - restarts_before.get(fid, 0) == len(kills[fid])

    async def both_ready() -> bool:
        return (await replica_b.get("/readyz")).status_code == 200

    await _wait(both_ready, 60, "replica B ready after the drill")
    assert n >= 2
