"""What a model server an institution admin names can make the gateway do.

The attack: an admin (or a broken model server) answers the gateway's health probe with a /metrics body
of tens of megabytes; the gateway read it whole and parsed it character by character on its event loop,
stalling every institution it serves for seconds on each probe.
"""

from __future__ import annotations

import pytest

from providers.config import compile_deployments
from providers.router import Router
from tests.security.upstream_double import capture_server

SAMPLE = b"vllm:num_requests_running 3\nvllm:num_requests_waiting 1\n"


def _vllm(port: int) -> list[dict[str, object]]:
    return [{"id": "gpu", "type": "vllm", "base_url": f"http://127.0.0.1:{port}/v1",
             "models": [{"id": "m", "price": {"input_per_mtok": 1, "output_per_mtok": 1}}]}]  # fmt: skip


async def _probed_load(body: bytes) -> object:
    with capture_server() as upstream:
        upstream.answer(200, body, "text/plain")
        router = Router(compile_deployments(_vllm(upstream.port)))
        await router.start()  # probes every server once before it returns
        try:
            return next(iter(router._deployments.values())).server.load
        finally:
            await router.close()


async def test_a_normal_metrics_page_is_read() -> None:
    load = await _probed_load(SAMPLE)
    assert load is not None and (load.running, load.waiting) == (3.0, 1.0), load  # type: ignore[attr-defined]


@pytest.mark.parametrize("size", [3 * 1024 * 1024, 30 * 1024 * 1024])
async def test_a_huge_metrics_page_fails_the_probe_unread(size: int) -> None:
    """Beyond 2 MiB the probe has failed: nothing of the page is parsed (before: read whole, parsed on the
    event loop, and its first lines taken as the server's load)."""
    load = await _probed_load(SAMPLE + b"vllm:" + b"a" * size)
    assert load is None
