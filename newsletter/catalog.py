"""Newsletters: adding, editing, archiving them, and checking their fields."""

from __future__ import annotations

import re
import unicodedata
from email.headerregistry import Address
from email.utils import getaddresses

from sqlalchemy import select
from sqlalchemy.orm import Session

from . import addresses
from .models import Newsletter, utcnow

SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
MAX_NAME = 200
MAX_DESCRIPTION = 2000
MAX_WELCOME_TEXT = 20000


class CatalogError(ValueError):
    """A newsletter can't be added or changed as asked; the message says why, `field` which input."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownNewsletter(CatalogError):
    """No newsletter has this slug."""


def _one_line(text: str, field: str, label: str, max_length: int) -> str:
    # Names and senders end up in mail headers (Subject, From, List-Id): a line break there is header injection.
    if any(unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") for char in text):
        raise CatalogError(f"The {label} must be one line of text, without control characters.", field)
    text = text.strip()
    if len(text) > max_length:
        raise CatalogError(f"The {label} can be at most {max_length} characters long.", field)
    return text


def _paragraphs(text: str, field: str, label: str, max_length: int) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if any(unicodedata.category(char) in ("Cc", "Cs") and char not in "\n\t" for char in text):
        raise CatalogError(f"The {label} can't contain control characters.", field)
    text = text.strip()
    if len(text) > max_length:
        raise CatalogError(f"The {label} can be at most {max_length} characters long.", field)
    return text


def check_name(name: str) -> str:
    """The newsletter's name, stripped, or CatalogError."""
    name = _one_line(name, "name", "name", MAX_NAME)
    if not name:
        raise CatalogError("A newsletter needs a name.", "name")
    return name


def check_sender(sender: str | None) -> str | None:
    """A From: header value (`addr@example.org` or `Name <addr@example.org>`) with a normalized address, or None."""
    if sender is None:
        return None
    sender = _one_line(sender, "sender", "sender", 320)
    if not sender:
        return None
    found = getaddresses([sender])
    if len(found) != 1 or not found[0][1]:
        raise CatalogError("The sender must be one email address, optionally with a name: "
                           "'Name <news@example.org>'.", "sender")
    display_name, address = found[0]
    try:
        address = addresses.normalize(address)
    except addresses.InvalidAddress as error:
        raise CatalogError(f"The sender must be an email address, optionally with a name: "
                           f"'Name <news@example.org>'. {error}", "sender") from None
    # Quoted where the name needs it ("Doe, J" <…>), never encoded: the outbox encodes headers when it sends.
    return str(Address(display_name=display_name, addr_spec=address)) if display_name else address


def _optional(text: str | None, field: str, label: str, max_length: int, *, multiline: bool = False) -> str | None:
    if text is None:
        return None
    text = (_paragraphs if multiline else _one_line)(text, field, label, max_length)
    return text or None


def get_newsletter(session: Session, slug: str) -> Newsletter:
    """The newsletter with this slug, archived or not, or UnknownNewsletter."""
    newsletter = session.scalar(select(Newsletter).where(Newsletter.slug == slug)) if SLUG.fullmatch(slug) else None
    if newsletter is None:
        raise UnknownNewsletter(f"There is no newsletter called {slug!r}.", "slug")
    return newsletter


def add_newsletter(session: Session, slug: str, *, name: str, description: str = "", author: str | None = None,
                   sender: str | None = None, send_welcome: bool = True, welcome_text: str | None = None
                   ) -> Newsletter:
    """A new active newsletter; CatalogError if the slug is malformed or taken, or a field is wrong."""
    if not SLUG.fullmatch(slug):
        raise CatalogError(f"{slug!r} can't be a slug: use lowercase letters, digits and dashes, "
                           "starting and ending with a letter or digit, at most 64 characters.", "slug")
    newsletter = Newsletter(
        slug=slug,
        name=check_name(name),
        description=_paragraphs(description, "description", "description", MAX_DESCRIPTION),
        author=_optional(author, "author", "author", MAX_NAME),
        sender=check_sender(sender),
        send_welcome=send_welcome,
        welcome_text=_optional(welcome_text, "welcome_text", "welcome email text", MAX_WELCOME_TEXT, multiline=True),
    )
    if session.scalar(select(Newsletter.id).where(Newsletter.slug == slug)) is not None:
        raise CatalogError(f"A newsletter called {slug!r} exists already.", "slug")
    session.add(newsletter)
    session.flush()
    return newsletter


def edit_newsletter(newsletter: Newsletter, *, name: str | None = None, description: str | None = None,
                    author: str | None = None, sender: str | None = None, send_welcome: bool | None = None,
                    welcome_text: str | None = None) -> list[str]:
    """Change the fields given (None leaves a field as it is; "" clears an optional one); the fields changed.

    Every value is checked before any is set: on CatalogError the newsletter is unchanged.
    The slug never changes: embedded forms and links carry it.
    """
    wanted: dict[str, object] = {}
    if name is not None:
        wanted["name"] = check_name(name)
    if description is not None:
        wanted["description"] = _paragraphs(description, "description", "description", MAX_DESCRIPTION)
    if author is not None:
        wanted["author"] = _optional(author, "author", "author", MAX_NAME)
    if sender is not None:
        wanted["sender"] = check_sender(sender)
    if send_welcome is not None:
        wanted["send_welcome"] = send_welcome
    if welcome_text is not None:
        wanted["welcome_text"] = _optional(welcome_text, "welcome_text", "welcome email text", MAX_WELCOME_TEXT,
                                           multiline=True)
    changed = [field for field, value in wanted.items() if getattr(newsletter, field) != value]
    for field in changed:
        setattr(newsletter, field, wanted[field])
    return changed


def archive(newsletter: Newsletter) -> bool:
    """Stop the newsletter taking signups (its readers and history stay); False if it was archived already."""
    if newsletter.archived_at is not None:
        return False
    newsletter.archived_at = utcnow()
    return True


def unarchive(newsletter: Newsletter) -> bool:
    """Let an archived newsletter take signups again; False if it was active already."""
    if newsletter.archived_at is None:
        return False
    newsletter.archived_at = None
    return True
