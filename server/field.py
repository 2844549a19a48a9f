"""Binding the feeder actors to their field devices.

``dms demo``: :func:`start_field` starts the field simulator in this process for the demo feeders
(real Modbus TCP and OPC UA servers on loopback, PKI and point maps written under the data
directory by :func:`protocols.sim_admin.simulator_session`) and attaches each feeder actor to its
devices. ``dms serve``: :func:`attach_from_files` attaches every feeder that has a point map file
``<data_dir>/pointmaps/<feeder>.json``.

Point maps are kept as those files for now: the graph store's record labels are a closed set
(``ControlAction``, ``Event``, ``Outage``, ``AuditEntry``, ``Tag``) and a ``PointMap`` label is
still to be added there. The fleet remembers each binding and applies it again to an actor it had
to recreate.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from graph_schema.importers import DEMO_FEEDERS
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


async def attach(runtime: Runtime, settings: Settings, point_map: PointMap) -> dict[str, int]:
    return await runtime.fleet.attach_field(point_map.feeder_id, point_map.to_json(), str(settings.data_dir),
                                            settings.opcua_allow_nosecurity)


async def start_field(runtime: Runtime, settings: Settings, *, speed: float = 1.0, tick_s: float = 1.0,
                      feeder_ids: list[str] | None = None) -> FieldHandle:
    """Start the simulator for the demo feeders and attach their actors to it."""
    ids = feeder_ids if feeder_ids is not None else [f for f in runtime.fleet.feeder_ids if f in DEMO_FEEDERS]
    feeders = [await runtime.grid.model(fid) for fid in ids]
    handle = FieldHandle(runtime, ids)
    try:
        handle.simulator = await handle._stack.enter_async_context(simulator_session(
            feeders, settings.data_dir, speed=speed, allow_nosecurity=settings.opcua_allow_nosecurity,
            tick_s=tick_s))
        for fid in ids:
            info = await attach(runtime, settings, handle.simulator.point_maps[fid])
            log.info("feeder %s attached to the simulator: %s", fid, info)
    except BaseException:
        await handle.stop()
        raise
    return handle


async def attach_from_files(runtime: Runtime, settings: Settings) -> list[str]:
    """Attach every feeder that has ``<data_dir>/pointmaps/<feeder>.json``; returns their ids."""
    attached = []
    folder = Path(settings.data_dir) / POINTMAP_DIR
    for fid in runtime.fleet.feeder_ids:
        path = folder / f"{fid}.json"
        if not path.exists():
            continue
        try:
            await attach(runtime, settings, PointMap.load(path, await runtime.grid.model(fid)))
            attached.append(fid)
        except Exception:
            log.exception("feeder %s: point map %s could not be attached", fid, path)
    return attached
