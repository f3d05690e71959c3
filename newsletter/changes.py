"""The changes feed: every subscription change in the order it committed, and each change as event JSON.

The feed is made of consent events (models.ConsentEvent). Its order is commit order, not id order:
ids come from a sequence when a row is inserted, and transactions commit in any order, so a poller
that read `id > cursor` would miss a row inserted before its cursor but committed after it (a
signup's transaction still open while a later one commits and is read).

So an event gets its place in the feed, `feed_position`, after it has committed: assign_positions
numbers the committed events that have none, last+1, last+2 … in id order, in one short transaction
(`last`: the last position ever given, kept in feed_state too, since a purge can delete the events
that hold the largest positions, and a client's cursor may be one of them).
On PostgreSQL it first takes a transaction-level advisory lock, so two callers (the feed's view and
the workers) take turns, and reads the max under that lock in the same statement as the UPDATE
(READ COMMITTED: the statement sees every earlier caller's positions, committed before it let go of
the lock). On SQLite every writing transaction begins IMMEDIATE, so writers take turns anyway.
An event whose transaction commits late is numbered by the next call, after everything numbered
before it: a client that reads `feed_position > cursor` never misses it, and positions become
visible in whole blocks, never with a hole that fills later.

Positions are given to every consent event (a resent confirmation, a block), not only to those the
feed shows (EVENT_TYPES), so that none waits in the index of unpositioned events for ever; the feed
skips the others, and its cursor moves past them.

Costs: nothing on the signup request (the event is inserted with no position, as before); the
numbering runs in GET /api/v1/changes before it reads (so the feed is never stale) and in the
outbox worker before it queues webhooks. It looks for an unpositioned event first, without a lock,
so an idle feed costs one index look-up; it numbers at most `batch` events per transaction (an
import writes a million at once; PostgreSQL numbers some 30,000 a second on a small machine).

What the feed shows of readers who are gone:
- an erased reader: every event of theirs, earlier ones included, is rendered with no address and
  no name (`reader.erased` is the last; erasure also records `subscription.unsubscribed` for each
  live subscription before it);
- a reader who never confirmed and is deleted by `newsletter purge-pending`: the rows are
  deleted with their events, so the feed has nothing of them any more (positions have gaps, which
  cursors don't mind, and are never given again). Such a reader was only ever `subscription.pending`: a receiver should treat
  pending as "not subscribed" and may forget a pending address that never confirms.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from .models import ConsentEvent, Newsletter, Reader

# ConsentEvent.action -> the event type the feed and the webhooks say.
EVENT_TYPES: dict[str, str] = {
    "signup_requested": "subscription.pending",
    "confirmed": "subscription.confirmed",
    "unsubscribed": "subscription.unsubscribed",
    "erased": "reader.erased",
    "suppressed": "reader.suppressed",
    "unsuppressed": "reader.unsuppressed",
}
ACTIONS_OF_TYPE: dict[str, str] = {event_type: action for action, event_type in EVENT_TYPES.items()}
# The key of the PostgreSQL advisory lock under which positions are given ("nlfeed" in ASCII).
POSITION_LOCK = 0x6E6C66656564
DEFAULT_BATCH = 10_000
DEADLOCK_DETECTED = "40P01"

# The last position given: the largest kept, or the last one ever given if its event was deleted since.
_LAST = """(SELECT coalesce(max(given), 0) FROM (
        SELECT max(feed_position) AS given FROM consent_events
        UNION ALL SELECT last_position FROM feed_state WHERE id = 1) AS known)"""
_NUMBER = text(f"""
    UPDATE consent_events SET feed_position = numbered.position
    FROM (
        SELECT id, {_LAST} + row_number() OVER (ORDER BY id) AS position
        FROM consent_events WHERE feed_position IS NULL ORDER BY id LIMIT :batch
    ) AS numbered
    WHERE consent_events.id = numbered.id
""")
# (WHERE true: SQLite's parser needs it between INSERT … SELECT and ON CONFLICT.)
_REMEMBER = text("""
    INSERT INTO feed_state (id, last_position) SELECT 1, max(feed_position) FROM consent_events WHERE true
    ON CONFLICT (id) DO UPDATE SET last_position = excluded.last_position
    WHERE excluded.last_position > feed_state.last_position
