"""How many GPUs a campus needs for a model: a transparent back-of-envelope, not a benchmark.

Decoding is memory-bandwidth bound: one sequence runs at about
(bandwidth x 60%) / weight bytes tokens/s, and vLLM's continuous batching
multiplies that by the number of sequences in flight (we assume 32 at 50%
efficiency). Prompt tokens cost roughly a tenth of an output token. The
busiest hour carries `peak_share` of the day's tokens, and replicas are
sized to run at `headroom` of their capacity at that peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from selfhost.catalogue import load_catalogue

BANDWIDTH_EFFICIENCY = 0.6
BATCH = 32
BATCH_EFFICIENCY = 0.5
PREFILL_COST = 0.1


@dataclass(frozen=True)
class CapacityPlan:
    model_id: str
    gpu: str
    gpus: int
    replicas: int
    tensor_parallel_size: int
    daily_tokens: int
    peak_tokens_per_second: float
    replica_tokens_per_second: float
    assumptions: list[str] = field(default_factory=list)


def plan(
    users: int,
    tokens_per_user_per_day: int,
    model_id: str,
    gpu: str = "A100-80GB",
    *,
    output_share: float = 0.3,
    peak_share: float = 0.15,
    headroom: float = 0.7,
) -> CapacityPlan:
    """GPUs needed to serve `users` each using `tokens_per_user_per_day` (input + output) of `model_id`."""
    if users < 0 or tokens_per_user_per_day < 0:
        raise ValueError("users and tokens_per_user_per_day must be >= 0")
    if not (0 < output_share <= 1 and 0 < peak_share <= 1 and 0 < headroom <= 1):
        raise ValueError("output_share, peak_share and headroom must be in (0, 1]")
    cat = load_catalogue()
    m = cat.model(model_id)
    g = cat.gpu(gpu)
    tp = 1
    while g.memory_gb * tp < m.gpu_memory_gb:
        tp *= 2
    tp = max(tp, m.tensor_parallel_size)
    single = g.bandwidth_gbs * tp * BANDWIDTH_EFFICIENCY / m.weights_gb
    replica_tps = single * BATCH * BATCH_EFFICIENCY
    daily = users * tokens_per_user_per_day
    effective_daily = daily * (output_share + (1 - output_share) * PREFILL_COST)
    peak_tps = effective_daily * peak_share / 3600
    replicas = max(1, math.ceil(peak_tps / (replica_tps * headroom)))
    return CapacityPlan(
        model_id=m.id,
        gpu=gpu,
        gpus=replicas * tp,
        replicas=replicas,
        tensor_parallel_size=tp,
        daily_tokens=daily,
        peak_tokens_per_second=round(peak_tps, 1),
        replica_tokens_per_second=round(replica_tps, 1),
        assumptions=[
            f"{m.id} needs {m.gpu_memory_gb:g} GB per replica; {gpu} has {g.memory_gb:g} GB -> tensor parallel {tp}",
            f"one replica ~{replica_tps:.0f} output tokens/s ({BATCH} sequences in flight at "
            f"{BATCH_EFFICIENCY:.0%} efficiency, {BANDWIDTH_EFFICIENCY:.0%} of {g.bandwidth_gbs:g} GB/s)",
            f"{output_share:.0%} of tokens are output; a prompt token costs {PREFILL_COST:g} of an output token",
            f"the busiest hour carries {peak_share:.0%} of the day's tokens; replicas run at {headroom:.0%} at peak",
            "add one replica for redundancy if an outage must not fall back to paid providers",
        ],
    )
