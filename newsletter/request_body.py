"""The request body: its size limit per route, and reading a JSON body leniently for code that only
peeks at it (rate-limit keys, language)."""

from __future__ import annotations

from typing import Any

from flask import Flask, current_app, g, request
from flask_login import current_user

# The routes that take files larger than MAX_CONTENT_LENGTH (the public forms' small limit): the
# endpoint and the setting of its own limit. Only an admin who may change things gets that limit.
LARGE_UPLOADS = {"admin.imports_page": "NEWSLETTER_IMPORT_MAX_BYTES"}


def is_large_upload() -> bool:
    """Whether this request is a POST to a route that takes large files."""
    return request.method == "POST" and request.endpoint in LARGE_UPLOADS


def raise_limit_for_uploads() -> None:
    """A before_request hook, ahead of anything that reads the body: the upload routes' own limit.

    Everyone else (strangers, viewers) keeps the small limit, so that no one without the right to
    import can make the server spool a large body to disk.
    """
    if is_large_upload() and current_user.is_authenticated and current_user.can_change:
        request.max_content_length = g.upload_limit = current_app.config[LARGE_UPLOADS[request.endpoint]]


def upload_limit() -> int | None:
    """The raised limit of this request's upload, if it has one."""
    return g.get("upload_limit")


def init_app(app: Flask) -> None:
    """Set the body limit first, before any hook reads the body (call after web_input.init_app)."""
    app.before_request_funcs.setdefault(None, []).insert(0, raise_limit_for_uploads)


def json_object() -> dict[str, Any] | None:
    """The JSON body if it is an object; None when there is none or it can't be read as one.

    A body over the size limit still raises RequestEntityTooLarge (a 413 answer).
    """
    if not request.is_json:
        return None
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # absurdly nested arrays: werkzeug's silent mode doesn't cover it
        return None
    return body if isinstance(body, dict) else None
