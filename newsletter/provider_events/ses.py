"""Amazon SES bounce and complaint notifications, delivered by Amazon SNS over https.

The body is an SNS message (sent as text/plain) whose signature sns.verify checks. Its Message is
SES's JSON: notificationType (or eventType, with configuration-set event publishing) Bounce or
Complaint. Only topics listed in NEWSLETTER_SES_TOPIC_ARNS are taken: any AWS account can make a
topic, sign a notification and subscribe our URL to it, so a valid signature alone proves nothing
about whose bounces these are.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

from flask import Request

from . import BadPayload, ProviderEvent, Received, Refused, address_text, clean, event_id, moment_from_iso, sns

NAME = "ses"
TITLE = "Amazon SES"
SECRET = "NEWSLETTER_SES_TOPIC_ARNS"
log = logging.getLogger(__name__)

# bounce.bounceType: only Permanent is a hard bounce; SES retried a Transient one already.
_BOUNCE_KINDS = {"Permanent": "hard_bounce", "Transient": "soft_bounce", "Undetermined": "soft_bounce"}


def configured(config: Mapping[str, Any]) -> bool:
    return config.get(SECRET) is not None


def _read_json(text: bytes) -> Any:
    try:
        return json.loads(text.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadPayload("The body is not an Amazon SNS message (JSON in UTF-8).") from None


def verify(request: Request, config: Mapping[str, Any]) -> Received:
    message = _read_json(request.get_data(cache=True))
    if not isinstance(message, dict):
        raise BadPayload("The body is not an Amazon SNS message (a JSON object).")
    header = request.headers.get("x-amz-sns-message-type")
    if header is not None and header != message.get("Type"):
        raise BadPayload("The x-amz-sns-message-type header does not match the message's Type.", "Type")
    topics = config[SECRET]
    topic = message.get("TopicArn")
    if topics != ["*"] and topic not in topics:
        raise Refused(f"Notifications of the topic {str(topic)[:300]!r} are not taken here: add its ARN to "
                      "NEWSLETTER_SES_TOPIC_ARNS if it is yours.")
    sns.verify(message, config["NEWSLETTER_SNS_TIMEOUT"])
    if message["Type"] == "SubscriptionConfirmation":
        sns.confirm_subscription(message, config["NEWSLETTER_SNS_TIMEOUT"])
    elif message["Type"] == "UnsubscribeConfirmation":
        log.warning("Amazon SNS says this URL was unsubscribed from %s", topic)
    return Received(message)


def events(payload: dict[str, Any]) -> list[ProviderEvent]:
    if payload.get("Type") != "Notification":
        return []
    try:
        notification = json.loads(payload["Message"])
    except (ValueError, RecursionError):
        notification = None
    if not isinstance(notification, dict):
        # A topic may carry other messages (an SNS console test, say): nothing of SES's to record.
        return []
    kind = notification.get("notificationType") or notification.get("eventType")
    if kind == "Bounce":
        return _bounces(notification.get("bounce"), payload.get("MessageId"))
    if kind == "Complaint":
        return _complaints(notification.get("complaint"), payload.get("MessageId"))
    return []  # Delivery, Send, Open, Click, DeliveryDelay, Reject…: not about the address


def _recipients(report: dict[str, Any], field: str) -> list[dict[str, Any]]:
    items = report.get(field)
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []


def _bounces(bounce: Any, message_id: Any) -> list[ProviderEvent]:
    if not isinstance(bounce, dict):
        raise BadPayload("The SES bounce notification has no bounce object.", "Message")
    kind = _BOUNCE_KINDS.get(bounce.get("bounceType"), "soft_bounce")
    summary = " / ".join(text for text in (clean(bounce.get("bounceType"), 50), clean(bounce.get("bounceSubType"), 50))
                         if text)
    identifier = event_id(bounce.get("feedbackId")) or event_id(message_id)
    found = []
    for recipient in _recipients(bounce, "bouncedRecipients"):
        address = address_text(recipient.get("emailAddress"))
        if address is None:
            continue
        diagnostic = clean(recipient.get("diagnosticCode")) or clean(recipient.get("status"))
        found.append(ProviderEvent(address=address, kind=kind, occurred_at=moment_from_iso(bounce.get("timestamp")),
                                   diagnostic=f"{summary}: {diagnostic}" if diagnostic else summary or None,
                                   event_id=identifier, shared_id=True))
    return found


def _complaints(complaint: Any, message_id: Any) -> list[ProviderEvent]:
    if not isinstance(complaint, dict):
        raise BadPayload("The SES complaint notification has no complaint object.", "Message")
    feedback = clean(complaint.get("complaintFeedbackType"), 50)
    agent = clean(complaint.get("userAgent"), 200)
    diagnostic = "Complaint" + (f" ({feedback})" if feedback else "") + (f" via {agent}" if agent else "")
    identifier = event_id(complaint.get("feedbackId")) or event_id(message_id)
    return [ProviderEvent(address=address, kind="complaint", occurred_at=moment_from_iso(complaint.get("timestamp")),
                          diagnostic=diagnostic, event_id=identifier, shared_id=True)
            for recipient in _recipients(complaint, "complainedRecipients")
            if (address := address_text(recipient.get("emailAddress"))) is not None]
