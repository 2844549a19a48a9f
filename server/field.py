"""Binding the feeder actors to their field devices.

``dms demo``: :func:`start_field` starts the field simulator in this process for the demo feeders
(real Modbus TCP and OPC UA servers on loopback, PKI and point maps written under the data
directory by :func:`protocols.sim_admin.simulator_session`) and attaches each feeder actor to its
devices. ``dms serve``: :func:`attach_stored` attaches every feeder whose point map is in the graph
store (``PointMap`` records, one per feeder, written by :func:`attach` and by ``dms pointmap import``),
or, failing that, in ``<data_dir>/pointmaps/<feeder>.json``. The fleet remembers each binding and
applies it again to an actor it had to recreate.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graph_schema.importers import DEMO_FEEDERS, VOLTVAR_FEEDERS
from protocols.pointmap import PointMap
from protocols.sim_admin import POINTMAP_DIR, simulator_session
from server.runtime import Runtime
from server.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class FieldHandle:
    """What :func:`start_field` started; ``await handle.stop()`` detaches and stops it all."""

    runtime: Runtime
    feeder_ids: list[str]
    simulator: Any = None
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def stop(self) -> None:
        for fid in self.feeder_ids:
            with contextlib.suppress(Exception):
                await self.runtime.fleet.detach_field(fid)
        await self._stack.aclose()


POINTMAP_LABEL = "PointMap"


async def save_point_map(store: Any, point_map: PointMap) -> int:
    """Store a feeder's point map with its model (replacing the one stored before); returns its seq."""
    text = point_map.to_json()
    rows = await store.list_records(POINTMAP_LABEL, feeder_id=point_map.feeder_id, limit=1, newest_first=True)
    if rows:
        seq = int(rows[0]["seq"])
        await store.update_record(POINTMAP_LABEL, seq, {"json": text, "points": len(point_map.points)})
        return seq
    return int(await store.append_record(POINTMAP_LABEL, {"json": text, "points": len(point_map.points)},
                                         feeder_id=point_map.feeder_id))


async def load_point_map(runtime: Runtime, feeder_id: str) -> PointMap | None:
    rows = await runtime.store.list_records(POINTMAP_LABEL, feeder_id=feeder_id, limit=1, newest_first=True)
    if not rows:
        return None
    return PointMap.from_json(str(rows[0]["json"]), await runtime.grid.model(feeder_id))


async def attach(runtime: Runtime, settings: Settings, point_map: PointMap, *,
                 simulator: bool = False) -> dict[str, int]:
    """Bind a feeder actor to its field devices and keep the point map in the graph store.

    OPC UA uses ``DMS_OPCUA_PKI_DIR`` when set; ``simulator=True`` (the demo's field simulator)
    always uses the demo certificates the simulator trusts."""
    pki_dir = None if simulator else settings.opcua_pki_dir
    info = await runtime.fleet.attach_field(point_map.feeder_id, point_map.to_json(), str(settings.data_dir),
                                            settings.opcua_allow_nosecurity, pki_dir)
    await save_point_map(runtime.store, point_map)
    return info


async def start_field(runtime: Runtime, settings: Settings, *, speed: float = 1.0, tick_s: float = 1.0,
                      feeder_ids: list[str] | None = None) -> FieldHandle:
    """Start the simulator for the demo feeders and attach their actors to it."""
    ids = feeder_ids if feeder_ids is not None else [f for f in runtime.fleet.feeder_ids
                                                     if f in DEMO_FEEDERS or f in VOLTVAR_FEEDERS]
    feeders = [await runtime.grid.model(fid) for fid in ids]
    handle = FieldHandle(runtime, ids)
    try:
        handle.simulator = await handle._stack.enter_async_context(simulator_session(
            feeders, settings.data_dir, speed=speed, allow_nosecurity=settings.opcua_allow_nosecurity,
            tick_s=tick_s))
        for fid in ids:
            info = await attach(runtime, settings, handle.simulator.point_maps[fid], simulator=True)
            log.info("feeder %s attached to the simulator: %s", fid, info)
            ders = [e.to_dict() for e in handle.simulator.sunspec.endpoints(fid)]
            if ders:  # DER management (#12): the simulated inverters' SunSpec endpoints (persisted by the app)
                await runtime.fleet.call_app(fid, "der", "attach", ders, "demo")
    except BaseException:
        await handle.stop()
        raise
    return handle


async def attach_stored(runtime: Runtime, settings: Settings) -> list[str]:
    """Attach every feeder with a point map in the graph store (else ``<data_dir>/pointmaps/<feeder>.json``);
    returns their ids. A map that no longer fits its feeder is logged with every problem and skipped."""
    attached = []
    folder = Path(settings.data_dir) / POINTMAP_DIR
    for fid in runtime.fleet.feeder_ids:
        path = folder / f"{fid}.json"
        try:
            pm = await load_point_map(runtime, fid)
            if pm is None and path.exists():
                pm = PointMap.load(path, await runtime.grid.model(fid))
            if pm is None:
                continue
            await attach(runtime, settings, pm)
            attached.append(fid)
        except Exception:
            log.exception("feeder %s: its point map could not be attached", fid)
    return attached

