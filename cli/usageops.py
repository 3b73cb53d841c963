"""`eduaiq usage ...`: operator commands for the usage pipeline (the dead-letter topic)."""

from __future__ import annotations

from typing import Annotated

import typer

usage_app = typer.Typer(no_args_is_help=True, help="The usage pipeline: dead-lettered events.")


@usage_app.command("replay-dead-letters")
def replay_dead_letters_cmd(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="report what would be stored; write nothing")
    ] = False,
) -> None:
    """Store dead-lettered usage events that are valid now (exactly once: replaying again adds nothing).

    Exits 1 when some dead letters are still invalid (each is listed with its partition and offset)."""
    from kafka.errors import KafkaError
    from psycopg2 import OperationalError

    from cli.main import fail, settings_or_exit
    from usage.deadletters import replay_dead_letters

    settings = settings_or_exit()
    try:
        report = replay_dead_letters(settings, dry_run=dry_run)
    except KafkaError as exc:
        fail(f"kafka: {exc}")
        raise
    except OperationalError as exc:
        fail(f"database: {str(exc).strip().splitlines()[0] if str(exc).strip() else exc}")
        raise
    for bad in report.still_bad:
        typer.echo(
            f"still bad at partition {bad.partition} offset {bad.offset}: {bad.reason[:300]}", err=True
        )
    typer.echo(report.summary(dry_run))
    if report.still_bad:
        raise typer.Exit(1)
