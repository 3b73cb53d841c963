"""Chargeback lines as a FinOps FOCUS 1.x cost and usage dataset.

Mapping (an internal chargeback: the institution bills its own units):
- BillingAccount = the institution; SubAccount = the unit that used the model.
- Provider/Publisher = the model provider (campus vLLM, OpenAI, ...); InvoiceIssuer = the institution.
- Service = the model (category "AI and Machine Learning", subcategory "Generative AI").
- Billed, Effective, List and Contracted cost are equal: internal prices carry no discounts.
- Consumed and pricing quantities are tokens (input + output).
- Who pays (allocation, an extra's grant or cost centre, unfunded overage) is in Tags
  (prefix `eduaiq/`) and the custom columns `x_CostObject`, `x_FundingSource`, `x_ExtraId`.
Charge and billing periods are the month's bounds in UTC ('YYYY-MM-DDTHH:MM:SSZ'); nulls are empty cells.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from usage.chargeback import Line, money
from usage.periods import iso_z

COLUMNS: tuple[str, ...] = (
    "BilledCost",
    "BillingAccountId",
    "BillingAccountName",
    "BillingCurrency",
    "BillingPeriodEnd",
    "BillingPeriodStart",
    "ChargeCategory",
    "ChargeClass",
    "ChargeDescription",
    "ChargeFrequency",
    "ChargePeriodEnd",
    "ChargePeriodStart",
    "ConsumedQuantity",
    "ConsumedUnit",
    "ContractedCost",
    "EffectiveCost",
    "InvoiceIssuerName",
    "ListCost",
    "PricingCategory",
    "PricingQuantity",
    "PricingUnit",
    "ProviderName",
    "PublisherName",
    "ResourceId",
    "ResourceName",
    "ResourceType",
    "ServiceCategory",
    "ServiceName",
    "ServiceSubcategory",
    "SubAccountId",
    "SubAccountName",
    "Tags",
    "x_CostObject",
    "x_ExtraId",
    "x_FundingSource",
    "x_InputTokens",
    "x_OutputTokens",
    "x_Requests",
)

_FUNDING_TEXT = {"allocation": "unit allocation", "extra": "extra funds", "overage": "unfunded overage"}


@dataclass(frozen=True)
class Account:
    institution_id: str
    institution_name: str
    currency: str
    period_start: datetime
    period_end: datetime


def row(account: Account, line: Line) -> dict[str, str]:
    cost = money(line.cost_micro)
    tokens = str(line.input_tokens + line.output_tokens)
    model = line.model_id or "unknown-model"
    provider = line.provider_id or "unknown-provider"
    tags = {
        "eduaiq/cost_object": line.cost_object,
        "eduaiq/funding": line.funding,
        "eduaiq/purpose": line.purpose,
    }
    if line.extra_id:
        tags["eduaiq/extra_id"] = line.extra_id
    start, end = iso_z(account.period_start), iso_z(account.period_end)
    return {
        "BilledCost": cost,
        "BillingAccountId": account.institution_id,
        "BillingAccountName": account.institution_name,
        "BillingCurrency": account.currency,
        "BillingPeriodEnd": end,
        "BillingPeriodStart": start,
        "ChargeCategory": "Usage",
        "ChargeClass": "",
        "ChargeDescription": f"{model} tokens used by {line.unit_id}, paid by {_FUNDING_TEXT[line.funding]}"
        + (f" {line.cost_object}" if line.funding == "extra" else ""),
        "ChargeFrequency": "Usage-Based",
        "ChargePeriodEnd": end,
        "ChargePeriodStart": start,
        "ConsumedQuantity": tokens,
        "ConsumedUnit": "Tokens",
        "ContractedCost": cost,
        "EffectiveCost": cost,
        "InvoiceIssuerName": account.institution_name,
        "ListCost": cost,
        "PricingCategory": "Standard",
        "PricingQuantity": tokens,
        "PricingUnit": "Tokens",
        "ProviderName": provider,
        "PublisherName": provider,
        "ResourceId": f"{provider}/{model}",
        "ResourceName": model,
        "ResourceType": "Model",
        "ServiceCategory": "AI and Machine Learning",
        "ServiceName": model,
        "ServiceSubcategory": "Generative AI",
        "SubAccountId": line.unit_id,
        "SubAccountName": line.unit_name,
        "Tags": json.dumps(tags, sort_keys=True, separators=(",", ":")),
        "x_CostObject": line.cost_object,
        "x_ExtraId": line.extra_id,
        "x_FundingSource": line.funding,
        "x_InputTokens": str(line.input_tokens),
        "x_OutputTokens": str(line.output_tokens),
        "x_Requests": str(line.requests),
    }


def rows(account: Account, lines: Sequence[Line]) -> list[dict[str, str]]:
    return [row(account, line) for line in lines]
