"""A signed link is a key to a reader's subscriptions: no log line and no error page's Referer passes it on.

The web servers' access logs (gunicorn with our config, `newsletter serve`), the app's own log lines
about failed requests, and SQLAlchemy's error messages all leave it out.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import sqlalchemy as sa

from newsletter import create_app, tokens
from newsletter.extensions import db
from newsletter.signed_paths import redact

from .conftest import SECRET, free_port

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def signed_paths(app) -> list[str]:
    with app.test_request_context():
        return [f"/confirm/{tokens.confirm_token(1, [1])}", f"/unsubscribe/{tokens.unsubscribe_token(1, 1)}",
                f"/preferences/{tokens.preferences_token(1)}", f"/preferences/{tokens.preferences_token(1)}/data.json"]


def secret_parts(paths: list[str]) -> list[str]:
    return [path.split("/")[2] for path in paths]


def test_database_down_logs_no_signed_link(sqlite_template, tmp_path, caplog):
    # Nothing listens on this port: every request that needs the database meets a real refusal.
    app = create_app({"TESTING": True, "SECRET_KEY": SECRET,
                      "SQLALCHEMY_DATABASE_URI": f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/none"})
    client = app.test_client()
    paths = signed_paths(app)
    with caplog.at_level(logging.INFO):
        answers = [client.get(path) for path in paths] + [client.post(paths[1], data={"scope": "all"})]
    assert [answer.status_code for answer in answers] == [503] * len(answers)
    assert all(answer.headers["Referrer-Policy"] == "no-referrer" for answer in answers)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "database unavailable on GET /confirm/…" in logged
    for secret in secret_parts(paths):
        assert secret not in logged


def test_a_failed_statement_names_no_parameters(app):
    with app.app_context():
        with pytest.raises(sa.exc.StatementError) as failure:
            # The database's own message names no value here (a constraint's may quote the row).
            db.session.execute(sa.text("INSERT INTO readers (email, no_such_column) VALUES (:email, 1)"),
                               {"email": "ada.private@example.com"})
        db.session.rollback()
        db.session.remove()
    assert "ada.private@example.com" not in str(failure.value)


@pytest.mark.parametrize("method, suffix, status", [("PUT", "", 405), ("GET", "/", 404), ("GET", "/extra", 404)])
def test_error_pages_under_a_signed_link_send_no_referrer(app, client, method, suffix, status):
    for path in signed_paths(app)[:3]:
        response = client.open(path + suffix, method=method)
        assert response.status_code == status, path
        assert response.headers.get("Referrer-Policy") == "no-referrer", path


def _app_environment(tmp_path: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSLETTER_")}
    env.update({"NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp_path / 'newsletter.sqlite3'}",
                "NEWSLETTER_SECRET_KEY": SECRET, "NEWSLETTER_INSTANCE_PATH": str(tmp_path / "instance")})
    return env


def _wait_until_it_answers(url: str, process: subprocess.Popen) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the server exited with {process.returncode}"
        try:
            requests.get(url, timeout=5)
            return
        except requests.ConnectionError:
            time.sleep(0.2)
    raise AssertionError(f"{url} did not answer within 60 s")


def _assert_redacted(logged: str, paths: list[str]) -> None:
    assert "GET /confirm/… HTTP/1.1" in logged and "POST /unsubscribe/… HTTP/1.1" in logged
    for secret in secret_parts(paths):
        assert secret not in logged


def _visit_signed_links(app, base: str, server: subprocess.Popen) -> list[str]:
    """Open our signed links on the server at `base`, in several spellings; the paths."""
    _wait_until_it_answers(f"{base}/healthz", server)
    paths = signed_paths(app)
    for path in paths:
        requests.get(base + path, timeout=10, headers={"Referer": base + paths[0]})
    requests.post(base + paths[1], data={"List-Unsubscribe": "One-Click"}, timeout=10)
    # Other spellings that reach the same pages, or a redirect to them (link-rewriting mail gateways make some).
    confirm = paths[0]
    for spelling in (confirm.replace("/confirm/", "/%63onfirm/"), confirm.replace("/confirm/", "/confirm%2F"),
                     confirm.replace("/confirm/", "/confirm//")):
        requests.get(base + spelling, timeout=10, allow_redirects=False,
                     headers={"Referer": base + spelling.replace("/c", "/C")})
    return paths


@pytest.mark.skipif(not (BIN / "gunicorn").exists(), reason="gunicorn is not installed in this venv")
def test_gunicorn_access_log_leaves_signed_links_out(app, tmp_path):
    env = _app_environment(tmp_path)
    subprocess.run([str(BIN / "newsletter"), "db", "upgrade"], cwd=PROJECT, env=env, check=True, capture_output=True,
                   timeout=120)
    port, access_log = free_port(), tmp_path / "access.log"
    with (tmp_path / "gunicorn.log").open("wb") as output:
        server = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", "python:newsletter.gunicorn_conf", "-w", "1", "-b", f"127.0.0.1:{port}",
             "--access-logfile", str(access_log), "--access-logformat", '%(r)s "%(f)s" %(U)s', "wsgi:app"],
            cwd=PROJECT, env=env, stdout=output, stderr=subprocess.STDOUT)
    try:
        paths = _visit_signed_links(app, f"http://127.0.0.1:{port}", server)
    finally:
        server.terminate()
        server.wait(30)
    _assert_redacted(access_log.read_text(), paths)


def test_serve_access_log_leaves_signed_links_out(app, tmp_path):
    env = _app_environment(tmp_path)
    port = free_port()
    server = subprocess.Popen([str(BIN / "newsletter"), "serve", "--port", str(port)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        paths = _visit_signed_links(app, f"http://127.0.0.1:{port}", server)
    finally:
        server.terminate()
        logged = server.communicate(timeout=30)[0].decode()
    _assert_redacted(logged, paths)


def test_access_logs_keep_no_reader_address_from_the_api_paths():
    """`/api/v1/readers/<id or address>` names whom in its URL: the redaction both access logs use (gunicorn's
    with our config, `newsletter serve`'s) leaves the address out, in any spelling, and keeps reader ids."""
    for line in ('"DELETE /api/v1/readers/b16@example.org HTTP/1.1"',
                 '"POST /api/v1/readers/a7%40example.org/unsubscribe HTTP/1.1"',
                 '"GET /api/v1/readers/Ann@Example.org/export HTTP/1.1"',
                 '"GET //API/v1//readers/x%2540example.org HTTP/1.1"'):
        assert "@" not in redact(line) and "example.org" not in redact(line).lower(), redact(line)
    assert redact('"POST /api/v1/readers/a7%40example.org/unsubscribe HTTP/1.1"') == \
        '"POST /api/v1/readers/…/unsubscribe HTTP/1.1"'
    assert redact('"GET /api/v1/readers/42/export HTTP/1.1"') == '"GET /api/v1/readers/42/export HTTP/1.1"'
