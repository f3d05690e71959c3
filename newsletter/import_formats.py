"""Reading the files an import brings in: Mailchimp's audience export, listmonk's, and our own CSV export.

Each format becomes the same stream of SourceRow, read lazily (the csv module over a text wrapper
over the file, or over the zip member opened as a stream) so that memory stays flat whatever the
file's size. `detect` reads only the first line of each CSV; `read_rows` reads them again from the
start and works out each file's columns from its own header.

The files
---------
- Text is UTF-8, with or without a byte order mark. A file that isn't says so in its FormatError
  (with a guess at what it is). Bytes that aren't UTF-8 further down, or a NUL byte, don't stop the
  read: that row comes with `problem` set (decoded with surrogateescape, then shown with U+FFFD).
- The delimiter is a comma, or a semicolon when the header line holds more semicolons than commas
  (what a spreadsheet saves in locales where the comma is the decimal mark).
- `line` is the physical line a row starts on, the header being line 1, counted through quoted
  cells that hold line breaks. Blank lines are skipped; a row whose cell count differs from the
  header's, or with a time that can't be read, comes with `problem` set.
- A zip is read member by member in its own order: its CSV files (other files are ignored), all of
  one format. Refused: encrypted members, zips inside the zip, and members whose declared size is
  both over ZIP_MAX_MEMBER_BYTES and over ZIP_MAX_RATIO times their compressed size (a zip bomb).

Mailchimp (audience export: a zip of subscribed_members_export_*.csv, unsubscribed_… and cleaned_…)
--------------------------------------------------------------------------------------------------
- Columns: the audience's own fields first ("Email Address", "First Name", "Last Name", and any the
  owner added, with whatever names the owner gave them — and in the account's language: a German
  account exports "Emailadresse,Vorname,Nachname"), then Mailchimp's own, always in capitals:
  MEMBER_RATING, OPTIN_TIME, OPTIN_IP, CONFIRM_TIME, CONFIRM_IP, LATITUDE, LONGITUDE, GMTOFF,
  DSTOFF, TIMEZONE, CC, REGION, LAST_CHANGED, LEID, EUID, NOTES, TAGS; unsubscribed files add
  UNSUB_TIME, UNSUB_CAMPAIGN_TITLE, UNSUB_CAMPAIGN_ID, UNSUB_REASON, UNSUB_REASON_OTHER, cleaned
  files CLEAN_TIME, CLEAN_CAMPAIGN_TITLE, CLEAN_CAMPAIGN_ID.
- A file is Mailchimp's when its header has "Email Address" or at least three of Mailchimp's own
  columns; the address is "Email Address", else (a localized export) the first column, which is
  where Mailchimp always puts it. The name is "First Name" + "Last Name" (or a known translation).
  An audience field may carry a capitalized name too (a field someone called UNSUB_TIME): where a
  name appears twice, Mailchimp's own column is the last one.
- Status: a row with a CLEAN_TIME is "cleaned", one with an UNSUB_TIME "unsubscribed" (a file whose
  header has that column is that kind of file, so a row in it is that even with the time left
  blank); otherwise "subscribed" when it has an OPTIN_TIME or a CONFIRM_TIME (proof of opt-in) and
  "unconfirmed" when it has neither. Opt-in and confirmation times and IPs carry over whatever the
  status; LAST_CHANGED is `changed_at` (without it: the clean, unsubscribe, confirmation or opt-in
  time, the first the row has).
- OPTIN_IP and CONFIRM_IP are kept when they are IP addresses (ipaddress.ip_address reads them);
  anything else in them is dropped (None): it proves nothing.
- A row with a time (opt-in, confirmation, unsubscribe, clean, last change) later than now by more
  than CLOCK_SKEW comes with `problem` set, in every format: a typo'd year is no proof of consent.
- Times are "YYYY-MM-DD HH:MM:SS" without a zone, read as UTC: Mailchimp keeps and exports them in
  GMT (its export API, which the documentation calls "very similar to exporting via the web
  interface", takes and gives "a GMT timestamp in YYYY-MM-DD HH:mm:ss format",
  apidocs.mailchimp.com/export/1.0/list.func.php). A time with an offset is honoured.

listmonk (Subscribers › Export: knadh/listmonk cmd/subscribers.go ExportSubscribers)
-----------------------------------------------------------------------------------
- Columns: uuid, email, name, attributes, status, created_at, updated_at. `status` is the
  subscriber's own (enabled, disabled, blocklisted); the per-list subscription status
  (unconfirmed, confirmed, unsubscribed) is NOT in the file: the export can be filtered by list and
  subscription status, but the filter isn't written down.
- Times are Go's time.Time.String(): "2024-01-15 10:30:45.123456 +0000 +0000" (the zone name is
  the offset again, lib/pq's unnamed fixed zones) or "… +0530 IST"; fractions of 0 to 9 digits.
- Status: blocklisted → "unsubscribed" (listmonk sends nothing to a blocklisted address, and no
  bounce is recorded by the status itself, so nothing is suppressed: problem=None), with
  unsubscribed_at = changed_at = updated_at, the best time the file has. disabled → "unsubscribed"
  too (the list's owner stopped mail to them; we never turn that back on without the reader).
  enabled → "unconfirmed": the file doesn't say which lists they are in, nor whether they confirmed
  or unsubscribed from them, so there is no proof of opt-in and the import's --unconfirmed policy
  decides (ask: a confirmation email).
- If the file has a `subscription_status` column (an export made with a query or a later version),
  it decides for enabled subscribers: confirmed → "subscribed" with optin_time = confirm_time =
  created_at (the best time available: listmonk confirms single opt-in subscriptions at creation,
  and the file has no per-list time); unconfirmed → "unconfirmed"; unsubscribed → "unsubscribed"
  (unsubscribed_at = updated_at).

Our own export (newsletter/exports.py)
--------------------------------------
- Columns: [newsletter,] email, name, status, subscribed_at, confirmed_at, source; status pending,
  confirmed, unsubscribed; times "2026-01-31T09:30:00Z". A cell typed by a person (email, name)
  that would start with = + - @ TAB or CR was written with a ' in front (spreadsheet_safe): that ' is
  taken off again, so an export imports back unchanged — but for a cell that itself starts with ' and
  then one of those characters ("'=x"): the export leaves it as it is, and it reads back as "=x".
- confirmed → "subscribed" (optin_time = subscribed_at, confirm_time = changed_at = confirmed_at); pending →
  "unconfirmed" (changed_at = subscribed_at); unsubscribed → "unsubscribed" (the times carry over,
  the export has no time of the unsubscribe). An export of all newsletters has a `newsletter`
  column: each row's slug is in `SourceRow.newsletter`.
- An export taken with `--suppressed include` has a `suppressed` column (the suppression's reason,
  or empty): a row with a reason there is "cleaned" (`cleaned_reason` = that reason), whatever its status.
- A plain spreadsheet also reads as this format when it has an "email" column (any case); without a
  status column a row is "subscribed" if it has a confirmed_at, else "unconfirmed".
"""

