"""Pages whose URL holds a signed link: the link never leaks (Referer, consent history), and preferences links expire.

A signed link is a key to the reader's subscriptions. Its pages tell the browser not to send their URL on
(Referrer-Policy: no-referrer); a page URL that is one of our signed links is never kept in the consent
history, and migration 0007 scrubs those kept before. Preferences and data links stop working after
NEWSLETTER_PREFERENCES_MAX_AGE; a reader asks for a fresh one by address at /preferences/new-link, which
answers the same for every address. Unsubscribe links never expire.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from urllib.parse import quote, urlencode

import pytest
import sqlalchemy as sa
from alembic.script import ScriptDirectory
from flask_migrate import downgrade, upgrade

from newsletter import accounts, api_tokens, tokens
from newsletter.extensions import db, limiter
from newsletter.models import ConsentEvent, OutboxMessage, Reader, utcnow
from newsletter.provenance import is_token_url

from .conftest import hidden_fields, link_in, query
from .test_admin_auth import PASSWORD, log_in
from .test_links import ONE_CLICK, mail, path_of, press_confirm, sign_up, text_of

PUBLIC = "http://127.0.0.1:5000"  # the tests' NEWSLETTER_PUBLIC_URL: the host of every link in our emails
ARTICLE = "https://example-news.org/2026/11/analytical-engines"
DAY = 86_400


@dataclass
class Reader_:
    """Ada, confirmed to The Daily Briefing: the paths of the links in her welcome email."""

    confirm: str
    unsubscribe: str
    preferences: str

    @property
    def data(self) -> str:
        return f"{self.preferences}/data.json"


@pytest.fixture
def ada(app, client, drain, smtp) -> Reader_:
    sign_up(client, "ada@example.com")
    [confirmation] = mail(drain, smtp, 1)
    confirm = path_of(link_in(confirmation, "/confirm/"))
    assert "Subscription confirmed" in text_of(press_confirm(client, confirm))
    welcome = mail(drain, smtp, 2)[1]
    return Reader_(confirm=confirm, unsubscribe=path_of(link_in(welcome, "/unsubscribe/")),
                   preferences=path_of(link_in(welcome, "/preferences/")))


def events(app) -> list[tuple]:
    return [tuple(row) for row in query(app, "SELECT action, source, page_url FROM consent_events ORDER BY id")]


def token_of(path: str) -> str:
    return re.search(r"/(?:confirm|unsubscribe|preferences)/([^/]+)", path).group(1)


# ---------------------------------------------------------------------------------------------------------------
# Referrer-Policy on every page with a signed link in its URL


def test_every_page_with_a_signed_link_in_its_url_sends_no_referrer(app, client, drain, smtp, ada, clock):
    sign_up(client, "bob@example.com")
    bob_confirm = path_of(link_in(mail(drain, smtp, 3)[2], "/confirm/"))
    csrf = hidden_fields(client.get(ada.preferences).get_data(as_text=True))
    answers = {
        "confirm page": client.get(bob_confirm),
        "confirmed page": client.post(bob_confirm),
        "unsubscribe page": client.get(ada.unsubscribe),
        "preferences page": client.get(ada.preferences),
        "preferences saved": client.post(ada.preferences, data={**csrf, "newsletters": ["1"]}),
        "data download": client.get(ada.data),
        "damaged link": client.get(ada.preferences[:-3]),
        "link for another purpose": client.get(f"/unsubscribe/{token_of(ada.preferences)}"),
        "unsubscribed page": client.post(ada.unsubscribe, data={"scope": "one"}),
        "one-click unsubscribe": client.post(ada.unsubscribe, data=ONE_CLICK,
                                             content_type="application/x-www-form-urlencoded"),
    }
    clock.advance(31 * DAY)
    answers["expired preferences link"] = client.get(ada.preferences)
    answers["expired data link"] = client.get(ada.data)
    answers["expired confirm link"] = client.get(bob_confirm)
    for page, response in answers.items():
        assert response.headers.get("Referrer-Policy") == "no-referrer", page
    assert [r.status_code for r in answers.values()] == [200] * 6 + [400, 400] + [200] * 2 + [410] * 3
    # A damaged preferences link, too, leads to a new one.
    assert 'href="/preferences/new-link"' in answers["damaged link"].get_data(as_text=True)
    # Pages without a signed link keep the browser's default.
    for path in ("/subscribe", "/thanks", "/preferences/new-link"):
        assert "Referrer-Policy" not in client.get(path).headers, path


# ---------------------------------------------------------------------------------------------------------------
# our own signed links are never kept as a page URL


@pytest.fixture
def viewer(app):
    """A viewer's session in the admin and a viewer's API token: what they can read of the consent history."""
    with app.app_context():
        accounts.create_admin(db.session, "viewer@example.org", PASSWORD, "viewer")
        _, secret = api_tokens.create_token(db.session, "reporting", role="viewer")
        db.session.commit()
        db.session.remove()
    client = app.test_client()
    log_in(client, "viewer@example.org", PASSWORD)
    return client, {"Authorization": f"Bearer {secret}"}


def test_a_referer_of_its_own_signed_link_is_not_stored(app, client, drain, smtp, viewer):
    # Ada signs up from an article: that page is kept, as proof of where she asked.
    assert client.post("/api/v1/subscriptions", json={"email": "ada@example.com", "newsletters": ["daily-briefing"],
                                                      "page_url": ARTICLE}).status_code == 202
    confirm = path_of(link_in(mail(drain, smtp, 1)[0], "/confirm/"))
    # Each page's POST carries the page's own URL as Referer, as browsers send it without the policy.
    assert client.post(confirm, headers={"Referer": PUBLIC + confirm}).status_code == 200
    welcome = mail(drain, smtp, 2)[1]
    preferences, unsubscribe = (path_of(link_in(welcome, p)) for p in ("/preferences/", "/unsubscribe/"))
    fields = hidden_fields(client.get(preferences).get_data(as_text=True))
    assert client.post(preferences, data={**fields, "newsletters": ["1", "2"]},
                       headers={"Referer": f"http://localhost{preferences}"}).status_code == 200
    assert client.post(unsubscribe, data={"scope": "one"},
                       headers={"Referer": f"{PUBLIC}{unsubscribe}?utm=x#top"}).status_code == 200
    # A signup whose form claims to be on a signed link's page (a copied URL, or someone's mischief).
    assert client.post("/api/v1/subscriptions", json={"email": "ada@example.com", "newsletters": ["no-welcome"],
                                                      "page_url": PUBLIC + preferences + "/data.json"}
                       ).status_code == 202

    history = events(app)
    assert {source for _, source, _ in history} == {"api", "email-link", "preferences", "unsubscribe-page"}
    assert [page for _, _, page in history] == [ARTICLE] + [None] * (len(history) - 1)
    secrets = [token_of(link) for link in (confirm, preferences, unsubscribe)]
    stored = " ".join(str(cell) for row in query(app, "SELECT * FROM consent_events") for cell in row)
    assert not any(secret in stored for secret in secrets)

    # What viewers read: the reader's page in the admin, and the API's reader and export.
    browser, bearer = viewer
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    seen = [browser.get(f"/admin/readers/{reader_id}"), browser.get(f"/admin/readers/{reader_id}/export.json"),
            browser.get(f"/api/v1/readers/{reader_id}", headers=bearer),
            browser.get(f"/api/v1/readers/{reader_id}/export", headers=bearer)]
    for response in seen:
        assert response.status_code == 200
        body = response.get_data(as_text=True)
        assert ARTICLE in body and not any(secret in body for secret in secrets)


OURS = [
    f"{PUBLIC}/confirm/{{token}}",
    f"{PUBLIC}/unsubscribe/{{token}}?List-Unsubscribe=One-Click",
    f"{PUBLIC}/preferences/{{token}}#newsletters",
    f"{PUBLIC}/preferences/{{token}}/data.json",
    "http://LOCALHOST/preferences/{token}",  # the request's own host, in capitals
    "http://localhost:8080/preferences/{token}",  # behind another port
    "http://127.0.0.1:5000/preferences/{quoted}",  # percent-encoded
    "  http://127.0.0.1:5000/confirm/{token}  ",
    f"{PUBLIC}/confirm//{{token}}",  # a doubled slash: a redirect, the token all the same
    f"{PUBLIC}/unsubscribe/{{token}}/",  # a trailing slash: a 404, the token all the same
    f"{PUBLIC}/%63onfirm/{{token}}",
]
NOT_OURS = [
    ARTICLE,
    "https://example-news.org/preferences/{token}",  # another site's page, whatever its path
    f"{PUBLIC}/subscribe",
    f"{PUBLIC}/preferences/new-link",
    f"{PUBLIC}/preferences/",
    "http://[::1",  # malformed
    "not a url",
    "javascript:alert(1)",
    "",
]


@pytest.mark.parametrize("url", OURS)
def test_our_signed_links_are_recognized(app, url):
    with app.test_request_context("/", base_url="http://localhost"):
        token = tokens.preferences_token(1)
        assert is_token_url(url.format(token=token, quoted=quote(token, safe="").replace(".", "%2E")))


@pytest.mark.parametrize("url", NOT_OURS)
def test_other_pages_are_kept(app, url):
    with app.test_request_context("/", base_url="http://localhost"):
        assert not is_token_url(url.format(token=tokens.preferences_token(1)))


def test_a_public_url_with_a_path_prefix(app):
    app.config["NEWSLETTER_PUBLIC_URL"] = "https://news.example/newsletters"
    with app.test_request_context("/", base_url="http://internal:8000"):
        token = tokens.preferences_token(1)
        assert is_token_url(f"https://news.example/newsletters/preferences/{token}")
        assert is_token_url(f"http://internal:8000/preferences/{token}")
        assert not is_token_url(f"https://news.example/elsewhere/preferences/{token}")


# ---------------------------------------------------------------------------------------------------------------
# migration 0007 scrubs the signed links stored before


MIGRATION = "0007"


def test_the_migration_scrubs_stored_signed_links(app):
    with app.app_context():
        before = ScriptDirectory.from_config(app.extensions["migrate"].migrate.get_config()).get_revision(
            MIGRATION).down_revision
        token = tokens.preferences_token(1)
        compressed = tokens.sign(tokens.CONFIRM, {"r": 1, "n": list(range(200))})  # long: zlib, a leading dot
        assert compressed.startswith(".")
        downgrade(revision=before)
        leaking = [f"{PUBLIC}/confirm/{compressed}", f"https://news.example/preferences/{token}",
                   f"https://news.example/newsletters/unsubscribe/{token}?List-Unsubscribe=One-Click",
                   f"http://localhost/preferences/{token}/data.json", f"http://localhost/preferences/{quote(token)}"]
        kept = [ARTICLE, "https://example-news.org/confirm/how-to-confirm", f"{PUBLIC}/subscribe",
                f"https://example-news.org/?next=/preferences/{token}", None]
        # Written with the columns of that schema: the models have columns added since.
        readers = sa.table("readers", sa.column("id"), sa.column("email"), sa.column("created_at"))
        events = sa.table("consent_events", *(sa.column(name) for name in (
            "reader_id", "action", "source", "page_url", "ip_address", "occurred_at")))
        now = utcnow()
        reader_id = db.session.execute(sa.insert(readers).values(email="ada@example.com", created_at=now)
                                       .returning(readers.c.id)).scalar_one()
        db.session.execute(sa.insert(events), [
            {"reader_id": reader_id, "action": "signup_requested", "source": "api", "page_url": url,
             "ip_address": "192.0.2.1", "occurred_at": now} for url in leaking + kept])
        db.session.commit()
        db.session.remove()

        upgrade()
        rows = db.session.execute(sa.select(ConsentEvent.page_url, ConsentEvent.ip_address)
                                  .order_by(ConsentEvent.id)).all()
        db.session.remove()
    assert [url for url, _ in rows] == [None] * len(leaking) + kept
    assert {ip for _, ip in rows} == {"192.0.2.1"}  # the rest of each event stays


# ---------------------------------------------------------------------------------------------------------------
# preferences and data links expire; unsubscribe links don't


def test_preferences_and_data_links_expire(app, client, drain, smtp, ada, clock):
    clock.advance(30 * DAY - 60)  # a minute before the default 30 days, both work...
    assert client.get(ada.preferences).status_code == 200
    assert client.get(ada.data).get_json()["reader"]["email"] == "ada@example.com"
    fields = hidden_fields(client.get(ada.preferences).get_data(as_text=True))

    clock.advance(120)  # ...a minute after, neither does, and the page offers a new link
    before = query(app, "SELECT status FROM subscriptions")
    for response in (client.get(ada.preferences), client.post(ada.preferences, data=fields), client.get(ada.data)):
        assert response.status_code == 410 and response.mimetype == "text/html"
        text = text_of(response)
        assert "This link has expired" in text and "ada@example.com" not in text
        assert "Email me a new link" in text and 'action="/preferences/new-link"' in response.get_data(as_text=True)
    assert query(app, "SELECT status FROM subscriptions") == before == [("confirmed",)]

    # The unsubscribe link still works, a year on (RFC 8058 one-click must never break).
    clock.advance(365 * DAY)
    assert client.post(ada.unsubscribe, data=ONE_CLICK, content_type="application/x-www-form-urlencoded"
                       ).status_code == 200
    assert query(app, "SELECT status FROM subscriptions") == [("unsubscribed",)]


def test_preferences_max_age_is_a_setting(app, client, ada, clock):
    app.config["NEWSLETTER_PREFERENCES_MAX_AGE"] = 3600
    clock.advance(3540)
    assert client.get(ada.preferences).status_code == 200
    clock.advance(120)
    assert client.get(ada.preferences).status_code == 410
    # In the reader's language.
    ukrainian = client.get(ada.preferences, headers={"Accept-Language": "uk"})
    assert ukrainian.status_code == 410 and "Надіслати мені нове посилання" in ukrainian.get_data(as_text=True)


def test_every_email_carries_a_fresh_link(app, client, drain, smtp, ada, clock):
    clock.advance(40 * DAY)
    assert client.get(ada.preferences).status_code == 410
    # A later email (here the welcome of another newsletter) brings a link signed when it was made.
    sign_up(client, "ada@example.com", ["weekly-explainer"])
    assert "Subscription confirmed" in text_of(press_confirm(client, path_of(link_in(mail(drain, smtp, 3)[2],
                                                                                     "/confirm/"))))
    fresh = path_of(link_in(mail(drain, smtp, 4)[3], "/preferences/"))
    page = client.get(fresh)
    assert page.status_code == 200 and "ada@example.com" in text_of(page)


# ---------------------------------------------------------------------------------------------------------------
# asking for a new link


def ask(client, email: str, *, environ: dict | None = None):
    """Fill in the new-link form as a reader would (any text, lone surrogates too, as bytes a browser could send)."""
    page = client.get("/preferences/new-link", environ_base=environ or {})
    assert page.status_code == 200
    body = urlencode({**hidden_fields(page.get_data(as_text=True)), "email": email}, errors="surrogatepass")
    return client.post("/preferences/new-link", data=body, content_type="application/x-www-form-urlencoded",
                       environ_base=environ or {})


def neutral(response, email: str) -> str:
    """The page with the address typed in taken out: what it tells about the address."""
    return response.get_data(as_text=True).replace(email, "ADDRESS")


@pytest.fixture
def readers(app, client, drain, smtp, ada):
    """Ada (confirmed), Bob (blocked), Eve (erased), and the SMTP server's messages so far."""
    for email in ("bob@example.com", "eve@example.com"):
        sign_up(client, email)
    drain()
    with app.app_context():
        from newsletter import privacy, subscriptions

        ids = dict(db.session.execute(sa.select(Reader.email, Reader.id)).all())
        subscriptions.block(db.session, ids["bob@example.com"], source=subscriptions.Source(channel="admin"),
                           config=app.config)
        privacy.erase_reader(db.session, ids["eve@example.com"], source=subscriptions.Source(channel="admin"),
                           config=app.config)
        db.session.commit()
        db.session.remove()
    return len(smtp.inbox.wait_for(4))


