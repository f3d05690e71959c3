"""Subscriber list exports: streamed CSV / NDJSON rows, spreadsheet-formula neutralization, ExportRecords.

No Flask request in here: the admin download, the API and the CLI parse their input with
`parse_selection`, record the export with `start`, commit, and hand `stream`'s chunks to their client.

Memory stays flat whatever the size of the list: rows come from the database in chunks of
CHUNK_ROWS (a server-side cursor on PostgreSQL; short keyset-paginated reads on SQLite) and each
chunk is written out before the next is read. The database formats the cells (timestamps as ISO
8601 text, formula neutralization), so Python only joins them into lines.

Suppressed addresses (a mail-stopping entry in force) are left out by default, or marked, or the
only ones taken (`suppressed=exclude|include|only`). An entry is found by its keyed hash, which the
database can't compute: the stream reads the entries in force once (a list's thousands of bounces and
complaints, not its millions of readers), then matches each row in Python as the chunk goes by
(suppressions.mail_stopping_matcher: a dictionary look-up a row, and nothing at all while the list is empty).
"""

from __future__ import annotations

import csv
import io
import json
import secrets
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

from sqlalchemy import ColumnElement, Connection, Select, String, case, func, literal, select, update
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement

from . import suppressions
from .catalog import SLUG
from .models import SUBSCRIPTION_STATUSES, AdminUser, ApiToken, ConsentEvent, ExportRecord, Newsletter, Reader, \
    Subscription, utcnow

FORMATS = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson; charset=utf-8"}
CHANNELS = ("admin", "api", "cli")
COLUMNS = ("email", "name", "status", "subscribed_at", "confirmed_at", "source")
# The date filters, each as the text a form, query string or command line option gives.
DATE_FILTERS = ("signed_up_since", "signed_up_until", "confirmed_since", "confirmed_until")
# What to do with suppressed addresses: leave them out (the default), add a `suppressed` column, or only them.
SUPPRESSED_CHOICES = ("exclude", "include", "only")
UNKNOWN_SOURCE = "unknown"
# Rows per read from the database and per chunk written: big enough that per-chunk costs vanish,
# small enough that a chunk is a few hundred kB.
CHUNK_ROWS = 5000
# A spreadsheet runs a cell starting with one of these as a formula (OWASP "CSV injection").
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")

_subscriptions = Subscription.__table__
_readers = Reader.__table__
_events = ConsentEvent.__table__
_newsletters = Newsletter.__table__


class InvalidExport(ValueError):
    """The export can't be made as asked; `errors` maps each filter to what is wrong with it."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(" ".join(message for messages in errors.values() for message in messages))
        self.errors = errors


@dataclass(frozen=True)
class Selection:
    """Which subscriptions an export takes: one newsletter's (or all) with the filters applied."""

    newsletter_id: int | None = None  # None: every newsletter
    newsletter_slug: str | None = None
    statuses: tuple[str, ...] = ()  # empty: any status
    signed_up_since: datetime | None = None
    signed_up_before: datetime | None = None  # exclusive
    confirmed_since: datetime | None = None
    confirmed_before: datetime | None = None  # exclusive
    suppressed: str = "exclude"  # one of SUPPRESSED_CHOICES
    # The filters as given (normalized), kept in the ExportRecord and shown in the list of exports.
    filters: dict[str, str] = field(default_factory=dict)

    @property
    def columns(self) -> tuple[str, ...]:
        columns = COLUMNS if self.newsletter_id is not None else ("newsletter", *COLUMNS)
        # `only` says why too: an export of the suppressed read back by an import suppresses them there.
        return (*columns, "suppressed") if self.suppressed in ("include", "only") else columns


def newsletter_named(session: Session, slug: str) -> Newsletter:
    """The newsletter with this slug, archived or not, or InvalidExport."""
    # Nothing that can't be a slug reaches the database (PostgreSQL refuses NUL in text).
    newsletter = session.scalar(select(Newsletter).where(Newsletter.slug == slug)) if SLUG.fullmatch(slug) else None
    if newsletter is None:
        raise InvalidExport({"newsletter": [f"There is no newsletter called {slug!r}."]})
    return newsletter


