"""Emails are rendered once per language and newsletters, then filled in per reader: the result must be
exactly what rendering the templates for that reader gives, whatever the reader's name holds; also
when the database fills in the name, as a confirmation's welcome email has it."""

from __future__ import annotations

import pytest
from flask import render_template
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
    with app.test_request_context(headers={"Accept-Language": lang}):
        for _ in range(2):  # the second time from the cache
            message = emails.confirmation(reader, chosen, app.config)
            link = external_url("public.confirm", token=f"confirm-7-{'-'.join(str(n.id) for n in chosen)}")
            context = {"reader": reader, "newsletters": chosen, "link": link, "days": 7}
            assert message["body_text"] == render_template("email/confirm.txt", **context)
            assert message["body_html"] == render_template("email/confirm.html", **context)
    assert link in message["body_text"]
    if name and "\ue000" not in name:
        assert name in message["body_text"]


@pytest.mark.parametrize("lang", ["en", "uk"])
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("newsletter", NEWSLETTERS)
def test_welcome_is_what_the_templates_give_for_this_reader(app, fixed_tokens, monkeypatch, lang, name, newsletter):
    reader = Reader(id=9, email="reader@example.org", name=name)
    sent = []
    monkeypatch.setattr(emails.outbox, "enqueue", lambda session, **message: sent.append(message))
    with app.test_request_context(headers={"Accept-Language": lang}):
        for _ in range(2):
            emails.enqueue_welcome(db.session, reader, newsletter, app.config)
        context = {
            "reader": reader,
            "newsletter": newsletter,
            "unsubscribe_link": external_url("public.unsubscribe", token=f"unsubscribe-9-{newsletter.id}"),
            "preferences_link": external_url("public.preferences", token="preferences-9"),
        }
        expected_text = render_template("email/welcome.txt", **context)
        expected_html = render_template("email/welcome.html", **context)
    assert [message["body_text"] for message in sent] == [expected_text] * 2
    assert [message["body_html"] for message in sent] == [expected_html] * 2


@pytest.mark.parametrize("name", NAMES)
def test_welcome_written_by_a_confirmation_greets_the_reader_as_the_templates_do(app, client, monkeypatch, name):
    # confirmation_writes has the database address the welcome email and put the name in it.
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

    [(to_address, to_name, text, html)] = query(
        app, "SELECT to_address, to_name, body_text, body_html FROM outbox_messages WHERE kind = 'welcome'")
    with app.test_request_context(headers={"Accept-Language": "uk"}):
        context = {
            "reader": reader,
            "newsletter": newsletter,
            "unsubscribe_link": external_url("public.unsubscribe", token=f"unsubscribe-{reader.id}-{newsletter.id}"),
            "preferences_link": external_url("public.preferences", token=f"preferences-{reader.id}"),
        }
        assert (to_address, to_name) == ("reader@example.org", name)
        assert text == render_template("email/welcome.txt", **context)
        assert html == render_template("email/welcome.html", **context)
    assert "Добрий день" in text  # in the language the link was opened in
