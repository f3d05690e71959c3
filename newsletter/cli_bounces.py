"""The `newsletter bounce-mail` command: record the bounces and complaints in a message from the bounce mailbox."""

from __future__ import annotations

from typing import Any, BinaryIO

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy.exc import SQLAlchemyError

from . import bounce_reports, outbox
from .extensions import db

# sysexits.h EX_TEMPFAIL: Postfix, Exim and fetchmail keep the message and deliver it again later.
EX_TEMPFAIL = 75
_KINDS = {"hard_bounce": "hard bounce", "soft_bounce": "soft bounce", "complaint": "complaint"}


@click.command("bounce-mail")
@click.argument("message", type=click.File("rb"), default="-")
@with_appcontext
def bounce_mail(message: BinaryIO) -> None:
    """Record the bounces and complaints in one message from the bounce mailbox (MESSAGE file or stdin).

    It reads a delivery status notification (RFC 3464, and the many non-standard bounce formats
    flufl.bounce knows) or a spam complaint in ARF (RFC 5965). A permanent failure (a hard bounce)
    and a complaint suppress the address at once. A failure with a transient status (a full
    mailbox) is a soft bounce: NEWSLETTER_SOFT_BOUNCE_LIMIT of them within
    NEWSLETTER_SOFT_BOUNCE_WINDOW suppress it; a delay warning records nothing. Only a report that
    returns a message we sent, about the address we sent it to, is recorded; each message counts
    once however many notifications speak of it.
    Prints one line per recipient recorded.

    Point the bounce mailbox's delivery at it (a pipe alias, an Exim pipe transport, a fetchmail
    mda). Exit codes are what a mail server expects of such a pipe: 0 whenever the message was
    read, even if it held nothing to record (an out-of-office reply, a normal email, a malformed
    message: said on stderr), because any other code makes the server bounce the message back or
    retry it; 75 (EX_TEMPFAIL) when the database is unavailable, so that the server keeps the
    message and delivers it again later; 2 only for a wrong command line (a MESSAGE file that
    does not exist). Only the first 10 MB of a message are read.
    """
    raw, cut = _read_capped(message)
    if cut:
        click.echo(f"The message is larger than {bounce_reports.MAX_MESSAGE_BYTES // (1024 * 1024)} MB: "
                   "only its beginning was read (reports come before the returned message).", err=True)
    reading = bounce_reports.read(raw)
    try:
        outcomes = bounce_reports.record(db.session, current_app.config, reading)
        db.session.commit()
    except SQLAlchemyError as error:
        db.session.rollback()
        click.echo(f"The database is unavailable ({outbox.describe_error(error)}); nothing was recorded. "
                   f"Exit {EX_TEMPFAIL}: the mail server will deliver the message again later.", err=True)
        raise SystemExit(EX_TEMPFAIL) from None
    if not outcomes:
        click.echo(f"Nothing recognized: {reading.nothing_because or 'no recipient found'}.", err=True)
        return
    for outcome in outcomes:
        click.echo(_describe(outcome, current_app.config))


def _read_capped(stream: BinaryIO) -> tuple[bytes, bool]:
    """The first MAX_MESSAGE_BYTES of the stream, and whether there was more (read and dropped)."""
    limit = bounce_reports.MAX_MESSAGE_BYTES
    raw = stream.read(limit + 1)
    if len(raw) <= limit:
        return raw, False
    # Read to the end: a pipe closed early makes the mail server count the delivery as failed.
    while stream.read(1024 * 1024):
        pass
    return raw[:limit], True


def _describe(outcome: bounce_reports.Outcome, config: dict[str, Any]) -> str:
    report = outcome.report
    what = f"{_KINDS[report.kind]} of {report.address}"
    if not outcome.new:
        what += " (already recorded: this message was read before)"
    if outcome.suppression_reason is not None:
        return f"{what}: suppressed ({outcome.suppression_reason.replace('_', ' ')})"
    days = f"{config['NEWSLETTER_SOFT_BOUNCE_WINDOW'] / 86400:g}"
    return (f"{what}: recorded, not suppressed (suppressed after {config['NEWSLETTER_SOFT_BOUNCE_LIMIT']} "
            f"soft bounces within {days} days)")
