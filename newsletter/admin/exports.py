"""Admin exports: the page with the export form and the list of past exports, and the download itself."""

from __future__ import annotations

from flask import redirect, render_template, request, url_for
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
@admin_view()
def download_link() -> Response:
    """An old bookmark or another site's link: the form, filled in, and no download until it is sent."""
    return redirect(url_for("admin.exports_page", **request.args.to_dict(flat=False)), code=303)


@blueprint.post("/exports/download")
@admin_view()  # viewers too: exporting is reading
def download_export() -> Response | tuple[str, int]:
    # A POST with the CSRF token (CSRFProtect checks it): another site can't start an export in the
    # admin's name. The browser still saves the streamed answer as a file.
    fields = request.form
    try:
        newsletter = exports.newsletter_named(db.session, fields["newsletter"]) if fields.get("newsletter") else None
        selection = exports.parse_selection(newsletter, status=fields.getlist("status"),
                                            suppressed=fields.get("suppressed"),
                                            **{name: fields.get(name) for name in exports.DATE_FILTERS})
        record = exports.start(db.session, selection, fields.get("format") or "csv", channel="admin",
                               admin_id=current_user.id)
    except exports.InvalidExport as error:
        db.session.rollback()
        return _page(error.errors, 422)
    db.session.commit()
    return export_response(record, selection)


def _page(errors: dict[str, list[str]], status: int) -> tuple[str, int]:
    newsletters = db.session.scalars(select(Newsletter).order_by(Newsletter.name)).all()
    return render_template("admin/exports.html", newsletters=newsletters, statuses=SUBSCRIPTION_STATUSES,
                           values=request.form if request.method == "POST" else request.args, errors=errors,
                           past=exports.recent(db.session)), status
