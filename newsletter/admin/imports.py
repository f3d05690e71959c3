"""Admin imports (admins only): upload a list, look at what was read, dry-run it, run it, follow it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TypeVar

from flask import abort, current_app, flash, redirect, render_template, request, stream_with_context, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from flask_wtf.file import FileField, FileRequired
from sqlalchemy import select
from werkzeug.datastructures import FileStorage
from werkzeug.wrappers import Response
from wtforms import RadioField, SelectChoice, SelectField
from wtforms.validators import InputRequired

from .. import import_runner, imports
from ..authz import admin_view
from ..extensions import db
from ..models import AdminUser, ImportRun, Newsletter
from . import blueprint

FORMAT_CHOICES = [
    SelectChoice("auto", "Find out from the file's columns"),
    SelectChoice("mailchimp", "Mailchimp audience export (the zip, or its subscribed, unsubscribed and cleaned CSVs)"),
    SelectChoice("listmonk", "listmonk subscriber export"),
    SelectChoice("csv", "This service's own CSV export"),
]
ACTIONS = {"dry-run": True, "import": False}  # the button pressed -> whether it is a dry run


def unconfirmed_choices(per_hour: int) -> list[SelectChoice]:
    """What may become of subscribed rows without proof of confirmation, each said plainly."""
    return [
        SelectChoice("ask", f"Ask them: they stay pending and get a confirmation email (at most {per_hour:,} are "
                            "sent an hour, so that receiving servers don't take them for spam). Only those who "
                            "confirm get the newsletter. (Recommended.)"),
        SelectChoice("confirmed", "Subscribe them anyway: their history says they were imported without proof of "
                                  "confirmation. Only if you know they agreed."),
        SelectChoice("skip", "Leave them out: they are not imported, and are listed among the refused rows."),
    ]


# Our fields (import_formats.SourceRow's), as the mapping table names them.
FIELD_LABELS = {
    "email": "email address", "name": "name", "status": "status (subscribed, unsubscribed, cleaned)",
    "optin_time": "opt-in time", "optin_ip": "opt-in IP address", "confirm_time": "confirmation time",
    "confirm_ip": "confirmation IP address", "changed_at": "time of the last change",
    "unsubscribed_at": "unsubscribe time", "cleaned_at": "time the address was cleaned (bounced)",
}
# While a run is queued or running, its page reloads itself this often (seconds): progress without JavaScript.
REFRESH_SECONDS = 3


class ImportForm(FlaskForm):
    file = FileField("File", validators=[FileRequired("Choose the file to import.")],
                     description="A CSV file, or a zip of CSV files (Mailchimp's export), in UTF-8.")
    newsletter = SelectField("Newsletter", validators=[InputRequired("Choose the newsletter to import into.")],
                             description="Every subscribed row becomes a subscription to this newsletter.")
    format = RadioField("Format", choices=FORMAT_CHOICES, default="auto",
                        validators=[InputRequired("Choose a format.")])
    unconfirmed = RadioField("Subscribed rows without proof of confirmation", default="ask",
                             validators=[InputRequired("Choose what to do with them.")])


class RunForm(FlaskForm):
    """The dry run and the import buttons, with the policy for unconfirmed rows (changeable after a dry run)."""

    unconfirmed = RadioField("Subscribed rows without proof of confirmation",
                             validators=[InputRequired("Choose what to do with them.")])


PolicyForm = TypeVar("PolicyForm", ImportForm, RunForm)


def _with_choices(form: PolicyForm) -> PolicyForm:
    form.unconfirmed.choices = unconfirmed_choices(current_app.config["NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR"])
    return form


def _newsletters() -> list[Newsletter]:
    return list(db.session.scalars(select(Newsletter).order_by(Newsletter.name)))


def _upload_form() -> ImportForm:
    form = ImportForm()
    _with_choices(form)
    # Archived newsletters take no new readers: not offered.
    form.newsletter.choices = [("", "Choose a newsletter")] + [
        (item.slug, f"{item.name} ({item.slug})") for item in _newsletters() if item.is_active]
    return form


def _names(runs: list[ImportRun]) -> tuple[dict[int, str], dict[int, str]]:
    """Who started each run (admin emails) and which newsletter (slugs), by id."""
    admin_ids = {run.admin_id for run in runs if run.admin_id}
    newsletter_ids = {run.newsletter_id for run in runs if run.newsletter_id}
    admins = dict(db.session.execute(select(AdminUser.id, AdminUser.email).where(AdminUser.id.in_(admin_ids))).all()
                  ) if admin_ids else {}
    slugs = dict(db.session.execute(select(Newsletter.id, Newsletter.slug).where(Newsletter.id.in_(newsletter_ids))
                                    ).all()) if newsletter_ids else {}
    return admins, slugs


def _list_page(form: ImportForm, status: int) -> tuple[str, int]:
    runs = imports.recent(db.session)
    if any(run.status in ("queued", "running") for run in runs):
        # A run cut off by a restart goes on without anyone opening its own page.
        import_runner.kick(current_app._get_current_object())  # type: ignore[attr-defined]
    admins, slugs = _names(runs)
    return render_template("admin/imports.html", form=form, runs=runs, admins=admins, slugs=slugs), status


def _file_name(upload: FileStorage) -> str:
    # The browser's name for the file, without any folder a client put in it; only ever shown, never a path.
    name = (upload.filename or "").replace("\\", "/").rsplit("/", 1)[-1].strip()
    return name[:255] or "upload"


def _record(upload: FileStorage, newsletter: Newsletter, form: ImportForm) -> ImportRun:
    """The upload, saved beside the stored imports and recorded (status "uploaded")."""
    folder = imports.upload_dir(current_app.config)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix="upload-", suffix=".part")
    os.close(handle)
    source = Path(temporary)
    try:
        upload.save(source)
        return imports.record_upload(
            db.session, current_app.config, source=source, file_name=_file_name(upload), newsletter=newsletter,
            channel="admin", admin_id=current_user.id, requested_format=form.format.data,
            unconfirmed=form.unconfirmed.data, keep_file=True)
    finally:
        source.unlink(missing_ok=True)  # record_upload kept its own copy (run.stored_path)


@blueprint.route("/imports", methods=["GET", "POST"])
@admin_view(change=True)
def imports_page() -> Response | tuple[str, int]:
    form = _upload_form()
    if not form.validate_on_submit():
        return _list_page(form, 422 if form.errors else 200)
    newsletter = db.session.scalar(select(Newsletter).where(Newsletter.slug == form.newsletter.data))
    if newsletter is None:
        form.newsletter.errors = ["There is no such newsletter (any more): choose another."]
        return _list_page(form, 422)
    try:
        run = _record(form.file.data, newsletter, form)
    except imports.InvalidImport as error:
        db.session.rollback()
        form.file.errors = [str(error)]
        return _list_page(form, 422)
    except OSError as error:  # the server's disk (full, not writable): the editor can only try again later
        db.session.rollback()
        current_app.logger.error("import upload not stored: %s", error)
        form.file.errors = [("The server could not store the file (its disk may be full); nothing was imported. "
                             "Please try again later, or tell whoever runs the server.")]
        return _list_page(form, 503)
    stored = run.stored_path
    try:
        db.session.commit()
    except Exception:
        # No record, no file: nothing would ever delete it.
        if stored:
            Path(stored).unlink(missing_ok=True)
        raise
    return redirect(url_for("admin.import_run", run_id=run.id), code=303)


def _run_or_404(run_id: int) -> ImportRun:
    run = db.session.get(ImportRun, run_id)
    if run is None:
        abort(404)
    return run


def _preview(run: ImportRun) -> tuple[imports.Preview | None, str | None]:
    """The first rows of the stored file, or why they can't be shown."""
    if not run.stored_path or not Path(run.stored_path).is_file():
        return None, ("The uploaded file is no longer kept: it is deleted when the import ends, or when it was "
                      "not imported in time.")
    try:
        return imports.preview(run), None
    except (imports.InvalidImport, OSError) as error:
        return None, f"The file can't be read again: {error}"


