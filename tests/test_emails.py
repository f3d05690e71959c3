"""Emails are rendered once per language and newsletters, then filled in per reader: the result must be
exactly what rendering the templates for that reader gives, whatever the reader's name holds."""

from __future__ import annotations

import pytest
from flask import render_template

from newsletter import emails, tokens
from newsletter.links import external_url
from newsletter.models import Newsletter, Reader

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
            emails.enqueue_welcome(None, reader, newsletter, app.config)
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
