"""Webhook endpoints: create, change, delete, rotate their secrets; their delivery log and "send again".

Deliveries themselves are made by the worker (webhook_sender.py), never here.
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.orm import Session

from . import changes
from .models import WEBHOOK_KIND, ConsentEvent, OutboxMessage, WebhookAttempt, WebhookEndpoint, utcnow
from .paging import PageNumbers
from .webhook_urls import BadWebhookUrl, check_url

SECRET_PREFIX = "whsec_"
# Standard Webhooks asks for 24 to 64 random bytes.
SECRET_BYTES = 32
MAX_DESCRIPTION = 200
DELIVERIES_PER_PAGE = 50


class EndpointErrors(Exception):
    """What is wrong with an endpoint's fields: {"field": ["message", …]}, as the API and forms show it."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__("; ".join(message for messages in errors.values() for message in messages))
        self.errors = errors


def new_secret() -> str:
    """A signing secret as the standardwebhooks library takes it: "whsec_" + base64 of random bytes."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def event_type_names() -> list[str]:
    """Every event type an endpoint can ask for, e.g. "subscription.confirmed"."""
    return list(dict.fromkeys(changes.EVENT_TYPES.values()))


def _checked(config: Mapping[str, Any], fields: Mapping[str, Any], errors: dict[str, list[str]]) -> dict[str, Any]:
    """The endpoint columns from `fields` (url, description, event_types, active), checked."""
    values: dict[str, Any] = {}
    if "url" in fields:
        url = fields["url"]
        if not isinstance(url, str):
            errors["url"] = ["The URL must be a string."]
        else:
            try:
                values["url"] = check_url(url, allow_private=config["NEWSLETTER_WEBHOOK_ALLOW_PRIVATE"])
            except BadWebhookUrl as error:
                errors["url"] = [str(error)]
    if "description" in fields:
        description = fields["description"]
        if description is not None and not isinstance(description, str):
            errors["description"] = ["The description must be a string."]
        elif description is not None and len(description.strip()) > MAX_DESCRIPTION:
            errors["description"] = [f"The description can be at most {MAX_DESCRIPTION} characters long."]
        elif description is not None and any(ord(character) < 32 for character in description):
            errors["description"] = ["The description can't contain control characters."]
        else:
            values["description"] = (description or "").strip() or None
    if "event_types" in fields:
        wanted = fields["event_types"]
        known = event_type_names()
        if not isinstance(wanted, list | tuple) or not all(isinstance(name, str) for name in wanted):
            errors["event_types"] = ["Give the event types as a list, e.g. [\"subscription.confirmed\"]; "
                                     "an empty list means every type."]
        else:
            unknown = [name for name in dict.fromkeys(wanted) if name not in known]
            if unknown:
                errors["event_types"] = [f"There is no event type {name!r}: choose from {', '.join(known)}."
                                         for name in unknown[:10]]
            else:
                values["event_types"] = [name for name in known if name in wanted]
    if "active" in fields:
        if not isinstance(fields["active"], bool):
            errors["active"] = ["Active must be true or false."]
        else:
            values["active"] = fields["active"]
    return values


def create_endpoint(session: Session, config: Mapping[str, Any], *, url: str, description: str | None = None,
                    event_types: Collection[str] = (), active: bool = True) -> tuple[WebhookEndpoint, str]:
    """A new endpoint and its secret (to show once); it is sent the changes made from now on. The caller commits."""
    errors: dict[str, list[str]] = {}
    values = _checked(config, {"url": url, "description": description, "event_types": list(event_types),
                               "active": active}, errors)
    if errors:
        raise EndpointErrors(errors)
    secret = new_secret()
    # Changes from its creation on (and any committed just before, not yet in the feed): the feed
    # (GET /api/v1/changes) has the history.
    endpoint = WebhookEndpoint(secret=secret, feed_position=changes.last_position(session), created_at=utcnow(),
                               **values)
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def update_endpoint(session: Session, config: Mapping[str, Any], endpoint: WebhookEndpoint,
                    fields: Mapping[str, Any]) -> WebhookEndpoint:
    """Change an endpoint's url, description, event_types or active; EndpointErrors for bad values. The caller commits.

    Turning a switched-off endpoint on clears why it was switched off, and its waiting deliveries
    start their retry period again (they would fail at their first error otherwise).
    """
    errors: dict[str, list[str]] = {}
    unknown = sorted(set(fields) - {"url", "description", "event_types", "active"})
    if unknown:
        errors["body"] = [f"Unexpected field {name!r}." for name in unknown]
    values = _checked(config, fields, errors)
    if errors:
        raise EndpointErrors(errors)
    turned_on = values.get("active") is True and not endpoint.active
    for name, value in values.items():
        setattr(endpoint, name, value)
    if turned_on:
        now = utcnow()
        endpoint.disabled_at, endpoint.disabled_reason = None, None
        session.execute(update(OutboxMessage)
                        .where(OutboxMessage.endpoint_id == endpoint.id, OutboxMessage.status == "pending")
                        .values(created_at=now, next_attempt_at=now)
                        .execution_options(synchronize_session=False))
    session.flush()
    return endpoint


def delete_endpoint(session: Session, endpoint_id: int) -> WebhookEndpoint | None:
    """Delete an endpoint with its waiting deliveries and its log; None if there is none. The caller commits."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        return None
    # Explicit, not left to ON DELETE CASCADE alone: SQLite databases without foreign keys on keep them otherwise.
    session.execute(WebhookAttempt.__table__.delete().where(WebhookAttempt.endpoint_id == endpoint_id))
    session.execute(OutboxMessage.__table__.delete().where(OutboxMessage.endpoint_id == endpoint_id))
    session.delete(endpoint)
    session.flush()
    return endpoint


