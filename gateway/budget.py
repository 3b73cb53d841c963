"""Stages 4 and 7: reserve before calling the model, settle with what it reported.

This module only translates between the gateway and `quota/`: it picks the
numbers to reserve, turns a refusal (budget, contract or rate limit) into a 429 a student can read,
reports the tightest rate limit in OpenAI's `x-ratelimit-*` headers, and turns a settlement into the
fields of the usage event.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from core.money import format_micro
from gateway.catalog import InstitutionView
from gateway.errors import ApiError
from gateway.meter import Outcome
from gateway.observe import METRICS
from providers.prices import Price
from providers.usage import NormalisedUsage
from quota import Charge, LimitRefusal, QuotaEngine, RateInfo, Refusal, Reservation, Settlement


def _money(micro: int, currency: str) -> str:
    value = Decimal(format_micro(micro)).quantize(Decimal("0.01") if micro >= 10_000 else Decimal("0.000001"))
    return f"{currency} {value}"


def _amount(metric: str, micro_or_tokens: int, currency: str) -> str:
    return _money(micro_or_tokens, currency) if metric == "cost" else f"{micro_or_tokens:,} tokens"


def _when(at: datetime | None, tz: str) -> str:
    if at is None:
        return (
            "It does not reset: this is a one-off allowance; ask your instructor or administrator for more."
        )
    local = at.astimezone(ZoneInfo(tz))
    return f"It resets on {local:%A %d %B %Y at %H:%M} ({tz})."


def go_duration(ms: int) -> str:
    """A reset time as OpenAI writes it in `x-ratelimit-reset-*` (Go's duration format): "20ms", "1.5s",
    "1m0s". Clients and their libraries parse exactly these forms."""
    ms = max(0, int(ms))
    if ms < 1000:
        return f"{ms}ms"
    if ms < 60_000:
        return f"{ms / 1000:g}s"
    minutes, rest = divmod(ms, 60_000)
    return f"{minutes}m{rest / 1000:g}s"


_REQUESTS = (b"x-ratelimit-limit-requests", b"x-ratelimit-remaining-requests", b"x-ratelimit-reset-requests")
_TOKENS = (b"x-ratelimit-limit-tokens", b"x-ratelimit-remaining-tokens", b"x-ratelimit-reset-tokens")


def _go_bytes(ms: int) -> bytes:
    """go_duration's text as bytes, for the headers of every limited answer (no str round trip)."""
    if ms < 1000:
        return b"%dms" % (ms if ms > 0 else 0)
    if ms < 60_000:
        return b"%gs" % (ms / 1000)
    minutes, rest = divmod(ms, 60_000)
    return b"%dm%gs" % (minutes, rest / 1000)


def rate_headers(rate: RateInfo) -> list[tuple[bytes, bytes]]:
    """OpenAI's six rate-limit headers for the tightest limit of the path (a trio without a limit on the
    path is left out). Built on every limited answer: names are constants, numbers go straight to bytes."""
    limit_r, left_r, reset_r, limit_t, left_t, reset_t = rate
    out: list[tuple[bytes, bytes]] = []
    if limit_r >= 0:
        out += (
            (_REQUESTS[0], b"%d" % limit_r),
            (_REQUESTS[1], b"%d" % (left_r if left_r > 0 else 0)),
            (_REQUESTS[2], _go_bytes(int(reset_r))),
        )
    if limit_t >= 0:
        out += (
            (_TOKENS[0], b"%d" % limit_t),
            (_TOKENS[1], b"%d" % (left_t if left_t > 0 else 0)),
            (_TOKENS[2], _go_bytes(int(reset_t))),
        )
    return out


def _in(seconds: int) -> str:
    """'42 seconds', '1 second', '3 minutes' (rounded up): when a rate limit lets the request through."""
    if seconds < 120:
        return f"{seconds} second{'s' if seconds != 1 else ''}"
    return f"{math.ceil(seconds / 60)} minutes"


def limit_subject(node: str, view: InstitutionView) -> str:
    """Whose limit a node is, as a sentence names it (node ids: quota.keys.limit_*)."""
    kind, _, rest = node.partition(":")
    if kind in ("u", "m"):
        unit_id = rest.split(":", 1)[0]  # a member suffix `m:<unit>:<user>` names the same unit
        unit = view.units.get(unit_id)
        name = unit.name if unit else unit_id
        return (
            f"your personal limit in {name}"
            if kind == "m"
            else f"the limit of {name} (everyone in it together)"
        )
    if kind == "p":
        return f"{view.name}'s limit with provider {rest}"
    if kind == "pm":
        provider, _, model = rest.partition("|")
        return f"the limit for {model} at {provider}"
    return f"the limit {node}"


def limit_message(ref: LimitRefusal, view: InstitutionView) -> str:
    """The sentence a GPT4All user reads: which limit, how large, and when to try again."""
    subject = limit_subject(ref.node, view)
    if ref.what == "tokens" and ref.retry_after_ms is None:
        return (f"Rate limit reached: this request needs {ref.needed:,} tokens, more than {subject} allows in a "
                f"minute ({ref.limit:,}); ask for fewer max_tokens or send a shorter prompt.")  # fmt: skip
    if ref.what == "concurrent":
        return (f"Rate limit reached: {subject} allows {ref.limit:,} request{'s' if ref.limit != 1 else ''} at a "
                f"time and {ref.limit:,} {'are' if ref.limit != 1 else 'is'} in progress. "
                "Please try again in a moment.")  # fmt: skip
    unit = ("token" if ref.what == "tokens" else "request") + ("s" if ref.limit != 1 else "")
    wait = math.ceil((ref.retry_after_ms or 0) / 1000) or 1
    return (
        f"Rate limit reached: {subject} is {ref.limit:,} {unit} per minute. Please try again in {_in(wait)}."
    )


def limit_error(ref: LimitRefusal, view: InstitutionView) -> ApiError:
    """429 `rate_limit_exceeded`: the SDKs retry it after `retry-after-ms` unless it can never fit."""
    headers = {name.decode(): value.decode() for name, value in rate_headers(ref.rate)}
    retry = ref.retry_after_ms
    if retry is None:
        headers["x-should-retry"] = "false"
    else:
        retry = max(1, int(retry))
        headers["retry-after"] = str(max(1, math.ceil(retry / 1000)))
        headers["retry-after-ms"] = str(retry)
        headers["x-should-retry"] = "true"
    if ref.what in ("requests", "tokens"):  # the refusing node's own trio: nothing left until it resets
        headers[f"x-ratelimit-limit-{ref.what}"] = str(ref.limit)
        headers[f"x-ratelimit-remaining-{ref.what}"] = "0"
        headers[f"x-ratelimit-reset-{ref.what}"] = go_duration(retry or 0)
    headers["x-eduaiq-limit"] = ref.node
    return ApiError(429, limit_message(ref, view), code="rate_limit_exceeded",
                    type_="tokens" if ref.what == "tokens" else "requests", headers=headers)  # fmt: skip


def _contract_when(at: datetime | None, tz: str) -> str:
    if at is None:
        return ""
    local = at.astimezone(ZoneInfo(tz))
    return f" It resets on {local:%A %d %B %Y at %H:%M} ({tz})."


def contract_error(refusal: Refusal, view: InstitutionView) -> ApiError:
    """429 `insufficient_quota`: the committed spend of a provider contract is used up for its period, and no
    retry within seconds can succeed, so the SDKs must not retry (`x-should-retry: false`)."""
    node = refusal.binding_node.removeprefix("c:")
    provider, _, model = node.partition("|")
    contract = view.spec.contracts.get(refusal.binding_node)
    period = f"this {contract.period}" if contract is not None else "this period"
    left = _money(refusal.available, view.currency)
    need = _money(refusal.needed, view.currency)
    message = (
        f"{view.name}'s contract with {provider}{f' ({model})' if model else ''} is fully committed for "
        f"{period}: {left} left, and this request needs at least {need}."
        f"{_contract_when(refusal.resets_at, view.timezone)} Ask your administrator."
    )
    headers = {"x-should-retry": "false", "x-eduaiq-limit": refusal.binding_node}
    if refusal.resets_at is not None:
        headers["x-eduaiq-budget-reset"] = refusal.resets_at.isoformat()
    return ApiError(429, message, code="insufficient_quota", type_="insufficient_quota", headers=headers)


def refusal_error(refusal: Refusal, view: InstitutionView) -> ApiError:
    """429 `insufficient_quota` for a full budget or contract; on a path with rate limits it carries their
    x-ratelimit-* headers too, as every answer after the reserve step does."""
    error = _budget_error(refusal, view) if refusal.kind != "contract" else contract_error(refusal, view)
    if refusal.rate is not None:
        for name, value in rate_headers(refusal.rate):
            error.headers.setdefault(name.decode(), value.decode())
    return error


def _budget_error(refusal: Refusal, view: InstitutionView) -> ApiError:
    what = "AI budget" if refusal.metric == "cost" else "token allowance"
    if refusal.is_member_cap:
        unit = view.units.get(refusal.binding_unit)
        owner = f"Your personal {what} in {unit.name if unit else refusal.binding_unit}"
    else:
        owner = f"The {what} of {refusal.binding_name}"
    left = _amount(refusal.metric, refusal.available, view.currency)
    need = _amount(refusal.metric, refusal.needed, view.currency)
    message = (
        f"{owner} has run out for this period: {left} left, and this request needs at least {need}. "
        f"{_when(refusal.resets_at, view.timezone)}"
    )
    headers = {"x-should-retry": "false", "x-eduaiq-binding-unit": refusal.binding_unit}
    if refusal.resets_at is not None:
        headers["x-eduaiq-budget-reset"] = refusal.resets_at.isoformat()
    return ApiError(429, message, code="insufficient_quota", type_="insufficient_quota", headers=headers)


async def reserve(
    engine: QuotaEngine,
    view: InstitutionView,
    outcome: Outcome,
    *,
    input_bound: int,
    max_output: int,
    price: Price,
    meta: str = "",
    scopes: tuple[tuple[str, str], ...] = (),
) -> Reservation:
    """Hold the request's bound on every budget and limit of its path (and of the providers and models in
    `scopes`), or raise the 429 that says which one is full."""
    result = await engine.reserve(
        view.id,
        outcome.unit_id or "",
        outcome.user_id or "",
        input_tokens=input_bound,
        max_output_tokens=max_output,
        price_in=price.input_per_mtok,
        price_out=price.output_per_mtok,
        request_id=outcome.request_id,
        meta=meta,
        scopes=scopes,
    )
    if isinstance(result, Refusal):
        outcome.status = "refused"
        outcome.binding_unit = result.binding_unit or None
        if result.kind == "contract":
            METRICS.limit_refused("contract")
        raise refusal_error(result, view)
    if isinstance(result, LimitRefusal):
        outcome.status = "refused"
        METRICS.limit_refused(result.what)
        raise limit_error(result, view)
    if result.clamped:
        outcome.status = "clamped"
    return result


def budget_headers(r: Reservation, view: InstitutionView, requested: int) -> list[tuple[bytes, bytes]]:
    """What is left before this request, at the unit that limits it most (the binding unit)."""
    out: list[tuple[bytes, bytes]] = []
    cost = r.remaining.get("cost")
    if cost is not None:
        out.append((b"x-eduaiq-budget-remaining", format_micro(cost.room).encode()))
        out.append((b"x-eduaiq-budget-currency", view.currency.encode()))
        out.append((b"x-eduaiq-budget-unit", cost.node.encode()))
    tokens = r.remaining.get("tokens")
    if tokens is not None:
        out.append((b"x-eduaiq-budget-remaining-tokens", str(tokens.room).encode()))
    if r.clamped:
        out.append((b"x-eduaiq-max-tokens-clamped", f"{requested}->{r.output_tokens}".encode()))
    if r.rate is not None:
        out.extend(rate_headers(r.rate))
    return out


async def settle(
    engine: QuotaEngine,
    view: InstitutionView,
    r: Reservation,
    outcome: Outcome,
    usage: NormalisedUsage,
    price: Price,
    served: tuple[str, str] | None = None,
) -> Settlement:
    """Charged at the price of the deployment that served (the reservation held the chain's dearest), and to
    the contract and limits of the (provider, model) that `served` (the others of the chain get theirs back)."""
    s = await engine.settle(r, usage.input, usage.output, cost=price.cost_micros(usage), served=served)
    outcome.input_tokens, outcome.output_tokens = usage.input, usage.output
    outcome.cost_micro = s.cost
    outcome.overage_micro = s.overage.get("cost", 0)
    if s.charge is not None:
        record_charge(outcome, s.charge, view.chargebacks)
    return s


def record_charge(outcome: Outcome, c: Charge, chargebacks: Mapping[str, str | None]) -> None:
    """The event's funding (what `quota rebuild` replays) and the extras that paid, as quota/ charged them."""
    outcome.funding = {"institution": c.institution, "path": list(c.path), "period_keys": list(c.period_keys),
                       "allocation": dict(c.allocation), "extras": {m: list(t) for m, t in c.extras.items()}}  # fmt: skip
    if c.contracts:  # what provider contracts were charged (node, period key, amount): rebuilt like the rest
        outcome.funding["contracts"] = [list(t) for t in c.contracts]
    outcome.extras_paid = [
        {"extra_id": xid, "unit_id": c.path[j], "metric": metric, "amount": amount,
         "chargeback": chargebacks.get(xid)}
        for metric, takes in c.extras.items() for xid, j, amount in takes
    ]  # fmt: skip
