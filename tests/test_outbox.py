"""The transactional outbox against a real SMTP server that goes down, is slow, or refuses."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import requests
from sqlalchemy import select

from newsletter import subscriptions
from newsletter.extensions import db
from newsletter.models import OutboxMessage, Reader

from .conftest import SECRET, query


def wait_until(condition, what: str, timeout: float = 15) -> None:
    """Poll `condition` until it holds; fail naming `what` if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def outbox_rows(app) -> list[SimpleNamespace]:
    """Every outbox row as the ORM reads it (aware UTC datetimes on every backend).

    `address` is where it goes: the reader's current address (a row holds none), or the one a row
    queued before the upgrade holds.
    """
    with app.app_context():
        try:
            return [
                SimpleNamespace(**{column.key: getattr(row, column.key) for column in OutboxMessage.__table__.columns},
                                address=row.to_address or email)
                for row, email in db.session.execute(
                    select(OutboxMessage, Reader.email).outerjoin(Reader, Reader.id == OutboxMessage.reader_id)
                    .order_by(OutboxMessage.id))
            ]
        finally:
            db.session.remove()


def sign_up(client, email: str = "reader@example.org", newsletters: tuple[str, ...] = ("daily-briefing",)):
    response = client.post("/api/v1/subscriptions", json={"email": email, "newsletters": list(newsletters)})
    assert response.status_code == 202, response.get_data(as_text=True)
    return response


def now() -> datetime:
    return datetime.now(timezone.utc)


def test_signup_while_smtp_is_down_is_kept_and_sent_once_it_is_back_without_spending_attempts(
        app, client, smtp, drain):
    smtp.stop()
    answer = client.post("/api/v1/subscriptions", json={"email": "down@example.org", "newsletters": ["daily-briefing"]})
    assert answer.status_code == 202
    assert answer.get_json() == {"status": "pending"}
    assert query(app, "SELECT email FROM readers") == [("down@example.org",)]
    assert query(app, "SELECT status FROM subscriptions") == [("pending",)]
    [row] = outbox_rows(app)
    assert (row.status, row.attempts, row.last_error) == ("pending", 0, None)

    result = drain()
    assert (result.sent, result.retrying, result.failed) == (0, 0, 0)
    assert "Connection refused" in result.stopped_by_error  # sending paused: the relay is away
    [row] = outbox_rows(app)
    assert row.status == "pending"
    assert row.attempts == 0  # the relay's outage is not the message's fault: the attempt is given back
    assert row.last_error  # why it was not sent, for the operator
    assert row.next_attempt_at <= now()  # due again as soon as the relay is back
    assert row.sent_at is None
    assert smtp.inbox.messages == []

    smtp.start()
    result = drain()
    assert (result.sent, result.retrying, result.failed) == (1, 0, 0)
    [message] = smtp.inbox.wait_for(1)
    assert message["To"].addresses[0].addr_spec == "down@example.org"
    [row] = outbox_rows(app)
    assert (row.status, row.attempts, row.last_error) == ("sent", 1, None)
    assert row.sent_at is not None
    assert drain().sent == 0
    assert len(smtp.inbox.messages) == 1


def test_slow_smtp_does_not_hold_up_the_signup(app, live_server, smtp):
    smtp.inbox.delay = 1.5
    answer = requests.post(f"{live_server}/api/v1/subscriptions",
                           json={"email": "slow@example.org", "newsletters": ["daily-briefing"]}, timeout=30)
    received_when_answered = len(smtp.inbox.messages)
    assert answer.status_code == 202
    # The answer came before the server had taken the message: the signup did not wait for SMTP.
    assert received_when_answered == 0

    [message] = smtp.inbox.wait_for(1)
    assert message["To"].addresses[0].addr_spec == "slow@example.org"
    wait_until(lambda: [row.status for row in outbox_rows(app)] == ["sent"], "the row to be marked sent")


def test_signup_while_a_slow_send_is_in_progress_does_not_wait_for_it(app, live_server, smtp):
    """The drainer being stuck on a slow SMTP server must not hold up other readers' signups."""
    in_data = threading.Event()
    handle_data = smtp.inbox.handle_DATA

    async def noting_data(server, session, envelope):
        in_data.set()
        return await handle_data(server, session, envelope)

    smtp.inbox.handle_DATA = noting_data  # aiosmtpd looks the hook up on the handler object
    smtp.inbox.delay = 2
    first = requests.post(f"{live_server}/api/v1/subscriptions",
                          json={"email": "first@example.org", "newsletters": ["daily-briefing"]}, timeout=60)
    assert first.status_code == 202
    assert in_data.wait(15), "the drainer never reached the SMTP server"

    # The drainer is now in the middle of sending the first confirmation.
    second = requests.post(f"{live_server}/api/v1/subscriptions",
                           json={"email": "second@example.org", "newsletters": ["weekly-explainer"]}, timeout=60)
    received_when_answered = len(smtp.inbox.messages)
    assert second.status_code == 202
    assert received_when_answered == 0, "the second signup waited until the first email had been sent"
    smtp.inbox.delay = 0

    messages = smtp.inbox.wait_for(2)
    assert sorted(m["To"].addresses[0].addr_spec for m in messages) == ["first@example.org", "second@example.org"]


