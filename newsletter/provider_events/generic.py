"""The generic shape, for a platform we have no module for (or a script of yours):

    POST /api/v1/events/generic   Authorization: Bearer <an admin API token>
    {"events": [{"type": "hard_bounce" | "soft_bounce" | "complaint", "email": "…",
                 "occurred_at": "2026-11-30T08:15:00Z", "diagnostic": "550 5.1.1 …", "id": "…"}]}

occurred_at (ISO 8601, UTC when it has no offset), diagnostic and id are optional; an id makes a
repeated event count once. Every event is checked before any is recorded: one malformed event
refuses the batch (422 naming it), while an event whose address is not an email address is skipped.
"""

from __future__ import annotations

from typing import Any

from werkzeug.exceptions import UnprocessableEntity

from ..models import DELIVERY_EVENT_KINDS
from . import ProviderEvent, clean, moment_from_iso

NAME = "generic"
MAX_EVENTS = 1000
FIELDS = {"type", "email", "occurred_at", "diagnostic", "id"}


class BadEvents(UnprocessableEntity):
    """422 naming each malformed field, as the rest of the API does: {"errors": {"events[2].type": […]}}."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        super().__init__(" ".join(message for messages in errors.values() for message in messages))
        self.errors = errors


def events(payload: Any) -> list[ProviderEvent]:
    """The events of a generic body, or BadEvents naming every problem."""
    if not isinstance(payload, dict) or set(payload) != {"events"}:
        raise BadEvents({"body": ['Send {"events": [{"type": …, "email": …}, …]} and nothing else.']})
    items = payload["events"]
    if not isinstance(items, list) or not 1 <= len(items) <= MAX_EVENTS:
        raise BadEvents({"events": [f"Give from 1 to {MAX_EVENTS} events as a list."]})
    errors: dict[str, list[str]] = {}
    found = []
    for position, item in enumerate(items):
        where = f"events[{position}]"
        if not isinstance(item, dict):
            errors[where] = ["Each event must be an object."]
            continue
        unknown = sorted(str(name)[:40] for name in set(item) - FIELDS)
        if unknown:
            errors[where] = [f"Unexpected field {name!r}." for name in unknown]
        kind, email = item.get("type"), item.get("email")
        if kind not in DELIVERY_EVENT_KINDS:
            errors[f"{where}.type"] = [f"The type must be one of {', '.join(DELIVERY_EVENT_KINDS)}."]
        if not isinstance(email, str) or not email.strip() or len(email) > 400:
            errors[f"{where}.email"] = ["The email must be an address (text of at most 400 characters)."]
        occurred_at = None
        if item.get("occurred_at") is not None:
            occurred_at = moment_from_iso(item["occurred_at"])
            if occurred_at is None:
                errors[f"{where}.occurred_at"] = ["The occurred_at must be an ISO 8601 time such as "
                                                  "2026-11-30T08:15:00Z."]
        for name, limit in (("diagnostic", 2000), ("id", 200)):
            value = item.get(name)
            if value is not None and (not isinstance(value, str) or len(value) > limit):
                errors[f"{where}.{name}"] = [f"The {name} must be text of at most {limit} characters."]
        if not any(key == where or key.startswith(f"{where}.") for key in errors):
            found.append(ProviderEvent(address=email, kind=kind, occurred_at=occurred_at,  # type: ignore[arg-type]
                                       diagnostic=clean(item.get("diagnostic")), event_id=clean(item.get("id"), 200)))
    if errors:
        raise BadEvents(errors)
    return found
