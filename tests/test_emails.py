"""Emails are queued as what to send and rendered when they are sent: once per language and newsletters,
then filled in per reader. The result must be exactly what rendering the templates for that reader
gives, whatever the reader's name holds; also for a welcome queued by a confirmation and sent by the
outbox."""

from __future__ import annotations

import pytest
from flask import render_template
from flask_babel import force_locale
from sqlalchemy import select

from newsletter import emails, tokens
from newsletter.extensions import db
from newsletter.links import external_url
from newsletter.models import Newsletter, Reader

from .conftest import query

NAMES = [None, "Olena", "Ганна Петрівна", '<b>Tom & "Jerry"</b> \'quoted\'', "\ue000link\ue001", "%(name)s {{ x }}"]
NEWSLETTERS = [
    Newsletter(id=1, slug="daily", name="Daily <Briefing> & more", author="Olena Kovalenko", description="Mornings.",
               send_welcome=True),
    Newsletter(id=2, slug="weekly", name="The Weekly", author=None, description="", send_welcome=True,
               welcome_text="First paragraph.\n\nSecond <paragraph> & more."),
]


@pytest.fixture
def fixed_tokens(monkeypatch):
    monkeypatch.setattr(tokens, "confirm_token", lambda reader_id, ids: f"confirm-{reader_id}-{'-'.join(map(str, ids))}")
    monkeypatch.setattr(tokens, "unsubscribe_token", lambda reader_id, nid: f"unsubscribe-{reader_id}-{nid}")
    monkeypatch.setattr(tokens, "preferences_token", lambda reader_id: f"preferences-{reader_id}")


@pytest.mark.parametrize("lang", ["en", "uk"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("chosen", [NEWSLETTERS[:1], NEWSLETTERS[1:], NEWSLETTERS])
def test_confirmation_is_what_the_templates_give_for_this_reader(app, fixed_tokens, lang, name, chosen):
    reader = Reader(id=7, email="reader@example.org", name=name)
    with app.app_context():
        for _ in range(2):  # the second time from the cache
            message = emails.render_for(emails.CONFIRMATION, reader, chosen, lang, app.config)
            link = external_url("public.confirm", token=f"confirm-7-{'-'.join(str(n.id) for n in chosen)}")
            context = {"reader": reader, "newsletters": chosen, "link": link, "days": 7}
            with force_locale(lang):
                assert message.body_text == render_template("email/confirm.txt", **context)
                assert message.body_html == render_template("email/confirm.html", **context)
    assert (message.to_address, message.to_name) == ("reader@example.org", name)
    assert link in message.body_text
    if name and "\ue000" not in name:
        assert name in message.body_text


@pytest.mark.parametrize("lang", ["en", "uk"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("newsletter", NEWSLETTERS)
def test_welcome_is_what_the_templates_give_for_this_reader(app, fixed_tokens, lang, name, newsletter):
    reader = Reader(id=9, email="reader@example.org", name=name)
    with app.app_context():
        sent = [emails.render_for(emails.WELCOME, reader, [newsletter], lang, app.config) for _ in range(2)]
        context = {
            "reader": reader,
            "newsletter": newsletter,
            "unsubscribe_link": external_url("public.unsubscribe", token=f"unsubscribe-9-{newsletter.id}"),
            "preferences_link": external_url("public.preferences", token="preferences-9"),
        }
        with force_locale(lang):
            expected_text = render_template("email/welcome.txt", **context)
            expected_html = render_template("email/welcome.html", **context)
    assert [message.body_text for message in sent] == [expected_text] * 2
    assert [message.body_html for message in sent] == [expected_html] * 2
    assert sent[0].headers["List-Unsubscribe"].startswith(f"<{context['unsubscribe_link']}>, <mailto:")


def _body(message, subtype: str) -> str:
    # As it arrived over SMTP: CRLF line ends.
    return message.get_body((subtype,)).get_content().replace("\r\n", "\n")


@pytest.mark.parametrize("name", NAMES)
def test_welcome_queued_by_a_confirmation_greets_the_reader_as_the_templates_do(app, client, drain, smtp,
                                                                                monkeypatch, name):
    answer = client.post("/api/v1/subscriptions", headers={"Accept-Language": "uk"}, json={
        "email": "reader@example.org", "name": name, "newsletters": ["weekly-explainer"]})
    assert answer.status_code == 202, answer.text
    with app.app_context():
        reader = db.session.scalars(select(Reader)).one()
        newsletter = db.session.scalars(select(Newsletter).where(Newsletter.slug == "weekly-explainer")).one()
        token = tokens.confirm_token(reader.id, [newsletter.id])
        db.session.expunge_all()
    monkeypatch.setattr(tokens, "unsubscribe_token", lambda reader_id, nid: f"unsubscribe-{reader_id}-{nid}")
    monkeypatch.setattr(tokens, "preferences_token", lambda reader_id: f"preferences-{reader_id}")

    assert client.post(f"/confirm/{token}", headers={"Accept-Language": "uk"}).status_code == 200
    # The queued row says what to send, nothing more; no language: the reader's (uk), found when it is sent.
    assert query(app, "SELECT reader_id, locale, to_address, to_name, body_text, body_html, message_id "
                      "FROM outbox_messages WHERE kind = 'welcome'") == [(reader.id, None, None, None, None, None,
                                                                          None)]
    drain()

    # Confirmed before its confirmation left: that one is not sent any more, only the welcome.
    [welcome] = smtp.inbox.wait_for(1)
    assert "List-Unsubscribe" in welcome
    with app.app_context(), force_locale("uk"):
        context = {
            "reader": reader,
            "newsletter": newsletter,
            "unsubscribe_link": external_url("public.unsubscribe", token=f"unsubscribe-{reader.id}-{newsletter.id}"),
            "preferences_link": external_url("public.preferences", token=f"preferences-{reader.id}"),
        }
        expected_text = render_template("email/welcome.txt", **context)
        expected_html = render_template("email/welcome.html", **context)
    assert welcome["To"].addresses[0].addr_spec == "reader@example.org"
    assert welcome["To"].addresses[0].display_name == (name or "")
    assert _body(welcome, "plain").rstrip("\n") == expected_text.rstrip("\n")
    assert _body(welcome, "html").rstrip("\n") == expected_html.rstrip("\n")
    assert "Добрий день" in _body(welcome, "plain")  # in the language the link was opened in
    # Sent, the row keeps its Message-ID (for bounces) and still no address or body.
    assert query(app, "SELECT message_id, to_address, body_text FROM outbox_messages WHERE kind = 'welcome'") == [
        (welcome["Message-ID"], None, None)]
