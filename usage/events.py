"""The usage event: what the gateway records about one request, as it travels through Kafka to the ledger.

The wire format is JSON so any consumer (ours, a data warehouse, a SIEM) can read it
without our code. A Kafka record holds one event or several, one JSON object per line
(newline-delimited JSON, all of one institution, in the order they happened): packing
a few hundred events into one record is what lets a gateway process publish thousands
of events a second without the Kafka client eating the CPU its requests need.
`schema_version` changes only for breaking changes; new optional fields may be added
within a version, so readers ignore fields they do not know.

Money conventions (integers of micro-units, never floats):
- `cost_micro` is the whole actual cost of the request.
- `overage_micro` is the part of it no budget paid for (normally 0).
- `extras_paid` lists what extras paid; what is left, `cost - overage - extras`, was paid from
  allocation. Reports, caps and exports rely on exactly this split.

Token conventions: `input_tokens` includes image and cached tokens (as OpenAI reports usage);
`image_tokens` and `cached_tokens` are breakdowns of it. The `tokens` metric is input + output.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

SCHEMA_VERSION: Literal[1] = 1

# unsettled: billed at its hold because its gateway never settled it (gateway/accounting.py)
# upstream_error: the model's server failed. Nothing is charged when it failed before answering; a stream it
# cut is charged what it produced; a non-stream answer lost after its 200 head (over the size cap, past the
# read timeout) is charged at the reservation's bound, since the provider ran and bills it.
Status = Literal["ok", "clamped", "refused", "upstream_error", "client_abort", "bad_request", "unsettled"]
Purpose = Literal["teaching", "research", "other"]
Metric = Literal["cost", "tokens"]

_TEACHING_KINDS = frozenset({"teaching", "course"})
_RESEARCH_KINDS = frozenset({"research", "lab"})

# Token counts and latency are 32-bit columns in the ledger; money is 64-bit.
Count = Annotated[int, Field(ge=0, le=2**31 - 1)]
Money = Annotated[int, Field(ge=0, le=2**63 - 1)]


def purpose_for(kinds_nearest_first: Iterable[str]) -> Purpose:
    """Purpose from the unit kinds on the path, nearest unit first.

    The nearest labelled unit wins, so a lab's teaching pool (a course under a research lab)
    counts as teaching, and a research project under a teaching unit counts as research.
    """
    for kind in kinds_nearest_first:
        k = kind.strip().lower()
        if k in _TEACHING_KINDS:
            return "teaching"
        if k in _RESEARCH_KINDS:
            return "research"
    return "other"


def new_event_id() -> str:
    """A UUIDv7 string: time-ordered, so the ledger's primary key index grows at its right edge.

    The random bits come from the ``random`` module rather than ``os.urandom``: an id needs to be
    unique, not secret, and urandom is a system call that releases the GIL on every request (the
    producer's threads then take it, and the event loop waits). The module's generator is seeded
    from the OS at start-up and re-seeded in every forked child, so processes never share a sequence.
    """
    ms = time.time_ns() // 1_000_000
    rand = random.getrandbits(74)
    value = (ms & ((1 << 48) - 1)) << 80
    value |= 0x7 << 76  # version 7
    value |= (rand >> 62) << 64  # 12 random bits
    value |= 0b10 << 62  # RFC 4122 variant
    value |= rand & ((1 << 62) - 1)
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def _utc(value: datetime) -> datetime:
    """Aware UTC; a naive time is taken as UTC (the project's convention for stored times)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


class ExtraPaid(BaseModel):
    """One extra (a grant, a special budget) that paid part of a request."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    extra_id: str = Field(min_length=1, max_length=128)
    unit_id: str = Field(min_length=1, max_length=128)
    metric: Metric = "cost"
    amount: Money
    chargeback: str | None = Field(default=None, max_length=128)


class UsageEvent(BaseModel):
    """One request, as settled: the unit of the ledger, keyed by `event_id` for exactly-once storage."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    schema_version: Literal[1] = SCHEMA_VERSION
    event_id: str = Field(default_factory=new_event_id, min_length=1, max_length=36)
    request_id: str = Field(min_length=1, max_length=64)
    institution_id: str = Field(min_length=1, max_length=64)
    started_at: datetime
    ended_at: datetime
    user_id: str | None = Field(default=None, max_length=128)
    key_id: str | None = Field(default=None, max_length=32)
    unit_id: str | None = Field(default=None, max_length=128)
    # The charged unit first, then its ancestors up to the root.
    path: list[str] = Field(default_factory=list)
    purpose: Purpose = "other"
    provider_id: str | None = None
    deployment_id: str | None = None
    model_id: str | None = Field(default=None, max_length=128)
    input_tokens: Count = 0
    output_tokens: Count = 0
    image_tokens: Count = 0
    cached_tokens: Count = 0
    cost_micro: Money = 0
    overage_micro: Money = 0
    latency_ms: Count = 0
    status: Status
    binding_unit: str | None = None
    extras_paid: list[ExtraPaid] = Field(default_factory=list)
    # Opaque to us: exactly what quota/ returned at settle, so its counters can be rebuilt from the ledger.
    funding: dict[str, Any] = Field(default_factory=dict)

    @field_validator("started_at", "ended_at")
    @classmethod
    def _as_utc(cls, v: datetime) -> datetime:
        return _utc(v)

    @model_validator(mode="after")
    def _consistent(self) -> UsageEvent:
        if self.ended_at < self.started_at:
            raise ValueError("ended_at is before started_at")
        if self.unit_id is not None and self.path and self.path[0] != self.unit_id:
            raise ValueError("path must start with the charged unit")
        texts = [self.event_id, self.request_id, self.institution_id, self.user_id, self.key_id, self.unit_id,
                 self.provider_id, self.deployment_id, self.model_id, self.binding_unit, *self.path]  # fmt: skip
        if any(t is not None and "\x00" in t for t in texts):
            raise ValueError("ids must not contain NUL characters (PostgreSQL text cannot hold them)")
        extras_cost = sum(x.amount for x in self.extras_paid if x.metric == "cost")
        if self.overage_micro + extras_cost > self.cost_micro:
            raise ValueError("overage and extras paid exceed the cost")
        return self

    @property
    def allocation_micro(self) -> int:
        """The part of the cost paid from allocation (passed up the tree)."""
        extras = sum(x.amount for x in self.extras_paid if x.metric == "cost")
        return self.cost_micro - self.overage_micro - extras

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens


class BadEvent(ValueError):
    """A message that is not a usage event we can store (malformed, or a schema version we do not know)."""


def encode(event: UsageEvent) -> bytes:
    return event.model_dump_json().encode()


# Well under Kafka's default 1 MB message limit, whatever the broker's configuration.
RECORD_MAX_BYTES = 256 * 1024


def pack(lines: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """Encoded events, each with its Kafka key, as records (key, value): one institution per record,
    in order. Events of one institution stay in emission order inside and across records; JSON never
    holds a raw newline, so the line break is an unambiguous separator."""
    by_key: dict[bytes, list[bytes]] = {}
    for key, line in lines:
        by_key.setdefault(key, []).append(line)
    records: list[tuple[bytes, bytes]] = []
    for key, encoded in by_key.items():
        start, size = 0, 0
        for i, line in enumerate(encoded):
            if i > start and size + len(line) > RECORD_MAX_BYTES:
                records.append((key, b"\n".join(encoded[start:i])))
                start, size = i, 0
            size += len(line) + 1
        records.append((key, b"\n".join(encoded[start:])))
    return records


def split_record(value: bytes) -> list[bytes]:
    """The events of one record, each still encoded (a single-event record is one line)."""
    return [line for line in value.split(b"\n") if line.strip()]


def events_in(value: bytes) -> int:
    return value.count(b"\n") + 1


def kafka_key(event: UsageEvent) -> bytes:
    return institution_key(event.institution_id)


def institution_key(institution_id: str) -> bytes:
    """Keyed by institution: Kafka keeps order per key, and an institution's events stay in one partition."""
    return institution_id.encode()


def decode(payload: bytes) -> UsageEvent:
    try:
        return UsageEvent.model_validate_json(payload)
    except ValidationError as exc:
        raise BadEvent(str(exc)) from None
