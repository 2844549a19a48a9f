"""The ``dms`` command line.

``dms demo``      embedded graph store, demo feeders, Ray, field simulator and the server.
``dms serve``     the server on the configured components (``DMS_*`` settings).
``dms import``    import a pandapower JSON feeder (refused whole, with every problem listed, if invalid).
``dms token``     mint a bearer token from the local signing key.
``dms sim ...``   drive the field simulator of a running demo (fault, clear, comm-loss, load, stick).
``dms simulate``  run the field simulator alone.
``dms audit verify``  check the audit hash chain and name the first broken entry.
``dms outages import FILE``   import a utility's interruption history (CSV; validated whole, idempotent by id).
``dms customers import FILE`` customers served per feeder and year (CSV; overrides the model's counts).

Every failure prints one clear line to stderr and exits non-zero; nothing is left running.
``demo`` and ``serve`` take their listening socket (host and port) before they start anything else,
so a taken port fails at once instead of after the graph store, Ray and the actors have started.

Commands import what they need when they run: Ray, pandapower and the simulator take seconds to
import, and ``dms token`` or ``dms audit verify`` need none of them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import sys
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from graph_schema.errors import ConfigError, DmsError
from server.settings import Settings

log = logging.getLogger("dms")

RUN_FILE = "run.json"


def _ttl(value: str) -> int:
    m = re.fullmatch(r"(\d+)\s*([smhd]?)", value.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"{value!r} is not a duration; use e.g. 90s, 15m, 1h or 1d")
    n, unit = int(m.group(1)), m.group(2) or "s"
    return n * {"s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dms", description="DMS head-end")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser, *, server: bool = False) -> None:
        sp.add_argument("--data-dir", type=Path, default=None, help="data directory (DMS_DATA_DIR; default .dms)")
        if server:
            sp.add_argument("--host", default=None, help="listen address (DMS_HOST; default 127.0.0.1)")
            sp.add_argument("--port", type=int, default=None, help="listen port (DMS_PORT; default 8000)")

    d = sub.add_parser("demo", help="run everything locally on embedded defaults")
    common(d, server=True)
    d.add_argument("--speed", type=float, default=1.0, help="simulator clock speed factor")
    d.add_argument("--no-simulator", action="store_true", help="do not start the field simulator")

    s = sub.add_parser("serve", help="run the server on the configured components")
    common(s, server=True)

    i = sub.add_parser("import", help="import a feeder from a pandapower JSON file")
    common(i)
    i.add_argument("file", type=Path)
    i.add_argument("--id", dest="feeder_id", default=None, help="feeder id (default: the file name)")
    i.add_argument("--name", default=None)
    i.add_argument("--replace", action="store_true", help="replace a feeder of the same id")

    pm = sub.add_parser("pointmap", help="field point maps")
    pmsub = pm.add_subparsers(dest="pointmap_command", required=True)
    pmi = pmsub.add_parser("import", help="validate a point map file against its feeder and store it")
    common(pmi)
    pmi.add_argument("file", type=Path)

    t = sub.add_parser("token", help="mint a bearer token from the local signing key")
    common(t)
    t.add_argument("--role", action="append", required=True, help="role (repeat for several)")
    t.add_argument("--sub", default=None, help="subject (default: the role name in lower case)")
    t.add_argument("--ttl", type=_ttl, default=3600, help="lifetime, e.g. 15m, 1h (default 1h)")
    t.add_argument("--feeders", default=None, help="comma-separated feeder ids this token is limited to")
    t.add_argument("--customer-account", default=None,
                   help="the customer account a CUSTOMER token acts for (its meters' energy usage), or a VEN "
                        "token (the OpenADR 3 VEN of that account)")

    sim = sub.add_parser("sim", help="drive the field simulator of a running demo")
    simsub = sim.add_subparsers(dest="sim_command", required=True)
    f = simsub.add_parser("fault", help="inject a fault on a line")
    common(f)
    f.add_argument("--feeder", required=True)
    f.add_argument("--line", required=True)
    f.add_argument("--temporary", action="store_true", help="a temporary fault (trip and reclose)")
    c = simsub.add_parser("clear", help="clear injected faults")
    common(c)
    cl = simsub.add_parser("comm-loss", help="make a field device stop answering")
    common(cl)
    cl.add_argument("--device", required=True)
    cl.add_argument("--restore", action="store_true", help="end the communication loss")
    ld = simsub.add_parser("load", help="scale a feeder's load")
    common(ld)
    ld.add_argument("--feeder", required=True)
    ld.add_argument("--scale", type=float, required=True)
    st = simsub.add_parser("stick", help="make a switch refuse to move")
    common(st)
    st.add_argument("--switch", required=True)
    st.add_argument("--feeder", default=None, help="the switch's feeder (switch ids repeat across feeders)")
    st.add_argument("--release", action="store_true", help="let the switch move again")

    sm = sub.add_parser("simulate", help="run the field simulator alone")
    common(sm)
    sm.add_argument("--feeder", action="append", default=None, help="demo feeder id (default: all)")
    sm.add_argument("--speed", type=float, default=1.0)

    h = sub.add_parser("history", help="historian tools")
    hsub = h.add_subparsers(dest="history_command", required=True)
    hb = hsub.add_parser("backfill", help="fill the historian with N days of plausible past data")
    common(hb)
    hb.add_argument("--days", type=int, default=60, help="days of 15-minute history up to now (default 60)")
    hb.add_argument("--feeder", action="append", help="demo feeder id (repeatable; default: all demo feeders)")
    hb.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")

    o = sub.add_parser("outages", help="interruption history for the reliability reports")
    osub = o.add_subparsers(dest="outages_command", required=True)
    oi = osub.add_parser("import", help="import interruption history from CSV "
                                        "(id,feeder_id,start,end,customers_interrupted,cause,momentary)")
    common(oi)
    oi.add_argument("file", type=Path)
    cu = sub.add_parser("customers", help="customers served per feeder and year")
    cusub = cu.add_subparsers(dest="customers_command", required=True)
    ci = cusub.add_parser("import", help="import customers served from CSV (feeder_id,year,customers[,zone])")
    common(ci)
    ci.add_argument("file", type=Path)

    a = sub.add_parser("audit", help="audit log tools")
    asub = a.add_subparsers(dest="audit_command", required=True)
    v = asub.add_parser("verify", help="verify the audit hash chain")
    common(v)
    return p


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    overrides: dict[str, Any] = {}
    if getattr(args, "data_dir", None) is not None:
        overrides["data_dir"] = args.data_dir
    for key in ("host", "port"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    overrides.update(extra)
    return Settings.from_env(**overrides)


def _setup_logging(settings: Settings) -> None:
    from server.logs import configure_logging

    configure_logging(settings.log_level, json_logs=settings.log_json)
    # pandapower logs "Failed to import plotly - interactive plotting will not be available" at
    # INFO when it is imported (pandapower.plotting.plotly.*): plotting is not used here.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        logging.getLogger("pandapower.plotting").setLevel(logging.WARNING)


def _dms_command() -> str:
    """How the user can run ``dms`` from here: ``dms`` when that is this installation on PATH,
    else the console script beside this interpreter (e.g. ``.venv/bin/dms``), else ``python -m``."""
    script = Path(sys.executable).parent / "dms"
    on_path = shutil.which("dms")
    if on_path and script.exists() and Path(on_path).resolve() == script.resolve():
        return "dms"
    if script.exists():
        rel = os.path.relpath(script)
        return rel if not rel.startswith("..") else str(script)
    return f"{sys.executable} -m server.cli"


def _listen_socket(settings: Settings) -> socket.socket:
    """Bind and listen on ``settings.host:settings.port`` now, before anything else starts.

    The socket is handed to uvicorn, so nothing can take the port in between. A taken port, an
    address that is not this machine's or a privileged port fails with one line naming it and the
    fix.
    """
    host, port = settings.host, settings.port
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(
            f"listen address {host!r} (--host, DMS_HOST) does not resolve ({exc.strerror}); use 127.0.0.1 "
            "or an address of this machine"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(
                f"port {port} on {host} is already in use; stop what listens there, or choose another "
                f"port with --port (DMS_PORT)"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ConfigError(
                f"{host!r} is not an address of this machine; listen on 127.0.0.1 or one of its own "
                "addresses with --host (DMS_HOST)"
            ) from None
        if exc.errno == errno.EACCES:
            raise ConfigError(
                f"listening on port {port} needs privileges; choose a port above 1023 with --port (DMS_PORT)"
            ) from None
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); choose another --host/--port") from None
    return sock


def _is_dms_process(pid: int) -> bool:
    """Whether ``pid`` is a dms command (a run file's pid may have been reused by now)."""
    import psutil

    try:
        cmdline = " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False
    return "server.cli" in cmdline or "dms" in cmdline


def _refuse_second_server(settings: Settings) -> None:
    """One server per data directory: its graph store, Ray folders and run file are not shared."""
    running = _read_run_file(settings)
    if running and running.get("pid") != os.getpid() and _is_dms_process(running["pid"]):
        raise ConfigError(
            f"a dms server (pid {running['pid']}, {running.get('url', '?')}) is already running on data "
            f"directory {settings.data_dir}; stop it first, or use another --data-dir"
        )


def _write_run_file(settings: Settings, info: dict[str, Any]) -> Path:
    path = settings.data_dir / RUN_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
    return path


def _read_run_file(settings: Settings) -> dict[str, Any] | None:
    path = settings.data_dir / RUN_FILE
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    pid = info.get("pid")
    if not isinstance(pid, int):
        return None
    try:
        os.kill(pid, 0)
    except OSError:
        return None
    return info


# -- server ------------------------------------------------------------------------------------


def _graceful_server(config: Any) -> Any:
    """A uvicorn server that stops gracefully on SIGINT/SIGTERM and does NOT re-raise the signal
    afterwards (uvicorn does, which would interrupt our own shutdown of the simulator, the actors,
    Ray and the graph store that follows ``serve()``)."""
    import threading

    import uvicorn

    class Server(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            loop = asyncio.get_running_loop()
            signals = (signal.SIGINT, signal.SIGTERM)
            # Loop-level handlers replace _run's task-cancel handler while serving.
            for sig in signals:
                loop.add_signal_handler(sig, self.handle_exit, sig, None)
            try:
                yield
            finally:
                # Shutting down: further signals must not cut the clean-up short (SIGKILL still can).
                for sig in signals:
                    loop.add_signal_handler(sig, log.warning, "already shutting down; please wait")

    return Server(config)


async def _serve(settings: Settings, sock: socket.socket, *, demo: bool, speed: float = 1.0,
                 simulator: bool = True) -> int:
    import uvicorn

    from server.app import create_app
    from server.runtime import start_runtime

    runtime = await start_runtime(settings, demo_feeders=demo)
    sim_handle = None
    try:
        if demo:  # the Volt/VAR demo feeder too (the test fixtures' runtime leaves it out: one actor less)
            from graph_schema.importers import VOLTVAR_FEEDERS

            for fid, build in VOLTVAR_FEEDERS.items():
                if fid not in runtime.fleet.feeder_ids:
                    await runtime.grid.import_feeder(build())
        if demo:  # first start: fill an empty historian in the background (seconds; see README)
            feeders = [await runtime.grid.model(fid) for fid in runtime.fleet.feeder_ids]
            runtime.extras["ami_ingest"].backfill_if_empty(feeders)  # type: ignore[attr-defined]
        if demo and simulator:
            from server.field import start_field

            sim_handle = await start_field(runtime, settings, speed=speed)
        elif not demo:
            from server.field import attach_stored

            attached = await attach_stored(runtime, settings)
            if attached:
                log.info("field bindings (point maps in the store): %s", ", ".join(attached))
        app = create_app(settings, runtime)
        config = uvicorn.Config(
            app,
            host=settings.host,
            port=settings.port,
            log_config=None,
            lifespan="on",
            ws="websockets-sansio",
            ws_max_size=settings.max_body_bytes,  # a bigger message is refused (1009) before it is buffered
            ssl_certfile=settings.tls_cert_file,
            ssl_keyfile=settings.tls_key_file,
            timeout_graceful_shutdown=5,
        )
        server = _graceful_server(config)
        scheme = "https" if settings.tls_cert_file else "http"
        url = f"{scheme}://{settings.host}:{settings.port}/graphql"
        _write_run_file(
            settings,
            {
                "pid": os.getpid(),
                "url": url,
                "bolt_uri": runtime.arcadedb.uri if runtime.arcadedb else None,
            },
        )
        print(f"DMS head-end serving {', '.join(runtime.fleet.feeder_ids) or 'no feeders'} at {url}", flush=True)
        if demo:
            print(
                f"Get a token:  {_dms_command()} token --role OPERATOR --data-dir {settings.data_dir}\n"
                f"Then query:   curl -s {url} -H 'Authorization: Bearer <token>' "
                "-H 'Content-Type: application/json' -d '{\"query\":\"{ feeders { id name } }\"}'\n"
                "GraphiQL is on at the same URL in a browser. Ctrl-C stops everything.",
                flush=True,
            )
        await server.serve(sockets=[sock])
        return 0
    finally:
        with contextlib.suppress(OSError):
            (settings.data_dir / RUN_FILE).unlink()
        if sim_handle is not None:
            with contextlib.suppress(Exception):
                await sim_handle.stop()
        await runtime.stop()


# -- store-backed commands ----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def _store_session(settings: Settings) -> AsyncIterator[Any]:
    """The graph store for a one-off command: a running demo's, the configured one, or a local one."""
    from graph_schema.arcadedb import EmbeddedArcadeDB
    from graph_schema.store import GraphStore
    from server.runtime import open_store

    running = _read_run_file(settings) if settings.embedded_store else None
    if running and running.get("bolt_uri"):
        db = EmbeddedArcadeDB(settings.data_dir, database=settings.neo4j_database)
        store = await GraphStore.connect(running["bolt_uri"], db.user, db.password, db.database)
        try:
            yield store
        finally:
            await store.close()
        return
    store, arcadedb = await open_store(settings)
    try:
        yield store
    finally:
        await store.close()
        if arcadedb is not None:
            await arcadedb.stop()


async def _import(settings: Settings, args: argparse.Namespace) -> int:
    from graph_schema.importers import from_pandapower_json

    feeder = from_pandapower_json(args.file, feeder_id=args.feeder_id, name=args.name)
    async with _store_session(settings) as store:
        await store.save_feeder(feeder, replace=args.replace)
        await _audit_cli(settings, store, "MODEL_IMPORT", target=feeder.id, detail={
            "file": str(args.file.resolve()), "replace": bool(args.replace), "buses": len(feeder.buses),
            "lines": len(feeder.lines), "switches": len(feeder.switches), "customers": feeder.customers,
        })
    print(
        f"imported feeder {feeder.id!r}: {len(feeder.buses)} buses, {len(feeder.lines)} lines, "
        f"{len(feeder.switches)} switches, {feeder.customers} customers"
    )
    if _read_run_file(settings):
        print("a running server picks up new feeders within a few seconds; restart it after --replace")
    return 0


async def _pointmap_import(settings: Settings, args: argparse.Namespace) -> int:
    from protocols.pointmap import PointMap
    from server.field import save_point_map

    unchecked = PointMap.load(args.file)  # readable, well-formed; names the file otherwise
    async with _store_session(settings) as store:
        feeder = await store.load_feeder(unchecked.feeder_id)
        point_map = PointMap.load(args.file, feeder)  # every point checked against the model
        await save_point_map(store, point_map)
        await _audit_cli(settings, store, "POINTMAP_IMPORT", target=point_map.feeder_id, detail={
            "file": str(args.file.resolve()), "devices": len(point_map.devices), "points": len(point_map.points),
        })
    print(f"stored the point map of feeder {point_map.feeder_id!r}: {len(point_map.devices)} devices, "
          f"{len(point_map.points)} points; `dms serve` attaches it at start")
    return 0


async def _audit_cli(settings: Settings, store: Any, action: str, *, target: str, detail: dict[str, Any]) -> None:
    """Append a change made from the command line to the audit log, as the API does for its own
    (the same keyed, anchored chain: ``AuditLog.from_settings``): the actor is the operating-system
    user, the source the command line and the host."""
    import getpass

    from security.audit import AuditLog

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = f"uid-{os.getuid()}"
    audit = AuditLog.from_settings(store, settings)
    await audit.record(action, actor=f"os:{user}", roles=(), target=target,
                       source=f"cli@{socket.gethostname()}", outcome="OK", detail=detail)
    audit.flush_anchor()


async def _audit_verify(settings: Settings) -> int:
    from security.audit import AuditLog

    async with _store_session(settings) as store:
        result = await AuditLog.from_settings(store, settings, create_key=False).verify()
    if result.ok:
        print(f"audit chain intact: {result.checked} entries verified ({result.summary})")
        return 0
    print(
        f"audit chain BROKEN at entry seq={result.first_broken_seq}: {result.reason} "
        f"({result.checked} entries checked)",
        file=sys.stderr,
    )
    return 3


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path} ({exc}); give a readable UTF-8 CSV file") from None


async def _history_import(settings: Settings, args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from server.reports.data import ReportData

    text = _read_text(args.file)
    kind = args.command
    async with _store_session(settings) as store:
        data = ReportData(store, tz=settings.timezone, threshold_min=settings.reliability_momentary_min)
        if kind == "outages":
            result = await data.import_outages(text, now=datetime.now(UTC))
        else:
            result = await data.import_customers(text)
        await _audit_cli(settings, store, f"{kind.upper()}_IMPORT", target=args.file.name, detail={
            "file": str(args.file.resolve()), "added": result.added, "updated": result.updated,
            "unchanged": result.unchanged,
        })
    print(f"{kind} import of {args.file}: {result.added} added, {result.updated} updated, "
          f"{result.unchanged} unchanged")
    return 0


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from security.roles import Role
    from security.tokens import LocalSigningKey, mint_token

    roles = []
    for r in args.role:
        try:
            roles.append(Role(r.upper()))
        except ValueError:
            raise ConfigError(f"unknown role {r!r}; use one of {', '.join(x.value for x in Role)}") from None
    if args.customer_account is not None and Role.CUSTOMER not in roles and Role.VEN not in roles:
        raise ConfigError("--customer-account goes with --role CUSTOMER (the account whose meters the token "
                          "may read), e.g. --role CUSTOMER --customer-account ACC-1001")
    key = LocalSigningKey(settings.data_dir)
    token = mint_token(
        key,
        role=[r.value for r in roles],
        sub=args.sub or roles[0].value.lower(),
        ttl_s=args.ttl,
        issuer=settings.auth_issuer,
        audience=settings.auth_audience,
        feeders=[f.strip() for f in args.feeders.split(",") if f.strip()] if args.feeders else None,
        customer_account=args.customer_account,
    )
    print(token)
    return 0


async def _sim(settings: Settings, args: argparse.Namespace) -> int:
    from protocols.sim_admin import sim_command

    cmd = args.sim_command
    payload: dict[str, Any] = {}
    if cmd == "fault":
        payload = {"feeder": args.feeder, "line": args.line, "permanent": not args.temporary}
    elif cmd == "comm-loss":
        payload = {"device": args.device, "on": not args.restore}
    elif cmd == "load":
        payload = {"feeder": args.feeder, "scale": args.scale}
    elif cmd == "stick":
        payload = {"switch": args.switch, "on": not args.release, "feeder": args.feeder}
    result = await sim_command(settings.data_dir, cmd, dms=_dms_command(), **payload)
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


async def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    from graph_schema.importers import DEMO_FEEDERS

    ids = args.feeder or list(DEMO_FEEDERS)
    unknown = [f for f in ids if f not in DEMO_FEEDERS]
    if unknown:
        raise ConfigError(f"unknown demo feeder(s) {', '.join(unknown)}; known: {', '.join(DEMO_FEEDERS)}")
    from protocols.sim_admin import run_simulator  # the simulator and pandapower: seconds to import
    await run_simulator([DEMO_FEEDERS[f]() for f in ids], settings.data_dir, speed=args.speed,
                        allow_nosecurity=settings.opcua_allow_nosecurity)
    return 0


def _history_backfill(settings: Settings, args: argparse.Namespace) -> int:
    import time

    from graph_schema.historian.backfill import backfill
    from graph_schema.importers import DEMO_FEEDERS

    ids = args.feeder or list(DEMO_FEEDERS)
    unknown = [f for f in ids if f not in DEMO_FEEDERS]
    if unknown:
        raise ConfigError(f"unknown demo feeder(s) {', '.join(unknown)}; known: {', '.join(DEMO_FEEDERS)}")
    if args.days < 1:
        raise ConfigError(f"--days {args.days} must be at least 1")
    t0 = time.monotonic()
    stats = backfill(settings.historian_root, [DEMO_FEEDERS[f]() for f in ids], days=args.days,
                     tz=settings.timezone, seed=args.seed)
    print(f"historian {settings.historian_root}: {stats.days} days {stats.start:%Y-%m-%d %H:%M} .. "
          f"{stats.end:%Y-%m-%d %H:%M} UTC, {stats.rows} rows in {stats.files} files "
          f"({time.monotonic() - t0:.1f} s)")
    return 0


def _run(coro: Any) -> int:
    """Run a coroutine; SIGTERM is handled like Ctrl-C so everything shuts down cleanly."""

    async def main() -> int:
        task = asyncio.current_task()
        loop = asyncio.get_running_loop()
        assert task is not None
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            return int(await coro)
        except asyncio.CancelledError:
            return 0

    return asyncio.run(main())


def _take_listen_socket(settings: Settings) -> tuple[Settings, socket.socket]:
    """Checks that need nothing started, then the listening socket (port 0: the port it got)."""
    _refuse_second_server(settings)
    sock = _listen_socket(settings)
    port = int(sock.getsockname()[1])
    return (dataclasses.replace(settings, port=port) if port != settings.port else settings), sock


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "demo":
            # The demo runs case33bw in automatic FDIR and cigre-mv in advisory (one approval).
            settings = _settings(args, graphiql=True, introspection=True, neo4j_uri=None,
                                 fdir_modes=(("case33bw", "AUTOMATIC"), ("cigre-mv", "ADVISORY")))
            _setup_logging(settings)
            settings, sock = _take_listen_socket(settings)
            with sock:
                return _run(_serve(settings, sock, demo=True, speed=args.speed, simulator=not args.no_simulator))
        settings = _settings(args)
        _setup_logging(settings)
        if args.command == "serve":
            settings, sock = _take_listen_socket(settings)
            with sock:
                return _run(_serve(settings, sock, demo=False))
        if args.command == "import":
            return _run(_import(settings, args))
        if args.command == "pointmap":
            return _run(_pointmap_import(settings, args))
        if args.command == "token":
            return _token(settings, args)
        if args.command == "sim":
            return _run(_sim(settings, args))
        if args.command == "simulate":
            return _run(_simulate(settings, args))
        if args.command == "history":
            return _history_backfill(settings, args)
        if args.command == "audit":
            return _run(_audit_verify(settings))
        if args.command in ("outages", "customers"):
            return _run(_history_import(settings, args))
    except DmsError as exc:
        print(f"dms {args.command}: {exc.message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
