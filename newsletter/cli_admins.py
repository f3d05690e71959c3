"""The `newsletter admins` commands: add, list, unlock, set-password, set-role and remove admin accounts."""

from __future__ import annotations

import sys

import click
from flask.cli import with_appcontext

from . import accounts, login_throttle
from .extensions import db
from .models import ROLES


def _read_password() -> str:
    # Never an argument: arguments end up in shell history and `ps`.
    if sys.stdin.isatty():
        return click.prompt("Password", hide_input=True, confirmation_prompt=True)
    return sys.stdin.readline().rstrip("\n")


def _when(moment: object) -> str:
    return moment.strftime("%Y-%m-%d %H:%M") if moment else "-"  # type: ignore[attr-defined]


@click.group()
def admins() -> None:
    """Admin accounts of the /admin area."""


@admins.command("add")
@click.argument("email")
@click.option("--role", type=click.Choice(ROLES), default="admin", show_default=True,
              help="viewer: read and export only.")
@with_appcontext
def add_admin(email: str, role: str) -> None:
    """Add an admin account; the password is asked for (or read from stdin), never an argument."""
    password = _read_password()
    try:
        admin = accounts.create_admin(db.session, email, password, role)
    except accounts.AccountError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    click.echo(f"Added {admin.role} {admin.email}")


@admins.command("list")
@with_appcontext
def list_admins() -> None:
    """Every account: role, last login, last seen, and whether it was removed."""
    rows = accounts.list_admins(db.session)
    if not rows:
        click.echo("No admin accounts yet. Add one: newsletter admins add you@example.org")
        return
    width = max(len(admin.email) for admin in rows)
    click.echo(f"{'email':<{width}}  {'role':<6}  {'last login':<16}  {'last seen':<16}  state")
    for admin in rows:
        state = f"removed {_when(admin.removed_at)}" if admin.removed_at else "active"
        click.echo(f"{admin.email:<{width}}  {admin.role:<6}  {_when(admin.last_login_at):<16}  "
                   f"{_when(accounts.last_seen(db.session, admin.id)):<16}  {state}")


@admins.command("unlock")
@click.argument("email")
@click.option("--ip", "ip_address", default=None, help="Also forget the failed logins from this client IP.")
@with_appcontext
def unlock(email: str, ip_address: str | None) -> None:
    """Forget the failed logins counted against EMAIL, so that it can log in from anywhere again at once."""
    if not login_throttle.counts_shared():
        # Clearing this command's own memory would change nothing the web processes see.
        raise click.ClickException(
            "The failed-login counts live in each web process's memory (no NEWSLETTER_REDIS_URL), out of this "
            "command's reach: restarting the web processes clears them; `unlock` works when NEWSLETTER_REDIS_URL "
            "shares them.")
    login_throttle.clear_account(email)
    if ip_address:
        login_throttle.clear_ip(ip_address.strip())
    also = f" and from {ip_address.strip()}" if ip_address else ""
    click.echo(f"Forgot the failed logins of {email.strip()}{also}.")


@admins.command("set-password")
@click.argument("email")
@with_appcontext
def set_password(email: str) -> None:
    """Give EMAIL a new password (asked for, or read from stdin); every login of the account ends."""
    password = _read_password()
    try:
        password_hash = accounts.hash_password(password)  # slow: before any transaction
        admin = accounts.get_admin(db.session, email)
        accounts.set_password_hash(db.session, admin.id, password_hash)
    except accounts.AccountError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    click.echo(f"Changed the password of {email.strip()}; its logins have ended.")


@admins.command("set-role")
@click.argument("email")
@click.argument("role", type=click.Choice(ROLES))
@with_appcontext
def set_role(email: str, role: str) -> None:
    """Make EMAIL an admin (changes things) or a viewer (reads and exports only)."""
    try:
        admin = accounts.set_role(db.session, email, role)
    except accounts.AccountError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    click.echo(f"{admin.email} is now {admin.role}")


@admins.command("remove")
@click.argument("email")
@with_appcontext
def remove(email: str) -> None:
    """Remove EMAIL's account: its logins end at once; `admins add` brings it back with a new password."""
    try:
        admin = accounts.remove_admin(db.session, email)
    except accounts.AccountError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    click.echo(f"Removed {admin.email}; its logins have ended.")
