"""Review of issue 11 section 1 (render when sent): what the sender does with a reader who changed meanwhile."""

from __future__ import annotations

import sqlalchemy as sa

from newsletter import subscriptions
from newsletter.extensions import db

from .conftest import link_in, query
from .test_render_at_send import sign_up


def _confirm_by_link(client, smtp, drain) -> None:
    assert drain().sent == 1
    [message] = smtp.inbox.wait_for(1)
    link = link_in(message, "/confirm/")
    assert client.post(link[link.index("/confirm/"):]).status_code == 200


def test_a_welcome_is_not_sent_for_a_newsletter_the_reader_left_before_it_went_out(app, client, smtp, drain):
    # The relay is down when the reader confirms; they unsubscribe (e.g. from the confirmation page's
    # own link, or an admin removes them) before the welcome leaves. Rendered at send time, the
    # sender knows they left: "Welcome to X" to someone who just left X should not go out.
    sign_up(client, "left@example.org", name="Left")
    _confirm_by_link(client, smtp, drain)
    assert query(app, "SELECT kind, status FROM outbox_messages ORDER BY id") == [
        ("confirmation", "sent"), ("welcome", "pending")]
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    with app.app_context():
        subscriptions.unsubscribe(db.session, reader_id, None, source=subscriptions.Source(channel="admin"))
        db.session.commit()
        db.session.remove()

    drain()

    assert [str(m["Subject"]) for m in smtp.inbox.messages[1:]] == []


def test_a_confirmation_is_not_sent_when_nothing_it_names_is_pending_any_more(app, client, smtp, drain):
    # Queued for a pending subscription; before it leaves the reader is unsubscribed (an admin, or
    # erasure-less removal). The sender checks this for an import's confirmation, not for a
    # signup's: a "please confirm" for something that can no longer be confirmed goes out.
    sign_up(client, "gone-pending@example.org")
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    with app.app_context():
        subscriptions.unsubscribe(db.session, reader_id, None, source=subscriptions.Source(channel="admin"))
        db.session.commit()
        db.session.remove()
    assert query(app, "SELECT status FROM subscriptions") == [("unsubscribed",)]

    drain()

    assert smtp.inbox.messages == []


def test_an_import_confirmation_is_not_sent_for_a_newsletter_already_confirmed(app, client, smtp, drain):
    # The still-pending check of an import's confirmation asks whether the reader has *any* pending
    # subscription, though the row now names its newsletter: a reader who confirmed the imported
    # newsletter meanwhile but has another one pending is still asked to confirm the first one.
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

    drain()

    assert [str(m["Subject"]) for m in smtp.inbox.messages[sent_before:]] == []


def test_a_ukrainian_readers_welcome_is_in_ukrainian_whatever_browser_presses_the_link(app, client, smtp, drain):
    # Signed up in Ukrainian, got the confirmation in Ukrainian; pressed its link in a browser that
    # asks for English (a work computer, a mail app's web view). The link carries no language and
    # the welcome is queued in the confirming request's language: it arrives in English.
    sign_up(client, "olena@example.org", name="Олена", lang="uk")
    assert drain().sent == 1
    [message] = smtp.inbox.wait_for(1)
    link = link_in(message, "/confirm/")
    assert client.post(link[link.index("/confirm/"):], headers={"Accept-Language": "en"}).status_code == 200
    assert drain().sent == 1
    welcome = smtp.inbox.wait_for(2)[1]

    assert str(welcome["Subject"]) != "Welcome to The Daily Briefing"
    assert query(app, "SELECT locale FROM outbox_messages WHERE kind = 'welcome'") == [("uk",)]


def test_three_boxes_filled_before_the_sender_runs_give_one_email_naming_all_three(app, client, smtp, drain):
    # A page with several signup boxes; the reader fills three of them while the relay is down (or
    # faster than the sender). Each queues a confirmation naming the pending ones so far, and since the
    # email is rendered only now, the sender could send one naming all three: it sends three, the
    # first two naming only part of what the reader asked for.
    for slug in ("daily-briefing", "weekly-explainer", "no-welcome"):
        sign_up(client, "boxes@example.org", newsletters=(slug,))

    drain()

    subjects = [str(m["Subject"]) for m in smtp.inbox.messages]
    assert len(subjects) == 1, subjects


