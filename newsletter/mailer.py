"""Transports that deliver an EmailMessage: SMTP, or .eml files in a folder for development."""

from __future__ import annotations

import re
import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit


class PermanentFailure(Exception):
    """The server refused this message for good (5xx to its sender, recipient or data): retrying won't help."""


class TemporaryFailure(Exception):
    """The server put this message off (4xx to its sender, recipient or data) while it takes other mail."""


class RecipientRefused(PermanentFailure):
    """The relay refused the recipient for good at RCPT TO (5xx): the message fails.

    `diagnostic` is the relay's reply, e.g. "550 5.1.1 <x@example.com>: Recipient address rejected".
    `bounce` is what the refusal says of the address (classify_refusal): "hard_bounce" (no such
    mailbox), "soft_bounce" (mailbox full) or None (the relay's policy, the sender, the message).
    """

    def __init__(self, description: str, *, diagnostic: str, bounce: str | None = "hard_bounce") -> None:
        super().__init__(description)
        self.diagnostic = diagnostic
        self.bounce = bounce


class RecipientDeferred(TemporaryFailure):
    """The relay put the recipient off at RCPT TO (4xx): retried; a soft bounce if it never goes."""

    def __init__(self, description: str, *, diagnostic: str) -> None:
        super().__init__(description)
        self.diagnostic = diagnostic


class RelayUnavailable(Exception):
    """The relay takes no mail now (refused, timed out, 421, login or TLS failed, hung up): not the message's fault.

    `mid_message`: the connection broke while this message was being sent, without a reply about it.
    """

    def __init__(self, description: str, *, mid_message: bool = False) -> None:
        super().__init__(description)
        self.mid_message = mid_message


# Replies about the relay, not the message: 421 closes the channel; 530/535/538 ask for a (working) login.
RELAY_CODES = frozenset({421, 530, 534, 535, 538})

# RFC 3463 enhanced status code at the start of a reply's text, e.g. "5.1.1".
_ENHANCED = re.compile(r"\s*([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
# A 550/551/553 without an enhanced code is a hard bounce only when its words say the mailbox does
# not exist. "Mailbox unavailable" is left out on purpose: RFC 5321 gives it as 550's generic text,
# and relays answer policy refusals (blocklists, relay denied) with it.
_UNKNOWN_USER = re.compile(
    r"user unknown|unknown user|no such user|no such mailbox|unknown recipient|recipient unknown"
    r"|(?:user|mailbox|recipient|address|account) (?:\S+ )?does not exist", re.IGNORECASE)


def classify_refusal(code: int, text: str) -> str | None:
    """What a 5xx refusal at RCPT TO says of the recipient's address (RFC 3463): a bounce kind, or None.

    Only statuses about the mailbox itself are bounces: 5.1.x (no such mailbox or domain, moved)
    and 5.2.1 (mailbox disabled) are hard bounces; X.2.2 (mailbox full) is a soft bounce, as RFC
    3463 calls it "persistent transient". X.7.x (policy, relay access denied, sender rejected),
    X.3.x, X.4.x, X.5.x and other X.2.x are about the sender, the relay or the message: no bounce.
    """
    match = _ENHANCED.match(text)
    if match is None:
        return "hard_bounce" if code in (550, 551, 553) and _UNKNOWN_USER.search(text) else None
    subject, detail = match.group(2), match.group(3)
    if subject == "2" and detail == "2":
        return "soft_bounce"
    if subject == "1" or (subject == "2" and detail == "1"):
        return "hard_bounce"
    return None


class Transport(Protocol):
    def send(self, message: EmailMessage) -> None: ...

    def close(self) -> None: ...


class FolderTransport:
    """Writes each message as <Message-ID>.eml into a folder (the embedded default)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def send(self, message: EmailMessage) -> None:
        name = message["Message-ID"].strip("<>").replace("/", "_")
        temporary = self.folder / f".{name}.tmp"
        content = message.as_bytes(policy=message.policy.clone(utf8=True))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            temporary.write_bytes(content)
            temporary.replace(self.folder / f"{name}.eml")
        except OSError as error:
            # A full disk or a missing mount is the folder's outage, as a relay's would be.
            raise RelayUnavailable(_describe(error)) from error

    def close(self) -> None:
        pass


class SmtpTransport:
    """Sends over one SMTP connection, opened on first use and reopened when it drops."""

    def __init__(self, url: str, timeout: float = 30, envelope_from: str | None = None) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.implicit_tls = parts.scheme == "smtps"
        self.starttls = query.get("tls", [""])[0].lower() == "starttls"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (465 if self.implicit_tls else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.timeout = timeout
        # MAIL FROM, where bounces go; None: the From header's address, as smtplib does.
        self.envelope_from = envelope_from
        self._connection: smtplib.SMTP | None = None

    def _connect(self) -> smtplib.SMTP:
        context = ssl.create_default_context()
        if self.implicit_tls:
            connection: smtplib.SMTP = smtplib.SMTP_SSL(self.host, self.port, timeout=self.timeout, context=context)
        else:
            connection = smtplib.SMTP(self.host, self.port, timeout=self.timeout)
            if self.starttls:
                connection.starttls(context=context)
        if self.username:
            connection.login(self.username, self.password or "")
        return connection

    def send(self, message: EmailMessage) -> None:
        """Send one message; raises PermanentFailure, TemporaryFailure or RelayUnavailable."""
        try:
            self._deliver(message)
        except smtplib.SMTPServerDisconnected:
            # A kept-open connection may have timed out on the server's side: one fresh try.
            self._drop()
            try:
                self._deliver(message)
            except smtplib.SMTPServerDisconnected as error:
                raise RelayUnavailable(_describe(error), mid_message=True) from error

    def _deliver(self, message: EmailMessage) -> None:
        if self._connection is None:
            try:
                self._connection = self._connect()
            except (OSError, smtplib.SMTPException) as error:
                # Refused, timed out, 421 or another greeting, EHLO, STARTTLS or login failed.
                raise RelayUnavailable(_describe(error)) from error
        try:
            self._connection.send_message(message, from_addr=self.envelope_from)
        except smtplib.SMTPServerDisconnected:
            self._drop()
            raise
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as error:
            self._raise_classified(error)
        except smtplib.SMTPNotSupportedError:
            raise  # the message needs what this server lacks (e.g. SMTPUTF8): the caller's verdict
        except (OSError, smtplib.SMTPException) as error:
            self._drop()
            raise RelayUnavailable(_describe(error), mid_message=True) from error

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except OSError:
                pass
            finally:
                self._connection = None

    def _raise_classified(self, error: smtplib.SMTPException) -> None:
        if isinstance(error, smtplib.SMTPRecipientsRefused):
            codes = [code for code, _ in error.recipients.values()]
        else:
            codes = [getattr(error, "smtp_code", 0)]
        if not codes or any(code in RELAY_CODES or not 400 <= code < 600 for code in codes):
            self._drop()
            raise RelayUnavailable(_describe(error)) from error
        if isinstance(error, smtplib.SMTPSenderRefused) and not _about_the_message(error):
            # MAIL FROM refused (the bounce address not allowed for our login, say): every message
            # would meet the same refusal, so none is failed; the worker pauses and tries again.
            diagnostic = _reply(error.smtp_code, error.smtp_error)
            raise RelayUnavailable(f"the relay refuses our envelope sender {error.sender} at MAIL FROM: "
                                   f"{diagnostic}") from error
        if isinstance(error, smtplib.SMTPRecipientsRefused) and len(codes) == 1:
            # One recipient per message: the refusal is about that address, or the relay's policy.
            [(recipient, reply)] = error.recipients.items()
            diagnostic = _reply(*reply)
            description = f"{type(error).__name__}: {recipient}: {diagnostic}"
            if 500 <= codes[0] < 600:
                raise RecipientRefused(description, diagnostic=diagnostic,
                                       bounce=classify_refusal(codes[0], diagnostic.partition(" ")[2])) from error
            raise RecipientDeferred(description, diagnostic=diagnostic) from error
        if all(500 <= code < 600 for code in codes):
            raise PermanentFailure(_describe(error)) from error
        raise TemporaryFailure(_describe(error)) from error

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._connection = None


def _about_the_message(error: smtplib.SMTPSenderRefused) -> bool:
    """A MAIL FROM refusal of this message's size (552, X.3.4: the SIZE it announced), not of the sender."""
    text = error.smtp_error.decode("utf-8", "replace") if isinstance(error.smtp_error, bytes) else str(error.smtp_error)
    match = _ENHANCED.match(text)
    if match is not None:
        return match.group(2, 3) == ("3", "4")
    return error.smtp_code == 552


def _describe(error: BaseException) -> str:
    """One line naming the error, e.g. "ConnectionRefusedError: [Errno 111] Connection refused"."""
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _reply(code: int, text: bytes | str) -> str:
    """An SMTP reply as one line, e.g. "550 5.1.1 <x@example.com>: Recipient address rejected: User unknown"."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return " ".join(f"{code} {text}".split())


def transport_for(config: dict) -> Transport:
    """The transport the configuration asks for."""
    if config.get("NEWSLETTER_SMTP_URL"):
        return SmtpTransport(config["NEWSLETTER_SMTP_URL"], timeout=config["NEWSLETTER_SMTP_TIMEOUT"],
                             envelope_from=config.get("NEWSLETTER_BOUNCE_ADDRESS"))
    return FolderTransport(config["NEWSLETTER_MAIL_DIR"])
