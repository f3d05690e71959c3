"""Bad input at the two signup doors: the JSON API (POST /api/v1/subscriptions) and the hosted form (/subscribe).

Every rejected request must get a clear, specific error (JSON field errors or an HTML page, never a 500)
and must leave the database exactly as it was and send no email.
"""

from __future__ import annotations

import email.policy
import json
import re
from datetime import datetime, timezone
from html.parser import HTMLParser
from types import SimpleNamespace
from urllib.parse import quote, urlsplit

import pytest
import sqlalchemy as sa
from email_validator import validate_email

from newsletter import accounts, api_tokens, privacy, subscriptions, tokens
from newsletter.extensions import db
from newsletter.models import ConsentEvent, Newsletter, OutboxMessage, Reader, Subscription
from newsletter.subscriptions import Source

from .conftest import csrf_token, hidden_fields, link_in, query
from .test_admin_auth import log_in

API = "/api/v1/subscriptions"
ALL_TABLES = ("newsletters", "readers", "subscriptions", "consent_events", "outbox_messages")


# ---------------------------------------------------------------------------------------------------------------
# helpers


def snapshot(app, tables=ALL_TABLES) -> dict[str, list[tuple]]:
    """Every row of every table, to compare before and after a request."""
    return {table: [tuple(row) for row in query(app, f"SELECT * FROM {table} ORDER BY id")] for table in tables}


def count(app, table: str) -> int:
    return query(app, f"SELECT COUNT(*) FROM {table}")[0][0]


def signup(client, email, newsletters=("daily-briefing",), **extra):
    return client.post(API, json={"email": email, "newsletters": list(newsletters), **extra})


def assert_nothing_stored_or_sent(app, before, drain, smtp) -> None:
    assert snapshot(app) == before, "a rejected request changed the database"
    assert drain().sent == 0
    assert smtp.inbox.messages == []


def recipients(message):
    """The To header's addresses as a mail client that reads UTF-8 headers (RFC 6532, sent with SMTPUTF8) sees them.

    The test SMTP server parses bytes with the email package, which keeps 8-bit header bytes as surrogate escapes.
    """
    [raw] = [value for name, value in message.raw_items() if name.lower() == "to"]
    text = raw.encode("ascii", "surrogateescape").decode("utf-8")
    return email.policy.default.header_factory("To", text).addresses


def json_errors(response) -> dict[str, list[str]]:
    assert response.is_json, f"not JSON: {response.content_type} {response.get_data(as_text=True)[:200]}"
    body = response.get_json()
    assert set(body) == {"errors"}, body
    assert all(isinstance(messages, list) and messages for messages in body["errors"].values()), body
    return body["errors"]


class Page(HTMLParser):
    """The tags of an HTML page with their attributes, and the text inside elements that have an id."""

    VOID = {"input", "br", "meta", "link", "img", "hr"}

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text_by_id: dict[str, str] = {}
        self._open: list[tuple[str, str | None]] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.append((tag, attributes))
        if tag not in self.VOID:
            self._open.append((tag, attributes.get("id")))
            if attributes.get("id"):
                self.text_by_id.setdefault(attributes["id"], "")

    def handle_endtag(self, tag):
        while self._open:
            if self._open.pop()[0] == tag:
                break

    def handle_data(self, data):
        for _, element_id in self._open:
            if element_id:
                self.text_by_id[element_id] += data

    def find(self, tag: str, **wanted: str) -> dict[str, str | None]:
        matches = [a for t, a in self.tags if t == tag and all(a.get(k) == v for k, v in wanted.items())]
        assert len(matches) == 1, f"expected one <{tag} {wanted}>, found {len(matches)}"
        return matches[0]


def assert_friendly_page(response, status: int) -> str:
    text = response.get_data(as_text=True)
    assert response.status_code == status, text[:500]
    assert response.mimetype == "text/html"
    assert text.lstrip().lower().startswith("<!doctype html>")
    assert "Traceback" not in text and "Werkzeug Debugger" not in text
    return text


def confirm_by_link(client, drain, smtp, index: int) -> None:
    """Send the outbox, open the confirmation email number `index` and press its button."""
    drain()
    path = urlsplit(link_in(smtp.inbox.wait_for(index + 1)[index], "/confirm/")).path
    page = client.get(path)
    assert page.status_code == 200
    done = client.post(path)
    assert done.status_code == 200 and "Subscription confirmed" in done.get_data(as_text=True)


# ---------------------------------------------------------------------------------------------------------------
# the JSON API: one table of bad signups


def _email(address):
    return {"email": address, "newsletters": ["daily-briefing"]}


LONG_DOMAIN = "b" * 63 + "." + "c" * 63 + "." + "d" * 58 + ".com"  # 190 characters, every label legal

