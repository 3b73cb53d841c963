"""The demo model: a local OpenAI-compatible server that needs no GPU and no model weights.

Used by the quick start and by tests as the OpenAI-wire (and vLLM) upstream.
Its usage follows the request (see demo_replies.py), so budget tests can
predict costs; /metrics speaks vLLM's Prometheus names with settable load,
so routing tests can use several as vLLM replicas; /demo/admin makes it fail
(5xx/429, hang, drop, die mid-stream) for fallback tests.

    python -m selfhost.demo_model --port 8001 [--latency-ms 50] [--chunk-delay-ms 20]
    handle = await start_demo_model("127.0.0.1", 0, chunk_delay_ms=5)   # in tests

Endpoints: GET /v1/models, POST /v1/chat/completions, POST /v1/completions,
POST /v1/embeddings, GET /metrics, GET /health, POST /demo/admin, GET /demo/stats.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import math
import os
import signal
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from providers.errors import ImageError
from selfhost import demo_replies as replies
from selfhost.demo_http import HttpServer, Request, Responder

OWNED_BY = "eduaiq-demo"
DEFAULT_MODELS = ("demo-chat", "demo-vision")
FaultMode = Literal["status", "hang", "drop", "midstream"]


@dataclass
class DemoOptions:
    models: tuple[str, ...] = DEFAULT_MODELS
    latency_ms: float = 0.0
    chunk_delay_ms: float = 0.0
    reply_tokens: int | None = None
    default_max_tokens: int = 64
    max_model_len: int = 8192
    embedding_dims: int = 32
    kv_metric: Literal["kv_cache_usage_perc", "gpu_cache_usage_perc"] = "kv_cache_usage_perc"
    api_key: str | None = None
    stream_usage: bool = True
    """False: never send usage in streams, like llama-cpp-python's server."""
    answer_usage: bool = True
    """False: non-stream answers carry no `usage` either, like some OpenAI-compatible servers."""
    served_log: str | None = None
    """A file to append one JSON line per answered inference request: the tokens this server reported and
    how much of the answer it wrote. Fault tests compare the ledger with it (what the upstream billed)."""


@dataclass
class Fault:
    mode: FaultMode = "status"
    status: int = 503
    remaining: int | None = None  # None: until cleared


@dataclass
class DemoState:
    running: float = 0.0
    waiting: float = 0.0
    kv_cache: float = 0.0
    inflight: int = 0
    fault: Fault | None = None
    counts: collections.Counter[str] = field(default_factory=collections.Counter)
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    received: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=100))


def _choices(value: Any) -> int:
    return value if type(value) is int and value > 0 else 1


def _prompt_batch(prompt: Any) -> list[Any]:
    """The prompts of a completions `prompt`: a string or token ids is one; an array of either is many."""
    if isinstance(prompt, list) and prompt and isinstance(prompt[0], str | list):
        return prompt
    return [prompt]


def _first_text(prompt: Any) -> str:
    """The first prompt's text (a string, or the first string of a batch); token ids have none."""
    if isinstance(prompt, list) and prompt:
        prompt = prompt[0]
    return prompt if isinstance(prompt, str) else ""


def _error(status: int, message: str, etype: str = "invalid_request_error") -> bytes:
    return orjson.dumps({"error": {"message": message, "type": etype, "param": None, "code": status}})


