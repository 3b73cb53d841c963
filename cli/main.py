"""The `eduaiq` command: one entry point for every process and operator task.

This package is the composition root: it imports the others and wires them
together, which is why it cannot live inside any of them.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from core.settings import Settings, SettingsError, get_settings

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="EduAiQ: the university AI gateway.",
)
org_app = typer.Typer(no_args_is_help=True, help="The institution file: import and export.")
app.add_typer(org_app, name="org")

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"eduaiq: {message}", err=True)
    raise typer.Exit(code)


def settings_or_exit() -> Settings:
    try:
        return get_settings()
    except SettingsError as exc:
        fail(str(exc), 2)
        raise  # unreachable: fail() always raises


def operator_errors(fn: F) -> F:
    """Expected failures (a server down, a bad file) print one line instead of a traceback."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConnectionError as exc:
            fail(f"cannot connect: {exc}")
        except OSError as exc:
            if exc.errno in (111, 113):  # refused, unreachable
                fail(f"cannot connect: {exc.strerror}")
            raise

    return wrapper  # type: ignore[return-value]


@app.command()
@operator_errors
def migrate(revision: Annotated[str, typer.Argument(help="target revision")] = "head") -> None:
    """Bring the database schema to the latest version (or to REVISION)."""
    from cli.services.postgres import ensure_database
    from core.migrate import upgrade

    settings = settings_or_exit()
    ensure_database(settings.database_url)
    upgrade(settings.database_url, revision)
    typer.echo(f"database at {revision}")


@org_app.command("import")
@operator_errors
def org_import(
    file: Annotated[Path, typer.Argument(help="institution file (YAML)")],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="check and show the changes, write nothing")
    ] = False,
) -> None:
    """Create or update an institution from its file; only the difference is written."""
    from cli.orgops import import_file

    settings = settings_or_exit()
    problems, report = asyncio.run(import_file(settings, file, dry_run=dry_run))
    if problems:
        for line in problems:
            typer.echo(line, err=True)
        fail(f"{file}: refused, {len(problems)} problem(s); nothing was written")
    assert report is not None
    for line in report.lines:
        typer.echo(line)
    typer.echo(("would apply: " if dry_run and report.changed else "") + report.summary())


@org_app.command("export")
@operator_errors
def org_export(
    institution: Annotated[str | None, typer.Option("--institution", "-i", help="institution id")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="write to this file instead of stdout")
    ] = None,
) -> None:
    """Print the institution as a file that imports back with no changes (API keys are not exported)."""
    from cli.orgops import export_file

    text = asyncio.run(export_file(settings_or_exit(), institution))
    if out:
        out.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)


def main() -> None:
    app()
