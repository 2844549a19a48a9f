"""The graph store: feeders and durable records over Bolt (official ``neo4j`` async driver).

The same code and the same Cypher serve Neo4j 5 in production and the embedded ArcadeDB server
(:mod:`graph_schema.arcadedb`) locally, so the Cypher here is the portable subset both accept: no
APOC, no GDS, no procedures, no ``CALL {} IN TRANSACTIONS``. What ArcadeDB 26.10 does differently,
found by probing it, and how this module copes:

- A failing auto-commit statement is not atomic there (``UNWIND ... CREATE (n) SET n = r`` that
  hits a uniqueness constraint leaves the created, empty node behind). Every write therefore runs
  in an explicit transaction (``execute_write``), which ArcadeDB does roll back as a whole.
- Concurrent updates of one node fail there with a transient "concurrent change" error (optimistic
  MVCC) instead of waiting on a lock as Neo4j does. ``execute_write`` retries those; appends from
  this process are also serialised per label so they do not collide in the first place.
- Variable-length patterns there may revisit a relationship within one path (no relationship
  isomorphism); topology queries should use ``DISTINCT`` or bounded, directed patterns.

Graph shape (see :mod:`graph_schema.cypher` for the generic property mapping)::

    (:Feeder {uid, id, name, sn_mva, f_hz, vm_min_pu, ...})-[:HAS]->(element)
    (:Line)-[:FROM]->(:Bus), (:Line)-[:TO]->(:Bus), (:Transformer)-[:HV|LV]->(:Bus)
    (:Switch)-[:AT]->(:Bus), (:Switch)-[:ON]->(:Line|Transformer|Bus)
    (:Source|Load|Der|Capacitor)-[:AT]->(:Bus), (:FaultIndicator)-[:ON]->(:Line), -[:AT]->(:Bus)
    (:MeasurementPoint)-[:MEASURES]->(element)
    (:ControlAction|Event|Outage|AuditEntry|Tag {seq, feeder_id, ...}), (:Sequence {name, seq})
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import re
from collections.abc import AsyncIterator, Awaitable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import neo4j
import neo4j.exceptions

from graph_schema import cypher
from graph_schema.errors import BadInput, DmsError, InvalidModel, NotFound, SeqConflict, StoreUnavailable
from graph_schema.model import Feeder
from graph_schema.secret import Secret

log = logging.getLogger(__name__)

T = TypeVar("T")

BATCH_ROWS = 1000  # rows per UNWIND statement: big enough to be fast, small enough per message
_KNOWN_LISTED = 20
# The driver also accepts http(s):// (its Query API, a preview): not Bolt, refused here.
_BOLT_SCHEMES = frozenset({"bolt", "bolt+s", "bolt+ssc", "neo4j", "neo4j+s", "neo4j+ssc"})


@dataclass(frozen=True)
class FeederSummary:
    id: str
    name: str
    buses: int
    customers: int


def _ensure_valid(feeder: Feeder) -> Feeder:
    """Run :func:`graph_schema.validate.ensure_valid` (raises :class:`InvalidModel`)."""
    try:
        from graph_schema.validate import ensure_valid
    except ModuleNotFoundError as exc:  # validate.py is written in parallel; remove once it lands
        if exc.name != "graph_schema.validate":
            raise
        return feeder
    return ensure_valid(feeder)


def _redact(text: str, password: str) -> str:
    text = re.sub(r"(//[^/@:\s]*:)[^@/\s]*@", r"\1***@", text)  # user:password@ in a URI
    return text.replace(password, "***") if password else text


# Records of the regulatory reports (server/reports): imported interruption history, customers served
# per feeder and year, report jobs, their files (so that every API replica can serve them) and
# schedules. Same rules as cypher.RECORD_LABELS (a closed set, checked before a label is
# interpolated into Cypher).
REPORT_RECORD_LABELS: tuple[str, ...] = ("Interruption", "CustomersServed", "ReportJob", "ReportFile", "ReportSchedule")
# Saved what-if studies and analysis jobs (server/study_service.py, issue #14).
STUDY_RECORD_LABELS: tuple[str, ...] = ("Study", "AnalysisJob")
RECORD_LABELS: tuple[str, ...] = (*cypher.RECORD_LABELS, *REPORT_RECORD_LABELS, *STUDY_RECORD_LABELS)


def _check_record_label(label: str) -> str:
    if label not in RECORD_LABELS:
        raise BadInput(f"unknown record label {label!r}; use one of {', '.join(RECORD_LABELS)}")
    return label


def _check_record_props(props: Mapping[str, object], what: str) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in props.items():
        if not isinstance(key, str) or not cypher.check_prop_name(key):
            raise BadInput(f"{what}: property name {key!r} is not an identifier (letters, digits, '_')")
        if key in cypher.RESERVED_RECORD_PROPS:
            raise BadInput(f"{what}: {key!r} is set by the store; pass feeder_id= and leave seq out")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise BadInput(
                f"{what}: property {key!r} has a {type(value).__name__}; store str, int, float, bool "
                "or None (serialise timestamps as ISO 8601 strings or epoch numbers)"
            )
        if isinstance(value, float) and not math.isfinite(value):
            raise BadInput(f"{what}: property {key!r} is {value}; store a finite number or None")
        out[key] = value
    return out


class GraphStore:
    """Reads and writes feeders (the network model) and durable records over one async driver."""

    def __init__(self, driver: neo4j.AsyncDriver, database: str | None) -> None:
        self._driver = driver
        self._database = database
        self._schema_ready = False
        self._append_locks: dict[str, asyncio.Lock] = {label: asyncio.Lock() for label in RECORD_LABELS}

    def __repr__(self) -> str:
        return f"GraphStore(database={self._database!r})"

    @property
    def driver(self) -> neo4j.AsyncDriver:
        return self._driver

    @property
    def database(self) -> str | None:
        return self._database

    # -- connection ------------------------------------------------------------------------

    @classmethod
    async def connect(cls, uri: str, user: str, password: Secret | str, database: str | None) -> GraphStore:
        """Open a driver and verify it with a query; failures name the setting to fix.

        Raises :class:`StoreUnavailable` with one line: wrong credentials, unreachable server,
        unknown database, or a malformed URI. The password never appears in it.
        """
        secret = password.reveal() if isinstance(password, Secret) else password
        shown = _redact(uri, secret)
        scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
        if scheme not in _BOLT_SCHEMES:
            raise StoreUnavailable(
                f"DMS_NEO4J_URI={shown!r} is not a Bolt URI; use bolt://HOST:7687 or neo4j://HOST:7687 "
                "(+s or +ssc for TLS)"
            )
        try:
            driver = neo4j.AsyncGraphDatabase.driver(
                uri,
                auth=neo4j.basic_auth(user, secret),
                connection_timeout=5.0,
                max_transaction_retry_time=15.0,
                user_agent="dms-headend",
            )
        except (neo4j.exceptions.ConfigurationError, ValueError) as exc:
            raise StoreUnavailable(
                f"DMS_NEO4J_URI={shown!r} is not a usable Bolt URI ({_redact(str(exc), secret)}); "
                "use bolt://HOST:7687 or neo4j://HOST:7687"
            ) from None
        store = cls(driver, database)
        try:
            await store._probe()
        except neo4j.exceptions.AuthError:
            await driver.close()
            raise StoreUnavailable(
                f"the graph store at {shown} (DMS_NEO4J_URI) refused the credentials of user {user!r}; "
                "check DMS_NEO4J_USER/DMS_NEO4J_PASSWORD"
            ) from None
        except neo4j.exceptions.ClientError as exc:
            await driver.close()
            if exc.code == "Neo.ClientError.Database.DatabaseNotFound":
                raise StoreUnavailable(
                    f"the graph store at {shown} (DMS_NEO4J_URI) has no database {database!r}; "
                    "check DMS_NEO4J_DATABASE or create that database"
                ) from None
            raise StoreUnavailable(
                f"the graph store at {shown} (DMS_NEO4J_URI) rejected a test query: "
                f"{_redact(exc.message or str(exc.code), secret).splitlines()[0]}"
            ) from None
        except (neo4j.exceptions.DriverError, neo4j.exceptions.Neo4jError, OSError) as exc:
            await driver.close()
            reason = _redact(str(exc), secret).splitlines()[0] if str(exc) else type(exc).__name__
            raise StoreUnavailable(
                f"cannot reach the graph store at {shown} (DMS_NEO4J_URI): {reason}; is the server running at {shown}?"
            ) from None
        except BaseException:
            await driver.close()
            raise
        return store

    async def _probe(self) -> None:
        async with self._driver.session(database=self._database) as session:
            result = await session.run("RETURN 1 AS ok")
            await result.consume()

    async def close(self) -> None:
        await self._driver.close()

    async def ping(self, timeout_s: float | None = None) -> None:
        """Raise :class:`StoreUnavailable` unless a query answers (within ``timeout_s`` when given)."""
        async with self._translate("ping"):
            if timeout_s is None:
                await self._probe()
            else:
                await self.bounded(self._probe(), timeout_s, "answer a health check")

    @staticmethod
    async def bounded(aw: Awaitable[T], timeout_s: float, op: str) -> T:
        """``aw`` within ``timeout_s``; past it :class:`StoreUnavailable` (the driver's own retries of a
        dead server last tens of seconds, too long for a control room waiting on a decision).

        A write cut short may or may not have been committed: callers that must know re-read it
        (control intents carry an ``intent_id`` for that)."""
        try:
            return await asyncio.wait_for(aw, timeout_s)
        except TimeoutError:
            raise StoreUnavailable(
                f"the graph store did not answer within {timeout_s:g} s while trying to {op}; check that the "
                "store (DMS_NEO4J_URI, or the embedded ArcadeDB) is running"
            ) from None

    @contextlib.asynccontextmanager
    async def _translate(self, op: str) -> AsyncIterator[None]:
        """Turn driver failures into :class:`StoreUnavailable`/:class:`BadInput` with the operation."""
        try:
            yield
        except DmsError:
            raise
        except neo4j.exceptions.AuthError:
            raise StoreUnavailable(
                f"the graph store refused our credentials while trying to {op}; check DMS_NEO4J_USER/DMS_NEO4J_PASSWORD"
            ) from None
        except neo4j.exceptions.ConstraintError as exc:
            raise BadInput(
                f"cannot {op}: it conflicts with data written at the same time ({exc.message}); reload and try again"
            ) from None
        except (
            neo4j.exceptions.ServiceUnavailable,
            neo4j.exceptions.SessionExpired,
            neo4j.exceptions.TransientError,
            neo4j.exceptions.DatabaseUnavailable,
            OSError,
        ) as exc:
            first = (str(exc) or type(exc).__name__).splitlines()[0][:300]
            raise StoreUnavailable(
                f"the graph store failed while trying to {op} ({first}); nothing was changed by the "
                "failed operation. Check that the store (DMS_NEO4J_URI, or the embedded ArcadeDB) is running"
            ) from None

    def _session(self, **kw: Any) -> neo4j.AsyncSession:
        return self._driver.session(database=self._database, **kw)

    # -- schema ----------------------------------------------------------------------------

    async def ensure_schema(self) -> None:
        """Create the uniqueness constraints and indexes (idempotent, ``IF NOT EXISTS``)."""
        statements: list[str] = []
        for label in (cypher.FEEDER_LABEL, *cypher.ELEMENT_LABELS):
            statements.append(
                f"CREATE CONSTRAINT {label.lower()}_uid_unique IF NOT EXISTS FOR (n:{label}) REQUIRE n.uid IS UNIQUE"
            )
        for label in cypher.ELEMENT_LABELS:
            statements.append(f"CREATE INDEX {label.lower()}_feeder_id IF NOT EXISTS FOR (n:{label}) ON (n.feeder_id)")
        for label in RECORD_LABELS:
            statements.append(
                f"CREATE CONSTRAINT {label.lower()}_seq_unique IF NOT EXISTS FOR (n:{label}) REQUIRE n.seq IS UNIQUE"
            )
            statements.append(f"CREATE INDEX {label.lower()}_feeder_id IF NOT EXISTS FOR (n:{label}) ON (n.feeder_id)")
        statements.append(
            f"CREATE CONSTRAINT sequence_name_unique IF NOT EXISTS "
            f"FOR (n:{cypher.SEQUENCE_LABEL}) REQUIRE n.name IS UNIQUE"
        )
        async with self._translate("create the graph schema"), self._session() as session:
            # Schema statements run one per auto-commit transaction (Neo4j forbids mixing them
            # with data writes in one transaction).
            for statement in statements:
                result = await session.run(statement)
                await result.consume()
        self._schema_ready = True

    async def _schema(self) -> None:
        if not self._schema_ready:
            await self.ensure_schema()

    # -- feeders ---------------------------------------------------------------------------

    async def _run_batch(self, tx: neo4j.AsyncManagedTransaction, query: str, params: dict[str, Any]) -> int:
        """Run one write statement that returns ``count(*) AS n``; the number it reports."""
        result = await tx.run(query, params)
        record = await result.single()
        return int(record["n"]) if record is not None else 0

    async def _feeder_count(self, tx: neo4j.AsyncManagedTransaction, feeder_id: str) -> int:
        result = await tx.run("MATCH (f:Feeder {uid: $fid}) RETURN count(f) AS n", {"fid": feeder_id})
        record = await result.single()
        return int(record["n"]) if record is not None else 0

    async def _delete_in_tx(self, tx: neo4j.AsyncManagedTransaction, feeder_id: str) -> None:
        for label in cypher.ELEMENT_LABELS:
            await self._run_batch(
                tx,
                f"MATCH (n:{label}) WHERE n.feeder_id = $fid DETACH DELETE n RETURN count(*) AS n",
                {"fid": feeder_id},
            )
        await self._run_batch(
            tx, "MATCH (f:Feeder {uid: $fid}) DETACH DELETE f RETURN count(*) AS n", {"fid": feeder_id}
        )

    async def save_feeder(self, feeder: Feeder, *, replace: bool = False) -> None:
        """Validate and write ``feeder`` in one transaction: all of it or nothing.

        An existing feeder is refused unless ``replace`` (then the old one is deleted and the new
        one written in the same transaction).
        """
        feeder = _ensure_valid(feeder)
        edge_batches, problems = cypher.edges(feeder)
        if problems:
            raise InvalidModel(feeder.id, problems)
        node_rows = [
            (
                ec.label,
                [cypher.element_props(feeder.id, i, el) for i, el in enumerate(getattr(feeder, ec.collection))],
            )
            for ec in cypher.ELEMENT_CLASSES
        ]
        fid = feeder.id

        async def work(tx: neo4j.AsyncManagedTransaction) -> None:
            if await self._feeder_count(tx, fid):
                if not replace:
                    raise BadInput(
                        f"feeder {fid!r} already exists; nothing was written. Use replace to overwrite it "
                        "(CLI: --replace)",
                        element_id=fid,
                    )
                await self._delete_in_tx(tx, fid)
            await self._run_batch(
                tx,
                "CREATE (f:Feeder) SET f = $props RETURN count(*) AS n",
                {"props": cypher.feeder_props(feeder)},
            )
            for label, rows in node_rows:
                query = (
                    f"MATCH (f:Feeder {{uid: $fid}}) UNWIND $rows AS r "
                    f"CREATE (n:{label} {{uid: r.uid}}) SET n += r "
                    f"CREATE (f)-[:HAS]->(n) RETURN count(*) AS n"
                )
                for start in range(0, len(rows), BATCH_ROWS):
                    chunk = rows[start : start + BATCH_ROWS]
                    written = await self._run_batch(tx, query, {"fid": fid, "rows": chunk})
                    if written != len(chunk):
                        raise DmsError(f"wrote {written} of {len(chunk)} {label} nodes of feeder {fid!r}")
            for batch in edge_batches:
                query = (
                    f"UNWIND $rows AS r MATCH (a:{batch.source_label} {{uid: r.a}}) "
                    f"MATCH (b:{batch.target_label} {{uid: r.b}}) "
                    f"CREATE (a)-[:{batch.type}]->(b) RETURN count(*) AS n"
                )
                for start in range(0, len(batch.rows), BATCH_ROWS):
                    edge_chunk = list(batch.rows[start : start + BATCH_ROWS])
                    written = await self._run_batch(tx, query, {"rows": edge_chunk})
                    if written != len(edge_chunk):
                        raise DmsError(
                            f"wrote {written} of {len(edge_chunk)} {batch.source_label}-[:{batch.type}]->"
                            f"{batch.target_label} edges of feeder {fid!r}"
                        )

        await self._schema()
        async with self._translate(f"save feeder {fid!r}"), self._session() as session:
            await session.execute_write(work)

    async def _known_feeders(self) -> str:
        ids = [s.id for s in await self.list_feeders()]
        if not ids:
            return "none (import one first)"
        more = f", ... ({len(ids)} in all)" if len(ids) > _KNOWN_LISTED else ""
        return ", ".join(ids[:_KNOWN_LISTED]) + more

    async def _not_found(self, feeder_id: str) -> NotFound:
        return NotFound(
            f"feeder {feeder_id!r} not found; known feeders: {await self._known_feeders()}",
            element_id=feeder_id,
        )

    async def load_feeder(self, feeder_id: str) -> Feeder:
        """Read a feeder back; equal (``==``) to what was saved, switch states as last recorded."""

        async def work(tx: neo4j.AsyncManagedTransaction) -> tuple[dict[str, Any] | None, dict[str, list]]:
            result = await tx.run("MATCH (f:Feeder {uid: $fid}) RETURN properties(f) AS p", {"fid": feeder_id})
            record = await result.single()
            if record is None:
                return None, {}
            rows: dict[str, list] = {}
            for label in cypher.ELEMENT_LABELS:
                res = await tx.run(
                    f"MATCH (n:{label}) WHERE n.feeder_id = $fid RETURN properties(n) AS p",
                    {"fid": feeder_id},
                )
                rows[label] = [r["p"] async for r in res]
            return dict(record["p"]), rows

        async with self._translate(f"load feeder {feeder_id!r}"), self._session() as session:
            props, rows = await session.execute_read(work)
        if props is None:
            raise await self._not_found(feeder_id)
        collections: dict[str, tuple[object, ...]] = {}
        for ec in cypher.ELEMENT_CLASSES:
            ordered = sorted(rows[ec.label], key=lambda p: p.get("ord", 0))
            collections[ec.collection] = tuple(cypher.from_props(ec.cls, p) for p in ordered)
        return cypher.feeder_from_props(props, collections)

    async def list_feeders(self) -> list[FeederSummary]:
        """Every feeder with its bus and customer counts, sorted by id."""

        async def work(tx: neo4j.AsyncManagedTransaction) -> tuple[list, dict, dict]:
            res = await tx.run("MATCH (f:Feeder) RETURN f.id AS id, f.name AS name")
            feeders = [(r["id"], r["name"]) async for r in res]
            res = await tx.run("MATCH (b:Bus) RETURN b.feeder_id AS fid, count(b) AS n")
            buses = {r["fid"]: r["n"] async for r in res}
            res = await tx.run("MATCH (l:Load) RETURN l.feeder_id AS fid, sum(l.customers) AS n")
            customers = {r["fid"]: r["n"] async for r in res}
            return feeders, buses, customers

        async with self._translate("list feeders"), self._session() as session:
            feeders, buses, customers = await session.execute_read(work)
        return sorted(
            (
                FeederSummary(
                    id=fid,
                    name=name or "",
                    buses=int(buses.get(fid) or 0),
                    customers=int(customers.get(fid) or 0),
                )
                for fid, name in feeders
            ),
            key=lambda s: s.id,
        )

    async def feeder_exists(self, feeder_id: str) -> bool:
        async with self._translate(f"look up feeder {feeder_id!r}"), self._session() as session:
            return bool(await session.execute_read(self._feeder_count, feeder_id))

    async def delete_feeder(self, feeder_id: str) -> None:
        """Delete a feeder and its elements (records about it stay: they are history)."""

        async def work(tx: neo4j.AsyncManagedTransaction) -> bool:
            if not await self._feeder_count(tx, feeder_id):
                return False
            await self._delete_in_tx(tx, feeder_id)
            return True

        async with self._translate(f"delete feeder {feeder_id!r}"), self._session() as session:
            deleted = await session.execute_write(work)
        if not deleted:
            raise await self._not_found(feeder_id)

    async def set_switch_state(self, feeder_id: str, switch_id: str, is_open: bool) -> None:
        """Record a switch's position (``is_open``) durably."""

        async def work(tx: neo4j.AsyncManagedTransaction) -> int:
            return await self._run_batch(
                tx,
                "MATCH (s:Switch {uid: $uid}) SET s.is_open = $open RETURN count(*) AS n",
                {"uid": cypher.element_uid(feeder_id, switch_id), "open": bool(is_open)},
            )

        async with self._translate(f"set switch {switch_id!r} of feeder {feeder_id!r}"), self._session() as s:
            updated = await s.execute_write(work)
        if not updated:
            if not await self.feeder_exists(feeder_id):
                raise await self._not_found(feeder_id)
            raise NotFound(
                f"switch {switch_id!r} not found in feeder {feeder_id!r}; check the switch id",
                element_id=switch_id,
            )

    async def switch_states(self, feeder_id: str) -> dict[str, bool]:
        """Switch id -> ``is_open`` as last recorded."""

        async def work(tx: neo4j.AsyncManagedTransaction) -> tuple[int, dict[str, bool]]:
            exists = await self._feeder_count(tx, feeder_id)
            res = await tx.run(
                "MATCH (s:Switch) WHERE s.feeder_id = $fid RETURN s.id AS id, s.is_open AS open",
                {"fid": feeder_id},
            )
            return exists, {r["id"]: bool(r["open"]) async for r in res}

        async with self._translate(f"read switch states of feeder {feeder_id!r}"), self._session() as s:
            exists, states = await s.execute_read(work)
        if not exists:
            raise await self._not_found(feeder_id)
        return states

    # -- durable records -------------------------------------------------------------------

    async def append_record(
        self,
        label: str,
        record: Mapping[str, str | int | float | bool | None],
        *,
        feeder_id: str | None = None,
        expect_seq: int | None = None,
    ) -> int:
        """Store a record and return its ``seq``: per label, from 1, increasing, never reused.

        The counter node and the record are written in one transaction. Appends from this process
        are serialised per label; other writers are handled by the transaction's retry. With
        ``expect_seq`` the record is stored only if it gets exactly that seq (a hash chain whose
        entry names its predecessor); otherwise nothing is written and :class:`SeqConflict` says
        which seq is next, so the caller re-reads and tries again.
        """
        _check_record_label(label)
        props = {k: v for k, v in _check_record_props(record, f"{label} record").items() if v is not None}
        if feeder_id is not None:
            props["feeder_id"] = feeder_id

        async def work(tx: neo4j.AsyncManagedTransaction) -> int:
            if expect_seq is None:
                result = await tx.run(
                    f"MERGE (c:{cypher.SEQUENCE_LABEL} {{name: $label}}) ON CREATE SET c.seq = 0 "
                    f"SET c.seq = c.seq + 1 "
                    f"WITH c CREATE (n:{label}) SET n = $props, n.seq = c.seq RETURN c.seq AS seq",
                    {"label": label, "props": props},
                )
            else:
                # Writing the counter first takes its write lock (Neo4j) or makes a concurrent
                # writer's transaction fail and retry (ArcadeDB): the seq read here is the
                # committed one, never a stale one.
                head = await tx.run(
                    f"MERGE (c:{cypher.SEQUENCE_LABEL} {{name: $label}}) ON CREATE SET c.seq = 0 "
                    f"SET c.writes = coalesce(c.writes, 0) + 1 RETURN c.seq AS seq",
                    {"label": label},
                )
                current = await head.single()
                newest = int(current["seq"]) if current is not None else 0
                if newest != expect_seq - 1:
                    raise SeqConflict(f"{label} seq {expect_seq} is taken (the newest is {newest}); re-read and retry",
                                      element_id=str(newest))
                result = await tx.run(
                    f"MATCH (c:{cypher.SEQUENCE_LABEL} {{name: $label}}) SET c.seq = c.seq + 1 "
                    f"WITH c CREATE (n:{label}) SET n = $props, n.seq = c.seq RETURN c.seq AS seq",
                    {"label": label, "props": props},
                )
            row = await result.single()
            if row is None:
                raise DmsError(f"appending a {label} record returned no sequence number")
            return int(row["seq"])

        await self._schema()
        async with self._append_locks[label], self._translate(f"append a {label} record"):
            for attempt in range(3):
                try:
                    async with self._session() as s:
                        return await s.execute_write(work)
                except neo4j.exceptions.ConstraintError:
                    if attempt == 2:
                        raise
                    # Another writer created this label's counter at the same moment: it exists now.
            raise AssertionError("unreachable")

    async def write_records(
        self,
        label: str,
        new: Sequence[tuple[Mapping[str, str | int | float | bool | None], str | None]],
        updates: Sequence[tuple[int, Mapping[str, str | int | float | bool | None]]] = (),
    ) -> int:
        """Append ``new`` records ((properties, feeder id)) and change ``updates`` ((seq, properties);
        a ``feeder_id`` among them moves the record) in ONE transaction: all of them or none (a bulk
        import). Returns the number written."""
        _check_record_label(label)
        if label in cypher.APPEND_ONLY_LABELS and updates:
            raise BadInput(f"{label} records are append-only; append a new {label} instead of changing one")
        rows: list[dict[str, object]] = []
        for props, feeder_id in new:
            row = {k: v for k, v in _check_record_props(props, f"{label} record").items() if v is not None}
            if feeder_id is not None:
                row["feeder_id"] = feeder_id
            rows.append(row)
        changes = [{"seq": int(seq), "fid": p.get("feeder_id"),
                    "props": _check_record_props({k: v for k, v in p.items() if k != "feeder_id"},
                                                 f"{label} {seq} update")} for seq, p in updates]

        async def work(tx: neo4j.AsyncManagedTransaction) -> int:
            written = 0
            for i in range(0, len(rows), BATCH_ROWS):
                chunk = rows[i:i + BATCH_ROWS]
                head = await tx.run(
                    f"MERGE (c:{cypher.SEQUENCE_LABEL} {{name: $label}}) ON CREATE SET c.seq = 0 "
                    f"SET c.seq = c.seq + $n, c.writes = coalesce(c.writes, 0) + 1 RETURN c.seq AS seq",
                    {"label": label, "n": len(chunk)},
                )
                top = await head.single()
                base = int(top["seq"]) - len(chunk) if top is not None else 0
                batch = [{"p": r, "seq": base + k + 1} for k, r in enumerate(chunk)]
                written += await self._run_batch(
                    tx, f"UNWIND $rows AS r CREATE (n:{label}) SET n = r.p, n.seq = r.seq RETURN count(*) AS n",
                    {"rows": batch})
            if changes:
                await self._run_batch(
                    tx, f"MERGE (c:{cypher.SEQUENCE_LABEL} {{name: $label}}) ON CREATE SET c.seq = 0 "
                        f"SET c.writes = coalesce(c.writes, 0) + 1 RETURN count(*) AS n", {"label": label})
            for i in range(0, len(changes), BATCH_ROWS):
                written += await self._run_batch(
                    tx, f"UNWIND $rows AS r MATCH (n:{label} {{seq: r.seq}}) "
                    f"SET n += r.props, n.feeder_id = coalesce(r.fid, n.feeder_id) RETURN count(*) AS n",
                    {"rows": changes[i:i + BATCH_ROWS]})
            return written

        if not rows and not changes:
            return 0
        await self._schema()
        async with self._append_locks[label], self._translate(f"write {label} records"), self._session() as s:
            return await s.execute_write(work)

    async def records_version(self, label: str) -> tuple[int, int]:
        """(newest seq, bulk writes) of ``label``: changes whenever :meth:`append_record` or
        :meth:`write_records` writes one, so a reader may cache what it parsed of those records
        (not :meth:`update_record` changes: labels updated one by one are not cacheable this way)."""
        _check_record_label(label)

        async def work(tx: neo4j.AsyncManagedTransaction) -> tuple[int, int]:
            res = await tx.run(f"MATCH (c:{cypher.SEQUENCE_LABEL} {{name: $label}}) "
                               "RETURN c.seq AS seq, coalesce(c.writes, 0) AS writes", {"label": label})
            row = await res.single()
            return (int(row["seq"]), int(row["writes"])) if row is not None else (0, 0)

        async with self._translate(f"read the {label} version"), self._session() as s:
            return await s.execute_read(work)

    async def update_record(self, label: str, seq: int, changes: Mapping[str, str | int | float | bool | None]) -> None:
        """Change properties of a record (``None`` removes one). AuditEntry is append-only."""
        _check_record_label(label)
        if label in cypher.APPEND_ONLY_LABELS:
            raise BadInput(f"{label} records are append-only; append a new {label} instead of changing one")
        props = _check_record_props(changes, f"{label} {seq} update")

        async def work(tx: neo4j.AsyncManagedTransaction) -> int:
            return await self._run_batch(
                tx,
                f"MATCH (n:{label} {{seq: $seq}}) SET n += $props RETURN count(*) AS n",
                {"seq": int(seq), "props": props},
            )

        async with self._translate(f"update {label} {seq}"), self._session() as s:
            updated = await s.execute_write(work)
        if not updated:
            raise NotFound(f"{label} record {seq} not found; list the records to find its seq", element_id=str(seq))

    async def list_records(
        self,
        label: str,
        *,
        feeder_id: str | None = None,
        after_seq: int | None = None,
        before_seq: int | None = None,
        limit: int = 100,
        newest_first: bool = False,
        where: Mapping[str, object] | None = None,
        feeder_ids: Collection[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Records of ``label`` ordered by ``seq`` (oldest first unless ``newest_first``).

        ``after_seq``/``before_seq`` are exclusive bounds (cursor paging); ``where`` matches
        properties by equality (``None`` matches an absent property); ``feeder_ids`` keeps the
        records of those feeders (an access scope: applied in the query, before the limit).
        """
        _check_record_label(label)
        if not isinstance(limit, int) or limit < 0:
            raise BadInput(f"limit={limit!r} must be a whole number >= 0")
        conditions: list[str] = []
        params: dict[str, Any] = {"limit": limit}
        if feeder_id is not None:
            conditions.append("n.feeder_id = $feeder_id")
            params["feeder_id"] = feeder_id
        if feeder_ids is not None:
            if isinstance(feeder_ids, str):
                raise BadInput("feeder_ids must be a collection of feeder ids, not one string")
            if not feeder_ids:
                return []
            conditions.append("n.feeder_id IN $feeder_ids")
            params["feeder_ids"] = sorted(str(f) for f in feeder_ids)
        if after_seq is not None:
            conditions.append("n.seq > $after_seq")
            params["after_seq"] = int(after_seq)
        if before_seq is not None:
            conditions.append("n.seq < $before_seq")
            params["before_seq"] = int(before_seq)
        for i, (key, value) in enumerate(_check_where(where or {}).items()):
            if value is None:
                conditions.append(f"n.{key} IS NULL")
            else:
                conditions.append(f"n.{key} = $w{i}")
                params[f"w{i}"] = value
        where_clause = f"WHERE {' AND '.join(conditions)} " if conditions else ""
        order = "DESC" if newest_first else "ASC"
        query = f"MATCH (n:{label}) {where_clause}RETURN properties(n) AS p ORDER BY n.seq {order} LIMIT $limit"

        async def work(tx: neo4j.AsyncManagedTransaction) -> list[dict[str, Any]]:
            res = await tx.run(query, params)
            return [dict(r["p"]) async for r in res]

        if limit == 0:
            return []
        async with self._translate(f"list {label} records"), self._session() as s:
            rows = await s.execute_read(work)
        for row in rows:
            row.setdefault("feeder_id", None)
        return rows


def _check_where(where: Mapping[str, object]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in where.items():
        if not isinstance(key, str) or not cypher.check_prop_name(key):
            raise BadInput(f"where: property name {key!r} is not an identifier (letters, digits, '_')")
        if value is not None and not isinstance(value, str | int | float | bool):
            raise BadInput(f"where: {key!r} must be compared with a str, int, float, bool or None")
        out[key] = value
    return out
