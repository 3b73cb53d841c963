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
quota_app = typer.Typer(
    no_args_is_help=True, help="Budget counters in Redis against the ledger in PostgreSQL."
)
app.add_typer(quota_app, name="quota")

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
        from redis.exceptions import ConnectionError as RedisConnectionError
        from sqlalchemy.exc import OperationalError

        try:
            return fn(*args, **kwargs)
        except (ConnectionError, RedisConnectionError) as exc:
            fail(f"cannot connect: {exc}")
        except OperationalError as exc:
            fail(f"database: {str(exc.orig).strip().splitlines()[0] if exc.orig else exc}")
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


def _institutions(settings: Settings, only: str | None) -> list[str]:
    from cli.orgops import institution_ids

    ids = asyncio.run(institution_ids(settings))
    if only is not None:
        if only not in ids:
            fail(f"no institution {only!r}")
        return [only]
    return ids


@quota_app.command("rebuild")
@operator_errors
def quota_rebuild(institution: Annotated[str | None, typer.Option("--institution", "-i")] = None) -> None:
    """Recompute every budget counter in Redis from the ledger (after Redis lost its data)."""
    from cli.quotaops import apply_budgets

    settings = settings_or_exit()
    for inst in _institutions(settings, institution):
        done = asyncio.run(apply_budgets(settings, inst, rebuild=True))
        typer.echo(f"{inst}: {done.action}")


@quota_app.command("check")
@operator_errors
def quota_check(institution: Annotated[str | None, typer.Option("--institution", "-i")] = None) -> None:
    """Compare Redis counters with the ledger; exit 1 and list every difference when they drift."""
    from cli.quotaops import apply_budgets

    settings = settings_or_exit()
    drifted = False
    for inst in _institutions(settings, institution):
        done = asyncio.run(apply_budgets(settings, inst, check=True))
        for line in done.drift:
            typer.echo(f"{inst}: {line}")
        drifted = drifted or bool(done.drift)
        typer.echo(f"{inst}: {'drift' if done.drift else 'counters match the ledger'}")
    if drifted:
        raise typer.Exit(1)


def _uvicorn(app: Any, host: str, port: int, workers: int = 1, factory: str | None = None) -> None:
    import uvicorn

    options: dict[str, Any] = {"host": host, "port": port, "log_level": "warning", "access_log": False,
                               "loop": "uvloop", "http": "httptools", "timeout_graceful_shutdown": 20}  # fmt: skip
    if workers > 1 and factory:
        uvicorn.run(factory, factory=True, workers=workers, **options)
    else:
        uvicorn.run(app, **options)


@app.command()
def gateway(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    workers: Annotated[int, typer.Option(help="worker processes (one per core is right)")] = 1,
) -> None:
    """Serve the OpenAI-compatible data plane (/v1, /healthz, /readyz, /metrics)."""
    from gateway.app import create_asgi

    settings = settings_or_exit()
    _uvicorn(create_asgi(settings), host, port, workers, "gateway.app:create_asgi")


@app.command("admin-api")
def admin_api(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8001,
) -> None:
    """Serve the control plane: /api/v1, sign-in under /auth, and the dashboard at /."""
    from admin_api.app import create_app

    _uvicorn(create_app(settings_or_exit()), host, port)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    dev_login: Annotated[
        bool, typer.Option("--dev-login", help="allow /auth/dev/login (never in production)")
    ] = False,
) -> None:
    """Serve everything on one origin: /v1, /api/v1, /auth and the dashboard at /."""
    from cli.web import create_one_origin

    _uvicorn(create_one_origin(settings_or_exit(), dev_login=dev_login), host, port)


@app.command()
def dev(
    state_dir: Annotated[
        Path, typer.Option("--state-dir", help="where embedded servers keep their data")
    ] = Path("~/.eduaiq"),
    org: Annotated[
        Path | None, typer.Option("--org", help="institution file (default: a demo university)")
    ] = None,
    host: Annotated[str, typer.Option(help="address to serve on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port to serve on")] = 8000,
    services_port_base: Annotated[
        int | None, typer.Option(help="embedded PostgreSQL, Redis, Kafka on this port and the next two")
    ] = None,
    demo_model_port: Annotated[int, typer.Option(help="port of the built-in demo model server")] = 8001,
) -> None:
    """Start the whole system on this machine (embedded servers where EDUAIQ_* URLs are not set)."""
    from cli.dev import run_dev

    run_dev(
        settings_or_exit(),
        state_dir,
        org,
        host,
        port,
        port_base=services_port_base,
        model_port=demo_model_port,
    )


@app.command()
def consume(
    until_idle: Annotated[
        float | None, typer.Option(help="exit once caught up and idle this many seconds (drain, then stop)")
    ] = None,
) -> None:
    """Write usage events from Kafka into the PostgreSQL ledger (a consumer group member)."""
    from usage.consumer import run_consumer

    run_consumer(settings_or_exit(), exit_when_idle=until_idle)


def main() -> None:
    app()
