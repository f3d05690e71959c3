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
from functools import lru_cache
from typing import Any

from flask_babel import get_locale
from flask_babel import gettext as _
from sqlalchemy import delete, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from . import confirmation_writes, emails, first_signup, newsletter_cache, outbox, suppressions
from .catalog import SLUG
from .models import ConsentEvent, Newsletter, OutboxMessage, Reader, Subscription, snapshot, utcnow
from .sql import statement_at_a_time


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
    reader: Reader | None  # None: a suppressed address, for which nothing was stored
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


_JOINERS = "\u200c\u200d"  # ZERO WIDTH NON-JOINER, ZERO WIDTH JOINER
# Characters that show nothing although they are not formatting (Cf): Unicode's Default_Ignorable
# ones of other categories (the Hangul fillers, the combining grapheme joiner, Khmer's inherent vowels,
# Mongolian's variation selectors), and the blank Braille pattern.
_BLANK_LETTERS = frozenset("\u034f\u115f\u1160\u17b4\u17b5\u180b\u180c\u180d\u180f\u3164\uffa0\u2800")


_BLACK_FLAG, _TAGS = "\U0001f3f4", range(0xE0020, 0xE0080)


def _hidden(name: str, index: int) -> bool:
    """Whether name[index] hides or reorders text: formatting (Cf) or a blank letter, but for what emoji need."""
    char = name[index]
    if char in _BLANK_LETTERS:
        return True
    if unicodedata.category(char) != "Cf" or char in _JOINERS:
        return False
    # Tag characters spell a subdivision flag after the black flag (🏴 + "gbsct" + cancel tag).
    preceding = name[:index].rstrip("".join(chr(code) for code in _TAGS))
    return not (ord(char) in _TAGS and preceding.endswith(_BLACK_FLAG))


def _visible(char: str) -> bool:
    """A letter, digit, punctuation mark or symbol that shows (not a mark alone, unassigned or private use)."""
    return unicodedata.category(char)[0] in "LNPS" and char not in _BLANK_LETTERS


