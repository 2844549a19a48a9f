"""The embedded ArcadeDB server: start, readiness, persistence, crash recovery, failure and cleanup."""

from __future__ import annotations

import os
import signal
import socket
import stat
from pathlib import Path

import psutil
import pytest

from graph_schema.arcadedb import EmbeddedArcadeDB, free_port
from graph_schema.errors import StoreUnavailable
from graph_schema.store import GraphStore
from tests.integration.store_fixtures import small_feeder


def _java_on(root: Path) -> list[psutil.Process]:
    """Java processes serving ``root`` (ours: matched by the exact rootPath flag)."""
    flag = f"-Darcadedb.server.rootPath={root}"
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if flag in (p.info["cmdline"] or []):
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


async def test_session_server_is_private_and_logged(arcadedb: EmbeddedArcadeDB) -> None:
    assert arcadedb.running
    assert arcadedb.uri.startswith("bolt://127.0.0.1:")
    assert arcadedb.user == "root"
    assert "**" in repr(arcadedb.password)
    pw_file = arcadedb.root / "root-password"
    assert stat.S_IMODE(pw_file.stat().st_mode) == 0o600
    assert pw_file.read_text().strip() == arcadedb.password.reveal()
    # The password went through an @argfile that is gone now, not through the command line.
    assert not (arcadedb.root / "jvm-secret.args").exists()
    proc = psutil.Process(arcadedb.pid)
    assert all(arcadedb.password.reveal() not in part for part in proc.cmdline())
    assert os.getpgid(arcadedb.pid) == arcadedb.pid  # own process group
    assert "ArcadeDB Server" in arcadedb.log_path.read_text()


async def test_data_survives_restart_and_sigkill(tmp_path: Path) -> None:
    db = EmbeddedArcadeDB(tmp_path, database="persist")
    feeder = small_feeder("persisted")
    try:
        await db.start()
        store = await GraphStore.connect(db.uri, db.user, db.password, db.database)
        await store.save_feeder(feeder)
        await db.stop()
        assert not db.running
        await db.stop()  # idempotent
        with pytest.raises(StoreUnavailable, match="running"):
            await store.ping()
        await store.close()

        # Same data dir, no password given: the stored one is reused.
        db = EmbeddedArcadeDB(tmp_path, database="persist")
        await db.start()
        store = await GraphStore.connect(db.uri, db.user, db.password, db.database)
        assert await store.load_feeder("persisted") == feeder
        await store.set_switch_state("persisted", "tie", False)
        await store.close()

        # A crash: committed writes come back from the write-ahead log.
        assert db.pid is not None
        os.killpg(db.pid, signal.SIGKILL)
        await db.stop()
        db = EmbeddedArcadeDB(tmp_path, database="persist")
        await db.start()
        store = await GraphStore.connect(db.uri, db.user, db.password, db.database)
        assert (await store.switch_states("persisted"))["tie"] is False
        await store.close()
    finally:
        await db.stop()
    assert _java_on(db.root) == []


async def test_busy_port_fails_cleanly(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        db = EmbeddedArcadeDB(tmp_path, bolt_port=port)
        with pytest.raises(StoreUnavailable) as info:
            await db.start(timeout_s=60)
    message = str(info.value)
    assert str(port) in message
    assert "server.log" in message
    assert not db.running
    assert _java_on(db.root) == []
    assert not (db.root / "jvm-secret.args").exists()


async def test_wrong_root_password_for_existing_data(tmp_path: Path) -> None:
    # Created with one password, restarted with another: a clear error, nothing left running.
    db = EmbeddedArcadeDB(tmp_path, root_password="first-password-123")
    async with db:
        pass
    other = EmbeddedArcadeDB(tmp_path, root_password="second-password-456")
    with pytest.raises(StoreUnavailable) as info:
        await other.start(timeout_s=60)
    assert "root password" in str(info.value)
    assert "second-password-456" not in str(info.value)
    assert _java_on(other.root) == []


def test_free_port_is_bindable() -> None:
    port = free_port()
    assert 1024 <= port <= 65535
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # raises OSError (EADDRINUSE) if it was not free
        assert s.getsockname() == ("127.0.0.1", port)


async def test_stop_while_the_supervisor_waits_to_restart_leaves_nothing(tmp_path: Path) -> None:
    import asyncio
    import time

    db = EmbeddedArcadeDB(tmp_path, database="supervised")
    await db.start()
    try:
        db.supervise(min_backoff_s=30.0)  # it will wait 30 s before restarting: stop() comes first
        supervisor = db._supervisor
        assert supervisor is not None
        dead = db.pid
        assert dead is not None
        os.kill(dead, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while db.pid is not None:  # the supervisor saw the exit, reaped it and is backing off
            assert time.monotonic() < deadline, "the supervisor did not notice the dead server"
            await asyncio.sleep(0.1)
        assert not psutil.pid_exists(dead) or psutil.Process(dead).status() != psutil.STATUS_ZOMBIE
    finally:
        await db.stop()
    assert supervisor.done()  # no restart can follow
    assert not db.running and _java_on(db.root) == []
    assert not (db.root / "server.pid").exists()
