"""Choosing a deployment, falling back before the first byte, and streaming the answer through.

A model id maps to an ordered chain of tiers: the model's own deployments
grouped by priority (replicas of one server share a tier), then each model
named in `fallbacks`. Within a tier the least loaded deployment goes first:
vLLM replicas by what their /metrics said at the last scrape, corrected by
what this process has started or finished since; other deployments by this
process's own in-flight count. A deployment is skipped while its breaker is
open. Connect errors, timeouts, 5xx and 429 move on to the next candidate as
long as nothing has been sent to the caller; once `open()` returns, the
caller owns the stream and a failure surfaces as UpstreamStreamError. A
non-stream answer whose 2xx head came but whose body was lost (over the size
cap, past the read timeout) is never retried: the model has run, and
UpstreamAnswerLost tells the caller to bill it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from providers.adapters import Adapter, Endpoint, StreamProcessor, adapter_for
from providers.adapters.base import env_secret, secret_values
from providers.breaker import CircuitBreaker, State
from providers.config import DeploymentConfig, QueueConfig, RoutingConfig
from providers.errors import (
    Attempt,
    InvalidRequest,
    ModelNotFound,
    ProviderError,
    RetryableUpstreamError,
    UpstreamStreamError,
    UpstreamUnavailable,
)
from providers.http import PoolLimits, Response, UpstreamConnectionError, UpstreamPool, UpstreamTooLarge
from providers.metrics import LoadSample, parse_vllm_metrics
from providers.prices import Price
from providers.upstream_errors import public_error
from providers.usage import NormalisedUsage

log = logging.getLogger(__name__)
_JSON_HEADERS: Mapping[str, str] = {"Content-Type": "application/json"}
_SSE_HEADERS: Mapping[str, str] = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
_MAX_ERROR_BODY = 64 * 1024
# A vLLM /metrics page is tens of kilobytes (histograms included); beyond this the probe has failed
# (parsing it is on the event loop: 2 MiB cost ~80 ms each probe).
_MAX_METRICS_BYTES = 512 * 1024


@dataclass(frozen=True, slots=True)
class ServedBy:
    """Which deployment answered, and the price the budget must be charged at."""

    deployment_id: str
    provider_id: str
    provider_type: str
    model_id: str
    upstream: str
    price: Price


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the gateway needs before routing (policy, estimate): from the model's first deployment."""

    id: str
    upstream: str
    provider_type: str
    vision: bool
    max_output_tokens: int | None
    image_tokens: str | None
    # The fair queue of a self-hosted model with `slots` (its first tier's provider and model): None when
    # the model is not queued, so requests for it never touch the queue.
    queue: QueueInfo | None = None


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """A queued model's slots over all its replicas and how long requests may wait for one."""

    provider_id: str
    model_id: str
    slots: int
    config: QueueConfig


@dataclass(frozen=True, slots=True)
class DeploymentState:
    deployment_id: str
    breaker: State
    load: LoadSample | None
    inflight: int


class _Server:
    """One upstream base URL: load and in-flight count are per server, shared by its models."""

    __slots__ = ("deployments", "inflight", "inflight_at_scrape", "key_env", "load", "probe_url", "vllm")

    def __init__(self, probe_url: str | None, vllm: bool, key_env: str | None) -> None:
        self.probe_url = probe_url
        self.vllm = vllm
        self.key_env = key_env
        self.load: LoadSample | None = None
        self.inflight = 0
        self.inflight_at_scrape = 0
        self.deployments: list[_Deployment] = []

    def score(self) -> float:
        if self.load is None:
            return float(self.inflight)
        return max(0.0, self.load.score + self.inflight - self.inflight_at_scrape)


class _Deployment:
    __slots__ = ("adapter", "breaker", "cfg", "served_by", "server")

    def __init__(self, cfg: DeploymentConfig, server: _Server, routing: RoutingConfig) -> None:
        self.cfg = cfg
        self.server = server
        self.adapter: Adapter = adapter_for(cfg.provider_type)
        self.breaker = CircuitBreaker(routing.breaker_failures, routing.breaker_cooldown)
        self.served_by = ServedBy(
            cfg.id, cfg.provider_id, cfg.provider_type, cfg.model_id, cfg.upstream, cfg.price
        )


@dataclass(frozen=True, slots=True)
class _Tier:
    model_id: str
    vision: bool
    deployments: tuple[_Deployment, ...]


