"""SendGrid's Event Webhook, signed (Signed Event Webhook).

SendGrid signs the timestamp header followed by the raw body with ECDSA P-256 / SHA-256; the
signature (base64 DER) is in X-Twilio-Email-Event-Webhook-Signature, the Unix time in
X-Twilio-Email-Event-Webhook-Timestamp, and the public key, NEWSLETTER_SENDGRID_WEBHOOK_PUBLIC_KEY,
is the base64 DER key SendGrid shows. The body is a JSON array of events.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key
from flask import Request

from . import (
    BadPayload, ProviderEvent, Received, Unauthenticated, address_text, check_fresh, clean, event_id,
    moment_from_unix
)

NAME = "sendgrid"
TITLE = "SendGrid"
SECRET = "NEWSLETTER_SENDGRID_WEBHOOK_PUBLIC_KEY"
SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"

# A dropped message's reason (SendGrid did not even try, because of its own suppression lists).
# An address SendGrid holds as bounced or as a spam reporter is one; an invalid one is a hard
# bounce; an expired message (retried for 72 hours in vain) a soft one. Unsubscribed addresses and
# reasons about our sending (spam content, quota) are not about the address: ignored.
DROPPED_KINDS = {
    "bounced address": "hard_bounce",
    "invalid": "hard_bounce",
    "spam reporting address": "complaint",
    "expired": "soft_bounce",
}


def configured(config: Mapping[str, Any]) -> bool:
    return bool(config.get(SECRET))


def verify(request: Request, config: Mapping[str, Any]) -> Received:
    signature, timestamp = request.headers.get(SIGNATURE_HEADER), request.headers.get(TIMESTAMP_HEADER)
    if not signature or not timestamp:
        raise Unauthenticated(f"SendGrid's events must be signed: turn on the Signed Event Webhook ({SIGNATURE_HEADER} "
                              f"and {TIMESTAMP_HEADER} are missing).")
    check_fresh(config, timestamp, TIMESTAMP_HEADER)
    body = request.get_data(cache=True)
    key = load_der_public_key(base64.b64decode(config[SECRET]))
    assert isinstance(key, ec.EllipticCurvePublicKey)  # config checked it
    try:
        key.verify(base64.b64decode(signature, validate=True), timestamp.encode("ascii") + body,
                   ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, binascii.Error, ValueError, UnicodeEncodeError):
        raise Unauthenticated("The signature does not match the body and timestamp: refused.") from None
    try:
        payload = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadPayload("The body is not JSON in UTF-8.") from None
    if not isinstance(payload, list):
        raise BadPayload("The body is not a SendGrid event batch (a JSON array of events).")
    return Received(payload)


def events(payload: list[Any]) -> list[ProviderEvent]:
    found = []
    for item in payload:
        if isinstance(item, dict) and (event := _event(item)) is not None:
            found.append(event)
    return found


def _event(item: dict[str, Any]) -> ProviderEvent | None:
    name = item.get("event")
    if name == "bounce":
        # type "blocked": refused for a reason that may pass (reputation, content): soft.
        kind = "soft_bounce" if item.get("type") == "blocked" else "hard_bounce"
    elif name == "dropped":
        reason = clean(item.get("reason"), 200) or ""
        kind = DROPPED_KINDS.get(reason.lower())  # type: ignore[assignment]
    elif name == "spamreport":
        kind = "complaint"
    else:
        # deferred is left out: SendGrid is still trying (for up to 72 hours) and says bounce or
        # dropped (Expired) if it gives up; counting each deferral would suppress an address after
        # one slow delivery. processed, delivered, open, click, unsubscribe…: not bounces either.
        return None
    address = address_text(item.get("email"))
    if kind is None or address is None:
        return None
    words = [text for text in (clean(item.get("status"), 20), clean(item.get("reason"))) if text]
    subtype = clean(item.get("type"), 30)
    label = f"{name} ({subtype})" if subtype else name
    return ProviderEvent(address=address, kind=kind, occurred_at=moment_from_unix(item.get("timestamp")),
                         diagnostic=f"{label}: {' '.join(words)}" if words else str(label),
                         event_id=event_id(item.get("sg_event_id")))
