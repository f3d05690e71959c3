"""The `newsletter` command: a Flask CLI group with the service's own commands."""

from __future__ import annotations

import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import click
from flask import Flask, current_app
from flask.cli import FlaskGroup, with_appcontext
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.serving import WSGIRequestHandler

from . import outages
from .cli_admins import admins
from .cli_bounces import bounce_mail
from .cli_export import export
from .cli_import import import_command
from .cli_outbox import outbox_group
from .cli_privacy import purge_pending
from .cli_tokens import tokens
from .config import ConfigError
from .extensions import db
from .models import Newsletter, Subscription
from .signed_paths import redact


def _create_app() -> Flask:
    from . import create_app

    try:
        return create_app()
    except ConfigError as error:
        raise click.ClickException(str(error)) from None


class _CommandGroup(FlaskGroup):
    """The `newsletter` group: a command that meets the database out of reach says so in one line."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except SQLAlchemyError as error:
            if outages.schema_missing(error):
                raise click.ClickException(
                    f"The database has no tables for this yet ({outages.summary(error)}): "
                    "run `newsletter db upgrade`.") from None
            if not outages.database_unavailable(error):
                raise
            raise click.ClickException(f"The database is unavailable: {outages.summary(error)}") from None


@click.group(cls=_CommandGroup, create_app=_create_app, add_version_option=False,
             load_dotenv=False)
def main() -> None:
    """Self-hosted newsletter signups with double opt-in."""


def register_commands(app: Flask) -> None:
    app.cli.add_command(newsletters)
    app.cli.add_command(worker)
    app.cli.add_command(serve)
    app.cli.add_command(unsubscribe_mail)
    app.cli.add_command(bounce_mail)
    app.cli.add_command(admins)
    app.cli.add_command(export)
    app.cli.add_command(import_command)
    app.cli.add_command(tokens)
    app.cli.add_command(purge_pending)
    app.cli.add_command(outbox_group)


@click.group()
def newsletters() -> None:
    """Add, edit, archive and list newsletters."""


@newsletters.command("add")
@click.argument("slug")
@click.option("--name", required=True, help="The name readers see.")
@click.option("--description", default="", help="One or two sentences for the signup form.")
@click.option("--author", default=None, help="Who writes it, if one person does.")
@click.option("--sender", default=None, help="From: header for its emails (default NEWSLETTER_MAIL_FROM).")
@click.option("--welcome/--no-welcome", default=True, show_default=True, help="Send a welcome email on confirmation.")
@click.option("--welcome-text", default=None, help="The welcome email's text (default: the description).")
@with_appcontext
def add_newsletter(slug: str, name: str, description: str, author: str | None, sender: str | None,
                   welcome: bool, welcome_text: str | None) -> None:
    """Add the newsletter SLUG (the short name used in URLs and the API)."""
    from . import catalog

    try:
        newsletter = catalog.add_newsletter(db.session, slug, name=name, description=description, author=author,
                                            sender=sender, send_welcome=welcome, welcome_text=welcome_text)
    except catalog.CatalogError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    click.echo(f"Added {newsletter.slug}: {newsletter.name}")


@newsletters.command("edit")
@click.argument("slug")
@click.option("--name", default=None, help="The name readers see.")
@click.option("--description", default=None, help="One or two sentences for the signup form.")
@click.option("--author", default=None, help="Who writes it; '' for nobody in particular.")
@click.option("--sender", default=None, help="From: header for its emails; '' for NEWSLETTER_MAIL_FROM.")
@click.option("--welcome/--no-welcome", default=None, help="Send a welcome email on confirmation, or not.")
@click.option("--welcome-text", default=None, help="The welcome email's text; '' to use the description.")
@with_appcontext
def edit_newsletter(slug: str, name: str | None, description: str | None, author: str | None, sender: str | None,
                    welcome: bool | None, welcome_text: str | None) -> None:
    """Change the fields of newsletter SLUG given as options (the slug itself never changes)."""
    from . import catalog

    try:
        newsletter = catalog.get_newsletter(db.session, slug)
        changed = catalog.edit_newsletter(newsletter, name=name, description=description, author=author,
                                          sender=sender, send_welcome=welcome, welcome_text=welcome_text)
    except catalog.CatalogError as error:
        raise click.ClickException(str(error)) from None
    db.session.commit()
    click.echo(f"Changed {', '.join(changed)} of {slug}" if changed else f"Nothing to change in {slug}")


def _newsletter(slug: str) -> Any:
    from . import catalog

    try:
        return catalog.get_newsletter(db.session, slug)
    except catalog.CatalogError as error:
        raise click.ClickException(str(error)) from None


@newsletters.command("archive")
@click.argument("slug")
@with_appcontext
def archive_newsletter(slug: str) -> None:
    """Stop newsletter SLUG taking signups; its readers and history stay."""
    from . import catalog

    newsletter = _newsletter(slug)
    done = catalog.archive(newsletter)
    db.session.commit()
    click.echo(f"Archived {slug}: it takes no new signups" if done else f"{slug} was archived already")


@newsletters.command("unarchive")
@click.argument("slug")
@with_appcontext
def unarchive_newsletter(slug: str) -> None:
    """Let the archived newsletter SLUG take signups again."""
    from . import catalog

    newsletter = _newsletter(slug)
    done = catalog.unarchive(newsletter)
    db.session.commit()
    click.echo(f"{slug} is active again" if done else f"{slug} was active already")


@newsletters.command("list")
@with_appcontext
def list_newsletters() -> None:
    """Each newsletter with its number of pending, confirmed and unsubscribed readers."""
    counts: dict[int, dict[str, int]] = {}
    for newsletter_id, status, number in db.session.execute(
        select(Subscription.newsletter_id, Subscription.status, func.count()).group_by(
            Subscription.newsletter_id, Subscription.status)
    ):
        counts.setdefault(newsletter_id, {})[status] = number
    rows = db.session.scalars(select(Newsletter).order_by(Newsletter.slug)).all()
    if not rows:
        click.echo("No newsletters yet. Add one: newsletter newsletters add daily --name 'The Daily Briefing'")
        return
    width = max(len(n.slug) for n in rows)
    click.echo(f"{'slug':<{width}}  {'pending':>8} {'confirmed':>9} {'unsubscribed':>12}  name")
    for newsletter in rows:
        count = counts.get(newsletter.id, {})
        state = "" if newsletter.is_active else "  (archived)"
        click.echo(f"{newsletter.slug:<{width}}  {count.get('pending', 0):>8} {count.get('confirmed', 0):>9} "
                   f"{count.get('unsubscribed', 0):>12}  {newsletter.name}{state}")


@click.command()
@click.option("--once", is_flag=True, help="Send what is due (import confirmations keep to "
              "NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR), run the queued imports, then exit.")
@click.option("--poll", default=2.0, show_default=True, help="Seconds between looks at the outbox.")
@click.option("--max-pause", default=30.0, show_default=True, type=click.FloatRange(min=0.01),
              help="Longest pause in an outage of the database or the mail relay (pauses start at 1 s and double).")
@with_appcontext
def worker(once: bool, poll: float, max_pause: float) -> None:
    """Send the outbox's emails and webhooks and run queued imports; run several on PostgreSQL to send faster.

    It lives through database restarts and mail relay outages: it logs them, pauses and goes on.
    SIGTERM or Ctrl-C stops it after the message in hand; an import it was running is taken up
    again by a worker once its heartbeat is stale (NEWSLETTER_IMPORT_STALE_AFTER).
    """
    from sqlalchemy.exc import SQLAlchemyError

    from . import import_runner, outbox, webhook_sender
    from .mailer import transport_for

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    sender = outbox.Sender(transport_for(app.config), app.config)
    if once:
        try:
            result = sender.drain(db.session)
            webhooks = _deliver_webhooks_once(app)
            imported = import_runner.run_due(db.session, app.config)
            waiting = outbox.import_confirmations_waiting(db.session)
        except SQLAlchemyError as error:
            raise click.ClickException(f"The database is unavailable: {outbox.describe_error(error)}") from None
        finally:
            sender.transport.close()
            db.session.remove()
        not_sent = f", not sent to suppressed addresses {result.suppressed}" if result.suppressed else ""
        # An import's confirmations leave one per 3600/rate seconds: --once sends those due, the rest wait.
        held = (f", {waiting} import confirmation(s) wait for the hourly rate (NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR)"
                if waiting else "")
        click.echo(f"sent {result.sent}, will retry {result.retrying}, failed {result.failed}{not_sent}{held}",
                   err=True)
        if imported:
            click.echo(f"ran {imported} import(s)", err=True)
        if webhooks.sent or webhooks.retrying or webhooks.failed:
            click.echo(f"webhooks: delivered {webhooks.sent}, will retry {webhooks.retrying}, "
                       f"failed {webhooks.failed}", err=True)
        if result.stopped_by_error:
            raise click.ClickException(f"The mail relay is unavailable ({result.stopped_by_error}); "
                                       "the messages wait for it without spending their attempts.")
        return
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    click.echo(f"Worker sending via {_describe_transport(app)}; Ctrl-C to stop.", err=True)
    # Imports in a thread of their own: a long one never holds up the mail.
    import_runner.start_in_worker(app, stopping, poll_seconds=max(poll, 1.0), max_pause=max_pause)
    # Webhooks too: a slow receiver never holds up the mail, nor the mail relay the webhooks.
    webhook_sender.start_in_worker(app, stopping, poll_seconds=min(poll, 1.0), max_pause=max_pause)
    try:
        outbox.run(sender, stopping, poll_seconds=poll, max_pause=max_pause)
    finally:
        if sender.unrecorded:
            click.echo(f"Stopped with {len(sender.unrecorded)} sent or tried message(s) not recorded (the database "
                       "was away): they are sent again once their claim runs out.", err=True)


def _deliver_webhooks_once(app: Flask) -> Any:
    from . import webhook_sender

    sender = webhook_sender.WebhookSender(app.config)
    try:
        return sender.drain(db.session)
    finally:
        sender.close()


@click.command("unsubscribe-mail")
@click.argument("message", type=click.File("rb"), default="-")
@with_appcontext
def unsubscribe_mail(message: Any) -> None:
    """Unsubscribe the reader named by a reply to the List-Unsubscribe mailto (MESSAGE file or stdin).

    Point the unsubscribe mailbox's delivery at this command (e.g. a pipe alias or a fetchmail mda).
    """
    from . import emails, subscriptions, tokens
    from .subscriptions import Source

    token = emails.token_from_unsubscribe_reply(message.read())
    if token is None:
        raise click.ClickException("No unsubscribe token in the subject: expected 'unsubscribe <token>'.")
    try:
        reader_id, newsletter_id = tokens.read_unsubscribe(token)
        left = subscriptions.unsubscribe(db.session, reader_id, newsletter_id, source=Source(channel="mailto"))
    except (tokens.InvalidToken, subscriptions.UnknownReader):
        raise click.ClickException("The unsubscribe token is not valid.") from None
    db.session.commit()
    click.echo(f"Unsubscribed reader {reader_id} from {', '.join(n.slug for n in left) or 'nothing (already out)'}")


def _describe_transport(app: Flask) -> str:
    url = app.config["NEWSLETTER_SMTP_URL"]
    if url:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        return f"SMTP {parts.hostname}:{parts.port or ''}"
    return f"files in {app.config['NEWSLETTER_MAIL_DIR']}"


EXAMPLES: list[dict[str, Any]] = [
    {"slug": "daily-briefing", "name": "The Daily Briefing",
     "description": "The day's most important stories, every weekday morning.", "author": None},
    {"slug": "weekly-explainer", "name": "The Weekly Explainer",
     "description": "One big story, explained in depth, every Sunday.", "author": "Olena Kovalenko"},
]


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=5000, show_default=True, type=int)
@with_appcontext
def serve(host: str, port: int) -> None:
    """Run everything in one process: upgrade the database, seed examples, serve, send mail."""
    from flask_migrate import upgrade
    from werkzeug.serving import run_simple

    from . import catalog, import_runner, outbox, webhook_sender

    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if not os.environ.get("NEWSLETTER_PUBLIC_URL"):
        app.config["NEWSLETTER_PUBLIC_URL"] = f"http://{host}:{port}"
    upgrade()
    if db.session.scalar(select(func.count()).select_from(Newsletter)) == 0:
        for example in EXAMPLES:
            catalog.add_newsletter(db.session, **example)
        db.session.commit()
        click.echo("Added two example newsletters: daily-briefing and weekly-explainer.")
    db.session.remove()
    outbox.attach_drainer(app, outbox.InProcessDrainer(app).start())
    webhook_sender.attach(app, webhook_sender.InProcessWebhookSender(app).start())
    import_runner.kick(app)  # imports queued or cut off before a restart go on
    mail = _describe_transport(app)
    if not app.config["NEWSLETTER_SMTP_URL"]:
        Path(app.config["NEWSLETTER_MAIL_DIR"]).mkdir(parents=True, exist_ok=True)
    click.echo(f"Signup page: http://{host}:{port}/subscribe")
    click.echo(f"Emails are sent as {mail}")
    run_simple(host, port, app, threaded=True, use_reloader=False, request_handler=_RedactingRequestHandler)


class _RedactingRequestHandler(WSGIRequestHandler):
    """The development server's handler, whose access log leaves signed links out."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        path, requestline = getattr(self, "path", None), self.requestline
        if path is not None:
            self.path = redact(path)
        self.requestline = redact(requestline)
        try:
            super().log_request(code, size)
        finally:
            if path is not None:
                self.path = path
            self.requestline = requestline


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
