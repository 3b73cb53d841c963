"""`eduaiq user ...`: a person's life cycle from the operator's shell (admin_api/people.py does the work)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession

user_app = typer.Typer(no_args_is_help=True, help="People: deprovision, reinstate, erase.")

T = TypeVar("T")
Institution = Annotated[str, typer.Option("--institution", "-i", help="the institution's id")]
UserId = Annotated[str, typer.Argument(help="the user's id")]


def _run(step: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """One transaction against the configured database; a refusal is one line and exit 1."""
    from admin_api.people import PersonError
    from cli.main import fail, settings_or_exit
    from core.db import make_async_engine, session_factory

    async def go() -> T:
        engine = make_async_engine(settings_or_exit().database_url, pool_size=1)
        try:
            async with session_factory(engine)() as session, session.begin():
                return await step(session)
        finally:
            await engine.dispose()

    try:
        return asyncio.run(go())
    except PersonError as exc:
        fail(str(exc))
        raise


@user_app.command("deprovision")
def deprovision_cmd(user: UserId, institution: Institution) -> None:
    """The person left: their API keys stop on every gateway within the key cache (seconds), their tokens
    and sessions at once. Their rows and usage stay."""
    from admin_api.people import deprovision

    done = _run(lambda s: deprovision(s, institution, user, "cli"))
    typer.echo(f"{user}: {'deprovisioned' if done else 'already deprovisioned'}")


@user_app.command("reinstate")
def reinstate_cmd(user: UserId, institution: Institution) -> None:
    """Undo a deprovisioning: the person's remaining keys work again."""
    from admin_api.people import reinstate

    done = _run(lambda s: reinstate(s, institution, user, "cli"))
    typer.echo(f"{user}: {'reinstated' if done else 'was not deprovisioned'}")


@user_app.command("erase")
def erase_cmd(user: UserId, institution: Institution) -> None:
    """Blank a deprovisioned person's name and e-mail and replace their SSO subject with a pseudonym (signing
    in again is refused), here and in the audit log (a GDPR or FERPA request); imports keep them blank; the
    user id and every amount stay."""
    from admin_api.people import erase

    entries = _run(lambda s: erase(s, institution, user, "cli"))
    typer.echo(f"{user}: erased (personal fields blanked in {entries} audit entries)")
