"""Monthly chargeback exports for the ERP: CSV, JSON, or a FinOps FOCUS dataset.

A closed month (its local end plus a grace day for late events) is exported once and
for all: the first export stores its bytes in `export_snapshot`, and every later export
of that month, scope and format returns those bytes, even if late rows reach the ledger
afterwards. Finance can re-download an invoice basis and get the same file, byte for
byte. An open month is computed fresh each time.

Money is written as decimal strings in currency units with 6 decimals.

The CSV export is opened in spreadsheets, so its text cells are neutralised against formula injection
(OWASP's CSV injection guidance): a cell starting with = + - @, a tab or a carriage return (or the
full-width = + - @) gets a leading single quote, which makes the spreadsheet show it as text instead of
evaluating it. Unit names, chargeback codes and every other text column come from admins and the
institution file, so none of them is trusted. JSON and the FOCUS dataset are for programs and stay raw.
A closed month exported before this rule keeps its stored bytes.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import io
import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from core.db import make_async_engine, session_factory
from usage import focus
from usage.chargeback import Line, load_lines, money
from usage.periods import DEFAULT_CLOSE_GRACE, is_closed, iso_z, month_bounds

Format = Literal["csv", "json", "focus"]
FORMATS: tuple[Format, ...] = ("csv", "json", "focus")

CSV_COLUMNS = (
    "period",
    "institution_id",
    "unit_id",
    "unit_name",
    "purpose",
    "model_id",
    "provider_id",
    "funding",
    "extra_id",
    "cost_object",
    "requests",
    "input_tokens",
    "output_tokens",
    "image_tokens",
    "cached_tokens",
    "cost",
    "currency",
)


class ExportError(ValueError):
    """The export cannot be made as asked (unknown institution, bad period or format)."""


async def export(
    session_or_url: AsyncSession | str,
    institution_id: str,
    period: str,
    fmt: Format = "csv",
    unit_id: str | None = None,
    *,
    now: datetime | None = None,
    grace: timedelta = DEFAULT_CLOSE_GRACE,
) -> bytes:
    """The month's chargeback file; for a closed month, the stored bytes once they exist."""
    if fmt not in FORMATS:
        raise ExportError(f"format must be one of {', '.join(FORMATS)}")
    if isinstance(session_or_url, str):
        engine = make_async_engine(session_or_url, pool_size=2)
        try:
            async with session_factory(engine)() as session:
                return await _export(session, institution_id, period, fmt, unit_id, now, grace)
        finally:
            await engine.dispose()
    return await _export(session_or_url, institution_id, period, fmt, unit_id, now, grace)


def export_sync(
    database_url: str, institution_id: str, period: str, fmt: Format = "csv", unit_id: str | None = None
) -> bytes:
    """For the CLI (`eduaiq export`): the same export from plain synchronous code."""
    return asyncio.run(export(database_url, institution_id, period, fmt, unit_id))


async def _export(
    session: AsyncSession,
    institution_id: str,
    period: str,
    fmt: Format,
    unit_id: str | None,
    now: datetime | None,
    grace: timedelta,
) -> bytes:
    inst = (
        await session.execute(
            text("select name, currency, timezone from institution where id = :i"), {"i": institution_id}
        )
    ).first()
    if inst is None:
        raise ExportError(f"unknown institution {institution_id!r}")
    name, currency, tz = inst
    try:
        start, end = month_bounds(period, tz)
    except ValueError as exc:
        raise ExportError(str(exc)) from None
    closed = is_closed(period, tz, now or datetime.now(UTC), grace)
    scope = unit_id or ""
    key = {"i": institution_id, "p": period, "s": scope, "f": fmt}
    if closed:
        stored = await _stored(session, key)
        if stored is not None:
            return stored
    lines = await load_lines(session, institution_id, start, end, unit_id)
    account = focus.Account(institution_id, name, currency, start, end)
    content = render(fmt, account, period, scope, lines)
    if not closed:
        return content
    return await _snapshot(session, key, content)


async def _stored(session: AsyncSession, key: dict[str, str]) -> bytes | None:
    row = (
        await session.execute(
            text(
                "select content from export_snapshot "
                "where institution_id = :i and period = :p and scope_unit = :s and format = :f"
            ),
            key,
        )
    ).first()
    return None if row is None else bytes(row[0])


