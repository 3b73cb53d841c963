"""The usage event schema: validation, purpose from the path, and the JSON wire format."""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from tests.usage.helpers import make_event
from usage.events import (
    RECORD_MAX_BYTES,
    BadEvent,
    decode,
    encode,
    events_in,
    kafka_key,
    new_event_id,
    pack,
    purpose_for,
    split_record,
)

UNLABELLED = st.sampled_from(["university", "college", "department", "faculty", "institute", "school"])
KINDS = st.one_of(UNLABELLED, st.sampled_from(["teaching", "course", "research", "lab", "Course", "LAB"]))


def test_purpose_examples_from_the_spec_tree() -> None:
    assert purpose_for(["course", "teaching", "faculty", "department", "college", "university"]) == "teaching"
    assert purpose_for(["research", "faculty", "department", "college", "university"]) == "research"
    assert purpose_for(["lab", "department", "university"]) == "research"
    assert purpose_for(["department", "college", "university"]) == "other"
    assert purpose_for([]) == "other"


@given(st.lists(UNLABELLED), st.sampled_from(["teaching", "course"]), st.lists(KINDS))
def test_nearest_teaching_label_wins(below: list[str], label: str, above: list[str]) -> None:
    assert purpose_for([*below, label, *above]) == "teaching"


@given(st.lists(UNLABELLED), st.sampled_from(["research", "lab"]), st.lists(KINDS))
def test_nearest_research_label_wins(below: list[str], label: str, above: list[str]) -> None:
    assert purpose_for([*below, label, *above]) == "research"


@given(st.lists(UNLABELLED))
def test_no_label_is_other(kinds: list[str]) -> None:
    assert purpose_for(kinds) == "other"


extras = st.lists(
    st.builds(
        dict,
        extra_id=st.text(min_size=1, max_size=20),
        unit_id=st.text(min_size=1, max_size=20),
        metric=st.sampled_from(["cost", "tokens"]),
        amount=st.integers(0, 10**6),
        chargeback=st.none() | st.text(max_size=20),
    ),
    max_size=3,
)


@given(
    cost=st.integers(0, 10**12),
    tokens=st.tuples(*[st.integers(0, 10**9)] * 4),
    status=st.sampled_from(["ok", "clamped", "refused", "upstream_error", "client_abort", "bad_request"]),
    xs=extras,
    funding=st.dictionaries(
        st.text(max_size=10), st.integers() | st.text(max_size=10) | st.none(), max_size=4
    ),
    offset_minutes=st.integers(-12 * 60, 14 * 60),
)
def test_json_round_trip_keeps_every_field(
    cost: int,
    tokens: tuple[int, int, int, int],
    status: str,
    xs: list[dict],
    funding: dict,
    offset_minutes: int,
) -> None:
    xs = [x for x in xs if x["metric"] == "tokens"] + [x for x in xs if x["metric"] == "cost"][:1]
    for x in xs:
        if x["metric"] == "cost":
            x["amount"] = min(x["amount"], cost)
    tz = timezone(timedelta(minutes=offset_minutes))
    ended = datetime(2026, 11, 3, 12, 0, 0, 123456, tzinfo=tz)
    e = make_event(
        "inst",
        1,
        ended_at=ended,
        cost_micro=cost,
        input_tokens=tokens[0],
        output_tokens=tokens[1],
        image_tokens=tokens[2],
        cached_tokens=tokens[3],
        status=status,
        extras_paid=xs,
        funding=funding,
    )
    back = decode(encode(e))
    assert back == e
    assert back.ended_at.tzinfo == UTC
    assert back.ended_at == ended


def test_times_are_utc_and_naive_means_utc() -> None:
    naive = datetime(2026, 11, 3, 12, 0)
    e = make_event("inst", 1, ended_at=naive, started_at=naive - timedelta(seconds=1))
    assert e.ended_at == naive.replace(tzinfo=UTC)
    assert b'"2026-11-03T12:00:00Z"' in encode(e)