def parse_selection(newsletter: Newsletter | None, *, status: Iterable[str] = (), signed_up_since: str | None = None,
                    signed_up_until: str | None = None, confirmed_since: str | None = None,
                    confirmed_until: str | None = None, suppressed: str | None = None) -> Selection:
    """The Selection of `newsletter` (None: all) filtered as given, or InvalidExport naming every bad filter.

    Statuses may be repeated or comma-separated. A date (2026-01-31) since/until takes that whole
    day (UTC); a time (2026-01-31T09:30:00Z, UTC if no offset) is a bound to the second, `until`
    exclusive. `suppressed` is one of SUPPRESSED_CHOICES (empty or None: exclude).
    """
    errors: dict[str, list[str]] = {}
    suppressed = (suppressed or "").strip() or "exclude"
    if suppressed not in SUPPRESSED_CHOICES:
        errors["suppressed"] = [(f"Suppressed addresses can be excluded, included or taken alone: use "
                                 f"{', '.join(SUPPRESSED_CHOICES)}, not {suppressed!r}.")]
    statuses = tuple(dict.fromkeys(part.strip() for item in status for part in item.split(",") if part.strip()))
    unknown = [name for name in statuses if name not in SUBSCRIPTION_STATUSES]
    if unknown:
        errors["status"] = [f"Unknown status {name!r}: use {', '.join(SUBSCRIPTION_STATUSES)}." for name in unknown]

    given = {"signed_up_since": signed_up_since, "signed_up_until": signed_up_until,
             "confirmed_since": confirmed_since, "confirmed_until": confirmed_until}
    bounds: dict[str, datetime] = {}
    for name, text in given.items():
        if text is None or not text.strip():
            continue
        try:
            bounds[name] = _moment(text.strip(), end_of_day=name.endswith("_until"))
        except ValueError:
            errors[name] = [f"{_label(name).capitalize()} must be a date such as 2026-01-31 or a time such as "
                            f"2026-01-31T09:30:00Z, not {text.strip()!r}."]
        except OverflowError:
            errors[name] = [f"{_label(name).capitalize()} is out of range: {text.strip()!r}."]
    for what in ("signed_up", "confirmed"):
        since, until = bounds.get(f"{what}_since"), bounds.get(f"{what}_until")
        if since is not None and until is not None and until <= since:
            errors.setdefault(f"{what}_until", []).append(
                f"{_label(f'{what}_until').capitalize()} must be after {_label(f'{what}_since')}.")
    if errors:
        raise InvalidExport(errors)

    filters = {"newsletter": newsletter.slug if newsletter is not None else "all"}
    if statuses:
        filters["status"] = ",".join(statuses)
    filters.update({name: text.strip() for name, text in given.items() if name in bounds and text})
    if suppressed != "exclude":
        filters["suppressed"] = suppressed
    return Selection(
        newsletter_id=newsletter.id if newsletter is not None else None,
        newsletter_slug=newsletter.slug if newsletter is not None else None,
        statuses=statuses,
        signed_up_since=bounds.get("signed_up_since"), signed_up_before=bounds.get("signed_up_until"),
        confirmed_since=bounds.get("confirmed_since"), confirmed_before=bounds.get("confirmed_until"),
        suppressed=suppressed, filters=filters,
    )


def _label(name: str) -> str:
    return name.replace("_", " ")


def _moment(text: str, *, end_of_day: bool) -> datetime:
    """An aware UTC datetime from a date (its start, or the next day's start for an `until`) or an ISO time."""
    if len(text) == 10:
        day = date.fromisoformat(text)
        start = datetime.combine(day, time(), tzinfo=timezone.utc)
        return start + timedelta(days=1) if end_of_day else start
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


# --- The query ----------------------------------------------------------------------------------


class utc_iso(FunctionElement[str]):  # noqa: N801 (a SQL function's name)
    """A timestamp column as ISO 8601 text in UTC (2026-01-31T09:30:00Z), made by the database."""

    type = String()
    inherit_cache = True
    name = "utc_iso"


