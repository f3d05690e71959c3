"""POST /api/v1/events/<provider>: bounces and complaints from the sending platform.

Each provider authenticates as it does (see newsletter/provider_events/); the generic shape takes
an admin API token. Answers 200 only after the events are committed, so that a provider whose
delivery met an error (a 503 while the database is out of reach) sends it again.
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, jsonify, request
from werkzeug.exceptions import NotFound, UnsupportedMediaType

from .. import provider_events
from ..authz import token_required
from ..extensions import db
from ..provider_events import generic
from . import blueprint
from .openapi import described
from .schemas import EventsOutcome

EVENT_ENDPOINTS = {"api.provider_events", "api.generic_events"}


@blueprint.url_value_preprocessor
def larger_bodies_for_events(endpoint: str | None, values: dict[str, Any] | None) -> None:
    # Providers batch events (SendGrid, SES with many recipients): their bodies may exceed a signup's
    # limit. Set before any before_request hook reads the body (URL preprocessors run first).
    if endpoint in EVENT_ENDPOINTS:
        request.max_content_length = current_app.config["NEWSLETTER_EVENTS_MAX_BODY_BYTES"]


def _recorded(provider: str, events: list[provider_events.ProviderEvent], nonce: str | None = None) -> Response:
    outcome = provider_events.record(db.session, current_app.config, provider, events, nonce=nonce)
    db.session.commit()
    if outcome.recorded or outcome.skipped:
        current_app.logger.info("%s events: %d recorded, %d repeated, %d skipped", provider, outcome.recorded,
                                outcome.repeated, outcome.skipped)
    return jsonify(outcome.as_json())


@blueprint.post("/events/generic")
@described(tag="Bounces and complaints", access="change", json=generic.DeliveryEvents, answers={
    200: (EventsOutcome, "Stored."),
    413: "The body is larger than NEWSLETTER_EVENTS_MAX_BODY_BYTES.",
    415: "The body is not sent as application/json.",
    422: "The body or an event is malformed: each is named, e.g. `events[2].type`.",
})
@token_required(change=True)
def generic_events() -> Response:
    """Report bounces and complaints (the generic shape)

    For a sending platform without its own endpoint, or a script of yours. Needs an admin token.
    Every event is checked first: a malformed one refuses the whole batch (422 naming it), nothing
    recorded; an event whose address is not an email address is skipped. Answers 200 once the
    events are stored, 503 with Retry-After while the database is out of reach: send it again.
    """
    if not request.is_json:
        raise UnsupportedMediaType("Send the events as JSON, with Content-Type: application/json.")
    payload = provider_events.json_body(request)
    if payload is None:
        raise generic.BadEvents({"body": ["The body is not valid JSON."]})
    return _recorded(generic.NAME, generic.events(payload))


@blueprint.post("/events/<provider>", endpoint="provider_events")
@described(tag="Bounces and complaints", access="public", answers={
    200: (EventsOutcome, "Stored (or nothing to store)."),
    401: "Missing or wrong credentials or signature: nothing recorded.",
    403: "Authentic but refused: a replay, a stale signature, an SNS topic not listed, a certificate URL not on "
         "an SNS host.",
    404: "No such platform, or it is not configured here (its secret is not set).",
    413: "The body is larger than NEWSLETTER_EVENTS_MAX_BODY_BYTES.",
    422: "The body is not what the platform sends.",
    503: "The database (or Amazon SNS, for its certificate) is out of reach: nothing was recorded, send it again.",
}, extra={"requestBody": {"required": True, "description": "The platform's own webhook body.", "content": {
    "application/json": {"schema": {}}, "text/plain": {"schema": {"type": "string"}}}}})
def provider_events_view(provider: str) -> Response:
    """A sending platform's bounce and complaint webhook

    The URL to give the platform: `ses` (Amazon SES through an SNS https subscription; the SNS
    signature is checked and the subscription confirmed), `postmark` (HTTP basic auth in the URL),
    `sendgrid` (Signed Event Webhook) or `mailgun` (signed webhooks). Each takes the platform's own
    body and authentication, not a token: see the README. A platform whose secret is not set answers
    404. Deliveries, opens, clicks and other events are accepted and ignored. Answers 200 once the
    events are stored; 503 with Retry-After while the database is out of reach, which the platforms
    retry.
    """
    module = provider_events.providers().get(provider)
    if module is None:
        known = ", ".join([*provider_events.providers(), generic.NAME])
        raise NotFound(f"There is no provider called {provider[:60]!r}: use one of {known}.")
    if not module.configured(current_app.config):
        raise provider_events.NotConfigured(f"{module.TITLE} events are not configured here: set {module.SECRET}.")
    received = module.verify(request, current_app.config)
    return _recorded(module.NAME, module.events(received.payload), received.nonce)