def test_a_reader_gets_a_fresh_link_by_email_and_nobody_learns_who_is_a_reader(app, client, drain, smtp, readers,
                                                                               clock):
    clock.advance(31 * DAY)  # Ada's link has expired: she asks for a new one
    answers = {email: ask(client, email) for email in (
        "ada@EXAMPLE.com", "nobody@example.com", "bob@example.com", "eve@example.com")}
    for email, response in answers.items():
        assert response.status_code == 200, email
        assert "Check your inbox" in text_of(response)
    assert len({neutral(response, email) for email, response in answers.items()}) == 1

    drain()
    [fresh] = smtp.inbox.wait_for(readers + 1)[readers:]
    assert len(smtp.inbox.messages) == readers + 1  # only Ada, the one known, unblocked, unerased reader
    assert fresh["To"] == "ada@example.com" and fresh["Subject"] == "Your link to choose your newsletters"
    assert "The link works for 30 days." in fresh.get_body(("plain",)).get_content()
    link = path_of(link_in(fresh, "/preferences/"))
    page = client.get(link)
    assert page.status_code == 200 and "ada@example.com" in text_of(page)
    assert client.get(f"{link}/data.json").get_json()["reader"]["email"] == "ada@example.com"


def test_at_most_one_new_link_email_per_resend_interval(app, client, drain, smtp, readers):
    for _ in range(3):
        assert ask(client, "ada@example.com").status_code == 200
    drain()
    assert len(smtp.inbox.wait_for(readers + 1)) == readers + 1
    assert query(app, "SELECT count(*) FROM outbox_messages WHERE kind = 'preferences_link'") == [(1,)]

    # Once the interval (NEWSLETTER_CONFIRM_RESEND_INTERVAL) has passed, the next request sends again.
    with app.app_context():
        for message in db.session.scalars(sa.select(OutboxMessage)):
            message.created_at -= timedelta(seconds=app.config["NEWSLETTER_CONFIRM_RESEND_INTERVAL"] + 1)
        db.session.commit()
        db.session.remove()
    assert ask(client, "ada@example.com").status_code == 200
    drain()
    assert len(smtp.inbox.wait_for(readers + 2)) == readers + 2


