"""A test double of the Gemini API (generateContent, streamGenerateContent?alt=sse) on its real wire format.

Checks the key header, roles (user/model), non-empty parts and that every
functionResponse names a function; answers with candidates and
usageMetadata (cumulative on every stream chunk, as Gemini sends it).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

from tests.providers.wire import RunningApp, example_args, run_app, tokens_of

API_KEY = "gemini-test-key"
IMAGE_TOKENS = 258
CACHED = 3


def _err(status: int, gstatus: str, message: str) -> web.Response:
    return web.Response(
        status=status,
        body=orjson.dumps({"error": {"code": status, "message": message, "status": gstatus}}),
        content_type="application/json",
    )


class GeminiDouble:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []
        self.app: RunningApp | None = None

    @property
    def base_url(self) -> str:
        assert self.app is not None
        return self.app.url + "/v1beta"

    async def start(self) -> GeminiDouble:
        app = web.Application()
        app.router.add_post("/v1beta/models/{action}", self.generate)
        self.app = await run_app(app)
        return self

    async def close(self) -> None:
        if self.app:
            await self.app.close()

    def _validate(self, req: dict[str, Any]) -> str | None:
        contents = req.get("contents") or []
        if not contents:
            return "contents is not specified"
        for i, c in enumerate(contents):
            if c.get("role") not in ("user", "model"):
                return f"contents[{i}].role must be user or model"
            if not c.get("parts"):
                return f"contents[{i}].parts must not be empty"
            for p in c["parts"]:
                if "functionResponse" in p and not p["functionResponse"].get("name"):
                    return f"contents[{i}]: functionResponse.name is required"
        for t in req.get("tools") or []:
            for d in t.get("functionDeclarations") or []:
                if "additionalProperties" in orjson.dumps(d.get("parameters") or {}).decode():
                    return 'Unknown name "additionalProperties" in function parameters'
        return None

    async def generate(self, request: web.Request) -> web.StreamResponse:
        if request.headers.get("x-goog-api-key") != API_KEY:
            return _err(403, "PERMISSION_DENIED", "API key not valid. Please pass a valid API key.")
        model, _, method = request.match_info["action"].partition(":")
        stream = method == "streamGenerateContent"
        if method not in ("generateContent", "streamGenerateContent"):
            return _err(404, "NOT_FOUND", f"unknown method {method}")
        if stream and request.query.get("alt") != "sse":
            return _err(400, "INVALID_ARGUMENT", "this double only streams with alt=sse")
        req = orjson.loads(await request.read())
        self.requests.append(req)
        self.paths.append(request.path_qs)
        problem = self._validate(req)
        if problem:
            return _err(400, "INVALID_ARGUMENT", problem)
        texts = [p["text"] for p in (req.get("systemInstruction") or {}).get("parts", []) if "text" in p]
        images = 0
        last_text = ""
        for c in req["contents"]:
            for p in c["parts"]:
                if "text" in p:
                    texts.append(p["text"])
                    if c["role"] == "user":
                        last_text = p["text"]
                if "inlineData" in p or "fileData" in p:
                    images += 1
        text_tokens = tokens_of(texts)
        prompt_tokens = text_tokens + images * IMAGE_TOKENS
        gen = req.get("generationConfig") or {}
        decls = [d for t in req.get("tools") or [] for d in t.get("functionDeclarations") or []]
        mode = ((req.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode", "AUTO")
        last_parts = req["contents"][-1]["parts"]
        answering_tool = any("functionResponse" in p for p in last_parts)
        call = None
        if decls and mode != "NONE" and not answering_tool and ("tool" in last_text or mode == "ANY"):
            call = {"name": decls[0]["name"], "args": example_args(decls[0].get("parameters") or {})}
        words = f"Gemini double heard {len(last_text)} characters".split()
        if "maxOutputTokens" in gen:
            words = words[: gen["maxOutputTokens"]]
        pieces = [w if i == 0 else " " + w for i, w in enumerate(words)]
        out_tokens = 6 if call else len(words)
        details = [{"modality": "TEXT", "tokenCount": text_tokens}]
        if images:
            details.append({"modality": "IMAGE", "tokenCount": images * IMAGE_TOKENS})

        def usage(candidates: int) -> dict[str, Any]:
            return {
                "promptTokenCount": prompt_tokens,
                "candidatesTokenCount": candidates,
                "totalTokenCount": prompt_tokens + candidates,
                "cachedContentTokenCount": CACHED,
                "promptTokensDetails": details,
            }

        reason = "MAX_TOKENS" if "maxOutputTokens" in gen and len(words) == gen["maxOutputTokens"] else "STOP"
        if not stream:
            parts = [{"functionCall": call}] if call else [{"text": "".join(pieces)}]
            body = {
                "candidates": [
                    {"content": {"role": "model", "parts": parts}, "finishReason": reason, "index": 0}
                ],
                "usageMetadata": usage(out_tokens),
                "modelVersion": model,
                "responseId": "resp-double",
            }
            return web.Response(body=orjson.dumps(body), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        chunks: list[list[dict[str, Any]]] = (
            [[{"functionCall": call}]] if call else [[{"text": p}] for p in pieces]
        )
        for i, parts in enumerate(chunks):
            last = i == len(chunks) - 1
            cand: dict[str, Any] = {"content": {"role": "model", "parts": parts}, "index": 0}
            if last:
                cand["finishReason"] = reason
            chunk = {
                "candidates": [cand],
                "usageMetadata": usage(out_tokens if last else i + 1),
                "modelVersion": model,
                "responseId": "resp-double",
            }
            await resp.write(b"data: " + orjson.dumps(chunk) + b"\r\n\r\n")
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp
