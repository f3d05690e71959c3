"""Transports that deliver an EmailMessage: SMTP, or .eml files in a folder for development."""

from __future__ import annotations

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
    """The relay refused the recipient for good at RCPT TO (5xx): a hard bounce of that address.

    `diagnostic` is the relay's reply, e.g. "550 5.1.1 <x@example.com>: Recipient address rejected".
    """

    def __init__(self, description: str, *, diagnostic: str) -> None:
        super().__init__(description)
        self.diagnostic = diagnostic


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
        if isinstance(error, smtplib.SMTPRecipientsRefused) and len(codes) == 1:
            # One recipient per message: the refusal is about that address, not the message.
            [(recipient, reply)] = error.recipients.items()
            diagnostic = _reply(*reply)
            description = f"{type(error).__name__}: {recipient}: {diagnostic}"
            if 500 <= codes[0] < 600:
                raise RecipientRefused(description, diagnostic=diagnostic) from error
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