BAD_SIGNUPS = [
    # malformed addresses
    pytest.param(_email("plainaddress"), "email", "must have an @-sign", id="no-at"),
    pytest.param(_email("a@b@example.com"), "email", "invalid characters: '@'", id="two-at"),
    pytest.param(_email("a@@example.com"), "email", "invalid characters: '@'", id="double-at"),
    pytest.param(_email(""), "email", "Enter your email address", id="empty"),
    pytest.param(_email("   "), "email", "Enter your email address", id="only-spaces"),
    pytest.param({"newsletters": ["daily-briefing"]}, "email", "Enter your email address", id="email-missing"),
    pytest.param(_email(None), "email", "Enter your email address", id="email-null"),
    pytest.param(_email(42), "email", "must be a string", id="email-number"),
    pytest.param(_email(["a@example.com"]), "email", "must be a string", id="email-list"),
    pytest.param(_email("ada lovelace@example.com"), "email", "invalid characters before the @-sign: SPACE",
                 id="space-inside"),
    pytest.param(_email("user@"), "email", "There must be something after the @-sign", id="missing-domain"),
    pytest.param(_email("@example.com"), "email", "There must be something before the @-sign", id="missing-local"),
    pytest.param(_email("user@example"), "email", "It should have a period", id="domain-without-dot"),
    pytest.param(_email("user@example.com."), "email", "cannot end with a period", id="trailing-dot"),
    pytest.param(_email("a..b@example.com"), "email", "two periods in a row", id="double-dot"),
    pytest.param(_email("A <a@example.com>"), "email", "display name and angle brackets", id="display-name"),
    pytest.param(_email('"A" <a@example.com>'), "email", "display name and angle brackets", id="quoted-display-name"),
    pytest.param(_email('"a b"@example.com'), "email", "Quoting the part before the @-sign is not allowed",
                 id="quoted-local-part"),
    pytest.param(_email("x@foo.test"), "email", "special-use or reserved name", id="special-use-test"),
    pytest.param(_email("x@foo.localhost"), "email", "special-use or reserved name", id="special-use-localhost"),
    pytest.param(_email("x@example.invalid"), "email", "special-use or reserved name", id="special-use-invalid"),
    pytest.param(_email("x@localhost"), "email", "It should have a period", id="bare-localhost"),
    pytest.param(_email("user@exa_mple.com"), "email", "invalid characters: '_'", id="underscore-in-domain"),
    pytest.param(_email("a\x00@example.com"), "email", "not text (a NUL", id="nul-in-address"),
    # overlong addresses
    pytest.param(_email("a" * 65 + "@example.com"), "email", "too long before the @-sign", id="local-part-65"),
    pytest.param(_email("a" * 64 + "@" + LONG_DOMAIN), "email", "too long", id="total-255"),
    pytest.param(_email("a" * 64 + "@" + LONG_DOMAIN + "x" * 65), "email", "too long", id="total-320"),
    pytest.param(_email("a" * 64 + "@" + LONG_DOMAIN + "x" * 66), "email", "too long", id="total-321"),
    pytest.param(_email("a" * 5_000 + "@" + "b" * 5_000 + ".com"), "email", "too long", id="10-kB-address"),
    pytest.param(_email("x" * 10_240), "email", "too long", id="10-kB-string"),
    # header injection through the address
    pytest.param(_email("ada@example.com\r\nBcc: victim@example.net"), "email", "invalid characters",
                 id="crlf-in-email"),
    pytest.param(_email("ada\n@example.com"), "email", "invalid characters", id="lf-in-email"),
    # names
    pytest.param({**_email("ada@example.com"), "name": "Ada\r\nBcc: victim@example.net"}, "name", "one line",
                 id="crlf-in-name"),
    pytest.param({**_email("ada@example.com"), "name": "Ada\nLovelace"}, "name", "one line", id="lf-in-name"),
    pytest.param({**_email("ada@example.com"), "name": "Ada\rLovelace"}, "name", "one line", id="cr-in-name"),
    pytest.param({**_email("ada@example.com"), "name": "Ada\x00"}, "name", "not text (a NUL", id="nul-in-name"),
    # U+0085 NEXT LINE is a control character (Unicode category Cc) and a line break to str.splitlines().
    pytest.param({**_email("ada@example.com"), "name": "Ada\x85Bcc: victim@example.net"}, "name",
                 "control characters", id="next-line-in-name"),
    pytest.param({**_email("ada@example.com"), "name": "\ud800"}, "name", "not text (a NUL, or half of a UTF-16",
                 id="lone-surrogate-in-name"),
    pytest.param({**_email("ada@example.com"), "name": "x" * 201}, "name", "at most 200 characters",
                 id="name-too-long"),
    pytest.param({**_email("ada@example.com"), "name": 7}, "name", "must be a string", id="name-number"),
    # newsletters
    pytest.param({"email": "ada@example.com", "newsletters": ["no-such-letter"]}, "newsletters",
                 "There is no newsletter called 'no-such-letter'", id="unknown-newsletter"),
    pytest.param({"email": "ada@example.com", "newsletters": ["daily-briefing", "no-such-letter"]}, "newsletters",
                 "There is no newsletter called 'no-such-letter'", id="unknown-among-known"),
    pytest.param({"email": "ada@example.com", "newsletters": []}, "newsletters", "Choose at least one newsletter",
                 id="empty-list"),
    pytest.param({"email": "ada@example.com"}, "newsletters", "as a list", id="newsletters-missing"),
    pytest.param({"email": "ada@example.com", "newsletters": "daily-briefing"}, "newsletters", "as a list",
                 id="newsletters-string"),
    pytest.param({"email": "ada@example.com", "newsletters": {"daily-briefing": True}}, "newsletters", "as a list",
                 id="newsletters-object"),
    pytest.param({"email": "ada@example.com", "newsletters": [1, 2]}, "newsletters", "as a list",
                 id="newsletters-numbers"),
    pytest.param({"email": "ada@example.com", "newsletters": ["daily-briefing", None]}, "newsletters", "as a list",
                 id="newsletters-with-null"),
    pytest.param({"email": "ada@example.com", "newsletters": ["daily\x00briefing"]}, "newsletters",
                 "not text", id="nul-in-slug"),
    pytest.param({"email": "ada@example.com", "newsletters": ["\udc80"]}, "newsletters", "not text",
                 id="lone-surrogate-in-slug"),
    pytest.param({**_email("ada@example.com"), "page_url": "https://news.example/\x00"}, "page_url", "not text",
                 id="nul-in-page-url"),
    pytest.param({**_email("ada@example.com"), "form_id": "\ud800"}, "form_id", "not text",
                 id="lone-surrogate-in-form-id"),
    pytest.param({**_email("ada@example.com"), "form_token": "a\x00"}, "form_token", "not text",
                 id="nul-in-form-token"),
    pytest.param({**_email("ada@example.com"), "lang": "uk\x00"}, "lang", "not text", id="nul-in-lang"),
    pytest.param({**_email("ada@example.com"), "website": "\udfff"}, "website", "not text",
                 id="lone-surrogate-in-honeypot"),
    pytest.param({**_email("ada@example.com"), "\ud800": 1}, "body", "not text", id="lone-surrogate-in-a-key"),
    pytest.param({"email": "ada@example.com", "newsletters": ["x" * 5_000]}, "newsletters",
                 "There is no newsletter called", id="5-kB-slug"),
    # the body
    pytest.param({**_email("ada@example.com"), "admin": True}, "body", "Unexpected field 'admin'", id="extra-field"),
]


