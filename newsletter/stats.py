"""Numbers for the dashboard: subscriptions per newsletter and status, activity per day, pages that bring signups.

Each function takes a session and returns plain data; the counting is done by the database
(GROUP BY), so the cost does not grow with what Python has to hold.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import Date, cast, func, select
from sqlalchemy.orm import Session

from .models import ConsentEvent, DeliveryEvent, Newsletter, Subscription, utcnow

CHART_DAYS = 90
TOP_PAGES = 10


@dataclass(frozen=True)
class NewsletterCounts:
    newsletter: Newsletter
    pending: int = 0
    confirmed: int = 0
    unsubscribed: int = 0


@dataclass(frozen=True)
class DayActivity:
    """One UTC day: confirmations and unsubscribes recorded in the consent history; bounces and complaints received."""

    day: date
    confirmed: int = 0
    unsubscribed: int = 0
    bounces: int = 0  # hard and soft
    complaints: int = 0


@dataclass(frozen=True)
class TopPage:
    page_url: str
    signups: int
    # channel (embed-form, embed-iframe, embed-script, hosted-form, api…) → signups, most first
    channels: dict[str, int] = field(default_factory=dict)


def newsletter_counts(session: Session) -> list[NewsletterCounts]:
    """Every newsletter, active ones first, with how many subscriptions are in each status."""
    counts: dict[int, dict[str, int]] = {}
    for newsletter_id, status, number in session.execute(
        select(Subscription.newsletter_id, Subscription.status, func.count())
        .group_by(Subscription.newsletter_id, Subscription.status)
    ):
        counts.setdefault(newsletter_id, {})[status] = number
    newsletters = session.scalars(
        select(Newsletter).order_by(Newsletter.archived_at.is_not(None), Newsletter.name, Newsletter.slug))
    return [NewsletterCounts(newsletter, **counts.get(newsletter.id, {})) for newsletter in newsletters]


def _utc_day(column: Any, dialect: str) -> Any:
    # SQLite keeps naive UTC text: date() cuts it. PostgreSQL keeps timestamptz: the day in UTC, not the session's zone.
    if dialect == "postgresql":
        return cast(func.timezone("UTC", column), Date)
    return func.date(column)


def _as_date(value: date | str) -> date:
    return value if isinstance(value, date) else date.fromisoformat(value)


def window(days: int = CHART_DAYS, today: date | None = None) -> tuple[date, datetime]:
    """The first day of the last `days` UTC days up to `today`, and the instant it starts."""
    today = today or utcnow().date()
    first = today - timedelta(days=days - 1)
    return first, datetime.combine(first, time.min, tzinfo=timezone.utc)


def daily_activity(session: Session, *, newsletter_id: int | None = None, days: int = CHART_DAYS,
                   today: date | None = None) -> list[DayActivity]:
    """Confirmations and unsubscribes per UTC day for the last `days` days up to `today`, oldest first, gaps as 0.

    Bounces and complaints concern addresses, not newsletters: they are counted for all newsletters only.
    """
    first, since = window(days, today)
    dialect = session.get_bind().dialect.name
    day = _utc_day(ConsentEvent.occurred_at, dialect).label("day")
    query = (
        select(day, ConsentEvent.action, func.count())
        .where(ConsentEvent.action.in_(("confirmed", "unsubscribed")), ConsentEvent.occurred_at >= since)
        .group_by(day, ConsentEvent.action)
    )
    if newsletter_id is not None:
        query = query.where(ConsentEvent.newsletter_id == newsletter_id)
    found: dict[date, dict[str, int]] = {}
    for bucket, action, number in session.execute(query):
        found.setdefault(_as_date(bucket), {})[action] = number
    if newsletter_id is None:
        delivered_day = _utc_day(DeliveryEvent.occurred_at, dialect).label("day")
        for bucket, kind, number in session.execute(
            select(delivered_day, DeliveryEvent.kind, func.count())
            .where(DeliveryEvent.occurred_at >= since).group_by(delivered_day, DeliveryEvent.kind)
        ):
            counted = found.setdefault(_as_date(bucket), {})
            what = "complaints" if kind == "complaint" else "bounces"
            counted[what] = counted.get(what, 0) + number
    return [DayActivity(day, **found.get(day, {}))
            for day in (first + timedelta(days=offset) for offset in range(days))]


def top_pages(session: Session, *, newsletter_id: int | None = None, days: int = CHART_DAYS,
              today: date | None = None, limit: int = TOP_PAGES) -> list[TopPage]:
    """The pages whose forms brought the most signup requests in the last `days` days, with each channel's share."""
    _, since = window(days, today)
    signups = [ConsentEvent.action == "signup_requested", ConsentEvent.page_url.is_not(None),
               ConsentEvent.occurred_at >= since]
    if newsletter_id is not None:
        signups.append(ConsentEvent.newsletter_id == newsletter_id)
    number = func.count().label("signups")
    leaders = list(session.execute(
        select(ConsentEvent.page_url, number).where(*signups)
        .group_by(ConsentEvent.page_url).order_by(number.desc(), ConsentEvent.page_url).limit(limit)
    ))
    if not leaders:
        return []
    channels: dict[str, dict[str, int]] = {}
    for page_url, source, count in session.execute(
        select(ConsentEvent.page_url, ConsentEvent.source, func.count())
        .where(*signups, ConsentEvent.page_url.in_([page_url for page_url, _ in leaders]))
        .group_by(ConsentEvent.page_url, ConsentEvent.source)
    ):
        channels.setdefault(page_url, {})[source] = count
    return [
        TopPage(page_url, total, dict(sorted(channels.get(page_url, {}).items(), key=lambda item: (-item[1], item[0]))))
        for page_url, total in leaders
    ]