from __future__ import annotations

import codecs
import csv
import io
import ipaddress
import zipfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO

FORMATS = ("mailchimp", "listmonk", "csv")
# What a row says of the reader's consent.
ROW_STATUSES = ("subscribed", "unconfirmed", "unsubscribed", "cleaned")

# A zip member is refused when its declared size passes both of these (a zip bomb): an export of
# readers packs 5 to 20 times, a 1 GiB member of a 1 MB zip is no export.
ZIP_MAX_RATIO = 100
ZIP_MAX_MEMBER_BYTES = 50 << 20
# The longest physical line read: no real row is near it, and csv reads a whole line into memory
# before it sees the cells (a line break inside a quoted cell starts the count again).
LINE_MAX_BYTES = 1 << 20
# The header is the first line: a "line" longer than this is not a CSV header.
HEADER_MAX_BYTES = 64 * 1024
# A time later than now by more than this is refused (a typo'd year is no proof of consent).
CLOCK_SKEW = timedelta(minutes=5)
# How much after the header `detect` reads to tell a file that isn't UTF-8 (two lines or more that aren't).
SAMPLE_BYTES = 64 * 1024


class FormatError(ValueError):
    """The file can't be imported as a whole; str() says what is wrong, in words an editor understands."""


@dataclass(slots=True)
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
    # Our own export's `suppressed` cell (the suppression's reason) for a cleaned row; None otherwise.
    cleaned_reason: str | None = None
    # Why the row can't be used, found while reading (a bad date, a status unknown…), for the refusal report.
    problem: str | None = None
    # Our own export of all newsletters: the newsletter (slug) the row is about; None otherwise.
    newsletter: str | None = None




@dataclass(frozen=True)
class Detected:
    """What an upload is: its format, each file in it, and which of its columns feed which field."""

    format: str
    files: list[str]
    # Our field (SourceRow's) -> the file's column header.
    columns: dict[str, str] = field(default_factory=dict)
    # Columns of the file that the import does not use.
    ignored: list[str] = field(default_factory=list)


# --- Columns of each format ------------------------------------------------------------------------

MAILCHIMP_EMAIL = "Email Address"
# Mailchimp's own columns (never translated, never renamed), after the audience's fields.
MAILCHIMP_SYSTEM = (
    "EMAIL_TYPE", "MEMBER_RATING", "OPTIN_TIME", "OPTIN_IP", "CONFIRM_TIME", "CONFIRM_IP", "LATITUDE",
    "LONGITUDE", "GMTOFF", "DSTOFF", "TIMEZONE", "CC", "REGION", "LAST_CHANGED", "LEID", "EUID", "NOTES",
    "TAGS", "UNSUB_TIME", "UNSUB_CAMPAIGN_TITLE", "UNSUB_CAMPAIGN_ID", "UNSUB_REASON", "UNSUB_REASON_OTHER",
    "CLEAN_TIME", "CLEAN_CAMPAIGN_TITLE", "CLEAN_CAMPAIGN_ID",
)
_MAILCHIMP_USED = frozenset(("OPTIN_TIME", "OPTIN_IP", "CONFIRM_TIME", "CONFIRM_IP", "LAST_CHANGED", "UNSUB_TIME",
                             "CLEAN_TIME"))
