"""The transactional outbox: enqueue in the caller's transaction; claim, send and retry due messages."""

from __future__ import annotations

import email.policy
import logging
import smtplib
import threading
from dataclasses import dataclass
from datetime import timedelta
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from functools import lru_cache
from typing import Any

from flask import Flask, current_app
from flask_sqlalchemy.session import Session as FlaskSession
from sqlalchemy import event, func, insert, select
from sqlalchemy.orm import Session

from .mailer import PermanentFailure, Transport, transport_for
from .models import OutboxMessage, utcnow

log = logging.getLogger(__name__)

MAX_BACKOFF = timedelta(hours=1)
# Long List-Unsubscribe URLs must stay whole: fold only where RFC 5322 demands it, never encode them.
MESSAGE_POLICY = email.policy.SMTP.clone(max_line_length=998)


def enqueue(session: Session, **message: Any) -> None:
    """Add a message (the arguments of message_row) to the outbox; it is sent only if the transaction commits."""
    # A Core INSERT: nothing reads the row back, and the ORM's unit of work costs more than the send.
    session.connection().execute(insert(OutboxMessage), message_row(**message))
    note_enqueued(session)


def message_row(
    *,
    kind: str,
    to_address: str,
    subject: str,
    body_text: str,
    body_html: str,
    mail_from: str,
    reader_id: int | None = None,
    to_name: str | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The outbox_messages row of a new message, for an INSERT."""
    now = utcnow()
    return {
        "kind": kind,
        "reader_id": reader_id,
        "message_id": make_msgid(idstring="newsletter", domain=_domain_of(mail_from)),
        "mail_from": mail_from,
        "to_address": to_address,
        "to_name": to_name,
        "subject": subject,
        "body_text": body_text,
        "body_html": body_html,
        "headers": headers or {},
        "status": "pending",
        "attempts": 0,
        "created_at": now,
        "next_attempt_at": now,
    }


def note_enqueued(session: Session) -> None:
    """Wake the in-process drainer when this transaction commits."""
    session.info["outbox_enqueued"] = True


@lru_cache(maxsize=64)
def _domain_of(mail_from: str) -> str:
    return Address(addr_spec=_address_of(mail_from)).domain or "localhost"


def _address_of(header_value: str) -> str:
    return parseaddr(header_value)[1] or "newsletters@localhost"


def as_email(row: OutboxMessage) -> EmailMessage:
    """The EmailMessage for an outbox row; the same Message-ID on every attempt."""
    message = EmailMessage(policy=MESSAGE_POLICY)
    message["Subject"] = row.subject
    message["From"] = row.mail_from
    # Address() quotes the display name and refuses CR/LF: no header injection through names.
    # Built from parts, it also takes internationalized local parts (sent with SMTPUTF8).
    username, _, domain = row.to_address.rpartition("@")
    message["To"] = Address(display_name=row.to_name or "", username=username, domain=domain)
    message["Date"] = format_datetime(row.created_at)
    message["Message-ID"] = row.message_id
    for name, value in row.headers.items():
        message[name] = value
    message.set_content(row.body_text)
    message.add_alternative(row.body_html, subtype="html")
    return message


@dataclass
class DrainResult:
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    stopped_by_error: str | None = None


def _backoff(attempts: int, base_seconds: int) -> timedelta:
    return min(timedelta(seconds=base_seconds * 2 ** max(attempts - 1, 0)), MAX_BACKOFF)


# Errors about one message (4xx for this recipient or sender); any other error means the server is away.
MESSAGE_ERRORS = (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError)


def _lease(config: dict[str, Any]) -> timedelta:
    # Long enough for connect + send with every SMTP timeout used up; a crashed sender's message is due again after it.
    return timedelta(seconds=4 * config["NEWSLETTER_SMTP_TIMEOUT"] + 60)


def send_next(session: Session, transport: Transport, config: dict[str, Any], result: DrainResult) -> bool:
    """Claim one due message, send it and record the outcome; False when nothing is due or the server is away.

    Claiming is a short transaction of its own (FOR UPDATE SKIP LOCKED on PostgreSQL) that leases the
    message by moving its next attempt past the send: other workers skip it, and no transaction (or
    SQLite's write lock) stays open while SMTP talks. If the sender dies, the lease runs out and the
    message is sent again, with the same Message-ID.
    """
    now = utcnow()
    row = session.scalars(
        select(OutboxMessage)
        .where(OutboxMessage.status == "pending", OutboxMessage.next_attempt_at <= now)
        .order_by(OutboxMessage.next_attempt_at, OutboxMessage.id)
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()
    if row is None:
        session.rollback()
        return False
    row_id = row.id
    row.attempts += 1
    row.next_attempt_at = now + _lease(config)
    try:
        message: EmailMessage | None = as_email(row)
        build_error = None
    except ValueError as error:
        message, build_error = None, error
    session.commit()

    error: Exception | None = build_error
    if message is not None:
        try:
            transport.send(message)
        except (PermanentFailure, OSError, smtplib.SMTPException, ValueError) as send_error:
            error = send_error
    _record_outcome(session, session.get(OutboxMessage, row_id), error, config, result)
    session.commit()
    return result.stopped_by_error is None


def _record_outcome(session: Session, row: OutboxMessage, error: Exception | None, config: dict[str, Any],
                    result: DrainResult) -> None:
    if error is None:
        row.status, row.sent_at, row.last_error = "sent", utcnow(), None
        result.sent += 1
        return
    row.last_error = f"{type(error).__name__}: {error}"
    permanent = isinstance(error, (PermanentFailure, smtplib.SMTPNotSupportedError, ValueError))
    if permanent or row.attempts >= config["NEWSLETTER_OUTBOX_MAX_ATTEMPTS"]:
        # Refused for good (5xx), a message this server can't take (e.g. no SMTPUTF8), or out of tries.
        row.status = "failed"
        result.failed += 1
        log.warning("outbox message %s failed after %s attempts: %s", row.id, row.attempts, row.last_error)
        return
    row.next_attempt_at = utcnow() + _backoff(row.attempts, config["NEWSLETTER_OUTBOX_RETRY_BASE"])
    result.retrying += 1
    log.info("outbox message %s will be retried at %s: %s", row.id, row.next_attempt_at, row.last_error)
    if not isinstance(error, MESSAGE_ERRORS):
        result.stopped_by_error = row.last_error


def drain(session: Session, transport: Transport, config: dict[str, Any], limit: int | None = None) -> DrainResult:
    """Send due messages until none is due, the server fails, or `limit` were handled."""
    result = DrainResult()
    handled = 0
    while limit is None or handled < limit:
        if not send_next(session, transport, config, result):
            break
        handled += 1
    return result


def counts(session: Session) -> dict[str, int]:
    """How many outbox messages are in each status."""
    rows = session.execute(select(OutboxMessage.status, func.count()).group_by(OutboxMessage.status))
    return {status: number for status, number in rows}


class InProcessDrainer:
    """A background thread that sends the outbox in the web process: the embedded default.

    It wakes when a transaction that enqueued mail commits, and polls now and then for retries.
    """

    def __init__(self, app: Flask, poll_seconds: float = 5.0) -> None:
        self.app = app
        self.poll_seconds = poll_seconds
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-drainer", daemon=True)

    def start(self) -> InProcessDrainer:
        self._thread.start()
        return self

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        from .extensions import db

        with self.app.app_context():
            transport = transport_for(self.app.config)
            while not self._stop.is_set():
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                try:
                    drain(db.session, transport, self.app.config)
                    transport.close()
                except Exception:
                    log.exception("the in-process outbox drainer hit an error; it will try again")
                    db.session.rollback()
                finally:
                    db.session.remove()


def attach_drainer(app: Flask, drainer: InProcessDrainer) -> None:
    app.extensions["newsletter.drainer"] = drainer


@event.listens_for(FlaskSession, "after_commit")
def _wake_drainer(session: Session) -> None:
    if session.info.pop("outbox_enqueued", False):
        drainer = current_app.extensions.get("newsletter.drainer")
        if drainer is not None:
            drainer.wake()
