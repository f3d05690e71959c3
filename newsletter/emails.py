"""The emails the service sends: queued as what to send, rendered from templates/email/* when they are sent.

A request only queues an outbox row naming the kind of email, the reader, the newsletters and the
language (queue_confirmation, queue_welcome, …). The sender renders it when it claims the row
(render): the reader's current address and name, the newsletters as they are then, links signed then.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email import policy
from email.parser import BytesParser
from email.utils import parseaddr
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import quote

from flask import render_template
from flask_babel import force_locale, get_locale, ngettext
from flask_babel import gettext as _
from markupsafe import escape
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import outbox, suppressions, tokens
from .links import external_url
from .models import Newsletter, Reader

CONFIRMATION = "confirmation"
# An import's confirmation (`--unconfirmed ask`), worded for a reader whose list moved here (templates/email/confirm_import).
IMPORT_CONFIRMATION = "import_confirmation"
WELCOME = "welcome"
PREFERENCES_LINK = "preferences_link"


def current_locale() -> str:
    """The language of the request (or of the CLI: English), to queue an email in."""
    return str(get_locale() or "en")


# --- Queueing: what to send, nothing rendered ---------------------------------------------------


def queue_confirmation(session: Session, reader: Reader, newsletters: Sequence[Newsletter],
                       config: Mapping[str, Any], locale: str | None = None) -> bool:
    """Queue one email asking the reader to confirm every newsletter in `newsletters`; False if the address is suppressed.

    In `locale`, by default the request's.
    """
    if suppressions.stopping_reason(session, suppressions.normalized_key(config, reader.email)) is not None:
        return False
    outbox.enqueue(session, kind=CONFIRMATION, reader_id=reader.id, newsletter_ids=[n.id for n in newsletters],
                   locale=locale or current_locale())
    return True


def queue_welcome(session: Session, reader: Reader, newsletter: Newsletter, config: Mapping[str, Any]) -> bool:
    """Queue the welcome email of one newsletter; False if the address is suppressed.

    Queued without a language: the sender sends it in the reader's (outbox.reader_locale).
    """
    if suppressions.stopping_reason(session, suppressions.normalized_key(config, reader.email)) is not None:
        return False
    outbox.enqueue(session, kind=WELCOME, reader_id=reader.id, newsletter_ids=[newsletter.id], locale=None)
    return True


# --- Rendering, when the email is sent ----------------------------------------------------------


@dataclass(frozen=True)
class Rendered:
    """An email rendered for its reader: what outbox.compose needs besides the Message-ID and the date."""

    mail_from: str
    to_address: str
    to_name: str | None
    subject: str
    body_text: str
    body_html: str
    headers: dict[str, str]


class NothingToSend(ValueError):
    """The row names no newsletter that still exists, or a kind this sender doesn't know."""


def render(session: Session, kind: str, reader: Reader, newsletter_ids: Sequence[int], locale: str | None,
           config: Mapping[str, Any]) -> Rendered:
    """The email of an outbox row of `kind` for `reader` (read now), in `locale`, with its links signed now.

    The newsletters are read now too: one renamed after the row was queued shows its new name.
    Needs an app context.
    """
    newsletters = sorted(session.scalars(select(Newsletter).where(Newsletter.id.in_(list(newsletter_ids or ())))),
                         key=lambda n: n.name)
    return render_for(kind, reader, newsletters, locale, config)


def render_for(kind: str, reader: Reader, newsletters: Sequence[Newsletter], locale: str | None,
               config: Mapping[str, Any]) -> Rendered:
    """render() with the newsletters given (sorted as the email lists them)."""
    if not newsletters and kind != PREFERENCES_LINK:
        raise NothingToSend("none of the email's newsletters exists any more")
    with force_locale(locale or "en"):
        if kind in (CONFIRMATION, IMPORT_CONFIRMATION):
            return _confirmation(reader, newsletters, config, imported=kind == IMPORT_CONFIRMATION)
        if kind == WELCOME:
            return _welcome(reader, newsletters[0], config)
        if kind == PREFERENCES_LINK:
            return _preferences_link(reader, config)
    raise NothingToSend(f"no email of the kind {kind!r}")


class _Shown(NamedTuple):
    """What an email shows of a newsletter: the part of its rendering that many readers share."""

    name: str
    author: str | None
    description: str = ""
    welcome_text: str | None = None


# Private-use characters: no template, filter or translation makes or changes them.
_SLOT = "\ue000{}\ue001"


