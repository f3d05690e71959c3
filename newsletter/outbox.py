"""The transactional outbox: enqueue in the caller's transaction; claim, render, send and retry due emails.

A row says what to send (the kind, the reader, the newsletters, the language), not the finished
email: the sender renders it when it claims it (emails.render), for the reader as they are then.
Rows queued before migration 0011 hold a rendered email and are sent as they are.
"""

from __future__ import annotations

import contextlib
import email.policy
import logging
import re
import smtplib
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from functools import lru_cache
from typing import Any

from flask import Flask, current_app
from flask_sqlalchemy.session import Session as FlaskSession
from sqlalchemy import Select, and_, bindparam, event, exists, func, insert, not_, or_, select, update
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.orm import Session

from . import emails, metrics, outages, suppressions
from .mailer import PermanentFailure, RecipientDeferred, RecipientRefused, RelayUnavailable, Transport, transport_for
from .models import OUTBOX_EMAIL_KINDS, OUTBOX_STATUSES, OutboxMessage, Reader, utcnow

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=1)
# Long List-Unsubscribe URLs must stay whole: fold only where RFC 5322 demands it, never encode them.
MESSAGE_POLICY = email.policy.SMTP.clone(max_line_length=998)


def enqueue(session: Session, *, kind: str, reader_id: int, newsletter_ids: list[int], locale: str | None,
            next_attempt_at: datetime | None = None) -> None:
    """Queue an email (what to send: message_row's arguments); it is sent only if the transaction commits."""
    # A Core INSERT: nothing reads the row back, and the ORM's unit of work costs more than the send.
    session.connection().execute(insert(OutboxMessage), message_row(
        kind=kind, reader_id=reader_id, newsletter_ids=newsletter_ids, locale=locale, next_attempt_at=next_attempt_at))
    note_enqueued(session)


def message_row(*, kind: str, reader_id: int | None, newsletter_ids: list[int], locale: str | None,
                next_attempt_at: datetime | None = None) -> dict[str, Any]:
    """The outbox_messages row of an email to queue, for an INSERT: what to send, nothing rendered.

    `kind` is one of OUTBOX_EMAIL_KINDS; the sender renders it for the reader as they are when it
    leaves (emails.render). Due now unless `next_attempt_at` says later.
    """
    now = utcnow()
    return {
        "kind": kind,
        "reader_id": reader_id,
        "newsletter_ids": newsletter_ids,
        "locale": locale,
        "status": "pending",
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": next_attempt_at or now,
    }


def note_enqueued(session: Session) -> None:
    """Wake the in-process drainer when this transaction commits."""
    session.info["outbox_enqueued"] = True


@lru_cache(maxsize=64)
def _domain_of(mail_from: str) -> str:
    return Address(addr_spec=_address_of(mail_from)).domain or "localhost"


def _address_of(header_value: str) -> str:
    return parseaddr(header_value)[1] or "newsletters@localhost"


def new_message_id(mail_from: str) -> str:
    """A Message-ID in the sender's domain, given once (at the first claim) and kept for every attempt."""
    return make_msgid(idstring="newsletter", domain=_domain_of(mail_from))


def compose(rendered: emails.Rendered, message_id: str, sent_at: datetime | None = None) -> EmailMessage:
    """The EmailMessage of a rendered email; the same Message-ID on every attempt.

    Dated when it is sent (`sent_at`, default now), not when it was queued: an import's
    confirmations leave hours or days after the import, and mail dated days back is scored as spam.
    """
    message = EmailMessage(policy=MESSAGE_POLICY)
    message["Subject"] = rendered.subject
    message["From"] = rendered.mail_from
    # Address() quotes the display name and refuses CR/LF: no header injection through names.
    # Built from parts, it also takes internationalized local parts (sent with SMTPUTF8).
    username, _, domain = rendered.to_address.rpartition("@")
    message["To"] = Address(display_name=rendered.to_name or "", username=username, domain=domain)
    message["Date"] = format_datetime(sent_at or utcnow())
    message["Message-ID"] = message_id
    for name, value in rendered.headers.items():
        message[name] = value
    message.set_content(rendered.body_text)
    message.add_alternative(rendered.body_html, subtype="html")
    return message


def is_legacy(row: OutboxMessage) -> bool:
    """Whether the row holds an email rendered when it was queued (before migration 0011): sent as it is."""
    return row.body_text is not None


