"""Loopback admin interface of a running field simulator, and the client the ``dms sim`` CLI calls.

The simulator process serves a tiny JSON-over-HTTP API on 127.0.0.1 (a plain asyncio handler, no
framework) and writes ``<data_dir>/simulator.json`` (mode 0600) with its address and a random
admin token. Requests carry ``Authorization: Bearer <token>``; peers that are not loopback are
refused.

Routes (all ``POST`` with a JSON body, answers JSON):

* ``/fault`` ``{"feeder", "line", "permanent": true}`` -> ``{"tripped": "<switch id>"|null}``
* ``/clear`` ``{"feeder": null}``
* ``/comm-loss`` ``{"device", "on": true}``
* ``/malformed`` ``{"device", "mode": "truncate"|"oversize"|"function", "on": true}`` (a Modbus
  RTU answers reads with malformed frames; ``"on": false`` ends it)
* ``/load`` ``{"feeder", "scale"}``
* ``/stick`` ``{"switch", "on": true, "feeder": null}``
* ``/status`` ``{}`` (also ``GET``)
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import secrets
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from graph_schema.errors import BadInput, DmsError, NotFound
from graph_schema.model import Feeder
from protocols.certs import ensure_pki

if TYPE_CHECKING:  # the simulator imports pandapower (seconds); `dms sim ...` needs only the client
    from protocols.simulator import FieldSimulator

log = logging.getLogger(__name__)

STATE_FILE = "simulator.json"
POINTMAP_DIR = "pointmaps"
MAX_BODY = 64 * 1024


class SimulatorNotRunning(DmsError):
    code = "SIMULATOR_NOT_RUNNING"


def state_path(data_dir: str | Path) -> Path:
    return Path(data_dir) / STATE_FILE


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


class SimAdminServer:
    """Serves the admin routes for ``sim`` on ``host:port`` (0: a free port)."""

    def __init__(
        self, sim: FieldSimulator, data_dir: str | Path, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        if not ipaddress.ip_address(host).is_loopback:
            raise BadInput(f"the simulator admin interface listens on loopback only, not {host!r}")
        self.sim = sim
        self.data_dir = Path(data_dir)
        self.host = host
        self.port = port
        self.token = secrets.token_urlsafe(32)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        state = {
            "url": self.url,
            "host": self.host,
            "port": self.port,
            "token": self.token,
            "pid": os.getpid(),
            "started_at": datetime.now(UTC).isoformat(),
            "devices": {fid: [d.to_dict() for d in pm.devices] for fid, pm in self.sim.point_maps.items()},
        }
        _write_private(state_path(self.data_dir), json.dumps(state, indent=2))
        log.info("simulator admin on %s (state in %s)", self.url, state_path(self.data_dir))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        path = state_path(self.data_dir)
        with contextlib.suppress(OSError, ValueError):
            if json.loads(path.read_text(encoding="utf-8")).get("token") == self.token:
                path.unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, body = await self._serve_one(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ValueError):
            status, body = 400, {"error": {"code": "BAD_INPUT", "message": "malformed HTTP request"}}
        data = json.dumps(body).encode()
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}.get(
            status, "Error"
        )
        with contextlib.suppress(ConnectionError):
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()

    async def _serve_one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> tuple[int, Any]:
        peer = writer.get_extra_info("peername")
        if not peer or not ipaddress.ip_address(peer[0]).is_loopback:
            return 403, {"error": {"code": "FORBIDDEN", "message": "loopback only"}}
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        length = int(headers.get("content-length", "0") or 0)
        if length > MAX_BODY:
            return 400, {"error": {"code": "BAD_INPUT", "message": "body too large"}}
        raw = await asyncio.wait_for(reader.readexactly(length), timeout=5) if length else b""
        if not secrets.compare_digest(headers.get("authorization", ""), f"Bearer {self.token}"):
            return 401, {"error": {"code": "UNAUTHENTICATED", "message": "missing or wrong admin token"}}
        try:
            args = json.loads(raw) if raw else {}
            if not isinstance(args, dict):
                raise ValueError("body must be a JSON object")
        except ValueError as exc:
            return 400, {"error": {"code": "BAD_INPUT", "message": f"body is not a JSON object: {exc}"}}
        try:
            return 200, await self._route(method, path.split("?", 1)[0], args)
        except DmsError as exc:
            return (404 if isinstance(exc, NotFound) else 400), {
                "error": {"code": exc.code, "message": exc.message}
            }
        except (KeyError, TypeError, ValueError) as exc:
            return 400, {"error": {"code": "BAD_INPUT", "message": f"bad or missing argument: {exc}"}}

    async def _route(self, method: str, path: str, a: dict[str, Any]) -> dict[str, Any]:
        sim = self.sim
        if path == "/status" and method in ("GET", "POST"):
            return sim.status()
        if method != "POST":
            raise NotFound(f"no route {method} {path}")
        if path == "/fault":
            tripped = sim.inject_fault(
                str(a["feeder"]), str(a["line"]), permanent=bool(a.get("permanent", True))
            )
            return {"ok": True, "tripped": tripped}
        if path == "/clear":
            sim.clear(a.get("feeder"))
            return {"ok": True}
        if path == "/comm-loss":
            await sim.comm_loss(str(a["device"]), on=bool(a.get("on", True)))
            return {"ok": True}
        if path == "/malformed":
            on = bool(a.get("on", True))
            sim.malformed_frames(str(a["device"]), str(a.get("mode", "truncate")) if on else None)
            return {"ok": True}
        if path == "/load":
            sim.load_scale(str(a["feeder"]), float(a["scale"]))
            return {"ok": True}
        if path == "/stick":
            sim.stick_switch(str(a["switch"]), on=bool(a.get("on", True)), feeder_id=a.get("feeder"))
            return {"ok": True}
        raise NotFound(f"no route POST {path}; use /fault, /clear, /comm-loss, /malformed, /load, /stick or /status")


# ------------------------------------------------------------------------------------------------
# Client (what ``dms sim ...`` calls)
# ------------------------------------------------------------------------------------------------

_ROUTES = {
    "fault": "/fault",
    "clear": "/clear",
    "comm-loss": "/comm-loss",
    "comm_loss": "/comm-loss",
    "malformed": "/malformed",
    "load": "/load",
    "stick": "/stick",
    "status": "/status",
}


async def sim_command(data_dir: str | Path, command: str, *, dms: str = "dms", **args: Any) -> dict[str, Any]:
    """Send one admin command to the simulator of ``data_dir``; returns its JSON answer.

    ``command``: ``fault`` (feeder, line, permanent), ``clear`` (feeder=None), ``comm-loss``
    (device, on), ``malformed`` (device, mode: truncate/oversize/function, on), ``load``
    (feeder, scale), ``stick`` (switch, on, feeder=None), ``status``.
    Raises :class:`SimulatorNotRunning` when no simulator is running for ``data_dir`` (its message
    names ``dms``, how the user runs the CLI, e.g. ``.venv/bin/dms``), and :class:`DmsError` with the
    simulator's error code when it refuses the command.
    """
    route = _ROUTES.get(command)
    if route is None:
        raise BadInput(
            f"unknown simulator command {command!r}; use one of {sorted(set(_ROUTES) - {'comm_loss'})}"
        )
    path = state_path(data_dir)
    hint = (
        f"no field simulator is running for data directory {str(Path(data_dir))!r}; start `{dms} demo` or "
        f"`{dms} simulate` first (with --data-dir {str(Path(data_dir))!r})"
    )
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
        host, port, token = str(state["host"]), int(state["port"]), str(state["token"])
    except FileNotFoundError:
        raise SimulatorNotRunning(hint) from None
    except (OSError, ValueError, KeyError) as exc:
        raise SimulatorNotRunning(f"{hint} ({path} is unreadable: {exc})") from None
    body = json.dumps({k: v for k, v in args.items() if v is not None}).encode()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout=5)
    except (TimeoutError, OSError):
        raise SimulatorNotRunning(f"{hint} ({path} names {host}:{port}, which does not answer)") from None
    try:
        writer.write(
            f"POST {route} HTTP/1.1\r\nHost: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), timeout=30)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    head, _, payload = raw.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ", 2)[1])
        answer = json.loads(payload) if payload else {}
    except (IndexError, ValueError):
        raise DmsError(f"the simulator at {host}:{port} sent a malformed answer") from None
    if status != 200:
        err = answer.get("error", {}) if isinstance(answer, dict) else {}
        raise DmsError(str(err.get("message", f"HTTP {status}")), code=str(err.get("code", "INTERNAL")))
    return answer


# ------------------------------------------------------------------------------------------------
# Running a simulator for the demo / ``dms simulate``
# ------------------------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def simulator_session(
    feeders: Sequence[Feeder],
    data_dir: str | Path,
    *,
    speed: float = 1.0,
    allow_nosecurity: bool = False,
    tick_s: float = 1.0,
    host: str = "127.0.0.1",
) -> AsyncIterator[FieldSimulator]:
    """Start the simulator + admin interface; write point maps and PKI under ``data_dir``.

    Files: ``<data_dir>/pki/{simulator,headend}/`` (certificates; the head-end client uses
    ``headend`` and trusts ``simulator/cert.der``), ``<data_dir>/pointmaps/<feeder>.json`` (with
    the real ports), ``<data_dir>/simulator.json`` (admin address + token, 0600).
    """
    from protocols.simulator import FieldSimulator  # pandapower: seconds to import, so only here

    data_dir = Path(data_dir)
    pki = ensure_pki(data_dir)
    sim = FieldSimulator(
        feeders,
        host=host,
        certificate=pki.simulator,
        trusted_client_certs=[pki.headend.cert_path],
        allow_nosecurity=allow_nosecurity,
        speed=speed,
        tick_s=tick_s,
        ami_inbox=data_dir / "ami" / "inbox",  # smart-meter interval files for server.ami_ingest
    )
    admin = SimAdminServer(sim, data_dir)
    await sim.start()
    try:
        pm_dir = data_dir / POINTMAP_DIR
        pm_dir.mkdir(parents=True, exist_ok=True)
        for fid, pm in sim.point_maps.items():
            pm.save(pm_dir / f"{fid}.json")
        await admin.start()
        try:
            yield sim
        finally:
            await admin.stop()
    finally:
        await sim.stop()


async def run_simulator(
    feeders: Sequence[Feeder],
    data_dir: str | Path,
    *,
    speed: float = 1.0,
    allow_nosecurity: bool = False,
    tick_s: float = 1.0,
    stop: asyncio.Event | None = None,
) -> None:
    """Run the simulator until ``stop`` is set or the task is cancelled (``dms simulate``)."""
    async with simulator_session(
        feeders, data_dir, speed=speed, allow_nosecurity=allow_nosecurity, tick_s=tick_s
    ):
        if stop is None:
            await asyncio.Event().wait()
        else:
            await stop.wait()