def test_split_of_the_cost_and_tokens() -> None:
    e = make_event(
        "inst",
        1,
        cost_micro=1000,
        overage_micro=100,
        input_tokens=70,
        output_tokens=30,
        extras_paid=[
            {"extra_id": "g1", "unit_id": "u1", "amount": 250, "chargeback": "GR-1"},
            {"extra_id": "t1", "unit_id": "u1", "metric": "tokens", "amount": 40},
        ],
    )
    assert e.allocation_micro == 1000 - 100 - 250
    assert e.total_tokens == 100


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"overage_micro": 600, "extras_paid": [{"extra_id": "g", "unit_id": "u", "amount": 500}]}, "exceed"),
        ({"path": ["other", "root"]}, "path must start"),
        ({"started_at": datetime(2030, 1, 1, tzinfo=UTC)}, "before started_at"),
        ({"status": "fine"}, "status"),
        ({"purpose": "leisure"}, "purpose"),
        ({"cost_micro": -1}, "cost_micro"),
        ({"user_id": "x" * 129}, "user_id"),
        ({"event_id": "x" * 37}, "event_id"),
        ({"input_tokens": 2**31}, "input_tokens"),
        ({"model_id": "a\x00b"}, "NUL"),
    ],
)
def test_inconsistent_events_are_refused_at_the_source(overrides: dict, message: str) -> None:
    base = {"cost_micro": 1000, "ended_at": datetime(2026, 11, 3, tzinfo=UTC)}
    with pytest.raises(ValidationError, match=message):
        make_event("inst", 1, **{**base, **overrides})


def test_unknown_schema_versions_and_garbage_are_bad_events() -> None:
    e = make_event("inst", 1)
    v2 = encode(e).replace(b'"schema_version":1', b'"schema_version":2')
    with pytest.raises(BadEvent):
        decode(v2)
    with pytest.raises(BadEvent):
        decode(b"not json")
    with pytest.raises(BadEvent):
        decode(b'{"event_id": "x"}')


def test_readers_ignore_fields_added_later_within_a_version() -> None:
    e = make_event("inst", 1)
    newer = encode(e)[:-1] + b',"carbon_grams":3}'
    assert decode(newer) == e


def test_key_is_the_institution() -> None:
    assert kafka_key(make_event("stateu", 1)) == b"stateu"


def test_event_ids_are_uuid7_and_ordered_by_time() -> None:
    ids = [new_event_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    parsed = [uuid.UUID(i) for i in ids]
    assert {u.version for u in parsed} == {7}
    assert {u.variant for u in parsed} == {uuid.RFC_4122}
    millis = [u.int >> 80 for u in parsed]
    assert millis == sorted(millis)
    assert uuid.UUID(make_event("inst", 1).event_id).version == 7
    assert all(i == str(uuid.UUID(i)) for i in ids)  # the canonical text form, as PostgreSQL prints it


def test_a_forked_process_draws_other_event_ids_than_its_parent() -> None:
    """Gateway workers may be forked: a child sharing its parent's random sequence would mint the
    same ids in the same millisecond, and the ledger would drop one event as a duplicate."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: send its ids and leave without running the parent's cleanup
        os.write(write, " ".join(new_event_id()[-17:] for _ in range(50)).encode())
        os._exit(0)
    os.close(write)
    mine = {new_event_id()[-17:] for _ in range(50)}
    os.waitpid(pid, 0)
    with os.fdopen(read) as pipe:
        theirs = set(pipe.read().split())
    assert len(theirs) == 50
    assert not mine & theirs


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 4000)), max_size=120))
def test_packed_records_keep_every_event_once_and_in_order_per_institution(
    spec: list[tuple[str, int]],
) -> None:
    events = [
        make_event(inst, i).model_copy(update={"funding": {"pad": "x" * size}})
        for i, (inst, size) in enumerate(spec)
    ]
    records = pack([(kafka_key(e), encode(e)) for e in events])
    assert all(len(value) <= RECORD_MAX_BYTES for _, value in records)
    got: dict[bytes, list[str]] = {}
    for key, value in records:
        assert events_in(value) == len(split_record(value))
        got.setdefault(key, []).extend(decode(line).request_id for line in split_record(value))
    want: dict[bytes, list[str]] = {}
    for e in events:
        want.setdefault(kafka_key(e), []).append(e.request_id)
    assert got == want


def test_a_single_event_record_is_a_record_of_one() -> None:
    e = make_event("stateu", 1)
    assert split_record(encode(e)) == [encode(e)] and events_in(encode(e)) == 1