def legacy_email(row: OutboxMessage) -> emails.Rendered:
    """The email a row queued before the upgrade holds."""
    return emails.Rendered(row.mail_from or "", row.to_address or "", row.to_name, row.subject or "",
                           row.body_text or "", row.body_html or "", dict(row.headers or {}))


@dataclass
class DrainResult:
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    # Not sent because the address was suppressed by the time its turn came (failed, never retried).
    suppressed: int = 0
    # Set when the relay can't take mail: why. Sending stops there, and no message spent an attempt.
    stopped_by_error: str | None = None


# The same refusal at RCPT for this many different recipients in a row is the relay's, not theirs.
SAME_REFUSAL_LIMIT = 3


class RefusalGuard:
    """Tells a relay refusing everyone (relay access denied, our sender rejected) from readers' bounces.

    The relay's reply without its addresses is compared: when the same one comes for
    SAME_REFUSAL_LIMIT different recipients in a row, with no message sent in between, it is the
    relay's problem: no bounce is recorded for it and sending pauses, as when the relay is away.
    A message sent clears it.
    """

    def __init__(self) -> None:
        self.reply: str | None = None
        self.recipients: set[str] = set()
        self.reported = False

    def relay_wide(self, diagnostic: str, recipient: str) -> bool:
        """Note one refusal at RCPT; whether it is now the relay's refusal of every recipient."""
        reply = without_addresses(diagnostic)
        if reply != self.reply:
            self.reply, self.recipients, self.reported = reply, set(), False
        self.recipients.add(recipient.lower())
        return len(self.recipients) >= SAME_REFUSAL_LIMIT

    def clear(self) -> None:
        self.reply, self.recipients, self.reported = None, set(), False


def _backoff(attempts: int, base_seconds: int) -> timedelta:
    # The exponent stops growing: a message put off for days would overflow a timedelta.
    return min(timedelta(seconds=base_seconds * 2 ** min(max(attempts - 1, 0), 30)), MAX_BACKOFF)


def _lease(config: dict[str, Any]) -> timedelta:
    # Long enough for connect + send with every SMTP timeout used up; a crashed sender's message is due again after it.
    return timedelta(seconds=4 * config["NEWSLETTER_SMTP_TIMEOUT"] + 60)


@dataclass(frozen=True)
class Claim:
    """A message leased for sending: its attempts count with this one (to give it back), and the email.

    `address` is the one it goes to (the reader's when it was claimed): a refusal of it is recorded
    as that address's bounce. `suppressed` (the suppression's reason, or why the reader no longer
    wants it: NOT_PENDING_ANY_MORE, NOT_SUBSCRIBED_ANY_MORE, SUPERSEDED, READER_GONE) instead: the
    message may no longer be sent, and it was marked failed in the claiming transaction; there is
    nothing to send.
    """

    row_id: int
    attempts: int
    message: EmailMessage | None
    build_error: Exception | None
    suppressed: str | None = None
    address: str = ""


@dataclass(frozen=True)
class Outcome:
    """What became of a claimed message, kept until the database has taken it."""

    claim: Claim
    error: Exception | None


