"""The reader's language: the form's own `lang`, else the browser's Accept-Language; English by default."""

from __future__ import annotations

from babel import Locale
from flask import has_request_context, request
from werkzeug.exceptions import HTTPException

from .request_body import json_object

LANGUAGES = ("en", "uk")
# Flask-Babel takes a Locale as it is; from a code it makes a new one, which looks for its data file each time.
_LOCALES = {code: Locale.parse(code) for code in LANGUAGES}


def N_(message: str) -> str:  # noqa: N802 (gettext's own name for it)
    """Marks `message` for pybabel to extract, unchanged: another library says it, we translate it when shown."""
    return message


def _primary(tag: object) -> str | None:
    if not isinstance(tag, str) or not tag.strip():
        return None
    code = tag.strip().replace("_", "-").split("-")[0].lower()
    return code if code in LANGUAGES else None


def select_locale() -> Locale:
    """The language to answer in, for Flask-Babel."""
    if not has_request_context():
        # The CLI and the outbox worker have no reader to ask: the default language.
        return _LOCALES["en"]
    try:
        body = json_object()
        # Parsing a form costs as much as choosing the language: only when there is one.
        form_lang = request.form.get("lang") if body is None and request.content_length else None
    except HTTPException:  # e.g. a body over the size limit, while its 413 page is being made
        body, form_lang = None, None
    explicit = request.args.get("lang") or form_lang or (body.get("lang") if body else None)
    return _LOCALES[_primary(explicit) or request.accept_languages.best_match(LANGUAGES) or "en"]
