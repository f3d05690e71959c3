"""Admin views of readers: search, a reader's subscriptions and consent history, and actions on them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from flask import current_app, flash, redirect, render_template, request, url_for
from flask_login import current_user
from werkzeug.exceptions import BadRequest, Gone, NotFound
from werkzeug.wrappers import Response

from .. import readers as reader_lookup
from .. import subscriptions, suppression_list, suppressions
from ..authz import admin_view
from ..extensions import db
from ..models import Reader
from ..provenance import request_source
from ..subscriptions import Source
from . import blueprint
from .forms import UnsubscribeForm

MAX_QUERY = 320


def _reader(reader_id: int) -> Reader:
    try:
        return subscriptions.get_reader(db.session, reader_id)
    except subscriptions.UnknownReader:
        raise NotFound(f"There is no reader number {reader_id}.") from None


def _admin_source(what: str) -> Source:
    # The admin's page is no signup page: keep no page URL, but say who acted.
    return replace(request_source("admin", f"{what} by {current_user.email} in the admin"), page_url=None)


def _back_to(reader_id: int) -> Response:
    return redirect(url_for("admin.reader", reader_id=reader_id), code=303)


@blueprint.get("/readers")
@admin_view()
def readers() -> str:
    fragment = request.args.get("q", "")
    if len(fragment) > MAX_QUERY:
        raise BadRequest(f"Search for at most {MAX_QUERY} characters of an address.")
    page = request.args.get("page", 1, type=int)
    results = reader_lookup.search(db.session, fragment, page=page)
    return render_template("admin/readers.html", q=fragment.strip(), results=results)


@blueprint.get("/readers/<id:reader_id>")
@admin_view()
def reader(reader_id: int) -> str:
    item = _reader(reader_id)
    erased = item.erased_at is not None  # the address is gone: nothing to look up by
    return render_template(
        "admin/reader.html", reader=item, subscriptions=reader_lookup.subscriptions(db.session, item.id),
        history=reader_lookup.consent_history(db.session, item.id),
        suppression=None if erased else suppression_list.stopping_mail_to(db.session, current_app.config, item.email),
        events=[] if erased else suppressions.events_for(db.session, current_app.config, item.email),
        reasons=suppression_list.REASON_LABELS,
    )


def _erased(reader_id: int) -> Gone:
    return Gone(f"Reader {reader_id} was erased: their address and details are gone, so nothing can be done "
                "for them any more. Nothing was changed.")


def _act(reader_id: int, action: Callable[[], str]) -> Response:
    """Run an admin action on a reader: commit and flash its outcome, or roll back and flash why not."""
    # A page open since before the reader was erased (or deleted) still shows the buttons.
    if _reader(reader_id).erased_at is not None:
        raise _erased(reader_id)
    try:
        message = action()
    except subscriptions.UnknownReader:  # erased or deleted meanwhile
        db.session.rollback()
        raise _erased(reader_id) if db.session.get(Reader, reader_id) else NotFound(
            f"There is no reader number {reader_id}.") from None
    except subscriptions.ActionRefused as refused:
        db.session.rollback()
        flash(str(refused))
    else:
        db.session.commit()
        flash(message)
    return _back_to(reader_id)


@blueprint.post("/readers/<id:reader_id>/unsubscribe")
@admin_view(change=True)
def unsubscribe_reader(reader_id: int) -> Response:
    form = UnsubscribeForm()
    if not form.validate_on_submit():
        raise BadRequest("Say which newsletter to unsubscribe the reader from (newsletter_id).")

    def run() -> str:
        left = subscriptions.unsubscribe(db.session, reader_id, form.newsletter_id.data,
                                         source=_admin_source("Unsubscribed"))
        if not left:
            raise subscriptions.ActionRefused("The reader is not subscribed to that newsletter.")
        return f"Unsubscribed from {left[0].name}."

    return _act(reader_id, run)


@blueprint.post("/readers/<id:reader_id>/resend")
@admin_view(change=True)
def resend_confirmation(reader_id: int) -> Response:
    def run() -> str:
        pending = subscriptions.resend_confirmation(
            db.session, reader_id, source=_admin_source("Confirmation resent"), config=current_app.config)
        return f"A new confirmation email is on its way for {', '.join(n.name for n in pending)}."

    return _act(reader_id, run)


@blueprint.post("/readers/<id:reader_id>/block")
@admin_view(change=True)
def block_reader(reader_id: int) -> Response:
    def run() -> str:
        left = subscriptions.block(db.session, reader_id, source=_admin_source("Blocked"),
                                   config=current_app.config, admin_id=current_user.id)
        also = f" Unsubscribed from {', '.join(n.name for n in left)}." if left else ""
        return f"Blocked: signups from this address are ignored and it gets no email.{also}"

    return _act(reader_id, run)


@blueprint.post("/readers/<id:reader_id>/unblock")
@admin_view(change=True)
def unblock_reader(reader_id: int) -> Response:
    def run() -> str:
        subscriptions.unblock(db.session, reader_id, source=_admin_source("Unblocked"),
                              config=current_app.config, admin_id=current_user.id)
        return "Unblocked: the address can sign up again (it stays unsubscribed until it does)."

    return _act(reader_id, run)