def claim_next(session: Session, config: dict[str, Any]) -> Claim | None:
    """Lease the next due email, render it and commit; None when nothing is due.

    Claiming is a short transaction of its own (FOR UPDATE SKIP LOCKED on PostgreSQL) that leases the
    message by moving its next attempt past the send: other workers skip it, and no transaction (or
    SQLite's write lock) stays open while SMTP talks. If the sender dies, the lease runs out and the
    message is sent again, with the same Message-ID (given at the first claim and stored). Only
    emails (OUTBOX_EMAIL_KINDS) are claimed here; webhook rows have their own sender.

    The email is rendered here for the reader as they are now (emails.render): their current address
    and name, links signed now. A row queued before the upgrade holds its email and is sent as it is.
    An erased (or deleted) reader's email is never sent. What the reader did meanwhile is checked
    (_still_wanted): a confirmation names only the newsletters still pending and active, and none
    is sent when none is left or a later confirmation names them all; a welcome only while its
    subscription is confirmed. Those not sent are marked failed with a "Not sent: …" reason that
    `outbox retry` leaves alone. An import's confirmation is held back (no attempt spent) to keep
    NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR; the next due message is claimed then. A row without a
    language (a welcome) takes the reader's (reader_locale) and keeps it.
    """
    while True:
        now = utcnow()
        row = session.scalars(due_emails(now).limit(1).with_for_update(skip_locked=True)).first()
        if row is None:
            session.rollback()
            return None
        reader: Reader | None = None
        reason: str | None = None
        if is_legacy(row):
            address = row.to_address or ""
        else:
            reader = session.get(Reader, row.reader_id) if row.reader_id is not None else None
            if reader is None or reader.erased_at is not None:
                reason, address = READER_GONE, ""
            else:
                address = reader.email
        if reason is None:
            # The last line of defence: whatever queued it, no email goes to an address suppressed since.
            stopping = suppressions.mail_stopped(session, config, address)
            reason = stopping.reason if stopping is not None else None
        newsletter_ids = list(row.newsletter_ids or [])
        if reason is None and reader is not None:
            newsletter_ids, reason = _still_wanted(session, row, now)
        if reason is None and row.kind == IMPORT_CONFIRMATION_KIND and _postpone_for_rate(session, config, row, now):
            session.commit()
            continue
        if reason is not None:
            row.status, row.next_attempt_at = "failed", now
            row.last_error = not_sent_error(reason)
            claim = Claim(row.id, row.attempts, None, None, suppressed=reason)
            session.commit()
            return claim
        break
    row.attempts += 1
    row.next_attempt_at = now + _lease(config)
    message: EmailMessage | None = None
    build_error: Exception | None = None
    if reader is not None and row.locale is None:
        # A welcome is queued without a language: it goes out in the one the reader was asked to confirm in.
        row.locale = reader_locale(session, reader.id) or "en"
    try:
        rendered = legacy_email(row) if reader is None else emails.render(
            session, row.kind, reader, newsletter_ids, row.locale, config)
        if row.message_id is None:
            row.message_id = new_message_id(rendered.mail_from)
        message = compose(rendered, row.message_id, now)
    except ValueError as error:  # an address or name no email can carry, no newsletter left: never sendable
        build_error = error
    except SQLAlchemyError:  # the database's trouble (a restart), not the message's: the run loop's to tell
        raise
    except Exception as error:  # noqa: BLE001 (a bug in rendering: the attempt is spent, the sender goes on)
        log.exception("outbox message %s could not be rendered", row.id)
        build_error = error
    claim = Claim(row.id, row.attempts, message, build_error, address=address)
    session.commit()
    return claim


SUPPRESSED_PREFIX = "Not sent: the address is suppressed"
# imports.CONFIRMATION_KIND (imports imports this module).
IMPORT_CONFIRMATION_KIND = "import_confirmation"
# The `suppressed` reason of an import's confirmation whose reader no longer waits to confirm.
NOT_PENDING_ANY_MORE = "not_pending_any_more"
# The `suppressed` reason of an email whose reader was erased (or deleted) before it left.
READER_GONE = "reader_gone"
# The `suppressed` reason of a welcome whose reader left the newsletter (or it was archived) before it left.
NOT_SUBSCRIBED_ANY_MORE = "not_subscribed_any_more"
# The `suppressed` reason of a confirmation whose newsletters a later confirmation of the reader names.
SUPERSEDED = "superseded"
WELCOME_KIND = "welcome"  # emails.WELCOME


def not_sent_error(reason: str) -> str:
    """The last_error of a message not sent because its address is suppressed for `reason`."""
    # Starts with CANCELLED_PREFIX: `outbox retry` leaves it alone (lift the suppression, then sign up again).
    if reason == NOT_PENDING_ANY_MORE:
        return "Not sent: the reader no longer waits to confirm (unsubscribed, confirmed or erased meanwhile)"
    if reason == READER_GONE:
        return "Not sent: the reader was erased"
    if reason == NOT_SUBSCRIBED_ANY_MORE:
        return "Not sent: the reader is no longer subscribed (unsubscribed, or the newsletter archived, meanwhile)"
    if reason == SUPERSEDED:
        return "Not sent: a later confirmation names the same newsletters"
    return f"{SUPPRESSED_PREFIX} ({reason.replace('_', ' ')})"


def due_emails(now: datetime) -> Select[tuple[OutboxMessage]]:
    """The pending emails due at `now`, the next first: what the sender claims.

    `endpoint_id IS NULL` keeps to ix_outbox_messages_email_due, which holds no webhook row: those
    stay pending and due for days (behind an earlier delivery, or with their endpoint switched off)
    and the claim would otherwise read them all before each email.
    """
    return (select(OutboxMessage)
            .where(OutboxMessage.status == "pending", OutboxMessage.endpoint_id.is_(None),
                   OutboxMessage.next_attempt_at <= now, OutboxMessage.kind.in_(OUTBOX_EMAIL_KINDS))
            .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id))


