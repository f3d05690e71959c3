"""The API's bodies and answers as pydantic models, and `parse`, which checks input against them.

Each request body, query string and answer under /api/v1 is described here once: the views parse
with these models and newsletter/api/openapi.py builds the OpenAPI document from them. The error
messages stay the API's own ({"errors": {"field": ["message", …]}}, in words a person understands):
`parse` turns pydantic's errors into them, with a model's MESSAGES for what a field's type or
bounds can't say well, and validators raising `problem(...)` for checks that need more than the
value (the configuration, the database, a signed cursor).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, TypeVar

from flask_babel import gettext, ngettext
from flask_babel import lazy_gettext as _l
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import PydanticCustomError

from .. import addresses, tokens
from ..models import SUBSCRIPTION_STATUSES
from ..privacy import EXPORT_FORMAT
from ..subscribers import MAX_PAGE
from ..subscriptions import check_name

M = TypeVar("M", bound="Checked")
Status = Literal[SUBSCRIPTION_STATUSES]  # type: ignore[valid-type]
Moment = datetime


class FieldErrors(Exception):
    """Input that doesn't fit: 422 with {"errors": {field: [message, …]}} (see routes.field_errors)."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors


def problem(message: str) -> PydanticCustomError:
    """A validator's own message for its field, kept word for word by `parse`."""
    # The message goes in the context: as the template itself its braces would be read as placeholders.
    return PydanticCustomError("problem", "{message}", {"message": message})


class Checked(BaseModel):
    """A model whose errors `parse` words for people."""

    #: Messages by field, or by (field, pydantic error type), for errors no validator words itself.
    MESSAGES: ClassVar[Mapping[str | tuple[str, str], Any]] = {}
    #: Whether the messages go through gettext (the public signup: MESSAGES are then `_l` texts), or stay
    #: English (the token API).
    TRANSLATED: ClassVar[bool] = False


class Closed(Checked):
    """An object with exactly its fields: anything else is an error (in a body) or a drift (in an answer)."""

    model_config = ConfigDict(extra="forbid")


class Query(Checked):
    """A query string: parameters it doesn't name are left alone, as web servers do."""

    model_config = ConfigDict(extra="ignore")


def _messages(model: type[Checked], field: str, error: Any) -> list[str]:
    kind = error["type"]
    if kind == "problem":
        return [error["ctx"]["message"]]
    if kind == "problems":
        return list(error["ctx"]["messages"])
    chosen = model.MESSAGES.get((field, kind)) or model.MESSAGES.get(field)
    if chosen is not None:
        return [str(chosen)]  # a lazy_gettext text is translated here, in the request's language
    return [_message(model, field, error)]


def _message(model: type[Checked], field: str, error: Any) -> str:
    kind, translated = error["type"], model.TRANSLATED
    if kind == "string_too_long":
        limit = error["ctx"]["max_length"]
        if translated:
            return ngettext("The %(field)s can be at most %(num)d character long.",
                            "The %(field)s can be at most %(num)d characters long.", limit, field=field)
        return f"The {field} can be at most {limit} character{'' if limit == 1 else 's'} long."
    if kind == "string_type":
        if translated:
            return gettext("The %(field)s must be a string.", field=field)
        return f"The {field} must be a string."
    return error["msg"]


def _unexpected(model: type[Checked], field: str) -> str:
    return gettext("Unexpected field %(field)r.", field=field) if model.TRANSLATED else f"Unexpected field {field!r}."


def parse(model: type[M], values: Any, context: dict[str, Any] | None = None) -> M:
    """`values` as a `model`, or FieldErrors naming every field's problems (unexpected fields under "body")."""
    try:
        return model.model_validate(values, context=context or {})
    except ValidationError as error:
        errors: dict[str, list[str]] = {}
        unexpected: list[str] = []
        for each in error.errors(include_url=False):
            field = str(each["loc"][0]) if each["loc"] else "body"
            if each["type"] == "extra_forbidden":
                unexpected.append(field)
                continue
            for message in _messages(model, field, each):
                if message not in errors.setdefault(field, []):
                    errors[field].append(message)
        # In the order of the model's fields, as a person reads the form; unexpected ones last.
        ordered = {name: errors[name] for name in model.model_fields if name in errors}
        ordered |= {name: messages for name, messages in errors.items() if name not in ordered}
        if unexpected:
            ordered["body"] = [_unexpected(model, name) for name in sorted(unexpected)]
        raise FieldErrors(ordered) from None


def _context(info: ValidationInfo) -> dict[str, Any]:
    return info.context or {}


