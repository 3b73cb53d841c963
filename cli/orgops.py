"""Institution-file commands against the configured database."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy import select

from admin_api.orgfile import ChangeReport, OrgFileError, apply_org, export_org, load_file
from admin_api.orgfile.export import dump_yaml
from cli.quotaops import apply_budgets
from core.db import make_async_engine, session_factory
from core.models import Institution
from core.settings import Settings
from providers.upstream_policy import UpstreamPolicy


async def import_file(
    settings: Settings, path: Path, dry_run: bool = False
) -> tuple[list[str], ChangeReport | None]:
    try:
        org = load_file(path, UpstreamPolicy.from_settings(settings))
    except OrgFileError as exc:
        return [f"{p}: {m}" for p, m in exc.problems], None
    engine = make_async_engine(settings.database_url, pool_size=2)
    try:
        async with session_factory(engine)() as session:
            async with session.begin():
                report = await apply_org(session, org)
                if dry_run:
                    await session.rollback()
        if not dry_run:
            try:
                applied = await apply_budgets(settings, org.institution.id)
                if applied.note:  # on stderr: the report lists changes to the institution, and this is none
                    print(f"eduaiq: warning: {applied.note}", file=sys.stderr)
            except RedisConnectionError as exc:
                report.lines.append(
                    f"warning: budgets not applied to Redis ({exc}); run `eduaiq quota rebuild`"
                )
        return [], report
    finally:
        await engine.dispose()


async def export_file(settings: Settings, institution: str | None) -> str:
    engine = make_async_engine(settings.database_url, pool_size=2)
    try:
        async with session_factory(engine)() as session:
            if institution is None:
                ids = (await session.execute(select(Institution))).scalars().all()
                if len(ids) != 1:
                    raise SystemExit(f"eduaiq: {len(ids)} institutions; name one with --institution")
                institution = ids[0].id
            return dump_yaml(await export_org(session, institution))
    finally:
        await engine.dispose()


async def institution_ids(settings: Settings) -> list[str]:
    engine = make_async_engine(settings.database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            return [i.id for i in (await session.execute(select(Institution))).scalars().all()]
    finally:
        await engine.dispose()


async def add_provider(
    settings: Settings, institution: str, entry: dict[str, Any]
) -> tuple[list[str], ChangeReport | None]:
    """Add or replace one provider through the same checked path as an institution-file import."""
    from admin_api.orgfile import parse_document

    engine = make_async_engine(settings.database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            doc = await export_org(session, institution)
        doc["providers"] = [p for p in doc["providers"] if p["id"] != entry["id"]] + [entry]
        top = doc["units"][0]
        if top.get("models") is not None:  # the root lists models: the new ones must be allowed there
            top["models"] = list(dict.fromkeys([*top["models"], *(m["id"] for m in entry["models"])]))
        try:
            org = parse_document(doc, UpstreamPolicy.from_settings(settings))
        except OrgFileError as exc:
            return [f"{p}: {m}" for p, m in exc.problems], None
        async with session_factory(engine)() as session, session.begin():
            report = await apply_org(session, org, actor="selfhost-register")
        await apply_budgets(settings, institution)
        return [], report
    finally:
        await engine.dispose()