@pytest.mark.parametrize("body, field, message_part", BAD_SIGNUPS)
def test_api_rejects_bad_signup(app, client, drain, smtp, body, field, message_part):
    before = snapshot(app)
    # ensure_ascii keeps lone surrogates and control characters as JSON escapes, as a browser's JSON.stringify does.
    response = client.post(API, data=json.dumps(body), content_type="application/json")
    assert response.status_code == 422, response.get_data(as_text=True)[:500]
    errors = json_errors(response)
    assert field in errors, errors
    assert any(message_part in message for message in errors[field]), errors[field]
    assert_nothing_stored_or_sent(app, before, drain, smtp)


def test_api_refuses_archived_newsletter_by_name(app, client, drain, smtp):
    with app.app_context():
        db.session.scalars(db.select(Newsletter).filter_by(slug="weekly-explainer")).one().archived_at = \
            datetime.now(timezone.utc)
        db.session.commit()
        db.session.remove()
    before = snapshot(app)
    for newsletters in (["weekly-explainer"], ["daily-briefing", "weekly-explainer"]):
        response = signup(client, "ada@example.com", newsletters)
        assert response.status_code == 422
        assert json_errors(response) == {
            "newsletters": ["The Weekly Explainer ('weekly-explainer') is archived and takes no new readers."]
        }
    assert_nothing_stored_or_sent(app, before, drain, smtp)


def test_api_thousand_newsletters_get_one_clear_message(app, client, drain, smtp):
    before = snapshot(app)
    slugs = [f"letter-{i}" for i in range(1_000)]
    response = signup(client, "ada@example.com", slugs)
    assert response.status_code == 422
    assert json_errors(response) == {"newsletters": ["At most 50 newsletters can be chosen at once."]}
    # The same unknown slug a thousand times is one problem, named once.
    response = signup(client, "ada@example.com", ["no-such-letter"] * 1_000)
    assert response.status_code == 422
    assert json_errors(response) == {"newsletters": ["There is no newsletter called 'no-such-letter'."]}
    assert_nothing_stored_or_sent(app, before, drain, smtp)


def test_api_reports_every_bad_field_at_once(app, client, drain, smtp):
    before = snapshot(app)
    response = client.post(API, json={"email": "nope", "newsletters": "x", "name": "a\nb", "extra": 1})
    assert response.status_code == 422
    assert set(json_errors(response)) == {"email", "newsletters", "name", "body"}
    assert_nothing_stored_or_sent(app, before, drain, smtp)


def test_api_duplicate_slugs_make_one_subscription(app, client, drain, smtp):
    response = signup(client, "ada@example.com", ["daily-briefing", "daily-briefing", "daily-briefing"])
    assert response.status_code == 202
    assert query(app, "SELECT n.slug, s.status FROM subscriptions s JOIN newsletters n ON n.id = s.newsletter_id") \
        == [("daily-briefing", "pending")]
    assert query(app, "SELECT action FROM consent_events") == [("signup_requested",)]
    assert drain().sent == 1
    [message] = smtp.inbox.messages
    assert message["Subject"] == "Confirm your subscription to The Daily Briefing"
    assert message.get_body(("plain",)).get_content().count("The Daily Briefing") == 1


# ---------------------------------------------------------------------------------------------------------------
# the JSON API: bodies that are not a JSON object


BAD_BODIES = [
    pytest.param(b'{"email": "ada@example.com", ', "application/json", 422, "body", "not valid JSON",
                 id="truncated-json"),
    pytest.param(b"email=ada@example.com", "application/json", 422, "body", "not valid JSON", id="not-json"),
    pytest.param(b"", "application/json", 422, "body", "not valid JSON", id="empty-body"),
    pytest.param(b'{"email": "\xff\xfe"}', "application/json", 422, "body", "not valid JSON", id="invalid-utf8"),
    pytest.param(b"[" * 30_000 + b"]" * 30_000, "application/json", 422, "body", "not valid JSON",
                 id="deeply-nested-json"),
    pytest.param(b'{"email": 1' + b"0" * 5_000 + b"}", "application/json", 422, "body", "not valid JSON",
                 id="huge-integer"),
    pytest.param(b'["ada@example.com", ["daily-briefing"]]', "application/json", 422, "body", "JSON object",
                 id="json-array"),
    pytest.param(b'"ada@example.com"', "application/json", 422, "body", "JSON object", id="json-string"),
    pytest.param(b"null", "application/json", 422, "body", "JSON object", id="json-null"),
    pytest.param(b"42", "application/json", 422, "body", "JSON object", id="json-number"),
    pytest.param(b'{"email": "ada@example.com", "newsletters": ["daily-briefing"]}', "text/plain", 415, "request",
                 "Content-Type: application/json", id="text-plain"),
    pytest.param(b"email=ada%40example.com&newsletters=daily-briefing", "application/x-www-form-urlencoded", 415,
                 "request", "Content-Type: application/json", id="form-encoded"),
    pytest.param(b'{"email": "ada@example.com", "newsletters": ["daily-briefing"]}', None, 415, "request",
                 "Content-Type: application/json", id="no-content-type"),
]


@pytest.mark.parametrize("data, content_type, status, field, message_part", BAD_BODIES)
def test_api_rejects_body_that_is_not_a_json_object(app, client, drain, smtp, data, content_type, status, field,
                                                    message_part):
    before = snapshot(app)
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post(API, data=data, headers=headers)
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    errors = json_errors(response)
    assert field in errors, errors
    assert any(message_part in message for message in errors[field]), errors
    assert_nothing_stored_or_sent(app, before, drain, smtp)


