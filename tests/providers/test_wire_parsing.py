"""SSE splitting, vLLM /metrics parsing, usage normalisation and the breaker's state machine."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from providers.adapters.openai_compat import PassthroughStream
from providers.breaker import CircuitBreaker
from providers.metrics import parse_vllm_metrics
from providers.sse import SSESplitter, event_data
from providers.usage import NormalisedUsage, from_anthropic, from_gemini, from_openai

EVENTS = [b'data: {"a":1}', b'event: message_start\ndata: {"type":"message_start"}', b"data: [DONE]"]


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, prev = [], 0
    for p in [*points, len(data)]:
        out.append(data[prev:p])
        prev = p
    return [c for c in out if c]


@given(st.lists(st.integers(0, 10_000), max_size=20), st.booleans())
def test_events_survive_any_chunking_and_crlf(cuts: list[int], crlf: bool) -> None:
    raw = b"".join(e + b"\n\n" for e in EVENTS)
    if crlf:
        raw = raw.replace(b"\n", b"\r\n")
    s = SSESplitter()
    got: list[bytes] = []
    for chunk in split_at(raw, cuts):
        got.extend(s.feed(chunk))
    assert got == EVENTS and s.rest() == b""


@given(st.lists(st.integers(0, 10_000), max_size=20), st.booleans())
def test_passthrough_forwards_every_byte_but_the_usage_only_chunk(cuts: list[int], want_usage: bool) -> None:
    content = b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\n\n'
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":2,"total_tokens":9}}\n\n'
    raw = content * 3 + usage + b"data: [DONE]\n\n"
    p = PassthroughStream(include_usage_chunk=want_usage)
    out = b"".join(p.feed(c) for c in split_at(raw, cuts)) + p.finish()
    assert out == (raw if want_usage else content * 3 + b"data: [DONE]\n\n")
    assert p.usage == NormalisedUsage(input=7, output=2)


@given(st.lists(st.integers(0, 10_000), max_size=20), st.booleans(), st.integers(0, 3))
def test_usage_on_a_content_chunk_is_read_and_the_chunk_kept(
    cuts: list[int], want_usage: bool, n: int
) -> None:
    talk = b'data: {"choices":[{"delta":{"content":"the \\"usage\\" of x_groq"}}]}\n\n'
    last = b'data: {"choices":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":5,"completion_tokens":1}}\n\n'
    raw = talk * n + last + talk + b"data: [DONE]\n\n"
    p = PassthroughStream(include_usage_chunk=want_usage)
    out = b"".join(p.feed(c) for c in split_at(raw, cuts)) + p.finish()
    assert out == raw
    assert p.usage == NormalisedUsage(input=5, output=1)


def test_groq_usage_is_found_in_x_groq() -> None:
    p = PassthroughStream(include_usage_chunk=False)
    p.feed(
        b'data: {"choices":[{"delta":{},"finish_reason":"stop"}],"x_groq":{"usage":{"prompt_tokens":3,"completion_tokens":4}}}\n\n'
    )
    assert p.usage == NormalisedUsage(input=3, output=4)


def test_event_data_joins_multiline_data() -> None:
    assert event_data(b'event: x\ndata: {"a":\ndata: 1}') == b'{"a":\n1}'
    assert event_data(b": keep-alive") is None


VLLM_V1 = """# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="Qwen/Qwen2-VL-7B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="Qwen/Qwen2-VL-7B-Instruct"} 2.0
vllm:num_requests_waiting{engine="0",model_name="Qwen/Qwen2-VL-7B-Instruct"} 1.0
vllm:kv_cache_usage_perc{engine="0",model_name="Qwen/Qwen2-VL-7B-Instruct"} 0.42
vllm:prompt_tokens_total{engine="0",model_name="Qwen/Qwen2-VL-7B-Instruct"} 12345.0
python_gc_objects_collected_total{generation="0"} 1.0
"""


def test_vllm_metrics_are_summed_over_label_sets() -> None:
    load = parse_vllm_metrics(VLLM_V1)
    assert load is not None
    assert (load.running, load.waiting, load.kv_cache) == (5.0, 1.0, 0.42)
    old = parse_vllm_metrics('vllm:gpu_cache_usage_perc{model_name="m"} 0.97\nvllm:num_requests_running 1\n')
    assert old is not None and old.kv_cache == 0.97 and old.running == 1
    assert old.score > parse_vllm_metrics("vllm:num_requests_running 4\n").score  # type: ignore[union-attr]
    assert parse_vllm_metrics("process_cpu_seconds_total 3\n") is None


def test_usage_normalisation_per_provider() -> None:
    assert from_openai(
        {"prompt_tokens": 100, "completion_tokens": 20, "prompt_tokens_details": {"cached_tokens": 64}}
    ) == NormalisedUsage(100, 20, 0, 64)
    assert (
        from_openai({"prompt_tokens": 10, "completion_tokens": 1, "prompt_cache_hit_tokens": 8}).cached_input
        == 8
    )
    assert from_anthropic(
        {
            "input_tokens": 10,
            "output_tokens": 5,
            "cache_read_input_tokens": 100,
            "cache_creation_input_tokens": 7,
        }
    ) == NormalisedUsage(117, 5, 0, 100)
    assert from_gemini(
        {
            "promptTokenCount": 300,
            "candidatesTokenCount": 10,
            "thoughtsTokenCount": 30,
            "cachedContentTokenCount": 12,
            "promptTokensDetails": [
                {"modality": "TEXT", "tokenCount": 42},
                {"modality": "IMAGE", "tokenCount": 258},
            ],
        }
    ) == NormalisedUsage(300, 40, 258, 12)


def test_breaker_opens_after_n_failures_and_lets_one_probe_through() -> None:
    b = CircuitBreaker(failures=2, cooldown=10)
    b.on_failure(0)
    assert b.state == "closed" and b.available(0)
    b.on_failure(1)
    assert b.state == "open" and not b.available(5)
    assert b.available(11)
    b.on_attempt(11)
    assert b.state == "half_open" and not b.available(11)  # only one trial at a time
    b.on_failure(12)
    assert b.state == "open" and not b.available(21)
    b.on_probe_success(22.5)  # health probe after the cooldown: let traffic test it
    assert b.state == "half_open" and b.available(22.5)
    b.on_attempt(22.5)
    b.on_success()
    assert b.state == "closed"


def test_failed_probes_open_the_breaker_and_keep_it_open() -> None:
    b = CircuitBreaker(failures=2, cooldown=1)
    b.on_probe_failure(0)
    b.on_probe_failure(0.5)
    assert b.state == "open"
    b.on_probe_failure(1.4)
    assert not b.available(2.0)  # a probe failure pushed the cooldown on
    b.on_probe_success(1.6)
    assert b.state == "open"
    b.on_probe_success(2.5)
    assert b.state == "half_open"
