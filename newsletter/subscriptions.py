"""The domain: sign up, confirm, unsubscribe, set preferences, and the admin's actions on a reader.

No Flask request in here.

Every function takes a session and plain values, changes rows, records a ConsentEvent for each
change and leaves the commit to the caller.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache, lru_cache
from typing import Any

from flask_babel import get_locale
from flask_babel import gettext as _
from sqlalchemy import Connection, Integer, Select, bindparam, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from . import confirmation_writes, emails, first_signup, newsletter_cache, outbox
from .catalog import SLUG
from .models import ConsentEvent, Newsletter, OutboxMessage, Reader, Subscription, snapshot, utcnow
from .sql import in_list, statement_at_a_time


class SignupRejected(Exception):
    """The signup can't be taken; `errors` maps each field to what is wrong with it."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(errors)
        self.errors = errors


class UnknownReader(Exception):
    """A signed link names a reader that no longer exists (e.g. erased)."""


class ActionRefused(ValueError):
    """An admin action can't be done on this reader now; the message says why."""


@dataclass(frozen=True)
class Source:
    """Where a change came from, kept in its ConsentEvent as proof."""

    channel: str
    page_url: str | None = None
    form_id: str | None = None
    ip_address: str | None = None
    user_agent: str | None = None
    wording: str | None = None


@dataclass
class SignupResult:
    reader: Reader
    newsletters: list[Newsletter]
    confirmation_queued: bool


@dataclass
class ConfirmResult:
    reader: Reader
    confirmed: list[Newsletter] = field(default_factory=list)
    already_confirmed: list[Newsletter] = field(default_factory=list)
    # Unsubscribed (or signed up again) after the link was sent: the link no longer counts for them.
    lapsed: list[Newsletter] = field(default_factory=list)


def consent_wording(newsletters: Iterable[Newsletter]) -> str:
    """The sentence a signup form shows next to its button, kept as proof of what was agreed to."""
    return _wording(str(get_locale() or "en"), ", ".join(newsletter.name for newsletter in newsletters))


@lru_cache(maxsize=256)
def _wording(locale: str, names: str) -> str:  # `locale` keys the cache: gettext reads the request's language
    return _("Send me %(names)s by email. I can unsubscribe at any time from a link in every email.", names=names)


