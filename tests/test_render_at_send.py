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


# --- What the reader did between queueing and sending (checked when the email is sent) ----------


def _confirm_by_link(client, smtp, drain) -> None:
    assert drain().sent == 1
    [message] = smtp.inbox.wait_for(1)
    link = link_in(message, "/confirm/")
    assert client.post(link[link.index("/confirm/"):]).status_code == 200


def _not_sent(app) -> list[tuple[str, str]]:
    return query(app, "SELECT kind, last_error FROM outbox_messages WHERE status = 'failed' ORDER BY id")


def _left_by_retry(app) -> int:
    from newsletter import outbox

    with app.app_context():
        retried = outbox.retry_failed(db.session, app.config)
        db.session.rollback()
        db.session.remove()
    return retried.queued


def test_a_welcome_is_not_sent_for_a_newsletter_the_reader_left_before_it_went_out(app, client, smtp, drain):
    # The relay is down when the reader confirms; they are unsubscribed before the welcome leaves:
    # "Welcome to X" to someone who just left X does not go out, and `outbox retry` leaves it so.
    from newsletter import outbox

    sign_up(client, "left@example.org", name="Left")
    _confirm_by_link(client, smtp, drain)
    assert query(app, "SELECT kind, status FROM outbox_messages ORDER BY id") == [
        ("confirmation", "sent"), ("welcome", "pending")]
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    with app.app_context():
        subscriptions.unsubscribe(db.session, reader_id, None, source=subscriptions.Source(channel="admin"))
        db.session.commit()
        db.session.remove()

    assert drain().suppressed == 1

    assert [str(m["Subject"]) for m in smtp.inbox.messages[1:]] == []
    [(kind, error)] = _not_sent(app)
    assert kind == "welcome" and error.startswith(outbox.CANCELLED_PREFIX) and "no longer subscribed" in error
    assert _left_by_retry(app) == 0


def test_a_confirmation_is_not_sent_when_nothing_it_names_is_pending_any_more(app, client, smtp, drain):
    # Queued for a pending subscription; before it leaves the reader is unsubscribed by an admin:
    # a "please confirm" for something that can no longer be confirmed does not go out.
    from newsletter import outbox

    sign_up(client, "gone-pending@example.org")
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    with app.app_context():
        subscriptions.unsubscribe(db.session, reader_id, None, source=subscriptions.Source(channel="admin"))
        db.session.commit()
        db.session.remove()
    assert query(app, "SELECT status FROM subscriptions") == [("unsubscribed",)]

    assert drain().suppressed == 1

    assert smtp.inbox.messages == []
    [(kind, error)] = _not_sent(app)
    assert kind == "confirmation" and error == outbox.not_sent_error(outbox.NOT_PENDING_ANY_MORE)
    assert error.startswith(outbox.CANCELLED_PREFIX)
    assert _left_by_retry(app) == 0


def test_an_import_confirmation_is_not_sent_for_a_newsletter_already_confirmed(app, client, smtp, drain):
    # The reader confirmed the imported newsletter meanwhile and has another one pending: the
    # import's confirmation names only its own newsletter, which is confirmed, so it is not sent.
    from newsletter import outbox

    sign_up(client, "imported@example.org", newsletters=("daily-briefing",))
    _confirm_by_link(client, smtp, drain)
    drain()  # the welcome
    sign_up(client, "imported@example.org", newsletters=("weekly-explainer",))
    drain()  # its confirmation (weekly-explainer)
    sent_before = len(smtp.inbox.messages)
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    ids = dict(query(app, "SELECT slug, id FROM newsletters"))
    assert sorted(query(app, "SELECT newsletter_id, status FROM subscriptions")) == sorted(
        [(ids["daily-briefing"], "confirmed"), (ids["weekly-explainer"], "pending")])
    with app.app_context():
        outbox.enqueue(db.session, kind=outbox.IMPORT_CONFIRMATION_KIND, reader_id=reader_id,
                       newsletter_ids=[ids["daily-briefing"]], locale="en")
        db.session.commit()
        db.session.remove()

    assert drain().suppressed == 1

    assert [str(m["Subject"]) for m in smtp.inbox.messages[sent_before:]] == []
    assert [kind for kind, _ in _not_sent(app)] == ["import_confirmation"]