def test_api_oversized_body_gets_413_json(app, client, drain, smtp):
    limit = app.config["MAX_CONTENT_LENGTH"]
    assert limit == 64 * 1024
    before = snapshot(app)
    body = json.dumps({"email": "ada@example.com", "newsletters": ["daily-briefing"], "name": "x" * limit})
    response = client.post(API, data=body, content_type="application/json")
    assert response.status_code == 413
    assert json_errors(response) == {"request": [f"The request is too large: at most {limit} bytes are accepted."]}
    # Just under the limit the body is read and judged on its content.
    body = json.dumps({"email": "ada@example.com", "newsletters": ["daily-briefing"], "name": "x" * (limit - 200)})
    response = client.post(API, data=body, content_type="application/json")
    assert response.status_code == 422
    assert "name" in json_errors(response)
    assert_nothing_stored_or_sent(app, before, drain, smtp)


# ---------------------------------------------------------------------------------------------------------------
# internationalized and differently written addresses


INTERNATIONAL = [
    pytest.param("ü@example.com", "ü@example.com", id="non-ascii-local-part"),
    pytest.param("u\u0308@example.com", "ü@example.com", id="decomposed-umlaut-becomes-nfc"),
    pytest.param("user@EXAMPLE.com", "user@example.com", id="upper-case-domain"),
    pytest.param("  user@example.com ", "user@example.com", id="surrounding-spaces"),
    pytest.param("user@bücher.example", "user@bücher.example", id="idn-domain"),
    pytest.param("user@BÜCHER.example", "user@bücher.example", id="idn-domain-upper-case"),
    pytest.param("user@xn--bcher-kva.example", "user@bücher.example", id="idn-domain-as-a-label"),
]


@pytest.mark.parametrize("given, stored", INTERNATIONAL)
def test_api_accepts_and_normalizes_international_address(app, client, drain, smtp, given, stored):
    assert validate_email(given.strip(), check_deliverability=False).normalized == stored
    response = signup(client, given)
    assert response.status_code == 202
    assert response.get_json() == {"status": "pending"}
    assert query(app, "SELECT email FROM readers") == [(stored,)]
    # The confirmation reaches the real SMTP server, addressed to the normalized address.
    assert drain().sent == 1
    [message] = smtp.inbox.wait_for(1)
    assert [a.addr_spec for a in recipients(message)] == [stored]
    [(_, envelope_recipients)] = smtp.inbox.envelopes
    assert envelope_recipients == [stored]


def test_api_one_reader_however_the_address_is_written(app, client, drain, smtp):
    for written in ("user@EXAMPLE.com", "user@example.com", "user@Example.Com ", "user@example.COM"):
        assert signup(client, written).status_code == 202
    assert query(app, "SELECT email FROM readers") == [("user@example.com",)]
    assert count(app, "subscriptions") == 1
    assert drain().sent == 1


# ---------------------------------------------------------------------------------------------------------------
# no header injection through names that are accepted


ODD_NAMES = [
    pytest.param('Ada "The Countess" Lovelace', True, id="quotes"),
    pytest.param("Lovelace, Ada", True, id="comma"),
    pytest.param("Ada <evil@attacker.example>, victim@example.net", True, id="angle-brackets-and-second-address"),
    pytest.param('"", evil@attacker.example; bcc: victim@example.net', True, id="group-syntax"),
    pytest.param("Ada\\\" <evil@attacker.example>", True, id="escaped-quote"),
    pytest.param("Ådå Łøvëlacé 👩‍💻", True, id="non-ascii"),
    # A mail client decodes what looks like an RFC 2047 encoded-word, so only the recipient is checked here.
    pytest.param("=?utf-8?q?evil=40attacker.example?= <evil@attacker.example>", False, id="encoded-word-lookalike"),
]


@pytest.mark.parametrize("name, shown_as_typed", ODD_NAMES)
def test_accepted_odd_name_gives_exactly_one_recipient(app, client, drain, smtp, name, shown_as_typed):
    response = signup(client, "ada@example.com", name=name)
    assert response.status_code == 202
    assert query(app, "SELECT name FROM readers") == [(name,)]
    assert drain().sent == 1
    [message] = smtp.inbox.wait_for(1)
    to = recipients(message)
    assert len(to) == 1, to
    assert to[0].addr_spec == "ada@example.com"
    if shown_as_typed:
        assert to[0].display_name == name
    for header in ("Cc", "Bcc", "Reply-To"):
        assert header not in message
    assert smtp.inbox.envelopes[0][1] == ["ada@example.com"]


# ---------------------------------------------------------------------------------------------------------------
# no enumeration


def _answer(response):
    return response.status_code, sorted(response.headers.items()), response.get_data()


def test_api_answer_is_identical_for_new_pending_and_confirmed(app, client, drain, smtp):
    assert signup(client, "confirmed@example.com").status_code == 202
    confirm_by_link(client, drain, smtp, 0)
    assert query(app, "SELECT status FROM subscriptions") == [("confirmed",)]
    drain()
    sent_before = len(smtp.inbox.messages)  # the confirmation and the welcome
    assert sent_before == 2

    new = signup(client, "new@example.com")
    pending = signup(client, "new@example.com")
    confirmed = signup(client, "confirmed@example.com")
    assert _answer(new) == _answer(pending) == _answer(confirmed)
    assert new.status_code == 202 and new.get_json() == {"status": "pending"}

    drain()
    received = [(recipients(m)[0].addr_spec, m["Subject"]) for m in smtp.inbox.messages[sent_before:]]
    # One confirmation for the new address; none for it again while pending, none for the confirmed reader.
    assert received == [("new@example.com", "Confirm your subscription to The Daily Briefing")]
    assert dict(query(app, "SELECT r.email, s.status FROM subscriptions s JOIN readers r ON r.id = s.reader_id")) == {
        "confirmed@example.com": "confirmed", "new@example.com": "pending"}


