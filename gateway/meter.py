"""Stage 8: one usage event per request, whatever happened, handed to the pipeline without waiting.

Emitting only queues a line for the pipe to the gateway's producer process
(`usage/sidecar.py`): Kafka, or the disk spool when Kafka is away, is written
there, so a slow broker never slows a student's answer.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import orjson

from usage.events import SCHEMA_VERSION, Status, institution_key, new_event_id, purpose_for


class EventSink(Protocol):
    def emit_line(self, key: bytes, line: bytes) -> None: ...


@dataclass(slots=True)
class Outcome:
    """Everything the endpoint learned about one request, filled in as the stages run."""

    request_id: str
    institution_id: str
    started_wall: datetime = field(default_factory=lambda: datetime.now(UTC))
    started: float = field(default_factory=time.perf_counter)
    status: Status = "ok"
    user_id: str | None = None
    key_id: str | None = None
    unit_id: str | None = None
    path: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    model_id: str | None = None
    provider_id: str | None = None
    deployment_id: str | None = None
    input_tokens: int = 0
    output_tokens: int = 0
    image_tokens: int = 0
    cached_tokens: int = 0
    cost_micro: int = 0
    overage_micro: int = 0
    binding_unit: str | None = None
    extras_paid: list[dict[str, Any]] = field(default_factory=list)
    funding: dict[str, Any] = field(default_factory=dict)


def encode_outcome(o: Outcome, event_id: str | None = None) -> bytes:
    """The usage event of a finished request, encoded as `usage.events.encode` would encode the same
    `UsageEvent` (tests/gateway/test_meter.py holds them equal). Written straight to JSON because this
    runs once per request: building the pydantic model cost more than the rest of metering, and the
    consumer validates every event when it reads it anyway."""
    ended = datetime.now(UTC)
    return orjson.dumps(
        {
            "schema_version": SCHEMA_VERSION,
            "event_id": event_id or new_event_id(),
            "request_id": o.request_id,
            "institution_id": o.institution_id,
            "started_at": o.started_wall,
            "ended_at": max(ended, o.started_wall),
            "user_id": o.user_id,
            "key_id": o.key_id,
            "unit_id": o.unit_id,
            "path": o.path,
            "purpose": purpose_for(o.kinds),
            "provider_id": o.provider_id,
            "deployment_id": o.deployment_id,
            "model_id": o.model_id,
            "input_tokens": o.input_tokens,
            "output_tokens": o.output_tokens,
            "image_tokens": o.image_tokens,
            "cached_tokens": o.cached_tokens,
            "cost_micro": o.cost_micro,
            "overage_micro": o.overage_micro,
            "latency_ms": int((time.perf_counter() - o.started) * 1000),
            "status": o.status,
            "binding_unit": o.binding_unit,
            "extras_paid": o.extras_paid,
            "funding": o.funding,
        },
        option=orjson.OPT_UTC_Z,
    )


def emit(sink: EventSink, o: Outcome, event_id: str | None = None) -> None:
    sink.emit_line(institution_key(o.institution_id), encode_outcome(o, event_id))