CONFIRMATION_KINDS = ("confirmation", IMPORT_CONFIRMATION_KIND)


def reader_locale(session: Session, reader_id: int) -> str | None:
    """The language of the reader's latest confirmation email (the signup's), None if they have none.

    Not the language of the browser that presses its link or of an admin resending it: a reader
    who signed up in Ukrainian gets their welcome in Ukrainian.
    """
    return session.scalar(
        select(OutboxMessage.locale)
        .where(OutboxMessage.reader_id == reader_id, OutboxMessage.locale.is_not(None),
               OutboxMessage.kind.in_(CONFIRMATION_KINDS))
        .order_by(OutboxMessage.id.desc()).limit(1))


def _still_wanted(session: Session, row: OutboxMessage, now: datetime) -> tuple[list[int], str | None]:
    """What the email of `row` may still name, read now; or the reason it is not sent at all.

    A confirmation names only the newsletters still pending and active (a link for anything else
    confirms nothing), and is not sent when a later confirmation of the reader, due or being sent,
    names all of them: several signup boxes filled before the sender runs give one email. A welcome
    is sent only while its subscription is confirmed and its newsletter active.
    """
    from .models import Newsletter, Subscription

    ids = list(row.newsletter_ids or [])
    if row.kind == WELCOME_KIND:
        welcomed = session.scalar(select(exists().where(
            Subscription.reader_id == row.reader_id, Subscription.newsletter_id.in_(ids),
            Subscription.status == "confirmed", Newsletter.id == Subscription.newsletter_id,
            Newsletter.archived_at.is_(None))))
        return ids, None if welcomed else NOT_SUBSCRIBED_ANY_MORE
    if row.kind not in CONFIRMATION_KINDS:
        return ids, None
    pending = set(session.scalars(
        select(Subscription.newsletter_id)
        .join(Newsletter, Newsletter.id == Subscription.newsletter_id)
        .where(Subscription.reader_id == row.reader_id, Subscription.newsletter_id.in_(ids),
               Subscription.status == "pending", Newsletter.archived_at.is_(None))))
    if not pending:
        return [], NOT_PENDING_ANY_MORE
    later = session.scalars(
        select(OutboxMessage.newsletter_ids)
        .where(OutboxMessage.reader_id == row.reader_id, OutboxMessage.id > row.id,
               OutboxMessage.status == "pending", OutboxMessage.kind.in_(CONFIRMATION_KINDS),
               OutboxMessage.body_text.is_(None),
               # Due, or claimed by a sender right now; not one an import spaced for days later.
               or_(OutboxMessage.next_attempt_at <= now, OutboxMessage.attempts > 0)))
    if any(pending <= set(named or []) for named in later):
        return [], SUPERSEDED
    return [newsletter_id for newsletter_id in ids if newsletter_id in pending], None


def import_confirmations_waiting(session: Session) -> int:
    """How many import confirmations wait for their turn at NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR (none tried yet)."""
    return session.scalar(select(func.count()).select_from(OutboxMessage).where(
        OutboxMessage.status == "pending", OutboxMessage.kind == IMPORT_CONFIRMATION_KIND,
        OutboxMessage.attempts == 0)) or 0


def _postpone_for_rate(session: Session, config: dict[str, Any], row: OutboxMessage, now: datetime) -> bool:
    """Keep import confirmations to NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR at send time; True if `row` waits.

    The import spaced them when it queued them, but those held back by an outage (relay, worker)
    fall due together: one leaves per 3600/rate seconds. When one was sent more recently than that,
    every pending confirmation is moved later by the same amount (one UPDATE), so that they keep
    their spacing and the first leaves one interval after the last sent. No attempt is spent.
    """
    interval = timedelta(seconds=3600 / config["NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR"])
    # next_attempt_at of a sent message is its lease's end, after its sent_at: the range keeps to
    # ix_outbox_messages_due (status, next_attempt_at) instead of reading every sent confirmation.
    last_sent = session.scalar(
        select(func.max(OutboxMessage.sent_at))
        .where(OutboxMessage.status == "sent", OutboxMessage.next_attempt_at > now - interval,
               OutboxMessage.kind == IMPORT_CONFIRMATION_KIND, OutboxMessage.sent_at > now - interval))
    if last_sent is None:
        return False
    if last_sent.tzinfo is None:
        last_sent = last_sent.replace(tzinfo=UTC)
    delay = last_sent + interval - row.next_attempt_at
    # Computed here, not in SQL: SQLite has no interval arithmetic on these columns.
    later = session.execute(
        select(OutboxMessage.id, OutboxMessage.next_attempt_at)
        .where(OutboxMessage.status == "pending", OutboxMessage.kind == IMPORT_CONFIRMATION_KIND,
               OutboxMessage.next_attempt_at >= row.next_attempt_at)).all()
    session.connection().execute(
        update(OutboxMessage.__table__).where(OutboxMessage.__table__.c.id == bindparam("the_id"))
        .values(next_attempt_at=bindparam("the_time")),
        [{"the_id": id_, "the_time": due + delay} for id_, due in later])
    session.expire(row)
    return True


