"""The `newsletter import` command: bring Mailchimp, listmonk or our own exports into a newsletter."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import click
from flask import current_app
from flask.cli import with_appcontext
from sqlalchemy import select

from . import imports
from .extensions import db
from .models import ImportRefusal, ImportRun, Newsletter

PROGRESS_EVERY = 3.0  # seconds between progress lines
SHOWN_REFUSALS = 10


@click.command("import")
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@click.option("--newsletter", "slug", required=True, metavar="SLUG", help="The newsletter the readers join.")
@click.option("--format", "fmt", type=click.Choice(list(imports.REQUESTED_FORMATS)), default="auto",
              show_default=True, help="The file's format; auto detects it from the header.")
@click.option("--dry-run", is_flag=True, help="Decide every row and report, but change nothing.")
@click.option("--unconfirmed", type=click.Choice(list(imports.UNCONFIRMED_POLICIES)), default="ask",
              show_default=True,
              help="Rows without proof of confirmation: ask them by email (at NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR), "
                   "take them as confirmed, or skip them.")
@click.option("--refusals-out", type=click.Path(dir_okay=False, writable=True), default=None, metavar="PATH",
              help="Write every refused row (file, line, email, reason, detail) to this CSV; with several "
                   "FILEs, each run's refusals go to PATH with the run's number before the extension.")
@with_appcontext
def import_command(files: tuple[str, ...], slug: str, fmt: str, dry_run: bool, unconfirmed: str,
                   refusals_out: str | None) -> None:
    """Import FILE (a CSV or a zip of CSVs) into newsletter SLUG, one recorded run per FILE.

    Safe to repeat: the same file twice changes nothing, and a row never overwrites a newer state.
    """
    session = db.session
    newsletter = session.scalars(select(Newsletter).where(Newsletter.slug == slug)).first()
    if newsletter is None:
        raise click.UsageError(f"There is no newsletter called {slug!r} (see `newsletter newsletters list`).")
    for name in files:
        if not Path(name).is_file():
            raise click.UsageError(f"There is no file {name!r}.")
    failed = False
    for name in files:
        path = Path(name)
        try:
            run = imports.record_upload(session, current_app.config, source=path, file_name=path.name,
                                        newsletter=newsletter, channel="cli", requested_format=fmt,
                                        unconfirmed=unconfirmed, dry_run=dry_run)
            shown = imports.preview(run, rows=0)
            imports.queue(session, run, dry_run=dry_run, unconfirmed=unconfirmed)
        except imports.InvalidImport as error:
            session.rollback()
            raise click.ClickException(f"{path.name}: {error}") from None
        session.commit()
        run_id = run.id
        kind = "Dry run" if dry_run else "Import"
        click.echo(f"{kind} #{run_id}: {path.name} as {imports.FORMAT_LABELS.get(shown.format, shown.format)} "
                   f"into {newsletter.slug}")
        for field_name, column in shown.columns.items():
            click.echo(f"  {column!r} -> {field_name}")
        if shown.ignored:
            click.echo(f"  ignored columns: {', '.join(shown.ignored)}")
        began = time.monotonic()

        run = imports.execute(session, current_app.config, run_id, on_progress=_progress_printer(began))
        _summary(run, time.monotonic() - began)
        if refusals_out is not None:
            target = refusals_out if len(files) == 1 else _numbered(refusals_out, run_id)
            try:
                with open(target, "wb") as file:
                    file.writelines(imports.refusals_csv(session, run_id))
            except OSError as error:
                raise click.ClickException(f"Can't write the refused rows to {target}: "
                                           f"{error.strerror or error}.") from None
            click.echo(f"All refused rows: {target}")
        elif sum(run.counts.get("refused", {}).values()):
            click.echo("All refused rows: run again with --refusals-out PATH, or download them from the admin's "
                       "imports page.")
        failed = failed or run.status != "finished"
    session.remove()
    if failed:
        sys.exit(1)


def _progress_printer(began: float) -> Callable[[ImportRun], None]:
    """Prints the rows done and the rate to stderr, at most every PROGRESS_EVERY seconds."""
    last = began

    def progress(current: ImportRun) -> None:
        nonlocal last
        now = time.monotonic()
        if now - last >= PROGRESS_EVERY:
            last = now
            rate = current.rows_done / max(now - began, 1e-6)
            click.echo(f"  {current.rows_done:,} rows ({rate:,.0f} rows/s)", err=True)

    return progress


def _numbered(path: str, run_id: int) -> str:
    stem, extension = os.path.splitext(path)
    return f"{stem}-{run_id}{extension}"


def _summary(run: ImportRun, seconds: float) -> None:
    counts = run.counts
    if run.status == "failed":
        click.echo(f"Import #{run.id} failed after {run.rows_done:,} rows: {run.error}", err=True)
    asked = "would be asked" if run.dry_run else "asked"
    # Asked to confirm is a part of the new rows, not an outcome of its own: the outcomes add up to the rows.
    click.echo(f"{run.rows_done:,} rows in {seconds:.1f} s: {counts.get('new', 0):,} new (of which "
               f"{counts.get('confirmations_queued', 0):,} {asked} to confirm by email), "
               f"{counts.get('updated', 0):,} updated, {counts.get('unchanged', 0):,} unchanged, "
               f"{counts.get('suppressed', 0):,} suppressed, {sum(counts.get('refused', {}).values()):,} refused.")
    refused = counts.get("refused", {})
    if refused:
        click.echo(f"Refused {sum(refused.values()):,} rows: "
                   + ", ".join(f"{reason} {count:,}" for reason, count in sorted(refused.items())))
        first = db.session.scalars(select(ImportRefusal).where(ImportRefusal.import_id == run.id)
                                   .order_by(ImportRefusal.id).limit(SHOWN_REFUSALS))
        for refusal in first:
            detail = f" ({refusal.detail})" if refusal.detail else ""
            click.echo(f"  {refusal.file} line {refusal.line}: {refusal.email or ''!r} {refusal.reason}{detail}")
