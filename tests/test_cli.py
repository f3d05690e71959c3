"""The `newsletter` command: through Flask's CLI runner, and as the real console script."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from email import policy
from email.parser import BytesParser
from pathlib import Path

import pytest
import requests
from sqlalchemy import select

from newsletter import subscriptions
from newsletter.extensions import db
from newsletter.models import Newsletter, Reader, utcnow

from .conftest import SECRET, free_port, link_in, query

SCRIPT = Path(sys.executable).with_name("newsletter")
TABLES = {"alembic_version", "newsletters", "readers", "subscriptions", "consent_events", "outbox_messages"}


def clean_env(**settings: str) -> dict[str, str]:
    """The environment without any NEWSLETTER_ or FLASK_ setting of this test run, plus `settings`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(("NEWSLETTER_", "FLASK_"))}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(settings)
    return env


def run_script(*args: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCRIPT), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=60)


def counts_table(output: str) -> dict[str, tuple[int, int, int]]:
    """slug → (pending, confirmed, unsubscribed) from `newsletters list`."""
    lines = output.strip().splitlines()
    assert lines[0].split()[:4] == ["slug", "pending", "confirmed", "unsubscribed"], output
    table = {}
    for line in lines[1:]:
        slug, pending, confirmed, unsubscribed, *_ = line.split()
        table[slug] = (int(pending), int(confirmed), int(unsubscribed))
    return table


# newsletters add / list


def test_add_newsletter_then_list_counts_per_status(app, runner, drain, smtp):
    added = runner.invoke(args=["newsletters", "add", "tech-notes", "--name", "Tech Notes",
                                "--description", "Notes on the tools we use.", "--author", "Ada Lovelace",
                                "--no-welcome"])
    assert added.exit_code == 0, added.output
    assert "Added tech-notes: Tech Notes" in added.output
    assert query(app, "SELECT name, description, author, send_welcome, archived_at FROM newsletters "
                      "WHERE slug = 'tech-notes'") == [("Tech Notes", "Notes on the tools we use.", "Ada Lovelace",
                                                        False, None)]

    source = subscriptions.Source(channel="cli")
    with app.app_context():
        tech, daily = (db.session.scalar(select(Newsletter).where(Newsletter.slug == slug))
                       for slug in ("tech-notes", "daily-briefing"))
        for number in range(6):
            chosen = [tech, daily] if number == 0 else [tech]
            subscriptions.sign_up(db.session, f"reader{number}@example.org", chosen, source=source, config=app.config)
        db.session.commit()
        readers = {reader.email: reader.id for reader in db.session.scalars(select(Reader))}
        for number in (0, 1, 2):
            subscriptions.confirm(db.session, readers[f"reader{number}@example.org"], [tech.id], issued_at=utcnow(),
                                  source=source, config=app.config)
        subscriptions.unsubscribe(db.session, readers["reader2@example.org"], tech.id, source=source)
        db.session.commit()
        db.session.remove()

    listed = runner.invoke(args=["newsletters", "list"])
    assert listed.exit_code == 0, listed.output
    assert counts_table(listed.output) == {
        "daily-briefing": (1, 0, 0),
        "no-welcome": (0, 0, 0),
        "tech-notes": (3, 2, 1),
        "weekly-explainer": (0, 0, 0),
    }
    tech_line = next(line for line in listed.output.splitlines() if line.startswith("tech-notes"))
    assert tech_line.endswith("Tech Notes")

    # --no-welcome: confirming sent only the six confirmation emails, no welcome.
    assert query(app, "SELECT kind, count(*) FROM outbox_messages GROUP BY kind") == [("confirmation", 6)]


def test_list_marks_archived_newsletters(app, runner):
    with app.app_context():
        newsletter = db.session.scalar(select(Newsletter).where(Newsletter.slug == "weekly-explainer"))
        newsletter.archived_at = utcnow()
        db.session.commit()
        db.session.remove()
    listed = runner.invoke(args=["newsletters", "list"])
    assert listed.exit_code == 0, listed.output
    line = next(line for line in listed.output.splitlines() if line.startswith("weekly-explainer"))
    assert "(archived)" in line
    daily = next(line for line in listed.output.splitlines() if line.startswith("daily-briefing"))
    assert "(archived)" not in daily


def test_add_duplicate_slug_is_a_clean_error(app, runner):
    result = runner.invoke(args=["newsletters", "add", "daily-briefing", "--name", "Another Briefing"])
    assert result.exit_code != 0
    assert "Error:" in result.output and "daily-briefing" in result.output and "exists already" in result.output
    assert "Traceback" not in result.output
    assert query(app, "SELECT name FROM newsletters WHERE slug = 'daily-briefing'") == [("The Daily Briefing",)]


