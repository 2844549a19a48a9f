"""The local Ray as ``dms demo`` starts it: loopback only, session folders under the data directory.

Each test starts Ray in a child process (``connect_ray`` exactly as the runtime calls it, plus one
actor so a worker listens too), so the session Ray of the other integration tests is not involved.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import json, os, sys, time
from pathlib import Path
import psutil, ray
from actors.fleet import connect_ray, shutdown_ray

data_dir = Path(sys.argv[1])
assert connect_ray(address=None, data_dir=data_dir, num_cpus=1)

@ray.remote(num_cpus=0)
class Probe:
    def pid(self):
        return os.getpid()

probe = Probe.remote()
worker_pid = ray.get(probe.pid.remote(), timeout=120)
me = psutil.Process()
# The autoscaler monitor, log monitor and agents start alongside the raylet; wait until the process
# tree stops growing (bounded) so every listener is counted.
seen, stable_since = set(), time.monotonic()
deadline = time.monotonic() + 30
while time.monotonic() < deadline and time.monotonic() - stable_since < 3:
    now = {p.pid for p in me.children(recursive=True)}
    if now != seen:
        seen, stable_since = now, time.monotonic()
    time.sleep(0.2)
listeners = []
for p in [me, *me.children(recursive=True)]:
    try:
        for c in p.net_connections(kind="inet"):
            if c.status == psutil.CONN_LISTEN:
                listeners.append([p.pid, " ".join(p.cmdline())[:120], c.laddr.ip, c.laddr.port])
    except psutil.NoSuchProcess:
        pass
node_ip = ray.nodes()[0]["NodeManagerAddress"]
session_dir = ray._private.worker._global_node.get_session_dir_path()
pids = [p.pid for p in me.children(recursive=True)]
shutdown_ray()
print(json.dumps({"listeners": listeners, "node_ip": node_ip, "session_dir": session_dir,
                  "worker_pid": worker_pid, "pids": pids}))
"""


def _run_local_ray(data_dir: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DMS_", "RAY_"))}
    r = subprocess.run([sys.executable, "-c", _SCRIPT, str(data_dir)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _is_loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    return addr.is_loopback


def _none_left(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            p = psutil.Process(pid)
            p.wait(timeout=15)  # shutdown_ray has returned; its processes end within moments
        except psutil.NoSuchProcess:
            continue
        except psutil.TimeoutExpired:
            alive.append(pid)
    return alive


def test_local_ray_listens_on_loopback_only_and_keeps_its_session_under_the_data_dir():
    # A short data directory (pytest's tmp_path is too long for Ray's sockets: see the next test).
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="dms-") as tmp:
        _check_local_ray(Path(tmp))


def _check_local_ray(tmp_path: Path) -> None:
    out = _run_local_ray(tmp_path)
    assert out["listeners"], "no listening socket found: the probe did not see Ray's processes"
    exposed = [entry for entry in out["listeners"] if not _is_loopback(entry[2])]
    assert exposed == [], f"Ray processes listening beyond loopback: {exposed}"
    assert out["node_ip"] == "127.0.0.1"
    # Ray's gRPC servers (GCS, raylet, the worker) are among the listeners, all on loopback.
    names = " ".join(entry[1] for entry in out["listeners"])
    assert "gcs_server" in names and "raylet" in names
    session = Path(out["session_dir"])
    assert session.parent == (tmp_path / "ray").resolve(), session
    assert session.is_dir()
    assert _none_left(out["pids"]) == []


def test_a_data_dir_too_long_for_unix_sockets_gets_a_short_private_ray_folder():
    from actors.fleet import local_ray_temp_dir

    with tempfile.TemporaryDirectory() as tmp:
        long_dir = Path(tmp) / ("d" * 90)
        folder = local_ray_temp_dir(long_dir)
        assert len(str(folder)) + 64 <= 107
        assert folder.stat().st_mode & 0o077 == 0 and folder.parent.stat().st_uid == os.getuid()
        assert local_ray_temp_dir(long_dir) == folder  # stable per data directory
        assert local_ray_temp_dir(Path(tmp) / ("e" * 90)) != folder  # not shared between data directories
        short = local_ray_temp_dir(Path(tmp) / "short")
        assert short == (Path(tmp) / "short" / "ray").resolve()
        folder.rmdir()
        local_ray_temp_dir(Path(tmp) / ("e" * 90)).rmdir()
