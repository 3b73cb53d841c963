"""The `eduaiq` command: one entry point for every process and operator task.

This package is the composition root: it imports the others and wires them
together, which is why it cannot live inside any of them.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from cli.rosterops import roster_app
from cli.scimops import scim_app
from cli.usageops import usage_app
from cli.userops import user_app
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
selfhost_app = typer.Typer(no_args_is_help=True, help="Open-weight models on campus GPUs (vLLM).")
app.add_typer(selfhost_app, name="selfhost")
app.add_typer(usage_app, name="usage")
app.add_typer(user_app, name="user")
app.add_typer(roster_app, name="roster")
app.add_typer(scim_app, name="scim")

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
def migrate(revision: Annotated[str, typer.Argument(help="target revision")] = "heads") -> None:
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
def quota_rebuild(
    institution: Annotated[str | None, typer.Option("--institution", "-i")] = None,
    offline: Annotated[
        bool,
        typer.Option("--offline", help="no gateway serves (all stopped): rebuild although Redis shows some"),
    ] = False,
) -> None:
    """Recompute every budget counter in Redis from the ledger. Refused while gateways serve (the ledger lags
    the counters) unless --offline, and whenever the ledger cannot be shown complete."""
    from cli.quotaops import RebuildRefused, apply_budgets

    settings = settings_or_exit()
    for inst in _institutions(settings, institution):
        try:
            done = asyncio.run(apply_budgets(settings, inst, rebuild=True, offline=offline))
        except RebuildRefused as exc:
            fail(f"{inst}: rebuild refused: {exc}")
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


@app.command()
def gateway(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    workers: Annotated[int, typer.Option(help="worker processes (one per core is right)")] = 1,
) -> None:
    """Serve the OpenAI-compatible data plane (/v1, /healthz, /readyz, /metrics)."""
    from gateway.app import create_app
    from gateway.server import Limits, run

    settings = settings_or_exit()
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s gateway %(levelname)s %(name)s %(message)s"
    )
    run(lambda: create_app(settings), host, port, workers=workers, limits=Limits.from_settings(settings),
        grace=settings.shutdown_grace_seconds)  # fmt: skip


@app.command("admin-api")
def admin_api(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8001,
) -> None:
    """Serve the control plane: /api/v1, sign-in under /auth, and the dashboard at /.

    On the gateway's HTTP server with the same limits (`Limits.from_settings`): the sign-in routes answer
    anyone, so a head, a body and the requests in progress are bounded here as they are on /v1."""
    from admin_api.app import create_app
    from gateway.server import Limits, run

    settings = settings_or_exit()
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s admin-api %(levelname)s %(name)s %(message)s"
    )
    run(lambda: create_app(settings), host, port, limits=Limits.from_settings(settings),
        grace=settings.shutdown_grace_seconds)  # fmt: skip


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
    dev_login: Annotated[
        bool, typer.Option("--dev-login", help="allow /auth/dev/login (never in production)")
    ] = False,
) -> None:
    """Serve everything on one origin: /v1, /api/v1, /auth and the dashboard at /."""
    from cli.web import serve_one_origin

    serve_one_origin(settings_or_exit(), host, port, dev_login=dev_login)


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
    from usage.consumer import DeadLetterUnavailable, run_consumer

    try:
        run_consumer(settings_or_exit(), exit_when_idle=until_idle)
    except DeadLetterUnavailable as exc:  # stopped uncommitted: a restart reads the batch again
        fail(str(exc), 3)


@app.command("export")
@operator_errors
def export_cmd(
    period: Annotated[str, typer.Option(help="month, YYYY-MM")],
    fmt: Annotated[str, typer.Option("--format", help="csv, json or focus (FinOps FOCUS columns)")] = "csv",
    unit: Annotated[str | None, typer.Option("--unit", help="only this unit and everything below it")] = None,
    institution: Annotated[str | None, typer.Option("--institution", "-i")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="write to this file instead of stdout")
    ] = None,
) -> None:
    """Chargebacks for the ERP: per unit, cost centre or grant, model; closed months reproduce byte for byte."""
    from usage.export import ExportError, export_sync

    settings = settings_or_exit()
    (inst,) = _institutions(settings, institution) if institution else _one_institution(settings)
    try:
        data = export_sync(settings.database_url, inst, period, fmt, unit)  # type: ignore[arg-type]
    except ExportError as exc:
        fail(str(exc))
    if out:
        out.write_bytes(data)
    else:
        sys.stdout.buffer.write(data)


def _one_institution(settings: Settings) -> list[str]:
    ids = _institutions(settings, None)
    if len(ids) != 1:
        fail(f"{len(ids)} institutions; name one with --institution")
    return ids


@selfhost_app.command("list")
def selfhost_list() -> None:
    """The recommended open-weight models and what each needs."""
    from selfhost.catalogue import load_catalogue

    for m in load_catalogue().models:
        typer.echo(f"{m.id:32} {m.kind:9} {m.gpu_memory_gb:>5} GB  {m.hf_repo}")


@selfhost_app.command("serve")
def selfhost_serve(
    model: Annotated[str, typer.Argument(help="catalogue id, e.g. qwen2-vl-7b")],
    port: Annotated[int, typer.Option(help="port for vLLM's OpenAI server")] = 8000,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="print the vLLM command only")] = False,
) -> None:
    """Run vLLM with the model's tested profile (dtype, context length, GPU memory, image limits)."""
    import shlex

    from selfhost.serve import VllmNotInstalled, serve, serve_command

    if dry_run:
        typer.echo(shlex.join(serve_command(model, port=port)))
        return
    try:
        raise typer.Exit(serve(model, port=port))
    except VllmNotInstalled as exc:
        fail(str(exc))