_MAILCHIMP_MARKERS = frozenset(("MEMBER_RATING", "OPTIN_TIME", "CONFIRM_TIME", "LAST_CHANGED", "LEID", "EUID"))
# The default "First Name" / "Last Name" fields in the languages Mailchimp exports, lower-cased.
_FIRST_NAMES = frozenset(("first name", "vorname", "prénom", "nombre", "nome", "voornaam", "imię", "förnamn",
                          "fornavn", "etunimi"))
_LAST_NAMES = frozenset(("last name", "nachname", "nom", "apellido", "apellidos", "cognome", "achternaam",
                         "nazwisko", "efternamn", "etternavn", "efternavn", "sukunimi"))

LISTMONK_COLUMNS = ("uuid", "email", "name", "attributes", "status", "created_at", "updated_at")
LISTMONK_STATUSES = ("enabled", "disabled", "blocklisted")
LISTMONK_SUBSCRIPTION_STATUSES = ("unconfirmed", "confirmed", "unsubscribed")

OUR_COLUMNS = ("newsletter", "email", "name", "status", "subscribed_at", "confirmed_at", "source")
OUR_STATUSES = ("confirmed", "pending", "unsubscribed")
# exports.FORMULA_STARTS: a cell starting with one of these was written with a ' in front.
_FORMULA_STARTS = frozenset(("=", "+", "-", "@", "\t", "\r"))

_UTC = timezone.utc


# --- Detection ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Header:
    """One CSV's first line, split."""

    file: str
    cells: list[str]
    delimiter: str


def detect(path: Path, requested: str = "auto", *, name: str | None = None) -> Detected:
    """The format of the file at `path` (a CSV or a zip of CSVs) from its header; FormatError if none fits.

    `requested` ("auto" or one of FORMATS) forces a format, whose required columns must still be
    there. `name` is the uploaded file's name (path may be a temporary file).
    """
    if requested != "auto" and requested not in FORMATS:
        raise FormatError(f"Unknown format {requested!r}: use auto, {', '.join(FORMATS)}.")
    display = name or path.name
    headers = [_read_header(stream, member) for member, stream in _open_csvs(path, display)]
    layouts = [_layout(header, requested) for header in headers]
    formats = {layout.format for layout in layouts}
    if len(formats) > 1:
        found = ", ".join(f"{layout.file} ({layout.format})" for layout in layouts)
        raise FormatError(f"The files in this zip are not all of one format: {found}. Import them one by one.")
    columns: dict[str, str] = {}
    ignored: list[str] = []
    for layout in layouts:
        for key, value in layout.columns.items():
            columns.setdefault(key, value)
        ignored.extend(column for column in layout.ignored if column not in ignored)
    return Detected(format=layouts[0].format, files=[layout.file for layout in layouts], columns=columns,
                    ignored=ignored)


def _read_header(opened: Callable[[], AbstractContextManager[IO[bytes]]], file: str) -> _Header:
    with opened() as stream:
        first = stream.readline(HEADER_MAX_BYTES + 1)
        sample = stream.read(SAMPLE_BYTES)
    if len(first) > HEADER_MAX_BYTES:
        raise FormatError(f"{file}: the first line is longer than {HEADER_MAX_BYTES // 1024} kB: "
                          "this is not a CSV file with a header.")
    _refuse_binary((first + sample)[:1024], first, file)
    text = _decode_header(first, first + sample, file)
    if not text.strip():
        raise FormatError(f"{file}: the file is empty (or its first line is): the first line must be the "
                          "header naming the columns.")
    _refuse_other_encoding(sample, file, whole=len(sample) < SAMPLE_BYTES)
    delimiter = ";" if text.count(";") > text.count(",") else ","
    cells = next(csv.reader([text.rstrip("\r\n")], delimiter=delimiter), [])
    return _Header(file=file, cells=[cell.strip() for cell in cells], delimiter=delimiter)


def _refuse_other_encoding(sample: bytes, file: str, *, whole: bool) -> None:
    """A file whose first rows are not UTF-8 is refused as a whole; one stray line is that row's problem.

    `whole`: the sample is the rest of the file, so its last line is whole too (a short file with a
    single row that isn't UTF-8 is refused: nothing in it is).
    """
    lines = sample.decode("utf-8", "surrogateescape").splitlines()
    if not whole:
        lines = lines[:-1]  # the last may be cut short
    unreadable = sum(1 for line in lines if _unreadable(line.replace("\x00", "")))
    if unreadable >= 2 or (whole and unreadable and unreadable == len([line for line in lines if line.strip()])):
        raise _not_utf8(sample, file)


