"""cancel_and_wait: bounded, does not swallow the caller's own cancellation, logs a stubborn task."""

from __future__ import annotations

import asyncio
import logging
import time

from graph_schema import aio
from graph_schema.aio import cancel_and_wait


async def test_a_task_that_stops_is_awaited() -> None:
    task = asyncio.create_task(asyncio.sleep(3600))
    assert await cancel_and_wait(task) and task.cancelled()
    assert await cancel_and_wait(None)


async def test_a_task_that_ignores_cancellation_is_left_in_bounded_time(caplog) -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn(), name="stubborn")
    await asyncio.sleep(0)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=aio.__name__):
        assert not await cancel_and_wait(task, timeout_s=0.2)
    assert time.monotonic() - t0 < 2.0
    assert "stubborn did not stop" in caplog.text
    release.set()
    await asyncio.wait_for(task, 1.0)


async def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    slow_to_stop = asyncio.Event()

    async def background() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await slow_to_stop.wait()  # cleans up for a while
            raise

    bg = asyncio.create_task(background())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(bg, timeout_s=30))
    await asyncio.sleep(0.05)
    stopper.cancel()  # the caller is cancelled while it waits
    done, _ = await asyncio.wait({stopper}, timeout=2)
    assert stopper in done and stopper.cancelled()
    slow_to_stop.set()
    await asyncio.wait({bg}, timeout=2)
