"""The DER application's memory across a restart, on fake ports (no Ray, no field): what it
curtailed is stored as a Setting record when it changes and read back at start, so a recreated
application still releases the P limits the devices kept."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from actors.apps.der_app import DerApp
from actors.cores.der import Curtailment


class Ports:
    feeder_id = "f1"
    app_name = "der"

    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    async def list_records(self, label: str, *, where: dict[str, Any] | None = None, limit: int = 100,
                           newest_first: bool = False) -> list[dict[str, Any]]:
        rows = [r for r in self.records if all(r.get(k) == v for k, v in (where or {}).items())]
        return list(reversed(rows))[:limit] if newest_first else rows[:limit]

    async def append_record(self, label: str, props: dict[str, Any]) -> int:
        self.records.append(dict(props))
        return len(self.records)

    def spawn(self, coro: Any, name: str = "") -> asyncio.Task[Any]:
        return asyncio.get_running_loop().create_task(coro)


async def test_what_was_curtailed_is_stored_and_read_back_at_start() -> None:
    ports = Ports()
    app = DerApp()
    await app.start(ports)  # type: ignore[arg-type]
    assert app.management()["curtailed"] == []
    app._curtailed = {"der8": Curtailment("der8", 0.4, "line3 loaded 120 % beyond its limit 100 %", "line3")}
    await app._remember_curtailed({})
    await app._remember_curtailed(dict(app._curtailed))  # unchanged: nothing more written
    assert [r["key"] for r in ports.records] == ["der_curtailed"]
    await app.close()

    again = DerApp()
    await again.start(ports)  # type: ignore[arg-type]
    assert again.management()["curtailed"] == ["der8"]
    assert again._curtailed["der8"] == app._curtailed["der8"]
    await again.close()


async def test_malformed_stored_curtailments_are_logged_and_left_out() -> None:
    ports = Ports()
    ports.records.append({"key": "der_curtailed", "value": json.dumps({"der8": {"p_limit_mw": "x"}})})
    app = DerApp()
    await app.start(ports)  # type: ignore[arg-type]
    assert app.management()["curtailed"] == []
    await app.close()
