"""The OpenAPI 3.1 document of /api/v1, written by hand, served as JSON and as a readable page.

tests/test_api_v1.py checks that it names every /api/v1 route and runs schemathesis against the
real app with it: an answer that doesn't match its schema here fails the tests.
"""

from __future__ import annotations

import json
import re
from typing import Any

from flask import Response, current_app, jsonify, render_template
from markupsafe import Markup, escape

from ..models import SUBSCRIPTION_STATUSES
from ..privacy import EXPORT_FORMAT
from ..subscribers import MAX_PAGE
from . import blueprint

API = "/api/v1"


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "type": [schema["type"], "null"]}


def closed(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """An object with exactly these properties, all of them present unless `required` says otherwise."""
    return {"type": "object", "properties": properties,
            "required": list(properties) if required is None else required,
            "additionalProperties": False, **extra}


TEXT = {"type": "string"}
MOMENT = {"type": "string", "format": "date-time"}
MAYBE_MOMENT = nullable(MOMENT)
MAYBE_TEXT = nullable(TEXT)
COUNT = {"type": "integer", "minimum": 0}
STATUS = {"type": "string", "enum": list(SUBSCRIPTION_STATUSES)}

SCHEMAS: dict[str, Any] = {
    "Errors": closed({
        "errors": {
            "type": "object",
            "description": "Each field (or `request`, `body`) with what is wrong with it, in words a person understands.",
            "additionalProperties": {"type": "array", "items": TEXT, "minItems": 1},
            "minProperties": 1,
        },
    }, description="Every error under /api: 401, 403, 404, 405, 413, 415, 422, 429, 500."),
    "SignupRequest": closed({
        "email": {**TEXT, "description": "The reader's address; normalized as email-validator does.",
                  "examples": ["reader@example.org"]},
        "newsletters": {"type": "array", "items": TEXT, "minItems": 1,
                        "description": "Slugs of active newsletters.", "examples": [["daily-briefing"]]},
        "name": {**MAYBE_TEXT, "maxLength": 200, "description": "The reader's name, optional."},
        "page_url": {**MAYBE_TEXT, "maxLength": 2048, "description": "The page the form was on (kept as proof)."},
        "form_id": {**MAYBE_TEXT, "maxLength": 200, "description": "Which form on that page."},
        "form_token": {**MAYBE_TEXT, "maxLength": 500, "description": "The form_token of GET /forms (embed.js)."},
        "embed": {"type": ["string", "null"], "enum": ["script", None],
                  "description": "\"script\" when embed.js sends it: the fill time is checked."},
        "lang": {**MAYBE_TEXT, "maxLength": 35, "description": "Language of the answer and the email: en or uk."},
        "website": {**MAYBE_TEXT, "description": "The honeypot: leave it out or empty."},
    }, required=["email", "newsletters"]),
    "SignupAccepted": closed({"status": {"type": "string", "enum": ["pending"]}},
                             description="The same answer whether the address is new, pending or confirmed."),
    "FormSettings": closed({
        "newsletters": {"type": "array", "items": closed({
            "slug": TEXT, "name": TEXT, "description": TEXT, "author": MAYBE_TEXT})},
        "form_token": {**TEXT, "description": "Send it back as form_token with \"embed\": \"script\"."},
        "texts": {"type": "object", "additionalProperties": TEXT,
                  "description": "The form's words in the request's language, by key."},
    }),
    "Newsletter": closed({
        "slug": {**TEXT, "examples": ["daily-briefing"]},
        "name": TEXT,
        "description": TEXT,
        "author": MAYBE_TEXT,
        "active": {"type": "boolean", "description": "False once archived: it takes no new signups."},
        "created_at": MOMENT,
        "counts": closed({"pending": COUNT, "confirmed": COUNT, "unsubscribed": COUNT},
                         description="Subscriptions in each status; erased readers count, anonymously."),
    }),
    "NewsletterList": closed({"newsletters": {"type": "array", "items": ref("Newsletter")}}),
    "Subscriber": closed({
        "id": {"type": "integer", "description": "The subscription's id: the order of the list."},
        "reader_id": {"type": "integer"},
        "email": TEXT,
        "name": MAYBE_TEXT,
        "status": STATUS,
        "subscribed_at": MOMENT,
        "pending_since": MAYBE_MOMENT,
        "confirmed_at": MAYBE_MOMENT,
        "unsubscribed_at": MAYBE_MOMENT,
    }),
    "SubscriberPage": closed({
        "subscribers": {"type": "array", "items": ref("Subscriber"), "maxItems": MAX_PAGE},
        "next_cursor": {**MAYBE_TEXT, "description": "Pass it as `cursor` for the next page; null on the last page."},
    }),
    "ReaderSubscription": closed({
        "newsletter": {**TEXT, "description": "The newsletter's slug."},
        "newsletter_name": TEXT,
        "status": STATUS,
        "subscribed_at": MOMENT,
        "pending_since": MAYBE_MOMENT,
        "confirmed_at": MAYBE_MOMENT,
        "unsubscribed_at": MAYBE_MOMENT,
    }),
    "ConsentEvent": closed({
        "id": {"type": "integer"},
        "action": {**TEXT, "description": "signup_requested, confirmed, unsubscribed, confirmation_resent, blocked, "
                                          "unblocked, erased …"},
        "newsletter": {**MAYBE_TEXT, "description": "The newsletter's slug; null for reader-wide events."},
        "occurred_at": MOMENT,
        "source": {**TEXT, "description": "The channel: hosted-form, embed-form, embed-iframe, embed-script, api, "
                                          "email-link, one-click, preferences, admin …"},
        "page_url": MAYBE_TEXT,
        "form_id": MAYBE_TEXT,
        "ip_address": MAYBE_TEXT,
        "user_agent": MAYBE_TEXT,
        "wording": {**MAYBE_TEXT, "description": "The consent wording the reader was shown."},
    }),
}

READER_FIELDS = {
    "id": {"type": "integer"},
    "email": {**TEXT, "description": "erased-<id>@invalid once erased."},
    "name": MAYBE_TEXT,
    "created_at": MOMENT,
    "confirmation_sent_at": MAYBE_MOMENT,
    "blocked_at": MAYBE_MOMENT,
    "erased_at": MAYBE_MOMENT,
}
SCHEMAS |= {
    "ReaderFields": closed(READER_FIELDS),
    "Reader": closed({
        **READER_FIELDS,
        "subscriptions": {"type": "array", "items": ref("ReaderSubscription")},
        "consent_events": {"type": "array", "items": ref("ConsentEvent"), "description": "Oldest first."},
    }),
    "UnsubscribeRequest": closed({
        "newsletters": {"type": ["array", "null"], "items": TEXT, "minItems": 1,
                        "description": "Slugs to unsubscribe from; leave out (or send no body) for all.",
                        "examples": [["daily-briefing"]]},
    }, required=[]),
    "UnsubscribeResult": closed({
        "unsubscribed": {"type": "array", "items": TEXT,
                         "description": "Slugs of the newsletters the reader left now (not those left before)."},
        "reader": ref("Reader"),
    }),
    "Email": closed({
        "id": {"type": "integer"},
        "kind": {**TEXT, "description": "confirmation, welcome …"},
        "message_id": TEXT,
        "from": TEXT,
        "to_address": TEXT,
        "to_name": MAYBE_TEXT,
        "subject": TEXT,
        "status": {"type": "string", "enum": ["pending", "sent", "failed"]},
        "attempts": COUNT,
        "created_at": MOMENT,
        "sent_at": MAYBE_MOMENT,
        "last_error": MAYBE_TEXT,
    }, description="An email to the reader, without its body."),
    "ReaderExport": closed({
        "format": {"type": "string", "enum": [EXPORT_FORMAT]},
        "exported_at": MOMENT,
        "reader": ref("ReaderFields"),
        "subscriptions": {"type": "array", "items": ref("ReaderSubscription")},
        "consent_events": {"type": "array", "items": ref("ConsentEvent")},
        "emails": {"type": "array", "items": ref("Email")},
    }, description="Everything stored about one reader (the GDPR right of access)."),
}


EVENT_KINDS = ["hard_bounce", "soft_bounce", "complaint"]
SCHEMAS |= {
    "DeliveryEvent": closed({
        "type": {"type": "string", "enum": EVENT_KINDS,
                 "description": "hard_bounce and complaint suppress the address at once; soft_bounce after "
                                "NEWSLETTER_SOFT_BOUNCE_LIMIT of them within NEWSLETTER_SOFT_BOUNCE_WINDOW."},
        "email": {**TEXT, "maxLength": 400, "description": "The address that bounced or complained.",
                  "examples": ["reader@example.org"]},
        "occurred_at": {**MAYBE_MOMENT, "description": "When it happened (ISO 8601; UTC without an offset). "
                                                        "Default: now."},
        "diagnostic": {**MAYBE_TEXT, "maxLength": 2000,
                       "description": "The receiving server's words, e.g. `550 5.1.1 user unknown`."},
        "id": {**MAYBE_TEXT, "maxLength": 200,
               "description": "Your id of the event: an event sent again with the same id is recorded once."},
    }, required=["type", "email"]),
    "DeliveryEvents": closed({
        "events": {"type": "array", "items": ref("DeliveryEvent"), "minItems": 1, "maxItems": 1000},
    }),
    "EventsOutcome": closed({
        "recorded": {**COUNT, "description": "Events recorded now."},
        "repeated": {**COUNT, "description": "Events already recorded under the same id: nothing changed."},
        "skipped": {**COUNT, "description": "Events whose address is not an email address."},
        "problems": {"type": "array", "items": TEXT, "description": "Why each skipped event was skipped."},
    }),
}


def _json(schema_name: str) -> dict[str, Any]:
    return {"application/json": {"schema": ref(schema_name)}}


def _ok(description: str, schema_name: str) -> dict[str, Any]:
    return {"description": description, "content": _json(schema_name)}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": _json("Errors")}


UNAUTHORIZED = {**_error("No valid token: missing, malformed, unknown or revoked."),
                "headers": {"WWW-Authenticate": {"schema": TEXT, "description": "Bearer realm=\"newsletter\""}}}
FORBIDDEN = _error("The token's role is `viewer`: it can read and export, not change anything.")
OTHER_ERRORS = _error("Any other error, in the same shape.")


def _read(responses: dict[str, Any]) -> dict[str, Any]:
    return {**responses, "401": UNAUTHORIZED, "default": OTHER_ERRORS}


def _change(responses: dict[str, Any]) -> dict[str, Any]:
    return {**responses, "401": UNAUTHORIZED, "403": FORBIDDEN, "default": OTHER_ERRORS}


SLUG_PARAMETER = {"name": "slug", "in": "path", "required": True, "description": "The newsletter's slug.",
                  "schema": {"type": "string", "pattern": "^[a-z0-9-]+$", "maxLength": 64},
                  "example": "daily-briefing"}
READER_PARAMETER = {"name": "reader", "in": "path", "required": True,
                    "description": "The reader's id, or their email address.",
                    # A slash would make it another URL; "." and ".." are no names.
                    "schema": {"type": "string", "minLength": 1, "maxLength": 320, "pattern": "^[^/]+$",
                               "not": {"enum": [".", ".."]}},
                    "example": "1"}
NO_NEWSLETTER = _error("No newsletter has this slug.")
NO_READER = _error("No reader has this id or address.")


def _export(fmt: str, media_type: str) -> dict[str, Any]:
    return {"get": {
        "operationId": f"export_subscribers_{fmt}",
        "tags": ["Exports"],
        "summary": f"Export a newsletter's subscribers as {fmt.upper()}",
        "description": (
            "The same streamed export as the admin's download: every matching subscription, with the columns "
            "email, name, status, subscribed_at, confirmed_at and source; erased readers are left out, and so "
            "are suppressed addresses unless `suppressed` says otherwise. "
            + ("Cells a spreadsheet would run as a formula start with a '. " if fmt == "csv" else
               "One JSON object per line. ")
            + "Each export is recorded (which token, when, which filters, how many rows)."),
        "parameters": [
            SLUG_PARAMETER,
            {"name": "status", "in": "query", "required": False, "style": "form", "explode": True,
             "description": "Only these statuses: repeat the parameter, or separate them with commas.",
             "schema": {"type": "array", "items": STATUS}},
            *[{"name": name, "in": "query", "required": False,
               "description": f"Subscriptions {what} {side}: a date (2026-01-31, the whole day, UTC) or an ISO "
                              "8601 time (UTC when it has no offset).",
               "schema": {"type": "string", "maxLength": 64}, "example": "2026-01-31"}
              for name, what, side in (("signed_up_since", "signed up", "on or after"),
                                       ("signed_up_until", "signed up", "up to"),
                                       ("confirmed_since", "confirmed", "on or after"),
                                       ("confirmed_until", "confirmed", "up to"))],
            {"name": "suppressed", "in": "query", "required": False,
             "description": "Addresses on the suppression list (bounced, complained, blocked): exclude (the "
                            "default) leaves them out, include adds a column `suppressed` with the reason (empty, "
                            "or null in NDJSON, for the others), only takes them alone.",
             "schema": {"type": "string", "enum": ["exclude", "include", "only"], "default": "exclude"}},
        ],
        "responses": _read({
            "200": {"description": "The rows, streamed.", "content": {media_type: {"schema": TEXT}},
                    "headers": {"Content-Disposition": {"schema": TEXT, "description": "attachment; filename=…"}}},
            "404": NO_NEWSLETTER,
            "422": _error("A filter is malformed: each is named with what is wrong."),
        }),
    }}


PATHS: dict[str, Any] = {
    f"{API}/subscriptions": {"post": {
        "operationId": "create_subscription",
        "tags": ["Signup"],
        "summary": "Sign a reader up (double opt-in)",
        "description": (
            "Records pending subscriptions and queues one confirmation email. Public: no token. The answer is "
            "the same for a new, a pending and a confirmed address. Rate-limited per client IP and per address "
            "(429 with Retry-After). Browsers may call it from the sites in NEWSLETTER_ALLOWED_ORIGINS."),
        "security": [],
        "requestBody": {"required": True, "content": _json("SignupRequest")},
        "responses": {
            "202": _ok("Taken (or silently dropped, for bots).", "SignupAccepted"),
            "403": _error("Sent by a page on a site that may not embed the forms."),
            "413": _error("The body is too large."),
            "415": _error("The body is not sent as application/json."),
            "422": _error("Each field's problems: email, newsletters, name …"),
            "429": {**_error("Too many signups from this IP or for this address."),
                    "headers": {"Retry-After": {"schema": TEXT}}},
            "default": OTHER_ERRORS,
        },
    }},
    f"{API}/forms": {"get": {
        "operationId": "form_settings",
        "tags": ["Signup"],
        "summary": "What embed.js needs to draw a form",
        "security": [],
        "parameters": [{"name": "newsletters", "in": "query", "required": True,
                        "description": "Comma-separated slugs of active newsletters.",
                        "schema": {"type": "string"}, "example": "daily-briefing,weekly-explainer"},
                       {"name": "lang", "in": "query", "required": False, "description": "en or uk.",
                        "schema": {"type": "string"}, "example": "uk"}],
        "responses": {
            "200": _ok("The newsletters, a fill-time token and the form's texts.", "FormSettings"),
            "422": _error("A slug names no active newsletter, or none was given."),
            "default": OTHER_ERRORS,
        },
    }},
    f"{API}/newsletters": {"get": {
        "operationId": "list_newsletters",
        "tags": ["Lists"],
        "summary": "Every newsletter with its counts",
        "responses": _read({"200": _ok("Newsletters by slug, archived ones included.", "NewsletterList")}),
    }},
    f"{API}/newsletters/{{slug}}/subscribers": {"get": {
        "operationId": "list_subscribers",
        "tags": ["Lists"],
        "summary": "A newsletter's subscribers, page by page",
        "description": (
            "Ordered by subscription id. Follow `next_cursor` until it is null to get every row exactly once, "
            "even while readers sign up. Erased readers are left out."),
        "parameters": [
            SLUG_PARAMETER,
            {"name": "status", "in": "query", "required": False, "schema": STATUS,
             "description": "Only subscriptions in this status."},
            {"name": "q", "in": "query", "required": False, "schema": {"type": "string", "maxLength": 320},
             "description": "A fragment of the email address or name, any case."},
            {"name": "limit", "in": "query", "required": False,
             "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": 100},
             "description": f"Rows per page, 1 to {MAX_PAGE}."},
            {"name": "cursor", "in": "query", "required": False, "schema": {"type": "string"},
             "description": "The `next_cursor` of the previous page; leave out for the first page."},
        ],
        "responses": _read({
            "200": _ok("One page.", "SubscriberPage"),
            "404": NO_NEWSLETTER,
            "422": _error("status, q, limit or cursor is not acceptable: each is named."),
        }),
    }},
    f"{API}/newsletters/{{slug}}/subscribers.csv": _export("csv", "text/csv"),
    f"{API}/newsletters/{{slug}}/subscribers.ndjson": _export("ndjson", "application/x-ndjson"),
    f"{API}/readers/{{reader}}": {
        "get": {
            "operationId": "get_reader",
            "tags": ["Readers"],
            "summary": "A reader with their subscriptions and consent history",
            "parameters": [READER_PARAMETER],
            "responses": _read({"200": _ok("The reader.", "Reader"), "404": NO_READER}),
        },
        "delete": {
            "operationId": "erase_reader",
            "tags": ["Readers"],
            "summary": "Erase a reader (the GDPR right to erasure)",
            "description": (
                "Removes the address and personal fields everywhere: the email becomes erased-<id>@invalid, the "
                "name goes, consent events lose page URL, IP and user agent (their actions and times stay, for "
                "anonymous counts), emails lose address and bodies and unsent ones are cancelled. Every "
                "subscription ends. The reader's links stop working; a new signup later makes a new reader. "
                "Needs an admin token. Erasing again changes nothing."),
            "parameters": [READER_PARAMETER],
            "responses": _change({"200": _ok("What is left of the reader.", "Reader"), "404": NO_READER}),
        },
    },
    f"{API}/readers/{{reader}}/unsubscribe": {"post": {
        "operationId": "unsubscribe_reader",
        "tags": ["Readers"],
        "summary": "Unsubscribe a reader from some newsletters, or all",
        "description": "Recorded as a consent event with source `api`. Needs an admin token.",
        "parameters": [READER_PARAMETER],
        "requestBody": {"required": False, "content": _json("UnsubscribeRequest")},
        "responses": _change({
            "200": _ok("What changed, and the reader now.", "UnsubscribeResult"),
            "404": NO_READER,
            "415": _error("A body was sent, not as application/json."),
            "422": _error("The body is not an object with a list of known slugs."),
        }),
    }},
    f"{API}/readers/{{reader}}/export": {"get": {
        "operationId": "export_reader",
        "tags": ["Readers"],
        "summary": "Everything stored about a reader (the GDPR right of access)",
        "parameters": [READER_PARAMETER],
        "responses": _read({"200": _ok("The reader's data.", "ReaderExport"), "404": NO_READER}),
    }},
    f"{API}/events/generic": {"post": {
        "operationId": "generic_events",
        "tags": ["Bounces and complaints"],
        "summary": "Report bounces and complaints (the generic shape)",
        "description": (
            "For a sending platform without its own endpoint, or a script of yours. Needs an admin token. "
            "Every event is checked first: a malformed one refuses the whole batch (422 naming it), nothing "
            "recorded; an event whose address is not an email address is skipped. Answers 200 once the "
            "events are stored, 503 with Retry-After while the database is out of reach: send it again."),
        "requestBody": {"required": True, "content": _json("DeliveryEvents")},
        "responses": _change({
            "200": _ok("Stored.", "EventsOutcome"),
            "413": _error("The body is larger than NEWSLETTER_EVENTS_MAX_BODY_BYTES."),
            "415": _error("The body is not sent as application/json."),
            "422": _error("The body or an event is malformed: each is named, e.g. `events[2].type`."),
        }),
    }},
    f"{API}/events/{{provider}}": {"post": {
        "operationId": "provider_events",
        "tags": ["Bounces and complaints"],
        "summary": "A sending platform's bounce and complaint webhook",
        "description": (
            "The URL to give the platform: `ses` (Amazon SES through an SNS https subscription; the SNS "
            "signature is checked and the subscription confirmed), `postmark` (HTTP basic auth in the URL), "
            "`sendgrid` (Signed Event Webhook) or `mailgun` (signed webhooks). Each takes the platform's own "
            "body and authentication, not a token: see the README. A platform whose secret is not set answers "
            "404. Deliveries, opens, clicks and other events are accepted and ignored. Answers 200 once the "
            "events are stored; 503 with Retry-After while the database is out of reach, which the platforms "
            "retry."),
        "security": [],
        "parameters": [{"name": "provider", "in": "path", "required": True,
                        "description": "The sending platform.",
                        "schema": {"type": "string", "enum": ["ses", "postmark", "sendgrid", "mailgun"]},
                        "example": "postmark"}],
        "requestBody": {"required": True, "description": "The platform's own webhook body.",
                        "content": {"application/json": {"schema": {}}, "text/plain": {"schema": TEXT}}},
        "responses": {
            "200": _ok("Stored (or nothing to store).", "EventsOutcome"),
            "401": _error("Missing or wrong credentials or signature: nothing recorded."),
            "403": _error("Authentic but refused: a replay, a stale signature, an SNS topic not listed, a "
                          "certificate URL not on an SNS host."),
            "404": _error("No such platform, or it is not configured here (its secret is not set)."),
            "413": _error("The body is larger than NEWSLETTER_EVENTS_MAX_BODY_BYTES."),
            "422": _error("The body is not what the platform sends."),
            "503": {**_error("The database (or Amazon SNS, for its certificate) is out of reach: nothing was "
                             "recorded, send it again."), "headers": {"Retry-After": {"schema": TEXT}}},
            "default": OTHER_ERRORS,
        },
    }},
}

