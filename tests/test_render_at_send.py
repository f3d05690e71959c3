"""An outbox row says what to send; the sender renders the email when it sends it (issue 11).

So the row holds no address or body, the email greets the reader as they are when it leaves, in the
language of the signup, with links signed then, and an erased reader gets nothing. Rows queued before
the upgrade (rendered then) are still sent as they are.
"""

from __future__ import annotations

import sqlalchemy as sa

from newsletter import privacy, subscriptions
from newsletter.extensions import db
from newsletter.models import OutboxMessage, utcnow

from .conftest import link_in, query
from .test_privacy import cells_containing

RENDERED_COLUMNS = "mail_from, to_address, to_name, subject, body_text, body_html, headers"


def sign_up(client, email: str, name: str | None = None, lang: str = "en", newsletters=("daily-briefing",)) -> None:
    answer = client.post("/api/v1/subscriptions", headers={"Accept-Language": lang},
                         json={"email": email, "name": name, "newsletters": list(newsletters)})
    assert answer.status_code == 202, answer.get_data(as_text=True)


def body(message, subtype: str) -> str:
    return message.get_body((subtype,)).get_content().replace("\r\n", "\n")


def test_a_queued_row_holds_what_to_send_and_no_address_or_body(app, client):
    sign_up(client, "olena@example.org", name="Olena Kovalchuk", lang="uk",
            newsletters=("weekly-explainer", "daily-briefing"))

    [row] = query(app, f"SELECT kind, reader_id, newsletter_ids, locale, message_id, {RENDERED_COLUMNS} "
                       "FROM outbox_messages")
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    ids = dict(query(app, "SELECT slug, id FROM newsletters"))
    kind, row_reader, newsletter_ids, locale, message_id, *rendered = row
    assert (kind, row_reader, locale, message_id) == ("confirmation", reader_id, "uk", None)
    newsletter_ids = newsletter_ids if isinstance(newsletter_ids, list) else __import__("json").loads(newsletter_ids)
    assert sorted(newsletter_ids) == sorted([ids["weekly-explainer"], ids["daily-briefing"]])
    assert rendered == [None] * 7
    assert cells_containing(app, "olena@example.org") == ["readers.email"]
    assert cells_containing(app, "Olena Kovalchuk") == ["readers.name"]


def test_the_email_is_rendered_when_sent_in_the_readers_language_greeting_them_and_its_link_confirms(
        app, client, smtp, drain):
    sign_up(client, "olena@example.org", name="Олена", lang="uk")
    assert drain().sent == 1

    [message] = smtp.inbox.wait_for(1)
    assert message["To"].addresses[0].addr_spec == "olena@example.org"
    assert message["To"].addresses[0].display_name == "Олена"
    assert str(message["Subject"]) == "Підтвердьте підписку на розсилку «The Daily Briefing»"
    assert body(message, "plain").startswith("Добрий день, Олена!")
    assert "Добрий день, Олена!" in body(message, "html")
    # The Message-ID given at the claim is the one sent, kept for bounces; still no copy of the email.
    assert query(app, f"SELECT status, message_id, {RENDERED_COLUMNS} FROM outbox_messages") == [
        ("sent", message["Message-ID"], *[None] * 7)]

    link = link_in(message, "/confirm/")
    assert client.post(link[link.index("/confirm/"):]).status_code == 200
    assert query(app, "SELECT status FROM subscriptions") == [("confirmed",)]


def test_a_reader_erased_between_queueing_and_sending_gets_nothing_and_nothing_keeps_the_address(
        app, client, smtp, drain):
    sign_up(client, "gone@example.org", name="Gone Reader")
    sign_up(client, "kept@example.org")
    [(gone_id,)] = query(app, "SELECT id FROM readers WHERE email = 'gone@example.org'")
    with app.app_context():
        privacy.erase_reader(db.session, gone_id, source=subscriptions.Source(channel="admin"), config=app.config)
        db.session.commit()
        db.session.remove()

    result = drain()

    assert result.sent == 1
    assert [envelope[1] for envelope in smtp.inbox.envelopes] == [["kept@example.org"]]
    assert query(app, "SELECT status, last_error FROM outbox_messages WHERE reader_id = :id", id=gone_id) == [
        ("failed", "erased")]
    assert cells_containing(app, "gone@example.org") == []
    assert cells_containing(app, "Gone Reader") == []


def test_an_email_whose_reader_is_erased_but_still_pending_is_not_sent(app, client, smtp, drain):
    # As if the erasure had not cancelled it (a row queued by a transaction that committed just after):
    # the sender itself never sends an erased reader's email.
    sign_up(client, "late@example.org")
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    with app.app_context():
        privacy.erase_reader(db.session, reader_id, source=subscriptions.Source(channel="admin"), config=app.config)
        db.session.execute(sa.update(OutboxMessage).values(status="pending", last_error=None))
        db.session.commit()
        db.session.remove()

    result = drain()

    assert (result.sent, result.suppressed) == (0, 1)
    assert smtp.inbox.messages == []
    assert query(app, "SELECT status, last_error FROM outbox_messages") == [
        ("failed", "Not sent: the reader was erased")]


