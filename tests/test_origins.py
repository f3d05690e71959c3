"""Which sites may use our forms: the plain cross-origin form, return_to, the JSON API's CORS, framing, embed.js.

The allowed site is https://news.example; https://evil.example stands for every other site.

The allowed origins are given the way an operator gives them (NEWSLETTER_ALLOWED_ORIGINS in the
environment when the app starts, which is when flask-cors reads them) and set in app.config as well,
which the per-request checks (Origin, return_to, frame-ancestors) read.
"""

from __future__ import annotations

import gzip
import html

import pytest

from newsletter import tokens
from newsletter.extensions import db

from .conftest import hidden_fields, link_in, query

NEWS = "https://news.example"
EVIL = "https://evil.example"
STORED_TABLES = ("readers", "subscriptions", "consent_events", "outbox_messages")
CSRF_MESSAGE = "This form was open too long or came from elsewhere."
THANKS_IFRAME = "Thank you for signing up for this newsletter. We've sent you a confirmation email."


@pytest.fixture
def allowed_origins_at_start(monkeypatch):
    monkeypatch.setenv("NEWSLETTER_ALLOWED_ORIGINS", NEWS)


@pytest.fixture
def app(allowed_origins_at_start, app):
    app.config["NEWSLETTER_ALLOWED_ORIGINS"] = [NEWS]
    return app


def text(response) -> str:
    return html.unescape(response.get_data(as_text=True))


def stored(app) -> dict[str, int]:
    return {table: query(app, f"SELECT count(*) FROM {table}")[0][0] for table in STORED_TABLES}


def assert_nothing_stored(app) -> None:
    assert stored(app) == dict.fromkeys(STORED_TABLES, 0)


def plain_form(**fields) -> dict[str, str]:
    """What a plain <form method=post action=".../subscribe"> on the news site sends: no CSRF token."""
    return {"email": "reader@example.com", "newsletters": "daily-briefing", **fields}


def frame_ancestors(response) -> set[str]:
    policy = response.headers.get("Content-Security-Policy", "")
    for directive in policy.split(";"):
        name, _, sources = directive.strip().partition(" ")
        if name == "frame-ancestors":
            return set(sources.split())
    raise AssertionError(f"no frame-ancestors in Content-Security-Policy {policy!r}")


# --- the plain cross-origin form -------------------------------------------------------------------

def test_plain_form_from_allowed_site_is_taken_without_csrf_token(app, client, smtp, drain):
    sent = client.post("/subscribe", headers={"Origin": NEWS}, data=plain_form(
        page_url=f"{NEWS}/2026/11/article", form_id="sidebar-daily"))
    assert sent.status_code == 303
    assert sent.headers["Location"].endswith("/thanks")

    events = query(app, "SELECT source, page_url, form_id, action FROM consent_events")
    assert events == [("embed-form", f"{NEWS}/2026/11/article", "sidebar-daily", "signup_requested")]
    assert query(app, "SELECT status FROM subscriptions") == [("pending",)]
    drain()
    assert [rcpt for _, rcpts in smtp.inbox.envelopes for rcpt in rcpts] == ["reader@example.com"]


def test_plain_form_goes_back_to_return_to_on_the_allowed_site(app, client):
    sent = client.post("/subscribe", headers={"Origin": NEWS},
                       data=plain_form(return_to=f"{NEWS}/article#ok", page_url=f"{NEWS}/article"))
    assert sent.status_code == 303
    assert sent.headers["Location"] == f"{NEWS}/article#ok"
    assert stored(app)["readers"] == 1


def test_plain_form_from_older_browser_with_only_a_referer_from_allowed_site(app, client):
    sent = client.post("/subscribe", headers={"Referer": f"{NEWS}/article"}, data=plain_form())
    assert sent.status_code == 303
    assert query(app, "SELECT source, page_url FROM consent_events") == [("embed-form", f"{NEWS}/article")]


@pytest.mark.parametrize("headers", [
    {"Origin": EVIL},
    {"Origin": "HTTPS://EVIL.EXAMPLE"},
    {"Origin": "http://news.example"},  # same host, other scheme: another origin
    {"Origin": "https://news.example.evil.example"},
    {"Referer": f"{EVIL}/page"},  # no Origin (older browser): the Referer says where it came from
], ids=["origin", "origin-uppercase", "origin-http", "origin-suffix", "referer"])
def test_plain_form_from_another_site_is_refused_with_a_page(app, client, smtp, drain, headers):
    sent = client.post("/subscribe", headers=headers, data=plain_form(return_to=f"{NEWS}/article"))
    assert sent.status_code == 403
    assert sent.mimetype == "text/html"
    assert "Location" not in sent.headers
    page = text(sent)
    assert "not accepted" in page and "not allowed to embed these forms" in page
    assert_nothing_stored(app)
    drain()
    assert smtp.inbox.messages == []