def test_permanent_refusal_marks_the_message_failed_without_retrying(app, client, smtp, drain):
    smtp.inbox.refuse_with = "550 No such user"
    sign_up(client, "nobody@example.org")
    result = drain()
    assert (result.sent, result.retrying, result.failed) == (0, 0, 1)
    [row] = outbox_rows(app)
    assert row.status == "failed"
    assert row.attempts == 1
    assert "550" in row.last_error
    assert smtp.inbox.messages == []

    # Even with the server accepting again, a message refused for good is not tried again.
    smtp.inbox.refuse_with = None
    result = drain()
    assert (result.sent, result.retrying, result.failed) == (0, 0, 0)
    [row] = outbox_rows(app)
    assert (row.status, row.attempts) == ("failed", 1)
    assert smtp.inbox.messages == []


def test_permanent_refusal_does_not_stop_the_other_messages(app, client, smtp, drain):
    refused = "refused@example.org"
    original = smtp.inbox.handle_DATA

    async def refuse_one(server, session, envelope):
        if refused in envelope.rcpt_tos:
            return "550 No such user"
        return await original(server, session, envelope)

    smtp.inbox.handle_DATA = refuse_one
    sign_up(client, refused)
    sign_up(client, "fine@example.org")
    result = drain()
    assert (result.sent, result.retrying, result.failed) == (1, 0, 1)
    assert dict(query(app, "SELECT r.email, o.status FROM outbox_messages o JOIN readers r ON r.id = o.reader_id")
                ) == {refused: "failed", "fine@example.org": "sent"}
    assert [m["To"].addresses[0].addr_spec for m in smtp.inbox.messages] == ["fine@example.org"]


def test_failed_attempt_backs_off_exponentially(app, client, smtp, drain):
    app.config["NEWSLETTER_OUTBOX_RETRY_BASE"] = 60
    smtp.inbox.refuse_with = "451 4.7.1 Greylisted, try later"
    sign_up(client, "patient@example.org")

    before = now()
    assert drain().retrying == 1
    after = now()
    [row] = outbox_rows(app)
    assert (row.status, row.attempts) == ("pending", 1)
    assert before + timedelta(seconds=60) <= row.next_attempt_at <= after + timedelta(seconds=60)

    # Not due yet: even with the server accepting, nothing is sent and nothing changes.
    smtp.inbox.refuse_with = None
    result = drain()
    assert (result.sent, result.retrying, result.failed) == (0, 0, 0)
    assert smtp.inbox.messages == []
    [unchanged] = outbox_rows(app)
    assert (unchanged.status, unchanged.attempts, unchanged.next_attempt_at) == ("pending", 1, row.next_attempt_at)

    # Pretend the minute has passed; the second failure waits twice as long.
    smtp.inbox.refuse_with = "451 4.7.1 Greylisted, try later"
    make_due(app)
    before = now()
    assert drain().retrying == 1
    after = now()
    [row] = outbox_rows(app)
    assert row.attempts == 2
    assert before + timedelta(seconds=120) <= row.next_attempt_at <= after + timedelta(seconds=120)


def make_due(app) -> None:
    """Move every pending message's next attempt into the past, as if the wait were over."""
    with app.app_context():
        try:
            for row in db.session.scalars(select(OutboxMessage).where(OutboxMessage.status == "pending")):
                row.next_attempt_at = now() - timedelta(seconds=1)
            db.session.commit()
        finally:
            db.session.remove()


def test_message_id_is_stable_across_attempts(app, client, smtp, drain):
    smtp.stop()
    sign_up(client, "stable@example.org")
    [queued] = outbox_rows(app)
    assert queued.message_id is None  # given when the email is first claimed

    assert drain().stopped_by_error
    [enqueued] = outbox_rows(app)
    assert enqueued.message_id.startswith("<") and enqueued.message_id.endswith(">")
    smtp.start()
    smtp.inbox.refuse_with = "451 4.3.0 Try again later"
    app.config["NEWSLETTER_OUTBOX_RETRY_BASE"] = 60
    assert drain().retrying == 1
    smtp.inbox.refuse_with = None
    make_due(app)
    assert drain().sent == 1
    [message] = smtp.inbox.wait_for(1)
    assert message["Message-ID"] == enqueued.message_id
    [row] = outbox_rows(app)
    assert (row.message_id, row.attempts, row.status) == (enqueued.message_id, 2, "sent")


