"""Signed links in emails: /confirm/<token>, /unsubscribe/<token>, /preferences/<token>.

A link that was tampered with, cut short, made for another purpose, signed with a retired key, or that
names a reader who no longer exists gets a friendly page and changes nothing. Genuine links behave as
a reader expects: GET never changes state, confirming twice is harmless, an old confirmation link can't
undo a later unsubscribe, one-click unsubscribe needs no cookie and can be repeated.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

import pytest

from newsletter import tokens

from .conftest import csrf_token, link_in, query

API = "/api/v1/subscriptions"
ALL_TABLES = ("newsletters", "readers", "subscriptions", "consent_events", "outbox_messages")
ONE_CLICK = "List-Unsubscribe=One-Click"
FORM = "application/x-www-form-urlencoded"


# ---------------------------------------------------------------------------------------------------------------
# helpers


def snapshot(app) -> dict[str, list[tuple]]:
    """Every row of every table, to compare before and after a request."""
    return {table: [tuple(row) for row in query(app, f"SELECT * FROM {table} ORDER BY id")] for table in ALL_TABLES}


def statuses(app) -> dict[tuple[str, str], str]:
    rows = query(app, "SELECT r.email, n.slug, s.status FROM subscriptions s "
                      "JOIN readers r ON r.id = s.reader_id JOIN newsletters n ON n.id = s.newsletter_id")
    return {(email, slug): status for email, slug, status in rows}


def actions(app, action: str) -> list[tuple[str, str]]:
    return [tuple(row) for row in query(
        app, "SELECT n.slug, e.source FROM consent_events e JOIN newsletters n ON n.id = e.newsletter_id "
             "WHERE e.action = :action ORDER BY e.id", action=action)]


def path_of(url: str) -> str:
    return urlsplit(url).path


def sign_up(client, email: str, newsletters=("daily-briefing",)) -> None:
    response = client.post(API, json={"email": email, "newsletters": list(newsletters)})
    assert response.status_code == 202, response.get_data(as_text=True)


def mail(drain, smtp, count: int):
    """Send the outbox; the first `count` messages the SMTP server received (exactly `count` arrived)."""
    drain()
    messages = smtp.inbox.wait_for(count)
    assert len(smtp.inbox.messages) == count, [m["Subject"] for m in smtp.inbox.messages]
    return messages


def confirm_path(message) -> str:
    return path_of(link_in(message, "/confirm/"))


def one_click_url(message) -> str:
    """The https URL of the List-Unsubscribe header, the one a mail client's button POSTs to."""
    assert message["List-Unsubscribe-Post"] == ONE_CLICK
    [https_url] = [url for url in re.findall(r"<([^>]+)>", message["List-Unsubscribe"]) if url.startswith("http")]
    return path_of(https_url)


def form_token(client) -> str:
    """A CSRF token for the client's session, as any page with a form would give it."""
    page = client.get("/subscribe")
    assert page.status_code == 200
    return csrf_token(page.get_data(as_text=True))


def press_confirm(client, path: str):
    """What a reader does: open the link, press the button."""
    page = client.get(path)
    assert page.status_code == 200, page.get_data(as_text=True)[:300]
    return client.post(path)


def text_of(response) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", response.get_data(as_text=True)).split())


def assert_bad_link_page(response, status: int = 400) -> None:
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    assert response.mimetype == "text/html"
    body = response.get_data(as_text=True)
    assert "Traceback" not in body
    heading = "This link has expired" if status == 410 else "This link doesn't work"
    assert f"<h1>{heading}</h1>" in body.replace("&#39;", "'")
    assert re.search(r'<a href="/subscribe">Sign up again</a>', body), "no 'Sign up again' link"
    assert "Nothing was changed." in text_of(response)


def assert_lapsed(response) -> None:
    """The page of a genuine confirmation link that no longer counts for The Daily Briefing."""
    text = text_of(response)
    assert "Link no longer valid" in text
    assert "This link no longer confirms The Daily Briefing" in text
    assert "Subscription confirmed" not in text and "You are now subscribed" not in text
    assert 'href="/subscribe">Sign up again</a>' in response.get_data(as_text=True)


