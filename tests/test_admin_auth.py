"""Admin accounts: the CLI, login, lockout, sessions, and that nothing under /admin is open to anonymous users."""

from __future__ import annotations

import re

import pytest

from newsletter import accounts
from newsletter.extensions import db

from .conftest import hidden_fields, query

PASSWORD = "correct horse battery staple"


@pytest.fixture
def admin(app):
    with app.app_context():
        accounts.create_admin(db.session, "editor@example.org", PASSWORD, "admin")
        accounts.create_admin(db.session, "viewer@example.org", PASSWORD, "viewer")
        db.session.commit()
        db.session.remove()


def log_in(client, email, password):
    page = client.get("/admin/login")
    return client.post("/admin/login", data={**hidden_fields(page.get_data(as_text=True)),
                                              "email": email, "password": password})


def test_admins_add_reads_the_password_from_stdin_never_an_argument(app, runner):
    result = runner.invoke(args=["admins", "add", "Boss@Example.org", "--role", "viewer"], input=PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert "Added viewer Boss@example.org" in result.output
    [(email, role, hashed)] = query(app, "SELECT email, role, password_hash FROM admin_users")
    assert (email, role) == ("Boss@example.org", "viewer")
    assert PASSWORD not in hashed and hashed.startswith("scrypt:")

    short = runner.invoke(args=["admins", "add", "other@example.org"], input="short\n")
    assert short.exit_code != 0 and "at least 12 characters" in short.output
    again = runner.invoke(args=["admins", "add", "boss@example.org"], input=PASSWORD + "\n")
    assert again.exit_code != 0 and "already an admin account" in again.output


def test_login_gives_a_fresh_session_and_logout_ends_it(app, client, admin):
    assert client.get("/admin/").status_code == 302  # to the login page
    response = log_in(client, "editor@example.org", PASSWORD)
    assert response.status_code == 303 and response.headers["Location"].endswith("/admin/")
    cookie = client.get_cookie("session")
    assert cookie.http_only
    assert client.get("/admin/").status_code == 200

    page = client.get("/admin/")
    out = client.post("/admin/logout", data=hidden_fields(page.get_data(as_text=True)))
    assert out.status_code == 303
    assert client.get("/admin/").status_code == 302


def test_wrong_password_and_lockout(app, client, admin):
    for _ in range(accounts.MAX_FAILURES - 1):
        response = log_in(client, "editor@example.org", "wrong password!!")
        assert response.status_code == 401
        assert "Wrong email or password." in response.get_data(as_text=True)
    locked = log_in(client, "editor@example.org", "wrong password!!")
    assert "locked" in locked.get_data(as_text=True)
    # Locked: even the right password is refused for now.
    right = log_in(client, "editor@example.org", PASSWORD)
    assert right.status_code == 401 and "locked" in right.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302
    # An unknown address gets the same answer as a wrong password.
    unknown = log_in(client, "nobody@example.org", PASSWORD)
    assert unknown.status_code == 401 and "Wrong email or password." in unknown.get_data(as_text=True)


def test_login_without_csrf_token_is_refused(app, client, admin):
    response = client.post("/admin/login", data={"email": "editor@example.org", "password": PASSWORD})
    assert response.status_code == 400
    assert client.get("/admin/").status_code == 302


def test_next_parameter_never_leaves_the_admin(app, client, admin):
    page = client.get("/admin/login?next=//evil.example/")
    response = client.post("/admin/login?next=//evil.example/", data={
        **hidden_fields(page.get_data(as_text=True)), "email": "editor@example.org", "password": PASSWORD})
    assert response.headers["Location"].endswith("/admin/")


def test_every_admin_and_api_route_refuses_anonymous_access(app, client):
    """Walks the URL map: a new admin or authenticated API route that forgets its guard fails here."""
    public_api = {"api.create_subscription", "api.form_settings", "api.openapi", "api.docs"}
    # A valid CSRF token, so that only the login or token guard can refuse a POST.
    token = hidden_fields(client.get("/admin/login").get_data(as_text=True))["csrf_token"]
    checked = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in public_api or rule.endpoint == "admin.login":
            continue
        if not (rule.rule.startswith("/admin") or rule.rule.startswith("/api/")):
            continue
        path = re.sub(r"<[^>]+>", "1", rule.rule)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            response = client.open(path, method=method, data={"csrf_token": token})
            assert response.status_code in (302, 401), f"{method} {path} answered {response.status_code}"
            if rule.rule.startswith("/admin"):
                assert response.status_code == 401 or "/admin/login" in response.headers["Location"]
            checked.append(f"{method} {path}")
    assert "GET /admin/" in checked
