"""The `newsletter outbox` commands: how the outbox stands, and sending failed messages again."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import click
from flask import current_app
from flask.cli import with_appcontext

from . import outbox, suppression_list
from .extensions import db
from .models import MAX_ID, utcnow

DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class Since(click.ParamType):
    """A moment: an ISO date or time (UTC unless it says otherwise), or a duration back from now (30m, 12h, 2d)."""

    name = "DATE|DURATION"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> datetime:
        if isinstance(value, datetime):
            return value
        text = str(value).strip()
        duration = re.fullmatch(r"(\d{1,9})\s*([smhdw])", text)
        if duration:
            try:
                return utcnow() - timedelta(seconds=int(duration[1]) * DURATION_UNITS[duration[2]])
            except OverflowError:
                self.fail(f"{text!r} reaches back before the year 1", param, ctx)
        try:
            moment = datetime.fromisoformat(text)
        except ValueError:
            self.fail(f"{text!r} is neither a date (2026-12-01, 2026-12-01T09:30) nor a duration (30m, 12h, 2d)",
                      param, ctx)
        return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@click.group("outbox")
def outbox_group() -> None:
    """How the outbox of emails stands; send failed ones again."""


@outbox_group.command("status")
@with_appcontext
def status() -> None:
    """Messages per status, the oldest pending one's age, how many are due now, the last error."""
    summary = outbox.status_summary(db.session)
    db.session.rollback()
    click.echo("  ".join(f"{name} {number}" for name, number in summary.counts.items()))
    if summary.oldest_pending_age is None:
        click.echo("Nothing waits to be sent.")
    else:
        click.echo(f"Oldest pending message: {_age(summary.oldest_pending_age)} old; due now: {summary.due_now}")
    if summary.last_error:
        click.echo(f"Last error of a pending message: {outbox.without_addresses(summary.last_error)}")


@outbox_group.command("retry")
@click.option("--since", type=Since(), default=None,
              help="Only messages that failed since then: a date (UTC) or a duration back from now (e.g. 2h, 3d).")
@click.option("--id", "message_id", type=click.IntRange(min=1, max=MAX_ID), default=None,
              help="Only this message.")
@with_appcontext
def retry(since: datetime | None, message_id: int | None) -> None:
    """Queue failed messages again: pending, no attempts spent, due now.

    Messages cancelled because their reader was erased or blocked are never sent again.
    """
    retried = outbox.retry_failed(db.session, current_app.config, since=since, message_id=message_id)
    db.session.commit()
    queued = retried.queued
    if retried.skipped:
        reasons = ", ".join(f"{count} {suppression_list.REASON_LABELS.get(reason, reason).lower()}"
                            for reason, count in sorted(retried.suppressed.items()))
        click.echo(f"Skipped {retried.skipped} message{'' if retried.skipped == 1 else 's'} to addresses on the "
                   f"suppression list ({reasons}): left failed, with their last error; lift an entry first to "
                   "send to its address again.")
    if message_id is not None and not queued:
        raise click.ClickException(f"Message {message_id} was not queued again: there is no such message, it has "
                                   "not failed, it was cancelled because its reader was erased or blocked, or its "
                                   "address is on the suppression list.")
    click.echo(f"Queued {queued} failed message{'' if queued == 1 else 's'} again.")


def _age(age: timedelta) -> str:
    seconds = max(int(age.total_seconds()), 0)
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 2 * 3600:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60} min"
    return f"{seconds // 86400} days"