def _refuse_binary(sample: bytes, first: bytes, file: str) -> None:
    if sample.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise FormatError(f"{file}: the file is not UTF-8 (it looks like UTF-16, what Excel calls "
                          "\"Unicode text\"): save it as UTF-8 CSV and upload it again.")
    if sample.startswith(b"%PDF"):
        raise FormatError(f"{file}: this is a PDF document, not a CSV file.")
    if sample.startswith(b"\xd0\xcf\x11\xe0"):
        raise FormatError(f"{file}: this is an old Excel workbook (.xls), not a CSV file: save it as "
                          "UTF-8 CSV and upload it again.")
    if sample[1::2].count(0) > len(sample) // 4 or sample[0::2].count(0) > len(sample) // 4:
        raise FormatError(f"{file}: the file is not UTF-8 (it looks like UTF-16): save it as UTF-8 CSV "
                          "and upload it again.")
    controls = sum(1 for byte in sample if byte < 9 or 13 < byte < 32)
    if b"\x00" in first or (controls >= 4 and controls * 10 > len(sample)):
        raise FormatError(f"{file}: this is a binary file, not a CSV file.")


def _decode_header(first: bytes, sample: bytes, file: str) -> str:
    try:
        return first.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _not_utf8(sample, file) from None


def _not_utf8(sample: bytes, file: str) -> FormatError:
    try:
        sample.decode("cp1252")
        guess = "Windows-1252 or Latin-1, what Excel saves as \"CSV\" in Western Europe"
    except UnicodeDecodeError:
        guess = "Latin-1 or another single-byte encoding"
    return FormatError(f"{file}: the file is not UTF-8 (it looks like {guess}): save it as UTF-8 CSV "
                       "(\"CSV UTF-8\" in Excel) and upload it again.")


# --- Files and zips ------------------------------------------------------------------------------


def _open_csvs(path: Path, display: str) -> list[tuple[str, Callable[[], AbstractContextManager[IO[bytes]]]]]:
    """Each CSV of the upload as (its name, a function opening it as a binary stream)."""
    try:
        with path.open("rb") as stream:
            magic = stream.read(4)
    except OSError as error:
        raise FormatError(f"{display}: the file can't be read ({error.strerror}).") from None
    if not magic:
        raise FormatError(f"{display}: the file is empty.")
    if not magic.startswith(b"PK"):
        return [(display, lambda: path.open("rb"))]
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError):
        raise FormatError(f"{display}: this looks like a zip file but it can't be opened (damaged or "
                          "incomplete): download it again.") from None
    names = [member.filename for member in members]
    if "[Content_Types].xml" in names and any(name.startswith("xl/") for name in names):
        raise FormatError(f"{display}: this is an Excel workbook (.xlsx), not a CSV file: save it as UTF-8 "
                          "CSV and upload it again.")
    csvs = []
    for member in members:
        lower = member.filename.lower()
        if member.is_dir() or lower.startswith("__macosx/"):
            continue
        if lower.endswith(".zip"):
            raise FormatError(f"{display}: the zip holds another zip ({member.filename}): unzip it and "
                              "upload the CSV files it holds.")
        if not lower.endswith(".csv"):
            continue
        if member.flag_bits & 0x1:
            raise FormatError(f"{display}: {member.filename} is encrypted (the zip has a password): "
                              "upload a zip without a password, or the CSV files themselves.")
        if member.file_size > ZIP_MAX_MEMBER_BYTES and member.file_size > ZIP_MAX_RATIO * max(
                member.compress_size, 1):
            raise FormatError(f"{display}: {member.filename} would unpack to {member.file_size:,} bytes from "
                              f"{member.compress_size:,}: that is no export, the zip is refused.")
        csvs.append(member)
    if not csvs:
        found = ", ".join(names[:10]) or "nothing"
        raise FormatError(f"{display}: the zip holds no CSV file (it holds {found}).")
    return [(member.filename, _member_opener(path, member)) for member in csvs]


def _member_opener(path: Path, member: zipfile.ZipInfo) -> Callable[[], AbstractContextManager[IO[bytes]]]:
    @contextmanager
    def opened() -> Iterator[IO[bytes]]:
        with zipfile.ZipFile(path) as archive:
            try:
                stream = archive.open(member)
            # zipfile raises NotImplementedError for a compression method it lacks, RuntimeError when encrypted.
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, ValueError, OSError) as error:
                raise FormatError(f"{member.filename} can't be read from the zip ({error}).") from None
            with stream:
                yield stream

    return opened


# --- Layouts: which column feeds what ------------------------------------------------------------


@dataclass
class _Layout:
    """How one file's rows become SourceRows: its format, and the index of each column used."""

    file: str
    format: str
    delimiter: str
    width: int
    columns: dict[str, str]  # our field -> header (for Detected)
    ignored: list[str]
    index: dict[str, int]  # our key -> column index
    kind: str = "subscribed"  # Mailchimp: which export this file is


