"""Small asyncio helpers shared by every layer.

:func:`cancel_and_wait` stops a background task. The usual ``task.cancel()`` then
``with suppress(CancelledError): await task`` has two faults: it swallows a cancellation aimed at
the *caller* too (the caller goes on as if not cancelled), and it waits forever for a task that
ignores its cancellation (a protocol library that catches it). This waits in bounded time, logs a
task that did not stop, and leaves the caller's own cancellation alone.
"""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)


async def cancel_and_wait(task: asyncio.Task[object] | None, timeout_s: float = 5.0) -> bool:
    """Cancel ``task`` and wait up to ``timeout_s`` for it to end; True when it ended.

    A failure of the task itself is logged, not raised: the caller is stopping it."""
    if task is None:
        return True
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        log.warning("task %s did not stop within %.1f s of its cancellation; left behind", task.get_name(),
                    timeout_s)
        return False
    if not task.cancelled() and task.exception() is not None:
        log.warning("task %s ended with %r while being stopped", task.get_name(), task.exception())
    return True
