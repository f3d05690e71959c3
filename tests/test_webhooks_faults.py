"""The webhook sender lives through a PostgreSQL restart: it logs the outage, pauses, and delivers every
event afterwards (tests' own cluster, stopped and started for real)."""

from __future__ import annotations

import logging
from collections import Counter

import pytest
import sqlalchemy.exc

from newsletter import webhook_sender
from newsletter.extensions import db

from .conftest import query
from .test_outbox import wait_until
from .test_outbox_faults import faulty_app  # noqa: F401 (fixture)
from .test_webhooks import add_endpoint, sign_up
from .webhook_receiver import Receiver


def test_the_webhook_sender_lives_through_a_database_restart(faulty_app, pg_cluster, caplog):  # noqa: F811
    caplog.set_level(logging.WARNING, logger="newsletter.webhook_sender")
    faulty_app.config["NEWSLETTER_WEBHOOK_ALLOW_PRIVATE"] = True
    receiver = Receiver().start()
    sender = webhook_sender.InProcessWebhookSender(faulty_app, poll_seconds=0.2, max_pause=1)
    webhook_sender.attach(faulty_app, sender.start())
    try:
        _, secret = add_endpoint(faulty_app, receiver.url)
        client = faulty_app.test_client()
        for number in range(2):
            sign_up(faulty_app, client, f"before{number}@example.org", slug="daily-briefing")
        receiver.wait_for(2, timeout=60)

        pg_cluster.restart("immediate", down_for=3)
        wait_until(lambda: "the database is unavailable" in caplog.text, "the sender to meet the outage", timeout=30)
        for number in range(2):
            sign_up(faulty_app, client, f"after{number}@example.org", slug="daily-briefing")
        receiver.wait_for(4, timeout=60)

        assert sender.is_alive()
        emails = Counter(request.verify(secret)["data"]["reader"]["email"] for request in receiver.requests)
        assert set(emails) == {"before0@example.org", "before1@example.org", "after0@example.org",
                               "after1@example.org"}
        assert "Traceback" not in caplog.text
    finally:
        receiver.stop()


def test_deliveries_leased_when_the_database_goes_away_are_sent_once_it_is_back(app, monkeypatch):
    """The database goes away between the lease's commit and the rendering: the sender gives the error to its
    loop (which waits), and once the database answers the delivery goes at once, its try given back, not
    after its whole lease."""
    app.config["NEWSLETTER_WEBHOOK_ALLOW_PRIVATE"] = True
    receiver = Receiver().start()
    try:
        _, secret = add_endpoint(app, receiver.url)
        sign_up(app, app.test_client(), "blip@example.org")
        real_render = webhook_sender.render
        calls = {"n": 0}

        def render_once_cut_off(session, delivery):
            calls["n"] += 1
            if calls["n"] == 1:
                raise sqlalchemy.exc.OperationalError("SELECT …", {}, Exception("terminating connection due to "
                                                                                "administrator command"))
            return real_render(session, delivery)

        monkeypatch.setattr(webhook_sender, "render", render_once_cut_off)
        with app.app_context():
            sender = webhook_sender.WebhookSender(app.config)
            try:
                with pytest.raises(sqlalchemy.exc.OperationalError):
                    sender.drain(db.session)
                db.session.rollback()  # the worker's loop: "the database is unavailable", pause, try again
                sender.drain(db.session)
            finally:
                sender.close()
                db.session.remove()
        assert [r.verify(secret)["data"]["reader"]["email"] for r in receiver.requests] == ["blip@example.org"]
        assert query(app, "SELECT status, attempts FROM outbox_messages WHERE kind = 'webhook'") == [("sent", 1)]
    finally:
        receiver.stop()