def _verdict(error: Exception | None) -> str:
    """sent, relay (not the message's fault), permanent (this message never goes) or temporary."""
    if error is None:
        return "sent"
    if isinstance(error, (RelayUnavailable, OSError, smtplib.SMTPServerDisconnected, smtplib.SMTPConnectError)):
        return "relay"
    if isinstance(error, (PermanentFailure, smtplib.SMTPNotSupportedError, ValueError)):
        # Refused for good (5xx), or a message this server can't take (e.g. no SMTPUTF8).
        return "permanent"
    # A 4xx for this message, or an error the transport could not classify: it spends an attempt,
    # so one message that always breaks ends up failed instead of holding up the rest.
    return "temporary"


def record_outcome(session: Session, outcome: Outcome, config: dict[str, Any], result: DrainResult,
                   guard: RefusalGuard | None = None) -> None:
    """Write what became of a claimed message and commit; a message deleted or cancelled meanwhile stays so.

    `guard` follows refusals at RCPT across messages (see RefusalGuard); the Sender keeps one.
    """
    claim, error = outcome.claim, outcome.error
    verdict = _verdict(error)
    if verdict == "relay" and result.sent and getattr(error, "mid_message", False):
        # The relay took a message in this very drain, then broke off while taking this one (hung up
        # at its recipient, say): this message's trouble, so it spends an attempt as a 4xx would.
        verdict = "temporary"
    row = session.get(OutboxMessage, claim.row_id, with_for_update=True, populate_existing=True)
    if row is None:
        # purge-pending or a deletion took it while it was being sent: nothing is left to record.
        session.rollback()
        log.warning("outbox message %s was deleted while being sent (%s); nothing to record", claim.row_id, verdict)
        return
    if row.status != "pending":
        # Erasure or a block cancelled it meanwhile; its record (and what it scrubbed) stands.
        session.rollback()
        log.info("outbox message %s became %s while being sent (%s); left as it is", row.id, row.status, verdict)
        return
    if guard is not None and verdict == "sent":
        guard.clear()
    elif guard is not None and isinstance(error, RecipientRefused) and guard.relay_wide(error.diagnostic, claim.address):
        if not guard.reported:
            guard.reported = True
            log.error("outbox: the relay gave the same refusal for %s different recipients in a row (%s): "
                      "taken as the relay's own problem, not the readers'; no bounce is recorded for it and "
                      "sending pauses until the relay takes mail again", SAME_REFUSAL_LIMIT,
                      without_addresses(error.diagnostic))
        verdict = "relay"
        error = RelayUnavailable(f"the relay refuses every recipient: {error.diagnostic}")
    now = utcnow()
    if verdict == "sent":
        row.status, row.sent_at, row.last_error = "sent", now, None
    else:
        row.last_error = describe_error(error)
    if verdict == "relay":
        if row.attempts == claim.attempts:  # not claimed again by another worker after the lease ran out
            # Due now, behind the others already due: a message that itself makes the relay hang up
            # can't hold up the rest, and none spends an attempt while the relay is away.
            row.attempts, row.next_attempt_at = claim.attempts - 1, now
    elif verdict == "permanent" or (verdict == "temporary"
                                    and row.attempts >= config["NEWSLETTER_OUTBOX_MAX_ATTEMPTS"]
                                    and _relay_took_later_mail(session, row.id)):
        # For a failed message, next_attempt_at keeps when it failed (what `outbox retry --since` reads).
        row.status, row.next_attempt_at = "failed", now
    elif verdict == "temporary":
        # Out of attempts while the relay puts off every message (full, greylisting all): that is the
        # relay's trouble, not this message's, so it waits at the longest back-off instead of failing.
        row.next_attempt_at = now + _backoff(row.attempts, config["NEWSLETTER_OUTBOX_RETRY_BASE"])
    bounce = _record_bounce(session, config, row, claim.address, error) if row.status == "failed" else None
    status, attempts, next_attempt_at, last_error = row.status, row.attempts, row.next_attempt_at, row.last_error
    session.commit()
    if bounce:
        log.warning("outbox message %s: the relay refused its recipient (%s)", claim.row_id, bounce)
    if verdict == "sent":
        result.sent += 1
    elif verdict == "relay":
        result.stopped_by_error = last_error
    elif status == "failed":
        result.failed += 1
        log.warning("outbox message %s failed after %s attempts: %s", claim.row_id, attempts, without_addresses(last_error))
    else:
        result.retrying += 1
        log.info("outbox message %s will be retried at %s: %s", claim.row_id, next_attempt_at,
                 without_addresses(last_error))