""")


def assign_positions(session: Session, batch: int = DEFAULT_BATCH, max_batches: int | None = None) -> int:
    """Give feed positions, in commit order, to committed events that have none; how many were given.

    Commits: each batch of at most `batch` events is a transaction of its own. `max_batches` bounds
    the work of one call (a request's); None numbers until none is left. Call it with no
    transaction of your own open: it commits what the session holds.
    """
    given, rounds = 0, 0
    while max_batches is None or rounds < max_batches:
        rounds += 1
        # The cheap look first (the partial index of unpositioned events): no lock when there is nothing to do.
        unpositioned = session.scalar(select(ConsentEvent.id).where(ConsentEvent.feed_position.is_(None)).limit(1))
        session.commit()
        if unpositioned is None:
            break
        count = _number_batch(session, batch)
        given += count
        if count < batch:
            break
    return given


def _number_batch(session: Session, batch: int) -> int:
    """One batch of assign_positions, in a transaction of its own; tried again if PostgreSQL ends it as a deadlock.

    The UPDATE locks the rows it numbers; an erasure updating the same reader's events at that
    moment locks them too, in an order of its own, and PostgreSQL may end one of the two.
    """
    postgresql = session.get_bind().dialect.name == "postgresql"
    attempts = 0
    while True:
        attempts += 1
        try:
            if postgresql:
                # READ COMMITTED whatever the server's default: the UPDATE's snapshot must be taken after
                # the lock is granted, so that it sees the positions of the caller that held it before.
                session.connection(execution_options={"isolation_level": "READ COMMITTED"})
                session.execute(select(func.pg_advisory_xact_lock(POSITION_LOCK)))
            count = session.execute(_NUMBER, {"batch": batch}).rowcount
            if count:
                session.execute(_REMEMBER)
            session.commit()
            return count
        except DBAPIError as error:
            session.rollback()
            if attempts == 3 or getattr(error.orig, "sqlstate", None) != DEADLOCK_DETECTED:
                raise


def last_position(session: Session) -> int:
    """The feed's last position given so far (0 when none): a new reader of the feed starts after it."""
    return session.scalar(text(f"SELECT {_LAST}")) or 0


def changes_after(session: Session, after: int, limit: int, types: Collection[str] | None = None,
                  up_to: int | None = None) -> list[ConsentEvent]:
    """Up to `limit` positioned change events with feed_position > after (and <= up_to), oldest first.

    `types` narrows them to those event types (EVENT_TYPES' values); None: every type.
    """
    actions = list(EVENT_TYPES) if types is None else [ACTIONS_OF_TYPE[t] for t in types if t in ACTIONS_OF_TYPE]
    if not actions:
        return []
    query = (select(ConsentEvent)
             .where(ConsentEvent.feed_position > after, ConsentEvent.action.in_(actions))
             .order_by(ConsentEvent.feed_position).limit(limit))
    if up_to is not None:
        query = query.where(ConsentEvent.feed_position <= up_to)
    return list(session.scalars(query))


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None


def event_payloads(session: Session, events: Sequence[ConsentEvent]) -> list[dict[str, Any]]:
    """The event JSON of each change event, in the order given (one query for their readers and newsletters).

    An erased reader's events carry no address and no name, whenever they happened.
    """
    reader_ids = {event.reader_id for event in events}
    newsletter_ids = {event.newsletter_id for event in events if event.newsletter_id is not None}
    readers = {row.id: row for row in session.execute(
        select(Reader.id, Reader.email, Reader.name, Reader.erased_at).where(Reader.id.in_(reader_ids))
    )} if reader_ids else {}
    slugs = dict(session.execute(
        select(Newsletter.id, Newsletter.slug).where(Newsletter.id.in_(newsletter_ids))
    ).all()) if newsletter_ids else {}
    payloads = []
    for event in events:
        reader = readers.get(event.reader_id)
        known = reader is not None and reader.erased_at is None
        data: dict[str, Any] = {
            "reader": {"id": event.reader_id, "email": reader.email if known else None,
                       "name": reader.name if known else None},
            "newsletter": {"slug": slugs[event.newsletter_id]} if event.newsletter_id in slugs else None,
            "channel": event.source,
            "source": {"page_url": event.page_url, "form_id": event.form_id},
        }
        if event.action in ("suppressed", "unsuppressed"):
            data["reason"] = event.wording  # the reason of the entry put in force, or lifted
        payloads.append({
            "id": f"evt_{event.id}",
            "type": EVENT_TYPES.get(event.action, event.action),
            "timestamp": _iso(event.occurred_at),
            "cursor": str(event.feed_position) if event.feed_position is not None else None,
            "data": data,
        })
    return payloads


def event_payload(session: Session, event_id: int) -> dict[str, Any] | None:
    """The event JSON of one consent event; None when it is gone (its never-confirmed reader was purged)."""
    event = session.get(ConsentEvent, event_id)
    if event is None:
        return None
    return event_payloads(session, [event])[0]


def event_id_of(text_id: str) -> int | None:
    """The consent event id in an event's "evt_<id>", or None if it is not one."""
    digits = text_id.removeprefix("evt_")
    if text_id.startswith("evt_") and digits.isascii() and digits.isdigit() and len(digits) <= 18:
        return int(digits)
    return None