def check_name(name: str | None) -> str | None:
    """The reader's name, stripped, or ValueError saying why it can't be stored."""
    if name is None:
        return None
    if any(unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") for char in name):
        raise ValueError(_("A name must be one line of text, without control characters."))
    name = name.strip()
    if len(name) > 200:
        raise ValueError(_("A name can be at most 200 characters long."))
    return name or None


def find_newsletters(session: Session, slugs: Iterable[str], *, cached: bool = False) -> list[Newsletter]:
    """The active newsletters named by `slugs`, in that order, or SignupRejected naming each problem.

    `cached` may answer from newsletter_cache, for the signup path only: sign_up checks them again.
    """
    wanted = list(dict.fromkeys(slugs))
    if not wanted:
        raise SignupRejected({"newsletters": [_("Choose at least one newsletter.")]})
    if cached and (known := newsletter_cache.active(session, wanted)) is not None:
        return known
    # Text that can't be a slug (NUL bytes, lone surrogates…) never reaches the database.
    plausible = [slug for slug in wanted if SLUG.fullmatch(slug)]
    found = {n.slug: n for n in session.scalars(select(Newsletter).where(Newsletter.slug.in_(plausible)))}
    problems = []
    for slug in wanted:
        newsletter = found.get(slug)
        if newsletter is None:
            problems.append(_("There is no newsletter called %(slug)r.", slug=slug))
        elif not newsletter.is_active:
            problems.append(_("%(name)s (%(slug)r) is archived and takes no new readers.",
                              name=newsletter.name, slug=slug))
    if problems:
        raise SignupRejected({"newsletters": problems})
    return [found[slug] for slug in wanted]


def _insert_for(session: Session) -> Any:
    return {"postgresql": postgresql.insert, "sqlite": sqlite.insert}[session.get_bind().dialect.name]


def _upsert_locked_reader(session: Session, address: str, name: str | None, now: datetime) -> Reader:
    """The reader with this address, created if new, its row locked until the transaction ends.

    One statement: concurrent signups of one address meet here, one INSERT wins, the others wait
    on the row lock that ON CONFLICT DO UPDATE takes, then see the winner's row.
    """
    statement = _insert_for(session)(Reader).values(email=address, name=name, created_at=now)
    statement = statement.on_conflict_do_update(index_elements=["email"], set_={"email": statement.excluded.email})
    return session.scalars(statement.returning(Reader), execution_options={"populate_existing": True}).one()


def _locked_reader(session: Session, reader_id: int) -> Reader | None:
    """The reader, row-locked; None if there is none or it was erased (its old links no longer work)."""
    return session.scalars(
        select(Reader).where(Reader.id == reader_id, Reader.erased_at.is_(None))
        .with_for_update().execution_options(populate_existing=True)
    ).first()


def _source_row(source: Source) -> dict[str, str | None]:
    """The ConsentEvent columns of CONSENT_SOURCE_COLUMNS for `source`."""
    return {"source": source.channel, "page_url": source.page_url, "form_id": source.form_id,
            "ip_address": source.ip_address, "user_agent": source.user_agent, "wording": source.wording}


def _event_row(reader_id: int, newsletter_id: int | None, action: str, source: Source, when: datetime
               ) -> dict[str, Any]:
    return {"reader_id": reader_id, "newsletter_id": newsletter_id, "action": action, "occurred_at": when,
            **_source_row(source)}


def _record(session: Session, reader: Reader, newsletter: Newsletter | None, action: str, source: Source,
            when: datetime) -> None:
    session.add(ConsentEvent(**_event_row(reader.id, newsletter.id if newsletter else None, action, source, when)))


def sign_up(
    session: Session,
    address: str,
    newsletters: list[Newsletter],
    *,
    source: Source,
    config: Mapping[str, Any],
    name: str | None = None,
) -> SignupResult:
    """Make the reader's subscriptions to `newsletters` (from find_newsletters) pending; queue one confirmation.

    The outcome looks the same to the caller whether the address is new, pending or confirmed.
    A confirmed reader gets no mail; any reader gets at most one confirmation per resend interval.
    """
    now = utcnow()
    new_reader = first_signup.sign_up_new(
        session, address, name, newsletters, now, _source_row(source),
        lambda reader: outbox.message_row(**emails.confirmation(reader, newsletters, config)),
    )
    if new_reader is not None:
        outbox.note_enqueued(session)
        return SignupResult(reader=new_reader, newsletters=newsletters, confirmation_queued=True)

    # A known address, or a newsletter changed since it was looked up: look it up again.
    newsletters = find_newsletters(session, [newsletter.slug for newsletter in newsletters])
    reader = _upsert_locked_reader(session, address, name, now)
    if reader.blocked_at is not None:
        # Answered like any signup (no enumeration), but a blocked address changes and gets nothing.
        return SignupResult(reader=reader, newsletters=newsletters, confirmation_queued=False)
    if name and not reader.name:
        reader.name = name

    existing = {
        s.newsletter_id: s
        for s in session.scalars(select(Subscription).where(Subscription.reader_id == reader.id))
    }
    for newsletter in newsletters:
        subscription = existing.get(newsletter.id)
        if subscription is None:
            subscription = Subscription(reader_id=reader.id, newsletter_id=newsletter.id, status="pending",
                                        created_at=now, pending_since=now)
            session.add(subscription)
            existing[newsletter.id] = subscription
        elif subscription.status == "unsubscribed":
            subscription.status, subscription.pending_since = "pending", now
        else:
            continue
        _record(session, reader, newsletter, "signup_requested", source, now)

    interval = timedelta(seconds=config["NEWSLETTER_CONFIRM_RESEND_INTERVAL"])
    recently_sent = reader.confirmation_sent_at is not None and now - reader.confirmation_sent_at < interval
    queued = False
    if not recently_sent and any(s.status == "pending" for s in existing.values()):
        requested = {n.id for n in newsletters}
        pending_elsewhere = any(s.status == "pending" and nid not in requested for nid, s in existing.items())
        # Only a reader with other pending signups needs the database to list them all.
        pending = pending_newsletters(session, reader) if pending_elsewhere else [
            n for n in newsletters if existing[n.id].status == "pending"]
        if pending:
            emails.enqueue_confirmation(session, reader, pending, config)
            reader.confirmation_sent_at = now
            queued = True
    return SignupResult(reader=reader, newsletters=newsletters, confirmation_queued=queued)


def pending_newsletters(session: Session, reader: Reader) -> list[Newsletter]:
    """The active newsletters the reader asked for and has not confirmed yet."""
    return list(session.scalars(
        select(Newsletter)
        .join(Subscription, Subscription.newsletter_id == Newsletter.id)
        .where(Subscription.reader_id == reader.id, Subscription.status == "pending",
               Newsletter.archived_at.is_(None))
        .order_by(Newsletter.name)
    ))


def subscriptions_of(session: Session, reader_id: int, newsletter_ids: Iterable[int] | None = None
                     ) -> list[tuple[Newsletter, Subscription | None]]:
    """(newsletter, subscription or None) pairs: the given newsletters, or all active ones plus the reader's."""
    query = select(Newsletter, Subscription).outerjoin(
        Subscription, (Subscription.newsletter_id == Newsletter.id) & (Subscription.reader_id == reader_id)
    )
    if newsletter_ids is not None:
        query = query.where(Newsletter.id.in_(list(newsletter_ids)))
    else:
        query = query.where(Newsletter.archived_at.is_(None) | Subscription.id.is_not(None))
    return [(newsletter, subscription) for newsletter, subscription in session.execute(query.order_by(Newsletter.name))]


def get_reader(session: Session, reader_id: int) -> Reader:
    """The reader a signed link names, or UnknownReader."""
    reader = session.get(Reader, reader_id)
    if reader is None:
        raise UnknownReader(reader_id)
    return reader


def _sort_for_confirmation(reader: Reader, pairs: Iterable[tuple[Newsletter, Subscription | None]],
                           issued_at: datetime) -> tuple[ConfirmResult, list[Subscription]]:
    """What a confirmation link issued at `issued_at` would do: (result, the subscriptions it confirms)."""
    result = ConfirmResult(reader=reader)
    to_confirm = []
    # Token times have whole seconds: compare with pending_since cut to the second.
    issued_at = issued_at.replace(microsecond=0)
    for newsletter, subscription in pairs:
        if subscription is not None and subscription.status == "confirmed":
            result.already_confirmed.append(newsletter)
        elif (subscription is not None and subscription.status == "pending" and newsletter.is_active
              and subscription.pending_since is not None
              and issued_at >= subscription.pending_since.replace(microsecond=0)):
            result.confirmed.append(newsletter)
            to_confirm.append(subscription)
        else:
            result.lapsed.append(newsletter)
    return result, to_confirm


def preview_confirmation(session: Session, reader_id: int, newsletter_ids: Iterable[int], *,
                         issued_at: datetime) -> ConfirmResult:
    """What confirm() would do, changing nothing: `confirmed` lists what it would confirm."""
    reader = get_reader(session, reader_id)
    return _sort_for_confirmation(reader, subscriptions_of(session, reader.id, newsletter_ids), issued_at)[0]


_READER_COLUMNS = [column.key for column in Reader.__table__.columns]
_NEWSLETTER_COLUMNS = [column.key for column in Newsletter.__table__.columns]
_SUBSCRIPTION_COLUMNS = ["id", "status", "pending_since"]


@cache
def _with_subscriptions_query(dialect: str) -> Select[Any]:
    # Built once, and read as plain rows: putting a three-entity ORM query together and loading its
    # objects costs more than running it.
    return (
        select(*(getattr(Reader, key).label(f"reader_{key}") for key in _READER_COLUMNS),
               *(getattr(Newsletter, key).label(f"newsletter_{key}") for key in _NEWSLETTER_COLUMNS),
               *(getattr(Subscription, key).label(f"subscription_{key}") for key in _SUBSCRIPTION_COLUMNS))
        .select_from(Reader)
        .outerjoin(Newsletter, in_list(Newsletter.id, "newsletter_ids", Integer(), dialect))
        .outerjoin(Subscription, (Subscription.newsletter_id == Newsletter.id) & (Subscription.reader_id == Reader.id))
        .where(Reader.id == bindparam("the_reader"), Reader.erased_at.is_(None))
        .order_by(Newsletter.name)
    )


def _with_subscriptions(connection: Connection, reader_id: int, newsletter_ids: Iterable[int]
                        ) -> tuple[Reader | None, list[tuple[Newsletter, Subscription | None]]]:
    """The reader (None if missing or erased) and its subscriptions to those of `newsletter_ids` that exist.

    One query; the objects are snapshots in no session, for reading.
    """
    rows = connection.execute(
        _with_subscriptions_query(connection.dialect.name),
        {"the_reader": reader_id, "newsletter_ids": list(newsletter_ids)},
    ).mappings().all()
    if not rows:
        return None, []
    reader = snapshot(Reader, {key: rows[0][f"reader_{key}"] for key in _READER_COLUMNS})
    pairs = []
    for row in rows:
        if row["newsletter_id"] is None:  # none of the newsletters exists any more
            break
        newsletter = snapshot(Newsletter, {key: row[f"newsletter_{key}"] for key in _NEWSLETTER_COLUMNS})
        subscription = None if row["subscription_id"] is None else snapshot(Subscription, {
            "reader_id": reader.id, "newsletter_id": newsletter.id,
            **{key: row[f"subscription_{key}"] for key in _SUBSCRIPTION_COLUMNS}})
        pairs.append((newsletter, subscription))
    return reader, pairs


def confirm(session: Session, reader_id: int, newsletter_ids: Iterable[int], *, issued_at: datetime,
            source: Source, config: Mapping[str, Any]) -> ConfirmResult:
    """Confirm the pending subscriptions a confirmation link was issued for.

    A read, then a write that confirms only what is still to confirm (see confirmation_writes), so
    on PostgreSQL they need no transaction around them. If something changed in between (the link
    pressed twice at once, an unsubscribe, an erasure), the result says how things stand after it.
    """
    newsletter_ids = list(newsletter_ids)
    with statement_at_a_time(session) as connection:
        reader, pairs = _with_subscriptions(connection, reader_id, newsletter_ids)
        if reader is None:
            raise UnknownReader(reader_id)
        result, to_confirm = _sort_for_confirmation(reader, pairs, issued_at)
        if not to_confirm:
            return result
        mails = {newsletter.id: outbox.message_row(**emails.welcome(reader, newsletter, config))
                 for newsletter in result.confirmed if newsletter.send_welcome}
        confirmed = confirmation_writes.record(connection, reader.id, [s.id for s in to_confirm], issued_at,
                                               utcnow(), _source_row(source), mails)
        if confirmed != {newsletter.id for newsletter in result.confirmed}:
            reader, pairs = _with_subscriptions(connection, reader_id, newsletter_ids)
            if reader is None:
                raise UnknownReader(reader_id)
            now_so, _ = _sort_for_confirmation(reader, pairs, issued_at)
            result = ConfirmResult(
                reader=reader,
                confirmed=[n for n in now_so.already_confirmed if n.id in confirmed],
                already_confirmed=[n for n in now_so.already_confirmed if n.id not in confirmed],
                lapsed=now_so.lapsed,
            )
    if confirmed & mails.keys():
        outbox.note_enqueued(session)
    return result


def unsubscribe(session: Session, reader_id: int, newsletter_id: int | None, *, source: Source) -> list[Newsletter]:
    """Unsubscribe from one newsletter, or from all when newsletter_id is None; the newsletters left."""
    reader = _locked_reader(session, reader_id)
    if reader is None:
        raise UnknownReader(reader_id)
    now = utcnow()
    left = []
    ids = None if newsletter_id is None else [newsletter_id]
    for newsletter, subscription in subscriptions_of(session, reader.id, ids):
        if subscription is not None and subscription.status in ("pending", "confirmed"):
            subscription.status, subscription.unsubscribed_at = "unsubscribed", now
            _record(session, reader, newsletter, "unsubscribed", source, now)
            left.append(newsletter)
    return left


def set_preferences(session: Session, reader_id: int, wanted_ids: Iterable[int], *, source: Source
                    ) -> tuple[list[Newsletter], list[Newsletter]]:
    """Make the reader's subscriptions match `wanted_ids`; (joined, left).

    The preferences link reached the reader's mailbox, so joining from it needs no further confirmation.
    """
    reader = _locked_reader(session, reader_id)
    if reader is None:
        raise UnknownReader(reader_id)
    wanted = set(wanted_ids)
    now = utcnow()
    joined, left = [], []
    for newsletter, subscription in subscriptions_of(session, reader.id):
        if newsletter.id in wanted and newsletter.is_active:
            if reader.blocked_at is not None:
                continue  # a blocked address may leave, never join
            if subscription is None:
                subscription = Subscription(reader_id=reader.id, newsletter_id=newsletter.id, created_at=now)
                session.add(subscription)
            if subscription.status != "confirmed":
                subscription.status, subscription.pending_since, subscription.confirmed_at = "confirmed", now, now
                _record(session, reader, newsletter, "confirmed", source, now)
                joined.append(newsletter)
        elif newsletter.id not in wanted and subscription is not None and subscription.status != "unsubscribed":
            subscription.status, subscription.unsubscribed_at = "unsubscribed", now
            _record(session, reader, newsletter, "unsubscribed", source, now)
            left.append(newsletter)
    return joined, left


def resend_confirmation(session: Session, reader_id: int, *, source: Source, config: Mapping[str, Any]
                        ) -> list[Newsletter]:
    """Queue a new confirmation email for every pending subscription, whatever the resend interval; the newsletters.

    The send is recorded (confirmation_sent_at, and a `confirmation_resent` event per newsletter),
    so the public resend interval counts from it. ActionRefused if nothing is pending or the reader
    is blocked or erased.
    """
    reader = _locked_reader(session, reader_id)
    if reader is None:
        raise UnknownReader(reader_id)
    if reader.blocked_at is not None:
        raise ActionRefused("This address is blocked: it gets no email. Unblock it first.")
    if reader.erased_at is not None:
        raise ActionRefused("This reader was erased: there is no address to send to.")
    pending = pending_newsletters(session, reader)
    if not pending:
        raise ActionRefused("This reader has no pending subscription to confirm.")
    now = utcnow()
    emails.enqueue_confirmation(session, reader, pending, config)
    reader.confirmation_sent_at = now
    for newsletter in pending:
        _record(session, reader, newsletter, "confirmation_resent", source, now)
    return pending


def block(session: Session, reader_id: int, *, source: Source) -> list[Newsletter]:
    """Block the address: unsubscribe it from everything, drop its unsent mail, ignore its future signups.

    Returns the newsletters it left; ActionRefused if it is blocked already.
    """
    reader = _locked_reader(session, reader_id)
    if reader is None:
        raise UnknownReader(reader_id)
    if reader.blocked_at is not None:
        raise ActionRefused("This address is blocked already.")
    now = utcnow()
    left = unsubscribe(session, reader.id, None, source=source)
    reader.blocked_at = now
    _record(session, reader, None, "blocked", source, now)
    # A worker that claimed a message first sends it; the rest never leave.
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.reader_id == reader.id, OutboxMessage.status == "pending")
        .values(status="failed", last_error="Not sent: an admin blocked the address.")
        .execution_options(synchronize_session=False)
    )
    return left


def unblock(session: Session, reader_id: int, *, source: Source) -> None:
    """Take signups from the address again (it stays unsubscribed until it signs up and confirms)."""
    reader = _locked_reader(session, reader_id)
    if reader is None:
        raise UnknownReader(reader_id)
    if reader.blocked_at is None:
        raise ActionRefused("This address is not blocked.")
    reader.blocked_at = None
    _record(session, reader, None, "unblocked", source, utcnow())