def test_pending_reader_gets_one_confirmation_per_resend_interval(app, client, drain, smtp):
    for _ in range(3):
        assert signup(client, "ada@example.com").status_code == 202
    drain()
    assert len(smtp.inbox.messages) == 1
    assert count(app, "outbox_messages") == 1
    # Once the interval has passed, signing up again sends a fresh confirmation.
    app.config["NEWSLETTER_CONFIRM_RESEND_INTERVAL"] = 0
    assert signup(client, "ada@example.com").status_code == 202
    drain()
    assert len(smtp.inbox.messages) == 2


# ---------------------------------------------------------------------------------------------------------------
# the hosted form


def _form_page(client, path="/subscribe"):
    page = client.get(path)
    assert page.status_code == 200
    return csrf_token(page.get_data(as_text=True))


BAD_FORMS = [
    pytest.param({"email": "plainaddress", "newsletters": ["daily-briefing"]}, "email", "must have an @-sign",
                 id="no-at"),
    pytest.param({"email": "", "newsletters": ["daily-briefing"]}, "email", "Enter your email address", id="empty"),
    pytest.param({"newsletters": ["daily-briefing"]}, "email", "Enter your email address", id="email-missing"),
    pytest.param({"email": "A <a@example.com>", "newsletters": ["daily-briefing"]}, "email",
                 "display name and angle brackets", id="display-name"),
    pytest.param({"email": "x@foo.test", "newsletters": ["daily-briefing"]}, "email", "special-use or reserved name",
                 id="special-use"),
    pytest.param({"email": "a" * 400 + "@example.com", "newsletters": ["daily-briefing"]}, "email", "",
                 id="too-long"),
    pytest.param({"email": "ada@example.com\r\nBcc: victim@example.net", "newsletters": ["daily-briefing"]}, "email",
                 "invalid characters", id="crlf-in-email"),
    pytest.param({"email": "ada@example.com", "name": "Ada\r\nBcc: victim@example.net",
                  "newsletters": ["daily-briefing"]}, "name", "one line", id="crlf-in-name"),
    pytest.param({"email": "ada@example.com"}, "newsletters", "Choose at least one newsletter", id="no-newsletter"),
    pytest.param({"email": "ada@example.com", "newsletters": ["no-such-letter"]}, "newsletters",
                 "There is no newsletter called 'no-such-letter'", id="unknown-newsletter"),
]


@pytest.mark.parametrize("data, field, message_part", BAD_FORMS)
def test_form_shows_error_next_to_the_field(app, client, drain, smtp, data, field, message_part):
    token = _form_page(client)
    before = snapshot(app)
    response = client.post("/subscribe", data={"csrf_token": token, **data})
    text = assert_friendly_page(response, 422)
    page = Page(text)
    error_id = f"{field}-error"
    assert error_id in page.text_by_id, f"no #{error_id} in the page"
    assert message_part in " ".join(page.text_by_id[error_id].split())
    if field == "newsletters":
        assert page.find("fieldset")["aria-describedby"] == error_id
    else:
        control = page.find("input", name=field)
        assert control["aria-invalid"] == "true"
        assert control["aria-describedby"] == error_id
    # The error is announced at the top, and what the reader typed is kept.
    assert "Please correct the" in page.text_by_id.get("main", "")
    if data.get("email") and field != "email":
        assert page.find("input", name="email")["value"] == data["email"]
    assert_nothing_stored_or_sent(app, before, drain, smtp)


def test_form_on_single_newsletter_page_shows_email_error(app, client, drain, smtp):
    token = _form_page(client, "/subscribe/weekly-explainer")
    before = snapshot(app)
    response = client.post("/subscribe/weekly-explainer", data={
        "csrf_token": token, "email": "ada@", "newsletters": ["weekly-explainer"]})
    page = Page(assert_friendly_page(response, 422))
    assert "There must be something after the @-sign" in page.text_by_id["email-error"]
    control = page.find("input", name="email")
    assert control["aria-invalid"] == "true" and control["aria-describedby"] == "email-error"
    assert "Subscribe to The Weekly Explainer" in page.text_by_id["main"]
    assert_nothing_stored_or_sent(app, before, drain, smtp)


def test_form_valid_signup_still_works(app, client, drain, smtp):
    """The positive control for the form tests: the same helper and fields do sign a reader up."""
    token = _form_page(client)
    response = client.post("/subscribe", data={"csrf_token": token, "email": "Ada@EXAMPLE.com",
                                               "name": 'Lovelace, "Ada"', "newsletters": ["daily-briefing"]})
    assert response.status_code == 303 and response.headers["Location"].endswith("/thanks")
    assert query(app, "SELECT email, name FROM readers") == [("Ada@example.com", 'Lovelace, "Ada"')]
    assert drain().sent == 1


@pytest.mark.parametrize("token", [None, "", "forged-token"], ids=["missing", "empty", "forged"])
def test_form_without_valid_csrf_token_is_refused(app, client, drain, smtp, token):
    _form_page(client)  # the reader has a session, but the POST doesn't carry its token
    before = snapshot(app)
    data = {"email": "ada@example.com", "newsletters": ["daily-briefing"]}
    if token is not None:
        data["csrf_token"] = token
    response = client.post("/subscribe", data=data)
    # The form comes back with what was typed, a plain explanation and a fresh token to send it again.
    text = assert_friendly_page(response, 422)
    assert "This form was open too long or came from elsewhere. Please send it again." in text
    assert 'value="ada@example.com"' in text
    assert csrf_token(text)
    assert_nothing_stored_or_sent(app, before, drain, smtp)


