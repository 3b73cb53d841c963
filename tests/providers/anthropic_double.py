"""A test double of Anthropic's Messages API speaking its real wire protocol.

It checks what the real API checks that a translation could get wrong
(auth headers, max_tokens, alternating roles starting with user, block
types, tool_result ids that answer a tool_use), and answers in the real
shapes: a message body, or the event stream message_start,
content_block_start/delta/stop, message_delta (with usage), message_stop.
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from tests.providers.wire import RunningApp, example_args, run_app, tokens_of

API_KEY = "sk-ant-test-key"
IMAGE_TOKENS = 1000
CACHE_READ = 5


def _err(status: int, etype: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"type": "error", "error": {"type": etype, "message": message}}),
        content_type="application/json",
    )


class AnthropicDouble:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.fail_status: int | None = None
        self.stream_error_first = False
        self.app: RunningApp | None = None

    @property
    def base_url(self) -> str:
        assert self.app is not None
        return self.app.url + "/v1"

    async def start(self) -> AnthropicDouble:
        app = web.Application()
        app.router.add_post("/v1/messages", self.messages)
        self.app = await run_app(app)
        return self

    async def close(self) -> None:
        if self.app:
            await self.app.close()

    def _validate(self, req: dict[str, Any]) -> str | None:
        if not isinstance(req.get("max_tokens"), int):
            return "max_tokens: Field required"
        msgs = req.get("messages") or []
        if not msgs or msgs[0]["role"] != "user":
            return "messages: first message must use the user role"
        tool_ids: set[str] = set()
        for i, m in enumerate(msgs):
            if i and msgs[i - 1]["role"] == m["role"]:
                return f"messages.{i}: roles must alternate between user and assistant"
            content = m["content"]
            blocks = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for b in blocks:
                t = b.get("type")
                if t == "text" and not b.get("text"):
                    return f"messages.{i}: text content blocks must be non-empty"
                if t == "image" and b.get("source", {}).get("type") not in ("base64", "url"):
                    return f"messages.{i}: bad image source"
                if t == "tool_use":
                    tool_ids.add(b["id"])
                    if not isinstance(b.get("input"), dict):
                        return f"messages.{i}: tool_use.input must be an object"
                if t == "tool_result" and b.get("tool_use_id") not in tool_ids:
                    return f"messages.{i}: tool_result for unknown tool_use_id"
                if t not in ("text", "image", "tool_use", "tool_result"):
                    return f"messages.{i}: unknown block type {t}"
        if "temperature" in req and not 0 <= req["temperature"] <= 1:
            return "temperature: must be between 0 and 1"
        return None

    def _plan(self, req: dict[str, Any]) -> tuple[list[str], dict[str, Any] | None, int]:
        texts: list[str] = [b["text"] for b in req.get("system") or [] if b.get("type") == "text"]
        images = 0
        last_text = ""
        for m in req["messages"]:
            content = m["content"]
            for b in [{"type": "text", "text": content}] if isinstance(content, str) else content:
                if b["type"] == "text":
                    texts.append(b["text"])
                    if m["role"] == "user":
                        last_text = b["text"]
                elif b["type"] == "image":
                    images += 1
                elif b["type"] == "tool_result":
                    texts.append(b["content"] if isinstance(b["content"], str) else "")
        input_tokens = tokens_of(texts) + images * IMAGE_TOKENS
        tools = req.get("tools") or []
        choice = (req.get("tool_choice") or {}).get("type")
        last_is_user_text = isinstance(req["messages"][-1]["content"], str) or not any(
            b["type"] == "tool_result" for b in req["messages"][-1]["content"]
        )
        if (
            tools
            and choice != "none"
            and last_is_user_text
            and ("tool" in last_text or choice in ("any", "tool"))
        ):
            tool = tools[0]
            if choice == "tool":
                tool = next(t for t in tools if t["name"] == req["tool_choice"]["name"])
            return [], {"name": tool["name"], "input": example_args(tool["input_schema"])}, input_tokens
        words = f"Anthropic double heard {len(last_text)} characters".split()
        words = words[: req["max_tokens"]]
        return [w if i == 0 else " " + w for i, w in enumerate(words)], None, input_tokens

    async def messages(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("x-api-key") != API_KEY:
            return _err(401, "authentication_error", "invalid x-api-key")
        if not request.headers.get("anthropic-version"):
            return _err(400, "invalid_request_error", "anthropic-version header is required")
        req = orjson.loads(await request.read())
        self.requests.append(req)
        self.headers.append(dict(request.headers))
        if self.fail_status:
            return _err(
                self.fail_status, "overloaded_error" if self.fail_status == 529 else "api_error", "fail"
            )
        problem = self._validate(req)
        if problem:
            return _err(400, "invalid_request_error", problem)
        words, tool, input_tokens = self._plan(req)
        output_tokens = len(words) if tool is None else 9
        usage = {
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cache_read_input_tokens": CACHE_READ,
            "cache_creation_input_tokens": 0,
        }
        stop = "tool_use" if tool else ("max_tokens" if len(words) == req["max_tokens"] else "end_turn")
        msg_id = "msg_double01"
        if not req.get("stream"):
            content: list[dict[str, Any]] = []
            if tool:
                content.append(
                    {"type": "tool_use", "id": "toolu_01", "name": tool["name"], "input": tool["input"]}
                )
            else:
                content.append({"type": "text", "text": "".join(words)})
            body = {
                "id": msg_id,
                "type": "message",
                "role": "assistant",
                "model": req["model"],
                "content": content,
                "stop_reason": stop,
                "stop_sequence": None,
                "usage": usage,
            }
            return web.Response(body=orjson.dumps(body), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)

        async def event(name: str, data: dict[str, Any]) -> None:
            await resp.write(b"event: " + name.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n")
            await asyncio.sleep(0)

        if self.stream_error_first:
            await event(
                "error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
            )
            await resp.write_eof()
            return resp
        start_usage = dict(usage, output_tokens=1)
        await event(
            "message_start",
            {
                "type": "message_start",
                "message": {
                    "id": msg_id,
                    "type": "message",
                    "role": "assistant",
                    "model": req["model"],
                    "content": [],
                    "stop_reason": None,
                    "stop_sequence": None,
                    "usage": start_usage,
                },
            },
        )
        await event("ping", {"type": "ping"})
        if tool:
            await event(
                "content_block_start",
                {
                    "type": "content_block_start",
                    "index": 0,
                    "content_block": {
                        "type": "tool_use",
                        "id": "toolu_01",
                        "name": tool["name"],
                        "input": {},
                    },
                },
            )
            args = orjson.dumps(tool["input"]).decode()
            for piece in (args[: len(args) // 2], args[len(args) // 2 :]):
                await event(
                    "content_block_delta",
                    {
                        "type": "content_block_delta",
                        "index": 0,
                        "delta": {"type": "input_json_delta", "partial_json": piece},
                    },
                )
        else:
            await event(
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
            )
            for w in words:
                await event(
                    "content_block_delta",
                    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}},
                )
        await event("content_block_stop", {"type": "content_block_stop", "index": 0})
        await event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": output_tokens},
            },
        )
        await event("message_stop", {"type": "message_stop"})
        await resp.write_eof()
        return resp
