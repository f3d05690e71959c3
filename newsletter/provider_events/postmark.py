"""Postmark's Bounce and Spam Complaint webhooks.

Postmark signs nothing: it authenticates with HTTP basic auth written into the webhook URL
(https://user:password@host/api/v1/events/postmark), compared here in constant time with
NEWSLETTER_POSTMARK_WEBHOOK_AUTH. One event per request, a JSON object with a RecordType.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from typing import Any

from flask import Request

from . import (
    BadPayload, ProviderEvent, Received, Unauthenticated, address_text, clean, event_id, json_body, moment_from_iso
)

NAME = "postmark"
TITLE = "Postmark"
SECRET = "NEWSLETTER_POSTMARK_WEBHOOK_AUTH"

# Postmark's bounce Type (https://postmarkapp.com/developer/api/bounce-api#bounce-types) → our kind.
# Only the clearly permanent ones are hard: the address does not exist or is not an address.
# SpamNotification ("classified as spam … or had rejected content") is a filter's verdict, not the
# person pressing "report spam": a soft bounce, so that only a repeated one suppresses; so is
# Blocked (often our IP or content, sometimes the mailbox). Types about something else are ignored:
# auto-replies, subscribe requests, DMARCPolicy (our domain's alignment, not the reader's address),
# our own API or template errors, Postmark's manual deactivation.
BOUNCE_KINDS = {
    "HardBounce": "hard_bounce",
    "BadEmailAddress": "hard_bounce",
    "SoftBounce": "soft_bounce",
    "Transient": "soft_bounce",
    "DnsError": "soft_bounce",
    "Unknown": "soft_bounce",
    "Blocked": "soft_bounce",
    "SpamNotification": "soft_bounce",
    "SpamComplaint": "complaint",
}


def configured(config: Mapping[str, Any]) -> bool:
    return bool(config.get(SECRET))


def verify(request: Request, config: Mapping[str, Any]) -> Received:
    credentials = request.authorization
    given = f"{credentials.username}:{credentials.password}" if credentials and credentials.type == "basic" else ""
    if not hmac.compare_digest(given.encode("utf-8", "surrogatepass"), config[SECRET].encode("utf-8")):
        raise Unauthenticated("Postmark's webhook must send the user and password set in NEWSLETTER_POSTMARK_"
                              "WEBHOOK_AUTH (https://user:password@… in the webhook URL).",
                              challenge='Basic realm="newsletter events"')
    payload = json_body(request)
    if not isinstance(payload, dict):
        raise BadPayload("The body is not a Postmark webhook event (a JSON object sent as application/json).")
    return Received(payload)


def events(payload: dict[str, Any]) -> list[ProviderEvent]:
    record_type = payload.get("RecordType")
    if record_type == "SpamComplaint":
        kind: str | None = "complaint"
    elif record_type == "Bounce":
        kind = BOUNCE_KINDS.get(payload.get("Type"))  # type: ignore[arg-type]
    else:
        return []  # Delivery, Open, Click, SubscriptionChange…
    address = address_text(payload.get("Email"))
    if kind is None or address is None:
        return []
    name = clean(payload.get("Type"), 50) or record_type
    details = clean(payload.get("Details")) or clean(payload.get("Description"))
    if kind == "soft_bounce":
        # Postmark may report one delayed message several times: it counts as one soft bounce.
        identifier = event_id("soft", payload.get("MessageID"))
    else:
        identifier = event_id(payload.get("ID"))
    return [ProviderEvent(address=address, kind=kind, occurred_at=moment_from_iso(payload.get("BouncedAt")),
                          diagnostic=f"{name}: {details}" if details else name, event_id=identifier,
                          shared_id=kind == "soft_bounce")]
