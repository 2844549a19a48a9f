"""Malformed Modbus frames, end to end: the simulator's real Modbus server garbles one RTU's answers,
the real feeder actor (local Ray, ArcadeDB over Bolt) scans it with the real client.

Issue #17.18: a truncated answer (byte count 1, no data) used to raise IndexError at every scan and
leave the RTU's points GOOD with a frozen ``received_ts`` and no alarm; an RTU that did so from the
start had no measurements and no alarm. Now a malformed answer is a communication failure of that
RTU: its points go INVALID (the device answers, with nothing usable) and its device alarm (COMM_LOSS,
naming the defect) is raised; both clear when its frames are good.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.integration.conftest import bound_field, release_field
from tests.integration.test_realtime import wait_for

F = "case33bw"
RTU = f"{F}/rtu2"  # sw9..sw16
LOST_POINT = f"{F}/sw9/STATUS"
OTHER_POINT = f"{F}/sw25/STATUS"  # RTU 4


async def qualities(runtime: Any) -> dict[str, str]:
    return {m["point_id"]: m["quality"] for m in await runtime.fleet.call(F, "measurements")}


async def comm_alarm(runtime: Any) -> bool:
    return any(a.element_id == RTU and a.kind == "COMM_LOSS" for a in await runtime.fleet.call(F, "alarms"))


async def rtu_failed(runtime: Any, as_: tuple[str, ...] = ("INVALID",)) -> bool:
    q = await qualities(runtime)
    return (await comm_alarm(runtime) and q.get(LOST_POINT) in as_ and q.get(OTHER_POINT) == "GOOD"
            and (await runtime.fleet.call(F, "field_status"))["devices"].get(RTU) is False)


async def rtu_recovered(runtime: Any) -> bool:
    q = await qualities(runtime)
    return q.get(LOST_POINT) == "GOOD" and not await comm_alarm(runtime)


@pytest.fixture
async def field(runtime: Any, field_sim: Any) -> AsyncIterator[Any]:
    yield field_sim
    field_sim.malformed_frames(RTU, None)


async def test_rtu_sending_truncated_frames_from_the_first_scan_is_comm_lost_and_alarmed(runtime, field) -> None:
    from server.field import attach

    field.malformed_frames(RTU, "truncate")  # before the actor ever reads it
    try:
        await attach(runtime, runtime.settings, field.point_maps[F])
        await wait_for(lambda: rtu_failed(runtime), 20)
        # Not a blip: it stays failed scan after scan, and never shows a value it did not read.
        await asyncio.sleep(2 * runtime.settings.scan_interval_s)
        assert await rtu_failed(runtime)
        values = {m["point_id"]: m for m in await runtime.fleet.call(F, "measurements")}
        assert values[LOST_POINT]["value"] is None

        field.malformed_frames(RTU, None)
        await wait_for(lambda: rtu_recovered(runtime), 20)
    finally:
        await release_field(runtime, field, (F,))


@pytest.mark.parametrize("mode", ["truncate", "oversize", "function"])
async def test_rtu_starting_to_send_malformed_frames_mid_run_is_comm_lost_and_recovers(runtime, field, mode) -> None:
    async with bound_field(runtime, field, (F,), ready_within_s=30):
        assert (await qualities(runtime))[LOST_POINT] == "GOOD"
        field.malformed_frames(RTU, mode)
        # A wrong function code is a frame pymodbus cannot even match to the request: it reports no
        # answer, so those points are COMM_LOST; a frame it reads but that does not fit is INVALID.
        seen_as = ("INVALID", "COMM_LOST") if mode == "function" else ("INVALID",)
        await wait_for(lambda: rtu_failed(runtime, seen_as), 15)
        field.malformed_frames(RTU, None)
        await wait_for(lambda: rtu_recovered(runtime), 15)
