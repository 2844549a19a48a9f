"""The feeder actor: one per feeder, owner of that feeder's live state.

A plain Python class (``actors/fleet.py`` is the only place that turns it into a Ray actor). It
loads its feeder and the recorded switch states from the graph store, keeps live state (switch
positions, load and DER values), runs topology processing and power flow through the pure cores
when that state changes, and answers queries. It never trusts memory it did not persist: after a
restart it rebuilds from the store.

Solves run in a worker thread (``asyncio.to_thread``) so the actor keeps answering pings while a
large feeder solves; one lock serializes state changes and solves.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

from actors.powerflow import PowerFlowModel, PowerFlowResult
from actors.topology import TopologyGraph, TopologyResult
from graph_schema.errors import BadInput, DmsError, NotFound
from graph_schema.model import Feeder
from graph_schema.store import GraphStore
from server.settings import Secret

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StoreAddress:
    """How an actor reaches the graph store (it opens its own driver on its own event loop)."""

    uri: str
    user: str
    password: Secret
    database: str | None


@dataclass(frozen=True, slots=True)
class FeederState:
    """The live part of a feeder, versioned: ``version`` grows with every change."""

    feeder_id: str
    version: int
    switch_states: Mapping[str, bool]
    load_scale: float
    topology: TopologyResult
    power_flow: PowerFlowResult
    updated_at: float = field(default_factory=time.time)


class FeederActor:
    def __init__(self, feeder_id: str, store: StoreAddress) -> None:
        self.feeder_id = feeder_id
        self._store_address = store
        self._store: GraphStore | None = None
        self._feeder: Feeder | None = None
        self._pf: PowerFlowModel | None = None
        self._topo_graph: TopologyGraph | None = None
        self._switch_states: dict[str, bool] = {}
        self._load_scale = 1.0
        self._state: FeederState | None = None
        self._version = 0
        self._lock = asyncio.Lock()
        self._started_at = time.time()

    # -- lifecycle -------------------------------------------------------------------------------

    async def _ready(self) -> None:
        """Load from the store on first use (also after Ray restarted this actor)."""
        if self._state is not None:
            return
        async with self._lock:
            if self._state is not None:
                return
            await self._load()

    async def _load(self) -> None:
        if self._store is None:
            a = self._store_address
            self._store = await GraphStore.connect(a.uri, a.user, a.password, a.database)
        feeder = await self._store.load_feeder(self.feeder_id)
        states = await self._store.switch_states(self.feeder_id)
        self._feeder = feeder
        self._switch_states = dict(states)
        self._pf = await asyncio.to_thread(PowerFlowModel, feeder)
        self._topo_graph = TopologyGraph(feeder)
        await self._resolve()
        log.info("feeder %s loaded: %d buses, %d switches", self.feeder_id, len(feeder.buses), len(feeder.switches))

    async def _resolve(self) -> FeederState:
        assert self._pf is not None and self._topo_graph is not None
        states = dict(self._switch_states)
        scale = self._load_scale
        topology = self._topo_graph.process(states)
        result = await asyncio.to_thread(self._pf.solve, switch_states=states, load_scale=scale)
        self._version += 1
        self._state = FeederState(
            feeder_id=self.feeder_id,
            version=self._version,
            switch_states=states,
            load_scale=scale,
            topology=topology,
            power_flow=result,
        )
        return self._state

    async def reload(self) -> int:
        """Drop everything held in memory and rebuild from the store (after an import, say)."""
        async with self._lock:
            self._state = None
            await self._load()
            assert self._state is not None
            return self._state.version

    async def close(self) -> None:
        if self._store is not None:
            await self._store.close()
            self._store = None

    # -- queries ---------------------------------------------------------------------------------

    async def ping(self) -> dict[str, object]:
        await self._ready()
        assert self._state is not None
        return {
            "feeder_id": self.feeder_id,
            "version": self._state.version,
            "started_at": self._started_at,
            "pid": os.getpid(),
        }

    async def model(self) -> Feeder:
        await self._ready()
        assert self._feeder is not None
        return self._feeder

    async def state(self) -> FeederState:
        await self._ready()
        assert self._state is not None
        return self._state

    async def power_flow(self, *, fresh: bool = False) -> PowerFlowResult:
        """The latest result; ``fresh=True`` solves again now (what the benchmark measures)."""
        await self._ready()
        if fresh:
            async with self._lock:
                return (await self._resolve()).power_flow
        assert self._state is not None
        return self._state.power_flow

    # -- state changes ---------------------------------------------------------------------------

    async def set_switch_state(self, switch_id: str, is_open: bool, *, persist: bool = True) -> FeederState:
        """Record a switch position (from telemetry or a confirmed control) and re-solve."""
        await self._ready()
        assert self._feeder is not None and self._store is not None
        if switch_id not in self._switch_states:
            raise NotFound(
                f"switch {switch_id!r} is not on feeder {self.feeder_id!r}; query feeder.switches for its ids",
                element_id=switch_id,
            )
        async with self._lock:
            if persist:
                await self._store.set_switch_state(self.feeder_id, switch_id, is_open)
            self._switch_states[switch_id] = is_open
            return await self._resolve()

    async def set_load_scale(self, scale: float) -> FeederState:
        await self._ready()
        if not (0.0 <= scale <= 10.0):
            raise BadInput(f"load scale {scale} is out of range; use a factor between 0 and 10")
        async with self._lock:
            self._load_scale = scale
            return await self._resolve()


def describe_error(exc: BaseException) -> str:
    """One line for logs and health reports, for errors raised inside an actor."""
    if isinstance(exc, DmsError):
        return f"{exc.code}: {exc.message}"
    return f"{type(exc).__name__}: {exc}"
