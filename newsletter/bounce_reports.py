"""Bounces (RFC 3464 delivery status notifications and the non-standard kinds) and spam complaints (ARF,
RFC 5965) read from the bounce mailbox, and recorded as delivery events.

Bounce detection is flufl.bounce's (Mailman's detector, which knows many servers' own formats); this
module adds what it leaves out: which failures are transient (RFC 3463 status codes), the receiving
server's words for each recipient, and complaints.
"""

from __future__ import annotations

import email
import hashlib
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.iterators import typed_subpart_iterator
from email.message import Message
from email.utils import getaddresses, parseaddr
from typing import Any

from flufl.bounce import all_failures
from sqlalchemy import select
from sqlalchemy.orm import Session

from . import suppressions
from .models import OutboxMessage

# A bounce or a complaint puts its report first and the returned message last: the first 10 MB
# hold every report worth reading, and a bigger message is cut there rather than held in memory.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
PROVIDER = "mailbox"
# Feedback types (RFC 5965 section 7.3) that are a reader's complaint; `auth-failure` (DMARC
# reports), `not-spam` and `other` are not, and record nothing.
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus"})
DIAGNOSTIC_LIMIT = 500

# flufl.bounce logs a detector's exception with its traceback before raising it: a malformed
# message would print one on the command's stderr. The caller reports it in one line instead.
_flufl_log = logging.getLogger("flufl.bounce")
_flufl_log.addHandler(logging.NullHandler())
_flufl_log.propagate = False

_STATUS = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})")
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+")


@dataclass(frozen=True)
class Report:
    """One recipient's bounce or complaint found in a notification."""

    address: str
    kind: str  # hard_bounce, soft_bounce or complaint
    diagnostic: str | None
    notification_id: str  # the notification's Message-ID (or a hash of its bytes)


@dataclass
class Reading:
    """What a notification says: its reports, or why it says nothing we act on."""

    reports: list[Report] = field(default_factory=list)
    # Set when nothing was recognized: a short reason for the operator.
    nothing_because: str | None = None
    # An ARF complaint whose recipient is redacted (as many providers do): our Message-ID in the
    # returned message still names the address we sent it to (see record).
    redacted_complaint: tuple[str, str, str] | None = None  # (original Message-ID, event id base, feedback type)


def read(raw: bytes) -> Reading:
    """The bounces and complaints in one message (bytes as delivered); never raises for bad input."""
    if not raw.strip():
        return Reading(nothing_because="the message is empty")
    try:
        message = email.message_from_bytes(raw)
    except Exception as error:  # noqa: BLE001 (the parser's own failure on hostile input: say so, don't crash)
        return Reading(nothing_because=f"the message could not be parsed ({type(error).__name__})")
    base_id = _notification_id(message, raw)
    feedback = _feedback_fields(message)
    if feedback is not None:
        return _read_complaint(message, feedback, base_id)
    try:
        temporary, permanent = all_failures(message)
    except Exception as error:  # noqa: BLE001 (a detector choking on a malformed message)
        return Reading(nothing_because=f"the bounce detector could not read it ({type(error).__name__})")
    statuses = _dsn_statuses(message)
    reports: dict[str, Report] = {}
    for raw_address, permanent_failure in [(a, False) for a in temporary] + [(a, True) for a in permanent]:
        address = _clean_address(raw_address.decode("ascii", "replace"))
        if address is None:
            continue
        status, diagnostic = statuses.get(address.lower(), (None, None))
        kind = "hard_bounce" if permanent_failure and not _transient(status) else "soft_bounce"
        # A recipient both delayed and failed in one notification: the failure is what counts.
        if address.lower() not in reports or kind == "hard_bounce":
            reports[address.lower()] = Report(address, kind, diagnostic, base_id)
    if not reports:
        return Reading(nothing_because="it is neither a bounce nor a complaint (an out-of-office reply?)")
    return Reading(reports=list(reports.values()))


def _read_complaint(message: Message, feedback: Message, base_id: str) -> Reading:
    feedback_type = " ".join(str(feedback.get("Feedback-Type", "")).split()).lower()
    if feedback_type not in COMPLAINT_TYPES:
        shown = feedback_type[:40] or "none"
        return Reading(nothing_because=f"it is a feedback report of type {shown!r}, not a complaint")
    diagnostic = f"ARF feedback type {feedback_type}"
    if feedback.get("User-Agent"):
        diagnostic += f" from {_one_line(feedback['User-Agent'])}"
    named = [value for header in ("Original-Rcpt-To", "Removal-Recipient")
             for value in (feedback.get_all(header) or [])]
    addresses = [_clean_address(parseaddr(str(value))[1] or str(value)) for value in named]
    if not any(addresses):
        original = _returned_headers(message)
        if original is not None:
            addresses = [_clean_address(address) for _, address in getaddresses(original.get_all("To") or [])]
    found = {address.lower(): address for address in addresses if address}
    if found:
        return Reading(reports=[Report(address, "complaint", _cut(diagnostic), base_id)
                                for address in found.values()])
    original = _returned_headers(message)
    our_id = original.get("Message-ID") if original is not None else None
    if our_id:
        return Reading(redacted_complaint=(str(our_id).strip(), base_id, diagnostic),
                       nothing_because="the complaint names no recipient")
    return Reading(nothing_because="the complaint names no recipient and returns no Message-ID of ours")


