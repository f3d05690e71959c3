"""Newsletters: adding them and checking their fields."""

from __future__ import annotations

import re

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import Newsletter

SLUG = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")


class CatalogError(ValueError):
    """A newsletter can't be added or changed as asked; the message says why."""


def add_newsletter(session: Session, slug: str, *, name: str, description: str = "", author: str | None = None,
                   sender: str | None = None, send_welcome: bool = True) -> Newsletter:
    """A new active newsletter; CatalogError if the slug is malformed or taken."""
    if not SLUG.fullmatch(slug):
        raise CatalogError(f"{slug!r} can't be a slug: use lowercase letters, digits and dashes, "
                           "starting and ending with a letter or digit, at most 64 characters.")
    if not name.strip():
        raise CatalogError("A newsletter needs a name.")
    if session.scalar(select(Newsletter.id).where(Newsletter.slug == slug)) is not None:
        raise CatalogError(f"A newsletter called {slug!r} exists already.")
    newsletter = Newsletter(slug=slug, name=name.strip(), description=description, author=author or None,
                            sender=sender or None, send_welcome=send_welcome)
    session.add(newsletter)
    session.flush()
    return newsletter
