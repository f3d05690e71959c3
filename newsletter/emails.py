"""The emails the service sends, rendered from templates/email/*.txt + *.html into the outbox."""

from __future__ import annotations

from collections.abc import Mapping
from email import policy
from email.parser import BytesParser
from email.utils import parseaddr
from typing import Any
from urllib.parse import quote

from flask import render_template
from flask_babel import gettext as _
from flask_babel import ngettext
from sqlalchemy.orm import Session

from . import outbox, tokens
from .links import external_url
from .models import Newsletter, Reader


def _render(name: str, **context: Any) -> tuple[str, str]:
    return render_template(f"email/{name}.txt", **context), render_template(f"email/{name}.html", **context)


def unsubscribe_headers(reader: Reader, newsletter: Newsletter, config: Mapping[str, Any]) -> dict[str, str]:
    """RFC 2369 / RFC 8058 headers: the mail client's own unsubscribe button, one click."""
    token = tokens.unsubscribe_token(reader.id, newsletter.id)
    mailbox = config["NEWSLETTER_UNSUBSCRIBE_MAILTO"] or parseaddr(config["NEWSLETTER_MAIL_FROM"])[1]
    return {
        "List-Unsubscribe": (
            f"<{external_url('public.unsubscribe', token=token)}>, "
            f"<mailto:{mailbox}?subject={quote('unsubscribe ' + token)}>"
        ),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "List-Id": f"{newsletter.name} <{newsletter.slug}.{mailbox.rpartition('@')[2] or 'localhost'}>",
    }


def enqueue_confirmation(session: Session, reader: Reader, newsletters: list[Newsletter],
                         config: Mapping[str, Any]) -> None:
    """One email asking the reader to confirm every newsletter in `newsletters`."""
    outbox.enqueue(session, **confirmation(reader, newsletters, config))


def confirmation(reader: Reader, newsletters: list[Newsletter], config: Mapping[str, Any]) -> dict[str, Any]:
    """The confirmation email as outbox.message_row's arguments."""
    link = external_url("public.confirm", token=tokens.confirm_token(reader.id, [n.id for n in newsletters]))
    days = max(1, config["NEWSLETTER_CONFIRM_MAX_AGE"] // 86400)
    text, html = _render("confirm", reader=reader, newsletters=newsletters, link=link, days=days)
    subject = (_("Confirm your subscription to %(name)s", name=newsletters[0].name) if len(newsletters) == 1
               else ngettext("Confirm your subscription to %(num)d newsletter",
                             "Confirm your subscription to %(num)d newsletters", len(newsletters)))
    return {
        "kind": "confirmation", "reader_id": reader.id, "to_address": reader.email, "to_name": reader.name,
        "subject": subject, "body_text": text, "body_html": html, "mail_from": config["NEWSLETTER_MAIL_FROM"],
    }


def enqueue_welcome(session: Session, reader: Reader, newsletter: Newsletter,
                    config: Mapping[str, Any]) -> None:
    """The welcome email of one newsletter, with its unsubscribe and preferences links."""
    headers = unsubscribe_headers(reader, newsletter, config)
    context = {
        "reader": reader,
        "newsletter": newsletter,
        "unsubscribe_link": external_url("public.unsubscribe", token=tokens.unsubscribe_token(reader.id, newsletter.id)),
        "preferences_link": external_url("public.preferences", token=tokens.preferences_token(reader.id)),
    }
    text, html = _render("welcome", **context)
    outbox.enqueue(
        session, kind="welcome", reader_id=reader.id, to_address=reader.email, to_name=reader.name,
        subject=_("Welcome to %(name)s", name=newsletter.name), body_text=text, body_html=html,
        mail_from=newsletter.sender or config["NEWSLETTER_MAIL_FROM"], headers=headers,
    )


def token_from_unsubscribe_reply(raw: bytes) -> str | None:
    """The unsubscribe token in the subject of a mail sent to the List-Unsubscribe mailto, if any."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    words = str(message.get("Subject", "")).split()
    if len(words) == 2 and words[0].lower() == "unsubscribe":
        return words[1]
    return None
