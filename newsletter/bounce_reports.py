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
from email.errors import HeaderParseError
from email.header import decode_header, make_header
from email.iterators import typed_subpart_iterator
from email.message import Message
from email.utils import getaddresses, parseaddr
from typing import Any

from flufl.bounce import all_failures
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from . import suppressions
from .models import OutboxMessage, Reader

# A bounce or a complaint puts its report first and the returned message last: the first 10 MB
# hold every report worth reading, and a bigger message is cut there rather than held in memory.
MAX_MESSAGE_BYTES = 10 * 1024 * 1024
PROVIDER = "mailbox"
# Feedback types (RFC 5965 section 7.3) that are a reader's complaint; `auth-failure` (DMARC
# reports), `not-spam` and `other` are not, and record nothing.
COMPLAINT_TYPES = frozenset({"abuse", "fraud", "virus"})
DIAGNOSTIC_LIMIT = 500
# Recipients looked at per notification: one of our messages has one; a forged report may name thousands.
MAX_RECIPIENTS = 5
# Message-IDs of returned messages looked up per notification.
MAX_RETURNED_IDS = 10
NOT_OURS = "not a bounce of a message we sent"

# flufl.bounce logs a detector's exception with its traceback before raising it: a malformed
# message would print one on the command's stderr. The caller reports it in one line instead.
_flufl_log = logging.getLogger("flufl.bounce")
_flufl_log.addHandler(logging.NullHandler())
_flufl_log.propagate = False

