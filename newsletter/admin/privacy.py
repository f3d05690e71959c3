"""Admin views of a reader's privacy rights: download everything stored about them, erase them."""

from __future__ import annotations

import json
from dataclasses import replace

from flask import current_app, flash, redirect, request, url_for
from flask_login import current_user
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response

from .. import privacy
from ..authz import admin_view
from ..extensions import db
from ..provenance import request_source
from ..subscriptions import UnknownReader
from . import blueprint
from .forms import ActionForm


def export_download(data: dict, filename: str) -> Response:
    """A JSON file to save, never cached on the way (it holds personal data)."""
    response = Response(json.dumps(data, ensure_ascii=False, indent=2) + "\n", mimetype="application/json")
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/readers/<id:reader_id>/export.json")
@admin_view()  # viewers too: it is the reader page's data, for answering an access request
def export_reader(reader_id: int) -> Response:
    try:
        data = privacy.export_reader(db.session, reader_id)
    except UnknownReader:
        raise NotFound(f"There is no reader number {reader_id}.") from None
    return export_download(data, f"reader-{reader_id}.json")


@blueprint.post("/readers/<id:reader_id>/erase")
@admin_view(change=True)
def erase_reader(reader_id: int) -> Response:
    ActionForm().validate_on_submit()  # CSRFProtect checked the token before the view ran
    if request.form.get("confirm") != "yes":
        flash("Nothing was erased: tick the box to confirm that the reader's data should go for good.")
        return redirect(url_for("admin.reader", reader_id=reader_id), code=303)
    # The admin's page is no signup page: keep no page URL, but say who acted.
    source = replace(request_source("admin", f"Erased by {current_user.email} in the admin"), page_url=None)
    try:
        privacy.erase_reader(db.session, reader_id, source=source, config=current_app.config)
    except UnknownReader:
        raise NotFound(f"There is no reader number {reader_id}.") from None
    db.session.commit()
    flash(f"Reader {reader_id} is erased: the address and personal details are gone everywhere, "
          "and their links no longer work.")
    return redirect(url_for("admin.reader", reader_id=reader_id), code=303)
