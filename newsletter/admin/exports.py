"""Admin exports: the page with the export form and the list of past exports, and the download itself."""

from __future__ import annotations

from flask import render_template, request
from flask_login import current_user
from sqlalchemy import select
from werkzeug.wrappers import Response

from .. import exports
from ..authz import admin_view
from ..downloads import export_response
from ..extensions import db
from ..models import SUBSCRIPTION_STATUSES, Newsletter
from . import blueprint


@blueprint.get("/exports")
@admin_view()
def exports_page() -> tuple[str, int]:
    return _page({}, 200)


@blueprint.get("/exports/download")
@admin_view()  # viewers too: exporting is reading
def download_export() -> Response | tuple[str, int]:
    # A GET with the filters in the query string, so that the browser saves the file as it streams in.
    # No CSRF token: it changes nothing but the log of exports, and the SameSite session cookie is not
    # sent with other sites' requests for it.
    args = request.args
    try:
        newsletter = exports.newsletter_named(db.session, args["newsletter"]) if args.get("newsletter") else None
        selection = exports.parse_selection(newsletter, status=args.getlist("status"),
                                            **{name: args.get(name) for name in exports.DATE_FILTERS})
        record = exports.start(db.session, selection, args.get("format") or "csv", channel="admin",
                               admin_id=current_user.id)
    except exports.InvalidExport as error:
        db.session.rollback()
        return _page(error.errors, 422)
    db.session.commit()
    return export_response(record, selection)


def _page(errors: dict[str, list[str]], status: int) -> tuple[str, int]:
    newsletters = db.session.scalars(select(Newsletter).order_by(Newsletter.name)).all()
    return render_template("admin/exports.html", newsletters=newsletters, statuses=SUBSCRIPTION_STATUSES,
                           values=request.args, errors=errors,
                           past=exports.recent(db.session)), status
