"""Many requests and many workers at once: one reader and one email per address, a link confirmed once, each
message sent once."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from sqlalchemy import text

from newsletter import outbox, subscriptions, tokens
from newsletter.extensions import db
from newsletter.models import Reader, Subscription, utcnow

from .conftest import SECRET, query

SIGNUPS = 20
CLICKS = 10
MESSAGES = 500
SUMMARY = re.compile(r"^sent (\d+), will retry (\d+), failed (\d+)$", re.MULTILINE)


def wait_until(condition, what: str, timeout: float = 15) -> None:
    """Poll `condition` until it holds; fail naming `what` if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_simultaneous_signups_of_one_address_make_one_reader_and_one_email(app, live_server, smtp):
    # The same person, typed with the domain in different cases: one normalized address.
    spellings = ["Same.Reader@example.com", "Same.Reader@Example.COM"]
    barrier = threading.Barrier(SIGNUPS)

    def sign_up(number: int) -> requests.Response:
        barrier.wait(timeout=30)
        return requests.post(f"{live_server}/api/v1/subscriptions", json={
            "email": spellings[number % 2], "newsletters": ["daily-briefing", "weekly-explainer"],
        }, timeout=60)

    with ThreadPoolExecutor(SIGNUPS) as pool:
        answers = list(pool.map(sign_up, range(SIGNUPS)))

    assert [answer.status_code for answer in answers] == [202] * SIGNUPS, [a.text for a in answers]
    assert all(answer.json() == {"status": "pending"} for answer in answers)

    # Every answer is in, so every transaction has committed: what is stored now is final.
    assert query(app, "SELECT email FROM readers") == [("Same.Reader@example.com",)]
    subscriptions = query(app, "SELECT n.slug, s.status FROM subscriptions s "
                               "JOIN newsletters n ON n.id = s.newsletter_id ORDER BY n.slug")
    assert subscriptions == [("daily-briefing", "pending"), ("weekly-explainer", "pending")]
    # Only the signup that created the subscriptions changed anything worth recording.
    assert query(app, "SELECT count(*) FROM consent_events WHERE action = 'signup_requested'") == [(2,)]
    rows = query(app, "SELECT o.kind, r.email FROM outbox_messages o JOIN readers r ON r.id = o.reader_id")
    assert rows == [("confirmation", "Same.Reader@example.com")]

    # The in-process drainer sends it; once the row says sent, the server has it (250 comes first).
    wait_until(lambda: query(app, "SELECT status FROM outbox_messages") == [("sent",)], "the confirmation to be sent")
    assert len(smtp.inbox.messages) == 1
    [confirmation] = smtp.inbox.messages
    assert query(app, "SELECT message_id FROM outbox_messages") == [(confirmation["Message-ID"],)]
    assert confirmation["Subject"] == "Confirm your subscription to 2 newsletters"


def _signed_up(app, live_server, newsletters: list[str]) -> str:
    """A confirmation link of a new reader signed up over HTTP to `newsletters`."""
    answer = requests.post(f"{live_server}/api/v1/subscriptions", json={
        "email": "clicker@example.com", "name": "Clicker", "newsletters": newsletters}, timeout=30)
    assert answer.status_code == 202, answer.text
    with app.app_context():
        [(reader_id,)] = db.session.execute(text("SELECT id FROM readers")).all()
        ids = [id_ for (id_,) in db.session.execute(text("SELECT newsletter_id FROM subscriptions"))]
        db.session.remove()
        return tokens.confirm_token(reader_id, ids)


def test_a_link_pressed_many_times_at_once_confirms_once(app, live_server):
    token = _signed_up(app, live_server, ["daily-briefing", "weekly-explainer"])
    barrier = threading.Barrier(CLICKS)

    def press(_: int) -> requests.Response:
        barrier.wait(timeout=30)
        return requests.post(f"{live_server}/confirm/{token}", timeout=60)

    with ThreadPoolExecutor(CLICKS) as pool:
        answers = list(pool.map(press, range(CLICKS)))

    assert [answer.status_code for answer in answers] == [200] * CLICKS
    headings = sorted(re.search(r"<h1>(.*?)</h1>", answer.text).group(1) for answer in answers)
    assert headings == ["Already confirmed"] * (CLICKS - 1) + ["Subscription confirmed"]
    assert query(app, "SELECT status FROM subscriptions") == [("confirmed",), ("confirmed",)]
    assert query(app, "SELECT count(*) FROM consent_events WHERE action = 'confirmed'") == [(2,)]
    assert query(app, "SELECT count(*) FROM outbox_messages WHERE kind = 'welcome'") == [(2,)]