def _layout(header: _Header, requested: str) -> _Layout:
    cells = header.cells
    lower = [cell.lower() for cell in cells]
    system = {cell for cell in cells if cell in MAILCHIMP_SYSTEM}
    if requested == "auto":
        if "email address" in lower or len(system & _MAILCHIMP_MARKERS) >= 3:
            fmt = "mailchimp"
        elif {"uuid", "email", "attributes", "status"} <= set(lower):
            fmt = "listmonk"
        elif "email" in lower:
            fmt = "csv"
        else:
            raise FormatError(f"{header.file}: no \"Email Address\" or \"email\" column: the header has "
                              f"{_shown(cells)}. Expected a Mailchimp audience export (\"Email Address\", "
                              "\"First Name\", … OPTIN_TIME …), a listmonk subscriber export (uuid, email, "
                              "name, attributes, status …) or this service's export (email, name, status, "
                              "subscribed_at, confirmed_at, source).")
    else:
        fmt = requested
    return {"mailchimp": _mailchimp_layout, "listmonk": _listmonk_layout, "csv": _our_layout}[fmt](header, lower)


def _shown(cells: list[str]) -> str:
    shown = ", ".join(f'"{cell}"' for cell in cells[:12])
    return (shown + f" … ({len(cells)} columns)") if len(cells) > 12 else (shown or "no columns")


def _finish(header: _Header, fmt: str, index: dict[str, int], kind: str = "subscribed") -> _Layout:
    cells = header.cells
    used = set(index.values())
    columns: dict[str, str] = {}
    for key, position in index.items():
        field_name = _FIELD_OF.get(key, key)
        columns[field_name] = (columns[field_name] + " + " + cells[position]) if field_name in columns \
            else cells[position]
    ignored = [cell for position, cell in enumerate(cells) if position not in used and cell]
    return _Layout(file=header.file, format=fmt, delimiter=header.delimiter, width=len(cells), columns=columns,
                   ignored=ignored, index=index, kind=kind)


# Internal keys that feed a SourceRow field of another name.
_FIELD_OF = {"first_name": "name", "last_name": "name", "subscribed_at": "optin_time",
             "confirmed_at": "confirm_time", "created_at": "optin_time + confirm_time", "updated_at": "changed_at",
             "subscription_status": "status", "last_changed": "changed_at", "unsub_time": "unsubscribed_at",
             "clean_time": "cleaned_at", "suppressed": "status (cleaned)"}


def _mailchimp_layout(header: _Header, lower: list[str]) -> _Layout:
    cells = header.cells
    index: dict[str, int] = {}
    if "email address" in lower:
        index["email"] = lower.index("email address")
    elif len({cell for cell in cells if cell in MAILCHIMP_SYSTEM} & _MAILCHIMP_MARKERS) >= 3 and cells[0]:
        index["email"] = 0  # a localized export ("Emailadresse"): Mailchimp puts the address first
    else:
        raise FormatError(f"{header.file}: this is not a Mailchimp audience export: there is no \"Email "
                          f"Address\" column, nor Mailchimp's own OPTIN_TIME, LAST_CHANGED, LEID …; the header "
                          f"has {_shown(cells)}.")
    for position, cell in enumerate(lower):
        if cell in _FIRST_NAMES and "first_name" not in index:
            index["first_name"] = position
        elif cell in _LAST_NAMES and "last_name" not in index:
            index["last_name"] = position
    # Mailchimp's own columns come after the audience's fields (which may have names like UNSUB_TIME too):
    # only the columns from MEMBER_RATING on count, and where a name is repeated, the last.
    own_from = cells.index("MEMBER_RATING") if "MEMBER_RATING" in cells else index["email"] + 1
    for position, cell in enumerate(cells):
        if position >= own_from and cell in _MAILCHIMP_USED:
            index[cell.lower()] = position
    kind = "cleaned" if "clean_time" in index else "unsubscribed" if "unsub_time" in index else "subscribed"
    return _finish(header, "mailchimp", index, kind)


def _listmonk_layout(header: _Header, lower: list[str]) -> _Layout:
    missing = [column for column in ("email", "status") if column not in lower]
    if missing:
        raise FormatError(f"{header.file}: this is not a listmonk subscriber export: it has no "
                          f"{' or '.join(missing)} column (expected {', '.join(LISTMONK_COLUMNS)}); the header "
                          f"has {_shown(header.cells)}.")
    wanted = ("email", "name", "status", "updated_at", "subscription_status", "created_at")
    if "subscription_status" not in lower:
        wanted = wanted[:-1]  # created_at only dates a confirmed subscription
    index = {column: lower.index(column) for column in wanted if column in lower}
    return _finish(header, "listmonk", index)


def _our_layout(header: _Header, lower: list[str]) -> _Layout:
    if "email" not in lower:
        raise FormatError(f"{header.file}: no \"email\" column: the header has {_shown(header.cells)}. Expected "
                          f"this service's export: {', '.join(OUR_COLUMNS[1:])}.")
    index = {column: lower.index(column) for column in (*OUR_COLUMNS[:-1], "suppressed") if column in lower}
    return _finish(header, "csv", index)


# --- Reading -------------------------------------------------------------------------------------


