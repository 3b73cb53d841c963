"""Stage 4b: a slot of a self-hosted model with `slots`, shared between units by weighted fair share.

The request already holds its budget and limits. When every slot of the model is busy it waits in the
model's fair queue (quota/fairq.py: start-time fair queuing between units, weights from the institution
file) for at most the queue's `max_wait_seconds`; then, or at once when the queue is full, it is refused
with a 429 its client retries after `Retry-After`. A client that hangs up while waiting leaves the queue
at once (its place, or a slot granted meanwhile, goes to the next waiter) and its request ends unserved:
the endpoint releases the reservation, so nothing is charged. Models without `slots` never come here.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from starlette.types import Receive

from gateway.catalog import InstitutionView
from gateway.errors import ApiError
from gateway.meter import Outcome
from gateway.observe import METRICS
from providers.router import QueueInfo
from quota.fairq import FairQueue, QueueRefused, Slot


async def _until_disconnect(receive: Receive) -> None:
    """Returns when the client hangs up. The request body has been read, so the server's next message
    is `http.disconnect` (when the client goes, or when the answer is complete)."""
    with contextlib.suppress(Exception):  # a broken receive: as good as gone
        while (await receive())["type"] != "http.disconnect":
            pass


def client_gone() -> ApiError:
    """The answer to a request whose client hung up while it waited (nobody reads it; it is logged)."""
    return ApiError(499, "the client closed the request while it waited for a GPU slot",
                    code="client_closed_request")  # fmt: skip


def queue_error(info: QueueInfo, full: bool, waited_ms: int) -> ApiError:
    """429 `rate_limit_exceeded`, retried by the SDKs after the queue's `retry_after_seconds`."""
    retry = info.config.retry_after_seconds
    if info.slots == 1:
        slots, are, them, one = f"The only GPU slot of {info.model_id}", "is", "it", "it"
    else:
        slots, are, them, one = f"All {info.slots} GPU slots of {info.model_id}", "are", "them", "one"
    if full:
        why = f"{slots} {are} busy and the queue for {them} is full."
    else:
        waited = max(1, math.floor(waited_ms / 1000))
        why = f"{slots} {are} busy and your request waited {waited} seconds without getting {one}."
    return ApiError(429, f"{why} Please try again in {retry} seconds.", code="rate_limit_exceeded",
                    type_="requests", headers={"retry-after": str(retry), "retry-after-ms": str(retry * 1000),
                                               "x-should-retry": "true"})  # fmt: skip


class SlotGate:
    """Acquires a model's slot for a request (waiting in its fair queue) and says how long it waited."""

    def __init__(self, queue: FairQueue) -> None:
        self.queue = queue

    async def acquire(
        self, view: InstitutionView, o: Outcome, info: QueueInfo, receive: Receive | None = None
    ) -> Slot:
        """A slot, or an ApiError: 429 (queue full, waited too long) or 499 when the client hung up
        while waiting (`receive`, the request's ASGI receive; then `o.status` is `client_abort`)."""
        flow, weight = view.flow_of(o.unit_id or "", datetime.now(ZoneInfo(view.timezone)).date())
        label = f"{info.provider_id}|{info.model_id}"
        waiting = METRICS.queue_waiting.labels(label)
        started = time.perf_counter()
        waiting.inc()
        try:
            got = await self.queue.acquire(
                view.id, label, o.request_id, flow, weight, info.slots, info.config,
                None if receive is None else functools.partial(_until_disconnect, receive),
            )  # fmt: skip
        finally:
            waiting.dec()
        seconds = time.perf_counter() - started
        if isinstance(got, QueueRefused):
            if got.reason == "gone":
                METRICS.queue_waited(label, "gone", seconds)
                o.status = "client_abort"
                raise client_gone()
            full = got.reason == "full"
            METRICS.queue_waited(label, "full" if full else "timeout", seconds)
            METRICS.limit_refused("queue_full" if full else "queue_timeout")
            raise queue_error(info, full, int(seconds * 1000))
        METRICS.queue_waited(label, "granted", seconds)
        return got