def test_the_readers_data_export_says_which_newsletters_an_email_was_about(app, client, smtp, drain):
    # For rows queued since 0011 the export's email history has no sender, address or subject: only
    # "a confirmation, sent". The row knows the newsletters and the language; the export drops them.
    from newsletter import privacy

    sign_up(client, "export@example.org", newsletters=("weekly-explainer",))
    drain()
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    with app.app_context():
        [email] = privacy.export_reader(db.session, reader_id, for_reader=True)["emails"]
        db.session.remove()

    assert "weekly-explainer" in repr(email) or "The Weekly Explainer" in repr(email), email


def test_an_admins_resend_keeps_the_language_the_reader_signed_up_in(app, client, smtp, drain):
    # A Ukrainian reader's confirmation is resent from the admin (an English-speaking admin's
    # browser): the row takes the admin's request language, though the reader's first confirmation
    # row says "uk". The reader gets an English email.
    sign_up(client, "olena@example.org", name="Олена", lang="uk")
    assert drain().sent == 1
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    with app.test_request_context("/admin/readers", headers={"Accept-Language": "en"}):
        subscriptions.resend_confirmation(db.session, reader_id, source=subscriptions.Source(channel="admin"),
                                          config=app.config)
        db.session.commit()
        db.session.remove()

    assert query(app, "SELECT locale FROM outbox_messages ORDER BY id") == [("uk",), ("uk",)]


def test_a_confirmation_does_not_ask_for_a_newsletter_archived_before_it_left(app, client, smtp, drain):
    # Rendered at send time, "the newsletters as they are then": one archived since the signup is
    # still named and its link can confirm nothing (confirm only takes active newsletters).
    from newsletter import catalog
    from newsletter.models import Newsletter

    sign_up(client, "archived@example.org", newsletters=("weekly-explainer", "daily-briefing"))
    with app.app_context():
        catalog.archive(db.session.scalar(sa.select(Newsletter).where(Newsletter.slug == "weekly-explainer")))
        db.session.commit()
        db.session.remove()

    drain()

    [message] = smtp.inbox.wait_for(1)
    assert str(message["Subject"]) == "Confirm your subscription to The Daily Briefing"


def test_the_email_claim_does_not_read_every_due_webhook_row(app, client):
    # Email and webhook rows share outbox_messages and its due index (status, next_attempt_at); the
    # email claim now filters kind IN (emails) after walking that index. Webhook rows stay pending
    # and due while they wait behind an earlier delivery of their reader, or when their endpoint was
    # switched off: days of events. Every email claim then reads all of them before its email.
    import json
    from datetime import timedelta

    import pytest

    from newsletter import outbox
    from newsletter.models import OutboxMessage, WebhookEndpoint
    from newsletter.models import utcnow as now_

    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("the plan is PostgreSQL's")
    sign_up(client, "after-webhooks@example.org")
    with app.app_context():
        endpoint = WebhookEndpoint(url="https://hooks.example.org/in", secret="whsec_x", active=False)
        db.session.add(endpoint)
        db.session.flush()
        long_ago = now_() - timedelta(days=1)
        db.session.execute(sa.insert(OutboxMessage), [
            {"kind": "webhook", "reader_id": None, "endpoint_id": endpoint.id, "event_id": i, "status": "pending",
             "attempts": 0, "created_at": long_ago, "next_attempt_at": long_ago} for i in range(30000)])
        db.session.commit()
        db.session.execute(sa.text("ANALYZE outbox_messages"))
        claim = outbox.due_emails(now_()).limit(1).with_for_update(skip_locked=True)
        compiled = claim.compile(db.engine, compile_kwargs={"literal_binds": True})
        [[plan]] = db.session.execute(sa.text(f"EXPLAIN (ANALYZE, FORMAT JSON) {compiled}")).all()
        db.session.rollback()
        db.session.remove()

    def removed(node):
        return node.get("Rows Removed by Filter", 0) + sum(removed(child) for child in node.get("Plans", []))

    def indexes(node):
        return {node.get("Index Name")} | set().union(*(indexes(child) for child in node.get("Plans", [])))

    plan = plan if isinstance(plan, list) else json.loads(plan)
    assert removed(plan[0]["Plan"]) < 1000, json.dumps(plan[0]["Plan"], indent=1)[:2000]
    assert "ix_outbox_messages_email_due" in indexes(plan[0]["Plan"]), json.dumps(plan[0]["Plan"], indent=1)[:2000]
