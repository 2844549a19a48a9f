"""The local default graph store: an ArcadeDB server (PyPI wheel ``arcadedb-embedded``) over Bolt.

When ``DMS_NEO4J_URI`` is unset the head-end starts its own ArcadeDB server as a child process and
talks to it with the same ``neo4j`` driver and the same Cypher it uses for Neo4j in production.

- The server runs on the wheel's bundled JRE (the system Java may be too old), in its own process
  group, bound to 127.0.0.1 only (Bolt and HTTP), with a bounded heap.
- Data lives under ``<data_dir>/arcadedb`` and survives restarts (ArcadeDB recovers committed
  transactions from its write-ahead log even after a SIGKILL).
- The root password, when not given, is generated once and kept in
  ``<data_dir>/arcadedb/root-password`` (mode 0600). It reaches the JVM through a 0600 ``@argfile``
  deleted once the server is up, never through the command line (world-readable in ``ps``).
- Server output goes to ``<data_dir>/arcadedb/server.log``, never to our stdout.
- Readiness is "a query on the database answers", not "the port is open" (the Bolt port opens
  before the database does).
- Supervision (:meth:`EmbeddedArcadeDB.supervise`, used by the long-running runtime): a server
  that dies on its own is reaped at once and restarted with backoff on the same data directory
  and ports, so the Bolt driver reconnects. Production runs Neo4j instead, which the head-end does
  not supervise (Neo4j's own clustering and the official chart's pod restarts do that).
- Safety nets: a finalizer (also run at interpreter exit) kills the process group if ``stop()`` was
  never awaited, and a server orphaned by a killed parent is found through ``server.pid`` and
  stopped at the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import socket
import subprocess
import time
import weakref
from pathlib import Path
from types import TracebackType

import neo4j
import neo4j.exceptions

from graph_schema.aio import cancel_and_wait
from graph_schema.errors import ConfigError, StoreUnavailable
from graph_schema.secret import Secret

log = logging.getLogger(__name__)

MAIN_CLASS = "com.arcadedb.server.ArcadeDBServer"
BOLT_PLUGIN = "Bolt:com.arcadedb.bolt.BoltProtocolPlugin"
# Log lines that mean the server will never become ready (the JVM may keep running after them:
# a failed plugin start kills the main thread but not the server's other threads).
_FATAL_PATTERNS = (
    "Unable to listen",
    'Exception in thread "main"',
    "Error starting plugin",
    "Error on starting",
    "Address already in use",
    "OutOfMemoryError",
)
_DB_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,63}$")
_MIN_PASSWORD = 8  # ArcadeDB refuses shorter root passwords


def _package_dir() -> Path:
    import arcadedb_embedded  # imported lazily: only the embedded store needs it

    return Path(arcadedb_embedded.__file__).resolve().parent


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free right now on ``host`` (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _kill_group(proc: subprocess.Popen[bytes], grace_s: float) -> None:
    """Synchronous stop: SIGTERM to the group, SIGKILL after ``grace_s``. Used by the finalizer."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