def test_form_for_unknown_newsletter_is_a_404_page(app, client, drain, smtp):
    before = snapshot(app)
    response = client.get("/subscribe/no-such-letter")
    text = assert_friendly_page(response, 404)
    assert 'href="/subscribe"' in text  # a way back to the signup page
    assert_nothing_stored_or_sent(app, before, drain, smtp)


def test_form_oversized_body_gets_413_page(app, client, drain, smtp):
    token = _form_page(client)
    before = snapshot(app)
    limit = app.config["MAX_CONTENT_LENGTH"]
    response = client.post("/subscribe", data={"csrf_token": token, "email": "ada@example.com",
                                               "newsletters": ["daily-briefing"], "name": "x" * limit})
    text = assert_friendly_page(response, 413)
    assert f"at most {limit} bytes" in text
    assert_nothing_stored_or_sent(app, before, drain, smtp)


# ---------------------------------------------------------------------------------------------------------------
# every route, walked: text no database can hold, numbers too big for it, huge values, stale ids


PASSWORD = "correct horse battery staple"
WALKED_TABLES = (*ALL_TABLES, "exports")
# Text that can't be stored: PostgreSQL's text refuses NUL, and no UTF-8 can hold a lone surrogate.
UNSTORABLE = {"nul": "a\x00b", "surrogate": "\ud800"}
NUMBERS = {"2**31": str(2**31), "2**63": str(2**63), "negative": "-1", "10**30": str(10**30)}
HUGE = {"10k": "x" * 10_000}
BAD_VALUES = {**UNSTORABLE, **NUMBERS, **HUGE}
# Every field and query parameter the app reads, with a valid value, so that a request gets past the other checks.
VALID_FIELDS = {
    "email": "ada@example.com", "name": "Ada", "newsletters": "daily-briefing", "page_url": "https://news.example/a",
    "form_id": "box-1", "form_token": "", "return_to": "", "website": "", "lang": "en",
    "password": PASSWORD, "slug": "new-letter", "description": "About it.", "author": "Olena",
    "sender": "Daily <daily@example.org>", "send_welcome": "y", "welcome_text": "Hello.", "role": "viewer",
    "newsletter_id": "1", "confirm": "yes", "scope": "all", "List-Unsubscribe": "One-Click",
    "q": "ada", "page": "1", "limit": "10", "cursor": "", "status": "confirmed", "format": "csv",
    "newsletter": "daily-briefing", "signed_up_since": "2026-01-01", "signed_up_until": "2026-12-31",
    "confirmed_since": "2026-01-01", "confirmed_until": "2026-12-31", "next": "/admin/",
}
NUMERIC_FIELDS = ("newsletter_id", "newsletters", "page", "limit")
HEADERS = ("Referer", "User-Agent", "Accept-Language", "Origin")


def _percent(value: str) -> str:
    """The value as a browser sends it in a URL or form: UTF-8, percent-encoded (a lone surrogate as its 3 bytes)."""
    return quote(value.encode("utf-8", "surrogatepass"), safe="")


@pytest.fixture
def world(app):
    """An admin logged in, an admin API token, and readers: one subscribed, one erased, one id that is gone."""
    with app.app_context():
        accounts.create_admin(db.session, "editor@example.org", PASSWORD, "admin")
        _, secret = api_tokens.create_token(db.session, "walker", "admin")
        newsletter_ids = dict(db.session.execute(db.select(Newsletter.slug, Newsletter.id)).all())
        source = Source(channel="api")
        for address in ("live@example.com", "erased@example.com", "gone@example.com"):
            subscriptions.sign_up(db.session, address, [db.session.get(Newsletter, newsletter_ids["daily-briefing"])],
                                  name=None, source=source, config=app.config)
        [live, erased, gone] = [privacy.find_reader(db.session, f"{who}@example.com").id
                                for who in ("live", "erased", "gone")]
        privacy.erase_reader(db.session, erased, source=source, config=app.config)
        db.session.execute(sa.delete(ConsentEvent).where(ConsentEvent.reader_id == gone))
        db.session.execute(sa.delete(OutboxMessage).where(OutboxMessage.reader_id == gone))
        db.session.execute(sa.delete(Subscription).where(Subscription.reader_id == gone))
        db.session.execute(sa.delete(Reader).where(Reader.id == gone))
        db.session.commit()
        links = {"confirm": tokens.confirm_token(live, [newsletter_ids["daily-briefing"]]),
                 "unsubscribe": tokens.unsubscribe_token(live, newsletter_ids["daily-briefing"]),
                 "preferences": tokens.preferences_token(live)}
        db.session.remove()
    client = app.test_client()
    assert log_in(client, "editor@example.org", PASSWORD).status_code == 303
    csrf = hidden_fields(client.get("/admin/tokens").get_data(as_text=True))["csrf_token"]
    return SimpleNamespace(client=client, csrf_token=csrf, secret=secret, live=live, erased=erased, gone=gone,
                           links=links, newsletter_id=newsletter_ids["daily-briefing"])


def _routes(app, methods=("GET", "POST", "DELETE")):
    """Every rule and method of the app; erasing last, so that the other routes meet a live reader."""
    routes = [(rule, method) for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for method in sorted(set(rule.methods) & set(methods))]
    return sorted(routes, key=lambda route: route[0].endpoint.endswith("erase_reader"))


def _path(rule, world, **override: str) -> str:
    """The rule's URL with valid values for its arguments, unless overridden (already percent-encoded)."""
    valid = {"slug": "daily-briefing", "reader_id": str(world.live), "reader": str(world.live), "token_id": "999999",
             "token": world.links.get(rule.endpoint.split(".")[-1], "x"), "fmt": "csv"}
    path = rule.rule
    for argument in rule.arguments:
        # An argument this walk doesn't know yet (a new route's) gets "1": the route is walked all the same.
        path = re.sub(rf"<(?:[^:>]+:)?{argument}>", override.get(argument, valid.get(argument, "1")), path)
    return path


