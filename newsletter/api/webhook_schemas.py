"""The bodies of /api/v1/webhooks, described once as pydantic models (the views check with them; the
OpenAPI document is built from them)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ..models import WebhookAttempt, WebhookEndpoint


class EndpointCreate(BaseModel):
    """POST /api/v1/webhooks: a new endpoint."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str = Field(description="Where events are POSTed: absolute https (or http) URL, no user name or password.",
                     examples=["https://crm.example.org/hooks/newsletter"])
    description: str | None = Field(default=None, description="What receives them, to tell endpoints apart.")
    event_types: list[str] = Field(default_factory=list,
                                   description="The event types wanted, e.g. [\"subscription.confirmed\"]; "
                                               "empty: every type.")
    active: bool = True


class EndpointUpdate(BaseModel):
    """PATCH /api/v1/webhooks/<id>: the fields to change (turning it on clears why it was switched off)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    url: str | None = None
    description: str | None = None
    event_types: list[str] | None = None
    active: bool | None = None


class Endpoint(BaseModel):
    """An endpoint as the API shows it (never its secret)."""

    model_config = ConfigDict(extra="forbid")  # an answer with more than this is a drift

    id: int
    url: str
    description: str | None
    event_types: list[str] = Field(description="Empty: every type.")
    active: bool
    created_at: datetime
    disabled_at: datetime | None = Field(description="When the service switched it off (deliveries kept failing).")
    disabled_reason: str | None
    secret_rotating_until: datetime | None = Field(
        description="During a rotation: until when the previous secret signs too.")
    waiting_deliveries: int
    failing_deliveries: int


class EndpointWithSecret(Endpoint):
    """The answer to creating an endpoint or rotating its secret: the secret, shown this once."""

    secret: str = Field(description="\"whsec_\" + base64: give it to standardwebhooks' Webhook(secret).verify.")


class EndpointList(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an answer with more than this is a drift

    webhooks: list[Endpoint]


class Delivery(BaseModel):
    """One attempt at delivering an event to an endpoint."""

    model_config = ConfigDict(extra="forbid")  # an answer with more than this is a drift

    id: int
    event_id: str | None = Field(description="The event's id (also its webhook-id header), e.g. \"evt_42\".")
    event_type: str | None
    attempted_at: datetime
    status_code: int | None = Field(description="The receiver's HTTP status; null when none came.")
    duration_ms: int
    response_start: str | None = Field(description="The first 500 characters of the answer.")
    error: str | None


class DeliveryList(BaseModel):
    model_config = ConfigDict(extra="forbid")  # an answer with more than this is a drift

    deliveries: list[Delivery]
    page: int
    pages: int
    total: int


class Retried(BaseModel):
    """POST …/deliveries/<id>/retry: the event is queued again for the endpoint, due now."""

    model_config = ConfigDict(extra="forbid")  # an answer with more than this is a drift

    queued: bool
    outbox_message_id: int


def field_errors(error: ValidationError) -> dict[str, list[str]]:
    """pydantic's errors as the API's {"field": ["message", …]}."""
    errors: dict[str, list[str]] = {}
    for problem in error.errors(include_url=False):
        location = problem.get("loc") or ()
        field = str(location[0]) if location else "body"
        if problem.get("type") == "extra_forbidden":
            errors.setdefault("body", []).append(f"Unexpected field {field!r}.")
            continue
        errors.setdefault(field, []).append(_message(problem))
    return errors


def _message(problem: dict[str, Any]) -> str:
    kind = problem.get("type", "")
    field = str((problem.get("loc") or ("value",))[0])
    if kind == "missing":
        return f"The {field} is required."
    if kind in {"string_type"}:
        return f"The {field} must be a string."
    if kind in {"bool_type"}:
        return f"The {field} must be true or false."
    if kind in {"list_type"}:
        return f"The {field} must be a list."
    return f"The {field} is not valid: {problem.get('msg', '')}."


def endpoint_model(endpoint: WebhookEndpoint, waiting: int, failing: int, now: datetime) -> Endpoint:
    expires = endpoint.previous_secret_expires_at
    rotating = expires if endpoint.previous_secret and expires is not None and expires > now else None
    return Endpoint(id=endpoint.id, url=endpoint.url, description=endpoint.description,
                    event_types=list(endpoint.event_types or []), active=endpoint.active,
                    created_at=endpoint.created_at, disabled_at=endpoint.disabled_at,
                    disabled_reason=endpoint.disabled_reason, secret_rotating_until=rotating,
                    waiting_deliveries=waiting, failing_deliveries=failing)


def delivery_model(attempt: WebhookAttempt) -> Delivery:
    return Delivery(id=attempt.id, event_id=f"evt_{attempt.event_id}" if attempt.event_id is not None else None,
                    event_type=attempt.event_type, attempted_at=attempt.attempted_at,
                    status_code=attempt.status_code, duration_ms=attempt.duration_ms,
                    response_start=attempt.response_start, error=attempt.error)
