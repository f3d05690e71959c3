"""Slow work (a password hash, a DNS lookup) runs outside any transaction, so other writers never wait for it.

On SQLite every transaction begins IMMEDIATE and so holds the database's one write lock: a DNS lookup
or a scrypt hash inside one would hold every signup, confirmation and login in the process back. Each
test stops the slow step half-way, writes from a second connection with a short busy timeout, and only
then lets the slow step finish. Public DNS can't run here: the resolver is a stand-in.
"""

from __future__ import annotations

import sqlite3
import threading

import dns.exception
import dns.resolver
import psycopg
import pytest
from sqlalchemy.engine import make_url

from newsletter import accounts
from newsletter.extensions import db

from .conftest import hidden_fields, query

PASSWORD = "correct horse battery staple"


class Gate:
    """Holds the slow step at its start until the test lets it go."""

    def __init__(self) -> None:
        self.reached, self.released = threading.Event(), threading.Event()

    def hold(self) -> None:
        self.reached.set()
        self.released.wait(10)


def write_from_another_connection(app, slug: str) -> None:
    """INSERT a newsletter through a connection of its own that waits at most 0.3 s for a lock."""
    url = make_url(app.config["SQLALCHEMY_DATABASE_URI"])
    statement = ("INSERT INTO newsletters (slug, name, description, send_welcome, created_at) "
                 f"VALUES ('{slug}', 'Written meanwhile', '', true, CURRENT_TIMESTAMP)")
    if url.get_backend_name() == "sqlite":
        connection = sqlite3.connect(url.database, timeout=0.3, isolation_level=None)
        try:
            connection.execute(statement)
        finally:
            connection.close()
    else:
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        with psycopg.connect(conninfo, autocommit=True, options="-c lock_timeout=300") as connection:
            connection.execute(statement)


def run_while_held(app, gate: Gate, slow_request) -> tuple[object, str | None]:
    """Start `slow_request` in a thread, write meanwhile, then let it finish: (its answer, the write's error)."""
    answers = []
    thread = threading.Thread(target=lambda: answers.append(slow_request()))
    thread.start()
    try:
        assert gate.reached.wait(10), "the slow step never started"
        try:
            write_from_another_connection(app, "written-meanwhile")
            failure = None
        except (sqlite3.OperationalError, psycopg.errors.LockNotAvailable) as error:
            failure = str(error)
    finally:
        gate.released.set()
        thread.join(15)
    return answers[0], failure


@pytest.fixture
def slow_dns(monkeypatch):
    """Deliverability checks on, with a resolver that stops at the gate and then times out (which passes)."""
    gate = Gate()

    class HeldResolver:
        lifetime = 3.0

        def resolve(self, *args, **kwargs):
            gate.hold()
            raise dns.exception.Timeout()

    monkeypatch.setattr(dns.resolver, "get_default_resolver", lambda: HeldResolver())
    return gate


@pytest.mark.parametrize("path, channel", [
    ("/subscribe", "hosted-form"),
    ("/subscribe/daily-briefing", "hosted-form"),
    ("/embed/daily-briefing", "embed-iframe"),
    ("/api/v1/subscriptions", "api"),
])
def test_a_signup_checks_deliverability_before_its_transaction(app, slow_dns, path, channel):
    app.config["NEWSLETTER_CHECK_DELIVERABILITY"] = True
    client = app.test_client()
    if path.startswith("/api/"):
        def sign_up():
            return client.post(path, json={"email": "slow@example.com", "newsletters": ["daily-briefing"]})
    else:
        fields = hidden_fields(client.get(path).get_data(as_text=True))

        def sign_up():
            return client.post(path, data={**fields, "email": "slow@example.com", "newsletters": ["daily-briefing"]})

    answer, failure = run_while_held(app, slow_dns, sign_up)
    assert failure is None, f"the other write waited for the DNS lookup: {failure}"
    assert answer.status_code in (202, 303, 200), answer.get_data(as_text=True)
    assert query(app, "SELECT count(*) FROM newsletters WHERE slug = 'written-meanwhile'") == [(1,)]
    assert query(app, "SELECT source FROM consent_events") == [(channel,)]


@pytest.fixture
def slow_hash(monkeypatch):
    """Password checks stop at the gate, then check as usual."""
    gate = Gate()
    real_check = accounts.check_password_hash

    def held_check(stored, password):
        gate.hold()
        return real_check(stored, password)

    monkeypatch.setattr(accounts, "check_password_hash", held_check)
    return gate


def test_a_login_checks_the_password_outside_a_transaction(app, slow_hash):
    with app.app_context():
        accounts.create_admin(db.session, "editor@example.org", PASSWORD, "admin")
        db.session.commit()
    client = app.test_client()
    fields = hidden_fields(client.get("/admin/login").get_data(as_text=True))

    answer, failure = run_while_held(app, slow_hash, lambda: client.post(
        "/admin/login", data={**fields, "email": "editor@example.org", "password": PASSWORD}))
    assert failure is None, f"the other write waited for the password check: {failure}"
    assert answer.status_code == 303
    assert client.get("/admin/").status_code == 200


def test_a_password_change_hashes_outside_a_transaction(app, slow_hash, monkeypatch):
    with app.app_context():
        accounts.create_admin(db.session, "editor@example.org", PASSWORD, "admin")
        db.session.commit()
    client = app.test_client()
    slow_hash.released.set()  # the login itself goes through at once
    fields = hidden_fields(client.get("/admin/login").get_data(as_text=True))
    assert client.post("/admin/login", data={**fields, "email": "editor@example.org",
                                             "password": PASSWORD}).status_code == 303
    slow_hash.reached.clear()
    slow_hash.released.clear()
    fields = hidden_fields(client.get("/admin/password").get_data(as_text=True))

    answer, failure = run_while_held(app, slow_hash, lambda: client.post("/admin/password", data={
        **fields, "current": PASSWORD, "new": "a new and longer passphrase", "repeat": "a new and longer passphrase"}))
    assert failure is None, f"the other write waited for the password check: {failure}"
    assert answer.status_code == 303
