"""Transports that deliver an EmailMessage: SMTP, or .eml files in a folder for development."""

from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol
from urllib.parse import parse_qs, unquote, urlsplit


class PermanentFailure(Exception):
    """The server refused the message for good (5xx): retrying won't help."""


class Transport(Protocol):
    def send(self, message: EmailMessage) -> None: ...

    def close(self) -> None: ...


class FolderTransport:
    """Writes each message as <Message-ID>.eml into a folder (the embedded default)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)

    def send(self, message: EmailMessage) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        name = message["Message-ID"].strip("<>").replace("/", "_")
        temporary = self.folder / f".{name}.tmp"
        temporary.write_bytes(message.as_bytes(policy=message.policy.clone(utf8=True)))
        temporary.replace(self.folder / f"{name}.eml")

    def close(self) -> None:
        pass


class SmtpTransport:
    """Sends over one SMTP connection, opened on first use and reopened when it drops."""

    def __init__(self, url: str, timeout: float = 30) -> None:
        parts = urlsplit(url)
        query = parse_qs(parts.query)
        self.implicit_tls = parts.scheme == "smtps"
        self.starttls = query.get("tls", [""])[0].lower() == "starttls"
        self.host = parts.hostname or "localhost"
        self.port = parts.port or (465 if self.implicit_tls else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.timeout = timeout
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
        try:
            self._deliver(message)
        except smtplib.SMTPServerDisconnected:
            # A kept-open connection may have timed out on the server's side: one fresh try.
            self._connection = None
            self._deliver(message)

    def _deliver(self, message: EmailMessage) -> None:
        if self._connection is None:
            self._connection = self._connect()
        try:
            self._connection.send_message(message)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError) as error:
            self._raise_classified(error)
        except (OSError, smtplib.SMTPException):
            self._drop()
            raise

    def _drop(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            finally:
                self._connection = None

    @staticmethod
    def _raise_classified(error: smtplib.SMTPException) -> None:
        if isinstance(error, smtplib.SMTPRecipientsRefused):
            codes = [code for code, _ in error.recipients.values()]
        else:
            codes = [getattr(error, "smtp_code", 0)]
        if codes and all(500 <= code < 600 for code in codes):
            raise PermanentFailure(str(error)) from error
        raise error

    def close(self) -> None:
        if self._connection is not None:
            try:
                self._connection.quit()
            except (OSError, smtplib.SMTPException):
                pass
            self._connection = None


def transport_for(config: dict) -> Transport:
    """The transport the configuration asks for."""
    if config.get("NEWSLETTER_SMTP_URL"):
        return SmtpTransport(config["NEWSLETTER_SMTP_URL"], timeout=config["NEWSLETTER_SMTP_TIMEOUT"])
    return FolderTransport(config["NEWSLETTER_MAIL_DIR"])