def _record_bounce(session: Session, config: dict[str, Any], row: OutboxMessage, address: str,
                   error: Exception | None) -> str | None:
    """Record a failed message's refusal at RCPT as a bounce of its address, in the outcome's transaction.

    A 5xx at RCPT is what mailer.classify_refusal says of it (5.1.x, 5.2.1: hard bounce; X.2.2:
    soft bounce; the relay's policy, e.g. 5.7.1: none); a 4xx that lasted until the message failed
    counts once as a soft bounce. Refusals at DATA are about the message (content, size), not the
    address: none is recorded for them. Returns what was recorded, for the log (no address in it).
    """
    kind: str | None
    if isinstance(error, RecipientRefused):
        kind = error.bounce
    elif isinstance(error, RecipientDeferred):
        kind = "soft_bounce"
    else:
        return None
    if kind is None:
        return None
    recorded = suppressions.record_event(session, config, address, kind=kind, provider="smtp",
                                         diagnostic=error.diagnostic, provider_event_id=row.message_id)
    entry = recorded.suppression
    stopped = entry is not None and entry.reason in suppressions.MAIL_STOPPING
    state = "the address is suppressed" if stopped else "not suppressed yet"
    return f"{kind.replace('_', ' ')}; {state}"


def _relay_took_later_mail(session: Session, row_id: int) -> bool:
    """Whether a message queued after this one was sent: the relay takes other mail, only not this one."""
    # Ids grow with time, so this reads the primary key from `row_id` up to the first one sent.
    return bool(session.scalar(select(exists().where(OutboxMessage.id > row_id, OutboxMessage.status == "sent"))))


class Sender:
    """Sends due messages through one transport; an outcome the database could not take is kept and written later."""

    def __init__(self, transport: Transport, config: dict[str, Any]) -> None:
        self.transport = transport
        self.config = config
        self.unrecorded: list[Outcome] = []
        self.guard = RefusalGuard()

    def send_next(self, session: Session, result: DrainResult) -> bool:
        """Claim one due message, send it and record the outcome; False when nothing is due or the relay is away."""
        claim = claim_next(session, self.config)
        if claim is None:
            return False
        if claim.suppressed is not None:
            result.suppressed += 1
            metrics.count_not_sent(claim.suppressed)
            log.info("outbox message %s not sent: %s", claim.row_id, not_sent_error(claim.suppressed)[len("Not sent: "):])
            return True
        error = claim.build_error
        if claim.message is not None:
            try:
                self.transport.send(claim.message)
            except Exception as send_error:  # noqa: BLE001 (classified by _verdict; none may stop the sender)
                error = send_error
        self._record(session, Outcome(claim, error), result)
        return result.stopped_by_error is None

    def _record(self, session: Session, outcome: Outcome, result: DrainResult) -> None:
        # Held until written: after a database outage the sent message is marked sent, not sent again.
        self.unrecorded.append(outcome)
        try:
            record_outcome(session, outcome, self.config, result, self.guard)
        except SQLAlchemyError:
            raise
        except Exception:
            # Not the database's outage but a bug: held, this one outcome would stop every send after it.
            self.unrecorded.remove(outcome)
            raise
        self.unrecorded.remove(outcome)

    def drain(self, session: Session, limit: int | None = None,
              stop: threading.Event | None = None) -> DrainResult:
        """Send due messages until none is due, the relay is away, `limit` were handled or `stop` is set."""
        result = DrainResult()
        for outcome in list(self.unrecorded):
            self.unrecorded.remove(outcome)
            self._record(session, outcome, result)
        handled = 0
        while (limit is None or handled < limit) and not (stop is not None and stop.is_set()):
            if not self.send_next(session, result):
                break
            handled += 1
        return result


