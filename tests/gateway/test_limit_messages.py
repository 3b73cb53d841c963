"""Rate-limit and contract refusals as a client reads them: OpenAI's header formats, and a sentence."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, cast

import pytest

from gateway.budget import budget_headers, go_duration, limit_error, rate_headers, refusal_error
from gateway.catalog import InstitutionView, UnitInfo
from quota import ContractSpec, InstitutionSpec, LimitRefusal, RateInfo, Refusal, Remaining, Reservation

# What OpenAI sends in x-ratelimit-reset-* (and what the design's header test matches).
GO_DURATION = re.compile(r"^\d+ms$|^\d+(\.\d+)?s$|^\d+m\d+(\.\d+)?s$")


def _view() -> InstitutionView:
    units = {
        "stateu": UnitInfo("stateu", None, "university", "State University", ("gpt-4o",), None),
        "cs101": UnitInfo(
            "cs101", "stateu", "course", "CS101 Introduction to Programming", ("gpt-4o",), None
        ),
    }
    spec = InstitutionSpec(
        id="stateu", units=(), contracts={"c:openai|gpt-4o": ContractSpec(4_000_000_000, "month")}
    )
    return InstitutionView(
        "stateu", "State University", "USD", "America/Chicago", units, spec, cast(Any, None), {}
    )


NO_RATE = RateInfo(-1, -1, 0, -1, -1, 0)


def _limited(
    node: str, what: str, limit: int, needed: int, retry: int | None, rate: RateInfo = NO_RATE
) -> LimitRefusal:
    return LimitRefusal("stateu", "cs101", "alice", "req_1", node, what, limit, needed, retry, rate)


@pytest.mark.parametrize(
    ("ms", "text"),
    [(0, "0ms"), (20, "20ms"), (999, "999ms"), (1000, "1s"), (1500, "1.5s"), (59_999, "59.999s"),
     (60_000, "1m0s"), (61_500, "1m1.5s"), (3_600_000, "60m0s"), (-5, "0ms")],
)  # fmt: skip
def test_resets_are_written_as_openai_writes_them(ms: int, text: str) -> None:
    assert go_duration(ms) == text
    assert GO_DURATION.match(text)


def test_rate_headers_report_both_trios_and_skip_a_missing_limit() -> None:
    both = dict(rate_headers(RateInfo(20, 7, 42_000, 40_000, 1_234, 1_500)))
    assert both == {
        b"x-ratelimit-limit-requests": b"20", b"x-ratelimit-remaining-requests": b"7",
        b"x-ratelimit-reset-requests": b"42s", b"x-ratelimit-limit-tokens": b"40000",
        b"x-ratelimit-remaining-tokens": b"1234", b"x-ratelimit-reset-tokens": b"1.5s",
    }  # fmt: skip
    only_tokens = dict(rate_headers(RateInfo(-1, -1, 0, 8_000, 0, 61_000)))
    assert set(only_tokens) == {b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-tokens",
                                b"x-ratelimit-reset-tokens"}  # fmt: skip
    assert only_tokens[b"x-ratelimit-reset-tokens"] == b"1m1s"
    assert rate_headers(NO_RATE) == []


def _reservation(rate: RateInfo | None) -> Reservation:
    now = datetime.now(UTC)
    return Reservation("r1", "stateu", "cs101", "alice", "req_1", 100, False, 10, 110,
                       {"cost": Remaining("cs101", 1_000_000), "tokens": None}, 1, 1, now, now, ("cs101",), ("k",),
                       rate=rate)  # fmt: skip


def test_budget_headers_carry_the_rate_trios_only_when_the_path_has_limits() -> None:
    view = _view()
    assert not any(n.startswith(b"x-ratelimit") for n, _ in budget_headers(_reservation(None), view, 100))
    names = {n for n, _ in budget_headers(_reservation(RateInfo(20, 19, 60_000, -1, -1, 0)), view, 100)}
    assert {
        b"x-ratelimit-limit-requests",
        b"x-ratelimit-remaining-requests",
        b"x-ratelimit-reset-requests",
    } <= names


def test_a_personal_request_limit_reads_as_a_sentence_with_retry_headers() -> None:
    err = limit_error(
        _limited("m:cs101", "requests", 20, 1, 41_200, RateInfo(20, 0, 41_200, -1, -1, 0)), _view()
    )
    assert err.status == 429 and err.code == "rate_limit_exceeded" and err.type == "requests"
    assert err.message == ("Rate limit reached: your personal limit in CS101 Introduction to Programming is "
                           "20 requests per minute. Please try again in 42 seconds.")  # fmt: skip
    h = err.headers
    assert h["retry-after"] == "42" and h["retry-after-ms"] == "41200" and h["x-should-retry"] == "true"
    assert h["x-ratelimit-limit-requests"] == "20" and h["x-ratelimit-remaining-requests"] == "0"
    assert h["x-ratelimit-reset-requests"] == "41.2s" and h["x-eduaiq-limit"] == "m:cs101"


@pytest.mark.parametrize(
    ("node", "subject"),
    [
        ("u:cs101", "the limit of CS101 Introduction to Programming (everyone in it together)"),
        ("m:cs101:alice", "your personal limit in CS101 Introduction to Programming"),
        ("p:openai", "State University's limit with provider openai"),
        ("pm:openai|gpt-4o", "the limit for gpt-4o at openai"),
    ],
)
def test_every_kind_of_limit_names_whose_it_is(node: str, subject: str) -> None:
    err = limit_error(_limited(node, "tokens", 40_000, 900, 500), _view())
    assert err.type == "tokens"
    assert (
        err.message
        == f"Rate limit reached: {subject} is 40,000 tokens per minute. Please try again in 1 second."
    )
    assert err.headers["retry-after"] == "1" and err.headers["retry-after-ms"] == "500"
    assert err.headers["x-ratelimit-remaining-tokens"] == "0"


def test_a_request_that_can_never_fit_is_not_retried() -> None:
    err = limit_error(_limited("m:cs101", "tokens", 8_000, 9_100, None), _view())
    assert err.headers["x-should-retry"] == "false"
    assert "retry-after" not in err.headers and "retry-after-ms" not in err.headers
    assert err.message == ("Rate limit reached: this request needs 9,100 tokens, more than your personal limit in "
                           "CS101 Introduction to Programming allows in a minute (8,000); ask for fewer max_tokens "
                           "or send a shorter prompt.")  # fmt: skip


def test_concurrency_and_long_waits() -> None:
    cc = limit_error(_limited("u:cs101", "concurrent", 2, 1, 1000), _view())
    assert cc.message == ("Rate limit reached: the limit of CS101 Introduction to Programming (everyone in it "
                          "together) allows 2 requests at a time and 2 are in progress. Please try again in a "
                          "moment.")  # fmt: skip
    assert cc.headers["retry-after"] == "1" and cc.type == "requests"
    slow = limit_error(_limited("p:openai", "requests", 5, 1, 150_000), _view())
    assert slow.message.endswith("Please try again in 3 minutes.")
    assert slow.headers["retry-after"] == "150"


def test_a_full_contract_is_insufficient_quota_and_never_retried() -> None:
    resets = datetime(2027, 1, 1, 6, 0, tzinfo=UTC)  # midnight in Chicago
    refusal = Refusal("stateu", "cs101", "alice", "req_1", "c:openai|gpt-4o", "", "openai", False, "cost",
                      4_100_000, 3_200_000, resets, kind="contract")  # fmt: skip
    err = refusal_error(refusal, _view())
    assert err.status == 429 and err.code == "insufficient_quota" and err.type == "insufficient_quota"
    assert err.message == ("State University's contract with openai (gpt-4o) is fully committed for this month: "
                           "USD 3.20 left, and this request needs at least USD 4.10. It resets on Friday 01 "
                           "January 2027 at 00:00 (America/Chicago). Ask your administrator.")  # fmt: skip
    assert err.headers["x-should-retry"] == "false" and "retry-after" not in err.headers


@pytest.mark.parametrize(
    ("slots", "full", "start"),
    [
        (1, True, "The only GPU slot of llama is busy and the queue for it is full."),
        (
            1,
            False,
            "The only GPU slot of llama is busy and your request waited 30 seconds without getting it.",
        ),
        (16, True, "All 16 GPU slots of llama are busy and the queue for them is full."),
        (
            16,
            False,
            "All 16 GPU slots of llama are busy and your request waited 30 seconds without getting one.",
        ),
    ],
)
def test_a_queue_refusal_is_a_sentence_for_one_slot_or_many(slots: int, full: bool, start: str) -> None:
    from gateway.slots import queue_error
    from providers.config import QueueConfig
    from providers.router import QueueInfo

    err = queue_error(QueueInfo("campus", "llama", slots, QueueConfig()), full, 30_000)
    assert err.message == start + " Please try again in 5 seconds.", err.message
    assert (err.status, err.code, err.headers["retry-after"]) == (429, "rate_limit_exceeded", "5")