@pytest.mark.parametrize("headers", [
    {"Origin": "http://localhost"},  # our own origin (the test client's host)
    {"Origin": "null"},  # sandboxed frames and privacy modes
    {},  # no Origin and no Referer: not a browser we can vouch for
], ids=["own-origin", "null-origin", "no-origin"])
def test_form_without_an_allowed_origin_needs_the_csrf_token(app, client, smtp, drain, headers):
    sent = client.post("/subscribe", headers=headers, data=plain_form())
    assert sent.status_code in (400, 422)
    assert sent.mimetype == "text/html"
    assert CSRF_MESSAGE in text(sent)
    assert_nothing_stored(app)
    drain()
    assert smtp.inbox.messages == []

    # The same page with its token is taken: the refusal was about the token, nothing else.
    page = client.get("/subscribe")
    taken = client.post("/subscribe", headers=headers, data={**hidden_fields(page.text), **plain_form()})
    assert taken.status_code == 303
    assert query(app, "SELECT source FROM consent_events") == [("hosted-form",)]


# --- return_to -------------------------------------------------------------------------------------

BAD_RETURN_TO = {
    "other-host": f"{EVIL}/thanks",
    "javascript": "javascript:alert(1)",
    "protocol-relative": "//evil.example/x",
    "suffix-host": "https://news.example.evil.example/",
    "userinfo": "https://news.example@evil.example/",
    "crlf": "https://news.example/a\r\nLocation: https://evil.example/",
    "lf": "https://news.example/a\nx",
    "backslash": "https://news.example\\@evil.example/",
    "backslash-path": "/\\evil.example/x",
    "other-scheme": "http://news.example/article",
    "other-port": "https://news.example:8443/article",
    "data-url": "data:text/html,<script>alert(1)</script>",
    "leading-space": " https://news.example/article",
    "scheme-only": "https:evil.example",
}


@pytest.mark.parametrize("return_to", BAD_RETURN_TO.values(), ids=BAD_RETURN_TO.keys())
def test_return_to_outside_the_allowed_sites_is_refused(app, client, smtp, drain, return_to):
    sent = client.post("/subscribe", headers={"Origin": NEWS}, data=plain_form(return_to=return_to))
    assert sent.status_code == 400
    assert sent.mimetype == "text/html"
    assert "Location" not in sent.headers
    assert "return_to" in text(sent)
    assert_nothing_stored(app)
    drain()
    assert smtp.inbox.messages == []


def test_return_to_on_the_allowed_site_is_followed_exactly(app, client):
    sent = client.post("/subscribe", headers={"Origin": NEWS},
                       data=plain_form(return_to="https://news.example/article#ok"))
    assert sent.status_code == 303
    assert sent.headers["Location"] == "https://news.example/article#ok"


# --- the JSON API and CORS -------------------------------------------------------------------------

def signup_json(email: str = "reader@example.com") -> dict:
    return {"email": email, "newsletters": ["daily-briefing"]}


def test_api_refuses_a_browser_on_another_site(app, client, smtp, drain):
    sent = client.post("/api/v1/subscriptions", json=signup_json(), headers={"Origin": EVIL})
    assert sent.status_code == 403
    assert sent.mimetype == "application/json"
    [message] = sent.get_json()["errors"]["request"]
    assert EVIL in message and "not allowed" in message
    assert "Access-Control-Allow-Origin" not in sent.headers
    assert_nothing_stored(app)
    drain()
    assert smtp.inbox.messages == []


def test_api_answers_the_allowed_site_with_cors(app, client):
    sent = client.post("/api/v1/subscriptions", json=signup_json(), headers={"Origin": NEWS})
    assert sent.status_code == 202
    assert sent.get_json() == {"status": "pending"}
    assert sent.headers.get("Access-Control-Allow-Origin") == NEWS
    assert query(app, "SELECT source FROM consent_events") == [("api",)]

    # embed.js first asks for the form's settings: that answer must be readable by the page too.
    settings = client.get("/api/v1/forms?newsletters=daily-briefing", headers={"Origin": NEWS})
    assert settings.status_code == 200
    assert settings.headers.get("Access-Control-Allow-Origin") == NEWS