def test_a_confirmation_does_not_ask_for_a_newsletter_archived_before_it_left(app, client, smtp, drain):
    # "The newsletters as they are then": one archived since the signup is not named, and the link
    # names only the one still open (confirm takes only active newsletters anyway).
    from newsletter import catalog, tokens
    from newsletter.models import Newsletter

    sign_up(client, "archived@example.org", newsletters=("weekly-explainer", "daily-briefing"))
    with app.app_context():
        catalog.archive(db.session.scalar(sa.select(Newsletter).where(Newsletter.slug == "weekly-explainer")))
        db.session.commit()
        db.session.remove()

    drain()

    [message] = smtp.inbox.wait_for(1)
    assert str(message["Subject"]) == "Confirm your subscription to The Daily Briefing"
    assert "Weekly Explainer" not in body(message, "plain")
    link = link_in(message, "/confirm/")
    token = link[link.index("/confirm/") + len("/confirm/"):].split("?")[0].split("#")[0]
    ids = dict(query(app, "SELECT slug, id FROM newsletters"))
    with app.app_context():
        _, newsletter_ids, _ = tokens.read_confirm(token, app.config["NEWSLETTER_CONFIRM_MAX_AGE"])
    assert list(newsletter_ids) == [ids["daily-briefing"]]


def test_three_boxes_filled_before_the_sender_runs_give_one_email_naming_all_three(app, client, smtp, drain):
    # A page with several signup boxes; the reader fills three while the relay is down (or faster
    # than the sender). Each queues a confirmation naming the pending ones so far; the sender sends
    # only the last, which names all three, and the first two are marked superseded.
    from newsletter import outbox

    for slug in ("daily-briefing", "weekly-explainer", "no-welcome"):
        sign_up(client, "boxes@example.org", newsletters=(slug,))

    result = drain()

    [message] = smtp.inbox.messages
    assert (result.sent, result.suppressed) == (1, 2)
    assert str(message["Subject"]) == "Confirm your subscription to 3 newsletters"
    names = dict(query(app, "SELECT slug, name FROM newsletters"))
    for slug in ("daily-briefing", "weekly-explainer", "no-welcome"):
        assert names[slug] in body(message, "plain")
    assert _not_sent(app) == [("confirmation", outbox.not_sent_error(outbox.SUPERSEDED))] * 2
    assert outbox.not_sent_error(outbox.SUPERSEDED).startswith(outbox.CANCELLED_PREFIX)
    assert _left_by_retry(app) == 0
    # Its link confirms all three.
    link = link_in(message, "/confirm/")
    assert client.post(link[link.index("/confirm/"):]).status_code == 200
    assert query(app, "SELECT DISTINCT status FROM subscriptions") == [("confirmed",)]


# --- Language ----------------------------------------------------------------------------------


def test_a_ukrainian_readers_welcome_is_in_ukrainian_whatever_browser_presses_the_link(app, client, smtp, drain):
    # Signed up in Ukrainian, got the confirmation in Ukrainian; pressed its link in a browser that
    # asks for English (a work computer, a mail app's web view): the welcome is in Ukrainian, and
    # its row says so once sent.
    sign_up(client, "olena@example.org", name="Олена", lang="uk")
    assert drain().sent == 1
    [message] = smtp.inbox.wait_for(1)
    link = link_in(message, "/confirm/")
    assert client.post(link[link.index("/confirm/"):], headers={"Accept-Language": "en"}).status_code == 200
    assert query(app, "SELECT locale FROM outbox_messages WHERE kind = 'welcome'") == [(None,)]
    assert drain().sent == 1
    welcome = smtp.inbox.wait_for(2)[1]

    assert str(welcome["Subject"]) != "Welcome to The Daily Briefing"
    assert "The Daily Briefing" in str(welcome["Subject"])
    assert query(app, "SELECT locale FROM outbox_messages WHERE kind = 'welcome'") == [("uk",)]


