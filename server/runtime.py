"""Start and stop the real components in order: graph store, Ray, the feeder fleet.

``start_runtime`` is used by the app's lifespan (``dms serve``/``dms demo``) and by the integration
tests. If any step fails, everything started so far is stopped before the error propagates:
nothing is left running.

When the runtime started the embedded ArcadeDB itself, it supervises it: a store whose process
dies is reaped and restarted on the same data directory and port, and ``/readyz`` turns green
again once it answers. An external Neo4j (``DMS_NEO4J_URI``) is not supervised here: its own
clustering or the platform restarts it; the driver reconnects either way.

This module is imported by one-off CLI commands for :func:`open_store`: Ray, the actors and the
solvers (pandapower, seconds to import) are imported only where a runtime is started.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from graph_schema.arcadedb import EmbeddedArcadeDB
from graph_schema.errors import StoreUnavailable
from graph_schema.store import GraphStore
from security.audit import AuditLog
from server.settings import Settings

if TYPE_CHECKING:  # heavy (Ray, pandapower): imported where a runtime is started
    from actors.feeder_actor import ActorOptions, StoreAddress
    from actors.fleet import EventBusClient, Fleet
    from server.audit_follower import AuditFollower
    from server.outage_service import OutageService
    from server.reports.jobs import ReportService
    from server.services import ControlService, EventHub, GridService

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    store: GraphStore
    fleet: Fleet
    grid: GridService
    arcadedb: EmbeddedArcadeDB | None = None
    started_ray: bool = False
    extras: dict[str, object] = field(default_factory=dict)
    events: EventBusClient | None = None
    hub: EventHub | None = None
    control: ControlService | None = None
    # Audits the controls of the actors' applications from the event bus (the key stays here).
    audit_follower: AuditFollower | None = None
    # One audit log per runtime: a single writer keeps the hash chain unforked, however many apps
    # (a test's second server, say) share the runtime.
    audit: AuditLog = field(init=False)
    outages: OutageService = field(init=False)
    # Report jobs, artefacts and the report scheduler (server/reports).
    reports: ReportService = field(init=False)

    def __post_init__(self) -> None:
        from server.outage_service import OutageService
        from server.reports.jobs import ReportService

        self.audit = AuditLog.from_settings(self.store, self.settings)  # keyed, anchored (#17.9)
        self.outages = OutageService(self.store)
        self.reports = ReportService(self.store, self.settings, lambda: self.audit)

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            await self.reports.stop()
        ami = self.extras.pop("ami_ingest", None)
        if ami is not None:
            with contextlib.suppress(Exception):
                await ami.stop()  # type: ignore[attr-defined]
        studies = self.extras.pop("studies", None)  # analysis jobs (server/study_service.py)
        if studies is not None:
            with contextlib.suppress(Exception):
                await studies.stop()  # type: ignore[attr-defined]
        if self.audit_follower is not None:
            await self.audit_follower.stop()
        self.audit.flush_anchor()  # the newest audit entries are anchored outside the store too
        if self.hub is not None:
            await self.hub.stop()
        if self.events is not None:
            with contextlib.suppress(Exception):
                await self.events.flush()
        await stop_parts(self.fleet, self.started_ray, self.store, self.arcadedb,
                         owns_fleet=self.started_ray and self.settings.ray_address is None)


async def stop_parts(
    fleet: Fleet | None, started_ray: bool, store: GraphStore | None, arcadedb: EmbeddedArcadeDB | None,
    *, owns_fleet: bool = False,
) -> None:
    if fleet is not None:
        with contextlib.suppress(Exception):
            # Only the process that started a local Ray owns its fleet; on a shared cluster
            # (DMS_RAY_ADDRESS) the fleet serves the other replicas and stays.
            await fleet.stop(shutdown=owns_fleet)
    if started_ray:
        from actors.fleet import shutdown_ray

        with contextlib.suppress(Exception):
            shutdown_ray()
    if store is not None:
        with contextlib.suppress(Exception):
            await store.close()
    if arcadedb is not None:
        with contextlib.suppress(Exception):
            await arcadedb.stop()


async def open_store(settings: Settings) -> tuple[GraphStore, EmbeddedArcadeDB | None]:
    """The configured Neo4j, or a local ArcadeDB started here when ``DMS_NEO4J_URI`` is unset."""
    arcadedb: EmbeddedArcadeDB | None = None
    try:
        if settings.neo4j_uri is None:
            arcadedb = EmbeddedArcadeDB(settings.data_dir, database=settings.neo4j_database)
            await arcadedb.start()
            store = await GraphStore.connect(arcadedb.uri, arcadedb.user, arcadedb.password, arcadedb.database)
        else:
            store = await GraphStore.connect(
                settings.neo4j_uri, settings.neo4j_user, settings.neo4j_password, settings.neo4j_database
            )
        await store.ensure_schema()
    except BaseException:
        if arcadedb is not None:
            await arcadedb.stop()
        raise
    return store, arcadedb


async def start_store(settings: Settings) -> tuple[GraphStore, EmbeddedArcadeDB | None]:
    """:func:`open_store` for a long-running server: an embedded store started here is supervised,
    i.e. reaped and restarted (same data directory and port) when its process dies, until it is
    stopped. One-off commands use :func:`open_store` alone."""
    store, arcadedb = await open_store(settings)
    if arcadedb is not None:
        arcadedb.supervise()
    return store, arcadedb


def store_address(settings: Settings, arcadedb: EmbeddedArcadeDB | None) -> StoreAddress:
    from actors.feeder_actor import StoreAddress

    if arcadedb is not None:
        return StoreAddress(arcadedb.uri, arcadedb.user, arcadedb.password, arcadedb.database)
    assert settings.neo4j_uri is not None
    return StoreAddress(settings.neo4j_uri, settings.neo4j_user, settings.neo4j_password, settings.neo4j_database)


async def import_demo_feeders(store: GraphStore) -> list[str]:
    """Import the built-in demo feeders that are absent; returns the ids imported."""
    from graph_schema.importers import DEMO_FEEDERS

    imported = []
    for fid, build in DEMO_FEEDERS.items():
        if not await store.feeder_exists(fid):
            await store.save_feeder(build())
            imported.append(fid)
    return imported


def actor_options(settings: Settings) -> ActorOptions:
    from actors.feeder_actor import ActorOptions

    return ActorOptions(
        scan_interval_s=settings.scan_interval_s,
        select_timeout_s=settings.select_timeout_s,
        confirm_timeout_s=settings.confirm_timeout_s,
        fdir_mode=settings.fdir_mode,
        fdir_modes=settings.fdir_modes,
        fdir_settle_s=settings.fdir_settle_s,
        historian_uri=settings.historian_root,
        historian_flush_s=settings.historian_flush_s,
        historian_retention_days=settings.historian_retention_days,
    )


async def start_runtime(settings: Settings, *, demo_feeders: bool = False) -> Runtime:
    from actors.apps import DEFAULT_APPS
    from actors.fleet import Fleet, connect_ray, start_event_bus
    from server.audit_follower import AuditFollower
    from server.services import ControlService, EventHub, GridService

    store: GraphStore | None = None
    arcadedb: EmbeddedArcadeDB | None = None
    fleet: Fleet | None = None
    hub: EventHub | None = None
    follower: AuditFollower | None = None
    started_ray = False
    if settings.opcua_pki_dir:
        from protocols.certs import load_client_pki

        load_client_pki(settings.opcua_pki_dir)  # a bad certificate folder stops start-up, naming the file
    try:
        store, arcadedb = await start_store(settings)
        if demo_feeders:
            imported = await import_demo_feeders(store)
            if imported:
                log.info("imported demo feeders: %s", ", ".join(imported))
        started_ray = connect_ray(address=settings.ray_address, data_dir=settings.data_dir)
        address = store_address(settings, arcadedb)
        events = start_event_bus(address)
        hub = EventHub(events, store)
        await hub.start()
        fleet = Fleet(address, options=actor_options(settings))
        feeder_ids = [f.id for f in await store.list_feeders()]
        await fleet.start(feeder_ids)
        fleet.start_watching(discover=True)
        grid = GridService(store, fleet)
        rt = Runtime(
            settings=settings,
            store=store,
            fleet=fleet,
            grid=grid,
            arcadedb=arcadedb,
            started_ray=started_ray,
            events=events,
            hub=hub,
            control=ControlService(grid),
        )
        if rt.control is not None:
            rt.control.bind_audit(lambda: rt.audit)  # bound once: copies of the runtime keep it
        follower = AuditFollower(hub, store, lambda: rt.audit, [cls.name for cls in DEFAULT_APPS])
        await follower.start()
        rt.audit_follower = follower
        from server.ami_ingest import start_ami_ingest

        rt.extras["ami_ingest"] = start_ami_ingest(settings, grid)  # smart-meter files -> historian
        await rt.reports.start()  # the report scheduler (DMS_REPORT_SCHEDULER) with the stored schedules
        return rt
    except BaseException:
        if follower is not None:
            await follower.stop()
        if hub is not None:
            await hub.stop()
        await stop_parts(fleet, started_ray, store, arcadedb,
                         owns_fleet=started_ray and settings.ray_address is None)
        raise


def describe_store_failure(exc: StoreUnavailable, settings: Settings) -> str:
    where = settings.neo4j_uri or "the embedded ArcadeDB (DMS_NEO4J_URI unset)"
    return f"graph store unavailable ({where}): {exc.message}"