def test_new_link_requests_are_rate_limited_per_address_and_per_ip(app, client):
    app.config.update(NEWSLETTER_RATE_LIMIT_EMAIL="2/minute", NEWSLETTER_RATE_LIMIT_IP="5/minute")
    limiter.reset()
    one = {"REMOTE_ADDR": "192.0.2.1"}
    assert [ask(client, "ada@example.com", environ=one).status_code for _ in range(3)] == [200, 200, 429]
    refused = ask(client, "ada@example.com", environ=one)
    assert "Too many requests for this email address" in text_of(refused) and "Retry-After" in refused.headers
    # Four requests from this network so far, the refused one too: a fifth, for another address, is let through.
    assert ask(client, "bob@example.com", environ=one).status_code == 200
    assert ask(client, "carol@example.com", environ=one).status_code == 429  # the network's budget is spent
    assert "Too many requests from your network" in text_of(ask(client, "dan@example.com", environ=one))
    assert ask(client, "dan@example.com", environ={"REMOTE_ADDR": "192.0.2.2"}).status_code == 200
    # Signups keep their own budget.
    assert client.post("/api/v1/subscriptions", json={"email": "ada@example.com", "newsletters": ["daily-briefing"]},
                       environ_base=one).status_code == 202


@pytest.mark.parametrize("email, why", [
    ("", "Enter your email address."),
    ("not an address", "email address"),
    ("a" * 400 + "@example.com", ""),
])
def test_new_link_form_rejects_bad_addresses_with_a_clear_message(app, client, drain, email, why):
    response = ask(client, email)
    assert response.status_code == 422 and response.mimetype == "text/html"
    assert why in text_of(response) and 'aria-invalid="true"' in response.get_data(as_text=True)
    assert query(app, "SELECT count(*) FROM outbox_messages") == [(0,)]


