"""The API's export: GET /api/v1/newsletters/<slug>/subscribers.csv (and .ndjson), streamed."""

from __future__ import annotations

from flask import g, jsonify, request
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response

from .. import exports
from ..authz import token_required
from ..downloads import export_response
from ..extensions import db
from . import blueprint


@blueprint.get("/newsletters/<slug>/subscribers.csv", defaults={"fmt": "csv"})
@blueprint.get("/newsletters/<slug>/subscribers.ndjson", defaults={"fmt": "ndjson"})
@token_required()  # read-only tokens too: exporting is reading
def export_subscribers(slug: str, fmt: str) -> Response | tuple[Response, int]:
    """The newsletter's subscribers, filtered by the query string as in the admin's export."""
    args = request.args
    try:
        newsletter = exports.newsletter_named(db.session, slug)
    except exports.InvalidExport as error:
        raise NotFound(error.errors["newsletter"][0]) from None
    try:
        selection = exports.parse_selection(newsletter, status=args.getlist("status"), suppressed=args.get("suppressed"),
                                            **{name: args.get(name) for name in exports.DATE_FILTERS})
    except exports.InvalidExport as error:
        return jsonify({"errors": error.errors}), 422
    record = exports.start(db.session, selection, fmt, channel="api", token_id=g.api_token.id)
    db.session.commit()
    return export_response(record, selection)
