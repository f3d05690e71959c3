"""The API's export: GET /api/v1/newsletters/<slug>/subscribers.csv (and .ndjson), streamed."""

from __future__ import annotations

from typing import Any

from flask import g, jsonify, request
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response

from .. import exports
from ..authz import token_required
from ..downloads import export_response
from ..extensions import db
from . import blueprint
from .openapi import described
from .schemas import ExportQuery


def _streamed(media_type: str) -> dict[str, Any]:
    # The rows are no JSON model: a text body, as a download.
    return {"responses": {"200": {
        "content": {media_type: {"schema": {"type": "string"}}},
        "headers": {"Content-Disposition": {"schema": {"type": "string"}, "description": "attachment; filename=…"}},
    }}}


ANSWERS = {200: (None, "The rows, streamed."), 404: "No newsletter has this slug.",
           422: "A filter is malformed: each is named with what is wrong."}


@blueprint.get("/newsletters/<slug>/subscribers.csv")
@described(tag="Exports", access="read", query=ExportQuery, answers=ANSWERS, extra=_streamed("text/csv"))
@token_required()  # read-only tokens too: exporting is reading
def export_subscribers_csv(slug: str) -> Response | tuple[Response, int]:
    """Export a newsletter's subscribers as CSV

    The same streamed export as the admin's download: every matching subscription, with the columns
    email, name, status, subscribed_at, confirmed_at and source; erased readers are left out, and so are
    suppressed addresses unless `suppressed` says otherwise. Cells a spreadsheet would run as a formula
    start with a '. Each export is recorded (which token, when, which filters, how many rows).
    """
    return _export(slug, "csv")


@blueprint.get("/newsletters/<slug>/subscribers.ndjson")
@described(tag="Exports", access="read", query=ExportQuery, answers=ANSWERS, extra=_streamed("application/x-ndjson"))
@token_required()
def export_subscribers_ndjson(slug: str) -> Response | tuple[Response, int]:
    """Export a newsletter's subscribers as NDJSON

    The same streamed export as the admin's download: every matching subscription, with the columns
    email, name, status, subscribed_at, confirmed_at and source; erased readers are left out, and so are
    suppressed addresses unless `suppressed` says otherwise. One JSON object per line. Each export is
    recorded (which token, when, which filters, how many rows).
    """
    return _export(slug, "ndjson")


def _export(slug: str, fmt: str) -> Response | tuple[Response, int]:
    """The newsletter's subscribers, filtered by the query string (ExportQuery) as in the admin's export."""
    args = request.args
    try:
        newsletter = exports.newsletter_named(db.session, slug)
    except exports.InvalidExport as error:
        raise NotFound(error.errors["newsletter"][0]) from None
    try:
        # exports.parse_selection checks the filters for the admin's form too, in its own words.
        selection = exports.parse_selection(newsletter, status=args.getlist("status"),
                                            suppressed=args.get("suppressed"),
                                            **{name: args.get(name) for name in exports.DATE_FILTERS})
    except exports.InvalidExport as error:
        return jsonify({"errors": error.errors}), 422
    record = exports.start(db.session, selection, fmt, channel="api", token_id=g.api_token.id)
    db.session.commit()
    return export_response(record, selection)
