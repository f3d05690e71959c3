"""What pressing a confirmation link writes, with no read before it: one statement on PostgreSQL.

subscriptions.confirm knows from what the link names (the reader's id, the newsletters) which welcome
emails may be due, and decides what to show; this module reads and writes the rest in one go. It
confirms a subscription only if it is still pending since before the link was issued, to an active
newsletter, of a reader not erased; it writes a `confirmed` ConsentEvent and queues the welcome email
(an outbox row naming the reader and the newsletter, rendered when it is sent) for exactly the
subscriptions it confirmed.
On PostgreSQL the statement locks the reader row, as every other change of a reader does, so they
wait for each other; SQLite's write transactions take turns anyway.
Statements are built once per shape, with bind parameters only, so SQLAlchemy compiles each once.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import (
    Connection,
    Executable,
    Integer,
    Select,
    String,
    bindparam,
    exists,
    func,
    insert,
    literal_column,
    select,
    true,
    update,
)
from sqlalchemy.sql.selectable import CTE

from . import outbox
from .models import CONSENT_SOURCE_COLUMNS, ConsentEvent, Newsletter, OutboxMessage, Reader, Subscription, UTCDateTime
from .sql import in_list

WELCOME = "welcome"  # emails.WELCOME (emails imports outbox, which imports this module's callers)


@dataclass(frozen=True)
class Written:
    reader: tuple[str, str | None]  # (email, name)
    before: dict[int, tuple[str, datetime | None]]  # newsletter id: (status, pending_since), before the write
    confirmed: set[int]  # the newsletters whose subscription this confirmed


def record(connection: Connection, reader_id: int, newsletter_ids: Sequence[int], issued_at: datetime,
           now: datetime, event_source: Mapping[str, str | None], welcome_ids: Sequence[int],
           locale: str | None) -> Written | None:
    """Confirm what a link issued at `issued_at` for `newsletter_ids` still confirms; None if the reader is gone.

    A welcome email in `locale` (None: the reader's, found when it is sent) is queued for each newsletter
    confirmed that is in `welcome_ids`;
    `event_source` has the ConsentEvent columns of CONSENT_SOURCE_COLUMNS.
    """
    parameters: dict[str, Any] = {
        "the_reader": reader_id,
        "now": now,
        # Token times have whole seconds: a link counts for subscriptions pending since before its second ended.
        "pending_before": issued_at.replace(microsecond=0) + timedelta(seconds=1),
        "newsletter_ids": list(newsletter_ids),
        "welcome_ids": list(welcome_ids),
        "locale": locale,
        # The outbox's own clock: when the welcome is queued and due.
        "queued_at": outbox.utcnow(),
        **{f"event_{key}": event_source[key] for key in CONSENT_SOURCE_COLUMNS},
    }
    dialect = connection.dialect.name
    if dialect == "postgresql":
        rows = connection.execute(_whole_confirmation(), parameters).all()
        if not rows:
            return None
        before = {row.newsletter_id: (row.status, row.pending_since) for row in rows if row.newsletter_id is not None}
        return Written((rows[0].email, rows[0].name), before, {row.newsletter_id for row in rows if row.confirmed})

    reader = connection.execute(_live_reader(dialect), parameters).first()
    if reader is None:
        return None
    before = {row.newsletter_id: (row.status, row.pending_since)
              for row in connection.execute(statuses(dialect), parameters)}
    confirmed = set(connection.execute(_subscriptions_update(dialect), parameters).scalars())
    if confirmed:
        connection.execute(_event_insert(), [{**parameters, "newsletter": newsletter} for newsletter in confirmed])
    welcomed = sorted(confirmed.intersection(welcome_ids))
    if welcomed:
        connection.execute(insert(OutboxMessage), [
            outbox.message_row(kind=WELCOME, reader_id=reader_id, newsletter_ids=[newsletter_id], locale=locale)
            for newsletter_id in welcomed])
    return Written((reader.email, reader.name), before, confirmed)


@cache
def statuses(dialect: str) -> Select[Any]:
    """(newsletter_id, status, pending_since) of the reader's subscriptions to :newsletter_ids."""
    return select(Subscription.newsletter_id, Subscription.status, Subscription.pending_since).where(
        Subscription.reader_id == bindparam("the_reader", type_=Integer()),
        in_list(Subscription.newsletter_id, "newsletter_ids", Integer(), dialect))


@cache
def _live_reader(dialect: str) -> Select[Any]:
    reader = select(Reader.id, Reader.email, Reader.name).where(
        Reader.id == bindparam("the_reader", type_=Integer()), Reader.erased_at.is_(None))
    # Locked as every other change of a reader locks it. (SQLite's writes take turns anyway.)
    return reader.with_for_update() if dialect == "postgresql" else reader


@cache
def _subscriptions_update(dialect: str, live_reader: CTE | None = None) -> Executable:
    """The guarded UPDATE; on PostgreSQL `live_reader` is the locking part of the statement it goes in.

    The reader's id is compared with the bind parameter, not with live_reader's rows, so that every
    plan (a prepared statement's generic one too) finds the subscriptions by the (reader_id,
    newsletter_id) index; the EXISTS, a one-time test, takes the lock before any row is updated.
    """
    reader_is_live = exists(live_reader.select() if live_reader is not None else _live_reader(dialect))
    active = select(Newsletter.id).where(Newsletter.archived_at.is_(None))
    return (
        update(Subscription)
        .where(Subscription.reader_id == bindparam("the_reader", type_=Integer()),
               in_list(Subscription.newsletter_id, "newsletter_ids", Integer(), dialect),
               Subscription.newsletter_id.in_(active),
               # Still pending (status_known allows three), said as "neither other" so that only the
               # (reader_id, newsletter_id) index matches two of these conditions. With `= 'pending'`,
               # ix_subscriptions_newsletter_status would too, and without statistics (a new database)
               # PostgreSQL may pick it and read every pending subscription of the newsletter.
               Subscription.status.not_in((literal_column("'confirmed'"), literal_column("'unsubscribed'"))),
               Subscription.pending_since < bindparam("pending_before", type_=UTCDateTime()),
               reader_is_live)
        .values(status=literal_column("'confirmed'"), confirmed_at=bindparam("now", type_=UTCDateTime()))
        .returning(Subscription.newsletter_id)
    )


_EVENT_COLUMNS = ["reader_id", "newsletter_id", "action", "occurred_at", *CONSENT_SOURCE_COLUMNS]


def _event_values(newsletter: Any) -> list[Any]:
    return [bindparam("the_reader", type_=Integer()), newsletter, literal_column("'confirmed'"),
            bindparam("now", type_=UTCDateTime()),
            *(bindparam(f"event_{key}", type_=String()) for key in CONSENT_SOURCE_COLUMNS)]


@cache
def _event_insert() -> Executable:
    values = _event_values(bindparam("newsletter", type_=Integer()))
    return insert(ConsentEvent).values(dict(zip(_EVENT_COLUMNS, values, strict=True)))


@cache
def _whole_confirmation() -> Executable:
    """PostgreSQL: the lock, the guarded UPDATE, its events and welcome mails; rows of the reader and its subscriptions.

    The parts of a WITH all see the database as it was when the statement began, and each other's
    rows only through RETURNING; a data-modifying part always runs, whether the query reads it or not.
    So the rows returned have the statuses from before, and `confirmed` says which this changed.
    """
    live_reader = _live_reader("postgresql").cte("live_reader")
    confirmed = _subscriptions_update("postgresql", live_reader).cte("confirmed")
    events = insert(ConsentEvent).from_select(
        _EVENT_COLUMNS, select(*_event_values(confirmed.c.newsletter_id))).cte("events")
    queued_at = bindparam("queued_at", type_=UTCDateTime())
    welcomes = insert(OutboxMessage).from_select(
        ["kind", "reader_id", "newsletter_ids", "locale", "status", "attempts", "created_at", "next_attempt_at"],
        select(literal_column(f"'{WELCOME}'"), bindparam("the_reader", type_=Integer()),
               func.json_build_array(confirmed.c.newsletter_id), bindparam("locale", type_=String()),
               literal_column("'pending'"), literal_column("0"), queued_at, queued_at)
        .where(in_list(confirmed.c.newsletter_id, "welcome_ids", Integer(), "postgresql")),
    ).cte("welcomes")
    before = statuses("postgresql").subquery()
    return (
        select(live_reader.c.email, live_reader.c.name, before.c.newsletter_id, before.c.status,
               before.c.pending_since, before.c.newsletter_id.in_(select(confirmed.c.newsletter_id)).label("confirmed"))
        .select_from(live_reader)
        .outerjoin(before, true())
        .add_cte(events, welcomes)
    )
