"""The HTTP response that streams an export file, for the admin download and the API alike."""

from __future__ import annotations

from flask import Response, current_app, stream_with_context

from . import exports
from .extensions import db
from .models import ExportRecord, utcnow


def export_response(record: ExportRecord, selection: exports.Selection) -> Response:
    """A streamed attachment of the export `record` (already committed) of `selection`."""
    fmt = record.format
    chunks = exports.stream(db.session, record, selection, config=current_app.config)
    response = Response(stream_with_context(chunks), content_type=exports.FORMATS[fmt])
    response.headers["Content-Disposition"] = f'attachment; filename="{exports.filename(selection, fmt, utcnow())}"'
    # A list of addresses: no cache may keep it. And proxies must pass the chunks on as they come.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Accel-Buffering"] = "no"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
