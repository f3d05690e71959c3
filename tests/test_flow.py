"""End to end over real HTTP and real SMTP: signup → confirm → welcome → one-click unsubscribe."""

from __future__ import annotations

import re
from urllib.parse import parse_qs

import requests

from .conftest import csrf_token, hidden_fields, link_in, query


def test_signup_confirm_welcome_and_one_click_unsubscribe(app, live_server, smtp):
    response = requests.post(f"{live_server}/api/v1/subscriptions", json={
        "email": "Reader@Example.COM", "newsletters": ["daily-briefing", "weekly-explainer"], "name": "Ada",
    }, timeout=10)
    assert response.status_code == 202
    assert response.json() == {"status": "pending"}

    [confirmation] = smtp.inbox.wait_for(1)
    assert confirmation["To"].addresses[0].addr_spec == "Reader@example.com"
    assert "List-Unsubscribe" not in confirmation
    text = confirmation.get_body(("plain",)).get_content()
    assert "The Daily Briefing" in text and "The Weekly Explainer" in text
    confirm_url = link_in(confirmation, "/confirm/")
    assert confirm_url.startswith(live_server)

    browser = requests.Session()
    page = browser.get(confirm_url, timeout=10)
    assert page.status_code == 200
    assert "Yes, subscribe me" in page.text
    # The GET changed nothing: mail scanners prefetch links.
    assert query(app, "SELECT status FROM subscriptions") == [("pending",), ("pending",)]

    # The signed link is the credential: the page sets no cookie and the button works without one.
    assert "Set-Cookie" not in page.headers
    done = requests.post(confirm_url, timeout=10)
    assert done.status_code == 200
    assert "Subscription confirmed" in done.text
    assert sorted(query(app, "SELECT status FROM subscriptions")) == [("confirmed",), ("confirmed",)]

    messages = smtp.inbox.wait_for(3)
    welcomes = {m["Subject"]: m for m in messages[1:]}
    assert set(welcomes) == {"Welcome to The Daily Briefing", "Welcome to The Weekly Explainer"}
    welcome = welcomes["Welcome to The Daily Briefing"]
    assert welcome["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https_url, mailto = re.findall(r"<([^>]+)>", welcome["List-Unsubscribe"])
    assert https_url.startswith(f"{live_server}/unsubscribe/")
    assert mailto.startswith("mailto:")

    # The mail client's button: a bare POST, no cookie, no CSRF token.
    one_click = requests.post(https_url, data={"List-Unsubscribe": "One-Click"}, timeout=10)
    assert one_click.status_code == 200
    rows = dict(query(app, "SELECT n.slug, s.status FROM subscriptions s JOIN newsletters n ON n.id = s.newsletter_id"))
    assert rows == {"daily-briefing": "unsubscribed", "weekly-explainer": "confirmed"}

    actions = [row[0] for row in query(app, "SELECT action FROM consent_events ORDER BY id")]
    assert actions == ["signup_requested", "signup_requested", "confirmed", "confirmed", "unsubscribed"]
    sources = query(app, "SELECT source, ip_address FROM consent_events ORDER BY id")
    assert [s for s, _ in sources] == ["api", "api", "email-link", "email-link", "one-click"]
    assert all(ip == "127.0.0.1" for _, ip in sources)


def test_hosted_form_signup_and_preferences(app, live_server, smtp):
    browser = requests.Session()
    form = browser.get(f"{live_server}/subscribe", timeout=10)
    assert form.status_code == 200
    assert 'for="newsletter-daily-briefing"' in form.text
    sent = browser.post(f"{live_server}/subscribe", data={
        **hidden_fields(form.text), "email": "ü@example.com", "newsletters": ["daily-briefing"],
    }, timeout=10)
    assert sent.status_code == 200 and sent.url.endswith("/thanks")
    assert "We've sent you a confirmation email." in sent.text

    [confirmation] = smtp.inbox.wait_for(1)
    assert smtp.inbox.envelopes[0][1] == ["ü@example.com"]
    confirm_url = link_in(confirmation, "/confirm/")
    page = browser.get(confirm_url, timeout=10)
    browser.post(confirm_url, timeout=10)
    welcome = smtp.inbox.wait_for(2)[1]

    preferences_url = link_in(welcome, "/preferences/")
    page = browser.get(preferences_url, timeout=10)
    assert "ü@example.com" in page.text
    ids = dict(query(app, "SELECT slug, id FROM newsletters"))
    saved = browser.post(preferences_url, data={
        "csrf_token": csrf_token(page.text), "newsletters": [str(ids["weekly-explainer"])],
    }, timeout=10)
    assert saved.status_code == 200
    assert "Joined: The Weekly Explainer" in saved.text and "Left: The Daily Briefing" in saved.text
    rows = dict(query(app, "SELECT n.slug, s.status FROM subscriptions s JOIN newsletters n ON n.id = s.newsletter_id"))
    assert rows == {"daily-briefing": "unsubscribed", "weekly-explainer": "confirmed"}


def test_mailto_unsubscribe_reply(app, client, drain, smtp, runner):
    client.post("/api/v1/subscriptions", json={"email": "reply@example.org", "newsletters": ["daily-briefing"]})
    drain()
    confirm_url = link_in(smtp.inbox.wait_for(1)[0], "/confirm/")
    path = confirm_url.split("://", 1)[1].split("/", 1)[1]
    client.get(f"/{path}")
    client.post(f"/{path}")
    drain()
    welcome = smtp.inbox.wait_for(2)[1]
    mailto = re.search(r"<mailto:([^>]+)>", welcome["List-Unsubscribe"]).group(1)
    address, _, query_string = mailto.partition("?")
    subject = parse_qs(query_string)["subject"][0]
    reply = f"From: reply@example.org\r\nTo: {address}\r\nSubject: {subject}\r\n\r\n".encode()

    result = runner.invoke(args=["unsubscribe-mail"], input=reply)
    assert result.exit_code == 0, result.output
    assert "daily-briefing" in result.output
    assert query(app, "SELECT status FROM subscriptions") == [("unsubscribed",)]
    assert query(app, "SELECT source FROM consent_events WHERE action = 'unsubscribed'") == [("mailto",)]

    forged = runner.invoke(args=["unsubscribe-mail"], input=reply.replace(subject[-4:].encode(), b"AAAA"))
    assert forged.exit_code != 0 and "not valid" in forged.output