def test_api_preflight_is_allowed_only_for_the_allowed_site(app, client):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "Content-Type"}
    allowed = client.options("/api/v1/subscriptions", headers={"Origin": NEWS, **preflight})
    assert allowed.status_code in (200, 204)
    assert allowed.headers.get("Access-Control-Allow-Origin") == NEWS
    methods = {m.strip().upper() for m in allowed.headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert "POST" in methods
    allowed_headers = {h.strip().lower() for h in allowed.headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert "content-type" in allowed_headers

    refused = client.options("/api/v1/subscriptions", headers={"Origin": EVIL, **preflight})
    assert "Access-Control-Allow-Origin" not in refused.headers
    assert_nothing_stored(app)


def test_api_called_server_to_server_needs_no_origin(app, client, smtp, drain):
    sent = client.post("/api/v1/subscriptions", json=signup_json("backend@example.com"))
    assert sent.status_code == 202
    drain()
    assert [rcpt for _, rcpts in smtp.inbox.envelopes for rcpt in rcpts] == ["backend@example.com"]


# --- framing ---------------------------------------------------------------------------------------

def test_iframe_form_may_be_framed_by_the_allowed_site(app, client):
    page = client.get("/embed/daily-briefing")
    assert page.status_code == 200
    assert frame_ancestors(page) == {"'self'", NEWS}

    # Its answers stay framable too: the thank-you after sending …
    done = client.post("/embed/daily-briefing", data={**hidden_fields(page.text), "email": "reader@example.com"})
    assert done.status_code == 200 and THANKS_IFRAME in text(done)
    assert frame_ancestors(done) == {"'self'", NEWS}
    # … and the form with its field errors.
    invalid = client.post("/embed/daily-briefing", data={**hidden_fields(page.text), "email": "not an address"})
    assert invalid.status_code == 422
    assert frame_ancestors(invalid) == {"'self'", NEWS}


def test_iframe_error_pages_may_be_framed_by_the_allowed_site(app, client):
    """A reader inside the news site's iframe must see why the form failed, not a blocked frame."""
    app.config["NEWSLETTER_RATE_LIMIT_IP"] = "1/minute"
    page = client.get("/embed/daily-briefing")
    fields = hidden_fields(page.text)
    assert client.post("/embed/daily-briefing", data={**fields, "email": "one@example.com"}).status_code == 200

    limited = client.post("/embed/daily-briefing", data={**fields, "email": "two@example.com"})
    assert limited.status_code == 429
    assert "Too many signups from your network" in text(limited)
    assert frame_ancestors(limited) == {"'self'", NEWS}

    app.config["NEWSLETTER_RATE_LIMIT_IP"] = "100/minute"
    expired = app.test_client().post("/embed/daily-briefing", data={**fields, "email": "three@example.com"})
    assert expired.status_code in (400, 422)  # another browser: the session holding the CSRF token is gone
    assert frame_ancestors(expired) == {"'self'", NEWS}


def test_hosted_pages_may_only_be_framed_by_ourselves(app, client, smtp, drain):
    assert client.post("/api/v1/subscriptions", json=signup_json()).status_code == 202
    drain()
    [confirmation] = smtp.inbox.messages
    confirm_path = "/confirm/" + link_in(confirmation, "/confirm/").split("/confirm/", 1)[1]
    [(reader_id, newsletter_id)] = query(app, "SELECT reader_id, newsletter_id FROM subscriptions")
    with app.app_context():
        unsubscribe_path = f"/unsubscribe/{tokens.unsubscribe_token(reader_id, newsletter_id)}"
        db.session.remove()

    for path in ("/subscribe", "/subscribe/daily-briefing", "/thanks", confirm_path, unsubscribe_path):
        page = client.get(path)
        assert page.status_code == 200, path
        assert page.mimetype == "text/html", path
        assert frame_ancestors(page) == {"'self'"}, path

    refused = client.post("/subscribe", headers={"Origin": EVIL}, data=plain_form())
    assert refused.status_code == 403
    assert frame_ancestors(refused) == {"'self'"}


# --- embed.js --------------------------------------------------------------------------------------

def test_embed_script_is_javascript_and_small(app, client):
    script = client.get("/embed.js")
    assert script.status_code == 200
    assert script.mimetype == "text/javascript"
    body = script.get_data()
    zipped = len(gzip.compress(body, compresslevel=9))
    assert len(body) < 10 * 1024, f"embed.js is {len(body)} bytes ({zipped} gzipped); keep it under 10 kB"
