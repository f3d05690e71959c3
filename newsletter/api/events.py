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
@token_required(change=True)
def generic_events() -> Response:
    if not request.is_json:
        raise UnsupportedMediaType("Send the events as JSON, with Content-Type: application/json.")
    payload = provider_events.json_body(request)
    if payload is None:
        raise generic.BadEvents({"body": ["The body is not valid JSON."]})
    return _recorded(generic.NAME, generic.events(payload))


@blueprint.post("/events/<provider>", endpoint="provider_events")
def provider_events_view(provider: str) -> Response:
    module = provider_events.providers().get(provider)
    if module is None:
        known = ", ".join([*provider_events.providers(), generic.NAME])
        raise NotFound(f"There is no provider called {provider[:60]!r}: use one of {known}.")
    if not module.configured(current_app.config):
        raise provider_events.NotConfigured(f"{module.TITLE} events are not configured here: set {module.SECRET}.")
    received = module.verify(request, current_app.config)
    return _recorded(module.NAME, module.events(received.payload), received.nonce)

