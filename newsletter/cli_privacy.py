"""The `newsletter purge-pending` command: forget readers who never confirmed, after the retention period."""

from __future__ import annotations

import click
from flask import current_app
from flask.cli import with_appcontext

from . import imports, privacy
from .extensions import db


@click.command("purge-pending")
# At most a century: a cutoff further back is before the calendar's year 1.
@click.option("--days", type=click.IntRange(min=1, max=36_500), default=None,
              help="Readers inactive for longer than this many days go (default NEWSLETTER_PENDING_RETENTION_DAYS).")
@with_appcontext
def purge_pending(days: int | None) -> None:
    """Delete readers who never confirmed anything and last asked, or were sent a confirmation, over N days ago.

    Uploaded import files not imported within NEWSLETTER_IMPORT_KEEP_UPLOADS are deleted too.
    Run it daily, e.g. from cron. Confirmed (even if unsubscribed later), blocked and erased
    readers are never touched.
    """
    days = days or current_app.config["NEWSLETTER_PENDING_RETENTION_DAYS"]
    purged = privacy.purge_pending(db.session, days)
    db.session.commit()
    click.echo(f"Purged {purged} never-confirmed reader{'' if purged == 1 else 's'} older than {days} days.")
    uploads = imports.delete_old_uploads(db.session, current_app.config)
    if uploads:
        click.echo(f"Deleted {uploads} uploaded import file{'' if uploads == 1 else 's'} never imported.")