def _feedback_fields(message: Message) -> Message | None:
    """The fields of an ARF report's message/feedback-report part, if the message is one."""
    for part in message.walk():
        if part.get_content_type() == "message/feedback-report":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
            if isinstance(payload, str):
                return email.message_from_string(payload)
    return None


def _returned_headers(message: Message) -> Message | None:
    """The headers of the message a report returns (message/rfc822 or text/rfc822-headers), if any."""
    for part in message.walk():
        content_type = part.get_content_type()
        if content_type == "message/rfc822":
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
        elif content_type == "text/rfc822-headers":
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                return email.message_from_bytes(payload)
    return None


def _dsn_statuses(message: Message) -> dict[str, tuple[str | None, str | None]]:
    """Each recipient (lowercased) of the RFC 3464 parts: its Status and a diagnostic to keep."""
    found: dict[str, tuple[str | None, str | None]] = {}
    for part in typed_subpart_iterator(message, "message", "delivery-status"):
        blocks = part.get_payload()  # type: ignore[attr-defined]
        if not isinstance(blocks, list):
            continue
        for block in blocks:
            if not isinstance(block, Message):
                continue
            status = _one_line(block.get("Status")) or None
            code = _one_line(block.get("Diagnostic-Code")) or None
            diagnostic = _cut(" ".join(text for text in (status, code and f"({code})") if text)) or None
            for header in ("Original-Recipient", "Final-Recipient", "X-Actual-Recipient"):
                value = _one_line(block.get(header))
                address = _clean_address(value.partition(";")[2] or value)
                if address is not None:
                    found.setdefault(address.lower(), (status, diagnostic))
    return found


def _transient(status: str | None) -> bool:
    """Whether an RFC 3463 status is a transient failure: 4.x.x, or X.2.2 mailbox full.

    RFC 3463 says X.2.2 "should be used as a persistent transient failure": the owner can make
    room, so a full mailbox is a soft bounce even when the server gave up with a 5.2.2.
    """
    match = _STATUS.match(status or "")
    return match is not None and (match.group(1) == "4" or match.group(2, 3) == ("2", "2"))


def _clean_address(text: str | None) -> str | None:
    """The address in `text` (angle brackets and spaces gone), or None when there is none."""
    if not text:
        return None
    match = _ADDRESS.search(text.replace("\x00", ""))
    if match is None or len(match.group(0)) > 320 or "\ufffd" in match.group(0):
        return None
    return match.group(0).strip(".;,\"'()[]")


def _notification_id(message: Message, raw: bytes) -> str:
    """What names this notification: its Message-ID, or a hash of its bytes when it has none."""
    message_id = _one_line(message.get("Message-ID"))
    if message_id:
        return message_id[:200]
    return "sha256:" + hashlib.sha256(raw).hexdigest()


def _event_id(config: Mapping[str, Any], base_id: str, address: str) -> str:
    """The provider_event_id: the notification and the recipient, so that a message read twice counts once.

    The recipient as a keyed hash, not the address: event ids outlive an erasure, addresses must not.
    """
    event_id = f"{base_id} {suppressions.address_key(config, address)[:16]}"
    return event_id if len(event_id) <= 255 else "sha256:" + hashlib.sha256(event_id.encode()).hexdigest()


def _one_line(value: Any) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _cut(text: str | None) -> str | None:
    return text[:DIAGNOSTIC_LIMIT] if text else text


@dataclass(frozen=True)
class Outcome:
    """A report as recorded: new or read before, and the suppression in force after it (if any)."""

    report: Report
    new: bool
    suppression_reason: str | None


def record(session: Session, config: Mapping[str, Any], reading: Reading) -> list[Outcome]:
    """Record each report as a delivery event and apply the suppression rules. The caller commits."""
    reports = list(reading.reports)
    if not reports and reading.redacted_complaint is not None:
        our_id, base_id, diagnostic = reading.redacted_complaint
        address = session.scalar(select(OutboxMessage.to_address).where(OutboxMessage.message_id == our_id))
        if address is not None:
            reports = [Report(address, "complaint", diagnostic, base_id)]
    outcomes = []
    for report in reports:
        recorded = suppressions.record_event(session, config, report.address, kind=report.kind, provider=PROVIDER,
                                             diagnostic=report.diagnostic,
                                             provider_event_id=_event_id(config, report.notification_id,
                                                                         report.address))
        entry = recorded.suppression
        reason = entry.reason if entry is not None and entry.reason in suppressions.MAIL_STOPPING else None
        outcomes.append(Outcome(report, recorded.event is not None, reason))
    return outcomes