@compiles(utc_iso, "postgresql")
def _utc_iso_postgresql(element: utc_iso, compiler: SQLCompiler, **kw: Any) -> str:
    column = compiler.process(element.clauses, **kw)
    return f"""to_char({column} AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"')"""


@compiles(utc_iso, "sqlite")
def _utc_iso_sqlite(element: utc_iso, compiler: SQLCompiler, **kw: Any) -> str:
    # SQLite keeps UTCDateTime as 'YYYY-MM-DD HH:MM:SS.ffffff' text in UTC.
    return f"strftime('%Y-%m-%dT%H:%M:%SZ', {compiler.process(element.clauses, **kw)})"


def spreadsheet_safe(column: ColumnElement[str]) -> ColumnElement[str]:
    """The text with a ' in front when a spreadsheet would run it as a formula (OWASP's advice)."""
    return case((func.substr(column, 1, 1).in_(FORMULA_STARTS), literal("'") + column), else_=column)


def _conditions(selection: Selection) -> list[ColumnElement[bool]]:
    s = _subscriptions.c
    conditions = [_readers.c.erased_at.is_(None)]  # erased readers are never exported
    if selection.newsletter_id is not None:
        conditions.append(s.newsletter_id == selection.newsletter_id)
    if selection.statuses:
        conditions.append(s.status.in_(selection.statuses))
    for column, since, before in ((s.created_at, selection.signed_up_since, selection.signed_up_before),
                                  (s.confirmed_at, selection.confirmed_since, selection.confirmed_before)):
        if since is not None:
            conditions.append(column >= since)
        if before is not None:
            conditions.append(column < before)
    return conditions


def rows_query(selection: Selection, *, for_csv: bool = True, with_address: bool = False) -> Select[Any]:
    """The export's rows, cells as text in the order of `selection.columns` (but `suppressed`), by subscription id.

    For CSV the cells people typed (email, name) are neutralized for spreadsheets, and an empty
    cell is '' rather than NULL. The source is one of our own channel names; the rest are statuses
    and timestamps. `with_address` adds the address as stored, last, to find its suppression by.
    """
    s, r, e = _subscriptions.c, _readers.c, _events.c
    # The channel of the reader's first signup request for this newsletter: the opt-in's origin.
    first_source = (
        select(e.source)
        .where(e.reader_id == s.reader_id, e.newsletter_id == s.newsletter_id, e.action == "signup_requested")
        .order_by(e.id)
        .limit(1)
        .scalar_subquery()
    )
    email, name, confirmed_at = r.email, r.name, utc_iso(s.confirmed_at)
    if for_csv:
        email, name = spreadsheet_safe(email), func.coalesce(spreadsheet_safe(name), "")
        confirmed_at = func.coalesce(confirmed_at, "")
    columns: list[ColumnElement[Any]] = [
        email.label("email"), name.label("name"), s.status.label("status"),
        utc_iso(s.created_at).label("subscribed_at"), confirmed_at.label("confirmed_at"),
        func.coalesce(first_source, UNKNOWN_SOURCE).label("source"),
    ]
    joined = _subscriptions.join(_readers, r.id == s.reader_id)
    if selection.newsletter_id is None:
        columns.insert(0, _newsletters.c.slug.label("newsletter"))
        joined = joined.join(_newsletters, _newsletters.c.id == s.newsletter_id)
    if with_address:
        columns.append(r.email.label("address"))
    return select(*columns).select_from(joined).where(*_conditions(selection)).order_by(s.id)


def count_rows(session: Session, selection: Selection) -> int:
    """How many rows the export of `selection` has now, suppressed addresses counted (for a progress bar)."""
    joined = _subscriptions.join(_readers, _readers.c.id == _subscriptions.c.reader_id)
    return session.scalar(select(func.count()).select_from(joined).where(*_conditions(selection))) or 0


# --- Recording and streaming ---------------------------------------------------------------------