def read_rows(path: Path, detected: Detected) -> Iterator[SourceRow]:
    """Every row of the upload, lazily, in file order.

    Raises FormatError only for the upload as a whole (its header no longer fits, the zip is
    damaged); a bad row comes as a SourceRow with `problem` set.
    """
    opened = dict(_open_csvs(path, detected.files[0] if len(detected.files) == 1 else path.name))
    for file in detected.files:
        if file not in opened:
            raise FormatError(f"{file} is no longer in the upload.")
        layout = _layout(_read_header(opened[file], file), detected.format)
        yield from _read_file(opened[file], layout)


def _unreadable(text: str) -> bool:
    """Whether text read with surrogateescape held a NUL byte or bytes that aren't UTF-8."""
    if "\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


UNREADABLE = "This row holds a NUL byte or bytes that are not UTF-8."


def _read_file(opened: Callable[[], AbstractContextManager[IO[bytes]]], layout: _Layout) -> Iterator[SourceRow]:
    make = {"mailchimp": _mailchimp_row, "listmonk": _listmonk_row, "csv": _our_row}[layout.format]
    convert = make(layout)
    file, width, email_at = layout.file, layout.width, layout.index["email"]
    latest = datetime.now(_UTC) + CLOCK_SKEW
    try:
        with opened() as stream:
            capped = io.BufferedReader(_LineCapped(stream, file))
            text = io.TextIOWrapper(capped, encoding="utf-8-sig", errors="surrogateescape", newline="")
            reader = csv.reader(text, delimiter=layout.delimiter)
            next(reader, None)  # the header
            end = reader.line_num
            while True:
                start = end + 1
                try:
                    row = next(reader)
                except StopIteration:
                    break
                except csv.Error as error:
                    end = reader.line_num
                    problem = (f"This row has a cell longer than {csv.field_size_limit() // 1024} kB."
                               if "field limit" in str(error) else f"This row can't be read as CSV ({error}).")
                    yield _bad_row(file, start, [], problem, layout)
                    continue
                end = reader.line_num
                if len(row) != width:
                    if not row or (len(row) == 1 and not row[0].strip()):
                        continue  # a blank line
                    yield _bad_row(file, start, row, f"This row has {len(row)} cells where the header has "
                                                     f"{width}.", layout)
                    continue
                if not row[email_at] and not any(cell.strip() for cell in row):
                    continue  # a spreadsheet's empty row: ,,,,
                converted = convert(file, start, row)
                if converted.problem is None:
                    converted.problem = _future(converted, latest)
                yield converted
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as error:
        raise FormatError(f"{file}: the file stopped being readable part way through ({error}): upload it "
                          "again.") from None


class _LineCapped(io.RawIOBase):
    """A binary stream that stops with a FormatError at a physical line longer than LINE_MAX_BYTES.

    Lines are counted at LF (CR resets the length too, for files of CR line ends); the count is
    the line number in the FormatError, the header being line 1.
    """

    def __init__(self, stream: IO[bytes], file: str) -> None:
        self._stream = stream
        self._file = file
        self._run = 0  # bytes since the last line break
        self._lines = 0  # line feeds read

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        cap = LINE_MAX_BYTES
        # At most `cap` bytes at a time: a line too long can't lie wholly inside one chunk.
        chunk = self._stream.read(min(len(buffer), cap, 64 * 1024))
        size = len(chunk)
        first = min((at for at in (chunk.find(b"\n"), chunk.find(b"\r")) if at >= 0), default=-1)
        if first < 0:
            self._run += size
        else:
            if self._run + first > cap:
                self._too_long()
            self._run = size - 1 - max(chunk.rfind(b"\n"), chunk.rfind(b"\r"))
        if self._run > cap:
            self._too_long()
        self._lines += chunk.count(b"\n")
        buffer[:size] = chunk
        return size

    def _too_long(self) -> None:
        limit = f"{LINE_MAX_BYTES // (1 << 20)} MB" if LINE_MAX_BYTES >= 1 << 20 else f"{LINE_MAX_BYTES:,} bytes"
        raise FormatError(f"{self._file}: line {self._lines + 1} is longer than {limit}: this is not a list of "
                          "readers.")


def _clean(text: str) -> str:
    """Text fit to show and store: undecodable bytes as U+FFFD, no NUL."""
    return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace").replace("\x00", "\ufffd")


def _bad_row(file: str, line: int, row: list[str], problem: str, layout: _Layout) -> SourceRow:
    position = layout.index.get("email")
    email = row[position].strip() if position is not None and position < len(row) else ""
    return SourceRow(file=file, line=line, email=_clean(email), name=None, status="unconfirmed", problem=problem)


class _BadTime(ValueError):
    def __init__(self, column: str, text: str) -> None:
        super().__init__(f"{column} is not a time: {_clean(text)[:40]!r}.")


