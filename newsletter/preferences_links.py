"""Fresh preferences links on request: a reader whose link has expired asks for a new one by address."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from . import emails, outbox, suppressions
from .models import OutboxMessage, Reader, utcnow

KIND = emails.PREFERENCES_LINK


def send_preferences_link(session: Session, address: str, config: Mapping[str, Any]) -> bool:
    """Queue an email with a fresh preferences link to the reader at normalized `address`; whether one was queued.

    Nobody is told which: the page answers the same for every address. Erased, blocked, suppressed and
    unknown addresses get nothing, and an address gets at most one such email per NEWSLETTER_CONFIRM_RESEND_INTERVAL.
    """
    # Locked: two requests at once for one address see each other's email, not none.
    reader = session.scalars(select(Reader).where(Reader.email == address).with_for_update()).first()
    if reader is None or reader.erased_at is not None or reader.blocked_at is not None:
        return False
    if suppressions.stopping_reason(session, suppressions.normalized_key(config, reader.email)) is not None:
        return False
    since = utcnow() - timedelta(seconds=config["NEWSLETTER_CONFIRM_RESEND_INTERVAL"])
    if session.scalar(select(exists().where(OutboxMessage.reader_id == reader.id, OutboxMessage.kind == KIND,
                                            OutboxMessage.created_at > since))):
        return False
    # Rendered when it is sent, with a link signed then (emails.render).
    outbox.enqueue(session, kind=KIND, reader_id=reader.id, newsletter_ids=[], locale=emails.current_locale())
    return True
