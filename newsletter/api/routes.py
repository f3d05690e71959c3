"""POST /api/v1/subscriptions: the JSON signup."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify, request
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from .. import addresses, subscriptions
from ..extensions import db
from ..provenance import request_source as source
from . import blueprint


class FieldErrors(Exception):
    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors


@blueprint.errorhandler(FieldErrors)
@blueprint.errorhandler(subscriptions.SignupRejected)
def field_errors(error: FieldErrors | subscriptions.SignupRejected) -> tuple[Response, int]:
    db.session.rollback()
    return jsonify({"errors": error.errors}), 422


def _body() -> dict[str, Any]:
    if not request.is_json:
        raise UnsupportedMediaType("Send the body as JSON, with Content-Type: application/json.")
    try:
        body = request.get_json()
    except (BadRequest, RecursionError):
        raise FieldErrors({"body": ["The body is not valid JSON."]}) from None
    if not isinstance(body, dict):
        raise FieldErrors({"body": ["The body must be a JSON object such as {\"email\": …, \"newsletters\": […]}."]})
    return body


def parse_signup(body: dict[str, Any]) -> tuple[str, list[str], str | None]:
    """(normalized email, newsletter slugs, name) from a signup body, or FieldErrors naming every problem."""
    config = current_app.config
    errors: dict[str, list[str]] = {}
    email, slugs, name = body.get("email"), body.get("newsletters"), body.get("name")

    address = ""
    if not isinstance(email, str):
        errors["email"] = ["Enter your email address." if email is None else "The email must be a string."]
    else:
        try:
            address = addresses.normalize(email, check_deliverability=config["NEWSLETTER_CHECK_DELIVERABILITY"],
                                          timeout=config["NEWSLETTER_DNS_TIMEOUT"])
        except addresses.InvalidAddress as error:
            errors["email"] = [str(error)]

    limit = config["NEWSLETTER_MAX_NEWSLETTERS_PER_SIGNUP"]
    if not isinstance(slugs, list) or not all(isinstance(slug, str) for slug in slugs):
        errors["newsletters"] = ["Give the newsletters as a list of their names, e.g. [\"daily-briefing\"]."]
    elif not slugs:
        errors["newsletters"] = ["Choose at least one newsletter."]
    elif len(set(slugs)) > limit:
        errors["newsletters"] = [f"At most {limit} newsletters can be chosen at once."]

    if name is not None and not isinstance(name, str):
        errors["name"] = ["The name must be a string."]
    else:
        try:
            name = subscriptions.check_name(name)
        except ValueError as error:
            errors["name"] = [str(error)]

    unknown = set(body) - {"email", "newsletters", "name"}
    if unknown:
        errors["body"] = [f"Unexpected field {field!r}." for field in sorted(unknown)]
    if errors:
        raise FieldErrors(errors)
    return address, slugs, name


@blueprint.post("/subscriptions")
def create_subscription() -> tuple[Response, int]:
    address, slugs, name = parse_signup(_body())
    chosen = subscriptions.find_newsletters(db.session, slugs)
    subscriptions.sign_up(db.session, address, chosen, name=name, config=current_app.config,
                          source=source("api", subscriptions.consent_wording(chosen)))
    db.session.commit()
    # The same answer for new, pending and confirmed addresses: nobody learns who is subscribed.
    return jsonify({"status": "pending"}), 202
