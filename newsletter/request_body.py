"""Reading a request's JSON body leniently, for code that only peeks at it (rate-limit keys, language)."""

from __future__ import annotations

from typing import Any

from flask import request


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