def rotate_secret(session: Session, config: Mapping[str, Any], endpoint: WebhookEndpoint) -> str:
    """A new secret for the endpoint (to show once); the current one signs too for NEWSLETTER_WEBHOOK_SECRET_OVERLAP.

    EndpointErrors while a previous rotation's overlap runs: a second rotation would stop the secret
    it keeps signing with at once, and receivers still on it would fail every delivery.
    """
    running = _aware(endpoint.previous_secret_expires_at) if endpoint.previous_secret_expires_at else None
    if endpoint.previous_secret and running is not None and running > utcnow():
        raise EndpointErrors({"secret": [
            f"The secret was changed a short while ago: the previous one signs beside it until "
            f"{running:%Y-%m-%d %H:%M} UTC, for receivers still switching over. Make a new secret after that."]})
    overlap = timedelta(seconds=config["NEWSLETTER_WEBHOOK_SECRET_OVERLAP"])
    secret = new_secret()
    if overlap:
        endpoint.previous_secret = endpoint.secret
        endpoint.previous_secret_expires_at = utcnow() + overlap
    else:
        endpoint.previous_secret, endpoint.previous_secret_expires_at = None, None
    endpoint.secret = secret
    session.flush()
    return secret


def signing_secrets(endpoint: WebhookEndpoint, now: datetime | None = None) -> list[str]:
    """The secrets that sign a delivery now: the current one, and the previous one during a rotation's overlap."""
    now = now or utcnow()
    found = [endpoint.secret]
    expires = endpoint.previous_secret_expires_at
    if endpoint.previous_secret and expires is not None and _aware(expires) > now:
        found.append(endpoint.previous_secret)
    return found


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def endpoints(session: Session) -> list[WebhookEndpoint]:
    """Every endpoint, newest first."""
    return list(session.scalars(select(WebhookEndpoint).order_by(WebhookEndpoint.id.desc())))


def failing_counts(session: Session) -> dict[int, int]:
    """Per endpoint id: its deliveries that failed at least once and still wait to be retried (or failed for good)."""
    rows = session.execute(
        select(OutboxMessage.endpoint_id, func.count())
        .where(OutboxMessage.kind == WEBHOOK_KIND, OutboxMessage.last_error.is_not(None),
               OutboxMessage.status.in_(("pending", "failed")))
        .group_by(OutboxMessage.endpoint_id))
    return {endpoint_id: number for endpoint_id, number in rows}


