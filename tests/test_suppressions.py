"""The suppression list's rules, on both databases: keys, hard and soft bounces, complaints, lifting, erasure entries."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select

from newsletter import suppressions
from newsletter.extensions import db
from newsletter.models import DeliveryEvent, Suppression, utcnow


@pytest.fixture
def session(app):
    with app.app_context():
        yield db.session
        db.session.rollback()


def test_the_key_is_keyed_and_ignores_case_and_spelling(app, session):
    key = suppressions.address_key(app.config, "Ada@Example.ORG")
    assert key == suppressions.address_key(app.config, " <ada@example.org> ")
    assert key != suppressions.address_key(app.config, "bob@example.org")
    other = dict(app.config, NEWSLETTER_SUPPRESSION_KEY="another secret")
    assert key != suppressions.address_key(other, "ada@example.org")
    assert "ada" not in key


def test_a_hard_bounce_suppresses_at_once_and_a_repeat_is_recorded_once(app, session):
    first = suppressions.record_event(session, app.config, "ada@example.org", kind="hard_bounce", provider="ses",
                                      diagnostic="550 5.1.1 user unknown", provider_event_id="m-1")
    session.commit()
    assert first.event is not None and first.suppression.reason == "hard_bounce"
    assert suppressions.mail_stopped(session, app.config, "ADA@example.org").detail == "550 5.1.1 user unknown"

    again = suppressions.record_event(session, app.config, "ada@example.org", kind="hard_bounce", provider="ses",
                                      provider_event_id="m-1")
    session.commit()
    assert again.event is None and again.suppression.id == first.suppression.id
    assert session.query(DeliveryEvent).count() == 1
    assert session.query(Suppression).count() == 1


def test_soft_bounces_suppress_only_at_the_limit_within_the_window(app, session):
    app.config.update(NEWSLETTER_SOFT_BOUNCE_LIMIT=3, NEWSLETTER_SOFT_BOUNCE_WINDOW=15 * 86400)
    now = utcnow()
    old = suppressions.record_event(session, app.config, "bob@example.org", kind="soft_bounce", provider="smtp",
                                    occurred_at=now - timedelta(days=20), diagnostic="452 mailbox full")
    assert old.suppression is None
    for days_ago in (2, 1):
        outcome = suppressions.record_event(session, app.config, "bob@example.org", kind="soft_bounce",
                                            provider="smtp", occurred_at=now - timedelta(days=days_ago))
        assert outcome.suppression is None
    third = suppressions.record_event(session, app.config, "bob@example.org", kind="soft_bounce", provider="smtp",
                                      occurred_at=now, diagnostic="452 mailbox full")
    session.commit()
    assert third.suppression is not None and third.suppression.reason == "soft_bounces"
    assert "3 soft bounces within 15 days" in third.suppression.detail
    assert [event.kind for event in suppressions.events_for(session, app.config, "bob@example.org")] == \
        ["soft_bounce"] * 4


def test_a_complaint_suppresses_and_lifting_keeps_the_record(app, session):
    entry = suppressions.record_event(session, app.config, "cy@example.org", kind="complaint",
                                      provider="postmark").suppression
    session.commit()
    suppressions.lift(session, entry.id, admin_id=None, note="asked us by phone")
    session.commit()
    assert suppressions.mail_stopped(session, app.config, "cy@example.org") is None
    lifted = session.get(Suppression, entry.id)
    assert lifted.lifted_at is not None and lifted.lift_note == "asked us by phone"
    with pytest.raises(suppressions.UnknownSuppression):
        suppressions.lift(session, entry.id, admin_id=None)
    # A new complaint after the lift suppresses again, as a new entry.
    again = suppressions.record_event(session, app.config, "cy@example.org", kind="complaint", provider="postmark")
    session.commit()
    assert again.suppression.id != entry.id


def test_an_erased_entry_keeps_no_address_and_does_not_stop_mail(app, session):
    key = suppressions.address_key(app.config, "dee@example.org")
    entry = suppressions.suppress(session, app.config, None, key=key, reason="erased", source="erasure")
    session.commit()
    assert entry.email is None
    assert suppressions.mail_stopped(session, app.config, "dee@example.org") is None
    assert suppressions.keys_in_force(session, [key, "0" * 64]) == {key: "erased"}
    # The person signed up again since, and now bounces: a mail-stopping entry of its own, keeping no
    # address nor diagnostic; the `erased` entry stays, and imports still see `erased` first.
    suppressions.record_event(session, app.config, "dee@example.org", kind="hard_bounce", provider="smtp",
                              diagnostic="550 5.1.1 <dee@example.org> user unknown")
    session.commit()
    bounced = suppressions.mail_stopped(session, app.config, "dee@example.org")
    assert (bounced.reason, bounced.email, bounced.detail) == ("hard_bounce", None, None)
    assert session.scalars(select(DeliveryEvent.diagnostic)).all() == [None]
    assert suppressions.in_force(session, key).reason == "hard_bounce"
    assert suppressions.keys_in_force(session, [key]) == {key: "erased"}
    assert sorted(e.reason for e in session.query(Suppression).filter(Suppression.lifted_at.is_(None))) == [
        "erased", "hard_bounce"]
    # suppress() never turns one into the other, and the erased entry is never lifted.
    assert suppressions.suppress(session, app.config, "dee@example.org", reason="manual", source="admin") is bounced
    with pytest.raises(suppressions.ErasedEntry):
        suppressions.lift(session, entry.id, admin_id=None)
    suppressions.lift(session, bounced.id, admin_id=None)
    session.commit()
    assert suppressions.mail_stopped(session, app.config, "dee@example.org") is None
    assert suppressions.keys_in_force(session, [key]) == {key: "erased"}


def test_unknown_kinds_and_reasons_are_refused(app, session):
    with pytest.raises(ValueError):
        suppressions.record_event(session, app.config, "x@example.org", kind="bounce", provider="smtp")
    with pytest.raises(ValueError):
        suppressions.suppress(session, app.config, "x@example.org", reason="because", source="admin")