def test_new_link_form_refuses_an_address_with_a_nul(app, client):
    # Refused before any view runs (web_input), like every text no database can store.
    response = ask(client, "ada@example.com\x00")
    assert response.status_code == 422 and response.mimetype == "text/html"
    assert "that is not text (a NUL" in text_of(response)
    assert query(app, "SELECT count(*) FROM outbox_messages") == [(0,)]


def test_a_lone_surrogate_in_the_address_is_no_error(app, client):
    # The browser's bytes are not UTF-8: they are read with a replacement character, an unknown address.
    response = ask(client, "\ud800@example.com")
    assert response.status_code in (200, 422) and "Traceback" not in response.get_data(as_text=True)
    assert query(app, "SELECT count(*) FROM outbox_messages") == [(0,)]


def test_new_link_form_needs_its_csrf_token(app, client, ada):
    refused = client.post("/preferences/new-link", data={"email": "ada@example.com"})
    assert refused.status_code == 400 and "came from elsewhere" in text_of(refused)
    assert query(app, "SELECT count(*) FROM outbox_messages WHERE kind = 'preferences_link'") == [(0,)]


def test_the_unsubscribe_pages_hand_out_no_preferences_link(app, client, ada):
    for response in (client.get(ada.unsubscribe),
                     client.post(ada.unsubscribe, data=ONE_CLICK, content_type="application/x-www-form-urlencoded"),
                     client.post(ada.unsubscribe, data={"scope": "all"})):
        assert response.status_code == 200
        body = response.get_data(as_text=True)
        assert "/preferences/" not in body and token_of(ada.preferences) not in body