BAD_SLUGS = [
    ("Daily Briefing", "space and capitals"),
    ("UPPER", "capitals"),
    ("-daily", "starts with a dash"),
    ("daily-", "ends with a dash"),
    ("daily_briefing", "underscore"),
    ("x" * 65, "longer than 64 characters"),
    ("", "empty"),
]


@pytest.mark.parametrize(("slug", "why"), BAD_SLUGS, ids=[why for _, why in BAD_SLUGS])
def test_add_malformed_slug_is_a_clean_error(app, runner, slug, why):
    # "--" so that a slug starting with a dash reaches the command as the slug, not as an option.
    result = runner.invoke(args=["newsletters", "add", "--name", "Some Letter", "--", slug])
    assert result.exit_code != 0
    assert "Error:" in result.output and "can't be a slug" in result.output, result.output
    assert "Traceback" not in result.output
    assert query(app, "SELECT count(*) FROM newsletters") == [(3,)]


def test_add_without_a_name_is_a_clean_error(app, runner):
    result = runner.invoke(args=["newsletters", "add", "nameless", "--name", "   "])
    assert result.exit_code != 0
    assert "Error:" in result.output and "name" in result.output
    assert "Traceback" not in result.output
    assert query(app, "SELECT count(*) FROM newsletters WHERE slug = 'nameless'") == [(0,)]


# worker


def test_worker_once_sends_pending_messages(app, client, runner, smtp):
    for address in ("one@example.org", "two@example.org"):
        answer = client.post("/api/v1/subscriptions", json={"email": address, "newsletters": ["daily-briefing"]})
        assert answer.status_code == 202

    result = runner.invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert "sent 2, will retry 0, failed 0" in result.output
    messages = smtp.inbox.wait_for(2)
    assert sorted(m["To"].addresses[0].addr_spec for m in messages) == ["one@example.org", "two@example.org"]
    assert query(app, "SELECT status, count(*) FROM outbox_messages GROUP BY status") == [("sent", 2)]

    again = runner.invoke(args=["worker", "--once"])
    assert again.exit_code == 0, again.output
    assert "sent 0, will retry 0, failed 0" in again.output
    assert len(smtp.inbox.messages) == 2


def test_worker_once_reports_the_relay_outage_without_spending_attempts(app, client, runner, smtp):
    smtp.stop()
    client.post("/api/v1/subscriptions", json={"email": "later@example.org", "newsletters": ["daily-briefing"]})
    result = runner.invoke(args=["worker", "--once"])
    assert result.exit_code == 1
    assert "sent 0, will retry 0, failed 0" in result.output, result.output
    assert "The mail relay is unavailable" in result.output
    assert "Traceback" not in result.output
    assert query(app, "SELECT status, attempts FROM outbox_messages") == [("pending", 0)]

    smtp.start()
    result = runner.invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert "sent 1, will retry 0, failed 0" in result.output
    smtp.inbox.wait_for(1)


def test_worker_keeps_sending_new_messages_and_stops_cleanly(app, client, smtp, tmp_path):
    env = clean_env(NEWSLETTER_DATABASE_URL=app.config["SQLALCHEMY_DATABASE_URI"], NEWSLETTER_SMTP_URL=smtp.url,
                    NEWSLETTER_SECRET_KEY=SECRET, NEWSLETTER_INSTANCE_PATH=str(tmp_path))
    log = tmp_path / "worker.log"
    with log.open("wb") as stream:
        worker = subprocess.Popen([str(SCRIPT), "worker", "--poll", "0.2"], env=env, cwd=tmp_path,
                                  stdout=stream, stderr=subprocess.STDOUT)
    try:
        for number, address in enumerate(("first@example.org", "second@example.org"), start=1):
            answer = client.post("/api/v1/subscriptions", json={"email": address, "newsletters": ["daily-briefing"]})
            assert answer.status_code == 202
            assert smtp.inbox.wait_for(number)[-1]["To"].addresses[0].addr_spec == address
        assert worker.poll() is None, log.read_text()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=30) == 0, log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(timeout=10)
    output = log.read_text()
    assert f"Worker sending via SMTP 127.0.0.1:{smtp.port}" in output
    assert "Traceback" not in output
    assert query(app, "SELECT status, count(*) FROM outbox_messages GROUP BY status") == [("sent", 2)]


# the real console script


