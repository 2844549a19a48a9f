"""Services the GraphQL resolvers call; resolvers never open database sessions themselves.

``GridService`` reads feeders through the fleet (live state) and the graph store (the list of
feeders, imports). A feeder's static model is cached here per feeder and dropped on import, so a
query pays only for the live state it asks for.
"""

from __future__ import annotations

import asyncio

from actors.feeder_actor import FeederState
from actors.fleet import Fleet
from actors.powerflow import PowerFlowResult
from graph_schema.errors import NotFound
from graph_schema.model import Feeder
from graph_schema.store import FeederSummary, GraphStore


class GridService:
    def __init__(self, store: GraphStore, fleet: Fleet) -> None:
        self.store = store
        self.fleet = fleet
        self._models: dict[str, Feeder] = {}
        self._model_locks: dict[str, asyncio.Lock] = {}

    async def list_feeders(self) -> list[FeederSummary]:
        return await self.store.list_feeders()

    def _known(self, feeder_id: str) -> None:
        if feeder_id not in self.fleet.feeder_ids:
            known = ", ".join(self.fleet.feeder_ids) or "none"
            raise NotFound(f"feeder {feeder_id!r} not found; known feeders: {known}", element_id=feeder_id)

    async def model(self, feeder_id: str) -> Feeder:
        self._known(feeder_id)
        cached = self._models.get(feeder_id)
        if cached is not None:
            return cached
        lock = self._model_locks.setdefault(feeder_id, asyncio.Lock())
        async with lock:
            if feeder_id not in self._models:
                self._models[feeder_id] = await self.fleet.call(feeder_id, "model")
            return self._models[feeder_id]

    async def state(self, feeder_id: str) -> FeederState:
        self._known(feeder_id)
        state: FeederState = await self.fleet.call(feeder_id, "state")
        return state

    async def power_flow(self, feeder_id: str, *, fresh: bool = False) -> PowerFlowResult:
        self._known(feeder_id)
        result: PowerFlowResult = await self.fleet.call(feeder_id, "power_flow", fresh=fresh)
        return result

    async def import_feeder(self, feeder: Feeder, *, replace: bool = False) -> None:
        await self.store.save_feeder(feeder, replace=replace)
        self._models.pop(feeder.id, None)
        await self.fleet.add(feeder.id)
