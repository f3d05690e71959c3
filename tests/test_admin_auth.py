"""Admin accounts: the CLI, login, lockout, sessions, and that nothing under /admin is open to anonymous users."""

from __future__ import annotations

import re

import pytest

from newsletter import accounts
from newsletter.extensions import db
from newsletter.login_throttle import DEVICE_COOKIE, DEVICE_MAX_AGE

from .conftest import csrf_token, hidden_fields, query

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


def test_a_wrong_password_is_refused_and_the_page_says_so(app, client, admin):
    response = log_in(client, "editor@example.org", "wrong password!!")
    assert response.status_code == 401
    assert "Wrong email or password." in response.get_data(as_text=True)
    assert client.get("/admin/").status_code == 302


def client_at(app, ip_address):
    """A browser of its own at this client IP."""
    browser = app.test_client()
    browser.environ_base["REMOTE_ADDR"] = ip_address
    return browser


def test_a_stranger_hammering_an_account_is_throttled_but_the_admin_still_logs_in(app, admin):
    app.config.update(NEWSLETTER_LOGIN_LIMIT_ACCOUNT="3/hour", NEWSLETTER_LOGIN_LIMIT_IP="5/hour")
    own_browser = client_at(app, "198.51.100.7")
    assert log_in(own_browser, "editor@example.org", PASSWORD).status_code == 303
    log_out(own_browser)

    stranger = client_at(app, "203.0.113.66")
    for _ in range(3):
        assert log_in(stranger, "editor@example.org", "a guess, wrong!").status_code == 401
    throttled = log_in(stranger, "Editor@Example.org ", "another guess!!")
    assert throttled.status_code == 429
    assert int(throttled.headers["Retry-After"]) > 0
    assert "Too many failed logins for this account" in throttled.get_data(as_text=True)
    # From another network and browser, even the right password waits: the count is the account's.
    other = client_at(app, "192.0.2.200")
    assert log_in(other, "editor@example.org", PASSWORD).status_code == 429
    assert other.get("/admin/").status_code == 302

    # The admin's own browser, which logged in to this account before, is not held back.
    assert log_in(own_browser, "editor@example.org", PASSWORD).status_code == 303
    assert own_browser.get("/admin/").status_code == 200
    # Successful logins are not counted: many in a row from one IP are fine.
    for _ in range(6):
        assert log_in(own_browser, "viewer@example.org", PASSWORD).status_code == 303

    # Per IP: the stranger's other guesses (any address) count towards their network's limit.
    assert log_in(stranger, "viewer@example.org", "a guess, wrong!").status_code == 401
    assert log_in(stranger, "nobody@example.org", "a guess, wrong!").status_code == 401
    blocked = log_in(stranger, "somebody@example.org", "a guess, wrong!")
    assert blocked.status_code == 429 and "Too many failed logins from your network" in blocked.get_data(as_text=True)
    assert log_in(client_at(app, "192.0.2.201"), "viewer@example.org", PASSWORD).status_code == 303


def test_a_trusted_network_logs_in_while_a_stranger_hammers_the_account(app, admin):
    import ipaddress

    app.config.update(NEWSLETTER_LOGIN_LIMIT_ACCOUNT="3/hour",
                      NEWSLETTER_LOGIN_TRUSTED_NETWORKS=[ipaddress.ip_network("198.51.100.0/24")])
    stranger = client_at(app, "203.0.113.66")
    for _ in range(3):
        assert log_in(stranger, "editor@example.org", "a guess, wrong!").status_code == 401
    assert log_in(client_at(app, "192.0.2.1"), "editor@example.org", PASSWORD).status_code == 429
    # A browser that never logged in before, from the trusted network: the account's count doesn't apply.
    office = client_at(app, "198.51.100.23")
    assert log_in(office, "editor@example.org", PASSWORD).status_code == 303
    assert office.get("/admin/").status_code == 200


@pytest.mark.parametrize("raw, networks", [
    ("", []),
    ("198.51.100.0/24, 2001:db8::/48", ["198.51.100.0/24", "2001:db8::/48"]),
    ("10.1.2.3", ["10.1.2.3/32"]),
])
def test_trusted_networks_setting(tmp_path, raw, networks):
    from newsletter import config

    loaded = config.load(tmp_path, {"NEWSLETTER_LOGIN_TRUSTED_NETWORKS": raw})
    assert [str(network) for network in loaded["NEWSLETTER_LOGIN_TRUSTED_NETWORKS"]] == networks


