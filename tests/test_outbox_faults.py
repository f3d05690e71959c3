"""Faults the outbox meets in a deployment, caused for real: PostgreSQL restarting or stopped under the
worker and the in-process drainer; an SMTP relay that is down, never greets, hangs up, answers 421,
refuses the login or TLS, or refuses one recipient; a message deleted or erased while it is being sent;
and the `outbox status` / `outbox retry` commands."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from newsletter import catalog, create_app, emails, outbox, subscriptions, suppressions
from newsletter.extensions import db, limiter
from newsletter.models import OutboxMessage, utcnow

from .conftest import SECRET, close_app, free_port
from .test_outbox import make_due, outbox_rows, sign_up, wait_until

SCRIPT = Path(sys.executable).with_name("newsletter")


# helpers


def worker_env(database_url: str, smtp_url: str, instance: Path, **settings: str) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("NEWSLETTER_", "FLASK_"))}
    env.update(PYTHONUNBUFFERED="1", NEWSLETTER_DATABASE_URL=database_url, NEWSLETTER_SMTP_URL=smtp_url,
               NEWSLETTER_SECRET_KEY=SECRET, NEWSLETTER_INSTANCE_PATH=str(instance),
               NEWSLETTER_OUTBOX_RETRY_BASE="1", NEWSLETTER_SMTP_TIMEOUT="5")
    env.update(settings)
    return env


class Worker:
    """`newsletter worker` as a real process, its output in a file."""

    def __init__(self, env: dict[str, str], cwd: Path, *args: str) -> None:
        self.log = cwd / f"worker-{time.monotonic_ns()}.log"
        with self.log.open("wb") as stream:
            self.process = subprocess.Popen([str(SCRIPT), "worker", "--poll", "0.2", *args], env=env, cwd=cwd,
                                            stdout=stream, stderr=subprocess.STDOUT)

    def output(self) -> str:
        return self.log.read_text()

    def alive(self) -> bool:
        return self.process.poll() is None

    def wait_for_output(self, text: str, times: int = 1, timeout: float = 60) -> None:
        try:
            wait_until(lambda: self.output().count(text) >= times or not self.alive(),
                       f"{text!r} {times}x in the worker's output", timeout)
        except AssertionError as error:
            raise AssertionError(f"{error}:\n{self.output()}") from None
        assert self.alive(), self.output()

    def terminate(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=30)

    def kill(self) -> None:
        if self.alive():
            self.process.kill()
            self.process.wait(timeout=10)


@pytest.fixture
def workers() -> Iterator[list[Worker]]:
    started: list[Worker] = []
    yield started
    for worker in started:
        worker.kill()


@pytest.fixture
def faulty_app(faulty_database_url, smtp):
    """The app on the tests' own PostgreSQL cluster (which tests stop and restart), mailing the test SMTP server."""
    app = create_app({
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": faulty_database_url,
        "SECRET_KEY": SECRET,
        "NEWSLETTER_SMTP_URL": smtp.url,
        "NEWSLETTER_SMTP_TIMEOUT": 5,
        "NEWSLETTER_OUTBOX_RETRY_BASE": 1,
        "NEWSLETTER_MIN_FILL_SECONDS": 0,
        "NEWSLETTER_RATE_LIMIT_IP": "10000/minute",
        "NEWSLETTER_RATE_LIMIT_EMAIL": "10000/minute",
    })
    limiter.reset()
    with app.app_context():
        catalog.add_newsletter(db.session, "daily-briefing", name="The Daily Briefing", description="News.")
        db.session.commit()
        db.session.remove()
    yield app
    close_app(app)


def sign_up_many(client, prefix: str, number: int) -> list[str]:
    addresses = [f"{prefix}{index}@example.org" for index in range(number)]
    for address in addresses:
        sign_up(client, address)
    return addresses


def delivered(smtp) -> Counter[str]:
    """How often each Message-ID reached the SMTP server."""
    return Counter(message["Message-ID"] for message in smtp.inbox.messages)


def queued_message_ids(app) -> set[str]:
    return {row.message_id for row in outbox_rows(app)}


def statuses(app) -> dict[str, tuple[str, int]]:
    return {row.address: (row.status, row.attempts) for row in outbox_rows(app)}


