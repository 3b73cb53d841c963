from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.gateway.harness import Stack, gateway_stack
from tests.gateway.orphans import no_orphan_gateways, no_orphan_gateways_after_module  # noqa: F401 (autouse)


def _narrow_research(doc: dict[str, Any]) -> None:
    """Rita's research unit may use only the text model: the 403 case. Timeouts short for the 504 case."""
    research = doc["units"][0]["children"][0]["children"][0]["children"][0]["children"][1]
    assert research["id"] == "turing-research"
    research["models"] = ["demo-chat"]
    doc["providers"][0]["timeouts"] = {"connect": 2, "first_byte": 2, "read": 3}


@pytest.fixture(scope="module")
def stack(
    pg_server_url: str, redis_url: str, kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    with gateway_stack(
        pg_server_url, redis_url, kafka_bootstrap, tmp_path_factory.mktemp("gw"),
        mutate=_narrow_research, extra_env={"EDUAIQ_MAX_IMAGE_BYTES": "200000"},
    ) as s:  # fmt: skip
        yield s
