"""The signup of an address never seen before, in two statements and no ORM unit of work.

Most signups are of new addresses, so this is the service's hottest path. subscriptions.sign_up
tries it first and falls back to its general path for a known address. The statements are built
once, with bind parameters only, so SQLAlchemy compiles each of them once per process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import ARRAY, Executable, Integer, String, bindparam, func, literal_column, select, tuple_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .models import ConsentEvent, Newsletter, OutboxMessage, Reader, Subscription, UTCDateTime
from .sql import in_list

EVENT_SOURCE_COLUMNS = ("source", "page_url", "form_id", "ip_address", "user_agent", "wording")
_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def insert_reader(session: Session, address: str, name: str | None, newsletters: Sequence[Newsletter],
                  now: datetime) -> int | None:
    """The id of a new reader with this address; None if the address is known or a newsletter changed.

    The row is only inserted while every (id, slug) of `newsletters` is still an active newsletter,
    which makes entries from newsletter_cache safe to sign up with. A new reader is always sent a
    confirmation, hence confirmation_sent_at.
    """
    connection = session.connection()
    parameters: dict[str, Any] = {"address": address, "reader_name": name, "now": now, "count": len(newsletters)}
    if connection.dialect.name == "postgresql":
        parameters |= {"ids": [n.id for n in newsletters], "slugs": [n.slug for n in newsletters]}
    else:
        parameters["pairs"] = [(n.id, n.slug) for n in newsletters]
    return connection.execute(_reader_insert(connection.dialect.name), parameters).scalar()


def add_subscriptions(session: Session, reader_id: int, newsletters: Sequence[Newsletter], now: datetime,
                      event_source: Mapping[str, str | None], mail: Mapping[str, Any]) -> None:
    """The reader's pending subscriptions, a signup_requested event for each, and its confirmation mail.

    `event_source` has the ConsentEvent columns of EVENT_SOURCE_COLUMNS; `mail` is an outbox row.
    """
    connection = session.connection()
    parameters = {
        "the_reader": reader_id,
        "now": now,
        "newsletter_ids": [newsletter.id for newsletter in newsletters],
        **{f"event_{key}": event_source[key] for key in EVENT_SOURCE_COLUMNS},
        **{f"mail_{key}": value for key, value in mail.items()},
    }
    for statement in _subscription_inserts(connection.dialect.name, tuple(mail)):
        connection.execute(statement, parameters)


@cache
def _reader_insert(dialect: str) -> Executable:
    if dialect == "postgresql":  # the pairs as two arrays, zipped by unnest(): see sql.in_list
        pairs = func.unnest(bindparam("ids", type_=ARRAY(Integer())), bindparam("slugs", type_=ARRAY(String())))
        named = tuple_(Newsletter.id, Newsletter.slug).in_(select(pairs.table_valued("id", "slug").render_derived()))
    else:
        named = tuple_(Newsletter.id, Newsletter.slug).in_(bindparam("pairs", expanding=True))
    still_active = (
        select(func.count()).select_from(Newsletter)
        .where(named, Newsletter.archived_at.is_(None))
        .scalar_subquery()
    )
    now = bindparam("now", type_=UTCDateTime())
    values = select(bindparam("address", type_=String()), bindparam("reader_name", type_=String()), now, now).where(
        still_active == bindparam("count", type_=Integer()))
    return (
        _INSERTS[dialect](Reader)
        .from_select(["email", "name", "created_at", "confirmation_sent_at"], values)
        .on_conflict_do_nothing(index_elements=["email"])
        .returning(Reader.id)
    )


@cache
def _subscription_inserts(dialect: str, mail_columns: tuple[str, ...]) -> list[Executable]:
    reader_id, now = bindparam("the_reader", type_=Integer()), bindparam("now", type_=UTCDateTime())
    subscriptions = _INSERTS[dialect](Subscription).from_select(
        ["reader_id", "newsletter_id", "status", "created_at", "pending_since"],
        select(reader_id, Newsletter.id, literal_column("'pending'"), now, now)
        .where(in_list(Newsletter.id, "newsletter_ids", Integer(), dialect)),
    )
    event_columns = ["reader_id", "newsletter_id", "action", "occurred_at", *EVENT_SOURCE_COLUMNS]
    event_values = [reader_id, literal_column("'signup_requested'"), now,
                    *(bindparam(f"event_{key}", type_=String()) for key in EVENT_SOURCE_COLUMNS)]
    table = OutboxMessage.__table__
    mail = _INSERTS[dialect](OutboxMessage).values(
        {key: bindparam(f"mail_{key}", type_=table.c[key].type) for key in mail_columns})

    if dialect == "postgresql":
        # One round trip. The parts of a WITH can't see each other's rows, only what they return;
        # and a data-modifying WITH part always runs, whether the query reads it or not.
        new = subscriptions.returning(Subscription.newsletter_id).cte("new_subscriptions")
        events = _INSERTS[dialect](ConsentEvent).from_select(
            event_columns, select(event_values[0], new.c.newsletter_id, *event_values[1:])).cte("new_events")
        return [select(func.count()).select_from(new).add_cte(events, mail.cte("new_mail"))]

    events = _INSERTS[dialect](ConsentEvent).from_select(
        event_columns,
        select(event_values[0], Subscription.newsletter_id, *event_values[1:])
        .where(Subscription.reader_id == reader_id),
    )
    return [subscriptions, events, mail]
