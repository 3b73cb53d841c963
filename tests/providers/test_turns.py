"""The request-building rules Anthropic and Gemini share: alternating turns, tool arguments, content parts."""

from __future__ import annotations

from typing import Any

import pytest

from providers.adapters.anthropic import to_anthropic
from providers.adapters.gemini import to_gemini
from providers.errors import InvalidRequest

CALL = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "[1, 2]"}}


def _anthropic(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return to_anthropic({"messages": messages}, "claude", 100, False)


def _gemini(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return to_gemini({"messages": messages}, 100)


def test_neighbouring_turns_of_one_role_are_merged() -> None:
    messages = [
        {"role": "user", "content": "a"},
        {"role": "user", "content": [{"type": "text", "text": "b"}]},
    ]
    assert _anthropic(messages)["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}
    ]
    assert _gemini(messages)["contents"] == [{"role": "user", "parts": [{"text": "a"}, {"text": "b"}]}]


def test_tool_arguments_become_an_object_for_both() -> None:
    messages = [
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [CALL]},
    ]
    use = _anthropic(messages)["messages"][1]["content"][0]
    assert (use["type"], use["input"]) == ("tool_use", {"value": [1, 2]})
    assert _gemini(messages)["contents"][1]["parts"][0]["functionCall"]["args"] == {"value": [1, 2]}


@pytest.mark.parametrize("build", [_anthropic, _gemini])
def test_bad_parts_and_arguments_are_refused_by_name(build: Any) -> None:
    bad_args = {**CALL, "function": {"name": "f", "arguments": "{not json"}}
    with pytest.raises(InvalidRequest, match="not valid JSON"):
        build([{"role": "assistant", "content": None, "tool_calls": [bad_args]}])
    image = {"type": "image_url", "image_url": {"url": "https://example.edu/a.png"}}
    with pytest.raises(InvalidRequest, match="'image_url' is not supported"):
        build([{"role": "system", "content": [image]}])
    with pytest.raises(InvalidRequest, match="without a url"):
        build([{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}])