def _utc(text: str, column: str) -> datetime | None:
    """An aware UTC datetime from ISO 8601 text (no zone: UTC), None for an empty cell."""
    if not text:
        return None
    try:
        if len(text) == 19:  # 2019-03-11 17:33:27 (Mailchimp's): a zone costs less in the text than by replace()
            return _fromisoformat(text + "+00:00")
        moment = _fromisoformat(text.strip()) if text.strip() else None
    except ValueError:
        raise _BadTime(column, text) from None
    if moment is None:
        return None
    if moment.tzinfo is None:
        return moment.replace(tzinfo=_UTC)
    return moment if moment.tzinfo is _UTC else moment.astimezone(_UTC)


_fromisoformat = datetime.fromisoformat


def _go_time(text: str, column: str) -> datetime | None:
    """Go's time.Time.String(): '2024-01-15 10:30:45.123456 +0000 UTC' (or ISO 8601)."""
    parts = text.split()
    if not parts:
        return None
    if len(parts) >= 3 and parts[2][:1] in "+-":
        offset = parts[2]
        iso = f"{parts[0]}T{parts[1]}{offset[:3]}:{offset[3:5]}" if len(offset) == 5 else \
            f"{parts[0]}T{parts[1]}{offset}"
        try:
            return datetime.fromisoformat(iso).astimezone(_UTC)
        except ValueError:
            raise _BadTime(column, text) from None
    moment = _utc(text, column)
    if moment is not None and moment.year == 1:  # Go's zero time: no time at all
        return None
    return moment


def _ip(text: str) -> str | None:
    """An IP address as written, or None when the cell is empty or holds no IP address (not proof of anything)."""
    try:
        return str(ipaddress.ip_address(text)) if text else None
    except ValueError:
        return None


def _future(row: SourceRow, latest: datetime) -> str | None:
    """The problem of a row giving a time after `latest` (now and a little clock skew); None if none does."""
    for label, moment in (("The opt-in time", row.optin_time), ("The confirmation time", row.confirm_time),
                          ("The unsubscribe time", row.unsubscribed_at), ("The clean time", row.cleaned_at),
                          ("The time of the last change", row.changed_at)):
        if moment is not None and moment > latest:
            return f"{label} is in the future ({moment:%Y-%m-%d %H:%M:%S} UTC): it proves nothing."
    return None


def _optional(text: str) -> str | None:
    text = text.strip()
    return text or None


def _mailchimp_row(layout: _Layout) -> Callable[[str, int, list[str]], SourceRow]:
    index = layout.index
    email_at, first_at, last_at = index["email"], index.get("first_name"), index.get("last_name")
    optin_at, optin_ip_at = index.get("optin_time"), index.get("optin_ip")
    confirm_at, confirm_ip_at = index.get("confirm_time"), index.get("confirm_ip")
    changed_at_at, unsub_at, clean_at = index.get("last_changed"), index.get("unsub_time"), index.get("clean_time")
    kind = layout.kind

    def convert(file: str, line: int, row: list[str]) -> SourceRow:
        email = row[email_at].strip()
        first = row[first_at].strip() if first_at is not None else ""
        last = row[last_at].strip() if last_at is not None else ""
        optin_ip = row[optin_ip_at].strip() if optin_ip_at is not None else ""
        confirm_ip = row[confirm_ip_at].strip() if confirm_ip_at is not None else ""
        if _unreadable(email + first + last + optin_ip + confirm_ip):
            return SourceRow(file=file, line=line, email=_clean(email), name=None, status=kind, problem=UNREADABLE)
        name = f"{first} {last}" if first and last else (first or last or None)
        try:
            optin = _utc(row[optin_at], "OPTIN_TIME") if optin_at is not None else None
            confirm = _utc(row[confirm_at], "CONFIRM_TIME") if confirm_at is not None else None
            changed = _utc(row[changed_at_at], "LAST_CHANGED") if changed_at_at is not None else None
            unsubscribed = _utc(row[unsub_at], "UNSUB_TIME") if unsub_at is not None else None
            cleaned = _utc(row[clean_at], "CLEAN_TIME") if clean_at is not None else None
        except _BadTime as error:
            return SourceRow(file=file, line=line, email=email, name=name, status=kind, problem=str(error))
        if changed is None:  # no LAST_CHANGED: the latest time the row has
            changed = cleaned or unsubscribed or confirm or optin
        if cleaned is not None or kind == "cleaned":
            status = "cleaned"
        elif unsubscribed is not None or kind == "unsubscribed":
            status = "unsubscribed"
        else:
            status = "subscribed" if optin is not None or confirm is not None else "unconfirmed"
        return SourceRow(
            file=file, line=line, email=email, name=name, status=status, optin_time=optin,
            optin_ip=_ip(optin_ip), confirm_time=confirm, confirm_ip=_ip(confirm_ip), changed_at=changed,
            unsubscribed_at=unsubscribed, cleaned_at=cleaned,
        )

    return convert


