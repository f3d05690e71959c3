"""The active newsletters, remembered for a few seconds in each process, for signup and confirmation.

A signup only needs to know that the slugs it names are active newsletters, and their ids and names;
asking the database on every signup costs more than the rest of the lookup. The entries are
Newsletter objects that belong to no session: read them, never add them to one.

A stale entry can't subscribe anyone to an archived newsletter: sign_up checks the (id, slug) pairs
against the database in the statement that creates the reader, and takes the slow path, which looks
everything up again, when they no longer match. What it can do is show, for at most TTL seconds, a
name that was changed in another process; changes made in this process drop the cache at once.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Engine, event, inspect, select
from sqlalchemy.orm import Session

from .models import Newsletter, snapshot

TTL = 10.0


@dataclass(frozen=True)
class _Snapshot:
    by_slug: dict[str, Newsletter]
    by_id: dict[int, Newsletter]
    taken_at: float


# One snapshot per engine: tests (and apps) in one process may use several databases.
_snapshots: weakref.WeakKeyDictionary[Engine, _Snapshot] = weakref.WeakKeyDictionary()


def active(session: Session, slugs: Sequence[str]) -> list[Newsletter] | None:
    """The active newsletters named by `slugs`, in that order; None if any is unknown or archived here.

    None sends the caller to the database, which then says what is wrong with which slug.
    """
    by_slug = _current(session).by_slug
    return _all_or_none([by_slug.get(slug) for slug in slugs])


def active_by_id(session: Session, ids: Sequence[int]) -> list[Newsletter] | None:
    """The active newsletters with these ids, in that order; None if any is unknown or archived here."""
    by_id = _current(session).by_id
    return _all_or_none([by_id.get(newsletter_id) for newsletter_id in ids])


def _all_or_none(found: list[Newsletter | None]) -> list[Newsletter] | None:
    if any(newsletter is None for newsletter in found):
        return None
    return found  # type: ignore[return-value]


def _current(session: Session) -> _Snapshot:
    engine = session.get_bind()
    snapshot = _snapshots.get(engine)
    if snapshot is None or time.monotonic() - snapshot.taken_at > TTL:
        snapshot = _take(session)
        _snapshots[engine] = snapshot
    return snapshot


def _take(session: Session) -> _Snapshot:
    columns = [column.key for column in inspect(Newsletter).column_attrs]
    rows = session.execute(select(*(getattr(Newsletter, key) for key in columns))
                           .where(Newsletter.archived_at.is_(None))).all()
    newsletters = [snapshot(Newsletter, dict(row._mapping)) for row in rows]
    return _Snapshot({n.slug: n for n in newsletters}, {n.id: n for n in newsletters}, time.monotonic())


def forget(engine: Engine) -> None:
    _snapshots.pop(engine, None)


@event.listens_for(Session, "after_flush")
def _forget_on_change(session: Session, flush_context: object) -> None:
    if any(isinstance(obj, Newsletter) for obj in (*session.new, *session.dirty, *session.deleted)):
        session.info["newsletters_changed"] = True
        forget(session.get_bind())


@event.listens_for(Session, "after_commit")
def _forget_on_commit(session: Session) -> None:
    # Again: another request may have taken a snapshot between the flush and the commit.
    if session.info.pop("newsletters_changed", False):
        forget(session.get_bind())
