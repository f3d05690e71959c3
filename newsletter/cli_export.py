"""The `newsletter export` command: a newsletter's subscribers (or all) as CSV or NDJSON, to stdout or a file."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import BinaryIO

import click
from flask import current_app
from flask.cli import with_appcontext

from . import exports
from .extensions import db


@click.command("export")
@click.argument("newsletter", metavar="SLUG|all")
@click.option("--status", multiple=True, metavar="STATUS",
              help="pending, confirmed or unsubscribed; repeat it (or comma-separate) for several. Default: any.")
@click.option("--since", "signed_up_since", metavar="DATE",
              help="Signed up on or after this day (UTC, 2026-01-31) or time (2026-01-31T09:30:00Z).")
@click.option("--until", "signed_up_until", metavar="DATE",
              help="Signed up on or before this day (the whole day), or before this time.")
@click.option("--confirmed-since", metavar="DATE", help="Confirmed on or after this day or time.")
@click.option("--confirmed-until", metavar="DATE", help="Confirmed on or before this day, or before this time.")
@click.option("--suppressed", type=click.Choice(list(exports.SUPPRESSED_CHOICES)), default="exclude",
              show_default=True, help="Addresses on the suppression list: leave them out, include them with a "
                                      "'suppressed' column giving the reason, or export only them.")
@click.option("--format", "fmt", type=click.Choice(list(exports.FORMATS)), default="csv", show_default=True,
              help="csv for spreadsheets and sending platforms (formula cells neutralized), ndjson for programs.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True, allow_dash=True), default="-",
              help="The file to write; default: standard output.")
@with_appcontext
def export(newsletter: str, status: tuple[str, ...], signed_up_since: str | None, signed_up_until: str | None,
           confirmed_since: str | None, confirmed_until: str | None, suppressed: str, fmt: str, output: str) -> None:
    """Export the subscribers of newsletter SLUG, or of all newsletters, as a recorded export.

    A progress bar shows on stderr when it is a terminal. Erased readers are never exported;
    suppressed addresses are left out unless --suppressed says otherwise.
    """
    try:
        chosen = None if newsletter == "all" else exports.newsletter_named(db.session, newsletter)
        selection = exports.parse_selection(chosen, status=status, signed_up_since=signed_up_since,
                                            signed_up_until=signed_up_until, confirmed_since=confirmed_since,
                                            confirmed_until=confirmed_until, suppressed=suppressed)
        record = exports.start(db.session, selection, fmt, channel="cli")
    except exports.InvalidExport as error:
        raise click.UsageError(str(error)) from None
    db.session.commit()
    record_id = record.id

    progress = click.progressbar(length=exports.count_rows(db.session, selection), label="Exporting",
                                 file=sys.stderr, show_pos=True) if sys.stderr.isatty() else None
    written = 0

    def count(rows: int) -> None:
        nonlocal written
        written += rows
        if progress is not None:
            progress.update(rows)

    try:
        with progress if progress is not None else contextlib.nullcontext(), _target(output) as target, \
                contextlib.closing(exports.stream(db.session, record, selection, on_rows=count,
                                                  config=current_app.config)) as chunks:
            for chunk in chunks:
                target.write(chunk)
    except BrokenPipeError:
        # The reader of our stdout stopped (e.g. `| head`): no error, but the export is unfinished.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        raise click.ClickException(f"The output was closed after {written} rows; export #{record_id} "
                                   "is recorded as unfinished.") from None
    where = "standard output" if output == "-" else output
    click.echo(f"Exported {written} rows to {where} (export #{record_id}).", err=True)


@contextlib.contextmanager
def _target(output: str) -> Iterator[BinaryIO]:
    """Standard output, or the file written as FILE.partial and renamed once complete."""
    if output == "-":
        stdout = sys.stdout.buffer
        yield stdout
        stdout.flush()
        return
    partial = f"{output}.partial"
    try:
        with open(partial, "wb") as file:
            yield file
        os.replace(partial, output)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(partial)

