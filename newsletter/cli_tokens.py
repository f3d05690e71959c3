"""The `newsletter tokens` commands: create (the secret printed once), list and revoke API tokens."""

from __future__ import annotations

import click
from flask.cli import with_appcontext
from sqlalchemy import select

from . import api_tokens
from .extensions import db
from .models import ROLES, ApiToken


@click.group()
def tokens() -> None:
    """API tokens for /api/v1 (sent as Authorization: Bearer …)."""


@tokens.command("create")
@click.option("--name", required=True, help="Who or what uses it, e.g. 'CRM sync'.")
@click.option("--role", type=click.Choice(ROLES), default="admin", show_default=True,
              help="viewer: read and export only; admin: also unsubscribe and erase readers.")
@with_appcontext
def create(name: str, role: str) -> None:
    """Make a token and print its secret: it is shown this once (only a hash is stored)."""
    try:
        token, secret = api_tokens.create_token(db.session, name, role)
    except ValueError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    click.echo(f"Created {token.role} token {token.id} ({token.name}). Copy it now, it is not shown again:", err=True)
    click.echo(secret)


@tokens.command("list")
@with_appcontext
def list_tokens() -> None:
    """Every token: id, prefix, role, created, last used, revoked, name."""
    rows = db.session.scalars(select(ApiToken).order_by(ApiToken.id)).all()
    if not rows:
        click.echo("No API tokens yet. Make one: newsletter tokens create --name 'CRM sync' --role viewer")
        return

    def when(moment) -> str:
        return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"

    click.echo(f"{'id':>4}  {'prefix':<13} {'role':<6} {'created':<16}  {'last used':<16}  {'revoked':<16}  name")
    for token in rows:
        click.echo(f"{token.id:>4}  {token.prefix + '…':<13} {token.role:<6} {when(token.created_at):<16}  "
                   f"{when(token.last_used_at):<16}  {when(token.revoked_at):<16}  {token.name}")


@tokens.command("revoke")
@click.argument("token_id", metavar="ID", type=int)
@with_appcontext
def revoke(token_id: int) -> None:
    """Revoke token ID (see `newsletter tokens list`): it stops working at once."""
    token = api_tokens.revoke(db.session, token_id)
    if token is None:
        raise click.ClickException(f"There is no API token {token_id}: see `newsletter tokens list`.")
    db.session.commit()
    click.echo(f"Revoked token {token.id} ({token.name}).")
