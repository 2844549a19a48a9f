"""Reads outage records (label ``Outage``, written by the feeder actors' FDIR engine) for the
GraphQL outage queries and the public feed. Records are the durable truth: a restarted server or
actor answers from them."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from actors.cores.outages import Outage, store_record
from graph_schema.errors import DmsError, NotFound
from graph_schema.store import GraphStore

log = logging.getLogger(__name__)

LABEL = "Outage"
SCAN_LIMIT = 1000


class OutageService:
    def __init__(self, store: GraphStore) -> None:
        self.store = store

    @staticmethod
    def _parse(rows: Iterable[dict]) -> list[tuple[int, Outage]]:
        out = []
        for row in rows:
            try:
                out.append((int(row["seq"]), Outage.from_record(row)))
            except (KeyError, ValueError, TypeError, DmsError):
                log.error("outage record seq=%s is malformed; skipped", row.get("seq"))
        return out

    async def save(self, outage: Outage, seq: int | None = None) -> int:
        """Append a new outage record, or update the one at ``seq``; returns its seq."""
        record, feeder_id = store_record(outage.to_record())
        if seq is None:
            return await self.store.append_record(LABEL, record, feeder_id=feeder_id)
        await self.store.update_record(LABEL, seq, record)
        return seq

    async def page(self, *, active: bool | None, feeder_id: str | None, feeders_in_scope: frozenset[str] | None,
                   before_seq: int | None, limit: int) -> list[tuple[int, Outage]]:
        """Newest first; filters applied before paging so pages are full."""
        found: list[tuple[int, Outage]] = []
        cursor = before_seq
        while len(found) < limit:
            rows = await self.store.list_records(LABEL, feeder_id=feeder_id, before_seq=cursor, limit=200,
                                                 newest_first=True)
            if not rows:
                break
            for seq, outage in self._parse(rows):
                if active is not None and outage.active != active:
                    continue
                if feeders_in_scope is not None and outage.feeder_id not in feeders_in_scope:
                    continue
                found.append((seq, outage))
            cursor = int(rows[-1]["seq"])
            if len(rows) < 200:
                break
        return found[:limit]

    async def get(self, outage_id: str) -> Outage:
        rows = await self.store.list_records(LABEL, where={"id": outage_id}, limit=1)
        parsed = self._parse(rows)
        if not parsed:
            raise NotFound(f"outage {outage_id!r} not found; list outages with the outages query", element_id=outage_id)
        return parsed[0][1]

    async def active(self) -> list[Outage]:
        rows = await self.store.list_records(LABEL, limit=SCAN_LIMIT, newest_first=True)
        return [o for _, o in self._parse(rows) if o.active and not o.momentary]
