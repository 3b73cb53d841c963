"""Request shapes that multiply output: a `prompt` list on /v1/completions against a small member cap."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import fault_stack, priced_org
from tests.faults.invariants import ledger_rows

pytestmark = [pytest.mark.faults, pytest.mark.slow]


def test_batched_prompts_on_a_small_member_cap(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path: Path
) -> None:
    """Twenty one-letter prompts x max_tokens 16 per request on a 400 µ$ member cap (each request can cost
    ~660 µ$): the reservation must cover every prompt, or the request be refused; never funded past 400."""

    def batch(marker: str) -> dict[str, Any]:
        return {"model": "demo-chat", "max_tokens": 16, "prompt": [f"{marker} a", *["a"] * 19]}

    with fault_stack(pg_server_url, redis_url, kafka_bootstrap, tmp_path, reply_tokens=16,
                     mutate=priced_org(unit_cap=20_000, member_cap=400, grant=None)) as fs:  # fmt: skip
        fs.load(12, concurrency=4, body=batch, path="/v1/completions")
        fs.assert_invariants()
        # A cap the reservation respected leaves nothing to record as overage: spend past the cap, even
        # when the ledger calls it overage rather than funded, is what the item is about.
        rows = ledger_rows(fs.stack.db_url, fs.stack.institution)
        overage = {r.request_id: (r.cost_micro, r.overage_micro) for r in rows if r.overage_micro}
        assert not overage, f"served past the member cap as overage (cost, overage µ$): {overage}"