def _send(world, method, path, *, query="", form=None, json_body=None, headers=None):
    """One request as the logged-in admin (with the session's CSRF token) and the admin API token."""
    headers = {"Authorization": f"Bearer {world.secret}", **(headers or {})}
    url = f"{path}?{query}" if query else path
    if json_body is not None:
        return world.client.open(url, method=method, data=json_body, content_type="application/json",
                                 headers=headers)
    if method == "GET":
        return world.client.open(url, method=method, headers=headers)
    body = "&".join([f"csrf_token={world.csrf_token}", *(form or [])])
    return world.client.open(url, method=method, data=body, content_type="application/x-www-form-urlencoded",
                             headers=headers)


def _fields(**bad: str) -> list[str]:
    return [f"{name}={_percent(bad.get(name, value))}" for name, value in VALID_FIELDS.items()]


def _walk(app, world, value_name: str, value: str, channel: str):
    """(method, path, where, response) of each request that carries `value` in one place of `channel`."""
    # Numbers only matter where a number is read; text that can't be stored, everywhere.
    names = NUMERIC_FIELDS if value_name in NUMBERS else VALID_FIELDS
    for rule, method in _routes(app):
        if rule.endpoint == "admin.logout":
            continue
        if channel == "path":
            for argument in rule.arguments - {"fmt"}:
                path = _path(rule, world, **{argument: _percent(value)})
                yield method, rule.rule, argument, _send(world, method, path)
        elif channel == "query" and method == "GET":
            for name in names:
                query = "&".join(_fields(**{name: value}))
                yield method, rule.rule, name, _send(world, method, _path(rule, world), query=query)
        elif channel == "form" and method != "GET":
            for name in names:
                yield method, rule.rule, name, _send(world, method, _path(rule, world), form=_fields(**{name: value}))
        elif channel == "header":
            for name in HEADERS:
                header = value.encode("utf-8", "surrogatepass").decode("latin-1")
                yield method, rule.rule, name, _send(world, method, _path(rule, world), headers={name: header})
        elif channel == "json" and method != "GET" and rule.rule.startswith("/api/"):
            body = {"email": "ada@example.com", "newsletters": ["daily-briefing"], "name": "Ada",
                    "page_url": "https://news.example/a", "form_id": "box-1", "lang": "en", "website": ""}
            for name in [*body, "key"]:
                bad = {**body, value: "x"} if name == "key" else {**body, name: value}
                if name == "newsletters":
                    bad[name] = [value]
                yield method, rule.rule, name, _send(world, method, _path(rule, world), json_body=json.dumps(bad))


CHANNELS = {
    "nul": ("path", "query", "form", "json", "header"),
    # A lone surrogate's UTF-8 bytes (%ED%A0%80) in a query string or form are kept as that literal, percent-encoded
    # text (werkzeug decodes with errors="werkzeug.url_quote"): plain text, walked as such by "10k" below.
    "surrogate": ("path", "json", "header"),
    **{number: ("path", "query", "form") for number in NUMBERS},
    "10k": ("path", "query", "form", "json", "header"),
}
WALKS = [(value, channel) for value, channels in CHANNELS.items() for channel in channels]


@pytest.mark.parametrize("value_name, channel", WALKS)
def test_no_route_answers_500_to_bad_input(app, world, drain, smtp, channel, value_name):
    """Walks the URL map (so new routes are covered): each place that takes text gets each bad value."""
    value = BAD_VALUES[value_name]
    before = snapshot(app, WALKED_TABLES)
    failures = []
    # Only JSON's "\\ud800" escape makes a real lone surrogate: in a path or a header its bytes are text.
    refused = value_name == "nul" or (value_name == "surrogate" and channel == "json")
    for method, path, where, response in _walk(app, world, value_name, value, channel):
        text = response.get_data(as_text=True)
        if response.status_code >= 500 or "Traceback" in text:
            failures.append(f"{method} {path} {channel}:{where} -> {response.status_code}")
        elif refused and not 400 <= response.status_code < 500:
            failures.append(f"{method} {path} {channel}:{where} -> {response.status_code}, not refused")
    assert not failures, "\n".join(failures)
    if refused:
        assert snapshot(app, WALKED_TABLES) == before


# ---------------------------------------------------------------------------------------------------------------
# a reader erased or deleted while an admin's page (or an API client) still names them


STALE_ACTIONS = ["unsubscribe", "resend", "block", "unblock"]


@pytest.mark.parametrize("action", STALE_ACTIONS)
def test_admin_action_on_an_erased_reader_from_a_stale_tab(app, world, drain, smtp, action):
    data = {"newsletter_id": str(world.newsletter_id)} if action == "unsubscribe" else {}
    drain()  # the live reader's confirmation
    before = snapshot(app, WALKED_TABLES)
    response = world.client.post(f"/admin/readers/{world.erased}/{action}",
                                 data={"csrf_token": world.csrf_token, **data})
    text = assert_friendly_page(response, 410)
    assert f"Reader {world.erased} was erased" in text and "Nothing was changed." in text
    assert snapshot(app, WALKED_TABLES) == before
    # A reader deleted since (purge-pending) is simply not there.
    gone = world.client.post(f"/admin/readers/{world.gone}/{action}", data={"csrf_token": world.csrf_token, **data})
    assert f"There is no reader number {world.gone}" in assert_friendly_page(gone, 404)
    assert snapshot(app, WALKED_TABLES) == before
    assert drain().sent == 0


def test_admin_erase_and_export_of_an_erased_or_deleted_reader(app, world):
    before = snapshot(app, WALKED_TABLES)
    again = world.client.post(f"/admin/readers/{world.erased}/erase", data={"csrf_token": world.csrf_token,
                                                                            "confirm": "yes"})
    assert again.status_code == 303  # erasing twice changes nothing more
    export = world.client.get(f"/admin/readers/{world.erased}/export.json")
    assert export.status_code == 200 and "erased@example.com" not in export.get_data(as_text=True)
    assert snapshot(app, WALKED_TABLES)["readers"] == before["readers"]
    for response in (world.client.post(f"/admin/readers/{world.gone}/erase",
                                       data={"csrf_token": world.csrf_token, "confirm": "yes"}),
                     world.client.get(f"/admin/readers/{world.gone}/export.json")):
        assert_friendly_page(response, 404)


