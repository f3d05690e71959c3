"""Looking readers up for the admin: search by email fragment, page by page; one reader's subscriptions and history."""

from __future__ import annotations

import math
import unicodedata
from dataclasses import dataclass

from sqlalchemy import func, select
from sqlalchemy.orm import Session, joinedload, selectinload

from .models import ConsentEvent, Newsletter, Reader, Subscription
from .paging import PageNumbers

PAGE_SIZE = 50


@dataclass(frozen=True)
class ReaderPage(PageNumbers):
    """One page of a search: the readers on it, newest first, and where it sits among all matches."""

    readers: list[Reader]
    total: int
    page: int
    per_page: int

    @property
    def shown(self) -> int:
        return len(self.readers)


def search(session: Session, fragment: str = "", *, page: int = 1, per_page: int = PAGE_SIZE) -> ReaderPage:
    """Readers whose address contains `fragment` (any case; all readers if empty), page `page` (from 1)."""
    fragment = fragment.strip().lower()
    # An address holds no control characters (and PostgreSQL's text can't hold NUL): nothing can match.
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in fragment):
        return ReaderPage([], 0, 1, per_page)
    query = select(Reader)
    if fragment:
        query = query.where(func.lower(Reader.email).contains(fragment, autoescape=True))
    total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
    page = min(max(1, page), max(1, math.ceil(total / per_page)))
    readers = list(session.scalars(
        query.options(selectinload(Reader.subscriptions).joinedload(Subscription.newsletter))
        .order_by(Reader.id.desc()).offset((page - 1) * per_page).limit(per_page)
    ))
    return ReaderPage(readers, total, page, per_page)


def subscriptions(session: Session, reader_id: int) -> list[Subscription]:
    """Every subscription the reader has or had, with its newsletter, by newsletter name."""
    return list(session.scalars(
        select(Subscription).join(Subscription.newsletter).options(joinedload(Subscription.newsletter))
        .where(Subscription.reader_id == reader_id).order_by(Newsletter.name, Newsletter.id)
    ))


def consent_history(session: Session, reader_id: int) -> list[tuple[ConsentEvent, Newsletter | None]]:
    """Every consent event of the reader, oldest first, each with its newsletter (None for reader-wide events)."""
    return [(event, newsletter) for event, newsletter in session.execute(
        select(ConsentEvent, Newsletter).outerjoin(Newsletter, Newsletter.id == ConsentEvent.newsletter_id)
        .where(ConsentEvent.reader_id == reader_id).order_by(ConsentEvent.occurred_at, ConsentEvent.id)
    )]