def waiting_counts(session: Session) -> dict[int, int]:
    """Per endpoint id: its deliveries waiting to be sent."""
    rows = session.execute(
        select(OutboxMessage.endpoint_id, func.count())
        .where(OutboxMessage.kind == WEBHOOK_KIND, OutboxMessage.status == "pending")
        .group_by(OutboxMessage.endpoint_id))
    return {endpoint_id: number for endpoint_id, number in rows}


@dataclass
class DeliveryPage(PageNumbers):
    """One page of an endpoint's delivery log, newest attempt first."""

    attempts: Sequence[WebhookAttempt]
    total: int
    page: int
    per_page: int

    @property
    def shown(self) -> int:
        return len(self.attempts)


def deliveries_page(session: Session, endpoint_id: int, page: int = 1,
                    per_page: int = DELIVERIES_PER_PAGE) -> DeliveryPage:
    """The attempts at delivering to an endpoint, newest first, `per_page` to a page (pages from 1)."""
    total = session.scalar(select(func.count()).select_from(WebhookAttempt)
                           .where(WebhookAttempt.endpoint_id == endpoint_id)) or 0
    page = max(1, page)
    rows = session.scalars(select(WebhookAttempt).where(WebhookAttempt.endpoint_id == endpoint_id)
                           .order_by(WebhookAttempt.id.desc()).offset((page - 1) * per_page).limit(per_page)).all()
    return DeliveryPage(rows, total, page, per_page)


def send_again(session: Session, endpoint_id: int, attempt_id: int) -> int | None:
    """Queue the event of one logged attempt again for its endpoint, due now; the outbox row's id, or None.

    The same outbox row is used when it still exists (the same webhook-id, its place in its reader's
    order); otherwise a new row for the same event. None when there is no such attempt of this
    endpoint. The caller commits.
    """
    attempt = session.scalar(select(WebhookAttempt).where(WebhookAttempt.id == attempt_id,
                                                         WebhookAttempt.endpoint_id == endpoint_id))
    if attempt is None or attempt.event_id is None:
        return None
    now = utcnow()
    row = session.get(OutboxMessage, attempt.outbox_message_id) if attempt.outbox_message_id else None
    if row is not None and row.endpoint_id == endpoint_id:
        row.status, row.attempts, row.last_error = "pending", 0, None
        row.created_at, row.next_attempt_at, row.sent_at = now, now, None
        session.flush()
        return row.id
    reader_id = session.scalar(select(ConsentEvent.reader_id).where(ConsentEvent.id == attempt.event_id))
    return session.execute(insert(OutboxMessage).values(
        kind=WEBHOOK_KIND, endpoint_id=endpoint_id, event_id=attempt.event_id, reader_id=reader_id,
        status="pending", attempts=0, created_at=now, next_attempt_at=now,
    ).returning(OutboxMessage.id)).scalar_one()


def forget_reader(session: Session, reader_id: int, address: str) -> None:
    """Erasure: the delivery log of the reader's events keeps no copy of their address. The caller commits.

    Receivers' answers often quote what they got ("unknown member ann@…"): the start of each answer
    goes, as bounce diagnostics do; the error (our words, a redirect's target in them) loses the address.
    """
    of_reader = or_(
        WebhookAttempt.event_id.in_(select(ConsentEvent.id).where(ConsentEvent.reader_id == reader_id)),
        WebhookAttempt.outbox_message_id.in_(select(OutboxMessage.id).where(OutboxMessage.reader_id == reader_id)))
    session.execute(update(WebhookAttempt).where(of_reader, WebhookAttempt.response_start.is_not(None))
                    .values(response_start=None).execution_options(synchronize_session=False))
    mentions = re.compile("|".join(re.escape(form) for form in dict.fromkeys((address, quote(address, safe="")))),
                          re.IGNORECASE)
    for attempt in session.scalars(select(WebhookAttempt).where(of_reader, WebhookAttempt.error.is_not(None))):
        if attempt.error and mentions.search(attempt.error):
            attempt.error = mentions.sub("[erased]", attempt.error)
