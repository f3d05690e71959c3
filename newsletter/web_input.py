"""Text no database can store (NUL, lone surrogates) is refused where a request is read, before any view runs.

PostgreSQL's text can't hold NUL and no UTF-8 can hold half of a surrogate pair, so such a value
would fail deep in a query or an INSERT. No browser sends either in what a person typed; the
request is answered 422 naming the field, and nothing is stored.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

from flask import Flask, request
from flask_babel import gettext as _
from werkzeug.exceptions import UnprocessableEntity

from .request_body import is_large_upload, json_object

_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")


def is_storable(text: str) -> bool:
    """False when `text` holds a NUL or a lone surrogate."""
    return _UNSTORABLE.search(text) is None


def unstorable_message(field: str) -> str:
    """The words for a `field` whose text can't be stored."""
    return _("There is a character in %(field)s that is not text (a NUL, or half of a UTF-16 surrogate pair): "
             "remove it and send it again.", field=field)


class UnstorableInput(UnprocessableEntity):
    """422 naming each field whose text can't be stored; `errors` is the API's {"field": ["message"]}."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(" ".join(message for messages in errors.values() for message in messages))
        self.errors = errors


def _strings(value: Any) -> Iterator[str]:
    """Every string inside a JSON value, keys included (a loop, not recursion: bodies can nest deeply)."""
    waiting = [value]
    while waiting:
        item = waiting.pop()
        if isinstance(item, str):
            yield item
        elif isinstance(item, list):
            waiting.extend(item)
        elif isinstance(item, dict):
            waiting.extend(item.keys())
            waiting.extend(item.values())


def _fields() -> Iterator[tuple[str, Any]]:
    """(field name, value) of everything a view may read: query string, form, JSON body, headers.

    Path values are left to the views: a URL naming nothing that exists is their 404.
    """
    for name, values in request.args.lists():
        yield name, [name, *values]
    if request.mimetype in ("application/x-www-form-urlencoded", "multipart/form-data"):
        # Kept, so that a view that reads the raw body (request.get_data()) still finds it after the form is parsed;
        # not for a large upload, which werkzeug streams to a temporary file instead of memory.
        if not is_large_upload():
            request.get_data(cache=True)
        for name, values in request.form.lists():
            yield name, [name, *values]
        for name, files in request.files.lists():
            yield name, [name, *(file.filename or "" for file in files)]
    body = json_object()
    if body is not None:
        for key, value in body.items():
            yield key if is_storable(key) else "body", [key, value]
    for name, value in request.headers.items():
        yield name, value


def refuse_unstorable_input() -> None:
    """A before_request hook: UnstorableInput if any text of the request can't be stored."""
    errors: dict[str, list[str]] = {}
    for field, value in _fields():
        if not all(is_storable(text) for text in _strings(value)):
            shown = field if is_storable(field) else "request"
            errors.setdefault(shown, [unstorable_message(shown)])
    if errors:
        raise UnstorableInput(errors)


def init_app(app: Flask) -> None:
    """Check every request first, before rate limits, CSRF and the views read anything."""
    app.before_request_funcs.setdefault(None, []).insert(0, refuse_unstorable_input)
