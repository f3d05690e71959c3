"""Imports: bring an existing list (Mailchimp, listmonk, our own export) into a newsletter, recorded and resumable.

An import is an ImportRun: record_upload() hashes the file and detects its format (import_formats),
queue() readies it (dry run or real), execute() runs it batch by batch, and claim_next() lets a
worker take up a queued run or one whose process died. No Flask request in here; execute() needs
an app context (it queues confirmation emails in its language).

What a row does (the file's rows are read in order, `batch_rows` at a time, each batch one transaction
that also moves the run's rows_done, counts and heartbeat_at forward, so a run resumes after the
last committed batch):

- The address is normalized as a signup's is (email-validator's normalized form; plain ASCII
  addresses take a fast path that gives the same form). An invalid one is refused (invalid_address),
  so is a row the reader could not make sense of (unreadable_row), and an address already met in this
  run (duplicate_in_file: the run keeps a 128-bit hash of each address, not the address).
- The suppression list is checked by the address's key: an `erased` entry refuses the row (an erased
  reader is never brought back), any other entry refuses it too (suppressed), but for a `cleaned` row,
  which is then unchanged. A blocked reader's row is refused (blocked).
- A `cleaned` row puts the address on the suppression list (reason "import"): suppressed.
- Otherwise the row asks for a subscription state, at a time:
    subscribed (proof of opt-in)  -> confirmed, at CONFIRM_TIME (or OPTIN_TIME); the subscription
                                     keeps both times, with a signup_requested event at the opt-in
                                     time and IP and a confirmed event at the confirmation time and IP;
    unconfirmed, --unconfirmed ask       -> pending now, and a confirmation email scheduled at
                                     NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR (kind import_confirmation,
                                     next_attempt_at spaced after the last one already scheduled), its
                                     link stamped with that time so that it lasts NEWSLETTER_CONFIRM_MAX_AGE
                                     from when the email leaves (tokens.sign_at);
    unconfirmed, --unconfirmed confirmed -> confirmed, its event saying "imported without proof of
                                     confirmation";
    unconfirmed, --unconfirmed skip      -> refused (unconfirmed_skipped);
    unsubscribed                  -> unsubscribed at UNSUB_TIME, or without one (our export has none)
                                     at the latest time the row has (last change, confirmation,
                                     opt-in), and only if it has none at the import's time; with the
                                     signup_requested and confirmed events of its opt-in and
                                     confirmation times first, as a subscribed row has them.
  Against the subscription already here: the same status is `unchanged` (so the same file twice
  changes nothing); an unsubscribe here is never undone (unsubscribed_here); a different status is
  taken only if the row's time is later than the subscription's last change (confirmed_at,
  unsubscribed_at or pending_since) — otherwise, or if the row has no time, it is refused
  (newer_state_here). A subscribed row never turns a confirmed subscription back to pending.
  No subscription yet: `new` (and the reader is created if need be; an existing reader's name is kept).
- Every consent event has the source "import" and names the file and the run.
- A row of our own export of all newsletters that is about another newsletter is refused
  (other_newsletter): each newsletter is imported by a run of its own.

A dry run decides the same and writes nothing but the run's counts and refusals. A real run deletes
its stored upload (a file in NEWSLETTER_IMPORT_DIR) when it ends; a CLI run reads the named file in place.

Concurrency: readers and subscriptions are inserted with ON CONFLICT DO NOTHING and re-read when a
live signup created them first; on PostgreSQL a batch locks the readers and subscriptions it reads
(readers first, in address order, as signups do), and a batch that meets a deadlock is run again.

Speed (bench/import.py): no ORM object per row; a batch reads its readers, subscriptions and
suppression entries with one array parameter each, inserts readers and subscriptions with one
INSERT … SELECT FROM unnest(arrays) each and COPYs its consent events and refusals (PostgreSQL);
its commit does not wait for the disk (synchronous_commit off), as a batch lost in a crash is lost
together with the run's progress and is done again on resume. The duplicate check keeps 16 bytes
an address (a 128-bit BLAKE2b hash; two distinct addresses collide with odds of about 1 in 10^26
for a million rows), so memory stays flat: about 32 MB for a million rows.
"""

from __future__ import annotations

import contextlib
import csv
import gc
import hashlib
import hmac
import io
import logging
import os
import re
import secrets
import shutil
import time
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import psycopg
from email_validator import EmailNotValidError, validate_email
from sqlalchemy import ARRAY, Integer, String, any_, bindparam, delete, insert, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from . import addresses, emails, import_formats, outbox, suppressions
from .exports import FORMULA_STARTS
from .import_formats import FormatError, SourceRow
from .locale import N_
from .models import (
    ConsentEvent,
    ImportRefusal,
    ImportRun,
    Newsletter,
    OutboxMessage,
    Reader,
    Subscription,
    Suppression,
    utcnow,
)
from .subscriptions import check_name

log = logging.getLogger(__name__)

CHANNEL = "import"
CONFIRMATION_KIND = "import_confirmation"
UNCONFIRMED_POLICIES = ("ask", "confirmed", "skip")
REQUESTED_FORMATS = ("auto", *import_formats.FORMATS)
FORMAT_LABELS = {"mailchimp": "Mailchimp export", "listmonk": "listmonk export", "csv": "newsletter export"}

REFUSAL_REASONS: dict[str, str] = {
    "invalid_address": N_("The email address is not valid."),
    "duplicate_in_file": N_("The address appears earlier in the same import; only its first row counts."),
    "newer_state_here": N_("The subscription changed here later than the row says it did (or the row gives "
                           "no time); the newer state is kept."),
    "unsubscribed_here": N_("The reader unsubscribed here; an import never subscribes them again."),
    "erased": N_("The reader's data was erased on request; an import never brings them back."),
    "blocked": N_("An admin blocked this address."),
    "suppressed": N_("The address is on the suppression list (a bounce, a complaint or a block); it gets no email."),
    "unreadable_row": N_("The row could not be read (a bad date, an unknown status…)."),
    "unconfirmed_skipped": N_("The row has no proof of confirmation, and this import skips such rows."),
    "other_newsletter": N_("The row is about another newsletter (an export of all newsletters); import the file "
                           "into that newsletter for it."),
}
REFUSAL_COLUMNS = ("file", "line", "email", "reason", "detail")


class InvalidImport(ValueError):
    """The upload or the run can't be imported; str() says what is wrong, for an editor."""


class _Superseded(Exception):
    """Another process took the run over (its heartbeat changed): this one stops."""


