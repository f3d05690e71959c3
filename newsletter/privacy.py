"""Readers' privacy rights: what we store about one address, erasing it, and forgetting stale signups.

No Flask request in here: each function takes a session and plain values and leaves the commit to
the caller, like the rest of the domain.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from . import addresses, suppressions, webhooks
from .models import (
    MAX_ID,
    OUTBOX_EMAIL_KINDS,
    ConsentEvent,
    DeliveryEvent,
    ImportRefusal,
    Newsletter,
    OutboxMessage,
    Reader,
    Subscription,
    Suppression,
    utcnow,
)
from .subscriptions import Source, UnknownReader

EXPORT_FORMAT = "newsletter-reader-export/1"
# Erasure leaves this where the address was: unique per reader, and undeliverable by RFC 2606 (.invalid).
PLACEHOLDER_DOMAIN = "invalid"
# Readers purged per transaction-sized batch: bounds the lists of ids sent to the database.
PURGE_BATCH = 500
# What replaces an erased address quoted in free text (an admin's note).
ERASED_MENTION = "[erased]"


def placeholder_address(reader_id: int) -> str:
    """What an erased reader's email becomes: erased-<id>@invalid."""
    return f"erased-{reader_id}@{PLACEHOLDER_DOMAIN}"


def _iso(moment: datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def find_reader(session: Session, reference: str | int) -> Reader:
    """The reader with this id (digits) or this email address (normalized as at signup); else UnknownReader."""
    text = str(reference).strip()
    if text.isascii() and text.isdigit():
        # Beyond the id column's range nobody has that id (and PostgreSQL would refuse the query).
        reader = session.get(Reader, int(text)) if int(text) <= MAX_ID else None
    else:
        try:
            address = addresses.normalize(text)
        except addresses.InvalidAddress:
            raise UnknownReader(reference) from None
        reader = session.scalars(select(Reader).where(Reader.email == address)).first()
    if reader is None:
        raise UnknownReader(reference)
    return reader


def _reader_fields(reader: Reader) -> dict[str, Any]:
    return {
        "id": reader.id,
        "email": reader.email,
        "name": reader.name,
        "created_at": _iso(reader.created_at),
        "confirmation_sent_at": _iso(reader.confirmation_sent_at),
        "blocked_at": _iso(reader.blocked_at),
        "erased_at": _iso(reader.erased_at),
    }


def subscription_history(session: Session, reader_id: int) -> list[dict[str, Any]]:
    """Each of the reader's subscriptions, oldest first, with its newsletter and timestamps."""
    rows = session.execute(
        select(Subscription, Newsletter)
        .join(Newsletter, Newsletter.id == Subscription.newsletter_id)
        .where(Subscription.reader_id == reader_id)
        .order_by(Subscription.id)
    )
    return [{
        "newsletter": newsletter.slug,
        "newsletter_name": newsletter.name,
        "status": subscription.status,
        "subscribed_at": _iso(subscription.created_at),
        "pending_since": _iso(subscription.pending_since),
        "confirmed_at": _iso(subscription.confirmed_at),
        "unsubscribed_at": _iso(subscription.unsubscribed_at),
    } for subscription, newsletter in rows]


def consent_history(session: Session, reader_id: int) -> list[dict[str, Any]]:
    """Every ConsentEvent of the reader, oldest first, as stored (IP and user agent included)."""
    rows = session.execute(
        select(ConsentEvent, Newsletter.slug)
        .outerjoin(Newsletter, Newsletter.id == ConsentEvent.newsletter_id)
        .where(ConsentEvent.reader_id == reader_id)
        .order_by(ConsentEvent.occurred_at, ConsentEvent.id)
    )
    return [{
        "id": event.id,
        "action": event.action,
        "newsletter": slug,
        "occurred_at": _iso(event.occurred_at),
        "source": event.source,
        "page_url": event.page_url,
        "form_id": event.form_id,
        "ip_address": event.ip_address,
        "user_agent": event.user_agent,
        "wording": event.wording,
    } for event, slug in rows]


def email_history(session: Session, reader: Reader) -> list[dict[str, Any]]:
    """The emails sent (or to be sent) to the reader: who, what, when and how it went; no bodies."""
    rows = list(session.scalars(
        select(OutboxMessage)
        .where(or_(OutboxMessage.reader_id == reader.id, OutboxMessage.to_address == reader.email),
               OutboxMessage.kind.in_(OUTBOX_EMAIL_KINDS))  # not the webhook deliveries telling of the reader
        .order_by(OutboxMessage.id)
    ))
    # An email rendered when sent keeps no subject: its newsletters and language say what it was about.
    wanted = {newsletter_id for message in rows for newsletter_id in message.newsletter_ids or []}
    slugs = {newsletter_id: slug for newsletter_id, slug in session.execute(
        select(Newsletter.id, Newsletter.slug).where(Newsletter.id.in_(wanted)))} if wanted else {}
    return [{
        "id": message.id,
        "kind": message.kind,
        # A newsletter deleted since is left out.
        "newsletters": [slugs[newsletter_id] for newsletter_id in message.newsletter_ids or []
                        if newsletter_id in slugs],
        "locale": message.locale,
        "message_id": message.message_id,
        "from": message.mail_from,
        "to_address": message.to_address,
        "to_name": message.to_name,
        "subject": message.subject,
        "status": message.status,
        "attempts": message.attempts,
        "created_at": _iso(message.created_at),
        "sent_at": _iso(message.sent_at),
        "last_error": message.last_error,
    } for message in rows]


def describe_reader(session: Session, reader: Reader) -> dict[str, Any]:
    """The reader's fields with their subscriptions and consent history, as JSON-ready values."""
    return {
        **_reader_fields(reader),
        "subscriptions": subscription_history(session, reader.id),
        "consent_events": consent_history(session, reader.id),
    }


# What the reader's own copy says of a change staff made, in place of who made it (see staff_hidden).
BY_AN_ADMINISTRATOR = {"admin": "By an administrator", "api": "By an administrator, through the API"}


def staff_hidden(event: dict[str, Any]) -> dict[str, Any]:
    """A consent_history entry as its reader sees it: a change made by staff says so, not who, from where.

    The admin's and the API's wording names the account or token, and the IP address and browser are
    theirs. A signup through the API is the reader's own (the site's form sent it), so it stays whole.
    """
    by_staff = event["source"] == "admin" or (event["source"] == "api" and event["action"] != "signup_requested")
    if not by_staff:
        return event
    return {**event, "page_url": None, "ip_address": None, "user_agent": None,
            "wording": BY_AN_ADMINISTRATOR[event["source"]]}


def export_reader(session: Session, reader_id: int, *, for_reader: bool = False) -> dict[str, Any]:
    """Everything stored about one reader (GDPR art. 15 / 20), as a JSON-ready dict; UnknownReader if none.

    `for_reader`: the reader's own download, in which staff who changed their subscriptions are not named.
    """
    reader = session.get(Reader, reader_id) if 0 < reader_id <= MAX_ID else None
    if reader is None:
        raise UnknownReader(reader_id)
    events = consent_history(session, reader.id)
    return {
        "format": EXPORT_FORMAT,
        "exported_at": _iso(utcnow()),
        "reader": _reader_fields(reader),
        "subscriptions": subscription_history(session, reader.id),
        "consent_events": [staff_hidden(event) for event in events] if for_reader else events,
        "emails": email_history(session, reader),
    }


def erase_reader(session: Session, reader_id: int, *, source: Source, config: Mapping[str, Any]) -> Reader:
    """Remove the reader's address and personal fields everywhere, keeping anonymous counts.

    The row stays, with the email replaced by erased-<id>@invalid: subscriptions stay as counted
    (ended: `unsubscribed`), consent events keep their action and time but lose page URL, IP and user
    agent; emails to the reader lose address, name and bodies, and unsent ones are cancelled. A new
    signup with the same address later makes a new reader. Erasing twice changes nothing more.

    The address goes on the do-not-contact list as its keyed hash only (reason `erased`, beside any
    other entry of the address), so that no import or sync brings the person back; the suppression
    list, the bounces (diagnostics, event ids), imports' refused rows, admins' notes and the webhook delivery
    log keep no copy of it.
    """
    reader = session.scalars(
        select(Reader).where(Reader.id == reader_id).with_for_update().execution_options(populate_existing=True)
    ).first() if 0 < reader_id <= MAX_ID else None
    if reader is None:
        raise UnknownReader(reader_id)
    now = utcnow()
    address, placeholder = reader.email, placeholder_address(reader.id)
    if reader.erased_at is None:
        _forget_on_suppression_list(session, config, address)

    # Consent ends: each live subscription becomes `unsubscribed`, recorded like any other unsubscribe.
    for subscription in session.scalars(
        select(Subscription).where(Subscription.reader_id == reader.id,
                                   Subscription.status.in_(("pending", "confirmed")))
    ):
        subscription.status, subscription.unsubscribed_at = "unsubscribed", now
        session.add(ConsentEvent(reader_id=reader.id, newsletter_id=subscription.newsletter_id,
                                 action="unsubscribed", occurred_at=now, source=source.channel,
                                 wording=source.wording))
    if reader.erased_at is None:
        # Who erased, when: the history keeps that much (the source's IP and page would be dropped below).
        session.add(ConsentEvent(reader_id=reader.id, newsletter_id=None, action="erased", occurred_at=now,
                                 source=source.channel, wording=source.wording))
    session.flush()
    session.execute(
        update(ConsentEvent).where(ConsentEvent.reader_id == reader.id)
        .values(page_url=None, ip_address=None, user_agent=None)
    )
    # A wording is usually the form's text, but an admin's note (an unblock's) can quote the address.
    for event in session.scalars(select(ConsentEvent).where(ConsentEvent.reader_id == reader.id,
                                                            ConsentEvent.wording.is_not(None))):
        if address.lower() in event.wording.lower():
            event.wording = _without(event.wording, address)

    to_reader = or_(OutboxMessage.reader_id == reader.id, OutboxMessage.to_address == address)
    # An unsent email would go to nobody: cancel it (a worker mid-send may still deliver that one). Not a
    # webhook delivery (it has an endpoint): rendered when it is sent, it then carries no address.
    session.execute(
        update(OutboxMessage).where(to_reader, OutboxMessage.status == "pending", OutboxMessage.endpoint_id.is_(None))
        .values(status="failed")
    )
    # A failure's text can quote the address (e.g. SMTPRecipientsRefused): keep only that it was erased.
    session.execute(
        update(OutboxMessage).where(to_reader, OutboxMessage.status == "failed").values(last_error="erased")
    )
    # An email is rendered when it is sent, so a row holds no address or body, only the reader's id.
    # Rows queued before the upgrade (migration 0011) still hold both: scrubbed.
    session.execute(
        update(OutboxMessage).where(to_reader, OutboxMessage.body_text.is_not(None))
        .values(reader_id=reader.id, to_address=placeholder, to_name=None, body_text="", body_html="", headers={})
    )

    webhooks.forget_reader(session, reader.id, address)

    reader.email, reader.name = placeholder, None
    if reader.erased_at is None:
        reader.erased_at = now
    session.flush()
    return reader


def _forget_on_suppression_list(session: Session, config: Mapping[str, Any], address: str) -> None:
    """Leave the address's keyed hash on the do-not-contact list, and no copy of the address on it, in bounces,
    or in imports' refused rows."""
    key = suppressions.normalized_key(config, address)
    # Always its own entry, whatever else is in force: lifting a bounce or a block later must not
    # end the erasure's "never import this person again".
    suppressions.suppress(session, config, None, key=key, reason="erased", source="erasure")
    # An entry of any reason, in force or lifted, keeps its reason and times; the address and the
    # receiving servers' words (which quote it) go.
    session.execute(
        update(Suppression)
        .where(or_(Suppression.address_key == key, func.lower(Suppression.email) == address.lower()))
        .values(email=None, detail=None)
        .execution_options(synchronize_session="fetch")
    )
    session.execute(
        update(DeliveryEvent).where(DeliveryEvent.address_key == key).values(diagnostic=None)
        .execution_options(synchronize_session=False)
    )
    # Admins' notes on lifted entries can quote the address: it goes, the rest of the note stays.
    for entry in session.scalars(
        select(Suppression).where(or_(Suppression.address_key == key, _mentions(Suppression.lift_note, address)),
                                  Suppression.lift_note.is_not(None))
    ):
        entry.lift_note = _without(entry.lift_note, address)
    # An import's refused rows keep their line and reason, not the address as the file wrote it (any case).
    for refusal in session.scalars(select(ImportRefusal).where(
        or_(_mentions(ImportRefusal.email, address), _mentions(ImportRefusal.detail, address))
    )):
        if refusal.email is not None and (address.lower() in refusal.email.lower()
                                          or suppressions.address_key(config, refusal.email) == key):
            refusal.email = None
        refusal.detail = _without(refusal.detail, address)


def _mentions(column: Any, address: str) -> Any:
    """SQL: whether `column` contains `address`, any case (ASCII case on SQLite; _without checks again)."""
    return func.lower(column).contains(address.lower(), autoescape=True)


def _without(text: str | None, address: str) -> str | None:
    """`text` with each mention of `address` (any case) replaced by "[erased]"."""
    if text is None:
        return None
    return re.sub(re.escape(address), ERASED_MENTION, text, flags=re.IGNORECASE)


def _stale_pending(session: Session, cutoff: datetime, among: Iterable[int] | None = None) -> list[int]:
    """Ids of readers who never confirmed anything and whose last signup activity is before `cutoff`.

    Activity is any signup request and any confirmation email sent, not only the first: a reader who
    asked again, or was mailed a new link, last week has a link that still works.
    """
    recent_or_confirmed = exists().where(
        Subscription.reader_id == Reader.id,
        or_(
            Subscription.confirmed_at.is_not(None),
            Subscription.created_at >= cutoff,
            Subscription.pending_since >= cutoff,
            Subscription.unsubscribed_at >= cutoff,
            Subscription.confirmation_sent_at >= cutoff,
        ),
    )
    ever_confirmed = exists().where(ConsentEvent.reader_id == Reader.id, ConsentEvent.action == "confirmed")
    recently_requested = exists().where(
        ConsentEvent.reader_id == Reader.id,
        ConsentEvent.action.in_(("signup_requested", "confirmation_resent")),
        ConsentEvent.occurred_at >= cutoff,
    )
    query = select(Reader.id).where(
        Reader.erased_at.is_(None),
        # A blocked address is the admin's record of "never mail this": it stays.
        Reader.blocked_at.is_(None),
        Reader.created_at < cutoff,
        or_(Reader.confirmation_sent_at.is_(None), Reader.confirmation_sent_at < cutoff),
        ~recent_or_confirmed,
        ~ever_confirmed,
        ~recently_requested,
    )
    if among is not None:
        query = query.where(Reader.id.in_(list(among)))
    return list(session.scalars(query.order_by(Reader.id).limit(PURGE_BATCH)))


def purge_pending(session: Session, older_than_days: int) -> int:
    """Delete readers who never confirmed and were last active more than `older_than_days` ago; how many.

    Deleted, not erased: they never gave consent, so there is nothing to prove and nobody to count,
    and an anonymized row would stay `pending` forever. Their subscriptions, consent events and
    emails go with them.
    """
    if older_than_days < 1:
        raise ValueError("The retention must be at least one day.")
    cutoff = utcnow() - timedelta(days=older_than_days)
    purged = 0
    while candidates := _stale_pending(session, cutoff):
        # Lock them, then look again: a signup that committed meanwhile makes its reader recent again,
        # and one still running waits for this transaction and then creates a fresh reader.
        session.execute(select(Reader.id).where(Reader.id.in_(candidates)).with_for_update())
        ids = _stale_pending(session, cutoff, among=candidates)
        if ids:
            session.execute(delete(OutboxMessage).where(OutboxMessage.reader_id.in_(ids)))
            session.execute(delete(ConsentEvent).where(ConsentEvent.reader_id.in_(ids)))
            session.execute(delete(Subscription).where(Subscription.reader_id.in_(ids)))
            session.execute(delete(Reader).where(Reader.id.in_(ids)))
        purged += len(ids)
        if len(candidates) < PURGE_BATCH:
            break
    return purged
