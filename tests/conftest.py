"""Fixtures: the app on each database backend, a real SMTP server, a live HTTP server, a CLI runner.

Every test that uses `app` runs on SQLite, and on PostgreSQL too when NEWSLETTER_TEST_DATABASE_URL
names a server whose user may create databases (e.g. postgresql+psycopg://postgres@127.0.0.1/test).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import timedelta
from email import policy
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path

import pytest
import sqlalchemy as sa
from aiosmtpd.controller import Controller
from itsdangerous import TimestampSigner
from werkzeug.serving import make_server

from newsletter import catalog, create_app, outbox, subscriptions
from newsletter.extensions import db, limiter
from newsletter.mailer import transport_for

PG_URL = os.environ.get("NEWSLETTER_TEST_DATABASE_URL")
BACKENDS = ["sqlite"] + (["postgresql"] if PG_URL else [])
SECRET = "test-secret-key-not-for-production"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _upgrade(url: str, instance: Path) -> None:
    app = create_app({"SQLALCHEMY_DATABASE_URI": url, "SECRET_KEY": SECRET})
    with app.app_context():
        from flask_migrate import upgrade

        upgrade()
        db.engine.dispose()


@pytest.fixture(scope="session")
def instance_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("instance")
    os.environ["NEWSLETTER_INSTANCE_PATH"] = str(path)
    yield path


@pytest.fixture(scope="session")
def sqlite_template(instance_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An SQLite file upgraded once by the migrations; each test gets a copy."""
    path = tmp_path_factory.mktemp("sqlite") / "template.sqlite3"
    _upgrade(f"sqlite:///{path}", instance_dir)
    return path


@pytest.fixture(scope="session")
def postgres_url(instance_dir: Path) -> Iterator[str]:
    """A database of this test run's own on the PostgreSQL server, upgraded once by the migrations."""
    assert PG_URL
    name = f"newsletter_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = sa.create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    _upgrade(url, instance_dir)
    yield url
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.dispose()


TABLES = ["feed_state", "webhook_attempts", "webhook_endpoints", "webhook_nonces", "import_refusals", "imports", "suppressions", "delivery_events", "exports",
          "api_tokens", "admin_sessions", "admin_users", "consent_events", "outbox_messages", "subscriptions",
          "readers", "newsletters"]


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A freshly migrated, empty database on each backend."""
    if request.param == "sqlite":
        path = tmp_path / "newsletter.sqlite3"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    url = request.getfixturevalue("postgres_url")
    engine = sa.create_engine(url)
    with engine.begin() as connection:
        connection.exec_driver_sql(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY CASCADE")
    engine.dispose()
    return url


class Inbox:
    """What a real SMTP server received, parsed as the mail client would."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self._changed = threading.Condition()
        self.delay = 0.0
        self.refuse_with: str | None = None
        # Recipient (lowercased) -> the reply to its RCPT TO, e.g. "550 5.1.1 <x>: Recipient address rejected".
        self.refuse_rcpt: dict[str, str] = {}
        self.rcpt_refused: list[str] = []
        # The reply to every MAIL FROM, e.g. "553 5.7.1 Sender address rejected: not owned by user"; None: 250.
        self.refuse_mail_from: str | None = None

    async def handle_MAIL(self, server, session, envelope, address, mail_options) -> str:  # noqa: N802
        if self.refuse_mail_from:
            return self.refuse_mail_from
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options) -> str:  # noqa: N802
        refusal = self.refuse_rcpt.get(address.lower())
        if refusal:
            self.rcpt_refused.append(address)
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's name)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.refuse_with:
            return self.refuse_with
        message = BytesParser(policy=policy.default).parsebytes(envelope.original_content or envelope.content)
        with self._changed:
            self.messages.append(message)
            self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos)))
            self._changed.notify_all()
        return "250 OK"

    def wait_for(self, count: int, timeout: float = 15) -> list[EmailMessage]:
        """The first `count` messages, waiting for them to arrive."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while len(self.messages) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"expected {count} messages, got {len(self.messages)}")
                self._changed.wait(left)
            return self.messages[:count]


class SmtpServer:
    """An aiosmtpd server on a free port that a test can stop and start again."""

    def __init__(self) -> None:
        self.port = free_port()
        self.inbox = Inbox()
        self.url = f"smtp://127.0.0.1:{self.port}"
        self._controller: Controller | None = None

    def start(self) -> None:
        self._controller = Controller(self.inbox, hostname="127.0.0.1", port=self.port, enable_SMTPUTF8=True)
        self._controller.start()

    def stop(self) -> None:
        if self._controller is not None:
            self._controller.stop()
            self._controller = None


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def app(database_url: str, smtp: SmtpServer, instance_dir: Path):
    app = create_app({
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SECRET_KEY": SECRET,
        "NEWSLETTER_SMTP_URL": smtp.url,
        "NEWSLETTER_SMTP_TIMEOUT": 5,
        "NEWSLETTER_OUTBOX_RETRY_BASE": 0,
        # Tests that check the bot defences set these back; the rest act faster than people do.
        "NEWSLETTER_MIN_FILL_SECONDS": 0,
        "NEWSLETTER_RATE_LIMIT_IP": "10000/minute",
        "NEWSLETTER_RATE_LIMIT_EMAIL": "10000/minute",
    })
    limiter.reset()
    with app.app_context():
        catalog.add_newsletter(db.session, "daily-briefing", name="The Daily Briefing",
                               description="The day's news every morning.")
        catalog.add_newsletter(db.session, "weekly-explainer", name="The Weekly Explainer",
                               author="Olena Kovalenko", description="One story in depth.")
        catalog.add_newsletter(db.session, "no-welcome", name="Quiet Letter", send_welcome=False)
        db.session.commit()
        db.session.remove()
    yield app
    close_app(app)


def close_app(app) -> None:
    """Stop an app's in-process drainer and close its database connections."""
    for name in ("newsletter.drainer", "newsletter.webhook_sender"):
        drainer = app.extensions.pop(name, None)
        if drainer is not None:
            drainer.stop()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def runner(app):
    return app.test_cli_runner()


