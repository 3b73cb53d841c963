"""Fixtures of the chart tests: one render per named values set, shared by a module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helm_chart import MISSING_SDK, VALUE_SETS, Rendered, helm, render_chart


@pytest.fixture(autouse=True, scope="session")
def _needs_helm_sdk() -> None:
    """Session-scoped so it runs before the module-scoped renders below."""
    if helm is None:
        pytest.skip(MISSING_SDK)


@pytest.fixture(params=sorted(VALUE_SETS), scope="module")
def value_set(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    yield request.param, VALUE_SETS[request.param]


@pytest.fixture(scope="module")
def rendered(value_set: tuple[str, dict[str, Any]]) -> Rendered:
    return render_chart(value_set[1])


@pytest.fixture
def render() -> Callable[[dict[str, Any] | None], Rendered]:
    return render_chart