async def _snapshot(session: AsyncSession, key: dict[str, str], content: bytes) -> bytes:
    """Store the first export of a closed month; whoever stored first wins, and everyone returns that."""
    insert = text(
        "insert into export_snapshot (institution_id, period, scope_unit, format, sha256, content, created_at) "
        "values (:i, :p, :s, :f, :sha, :content, :at) on conflict do nothing"
    )
    params: dict[str, Any] = {
        **key,
        "sha": hashlib.sha256(content).hexdigest(),
        "content": content,
        "at": datetime.now(UTC),
    }
    bind = session.bind
    if isinstance(bind, AsyncEngine):
        # Its own transaction: the caller's session stays as it was (an admin request may still be reading).
        async with bind.begin() as conn:
            await conn.execute(insert, params)
    else:
        await session.execute(insert, params)
        await session.commit()
    stored = await _stored(session, key)
    return content if stored is None else stored


def render(fmt: Format, account: focus.Account, period: str, scope: str, lines: Sequence[Line]) -> bytes:
    if fmt == "csv":
        return _csv(CSV_COLUMNS, [_csv_row(account, period, line) for line in lines])
    if fmt == "focus":
        return _csv(
            focus.COLUMNS, [[_focus_cell(r[c]) for c in focus.COLUMNS] for r in focus.rows(account, lines)]
        )
    return _json(account, period, scope, lines)


# What a spreadsheet reads as the start of a formula (or, for tab and CR, of a cell it may re-split).
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\uff1d", "\uff0b", "\uff0d", "\uff20")


def spreadsheet_text(value: str) -> str:
    """A text cell a spreadsheet shows as text: a leading quote before anything that starts a formula."""
    return "'" + value if value.startswith(FORMULA_STARTS) else value


def _focus_cell(value: Any) -> Any:
    """FOCUS text cells (unit, institution and cost-object names) are as formula-safe as the plain CSV's;
    numbers, and text that is a number, stay as they are."""
    if not isinstance(value, str):
        return value
    try:
        float(value)
    except ValueError:
        return spreadsheet_text(value)
    return value


def _csv_row(account: focus.Account, period: str, line: Line) -> list[str]:
    text_cells = [
        period,
        account.institution_id,
        line.unit_id,
        line.unit_name,
        line.purpose,
        line.model_id or "",
        line.provider_id or "",
        line.funding,
        line.extra_id,
        line.cost_object,
    ]
    return [
        *(spreadsheet_text(cell) for cell in text_cells),
        str(line.requests),
        str(line.input_tokens),
        str(line.output_tokens),
        str(line.image_tokens),
        str(line.cached_tokens),
        money(line.cost_micro),
        spreadsheet_text(account.currency),
    ]


def _csv(header: Sequence[str], rows: Sequence[Sequence[str]]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue().encode()


def _json(account: focus.Account, period: str, scope: str, lines: Sequence[Line]) -> bytes:
    doc = {
        "institution_id": account.institution_id,
        "institution_name": account.institution_name,
        "period": period,
        "period_start": iso_z(account.period_start),
        "period_end": iso_z(account.period_end),
        "scope_unit": scope or None,
        "currency": account.currency,
        "lines": [
            {
                "unit_id": line.unit_id,
                "unit_name": line.unit_name,
                "purpose": line.purpose,
                "model_id": line.model_id,
                "provider_id": line.provider_id,
                "funding": line.funding,
                "extra_id": line.extra_id or None,
                "cost_object": line.cost_object,
                "requests": line.requests,
                "input_tokens": line.input_tokens,
                "output_tokens": line.output_tokens,
                "image_tokens": line.image_tokens,
                "cached_tokens": line.cached_tokens,
                "cost": money(line.cost_micro),
            }
            for line in lines
        ],
        "totals": {
            "requests": sum(line.requests for line in lines),
            "input_tokens": sum(line.input_tokens for line in lines),
            "output_tokens": sum(line.output_tokens for line in lines),
            "cost": money(sum(line.cost_micro for line in lines)),
        },
    }
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()