def test_worker_killed_before_the_servers_reply_loses_nothing_and_resends_with_the_same_message_id(
        app, client, smtp, drain, tmp_path):
    """At least once, never lost: the server took the message but the worker died before hearing 250."""
    sign_up(client, "crash@example.org")
    accepted = threading.Event()
    handle_data = smtp.inbox.handle_DATA

    async def accept_then_hang(server, session, envelope):
        reply = await handle_data(server, session, envelope)  # stored in the inbox
        if not accepted.is_set():
            accepted.set()
            await asyncio.sleep(60)  # the worker is killed before it hears the reply
        return reply

    smtp.inbox.handle_DATA = accept_then_hang
    env = {name: value for name, value in os.environ.items() if not name.startswith(("NEWSLETTER_", "FLASK_"))}
    env.update(NEWSLETTER_DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"], NEWSLETTER_SMTP_URL=smtp.url,
               NEWSLETTER_SECRET_KEY=SECRET, NEWSLETTER_INSTANCE_PATH=str(tmp_path))
    worker = subprocess.Popen([str(Path(sys.executable).with_name("newsletter")), "worker", "--once"], env=env,
                              cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert accepted.wait(30), "the worker never handed the message to the server"
    finally:
        worker.kill()
        worker.wait(timeout=10)

    [enqueued] = outbox_rows(app)
    assert enqueued.status == "pending"  # the crash lost nothing: the message is still to be sent
    assert enqueued.message_id is not None  # given at the claim, before the send
    make_due(app)  # however long the outbox waits before trusting that a claim was abandoned
    result = drain()
    assert (result.sent, result.retrying, result.failed) == (1, 0, 0)
    first, second = smtp.inbox.wait_for(2)
    # Delivered twice, as the same message: the receiving side can tell it is a duplicate.
    assert first["Message-ID"] == second["Message-ID"] == enqueued.message_id
    [row] = outbox_rows(app)
    assert (row.status, row.message_id) == ("sent", enqueued.message_id)


def test_in_process_drainer_sends_without_a_worker(app, live_server, smtp):
    answer = requests.post(f"{live_server}/api/v1/subscriptions",
                           json={"email": "drained@example.org", "newsletters": ["weekly-explainer"]}, timeout=30)
    assert answer.status_code == 202
    [message] = smtp.inbox.wait_for(1)
    assert message["To"].addresses[0].addr_spec == "drained@example.org"
    assert message["Subject"] == "Confirm your subscription to The Weekly Explainer"
    wait_until(lambda: [row.status for row in outbox_rows(app)] == ["sent"], "the row to be marked sent")


def test_in_process_drainer_retries_once_the_server_is_back(app, live_server, smtp):
    smtp.stop()
    answer = requests.post(f"{live_server}/api/v1/subscriptions",
                           json={"email": "retried@example.org", "newsletters": ["daily-briefing"]}, timeout=30)
    assert answer.status_code == 202
    wait_until(lambda: outbox_rows(app)[0].last_error is not None, "the drainer's first attempt")
    assert (outbox_rows(app)[0].status, outbox_rows(app)[0].attempts) == ("pending", 0)

    smtp.start()
    [message] = smtp.inbox.wait_for(1)
    assert message["To"].addresses[0].addr_spec == "retried@example.org"
    wait_until(lambda: outbox_rows(app)[0].status == "sent", "the row to be marked sent")


def test_rejected_signup_sends_no_mail(app, client, smtp, drain):
    answer = client.post("/api/v1/subscriptions",
                         json={"email": "half@example.org", "newsletters": ["daily-briefing", "no-such-letter"]})
    assert answer.status_code == 422
    assert "no-such-letter" in answer.get_json()["errors"]["newsletters"][0]
    for table in ("readers", "subscriptions", "consent_events", "outbox_messages"):
        assert query(app, f"SELECT count(*) FROM {table}") == [(0,)], table
    assert drain().sent == 0
    assert smtp.inbox.messages == []


def test_rolled_back_signup_leaves_no_message(app, smtp, drain):
    with app.app_context():
        chosen = subscriptions.find_newsletters(db.session, ["daily-briefing"])
        result = subscriptions.sign_up(db.session, "rolled.back@example.org", chosen, config=app.config,
                                       source=subscriptions.Source(channel="api"))
        assert result.confirmation_queued
        db.session.rollback()
        db.session.remove()
    assert query(app, "SELECT count(*) FROM outbox_messages") == [(0,)]
    assert drain().sent == 0
    assert smtp.inbox.messages == []
