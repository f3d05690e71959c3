"""The JSON API: POST /api/v1/subscriptions, and GET /api/v1/forms for embed.js."""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify, request
from flask_babel import gettext as _
from werkzeug.exceptions import BadRequest, UnsupportedMediaType

from .. import abuse, metrics, origins, subscriptions
from ..extensions import db
from ..provenance import request_source
from ..ratelimits import signup_limits
from . import blueprint
from .openapi import described
from .schemas import FieldErrors, FormSettings, FormsQuery, SignupAccepted, SignupRequest, parse


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


def parse_signup(body: dict[str, Any]) -> SignupRequest:
    """The signup body as a SignupRequest (address normalized, name checked), or FieldErrors naming every problem."""
    return parse(SignupRequest, body, {"config": current_app.config})


@blueprint.post("/subscriptions")
@described(tag="Signup", access="public", json=SignupRequest, answers={
    202: (SignupAccepted, "Taken (or silently dropped, for bots)."),
    403: "Sent by a page on a site that may not embed the forms.",
    413: "The body is too large.",
    415: "The body is not sent as application/json.",
    422: "Each field's problems: email, newsletters, name …",
    429: "Too many signups from this IP or for this address.",
})
@signup_limits
def create_subscription() -> tuple[Response, int]:
    """Sign a reader up (double opt-in)

    Records pending subscriptions and queues one confirmation email. Public: no token. The answer is
    the same for a new, a pending and a confirmed address. Rate-limited per client IP and per address
    (429 with Retry-After). Browsers may call it from the sites in NEWSLETTER_ALLOWED_ORIGINS.
    """
    origins.cross_origin_post()
    body = _body()
    accepted = jsonify({"status": "pending"}), 202
    if abuse.is_bot(body):
        return accepted
    signup = parse_signup(body)
    from_script = signup.embed == "script"
    if from_script:
        # Our own script always sends the token it was given; API clients of the site's server don't.
        try:
            abuse.check_fill_time(signup.form_token)
        except abuse.TooFast:
            raise FieldErrors({"form": [_("That was quick! Please check your address and press Subscribe again.")]})
    chosen = subscriptions.find_newsletters(db.session, signup.newsletters, cached=True)
    source = request_source("embed-script" if from_script else "api", subscriptions.consent_wording(chosen),
                            page_url=signup.page_url, form_id=signup.form_id)
    subscriptions.sign_up(db.session, signup.email, chosen, name=signup.name, config=current_app.config, source=source)
    db.session.commit()
    metrics.count("signups", source.channel)
    # The same answer for new, pending and confirmed addresses: nobody learns who is subscribed.
    return accepted


@blueprint.get("/forms")
@described(tag="Signup", access="public", query=FormsQuery, answers={
    200: (FormSettings, "The newsletters, a fill-time token and the form's texts."),
    422: "A slug names no active newsletter, or none was given.",
})
def form_settings() -> Response:
    """What embed.js needs to draw a form

    The newsletters, a fill-time token and the wording, in the reader's language.
    """
    offered = subscriptions.find_newsletters(db.session, parse(FormsQuery, request.args.to_dict()).slugs)
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