@dataclass
class Links:
    """Genuine links from real emails: Ada confirmed two newsletters, Bob's signup is pending."""

    confirm: str  # Bob's confirmation link: pressing it would confirm him
    unsubscribe: str  # Ada's one-click link for The Daily Briefing
    preferences: str  # Ada's preferences link: an empty POST would unsubscribe her from everything

    def path(self, kind: str) -> str:
        return getattr(self, kind)

    def token(self, kind: str) -> str:
        return self.path(kind).rsplit("/", 1)[1]


@pytest.fixture
def links(app, client, drain, smtp) -> Links:
    sign_up(client, "ada@example.com", ["daily-briefing", "weekly-explainer"])
    [confirmation] = mail(drain, smtp, 1)
    assert "Subscription confirmed" in text_of(press_confirm(client, confirm_path(confirmation)))
    welcomes = {m["Subject"]: m for m in mail(drain, smtp, 3)[1:]}
    daily = welcomes["Welcome to The Daily Briefing"]
    sign_up(client, "bob@example.com")
    bob = mail(drain, smtp, 4)[3]
    assert statuses(app) == {("ada@example.com", "daily-briefing"): "confirmed",
                             ("ada@example.com", "weekly-explainer"): "confirmed",
                             ("bob@example.com", "daily-briefing"): "pending"}
    return Links(confirm=confirm_path(bob), unsubscribe=one_click_url(daily),
                 preferences=path_of(link_in(daily, "/preferences/")))


def attempt(client, kind_of_route: str, path: str, csrf: str):
    """GET and POST a link the way its page and a mail client would; both responses."""
    get = client.get(path)
    if kind_of_route == "unsubscribe":
        post = client.post(path, data=ONE_CLICK, content_type=FORM)
    else:
        # At /preferences/ no newsletter ticked means "leave them all": accepted, it would change Ada's rows.
        post = client.post(path, data={"csrf_token": csrf})
    return get, post


# ---------------------------------------------------------------------------------------------------------------
# tampered, truncated and garbage links

BASE64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def _change(token: str, part: int, index: int) -> str:
    """The token with one character of one of its dot-separated parts changed (always to different bytes)."""
    parts = token.split(".")
    assert len(parts) == 3, token
    text = parts[part]
    index = index if index >= 0 else len(text) // 2
    replacement = BASE64URL[(BASE64URL.index(text[index]) + 32) % 64]
    parts[part] = text[:index] + replacement + text[index + 1:]
    changed = ".".join(parts)
    assert changed != token
    return changed


