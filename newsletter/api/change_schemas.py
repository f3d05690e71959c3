"""The changes feed's query and answers as pydantic models: what GET /api/v1/changes takes and gives.

The same ChangeEvent is the body of every webhook (see changes.event_payloads, which builds it).
ChangesQuery parses the query string: its errors carry the exact message the API answers with.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_core import PydanticCustomError

from ..changes import EVENT_TYPES

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
# A position is a BIGINT: a cursor beyond it names no place in the feed.
MAX_CURSOR = 2**63 - 1

EventType = Literal["subscription.pending", "subscription.confirmed", "subscription.unsubscribed",
                    "reader.erased", "reader.suppressed", "reader.unsuppressed"]
assert set(get_args(EventType)) == set(EVENT_TYPES.values())


class ChangeReader(BaseModel):
    """The reader the change is about; an erased reader's address and name are null in every event."""

    model_config = ConfigDict(extra="forbid")

    id: int = Field(description="The reader's id: the same person in every event.")
    email: str | None = Field(description="The reader's address (normalized); null once the reader is erased.")
    name: str | None = Field(description="The name the reader gave, if any; null once the reader is erased.")


class ChangeNewsletter(BaseModel):
    model_config = ConfigDict(extra="forbid")

    slug: str = Field(description="The newsletter's slug, as in /api/v1/newsletters.")


class ChangeSource(BaseModel):
    """Where the change was made, as far as it is known."""

    model_config = ConfigDict(extra="forbid")

    page_url: str | None = Field(description="The page whose form was used (signups); null when unknown or erased.")
    form_id: str | None = Field(description="The id the embedding page gave its form, if any.")


class ChangeData(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reader: ChangeReader
    newsletter: ChangeNewsletter | None = Field(
        description="The newsletter of a subscription change; null for reader.erased, reader.suppressed and "
                    "reader.unsuppressed.")
    channel: str = Field(description="How the change came: embed-form, hosted-form, api, email-link, one-click, "
                                     "preferences, admin, import, erasure, or for reader.suppressed the report's "
                                     "source: smtp, mailbox, ses, postmark, sendgrid, mailgun, generic, admin, import; "
                                     "admin for reader.unsuppressed.")
    source: ChangeSource
    reason: str | None = Field(default=None, description="reader.suppressed: why the address went on the "
                                                         "suppression list; reader.unsuppressed: the reason of "
                                                         "the entry lifted. hard_bounce, complaint, soft_bounces, "
                                                         "blocked, manual or import.")


class ChangeEvent(BaseModel):
    """One subscription change: a changes feed entry and a webhook's body."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(pattern=r"^evt_[0-9]+$", description="Unique and stable: the webhook-id of its deliveries. "
                                                        "Apply each event once by this id.")
    type: EventType
    timestamp: str = Field(description="When the change happened, ISO 8601 in UTC.")
    cursor: str | None = Field(pattern=r"^[0-9]+$", description="The event's place in the changes feed: "
                                                                "GET /api/v1/changes?after=<cursor> continues after it.")
    data: ChangeData


class ChangesPage(BaseModel):
    """A page of the changes feed, oldest first."""

    model_config = ConfigDict(extra="forbid")

    changes: list[ChangeEvent]
    next: str = Field(pattern=r"^[0-9]+$", description="The cursor to ask for next (after=<next>); "
                                                       "when has_more is false, poll it again later.")
    has_more: bool = Field(description="Whether more changes are waiting now: if so, ask again at once.")


def _whole_number(value: Any, low: int, high: int, message: str) -> int:
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 20:
        number = int(value)
    else:
        raise PydanticCustomError("value_error", message)
    if not low <= number <= high:
        raise PydanticCustomError("value_error", message)
    return number


AFTER_MESSAGE = ("The after cursor must be a whole number from 0 to 9223372036854775807: "
                 "the next (or an event's cursor) of an earlier answer, or 0 to start at the beginning.")
LIMIT_MESSAGE = f"The limit must be a whole number from 1 to {MAX_LIMIT}."


class ChangesQuery(BaseModel):
    """The query string of GET /api/v1/changes."""

    model_config = ConfigDict(extra="ignore")

    after: Annotated[int, Field(ge=0, le=MAX_CURSOR, description="Changes after this cursor (a next or cursor "
                                                               "from an earlier answer); 0 or none: from the start.")] = 0
    limit: Annotated[int, Field(ge=1, le=MAX_LIMIT, description="How many changes at most.")] = DEFAULT_LIMIT

    @field_validator("after", mode="before")
    @classmethod
    def _after(cls, value: Any) -> int:
        return _whole_number(value, 0, MAX_CURSOR, AFTER_MESSAGE)

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, value: Any) -> int:
        return _whole_number(value, 1, MAX_LIMIT, LIMIT_MESSAGE)