def test_an_admins_resend_keeps_the_language_the_reader_signed_up_in(app, client, smtp, drain):
    # A Ukrainian reader's confirmation is resent from an English-speaking admin's browser: in Ukrainian.
    sign_up(client, "olena@example.org", name="Олена", lang="uk")
    assert drain().sent == 1
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    with app.test_request_context("/admin/readers", headers={"Accept-Language": "en"}):
        subscriptions.resend_confirmation(db.session, reader_id, source=subscriptions.Source(channel="admin"),
                                          config=app.config)
        db.session.commit()
        db.session.remove()

    assert query(app, "SELECT locale FROM outbox_messages ORDER BY id") == [("uk",), ("uk",)]
    assert drain().sent == 1
    assert str(smtp.inbox.wait_for(2)[1]["Subject"]).startswith("Підтвердьте")


def test_the_readers_data_export_says_which_newsletters_and_language_an_email_was_about(app, client, smtp, drain):
    # Rows queued since 0011 keep no sender, address or subject: the export names the newsletters
    # (slugs) and the language instead.
    sign_up(client, "export@example.org", newsletters=("weekly-explainer", "daily-briefing"), lang="uk")
    drain()
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    with app.app_context():
        [email] = privacy.export_reader(db.session, reader_id, for_reader=True)["emails"]
        db.session.remove()

    assert sorted(email["newsletters"]) == ["daily-briefing", "weekly-explainer"]
    assert (email["kind"], email["locale"], email["status"]) == ("confirmation", "uk", "sent")


# --- The claim's index -------------------------------------------------------------------------


def test_the_email_claim_uses_its_own_index_not_the_due_webhook_rows(app, client):
    # Email and webhook rows share outbox_messages. Webhook rows stay pending and due while they wait
    # behind an earlier delivery of their reader, or when their endpoint is switched off: days of
    # events. The email claim reads ix_outbox_messages_email_due, which holds none of them.
    import json
    from datetime import timedelta

    import pytest

    from newsletter import outbox
    from newsletter.models import WebhookEndpoint

    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("the plan is PostgreSQL's")
    sign_up(client, "after-webhooks@example.org")
    with app.app_context():
        endpoint = WebhookEndpoint(url="https://hooks.example.org/in", secret="whsec_x", active=False)
        db.session.add(endpoint)
        db.session.flush()
        long_ago = utcnow() - timedelta(days=1)
        db.session.execute(sa.insert(OutboxMessage), [
            {"kind": "webhook", "reader_id": None, "endpoint_id": endpoint.id, "event_id": i, "status": "pending",
             "attempts": 0, "created_at": long_ago, "next_attempt_at": long_ago} for i in range(30000)])
        db.session.commit()
        db.session.execute(sa.text("ANALYZE outbox_messages"))
        claim = outbox.due_emails(utcnow()).limit(1).with_for_update(skip_locked=True)
        compiled = claim.compile(db.engine, compile_kwargs={"literal_binds": True})
        [[plan]] = db.session.execute(sa.text(f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}")).all()
        db.session.rollback()
        db.session.remove()

    def removed(node):
        return node.get("Rows Removed by Filter", 0) + sum(removed(child) for child in node.get("Plans", []))

    def indexes(node):
        return {node.get("Index Name")} | set().union(*(indexes(child) for child in node.get("Plans", [])))

    plan = (plan if isinstance(plan, list) else json.loads(plan))[0]["Plan"]
    assert "ix_outbox_messages_email_due" in indexes(plan), json.dumps(plan, indent=1)[:2000]
    assert removed(plan) < 1000, json.dumps(plan, indent=1)[:2000]
    assert plan.get("Actual Rows", 0) <= 1
