"""`eduaiq roster import`: a registrar's OneRoster 1.2 CSV set into the configured database.

Operator-only by construction: it needs the database's credentials (EDUAIQ_DATABASE_URL), as `org import`
does; the admin API has no route that imports a roster. admin_api/oneroster does the work.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Annotated

import typer

roster_app = typer.Typer(no_args_is_help=True, help="OneRoster: a registrar's classes and enrollments.")


async def _import(database_url: str, institution: str, files: dict[str, bytes], dry_run: bool) -> object:
    from admin_api.oneroster import import_roster
    from core.db import make_async_engine, session_factory

    engine = make_async_engine(database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session, session.begin():
            result = await import_roster(session, institution, files, actor="roster-import")
            if dry_run:
                await session.rollback()
            return result
    finally:
        await engine.dispose()


@roster_app.command("import")
def roster_import(
    path: Annotated[
        Path, typer.Argument(help="a folder or a zip of OneRoster 1.2 CSV files (manifest.csv, ...)")
    ],
    institution: Annotated[str, typer.Option("--institution", "-i", help="the institution's id")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="check and count the changes, write nothing")
    ] = False,
) -> None:
    """Import classes (as course units), people and enrollments (as memberships ending with their term).
    The set is checked whole first: any problem and nothing is written, each listed as file:line:column."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import DBAPIError

    from admin_api.oneroster import ImportResult, RosterRefused, SourceError, UnknownInstitution, read_set
    from cli.main import fail, operator_errors, settings_or_exit
    from cli.quotaops import apply_budgets

    settings = settings_or_exit()
    try:
        files = read_set(path)
    except SourceError as exc:
        for line in exc.problems:
            typer.echo(line, err=True)
        fail(f"{path}: refused; nothing was written")
    try:
        result = operator_errors(
            lambda: asyncio.run(_import(settings.database_url, institution, files, dry_run))
        )()
    except RosterRefused as exc:
        for problem in exc.problems:
            typer.echo(str(problem), err=True)
        fail(f"{path}: refused, {len(exc.problems)} problem(s); nothing was written")
    except UnknownInstitution as exc:
        fail(str(exc))
    except DBAPIError as exc:  # refused credentials, a missing database: asyncpg's are not OperationalError
        fail(f"database: {str(exc.orig).strip().splitlines()[0] if exc.orig else exc}")
    assert isinstance(result, ImportResult)
    typer.echo(
        "files: "
        + ", ".join(f"{name} {mode} ({result.rows[name]} rows)" for name, mode in result.modes.items())
    )
    for reason, n in sorted(result.skipped.items()):
        typer.echo(f"skipped {n} enrollment(s): {reason}")
    typer.echo(("would apply: " if dry_run and result.changed else "") + result.summary())
    if result.changed and not dry_run:
        try:  # new course units get their budgets, and every gateway reloads the tree
            applied = asyncio.run(apply_budgets(settings, institution))
            if applied.note:
                print(f"eduaiq: warning: {applied.note}", file=sys.stderr)
        except (RedisConnectionError, OSError) as exc:
            typer.echo(f"warning: budgets not applied to Redis ({exc}); run `eduaiq quota rebuild`", err=True)
