"""The generic shape, for a platform we have no module for (or a script of yours):

    POST /api/v1/events/generic   Authorization: Bearer <an admin API token>
    {"events": [{"type": "hard_bounce" | "soft_bounce" | "complaint", "email": "…",
                 "occurred_at": "2026-11-30T08:15:00Z", "diagnostic": "550 5.1.1 …", "id": "…"}]}

occurred_at (ISO 8601, UTC when it has no offset), diagnostic and id are optional; an id makes a
repeated event count once. Every event is checked (by the DeliveryEvents model, which the OpenAPI
document shows too) before any is recorded: one malformed event refuses the batch (422 naming it),
while an event whose address is not an email address is skipped.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from werkzeug.exceptions import UnprocessableEntity

from ..models import DELIVERY_EVENT_KINDS
from . import ProviderEvent, clean, moment_from_iso

NAME = "generic"
MAX_EVENTS = 1000
TYPE_MESSAGE = f"The type must be one of {', '.join(DELIVERY_EVENT_KINDS)}."
FIELD_MESSAGES = {
    "type": TYPE_MESSAGE,
    "email": "The email must be an address (text of at most 400 characters).",
    "occurred_at": "The occurred_at must be an ISO 8601 time such as 2026-11-30T08:15:00Z.",
    "diagnostic": "The diagnostic must be text of at most 2000 characters.",
    "id": "The id must be text of at most 200 characters.",
}


class BadEvents(UnprocessableEntity):
    """422 naming each malformed field, as the rest of the API does: {"errors": {"events[2].type": […]}}."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(" ".join(message for messages in errors.values() for message in messages))
        self.errors = errors


class DeliveryEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal[DELIVERY_EVENT_KINDS] = Field(  # type: ignore[valid-type]
        description="hard_bounce and complaint suppress the address at once; soft_bounce after "
                    "NEWSLETTER_SOFT_BOUNCE_LIMIT of them within NEWSLETTER_SOFT_BOUNCE_WINDOW.")
    email: str = Field(max_length=400, description="The address that bounced or complained.",
                       examples=["reader@example.org"])
    occurred_at: datetime | None = Field(None, description="When it happened (ISO 8601; UTC without an offset). "
                                                           "Default: now.")
    diagnostic: str | None = Field(None, max_length=2000,
                                   description="The receiving server's words, e.g. `550 5.1.1 user unknown`.")
    id: str | None = Field(None, max_length=200,
                           description="Your id of the event: an event sent again with the same id is recorded once.")

    @field_validator("email")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("blank")
        return value

    @field_validator("occurred_at", mode="before")
    @classmethod
    def _moment(cls, value: Any) -> Any:
        if value is None:
            return None
        moment = moment_from_iso(value)
        if moment is None:
            raise ValueError("not ISO 8601")
        return moment


class DeliveryEvents(BaseModel):
    """A batch of bounces and complaints; a malformed event refuses the whole batch."""

    model_config = ConfigDict(extra="forbid")

    events: list[DeliveryEvent] = Field(min_length=1, max_length=MAX_EVENTS)


def events(payload: Any) -> list[ProviderEvent]:
    """The events of a generic body, or BadEvents naming every problem."""
    try:
        batch = DeliveryEvents.model_validate(payload)
    except ValidationError as error:
        raise BadEvents(_named(error.errors(include_url=False))) from None
    return [ProviderEvent(address=event.email, kind=event.type, occurred_at=event.occurred_at,
                          diagnostic=clean(event.diagnostic), event_id=clean(event.id, 200)) for event in batch.events]


def _named(problems: list[Any]) -> dict[str, list[str]]:
    """pydantic's errors as the API words them: the body, then the list, then each event's fields."""
    if any(not problem["loc"] or problem["loc"][0] != "events" or problem["loc"] == ("events",)
           and problem["type"] == "missing" for problem in problems):
        return {"body": ['Send {"events": [{"type": …, "email": …}, …]} and nothing else.']}
    if any(problem["loc"] == ("events",) for problem in problems):
        return {"events": [f"Give from 1 to {MAX_EVENTS} events as a list."]}
    errors: dict[str, list[str]] = {}
    unknown: dict[str, list[str]] = {}
    for problem in problems:
        where = f"events[{problem['loc'][1]}]"
        if len(problem["loc"]) == 2:
            errors[where] = ["Each event must be an object."]
        elif problem["type"] == "extra_forbidden":
            unknown.setdefault(where, []).append(str(problem["loc"][2])[:40])
        else:
            errors[f"{where}.{problem['loc'][2]}"] = [FIELD_MESSAGES[str(problem["loc"][2])]]
    for where, names in unknown.items():
        errors[where] = [f"Unexpected field {name!r}." for name in sorted(names)]
    return errors
