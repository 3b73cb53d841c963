"""The /v1 endpoints. Each reads as the list of stages a request goes through:

auth -> policy -> estimate -> quota.reserve -> route -> stream -> quota.settle -> meter
"""

from __future__ import annotations

import functools
import logging
import random
import time

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway import budget
from gateway.auth import Principal
from gateway.catalog import InstitutionView
from gateway.errors import ApiError
from gateway.estimate import (
    chat_prompt_bound,
    completion_prompt_bound,
    embedding_input_bound,
    image_tokens,
)
from gateway.meter import Outcome
from gateway.observe import METRICS
from gateway.policy import resolve_model
from gateway.requests import (
    ParsedRequest,
    check_choices,
    parse_chat,
    parse_completion,
    parse_embedding,
    parse_json,
)
from gateway.runtime import Runtime
from gateway.stream import RelayResponse, StreamResult, WholeAnswer
from gateway.tokens import answer_tokens, prompt_tokens, text_tokens
from providers.errors import InvalidRequest, ModelNotFound, ProviderError, UpstreamUnavailable
from providers.router import UpstreamAnswerLost, UpstreamResponse
from providers.usage import NormalisedUsage
from quota import Reservation

log = logging.getLogger(__name__)
_PARSERS = {"chat": parse_chat, "completion": parse_completion, "embedding": parse_embedding}
_ENDPOINTS = {"chat": "chat/completions", "completion": "completions", "embedding": "embeddings"}
DEFAULT_MAX_OUTPUT = 4096


def _runtime(request: Request) -> Runtime:
    rt: Runtime = request.app.state.runtime
    return rt


def _view(rt: Runtime, principal: Principal) -> InstitutionView:
    view = rt.catalog.views.get(principal.institution_id) if rt.catalog else None
    if view is None or principal.unit_id not in view.units:
        raise ApiError(503, "this gateway has not loaded your institution yet; retry in a moment",
                       code="institution_not_loaded")  # fmt: skip
    return view


def _outcome(principal: Principal, view: InstitutionView) -> Outcome:
    ids, kinds = view.lineage(principal.unit_id)
    return Outcome(
        request_id=f"req_{random.getrandbits(128):032x}",  # not a secret; see new_event_id
        institution_id=view.id,
        user_id=principal.user_id,
        key_id=principal.key_id,
        unit_id=principal.unit_id,
        path=list(ids),
        kinds=list(kinds),
    )


def _provider_error(exc: ProviderError) -> ApiError:
    if isinstance(exc, ModelNotFound):
        return ApiError(404, str(exc), param="model", code="model_not_found")
    if isinstance(exc, InvalidRequest):
        return ApiError(400, str(exc), code="invalid_request")
    # What each upstream said (bodies, 5xx excerpts, internal host:port) is for the operator's log: a
    # student sees a clean sentence (issue 17 item 9).
    if isinstance(exc, UpstreamUnavailable):
        log.warning("upstream unavailable (%s): %s", exc.status, exc)
        return ApiError(exc.status, "the model is unavailable right now; please retry in a moment",
                        code="upstream_unavailable")  # fmt: skip
    log.warning("upstream failed: %s", exc)
    return ApiError(502, "the model's server failed; please retry", code="upstream_error")


def _as_api_error(exc: Exception) -> ApiError:
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ProviderError):
        return _provider_error(exc)
    # Our own dependencies failing (Redis, PostgreSQL) is not the client's fault and not a crash to hide:
    # a 503 the SDKs retry, with the cause in our log.
    log.exception("request failed inside the gateway")
    return ApiError(503, "the gateway is temporarily unable to serve this request; please retry",
                    code="gateway_unavailable")  # fmt: skip


def _bound(parsed: ParsedRequest, view: InstitutionView, model: str, rt: Runtime) -> tuple[int, int]:
    """(prompt upper bound incl. images, image tokens)."""
    if parsed.kind == "chat":
        info = view.router.model(model)
        images = image_tokens(parsed.body, info.image_tokens, info.vision, model, rt.settings.max_image_bytes)
        return chat_prompt_bound(parsed.body) + images, images
    if parsed.kind == "completion":
        return completion_prompt_bound(parsed.body), 0
    return embedding_input_bound(parsed.body), 0


async def _fallback_usage(
    rt: Runtime,
    parsed: ParsedRequest,
    images: int,
    produced: int,
    answer: bytes | None = None,
    delivered: list[str] | None = None,
) -> NormalisedUsage:
    """When the provider never reported usage: a tokenizer's count of the prompt, and of the answer when
    there is a whole one, otherwise one token per streamed event (how vLLM and OpenAI stream), or more: the
    count of the text a translated stream (Anthropic, Gemini) delivered, whose events carry many tokens.
    Counted off the event loop (gateway/tokens.py): never zero, never a stall."""
    limit = rt.settings.token_count_max_bytes
    if answer is not None:
        produced = await answer_tokens(answer, limit)
    if delivered:
        produced = max(produced, await text_tokens(delivered, limit))
    prompt = await prompt_tokens(parsed.body, limit)
    return NormalisedUsage(input=prompt + images, output=produced, image=images)


