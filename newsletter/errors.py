"""Errors become a JSON body under /api and a page everywhere else, in this one place."""

from __future__ import annotations

from flask import Flask, Response, jsonify, render_template, request, url_for
from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from flask_babel import ngettext
from flask_limiter.errors import RateLimitExceeded
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import BadRequest, HTTPException, InternalServerError, ServiceUnavailable

from . import outages, request_body, signed_paths
from .tokens import ExpiredToken, InvalidToken

# How long a client should wait before trying again while the database is out of reach.
RETRY_AFTER_SECONDS = 5
# The views that take signups: their 503 says plainly that the signup was not taken.
SIGNUP_ENDPOINTS = {"public.subscribe", "embed.index", "embed.single", "api.create_subscription"}

# Werkzeug's names of the errors a reader may meet, as page titles in the reader's language.
TITLES = {
    400: _l("Bad Request"),
    403: _l("Forbidden"),
    404: _l("Not Found"),
    405: _l("Method Not Allowed"),
    410: _l("Gone"),
    413: _l("Request Entity Too Large"),
    415: _l("Unsupported Media Type"),
    422: _l("Unprocessable Entity"),
    429: _l("Too Many Requests"),
    500: _l("Internal Server Error"),
    503: _l("Service Unavailable"),
}


def format_size(size: int) -> str:
    """A byte count for people: 200 MB, 64 KB, 900 bytes."""
    for unit, factor in ((_l("%(size)s GB"), 1024 ** 3), (_l("%(size)s MB"), 1024 ** 2), (_l("%(size)s KB"), 1024)):
        if size >= factor:
            return str(unit) % {"size": f"{size / factor:.3g}"}
    return ngettext("%(num)d byte", "%(num)d bytes", size)


def _logged_path() -> str:
    """The request's path for a log line, its signed links (the keys to readers' subscriptions) left out."""
    return signed_paths.redact(request.path)


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def _way_back() -> tuple[str, str]:
    """Where an error page links to: the page it came from in the admin, else the signup page."""
    if request.blueprint == "admin":
        if request.endpoint == "admin.login":
            return url_for("admin.login"), _("Back to the login page")
        if request.endpoint == "admin.imports_page":
            return url_for("admin.imports_page"), _("Back to the imports")
        return url_for("admin.dashboard"), _("Go to the admin dashboard")
    return url_for("public.subscribe"), _("Go to the signup page")


def register(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response | str, int, dict[str, str]]:
        code = error.code or 500
        # A view may allow more than the app's limit (the providers' event batches).
        limit = request.max_content_length or app.config["MAX_CONTENT_LENGTH"]
        description = error.description
        if description == type(error).description and code == 413 and request_body.upload_limit():
            description = _("The file is too large to upload: at most %(size)s. Import a larger file from the "
                            "command line (newsletter import FILE --newsletter SLUG), or split it.",
                            size=format_size(request_body.upload_limit() or 0))
        elif description == type(error).description:  # werkzeug's generic wording: say it plainly
            description = {
                413: ngettext("The request is too large: at most %(num)d byte is accepted.",
                              "The request is too large: at most %(num)d bytes are accepted.", limit),
                405: _("This address does not take that kind of request."),
                404: _("There is nothing at this address."),
            }.get(code, description)
        title = str(TITLES.get(code, error.name))
        # The error's own headers (WWW-Authenticate on 401, Allow on 405) go with the answer we write.
        headers = {name: value for name, value in error.get_headers() if name.lower() != "content-type"}
        if isinstance(error, RateLimitExceeded):
            # The window of the limit hit: by then the request is sure to be taken again.
            headers["Retry-After"] = str(error.limit.limit.get_expiry())
        if _wants_json():
            # An error that names its fields (web_input.UnstorableInput) answers in the API's field shape.
            errors = getattr(error, "errors", None) or {"request": [description]}
            return jsonify({"errors": errors}), code, headers
        if request.blueprint == "embed":
            return render_template("embed/message.html", title=title, message=description), code, headers
        return render_template("public/error.html", title=title, message=description, back=_way_back()), code, headers

    @app.errorhandler(CSRFError)
    def stale_form(error: CSRFError) -> tuple[Response | str, int]:
        return http_error(BadRequest(_(
            "This form was open too long or came from another site. Please go back, reload the page and send it again.")))

    @app.errorhandler(InvalidToken)
    def bad_link(error: InvalidToken) -> tuple[str, int]:
        expired = isinstance(error, ExpiredToken)
        return render_template("public/bad_link.html", expired=expired), 410 if expired else 400

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[Response | str, int] | tuple[Response | str, int, dict[str, str]]:
        if isinstance(error, HTTPException):
            return http_error(error)
        if outages.database_unavailable(error):
            return database_unavailable(error)
        app.logger.exception("unhandled error on %s %s", request.method, _logged_path())
        message = _("Something went wrong on our side. Nothing you sent was lost; please try again in a minute.")
        if _wants_json():
            return jsonify({"errors": {"request": [message]}}), InternalServerError.code
        return render_template("public/error.html", title=_("Server error"), message=message), 500

    def database_unavailable(error: Exception) -> tuple[Response | str, int, dict[str, str]]:
        # One line, no traceback: an outage is expected to happen, and it is logged once per request.
        app.logger.warning("database unavailable on %s %s: %s", request.method, _logged_path(),
                           outages.summary(error))
        if request.method == "POST" and request.endpoint in SIGNUP_ENDPOINTS:
            message = _("Your signup was not taken: our service is briefly unavailable. "
                        "Please send it again in a few seconds.")
        elif request.method in ("GET", "HEAD"):
            message = _("Our service is briefly unavailable. Please try again in a few seconds.")
        else:
            message = _("Our service is briefly unavailable, and nothing you sent was saved. "
                        "Please try again in a few seconds.")
        unavailable = ServiceUnavailable(message, retry_after=RETRY_AFTER_SECONDS)
        return http_error(unavailable)
