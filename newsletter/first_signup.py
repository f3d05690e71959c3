"""The signup of an address never seen before, in as few statements as the database allows.

Most signups are of new addresses, so this is the service's hottest path. subscriptions.sign_up
tries it first and falls back to its general path for a known address. The statements are built
once, with bind parameters only, so SQLAlchemy compiles each of them once per process.

On PostgreSQL it is one statement, outside any transaction (sql.statement_at_a_time): the reader,
its subscriptions, their events and the confirmation email's outbox row, which says what to send
and needs only the reader's id from the statement itself (the email is rendered when it is sent).
On SQLite: one statement for the reader, one per table.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from functools import cache
from typing import Any

from sqlalchemy import (
    ARRAY,
    ColumnElement,
    Executable,
    Integer,
    String,
    bindparam,
    func,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .models import (
    CONSENT_SOURCE_COLUMNS,
    ConsentEvent,
    Newsletter,
    OutboxMessage,
    Reader,
    Subscription,
    UTCDateTime,
    snapshot,
)
from . import suppressions
from .sql import in_list, statement_at_a_time

_INSERTS = {"postgresql": postgresql.insert, "sqlite": sqlite.insert}


def sign_up_new(session: Session, address: str, name: str | None, newsletters: Sequence[Newsletter],
                now: datetime, event_source: Mapping[str, str | None], mail: Mapping[str, Any],
                suppression_key: str) -> Reader | None:
    """A new reader with pending subscriptions to `newsletters`, their events and its confirmation mail.

    None, with nothing written, if the address is known, suppressed (`suppression_key` is its
    suppressions.address_key), or a newsletter changed meanwhile (see insert_reader). `event_source`
    has the ConsentEvent columns of CONSENT_SOURCE_COLUMNS; `mail` is the confirmation's outbox row
    (outbox.message_row), whose reader_id is the new reader's.
    """
    if session.get_bind().dialect.name != "postgresql":
        reader_id = insert_reader(session, address, name, newsletters, now, suppression_key)
        if reader_id is None:
            return None
        add_subscriptions(session, reader_id, newsletters, now, event_source, mail)
        return _new_reader(reader_id, address, name, now)

    with statement_at_a_time(session) as connection:
        parameters = {
            "address": address, "reader_name": name, "now": now, "suppression_key": suppression_key,
            "count": len(newsletters), "ids": [n.id for n in newsletters], "slugs": [n.slug for n in newsletters],
            "newsletter_ids": [n.id for n in newsletters],
            **{f"event_{key}": event_source[key] for key in CONSENT_SOURCE_COLUMNS},
            **{f"mail_{key}": value for key, value in mail.items() if key != "reader_id"},
        }
        reader_id = connection.execute(_whole_signup(tuple(key for key in mail if key != "reader_id")),
                                       parameters).scalar()
    return None if reader_id is None else _new_reader(reader_id, address, name, now)


def _new_reader(reader_id: int, address: str, name: str | None, now: datetime) -> Reader:
    return snapshot(Reader, {"id": reader_id, "email": address, "name": name, "created_at": now,
                             "confirmation_sent_at": now, "blocked_at": None, "erased_at": None})


def insert_reader(session: Session, address: str, name: str | None, newsletters: Sequence[Newsletter],
                  now: datetime, suppression_key: str) -> int | None:
    """The id of a new reader with this address; None if the address is known, suppressed, or a newsletter changed.

    The row is only inserted while every (id, slug) of `newsletters` is still an active newsletter,
    which makes entries from newsletter_cache safe to sign up with, and while no mail-stopping
    suppression of `suppression_key` is in force: a look at its unique index, inside the one statement. A new reader is always sent a
    confirmation, hence confirmation_sent_at (and its subscriptions', see add_subscriptions).
    """
    connection = session.connection()
    parameters: dict[str, Any] = {"address": address, "reader_name": name, "now": now, "count": len(newsletters),
                                  "suppression_key": suppression_key}
    if connection.dialect.name == "postgresql":
        parameters |= {"ids": [n.id for n in newsletters], "slugs": [n.slug for n in newsletters]}
    else:
        parameters["pairs"] = [(n.id, n.slug) for n in newsletters]
    return connection.execute(_reader_insert(connection.dialect.name), parameters).scalar()


def add_subscriptions(session: Session, reader_id: int, newsletters: Sequence[Newsletter], now: datetime,
                      event_source: Mapping[str, str | None], mail: Mapping[str, Any]) -> None:
    """The reader's pending subscriptions, a signup_requested event for each, and the confirmation mail naming them.

    `event_source` has the ConsentEvent columns of CONSENT_SOURCE_COLUMNS; `mail` is an outbox row
    (outbox.message_row), queued for this reader.
    """
    connection = session.connection()
    mail = {**mail, "reader_id": reader_id}
    parameters = {
        "the_reader": reader_id,
        "now": now,
        "newsletter_ids": [newsletter.id for newsletter in newsletters],
        **{f"event_{key}": event_source[key] for key in CONSENT_SOURCE_COLUMNS},
        **{f"mail_{key}": value for key, value in mail.items()},
    }
    for statement in _subscription_inserts(connection.dialect.name, tuple(mail)):
        connection.execute(statement, parameters)


def _all_still_active(dialect: str) -> ColumnElement[bool]:
    """Whether every (id, slug) given is an active newsletter: the guard of a reader's INSERT."""
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
    return still_active == bindparam("count", type_=Integer())


@cache
def _reader_insert(dialect: str) -> Executable:
    now = bindparam("now", type_=UTCDateTime())
    values = select(bindparam("address", type_=String()), bindparam("reader_name", type_=String()), now, now).where(
        _all_still_active(dialect), ~suppressions.stops_mail())
    return (
        _INSERTS[dialect](Reader)
        .from_select(["email", "name", "created_at", "confirmation_sent_at"], values)
        .on_conflict_do_nothing(index_elements=["email"])
        .returning(Reader.id)
    )


@cache
def _whole_signup(mail_columns: tuple[str, ...]) -> Executable:
    """PostgreSQL: the reader, its subscriptions, their events and its mail; the new reader's id (none if not made).

    The parts of a WITH can't see each other's rows, only what they return, so each part reads the
    one before; a data-modifying part always runs, whether the query reads it or not. Foreign keys
    are checked at the statement's end, when the reader's row is there.
    """
    now = bindparam("now", type_=UTCDateTime())
    reader = (
        postgresql.insert(Reader)
        .from_select(["email", "name", "created_at", "confirmation_sent_at"],
                     select(bindparam("address", type_=String()), bindparam("reader_name", type_=String()),
                            now, now).where(_all_still_active("postgresql"), ~suppressions.stops_mail()))
        .on_conflict_do_nothing(index_elements=["email"])
        .returning(Reader.id)
        .cte("new_reader")
    )
    subscriptions = (
        postgresql.insert(Subscription)
        .from_select(["reader_id", "newsletter_id", "status", "created_at", "pending_since", "confirmation_sent_at"],
                     select(reader.c.id, Newsletter.id, literal_column("'pending'"), now, now, now)
                     .select_from(reader)
                     .join(Newsletter, in_list(Newsletter.id, "newsletter_ids", Integer(), "postgresql")))
        .returning(Subscription.reader_id, Subscription.newsletter_id)
        .cte("new_subscriptions")
    )
    events = postgresql.insert(ConsentEvent).from_select(
        ["reader_id", "newsletter_id", "action", "occurred_at", *CONSENT_SOURCE_COLUMNS],
        select(subscriptions.c.reader_id, subscriptions.c.newsletter_id, literal_column("'signup_requested'"), now,
               *(bindparam(f"event_{key}", type_=String()) for key in CONSENT_SOURCE_COLUMNS)),
    ).cte("new_events")
    table = OutboxMessage.__table__
    mail = postgresql.insert(OutboxMessage).from_select(
        ["reader_id", *mail_columns],
        select(reader.c.id, *(bindparam(f"mail_{key}", type_=table.c[key].type) for key in mail_columns))
        .select_from(reader),
    ).cte("new_mail")
    return select(reader.c.id).add_cte(events, mail)


@cache
def _subscription_inserts(dialect: str, mail_columns: tuple[str, ...]) -> list[Executable]:
    reader_id, now = bindparam("the_reader", type_=Integer()), bindparam("now", type_=UTCDateTime())
    subscriptions = _INSERTS[dialect](Subscription).from_select(
        ["reader_id", "newsletter_id", "status", "created_at", "pending_since", "confirmation_sent_at"],
        select(reader_id, Newsletter.id, literal_column("'pending'"), now, now, now)
        .where(in_list(Newsletter.id, "newsletter_ids", Integer(), dialect)),
    )
    event_columns = ["reader_id", "newsletter_id", "action", "occurred_at", *CONSENT_SOURCE_COLUMNS]
    event_values = [reader_id, literal_column("'signup_requested'"), now,
                    *(bindparam(f"event_{key}", type_=String()) for key in CONSENT_SOURCE_COLUMNS)]
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