def _at_least(reported: NormalisedUsage | None, counted: NormalisedUsage) -> NormalisedUsage:
    """A cut stream's usage: what the provider reported before the cut (Anthropic's `message_start`
    input, Gemini's running `usageMetadata`; it bills at least that), but never less than the count of
    what was delivered."""
    if reported is None:
        return counted
    return NormalisedUsage(
        input=max(reported.input, counted.input),
        output=max(reported.output, counted.output),
        image=max(reported.image, counted.image),
        cached_input=reported.cached_input,
    )


def _rate_onto(error: ApiError, r: Reservation) -> None:
    """Every answer after the reserve step carries the path's rate-limit headers (when it has limits)."""
    if r.rate is not None:
        for name, value in budget.rate_headers(r.rate):
            error.headers.setdefault(name.decode(), value.decode())


def _per_choice(r: Reservation, parsed: ParsedRequest) -> int:
    """The clamp sent upstream, per completion: the reservation's output is shared by every choice."""
    per = r.output_tokens // parsed.choices
    if per < 1:
        raise ApiError(429, f"the budget left fits {r.output_tokens} output tokens, fewer than one for each "
                       f"of the {parsed.choices} completions this request asks for; ask for fewer",
                       code="insufficient_quota", type_="insufficient_quota",
                       headers={"x-should-retry": "false"})  # fmt: skip
    return per


async def handle(request: Request, kind: str) -> Response:
    started = time.perf_counter()
    response = await _serve(request, kind)
    METRICS.timed(kind, time.perf_counter() - started)
    return response


async def _serve(request: Request, kind: str) -> Response:
    rt = _runtime(request)
    outcome: Outcome | None = None
    reservation: Reservation | None = None
    queued: list[tuple[bytes, bytes]] = []
    input_bound = images = 0
    try:
        principal = await rt.keys.authenticate(request.headers.get("authorization"))
        view = _view(rt, principal)
        outcome = _outcome(principal, view)
        parsed = _PARSERS[kind](parse_json(await request.body(), rt.settings.max_body_bytes))
        model, allowed = resolve_model(view, principal.unit_id, parsed.model)
        outcome.model_id = model
        input_bound, images = _bound(parsed, view, model, rt)
        outcome.image_tokens = images
        if kind == "embedding":
            max_out = 0
        else:
            check_choices(parsed, rt.settings.max_choices)
            per_choice = parsed.max_tokens or view.router.model(model).max_output_tokens or DEFAULT_MAX_OUTPUT
            max_out = per_choice * parsed.choices  # n, best_of and prompt lists each generate up to it
        price = view.router.price_ceiling(model, allowed)
        reservation = await rt.accounting.reserve(view, outcome, input_bound=input_bound, max_output=max_out,
                                                  price=price, scopes=view.limit_scopes(model, allowed))  # fmt: skip
        queue = view.router.model(model).queue
        if queue is not None and rt.slots is not None:  # a self-hosted model with slots: wait for one
            slot = await rt.slots.acquire(view, outcome, queue, request.receive)
            rt.accounting.hold_slot(reservation, slot)
            queued = [(b"x-eduaiq-queue-time-ms", str(slot.waited_ms).encode())]
        upstream = await view.router.open(
            model, parsed.body, stream=parsed.stream, endpoint=_ENDPOINTS[kind],  # type: ignore[arg-type]
            max_tokens=_per_choice(reservation, parsed) if kind != "embedding" else None,
            allowed_models=allowed, needs_vision=images > 0, prompt_tokens_hint=input_bound,
        )  # fmt: skip
    except UpstreamAnswerLost as exc:
        assert reservation is not None and outcome is not None  # raised only by router.open
        error = await _bill_lost_answer(rt, view, reservation, outcome, exc, input_bound, images)
        _rate_onto(error, reservation)
        METRICS.count(kind, error.status, error.code)
        return error.response()
    except Exception as exc:
        error = _as_api_error(exc)
        if reservation is not None:
            _rate_onto(error, reservation)
            await rt.accounting.release(reservation)
        METRICS.count(kind, error.status, error.code)
        if outcome is not None:
            if outcome.status not in ("refused", "client_abort"):
                outcome.status = "upstream_error" if error.status >= 500 else "bad_request"
            rt.accounting.record(outcome)
        return error.response()

    served = upstream.served_by
    outcome.provider_id, outcome.deployment_id = served.provider_id, served.deployment_id
    headers = [
        *budget.budget_headers(reservation, view, max_out),
        *queued,
        (b"x-request-id", outcome.request_id.encode()),
    ]
    if not upstream.ok:
        return await _upstream_refused(rt, upstream, reservation, outcome, headers, kind)
    METRICS.count(kind, 200, None)
    if parsed.stream:
        return _relay(rt, view, upstream, reservation, outcome, parsed, images, headers)
    body = await upstream.read()
    usage = upstream.usage or await _fallback_usage(rt, parsed, images, 0, body)
    return WholeAnswer(  # type: ignore[return-value]
        body,
        headers,
        functools.partial(rt.accounting.finish, view, reservation, outcome, usage, served.price,
                          (served.provider_id, served.model_id)),
    )  # fmt: skip


