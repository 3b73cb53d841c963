"""Reading a vLLM replica's load from its Prometheus /metrics text.

vLLM v0 names KV-cache use `vllm:gpu_cache_usage_perc`, v1 `vllm:kv_cache_usage_perc`
(both 0..1); either is accepted. Samples are summed over label sets, since one
server may report per served model name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

RUNNING = "vllm:num_requests_running"
WAITING = "vllm:num_requests_waiting"
KV_NAMES = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")


@dataclass(frozen=True, slots=True)
class LoadSample:
    running: float
    waiting: float
    kv_cache: float

    @property
    def score(self) -> float:
        """Lower is better. Waiting requests cost more than running ones: they mean the batch is full.
        A nearly full KV cache means the next request will wait too."""
        kv_penalty = 4.0 if self.kv_cache >= 0.95 else self.kv_cache
        return self.running + 2.0 * self.waiting + kv_penalty


# One sample line of a wanted metric: its name, an optional label set, its value. Matched over the whole
# body by the regex engine: a Python loop over each character let a hostile /metrics body hold the
# event loop for seconds (the body is also capped where it is read, providers/router.py).
_SAMPLE = re.compile(
    r"^(vllm:(?:num_requests_running|num_requests_waiting|kv_cache_usage_perc|gpu_cache_usage_perc))"
    r"(?:\{[^}\n]*\})?[ \t]+(\S+)",
    re.MULTILINE,
)


def parse_vllm_metrics(text: str) -> LoadSample | None:
    """The load numbers from a /metrics body, or None when it is not a vLLM server's."""
    running = waiting = 0.0
    kv: dict[str, float] = {}
    seen = False
    for name, raw in _SAMPLE.findall(text):
        try:
            value = float(raw)
        except ValueError:
            continue
        seen = True
        if name == RUNNING:
            running += value
        elif name == WAITING:
            waiting += value
        else:
            kv[name] = max(kv.get(name, 0.0), value)
    if not seen:
        return None
    kv_cache = kv.get(KV_NAMES[0], kv.get(KV_NAMES[1], 0.0))
    return LoadSample(running, waiting, kv_cache)