def test_db_upgrade_creates_the_tables_in_a_fresh_sqlite_file(tmp_path):
    database = tmp_path / "x.sqlite3"
    env = clean_env(NEWSLETTER_DATABASE_URL=f"sqlite:///{database}", NEWSLETTER_INSTANCE_PATH=str(tmp_path))
    upgraded = run_script("db", "upgrade", env=env, cwd=tmp_path)
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    with sqlite3.connect(database) as connection:
        tables = {name for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        [(version,)] = connection.execute("SELECT version_num FROM alembic_version").fetchall()
    assert TABLES <= tables
    assert version

    # Running it again changes nothing and succeeds; the empty database lists no newsletters.
    again = run_script("db", "upgrade", env=env, cwd=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    listed = run_script("newsletters", "list", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "No newsletters yet" in listed.stdout


@pytest.mark.parametrize("command", [["newsletters", "list"], ["db", "upgrade"]], ids=" ".join)
def test_production_without_secret_key_refuses_to_start(tmp_path, command):
    env = clean_env(NEWSLETTER_ENV="production", NEWSLETTER_INSTANCE_PATH=str(tmp_path),
                    NEWSLETTER_DATABASE_URL=f"sqlite:///{tmp_path / 'x.sqlite3'}")
    result = run_script(*command, env=env, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "NEWSLETTER_SECRET_KEY" in output
    assert "Traceback" not in output
    # No development key was made up and stored in its place.
    assert not (tmp_path / "secret_key").exists()


def test_serve_runs_everything_in_one_process(tmp_path):
    instance = tmp_path / "instance"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(NEWSLETTER_INSTANCE_PATH=str(instance), NEWSLETTER_PUBLIC_URL=base)
    log = tmp_path / "serve.log"
    with log.open("wb") as stream:
        server = subprocess.Popen([str(SCRIPT), "serve", "--port", str(port)], env=env, cwd=tmp_path,
                                  stdout=stream, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"serve exited early:\n{log.read_text()}"
            try:
                page = requests.get(f"{base}/subscribe", timeout=5)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, f"serve never answered:\n{log.read_text()}"
                time.sleep(0.1)

        output = log.read_text()
        assert f"{base}/subscribe" in output
        assert str(instance / "mail") in output  # where the emails land
        assert page.status_code == 200
        assert 'for="newsletter-daily-briefing"' in page.text and 'for="newsletter-weekly-explainer"' in page.text
        assert "The Daily Briefing" in page.text and "The Weekly Explainer" in page.text

        answer = requests.post(f"{base}/api/v1/subscriptions",
                               json={"email": "newcomer@example.org", "newsletters": ["weekly-explainer"]}, timeout=10)
        assert answer.status_code == 202
        assert answer.json() == {"status": "pending"}

        mail = instance / "mail"
        deadline = time.monotonic() + 30
        while not (emails := sorted(mail.glob("*.eml"))):
            assert time.monotonic() < deadline, f"no .eml file in {mail}:\n{log.read_text()}"
            assert server.poll() is None, f"serve died:\n{log.read_text()}"
            time.sleep(0.1)
        [eml] = emails
        message = BytesParser(policy=policy.default).parsebytes(eml.read_bytes())
        assert message["To"].addresses[0].addr_spec == "newcomer@example.org"
        confirm_url = link_in(message, "/confirm/")
        assert confirm_url.startswith(f"{base}/confirm/")
        confirm_page = requests.get(confirm_url, timeout=10)
        assert confirm_page.status_code == 200
        assert "The Weekly Explainer" in confirm_page.text
    finally:
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=10)


def test_production_without_public_url_refuses_to_start(tmp_path):
    env = clean_env(NEWSLETTER_ENV="production", NEWSLETTER_INSTANCE_PATH=str(tmp_path),
                    NEWSLETTER_SECRET_KEY="a-real-secret-key-for-this-test",
                    NEWSLETTER_DATABASE_URL=f"sqlite:///{tmp_path / 'x.sqlite3'}")
    result = run_script("newsletters", "list", env=env, cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "NEWSLETTER_PUBLIC_URL" in output
    assert "Traceback" not in output


@pytest.mark.parametrize("command", [["outbox", "status"], ["newsletters", "list"], ["purge-pending"],
                                     ["admins", "list"], ["tokens", "list"]])
def test_commands_say_in_one_line_that_the_database_is_unavailable(tmp_path, command):
    # Nothing listens there: the connection is refused, as when PostgreSQL is down.
    env = clean_env(NEWSLETTER_DATABASE_URL=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/newsletter",
                    NEWSLETTER_INSTANCE_PATH=str(tmp_path))
    done = run_script(*command, env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("Error: The database is unavailable: OperationalError: connection failed")
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("command", [["outbox", "status"], ["newsletters", "list"]])
def test_commands_on_a_database_never_upgraded_say_to_upgrade_it(tmp_path, command):
    env = clean_env(NEWSLETTER_DATABASE_URL=f"sqlite:///{tmp_path / 'empty.sqlite3'}",
                    NEWSLETTER_INSTANCE_PATH=str(tmp_path))
    done = run_script(*command, env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.startswith("Error: The database has no tables for this yet")
    assert "run `newsletter db upgrade`" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
