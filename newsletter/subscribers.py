"""Reading the lists: each newsletter with its counts, and one newsletter's subscribers page by page."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from .catalog import SLUG
from .models import SUBSCRIPTION_STATUSES, Newsletter, Reader, Subscription

MAX_PAGE = 500


@dataclass
class SubscriberPage:
    """One page of a newsletter's subscribers, in subscription id order; `has_more` if rows follow."""

    rows: list[tuple[Subscription, Reader]]
    has_more: bool

    @property
    def last_id(self) -> int | None:
        return self.rows[-1][0].id if self.rows else None


def find_newsletter(session: Session, slug: str) -> Newsletter | None:
    """The newsletter (active or archived) called `slug`, if any."""
    if not SLUG.fullmatch(slug):  # nothing that can't be a slug reaches the database (NUL bytes…)
        return None
    return session.scalars(select(Newsletter).where(Newsletter.slug == slug)).first()


def newsletters_with_counts(session: Session) -> list[tuple[Newsletter, dict[str, int]]]:
    """Every newsletter, by slug, with how many subscriptions are pending, confirmed and unsubscribed.

    Erased readers are counted too (as unsubscribed): the counts are anonymous.
    """
    counts: dict[int, dict[str, int]] = {}
    for newsletter_id, status, number in session.execute(
        select(Subscription.newsletter_id, Subscription.status, func.count())
        .group_by(Subscription.newsletter_id, Subscription.status)
    ):
        counts.setdefault(newsletter_id, {})[status] = number
    return [(newsletter, {status: counts.get(newsletter.id, {}).get(status, 0) for status in SUBSCRIPTION_STATUSES})
            for newsletter in session.scalars(select(Newsletter).order_by(Newsletter.slug))]


def subscribers_page(session: Session, newsletter: Newsletter, *, status: str | None = None,
                     search: str | None = None, after_id: int | None = None, limit: int = 100) -> SubscriberPage:
    """Up to `limit` subscriptions of `newsletter` with ids above `after_id` (keyset pagination).

    Ordered by subscription id, which never changes, so walking the pages returns every row once
    even while readers sign up. `search` is a fragment of the email or name, any case. Erased
    readers are left out: nothing about them is left to list.
    """
    if status is not None and status not in SUBSCRIPTION_STATUSES:
        raise ValueError(f"unknown status {status!r}")
    limit = max(1, min(limit, MAX_PAGE))
    query = (
        select(Subscription, Reader)
        .join(Reader, Reader.id == Subscription.reader_id)
        .where(Subscription.newsletter_id == newsletter.id, Reader.erased_at.is_(None))
    )
    if status is not None:
        query = query.where(Subscription.status == status)
    if search:
        fragment = search.lower()
        query = query.where(or_(func.lower(Reader.email).contains(fragment, autoescape=True),
                                func.lower(Reader.name).contains(fragment, autoescape=True)))
    if after_id is not None:
        query = query.where(Subscription.id > after_id)
    rows = [(subscription, reader) for subscription, reader in
            session.execute(query.order_by(Subscription.id).limit(limit + 1))]
    return SubscriberPage(rows=rows[:limit], has_more=len(rows) > limit)