def test_the_forms_of_no_referrer_pages_work_over_https(app, client, ada, clock):
    """Over https CSRFProtect wants a Referer; the token pages' own forms send none and must still work."""
    secure = app.test_client()
    https = {"base_url": "https://localhost"}
    fields = hidden_fields(secure.get(ada.preferences, **https).get_data(as_text=True))
    saved = secure.post(ada.preferences, data={**fields, "newsletters": ["1", "2"]}, **https)
    assert saved.status_code == 200 and "Saved." in text_of(saved)
    assert query(app, "SELECT count(*) FROM subscriptions WHERE status = 'confirmed'") == [(2,)]
    # Without its CSRF token the form changes nothing and says why.
    refused = secure.post(ada.preferences, data={"newsletters": ["1"]}, **https)
    assert refused.status_code == 400 and "came from elsewhere" in text_of(refused)
    assert query(app, "SELECT count(*) FROM subscriptions WHERE status = 'confirmed'") == [(2,)]

    # Past the link's 30 days, not the session cookie's 31: at 31 days a tick of the second between the
    # page and its POST made the session (and its CSRF token) expire in between, now and then.
    clock.advance(30 * DAY + 3600)  # the expired page's form asks for a new link
    expired = secure.get(ada.preferences, **https)
    assert expired.status_code == 410
    body = urlencode({**hidden_fields(expired.get_data(as_text=True)), "email": "ada@example.com"})
    asked = secure.post("/preferences/new-link", data=body, content_type="application/x-www-form-urlencoded", **https)
    assert asked.status_code == 200 and "Check your inbox" in text_of(asked)
    assert query(app, "SELECT count(*) FROM outbox_messages WHERE kind = 'preferences_link'") == [(1,)]