@pytest.fixture
def drain(app):
    """Send what the outbox holds now, as `newsletter worker --once` would."""

    def run() -> outbox.DrainResult:
        with app.app_context():
            transport = transport_for(app.config)
            try:
                return outbox.drain(db.session, transport, app.config)
            finally:
                transport.close()
                db.session.remove()

    return run


@pytest.fixture
def live_server(app):
    """The app over real HTTP on a free port, with the outbox drained in-process as `newsletter serve` does."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    app.config["NEWSLETTER_PUBLIC_URL"] = f"http://127.0.0.1:{server.port}"
    outbox.attach_drainer(app, outbox.InProcessDrainer(app, poll_seconds=0.5).start())
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.port}"
    server.shutdown()
    thread.join(5)


def query(app, statement, **params):
    """Rows of a SQL statement, read in the app's database."""
    with app.app_context():
        try:
            return db.session.execute(sa.text(statement), params).all()
        finally:
            db.session.remove()


def link_in(message: EmailMessage, path: str) -> str:
    """The first URL in the message's plain text whose path starts with `path` (e.g. '/confirm/')."""
    text = message.get_body(("plain",)).get_content()
    match = re.search(r"https?://[^\s/]+" + re.escape(path) + r"\S+", text)
    assert match, f"no {path} link in:\n{text}"
    return match.group(0)


def csrf_token(html: str) -> str:
    """The CSRF token of the first form in a page."""
    field = re.search(r'<input[^>]*name="csrf_token"[^>]*>', html)
    assert field, "no CSRF token in the page"
    return re.search(r'value="([^"]+)"', field.group(0)).group(1)


def hidden_fields(html: str) -> dict[str, str]:
    """The hidden inputs of a page's form (CSRF and fill-time tokens…), as a browser would send them."""
    fields = {}
    for tag in re.findall(r'<input[^>]*type="hidden"[^>]*>', html):
        name = re.search(r'name="([^"]+)"', tag)
        value = re.search(r'value="([^"]*)"', tag)
        if name:
            fields[name.group(1)] = value.group(1) if value else ""
    return fields


@pytest.fixture(scope="session")
def pg_cluster():
    """A PostgreSQL cluster of this test run's own, which fault tests stop and start (tests/pg_cluster.py)."""
    from .pg_cluster import own_cluster

    yield from own_cluster()


@pytest.fixture
def faulty_database_url(pg_cluster, instance_dir: Path) -> str:
    """A freshly migrated database on the tests' own cluster, started if a previous test left it down."""
    if not pg_cluster.is_up():
        pg_cluster.start()
    url = pg_cluster.create_database(f"faults_{uuid.uuid4().hex[:8]}")
    _upgrade(url, instance_dir)
    return url


@pytest.fixture
def clock(monkeypatch):
    """Moves the service's clock forward: the time in signed links and the time of domain changes."""

    class Clock:
        offset = 0.0

        def advance(self, seconds: float) -> None:
            self.offset += seconds

    clock = Clock()
    real_time, real_utcnow = time.time, subscriptions.utcnow
    monkeypatch.setattr(TimestampSigner, "get_timestamp", lambda self: int(real_time() + clock.offset))
    monkeypatch.setattr(subscriptions, "utcnow", lambda: real_utcnow() + timedelta(seconds=clock.offset))
    return clock
