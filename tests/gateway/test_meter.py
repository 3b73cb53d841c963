"""The gateway writes its usage events as JSON directly: they must be exactly what the typed path writes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.meter import Outcome, emit, encode_outcome
from usage.events import decode, encode, kafka_key

ids = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=20)
counts = st.integers(0, 2**31 - 1)


@st.composite
def outcomes(draw: st.DrawFn) -> Outcome:
    path = draw(st.lists(ids, min_size=1, max_size=5))
    cost = draw(st.integers(0, 10**12))
    overage = draw(st.integers(0, cost))
    paid = draw(st.integers(0, cost - overage))
    extras = [{"extra_id": draw(ids), "unit_id": path[-1], "metric": "cost", "amount": paid,
               "chargeback": draw(st.none() | ids)}] if paid else []  # fmt: skip
    started = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(
        microseconds=draw(st.integers(0, 10**9)) * draw(st.sampled_from([1, 1_000_000]))
    )
    return Outcome(
        request_id=draw(ids),
        institution_id=draw(ids),
        started_wall=started,
        status=draw(
            st.sampled_from(["ok", "clamped", "refused", "upstream_error", "client_abort", "bad_request"])
        ),
        user_id=draw(st.none() | ids),
        key_id=draw(st.none() | st.text("0123456789abcdef", min_size=1, max_size=32)),
        unit_id=path[0],
        path=path,
        kinds=draw(st.lists(st.sampled_from(["course", "research", "college", "university"]), min_size=1)),
        model_id=draw(st.none() | ids),
        provider_id=draw(st.none() | ids),
        deployment_id=draw(st.none() | ids),
        input_tokens=draw(counts),
        output_tokens=draw(counts),
        image_tokens=draw(counts),
        cached_tokens=draw(counts),
        cost_micro=cost,
        overage_micro=overage,
        binding_unit=draw(st.none() | ids),
        extras_paid=extras,
        funding=draw(st.just({}) | st.just({"institution": "i", "path": path, "allocation": {"cost": cost}})),
    )


@settings(max_examples=200, deadline=None)
@given(outcomes())
def test_the_gateway_encodes_events_as_the_typed_path_does(o: Outcome) -> None:
    line = encode_outcome(o)
    event = decode(line)  # what the consumer does: full validation
    assert encode(event) == line
    assert (event.request_id, event.path, event.cost_micro, event.status) == (
        o.request_id,
        o.path,
        o.cost_micro,
        o.status,
    )


def test_emit_keys_the_line_by_institution() -> None:
    got: list[tuple[bytes, bytes]] = []

    class Sink:
        def emit_line(self, key: bytes, line: bytes) -> None:
            got.append((key, line))

    emit(Sink(), Outcome(request_id="r1", institution_id="stateu", path=["cs101"], unit_id="cs101"))
    ((key, line),) = got
    assert key == kafka_key(decode(line)) == b"stateu"