# --- errors -------------------------------------------------------------------------------------------

class Errors(Closed):
    """Every error under /api: 401, 403, 404, 405, 413, 415, 422, 429, 500."""

    errors: Annotated[dict[str, Annotated[list[str], Field(min_length=1)]], Field(
        min_length=1,
        description="Each field (or `request`, `body`) with what is wrong with it, in words a person understands.")]


# --- signup -------------------------------------------------------------------------------------------

def _optional_text(limit: int, description: str) -> Any:
    return Field(None, max_length=limit, description=description)


class SignupRequest(Closed):
    """A signup, from a site's form (embed.js) or a site's server."""

    TRANSLATED = True
    MESSAGES = {
        ("email", "missing"): _l("Enter your email address."),
        ("email", "string_type"): _l("The email must be a string."),
        "newsletters": _l("Give the newsletters as a list of their names, e.g. [\"daily-briefing\"]."),
        ("newsletters", "too_short"): _l("Choose at least one newsletter."),
        ("name", "string_type"): _l("The name must be a string."),
        "embed": _l("The embed, when given, must be \"script\"."),
    }

    # In the order the errors are listed.
    email: str = Field(description="The reader's address; normalized as email-validator does.",
                       examples=["reader@example.org"])
    newsletters: list[str] = Field(min_length=1, description="Slugs of active newsletters.",
                                   examples=[["daily-briefing"]])
    # 200 characters once stripped: check_name says so in its own words.
    name: str | None = Field(None, description="The reader's name, optional.", json_schema_extra={"maxLength": 200})
    page_url: str | None = _optional_text(2048, "The page the form was on (kept as proof).")
    form_id: str | None = _optional_text(200, "Which form on that page.")
    form_token: str | None = _optional_text(500, "The form_token of GET /forms (embed.js).")
    lang: str | None = _optional_text(35, "Language of the answer and the email: en or uk.")
    embed: Literal["script"] | None = Field(None, description="\"script\" when embed.js sends it: the fill time "
                                                              "is checked.")
    website: str | None = Field(None, description="The honeypot: leave it out or empty.")

    @field_validator("email", mode="before")
    @classmethod
    def _email_given(cls, value: Any) -> Any:
        if value is None:
            raise problem(gettext("Enter your email address."))
        return value

    @field_validator("email")
    @classmethod
    def _email_normalized(cls, value: str, info: ValidationInfo) -> str:
        config = _context(info)["config"]
        try:
            return addresses.normalize(value, check_deliverability=config["NEWSLETTER_CHECK_DELIVERABILITY"],
                                       timeout=config["NEWSLETTER_DNS_TIMEOUT"])
        except addresses.InvalidAddress as error:
            raise problem(str(error)) from None

    @field_validator("newsletters")
    @classmethod
    def _not_too_many(cls, value: list[str], info: ValidationInfo) -> list[str]:
        limit = _context(info)["config"]["NEWSLETTER_MAX_NEWSLETTERS_PER_SIGNUP"]
        if len(set(value)) > limit:
            raise problem(ngettext("At most %(num)d newsletter can be chosen at once.",
                                   "At most %(num)d newsletters can be chosen at once.", limit))
        return value

    @field_validator("name")
    @classmethod
    def _name_fits(cls, value: str | None) -> str | None:
        try:
            return check_name(value)
        except ValueError as error:
            raise problem(str(error)) from None

    @field_validator("website", mode="before")
    @classmethod
    def _honeypot_any(cls, value: Any) -> Any:
        # abuse.is_bot has read it already (any value it counts as filled in drops the signup).
        return value if isinstance(value, str) else None


class SignupAccepted(Closed):
    """The same answer whether the address is new, pending or confirmed."""

    status: Literal["pending"]


class FormsQuery(Query):
    newsletters: str = Field(description="Comma-separated slugs of active newsletters.",
                             examples=["daily-briefing,weekly-explainer"])
    lang: str | None = Field(None, description="en or uk.", examples=["uk"])

    @model_validator(mode="before")
    @classmethod
    def _none_named(cls, values: Any) -> Any:
        # Left out, it names no newsletter: find_newsletters says "Choose at least one newsletter."
        return {"newsletters": "", **values} if isinstance(values, dict) else values

    @property
    def slugs(self) -> list[str]:
        """The slugs named, in order."""
        return [slug.strip() for slug in self.newsletters.split(",") if slug.strip()]


class FormNewsletter(Closed):
    slug: str
    name: str
    description: str
    author: str | None


