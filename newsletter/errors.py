"""Errors become a JSON body under /api and a page everywhere else, in this one place."""

from __future__ import annotations

from flask import Flask, Response, jsonify, render_template, request
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import BadRequest, HTTPException, InternalServerError

from .tokens import ExpiredToken, InvalidToken


def _wants_json() -> bool:
    return request.path.startswith("/api/")


def register(app: Flask) -> None:
    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> tuple[Response | str, int]:
        code = error.code or 500
        description = error.description
        if description == type(error).description:  # werkzeug's generic wording: say it plainly
            description = {
                413: f"The request is too large: at most {app.config['MAX_CONTENT_LENGTH']} bytes are accepted.",
                405: "This address does not take that kind of request.",
                404: "There is nothing at this address.",
            }.get(code, description)
        if _wants_json():
            return jsonify({"errors": {"request": [description]}}), code
        return render_template("public/error.html", title=error.name, message=description), code

    @app.errorhandler(CSRFError)
    def stale_form(error: CSRFError) -> tuple[Response | str, int]:
        return http_error(BadRequest(
            "This form was open too long or came from another site. Please go back, reload the page and send it again."))

    @app.errorhandler(InvalidToken)
    def bad_link(error: InvalidToken) -> tuple[str, int]:
        expired = isinstance(error, ExpiredToken)
        return render_template("public/bad_link.html", expired=expired), 410 if expired else 400

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> tuple[Response | str, int]:
        if isinstance(error, HTTPException):
            return http_error(error)
        app.logger.exception("unhandled error on %s %s", request.method, request.path)
        message = "Something went wrong on our side. Nothing you sent was lost; please try again in a minute."
        if _wants_json():
            return jsonify({"errors": {"request": [message]}}), InternalServerError.code
        return render_template("public/error.html", title="Server error", message=message), 500
