"""`eduaiq scim token ...`: the bearer token an institution's IdP (Entra ID, Okta, midPoint) provisions
people and groups with, at https://<host>/scim/v2 (docs/scim.md). admin_api/scim/tokens.py does the work."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

import typer
from sqlalchemy.ext.asyncio import AsyncSession

scim_app = typer.Typer(no_args_is_help=True, help="SCIM provisioning: the IdP's bearer token.")
token_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke an institution's SCIM tokens.")
scim_app.add_typer(token_app, name="token")

T = TypeVar("T")
Institution = Annotated[str, typer.Option("--institution", "-i", help="the institution's id")]


def _run(step: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """One transaction against the configured database; a refusal is one line and exit 1."""
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
    except LookupError as exc:
        fail(str(exc.args[0]) if exc.args else str(exc))
        raise


@token_app.command("create")
def create_cmd(institution: Institution) -> None:
    """Make a token for the institution's IdP. It is printed once (only its SHA-256 is kept): paste it
    into the IdP as the secret token."""
    from admin_api.scim.tokens import create_token

    row, secret = _run(lambda s: create_token(s, institution, "cli"))
    typer.echo(f"SCIM token {row.id} for {institution} (shown once, store it in the IdP now):")
    typer.echo(secret)


@token_app.command("list")
def list_cmd(institution: Institution) -> None:
    """The institution's tokens: id, prefix, created, revoked."""
    from admin_api.scim.tokens import list_tokens

    for row in _run(lambda s: list_tokens(s, institution)):
        revoked = f"revoked {row.revoked_at:%Y-%m-%d %H:%M}" if row.revoked_at else "active"
        typer.echo(f"{row.id}  {row.prefix}...  created {row.created_at:%Y-%m-%d %H:%M}  {revoked}")


@token_app.command("revoke")
def revoke_cmd(token_id: Annotated[str, typer.Argument(help="the token's id (eduaiq scim token list)")],
               institution: Institution) -> None:  # fmt: skip
    """Revoke a token: the IdP's next request with it is refused (401)."""
    from admin_api.scim.tokens import revoke_token

    done = _run(lambda s: revoke_token(s, institution, token_id, "cli"))
    typer.echo(f"{token_id}: {'revoked' if done else 'already revoked'}")