class _Failed(Exception):
    def __init__(self, attempt: Attempt, timeout: bool = False) -> None:
        super().__init__(attempt.reason)
        self.attempt = attempt
        self.timeout = timeout


class UpstreamAnswerLost(ProviderError):
    """The upstream answered 200 but its body could not be taken (larger than the response cap, too slow
    to arrive, or unreadable). The model has run and its provider bills the work, so this is never retried
    on another deployment and never free: the gateway charges the request at its reservation's bound.
    `served_by` names the deployment (and price) that did the work."""

    status = 502

    def __init__(self, message: str, served_by: ServedBy) -> None:
        super().__init__(message)
        self.served_by = served_by


class _StreamMeter:
    """Bytes of a stream being relayed: the whole stream's, and those since the last event boundary (one
    event's), each bounded so an upstream cannot make the gateway hold or relay without end."""

    __slots__ = ("max_event", "max_total", "pending", "total")

    def __init__(self, limits: PoolLimits) -> None:
        self.max_event = limits.max_event_bytes
        self.max_total = limits.max_stream_bytes
        self.total = 0
        self.pending = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.total > self.max_total:
            raise UpstreamTooLarge(f"upstream stream longer than {self.max_total} bytes")
        end = chunk.rfind(b"\n\n")
        if end < 0:
            end = chunk.rfind(b"\r\n\r\n")
        self.pending = self.pending + len(chunk) if end < 0 else len(chunk) - end
        if self.pending > self.max_event:
            raise UpstreamTooLarge(f"upstream event larger than {self.max_event} bytes")


class UpstreamResponse:
    """An upstream answer the caller now owns.

    Iterate it (`async for blob in resp`) for the bytes to send: the whole body
    for non-streams; for streams, blobs of complete OpenAI SSE events (never
    an event split across blobs), the usage-only chunk included only when
    asked for. `usage` is set once iteration has finished (at once for
    non-streams; None if the upstream never reported it; counted and flagged
    `usage_estimated` for `stream_usage: counted` providers). Call `aclose()` when
    the client goes away: it drops the upstream connection so the model stops
    generating. Iterating to the end or calling `aclose()` is required.
    """

    __slots__ = (
        "_body",
        "_done",
        "_meter",
        "_proc",
        "_resp",
        "_server",
        "attempts",
        "headers",
        "served_by",
        "status",
        "stream",
        "usage",
        "usage_estimated",
    )

    def __init__(
        self,
        *,
        status: int,
        headers: Mapping[str, str],
        stream: bool,
        served_by: ServedBy,
        attempts: tuple[Attempt, ...],
        body: bytes | None,
        usage: NormalisedUsage | None,
        resp: Response | None,
        proc: StreamProcessor | None,
        server: _Server | None,
        meter: _StreamMeter | None = None,
    ) -> None:
        self._meter = meter
        self.status = status
        self.headers = headers
        self.stream = stream
        self.served_by = served_by
        self.attempts = attempts
        self.usage = usage
        self.usage_estimated = False
        self._body = body
        self._resp = resp
        self._proc = proc
        self._server = server
        self._done = False
        if resp is None:
            self._finish(ok=True)

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    @property
    def reported_usage(self) -> NormalisedUsage | None:
        """The usage the upstream reported before the stream ended or was cut (None if none): `usage`
        is only set by a stream that ran to its end."""
        if self.usage is not None and not self.usage_estimated:
            return self.usage
        return self._proc.reported() if self._proc is not None else None

    @property
    def delivered_text(self) -> list[str] | None:
        """The text a translated stream sent on (None for a passthrough): a cut stream is billed at least
        its count, since its provider's events carry any number of tokens."""
        return self._proc.delivered() if self._proc is not None else None

    def _finish(self, *, ok: bool) -> None:
        if self._server is not None:
            self._server.inflight -= 1
            self._server = None
        if self._resp is not None:
            if ok:
                self._resp.release()
            else:
                self._resp.close()
            self._resp = None

    def __aiter__(self) -> UpstreamResponse:
        return self

    async def __anext__(self) -> bytes:
        body = self._body
        if body is not None:
            self._body = None
            return body
        resp, proc = self._resp, self._proc
        if self._done or resp is None or proc is None:
            self._done = True
            raise StopAsyncIteration
        while True:
            try:
                chunk = await resp.readany()
                if self._meter is not None:
                    self._meter.add(chunk)
                out = proc.finish() if not chunk else proc.feed(chunk)
            except (OSError, TimeoutError, RetryableUpstreamError) as exc:
                self._done = True
                self._finish(ok=False)
                raise UpstreamStreamError(
                    f"upstream {self.served_by.deployment_id} failed mid-stream: {exc or type(exc).__name__}"
                ) from exc
            if not chunk:
                self._done = True
                self.usage = proc.usage
                self.usage_estimated = proc.usage_estimated
                self._finish(ok=True)
                if out:
                    return out
                raise StopAsyncIteration
            if out:
                return out

    async def read(self) -> bytes:
        """All remaining bytes (for non-streams: the body)."""
        return b"".join([b async for b in self])

    async def aclose(self) -> None:
        if not self._done:
            self._done = True
            self._body = None
            self._finish(ok=False)


