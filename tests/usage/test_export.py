"""Chargeback exports: a hand-made month reproduces hand-computed totals; FOCUS conforms; closed months freeze."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from tests.usage.helpers import create_org, make_event, query, store_events
from usage.chargeback import apportion
from usage.events import UsageEvent
from usage.export import ExportError, export

INST = "handu"
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def _ev(seq: int, unit: str, path: list[str], ended: datetime, **kw: object) -> UsageEvent:
    return make_event(INST, seq, unit_id=unit, path=path, ended_at=ended, **kw)


CS101 = ["cs101", "cs", INST]
LAB = ["lab", "cs", INST]

# March 2025 in Chicago runs from 2025-03-01T06:00Z (CST) to 2025-04-01T05:00Z (CDT, after the DST change).
MONTH = [
    _ev(1, "cs101", CS101, datetime(2025, 3, 1, 6, 30, tzinfo=UTC), user_id="s1", model_id="m1",
        provider_id="p1", purpose="teaching", input_tokens=1000, output_tokens=500, cost_micro=2_500_000),
    _ev(2, "cs101", CS101, datetime(2025, 3, 15, 12, 0, tzinfo=UTC), user_id="s2", model_id="m1",
        provider_id="p1", purpose="teaching", input_tokens=2000, output_tokens=1000, cost_micro=5_000_000),
    _ev(3, "lab", LAB, datetime(2025, 3, 20, 9, 0, tzinfo=UTC), user_id="r1", model_id="m2",
        provider_id="p2", purpose="research", input_tokens=10_000, output_tokens=2000, cost_micro=12_000_000,
        extras_paid=[{"extra_id": "nsf", "unit_id": "lab", "amount": 8_000_000, "chargeback": "GR-42"}]),
    _ev(4, "lab", LAB, datetime(2025, 4, 1, 4, 59, 59, tzinfo=UTC), user_id="r1", model_id="m2",
        provider_id="p2", purpose="research", input_tokens=500, output_tokens=100, cost_micro=700_000,
        overage_micro=200_000,
        extras_paid=[{"extra_id": "nsf", "unit_id": "lab", "amount": 500_000, "chargeback": "GR-42"}]),
    # A refusal costs nothing and consumes nothing: no chargeback line.
    _ev(5, "cs101", CS101, datetime(2025, 3, 10, tzinfo=UTC), model_id="m3", provider_id="p1",
        purpose="teaching", input_tokens=0, output_tokens=0, cost_micro=0, status="refused", binding_unit="cs101"),
]  # fmt: skip
OUTSIDE = [
    _ev(6, "cs101", CS101, datetime(2025, 3, 1, 5, 59, 59, tzinfo=UTC), model_id="m1", provider_id="p1",
        cost_micro=999_000),  # Feb 28, 23:59:59 in Chicago
    _ev(7, "cs101", CS101, datetime(2025, 4, 1, 5, 0, 0, tzinfo=UTC), model_id="m1", provider_id="p1",
        cost_micro=888_000),  # Apr 1, 00:00 in Chicago
]  # fmt: skip


@pytest.fixture
def month(fresh_pg_url: str) -> str:
    create_org(
        fresh_pg_url,
        INST,
        [(INST, None, "university", "Hand University"), ("cs", INST, "department", "Computer Science"),
         ("cs101", "cs", "course", "Intro to CS"), ("lab", "cs", "lab", "Robotics Lab")],
        tz="America/Chicago",
    )  # fmt: skip
    store_events(fresh_pg_url, MONTH + OUTSIDE)
    return fresh_pg_url


# Hand-computed. lab/m2: cost 12.7, overage 0.2, nsf paid 8.0 + 0.5 = 8.5, allocation 12.7 - 0.2 - 8.5 = 4.0.
# Its 2 requests, 10,500 input and 2,100 output tokens split 4.0 : 8.5 : 0.2 by largest remainder:
#   requests 2*4/12.7 = 0.63, 2*8.5/12.7 = 1.34, 0.03      -> 1, 1, 0
#   input    3307.09, 7027.56, 165.35 (sum 10,499 + 1)     -> 3307, 7028, 165
#   output   661.42, 1405.51, 33.07 (sum 2,099 + 1)        -> 661, 1406, 33
EXPECTED_CSV = [
    ["2025-03", INST, "cs101", "Intro to CS", "teaching", "m1", "p1", "allocation", "", "cs101",
     "2", "3000", "1500", "0", "0", "7.500000", "USD"],
    ["2025-03", INST, "lab", "Robotics Lab", "research", "m2", "p2", "allocation", "", "lab",
     "1", "3307", "661", "0", "0", "4.000000", "USD"],
    ["2025-03", INST, "lab", "Robotics Lab", "research", "m2", "p2", "extra", "nsf", "GR-42",
     "1", "7028", "1406", "0", "0", "8.500000", "USD"],
    ["2025-03", INST, "lab", "Robotics Lab", "research", "m2", "p2", "overage", "", "lab",
     "0", "165", "33", "0", "0", "0.200000", "USD"],
]  # fmt: skip


def _csv(content: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(content.decode())))


async def test_hand_made_month_reproduces_hand_computed_lines(month: str, db_session: AsyncSession) -> None:
    rows = _csv(await export(db_session, INST, "2025-03", "csv", now=NOW))
    assert rows[0][:3] == ["period", "institution_id", "unit_id"]
    assert rows[1:] == EXPECTED_CSV


async def test_json_totals_and_money_as_strings(month: str) -> None:
    doc = json.loads(await export(month, INST, "2025-03", "json", now=NOW))
    assert doc["currency"] == "USD"
    assert doc["period_start"] == "2025-03-01T06:00:00Z"
    assert doc["period_end"] == "2025-04-01T05:00:00Z"
    assert doc["totals"] == {
        "cost": "20.200000",
        "requests": 4,
        "input_tokens": 13_500,
        "output_tokens": 3_600,
    }
    assert all(isinstance(line["cost"], str) for line in doc["lines"])
    assert [
        (x["unit_id"], x["funding"], x["extra_id"], x["cost_object"], x["cost"]) for x in doc["lines"]
    ] == [
        ("cs101", "allocation", None, "cs101", "7.500000"),
        ("lab", "allocation", None, "lab", "4.000000"),
        ("lab", "extra", "nsf", "GR-42", "8.500000"),
        ("lab", "overage", None, "lab", "0.200000"),
    ]


async def test_unit_scope_covers_only_its_subtree(month: str, db_session: AsyncSession) -> None:
    rows = _csv(await export(db_session, INST, "2025-03", "csv", unit_id="lab", now=NOW))
    assert rows[1:] == EXPECTED_CSV[1:]
    whole = _csv(await export(db_session, INST, "2025-03", "csv", unit_id="cs", now=NOW))
    assert whole[1:] == EXPECTED_CSV


# FOCUS 1.0/1.1 columns this dataset must carry, from the specification's column pages:
# (column, data type, nulls allowed). Mandatory columns, then the conditional ones that apply to
# usage-metered charges with sub accounts, resources and tags.
FOCUS_REQUIRED = {
    "BilledCost": ("Decimal", False),
    "BillingAccountId": ("String", False),
    "BillingAccountName": ("String", True),
    "BillingCurrency": ("Currency", False),
    "BillingPeriodEnd": ("DateTime", False),
    "BillingPeriodStart": ("DateTime", False),
    "ChargeCategory": ("String", False),
    "ChargeClass": ("String", True),
    "ChargeDescription": ("String", True),
    "ChargePeriodEnd": ("DateTime", False),
    "ChargePeriodStart": ("DateTime", False),
    "ContractedCost": ("Decimal", False),
    "EffectiveCost": ("Decimal", False),
    "InvoiceIssuerName": ("String", False),
    "ListCost": ("Decimal", False),
    "PricingQuantity": ("Decimal", False),  # not null for Usage rows
    "PricingUnit": ("String", False),  # not null for Usage rows
    "ProviderName": ("String", False),
    "PublisherName": ("String", False),
    "ServiceCategory": ("String", False),
    "ServiceName": ("String", False),
    # Conditional, applicable here:
    "ConsumedQuantity": ("Decimal", False),  # not null (and positive) for Usage rows
    "ConsumedUnit": ("String", False),
    "ResourceId": ("String", True),
    "ResourceName": ("String", True),
    "SubAccountId": ("String", True),
    "SubAccountName": ("String", True),
    "Tags": ("KeyValue", True),
    "ChargeFrequency": ("String", False),
    "PricingCategory": ("String", True),
}
ALLOWED = {
    "ChargeCategory": {"Usage", "Purchase", "Tax", "Credit", "Adjustment"},
    "ChargeClass": {"", "Correction"},
    "ChargeFrequency": {"One-Time", "Recurring", "Usage-Based"},
    "PricingCategory": {"", "Standard", "Dynamic", "Committed", "Other"},
    "ServiceCategory": {
        "AI and Machine Learning", "Analytics", "Business Applications", "Compute", "Databases",
        "Developer Tools", "Multicloud", "Identity", "Integration", "Internet of Things",
        "Management and Governance", "Media", "Migration", "Mobile", "Networking", "Security", "Storage",
        "Web", "Other",
    },
}  # fmt: skip
DECIMAL = re.compile(r"^-?\d+(\.\d+)?([eE]-?\d+)?$")
DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def _valid(kind: str, value: str) -> bool:
    if kind == "Decimal":
        return bool(DECIMAL.match(value))
    if kind == "DateTime":
        datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
        return bool(DATETIME.match(value))
    if kind == "Currency":
        return bool(re.fullmatch(r"[A-Z]{3}", value))
    if kind == "KeyValue":
        parsed = json.loads(value)
        return isinstance(parsed, dict) and all(isinstance(k, str) for k in parsed)
    return isinstance(value, str)


async def test_focus_export_conforms_to_the_spec_columns_and_types(
    month: str, db_session: AsyncSession
) -> None:
    rows = list(
        csv.DictReader(io.StringIO((await export(db_session, INST, "2025-03", "focus", now=NOW)).decode()))
    )
    assert rows
    header = list(rows[0].keys())
    missing = set(FOCUS_REQUIRED) - set(header)
    assert not missing, f"missing FOCUS columns: {sorted(missing)}"
    for col in header:
        # Spec columns are PascalCase alphanumerics; anything else must be a custom `x_` column.
        assert col in FOCUS_REQUIRED or col.startswith("x_") or re.fullmatch(r"[A-Z][A-Za-z]+", col), col
    for r in rows:
        for col, (kind, nullable) in FOCUS_REQUIRED.items():
            value = r[col]
            if value == "":
                assert nullable, f"{col} must not be null"
                continue
            assert _valid(kind, value), f"{col}={value!r} is not a {kind}"
        for col, allowed in ALLOWED.items():
            assert r[col] in allowed, (col, r[col])
        assert r["ChargeCategory"] == "Usage"
        assert Decimal(r["ConsumedQuantity"]) > 0
        assert r["ChargePeriodStart"] < r["ChargePeriodEnd"]
        assert (
            r["BillingPeriodStart"] <= r["ChargePeriodStart"]
            and r["ChargePeriodEnd"] <= r["BillingPeriodEnd"]
        )
        assert r["BilledCost"] == r["EffectiveCost"] == r["ListCost"] == r["ContractedCost"]
    assert {r["BillingPeriodStart"] for r in rows} == {"2025-03-01T06:00:00Z"}
    assert {r["BillingPeriodEnd"] for r in rows} == {"2025-04-01T05:00:00Z"}
    assert sum(Decimal(r["BilledCost"]) for r in rows) == Decimal("20.2")
    assert sum(int(r["ConsumedQuantity"]) for r in rows) == 13_500 + 3_600
    grant = [r for r in rows if json.loads(r["Tags"]).get("eduaiq/cost_object") == "GR-42"]
    assert [r["BilledCost"] for r in grant] == ["8.500000"]


async def test_closed_month_is_frozen_byte_for_byte_after_late_rows(
    month: str, db_session: AsyncSession
) -> None:
    first = {fmt: await export(db_session, INST, "2025-03", fmt, now=NOW) for fmt in ("csv", "json", "focus")}
    stored = query(
        month, "select format, sha256, content from export_snapshot where institution_id = %s", INST
    )
    assert {r[0] for r in stored} == {"csv", "json", "focus"}
    assert all(bytes(r[2]) == first[r[0]] for r in stored)

    late = _ev(8, "cs101", CS101, datetime(2025, 3, 31, 12, 0, tzinfo=UTC), model_id="m1", provider_id="p1",
               purpose="teaching", cost_micro=3_000_000)  # fmt: skip
    assert store_events(month, [late]) == 1
    for fmt in ("csv", "json", "focus"):
        assert await export(db_session, INST, "2025-03", fmt, now=NOW + timedelta(days=30)) == first[fmt]
        assert await export(month, INST, "2025-03", fmt, now=NOW) == first[fmt]
    # The late row is in the ledger: computed afresh (as if the month were still open) the file would differ.
    fresh = await export(db_session, INST, "2025-03", "csv", now=datetime(2025, 4, 1, 6, tzinfo=UTC))
    assert fresh != first["csv"]
    assert ["10.500000"] == [r[15] for r in _csv(fresh)[1:] if r[2] == "cs101"]


async def test_open_month_is_not_stored_and_follows_the_ledger(month: str, db_session: AsyncSession) -> None:
    during = datetime(2025, 3, 31, 18, tzinfo=UTC)
    before = await export(db_session, INST, "2025-03", "csv", now=during)
    assert query(month, "select count(*) from export_snapshot")[0][0] == 0
    store_events(month, [_ev(9, "cs101", CS101, datetime(2025, 3, 31, 17, tzinfo=UTC), model_id="m1",
                             provider_id="p1", purpose="teaching", cost_micro=1)])  # fmt: skip
    assert await export(db_session, INST, "2025-03", "csv", now=during) != before


async def test_concurrent_first_exports_of_a_closed_month_agree(month: str) -> None:
    results = await asyncio.gather(*[export(month, INST, "2025-03", "focus", now=NOW) for _ in range(4)])
    assert len(set(results)) == 1
    assert query(month, "select count(*) from export_snapshot")[0][0] == 1


async def test_bad_requests_are_refused(month: str, db_session: AsyncSession) -> None:
    with pytest.raises(ExportError):
        await export(db_session, "nowhere", "2025-03", "csv")
    with pytest.raises(ExportError):
        await export(db_session, INST, "2025-13", "csv")
    with pytest.raises(ExportError):
        await export(db_session, INST, "2025-03", "xlsx")  # type: ignore[arg-type]


@given(st.integers(0, 10**9), st.lists(st.integers(0, 10**9), min_size=1, max_size=6))
def test_apportion_is_exact_and_fair(total: int, weights: list[int]) -> None:
    shares = apportion(total, weights)
    assert sum(shares) == total
    wsum = sum(weights)
    if wsum:
        for share, w in zip(shares, weights, strict=True):
            assert abs(share * wsum - total * w) < wsum  # within one unit of the exact proportion
    else:
        assert shares[0] == total