def test_a_confirmation_waits_for_an_unsubscribe_under_way_and_then_confirms_nothing(app, live_server):
    token = _signed_up(app, live_server, ["weekly-explainer"])
    pressed: list[requests.Response] = []
    with app.app_context():
        [(reader_id,)] = db.session.execute(text("SELECT id FROM readers")).all()
        # The unsubscribe holds the reader (PostgreSQL: its row lock; SQLite: the write lock) until it commits.
        assert subscriptions.unsubscribe(db.session, reader_id, None, source=subscriptions.Source("test"))
        press = threading.Thread(target=lambda: pressed.append(
            requests.post(f"{live_server}/confirm/{token}", timeout=60)))
        press.start()
        press.join(timeout=1)
        assert press.is_alive(), "the confirmation should wait for the unsubscribe"
        db.session.commit()
        db.session.remove()
    press.join(timeout=30)

    [answer] = pressed
    assert answer.status_code == 200
    assert "<h1>Link no longer valid</h1>" in answer.text
    assert query(app, "SELECT status FROM subscriptions") == [("unsubscribed",)]
    assert query(app, "SELECT count(*) FROM consent_events WHERE action = 'confirmed'") == [(0,)]
    assert query(app, "SELECT count(*) FROM outbox_messages WHERE kind = 'welcome'") == [(0,)]


def _worker_env(app, smtp, instance: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("NEWSLETTER_", "FLASK_"))}
    env.update({
        "NEWSLETTER_DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"],
        "NEWSLETTER_SMTP_URL": smtp.url,
        "NEWSLETTER_SECRET_KEY": SECRET,
        "NEWSLETTER_INSTANCE_PATH": str(instance),
    })
    return env


def test_two_workers_send_each_message_exactly_once(app, smtp, tmp_path):
    if "sqlite" in app.config["SQLALCHEMY_DATABASE_URI"]:
        pytest.skip("several `newsletter worker` processes need PostgreSQL (FOR UPDATE SKIP LOCKED); "
                    "on SQLite the product documents a single in-process drainer")
    with app.app_context():
        daily = db.session.scalar(text("SELECT id FROM newsletters WHERE slug = 'daily-briefing'"))
        for number in range(MESSAGES):
            reader = Reader(email=f"reader{number}@example.org")
            db.session.add(reader)
            db.session.flush()
            # Pending: the sender checks at send time that a confirmation still has something to confirm.
            db.session.add(Subscription(reader_id=reader.id, newsletter_id=daily, status="pending",
                                        created_at=utcnow(), pending_since=utcnow()))
            outbox.enqueue(db.session, kind="confirmation", reader_id=reader.id, newsletter_ids=[daily], locale="en")
        db.session.commit()
        db.session.remove()

    # A few milliseconds per message at the server keeps both workers busy at the same time.
    smtp.inbox.delay = 0.004
    script = Path(sys.executable).with_name("newsletter")
    env = _worker_env(app, smtp, tmp_path)
    logs = [tmp_path / f"worker{number}.log" for number in (1, 2)]
    workers = []
    for log in logs:
        with log.open("wb") as stream:
            workers.append(subprocess.Popen([str(script), "worker", "--once"], env=env, cwd=tmp_path,
                                            stdout=stream, stderr=subprocess.STDOUT))
    try:
        codes = [worker.wait(timeout=120) for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    outputs = [log.read_text() for log in logs]
    assert codes == [0, 0], outputs

    summaries = []
    for output in outputs:
        match = SUMMARY.search(output)
        assert match, f"no 'sent N, …' summary in:\n{output}"
        summaries.append(tuple(int(number) for number in match.groups()))
    assert sum(sent for sent, _, _ in summaries) == MESSAGES, summaries
    assert all(retrying == 0 and failed == 0 for _, retrying, failed in summaries), summaries
    if not all(sent for sent, _, _ in summaries):
        print(f"one worker did all the work this time: {summaries}")

    # Each Message-ID was given at the claim, by whichever worker claimed it.
    stored = dict(query(app, "SELECT o.message_id, r.email FROM outbox_messages o JOIN readers r ON r.id = o.reader_id"))
    assert len(stored) == MESSAGES
    received = smtp.inbox.messages
    assert len(received) == MESSAGES
    message_ids = [message["Message-ID"] for message in received]
    assert len(set(message_ids)) == MESSAGES
    assert set(message_ids) == set(stored)
    assert sorted(to for _, tos in smtp.inbox.envelopes for to in tos) == sorted(stored.values())
    assert query(app, "SELECT status, attempts, count(*) FROM outbox_messages GROUP BY status, attempts") == [
        ("sent", 1, MESSAGES)]