async def _exited(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Poll (without blocking the loop) until ``proc`` exits; False if still running at the timeout."""
    for _ in range(max(1, int(timeout_s / 0.05))):
        if proc.poll() is not None:
            return True
        await asyncio.sleep(0.05)
    return proc.poll() is not None


class EmbeddedArcadeDB:
    """An ArcadeDB server child process serving Bolt on 127.0.0.1.

    ``uri``/``user``/``password``/``database`` are what :meth:`GraphStore.connect` needs.
    Use as ``async with EmbeddedArcadeDB(dir) as db:`` or call :meth:`start`/:meth:`stop`.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        database: str = "grid",
        bolt_port: int | None = None,
        http_port: int | None = None,
        root_password: str | None = None,
        heap_mb: int = 512,
    ) -> None:
        if not _DB_NAME.match(database):
            raise ConfigError(
                f"database name {database!r} is not valid for ArcadeDB; use letters, digits, '_' or '-'"
                " starting with a letter (DMS_NEO4J_DATABASE)"
            )
        if heap_mb < 128:
            raise ConfigError(f"heap_mb={heap_mb} is too small for ArcadeDB; give it at least 128")
        self.root = Path(data_dir).resolve() / "arcadedb"
        self.database = database
        self.bolt_port = bolt_port if bolt_port is not None else free_port()
        self.http_port = http_port if http_port is not None else free_port()
        self.heap_mb = heap_mb
        self.uri = f"bolt://127.0.0.1:{self.bolt_port}"
        self.user = "root"
        self.log_path = self.root / "server.log"
        self._pid_path = self.root / "server.pid"
        self._argfile = self.root / "jvm-secret.args"
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        if root_password is None:
            root_password = self._stored_password()
        elif len(root_password) < _MIN_PASSWORD:
            raise ConfigError(f"the ArcadeDB root password must have at least {_MIN_PASSWORD} characters")
        self.password = Secret(root_password)
        self._proc: subprocess.Popen[bytes] | None = None
        self._finalizer: weakref.finalize[..., EmbeddedArcadeDB] | None = None
        self.stop_grace_s = 20.0
        self.supervise_interval_s = 0.5
        self.restarts = 0  # restarts by the supervisor after the process died on its own
        self._supervisor: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"EmbeddedArcadeDB({str(self.root)!r}, uri={self.uri!r}, database={self.database!r}, {state})"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    # -- password --------------------------------------------------------------------------

    def _stored_password(self) -> str:
        path = self.root / "root-password"
        try:
            value = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            value = ""
        if len(value) >= _MIN_PASSWORD:
            return value
        value = secrets.token_urlsafe(24)
        tmp = path.with_suffix(".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(value + "\n")
        os.replace(tmp, path)
        return value

    # -- process ---------------------------------------------------------------------------

    def _command(self) -> list[str]:
        pkg = _package_dir()
        java = pkg / "jre" / "bin" / "java"
        if not java.exists():
            raise StoreUnavailable(
                f"the bundled Java of arcadedb-embedded is missing ({java}); reinstall the package "
                "(make install), or set DMS_NEO4J_URI to use an external Neo4j"
            )
        return [
            str(java),
            f"-Xmx{self.heap_mb}m",
            "-Xss512k",
            "-XX:+UseSerialGC",  # small heap, 2 cores: the cheapest collector
            "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true",
            "-cp",
            str(pkg / "jars" / "*"),
            f"-Darcadedb.server.rootPath={self.root}",
            f"-Darcadedb.server.defaultDatabases={self.database}[root]",
            f"-Darcadedb.server.plugins={BOLT_PLUGIN}",
            "-Darcadedb.bolt.host=127.0.0.1",
            f"-Darcadedb.bolt.port={self.bolt_port}",
            "-Darcadedb.server.httpIncomingHost=127.0.0.1",
            f"-Darcadedb.server.httpIncomingPort={self.http_port}",
            f"@{self._argfile}",  # holds -Darcadedb.server.rootPassword (0600, deleted after start)
            MAIN_CLASS,
        ]

    def _write_argfile(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._argfile.unlink()
        fd = os.open(self._argfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            # Quoted: the java launcher's @argfile syntax; the generated password has no quotes.
            fh.write(f'"-Darcadedb.server.rootPassword={self.password.reveal()}"\n')

    def _remove_argfile(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._argfile.unlink()

    def _reap_orphan(self) -> None:
        """Stop a server left behind on this data directory by a parent that was killed."""
        try:
            pid = int(self._pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        import psutil

        try:
            p = psutil.Process(pid)
            cmdline = p.cmdline()
            ppid = p.ppid()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            self._pid_path.unlink(missing_ok=True)
            return
        if f"-Darcadedb.server.rootPath={self.root}" not in cmdline:
            self._pid_path.unlink(missing_ok=True)
            return
        # Its owner is a live Python process (another dms on the same data dir): refuse. Otherwise
        # it was orphaned (re-parented to init or a subreaper) and is ours to stop.
        try:
            owner_alive = ppid not in (0, 1) and "python" in psutil.Process(ppid).name().lower()
        except psutil.Error:
            owner_alive = False
        if owner_alive and ppid != os.getpid():
            raise StoreUnavailable(
                f"another ArcadeDB server (pid {pid}, started by pid {ppid}) is running on "
                f"{self.root}; stop that dms process or use another --data-dir"
            )
        log.warning("stopping ArcadeDB server pid %s left behind on %s", pid, self.root)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGTERM)
        try:
            p.wait(timeout=self.stop_grace_s)
        except psutil.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            with contextlib.suppress(psutil.TimeoutExpired):
                p.wait(timeout=10)
        self._pid_path.unlink(missing_ok=True)

    def _spawn(self) -> int:
        """Start java; returns the log offset where this run's output begins."""
        self._reap_orphan()
        cmd = self._command()
        self._write_argfile()
        with open(self.log_path, "ab") as logf:
            offset = logf.tell()
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            logf.write(f"---- {stamp} dms: starting ArcadeDB, Bolt {self.uri} ----\n".encode())
            logf.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                start_new_session=True,  # own process group: Ctrl-C reaches us, we stop it
                close_fds=True,
            )
        self._pid_path.write_text(f"{self._proc.pid}\n")
        self._finalizer = weakref.finalize(self, _kill_group, self._proc, 10.0)
        return offset

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, offset: int = 0, lines: int = 15) -> str:
        text = self._log_since(offset)
        kept = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("at ")]
        return "\n".join(kept[-lines:])

    async def start(self, timeout_s: float = 90) -> None:
        """Start the server and wait until ``RETURN 1`` answers on the database.

        Raises :class:`StoreUnavailable` (with the end of the server log and a remedy) when the
        process dies, reports a fatal error, refuses the credentials, or is not ready in time; the
        process is stopped before raising.
        """
        if self.running:
            return
        await self._start_process(timeout_s)
        log.info("ArcadeDB ready at %s (database %r, data %s)", self.uri, self.database, self.root)

    async def _start_process(self, timeout_s: float) -> None:
        offset = self._spawn()
        try:
            await self._wait_ready(offset, timeout_s)
        except BaseException:
            await self._stop_process(grace_s=5.0)  # nothing worth flushing: it never became ready
            raise
        finally:
            self._remove_argfile()

    # -- supervision -----------------------------------------------------------------------

    def supervise(self, *, min_backoff_s: float = 1.0, max_backoff_s: float = 30.0) -> None:
        """Watch the server from the running event loop and restart it when it dies on its own.

        The dead child is reaped at once (no zombie), then started again after a backoff (doubling
        from ``min_backoff_s`` to ``max_backoff_s`` while restarts keep failing or the server keeps
        dying within a minute) on the same data directory and the same Bolt and HTTP ports, so
        drivers that point at :attr:`uri` reconnect by themselves; ArcadeDB recovers the committed
        transactions from its write-ahead log. :meth:`stop` ends the supervision first.
        """
        if self._supervisor is not None and not self._supervisor.done():
            return
        self._supervisor = asyncio.create_task(self._supervise(min_backoff_s, max_backoff_s),
                                               name=f"arcadedb-supervisor:{self.bolt_port}")

    async def _supervise(self, min_backoff_s: float, max_backoff_s: float) -> None:
        backoff = min_backoff_s
        started_at = time.monotonic()
        while True:
            proc = self._proc
            code = proc.poll() if proc is not None else None  # poll() reaps a dead child
            if proc is not None and code is None:
                if time.monotonic() - started_at > 60.0:
                    backoff = min_backoff_s  # it stayed up: the next failure starts the backoff again
                await asyncio.sleep(self.supervise_interval_s)
                continue
            if proc is not None:
                log.error(
                    "ArcadeDB pid %s exited on its own (status %s); restarting it in %.0f s on %s, Bolt %s. "
                    "Last lines of %s:\n%s", proc.pid, code, backoff, self.root, self.uri, self.log_path,
                    self.log_tail(lines=8),
                )
                self._forget_process()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff_s)
            try:
                await self._start_process(timeout_s=90)
            except StoreUnavailable as exc:
                log.error("ArcadeDB restart failed (next try in %.0f s): %s", backoff, exc.message)
                continue
            self.restarts += 1
            started_at = time.monotonic()
            log.warning("ArcadeDB restarted at %s (restart %d); committed data recovered from its log",
                        self.uri, self.restarts)

    async def stop_supervising(self) -> None:
        """End :meth:`supervise` and leave the server as it is (running or not): an operator's
        maintenance window, or a test that keeps the store down on purpose."""
        await self._stop_supervisor()

    async def _stop_supervisor(self) -> None:
        task, self._supervisor = self._supervisor, None
        if task is None or task is asyncio.current_task():
            return
        await cancel_and_wait(task)

    async def _wait_ready(self, offset: int, timeout_s: float) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + timeout_s
        driver = neo4j.AsyncGraphDatabase.driver(
            self.uri,
            auth=(self.user, self.password.reveal()),
            connection_timeout=2.0,
            max_connection_pool_size=1,
        )
        last_error = "no answer yet"
        try:
            while True:
                code = self._proc.poll()
                if code is not None:
                    self._fail(offset, f"the ArcadeDB process exited with status {code} while starting")
                text = self._log_since(offset)
                fatal = [p for p in _FATAL_PATTERNS if p in text]
                if fatal:
                    busy = any("listen" in p or "in use" in p for p in fatal)
                    hint = (
                        f"; port {self.bolt_port} (Bolt) or {self.http_port} (HTTP) is taken: free it or "
                        "choose other ports"
                        if busy
                        else ""
                    )
                    self._fail(offset, f"ArcadeDB reported a fatal error while starting ({fatal[0]!r}){hint}")
                try:
                    # Bounded: a port that accepts but never answers (not ArcadeDB, or not yet)
                    # would otherwise hold the handshake past the deadline.
                    if await asyncio.wait_for(self._answers(driver), timeout=5.0):
                        return
                except TimeoutError:
                    last_error = "the Bolt handshake or test query did not answer within 5 s"
                except neo4j.exceptions.AuthError:
                    self._fail(
                        offset,
                        f"ArcadeDB refused the root password; the data in {self.root} was created with "
                        f"another one (see {self.root / 'root-password'}), or start with a fresh --data-dir",
                    )
                except (neo4j.exceptions.Neo4jError, neo4j.exceptions.DriverError, OSError) as exc:
                    last_error = f"{type(exc).__name__}: {exc}".splitlines()[0][:200]
                if time.monotonic() > deadline:
                    self._fail(offset, f"ArcadeDB was not ready after {timeout_s:.0f} s (last: {last_error})")
                await asyncio.sleep(0.25)
        finally:
            await driver.close()

    async def _answers(self, driver: neo4j.AsyncDriver) -> bool:
        async with driver.session(database=self.database) as session:
            result = await session.run("RETURN 1 AS ok")
            record = await result.single()
        return record is not None and record["ok"] == 1

    def _fail(self, offset: int, what: str) -> None:
        tail = self.log_tail(offset)
        raise StoreUnavailable(
            f"{what}. Last lines of {self.log_path}:\n{tail}\n"
            "Fix the cause above, or set DMS_NEO4J_URI to use an external Neo4j instead."
        )

    async def stop(self, grace_s: float | None = None) -> None:
        """End the supervision, then SIGTERM the process group, SIGKILL after ``grace_s`` (default
        ``stop_grace_s``).

        Safe to call twice, and after the process died on its own.
        """
        await self._stop_supervisor()
        await self._stop_process(grace_s)

    async def _stop_process(self, grace_s: float | None = None) -> None:
        proc = self._proc
        if proc is None:
            return
        grace = self.stop_grace_s if grace_s is None else grace_s
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGTERM)
            if not await _exited(proc, grace):
                log.warning("ArcadeDB pid %s ignored SIGTERM for %.0f s; killing it", proc.pid, grace)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await _exited(proc, 30.0)
        self._forget_process()

    def _forget_process(self) -> None:
        """The process has exited (and was reaped by ``poll``): drop what referred to it."""
        if self._finalizer is not None:
            self._finalizer.detach()
            self._finalizer = None
        self._proc = None
        self._remove_argfile()
        self._pid_path.unlink(missing_ok=True)

    async def __aenter__(self) -> EmbeddedArcadeDB:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