@selfhost_app.command("plan")
def selfhost_plan(
    users: Annotated[int, typer.Option(help="active users")],
    tokens_per_day: Annotated[int, typer.Option(help="tokens per user per day (input + output)")],
    model: Annotated[str, typer.Option(help="catalogue id")] = "llama-3.1-8b",
    gpu: Annotated[str, typer.Option(help="GPU type, e.g. A100-80GB, L40S, H100-80GB")] = "A100-80GB",
) -> None:
    """Estimate the GPUs needed for a number of users and tokens per day."""
    from dataclasses import asdict

    from selfhost.plan import plan

    result = plan(users, tokens_per_day, model, gpu)
    for key, value in asdict(result).items():
        if key != "assumptions":
            typer.echo(f"{key:28} {value}")
    for line in result.assumptions:
        typer.echo(f"  - {line}")


@selfhost_app.command("register")
@operator_errors
def selfhost_register(
    url: Annotated[str, typer.Argument(help="the server's OpenAI base URL, e.g. http://gpu01:8000/v1")],
    provider_id: Annotated[
        str, typer.Option("--id", help="provider id in the institution file")
    ] = "campus-vllm",
    input_price: Annotated[float, typer.Option(help="internal price per 1M input tokens")] = 0.05,
    output_price: Annotated[float, typer.Option(help="internal price per 1M output tokens")] = 0.10,
    apply: Annotated[
        bool, typer.Option("--apply", help="add it to the institution (else print the entry)")
    ] = False,
    institution: Annotated[str | None, typer.Option("--institution", "-i")] = None,
) -> None:
    """Discover a running vLLM's models and add them to the institution's providers."""
    import yaml

    from cli.orgops import add_provider
    from selfhost.register import provider_entry, register

    models = asyncio.run(register(url, probe_stream_usage=True))
    entry = provider_entry(provider_id, models, input_per_mtok=input_price, output_per_mtok=output_price)
    typer.echo(yaml.safe_dump([entry], sort_keys=False))
    if apply:
        settings = settings_or_exit()
        (inst,) = _institutions(settings, institution) if institution else _one_institution(settings)
        problems, report = asyncio.run(add_provider(settings, inst, entry))
        if problems:
            for line in problems:
                typer.echo(line, err=True)
            fail("refused; nothing was written")
        assert report is not None
        typer.echo(report.summary())


@app.command()
def worker(concurrency: Annotated[int, typer.Option(help="job threads")] = 2) -> None:
    """Run background jobs (Celery on Redis): rollups, exports, forecasts and budget sweeps."""
    from usage.jobs import run_worker

    run_worker(settings_or_exit(), concurrency=concurrency)


@app.command()
def beat() -> None:
    """Schedule the background jobs; run exactly one per deployment."""
    from usage.jobs import run_beat

    run_beat(settings_or_exit())


def main() -> None:
    app()
