"""Bounces and complaints reported by the sending platforms' webhooks (POST /api/v1/events/<provider>).

One small module per provider, each with the same three functions:

- `configured(config)`: whether its secret is set (if not, its URL answers 404);
- `verify(request, config) -> Received`: authenticate the request as that provider does it and
  read its body, or raise one of the HTTP errors below (nothing is recorded then);
- `events(payload) -> list[ProviderEvent]`: the bounces and complaints in the body; deliveries,
  opens, clicks and the like are left out (accepted and ignored).

`record` then applies the suppression rules to each event in the caller's transaction; the view
commits, and only then answers 2xx, so that a provider whose delivery failed sends it again.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from types import ModuleType
from typing import Any

from flask import Request
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from werkzeug.exceptions import Forbidden, NotFound, Unauthorized, UnprocessableEntity

from .. import addresses, suppressions
from ..models import DeliveryEvent, WebhookNonce, utcnow

# What a diagnostic keeps (suppressions cuts it again) and the longest provider id kept.
_TEXT_LIMIT = suppressions.DIAGNOSTIC_LIMIT
_ID_LIMIT = 200
_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


@dataclass(frozen=True)
class ProviderEvent:
    """One bounce or complaint about one address, as a provider reported it."""

    address: str
    kind: str  # hard_bounce, soft_bounce or complaint
    occurred_at: datetime | None = None
    diagnostic: str | None = None
    # The provider's id of this event, so that a redelivery is recorded once.
    event_id: str | None = None
    # The id names a report about several addresses (SES's feedbackId): made unique per address.
    shared_id: bool = False


@dataclass(frozen=True)
class Received:
    """An authenticated request's body, and its one-time value when the provider signs one (Mailgun's token)."""

    payload: Any
    nonce: str | None = None


@dataclass
class Outcome:
    """What `record` did with a request's events."""

    recorded: int = 0
    repeated: int = 0
    skipped: int = 0
    problems: list[str] = field(default_factory=list)

    def as_json(self) -> dict[str, Any]:
        return {"recorded": self.recorded, "repeated": self.repeated, "skipped": self.skipped,
                "problems": self.problems}


class NotConfigured(NotFound):
    """The provider's secret is not set: its URL takes nothing."""


class Unauthenticated(Unauthorized):
    """Missing or wrong credentials or signature: 401, nothing recorded."""

    def __init__(self, description: str, challenge: str | None = None) -> None:
        super().__init__(description)
        self.challenge = challenge

    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        headers = super().get_headers(*args, **kwargs)
        return [*headers, ("WWW-Authenticate", self.challenge)] if self.challenge else headers


class Refused(Forbidden):
    """Authentic enough to read, but not taken: a replay, a stale signature, a topic not ours."""


class BadPayload(UnprocessableEntity):
    """The body is not what the provider sends: 422 naming what is wrong, nothing recorded."""

    def __init__(self, message: str, where: str = "body") -> None:
        super().__init__(message)
        self.errors = {where: [message]}


def json_body(request: Request) -> Any:
    """The request's JSON body, or None when it is not JSON (or nests too deep for Python to read)."""
    try:
        return request.get_json(silent=True)
    except RecursionError:
        return None


def providers() -> dict[str, ModuleType]:
    """The providers by the name in their URL."""
    from . import mailgun, postmark, sendgrid, ses

    return {"ses": ses, "postmark": postmark, "sendgrid": sendgrid, "mailgun": mailgun}


def clean(value: Any, limit: int = _TEXT_LIMIT) -> str | None:
    """A provider's text fit to store: None unless a non-empty string; NULs and lone surrogates replaced."""
    if not isinstance(value, str):
        return None
    text = _UNSTORABLE.sub("\ufffd", value).strip()
    return text[:limit] or None


def address_text(value: Any) -> str | None:
    """An address as reported, untouched (record() skips one that is not a storable, valid address)."""
    return value.strip() or None if isinstance(value, str) else None


def event_id(*parts: Any) -> str | None:
    """A provider event id from its parts, or None when one is missing."""
    texts = [clean(str(part), _ID_LIMIT) if isinstance(part, (str, int)) and not isinstance(part, bool) else None
             for part in parts]
    if any(text is None for text in texts):
        return None
    return ":".join(texts)  # type: ignore[arg-type]


def moment_from_iso(value: Any) -> datetime | None:
    """An ISO 8601 time (UTC when it has no offset); None when it is not one.

    Postmark writes seven fractional digits (.2735393), more than Python reads: cut to six.
    """
    if not isinstance(value, str) or len(value) > 64:
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", value.strip())
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