@lru_cache(maxsize=512)
def _rendered(name: str, locale: str, newsletters: tuple[_Shown, ...], days: int, named: bool
              ) -> tuple[str, str, str]:
    """(subject, text, html) of templates/email/<name>, with a slot for each per-reader value.

    An email differs from reader to reader only in the name it greets and its links, so it is
    rendered once per language and newsletters and then filled in (see _fill). `locale` is part of
    the cache key: the rendering itself reads the forced language.
    """
    context = {
        "reader": {"name": _SLOT.format("name") if named else None},
        "newsletters": newsletters,
        "newsletter": newsletters[0] if newsletters else None,
        "days": days,
        "link": _SLOT.format("link"),
        "unsubscribe_link": _SLOT.format("unsubscribe_link"),
        "preferences_link": _SLOT.format("preferences_link"),
    }
    if name == "welcome":
        subject = _("Welcome to %(name)s", name=newsletters[0].name)
    elif name == "preferences_link":
        subject = _("Your link to choose your newsletters")
    elif len(newsletters) == 1:
        subject = _("Confirm your subscription to %(name)s", name=newsletters[0].name)
    else:
        subject = ngettext("Confirm your subscription to %(num)d newsletter",
                           "Confirm your subscription to %(num)d newsletters", len(newsletters))
    return subject, render_template(f"email/{name}.txt", **context), render_template(f"email/{name}.html", **context)


def _fill(text: str, values: Mapping[str, str | None], *, html: bool) -> str:
    # Links first: a name can't contain a link's slot, but it may look like one.
    for key in sorted(values, key=lambda key: key == "name"):
        value = values[key] or ""
        text = text.replace(_SLOT.format(key), str(escape(value)) if html else value)
    return text


def _render(name: str, newsletters: Sequence[Newsletter], days: int, reader_name: str | None, **links: str
            ) -> tuple[str, str, str]:
    """(subject, text, html) of templates/email/<name> for a reader called `reader_name` (HTML-escaped in the html)."""
    shown = tuple(_Shown(n.name, n.author, n.description or "", n.welcome_text) for n in newsletters)
    subject, text, html = _rendered(name, current_locale(), shown, days, bool(reader_name))
    values = {"name": reader_name, **links}
    return subject, _fill(text, values, html=False), _fill(html, values, html=True)


def _confirmation(reader: Reader, newsletters: Sequence[Newsletter], config: Mapping[str, Any], *,
                  imported: bool) -> Rendered:
    # Signed now: the link's validity (NEWSLETTER_CONFIRM_MAX_AGE) counts from when the email leaves.
    link = external_url("public.confirm", token=tokens.confirm_token(reader.id, [n.id for n in newsletters]))
    days = max(1, config["NEWSLETTER_CONFIRM_MAX_AGE"] // 86400)
    subject, text, html = _render("confirm_import" if imported else "confirm", newsletters, days, reader.name,
                                  link=link)
    return Rendered(config["NEWSLETTER_MAIL_FROM"], reader.email, reader.name, subject, text, html, {})


def _welcome(reader: Reader, newsletter: Newsletter, config: Mapping[str, Any]) -> Rendered:
    """The welcome email of one newsletter, with its unsubscribe and preferences links and List-Unsubscribe."""
    token = tokens.unsubscribe_token(reader.id, newsletter.id)
    links = {"unsubscribe_link": external_url("public.unsubscribe", token=token),
             "preferences_link": external_url("public.preferences", token=tokens.preferences_token(reader.id))}
    subject, text, html = _render("welcome", [newsletter], 0, reader.name, **links)
    return Rendered(newsletter.sender or config["NEWSLETTER_MAIL_FROM"], reader.email, reader.name, subject, text,
                    html, unsubscribe_headers(newsletter, config, token, links["unsubscribe_link"]))


def _preferences_link(reader: Reader, config: Mapping[str, Any]) -> Rendered:
    link = external_url("public.preferences", token=tokens.preferences_token(reader.id))
    days = max(1, config["NEWSLETTER_PREFERENCES_MAX_AGE"] // 86400)
    subject, text, html = _render("preferences_link", [], days, reader.name, link=link)
    return Rendered(config["NEWSLETTER_MAIL_FROM"], reader.email, reader.name, subject, text, html, {})


def unsubscribe_headers(newsletter: Newsletter, config: Mapping[str, Any], token: str, link: str) -> dict[str, str]:
    """RFC 2369 / RFC 8058 headers: the mail client's own unsubscribe button, one click.

    `token` is the reader's unsubscribe token for `newsletter`, `link` its public.unsubscribe URL.
    """
    mailbox = config["NEWSLETTER_UNSUBSCRIBE_MAILTO"] or _address_in(config["NEWSLETTER_MAIL_FROM"])
    return {
        "List-Unsubscribe": (
            f"<{link}>, "
            f"<mailto:{mailbox}?subject={quote('unsubscribe ' + token)}>"
        ),
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        "List-Id": f"{newsletter.name} <{newsletter.slug}.{mailbox.rpartition('@')[2] or 'localhost'}>",
    }


@lru_cache(maxsize=16)
def _address_in(header_value: str) -> str:
    return parseaddr(header_value)[1]


def token_from_unsubscribe_reply(raw: bytes) -> str | None:
    """The unsubscribe token in the subject of a mail sent to the List-Unsubscribe mailto, if any."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    words = str(message.get("Subject", "")).split()
    if len(words) == 2 and words[0].lower() == "unsubscribe":
        return words[1]
    return None