class FormSettings(Closed):
    newsletters: list[FormNewsletter]
    form_token: str = Field(description="Send it back as form_token with \"embed\": \"script\".")
    texts: dict[str, str] = Field(description="The form's words in the request's language, by key.")


# --- newsletters and subscribers -----------------------------------------------------------------------

Count = Annotated[int, Field(ge=0)]


class Counts(Closed):
    """Subscriptions in each status; erased readers count, anonymously."""

    pending: Count
    confirmed: Count
    unsubscribed: Count


class Newsletter(Closed):
    slug: str = Field(examples=["daily-briefing"])
    name: str
    description: str
    author: str | None
    active: bool = Field(description="False once archived: it takes no new signups.")
    created_at: Moment
    counts: Counts


class NewsletterList(Closed):
    newsletters: list[Newsletter]


class SubscriberQuery(Query):
    """The query string of a subscriber page."""

    status: Status | None = Field(None, description="Only subscriptions in this status.")
    q: str | None = Field(None, max_length=320, description="A fragment of the email address or name, any case.")
    limit: int = Field(100, ge=1, le=MAX_PAGE, description=f"Rows per page, 1 to {MAX_PAGE}.")
    cursor: str | None = Field(None, description="The `next_cursor` of the previous page; leave out for the "
                                                 "first page.")

    @field_validator("status", mode="before")
    @classmethod
    def _status(cls, value: Any) -> Any:
        if value in ("", None):
            return None
        if value not in SUBSCRIPTION_STATUSES:
            raise problem(f"The status must be one of {', '.join(SUBSCRIPTION_STATUSES)}.")
        return value

    @field_validator("q", mode="before")
    @classmethod
    def _search(cls, value: Any) -> Any:
        search = (value or "").strip() or None
        if search is not None and len(search) > 320:
            raise problem("The search can be at most 320 characters long.")
        if search is not None and "\x00" in search:
            raise problem("The search can't contain NUL characters.")
        return search

    @field_validator("limit", mode="before")
    @classmethod
    def _limit(cls, value: Any) -> Any:
        if isinstance(value, str) and not (value.isascii() and value.isdigit() and 1 <= int(value) <= MAX_PAGE):
            raise problem(f"The limit must be a whole number from 1 to {MAX_PAGE}.")
        return value

    @field_validator("cursor", mode="before")
    @classmethod
    def _cursor(cls, value: Any) -> Any:
        if not value:
            return None
        try:
            tokens.read_cursor(value[:500])
        except tokens.InvalidToken:
            raise problem("This cursor is not one this API gave out: use the next_cursor of the previous "
                          "page.") from None
        return value

    @property
    def after_id(self) -> int | None:
        """The id the page starts after, from the signed cursor."""
        return tokens.read_cursor(self.cursor[:500]) if self.cursor else None


class Subscriber(Closed):
    id: int = Field(description="The subscription's id: the order of the list.")
    reader_id: int
    email: str
    name: str | None
    status: Status
    subscribed_at: Moment
    pending_since: Moment | None
    confirmed_at: Moment | None
    unsubscribed_at: Moment | None


class SubscriberPage(Closed):
    subscribers: list[Subscriber] = Field(max_length=MAX_PAGE)
    next_cursor: str | None = Field(description="Pass it as `cursor` for the next page; null on the last page.")


class ExportQuery(Query):
    """The filters of an export, as in the admin's download; exports.parse_selection checks them."""

    status: list[Status] | None = Field(None, description="Only these statuses: repeat the parameter, or separate "
                                                          "them with commas.",
                                        json_schema_extra={"style": "form", "explode": True})
    signed_up_since: str | None = Field(None, max_length=64, examples=["2026-01-31"], description=(
        "Subscriptions signed up on or after: a date (2026-01-31, the whole day, UTC) or an ISO 8601 time (UTC "
        "when it has no offset)."))
    signed_up_until: str | None = Field(None, max_length=64, examples=["2026-01-31"], description=(
        "Subscriptions signed up up to: a date (2026-01-31, the whole day, UTC) or an ISO 8601 time (UTC when "
        "it has no offset)."))
    confirmed_since: str | None = Field(None, max_length=64, examples=["2026-01-31"], description=(
        "Subscriptions confirmed on or after: a date (2026-01-31, the whole day, UTC) or an ISO 8601 time (UTC "
        "when it has no offset)."))
    confirmed_until: str | None = Field(None, max_length=64, examples=["2026-01-31"], description=(
        "Subscriptions confirmed up to: a date (2026-01-31, the whole day, UTC) or an ISO 8601 time (UTC when "
        "it has no offset)."))
    suppressed: Literal["exclude", "include", "only"] = Field("exclude", description=(
        "Addresses on the suppression list (bounced, complained, blocked): exclude (the default) leaves them out, "
        "include adds a column `suppressed` with the reason (empty, or null in NDJSON, for the others), only "
        "takes them alone."))


