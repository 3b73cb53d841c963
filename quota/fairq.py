"""Fair queues for the slots of self-hosted models, shared by every gateway (script `lua/fairq.lua`).

A model with `slots` serves that many requests at once over all its replicas. When all are busy a
request waits, and the next free slot goes to the waiting flow (a unit, weighted by the institution
file's `fair_share`) with the smallest start tag: start-time fair queuing, so two busy flows with weights
3 : 1 get slots 3 : 1, a flow back from idle gets no credit for the time it was away, and a flow alone
gets every slot.

Waking a waiter: the script publishes each grant on its gateway's channel (`keys.FAIRQ_CHANNEL` +
gateway id). `listen()` holds the one pub/sub connection of this process and resolves the waiter's
future; every waiter also asks the script once per `poll` seconds, which covers a lost message or a
reconnect. So a process uses two Redis connections however many requests wait. Slots are leases of
`lease` seconds, renewed by `renew` while the request runs: a killed gateway's slots return within one
lease, and its waiters, past their give-up time, are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any, Literal

from redis.asyncio import Redis

from providers.config import QueueConfig
from quota import scripts
from quota.keys import FAIRQ_CHANNEL, fair_queue

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    """A slot held by request `rid` of queue `queue` (`<provider>|<model>`) after waiting `waited_ms`."""

    inst: str
    queue: str
    rid: str
    waited_ms: int
    slots: int = 1


@dataclass(frozen=True)
class QueueRefused:
    """No slot: the queue was full (`full`), the wait reached `max_wait_seconds` (`timeout`), or the client
    hung up while it waited (`gone`)."""

    reason: Literal["full", "timeout", "gone"]
    waited_ms: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class FairQueue:
    """One per gateway process. `clock` (milliseconds) replaces Redis time in tests."""

    def __init__(
        self,
        redis: Redis,
        gateway_id: str,
        lease: float,
        *,
        poll: float = 1.0,
        clock: Callable[[], int] | None = None,
    ) -> None:
        if "|" in gateway_id:
            raise ValueError("a gateway id cannot contain '|'")
        self.redis = redis
        self.gateway_id = gateway_id
        self.lease_ms = max(1, round(lease * 1000))
        self.poll = poll
        self.clock = clock
        self.channel = FAIRQ_CHANNEL + gateway_id
        self.listening = asyncio.Event()
        self._waiting: dict[str, asyncio.Future[None]] = {}

    async def _run(self, inst: str, queue: str, op: str, slots: int, *args: Any) -> list[str]:
        now = "-" if self.clock is None else str(int(self.clock()))
        reply = await scripts.run(
            self.redis, "fairq", list(fair_queue(inst, queue)), [op, slots, self.lease_ms, now, *args]
        )
        return [_text(v) for v in reply]

    async def acquire(
        self,
        inst: str,
        queue: str,
        rid: str,
        flow: str,
        weight: float,
        slots: int,
        q: QueueConfig,
        until_gone: Callable[[], Awaitable[object]] | None = None,
    ) -> Slot | QueueRefused:
        """Wait for a slot at most `q.max_wait_seconds`. If the caller is cancelled, any slot it was
        granted meanwhile is freed and it leaves the queue. `until_gone()` (started only if the request
        has to wait) returns when the client hangs up: then the request leaves the queue the same way and
        the answer is `QueueRefused("gone")`, so nobody runs (or pays for) a request nobody will read."""
        started = time.monotonic()

        def waited() -> int:
            return int((time.monotonic() - started) * 1000)

        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting[rid] = woken  # before the script runs: a grant may be published at once after it
        member: str | None = None
        gone: asyncio.Future[Any] | None = None
        try:
            reply = await self._run(inst, queue, "A", slots, rid, self.gateway_id, flow, weight,
                                    round(q.max_wait_seconds * 1000), q.max_waiting)  # fmt: skip
            if reply[0] == "GRANTED":
                return Slot(inst, queue, rid, 0, slots)
            if reply[0] == "FULL":
                return QueueRefused("full", waited())
            member = reply[1]
            if until_gone is not None:
                gone = asyncio.ensure_future(until_gone())
            deadline = started + q.max_wait_seconds
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                watched: list[asyncio.Future[Any]] = [woken] if gone is None else [woken, gone]
                await asyncio.wait(watched, timeout=min(self.poll, left), return_when=asyncio.FIRST_COMPLETED)
                if gone is not None and gone.done():  # hung up: free a slot granted meanwhile, too
                    await self._run(inst, queue, "C", slots, rid, member, 0)
                    return QueueRefused("gone", waited())
                if woken.done() or (await self._run(inst, queue, "P", slots, rid))[0] == "GRANTED":
                    return Slot(inst, queue, rid, waited(), slots)
            gave_up = await self._run(inst, queue, "C", slots, rid, member, 1)
            if gave_up[0] == "GRANTED":  # a grant raced the deadline: take it
                return Slot(inst, queue, rid, waited(), slots)
            return QueueRefused("timeout", waited())
        except BaseException:
            if member is not None:  # cancelled while waiting (or Redis failed): leave nothing behind
                with contextlib.suppress(Exception):
                    await asyncio.shield(self._run(inst, queue, "C", slots, rid, member, 0))
            raise
        finally:
            self._waiting.pop(rid, None)
            if gone is not None:
                gone.cancel()

    async def release(self, slot: Slot) -> None:
        """Free the slot; the script grants it to the next waiter at once."""
        await self._run(slot.inst, slot.queue, "C", slot.slots, slot.rid, "-", 0)

    async def renew(self, slots: Iterable[Slot]) -> None:
        """Extend the leases of slots still in use (one script run per queue)."""
        by_queue: dict[tuple[str, str], list[str]] = defaultdict(list)
        for s in slots:
            by_queue[(s.inst, s.queue)].append(s.rid)
        for (inst, queue), rids in by_queue.items():
            await self._run(inst, queue, "N", 1, *rids)

    def _wake(self, data: Any) -> None:
        _, _, rid = _text(data).rpartition(" ")
        fut = self._waiting.get(rid)
        if fut is not None and not fut.done():
            fut.set_result(None)

    async def listen(self) -> None:
        """Run until cancelled: the process's one subscription to its grant channel. A broken connection
        is opened again after a second (the waiters' polling covers the gap)."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.listening.set()
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        self._wake(message["data"])
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any connection error: reconnect; the waiters poll meanwhile
                log.warning("fair-queue subscription lost (%s); reconnecting", exc)
                self.listening.clear()
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(Exception):
                    await pubsub.aclose()
