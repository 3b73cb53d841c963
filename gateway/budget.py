"""Stages 4 and 7: reserve before calling the model, settle with what it reported.

This module only translates between the gateway and `quota/`: it picks the
numbers to reserve, turns a refusal into a 429 a student can read, and turns
a settlement into the fields of the usage event.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from core.money import format_micro
from gateway.catalog import InstitutionView
from gateway.errors import ApiError
from gateway.meter import Outcome
from providers.prices import Price
from providers.usage import NormalisedUsage
from quota import Charge, QuotaEngine, Refusal, Reservation, Settlement


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


def refusal_error(refusal: Refusal, view: InstitutionView) -> ApiError:
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
) -> Reservation:
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
    )
    if isinstance(result, Refusal):
        outcome.status = "refused"
        outcome.binding_unit = result.binding_unit
        raise refusal_error(result, view)
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
    return out


async def settle(
    engine: QuotaEngine,
    view: InstitutionView,
    r: Reservation,
    outcome: Outcome,
    usage: NormalisedUsage,
    price: Price,
) -> Settlement:
    """Charged at the price of the deployment that served (the reservation held the chain's dearest)."""
    s = await engine.settle(r, usage.input, usage.output, cost=price.cost_micros(usage))
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
    outcome.extras_paid = [
        {"extra_id": xid, "unit_id": c.path[j], "metric": metric, "amount": amount,
         "chargeback": chargebacks.get(xid)}
        for metric, takes in c.extras.items() for xid, j, amount in takes
    ]  # fmt: skip