def drain(session: Session, transport: Transport, config: dict[str, Any], limit: int | None = None) -> DrainResult:
    """Send due messages until none is due, the relay is away, or `limit` were handled."""
    return Sender(transport, config).drain(session, limit)


class Backoff:
    """Pauses after failures in a row: 1 s, doubling up to `most` (30 s); a success starts again at 1 s."""

    def __init__(self, most: float = 30.0, first: float = 1.0) -> None:
        self.first = min(first, most)
        self.most = most
        self.failures = 0

    def next(self) -> float:
        """The pause after one more failure."""
        self.failures += 1
        # The exponent stops growing: after a day-long outage 2 ** failures would not fit in a float.
        return min(self.first * 2 ** min(self.failures - 1, 30), self.most)

    def reset(self) -> None:
        self.failures = 0


_ADDRESS = re.compile(r"[^\s'\"<>(){}\[\],:;@]+@[^\s'\"<>(){}\[\],:;]+")


def without_addresses(text: str | None) -> str:
    """`text` (a relay's error, for a log line or the command line) with each email address as `<address>`."""
    return _ADDRESS.sub("<address>", text or "")


def describe_error(error: BaseException | None) -> str:
    """One line for the log: the driver's own error for a database error, without SQL or parameters."""
    if isinstance(error, DBAPIError):
        return outages.summary(error)
    if error is None:
        return ""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"[:500] if text else type(error).__name__


def run(sender: Sender, stop: threading.Event, *, poll_seconds: float,
        wake: threading.Event | None = None, max_pause: float = 30.0) -> None:
    """Send the outbox until `stop` is set, living through database and relay outages.

    An outage is logged in one line per try, and sending pauses (1 s doubling to `max_pause`) and
    goes on when it is over. Needs an app context.
    """
    from .extensions import db

    backoff = Backoff(most=max_pause)
    trouble = False
    while not stop.is_set():
        try:
            result = sender.drain(db.session, stop=stop)
            problem = result.stopped_by_error and (
                f"the mail relay is unavailable ({without_addresses(result.stopped_by_error)})")
        except SQLAlchemyError as error:
            if outages.schema_missing(error):
                problem = f"the database has no outbox table yet; run `newsletter db upgrade` ({describe_error(error)})"
            else:
                problem = f"the database is unavailable ({describe_error(error)})"
        except Exception as error:  # a bug: the traceback once, then one line per try
            if not trouble:
                log.exception("the outbox sender hit an unexpected error")
            problem = f"an unexpected error ({describe_error(error)})"
        finally:
            _reset_session(db.session)
            sender.transport.close()
        if problem:
            trouble = True
            pause = backoff.next()
            held = f"; {len(sender.unrecorded)} outcome(s) held until it is back" if sender.unrecorded else ""
            log.warning("outbox: %s; trying again in %g s%s", problem, pause, held)
            stop.wait(pause)
            continue
        # Back only once a message went through: a drain that found every due message held by
        # another sender says nothing of the relay.
        if trouble and (result.sent or result.retrying or result.failed):
            log.warning("outbox: sending again")
            trouble = False
        if not trouble:
            backoff.reset()
        if wake is None:
            stop.wait(poll_seconds)
        else:
            wake.wait(poll_seconds)
            wake.clear()


def _reset_session(session: Any) -> None:
    # After a lost connection the transaction is gone: roll back (which can fail too) and start afresh;
    # pool_pre_ping makes the next checkout a live connection.
    with contextlib.suppress(SQLAlchemyError):
        session.rollback()
    session.remove()


EMAILS = OutboxMessage.kind.in_(OUTBOX_EMAIL_KINDS)  # the rows this module sends (webhook rows have their own sender)


def counts(session: Session) -> dict[str, int]:
    """How many emails are in the outbox in each status."""
    rows = session.execute(select(OutboxMessage.status, func.count()).where(EMAILS).group_by(OutboxMessage.status))
    return {status: number for status, number in rows}


@dataclass
class StatusSummary:
    """The outbox at a glance: counts per status, the oldest pending message's age, how many are due."""

    counts: dict[str, int]
    oldest_pending_age: timedelta | None
    due_now: int
    last_error: str | None


