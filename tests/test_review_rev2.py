"""Review rev2 (issue 10, second round): end-to-end findings, each a failing test."""

from __future__ import annotations

from datetime import timedelta
from email.utils import parsedate_to_datetime

import pytest
import sqlalchemy as sa

from newsletter.extensions import db
from newsletter.models import OutboxMessage, utcnow

from .import_files import member, readers_of_files, write_members  # noqa: F401 (a fixture)
from .test_imports import run_import

pytestmark = pytest.mark.usefixtures("readers_of_files")


def wait(app, how_long: timedelta) -> None:
    """A real wait: every stored outbox time (queued, due, sent) is that much further in the past."""
    with app.app_context():
        for message in db.session.scalars(sa.select(OutboxMessage)):
            message.next_attempt_at -= how_long
            message.created_at -= how_long
            if message.sent_at is not None:
                message.sent_at -= how_long
        db.session.commit()
        db.session.remove()


def test_an_import_confirmation_sent_hours_later_is_dated_when_it_is_sent(app, tmp_path, smtp, drain):
    """`ask` spreads confirmations over hours or days (500 an hour by default: 100,000 rows take 8 days).

    Each email's Date: header is the time of the import, not of sending: the 3rd of these, sent two
    hours after the import, says it was written two hours before it left; at the default rate a big
    list's later emails are days old on arrival. Spam filters score exactly that (SpamAssassin
    DATE_IN_PAST_03_06 … DATE_IN_PAST_96_XX), and mail clients sort it days down the inbox: the rate
    that is there to keep the confirmations out of spam folders sends them there.
    """
    app.config["NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR"] = 1
    path = write_members(tmp_path / "subscribed_members_export_a.csv",
                         [member(f"reader{i}@example.com") for i in range(3)])
    assert run_import(app, path).counts["confirmations_queued"] == 3
    drain()
    for _hour in range(2):
        wait(app, timedelta(hours=1, minutes=1))
        drain()
    messages = smtp.inbox.wait_for(3)
    last = next(message for message in messages if str(message["To"]) == "reader2@example.com")
    dated = parsedate_to_datetime(last["Date"])
    assert utcnow() - dated < timedelta(minutes=5), f"sent now, dated {dated} ({utcnow() - dated} ago)"


def test_our_own_export_with_its_suppressed_column_does_not_bring_complainers_back(app, tmp_path):
    """`newsletter export SLUG --suppressed include` (or `only`), imported into another instance or newsletter.

    The column `suppressed` is reported as ignored, and a reader who complained (pressed "report
    spam") or hard-bounced is imported as a confirmed subscriber, not suppressed: the next export,
    what the sending platform mails, holds them again.
    """
    from newsletter import suppressions

    path = tmp_path / "export.csv"
    path.write_text("email,name,status,subscribed_at,confirmed_at,source,suppressed\r\n"
                    "carol@example.org,Carol,confirmed,2024-03-02T10:00:00Z,2024-03-02T10:00:00Z,import,complaint\r\n"
                    "alice@example.org,Alice,confirmed,2024-03-01T10:00:00Z,2024-03-01T10:05:00Z,import,hard_bounce\r\n",
                    encoding="utf-8")
    run_import(app, path)
    with app.app_context():
        stopped = {address: suppressions.mail_stopped(db.session, app.config, address)
                   for address in ("carol@example.org", "alice@example.org")}
        db.session.remove()
    assert all(stop is not None for stop in stopped.values()), stopped


def test_an_exported_unsubscribe_imported_back_is_not_an_unsubscribe_of_today(app, tmp_path):
    """Our export has no unsubscribe time: importing it records every unsubscribed reader as unsubscribing now.

    Moving a list with 10,000 long-gone readers to another newsletter or instance puts 10,000
    unsubscribes on today in the dashboard's chart, and each subscription's unsubscribed_at is the
    import's time, years after the reader left.
    """
    from .conftest import query

    path = tmp_path / "export.csv"
    path.write_text("email,name,status,subscribed_at,confirmed_at,source\r\n"
                    "uma@example.org,Uma,unsubscribed,2023-01-01T10:00:00Z,2023-01-01T10:01:00Z,import\r\n",
                    encoding="utf-8")
    assert run_import(app, path).counts["new"] == 1
    today = utcnow() - timedelta(hours=1)
    assert query(app, "SELECT count(*) FROM consent_events WHERE action = 'unsubscribed' AND occurred_at > :t",
                 t=today)[0][0] == 0