SECURITY_SCHEMES = {"bearerAuth": {
    "type": "http",
    "scheme": "bearer",
    "description": ("An API token from the admin (API tokens) or `newsletter tokens create --name NAME`, sent as "
                    "`Authorization: Bearer nlt_…`. `viewer` tokens read and export; `admin` tokens also change."),
}}


def document() -> dict[str, Any]:
    """The OpenAPI document, with this installation's public URL as its server."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Newsletter signups API",
            "version": "1",
            "description": (
                "Sign readers up with double opt-in, read the lists and their counts, export them, and act on "
                "readers' rights (access, erasure). Errors are always JSON: "
                "`{\"errors\": {\"field\": [\"message\", …]}}`."),
        },
        "servers": [{"url": current_app.config["NEWSLETTER_PUBLIC_URL"]}],
        "security": [{"bearerAuth": []}],
        "tags": [
            {"name": "Signup", "description": "Public: what signup forms call."},
            {"name": "Lists", "description": "Newsletters and their subscribers (any token)."},
            {"name": "Exports", "description": "Streamed list downloads (any token)."},
            {"name": "Readers", "description": "One reader: look up, unsubscribe, export, erase."},
            {"name": "Bounces and complaints", "description": "What the sending platform reports back."},
        ],
        "paths": PATHS,
        "components": {"schemas": SCHEMAS, "securitySchemes": SECURITY_SCHEMES},
    }


@blueprint.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI document (public: it describes the API, it holds no data)."""
    return jsonify(document())