@pytest.mark.parametrize("name, raw", [
    ("NEWSLETTER_LOGIN_TRUSTED_NETWORKS", "the office"),
    ("NEWSLETTER_LOGIN_LIMIT_IP", "lots"),
    ("NEWSLETTER_LOGIN_LIMIT_ACCOUNT", "5 per fortnight"),
    ("NEWSLETTER_ADMIN_IDLE_TIMEOUT", "0"),
    ("NEWSLETTER_ADMIN_SESSION_MAX_AGE", "a day"),
])
def test_bad_login_settings_are_refused_by_name(tmp_path, name, raw):
    from newsletter import config

    with pytest.raises(config.ConfigError, match=name):
        config.load(tmp_path, {name: raw})


def test_an_unknown_address_is_throttled_just_like_an_account(app, admin):
    app.config.update(NEWSLETTER_LOGIN_LIMIT_ACCOUNT="2/hour")
    answers = {}
    for address, ip_address in (("editor@example.org", "203.0.113.1"), ("ghost@example.org", "203.0.113.2")):
        stranger = client_at(app, ip_address)
        statuses = [log_in(stranger, address, "a guess, wrong!").status_code for _ in range(3)]
        answers[address] = (statuses, _without_csrf_token(log_in(stranger, address, "a guess!!").get_data(as_text=True)))
    assert answers["editor@example.org"] == answers["ghost@example.org"]
    assert answers["ghost@example.org"][0] == [401, 401, 429]


@pytest.mark.parametrize("email", ["%ED%A0%80%40example.org", "editor%00%40example.org", "x" * 400, "not+an+address",
                                   "%FF%FE%40example.org"])
