"""The writes of a confirmation, guarded so that they stand alone: one statement on PostgreSQL.

subscriptions.confirm reads what a link would confirm and renders the welcome emails; this module
records it: the subscriptions become confirmed, a `confirmed` ConsentEvent per newsletter, the
welcome emails into the outbox. The write confirms a subscription only if it is still pending since
before the link was issued and its reader not erased, and it writes the events and emails of
exactly the subscriptions it confirmed. So what changed between the read and the write (a second
click, an unsubscribe, an erasure) can't be confirmed over, and the write needs no lock held since
the read: on PostgreSQL it is one statement, which locks the reader row as the other changes of a
reader do, so it waits for them and they for it.
Statements are built once per shape, with bind parameters only, so SQLAlchemy compiles each once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import Connection, Executable, Integer, String, bindparam, insert, literal_column, select, update

from .models import CONSENT_SOURCE_COLUMNS, ConsentEvent, OutboxMessage, Reader, Subscription, UTCDateTime
from .sql import in_list


def record(connection: Connection, reader_id: int, subscription_ids: Sequence[int], issued_at: datetime,
           now: datetime, event_source: Mapping[str, str | None], mails: Mapping[int, Mapping[str, Any]]
           ) -> set[int]:
    """Confirm those of `subscription_ids` a link issued at `issued_at` still confirms; their newsletters' ids.

    `mails` are the welcome emails (outbox rows) by newsletter id: each is queued only if its
    newsletter's subscription was confirmed here.
    """
    parameters: dict[str, Any] = {
        "the_reader": reader_id,
        "now": now,
        # Token times have whole seconds: a link counts for subscriptions pending since before its second ended.
        "pending_before": issued_at.replace(microsecond=0) + timedelta(seconds=1),
        "subscription_ids": list(subscription_ids),
        **{f"event_{key}": event_source[key] for key in CONSENT_SOURCE_COLUMNS},
    }
    for number, (newsletter_id, mail) in enumerate(mails.items()):
        parameters[f"mail{number}_newsletter"] = newsletter_id
        parameters.update({f"mail{number}_{key}": value for key, value in mail.items()})
    columns = tuple(next(iter(mails.values()))) if mails else ()
    dialect = connection.dialect.name
    if dialect == "postgresql":
        return set(connection.execute(_whole_confirmation(len(mails), columns), parameters).scalars())

    confirmed = set(connection.execute(_subscriptions_update(dialect), parameters).scalars())
    if confirmed:
        connection.execute(_events_insert(), [{**parameters, "newsletter": newsletter_id} for newsletter_id in confirmed])
        for number, statement in enumerate(_mail_inserts(len(mails), columns)):
            if parameters[f"mail{number}_newsletter"] in confirmed:
                connection.execute(statement, parameters)
    return confirmed


def _mail_values(number: int, mail_columns: tuple[str, ...]) -> dict[str, Any]:
    table = OutboxMessage.__table__
    return {key: bindparam(f"mail{number}_{key}", type_=table.c[key].type) for key in mail_columns}


@cache
def _subscriptions_update(dialect: str) -> Executable:
    live_reader = select(Reader.id).where(Reader.id == bindparam("the_reader", type_=Integer()),
                                          Reader.erased_at.is_(None))
    if dialect == "postgresql":
        # Locked as every other change of a reader locks it. (SQLite's writes take turns anyway.)
        live_reader = live_reader.with_for_update().cte("live_reader").select()
    return (
        update(Subscription)
        .where(in_list(Subscription.id, "subscription_ids", Integer(), dialect),
               Subscription.status == "pending",
               Subscription.pending_since < bindparam("pending_before", type_=UTCDateTime()),
               Subscription.reader_id.in_(live_reader))
        .values(status=literal_column("'confirmed'"), confirmed_at=bindparam("now", type_=UTCDateTime()))
        .returning(Subscription.newsletter_id)
    )


def _event_values(newsletter: Any) -> list[Any]:
    return [bindparam("the_reader", type_=Integer()), newsletter, literal_column("'confirmed'"),
            bindparam("now", type_=UTCDateTime()),
            *(bindparam(f"event_{key}", type_=String()) for key in CONSENT_SOURCE_COLUMNS)]


_EVENT_COLUMNS = ["reader_id", "newsletter_id", "action", "occurred_at", *CONSENT_SOURCE_COLUMNS]


@cache
def _events_insert() -> Executable:
    return insert(ConsentEvent).values(dict(zip(_EVENT_COLUMNS, _event_values(bindparam("newsletter", type_=Integer())),
                                                strict=True)))


@cache
def _mail_inserts(mail_count: int, mail_columns: tuple[str, ...]) -> list[Executable]:
    # One INSERT per mail: SQLAlchemy doesn't cache the compiled form of a multi-row VALUES.
    return [insert(OutboxMessage).values(_mail_values(number, mail_columns)) for number in range(mail_count)]


@cache
def _whole_confirmation(mail_count: int, mail_columns: tuple[str, ...]) -> Executable:
    """PostgreSQL: the guarded UPDATE, the events and mails of what it confirmed; the newsletters' ids.

    The parts of a WITH can't see each other's rows, only what they return, so events and mails
    read the UPDATE's RETURNING; a data-modifying part always runs, whether the query reads it or not.
    """
    confirmed = _subscriptions_update("postgresql").cte("confirmed")
    events = insert(ConsentEvent).from_select(
        _EVENT_COLUMNS, select(*_event_values(confirmed.c.newsletter_id))).cte("events")
    mails = [
        insert(OutboxMessage).from_select(
            list(mail_columns),
            select(*_mail_values(number, mail_columns).values())
            .where(confirmed.c.newsletter_id == bindparam(f"mail{number}_newsletter", type_=Integer())),
        ).cte(f"mail{number}")
        for number in range(mail_count)
    ]
    return select(confirmed.c.newsletter_id).add_cte(events, *mails)