def _run_page(run: ImportRun, form: RunForm, status: int = 200) -> tuple[str, int]:
    preview, preview_problem = _preview(run)
    admins, slugs = _names([run])
    if run.status in ("queued", "running"):
        # Its process may have died with the web process that ran it (embedded serving): go on here.
        import_runner.kick(current_app._get_current_object())  # type: ignore[attr-defined]
    return render_template("admin/import.html", run=run, preview=preview, preview_problem=preview_problem,
                           form=form, by=admins.get(run.admin_id or 0), slug=slugs.get(run.newsletter_id or 0),
                           reasons=imports.REFUSAL_REASONS, format_label=imports.FORMAT_LABELS.get(run.format or ""),
                           field_labels=FIELD_LABELS, refresh=REFRESH_SECONDS,
                           deleted_on=imports.upload_deleted_on(current_app.config, run)), status


def _can_start(run: ImportRun) -> bool:
    return run.status == "uploaded" or (run.status == "finished" and run.dry_run)


@blueprint.get("/imports/<id:run_id>")
@admin_view(change=True)
def import_run(run_id: int) -> tuple[str, int]:
    run = _run_or_404(run_id)
    return _run_page(run, _with_choices(RunForm(unconfirmed=run.unconfirmed)))


@blueprint.post("/imports/<id:run_id>")
@admin_view(change=True)
def start_import(run_id: int) -> Response | tuple[str, int]:
    run = _run_or_404(run_id)
    form = _with_choices(RunForm())
    if not form.validate_on_submit():
        return _run_page(run, form, 422)
    if request.form.get("action") not in ACTIONS:
        form.form_errors.append("Press Dry run or Import.")
        return _run_page(run, form, 422)
    dry_run = ACTIONS[request.form["action"]]
    if not _can_start(run):  # e.g. the button pressed twice: the second press lands on the run's page
        flash("This import has already started: nothing was changed.")
        return redirect(url_for("admin.import_run", run_id=run.id), code=303)
    try:
        imports.queue(db.session, run, dry_run=dry_run, unconfirmed=form.unconfirmed.data)
    except imports.InvalidImport as error:
        db.session.rollback()
        form.form_errors.append(str(error))
        return _run_page(run, form, 422)
    db.session.commit()
    import_runner.kick(current_app._get_current_object())  # type: ignore[attr-defined]
    return redirect(url_for("admin.import_run", run_id=run.id), code=303)


@blueprint.get("/imports/<id:run_id>/refusals.csv")
@admin_view(change=True)
def import_refusals(run_id: int) -> Response:
    run = _run_or_404(run_id)
    rows = stream_with_context(imports.refusals_csv(db.session, run.id))
    response = Response(rows, content_type="text/csv; charset=utf-8")
    response.headers["Content-Disposition"] = f'attachment; filename="import-{run.id}-refused-rows.csv"'
    response.headers["Cache-Control"] = "no-store"  # addresses: no cache may keep them
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