# the database restarts and stops under the worker


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_worker_lives_through_a_database_restart_and_sends_every_message_once(
        faulty_app, pg_cluster, smtp, workers, tmp_path, mode):
    client = faulty_app.test_client()
    worker = Worker(worker_env(faulty_app.config["SQLALCHEMY_DATABASE_URI"], smtp.url, tmp_path), tmp_path,
                    "--max-pause", "2")
    workers.append(worker)
    before = sign_up_many(client, "before", 3)
    smtp.inbox.wait_for(3, timeout=60)

    # Queued, and the worker in the middle of sending them (slowly) when the database goes away.
    smtp.inbox.delay = 0.3
    during = sign_up_many(client, "during", 6)
    smtp.inbox.wait_for(4, timeout=60)
    pg_cluster.restart(mode, down_for=3)
    smtp.inbox.delay = 0

    worker.wait_for_output("the database is unavailable")
    after = sign_up_many(client, "after", 3)
    everyone = before + during + after
    smtp.inbox.wait_for(len(everyone), timeout=90)
    wait_until(lambda: [status for status, _ in statuses(faulty_app).values()] == ["sent"] * len(everyone),
               "every message to be marked sent", timeout=60)

    assert worker.alive(), worker.output()
    assert sorted(statuses(faulty_app)) == sorted(everyone)
    assert delivered(smtp) == Counter(queued_message_ids(faulty_app))  # each one, exactly once
    worker.wait_for_output("sending again")
    assert "Traceback" not in worker.output()
    assert worker.terminate() == 0, worker.output()


def test_worker_waits_out_a_stopped_database_and_sigterm_stops_it_while_it_pauses(
        faulty_app, pg_cluster, smtp, workers, tmp_path):
    client = faulty_app.test_client()
    queued = sign_up_many(client, "queued", 2)
    pg_cluster.stop("fast")
    try:
        worker = Worker(worker_env(faulty_app.config["SQLALCHEMY_DATABASE_URI"], smtp.url, tmp_path), tmp_path)
        workers.append(worker)
        # It keeps trying, one line each time, pausing 1 s, 2 s, 4 s…, and does not exit.
        worker.wait_for_output("trying again in 4 s")
        tries = [line for line in worker.output().splitlines() if "outbox: the database is unavailable" in line]
        assert [line.rsplit("trying again in ", 1)[1] for line in tries] == ["1 s", "2 s", "4 s"], worker.output()
        assert "Traceback" not in worker.output()
    finally:
        pg_cluster.start()
    smtp.inbox.wait_for(len(queued), timeout=60)
    worker.wait_for_output("sending again")
    assert delivered(smtp) == Counter(queued_message_ids(faulty_app))

    pg_cluster.stop("immediate")
    try:
        # Sending went well in between, so the pauses start again at 1 s: 1, 2, 4, then 8.
        worker.wait_for_output("trying again in 8 s", times=worker.output().count("trying again in 8 s") + 1)
        # In that 8 s pause, SIGTERM ends it at once.
        worker.process.send_signal(signal.SIGTERM)
        try:
            assert worker.process.wait(timeout=5) == 0, worker.output()
        except subprocess.TimeoutExpired:
            raise AssertionError(f"SIGTERM did not end the pause:\n{worker.output()}") from None
        assert "Traceback" not in worker.output()
    finally:
        pg_cluster.start()


def test_in_process_drainer_lives_through_a_database_restart(faulty_app, pg_cluster, smtp, caplog):
    caplog.set_level(logging.WARNING, logger="newsletter.outbox")
    drainer = outbox.InProcessDrainer(faulty_app, poll_seconds=0.2, max_pause=1)
    outbox.attach_drainer(faulty_app, drainer.start())
    client = faulty_app.test_client()
    before = sign_up_many(client, "before", 3)
    smtp.inbox.wait_for(3, timeout=60)

    pg_cluster.restart("immediate", down_for=3)
    wait_until(lambda: "the database is unavailable" in caplog.text, "the drainer to meet the outage", timeout=30)
    after = sign_up_many(client, "after", 3)
    smtp.inbox.wait_for(6, timeout=60)
    wait_until(lambda: [status for status, _ in statuses(faulty_app).values()] == ["sent"] * 6,
               "every message to be marked sent", timeout=60)

    assert drainer.is_alive()
    assert sorted(statuses(faulty_app)) == sorted(before + after)
    assert delivered(smtp) == Counter(queued_message_ids(faulty_app))
    assert "Traceback" not in caplog.text


# the SMTP relay is away


