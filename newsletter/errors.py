"""Errors become a JSON body under /api and a page everywhere else, in this one place."""

from __future__ import annotations

from flask import Flask, Response, jsonify, render_template, request
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext
from werkzeug.exceptions import HTTPException, InternalServerError

from .locale import N_
from .tokens import ExpiredToken, InvalidToken

# Werkzeug's names of the errors a reader may meet, as page titles in the reader's language.
TITLES = {
    400: _l("Bad Request"),
    403: _l("Forbidden"),
    404: _l("Not Found"),
    405: _l("Method Not Allowed"),
    413: _l("Request Entity Too Large"),
    415: _l("Unsupported Media Type"),
    429: _l("Too Many Requests"),
    500: _l("Internal Server Error"),
}

# Flask-WTF's CSRF reasons, English in its code: catalogued here, looked up when shown.
CSRF_REASONS = (
    N_("The CSRF token is missing."),
    N_("The CSRF session token is missing."),
    N_("The CSRF token has expired."),
    N_("The CSRF token is invalid."),
    N_("The CSRF tokens do not match."),
    N_("The referrer header is missing."),
    N_("The referrer does not match the host."),
)


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def register(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response | str, int]:
        code = error.code or 500
        limit = app.config["MAX_CONTENT_LENGTH"]
        description = {
            413: ngettext("The request is too large: at most %(num)d byte is accepted.",
                          "The request is too large: at most %(num)d bytes are accepted.", limit),
            405: _("This address does not take that kind of request."),
            404: _("There is nothing at this address."),
        }.get(code, error.description)
        if description in CSRF_REASONS:
            description = _(description)
        title = str(TITLES.get(code, error.name))
        if _wants_json():
            return jsonify({"errors": {"request": [description]}}), code
        if request.blueprint == "embed":
            return render_template("embed/message.html", title=title, message=description), code
        return render_template("public/error.html", title=title, message=description), code

    @app.errorhandler(InvalidToken)
    def bad_link(error: InvalidToken) -> tuple[str, int]:
        expired = isinstance(error, ExpiredToken)
        return render_template("public/bad_link.html", expired=expired), 410 if expired else 400

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[Response | str, int]:
        if isinstance(error, HTTPException):
            return http_error(error)
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        message = _("Something went wrong on our side. Nothing you sent was lost; please try again in a minute.")
        if _wants_json():
            return jsonify({"errors": {"request": [message]}}), InternalServerError.code
        return render_template("public/error.html", title=_("Server error"), message=message), 500
