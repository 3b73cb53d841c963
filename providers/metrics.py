"""Reading a vLLM replica's load from its Prometheus /metrics text.

vLLM v0 names KV-cache use `vllm:gpu_cache_usage_perc`, v1 `vllm:kv_cache_usage_perc`
(both 0..1); either is accepted. Samples are summed over label sets, since one
server may report per served model name.
"""

from __future__ import annotations

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


def parse_vllm_metrics(text: str) -> LoadSample | None:
    """The load numbers from a /metrics body, or None when it is not a vLLM server's."""
    running = waiting = 0.0
    kv: dict[str, float] = {}
    seen = False
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name_end = len(line)
        for i, ch in enumerate(line):
            if ch in "{ ":
                name_end = i
                break
        name = line[:name_end]
        if name not in (RUNNING, WAITING, *KV_NAMES):
            continue
        value_part = line.rsplit("}", 1)[1] if "}" in line else line[name_end:]
        fields = value_part.split()
        if not fields:
            continue
        try:
            value = float(fields[0])
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
