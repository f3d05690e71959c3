"""Admin views of the suppression list: the list (viewers too), adding an address and lifting an entry (admins)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.exceptions import BadRequest, NotFound
from werkzeug.wrappers import Response
from wtforms import StringField, TextAreaField

from .. import subscriptions, suppression_list, suppressions
from ..authz import admin_view
from ..extensions import db
from ..models import SUPPRESSION_REASONS
from . import blueprint

MAX_QUERY = 320


class AddForm(FlaskForm):
    address = StringField("Email address", description="The address to stop mailing, in any case.")
    note = TextAreaField("Note", description="Optional: why, for the record (e.g. “asked by phone”).")


class LiftForm(FlaskForm):
    note = TextAreaField("Why lift it", description="Required: kept with the entry, with your name and the time.")


@dataclass(frozen=True)
class Filters:
    """What the list shows, from the query string."""

    q: str
    reason: str | None
    state: str
    page: int


def _filters() -> Filters:
    address = request.args.get("q", "")
    if len(address) > MAX_QUERY:
        raise BadRequest(f"Search for an address of at most {MAX_QUERY} characters.")
    reason = request.args.get("reason") or None
    if reason is not None and reason not in SUPPRESSION_REASONS:
        raise BadRequest(f"Unknown reason {reason!r}: use one of {', '.join(SUPPRESSION_REASONS)}.")
    state = request.args.get("state") or "in_force"
    if state not in suppression_list.STATES:
        raise BadRequest("Show entries in force (state=in_force) or lifted ones (state=lifted).")
    return Filters(address.strip(), reason, state, request.args.get("page", 1, type=int) or 1)


def _list_page(form: AddForm, status: int, errors: dict[str, list[str]] | None = None) -> tuple[str, int]:
    filters = _filters()
    results = suppression_list.search(db.session, current_app.config, address=filters.q, reason=filters.reason,
                                      state=filters.state, page=filters.page)
    return render_template("admin/suppressions.html", results=results, filters=filters, form=form,
                           errors=errors or {}, reasons=suppression_list.REASON_LABELS), status


@blueprint.get("/suppressions")
@admin_view()
def suppressions_page() -> tuple[str, int]:
    return _list_page(AddForm(formdata=None), 200)


@blueprint.post("/suppressions")
@admin_view(change=True)
def add_suppression() -> Response | tuple[str, int]:
    form = AddForm()
    form.validate_on_submit()  # CSRFProtect checked the token; the domain checks the values
    try:
        entry, new = suppression_list.add(db.session, current_app.config, form.address.data or "", form.note.data,
                                          admin_id=current_user.id)
    except suppression_list.RefusedChange as refused:
        db.session.rollback()
        return _list_page(form, 422, {refused.field or "address": [str(refused)]})
    db.session.commit()
    shown = entry.email or (form.address.data or "").strip()  # an erased reader's address is not kept
    if new:
        flash(f"Added {shown} to the suppression list: nothing more will be sent to it.")
    else:
        flash(f"{shown} was on the list already ({suppression_list.REASON_LABELS[entry.reason].lower()}): "
              "nothing was changed.")
    return redirect(url_for("admin.suppression", suppression_id=entry.id), code=303)


def _entry_page(suppression_id: int, form: LiftForm, status: int, errors: dict[str, list[str]] | None = None
                ) -> tuple[str, int]:
    listed = suppression_list.get(db.session, suppression_id)
    if listed is None:
        raise NotFound(f"There is no suppression list entry number {suppression_id}.")
    events = suppressions.events_for(db.session, current_app.config, listed.entry.email) if listed.entry.email else []
    return render_template("admin/suppression.html", listed=listed, entry=listed.entry, form=form,
                           errors=errors or {}, events=events, reasons=suppression_list.REASON_LABELS), status


@blueprint.get("/suppressions/<id:suppression_id>")
@admin_view()
def suppression(suppression_id: int) -> tuple[str, int]:
    return _entry_page(suppression_id, LiftForm(formdata=None), 200)


@blueprint.post("/suppressions/<id:suppression_id>/lift")
@admin_view(change=True)
def lift_suppression(suppression_id: int) -> Response | tuple[str, int]:
    form = LiftForm()
    form.validate_on_submit()
    try:
        entry = suppression_list.lift(db.session, current_app.config, suppression_id, form.note.data,
                                      admin_id=current_user.id)
    except suppression_list.RefusedChange as refused:
        db.session.rollback()
        if refused.field is None:  # the entry itself can't be lifted (an erasure's): no field to correct
            flash(f"{refused} Nothing was changed.")
            return redirect(url_for("admin.suppression", suppression_id=suppression_id), code=303)
        return _entry_page(suppression_id, form, 422, {refused.field: [str(refused)]})
    except (suppressions.UnknownSuppression, subscriptions.ActionRefused):
        # Another admin lifted it (or unblocked its reader) first.
        db.session.rollback()
        if suppression_list.get(db.session, suppression_id) is None:
            raise NotFound(f"There is no suppression list entry number {suppression_id}.") from None
        flash("This entry was lifted already: nothing was changed.")
        return redirect(url_for("admin.suppression", suppression_id=suppression_id), code=303)
    db.session.commit()
    what = entry.email or "the address (not kept: its reader was erased)"
    flash(f"Lifted: {what} can be mailed again. If it is still subscribed, it gets our emails again from now on.")
    return redirect(url_for("admin.suppression", suppression_id=suppression_id), code=303)