def _listmonk_row(layout: _Layout) -> Callable[[str, int, list[str]], SourceRow]:
    index = layout.index
    email_at, name_at, status_at = index["email"], index.get("name"), index["status"]
    created_at_at, updated_at_at = index.get("created_at"), index.get("updated_at")
    subscription_at = index.get("subscription_status")

    def convert(file: str, line: int, row: list[str]) -> SourceRow:
        email = row[email_at].strip()
        name = _optional(row[name_at]) if name_at is not None else None
        if _unreadable(email + (name or "")):
            return SourceRow(file=file, line=line, email=_clean(email), name=None, status="unconfirmed",
                        problem=UNREADABLE)
        status_text = row[status_at].strip().lower()
        subscription = row[subscription_at].strip().lower() if subscription_at is not None else ""
        problem = None
        try:
            created = _go_time(row[created_at_at], "created_at") if created_at_at is not None else None
            updated = _go_time(row[updated_at_at], "updated_at") if updated_at_at is not None else None
        except _BadTime as error:
            created = updated = None
            problem = str(error)
        if status_text not in LISTMONK_STATUSES:
            problem = problem or (f"Unknown listmonk status {_clean(status_text)[:30]!r}: expected "
                                  f"{', '.join(LISTMONK_STATUSES)}.")
            return SourceRow(file=file, line=line, email=email, name=name, status="unconfirmed", problem=problem)
        if subscription and subscription not in LISTMONK_SUBSCRIPTION_STATUSES:
            problem = problem or (f"Unknown listmonk subscription status {_clean(subscription)[:30]!r}: expected "
                                  f"{', '.join(LISTMONK_SUBSCRIPTION_STATUSES)}.")
        if status_text != "enabled" or subscription == "unsubscribed":
            return SourceRow(file=file, line=line, email=email, name=name, status="unsubscribed",
                        changed_at=updated, unsubscribed_at=updated, problem=problem)
        if subscription == "confirmed":
            return SourceRow(file=file, line=line, email=email, name=name, status="subscribed", optin_time=created,
                        confirm_time=created, changed_at=updated, problem=problem)
        return SourceRow(file=file, line=line, email=email, name=name, status="unconfirmed", changed_at=updated,
                    problem=problem)

    return convert


def _unneutralized(text: str) -> str:
    """exports.spreadsheet_safe undone: the ' it put before a formula's first character taken off."""
    if text[:1] == "'" and text[1:2] in _FORMULA_STARTS:
        return text[1:]
    return text


def _our_row(layout: _Layout) -> Callable[[str, int, list[str]], SourceRow]:
    index = layout.index
    email_at, name_at, status_at = index["email"], index.get("name"), index.get("status")
    subscribed_at, confirmed_at, newsletter_at = index.get("subscribed_at"), index.get("confirmed_at"), \
        index.get("newsletter")
    suppressed_at = index.get("suppressed")

    def convert(file: str, line: int, row: list[str]) -> SourceRow:
        email = _unneutralized(row[email_at]).strip()
        # Not stripped: a name comes back exactly as it was exported.
        name = (_unneutralized(row[name_at]) or None) if name_at is not None else None
        newsletter = _optional(row[newsletter_at]) if newsletter_at is not None else None
        if _unreadable(email + (name or "") + (newsletter or "")):
            return SourceRow(file=file, line=line, email=_clean(email), name=None, status="unconfirmed",
                        problem=UNREADABLE)
        try:
            subscribed = _utc(row[subscribed_at], "subscribed_at") if subscribed_at is not None else None
            confirmed = _utc(row[confirmed_at], "confirmed_at") if confirmed_at is not None else None
        except _BadTime as error:
            return SourceRow(file=file, line=line, email=email, name=name, status="unconfirmed", problem=str(error),
                        newsletter=newsletter)
        status_text = row[status_at].strip().lower() if status_at is not None else ""
        suppressed = _clean(row[suppressed_at]).strip()[:60] if suppressed_at is not None else ""
        if suppressed and status_text in (*OUR_STATUSES, ""):
            # Exported with --suppressed include: the address was suppressed there (complaint, hard bounce…).
            return SourceRow(file=file, line=line, email=email, name=name, status="cleaned", optin_time=subscribed,
                             confirm_time=confirmed, changed_at=confirmed or subscribed, cleaned_reason=suppressed,
                             newsletter=newsletter)
        if not status_text:
            status_text = "confirmed" if confirmed is not None else "pending"
        if status_text == "confirmed":
            return SourceRow(file=file, line=line, email=email, name=name, status="subscribed", optin_time=subscribed,
                        confirm_time=confirmed, changed_at=confirmed or subscribed, newsletter=newsletter)
        if status_text == "pending":
            return SourceRow(file=file, line=line, email=email, name=name, status="unconfirmed",
                        changed_at=subscribed, newsletter=newsletter)
        if status_text == "unsubscribed":
            return SourceRow(file=file, line=line, email=email, name=name, status="unsubscribed",
                        optin_time=subscribed, confirm_time=confirmed, newsletter=newsletter)
        return SourceRow(file=file, line=line, email=email, name=name, status="unconfirmed", newsletter=newsletter,
                    problem=f"Unknown status {_clean(status_text)[:30]!r}: expected "
                                 f"{', '.join(OUR_STATUSES)}.")

    return convert