def start(session: Session, selection: Selection, fmt: str, *, channel: str, admin_id: int | None = None,
          token_id: int | None = None) -> ExportRecord:
    """Record that an export begins: who, through what, which rows, which format. The caller commits."""
    if fmt not in FORMATS:
        raise InvalidExport({"format": [f"Unknown format {fmt!r}: use {' or '.join(FORMATS)}."]})
    if channel not in CHANNELS:
        raise ValueError(f"unknown export channel {channel!r}")
    record = ExportRecord(channel=channel, admin_id=admin_id, token_id=token_id,
                          newsletter_id=selection.newsletter_id, format=fmt, filters=dict(selection.filters))
    session.add(record)
    session.flush()
    return record


def stream(session: Session, record: ExportRecord, selection: Selection,
           on_rows: Callable[[int], None] | None = None, *, config: Mapping[str, Any]) -> Iterator[bytes]:
    """The export file in chunks of UTF-8 bytes; `on_rows(n)` after each chunk of n rows.

    `config` holds NEWSLETTER_SUPPRESSION_KEY, which the addresses' keys are made with.

    CSV starts with its header row before the database is asked anything, so the first bytes
    leave at once. When the last row is out, the record gets its row count and finish time in a
    short transaction of its own: the end of the stream is the edge where that commit belongs.
    If the stream is abandoned (the client went away), the record stays unfinished.
    """
    return _stream(session, record.id, record.format, selection, on_rows, config)


def _stream(session: Session, record_id: int, fmt: str, selection: Selection,
            on_rows: Callable[[int], None] | None, config: Mapping[str, Any]) -> Iterator[bytes]:
    encode = _csv_chunk(selection.columns) if fmt == "csv" else _ndjson_chunk(selection.columns)
    count = 0
    try:
        if fmt == "csv":
            yield encode([selection.columns])  # the header row, before the query runs
        sift = _suppression_sift(session, selection, config, empty="" if fmt == "csv" else None)
        query = rows_query(selection, for_csv=fmt == "csv", with_address=sift is not None)
        with closing(_read_chunks(session, query)) as chunks:
            for rows in chunks:
                if sift is not None:
                    rows = sift(rows)
                    if not rows:
                        continue
                count += len(rows)
                yield encode(rows)
                if on_rows is not None:
                    on_rows(len(rows))
    except BaseException:  # GeneratorExit too: end the read transaction, leave the record unfinished
        session.rollback()
        raise
    session.rollback()  # the read transaction: nothing to keep
    session.execute(update(ExportRecord).where(ExportRecord.id == record_id)
                    .values(row_count=count, finished_at=utcnow()))
    session.commit()


Rows = Sequence[Sequence[Any]]


def _suppression_sift(session: Session, selection: Selection, config: Mapping[str, Any],
                      empty: str | None) -> Callable[[Rows], Rows] | None:
    """What to do to each chunk of rows (each ending with the address) for `selection.suppressed`; None: nothing.

    The rows lose their address; `include` and `only` put the reason there (`include`: `empty` when none).
    """
    matcher = suppressions.mail_stopping_matcher(session, config)
    if matcher is None:
        if selection.suppressed == "exclude":
            return None  # nothing to leave out: the query need not even read the address
        if selection.suppressed == "only":
            return lambda rows: []
        return lambda rows: [(*row[:-1], empty) for row in rows]
    # Built-ins called straight from each comprehension: no Python function call a row.
    reasons, form = matcher.reasons.get, matcher.form
    if selection.suppressed == "exclude":
        return lambda rows: [row[:-1] for row in rows if reasons(form(row[-1])) is None]
    if selection.suppressed == "only":
        return lambda rows: [(*row[:-1], reason) for row in rows if (reason := reasons(form(row[-1]))) is not None]
    return lambda rows: [(*row[:-1], reasons(form(row[-1])) or empty) for row in rows]


def _read_chunks(session: Session, query: Select[Any]) -> Iterator[Sequence[Sequence[Any]]]:
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        yield from _read_chunks_postgresql(connection, query)
        return
    # SQLite: every transaction here takes the write lock (BEGIN IMMEDIATE), so read a chunk per short
    # transaction, by subscription id, and hold nothing while the client takes its time.
    after = 0
    paged = query.add_columns(_subscriptions.c.id)
    while True:
        rows = session.execute(paged.where(_subscriptions.c.id > after).limit(CHUNK_ROWS)).all()
        session.rollback()
        if not rows:
            return
        after = rows[-1][-1]
        yield [row[:-1] for row in rows]


