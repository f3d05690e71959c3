"""Reading the files an import brings in: Mailchimp's audience export, listmonk's, and our own CSV export.

(Interface fixed for the import; the reading itself is being written.) Each format becomes the same
stream of SourceRow, read lazily so that memory stays flat whatever the file's size.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

FORMATS = ("mailchimp", "listmonk", "csv")
# What a row says of the reader's consent.
ROW_STATUSES = ("subscribed", "unconfirmed", "unsubscribed", "cleaned")


class FormatError(ValueError):
    """The file can't be imported as a whole; str() says what is wrong, in words an editor understands."""


@dataclass(frozen=True, slots=True)
class SourceRow:
    """One reader as a file states it, before any checking of the address."""

    file: str  # the file's name (a member's name inside a zip)
    line: int  # the row's line number in that file, the header being line 1
    email: str  # as written, stripped of surrounding spaces
    name: str | None
    # subscribed: with proof of opt-in (an opt-in or confirmation time); unconfirmed: subscribed
    # without one; unsubscribed; cleaned: the sender gave up on the address (bounced).
    status: str
    optin_time: datetime | None = None  # aware UTC
    optin_ip: str | None = None
    confirm_time: datetime | None = None
    confirm_ip: str | None = None
    # When the row's state last changed, as the source says (LAST_CHANGED, updated_at …).
    changed_at: datetime | None = None
    unsubscribed_at: datetime | None = None
    cleaned_at: datetime | None = None
    # Why the row can't be used, found while reading (a bad date, a status unknown…), for the refusal report.
    problem: str | None = None


@dataclass(frozen=True)
class Detected:
    """What an upload is: its format, each file in it, and which of its columns feed which field."""

    format: str
    files: list[str]
    # Our field (SourceRow's) -> the file's column header.
    columns: dict[str, str] = field(default_factory=dict)
    # Columns of the file that the import does not use.
    ignored: list[str] = field(default_factory=list)


def detect(path: Path, requested: str = "auto", *, name: str | None = None) -> Detected:
    """The format of the file at `path` (a CSV or a zip of CSVs) from its header; FormatError if none fits."""
    raise NotImplementedError


def read_rows(path: Path, detected: Detected) -> Iterator[SourceRow]:
    """Every row of the upload, lazily, in file order."""
    raise NotImplementedError