class DemoModel:
    """Request handling; the HttpServer feeds it. One instance per listening server."""

    def __init__(self, options: DemoOptions) -> None:
        self.options = options
        self.state = DemoState()
        self._counter = 0
        # Line-buffered: each record reaches the file whole, even if this server is killed after it.
        self._served = open(options.served_log, "a", buffering=1) if options.served_log else None
        self._models_body = orjson.dumps(
            {
                "object": "list",
                "data": [
                    {
                        "id": m,
                        "object": "model",
                        "created": 0,
                        "owned_by": OWNED_BY,
                        "root": m,
                        "max_model_len": options.max_model_len,
                    }
                    for m in options.models
                ],
            }
        )

    # -- dispatch -------------------------------------------------------------------------
    def handle(self, req: Request, res: Responder) -> Awaitable[None] | None:
        path = req.path[3:] if req.path.startswith("/v1/") else req.path
        if path in ("/chat/completions", "/completions", "/embeddings"):
            if req.method != "POST":
                res.send(405, _error(405, "use POST"))
                return None
            return self._inference(path, req, res)
        if path == "/models" and req.method == "GET":
            if not self._authorised(req):
                res.send(401, _error(401, "invalid api key", "authentication_error"))
                return None
            res.send(200, self._models_body)
            return None
        if path == "/metrics":
            res.send(200, self.metrics_text().encode(), b"text/plain; version=0.0.4")
            return None
        if path == "/health":
            res.send(200, b"")
            return None
        if path == "/demo/stats":
            res.send(200, orjson.dumps(self.stats()))
            return None
        if path == "/demo/admin" and req.method == "POST":
            try:
                self.admin(orjson.loads(req.body or b"{}"))
            except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
                res.send(400, _error(400, f"bad admin body: {exc}"))
                return None
            res.send(200, orjson.dumps(self.stats()))
            return None
        res.send(404, _error(404, f"no route {req.method} {req.path}"))
        return None

    def _authorised(self, req: Request) -> bool:
        key = self.options.api_key
        return key is None or req.headers.get("authorization") == f"Bearer {key}"

    def _take_fault(self) -> Fault | None:
        f = self.state.fault
        if f is None:
            return None
        if f.remaining is not None:
            f.remaining -= 1
            if f.remaining <= 0:
                self.state.fault = None
        return f

    def _inference(self, path: str, req: Request, res: Responder) -> Awaitable[None] | None:
        st = self.state
        st.counts[path] += 1
        if not self._authorised(req):
            res.send(401, _error(401, "invalid api key", "authentication_error"))
            return None
        fault = self._take_fault()
        try:
            body = orjson.loads(req.body)
            if not isinstance(body, dict):
                raise ValueError("not an object")
        except (orjson.JSONDecodeError, ValueError):
            res.send(400, _error(400, "body is not a JSON object"))
            return None
        st.received.append(body)
        if fault is not None and fault.mode != "midstream":
            return self._fault(fault, res)
        model = body.get("model")
        if model not in self.options.models:
            res.send(404, _error(404, f"The model `{model}` does not exist.", "NotFoundError"))
            return None
        try:
            if path == "/chat/completions":
                return self._chat(body, res, fault)
            if path == "/completions":
                return self._completion(body, res, fault)
            self._embeddings(body, res)
            return None
        except ImageError as exc:
            res.send(400, _error(400, exc.message))
            return None

    def _fault(self, fault: Fault, res: Responder) -> Awaitable[None] | None:
        self.state.counts["faults"] += 1
        if fault.mode == "drop":
            res.abort()
            return None
        if fault.mode == "hang":
            return asyncio.sleep(3600)
        extra = b"Retry-After: 1\r\n" if fault.status == 429 else b""
        etype = "rate_limit_error" if fault.status == 429 else "server_error"
        res.send(fault.status, _error(fault.status, f"demo fault: HTTP {fault.status}", etype), extra=extra)
        return None

    def _id(self, prefix: str) -> str:
        self._counter += 1
        return f"{prefix}-demo{os.getpid()}-{self._counter}"

    # -- chat ---------------------------------------------------------------------------
    def _chat(self, body: dict[str, Any], res: Responder, fault: Fault | None) -> Awaitable[None] | None:
        opts = self.options
        prompt = replies.prompt_tokens(body)
        if prompt > opts.max_model_len:
            res.send(400, _error(400, f"prompt is {prompt} tokens, above max_model_len {opts.max_model_len}"))
            return None
        tool = replies.pick_tool_call(body)
        if tool is not None:
            name, arguments = tool
            tokens: list[str] = []
            completion = max(1, math.ceil((len(name) + len(arguments)) / 4))
            finish = "tool_calls"
        else:
            tokens, finish = replies.plan_reply(
                body, fixed_length=opts.reply_tokens, default_max_tokens=opts.default_max_tokens
            )
            completion = len(tokens)
        n = _choices(body.get("n"))
        completion *= n  # like vLLM: n samples of the same length here, each generated and counted
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        self.state.prompt_tokens_total += prompt
        self.state.generation_tokens_total += completion
        model = body["model"]
        cid, created = self._id("chatcmpl"), int(time.time())
        served = self._served_record(cid, body, replies._seed_text(body), usage)
        stream = bool(body.get("stream"))
        if not stream:
            message: dict[str, Any] = {
                "role": "assistant",
                "content": "".join(tokens) if tool is None else None,
            }
            if tool is not None:
                message["tool_calls"] = [
                    {
                        "id": self._id("call"),
                        "type": "function",
                        "function": {"name": tool[0], "arguments": tool[1]},
                    }
                ]
            out = orjson.dumps(
                {
                    "id": cid,
                    "object": "chat.completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {"index": i, "message": message, "logprobs": None, "finish_reason": finish}
                        for i in range(n)
                    ],
                    **({"usage": usage} if opts.answer_usage else {}),
                }
            )
            return self._answer(res, out, served)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        base: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
        }

        def chunk(delta: dict[str, Any], reason: str | None = None, index: int = 0) -> bytes:
            c = dict(base)
            c["choices"] = [{"index": index, "delta": delta, "logprobs": None, "finish_reason": reason}]
            return b"data: " + orjson.dumps(c) + b"\n\n"

        events = [chunk({"role": "assistant", "content": ""})]
        if tool is not None:
            call_id = self._id("call")
            half = len(tool[1]) // 2
            events.append(
                chunk(
                    {
                        "tool_calls": [
                            {
                                "index": 0,
                                "id": call_id,
                                "type": "function",
                                "function": {"name": tool[0], "arguments": ""},
                            }
                        ]
                    }
                )
            )
            for piece in (tool[1][:half], tool[1][half:]):
                events.append(chunk({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
        else:
            events.extend(chunk({"content": t}, None, i) for t in tokens for i in range(n))
        events.extend(chunk({}, finish, i) for i in range(n))
        if include_usage and opts.stream_usage and opts.answer_usage:
            u = dict(base)
            u["choices"] = []
            u["usage"] = usage
            events.append(b"data: " + orjson.dumps(u) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return self._send_stream(res, events, fault, served)

    # -- completions ----------------------------------------------------------------------
    def _completion(
        self, body: dict[str, Any], res: Responder, fault: Fault | None
    ) -> Awaitable[None] | None:
        opts = self.options
        # A batch, like vLLM and OpenAI: each prompt answered n times (best_of generated, n returned), the
        # choices indexed prompt by prompt; usage sums every prompt and every generated sequence.
        prompts = _prompt_batch(body.get("prompt"))
        n, generated = _choices(body.get("n")), max(_choices(body.get("n")), _choices(body.get("best_of")))
        prompt = sum(replies.completion_prompt_tokens(p) for p in prompts)
        plans = [
            replies.plan_reply(
                {**body, "prompt": p},
                fixed_length=opts.reply_tokens,
                default_max_tokens=opts.default_max_tokens,
            )
            for p in prompts
        ]
        completion = sum(len(tokens) for tokens, _ in plans) * generated
        usage = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        self.state.prompt_tokens_total += prompt
        self.state.generation_tokens_total += completion
        cid, created, model = self._id("cmpl"), int(time.time()), body["model"]
        served = self._served_record(cid, body, _first_text(body.get("prompt")), usage)
        base: dict[str, Any] = {"id": cid, "object": "text_completion", "created": created, "model": model}
        if not body.get("stream"):
            out = dict(base)
            out["choices"] = [
                {"index": i * n + j, "text": "".join(tokens), "logprobs": None, "finish_reason": finish}
                for i, (tokens, finish) in enumerate(plans)
                for j in range(n)
            ]
            if opts.answer_usage:
                out["usage"] = usage
            return self._answer(res, orjson.dumps(out), served)

        def chunk(text: str, reason: str | None = None, index: int = 0) -> bytes:
            c = dict(base)
            c["choices"] = [{"index": index, "text": text, "logprobs": None, "finish_reason": reason}]
            return b"data: " + orjson.dumps(c) + b"\n\n"

        events = [
            chunk(t, None, i * n + j) for i, (tokens, _) in enumerate(plans) for t in tokens for j in range(n)
        ]
        events.extend(chunk("", finish, i * n + j) for i, (_, finish) in enumerate(plans) for j in range(n))
        if (
            (body.get("stream_options") or {}).get("include_usage")
            and opts.stream_usage
            and opts.answer_usage
        ):
            u = dict(base)
            u["choices"] = []
            u["usage"] = usage
            events.append(b"data: " + orjson.dumps(u) + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return self._send_stream(res, events, fault, served)

    # -- embeddings -----------------------------------------------------------------------
    def _embeddings(self, body: dict[str, Any], res: Responder) -> None:
        raw = body.get("input")
        texts: list[str]
        if isinstance(raw, str):
            texts = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(t, int) for t in raw):
            texts = [" ".join(map(str, raw))]
        elif isinstance(raw, list) and raw:
            texts = [t if isinstance(t, str) else " ".join(map(str, t)) for t in raw]
        else:
            res.send(400, _error(400, "input must be a string or a non-empty list"))
            return
        dims = int(body.get("dimensions") or self.options.embedding_dims)
        b64 = body.get("encoding_format") == "base64"
        data = []
        for i, t in enumerate(texts):
            vec = replies.embedding(t, dims)
            data.append(
                {"object": "embedding", "index": i, "embedding": replies.embedding_b64(vec) if b64 else vec}
            )
        tokens = sum(math.ceil(len(t) / 4) for t in texts)
        self.state.prompt_tokens_total += tokens
        res.send(
            200,
            orjson.dumps(
                {
                    "object": "list",
                    "data": data,
                    "model": body["model"],
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            ),
        )

    # -- served log -------------------------------------------------------------------------
    def _served_record(
        self, cid: str, body: Mapping[str, Any], text: str, usage: Mapping[str, int]
    ) -> dict[str, Any] | None:
        """What the served log will say about this answer (None: no log). `marker` is the start of the
        prompt, which a test makes unique per request: the gateway forwards no request id upstream."""
        if self._served is None:
            return None
        return {
            "id": cid,
            "marker": text[:80],
            "stream": bool(body.get("stream")),
            "prompt_tokens": usage["prompt_tokens"],
            "completion_tokens": usage["completion_tokens"],
        }

    def _log_served(self, record: dict[str, Any] | None, *, complete: bool, events_written: int) -> None:
        if record is None or self._served is None:
            return
        record.update(complete=complete, events_written=events_written, at=time.time())
        self._served.write(orjson.dumps(record).decode() + "\n")

    # -- sending ----------------------------------------------------------------------------
    def _answer(self, res: Responder, data: bytes, served: dict[str, Any] | None) -> Awaitable[None] | None:
        if self.options.latency_ms <= 0:
            res.send(200, data)
            self._log_served(served, complete=True, events_written=1)
            return None
        return self._delayed_send(res, data, served)

    async def _delayed_send(self, res: Responder, data: bytes, served: dict[str, Any] | None = None) -> None:
        self.state.inflight += 1
        try:
            await asyncio.sleep(self.options.latency_ms / 1000)
            res.send(200, data)
            self._log_served(served, complete=True, events_written=1)
        finally:
            self.state.inflight -= 1

    def _send_stream(
        self, res: Responder, events: list[bytes], fault: Fault | None, served: dict[str, Any] | None = None
    ) -> Awaitable[None] | None:
        opts = self.options
        if fault is None and opts.latency_ms <= 0 and opts.chunk_delay_ms <= 0:
            res.start_stream()
            res.end_stream(b"".join(events))
            self._log_served(served, complete=True, events_written=len(events))
            return None
        return self._stream_slowly(res, events, fault, served)

    async def _stream_slowly(
        self, res: Responder, events: list[bytes], fault: Fault | None, served: dict[str, Any] | None = None
    ) -> None:
        self.state.inflight += 1
        written, complete = 0, False
        try:
            if self.options.latency_ms > 0:
                await asyncio.sleep(self.options.latency_ms / 1000)
            res.start_stream()
            delay = self.options.chunk_delay_ms / 1000
            for i, ev in enumerate(events):
                if res.closed:
                    self.state.counts["client_disconnects"] += 1
                    return
                if fault is not None and i == 3:
                    res.abort()  # midstream: the server dies after a few chunks
                    return
                res.write(ev)
                written += 1
                if delay > 0 and i < len(events) - 1:
                    await asyncio.sleep(delay)
            res.end_stream()
            complete = True
        except asyncio.CancelledError:  # the connection dropped while we waited: generation stops here
            self.state.counts["client_disconnects"] += 1
            raise
        finally:
            self.state.inflight -= 1
            self._log_served(served, complete=complete, events_written=written)

    # -- metrics and admin ------------------------------------------------------------------
    def metrics_text(self) -> str:
        st, model = self.state, self.options.models[0]
        label = f'{{model_name="{model}"}}'
        kv = f"vllm:{self.options.kv_metric}"
        lines = [
            "# HELP vllm:num_requests_running Number of requests in model execution batches.",
            "# TYPE vllm:num_requests_running gauge",
            f"vllm:num_requests_running{label} {float(st.running + st.inflight)}",
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.",
            "# TYPE vllm:num_requests_waiting gauge",
            f"vllm:num_requests_waiting{label} {float(st.waiting)}",
            f"# HELP {kv} KV-cache usage. 1 means 100 percent usage.",
            f"# TYPE {kv} gauge",
            f"{kv}{label} {float(st.kv_cache)}",
            "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.",
            "# TYPE vllm:prompt_tokens_total counter",
            f"vllm:prompt_tokens_total{label} {float(st.prompt_tokens_total)}",
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.",
            "# TYPE vllm:generation_tokens_total counter",
            f"vllm:generation_tokens_total{label} {float(st.generation_tokens_total)}",
        ]
        return "\n".join(lines) + "\n"

    def stats(self) -> dict[str, Any]:
        st = self.state
        return {
            "counts": dict(st.counts),
            "inflight": st.inflight,
            "load": {"running": st.running, "waiting": st.waiting, "kv_cache": st.kv_cache},
            "fault": None if st.fault is None else vars(st.fault),
            "prompt_tokens_total": st.prompt_tokens_total,
            "generation_tokens_total": st.generation_tokens_total,
            "options": {"latency_ms": self.options.latency_ms, "chunk_delay_ms": self.options.chunk_delay_ms},
        }

    def admin(self, cmd: Mapping[str, Any]) -> None:
        """{"load": {running, waiting, kv_cache}, "fail": {status, mode, count} | null,
        "latency_ms": n, "chunk_delay_ms": n, "reset": true}"""
        st = self.state
        load = cmd.get("load")
        if isinstance(load, Mapping):
            st.running = float(load.get("running", st.running))
            st.waiting = float(load.get("waiting", st.waiting))
            st.kv_cache = float(load.get("kv_cache", st.kv_cache))
        if "fail" in cmd:
            f = cmd["fail"]
            if f is None:
                st.fault = None
            else:
                mode = f.get("mode", "status")
                if mode not in ("status", "hang", "drop", "midstream"):
                    raise ValueError(f"unknown fault mode {mode}")
                st.fault = Fault(mode, int(f.get("status", 503)), f.get("count"))
        if "latency_ms" in cmd:
            self.options.latency_ms = float(cmd["latency_ms"])
        if "chunk_delay_ms" in cmd:
            self.options.chunk_delay_ms = float(cmd["chunk_delay_ms"])
        if "answer_usage" in cmd:
            self.options.answer_usage = bool(cmd["answer_usage"])
        if cmd.get("reset"):
            st.counts.clear()
            st.received.clear()
            st.prompt_tokens_total = st.generation_tokens_total = 0


class DemoModelHandle:
    """A running demo model inside the caller's event loop."""

    def __init__(self, model: DemoModel, server: HttpServer) -> None:
        self.model = model
        self._server = server

    @property
    def host(self) -> str:
        return self._server.host

    @property
    def port(self) -> int:
        return self._server.port

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def state(self) -> DemoState:
        return self.model.state

    @property
    def received(self) -> list[dict[str, Any]]:
        """Bodies of the inference requests received, oldest first (the last 100)."""
        return list(self.model.state.received)

    @property
    def running(self) -> bool:
        return self._server.running

    def set_load(
        self, running: float | None = None, waiting: float | None = None, kv_cache: float | None = None
    ) -> None:
        load = {
            k: v
            for k, v in (("running", running), ("waiting", waiting), ("kv_cache", kv_cache))
            if v is not None
        }
        self.model.admin({"load": load})

    def fail(self, status: int = 503, *, mode: FaultMode = "status", count: int | None = None) -> None:
        self.model.admin({"fail": {"status": status, "mode": mode, "count": count}})

    def heal(self) -> None:
        self.model.admin({"fail": None})

    def configure(self, **options: Any) -> None:
        for k, v in options.items():
            if not hasattr(self.model.options, k):
                raise TypeError(f"unknown demo option {k}")
            setattr(self.model.options, k, v)

    async def kill(self) -> None:
        """Die like a crashed server: stop listening, abort every connection."""
        await self._server.kill()

    async def restart(self) -> None:
        """Listen again on the same port (after kill)."""
        await self._server.start()

    async def close(self) -> None:
        await self._server.close()

    async def __aenter__(self) -> DemoModelHandle:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


async def start_demo_model(host: str = "127.0.0.1", port: int = 0, **options: Any) -> DemoModelHandle:
    """Start a demo model in the running loop; port 0 picks a free port (see handle.port)."""
    if "models" in options:
        options["models"] = tuple(options["models"])
    model = DemoModel(DemoOptions(**options))
    server = HttpServer(model.handle, host, port)
    await server.start()
    return DemoModelHandle(model, server)


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="python -m selfhost.demo_model", description=__doc__.split("\n")[0])
    p.add_argument("--host", default=env("DEMO_HOST", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("DEMO_PORT", "8001")))
    p.add_argument(
        "--models", default=env("DEMO_MODELS", ",".join(DEFAULT_MODELS)), help="comma-separated ids"
    )
    p.add_argument("--latency-ms", type=float, default=float(env("DEMO_LATENCY_MS", "0")))
    p.add_argument("--chunk-delay-ms", type=float, default=float(env("DEMO_CHUNK_DELAY_MS", "0")))
    p.add_argument("--reply-tokens", type=int, default=int(env("DEMO_REPLY_TOKENS", "0")) or None)
    p.add_argument("--api-key", default=env("DEMO_API_KEY"))
    p.add_argument("--max-model-len", type=int, default=int(env("DEMO_MAX_MODEL_LEN", "8192")))
    p.add_argument("--served-log", default=env("DEMO_SERVED_LOG"), help="append a JSON line per answer here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = _parse_args(argv)
    models = tuple(m for m in args.models.split(",") if m)
    bad = [m for m in models if "demo" not in m]
    if bad:
        raise SystemExit(f"demo model ids must contain 'demo' so nobody mistakes them for real models: {bad}")

    async def run() -> None:
        handle = await start_demo_model(
            args.host,
            args.port,
            models=models,
            latency_ms=args.latency_ms,
            chunk_delay_ms=args.chunk_delay_ms,
            reply_tokens=args.reply_tokens,
            api_key=args.api_key,
            served_log=args.served_log,
            max_model_len=args.max_model_len,
        )
        print(f"demo model serving {', '.join(models)} on {handle.base_url}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await handle.close()

    try:
        import uvloop

        uvloop.run(run())
    except ImportError:
        asyncio.run(run())


if __name__ == "__main__":
    main()