def moment_from_unix(value: Any) -> datetime | None:
    """A time given as Unix seconds (int, float or their text); None when it is not one."""
    if isinstance(value, bool):
        return None
    try:
        seconds = float(value)
        return datetime.fromtimestamp(seconds, timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def check_fresh(config: Mapping[str, Any], seconds: str, what: str) -> None:
    """Refused unless the signed Unix time `seconds` is within NEWSLETTER_WEBHOOK_MAX_AGE of now (replays)."""
    moment = moment_from_unix(seconds) if seconds.isascii() and seconds.isdigit() else None
    if moment is None:
        raise Unauthenticated(f"The {what} is not a Unix time in seconds.")
    age = abs((utcnow() - moment).total_seconds())
    if age > config["NEWSLETTER_WEBHOOK_MAX_AGE"]:
        raise Refused(f"The {what} is {int(age)} seconds away from our clock, more than the "
                      f"{config['NEWSLETTER_WEBHOOK_MAX_AGE']} accepted: refused as a possible replay. "
                      "Check both clocks if this is not one.")


def _claim_nonce(session: Session, config: Mapping[str, Any], provider: str, nonce: str) -> None:
    """Refused when this one-time value was used before; else keep it (until its signature would be stale anyway)."""
    now = utcnow()
    # Twice the window: a signature older than the window is refused by its time, before this.
    session.execute(delete(WebhookNonce).where(
        WebhookNonce.provider == provider,
        WebhookNonce.seen_at < now - timedelta(seconds=2 * config["NEWSLETTER_WEBHOOK_MAX_AGE"])))
    try:
        with session.begin_nested():
            session.add(WebhookNonce(provider=provider, nonce=nonce[:255], seen_at=now))
    except IntegrityError:
        raise Refused("This signed request was already received (its token was used before): "
                      "refused as a replay.") from None


_ID_CHUNK = 500


def _recorded_ids(session: Session, provider: str, identifiers: set[str]) -> set[str]:
    """Which of `identifiers` the provider's events already recorded have."""
    found: set[str] = set()
    ordered = sorted(identifiers)
    for start in range(0, len(ordered), _ID_CHUNK):
        found.update(session.scalars(
            select(DeliveryEvent.provider_event_id)
            .where(DeliveryEvent.provider == provider,
                   DeliveryEvent.provider_event_id.in_(ordered[start:start + _ID_CHUNK]))))
    return found


def record(session: Session, config: Mapping[str, Any], provider: str, events: list[ProviderEvent],
           nonce: str | None = None) -> Outcome:
    """Record each event (suppressing as the rules say); an event with an unusable address is skipped.

    The caller commits. A replayed nonce raises Refused before anything is recorded.
    """
    if nonce is not None:
        _claim_nonce(session, config, provider, nonce)
    outcome = Outcome()
    now = utcnow()
    normalized: dict[str, str | None] = {}
    pending: list[tuple[ProviderEvent, str, str | None]] = []
    for event in events:
        if event.address not in normalized:  # a batch often names one address many times
            try:
                normalized[event.address] = (addresses.normalize(event.address)
                                             if not _UNSTORABLE.search(event.address) else None)
            except addresses.InvalidAddress:
                normalized[event.address] = None
        address = normalized[event.address]
        if address is None:
            outcome.skipped += 1
            outcome.problems.append(f"{clean(event.address, 100)!r} is not a valid email address: skipped.")
            continue
        identifier = event.event_id
        if identifier is not None and event.shared_id:
            # A keyed hash, not the address: ids outlive an erasure, addresses must not.
            identifier = f"{identifier}:{suppressions.address_key(config, address)[:16]}"
        pending.append((event, address, identifier[:255] if identifier else None))
    # A redelivered batch (or one event twice in it) is told by its ids in one query per chunk,
    # instead of one failed insert per event: a 1 MB batch holds 20,000 of them.
    seen = _recorded_ids(session, provider, {identifier for _, _, identifier in pending if identifier})
    for event, address, identifier in pending:
        if identifier is not None and identifier in seen:
            outcome.repeated += 1
            continue
        # A provider's clock ahead of ours must not put a bounce in the future of the soft-bounce window.
        occurred_at = min(event.occurred_at, now) if event.occurred_at is not None else None
        result = suppressions.record_event(session, config, address, kind=event.kind, provider=provider,
                                           occurred_at=occurred_at, diagnostic=event.diagnostic,
                                           provider_event_id=identifier)
        if identifier is not None:
            seen.add(identifier)
        if result.event is None:
            outcome.repeated += 1
        else:
            outcome.recorded += 1
    return outcome
