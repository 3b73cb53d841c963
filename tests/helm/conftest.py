"""Fixtures of the chart tests: one render per named values set, shared by a module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from helm_chart import VALUE_SETS, Rendered, render_chart


@pytest.fixture(params=sorted(VALUE_SETS), scope="module")
def value_set(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    yield request.param, VALUE_SETS[request.param]


@pytest.fixture(scope="module")
def rendered(value_set: tuple[str, dict[str, Any]]) -> Rendered:
    return render_chart(value_set[1])


@pytest.fixture
def render() -> Callable[[dict[str, Any] | None], Rendered]:
    return render_chart