def _whole(
    dep: _Deployment,
    server: _Server,
    resp: Response,
    status: int,
    data: bytes,
    usage: NormalisedUsage | None,
    attempts: list[Attempt],
) -> UpstreamResponse:
    """An answer read whole (a non-stream body, or a 4xx the client should see): the server counts as
    healthy, its connection goes back to the pool, and the caller gets the bytes."""
    dep.breaker.on_success()
    resp.release()
    server.inflight -= 1
    return UpstreamResponse(
        status=status,
        headers=_JSON_HEADERS,
        stream=False,
        served_by=dep.served_by,
        attempts=tuple(attempts),
        body=data,
        usage=usage,
        resp=None,
        proc=None,
        server=None,
    )


def _queue_info(cfg: DeploymentConfig) -> QueueInfo | None:
    if cfg.slots is None:
        return None
    return QueueInfo(cfg.provider_id, cfg.model_id, cfg.slots, cfg.queue or QueueConfig())


class Router:
    """Routes model ids to deployments. One per process; `await start()` inside the serving loop."""

    def __init__(
        self,
        deployments: Sequence[DeploymentConfig],
        routing: RoutingConfig | None = None,
        *,
        session: UpstreamPool | None = None,
    ) -> None:
        self.routing = routing or RoutingConfig()
        self._session = session
        self._owns_session = session is None
        self._task: asyncio.Task[None] | None = None
        servers: dict[str, _Server] = {}
        self._deployments: dict[str, _Deployment] = {}
        by_model: dict[str, list[_Deployment]] = {}
        for cfg in deployments:
            server = servers.get(cfg.base_url)
            if cfg.disabled is not None:
                # Never probed and never chosen: nothing is sent to it and its variables are never read.
                server = _Server(None, False, None)
            elif server is None:
                probe = cfg.metrics_url
                if probe is None and cfg.health_check:
                    probe = cfg.base_url + "/models"
                server = _Server(probe, cfg.metrics_url is not None, cfg.probe_key_env)
                servers[cfg.base_url] = server
            dep = _Deployment(cfg, server, self.routing)
            server.deployments.append(dep)
            self._deployments[cfg.id] = dep
            by_model.setdefault(cfg.model_id, []).append(dep)
        self._servers = list(servers.values())
        own: dict[str, list[_Tier]] = {}
        for model_id, deps in by_model.items():
            deps.sort(key=lambda d: (d.cfg.priority, d.cfg.order))
            tiers: list[_Tier] = []
            for d in deps:
                if tiers and tiers[-1].deployments[0].cfg.priority == d.cfg.priority:
                    tiers[-1] = _Tier(model_id, tiers[-1].vision, (*tiers[-1].deployments, d))
                else:
                    tiers.append(_Tier(model_id, d.cfg.vision, (d,)))
            own[model_id] = tiers
        self._chains: dict[str, tuple[_Tier, ...]] = {}
        for model_id in own:
            chain: list[_Tier] = []
            seen: set[str] = set()
            self._extend_chain(model_id, own, by_model, chain, seen)
            self._chains[model_id] = tuple(chain)
        self._models = {
            m: ModelInfo(
                m,
                deps[0].cfg.upstream,
                deps[0].cfg.provider_type,
                deps[0].cfg.vision,
                deps[0].cfg.max_output_tokens,
                deps[0].cfg.image_tokens,
                _queue_info(deps[0].cfg),
            )
            for m, deps in by_model.items()
        }
        self._pairs: dict[tuple[str, Collection[str] | None], tuple[tuple[str, str], ...]] = {}
        self._rr = 0

    def _extend_chain(
        self,
        model_id: str,
        own: dict[str, list[_Tier]],
        by_model: dict[str, list[_Deployment]],
        chain: list[_Tier],
        seen: set[str],
    ) -> None:
        if model_id in seen or model_id not in own:
            return
        seen.add(model_id)
        chain.extend(own[model_id])
        fallbacks: list[str] = []
        for d in by_model[model_id]:
            fallbacks.extend(f for f in d.cfg.fallbacks if f not in fallbacks)
        for fb in fallbacks:
            self._extend_chain(fb, own, by_model, chain, seen)

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Open the shared connection pool and start scraping load and health in the background."""
        if self._session is None:
            self._session = UpstreamPool()
        if self._task is None and any(s.probe_url for s in self._servers):
            await self.refresh()
            self._task = asyncio.create_task(self._refresh_loop(), name="eduaiq-router-refresh")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        if self._session is not None and self._owns_session:
            await self._session.close()
            self._session = None

    async def __aenter__(self) -> Router:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- what the gateway asks before routing --------------------------------------------------
    def model_ids(self) -> list[str]:
        return list(self._models)

    def model(self, model_id: str) -> ModelInfo:
        info = self._models.get(model_id)
        if info is None:
            raise ModelNotFound(model_id)
        return info

    def _reachable(self, model_id: str, allowed_models: Collection[str] | None) -> Iterator[_Deployment]:
        """The deployments a request for `model_id` may end up on: its own tiers, and the fallback tiers
        whose model the unit allows."""
        chain = self._chains.get(model_id)
        if chain is None:
            raise ModelNotFound(model_id)
        for tier in chain:
            if allowed_models is None or tier.model_id == model_id or tier.model_id in allowed_models:
                yield from tier.deployments

    def price_ceiling(self, model_id: str, allowed_models: Collection[str] | None = None) -> Price:
        """The dearest price anywhere in the chain: what a reservation must assume before routing."""
        price: Price | None = None
        for d in self._reachable(model_id, allowed_models):
            price = d.cfg.price if price is None else price.max_with(d.cfg.price)
        assert price is not None
        return price

    def chain_pairs(
        self, model_id: str, allowed_models: Collection[str] | None = None
    ) -> tuple[tuple[str, str], ...]:
        """Every (provider, model) the request may be served by, after the same filter as `price_ceiling`:
        a request holds the limits and contracts of each of them, since routing happens after the hold.
        Worked out once per (model, allowed models) for the life of the router."""
        # A unit's allowed list comes as the same tuple on every request: it is the key as it is (a frozenset
        # of it was built per request); any other collection is keyed by its members.
        allowed = allowed_models
        key = (model_id, allowed if allowed is None or type(allowed) is tuple else frozenset(allowed))
        known = self._pairs.get(key)
        if known is not None:
            return known
        pairs = {(d.cfg.provider_id, d.cfg.model_id): None for d in self._reachable(model_id, allowed_models)}
        known = self._pairs[key] = tuple(pairs)
        return known

    def chain(self, model_id: str) -> list[list[str]]:
        """Deployment ids tier by tier, for explaining a route."""
        chain = self._chains.get(model_id)
        if chain is None:
            raise ModelNotFound(model_id)
        return [[d.cfg.id for d in t.deployments] for t in chain]

    def states(self) -> list[DeploymentState]:
        return [
            DeploymentState(d.cfg.id, d.breaker.state, d.server.load, d.server.inflight)
            for d in self._deployments.values()
        ]

    def breaker_state(self, deployment_id: str) -> State:
        return self._deployments[deployment_id].breaker.state

    # -- routing -----------------------------------------------------------------------------------
    def _rank(self, tier: _Tier, now: float) -> list[_Deployment]:
        deps = [d for d in tier.deployments if d.cfg.disabled is None and d.breaker.available(now)]
        if len(deps) <= 1:
            return deps
        self._rr += 1
        n, rr = len(deps), self._rr
        # A half-open deployment goes first: its one trial request is how its breaker closes.
        keyed = sorted(
            range(n),
            key=lambda i: (deps[i].breaker.state != "half_open", deps[i].server.score(), (i + rr) % n),
        )
        return [deps[i] for i in keyed]

    async def open(
        self,
        model_id: str,
        body: Mapping[str, Any],
        *,
        stream: bool,
        max_tokens: int | None = None,
        endpoint: Endpoint = "chat/completions",
        include_usage_chunk: bool | None = None,
        allowed_models: Collection[str] | None = None,
        needs_vision: bool = False,
        prompt_tokens_hint: int | None = None,
    ) -> UpstreamResponse:
        """Send `body` to the best deployment of `model_id`, falling back along its chain.

        `max_tokens` is the gateway's clamp; the smallest of it, the client's and
        the model's limit is sent. `include_usage_chunk=None` forwards the
        usage-only chunk exactly when the client asked (stream_options.include_usage).
        `allowed_models` keeps cross-model fallbacks inside the caller's policy;
        `needs_vision` skips fallbacks that cannot see images. `prompt_tokens_hint` (the
        gateway's estimate) becomes the input count for providers configured with
        `stream_usage: counted`; `resp.usage_estimated` then says so.
        Raises ModelNotFound, InvalidRequest, UpstreamUnavailable when every candidate
        failed before the first byte, or UpstreamAnswerLost when a non-stream answer's 2xx
        head came but its body could not be taken. A 4xx other than 429 is returned, not raised.
        """
        chain = self._chains.get(model_id)
        if chain is None:
            raise ModelNotFound(model_id)
        if self._session is None:
            await self.start()
        if include_usage_chunk is None:
            so = body.get("stream_options")
            include_usage_chunk = bool(so.get("include_usage")) if isinstance(so, Mapping) else False
        attempts: list[Attempt] = []
        skipped: list[Attempt] = []
        timeouts = 0
        tried = 0
        now = time.monotonic()
        for tier in chain:
            if tier.model_id != model_id:
                if allowed_models is not None and tier.model_id not in allowed_models:
                    continue
                if needs_vision and not tier.vision:
                    continue
            ranked = self._rank(tier, now)
            skipped.extend(
                Attempt(
                    d.cfg.id,
                    "disabled by the operator's policy" if d.cfg.disabled else "circuit breaker open",
                )
                for d in tier.deployments
                if d not in ranked
            )
            for dep in ranked:
                try:
                    return await self._try(
                        dep,
                        body,
                        stream,
                        max_tokens,
                        endpoint,
                        include_usage_chunk,
                        prompt_tokens_hint,
                        attempts,
                    )
                except InvalidRequest:
                    if tried == 0:
                        raise
                    attempts.append(Attempt(dep.cfg.id, "request not translatable for this provider"))
                except _Failed as f:
                    attempts.append(f.attempt)
                    timeouts += f.timeout
                tried += 1
                now = time.monotonic()
        raise self._unavailable(model_id, attempts, skipped, tried, timeouts)

    @staticmethod
    def _unavailable(
        model_id: str, attempts: list[Attempt], skipped: list[Attempt], tried: int, timeouts: int
    ) -> UpstreamUnavailable:
        everything = tuple(attempts + skipped)
        detail = "; ".join(f"{a.deployment_id}: {a.reason}" for a in everything)
        if tried == 0:
            return UpstreamUnavailable(
                503, f"no deployment of '{model_id}' is available ({detail})", everything
            )
        statuses = [a.status for a in attempts if a.status is not None]
        if statuses and all(s == 429 for s in statuses) and len(statuses) == len(attempts):
            status = 503
        elif timeouts and timeouts == tried:
            status = 504
        else:
            status = 502
        return UpstreamUnavailable(status, f"every deployment of '{model_id}' failed ({detail})", everything)

    async def _try(
        self,
        dep: _Deployment,
        body: Mapping[str, Any],
        stream: bool,
        max_tokens: int | None,
        endpoint: Endpoint,
        include_usage_chunk: bool,
        prompt_tokens_hint: int | None,
        attempts: list[Attempt],
    ) -> UpstreamResponse:
        cfg = dep.cfg
        req = dep.adapter.prepare(cfg, body, stream=stream, max_tokens=max_tokens, endpoint=endpoint)
        session = self._session
        assert session is not None
        server = dep.server
        dep.breaker.on_attempt(time.monotonic())
        server.inflight += 1
        resp: Response | None = None
        try:
            # A non-stream answer's first byte is its last: it gets the read timeout as a whole.
            resp = await session.request(
                "POST", req.url, req.headers.items(), req.data,
                connect_timeout=cfg.timeouts.connect, read_timeout=cfg.timeouts.read,
                overall_timeout=cfg.timeouts.first_byte if stream else cfg.timeouts.read,
            )  # fmt: skip
            status = resp.status
            if status >= 500 or status == 429:
                # The excerpt is for the attempt's reason (the gateway's log), never for the student.
                detail = (await resp.read(_MAX_ERROR_BODY)).decode(errors="replace")[:200]
                raise _Failed(Attempt(cfg.id, f"HTTP {status}: {detail}", status))
            if status >= 400:
                raw = await resp.read(_MAX_ERROR_BODY)
                # An excerpt, as for 5xx: enough for the operator, too short to keep a prompt an upstream
                # might echo back (prompts are never stored).
                log.warning("upstream %s refused a request with HTTP %s: %s", cfg.id, status,
                            raw[:200].decode(errors="replace"))  # fmt: skip
                data = public_error(status, dep.adapter.translate_error(status, raw), secret_values(cfg))
                return _whole(dep, server, resp, status, data, None, attempts)
            if not stream:
                try:
                    body_bytes = await resp.read_whole(session.limits.max_response_bytes)
                    data, usage = dep.adapter.translate_body(cfg, body_bytes)
                except Exception as exc:
                    # After a 2xx head the model has already run: retrying elsewhere would run (and bill)
                    # it twice, and releasing the hold would make it free.
                    reason = f"answer lost after HTTP {status}: {str(exc) or type(exc).__name__}"[:300]
                    raise UpstreamAnswerLost(f"upstream {cfg.id}: {reason}", dep.served_by) from exc
                return _whole(dep, server, resp, status, data, usage, attempts)
            proc = dep.adapter.stream_processor(
                cfg, include_usage_chunk=include_usage_chunk, prompt_tokens_hint=prompt_tokens_hint
            )
            meter = _StreamMeter(session.limits)
            first = b""
            eof = False
            while not first:
                chunk = await resp.readany()
                meter.add(chunk)
                if not chunk:
                    first = proc.finish()
                    eof = True
                    break
                first = proc.feed(chunk)
            resp.deadline = None  # the first byte came in time; from here each read has its own timeout
        except (_Failed, UpstreamAnswerLost):
            self._fail(dep, resp)
            raise
        except TimeoutError as exc:
            self._fail(dep, resp)
            raise _Failed(Attempt(cfg.id, "timed out before the first byte"), timeout=True) from exc
        except (OSError, RetryableUpstreamError) as exc:
            self._fail(dep, resp)
            reason = str(exc) or type(exc).__name__
            raise _Failed(Attempt(cfg.id, f"{type(exc).__name__}: {reason}"[:300])) from exc
        except BaseException:
            self._fail(dep, resp, count=False)
            raise
        dep.breaker.on_success()
        out = UpstreamResponse(
            status=status,
            headers=_SSE_HEADERS,
            stream=True,
            served_by=dep.served_by,
            attempts=tuple(attempts),
            body=first or None,
            usage=proc.usage if eof else None,
            resp=None if eof else resp,
            proc=proc,
            server=None if eof else server,
            meter=meter,
        )
        if eof:
            out.usage_estimated = proc.usage_estimated
            resp.release()
            server.inflight -= 1
        return out

    @staticmethod
    def _fail(dep: _Deployment, resp: Response | None, *, count: bool = True) -> None:
        dep.server.inflight -= 1
        if count:
            dep.breaker.on_failure(time.monotonic())
        if resp is not None:
            resp.close()

    # -- background load and health ----------------------------------------------------------------
    async def refresh(self) -> None:
        """Scrape every probed server once (the background task calls this every refresh_interval)."""
        await asyncio.gather(*(self._probe(s) for s in self._servers if s.probe_url))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.routing.refresh_interval)
            await self.refresh()

    async def _probe(self, server: _Server) -> None:
        session = self._session
        assert session is not None and server.probe_url is not None
        headers: dict[str, str] = {}
        key = env_secret(server.key_env)
        if key:
            headers["Authorization"] = "Bearer " + key
        inflight = server.inflight
        try:
            async with asyncio.timeout(self.routing.probe_timeout):
                r = await session.request("GET", server.probe_url, headers.items())
                try:
                    # Any answer below 500 means the server is up (a 404 /metrics is still a live vLLM).
                    if r.status >= 500:
                        raise UpstreamConnectionError(f"probe answered HTTP {r.status}")
                    # Capped: the body comes from a server an institution admin named (a larger one fails
                    # the probe, as a hung one does).
                    body = await r.read_whole(_MAX_METRICS_BYTES) if server.vllm and r.status == 200 else b""
                    text = body.decode(errors="replace")
                finally:
                    r.release()  # back to the pool if read whole, else closed
        except (OSError, TimeoutError):
            server.load = None
            now = time.monotonic()
            for d in server.deployments:
                d.breaker.on_probe_failure(now)
            return
        if server.vllm:
            server.load = parse_vllm_metrics(text)
            server.inflight_at_scrape = inflight
        now = time.monotonic()
        for d in server.deployments:
            d.breaker.on_probe_success(now)