def status_summary(session: Session) -> StatusSummary:
    """Counts per status (every status named), the oldest pending message's age, the number due now, the last error."""
    now = utcnow()
    by_status = dict.fromkeys(OUTBOX_STATUSES, 0) | counts(session)
    pending = and_(OutboxMessage.status == "pending", EMAILS)
    oldest = session.scalar(select(func.min(OutboxMessage.created_at)).where(pending))
    due = session.scalar(select(func.count()).select_from(OutboxMessage)
                         .where(pending, OutboxMessage.next_attempt_at <= now)) or 0
    # The newest pending message that met an error says what holds the queue up now.
    last_error = session.scalar(select(OutboxMessage.last_error)
                                .where(pending, OutboxMessage.last_error.is_not(None))
                                .order_by(OutboxMessage.id.desc()).limit(1))
    return StatusSummary(by_status, now - _aware(oldest) if oldest is not None else None, due, last_error)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


# Failures that were decisions, not delivery problems: erasure and blocks cancel a reader's mail.
CANCELLED_ERRORS = ("erased",)
CANCELLED_PREFIX = "Not sent:"


def retryable_failed(since: datetime | None = None, message_id: int | None = None) -> Select[Any]:
    """The failed messages `outbox retry` may send again: never one cancelled by an erasure or a block."""
    query = (
        select(OutboxMessage.id)
        .outerjoin(Reader, Reader.id == OutboxMessage.reader_id)
        .where(OutboxMessage.status == "failed", EMAILS,
               Reader.erased_at.is_(None), Reader.blocked_at.is_(None),
               or_(OutboxMessage.last_error.is_(None),
                   and_(OutboxMessage.last_error.not_in(CANCELLED_ERRORS),
                        not_(OutboxMessage.last_error.startswith(CANCELLED_PREFIX, autoescape=True)))))
    )
    if since is not None:
        query = query.where(OutboxMessage.next_attempt_at >= since)
    if message_id is not None:
        query = query.where(OutboxMessage.id == message_id)
    return query


@dataclass(frozen=True)
class Retried:
    """What `outbox retry` did: how many messages were queued again, and how many were left failed because
    their address is on the suppression list (by reason)."""

    queued: int
    suppressed: dict[str, int]

    @property
    def skipped(self) -> int:
        return sum(self.suppressed.values())


def retry_failed(session: Session, config: Mapping[str, Any], since: datetime | None = None,
                 message_id: int | None = None) -> Retried:
    """Queue failed messages again (pending, no attempts, due now). The caller commits.

    A message to an address on the suppression list stays failed with its own last_error (the
    receiving server's words, usually why the address is on the list): queued, the sender would
    only refuse it, and the diagnostic would be lost.
    """
    rows = session.execute(
        # A row queued before the upgrade holds its address; the others go to the reader's current one.
        select(OutboxMessage.id, func.coalesce(OutboxMessage.to_address, Reader.email))
        .outerjoin(Reader, Reader.id == OutboxMessage.reader_id)
        .where(OutboxMessage.id.in_(retryable_failed(since, message_id)))
    ).all()
    matcher = suppressions.mail_stopping_matcher(session, config) if rows else None
    ids: list[int] = []
    suppressed: dict[str, int] = {}
    for row_id, address in rows:
        reason = matcher.reason(address) if matcher is not None and address else None
        if reason is None:
            ids.append(row_id)
        else:
            suppressed[reason] = suppressed.get(reason, 0) + 1
    if ids:
        session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id.in_(ids), OutboxMessage.status == "failed")
            .values(status="pending", attempts=0, next_attempt_at=utcnow(), last_error=None)
            .execution_options(synchronize_session=False)
        )
        note_enqueued(session)
    return Retried(len(ids), suppressed)


class InProcessDrainer:
    """A background thread that sends the outbox in the web process: the embedded default.

    It wakes when a transaction that enqueued mail commits, and polls now and then for retries.
    Like the worker, it lives through database and relay outages (see `run`).
    """

    def __init__(self, app: Flask, poll_seconds: float = 5.0, max_pause: float = 30.0) -> None:
        self.app = app
        self.poll_seconds = poll_seconds
        self.max_pause = max_pause
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-drainer", daemon=True)

    def start(self) -> InProcessDrainer:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        with self.app.app_context():
            sender = Sender(transport_for(self.app.config), self.app.config)
            try:
                run(sender, self._stop, poll_seconds=self.poll_seconds, wake=self._wake,
                    max_pause=self.max_pause)
            finally:
                sender.transport.close()


def attach_drainer(app: Flask, drainer: InProcessDrainer) -> None:
    app.extensions["newsletter.drainer"] = drainer


@event.listens_for(FlaskSession, "after_commit")
def _wake_drainer(session: Session) -> None:
    if session.info.pop("outbox_enqueued", False):
        drainer = current_app.extensions.get("newsletter.drainer")
        if drainer is not None:
            drainer.wake()
