"""The writes of a confirmation, in one statement on PostgreSQL and no ORM unit of work.

subscriptions.confirm decides what a link confirms; this module records it: the subscriptions
become confirmed, a `confirmed` ConsentEvent per newsletter, the welcome emails into the outbox.
Statements are built once per shape, with bind parameters only, so SQLAlchemy compiles each once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import Connection, Executable, Integer, String, bindparam, insert, literal_column, select, update

from .models import CONSENT_SOURCE_COLUMNS, ConsentEvent, Newsletter, OutboxMessage, Subscription, UTCDateTime
from .sql import in_list


def record(connection: Connection, reader_id: int, subscription_ids: Sequence[int], newsletter_ids: Sequence[int],
           now: datetime, event_source: Mapping[str, str | None], mails: Sequence[Mapping[str, Any]]) -> None:
    """Confirm `subscription_ids` (of `newsletter_ids`) at `now`, with their events and `mails` (outbox rows)."""
    parameters: dict[str, Any] = {
        "the_reader": reader_id,
        "now": now,
        "subscription_ids": list(subscription_ids),
        "newsletter_ids": list(newsletter_ids),
        **{f"event_{key}": event_source[key] for key in CONSENT_SOURCE_COLUMNS},
    }
    for number, mail in enumerate(mails):
        parameters.update({f"mail{number}_{key}": value for key, value in mail.items()})
    columns = tuple(mails[0]) if mails else ()
    for statement in _statements(connection.dialect.name, len(mails), columns):
        connection.execute(statement, parameters)


@cache
def _statements(dialect: str, mail_count: int, mail_columns: tuple[str, ...]) -> list[Executable]:
    now = bindparam("now", type_=UTCDateTime())
    subscriptions = (
        update(Subscription)
        .where(in_list(Subscription.id, "subscription_ids", Integer(), dialect))
        .values(status=literal_column("'confirmed'"), confirmed_at=now)
    )
    events = insert(ConsentEvent).from_select(
        ["reader_id", "newsletter_id", "action", "occurred_at", *CONSENT_SOURCE_COLUMNS],
        select(bindparam("the_reader", type_=Integer()), Newsletter.id, literal_column("'confirmed'"), now,
               *(bindparam(f"event_{key}", type_=String()) for key in CONSENT_SOURCE_COLUMNS))
        .where(in_list(Newsletter.id, "newsletter_ids", Integer(), dialect)),
    )
    statements: list[Any] = [subscriptions, events]
    table = OutboxMessage.__table__
    # One INSERT per mail: SQLAlchemy doesn't cache the compiled form of a multi-row VALUES.
    statements += [
        insert(OutboxMessage).values(
            {key: bindparam(f"mail{number}_{key}", type_=table.c[key].type) for key in mail_columns})
        for number in range(mail_count)
    ]
    if dialect == "postgresql":
        # One round trip: a data-modifying WITH part always runs, whether the query reads it or not.
        return [select(literal_column("1")).add_cte(*(s.cte(f"step{i}") for i, s in enumerate(statements)))]
    return statements