def test_a_malformed_login_address_is_a_wrong_login_not_an_error(app, client, admin, email):
    from urllib.parse import urlencode

    fields = hidden_fields(client.get("/admin/login").get_data(as_text=True))
    body = f"{urlencode({**fields, 'password': PASSWORD})}&email={email}"
    response = client.post("/admin/login", data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code in (401, 422)
    assert client.get("/admin/").status_code == 302


@pytest.fixture
def shared_app(app):
    """The app with its counts in Redis, as every web process and the CLI share them (NEWSLETTER_REDIS_URL)."""
    import secrets

    from newsletter import create_app

    # A secret of this test's own: the accounts' counts (keyed hashes) clash with no other run's.
    shared = create_app({**{name: app.config[name] for name in ("TESTING", "SQLALCHEMY_DATABASE_URI")},
                         "SECRET_KEY": secrets.token_urlsafe(16), "RATELIMIT_STORAGE_URI": "redis://127.0.0.1:6379"})
    yield shared
    with shared.app_context():
        db.engine.dispose()


def test_unlock_says_it_cannot_reach_counts_kept_in_the_web_processes_memory(app, runner, admin):
    app.config.update(NEWSLETTER_LOGIN_LIMIT_ACCOUNT="2/hour")
    stranger = client_at(app, "203.0.113.66")
    for _ in range(2):
        assert log_in(stranger, "editor@example.org", "a guess, wrong!").status_code == 401
    assert log_in(client_at(app, "192.0.2.1"), "editor@example.org", PASSWORD).status_code == 429

    result = runner.invoke(args=["admins", "unlock", "EDITOR@example.org", "--ip", "203.0.113.66"])
    assert result.exit_code == 1
    [line] = result.output.strip().splitlines()
    assert "each web process's memory" in line and "restarting the web processes clears them" in line
    assert "NEWSLETTER_REDIS_URL" in line and "Forgot" not in line
    assert log_in(client_at(app, "192.0.2.1"), "editor@example.org", PASSWORD).status_code == 429


def _own_ip():
    """A client IP of this run's own, so that its counts in Redis clash with no other run's."""
    import secrets

    return f"2001:db8::{secrets.token_hex(2)}:{secrets.token_hex(2)}"


def test_unlock_with_ip_forgets_that_networks_failed_logins(shared_app, admin):
    shared_app.config.update(NEWSLETTER_LOGIN_LIMIT_IP="2/hour")
    office_ip = _own_ip()
    office = client_at(shared_app, office_ip)
    for address in ("nobody@example.org", "noone@example.org"):
        assert log_in(office, address, "a guess, wrong!").status_code == 401
    assert log_in(office, "editor@example.org", PASSWORD).status_code == 429
    result = shared_app.test_cli_runner().invoke(args=["admins", "unlock", "nobody@example.org", "--ip", office_ip])
    assert result.exit_code == 0, result.output
    assert f"Forgot the failed logins of nobody@example.org and from {office_ip}" in result.output
    assert log_in(office, "editor@example.org", PASSWORD).status_code == 303


def test_unlock_forgets_an_accounts_wrong_current_passwords(shared_app, admin):
    shared_app.config.update(NEWSLETTER_LOGIN_LIMIT_ACCOUNT="2/hour")
    thief_ip = _own_ip()
    thief = client_at(shared_app, thief_ip)
    assert log_in(thief, "editor@example.org", PASSWORD).status_code == 303
    for _ in range(2):
        assert change_password(thief, "a guess, wrong!", NEW_PASSWORD).status_code == 422
    assert change_password(thief, PASSWORD, NEW_PASSWORD).status_code == 429
    result = shared_app.test_cli_runner().invoke(args=["admins", "unlock", "EDITOR@example.org", "--ip", thief_ip])
    assert result.exit_code == 0, result.output
    assert "Forgot the failed logins of EDITOR@example.org" in result.output
    assert change_password(thief, PASSWORD, NEW_PASSWORD).status_code == 303


def _without_csrf_token(html):
    return re.sub(r'(name="csrf_token"[^>]*value=")[^"]+', r"\1…", html)


def test_unknown_wrong_and_removed_accounts_get_the_same_answer_after_one_hash_check(app, client, runner, admin,
                                                                                      monkeypatch):
    checks = []
    real_check = accounts.check_password_hash
    monkeypatch.setattr(accounts, "check_password_hash", lambda *args: checks.append(args[0]) or real_check(*args))
    answers = [log_in(client, "ghost@example.org", PASSWORD)]  # no such account
    with app.app_context():
        accounts.create_admin(db.session, "ghost@example.org", PASSWORD, "viewer")
        db.session.commit()
    answers.append(log_in(client, "ghost@example.org", "not the password"))  # wrong password
    assert runner.invoke(args=["admins", "remove", "ghost@example.org"]).exit_code == 0
    answers.append(log_in(client, "ghost@example.org", PASSWORD))  # the right one, of a removed account

    assert [answer.status_code for answer in answers] == [401, 401, 401]
    pages = {_without_csrf_token(answer.get_data(as_text=True)) for answer in answers}
    assert len(pages) == 1 and "Wrong email or password." in pages.pop()
    assert [sorted(answer.headers.keys()) for answer in answers[1:]] == [sorted(answers[0].headers.keys())] * 2
    # A password hash was checked each time (a stored one, or a stand-in of the same kind).
    assert len(checks) == 3 and all(stored.startswith("scrypt:") for stored in checks)
    assert client.get("/admin/").status_code == 302


def log_out(client):
    page = client.get("/admin/")
    return client.post("/admin/logout", data=hidden_fields(page.get_data(as_text=True)))


def test_a_copied_session_cookie_stops_working_at_logout(app, client, admin):
    assert log_in(client, "editor@example.org", PASSWORD).status_code == 303
    copied = client.get_cookie("session").value
    assert log_out(client).status_code == 303

    replay = app.test_client()
    replay.set_cookie("session", copied)
    response = replay.get("/admin/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]


def test_logins_end_when_idle_or_too_old(app, client, admin):
    assert log_in(client, "editor@example.org", PASSWORD).status_code == 303
    assert client.get("/admin/").status_code == 200
    idle = app.config["NEWSLETTER_ADMIN_IDLE_TIMEOUT"]
    assert idle == 30 * 60
    # Seen 29 minutes ago: still open, and seeing a page now keeps it open.
    _move_login_times(app, seen_ago=idle - 60)
    [moved] = query(app, "SELECT last_seen_at FROM admin_sessions")
    assert client.get("/admin/").status_code == 200
    assert query(app, "SELECT last_seen_at FROM admin_sessions") != [moved]
    _move_login_times(app, seen_ago=idle + 60)
    response = client.get("/admin/")
    assert response.status_code == 302 and "/admin/login" in response.headers["Location"]
    assert query(app, "SELECT count(*) FROM admin_sessions") == [(0,)]

    # Used all along, but opened longer ago than the maximum: it ends too.
    assert log_in(client, "editor@example.org", PASSWORD).status_code == 303
    _move_login_times(app, created_ago=app.config["NEWSLETTER_ADMIN_SESSION_MAX_AGE"] + 60, seen_ago=10)
    assert client.get("/admin/").status_code == 302


def _move_login_times(app, *, seen_ago, created_ago=None):
    from datetime import timedelta

    from sqlalchemy import update

    from newsletter.models import AdminSession, utcnow

    with app.app_context():
        values = {"last_seen_at": utcnow() - timedelta(seconds=seen_ago)}
        if created_ago is not None:
            values["created_at"] = utcnow() - timedelta(seconds=created_ago)
        db.session.execute(update(AdminSession).values(**values))
        db.session.commit()
        db.session.remove()


def change_password(client, current, new, repeat=None):
    page = client.get("/admin/password")
    assert page.status_code == 200
    return client.post("/admin/password", data={**hidden_fields(page.get_data(as_text=True)), "current": current,
                                                "new": new, "repeat": new if repeat is None else repeat})


NEW_PASSWORD = "a new and longer passphrase"


@pytest.mark.parametrize("current, new, repeat, why", [
    ("wrong current password", NEW_PASSWORD, NEW_PASSWORD, "That is not your current password."),
    (PASSWORD, "too short", "too short", "The new password must be 12 to 1024 characters long."),
    (PASSWORD, NEW_PASSWORD, NEW_PASSWORD + "!", "The two new passwords differ."),
    ("", NEW_PASSWORD, NEW_PASSWORD, "Enter your current password."),
])
def test_a_password_change_needs_the_current_password_and_the_new_one_twice(app, client, admin, current, new,
                                                                             repeat, why):
    log_in(client, "editor@example.org", PASSWORD)
    response = change_password(client, current, new, repeat)
    assert response.status_code == 422
    assert why in response.get_data(as_text=True)
    log_out(client)
    assert log_in(client, "editor@example.org", PASSWORD).status_code == 303


def test_changing_ones_password_ends_the_accounts_other_logins(app, client, admin):
    other_browser = app.test_client()
    assert log_in(other_browser, "editor@example.org", PASSWORD).status_code == 303
    assert log_in(client, "editor@example.org", PASSWORD).status_code == 303
    assert "Change password" in client.get("/admin/").get_data(as_text=True)

    response = change_password(client, PASSWORD, NEW_PASSWORD)
    assert response.status_code == 303
    assert "Your password is changed" in client.get("/admin/").get_data(as_text=True)
    assert other_browser.get("/admin/").status_code == 302
    [(changed_at,)] = query(app, "SELECT password_changed_at FROM admin_users WHERE email = 'editor@example.org'")
    assert changed_at is not None

    log_out(client)
    assert log_in(client, "editor@example.org", PASSWORD).status_code == 401
    assert log_in(client, "editor@example.org", NEW_PASSWORD).status_code == 303


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
    # The sending platforms' webhooks authenticate by each platform's own signature or secret instead:
    # tests/test_provider_events.py refuses unsigned and forged events for each one.
    public_api = {"api.create_subscription", "api.form_settings", "api.openapi", "api.docs", "api.provider_events"}
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


def test_admins_list_shows_roles_logins_and_removed_accounts(app, client, runner, admin):
    log_in(client, "viewer@example.org", PASSWORD)
    assert runner.invoke(args=["admins", "remove", "viewer@example.org"]).exit_code == 0
    result = runner.invoke(args=["admins", "list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["email", "role", "last", "login", "last", "seen", "state"]
    editor = next(line for line in lines if line.startswith("editor@example.org"))
    viewer = next(line for line in lines if line.startswith("viewer@example.org"))
    assert editor.split()[1:3] == ["admin", "-"] and editor.endswith("active")
    assert viewer.split()[1] == "viewer" and "removed 20" in viewer


def test_admins_set_password_ends_the_accounts_logins(app, client, runner, admin):
    assert log_in(client, "editor@example.org", PASSWORD).status_code == 303
    result = runner.invoke(args=["admins", "set-password", "EDITOR@example.org"], input=NEW_PASSWORD + "\n")
    assert result.exit_code == 0, result.output
    assert "Changed the password of EDITOR@example.org" in result.output
    assert client.get("/admin/").status_code == 302
    assert log_in(client, "editor@example.org", PASSWORD).status_code == 401
    assert log_in(client, "editor@example.org", NEW_PASSWORD).status_code == 303

    short = runner.invoke(args=["admins", "set-password", "editor@example.org"], input="short\n")
    assert short.exit_code != 0 and "at least 12 characters" in short.output
    unknown = runner.invoke(args=["admins", "set-password", "nobody@example.org"], input=NEW_PASSWORD + "\n")
    assert unknown.exit_code != 0 and "There is no admin account for nobody@example.org" in unknown.output


def test_admins_set_role_applies_from_the_next_page(app, client, runner, admin):
    assert log_in(client, "viewer@example.org", PASSWORD).status_code == 303
    assert "API tokens" not in client.get("/admin/").get_data(as_text=True)
    result = runner.invoke(args=["admins", "set-role", "viewer@example.org", "admin"])
    assert result.exit_code == 0 and "viewer@example.org is now admin" in result.output
    assert "API tokens" in client.get("/admin/").get_data(as_text=True)

    assert runner.invoke(args=["admins", "set-role", "viewer@example.org", "viewer"]).exit_code == 0
    last = runner.invoke(args=["admins", "set-role", "editor@example.org", "viewer"])
    assert last.exit_code != 0 and "last account with the admin role" in last.output
    bad = runner.invoke(args=["admins", "set-role", "editor@example.org", "owner"])
    assert bad.exit_code != 0 and "owner" in bad.output


def test_admins_remove_ends_the_logins_and_add_brings_the_account_back(app, client, runner, admin):
    assert log_in(client, "viewer@example.org", PASSWORD).status_code == 303
    result = runner.invoke(args=["admins", "remove", "viewer@example.org"])
    assert result.exit_code == 0 and "Removed viewer@example.org" in result.output
    assert client.get("/admin/").status_code == 302
    assert log_in(client, "viewer@example.org", PASSWORD).status_code == 401
    # The account stays for the record (who made which export), marked removed.
    assert query(app, "SELECT count(*) FROM admin_users WHERE removed_at IS NOT NULL") == [(1,)]

    last = runner.invoke(args=["admins", "remove", "editor@example.org"])
    assert last.exit_code != 0 and "last account with the admin role" in last.output
    assert runner.invoke(args=["admins", "remove", "nobody@example.org"]).exit_code != 0

    back = runner.invoke(args=["admins", "add", "viewer@example.org", "--role", "viewer"], input=NEW_PASSWORD + "\n")
    assert back.exit_code == 0, back.output
    assert log_in(client, "viewer@example.org", PASSWORD).status_code == 401
    assert log_in(client, "viewer@example.org", NEW_PASSWORD).status_code == 303


def test_logins_that_ran_out_or_were_replaced_leave_no_rows(app, client, admin):
    forgotten = app.test_client()
    assert log_in(forgotten, "viewer@example.org", PASSWORD).status_code == 303
    _move_login_times(app, seen_ago=app.config["NEWSLETTER_ADMIN_IDLE_TIMEOUT"] + 60)  # then never came back
    assert log_in(client, "editor@example.org", PASSWORD).status_code == 303
    assert log_in(client, "editor@example.org", PASSWORD).status_code == 303  # again, over its own login
    assert query(app, "SELECT a.email FROM admin_sessions s JOIN admin_users a ON a.id = s.admin_id") == [
        ("editor@example.org",)]
    assert client.get("/admin/").status_code == 200


def test_with_redis_the_counts_live_there_without_addresses_and_unlock_clears_them(app, admin):
    import secrets

    import redis

    from newsletter import create_app

    # A key of this test's own: the counters' keys are keyed hashes, so they clash with no other run.
    shared = create_app({**{name: app.config[name] for name in ("TESTING", "SQLALCHEMY_DATABASE_URI")},
                         "SECRET_KEY": secrets.token_urlsafe(16), "RATELIMIT_STORAGE_URI": "redis://127.0.0.1:6379",
                         "NEWSLETTER_LOGIN_LIMIT_ACCOUNT": "2/hour"})
    before = set(redis.Redis().scan_iter("LIMITS:*admin-login*"))
    stranger = client_at(shared, "203.0.113.66")
    for _ in range(2):
        assert log_in(stranger, "editor@example.org", "a guess, wrong!").status_code == 401
    assert log_in(client_at(shared, "192.0.2.1"), "editor@example.org", PASSWORD).status_code == 429
    keys = set(redis.Redis().scan_iter("LIMITS:*admin-login*")) - before
    assert keys and not any(b"editor" in key or b"example.org" in key for key in keys)

    result = shared.test_cli_runner().invoke(args=["admins", "unlock", "editor@example.org", "--ip", "203.0.113.66"])
    assert result.exit_code == 0, result.output
    assert log_in(client_at(shared, "192.0.2.1"), "editor@example.org", PASSWORD).status_code == 303
    assert not set(redis.Redis().scan_iter("LIMITS:*admin-login*")) & keys
    with shared.app_context():
        db.engine.dispose()


def test_wrong_current_passwords_are_throttled_per_account_and_per_ip(app, runner, admin):
    app.config.update(NEWSLETTER_LOGIN_LIMIT_ACCOUNT="3/hour", NEWSLETTER_LOGIN_LIMIT_IP="4/hour")
    thief = client_at(app, "203.0.113.66")
    assert log_in(thief, "editor@example.org", PASSWORD).status_code == 303
    # Only wrong current passwords count: other mistakes on the form don't.
    for _ in range(5):
        assert change_password(thief, PASSWORD, "too short", "too short").status_code == 422
    for _ in range(3):
        assert change_password(thief, "a guess, wrong!", NEW_PASSWORD).status_code == 422
    throttled = change_password(thief, "another guess!!", NEW_PASSWORD)
    assert throttled.status_code == 429 and int(throttled.headers["Retry-After"]) > 0
    assert "Too many wrong current passwords for this account" in throttled.get_data(as_text=True)
    # The count is the account's: another login of it, from elsewhere, waits too, even with the right password.
    elsewhere = client_at(app, "192.0.2.200")
    assert log_in(elsewhere, "editor@example.org", PASSWORD).status_code == 303
    assert change_password(elsewhere, PASSWORD, NEW_PASSWORD).status_code == 429

    # Per IP: a guess at another account's password from the same network is the network's fourth.
    assert log_in(thief, "viewer@example.org", PASSWORD).status_code == 303
    assert change_password(thief, "a guess, wrong!", NEW_PASSWORD).status_code == 422
    blocked = change_password(thief, "a guess, wrong!", NEW_PASSWORD)
    assert blocked.status_code == 429 and "from your network" in blocked.get_data(as_text=True)


def _hammer(app, email, times):
    stranger = client_at(app, "203.0.113.66")
    for _ in range(times):
        assert log_in(stranger, email, "a guess, wrong!").status_code == 401


def _browser_with_device_cookie(app, ip_address, cookie):
    browser = client_at(app, ip_address)
    browser.set_cookie(DEVICE_COOKIE, cookie, path="/admin")
    return browser


def test_a_device_cookie_copied_before_a_password_change_no_longer_exempts(app, admin):
    app.config.update(NEWSLETTER_LOGIN_LIMIT_ACCOUNT="2/hour")
    own_browser = client_at(app, "198.51.100.7")
    assert log_in(own_browser, "editor@example.org", PASSWORD).status_code == 303
    copied = own_browser.get_cookie(DEVICE_COOKIE, path="/admin").value
    assert change_password(own_browser, PASSWORD, NEW_PASSWORD).status_code == 303
    log_out(own_browser)

    _hammer(app, "editor@example.org", 2)
    assert log_in(_browser_with_device_cookie(app, "192.0.2.9", copied), "editor@example.org",
                  NEW_PASSWORD).status_code == 429
    # The browser that changed the password is still known.
    assert log_in(own_browser, "editor@example.org", NEW_PASSWORD).status_code == 303


def test_a_device_cookie_of_a_removed_and_added_again_account_no_longer_exempts(app, runner, admin):
    app.config.update(NEWSLETTER_LOGIN_LIMIT_ACCOUNT="2/hour")
    own_browser = client_at(app, "198.51.100.7")
    assert log_in(own_browser, "viewer@example.org", PASSWORD).status_code == 303
    log_out(own_browser)
    assert runner.invoke(args=["admins", "remove", "viewer@example.org"]).exit_code == 0
    assert runner.invoke(args=["admins", "add", "viewer@example.org", "--role", "viewer"],
                         input=PASSWORD + "\n").exit_code == 0

    _hammer(app, "viewer@example.org", 2)
    assert log_in(own_browser, "viewer@example.org", PASSWORD).status_code == 429


def test_a_device_cookie_older_than_its_lifetime_no_longer_exempts(app, admin, monkeypatch):
    import time

    from itsdangerous import TimestampSigner

    app.config.update(NEWSLETTER_LOGIN_LIMIT_ACCOUNT="2/hour")
    own_browser = client_at(app, "198.51.100.7")
    with monkeypatch.context() as past:  # the login of 181 days ago, whose cookie the browser still sends
        past.setattr(TimestampSigner, "get_timestamp", lambda self: int(time.time()) - DEVICE_MAX_AGE - 24 * 3600)
        assert log_in(own_browser, "editor@example.org", PASSWORD).status_code == 303
    log_out(own_browser)

    _hammer(app, "editor@example.org", 2)
    assert log_in(own_browser, "editor@example.org", PASSWORD).status_code == 429


def test_two_browsers_of_one_account_get_different_device_cookies(app, admin):
    first, second = client_at(app, "198.51.100.7"), client_at(app, "198.51.100.7")
    for browser in (first, second):
        assert log_in(browser, "editor@example.org", PASSWORD).status_code == 303
    cookies = [browser.get_cookie(DEVICE_COOKIE, path="/admin") for browser in (first, second)]
    assert cookies[0].value != cookies[1].value
    assert "account_key" not in cookies[0].value and "editor" not in cookies[0].value


@pytest.mark.parametrize("headers, lang", [({}, "en"), ({"Accept-Language": "uk-UA,uk;q=0.9"}, "uk")])
def test_a_throttled_login_says_what_helps_and_links_back_to_the_login_page(app, admin, headers, lang):
    app.config.update(NEWSLETTER_LOGIN_LIMIT_ACCOUNT="2/hour")
    _hammer(app, "editor@example.org", 2)
    browser = client_at(app, "192.0.2.9")
    page = browser.get("/admin/login", headers=headers)
    throttled = browser.post("/admin/login", headers=headers, data={
        **hidden_fields(page.get_data(as_text=True)), "email": "editor@example.org", "password": PASSWORD})
    assert throttled.status_code == 429
    html = throttled.get_data(as_text=True)
    assert "another admin" not in html and "/subscribe" not in html
    # No command that only works with shared counts: whoever runs the server knows which way unlocks.
    assert 'href="/admin/login"' in html and "newsletter admins unlock" not in html
    if lang == "en":
        assert "wait up to 60 minutes" in html and "a browser you used for this account before" in html
        assert "ask whoever runs the server to unlock the account" in html and "Back to the login page" in html
    else:
        assert "до 60 хвилин" in html and "Повернутися до сторінки входу" in html
        assert "розблокувати обліковий запис" in html


def _stated_wait(html):
    [(number, unit)] = re.findall(r"wait up to (\d+) (minute|hour)s?", html)
    return int(number), unit


@pytest.mark.parametrize("limit", ["2/10minutes;50/day", "2/10minutes;3/day"])
def test_a_throttled_login_states_the_wait_its_retry_after_gives(app, admin, limit):
    app.config.update(NEWSLETTER_LOGIN_LIMIT_ACCOUNT=limit)
    _hammer(app, "editor@example.org", 2)
    throttled = log_in(client_at(app, "192.0.2.9"), "editor@example.org", PASSWORD)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == "600"
    assert _stated_wait(throttled.get_data(as_text=True)) == (int(throttled.headers["Retry-After"]) // 60, "minute")


def test_a_login_throttled_by_its_day_limit_states_the_wait_in_hours(app, admin):
    app.config.update(NEWSLETTER_LOGIN_LIMIT_IP="100/minute;2/day")
    _hammer(app, "nobody@example.org", 2)
    throttled = log_in(client_at(app, "203.0.113.66"), "editor@example.org", PASSWORD)
    assert throttled.status_code == 429 and throttled.headers["Retry-After"] == str(24 * 3600)
    html = throttled.get_data(as_text=True)
    assert "Too many failed logins from your network" in html and _stated_wait(html) == (24, "hour")


@pytest.mark.parametrize("limits, wait", [({"NEWSLETTER_LOGIN_LIMIT_ACCOUNT": "2/10minutes;50/day"}, (10, "minute")),
                                          ({"NEWSLETTER_LOGIN_LIMIT_IP": "2/day"}, (24, "hour"))])
def test_a_throttled_password_change_states_the_wait_its_retry_after_gives(app, admin, limits, wait):
    app.config.update(limits)
    thief = client_at(app, "203.0.113.66")
    assert log_in(thief, "editor@example.org", PASSWORD).status_code == 303
    for _ in range(2):
        assert change_password(thief, "a guess, wrong!", NEW_PASSWORD).status_code == 422
    throttled = change_password(thief, PASSWORD, NEW_PASSWORD)
    assert throttled.status_code == 429
    number, unit = _stated_wait(throttled.get_data(as_text=True))
    assert (number, unit) == wait
    assert number * (60 if unit == "minute" else 3600) == int(throttled.headers["Retry-After"])


def test_json_login_and_password_bodies_are_refused_not_counted_apart(app, admin):
    browser = client_at(app, "203.0.113.66")
    token = csrf_token(browser.get("/admin/login").get_data(as_text=True))
    response = browser.post("/admin/login", json={"email": "editor@example.org", "password": PASSWORD},
                            headers={"X-CSRFToken": token})
    assert response.status_code == 415
    assert "web form" in response.get_data(as_text=True)
    assert browser.get("/admin/").status_code == 302

    assert log_in(browser, "editor@example.org", PASSWORD).status_code == 303
    token = csrf_token(browser.get("/admin/password").get_data(as_text=True))
    response = browser.post("/admin/password", json={"current": PASSWORD, "new": NEW_PASSWORD,
                                                     "repeat": NEW_PASSWORD}, headers={"X-CSRFToken": token})
    assert response.status_code == 415
    log_out(browser)
    assert log_in(browser, "editor@example.org", PASSWORD).status_code == 303


def test_an_idle_timeout_of_seconds_keeps_an_active_admin_logged_in(app, client, admin):
    import time

    app.config.update(NEWSLETTER_ADMIN_IDLE_TIMEOUT=4)
    assert log_in(client, "editor@example.org", PASSWORD).status_code == 303
    for _ in range(8):  # a page a second, for twice the idle timeout
        time.sleep(1)
        assert client.get("/admin/").status_code == 200
    time.sleep(5)
    assert client.get("/admin/").status_code == 302


def test_the_first_unknown_address_login_of_a_process_checks_one_hash_and_makes_none(app):
    import subprocess
    import sys

    script = f"""
import hashlib, re
from newsletter import create_app
app = create_app({{"SQLALCHEMY_DATABASE_URI": {app.config["SQLALCHEMY_DATABASE_URI"]!r}, "SECRET_KEY": "x" * 32}})
calls = []
real_scrypt = hashlib.scrypt
hashlib.scrypt = lambda *args, **kwargs: calls.append(1) or real_scrypt(*args, **kwargs)
client = app.test_client()
token = re.search(r'name="csrf_token"[^>]*value="([^"]+)"', client.get("/admin/login").get_data(as_text=True))
response = client.post("/admin/login", data={{"csrf_token": token.group(1), "email": "ghost@example.org",
                                             "password": "correct horse battery staple"}})
print(response.status_code, len(calls))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["401", "1"], result.stderr