# --- readers --------------------------------------------------------------------------------------------

class ReaderSubscription(Closed):
    newsletter: str = Field(description="The newsletter's slug.")
    newsletter_name: str
    status: Status
    subscribed_at: Moment
    pending_since: Moment | None
    confirmed_at: Moment | None
    unsubscribed_at: Moment | None


class ConsentEvent(Closed):
    id: int
    action: str = Field(description="signup_requested, confirmed, unsubscribed, confirmation_resent, blocked, "
                                    "unblocked, erased …")
    newsletter: str | None = Field(description="The newsletter's slug; null for reader-wide events.")
    occurred_at: Moment
    source: str = Field(description="The channel: hosted-form, embed-form, embed-iframe, embed-script, api, "
                                    "email-link, one-click, preferences, admin …")
    page_url: str | None
    form_id: str | None
    ip_address: str | None
    user_agent: str | None
    wording: str | None = Field(description="The consent wording the reader was shown.")


class ReaderFields(Closed):
    id: int
    email: str = Field(description="erased-<id>@invalid once erased.")
    name: str | None
    created_at: Moment
    confirmation_sent_at: Moment | None
    blocked_at: Moment | None
    erased_at: Moment | None


class Reader(ReaderFields):
    subscriptions: list[ReaderSubscription]
    consent_events: list[ConsentEvent] = Field(description="Oldest first.")


class UnsubscribeRequest(Closed):
    MESSAGES = {"newsletters": 'Give the newsletters as a non-empty list of their slugs, e.g. ["daily-briefing"], '
                               "or leave the field out to unsubscribe from all."}

    newsletters: list[str] | None = Field(None, min_length=1, examples=[["daily-briefing"]],
                                          description="Slugs to unsubscribe from; leave out (or send no body) "
                                                      "for all.")

    @field_validator("newsletters")
    @classmethod
    def _known(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        find: Callable[[str], Any] = _context(info)["find_newsletter"]
        problems = [f"There is no newsletter called {slug!r}." for slug in dict.fromkeys(value) if find(slug) is None]
        if problems:
            raise PydanticCustomError("problems", "{messages}", {"messages": problems})
        return list(dict.fromkeys(value))


class UnsubscribeResult(Closed):
    unsubscribed: list[str] = Field(description="Slugs of the newsletters the reader left now (not those left "
                                                "before).")
    reader: Reader


class Email(Closed):
    """An email to the reader, without its body."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    id: int
    kind: str = Field(description="confirmation, welcome …")
    newsletters: list[str] = Field(description="The slugs of the newsletters the email is about (a confirmation "
                                               "asks for them, a welcome greets one); none for a link to the "
                                               "preferences, and none for emails queued before version 0011's "
                                               "upgrade.")
    locale: str | None = Field(description="The language it is (or was) written in; none for a welcome not sent yet "
                                           "(it goes in the reader's language) and for emails queued before version "
                                           "0011's upgrade.")
    message_id: str | None = Field(description="Given when it is first sent.")
    # Emails are rendered when they are sent, and what they said is not stored: only those queued
    # before that change (migration 0011) have these.
    sender: str | None = Field(alias="from", description="Only for emails queued before version 0011's upgrade.")
    to_address: str | None = Field(description="Only for emails queued before version 0011's upgrade; the "
                                               "others go to the reader's address when sent.")
    to_name: str | None
    subject: str | None = Field(description="Only for emails queued before version 0011's upgrade.")
    status: Literal["pending", "sent", "failed"]
    attempts: Count
    created_at: Moment
    sent_at: Moment | None
    last_error: str | None


class ReaderExport(Closed):
    """Everything stored about one reader (the GDPR right of access)."""

    format: Literal[EXPORT_FORMAT]  # type: ignore[valid-type]
    exported_at: Moment
    reader: ReaderFields
    subscriptions: list[ReaderSubscription]
    consent_events: list[ConsentEvent]
    emails: list[Email]


# --- bounces and complaints ------------------------------------------------------------------------------

class EventsOutcome(Closed):
    recorded: Count = Field(description="Events recorded now.")
    repeated: Count = Field(description="Events already recorded under the same id: nothing changed.")
    skipped: Count = Field(description="Events whose address is not an email address.")
    problems: list[str] = Field(description="Why each skipped event was skipped.")