async def _bill_lost_answer(
    rt: Runtime,
    view: InstitutionView,
    r: Reservation,
    o: Outcome,
    exc: UpstreamAnswerLost,
    input_bound: int,
    images: int,
) -> ApiError:
    """The upstream answered 200 but its body was lost (over the size cap, past the read timeout). The
    model ran and its provider bills it, and nobody can say how much it produced: the request is charged
    at its reservation's bound (prompt bound + the max_tokens sent), at the serving deployment's price,
    and recorded as `upstream_error` with those tokens. Never retried elsewhere, never released; the
    client is told not to retry (`x-should-retry: false`, which the OpenAI SDKs honour), since a retry
    would be charged again."""
    served = exc.served_by
    o.provider_id, o.deployment_id = served.provider_id, served.deployment_id
    o.status = "upstream_error"
    log.warning("%s: %s; charged at its bound", o.request_id, exc)
    bound = NormalisedUsage(input=input_bound, output=r.output_tokens, image=images)
    await rt.accounting.finish(view, r, o, bound, served.price, (served.provider_id, served.model_id))
    return ApiError(502, "the model answered but its answer could not be delivered (too large, or too slow "
                    "to arrive); the request was charged at its limit, as the model's provider bills it",
                    code="upstream_answer_lost", headers={"x-should-retry": "false"})  # fmt: skip


async def _upstream_refused(
    rt: Runtime,
    upstream: UpstreamResponse,
    r: Reservation,
    o: Outcome,
    headers: list[tuple[bytes, bytes]],
    kind: str,
) -> Response:
    """The model's server refused the request itself (e.g. prompt too long): its error, nothing charged."""
    body = await upstream.read()
    await rt.accounting.release(r)
    o.status = "bad_request"
    rt.accounting.record(o)
    METRICS.count(kind, upstream.status, "upstream_refused")
    response = Response(body, status_code=upstream.status, media_type="application/json")
    response.raw_headers.extend(headers)
    return response


def _relay(
    rt: Runtime,
    view: InstitutionView,
    upstream: UpstreamResponse,
    r: Reservation,
    o: Outcome,
    parsed: ParsedRequest,
    images: int,
    headers: list[tuple[bytes, bytes]],
) -> Response:
    async def done(result: StreamResult) -> None:
        usage = upstream.usage
        if usage is None:  # cut (client gone, upstream failed) or never reported
            counted = await _fallback_usage(rt, parsed, images, result.events, None, upstream.delivered_text)
            usage = _at_least(upstream.reported_usage, counted)
        if result.client_gone:
            o.status = "client_abort"
        elif result.error is not None:
            o.status = "upstream_error"
        served = upstream.served_by
        await rt.accounting.finish(view, r, o, usage, served.price, (served.provider_id, served.model_id))

    return RelayResponse(upstream, headers, done)  # type: ignore[return-value]


async def chat_completions(request: Request) -> Response:
    return await handle(request, "chat")


async def completions(request: Request) -> Response:
    return await handle(request, "completion")


async def embeddings(request: Request) -> Response:
    return await handle(request, "embedding")


MODEL_CREATED = 1735689600  # a fixed date: clients only need an integer, and a stable one


async def list_models(request: Request) -> Response:
    rt = _runtime(request)
    try:
        principal = await rt.keys.authenticate(request.headers.get("authorization"))
        view = _view(rt, principal)
    except ApiError as exc:
        return exc.response()
    data = []
    for model_id in view.units[principal.unit_id].models:
        try:
            info = view.router.model(model_id)
        except ModelNotFound:
            continue
        data.append(
            {"id": model_id, "object": "model", "created": MODEL_CREATED, "owned_by": info.provider_type}
        )
    return Response(orjson.dumps({"object": "list", "data": data}), media_type="application/json")


async def me(request: Request) -> Response:
    """The caller and the remaining budget of every unit on their path, with reset times."""
    rt = _runtime(request)
    try:
        principal = await rt.keys.authenticate(request.headers.get("authorization"))
        view = _view(rt, principal)
        explanation = await rt.quota.explain(view.id, principal.unit_id, principal.user_id)
    except ApiError as exc:
        return exc.response()
    unit = view.units[principal.unit_id]
    body = {
        "object": "eduaiq.me",
        "user": principal.user_id,
        "institution": {"id": view.id, "name": view.name, "currency": view.currency},
        "unit": {"id": unit.id, "name": unit.name, "kind": unit.kind},
        "models": list(unit.models),
        "budget": explanation.to_dict() if hasattr(explanation, "to_dict") else _plain(explanation),
    }
    return Response(orjson.dumps(body, default=str), media_type="application/json")


def _plain(value: object) -> object:
    from dataclasses import asdict, is_dataclass

    return asdict(value) if is_dataclass(value) and not isinstance(value, type) else value