def empty_counts() -> dict[str, Any]:
    return {"new": 0, "updated": 0, "unchanged": 0, "suppressed": 0, "confirmations_queued": 0, "refused": {}}


# --- Recording and queueing --------------------------------------------------------------------------------


def _file_digest(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def record_upload(session: Session, config: Mapping[str, Any], *, source: Path, file_name: str,
                  newsletter: Newsletter, channel: str, admin_id: int | None = None, requested_format: str = "auto",
                  unconfirmed: str = "ask", dry_run: bool = False, keep_file: bool = False) -> ImportRun:
    """Record an uploaded file as an ImportRun ("uploaded"), its format detected; InvalidImport if it can't be."""
    if requested_format not in REQUESTED_FORMATS:
        raise InvalidImport(f"Unknown format {requested_format!r}: choose one of {', '.join(REQUESTED_FORMATS)}.")
    if unconfirmed not in UNCONFIRMED_POLICIES:
        raise InvalidImport(f"Unknown choice for unconfirmed rows {unconfirmed!r}: choose one of "
                            f"{', '.join(UNCONFIRMED_POLICIES)}.")
    if not newsletter.is_active:
        raise InvalidImport(f"{newsletter.name} ({newsletter.slug}) is archived and takes no new readers.")
    source = Path(source)
    if not source.is_file():
        raise InvalidImport(f"There is no file {str(source)!r}.")
    try:
        detected = import_formats.detect(source, requested_format, name=file_name)
        sha256, size = _file_digest(source)
    except FormatError as error:
        raise InvalidImport(str(error)) from None
    except OSError as error:
        raise InvalidImport(f"The file {file_name!r} can't be read: {error.strerror or error}.") from None
    stored = source
    if keep_file:
        directory = upload_dir(config)
        stored = directory / f"{secrets.token_hex(16)}.upload"
        fd = os.open(stored, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as target, source.open("rb") as original:
            shutil.copyfileobj(original, target, 1 << 20)
        source.unlink(missing_ok=True)
    # The upload's own size and hash; for a zip, the name of each CSV in it.
    files: list[dict[str, Any]] = [{"name": _clean(name)[:255]} for name in detected.files]
    if len(files) <= 1:
        files = [{"name": _clean(file_name)[:255], "size": size, "sha256": sha256}]
    run = ImportRun(channel=channel, admin_id=admin_id, newsletter_id=newsletter.id, file_name=_clean(file_name)[:255],
                    files=files, file_sha256=sha256, file_size=size, stored_path=str(stored.resolve()), format=detected.format,
                    unconfirmed=unconfirmed, dry_run=dry_run, status="uploaded", rows_done=0, counts=empty_counts())
    session.add(run)
    session.flush()
    return run


@dataclass
class Preview:
    """What an upload holds: its format, files, column mapping, ignored columns and first rows."""

    format: str
    files: list[str]
    columns: dict[str, str]
    ignored: list[str]
    rows: list[SourceRow] = field(default_factory=list)


def _detected(run: ImportRun) -> import_formats.Detected:
    if not run.stored_path:
        raise InvalidImport("The uploaded file of this import is no longer kept.")
    path = Path(run.stored_path)
    if not path.is_file():
        raise InvalidImport("The uploaded file of this import is no longer there.")
    try:
        return import_formats.detect(path, run.format or "auto", name=run.file_name)
    except FormatError as error:
        raise InvalidImport(str(error)) from None


def preview(run: ImportRun, rows: int = 10) -> Preview:
    """The detected format and mapping of the run's file, and its first `rows` rows.

    A row's `problem` is why the import would refuse it for what it holds alone: unreadable, or
    an address that is not one (suppressions, duplicates and the database are not looked at).
    """
    detected = _detected(run)
    first: list[SourceRow] = []
    try:
        for row in import_formats.read_rows(Path(run.stored_path or ""), detected):
            if len(first) >= rows:
                break
            if row.problem is None:
                # As the import will find it: the same normalization, the same words.
                try:
                    normalize_address(row.email)
                except addresses.InvalidAddress as error:
                    row.problem = str(error)
            first.append(row)
    except FormatError as error:
        raise InvalidImport(str(error)) from None
    return Preview(detected.format, list(detected.files), dict(detected.columns), list(detected.ignored), first)


def queue(session: Session, run: ImportRun, *, dry_run: bool, unconfirmed: str) -> None:
    """Ready the run to be executed (a dry run, or the real one); its counts and refusals start again."""
    if unconfirmed not in UNCONFIRMED_POLICIES:
        raise InvalidImport(f"Unknown choice for unconfirmed rows {unconfirmed!r}.")
    if run.status in ("queued", "running"):
        raise InvalidImport(f"Import #{run.id} is already {run.status}.")
    if run.status == "finished" and not run.dry_run:
        raise InvalidImport(f"Import #{run.id} has run already; upload the file again to import it again.")
    if run.status == "failed":
        raise InvalidImport(f"Import #{run.id} failed: {run.error}")
    if not run.stored_path:
        raise InvalidImport(f"The file of import #{run.id} is no longer kept (uploads not imported are deleted "
                            "after a while): upload it again.")
    session.execute(delete(ImportRefusal).where(ImportRefusal.import_id == run.id))
    run.dry_run, run.unconfirmed, run.status = dry_run, unconfirmed, "queued"
    run.rows_done, run.rows_total, run.counts, run.error = 0, None, empty_counts(), None
    run.started_at = run.finished_at = run.heartbeat_at = None
    session.flush()


def claim_next(session: Session, *, stale_after: timedelta) -> ImportRun | None:
    """A queued run, or a running one whose process stopped beating, marked running by us; None if none.

    It commits (the claim must be seen by other workers at once); then call execute() with the run's id.
    """
    now = utcnow()
    for _attempt in range(5):
        candidate = session.execute(
            select(ImportRun.id, ImportRun.status, ImportRun.heartbeat_at)
            .where(or_(ImportRun.status == "queued",
                       (ImportRun.status == "running")
                       & (ImportRun.heartbeat_at.is_(None) | (ImportRun.heartbeat_at < now - stale_after))))
            .order_by(ImportRun.id).limit(1)
        ).first()
        if candidate is None:
            return None
        # Taken only if nobody changed it since we read it: two workers can't both win.
        taken = session.execute(
            update(ImportRun)
            .where(ImportRun.id == candidate.id, ImportRun.status == candidate.status,
                   ImportRun.heartbeat_at.is_not_distinct_from(candidate.heartbeat_at))
            .values(status="running", heartbeat_at=now)
            .execution_options(synchronize_session=False)
        ).rowcount
        if taken == 1:
            session.commit()
            return session.get(ImportRun, candidate.id, populate_existing=True)
        session.rollback()
    return None


def recent(session: Session, limit: int = 50) -> list[ImportRun]:
    """The latest import runs, newest first."""
    return list(session.scalars(select(ImportRun).order_by(ImportRun.created_at.desc(), ImportRun.id.desc())
                                .limit(limit)))


def reason_text(reason: str) -> str:
    """The sentence for editors explaining a refusal reason, in the current language."""
    from flask_babel import gettext

    sentence = REFUSAL_REASONS.get(reason)
    return gettext(sentence) if sentence else reason


def _spreadsheet_safe(text: str) -> str:
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def refusals_csv(session: Session, run_id: int) -> Iterator[bytes]:
    """The run's refused rows as CSV (file, line, email, reason, detail), formula cells neutralized.

    In the order of the file (and of a zip's files): each batch writes its refusals in that order.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(REFUSAL_COLUMNS)
    last_id = 0
    while True:
        rows = session.execute(
            select(ImportRefusal.id, ImportRefusal.file, ImportRefusal.line, ImportRefusal.email,
                   ImportRefusal.reason, ImportRefusal.detail)
            .where(ImportRefusal.import_id == run_id, ImportRefusal.id > last_id)
            .order_by(ImportRefusal.id).limit(5000)
        ).all()
        for row in rows:
            writer.writerow([_spreadsheet_safe(row.file), row.line, _spreadsheet_safe(row.email or ""), row.reason,
                             _spreadsheet_safe(row.detail or "")])
        chunk = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if chunk:
            yield chunk.encode("utf-8")
        if len(rows) < 5000:
            return
        last_id = rows[-1].id


# --- Addresses ---------------------------------------------------------------------------------------------

# An ASCII dot-atom local part: email-validator keeps it as written.
_PLAIN_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*\Z")
_PLAIN_DOMAIN = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\Z")


@lru_cache(maxsize=65536)
def _plain_domain(domain: str) -> str | None:
    """email-validator's normalized form of an ASCII domain, or None if it refuses it (the slow path says why)."""
    try:
        return validate_email("a@" + domain, check_deliverability=False, allow_display_name=False,
                              strict=True).domain
    except EmailNotValidError:
        return None


def normalize_address(text: str) -> str:
    """addresses.normalize(text), faster for plain ASCII addresses; InvalidAddress if invalid.

    email-validator takes ~40 µs an address, mostly on the domain: a plain local part is kept as
    written, so only the domain is checked, once per domain.
    """
    local, at, domain = text.rpartition("@")
    if (at and len(text) <= 200 and text.isascii() and 0 < len(local) <= 64 and "xn--" not in domain.lower()
            and _PLAIN_LOCAL.match(local) and _PLAIN_DOMAIN.match(domain)):
        normalized_domain = _plain_domain(domain)
        if normalized_domain is not None:
            return f"{local}@{normalized_domain}"
    return addresses.normalize(text)


def _key_function(config: Mapping[str, Any]) -> Callable[[str], str]:
    """suppressions.address_key for an address already normalized (it skips validating it again)."""
    secret = (config.get("NEWSLETTER_SUPPRESSION_KEY") or config["SECRET_KEY"]).encode()
    base = hmac.new(secret, b"suppression:", hashlib.sha256)

    def key(normalized: str) -> str:
        mac = base.copy()
        mac.update(normalized.lower().encode("utf-8", "surrogatepass"))
        return mac.hexdigest()

    return key


class _SeenAddresses:
    """The addresses met so far in a run, as 128-bit hashes in an open-addressing table: 16 bytes each."""

    def __init__(self) -> None:
        self._size = 1 << 14
        self._high = array("Q", bytes(8 * self._size))
        self._low = array("Q", bytes(8 * self._size))
        self._count = 0

    def add(self, address: str) -> bool:
        """Whether `address` is new (it is then remembered)."""
        digest = hashlib.blake2b(address.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        high = int.from_bytes(digest[:8], "little") | 1  # 0 marks an empty slot
        low = int.from_bytes(digest[8:], "little")
        if not self._put(high, low):
            return False
        self._count += 1
        if self._count * 4 > self._size * 3:
            self._grow()
        return True

    def _put(self, high: int, low: int) -> bool:
        table_high, mask = self._high, self._size - 1
        slot = high & mask
        while (found := table_high[slot]) != 0:
            if found == high and self._low[slot] == low:
                return False
            slot = (slot + 1) & mask
        table_high[slot], self._low[slot] = high, low
        return True

    def _grow(self) -> None:
        old_high, old_low = self._high, self._low
        self._size *= 2
        self._high, self._low = array("Q", bytes(8 * self._size)), array("Q", bytes(8 * self._size))
        for high, low in zip(old_high, old_low):
            if high:
                self._put(high, low)


# --- Execution ---------------------------------------------------------------------------------------------


def _clean(text: str | None) -> str:
    """Text the database takes: no NUL, no lone surrogate."""
    if not text:
        return ""
    return text.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")


def _cut(text: str | None, size: int) -> str | None:
    return _clean(text)[:size] or None if text else None


@dataclass(slots=True)
class _Candidate:
    """A row whose address is valid and new in this run: what the database is asked about."""

    row: SourceRow
    address: str
    key: str


@dataclass(slots=True)
class _Outcome:
    """What a batch did (counted once its transaction commits)."""

    counts: Counter[str] = field(default_factory=Counter)
    refused: Counter[str] = field(default_factory=Counter)
    refusals: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Context:
    session: Session
    config: Mapping[str, Any]
    run_id: int
    newsletter: Newsletter
    policy: str
    dry_run: bool
    postgresql: bool
    wordings: dict[str, str]
    format_label: str
    key_of: Callable[[str], str]
    seen: _SeenAddresses
    heartbeat: datetime
    rows_done: int
    counts: dict[str, Any]
    # Addresses refused as erased in this run: their later rows (duplicates) are stored without them.
    erased: set[str] = field(default_factory=set)


def _wordings(run: ImportRun, file_name: str) -> dict[str, str]:
    origin = f"Imported from {file_name} ({FORMAT_LABELS.get(run.format or '', run.format)}, import #{run.id})"
    return {"proof": origin, "no_proof": f"{origin}, imported without proof of confirmation",
            "ask": f"{origin}, without proof of confirmation: confirmation asked by email",
            "unsubscribed": origin}


def execute(session: Session, config: Mapping[str, Any], run_id: int, *, batch_rows: int = 5000,
            on_progress: Callable[[ImportRun], None] | None = None) -> ImportRun:
    """Run (or resume) the import to its end; its status is then finished, or failed with `error`.

    A database error propagates and leaves the run `running` after its last committed batch: once
    its heartbeat is stale, claim_next() hands it to a worker that resumes it.
    """
    run = session.get(ImportRun, run_id, populate_existing=True)
    if run is None:
        raise InvalidImport(f"There is no import #{run_id}.")
    if run.status in ("finished", "failed"):
        return run
    if run.status == "uploaded":
        raise InvalidImport(f"Import #{run_id} is not queued.")
    newsletter = session.get(Newsletter, run.newsletter_id) if run.newsletter_id is not None else None
    heartbeat = utcnow()
    session.execute(update(ImportRun).where(ImportRun.id == run_id)
                    .values(status="running", heartbeat_at=heartbeat, started_at=run.started_at or heartbeat)
                    .execution_options(synchronize_session=False))
    session.commit()
    run = session.get(ImportRun, run_id, populate_existing=True)
    assert run is not None
    if newsletter is None:
        return _fail(session, run_id, "The newsletter of this import was deleted.")
    try:
        detected = _detected(run)
        rows = import_formats.read_rows(Path(run.stored_path or ""), detected)
    except InvalidImport as error:
        return _fail(session, run_id, str(error))
    counts = empty_counts() | (run.counts or {})
    stored_path, dry_run = run.stored_path, run.dry_run
    context = _Context(session=session, config=config, run_id=run_id, newsletter=newsletter,
                       policy=run.unconfirmed, dry_run=run.dry_run,
                       postgresql=session.get_bind().dialect.name == "postgresql",
                       wordings=_wordings(run, run.file_name),
                       format_label=FORMAT_LABELS.get(run.format or "", run.format or "the file"),
                       key_of=_key_function(config), seen=_SeenAddresses(),
                       heartbeat=heartbeat, rows_done=run.rows_done, counts=counts)
    # The objects alive now (the app, its modules) are not garbage: the cyclic collector's full passes
    # would walk them all again and again as batches come and go.
    gc.freeze()
    try:
        batch: list[SourceRow] = []
        for number, row in enumerate(rows):
            if number < context.rows_done:
                _remember(context, row)  # read before the process died: only its addresses are needed
                continue
            batch.append(row)
            if len(batch) >= batch_rows:
                _run_batch(context, batch)
                batch = []
                if on_progress is not None:
                    on_progress(session.get(ImportRun, run_id, populate_existing=True))  # type: ignore[arg-type]
        if batch:
            _run_batch(context, batch)
    except FormatError as error:
        session.rollback()
        return _fail(session, run_id, f"Stopped after row {context.rows_done}: {error}")
    except OSError as error:
        session.rollback()
        return _fail(session, run_id, f"The file can't be read any more: {error.strerror or error}.")
    except _Superseded:
        session.rollback()
        return session.get(ImportRun, run_id, populate_existing=True)  # type: ignore[return-value]
    finally:
        gc.unfreeze()
    finished = session.execute(
        update(ImportRun).where(ImportRun.id == run_id, ImportRun.heartbeat_at == context.heartbeat)
        .values(status="finished", finished_at=utcnow(), rows_total=context.rows_done,
                stored_path=stored_path if dry_run else None)
        .execution_options(synchronize_session=False)
    ).rowcount
    session.commit()
    if finished and not dry_run:
        _delete_upload(config, stored_path)
    return session.get(ImportRun, run_id, populate_existing=True)  # type: ignore[return-value]


def upload_dir(config: Mapping[str, Any]) -> Path:
    """NEWSLETTER_IMPORT_DIR, created readable by this service's user alone (uploads hold addresses)."""
    directory = Path(config["NEWSLETTER_IMPORT_DIR"])
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(OSError):  # a folder the operator made, and owns: theirs to set
        if directory.stat().st_mode & 0o077:
            directory.chmod(0o700)
    return directory


def upload_deleted_on(config: Mapping[str, Any], run: ImportRun) -> datetime | None:
    """When a kept upload is deleted if the run is not imported by then (NEWSLETTER_IMPORT_KEEP_UPLOADS)."""
    if not run.stored_path or run.created_at is None or not _kept_here(config, run.stored_path):
        return None
    return run.created_at + timedelta(seconds=config["NEWSLETTER_IMPORT_KEEP_UPLOADS"])


def delete_old_uploads(session: Session, config: Mapping[str, Any]) -> int:
    """Delete the uploads kept longer than NEWSLETTER_IMPORT_KEEP_UPLOADS by runs not imported; how many.

    An upload waits for its run (after a dry run, maybe); one never imported would otherwise stay
    under NEWSLETTER_IMPORT_DIR, addresses and all, for ever. The run keeps its record and counts;
    it can't be started any more. A run queued or running meanwhile keeps its file.
    """
    cutoff = utcnow() - timedelta(seconds=config["NEWSLETTER_IMPORT_KEEP_UPLOADS"])
    old = session.execute(
        select(ImportRun.id, ImportRun.stored_path)
        .where(ImportRun.stored_path.is_not(None), ImportRun.created_at < cutoff,
               ImportRun.status.not_in(("queued", "running")))).all()
    deleted = 0
    for run_id, stored_path in old:
        if not _kept_here(config, stored_path):
            continue  # a file the CLI read in place is the user's own
        taken = session.execute(
            update(ImportRun).where(ImportRun.id == run_id, ImportRun.stored_path == stored_path,
                                    ImportRun.status.not_in(("queued", "running")))
            .values(stored_path=None).execution_options(synchronize_session=False)).rowcount
        session.commit()
        if taken:
            try:
                _delete_upload(config, stored_path)
            except OSError as error:
                log.warning("import %d: its old upload can't be deleted (%s)", run_id, error.strerror or error)
                continue
            deleted += 1
    return deleted


def _kept_here(config: Mapping[str, Any], stored_path: str) -> bool:
    return Path(stored_path).parent.resolve() == Path(config["NEWSLETTER_IMPORT_DIR"]).resolve()


def _delete_upload(config: Mapping[str, Any], stored_path: str | None) -> None:
    """Delete a kept upload; a file the CLI named in place (outside NEWSLETTER_IMPORT_DIR) is the user's own."""
    if not stored_path:
        return
    path = Path(stored_path)
    if _kept_here(config, stored_path):
        path.unlink(missing_ok=True)


def _fail(session: Session, run_id: int, error: str) -> ImportRun:
    session.execute(update(ImportRun).where(ImportRun.id == run_id)
                    .values(status="failed", error=error, finished_at=utcnow(), heartbeat_at=None)
                    .execution_options(synchronize_session=False))
    session.commit()
    return session.get(ImportRun, run_id, populate_existing=True)  # type: ignore[return-value]


def _name(name: str | None) -> str | None:
    """subscriptions.check_name(name), faster for printable ASCII (which hides and reorders nothing)."""
    if name is None:
        return None
    if name.isascii() and name.isprintable():
        name = name.strip()
        if len(name) > 200:
            raise ValueError("too long")
        return name or None
    return check_name(name)


def _remember(context: _Context, row: SourceRow) -> None:
    """Note the address of a row done before a resume, as _screen did then."""
    if row.problem is not None or (row.newsletter is not None and row.newsletter != context.newsletter.slug):
        return
    try:
        context.seen.add(normalize_address(row.email))
    except addresses.InvalidAddress:
        pass


# Where execute() spends its time, by step (seconds, summed over runs in this process): for bench/import.py.
STEP_SECONDS: Counter[str] = Counter()


@contextmanager
def _timed(step: str) -> Iterator[None]:
    began = time.perf_counter()
    try:
        yield
    finally:
        STEP_SECONDS[step] += time.perf_counter() - began


# A hook for tests: called with each batch's rows before its transaction commits.
before_commit: Callable[[list[SourceRow]], None] | None = None


def _run_batch(context: _Context, batch: list[SourceRow]) -> None:
    """One batch, one transaction: the rows' changes, their refusals and the run's progress."""
    outcome = _Outcome()
    with _timed("screen rows (addresses, duplicates)"):
        candidates = _screen(context, batch, outcome)
    session = context.session
    for attempt in range(4):
        attempt_outcome = _Outcome(Counter(outcome.counts), Counter(outcome.refused), list(outcome.refusals))
        try:
            if context.postgresql:
                # A batch lost in a server crash is lost with the run's progress, in the same transaction:
                # the run resumes before it. So the commit need not wait for the disk.
                session.execute(text("SET LOCAL synchronous_commit TO OFF"))
            with _driver_errors():
                _apply(context, candidates, attempt_outcome)
                if attempt_outcome.refusals:
                    _insert_rows(context, ImportRefusal.__table__, REFUSAL_ROW_COLUMNS,
                                 _in_reading_order(batch, attempt_outcome.refusals))
            counts = _merged(context.counts, attempt_outcome)
            now = utcnow()
            moved = session.execute(
                update(ImportRun).where(ImportRun.id == context.run_id, ImportRun.heartbeat_at == context.heartbeat)
                .values(rows_done=context.rows_done + len(batch), counts=counts, heartbeat_at=now)
                .execution_options(synchronize_session=False)
            ).rowcount
            if moved != 1:
                raise _Superseded()
            if before_commit is not None:
                before_commit(batch)
            with _timed("commit"):
                session.commit()
        except DBAPIError as error:
            session.rollback()
            if attempt < 3 and getattr(error.orig, "sqlstate", None) in ("40P01", "40001"):
                log.info("import #%s: batch after row %s met a deadlock; running it again", context.run_id,
                         context.rows_done)
                continue
            raise
        context.counts, context.heartbeat, context.rows_done = counts, now, context.rows_done + len(batch)
        return


def _in_reading_order(batch: list[SourceRow], refusals: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The batch's refusals in file and line order: their ids then follow the file (refusals_csv reads by id).

    Rows are refused in two passes (the file's own problems, then the database's answers), so the
    order they were refused in is not the file's.
    """
    files: dict[str, int] = {}
    for row in batch:
        files.setdefault(_clean(row.file)[:255] or "?", len(files))
    return sorted(refusals, key=lambda refusal: (files.get(refusal["file"], len(files)), refusal["line"]))


def _merged(counts: dict[str, Any], outcome: _Outcome) -> dict[str, Any]:
    merged = {name: counts.get(name, 0) + outcome.counts.get(name, 0)
              for name in ("new", "updated", "unchanged", "suppressed", "confirmations_queued")}
    refused = Counter(counts.get("refused", {}))
    refused.update(outcome.refused)
    merged["refused"] = dict(sorted(refused.items()))
    return merged


def _refuse(context: _Context, outcome: _Outcome, row: SourceRow, reason: str, detail: str | None = None,
            *, keep_address: bool = True) -> None:
    outcome.refused[reason] += 1
    # An erased reader's address is kept nowhere, not even in the refusal report.
    email = _cut(row.email, 320) if keep_address and reason != "erased" else None
    outcome.refusals.append({"import_id": context.run_id, "file": _clean(row.file)[:255] or "?", "line": row.line,
                             "email": email, "reason": reason, "detail": _cut(detail, 2000)})


def _forget_erased(context: _Context, outcome: _Outcome, address: str) -> None:
    """Take an erased address out of this batch's refusals of its duplicates (screened before it was known)."""
    context.erased.add(address)
    for refusal in outcome.refusals:
        if refusal["reason"] == "duplicate_in_file" and refusal["email"]:
            try:
                same = normalize_address(refusal["email"]) == address
            except addresses.InvalidAddress:
                same = False
            if same:
                refusal["email"] = None


def _screen(context: _Context, batch: list[SourceRow], outcome: _Outcome) -> list[_Candidate]:
    """The batch's rows with a valid address new in this run; the others refused. No database here."""
    candidates = []
    seen, key_of, policy = context.seen, context.key_of, context.policy
    for row in batch:
        if row.problem is not None:
            _refuse(context, outcome, row, "unreadable_row", row.problem)
            continue
        if row.newsletter is not None and row.newsletter != context.newsletter.slug:
            _refuse(context, outcome, row, "other_newsletter", row.newsletter)
            continue
        try:
            address = normalize_address(row.email)
        except addresses.InvalidAddress as error:
            _refuse(context, outcome, row, "invalid_address", str(error))
            continue
        if not seen.add(address):
            _refuse(context, outcome, row, "duplicate_in_file", keep_address=address not in context.erased)
            continue
        if row.status == "unconfirmed" and policy == "skip":
            _refuse(context, outcome, row, "unconfirmed_skipped")
            continue
        candidates.append(_Candidate(row, address, key_of(address)))
    return candidates


@dataclass(slots=True)
class _Present:
    """A subscription as it stands here."""

    id: int
    status: str
    pending_since: datetime | None
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None

    @property
    def changed_at(self) -> datetime | None:
        return {"pending": self.pending_since, "confirmed": self.confirmed_at,
                "unsubscribed": self.unsubscribed_at}.get(self.status)


@dataclass(slots=True)
class _Wanted:
    """The subscription a row asks for, with its times and the events that prove it."""

    status: str
    at: datetime | None  # the time of that state as the row says it (None: the row gives none)
    pending_since: datetime | None
    confirmed_at: datetime | None
    unsubscribed_at: datetime | None
    events: list[tuple[str, datetime, str | None, str]]  # (action, when, ip, wording)
    confirmation: bool = False


def _wanted(context: _Context, row: SourceRow, now: datetime) -> _Wanted:
    wordings = context.wordings
    optin_ip, confirm_ip = _cut(row.optin_ip, 64), _cut(row.confirm_ip, 64)
    if row.status == "subscribed":
        signed_up = row.optin_time or row.confirm_time or row.changed_at or now
        confirmed = row.confirm_time or row.optin_time or row.changed_at
        return _Wanted("confirmed", confirmed, signed_up, confirmed or now, None,
                       [("signup_requested", signed_up, optin_ip, wordings["proof"]),
                        ("confirmed", confirmed or now, confirm_ip, wordings["proof"])])
    if row.status == "unsubscribed":
        # Without an unsubscribe time (our export has none), the latest time the row has: a moved list's
        # long-gone readers don't all unsubscribe on the day of the import.
        known = [time for time in (row.changed_at, row.confirm_time, row.optin_time) if time is not None]
        left = row.unsubscribed_at or (max(known) if known else None)
        signed_up = row.optin_time or row.confirm_time
        history: list[tuple[str, datetime, str | None, str]] = []
        if signed_up is not None:  # how they joined, before they left, as for a subscribed row
            history.append(("signup_requested", signed_up, optin_ip, wordings["proof"]))
        if row.confirm_time is not None:
            history.append(("confirmed", row.confirm_time, confirm_ip, wordings["proof"]))
        return _Wanted("unsubscribed", left, signed_up or left or now, row.confirm_time, left or now,
                       [*history, ("unsubscribed", left or now, None, wordings["unsubscribed"])])
    # unconfirmed
    if context.policy == "confirmed":
        claimed = row.changed_at or row.optin_time
        return _Wanted("confirmed", claimed, row.optin_time or claimed or now, claimed or now, None,
                       [("signup_requested", row.optin_time or claimed or now, optin_ip, wordings["no_proof"]),
                        ("confirmed", claimed or now, None, wordings["no_proof"])])
    return _Wanted("pending", now, now, None, None, [("signup_requested", now, optin_ip, wordings["ask"])],
                   confirmation=True)


def _decide(wanted: _Wanted, present: _Present) -> str:
    """unchanged, update, or the reason for refusing the row, given the subscription here."""
    if present.status == wanted.status:
        return "unchanged"
    if present.status == "unsubscribed":
        return "unsubscribed_here"
    if wanted.status == "pending" or (wanted.status == "confirmed" and present.status == "confirmed"):
        return "unchanged"  # confirmed here already is more than a row without proof asks for
    changed = present.changed_at
    if wanted.at is None or (changed is not None and wanted.at <= changed):
        return "newer_state_here"
    return "update"


def _by_address(context: _Context, emails_: list[str]) -> dict[str, tuple[int, datetime | None]]:
    """Existing readers among `emails_`: address -> (id, blocked_at); locked on PostgreSQL (real runs)."""
    found: dict[str, tuple[int, datetime | None]] = {}
    if not emails_:
        return found
    columns = (Reader.id, Reader.email, Reader.blocked_at)
    if context.postgresql:
        query = (select(*columns).where(Reader.email == any_(bindparam("emails", sorted(emails_),
                                                                        type_=ARRAY(String))))
                 .order_by(Reader.email))
        if not context.dry_run:
            query = query.with_for_update(of=Reader)
        chunks = [query]
    else:
        chunks = [select(*columns).where(Reader.email.in_(emails_[start:start + 5000]))
                  for start in range(0, len(emails_), 5000)]
    for query in chunks:
        for reader_id, email, blocked_at in context.session.execute(query):
            found[email] = (reader_id, blocked_at)
    return found


def _subscriptions_of(context: _Context, reader_ids: list[int]) -> dict[int, _Present]:
    found: dict[int, _Present] = {}
    if not reader_ids:
        return found
    s = Subscription
    columns = (s.reader_id, s.id, s.status, s.pending_since, s.confirmed_at, s.unsubscribed_at)
    if context.postgresql:
        query = (select(*columns).where(s.newsletter_id == context.newsletter.id,
                                        s.reader_id == any_(bindparam("ids", reader_ids, type_=ARRAY(Integer))))
                 .order_by(s.reader_id))
        queries = [query if context.dry_run else query.with_for_update(of=Subscription)]
    else:
        queries = [select(*columns).where(s.newsletter_id == context.newsletter.id,
                                          s.reader_id.in_(reader_ids[start:start + 5000]))
                   for start in range(0, len(reader_ids), 5000)]
    for query in queries:
        for reader_id, *values in context.session.execute(query):
            found[reader_id] = _Present(*values)
    return found


def _apply(context: _Context, candidates: list[_Candidate], outcome: _Outcome) -> None:
    """Decide each candidate against the database and write what changes (nothing in a dry run)."""
    session, now = context.session, utcnow()
    with _timed("read suppressions"):
        in_force = suppressions.keys_in_force(context.session, [c.key for c in candidates])
    pending, cleaned = [], []
    for candidate in candidates:
        reason = in_force.get(candidate.key)
        if reason == "erased":
            _refuse(context, outcome, candidate.row, "erased")
            _forget_erased(context, outcome, candidate.address)
        elif candidate.row.status == "cleaned":
            if reason is not None:
                outcome.counts["unchanged"] += 1
                continue
            outcome.counts["suppressed"] += 1
            when = candidate.row.cleaned_at or candidate.row.changed_at
            cleaned.append({"address_key": candidate.key, "email": candidate.address, "reason": "import",
                            "source": CHANNEL, "created_at": when or now,
                            "detail": f"cleaned in {context.format_label}" + (f" at {when.isoformat()}" if when else "")
                            + (f" (suppressed there: {candidate.row.cleaned_reason})"
                               if candidate.row.cleaned_reason else "")})
        elif reason is not None:
            _refuse(context, outcome, candidate.row, "suppressed", f"On the suppression list: {reason}")
        else:
            pending.append((candidate, _wanted(context, candidate.row, now)))
    if cleaned and not context.dry_run:
        # As suppressions.suppress() does it, for a batch: an entry put in force meanwhile is kept.
        insert_ = postgresql.insert if context.postgresql else sqlite.insert
        added = set(session.connection().scalars(
            insert_(Suppression.__table__)
            .on_conflict_do_nothing(index_elements=["address_key"],
                                    index_where=text("lifted_at IS NULL AND reason <> 'erased'"))
            .returning(Suppression.__table__.c.address_key), cleaned))
        # The readers of the addresses suppressed now (not of those a concurrent report got to first) are told of it.
        suppressions.record_suppressed(session, [(entry["email"], "import", CHANNEL, entry["created_at"])
                                                 for entry in cleaned if entry["address_key"] in added])

    for _round in range(3):
        if not pending:
            return
        pending = _write(context, pending, outcome, now)
    raise RuntimeError("rows kept changing under the import")  # never seen: signups would have to race thrice


def _write(context: _Context, pending: list[tuple[_Candidate, _Wanted]], outcome: _Outcome, now: datetime
           ) -> list[tuple[_Candidate, _Wanted]]:
    """Write the rows' subscriptions; the rows a concurrent signup got to first, to decide again."""
    session, newsletter_id = context.session, context.newsletter.id
    with _timed("read readers and subscriptions"):
        readers = _by_address(context, [candidate.address for candidate, _ in pending])
        present = _subscriptions_of(context, [reader_id for reader_id, _ in readers.values()])

    new_readers: list[tuple[_Candidate, _Wanted]] = []
    new_subscriptions: list[tuple[int, _Candidate, _Wanted]] = []
    updates: list[tuple[int, _Present, _Candidate, _Wanted]] = []
    for candidate, wanted in pending:
        known = readers.get(candidate.address)
        if known is None:
            new_readers.append((candidate, wanted))
            continue
        reader_id, blocked_at = known
        if blocked_at is not None:
            _refuse(context, outcome, candidate.row, "blocked")
            continue
        subscription = present.get(reader_id)
        if subscription is None:
            new_subscriptions.append((reader_id, candidate, wanted))
            continue
        verdict = _decide(wanted, subscription)
        if verdict == "unchanged":
            outcome.counts["unchanged"] += 1
        elif verdict == "update":
            updates.append((reader_id, subscription, candidate, wanted))
        else:
            _refuse(context, outcome, candidate.row, verdict)

    if context.dry_run:
        for _candidate, wanted in [*new_readers, *((c, w) for _, c, w in new_subscriptions)]:
            outcome.counts["new"] += 1
            outcome.counts["confirmations_queued"] += wanted.confirmation
        outcome.counts["updated"] += len(updates)
        return []

    again: list[tuple[_Candidate, _Wanted]] = []
    if new_readers:
        names = {}
        for candidate, _wanted_ in new_readers:
            try:
                names[candidate.address] = _name(candidate.row.name)
            except ValueError:
                names[candidate.address] = None  # a name we would not show; the address still counts
        with _timed("insert readers"):
            inserted = _insert_readers(context, [(c.address, names[c.address]) for c, _ in new_readers], now)
        for candidate, wanted in new_readers:
            reader_id = inserted.get(candidate.address)
            if reader_id is None:
                again.append((candidate, wanted))  # a signup created the reader meanwhile
            else:
                new_subscriptions.append((reader_id, candidate, wanted))

    events: list[dict[str, Any]] = []
    confirmations: list[tuple[int, _Candidate]] = []
    if new_subscriptions:
        rows = []
        for reader_id, candidate, wanted in new_subscriptions:
            rows.append({"reader_id": reader_id, "newsletter_id": newsletter_id, "status": wanted.status,
                         "created_at": wanted.pending_since or now, "pending_since": wanted.pending_since,
                         "confirmed_at": wanted.confirmed_at, "unsubscribed_at": wanted.unsubscribed_at,
                         "confirmation_sent_at": None})
        with _timed("insert subscriptions"):
            created = _insert_subscriptions(context, rows)
        for reader_id, candidate, wanted in new_subscriptions:
            if reader_id not in created:
                again.append((candidate, wanted))
                continue
            outcome.counts["new"] += 1
            events.extend(_event_rows(reader_id, newsletter_id, wanted))
            if wanted.confirmation:
                confirmations.append((reader_id, candidate))

    for reader_id, subscription, candidate, wanted in updates:
        values: dict[str, Any] = {"status": wanted.status}
        if wanted.status == "confirmed":
            values["confirmed_at"] = wanted.confirmed_at
            events.append(_event_row(reader_id, newsletter_id, wanted.events[-1]))
        else:
            values["unsubscribed_at"] = wanted.unsubscribed_at
            events.append(_event_row(reader_id, newsletter_id, wanted.events[-1]))
        changed = session.execute(
            update(Subscription).where(Subscription.id == subscription.id, Subscription.status == subscription.status)
            .values(**values).execution_options(synchronize_session=False)).rowcount
        if changed != 1:
            events.pop()
            again.append((candidate, wanted))
            continue
        outcome.counts["updated"] += 1

    if events:
        with _timed("copy consent events"):
            _insert_rows(context, ConsentEvent.__table__, EVENT_COLUMNS, events)
    if confirmations:
        with _timed("queue confirmations"):
            _queue_confirmations(context, confirmations, now)
        outcome.counts["confirmations_queued"] += len(confirmations)
    return again


EVENT_COLUMNS = ("reader_id", "newsletter_id", "action", "occurred_at", "source", "page_url", "form_id", "ip_address",
                 "user_agent", "wording")
REFUSAL_ROW_COLUMNS = ("import_id", "file", "line", "email", "reason", "detail")
SUBSCRIPTION_COLUMNS = ("reader_id", "newsletter_id", "status", "created_at", "pending_since", "confirmed_at",
                        "unsubscribed_at", "confirmation_sent_at")


@contextlib.contextmanager
def _driver_errors() -> Iterator[None]:
    """psycopg's own errors from the raw connection (COPY, staging) raised as SQLAlchemy's DBAPIError.

    Every other statement's error comes so: the deadlock retry and the runner's outage path (which
    leaves the run to be taken up again) then see them too, instead of an "unexpected error".
    """
    try:
        yield
    except psycopg.Error as error:
        raise DBAPIError.instance(None, None, error, psycopg.Error) from error


def _driver_connection(context: _Context) -> Any:
    """The psycopg connection under the session's, in the same transaction."""
    return context.session.connection().connection.driver_connection


def _insert_rows(context: _Context, table: Any, columns: tuple[str, ...], rows: list[dict[str, Any]]) -> None:
    """Append rows to a table: COPY on PostgreSQL (a tenth of the time of INSERTs), else one executemany."""
    if not rows:
        return
    if not context.postgresql:
        context.session.connection().execute(table.insert(), rows)
        return
    with _driver_connection(context).cursor() as cursor, \
            cursor.copy(f"COPY {table.name} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row([row[column] for column in columns])


# Staging tables of the connection's own (temporary, emptied at each commit): a batch's new readers and
# subscriptions are COPYed in, then inserted by one INSERT … SELECT … ON CONFLICT. psycopg dumps an
# array parameter element by element (a timestamp costs ~15 µs); COPY writes a row in a few µs.
_STAGING = (
    "CREATE TEMPORARY TABLE IF NOT EXISTS import_new_readers (email text, name text) ON COMMIT DELETE ROWS",
    ("CREATE TEMPORARY TABLE IF NOT EXISTS import_new_subscriptions (reader_id integer, status text, "
     "created_at timestamptz, pending_since timestamptz, confirmed_at timestamptz, unsubscribed_at timestamptz) "
     "ON COMMIT DELETE ROWS"),
)


def _staged(context: _Context, table: str, columns: tuple[str, ...], rows: Iterable[tuple[Any, ...]]) -> Any:
    """A cursor, after COPYing `rows` into the staging table `table` (created if this connection has none)."""
    connection = _driver_connection(context)
    cursor = connection.cursor()
    for statement in _STAGING:
        cursor.execute(statement)
    with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)
    return cursor


def _insert_readers(context: _Context, readers: list[tuple[str, str | None]], now: datetime) -> dict[str, int]:
    """Create the readers (address, name) that don't exist; address -> id of those created by us."""
    if context.postgresql:
        with _staged(context, "import_new_readers", ("email", "name"), readers) as cursor:
            cursor.execute("INSERT INTO readers (email, name, created_at) SELECT email, name, %s "
                           "FROM import_new_readers ON CONFLICT (email) DO NOTHING RETURNING email, id", (now,))
            created = dict(cursor.fetchall())
            cursor.execute("TRUNCATE import_new_readers")
            return created
    statement = (sqlite.insert(Reader.__table__).on_conflict_do_nothing(index_elements=["email"])
                 .returning(Reader.__table__.c.email, Reader.__table__.c.id))
    return dict(context.session.connection().execute(
        statement, [{"email": address, "name": name, "created_at": now} for address, name in readers]).all())


_STAGED_SUBSCRIPTION = ("reader_id", "status", "created_at", "pending_since", "confirmed_at", "unsubscribed_at")


def _insert_subscriptions(context: _Context, rows: list[dict[str, Any]]) -> set[int]:
    """Create the subscriptions that don't exist yet; the reader ids of those created by us."""
    if context.postgresql:
        staged = ([row[column] for column in _STAGED_SUBSCRIPTION] for row in rows)
        with _staged(context, "import_new_subscriptions", _STAGED_SUBSCRIPTION, staged) as cursor:
            cursor.execute(
                f"INSERT INTO subscriptions ({', '.join(SUBSCRIPTION_COLUMNS)}) "
                "SELECT reader_id, %s, status, created_at, pending_since, confirmed_at, unsubscribed_at, NULL "
                "FROM import_new_subscriptions ON CONFLICT (reader_id, newsletter_id) DO NOTHING RETURNING reader_id",
                (context.newsletter.id,))
            created = {reader_id for (reader_id,) in cursor.fetchall()}
            cursor.execute("TRUNCATE import_new_subscriptions")
            return created
    statement = (sqlite.insert(Subscription.__table__)
                 .on_conflict_do_nothing(index_elements=["reader_id", "newsletter_id"])
                 .returning(Subscription.__table__.c.reader_id))
    return set(context.session.connection().execute(statement, rows).scalars())


def _event_row(reader_id: int, newsletter_id: int, event: tuple[str, datetime, str | None, str]) -> dict[str, Any]:
    action, when, ip, wording = event
    return {"reader_id": reader_id, "newsletter_id": newsletter_id, "action": action, "occurred_at": when,
            "source": CHANNEL, "page_url": None, "form_id": None, "ip_address": ip, "user_agent": None,
            "wording": wording}


def _event_rows(reader_id: int, newsletter_id: int, wanted: _Wanted) -> Iterable[dict[str, Any]]:
    return (_event_row(reader_id, newsletter_id, event) for event in wanted.events)


def _queue_confirmations(context: _Context, confirmations: list[tuple[int, _Candidate]], now: datetime) -> None:
    """A confirmation email each, due one after another at NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR."""
    session, config, newsletter = context.session, context.config, context.newsletter
    interval = timedelta(seconds=3600 / config["NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR"])
    # After the last one any import scheduled, so that two imports together keep to the rate.
    last = session.scalar(
        select(OutboxMessage.next_attempt_at)
        .where(OutboxMessage.status == "pending", OutboxMessage.kind == CONFIRMATION_KIND)
        .order_by(OutboxMessage.next_attempt_at.desc()).limit(1))
    due = now if last is None else max(now, last + interval)
    messages, sent = [], []
    for reader_id, _candidate in confirmations:
        # Rendered when it leaves (days later maybe), with a link whose validity counts from then.
        messages.append(outbox.message_row(kind=CONFIRMATION_KIND, reader_id=reader_id, newsletter_ids=[newsletter.id],
                                           locale=emails.current_locale(), next_attempt_at=due))
        sent.append({"the_reader": reader_id, "due": due})
        due += interval
    session.connection().execute(insert(OutboxMessage.__table__), messages)
    # The subscription counts as named in a confirmation from when it is due to leave (see subscriptions.sign_up).
    session.execute(
        update(Subscription.__table__)
        .where(Subscription.__table__.c.reader_id == bindparam("the_reader"),
               Subscription.__table__.c.newsletter_id == newsletter.id)
        .values(confirmation_sent_at=bindparam("due")), sent)
    # The reader's too: the admin's reader page shows it, and a signup meanwhile sends no second email before it.
    session.execute(
        update(Reader.__table__).where(Reader.__table__.c.id == bindparam("the_reader"))
        .values(confirmation_sent_at=bindparam("due")), sent)
    outbox.note_enqueued(session)