TAMPERS = [
    pytest.param(lambda t: _change(t, 0, -1), id="payload-char-changed"),
    pytest.param(lambda t: _change(t, 0, 0), id="payload-first-char-changed"),
    pytest.param(lambda t: _change(t, 1, 0), id="timestamp-char-changed"),
    pytest.param(lambda t: _change(t, 2, 0), id="signature-char-changed"),
    pytest.param(lambda t: _change(t, 2, -1), id="signature-middle-char-changed"),
    pytest.param(lambda t: t[:-1], id="truncated-by-one"),
    pytest.param(lambda t: t[: len(t) // 2], id="truncated-by-half"),
    pytest.param(lambda t: t.rsplit(".", 1)[0], id="signature-cut-off"),
    pytest.param(lambda t: t + "x", id="one-char-appended"),
    pytest.param(lambda t: t.upper(), id="case-changed"),
    pytest.param(lambda t: "not-a-link", id="garbage"),
    pytest.param(lambda t: "abc.def.ghi", id="garbage-in-three-parts"),
    pytest.param(lambda t: "A" * 4_000, id="long-garbage"),
    pytest.param(lambda t: ".", id="a-dot"),
    pytest.param(lambda t: "..", id="two-dots"),
    pytest.param(lambda t: " ", id="a-space"),
]


@pytest.mark.parametrize("tamper", TAMPERS)
def test_tampered_link_gets_friendly_page_and_changes_nothing(app, client, drain, smtp, links, tamper):
    csrf = form_token(client)
    before = snapshot(app)
    for route in ("confirm", "unsubscribe", "preferences"):
        path = f"/{route}/{quote(tamper(links.token(route)), safe='')}"
        for method, response in zip(("GET", "POST"), attempt(client, route, path, csrf)):
            try:
                assert_bad_link_page(response)
            except AssertionError as error:
                raise AssertionError(f"{method} {route}: {error}") from None
        assert snapshot(app) == before, f"a tampered {route} link changed the database"
    assert drain().sent == 0


OTHER_PURPOSE = [
    ("unsubscribe", "confirm"),
    ("preferences", "confirm"),
    ("confirm", "unsubscribe"),
    ("preferences", "unsubscribe"),
    ("confirm", "preferences"),
    ("unsubscribe", "preferences"),
]


@pytest.mark.parametrize("kind, route", OTHER_PURPOSE, ids=[f"{k}-token-at-{r}" for k, r in OTHER_PURPOSE])
def test_token_for_another_purpose_is_refused(app, client, drain, smtp, links, kind, route):
    path = f"/{route}/{links.token(kind)}"
    csrf = form_token(client)
    before = snapshot(app)
    for response in attempt(client, route, path, csrf):
        assert_bad_link_page(response)
    assert snapshot(app) == before
    assert drain().sent == 0


@pytest.mark.parametrize("route", ["confirm", "unsubscribe", "preferences"])
def test_link_for_reader_that_does_not_exist(app, client, drain, smtp, links, route):
    newsletter_id = query(app, "SELECT id FROM newsletters WHERE slug = 'daily-briefing'")[0][0]
    missing = query(app, "SELECT MAX(id) FROM readers")[0][0] + 1_000
    with app.app_context():
        token = {
            "confirm": lambda: tokens.confirm_token(missing, [newsletter_id]),
            "unsubscribe": lambda: tokens.unsubscribe_token(missing, newsletter_id),
            "preferences": lambda: tokens.preferences_token(missing),
        }[route]()
    csrf = form_token(client)
    before = snapshot(app)
    get, post = attempt(client, route, f"/{route}/{token}", csrf)
    assert_bad_link_page(get)
    assert_bad_link_page(post)
    assert snapshot(app) == before
    assert drain().sent == 0


# ---------------------------------------------------------------------------------------------------------------
# expiry and key rotation


@pytest.mark.parametrize("max_age", [None, 3_600], ids=["default-7-days", "configured-1-hour"])
def test_expired_confirm_link_gets_410_and_confirms_nothing(app, client, drain, smtp, clock, max_age):
    if max_age is not None:
        app.config["NEWSLETTER_CONFIRM_MAX_AGE"] = max_age
    max_age = app.config["NEWSLETTER_CONFIRM_MAX_AGE"]
    sign_up(client, "bob@example.com")
    path = confirm_path(mail(drain, smtp, 1)[0])

    clock.advance(max_age - 60)  # a minute before it expires the link still works...
    page = client.get(path)
    assert page.status_code == 200 and "Yes, subscribe me" in page.get_data(as_text=True)

    clock.advance(120)  # ...a minute after, it doesn't
    before = snapshot(app)
    assert_bad_link_page(client.get(path), 410)
    assert_bad_link_page(client.post(path), 410)
    assert snapshot(app) == before
    assert statuses(app) == {("bob@example.com", "daily-briefing"): "pending"}
    assert drain().sent == 0

    # "Sign up again" works: a fresh email, whose link confirms.
    sign_up(client, "bob@example.com")
    fresh = confirm_path(mail(drain, smtp, 2)[1])
    assert fresh != path
    assert "Subscription confirmed" in text_of(press_confirm(client, fresh))
    assert statuses(app) == {("bob@example.com", "daily-briefing"): "confirmed"}


@pytest.mark.parametrize("old_key_kept", [True, False], ids=["old-key-in-fallbacks", "old-key-dropped"])
def test_confirm_link_signed_with_rotated_key(app, client, drain, smtp, old_key_kept):
    old_key, new_key = "the-old-secret-key-0123456789", "the-new-secret-key-9876543210"
    app.config["SECRET_KEY"] = old_key
    sign_up(client, "bob@example.com")
    path = confirm_path(mail(drain, smtp, 1)[0])

    app.config["SECRET_KEY"] = new_key
    app.config["SECRET_KEY_FALLBACKS"] = [old_key] if old_key_kept else []
    if old_key_kept:
        done = press_confirm(client, path)
        assert done.status_code == 200 and "Subscription confirmed" in text_of(done)
        assert statuses(app) == {("bob@example.com", "daily-briefing"): "confirmed"}
    else:
        csrf = form_token(client)
        before = snapshot(app)
        assert_bad_link_page(client.get(path))
        assert_bad_link_page(client.post(path, data={"csrf_token": csrf}))
        assert snapshot(app) == before
        assert statuses(app) == {("bob@example.com", "daily-briefing"): "pending"}


# ---------------------------------------------------------------------------------------------------------------
# confirming


def test_get_of_confirm_link_changes_nothing(app, client, drain, smtp):
    sign_up(client, "bob@example.com", ["daily-briefing", "weekly-explainer"])
    path = confirm_path(mail(drain, smtp, 1)[0])
    before = snapshot(app)
    for _ in range(3):  # a mail scanner, a link preview, the reader
        page = client.get(path)
        assert page.status_code == 200
        text = text_of(page)
        assert "Confirm your subscription" in text and "bob@example.com" in text
        assert "The Daily Briefing" in text and "The Weekly Explainer" in text
        assert "Yes, subscribe me" in text
    assert snapshot(app) == before
    assert drain().sent == 0


def test_confirming_twice_says_already_confirmed(app, client, drain, smtp):
    sign_up(client, "ada@example.com", ["daily-briefing", "weekly-explainer"])
    path = confirm_path(mail(drain, smtp, 1)[0])
    client.get(path)
    first = client.post(path)
    assert first.status_code == 200
    assert "You are now subscribed to The Daily Briefing, The Weekly Explainer" in text_of(first)
    mail(drain, smtp, 3)  # the confirmation and two welcomes
    before = snapshot(app)

    again = client.post(path)  # pressed again, or the form resent
    assert again.status_code == 200
    assert "Already confirmed" in text_of(again)
    assert "You were already subscribed to The Daily Briefing, The Weekly Explainer" in text_of(again)
    reopened = client.get(path)
    assert reopened.status_code == 200
    assert "Already confirmed" in text_of(reopened) and "Yes, subscribe me" not in text_of(reopened)

    assert snapshot(app) == before
    assert drain().sent == 0  # no second welcome
    assert actions(app, "confirmed") == [("daily-briefing", "email-link"), ("weekly-explainer", "email-link")]


def test_confirm_link_replayed_after_unsubscribe_does_not_resubscribe(app, client, drain, smtp):
    sign_up(client, "ada@example.com")
    path = confirm_path(mail(drain, smtp, 1)[0])
    assert "Subscription confirmed" in text_of(press_confirm(client, path))
    welcome = mail(drain, smtp, 2)[1]
    mail_client = app.test_client(use_cookies=False)
    assert mail_client.post(one_click_url(welcome), data=ONE_CLICK, content_type=FORM).status_code == 200
    assert statuses(app) == {("ada@example.com", "daily-briefing"): "unsubscribed"}
    csrf = form_token(client)
    before = snapshot(app)

    # Opening the old link says up front that it no longer confirms, and offers no button...
    page = client.get(path)
    assert page.status_code == 200
    assert_lapsed(page)
    assert "Yes, subscribe me" not in text_of(page)
    # ...and pressing a button from a page opened before unsubscribing doesn't resubscribe either.
    replay = client.post(path, data={"csrf_token": csrf})
    assert replay.status_code == 200
    assert_lapsed(replay)
    assert statuses(app) == {("ada@example.com", "daily-briefing"): "unsubscribed"}
    assert snapshot(app) == before
    assert drain().sent == 0


def test_old_confirm_link_does_not_confirm_a_new_signup_but_the_new_link_does(app, client, drain, smtp, clock):
    sign_up(client, "ada@example.com")
    old = confirm_path(mail(drain, smtp, 1)[0])
    assert "Subscription confirmed" in text_of(press_confirm(client, old))
    welcome = mail(drain, smtp, 2)[1]
    app.test_client(use_cookies=False).post(one_click_url(welcome), data=ONE_CLICK, content_type=FORM)
    assert statuses(app) == {("ada@example.com", "daily-briefing"): "unsubscribed"}

    clock.advance(600)  # ten minutes later the reader signs up again: a new pending signup, a new email
    sign_up(client, "ada@example.com")
    new = confirm_path(mail(drain, smtp, 3)[2])
    assert new != old
    assert statuses(app) == {("ada@example.com", "daily-briefing"): "pending"}
    csrf = form_token(client)
    before = snapshot(app)

    for replay in (client.get(old), client.post(old, data={"csrf_token": csrf})):
        assert replay.status_code == 200
        assert_lapsed(replay)
    assert statuses(app) == {("ada@example.com", "daily-briefing"): "pending"}
    assert snapshot(app) == before

    done = press_confirm(client, new)
    assert done.status_code == 200 and "You are now subscribed to The Daily Briefing" in text_of(done)
    assert statuses(app) == {("ada@example.com", "daily-briefing"): "confirmed"}


# ---------------------------------------------------------------------------------------------------------------
# unsubscribing


def test_one_click_unsubscribe_needs_no_cookie_and_is_idempotent(app, client, drain, smtp, links):
    mail_client = app.test_client(use_cookies=False)  # a mail provider's server: no session, no CSRF token
    first = mail_client.post(links.unsubscribe, data=ONE_CLICK, content_type=FORM)
    assert first.status_code == 200
    assert "You will get no more emails from The Daily Briefing" in text_of(first)
    assert statuses(app) == {("ada@example.com", "daily-briefing"): "unsubscribed",
                             ("ada@example.com", "weekly-explainer"): "confirmed",
                             ("bob@example.com", "daily-briefing"): "pending"}
    after_first = snapshot(app)

    second = mail_client.post(links.unsubscribe, data=ONE_CLICK, content_type=FORM)
    assert second.status_code == 200
    assert "You are unsubscribed" in text_of(second)
    assert snapshot(app) == after_first
    assert actions(app, "unsubscribed") == [("daily-briefing", "one-click")]
    assert drain().sent == 0


def test_unsubscribe_link_get_shows_choices_and_changes_nothing(app, client, drain, smtp, links):
    before = snapshot(app)
    page = client.get(links.unsubscribe)
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "ada@example.com" in text_of(page)
    assert re.search(r'<form method="post">', html)
    buttons = {value: " ".join(label.split()) for value, label in
               re.findall(r'<button[^>]*name="scope" value="(\w+)"[^>]*>([^<]*)</button>', html)}
    assert buttons == {"one": "Unsubscribe from The Daily Briefing", "all": "Unsubscribe from all newsletters"}
    assert snapshot(app) == before
    assert drain().sent == 0


@pytest.mark.parametrize("route", ["confirm", "unsubscribe", "preferences"])
def test_head_request_of_a_link_changes_nothing(app, client, drain, smtp, links, route):
    """Link checkers and mail scanners send HEAD as readily as GET: it must not act either."""
    before = snapshot(app)
    mail_scanner = app.test_client(use_cookies=False)
    response = mail_scanner.head(links.path(route))
    assert response.status_code == 200
    assert snapshot(app) == before, f"HEAD {route} link changed the database"
    assert statuses(app)[("ada@example.com", "daily-briefing")] == "confirmed"
    assert statuses(app)[("bob@example.com", "daily-briefing")] == "pending"


@pytest.mark.parametrize("scope", ["one", "all"])
def test_unsubscribe_page_buttons(app, client, drain, smtp, links, scope):
    browser = app.test_client()  # the page's form has no CSRF token: the signed link is the credential
    response = browser.post(links.unsubscribe, data={"scope": scope})
    assert response.status_code == 200
    text = text_of(response)
    expected = {("ada@example.com", "daily-briefing"): "unsubscribed",
                ("ada@example.com", "weekly-explainer"): "unsubscribed" if scope == "all" else "confirmed",
                ("bob@example.com", "daily-briefing"): "pending"}  # other readers are untouched
    assert statuses(app) == expected
    if scope == "all":
        assert "You will get no more newsletters from us." in text
        assert actions(app, "unsubscribed") == [("daily-briefing", "unsubscribe-page"),
                                                ("weekly-explainer", "unsubscribe-page")]
    else:
        assert "You will get no more emails from The Daily Briefing." in text
        assert actions(app, "unsubscribed") == [("daily-briefing", "unsubscribe-page")]
    # The page is about unsubscribing only: whoever sent the POST (a mailbox provider's server) gets no key
    # to the reader's other subscriptions.
    assert "/preferences/" not in response.get_data(as_text=True)
    assert drain().sent == 0
