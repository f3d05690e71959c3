"""The JSON API: POST /api/v1/subscriptions, and GET /api/v1/forms for embed.js."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify, request
from flask_babel import gettext as _
from flask_babel import ngettext
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from .. import abuse, addresses, metrics, origins, subscriptions
from ..extensions import db
from ..provenance import request_source
from ..ratelimits import signup_limits
from . import blueprint

SIGNUP_FIELDS = {"email", "newsletters", "name", "page_url", "form_id", "form_token", "embed", "lang",
                 abuse.HONEYPOT_FIELD}


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
        raise UnsupportedMediaType(_("Send the body as JSON, with Content-Type: application/json."))
    try:
        body = request.get_json()
    except (BadRequest, RecursionError):
        raise FieldErrors({"body": [_("The body is not valid JSON.")]}) from None
    if not isinstance(body, dict):
        raise FieldErrors({"body": [_("The body must be a JSON object such as {\"email\": …, \"newsletters\": […]}.")]})
    return body


def _optional_text(body: dict[str, Any], field: str, limit: int, errors: dict[str, list[str]]) -> str | None:
    value = body.get(field)
    if value is None:
        return None
    if not isinstance(value, str):
        errors[field] = [_("The %(field)s must be a string.", field=field)]
        return None
    if len(value) > limit:
        errors[field] = [ngettext("The %(field)s can be at most %(num)d character long.",
                                   "The %(field)s can be at most %(num)d characters long.", limit, field=field)]
        return None
    return value


def parse_signup(body: dict[str, Any]) -> tuple[str, list[str], str | None]:
    """(normalized email, newsletter slugs, name) from a signup body, or FieldErrors naming every problem."""
    config = current_app.config
    errors: dict[str, list[str]] = {}
    email, slugs, name = body.get("email"), body.get("newsletters"), body.get("name")

    address = ""
    if not isinstance(email, str):
        errors["email"] = [_("Enter your email address.") if email is None else _("The email must be a string.")]
    else:
        try:
            address = addresses.normalize(email, check_deliverability=config["NEWSLETTER_CHECK_DELIVERABILITY"],
                                          timeout=config["NEWSLETTER_DNS_TIMEOUT"])
        except addresses.InvalidAddress as error:
            errors["email"] = [str(error)]

    limit = config["NEWSLETTER_MAX_NEWSLETTERS_PER_SIGNUP"]
    if not isinstance(slugs, list) or not all(isinstance(slug, str) for slug in slugs):
        errors["newsletters"] = [_("Give the newsletters as a list of their names, e.g. [\"daily-briefing\"].")]
    elif not slugs:
        errors["newsletters"] = [_("Choose at least one newsletter.")]
    elif len(set(slugs)) > limit:
        errors["newsletters"] = [ngettext("At most %(num)d newsletter can be chosen at once.",
                                          "At most %(num)d newsletters can be chosen at once.", limit)]

    if name is not None and not isinstance(name, str):
        errors["name"] = [_("The name must be a string.")]
    else:
        try:
            name = subscriptions.check_name(name)
        except ValueError as error:
            errors["name"] = [str(error)]

    for field, size in (("page_url", 2048), ("form_id", 200), ("form_token", 500), ("lang", 35)):
        _optional_text(body, field, size, errors)
    if body.get("embed") not in (None, "script"):
        errors["embed"] = [_("The embed, when given, must be \"script\".")]

    unknown = set(body) - SIGNUP_FIELDS
    if unknown:
        errors["body"] = [_("Unexpected field %(field)r.", field=field) for field in sorted(unknown)]
    if errors:
        raise FieldErrors(errors)
    return address, slugs, name


@blueprint.post("/subscriptions")
@signup_limits
def create_subscription() -> tuple[Response, int]:
    origins.cross_origin_post()
    body = _body()
    accepted = jsonify({"status": "pending"}), 202
    if abuse.is_bot(body):
        return accepted
    address, slugs, name = parse_signup(body)
    from_script = body.get("embed") == "script"
    if from_script:
        # Our own script always sends the token it was given; API clients of the site's server don't.
        try:
            abuse.check_fill_time(body.get("form_token"))
        except abuse.TooFast:
            raise FieldErrors({"form": [_("That was quick! Please check your address and press Subscribe again.")]})
    chosen = subscriptions.find_newsletters(db.session, slugs, cached=True)
    source = request_source("embed-script" if from_script else "api", subscriptions.consent_wording(chosen),
                            page_url=body.get("page_url"), form_id=body.get("form_id"))
    subscriptions.sign_up(db.session, address, chosen, name=name, config=current_app.config, source=source)
    db.session.commit()
    metrics.count("signups", source.channel)
    # The same answer for new, pending and confirmed addresses: nobody learns who is subscribed.
    return accepted


@blueprint.get("/forms")
def form_settings() -> Response:
    """What embed.js needs to draw a form: the newsletters, a fill-time token and the wording."""
    slugs = [slug.strip() for slug in request.args.get("newsletters", "").split(",") if slug.strip()]
    offered = subscriptions.find_newsletters(db.session, slugs)
    return jsonify({
        "newsletters": [{"slug": n.slug, "name": n.name, "description": n.description, "author": n.author}
                        for n in offered],
        "form_token": abuse.form_token(),
        "texts": embed_texts(),
    })


def embed_texts() -> dict[str, str]:
    """The words of the script-embedded form, in the reader's language."""
    return {
        "email_label": _("Enter your email to subscribe"),
        # TRANSLATORS: follows a red asterisk: "* indicates required".
        "required_hint": _("indicates required"),
        "newsletters_legend": _("Newsletters"),
        # TRANSLATORS: before the author's name, after the newsletter's description: "By Olena Kovalenko."
        "by": _("By"),
        "submit": _("Subscribe"),
        "sending": _("Sending…"),
        "thanks": _("Thank you for signing up for this newsletter. We've sent you a confirmation email."),
        "invalid_email": _("Please, enter correct email address"),
        "choose": _("Choose at least one newsletter."),
        "failed": _("Something went wrong. Please try again in a minute."),
        "honeypot": _("Leave this field empty"),
    }
