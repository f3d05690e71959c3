"""/api/v1/webhooks: manage webhook endpoints, read their delivery log, send a delivery again. Admin tokens only.

Bodies are checked by the pydantic models in webhook_schemas.py, then by webhooks.py (the URL,
the event types); errors as {"errors": {"field": ["message", …]}} like the rest of /api.
"""

from __future__ import annotations

from typing import Any

from flask import Response, current_app, request
from pydantic import BaseModel, ValidationError

from .. import webhooks
from ..authz import token_required
from ..extensions import db
from ..models import WebhookEndpoint, utcnow
from . import blueprint
from .routes import FieldErrors, _body
from .openapi import described
from .v1 import Missing
from .webhook_schemas import (
    DeliveryList,
    Endpoint,
    EndpointCreate,
    EndpointList,
    EndpointUpdate,
    EndpointWithSecret,
    Retried,
    delivery_model,
    endpoint_model,
    field_errors,
)


def _json(model: BaseModel, status: int = 200) -> tuple[Response, int]:
    response = current_app.response_class(model.model_dump_json(), mimetype="application/json")
    return response, status


def _parsed(model: type[BaseModel]) -> Any:
    try:
        return model.model_validate(_body())
    except ValidationError as error:
        raise FieldErrors(field_errors(error)) from None


def _endpoint(endpoint_id: int) -> WebhookEndpoint:
    endpoint = db.session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise Missing("webhook", f"There is no webhook endpoint {endpoint_id}.")
    return endpoint


def _described(endpoint: WebhookEndpoint) -> Any:
    waiting = webhooks.waiting_counts(db.session).get(endpoint.id, 0)
    failing = webhooks.failing_counts(db.session).get(endpoint.id, 0)
    return endpoint_model(endpoint, waiting, failing, utcnow())


def _with_secret(endpoint: WebhookEndpoint, secret: str, status: int) -> tuple[Response, int]:
    described = _described(endpoint)
    response, status = _json(EndpointWithSecret(**described.model_dump(), secret=secret), status)
    # The secret is in this one answer and nowhere else.
    response.headers["Cache-Control"] = "no-store"
    return response, status


def _checked(call: Any) -> Any:
    try:
        return call()
    except webhooks.EndpointErrors as error:
        raise FieldErrors(error.errors) from None


@blueprint.get("/webhooks")
@described(tag="Webhook endpoints", access="change", answers={200: (EndpointList, "Every endpoint.")})
@token_required(change=True)
def list_webhooks() -> tuple[Response, int]:
    waiting, failing, now = webhooks.waiting_counts(db.session), webhooks.failing_counts(db.session), utcnow()
    return _json(EndpointList(webhooks=[endpoint_model(e, waiting.get(e.id, 0), failing.get(e.id, 0), now)
                                        for e in webhooks.endpoints(db.session)]))


@blueprint.post("/webhooks")
@described(tag="Webhook endpoints", access="change", json=EndpointCreate, answers={
    201: (EndpointWithSecret, "The new endpoint, with its secret (shown once)."),
    415: "The body is not sent as application/json.", 422: "Each field's problems: url, event_types …"})
@token_required(change=True)
def create_webhook() -> tuple[Response, int]:
    fields = _parsed(EndpointCreate)
    endpoint, secret = _checked(lambda: webhooks.create_endpoint(db.session, current_app.config, **fields.model_dump()))
    db.session.commit()
    return _with_secret(endpoint, secret, 201)


@blueprint.get("/webhooks/<id:endpoint_id>")
@described(tag="Webhook endpoints", access="change", answers={200: (Endpoint, "The endpoint."), 404: "No endpoint has this id."})
@token_required(change=True)
def get_webhook(endpoint_id: int) -> tuple[Response, int]:
    return _json(_described(_endpoint(endpoint_id)))


@blueprint.patch("/webhooks/<id:endpoint_id>")
@described(tag="Webhook endpoints", access="change", json=EndpointUpdate, answers={
    200: (Endpoint, "The endpoint now."), 404: "No endpoint has this id.",
    415: "The body is not sent as application/json.", 422: "Each field's problems."})
@token_required(change=True)
def update_webhook(endpoint_id: int) -> tuple[Response, int]:
    endpoint = _endpoint(endpoint_id)
    changes = _parsed(EndpointUpdate).model_dump(exclude_unset=True)
    nulls = [name for name in ("url", "event_types", "active") if name in changes and changes[name] is None]
    if nulls:
        raise FieldErrors({name: [f"The {name} can't be null."] for name in nulls})
    _checked(lambda: webhooks.update_endpoint(db.session, current_app.config, endpoint, changes))
    db.session.commit()
    return _json(_described(endpoint))


@blueprint.delete("/webhooks/<id:endpoint_id>")
@described(tag="Webhook endpoints", access="change", answers={204: (None, "Deleted."), 404: "No endpoint has this id."})
@token_required(change=True)
def delete_webhook(endpoint_id: int) -> Response:
    if webhooks.delete_endpoint(db.session, endpoint_id) is None:
        raise Missing("webhook", f"There is no webhook endpoint {endpoint_id}.")
    db.session.commit()
    return Response(status=204)


@blueprint.post("/webhooks/<id:endpoint_id>/rotate-secret")
@described(tag="Webhook endpoints", access="change", answers={
    200: (EndpointWithSecret, "The new secret (shown once); the old one signs too for a while."),
    404: "No endpoint has this id.",
    422: "A previous rotation's overlap is still running (the message says until when)."})
@token_required(change=True)
def rotate_webhook_secret(endpoint_id: int) -> tuple[Response, int]:
    endpoint = _endpoint(endpoint_id)
    try:
        secret = webhooks.rotate_secret(db.session, current_app.config, endpoint)
    except webhooks.EndpointErrors as error:
        raise FieldErrors(error.errors) from None
    db.session.commit()
    return _with_secret(endpoint, secret, 200)


@blueprint.get("/webhooks/<id:endpoint_id>/deliveries")
@described(tag="Webhook endpoints", access="change", answers={
    200: (DeliveryList, "One page of the delivery log, newest first."), 404: "No endpoint has this id.",
    422: "The page is not a whole number from 1."})
@token_required(change=True)
def list_webhook_deliveries(endpoint_id: int) -> tuple[Response, int]:
    endpoint = _endpoint(endpoint_id)
    raw_page = request.args.get("page", "1")
    if not (raw_page.isascii() and raw_page.isdigit() and 1 <= int(raw_page) <= 1_000_000):
        raise FieldErrors({"page": ["The page must be a whole number from 1."]})
    page = webhooks.deliveries_page(db.session, endpoint.id, int(raw_page))
    return _json(DeliveryList(deliveries=[delivery_model(attempt) for attempt in page.attempts],
                              page=page.page, pages=page.pages, total=page.total))


@blueprint.post("/webhooks/<id:endpoint_id>/deliveries/<id:delivery_id>/retry")
@described(tag="Webhook endpoints", access="change", answers={
    202: (Retried, "Queued again, due now."), 404: "No such endpoint or delivery."})
@token_required(change=True)
def retry_webhook_delivery(endpoint_id: int, delivery_id: int) -> tuple[Response, int]:
    endpoint = _endpoint(endpoint_id)
    row_id = webhooks.send_again(db.session, endpoint.id, delivery_id)
    if row_id is None:
        raise Missing("delivery", f"Webhook endpoint {endpoint_id} has no delivery {delivery_id}.")
    db.session.commit()
    return _json(Retried(queued=True, outbox_message_id=row_id), 202)