def _type_of(schema: dict[str, Any]) -> str:
    """A schema in a few words, for the docs page: `array of Subscriber`, `string or null`…"""
    if "$ref" in schema:
        return schema["$ref"].rpartition("/")[2]
    kind = schema.get("type", "any")
    kinds = kind if isinstance(kind, list) else [kind]
    words = []
    for each in kinds:
        if each == "array":
            words.append(f"array of {_type_of(schema.get('items', {}))}")
        elif each == "null":
            continue
        elif "enum" in schema:
            words.append(" | ".join(json.dumps(value) for value in schema["enum"] if value is not None))
        elif each == "string" and "format" in schema:
            words.append(f"string ({schema['format']})")
        elif each == "object" and "additionalProperties" in schema and not schema.get("properties"):
            words.append(f"object of {_type_of(schema['additionalProperties'])}")
        else:
            words.append(each)
    if "null" in kinds:
        words.append("null")
    return " or ".join(words)


def prose(text: str | None) -> Markup:
    """A description as HTML: escaped, with `backticks` shown as code (the only markup the document uses)."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text or ""))))


@blueprint.get("/docs")
def docs() -> str:
    """The document as a page people read: every operation, its parameters, answers and schemas."""
    spec = document()
    operations = [(path, method, operation) for path, item in spec["paths"].items()
                  for method, operation in item.items()]
    return render_template("api/docs.html", spec=spec, operations=operations, type_of=_type_of,
                           example=json.dumps, prose=prose)
