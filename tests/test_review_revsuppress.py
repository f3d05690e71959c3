"""Review of issue 10's suppression list (revsuppress): findings that fail today."""

from __future__ import annotations

from pathlib import Path

from newsletter import privacy, suppressions
from newsletter.extensions import db

from .conftest import query

DSN = b"""From: MAILER-DAEMON@mx.example.net
To: bounces@news.example
Subject: Delivery Status Notification (Failure)
Message-ID: <dsn-1@mx.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain

Delivery failed permanently.

--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; Erase.Me@example.org
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 user unknown

--b1--
"""

TABLES = ("readers", "subscriptions", "consent_events", "outbox_messages", "suppressions", "delivery_events",
          "webhook_nonces", "imports", "import_refusals", "exports")


def leftovers(app, needle: str) -> list[tuple[str, tuple]]:
    found = []
    for table in TABLES:
        for row in query(app, f"SELECT * FROM {table}"):
            if any(needle in str(value).lower() for value in row):
                found.append((table, tuple(row)))
    return found


def erase(app, address: str) -> None:
    with app.app_context():
        reader = query(app, "SELECT id FROM readers WHERE email = :a", a=address)[0][0]
        privacy.erase_reader(db.session, reader, source=privacy.Source(channel="admin"), config=app.config)
        db.session.commit()
        db.session.remove()


def test_erasure_leaves_no_address_in_the_event_id_of_a_piped_bounce(app, client, runner):
    assert client.post("/api/v1/subscriptions", json={"email": "Erase.Me@example.org",
                                                      "newsletters": ["daily-briefing"]}).status_code == 202
    result = runner.invoke(args=["bounce-mail"], input=DSN)
    assert result.exit_code == 0, result.output

    erase(app, "Erase.Me@example.org")

    # bounce_reports._event_id keeps "<message-id> erase.me@example.org" in delivery_events.provider_event_id.
    assert leftovers(app, "erase.me@example.org") == []


def test_erasure_leaves_no_address_in_an_imports_refused_rows(app, client, runner, tmp_path: Path):
    assert client.post("/api/v1/subscriptions", json={"email": "erase.me@example.org",
                                                      "newsletters": ["daily-briefing"]}).status_code == 202
    with app.app_context():
        suppressions.suppress(db.session, app.config, "erase.me@example.org", reason="hard_bounce", source="smtp")
        db.session.commit()
        db.session.remove()
    file = tmp_path / "list.csv"
    file.write_text("email\nerase.me@example.org\nERASE.ME@example.org\n")
    result = runner.invoke(args=["import", str(file), "--newsletter", "daily-briefing", "--format", "csv"])
    assert result.exit_code == 0, result.output

    erase(app, "erase.me@example.org")

    # import_refusals.email keeps both spellings of the erased address.
    assert leftovers(app, "erase.me@example.org") == []


def test_outbox_retry_does_not_queue_again_a_message_to_a_suppressed_address(app, client, runner):
    assert client.post("/api/v1/subscriptions", json={"email": "gone@example.org",
                                                      "newsletters": ["daily-briefing"]}).status_code == 202
    with app.app_context():
        db.session.execute(db.text("UPDATE outbox_messages SET status = 'failed', "
                                   "last_error = '550 5.1.1 <gone@example.org>: Recipient address rejected'"))
        suppressions.suppress(db.session, app.config, "gone@example.org", reason="hard_bounce", source="smtp")
        db.session.commit()
        db.session.remove()

    result = runner.invoke(args=["outbox", "retry"])

    # Today: "Queued 1 failed message again." and the message is pending again, to a suppressed address
    # (only the sender's last guard stops it, and the original diagnostic is lost).
    assert query(app, "SELECT status FROM outbox_messages") == [("failed",)], result.output
    assert "Queued 1" not in result.output


def test_rotating_the_secret_key_as_the_readme_says_keeps_the_suppression_list_working(
        database_url, instance_dir, monkeypatch):
    from newsletter import create_app

    from .conftest import close_app

    # The README: "To rotate the secret key, move the old one into NEWSLETTER_SECRET_KEY_FALLBACKS and set a
    # new one". NEWSLETTER_SUPPRESSION_KEY is left unset, as the README's configuration table never names it.
    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", database_url)
    monkeypatch.delenv("NEWSLETTER_SUPPRESSION_KEY", raising=False)
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "the-old-key-" + "x" * 40)
    before = create_app({"TESTING": True})
    with before.app_context():
        suppressions.suppress(db.session, before.config, "complained@example.org", reason="complaint",
                              source="ses")
        db.session.commit()
    close_app(before)

    monkeypatch.setenv("NEWSLETTER_SECRET_KEY_FALLBACKS", "the-old-key-" + "x" * 40)
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "the-new-key-" + "y" * 40)
    after = create_app({"TESTING": True})
    try:
        with after.app_context():
            # Today: None. The complaint no longer stops anything: signups, confirmations, the worker's guard.
            assert suppressions.mail_stopped(db.session, after.config, "complained@example.org") is not None
    finally:
        close_app(after)


