"""The emails the service sends, rendered from templates/email/*.txt + *.html into the outbox."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from email import policy
from email.parser import BytesParser
from email.utils import parseaddr
from functools import lru_cache
from typing import Any, NamedTuple
from urllib.parse import quote

from flask import render_template
from flask_babel import get_locale, ngettext
from flask_babel import gettext as _
from markupsafe import escape
from sqlalchemy import ColumnElement, String, func, literal_column
from sqlalchemy.orm import Session

from . import outbox, suppressions, tokens
from .links import external_url
from .models import Newsletter, Reader


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
    the cache key: the rendering itself reads the request's language.
    """
    context = {
        "reader": {"name": _SLOT.format("name") if named else None},
        "newsletters": newsletters,
        "newsletter": newsletters[0],
        "days": days,
        "link": _SLOT.format("link"),
        "unsubscribe_link": _SLOT.format("unsubscribe_link"),
        "preferences_link": _SLOT.format("preferences_link"),
    }
    if name == "welcome":
        subject = _("Welcome to %(name)s", name=newsletters[0].name)
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


def _render(name: str, newsletters: list[Newsletter], days: int, reader_name: str | None, **links: str
            ) -> tuple[str, str, str]:
    """(subject, text, html) of templates/email/<name> for a reader called `reader_name`.

    With reader_name=NAME_SLOT the bodies keep the slot where the name goes, for name_filled.
    """
    return _renderer(name, newsletters, days, **links)(reader_name)


def _renderer(name: str, newsletters: list[Newsletter], days: int, **links: str
              ) -> Callable[[str | None], tuple[str, str, str]]:
    """_render with all but the reader's name given: for rendering one email for several names."""
    shown = tuple(_Shown(n.name, n.author, n.description or "", n.welcome_text) for n in newsletters)
    locale = str(get_locale() or "en")

    def render(reader_name: str | None) -> tuple[str, str, str]:
        subject, text, html = _rendered(name, locale, shown, days, bool(reader_name))
        values = links if reader_name == NAME_SLOT else {"name": reader_name, **links}
        return subject, _fill(text, values, html=False), _fill(html, values, html=True)

    return render


NAME_SLOT = _SLOT.format("name")
_HTML_ESCAPES = (("&", "&amp;"), ("<", "&lt;"), (">", "&gt;"), ('"', "&#34;"), ("'", "&#39;"))  # markupsafe's


def name_filled(body: ColumnElement[str], name: ColumnElement[Any], *, html: bool) -> ColumnElement[str]:
    """SQL: `body` (rendered with reader_name=NAME_SLOT) with `name` in its slot, as _fill puts it there.

    For a write that reads the reader's name in the same statement (confirmation_writes).
    """
    if html:
        for character, escaped in _HTML_ESCAPES:
            name = func.replace(name, _sql_string(character), _sql_string(escaped))
    return func.replace(body, _sql_string(NAME_SLOT), name)


def _sql_string(value: str) -> ColumnElement[str]:
    # Constants written into the statement, not bound: the same on every execution.
    return literal_column("'" + value.replace("'", "''") + "'", String())


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


def enqueue_confirmation(session: Session, reader: Reader, newsletters: list[Newsletter],
                         config: Mapping[str, Any]) -> bool:
    """One email asking the reader to confirm every newsletter in `newsletters`; False if the address is suppressed."""
    if suppressions.stopping_reason(session, suppressions.normalized_key(config, reader.email)) is not None:
        return False
    outbox.enqueue(session, **confirmation(reader, newsletters, config))
    return True


def confirmation(reader: Reader, newsletters: list[Newsletter], config: Mapping[str, Any],
                 sent_at: datetime | None = None, *, imported: bool = False) -> dict[str, Any]:
    """The confirmation email as outbox.message_row's arguments; `sent_at` when it leaves later than now.

    `imported`: an import's (`--unconfirmed ask`), worded for a reader whose list moved here, who
    did not just sign up (templates/email/confirm_import).
    """
    ids = [n.id for n in newsletters]
    token = tokens.confirm_token(reader.id, ids) if sent_at is None else tokens.confirm_token(reader.id, ids, sent_at)
    link = external_url("public.confirm", token=token)
    days = max(1, config["NEWSLETTER_CONFIRM_MAX_AGE"] // 86400)
    subject, text, html = _render("confirm_import" if imported else "confirm", newsletters, days, reader.name,
                                  link=link)
    return {
        "kind": "confirmation", "reader_id": reader.id, "to_address": reader.email, "to_name": reader.name,
        "subject": subject, "body_text": text, "body_html": html, "mail_from": config["NEWSLETTER_MAIL_FROM"],
    }


def enqueue_welcome(session: Session, reader: Reader, newsletter: Newsletter,
                    config: Mapping[str, Any]) -> bool:
    """The welcome email of one newsletter, with its unsubscribe and preferences links; False if suppressed."""
    if suppressions.stopping_reason(session, suppressions.normalized_key(config, reader.email)) is not None:
        return False
    outbox.enqueue(session, **welcome(reader, newsletter, config))
    return True


def welcome(reader: Reader, newsletter: Newsletter, config: Mapping[str, Any]) -> dict[str, Any]:
    """The welcome email of one newsletter as outbox.message_row's arguments."""
    arguments, render = _welcome(reader.id, newsletter, config)
    subject, text, html = render(reader.name)
    return {**arguments, "subject": subject, "body_text": text, "body_html": html,
            "to_address": reader.email, "to_name": reader.name}


def welcome_for_any_name(reader_id: int, newsletter: Newsletter, config: Mapping[str, Any]
                         ) -> tuple[dict[str, Any], tuple[str, str]]:
    """The welcome email before the reader's address and name are read: (arguments, bodies without a name).

    The arguments are welcome()'s with an empty to_address, and bodies that greet the slot of
    name_filled; the (text, html) bodies are those of a reader without a name.
    """
    arguments, render = _welcome(reader_id, newsletter, config)
    subject, text, html = render(NAME_SLOT)
    _, unnamed_text, unnamed_html = render(None)
    return ({**arguments, "subject": subject, "body_text": text, "body_html": html, "to_address": ""},
            (unnamed_text, unnamed_html))


def _welcome(reader_id: int, newsletter: Newsletter, config: Mapping[str, Any]
             ) -> tuple[dict[str, Any], Callable[[str | None], tuple[str, str, str]]]:
    """The welcome email's arguments but the rendered ones, and its rendering for a reader's name."""
    token = tokens.unsubscribe_token(reader_id, newsletter.id)
    links = {"unsubscribe_link": external_url("public.unsubscribe", token=token),
             "preferences_link": external_url("public.preferences", token=tokens.preferences_token(reader_id))}
    arguments = {"kind": "welcome", "reader_id": reader_id,
                 "mail_from": newsletter.sender or config["NEWSLETTER_MAIL_FROM"],
                 "headers": unsubscribe_headers(newsletter, config, token, links["unsubscribe_link"])}
    return arguments, _renderer("welcome", [newsletter], 0, **links)


def token_from_unsubscribe_reply(raw: bytes) -> str | None:
    """The unsubscribe token in the subject of a mail sent to the List-Unsubscribe mailto, if any."""
    message = BytesParser(policy=policy.default).parsebytes(raw)
    words = str(message.get("Subject", "")).split()
    if len(words) == 2 and words[0].lower() == "unsubscribe":
        return words[1]
    return None
