"""Waiting for a step of shutdown, at most so long.

`asyncio.wait_for` is no bound: on timeout it cancels the awaited step and then waits for it to end, and a
step that swallows the cancellation (redis-py did, in a pub/sub read and in a connection's disconnect) holds
it for ever. `asyncio.wait` with a timeout returns on time whatever the step does; the step is cancelled
and left behind, and the process ends without it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import Any

log = logging.getLogger(__name__)


async def bounded(step: Awaitable[Any], seconds: float, what: str) -> bool:
    """Await `step` for at most `seconds`; True if it ended (its error, if any, is logged, not raised)."""
    return await bounded_all([step], seconds, what)


async def bounded_all(steps: Iterable[Awaitable[Any]], seconds: float, what: str) -> bool:
    tasks = {asyncio.ensure_future(step) for step in steps}
    if not tasks:
        return True
    done, pending = await asyncio.wait(tasks, timeout=seconds)
    for task in done:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s failed", what, exc_info=task.exception())
    if pending:
        log.error("%s did not end within %g s; going on without it", what, seconds)
        for task in pending:
            task.cancel()
    return not pending