def _read_chunks_postgresql(connection: Connection, query: Select[Any]) -> Iterator[Sequence[Sequence[Any]]]:
    """The rows from a server-side cursor, CHUNK_ROWS per FETCH, in the session's transaction.

    Read straight from psycopg: plain tuples, without the Row object SQLAlchemy would make of each
    (a third of the CPU time of a big export). SQLAlchemy still compiles the statement; its
    parameters (ids, text, aware datetimes) need no conversion that psycopg doesn't do itself.
    """
    compiled = query.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True})
    driver_connection = connection.connection.driver_connection
    with driver_connection.cursor(name=f"export_{secrets.token_hex(8)}") as cursor:
        cursor.execute(compiled.string, compiled.params)
        while rows := cursor.fetchmany(CHUNK_ROWS):
            yield rows


def _csv_chunk(columns: Sequence[str]) -> Callable[[Sequence[Sequence[str]]], bytes]:
    """An encoder of rows of text cells into CSV lines: RFC 4180 (CRLF line ends, quotes doubled, a cell
    quoted when it holds a comma, a quote, CR or LF), byte for byte what csv.writer writes.

    csv.writer takes about 1.5 µs a row; joining the cells takes a tenth of that. So the rows are
    joined first, and only the rows with a cell that needs quoting are written again by csv.writer.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    separators = len(columns) - 1

    def quoted(row: Sequence[str]) -> str:
        writer.writerow(row)
        line = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return line

    def encode(rows: Sequence[Sequence[str]]) -> bytes:
        lines = [",".join(row) for row in rows]
        text = "\r\n".join(lines) + "\r\n"
        count = len(lines)
        # One look over the whole chunk: the separators we put in, and no quote, CR or LF of a cell's own.
        if (text.count(",") == separators * count and text.count("\n") == count and text.count("\r") == count
                and '"' not in text):
            return text.encode("utf-8")
        return "".join([
            quoted(row) if line.count(",") != separators or '"' in line or "\r" in line or "\n" in line
            else line + "\r\n"
            for line, row in zip(lines, rows)
        ]).encode("utf-8")

    return encode


def _ndjson_chunk(columns: Sequence[str]) -> Callable[[Sequence[Sequence[Any]]], bytes]:
    # Programs read NDJSON: the values are as stored, not neutralized for spreadsheets.
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode

    def encode(rows: Sequence[Sequence[Any]]) -> bytes:
        return "".join([dumps(dict(zip(columns, row))) + "\n" for row in rows]).encode("utf-8")

    return encode


def filename(selection: Selection, fmt: str, when: datetime) -> str:
    """A download's file name: daily-briefing-subscribers-20260131-093000.csv"""
    return f"{selection.newsletter_slug or 'all-newsletters'}-subscribers-{when:%Y%m%d-%H%M%S}.{fmt}"


# --- The list of exports -------------------------------------------------------------------------


@dataclass(frozen=True)
class PastExport:
    record: ExportRecord
    admin_email: str | None
    token_name: str | None
    newsletter_slug: str | None

    @property
    def by(self) -> str:
        """Who took it, in words."""
        if self.record.channel == "admin":
            return self.admin_email or "a deleted admin account"
        if self.record.channel == "api":
            return f"API token {self.token_name!r}" if self.token_name else "a deleted API token"
        return "the command line"


def recent(session: Session, limit: int = 100) -> list[PastExport]:
    """The latest exports, newest first, with who took them."""
    query = (
        select(ExportRecord, AdminUser.email, ApiToken.name, Newsletter.slug)
        .outerjoin(AdminUser, AdminUser.id == ExportRecord.admin_id)
        .outerjoin(ApiToken, ApiToken.id == ExportRecord.token_id)
        .outerjoin(Newsletter, Newsletter.id == ExportRecord.newsletter_id)
        .order_by(ExportRecord.id.desc())
        .limit(limit)
    )
    return [PastExport(*row) for row in session.execute(query)]