def test_api_actions_on_an_erased_or_deleted_reader(app, world, drain, smtp):
    headers = {"Authorization": f"Bearer {world.secret}"}
    drain()  # the live reader's confirmation
    before = snapshot(app, WALKED_TABLES)
    for body in (None, {"newsletters": ["daily-briefing"]}):
        response = world.client.post(f"/api/v1/readers/{world.erased}/unsubscribe", json=body, headers=headers)
        assert response.status_code == 410
        assert json_errors(response) == {"reader": [f"Reader {world.erased} was erased: nothing more can be done for "
                                                    "them. Nothing was changed."]}
    for method, suffix in (("GET", ""), ("GET", "/export"), ("DELETE", "")):
        response = world.client.open(f"/api/v1/readers/{world.erased}{suffix}", method=method, headers=headers)
        assert response.status_code == 200, (method, suffix)  # the anonymous record; erasing again changes nothing
        assert "erased@example.com" not in response.get_data(as_text=True)
    for method, suffix in (("GET", ""), ("GET", "/export"), ("POST", "/unsubscribe"), ("DELETE", "")):
        response = world.client.open(f"/api/v1/readers/{world.gone}{suffix}", method=method, headers=headers)
        assert response.status_code == 404 and "reader" in json_errors(response)
    assert snapshot(app, WALKED_TABLES)["subscriptions"] == before["subscriptions"]
    assert snapshot(app, WALKED_TABLES)["readers"] == before["readers"]
    assert drain().sent == 0


# ---------------------------------------------------------------------------------------------------------------
# the CLI: the same text, as arguments


@pytest.mark.parametrize("value", [UNSTORABLE["nul"], "a\nb"], ids=["nul", "newline"])
def test_cli_token_name_that_cant_be_stored_is_refused(app, runner, value):
    result = runner.invoke(args=["tokens", "create", "--name", value])
    assert result.exit_code == 1 and "without control characters" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert query(app, "SELECT COUNT(*) FROM api_tokens") == [(0,)]


BAD_COMMANDS = [
    pytest.param(["export", "daily\x00briefing"], "There is no newsletter called", id="export-nul-slug"),
    pytest.param(["export", "x" * 10_000], "There is no newsletter called", id="export-huge-slug"),
    pytest.param(["export", "daily-briefing", "--status", "confirmed\x00"], "status", id="export-nul-status"),
    pytest.param(["export", "daily-briefing", "--status", "\ud800"], "status", id="export-surrogate-status"),
    pytest.param(["export", "daily-briefing", "--since", "2026-01-01\x00"], "since", id="export-nul-date"),
    pytest.param(["export", "all", "--confirmed-until", "9" * 30], "Confirmed until", id="export-huge-date"),
    pytest.param(["tokens", "revoke", str(2**63)], "There is no API token", id="revoke-2**63"),
    pytest.param(["tokens", "revoke", "--", "-1"], "There is no API token", id="revoke-negative"),
    pytest.param(["purge-pending", "--days", str(2**63)], "--days", id="purge-2**63-days"),
    pytest.param(["purge-pending", "--days", "99999999"], "--days", id="purge-99999999-days"),
    pytest.param(["newsletters", "edit", "daily\x00briefing", "--name", "x"], "There is no newsletter called",
                 id="edit-nul-slug"),
    pytest.param(["newsletters", "edit", "daily-briefing", "--name", "x\x00"], "control characters",
                 id="edit-nul-name"),
    pytest.param(["newsletters", "add", "new\x00", "--name", "x"], "slug", id="add-nul-slug"),
    pytest.param(["newsletters", "add", "new", "--name", "x", "--description", "a\x00"], "control characters",
                 id="add-nul-description"),
]


@pytest.mark.parametrize("args, message", BAD_COMMANDS)
def test_cli_refuses_bad_arguments_with_a_message(app, runner, args, message):
    before = snapshot(app, WALKED_TABLES)
    result = runner.invoke(args=args)
    assert result.exit_code in (1, 2), result.output
    assert isinstance(result.exception, SystemExit), result.exception  # a message, not a traceback
    assert message in result.output, result.output
    assert snapshot(app, WALKED_TABLES) == before


def test_form_bytes_that_are_not_utf8_are_kept_as_typed_text(app, client, drain, smtp):
    """A lone surrogate's UTF-8 bytes in a form field (%ED%A0%80) arrive as that literal text, which can be stored."""
    token = _form_page(client)
    body = (f"csrf_token={token}&email=ada%40example.com&newsletters=daily-briefing&name=Ada%ED%A0%80"
            "&page_url=https%3A%2F%2Fnews.example%2F%ED%A0%80&form_id=box%ED%A0%80")
    response = client.post("/subscribe", data=body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 303
    assert query(app, "SELECT name FROM readers") == [("Ada%ED%A0%80",)]
    assert query(app, "SELECT page_url, form_id FROM consent_events") == [
        ("https://news.example/%ED%A0%80", "box%ED%A0%80")]
    assert drain().sent == 1


@pytest.mark.parametrize("name, message", [
    ("CRM\nsync", "without control characters"),
    ("CRM%00sync", "There is a character in name that is not text"),
], ids=["newline", "nul"])
def test_admin_token_name_that_cant_be_stored_is_refused(app, world, name, message):
    body = f"csrf_token={world.csrf_token}&role=viewer&name={quote(name, safe='%')}"
    response = world.client.post("/admin/tokens", data=body, content_type="application/x-www-form-urlencoded")
    assert message in assert_friendly_page(response, 422)
    assert query(app, "SELECT name FROM api_tokens") == [("walker",)]