def check_name(name: str | None) -> str | None:
    """The reader's name, stripped, or ValueError saying why it can't be stored."""
    if name is None:
        return None
    if any(unicodedata.category(char) in ("Cc", "Cs", "Zl", "Zp") for char in name):
        raise ValueError(_("A name must be one line of text, without control characters."))
    # Direction overrides and isolates reorder the text around a name in our emails and pages, and
    # zero-width characters hide text in it. The two joiners stay: emoji sequences (👩‍💻) and
    # Persian or Indic spelling need them, and they move nothing.
    if any(_hidden(name, index) for index in range(len(name))):
        raise ValueError(_("A name can't contain invisible formatting characters, such as text direction marks."))
    name = name.strip()
    if name and not any(_visible(char) for char in name):
        raise ValueError(_("A name needs at least one visible character."))
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
    A confirmed reader gets no mail. A newsletter pending but not yet named in a confirmation email
    (a second signup box on the page) gets one at once; otherwise a reader gets at most one
    confirmation per resend interval. Each email names every newsletter still pending.
    """
    now = utcnow()
    suppression_key = suppressions.normalized_key(config, address)
    mail = outbox.message_row(kind=emails.CONFIRMATION, reader_id=None, newsletter_ids=[n.id for n in newsletters],
                              locale=emails.current_locale())
    new_reader = first_signup.sign_up_new(session, address, name, newsletters, now, _source_row(source), mail,
                                          suppression_key)
    if new_reader is not None:
        outbox.note_enqueued(session)
        return SignupResult(reader=new_reader, newsletters=newsletters, confirmation_queued=True)

    # A known or suppressed address, or a newsletter changed since it was looked up: look it up again.
    newsletters = find_newsletters(session, [newsletter.slug for newsletter in newsletters])
    if suppressions.stopping_reason(session, suppression_key) is not None:
        # Answered like any signup (no enumeration), but nothing is stored and nothing is sent.
        return SignupResult(reader=None, newsletters=newsletters, confirmation_queued=False)
    # The name is only stored with a new address: anyone may type anyone's address, and the name
    # greets the reader in our emails.
    reader = _upsert_locked_reader(session, address, name, now)
    if reader.blocked_at is not None:
        # Answered like any signup (no enumeration), but a blocked address changes and gets nothing.
        return SignupResult(reader=reader, newsletters=newsletters, confirmation_queued=False)

    # Keyed by the newsletter objects themselves: one session holds one object per row.
    subscriptions = {newsletter: subscription for subscription, newsletter in session.execute(
        select(Subscription, Newsletter).join(Newsletter, Newsletter.id == Subscription.newsletter_id)
        .where(Subscription.reader_id == reader.id))}
    for newsletter in newsletters:
        subscription = subscriptions.get(newsletter)
        if subscription is None:
            subscriptions[newsletter] = Subscription(reader_id=reader.id, newsletter_id=newsletter.id,
                                                     status="pending", created_at=now, pending_since=now)
            session.add(subscriptions[newsletter])
        elif subscription.status == "unsubscribed":
            subscription.status, subscription.pending_since = "pending", now
        else:
            continue
        _record(session, reader, newsletter, "signup_requested", source, now)

    pending = sorted((newsletter for newsletter, subscription in subscriptions.items()
                      if subscription.status == "pending" and newsletter.is_active), key=lambda n: n.name)
    not_yet_named = any(not _named_since_pending(subscriptions[newsletter]) for newsletter in pending)
    interval = timedelta(seconds=config["NEWSLETTER_CONFIRM_RESEND_INTERVAL"])
    resend_due = reader.confirmation_sent_at is None or now - reader.confirmation_sent_at >= interval
    if not pending or not (not_yet_named or resend_due):
        return SignupResult(reader=reader, newsletters=newsletters, confirmation_queued=False)
    if not emails.queue_confirmation(session, reader, pending, config):
        return SignupResult(reader=reader, newsletters=newsletters, confirmation_queued=False)
    reader.confirmation_sent_at = now
    for newsletter in pending:
        subscriptions[newsletter].confirmation_sent_at = now
    return SignupResult(reader=reader, newsletters=newsletters, confirmation_queued=True)


def _named_since_pending(subscription: Subscription) -> bool:
    """Whether a confirmation email named the pending subscription since it last became pending."""
    sent, since = subscription.confirmation_sent_at, subscription.pending_since
    return sent is not None and (since is None or sent >= since)


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


def _sort_for_confirmation(reader: Reader, states: Iterable[tuple[Newsletter, str | None, datetime | None]],
                           issued_at: datetime) -> ConfirmResult:
    """What a confirmation link issued at `issued_at` does, given each (newsletter, status, pending_since)."""
    result = ConfirmResult(reader=reader)
    # Token times have whole seconds: compare with pending_since cut to the second.
    issued_at = issued_at.replace(microsecond=0)
    for newsletter, status, pending_since in states:
        if status == "confirmed":
            result.already_confirmed.append(newsletter)
        elif (status == "pending" and newsletter.is_active and pending_since is not None
              and issued_at >= pending_since.replace(microsecond=0)):
            result.confirmed.append(newsletter)
        else:
            result.lapsed.append(newsletter)
    return result


def preview_confirmation(session: Session, reader_id: int, newsletter_ids: Iterable[int], *,
                         issued_at: datetime) -> ConfirmResult:
    """What confirm() would do, changing nothing: `confirmed` lists what it would confirm."""
    reader = get_reader(session, reader_id)
    states = [(newsletter, *((None, None) if s is None else (s.status, s.pending_since)))
              for newsletter, s in subscriptions_of(session, reader.id, newsletter_ids)]
    return _sort_for_confirmation(reader, states, issued_at)


def confirm(session: Session, reader_id: int, newsletter_ids: Iterable[int], *, issued_at: datetime,
            source: Source, config: Mapping[str, Any]) -> ConfirmResult:
    """Confirm the pending subscriptions a confirmation link was issued for.

    The link names the reader and the newsletters, which is enough to know which welcome emails to
    queue before reading anything; confirmation_writes then reads and writes the rest, on PostgreSQL
    in a single statement. If something changed the subscriptions as it ran (the link pressed twice
    at once, an unsubscribe), the result says how things stand after it.
    """
    newsletter_ids = list(newsletter_ids)
    newsletters = newsletter_cache.active_by_id(session, newsletter_ids)
    if newsletters is None:  # archived, deleted or new since the cache was filled: ask the database
        newsletters = list(session.scalars(select(Newsletter).where(Newsletter.id.in_(newsletter_ids))))
    newsletters.sort(key=lambda newsletter: newsletter.name)
    active = [newsletter for newsletter in newsletters if newsletter.is_active]
    welcomes = [newsletter.id for newsletter in active if newsletter.send_welcome]

    with statement_at_a_time(session) as connection:
        written = confirmation_writes.record(connection, reader_id, [n.id for n in active], issued_at, utcnow(),
                                             _source_row(source), welcomes, None)
        if written is None:
            raise UnknownReader(reader_id)
        reader = snapshot(Reader, {"id": reader_id, "email": written.reader[0], "name": written.reader[1]})
        welcomed = written.confirmed.intersection(welcomes)
        if welcomed and suppressions.stopping_reason(connection, suppressions.normalized_key(config, reader.email)):
            # The address is known only now, from the statement that queued the welcomes: take them back
            # before any worker sends them (a worker that claimed one first meets the outbox's own guard).
            connection.execute(delete(OutboxMessage).where(
                OutboxMessage.reader_id == reader_id, OutboxMessage.kind == emails.WELCOME,
                OutboxMessage.status == "pending", OutboxMessage.attempts == 0))
            welcomed = set()
        result = _sort_for_confirmation(reader, [(n, *written.before.get(n.id, (None, None))) for n in newsletters],
                                        issued_at)
        if {newsletter.id for newsletter in result.confirmed} != written.confirmed:
            # Changed by another request since the statement began: say how things are now.
            now_so = {row.newsletter_id: row.status for row in connection.execute(
                confirmation_writes.statuses(connection.dialect.name),
                {"the_reader": reader_id, "newsletter_ids": newsletter_ids})}
            result = ConfirmResult(reader=reader)
            for newsletter in newsletters:
                if newsletter.id in written.confirmed:
                    result.confirmed.append(newsletter)
                elif now_so.get(newsletter.id) == "confirmed":
                    result.already_confirmed.append(newsletter)
                else:
                    result.lapsed.append(newsletter)
    if welcomed:
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

    The send is recorded (the reader's and each subscription's confirmation_sent_at, and a
    `confirmation_resent` event per newsletter), so the public resend interval counts from it.
    ActionRefused if nothing is pending or the reader is blocked or erased.
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
    # In the reader's language, not the admin's.
    locale = outbox.reader_locale(session, reader.id)
    if not emails.queue_confirmation(session, reader, pending, config, locale=locale):
        raise ActionRefused("This address is on the suppression list: it gets no email. Lift its entry first.")
    # This email names every pending newsletter: an import's confirmation still waiting for its turn
    # would be a second one. (One already due may be in a worker's hands: that one is left.)
    session.execute(
        delete(OutboxMessage)
        .where(OutboxMessage.reader_id == reader.id, OutboxMessage.kind == outbox.IMPORT_CONFIRMATION_KIND,
               OutboxMessage.status == "pending", OutboxMessage.attempts == 0, OutboxMessage.next_attempt_at > now)
        .execution_options(synchronize_session=False)
    )
    reader.confirmation_sent_at = now
    session.execute(
        update(Subscription)
        .where(Subscription.reader_id == reader.id, Subscription.newsletter_id.in_([n.id for n in pending]))
        .values(confirmation_sent_at=now)
        .execution_options(synchronize_session=False)
    )
    for newsletter in pending:
        _record(session, reader, newsletter, "confirmation_resent", source, now)
    return pending


def block(session: Session, reader_id: int, *, source: Source, config: Mapping[str, Any],
          admin_id: int | None = None) -> list[Newsletter]:
    """Block the address: unsubscribe it from everything, drop its unsent mail, ignore its future signups.

    The address goes on the suppression list (reason `blocked`), so the list shows every address
    we don't mail. Returns the newsletters it left; ActionRefused if it is blocked already.
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
    suppressions.suppress(session, config, reader.email, reason="blocked", source="admin", admin_id=admin_id,
                          detail="Blocked from the reader's page.", when=now)
    # A worker that claimed a message first sends it; the rest never leave.
    session.execute(
        update(OutboxMessage)
        .where(OutboxMessage.reader_id == reader.id, OutboxMessage.status == "pending")
        .values(status="failed", last_error="Not sent: an admin blocked the address.")
        .execution_options(synchronize_session=False)
    )
    return left


def unblock(session: Session, reader_id: int, *, source: Source, config: Mapping[str, Any],
            admin_id: int | None = None) -> None:
    """Take signups from the address again (it stays unsubscribed until it signs up and confirms).

    Its `blocked` suppression is lifted; an entry of another reason (it bounced, complained) stays.
    """
    reader = _locked_reader(session, reader_id)
    if reader is None:
        raise UnknownReader(reader_id)
    if reader.blocked_at is None:
        raise ActionRefused("This address is not blocked.")
    reader.blocked_at = None
    _record(session, reader, None, "unblocked", source, utcnow())
    entry = suppressions.in_force(session, suppressions.normalized_key(config, reader.email))
    if entry is not None and entry.reason == "blocked":
        suppressions.lift(session, entry.id, admin_id=admin_id, note="Unblocked from the reader's page.")
