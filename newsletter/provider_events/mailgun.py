"""Mailgun's webhooks (the current ones, JSON with "signature" and "event-data").

Mailgun signs timestamp + token with HMAC-SHA256 under the webhook signing key
(NEWSLETTER_MAILGUN_SIGNING_KEY). The signature sits in the body, so a captured request could be
sent again as is: a timestamp older than NEWSLETTER_WEBHOOK_MAX_AGE is refused, and each token is
kept in the database (in the transaction that records the events) for that long, so a token seen
before is refused too. The database, not process memory: several web processes share it, and a
delivery whose transaction failed leaves no token behind, so Mailgun's retry is taken.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from typing import Any

from flask import Request

from . import (
    BadPayload, ProviderEvent, Received, Unauthenticated, address_text, check_fresh, clean, event_id, json_body,
    moment_from_unix
)

NAME = "mailgun"
TITLE = "Mailgun"
SECRET = "NEWSLETTER_MAILGUN_SIGNING_KEY"


def configured(config: Mapping[str, Any]) -> bool:
    return bool(config.get(SECRET))


def verify(request: Request, config: Mapping[str, Any]) -> Received:
    payload = json_body(request)
    if not isinstance(payload, dict):
        raise BadPayload("The body is not a Mailgun webhook (a JSON object sent as application/json; "
                         "the legacy form-encoded webhooks are not taken).")
    signed = payload.get("signature")
    if not isinstance(signed, dict) or not all(isinstance(signed.get(name), str) and signed[name]
                                               for name in ("timestamp", "token", "signature")):
        raise Unauthenticated("The webhook has no signature (timestamp, token and signature).")
    timestamp, token, signature = signed["timestamp"], signed["token"], signed["signature"]
    expected = hmac.new(config[SECRET].encode("utf-8"), (timestamp + token).encode("utf-8", "surrogatepass"),
                        hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected.encode("ascii"), signature.encode("utf-8", "surrogatepass")):
        raise Unauthenticated("The signature does not match: check NEWSLETTER_MAILGUN_SIGNING_KEY.")
    check_fresh(config, timestamp, "signature's timestamp")
    if not isinstance(payload.get("event-data"), dict):
        raise BadPayload("The webhook has no event-data object.", "event-data")
    return Received(payload, nonce=token)


def events(payload: dict[str, Any]) -> list[ProviderEvent]:
    data = payload["event-data"]
    name, severity, reason = data.get("event"), data.get("severity"), data.get("reason")
    if name == "complained":
        kind, identifier, shared = "complaint", event_id(data.get("id")), False
    elif name == "failed" and severity == "permanent":
        if reason == "suppress-unsubscribe":
            return []  # Mailgun held the message back because the reader unsubscribed there: no bounce
        kind = "complaint" if reason == "suppress-complaint" else "hard_bounce"
        identifier, shared = event_id(data.get("id")), False
    elif name == "failed":
        # Mailgun retries a temporary failure for hours, reporting each attempt: one message's
        # attempts count as one soft bounce.
        message = data.get("message") if isinstance(data.get("message"), dict) else {}
        headers = message.get("headers") if isinstance(message.get("headers"), dict) else {}
        kind, shared = "soft_bounce", True
        identifier = event_id("soft", headers.get("message-id")) or event_id(data.get("id"))
    else:
        return []  # accepted, delivered, opened, clicked, unsubscribed…
    address = address_text(data.get("recipient"))
    if address is None:
        return []
    status = data.get("delivery-status") if isinstance(data.get("delivery-status"), dict) else {}
    code = status.get("code") if isinstance(status.get("code"), int) else None
    words = [text for text in (str(code) if code else None, clean(status.get("message")) or clean(status.get("description")))
             if text]
    label = " / ".join(text for text in (clean(name, 30), clean(severity, 30), clean(reason, 60)) if text)
    return [ProviderEvent(address=address, kind=kind, occurred_at=moment_from_unix(data.get("timestamp")),
                          diagnostic=f"{label}: {' '.join(words)}" if words else label,
                          event_id=identifier, shared_id=shared)]