def test_a_row_queued_before_the_upgrade_is_sent_as_it_is(app, smtp, drain):
    headers = {"List-Unsubscribe": "<https://news.example.org/unsubscribe/old-token>"}
    with app.app_context():
        db.session.execute(sa.insert(OutboxMessage), [{
            "kind": "confirmation", "reader_id": None, "message_id": "<legacy.1@news.example.org>",
            "mail_from": "Old Sender <old@news.example.org>", "to_address": "legacy@example.org",
            "to_name": "Legacy Reader", "subject": "Rendered long ago", "body_text": "The old text body.\n",
            "body_html": "<p>The old HTML body.</p>\n", "headers": headers, "status": "pending", "attempts": 0,
            "created_at": utcnow(), "next_attempt_at": utcnow()}])
        db.session.commit()
        db.session.remove()

    assert drain().sent == 1

    [message] = smtp.inbox.wait_for(1)
    assert str(message["Subject"]) == "Rendered long ago"
    assert str(message["From"]) == "Old Sender <old@news.example.org>"
    assert str(message["To"]) == "Legacy Reader <legacy@example.org>"
    assert message["Message-ID"] == "<legacy.1@news.example.org>"
    assert message["List-Unsubscribe"] == headers["List-Unsubscribe"]
    assert body(message, "plain") == "The old text body.\n"
    assert body(message, "html") == "<p>The old HTML body.</p>\n"
    assert query(app, "SELECT status FROM outbox_messages") == [("sent",)]


def test_a_name_with_html_characters_is_escaped_in_the_html_part_only(app, client, smtp, drain):
    name = '<b>Tom & "Jerry"</b> \'O\'Brien\' \\ %s'
    sign_up(client, "tom@example.org", name=name)
    drain()

    [message] = smtp.inbox.wait_for(1)
    html = body(message, "html")
    assert "<b>Tom" not in html
    assert "Hello &lt;b&gt;Tom &amp; &#34;Jerry&#34;&lt;/b&gt; &#39;O&#39;Brien&#39; \\ %s," in html
    assert body(message, "plain").startswith(f"Hello {name},")
    assert message["To"].addresses[0].display_name == name


def test_a_newsletter_renamed_between_queueing_and_sending_shows_its_name_at_send_time(app, client, smtp, drain):
    # Intended: the email says what the newsletter is called when the reader reads it, not when
    # the signup was queued (the same goes for its author, description and welcome text).
    sign_up(client, "reader@example.org")
    with app.app_context():
        db.session.execute(sa.text("UPDATE newsletters SET name = 'The Morning Briefing' "
                                   "WHERE slug = 'daily-briefing'"))
        db.session.commit()
        db.session.remove()
    drain()

    [message] = smtp.inbox.wait_for(1)
    assert str(message["Subject"]) == "Confirm your subscription to The Morning Briefing"
    assert "The Morning Briefing" in body(message, "plain") and "The Daily Briefing" not in body(message, "plain")


def test_the_email_sender_leaves_webhook_rows_to_their_own_sender(app, client, smtp, drain):
    sign_up(client, "reader@example.org")
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    with app.app_context():
        db.session.execute(sa.insert(OutboxMessage), [{
            "kind": "webhook", "reader_id": reader_id, "event_id": 1, "status": "pending", "attempts": 0,
            "created_at": utcnow(), "next_attempt_at": utcnow()}])
        db.session.commit()
        db.session.remove()

    assert drain().sent == 1

    assert query(app, "SELECT kind, status, attempts, message_id FROM outbox_messages WHERE kind = 'webhook'") == [
        ("webhook", "pending", 0, None)]


def test_a_message_id_is_given_once_and_kept_across_attempts(app, client, smtp, drain):
    app.config["NEWSLETTER_OUTBOX_RETRY_BASE"] = 60
    smtp.inbox.refuse_with = "451 4.3.0 Try again later"
    sign_up(client, "patient@example.org")
    assert query(app, "SELECT message_id FROM outbox_messages") == [(None,)]
    assert drain().retrying == 1
    [(first_id,)] = query(app, "SELECT message_id FROM outbox_messages")
    assert first_id.startswith("<") and first_id.endswith(">")
    smtp.inbox.refuse_with = None
    with app.app_context():
        db.session.execute(sa.update(OutboxMessage).values(next_attempt_at=utcnow()))
        db.session.commit()
        db.session.remove()
    assert drain().sent == 1
    [message] = smtp.inbox.wait_for(1)
    assert message["Message-ID"] == first_id
    assert query(app, "SELECT message_id, attempts FROM outbox_messages") == [(first_id, 2)]
