"""A signup of a new address takes a short path: newsletters from a per-process cache, a few plain
INSERTs. Whatever changed in the database behind the cache's back, it must sign up exactly as the
general path would: never to an archived or another newsletter, and with the same rows."""

from __future__ import annotations

import sqlalchemy as sa

from newsletter.extensions import db

from .conftest import query


def execute(app, statement: str, **params) -> None:
    """Change the database as another process would, without the app noticing."""
    with app.app_context():
        db.session.execute(sa.text(statement), params)
        db.session.commit()
        db.session.remove()


def sign_up(client, email: str, *slugs: str):
    return client.post("/api/v1/subscriptions", json={"email": email, "newsletters": list(slugs)})


def subscriptions_of(app, email: str) -> list[tuple[str, str]]:
    return sorted(tuple(row) for row in query(
        app, "SELECT n.slug, s.status FROM subscriptions s JOIN readers r ON r.id = s.reader_id "
             "JOIN newsletters n ON n.id = s.newsletter_id WHERE r.email = :email", email=email))


def test_a_newsletter_archived_elsewhere_takes_no_signup_though_cached(app, client):
    assert sign_up(client, "first@example.org", "daily-briefing").status_code == 202  # the cache is warm
    execute(app, "UPDATE newsletters SET archived_at = CURRENT_TIMESTAMP WHERE slug = 'daily-briefing'")

    answer = sign_up(client, "second@example.org", "daily-briefing", "weekly-explainer")

    assert answer.status_code == 422
    assert "archived" in answer.get_json()["errors"]["newsletters"][0]
    assert query(app, "SELECT count(*) FROM readers WHERE email = 'second@example.org'") == [(0,)]
    assert query(app, "SELECT count(*) FROM outbox_messages") == [(1,)]  # the first signup's


def test_a_signup_goes_to_the_newsletter_the_database_names_even_when_the_cache_has_it_otherwise(app, client):
    assert sign_up(client, "first@example.org", "daily-briefing").status_code == 202
    # Slugs never change in the service; if the rows change under the cache anyway (a restored
    # backup, a test database refilled), the slug must still lead to its newsletter of now.
    execute(app, "UPDATE newsletters SET slug = 'swap' WHERE slug = 'daily-briefing'")
    execute(app, "UPDATE newsletters SET slug = 'daily-briefing' WHERE slug = 'weekly-explainer'")
    execute(app, "UPDATE newsletters SET slug = 'weekly-explainer' WHERE slug = 'swap'")
    [(daily_now,)] = query(app, "SELECT id FROM newsletters WHERE slug = 'daily-briefing'")

    assert sign_up(client, "second@example.org", "daily-briefing").status_code == 202

    assert subscriptions_of(app, "second@example.org") == [("daily-briefing", "pending")]
    assert query(app, "SELECT e.newsletter_id FROM consent_events e JOIN readers r ON r.id = e.reader_id "
                      "WHERE r.email = 'second@example.org'") == [(daily_now,)]


def test_a_new_and_a_known_address_leave_the_same_rows(app, client):
    # The new address takes the short path; the known one (pending, past its resend interval) the general one.
    app.config["NEWSLETTER_CONFIRM_RESEND_INTERVAL"] = 0
    assert sign_up(client, "ada@example.org", "daily-briefing", "weekly-explainer").status_code == 202
    execute(app, "DELETE FROM consent_events")
    execute(app, "DELETE FROM outbox_messages")
    execute(app, "DELETE FROM subscriptions")

    assert sign_up(client, "ada@example.org", "daily-briefing", "weekly-explainer").status_code == 202
    assert sign_up(client, "bob@example.org", "daily-briefing", "weekly-explainer").status_code == 202

    def rows(email: str) -> dict[str, list[tuple]]:
        return {
            "subscriptions": sorted(tuple(row) for row in query(
                app, "SELECT n.slug, s.status, s.created_at = s.pending_since, s.confirmed_at IS NULL "
                     "FROM subscriptions s JOIN readers r ON r.id = s.reader_id "
                     "JOIN newsletters n ON n.id = s.newsletter_id WHERE r.email = :email", email=email)),
            "events": sorted(tuple(row) for row in query(
                app, "SELECT n.slug, e.action, e.source, e.wording FROM consent_events e "
                     "JOIN readers r ON r.id = e.reader_id JOIN newsletters n ON n.id = e.newsletter_id "
                     "WHERE r.email = :email", email=email)),
            "mail": [tuple(row) for row in query(
                app, "SELECT o.kind, o.newsletter_ids, o.locale, o.status, o.attempts, o.to_address, o.body_text "
                     "FROM outbox_messages o JOIN readers r ON r.id = o.reader_id WHERE r.email = :email",
                email=email)],
            "reader": [tuple(row) for row in query(
                app, "SELECT confirmation_sent_at IS NOT NULL, blocked_at, erased_at FROM readers "
                     "WHERE email = :email", email=email)],
        }

    assert rows("ada@example.org") == rows("bob@example.org")
    assert rows("bob@example.org")["subscriptions"] == [("daily-briefing", "pending", True, True),
                                                        ("weekly-explainer", "pending", True, True)]
    assert len(rows("bob@example.org")["mail"]) == 1