def test_lifting_the_bounce_entry_of_an_erased_reader_does_not_let_an_import_bring_them_back(app, client, runner,
                                                                                             tmp_path: Path):
    assert client.post("/api/v1/subscriptions", json={"email": "bounced.then.erased@example.org",
                                                      "newsletters": ["daily-briefing"]}).status_code == 202
    with app.app_context():
        entry = suppressions.suppress(db.session, app.config, "bounced.then.erased@example.org",
                                      reason="hard_bounce", source="smtp")
        db.session.commit()
        entry_id = entry.id
        db.session.remove()
    erase(app, "bounced.then.erased@example.org")
    # Erasure kept the hard_bounce entry (without its address) and added no `erased` entry.
    with app.app_context():
        from newsletter import suppression_list

        # An admin lifts it (e.g. the mailbox works again); the page shows "An erased reader (no address kept)".
        suppression_list.lift(db.session, app.config, entry_id, "mailbox fixed", admin_id=None)
        db.session.commit()
        db.session.remove()

    file = tmp_path / "old-list.csv"
    file.write_text("email,status,confirmed_at\nbounced.then.erased@example.org,confirmed,2024-01-01T00:00:00Z\n")
    runner.invoke(args=["import", str(file), "--newsletter", "daily-briefing", "--format", "csv",
                        "--unconfirmed", "confirmed"])

    # Today: the import brings the erased person back as a reader.
    assert query(app, "SELECT email FROM readers WHERE email LIKE 'bounced.then.erased%'") == []


def test_two_admins_lifting_a_blocked_entry_at_once_get_no_error(app, client, database_url):
    import threading

    import pytest

    from newsletter import subscriptions, suppression_list

    if not database_url.startswith("postgresql"):
        pytest.skip("row locks: PostgreSQL")
    assert client.post("/api/v1/subscriptions", json={"email": "blocked@example.org",
                                                      "newsletters": ["daily-briefing"]}).status_code == 202
    with app.app_context():
        reader = query(app, "SELECT id FROM readers")[0][0]
        subscriptions.block(db.session, reader, source=subscriptions.Source(channel="admin"), config=app.config)
        db.session.commit()
        entry_id = suppression_list.for_address(db.session, app.config, "blocked@example.org").id
        db.session.remove()

    outcome: dict[str, BaseException | None] = {}
    first_locked = threading.Event()

    def second() -> None:
        with app.app_context():
            try:
                first_locked.wait(5)
                suppression_list.lift(db.session, app.config, entry_id, "second admin", admin_id=None)
                db.session.commit()
                outcome["second"] = None
            except BaseException as error:  # noqa: BLE001
                outcome["second"] = error
            finally:
                db.session.remove()

    thread = threading.Thread(target=second)
    with app.app_context():
        suppression_list.lift(db.session, app.config, entry_id, "first admin", admin_id=None)  # reader row locked
        thread.start()
        first_locked.set()
        thread.join(1.5)  # the second waits on the reader's lock
        db.session.commit()
        db.session.remove()
    thread.join(10)

    # Today: subscriptions.ActionRefused("This address is not blocked.") escapes the view: a 500 for the second admin
    # (the view only catches RefusedChange and UnknownSuppression).
    error = outcome["second"]
    assert error is None or isinstance(error, suppressions.UnknownSuppression), repr(error)


def test_the_docs_say_a_lifted_address_is_mailed_again_only_after_it_signs_up_and_confirms_again(app, client, runner):
    # docs-snippets/suppression.md: "A lifted address is mailed again only once its owner signs up and confirms
    # again." The suppression leaves the subscription `confirmed`: once lifted, the very next export (what the
    # sending platform mails) has the address back, with no new signup.
    assert client.post("/api/v1/subscriptions", json={"email": "was.bounced@example.org",
                                                      "newsletters": ["daily-briefing"]}).status_code == 202
    with app.app_context():
        db.session.execute(db.text("UPDATE subscriptions SET status = 'confirmed', confirmed_at = pending_since"))
        entry = suppressions.suppress(db.session, app.config, "was.bounced@example.org", reason="hard_bounce",
                                      source="smtp")
        db.session.commit()
        assert "was.bounced" not in runner.invoke(args=["export", "daily-briefing", "--status", "confirmed"]).output
        suppressions.lift(db.session, entry.id, admin_id=None, note="mailbox works again")
        db.session.commit()
        db.session.remove()

    exported = runner.invoke(args=["export", "daily-briefing", "--status", "confirmed"]).output
    assert "was.bounced@example.org" not in exported


def test_a_bounce_arriving_after_erasure_does_not_put_the_address_back(app, client):
    assert client.post("/api/v1/subscriptions", json={"email": "late.bounce@example.org",
                                                      "newsletters": ["daily-briefing"]}).status_code == 202
    erase(app, "late.bounce@example.org")
    assert leftovers(app, "late.bounce@example.org") == []
    # The sending platform mailed the last issue before its list was updated: a complaint arrives by webhook.
    with app.app_context():
        from newsletter import provider_events

        provider_events.record(db.session, app.config, "generic", [provider_events.ProviderEvent(
            address="late.bounce@example.org", kind="complaint", occurred_at=None,
            diagnostic="Feedback-ID: abuse report for late.bounce@example.org")])
        db.session.commit()
        db.session.remove()

    # Today: the `erased` entry gives way to a `complaint` entry holding the address in clear (and the diagnostic
    # quoting it); lifting that entry later also ends the do-not-contact protection.
    assert leftovers(app, "late.bounce@example.org") == []
