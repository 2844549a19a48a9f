"""Detaching a feeder from its field devices finishes in bounded time, whatever the protocol
libraries do with a cancellation (a Ray call that never returns would time out at the fleet and
leave the feeder half-bound)."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from actors import field_binding
from actors.field_binding import FieldBinding


class HangingClient:
    """A client whose close never returns (a device that never answers the disconnect)."""

    def __init__(self) -> None:
        self.close_called = False

    async def close(self) -> None:
        self.close_called = True
        await asyncio.Event().wait()


class GoodClient:
    def __init__(self) -> None:
        self.closed = False

    async def close(self) -> None:
        self.closed = True


async def _swallows_cancel(release: asyncio.Event) -> None:
    """What some protocol code does: catch the cancellation and go on waiting."""
    while not release.is_set():
        try:
            await release.wait()
        except asyncio.CancelledError:
            continue


async def _plain_poll() -> None:
    await asyncio.sleep(3600)


def _binding(on_values=lambda device_id, values: None, scan_interval_s: float = 1.0) -> FieldBinding:
    return FieldBinding("f1", on_values, scan_interval_s=scan_interval_s)


async def test_detach_is_bounded_when_a_task_swallows_cancellation_and_a_close_hangs(monkeypatch, caplog):
    monkeypatch.setattr(field_binding, "DETACH_TIMEOUT_S", 0.3)
    actor = _binding()
    release = asyncio.Event()
    stubborn = asyncio.create_task(_swallows_cancel(release), name="poll dev-stuck")
    plain = asyncio.create_task(_plain_poll(), name="poll dev-ok")
    hanging, good = HangingClient(), GoodClient()
    actor.tasks = [stubborn, plain]
    actor.clients = {"dev-stuck": hanging, "dev-ok": good}
    await asyncio.sleep(0)

    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="actors.field_binding"):
        await actor.detach()
    assert time.monotonic() - t0 < 2.0
    assert plain.cancelled() and good.closed and hanging.close_called
    assert actor.clients == {} and actor.tasks == [] and actor.point_map is None
    left = " ".join(r.getMessage() for r in caplog.records)
    assert "poll dev-stuck" in left and "close dev-stuck" in left and "did not stop" in left
    assert not stubborn.done()  # left to the loop, not awaited forever
    release.set()
    await asyncio.wait_for(stubborn, 1.0)


async def test_detach_with_nothing_attached_is_a_no_op():
    actor = _binding()
    await actor.detach()
    assert actor.clients == {} and actor.tasks == []


@pytest.mark.parametrize("n", [1, 5])
async def test_detach_closes_every_client(n):
    actor = _binding()
    clients = {f"d{i}": GoodClient() for i in range(n)}
    actor.clients = dict(clients)
    await actor.detach()
    assert all(c.closed for c in clients.values())


class ReadingClient:
    def __init__(self) -> None:
        self.reads = 0

    async def read_points(self) -> list[object]:
        self.reads += 1
        await asyncio.sleep(0)
        return [object()]


async def test_a_scan_task_of_an_earlier_binding_stops_by_itself_and_writes_nothing():
    """Even if its cancellation was swallowed, a scan task whose client is no longer bound ends at
    its next turn and never applies values into live state."""
    applied: list[tuple[str, object]] = []
    delivered = asyncio.Event()

    def apply(device_id: str, values: object) -> None:
        applied.append((device_id, values))
        delivered.set()

    actor = _binding(apply, scan_interval_s=0.01)
    old, new = ReadingClient(), ReadingClient()
    actor.clients = {"rtu1": old}
    task = asyncio.create_task(actor.poll("rtu1", old))
    await asyncio.wait_for(delivered.wait(), 1.0)  # the first scan was delivered
    assert old.reads > 0
    actor.clients = {"rtu1": new}  # re-attached: another client serves the device now
    n, reads = len(applied), old.reads
    await asyncio.wait_for(task, 1.0)  # ends by itself: not cancelled, no error
    assert not task.cancelled() and task.exception() is None
    assert len(applied) == n  # the read in flight at the switch-over is dropped too
    assert old.reads <= reads + 1  # at most that one read; the task is over, so no more can come
    assert new.reads == 0  # the old task never used the new client
