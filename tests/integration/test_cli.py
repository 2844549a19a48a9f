"""The `dms` command line as a user runs it: real subprocesses against the real graph store."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.integration.conftest import free_port


def dms(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_")}
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "server.cli", *args], env=full_env, capture_output=True,
                          text=True, timeout=timeout)


async def adms(*args: str, env: dict[str, str] | None = None, limit_s: float = 120) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(dms, *args, env=env, timeout=limit_s)


def store_env(settings: Any, data_dir: Path, **extra: str) -> dict[str, str]:
    return {"DMS_NEO4J_URI": settings.neo4j_uri, "DMS_NEO4J_USER": settings.neo4j_user,
            "DMS_NEO4J_PASSWORD": settings.neo4j_password.reveal(), "DMS_NEO4J_DATABASE": settings.neo4j_database,
            "DMS_DATA_DIR": str(data_dir), **extra}


def no_new_children(before: set[int]) -> list[str]:
    me = psutil.Process()
    return [f"{p.pid} {p.name()}" for p in me.children(recursive=True) if p.pid not in before]


async def test_serve_with_unreachable_store_fails_with_one_clear_line(tmp_path):
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    port = free_port()
    r = await adms("serve", "--port", str(free_port()),
                   env={"DMS_NEO4J_URI": f"bolt://127.0.0.1:{port}", "DMS_NEO4J_PASSWORD": "s3cret-pw",
                        "DMS_DATA_DIR": str(tmp_path)})
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.startswith("dms serve:")]
    assert len(lines) == 1, r.stderr
    assert "DMS_NEO4J_URI" in lines[0] and str(port) in lines[0]
    assert "s3cret-pw" not in r.stderr + r.stdout
    assert no_new_children(before) == []


async def test_serve_with_wrong_password_names_the_variables(settings, tmp_path):
    r = await adms("serve", "--port", str(free_port()),
                   env={**store_env(settings, tmp_path), "DMS_NEO4J_PASSWORD": "definitely-wrong-pw"})
    assert r.returncode != 0
    assert "DMS_NEO4J_PASSWORD" in r.stderr
    assert "definitely-wrong-pw" not in r.stderr + r.stdout


async def test_bad_setting_value_names_the_variable(tmp_path):
    r = await adms("serve", env={"DMS_PORT": "eighty", "DMS_DATA_DIR": str(tmp_path)})
    assert r.returncode != 0
    assert "DMS_PORT='eighty'" in r.stderr


def _bad_net_file(path: Path) -> Path:
    import pandapower as pp

    net = pp.create_empty_network()
    b0 = pp.create_bus(net, vn_kv=20.0)
    b1 = pp.create_bus(net, vn_kv=20.0)
    b2 = pp.create_bus(net, vn_kv=20.0)  # island: no line reaches it
    pp.create_ext_grid(net, b0)
    pp.create_line_from_parameters(net, b0, b1, length_km=-1.0, r_ohm_per_km=0.1, x_ohm_per_km=0.1,
                                   c_nf_per_km=10, max_i_ka=0.4)
    pp.create_load(net, b1, p_mw=0.1)
    pp.create_load(net, b2, p_mw=0.1)
    pp.to_json(net, str(path))
    return path


async def test_import_of_an_invalid_model_lists_every_problem_and_writes_nothing(settings, data_dir, runtime,
                                                                                 tmp_path):
    bad = _bad_net_file(tmp_path / "broken-feeder.json")
    before = [f.id for f in await runtime.store.list_feeders()]
    r = await adms("import", str(bad), env=store_env(settings, data_dir))
    assert r.returncode != 0
    assert "nothing was written" in r.stderr
    assert "length" in r.stderr  # the negative length
    assert "bus2" in r.stderr  # the bus no source can reach
    assert [f.id for f in await runtime.store.list_feeders()] == before


async def test_import_of_garbage_names_the_file(settings, data_dir, tmp_path):
    junk = tmp_path / "junk.json"
    junk.write_text("{ not json")
    r = await adms("import", str(junk), env=store_env(settings, data_dir))
    assert r.returncode != 0 and "junk.json" in r.stderr


# pandapower's own mv_oberrhein() loader warns about its stored tap data while it builds the net.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_imported_feeder_is_served_by_the_running_server(settings, data_dir, runtime, gql, tmp_path):
    import pandapower as pp
    import pandapower.networks as pn

    path = tmp_path / "mv-oberrhein.json"
    pp.to_json(pn.mv_oberrhein(), str(path))
    r = await adms("import", str(path), "--id", "oberrhein", "--name", "MV Oberrhein",
                   env=store_env(settings, data_dir))
    try:
        assert r.returncode == 0, r.stderr
        assert "imported feeder 'oberrhein'" in r.stdout
        from security.audit import AuditLog

        newest = (await AuditLog(runtime.store).page(limit=20, newest_first=True))
        imports = [e for e in newest if e.action == "MODEL_IMPORT" and e.target == "oberrhein"]
        assert imports, [(e.action, e.target) for e in newest]
        assert imports[0].actor.startswith("os:") and imports[0].outcome == "OK"
        assert "mv-oberrhein.json" in imports[0].detail
        # On the server's keyed chain, under the server's key: `dms audit verify` can check it.
        assert imports[0].keyed and imports[0].key_id == runtime.audit.key_id
        again = await adms("import", str(path), "--id", "oberrhein", env=store_env(settings, data_dir))
        assert again.returncode != 0 and "--replace" in again.stderr
        # The fleet's watcher starts the new feeder's actor within a few seconds.
        for _ in range(60):
            res = await gql('{ feeder(id: "oberrhein") { powerFlow { converged } } }')
            if "errors" not in res:
                break
            await asyncio.sleep(0.5)
        assert res["data"]["feeder"]["powerFlow"]["converged"] is True, res
    finally:
        if await runtime.store.feeder_exists("oberrhein"):
            await runtime.store.delete_feeder("oberrhein")


async def test_token_command(tmp_path):
    ok = await adms("token", "--role", "operator", "--sub", "alice", "--ttl", "15m", "--data-dir", str(tmp_path))
    assert ok.returncode == 0 and ok.stdout.count(".") == 2
    bad = await adms("token", "--role", "overlord", "--data-dir", str(tmp_path))
    assert bad.returncode != 0 and "unknown role" in bad.stderr and "OPERATOR" in bad.stderr
    ttl = await adms("token", "--role", "VIEWER", "--ttl", "soon", "--data-dir", str(tmp_path))
    assert ttl.returncode != 0 and "duration" in ttl.stderr


async def test_token_command_mints_a_customer_token_for_one_account(tmp_path):
    import base64

    ok = await adms("token", "--role", "CUSTOMER", "--customer-account", "ACC-1001", "--data-dir", str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    payload = ok.stdout.strip().split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    assert claims["customer_account"] == "ACC-1001" and claims["roles"] == ["CUSTOMER"]
    wrong = await adms("token", "--role", "OPERATOR", "--customer-account", "ACC-1001", "--data-dir", str(tmp_path))
    assert wrong.returncode != 0 and "--role CUSTOMER" in wrong.stderr


async def test_sim_command_without_a_simulator_says_what_to_do(tmp_path):
    r = await adms("sim", "clear", "--data-dir", str(tmp_path))
    assert r.returncode != 0
    assert str(tmp_path) in r.stderr and "dms demo" in r.stderr


@pytest.mark.parametrize("args", [["--help"], ["sim", "--help"], ["audit", "verify", "--help"]])
def test_help(args):
    assert dms(*args).returncode == 0


def test_run_file_is_private(tmp_path):
    from server.cli import _write_run_file
    from server.settings import Settings

    path = _write_run_file(Settings.from_env({}, data_dir=tmp_path), {"pid": 1})
    assert json.loads(path.read_text()) == {"pid": 1}
    assert path.stat().st_mode & 0o077 == 0


async def test_demo_starts_serves_and_stops_cleanly_on_sigterm(tmp_path):
    """`dms demo` end to end: embedded store, Ray, simulator, server; SIGTERM leaves nothing running."""
    import signal

    import httpx

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", "demo", "--data-dir", str(tmp_path), "--port", str(port),
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    descendants: set[int] = set()
    try:
        url = f"http://127.0.0.1:{port}"
        async with httpx.AsyncClient(base_url=url, timeout=10) as c:
            for _ in range(240):
                try:
                    if (await c.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert proc.returncode is None, "dms demo exited during start-up"
                await asyncio.sleep(0.5)
            descendants = {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
            token = (await adms("token", "--role", "VIEWER", "--data-dir", str(tmp_path))).stdout.strip()
            r = await c.post("/graphql", json={"query": '{ feeder(id: "case33bw") { model: powerFlow(source: MODEL) '
                                                        '{ lossesMw } live: powerFlow { source lossesMw } } }'},
                             headers={"Authorization": f"Bearer {token}"})
            feeder = r.json()["data"]["feeder"]
            assert feeder["model"]["lossesMw"] == pytest.approx(0.2027, abs=1e-4)
            assert feeder["live"]["source"] in ("MODEL", "ESTIMATED") and feeder["live"]["lossesMw"] > 0
            sim = await adms("sim", "load", "--feeder", "cigre-mv", "--scale", "1.1", "--data-dir", str(tmp_path))
            assert sim.returncode == 0, sim.stderr
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=90)
        text = out.decode(errors="replace")
        assert proc.returncode == 0, text[-3000:]
        assert "Traceback" not in text, text[-3000:]
        await asyncio.sleep(1.0)
        alive = [pid for pid in descendants if psutil.pid_exists(pid) and psutil.Process(pid).status() != "zombie"]
        assert alive == [], f"left running after the demo: {alive}"
        assert not (tmp_path / "run.json").exists()
    finally:
        if proc.returncode is None:  # a failed assertion: stop it the way an operator would, then make sure
            with contextlib.suppress(psutil.Error):
                descendants |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 60)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        for pid in descendants:  # the store's java, Ray and the simulator must not outlive a failed test
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()


async def test_pointmap_import_validates_against_the_feeder_and_stores_it(settings, data_dir, runtime, tmp_path):
    import dataclasses

    from protocols.pointmap import generate_point_map

    model = await runtime.grid.model("cigre-mv")
    pm = generate_point_map(model, modbus_port=1502, opcua_endpoint="opc.tcp://127.0.0.1:4841/dms/cigre-mv")
    good = tmp_path / "cigre-mv.points.json"
    good.write_text(pm.to_json())
    r = await adms("pointmap", "import", str(good), env=store_env(settings, data_dir))
    assert r.returncode == 0, r.stderr
    rows = await runtime.store.list_records("PointMap", feeder_id="cigre-mv", limit=5)
    assert len(rows) == 1 and '"cigre-mv"' in rows[0]["json"]

    broken = dataclasses.replace(pm.points[0], element_id="no-such-switch")
    bad = tmp_path / "broken.points.json"
    bad.write_text(dataclasses.replace(pm, points=(broken, *pm.points[1:])).to_json())
    r = await adms("pointmap", "import", str(bad), env=store_env(settings, data_dir))
    assert r.returncode != 0
    assert broken.point_id in r.stderr and "no-such-switch" in r.stderr
    rows_after = await runtime.store.list_records("PointMap", feeder_id="cigre-mv", limit=5)
    assert rows_after[0]["json"] == rows[0]["json"]  # nothing written


async def test_demo_on_a_taken_port_fails_at_once_in_one_line_and_starts_nothing(tmp_path):
    import socket
    import time

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        started = time.monotonic()
        r = await adms("demo", "--port", str(port), "--data-dir", str(tmp_path / "data"))
        took_s = time.monotonic() - started
    assert r.returncode != 0
    assert r.stdout == "", r.stdout  # no URL, no token hint: nothing was served
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("dms demo:") and f"port {port}" in lines[0] and "--port" in lines[0]
    assert took_s < 30, f"failing on a taken port took {took_s:.0f} s: something started first"
    assert not (tmp_path / "data" / "arcadedb").exists()  # the graph store never started
    assert no_new_children(before) == []


async def test_serve_on_an_address_not_of_this_machine_names_it(tmp_path):
    r = await adms("serve", "--host", "192.0.2.123", "--port", "8000",
                   env={"DMS_DATA_DIR": str(tmp_path), "DMS_NEO4J_URI": "bolt://127.0.0.1:1"})
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "192.0.2.123" in lines[0] and "--host" in lines[0], r.stderr


def test_one_off_commands_import_neither_ray_nor_pandapower():
    """`dms token`, `dms audit verify`, `dms import`'s store session: seconds of Ray and pandapower
    imports (and pandapower's "Failed to import plotly" line) are for the commands that run them."""
    code = ("import sys, server.cli, server.runtime, graph_schema.importers, security.audit; "
            "print(sorted(m for m in ('ray', 'pandapower') if m in sys.modules))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "[]"


def test_sim_commands_do_not_import_pandapower_and_name_a_runnable_dms(tmp_path):
    """`dms sim ...` is a small HTTP client: it took ~4 s when the client module imported the
    simulator (pandapower). Its "not running" hint names a `dms` the user can run (``.venv/bin/dms``
    when the venv is not on PATH), like the demo's banner."""
    code = ("import sys, server.cli\n"
            "d = ['--data-dir', sys.argv[1]]\n"
            "rcs = {server.cli.main(a + d) for a in (['sim', 'clear'], ['sim', 'stick', '--switch', 'sw5'],\n"
            "       ['sim', 'fault', '--feeder', 'case33bw', '--line', 'line5'], ['sim', 'load', '--feeder',\n"
            "       'case33bw', '--scale', '1.2'], ['sim', 'comm-loss', '--device', 'case33bw/rtu1'])}\n"
            "print(sorted(rcs), sorted(m for m in ('ray', 'pandapower', 'protocols.simulator') if m in sys.modules))")
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMS_")}
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                       env=env)
    assert r.stdout.strip() == "[2] []", (r.stdout, r.stderr)  # 2: every one refused, none crashed
    assert "no field simulator is running" in r.stderr
    named = {w.split()[0] for w in re.findall(r"`([^`]+) (?:demo|simulate)`", r.stderr)}
    assert len(named) == 1, r.stderr
    (command,) = named
    assert shutil.which(command) or Path(command).is_file(), f"{command!r} is not runnable from here"


def test_no_plotly_chatter_when_pandapower_is_imported(tmp_path):
    # One line on stderr, whatever `dms sim` imports.
    r = dms("sim", "clear", "--data-dir", str(tmp_path))
    assert r.returncode != 0 and "no field simulator is running" in r.stderr
    assert "Failed to import plotly" not in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr


async def test_simulate_runs_and_refuses_an_unknown_feeder_in_one_line(tmp_path):
    bad = await adms("simulate", "--feeder", "nope", "--data-dir", str(tmp_path))
    assert bad.returncode != 0 and bad.stderr.strip().splitlines() == [
        "dms simulate: unknown demo feeder(s) nope; known: case33bw, cigre-mv"], bad.stderr
    # The simulator alone starts, writes its admin file, answers `dms sim`, and stops on SIGTERM.
    import signal

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "server.cli", "simulate", "--feeder", "case33bw", "--data-dir", str(tmp_path),
        env={k: v for k, v in os.environ.items() if not k.startswith("DMS_")},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        for _ in range(240):
            if (tmp_path / "simulator.json").exists():
                break
            assert proc.returncode is None, (await proc.stdout.read()).decode()[-2000:]
            await asyncio.sleep(0.5)
        for args in (["clear"], ["stick", "--feeder", "case33bw", "--switch", "sw5"],
                     ["stick", "--feeder", "case33bw", "--switch", "sw5", "--release"],
                     ["comm-loss", "--device", "case33bw/rtu1"],
                     ["comm-loss", "--device", "case33bw/rtu1", "--restore"]):
            r = await adms("sim", *args, "--data-dir", str(tmp_path))
            assert r.returncode == 0, (args, r.stderr)
        proc.send_signal(signal.SIGTERM)
        out, _ = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, out.decode()[-2000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