def test_relay_down_longer_than_every_retry_spends_no_attempts(app, client, smtp, workers, tmp_path):
    smtp.stop()
    addresses = sign_up_many(client, "patient", 3)
    worker = Worker(worker_env(app.config["SQLALCHEMY_DATABASE_URI"], smtp.url, tmp_path,
                               NEWSLETTER_OUTBOX_MAX_ATTEMPTS="2", NEWSLETTER_OUTBOX_RETRY_BASE="0"),
                    tmp_path, "--max-pause", "0.2")
    workers.append(worker)
    # Many more tries of the relay than a message has attempts.
    worker.wait_for_output("the mail relay is unavailable", times=6)
    assert statuses(app) == {address: ("pending", 0) for address in addresses}
    assert "Connection refused" in outbox_rows(app)[0].last_error

    smtp.start()
    smtp.inbox.wait_for(3, timeout=60)
    wait_until(lambda: statuses(app) == {address: ("sent", 1) for address in addresses}, "all sent", timeout=30)
    assert delivered(smtp) == Counter(queued_message_ids(app))
    worker.wait_for_output("sending again")  # logged once the drain that follows the outage is over
    assert "Traceback" not in worker.output()
    assert worker.terminate() == 0


def test_pauses_double_from_one_second_to_the_longest_and_start_again_after_a_success():
    backoff = outbox.Backoff(most=30)
    assert [backoff.next() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
    for _ in range(5000):  # an outage of a day and more, tried every 30 s
        assert backoff.next() == 30
    backoff.reset()
    assert backoff.next() == 1


class BrokenRelay:
    """A TCP server on a free port that greets with `greeting` (or never, or hangs up at once)."""

    def __init__(self, behaviour: str) -> None:
        self.behaviour = behaviour
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"smtp://127.0.0.1:{self.sock.getsockname()[1]}"
        self._stop = threading.Event()
        self._connections: list[socket.socket] = []
        if behaviour != "silent":  # silent: the connection is made, and nothing is ever said
            threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self.sock.accept()
            except OSError:
                return
            self._connections.append(connection)
            if self.behaviour.startswith("4") or self.behaviour.startswith("5"):
                connection.sendall(f"{self.behaviour}\r\n".encode())
            connection.close()

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
        for connection in self._connections:
            connection.close()


@pytest.mark.parametrize("behaviour, shown", [
    ("421 4.3.2 Service not available, closing channel", "421"),
    ("554 5.3.2 No SMTP service here", "554"),
    ("hangup", "SMTPServerDisconnected"),
    ("silent", "timed out"),
], ids=["421-greeting", "554-greeting", "hangs-up", "never-greets"])
def test_relay_that_will_not_talk_pauses_sending_without_spending_attempts(app, client, smtp, drain, behaviour,
                                                                           shown):
    relay = BrokenRelay(behaviour)
    app.config.update(NEWSLETTER_SMTP_URL=relay.url, NEWSLETTER_SMTP_TIMEOUT=1, NEWSLETTER_OUTBOX_MAX_ATTEMPTS=1)
    try:
        addresses = sign_up_many(client, "waiting", 2)
        for _ in range(3):
            result = drain()
            assert (result.sent, result.retrying, result.failed) == (0, 0, 0)
            assert shown in result.stopped_by_error
        assert statuses(app) == {address: ("pending", 0) for address in addresses}
    finally:
        relay.close()

    app.config["NEWSLETTER_SMTP_URL"] = smtp.url
    assert drain().sent == 2
    assert statuses(app) == {address: ("sent", 1) for address in addresses}


@pytest.fixture
def relay_refusing_logins(smtp) -> Iterator[str]:
    """An SMTP server (aiosmtpd) that offers AUTH and refuses every login; its URL with a user and password."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult

    port = free_port()
    controller = Controller(smtp.inbox, hostname="127.0.0.1", port=port, auth_require_tls=False,
                            authenticator=lambda *args: AuthResult(success=False, handled=False))
    controller.start()
    yield f"smtp://newsletters:wrong-password@127.0.0.1:{port}"
    controller.stop()


@pytest.mark.parametrize("failure, shown", [
    ("login refused", "SMTPAuthenticationError"),
    ("no STARTTLS", "STARTTLS"),
    ("TLS handshake", "SSL"),
])
def test_relay_refusing_the_login_or_tls_pauses_sending_without_spending_attempts(
        app, client, smtp, drain, relay_refusing_logins, failure, shown):
    url = {"login refused": relay_refusing_logins, "no STARTTLS": f"{smtp.url}?tls=starttls",
           "TLS handshake": f"smtps://127.0.0.1:{smtp.port}"}[failure]
    app.config.update(NEWSLETTER_SMTP_URL=url, NEWSLETTER_OUTBOX_MAX_ATTEMPTS=1)
    sign_up(client, "configured@example.org")
    for _ in range(2):
        result = drain()
        assert (result.sent, result.retrying, result.failed) == (0, 0, 0)
        assert shown in result.stopped_by_error
    assert statuses(app) == {"configured@example.org": ("pending", 0)}
    assert smtp.inbox.messages == []

    app.config["NEWSLETTER_SMTP_URL"] = smtp.url  # the operator fixes the setting
    assert drain().sent == 1
    assert statuses(app) == {"configured@example.org": ("sent", 1)}


def test_421_in_reply_to_a_message_pauses_instead_of_failing_it(app, client, smtp, drain):
    app.config["NEWSLETTER_OUTBOX_MAX_ATTEMPTS"] = 1
    smtp.inbox.refuse_with = "421 4.3.2 System shutting down"
    sign_up(client, "shutdown@example.org")
    result = drain()
    assert (result.sent, result.retrying, result.failed) == (0, 0, 0)
    assert "421" in result.stopped_by_error
    assert statuses(app) == {"shutdown@example.org": ("pending", 0)}

    smtp.inbox.refuse_with = None
    assert drain().sent == 1
    assert statuses(app) == {"shutdown@example.org": ("sent", 1)}


def test_a_message_that_makes_the_relay_hang_up_does_not_hold_up_the_others(app, client, smtp, drain):
    rcpt_refusing(smtp, {"poison@example.org": "421 4.4.2 Closing connection"})
    sign_up(client, "poison@example.org")
    sign_up(client, "fine@example.org")
    assert "421" in drain().stopped_by_error  # the first in line: sending pauses
    result = drain()  # after the pause the others go first
    assert result.sent == 1
    assert statuses(app) == {"poison@example.org": ("pending", 0), "fine@example.org": ("sent", 1)}


def test_a_message_the_relay_hangs_up_on_while_taking_others_fails_in_the_end(app, client, smtp, drain):
    app.config.update(NEWSLETTER_OUTBOX_MAX_ATTEMPTS=2, NEWSLETTER_OUTBOX_RETRY_BASE=60)

    async def handle_rcpt(server, session, envelope, address, rcpt_options):
        if address == "poison@example.org":
            server.transport.close()  # no reply at all: the connection just ends
            return "421 never read"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    smtp.inbox.handle_RCPT = handle_rcpt
    sign_up(client, "first@example.org")
    sign_up(client, "poison@example.org")
    for number in range(6):  # mail keeps coming while the relay keeps breaking off on one message
        sign_up(client, f"later{number}@example.org")
        drain()
        make_due(app)
    outcome = statuses(app)
    assert outcome.pop("poison@example.org") == ("failed", 2)
    assert set(outcome.values()) == {("sent", 1)}
    assert len(smtp.inbox.messages) == 7


def test_backoff_of_a_message_put_off_for_days_stays_at_an_hour(app, client, smtp, drain):
    app.config.update(NEWSLETTER_OUTBOX_MAX_ATTEMPTS=8, NEWSLETTER_OUTBOX_RETRY_BASE=30)
    smtp.inbox.refuse_with = "451 4.3.0 Try again later"  # the relay puts off everything, for days
    sign_up(client, "patient@example.org")
    query_and_commit(app, "UPDATE outbox_messages SET attempts = 1000")
    result = drain()
    assert (result.sent, result.failed, result.retrying) == (0, 0, 1)
    [row] = outbox_rows(app)
    assert (row.status, row.attempts) == ("pending", 1001)
    assert timedelta(minutes=59) < row.next_attempt_at - utcnow() <= timedelta(hours=1)

    smtp.inbox.refuse_with = None  # the sender was not stopped by it: the next due message goes
    sign_up(client, "next@example.org")
    assert drain().sent == 1


def query_and_commit(app, statement: str) -> None:
    with app.app_context():
        db.session.execute(sa.text(statement))
        db.session.commit()
        db.session.remove()


def test_the_outbox_logs_name_no_reader_address(app, client, smtp, drain, caplog):
    caplog.set_level(logging.INFO, logger="newsletter.outbox")
    app.config.update(NEWSLETTER_OUTBOX_MAX_ATTEMPTS=1)
    rcpt_refusing(smtp, {"full@example.org": "452 4.2.2 Mailbox full", "gone@example.org": "550 5.1.1 No such user"})
    for address in ("full@example.org", "gone@example.org", "fine@example.org"):
        sign_up(client, address)
    drain()
    assert "452" in caplog.text and "550" in caplog.text  # the relay's answers are logged …
    assert "@example.org" not in caplog.text  # … but not whom they were about
    assert "full@example.org" in " ".join(row.last_error or "" for row in outbox_rows(app))  # the admin still sees it


def test_a_worker_on_a_database_never_upgraded_says_to_upgrade_it(smtp, workers, tmp_path):
    worker = Worker(worker_env(f"sqlite:///{tmp_path / 'empty.sqlite3'}", smtp.url, tmp_path), tmp_path,
                    "--max-pause", "0.2")
    workers.append(worker)
    worker.wait_for_output("run `newsletter db upgrade`")
    assert worker.terminate() == 0


def rcpt_refusing(smtp, refusals: dict[str, str]) -> None:
    """Make the SMTP server answer RCPT TO for the given addresses with the given reply."""

    async def handle_rcpt(server, session, envelope, address, rcpt_options):
        if address in refusals:
            return refusals[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    smtp.inbox.handle_RCPT = handle_rcpt  # aiosmtpd looks hooks up on the handler for each connection


def test_5xx_to_one_recipient_fails_only_that_message(app, client, smtp, drain):
    rcpt_refusing(smtp, {"gone@example.org": "550 5.1.1 No such user"})
    sign_up(client, "first@example.org")
    sign_up(client, "gone@example.org")
    sign_up(client, "last@example.org")
    result = drain()
    assert (result.sent, result.retrying, result.failed) == (2, 0, 1)
    assert statuses(app) == {"first@example.org": ("sent", 1), "gone@example.org": ("failed", 1),
                             "last@example.org": ("sent", 1)}
    [refused] = [row for row in outbox_rows(app) if row.status == "failed"]
    assert "550" in refused.last_error
    assert sorted(m["To"].addresses[0].addr_spec for m in smtp.inbox.messages) == ["first@example.org",
                                                                                   "last@example.org"]


def test_4xx_to_one_recipient_spends_its_attempts_while_the_relay_takes_other_mail(app, client, smtp, drain):
    app.config.update(NEWSLETTER_OUTBOX_MAX_ATTEMPTS=2, NEWSLETTER_OUTBOX_RETRY_BASE=60)
    rcpt_refusing(smtp, {"full@example.org": "452 4.2.2 Mailbox full"})
    sign_up(client, "full@example.org")
    sign_up(client, "fine@example.org")
    result = drain()
    assert (result.sent, result.retrying, result.failed, result.stopped_by_error) == (1, 1, 0, None)
    assert statuses(app) == {"full@example.org": ("pending", 1), "fine@example.org": ("sent", 1)}

    make_due(app)
    result = drain()
    assert (result.sent, result.retrying, result.failed) == (0, 0, 1)
    assert statuses(app)["full@example.org"] == ("failed", 2)
    assert "452" in outbox_rows(app)[0].last_error  # the last error is kept for the operator

    rcpt_refusing(smtp, {})
    make_due(app)
    assert drain().sent == 0  # failed stays failed until `outbox retry`
    assert statuses(app)["full@example.org"] == ("failed", 2)


def test_relay_putting_off_every_message_fails_none_of_them(app, client, smtp, drain):
    # A relay whose queue is full answers 4xx to everything: out of attempts, the messages still wait.
    app.config.update(NEWSLETTER_OUTBOX_MAX_ATTEMPTS=2, NEWSLETTER_OUTBOX_RETRY_BASE=60)
    smtp.inbox.refuse_with = "451 4.3.0 Temporary local problem"
    addresses = sign_up_many(client, "waiting", 3)
    for _ in range(4):  # twice the attempts a message has
        result = drain()
        assert (result.sent, result.failed) == (0, 0)
        make_due(app)
    assert {status for status, _ in statuses(app).values()} == {"pending"}
    assert {attempts for _, attempts in statuses(app).values()} == {4}  # the tries are counted, honestly
    assert all("451" in row.last_error for row in outbox_rows(app))

    smtp.inbox.refuse_with = None
    assert drain().sent == 3
    assert statuses(app) == {address: ("sent", 5) for address in addresses}


def test_the_sender_says_sending_again_only_once_mail_goes_through(app, client, smtp, caplog):
    caplog.set_level(logging.WARNING, logger="newsletter.outbox")
    smtp.stop()
    sign_up(client, "held@example.org")
    stop = threading.Event()
    sender = outbox.Sender(outbox.transport_for(app.config), app.config)

    def run() -> None:
        with app.app_context():
            outbox.run(sender, stop, poll_seconds=0.05, max_pause=0.2)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        wait_until(lambda: "the mail relay is unavailable" in caplog.text, "the relay outage to be seen", timeout=30)
        # Another sender claims the message (its lease moves it out of reach) and, like this one, can't send it.
        with app.app_context():
            db.session.execute(sa.update(OutboxMessage).values(next_attempt_at=utcnow() + timedelta(hours=1)))
            db.session.commit()
            db.session.remove()
        time.sleep(1)  # this sender drains a few more times and finds nothing due
        assert "sending again" not in caplog.text
        smtp.start()
        make_due(app)
        wait_until(lambda: "sending again" in caplog.text, "the sender to send again", timeout=30)
        assert smtp.inbox.wait_for(1)[0]["To"].addresses[0].addr_spec == "held@example.org"
    finally:
        stop.set()
        thread.join(10)


# a row that goes away while it is being sent


def test_message_deleted_while_being_sent_does_not_stop_the_sender(app, client, smtp, drain, caplog):
    sign_up(client, "purged@example.org")
    sign_up(client, "kept@example.org")
    engine = sa.create_engine(app.config["SQLALCHEMY_DATABASE_URI"])
    handle_data = smtp.inbox.handle_DATA

    async def delete_while_sending(server, session, envelope):
        if "purged@example.org" in envelope.rcpt_tos:
            # As purge-pending would, from another connection, between the claim and the outcome.
            with engine.begin() as connection:
                connection.execute(sa.text("DELETE FROM outbox_messages WHERE reader_id IN "
                                           "(SELECT id FROM readers WHERE email = 'purged@example.org')"))
        return await handle_data(server, session, envelope)

    smtp.inbox.handle_DATA = delete_while_sending
    try:
        result = drain()
    finally:
        engine.dispose()
    assert result.sent == 1
    assert statuses(app) == {"kept@example.org": ("sent", 1)}
    assert len(smtp.inbox.wait_for(2)) == 2
    assert "was deleted while being sent" in caplog.text


def test_the_database_going_away_while_a_message_is_rendered_is_an_outage_not_the_messages_fault(
        app, client, smtp, drain, monkeypatch, caplog):
    """A database error while rendering (PostgreSQL restarting) goes to the sender's loop, which logs one line
    per try: the message is not called unrenderable, spends no attempt, and is sent once the database is back."""
    caplog.set_level(logging.INFO, logger="newsletter.outbox")
    sign_up(client, "steady@example.org")
    real_render = emails.render
    calls = {"n": 0}

    def render_once_cut_off(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise sa.exc.OperationalError("SELECT …", {}, Exception("terminating connection due to administrator "
                                                                     "command"))
        return real_render(*args, **kwargs)

    monkeypatch.setattr(emails, "render", render_once_cut_off)
    with pytest.raises(sa.exc.OperationalError):
        drain()
    assert "could not be rendered" not in caplog.text
    assert statuses(app) == {"steady@example.org": ("pending", 0)}
    assert drain().sent == 1
    assert statuses(app) == {"steady@example.org": ("sent", 1)}
    assert len(smtp.inbox.wait_for(1)) == 1


def test_message_cancelled_by_erasure_while_being_sent_keeps_the_erasure(app, client, smtp, drain):
    sign_up(client, "erase.me@example.org")
    [reader_id] = [row.reader_id for row in outbox_rows(app)]
    handle_data = smtp.inbox.handle_DATA
    loop_free = threading.Event()

    def erase() -> None:
        with app.app_context():
            from newsletter import privacy

            privacy.erase_reader(db.session, reader_id, source=subscriptions.Source(channel="admin"),
                                 config=app.config)
            db.session.commit()
            db.session.remove()
        loop_free.set()

    async def erase_while_sending(server, session, envelope):
        threading.Thread(target=erase).start()
        await asyncio.get_running_loop().run_in_executor(None, loop_free.wait, 30)
        return "550 5.1.1 No such user <erase.me@example.org>"

    smtp.inbox.handle_DATA = erase_while_sending
    result = drain()
    smtp.inbox.handle_DATA = handle_data
    assert result.failed == 0  # not counted: erasure had cancelled it already
    [row] = outbox_rows(app)
    # The refusal's text (which names the address) does not undo what erasure scrubbed.
    assert (row.status, row.last_error) == ("failed", "erased")
    assert "erase.me" not in row.address


# outbox status and outbox retry


def test_outbox_status_and_retry(app, client, runner, smtp, drain):
    rcpt_refusing(smtp, {"refused@example.org": "550 5.1.1 No such user"})
    sign_up(client, "sent@example.org")
    sign_up(client, "refused@example.org")
    sign_up(client, "blocked@example.org")
    with app.app_context():
        [blocked_id] = [row.reader_id for row in outbox_rows(app) if row.address == "blocked@example.org"]
        subscriptions.block(db.session, blocked_id, source=subscriptions.Source(channel="admin"),
                            config=app.config)
        db.session.commit()
        db.session.remove()
    assert drain().failed == 1
    smtp.stop()
    sign_up(client, "waiting@example.org")
    assert drain().stopped_by_error

    status = runner.invoke(args=["outbox", "status"])
    assert status.exit_code == 0, status.output
    assert "pending 1  sent 1  failed 2" in status.output
    assert "Oldest pending message:" in status.output and "due now: 1" in status.output
    assert "Connection refused" in status.output

    nothing = runner.invoke(args=["outbox", "retry", "--since", "2999-01-01"])
    assert (nothing.exit_code, nothing.output.strip()) == (0, "Queued 0 failed messages again.")
    blocked_message = next(row.id for row in outbox_rows(app) if row.address == "blocked@example.org")
    refused = runner.invoke(args=["outbox", "retry", "--id", str(blocked_message)])
    assert refused.exit_code == 1
    assert "blocked" in refused.output and "Traceback" not in refused.output

    # The 550 at RCPT was a hard bounce: the address stays suppressed until an admin lifts it, and a retry
    # leaves its message failed, with the server's words.
    skipped = runner.invoke(args=["outbox", "retry", "--since", "1h"])
    assert skipped.exit_code == 0, skipped.output
    assert "Skipped 1 message to addresses on the suppression list (1 hard bounce)" in skipped.output
    assert "Queued 0 failed messages again." in skipped.output
    refused_row = {row.address: row for row in outbox_rows(app)}["refused@example.org"]
    assert refused_row.status == "failed" and "550 5.1.1 No such user" in refused_row.last_error
    with app.app_context():
        entry = suppressions.mail_stopped(db.session, app.config, "refused@example.org")
        assert entry is not None and entry.reason == "hard_bounce"
        suppressions.lift(db.session, entry.id, admin_id=None, note="the reader's mailbox works again")
        db.session.commit()
        db.session.remove()

    retried = runner.invoke(args=["outbox", "retry", "--since", "1h"])
    assert retried.exit_code == 0, retried.output
    assert "Queued 1 failed message again." in retried.output and "Skipped" not in retried.output
    rows = {row.address: row for row in outbox_rows(app)}
    assert (rows["refused@example.org"].status, rows["refused@example.org"].attempts) == ("pending", 0)
    assert rows["blocked@example.org"].status == "failed"  # an admin's block is never undone by a retry
    smtp.start()
    del smtp.inbox.handle_RCPT
    assert drain().sent == 2
    assert statuses(app)["refused@example.org"] == ("sent", 1)
    again = runner.invoke(args=["outbox", "retry"])
    assert "Queued 0 failed messages again." in again.output
    status = runner.invoke(args=["outbox", "status"])
    assert "pending 0  sent 3  failed 1" in status.output
    assert "Nothing waits to be sent." in status.output


@pytest.mark.parametrize("since", ["yesterday", "12x", "2026-13-40", "\x00", "-1h", "99999999999999d", "999999999d"])
def test_outbox_retry_refuses_a_bad_since(runner, since):
    result = runner.invoke(args=["outbox", "retry", "--since", since])
    assert result.exit_code == 2
    assert "--since" in result.output
    assert "Traceback" not in result.output
