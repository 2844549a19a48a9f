"""End to end: GraphiQL renders in a real browser with no internet (#18.6).

A headless Chromium whose resolver answers NOTFOUND for every host but 127.0.0.1 (no internet, as on
an operator's isolated machine) loads the IDE page from a real server on loopback; the GraphiQL
editor must render, which needs every script to load from the server and run under the page's
``script-src 'self'``. Needs no store and no Ray: the app runs without its lifespan and with an
authenticator that lets every request through anonymously. Skipped where Chromium is not installed
(``apt-get install -y chromium``)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from server.auth import AuthResult

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install -y chromium)")


class _Anonymous:
    async def authenticate(self, token: str | None, *, source: str, channel: str = "http",
                           record: bool = True) -> AuthResult:
        return AuthResult(None, None)


@pytest.fixture
async def ide_url(tmp_path: Path) -> AsyncIterator[str]:
    import uvicorn

    from server.app import create_app
    from server.settings import Settings
    from tests.integration.conftest import free_port

    app = create_app(Settings.from_env({}, data_dir=tmp_path / "data", graphiql=True, introspection=True))
    app.state.services.auth = _Anonymous()
    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, lifespan="off"))
    task = asyncio.create_task(srv.serve())
    try:
        for _ in range(600):  # 30 s
            if srv.started:
                break
            await asyncio.sleep(0.05)
        assert srv.started, "the server did not start"
        yield f"http://127.0.0.1:{port}/graphql"
    finally:
        srv.should_exit = True
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


async def _chromium(tmp_path: Path, *args: str) -> tuple[str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        f"--user-data-dir={tmp_path / 'profile'}", "--no-proxy-server",
        "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",  # no internet
        "--window-size=1280,800", "--virtual-time-budget=10000", "--enable-logging=stderr", "--v=0", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 90)
    finally:
        if proc.returncode is None:  # its own session: the renderer and GPU processes go with it
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
    assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode(errors="replace"), err.decode(errors="replace")


async def test_graphiql_editor_renders_without_internet(ide_url: str, tmp_path: Path) -> None:
    dom, log = await _chromium(tmp_path, "--dump-dom", ide_url)
    assert "Loading GraphiQL..." not in dom, "start.js did not run"
    for element in ("graphiql-container", "graphiql-query-editor", "graphiql-execute-button", "CodeMirror"):
        assert element in dom, f"{element} missing from the rendered page"
    assert "Content Security Policy" not in log and "Refused to" not in log
    shot = tmp_path / "graphiql.png"
    await _chromium(tmp_path, f"--screenshot={shot}", ide_url)
    assert shot.stat().st_size > 10_000  # a blank page is ~5 KB
    print(f"screenshot: {shot}")