_STATUS = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})")
_ADDRESS = re.compile(r"[^@\s<>]+@[^@\s<>]+")
_MESSAGE_ID = re.compile(r"<[^<>\s]{1,250}>")
# A Message-ID header quoted in the text of a bounce that returns the original headers inline.
_QUOTED_MESSAGE_ID = re.compile(r"^[ \t>]*Message-ID:[ \t]*(<[^<>\s]{1,250}>)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Report:
    """One recipient's bounce or complaint found in a notification."""

    address: str
    kind: str  # hard_bounce, soft_bounce or complaint
    diagnostic: str | None
    event_id: str


@dataclass
class Reading:
    """What a notification says: its reports, or why it says nothing we act on."""

    reports: list[Report] = field(default_factory=list)
    # Set when nothing was recognized: a short reason for the operator.
    nothing_because: str | None = None
    # The Message-IDs the notification returns (from the returned message or its headers, the
    # report's In-Reply-To and References): record() acts only on a report about one of ours.
    returned_ids: list[str] = field(default_factory=list)
    # An ARF complaint whose recipient is redacted (as many providers do): our Message-ID in the
    # returned message still names the address we sent it to (see record).
    redacted_complaint: str | None = None  # the complaint's diagnostic


def read(raw: bytes) -> Reading:
    """The bounces and complaints in one message (bytes as delivered); never raises for bad input."""
    if not raw.strip():
        return Reading(nothing_because="the message is empty")
    try:
        message = email.message_from_bytes(raw)
    except Exception as error:  # noqa: BLE001 (the parser's own failure on hostile input: say so, don't crash)
        return Reading(nothing_because=f"the message could not be parsed ({type(error).__name__})")
    returned_ids = returned_message_ids(message)
    feedback = _feedback_fields(message)
    if feedback is not None:
        reading = _read_complaint(message, feedback)
        reading.returned_ids = returned_ids
        return reading
    try:
        temporary, permanent = all_failures(message)
    except Exception as error:  # noqa: BLE001 (a detector choking on a malformed message)
        return Reading(nothing_because=f"the bounce detector could not read it ({type(error).__name__})")
    statuses = _dsn_statuses(message)
    reports: dict[str, Report] = {}
    # Only failures: a delay warning (Action: delayed, flufl.bounce's "temporary") is no failure,
    # and the message may still be delivered. A failure with a transient status is a soft bounce.
    for raw_address in sorted(permanent)[:MAX_RECIPIENTS]:
        address = _clean_address(raw_address.decode("ascii", "replace"))
        if address is None or address.lower() in reports:
            continue
        status, diagnostic = statuses.get(address.lower(), (None, None))
        kind = "soft_bounce" if _transient(status) else "hard_bounce"
        reports[address.lower()] = Report(address, kind, diagnostic, "")
    if not reports:
        because = ("it only warns of a delay; the message may still be delivered" if temporary
                   else "it is neither a bounce nor a complaint (an out-of-office reply?)")
        return Reading(nothing_because=because, returned_ids=returned_ids)
    return Reading(reports=list(reports.values()), returned_ids=returned_ids)


def returned_message_ids(message: Message) -> list[str]:
    """The Message-IDs of the message(s) a notification returns, at most MAX_RETURNED_IDS.

    From the returned message or its headers (message/rfc822, text/rfc822-headers), the report's
    In-Reply-To and References, and a Message-ID header quoted in a text part (bounces that return
    the original inline). The notification's own Message-ID is not one of them.
    """
    found: list[str] = []
    original = _returned_headers(message)
    if original is not None:
        found += _MESSAGE_ID.findall(_one_line(original.get("Message-ID")))
    for header in ("In-Reply-To", "References"):
        found += _MESSAGE_ID.findall(_one_line(message.get(header)))
    for part in typed_subpart_iterator(message, "text"):
        payload = part.get_payload(decode=True)  # a malformed encoding comes back as it is, not raised
        if isinstance(payload, bytes):
            found += _QUOTED_MESSAGE_ID.findall(payload[:MAX_MESSAGE_BYTES].decode("utf-8", "replace"))
    own = _one_line(message.get("Message-ID"))
    unique = list(dict.fromkeys(found))
    return [message_id for message_id in unique if message_id != own][:MAX_RETURNED_IDS]


def _read_complaint(message: Message, feedback: Message) -> Reading:
    feedback_type = " ".join(str(feedback.get("Feedback-Type", "")).split()).lower()
    if feedback_type not in COMPLAINT_TYPES:
        shown = feedback_type[:40] or "none"
        return Reading(nothing_because=f"it is a feedback report of type {shown!r}, not a complaint")
    diagnostic = f"ARF feedback type {feedback_type}"
    if feedback.get("User-Agent"):
        diagnostic += f" from {_one_line(feedback['User-Agent'])}"
    named = [_decoded(value) for header in ("Original-Rcpt-To", "Removal-Recipient")
             for value in (feedback.get_all(header) or [])]
    addresses = [_clean_address(parseaddr(value)[1] or value) for value in named if value]
    if not any(addresses):
        original = _returned_headers(message)
        if original is not None:
            addresses = [_clean_address(address) for _, address in getaddresses(original.get_all("To") or [])]
    found = {address.lower(): address for address in addresses if address}
    if found:
        return Reading(reports=[Report(address, "complaint", _cut(diagnostic), "")
                                for address in list(found.values())[:MAX_RECIPIENTS]])
    return Reading(redacted_complaint=_cut(diagnostic), nothing_because="the complaint names no recipient")


def _decoded(value: Any) -> str | None:
    """A header's text with RFC 2047 encoded words decoded; None when they can't be."""
    try:
        return str(make_header(decode_header(str(value))))
    except (HeaderParseError, LookupError, UnicodeError, ValueError):
        return None


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


def _event_id(config: Mapping[str, Any], returned_id: str, address: str, kind: str) -> str:
    """The provider_event_id: our returned message and (a keyed hash of) its recipient, never the address.

    So each of our messages counts once per kind however many notifications speak of it (a
    notification read twice, a warning then the final failure of a full mailbox).
    """
    event_id = f"{returned_id} {suppressions.address_key(config, address)[:16]}"
    event_id = event_id if kind == "soft_bounce" else f"{event_id} {kind}"
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
    """Record each report about one of our messages as a delivery event and apply the suppression rules.

    The bounce mailbox takes mail from anyone: a report counts only when the notification returns a
    message we sent (its Message-ID in the outbox) and names that message's recipient. Otherwise
    nothing is recorded and reading.nothing_because says why. The caller commits.
    """
    if not reading.reports and reading.redacted_complaint is None:
        return []
    # A row queued before the upgrade holds the address it went to; the others went to their reader's.
    ours = session.execute(
        select(OutboxMessage.message_id, func.coalesce(OutboxMessage.to_address, Reader.email))
        .outerjoin(Reader, Reader.id == OutboxMessage.reader_id)
        .where(OutboxMessage.message_id.in_(reading.returned_ids))).all() if reading.returned_ids else []
    sent_to = {suppressions.address_key(config, to_address): (message_id, to_address) for message_id, to_address in ours}
    reports: list[Report] = []
    if not reading.reports and reading.redacted_complaint is not None:
        # The complaint names no recipient: the address our returned message went to is the one.
        reports = [Report(to_address, "complaint", reading.redacted_complaint,
                          _event_id(config, message_id, to_address, "complaint"))
                   for message_id, to_address in sent_to.values()][:1]
    for report in reading.reports:
        match = sent_to.get(suppressions.address_key(config, report.address))
        if match is not None:
            reports.append(Report(report.address, report.kind, report.diagnostic,
                                  _event_id(config, match[0], report.address, report.kind)))
    if not reports:
        reading.nothing_because = (f"{NOT_OURS} (it returns no Message-ID of ours)" if not ours
                                   else f"{NOT_OURS} (the address it reports is not the one we sent to)")
        return []
    outcomes = []
    for report in reports:
        recorded = suppressions.record_event(session, config, report.address, kind=report.kind, provider=PROVIDER,
                                             diagnostic=report.diagnostic, provider_event_id=report.event_id)
        entry = recorded.suppression
        reason = entry.reason if entry is not None and entry.reason in suppressions.MAIL_STOPPING else None
        outcomes.append(Outcome(report, recorded.event is not None, reason))
    return outcomes
