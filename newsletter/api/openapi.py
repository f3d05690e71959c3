"""The OpenAPI 3.1 document of /api/v1, made by spectree from the views and their pydantic models.

Served as JSON (GET /api/v1/openapi.json) and as a page people read (GET /api/v1/docs).
tests/test_api_v1.py checks that every /api/v1 route is in it with its models' schemas, and runs
schemathesis against the real app with it: an answer that doesn't match its model fails the tests.

Nothing here describes a body by hand. spectree reads the Flask routes, the view's docstring (first
paragraph: the summary; the rest: the description) and the models given to `described`; this
module adds only what a model can't say: who may call (`access`), the path parameters' meaning,
headers of some answers, the answers that aren't JSON, the security scheme, and the `webhooks`
section around the changes feed's event model (change_schemas.ChangeEvent). spectree only
describes here: the views check their input themselves with the same models (`schemas.parse`), so
that the API keeps its own messages and status codes.

To add an endpoint:

1. Describe its query, body and answers as pydantic models, in api/schemas.py or in the feature's
   own api/<feature>_schemas.py: `schemas.Closed` for bodies and answers (no other fields: an answer
   with one more fails schemathesis), `schemas.Query` for a query string. Their errors come out in
   the API's words through `schemas.parse` (MESSAGES, or a validator raising `schemas.problem`).
2. Decorate the view, under the route and above `token_required`, and parse with the same models:

       @blueprint.post("/things/<slug>")
       @described(tag="Things", access="change", json=ThingRequest,
                  answers={201: (Thing, "The new thing."), 404: "No thing has this slug.",
                           422: "Each field's problems."})
       @token_required(change=True)
       def create_thing(slug: str) -> tuple[Response, int]:
           \"""Make a thing.

           Longer description, with `code` in backticks.
           \"""
           request_body = parse(ThingRequest, _body())   # FieldErrors -> 422 {"errors": …}

   An answer given as a string is an error ({"errors": …}) with that meaning; 401, 403 and the
   default error come with `access`. A new path parameter name goes in PATH_PARAMETERS once.
3. A new tag goes in TAGS. Run tests/test_api_v1.py: it fails for a route left out of the document
   and for an answer that doesn't match its model.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, get_args

from flask import Response, current_app, jsonify, render_template
from markupsafe import Markup, escape
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema
from spectree import SpecTree
from spectree import Response as Answers
from spectree.plugins.flask_plugin import FlaskPlugin

from ..models import MAX_ID
from . import blueprint
from .change_schemas import ChangeEvent, EventType
from .schemas import Errors

Access = Literal["public", "read", "change"]

TAGS = [
    {"name": "Signup", "description": "Public: what signup forms call."},
    {"name": "Lists", "description": "Newsletters and their subscribers (any token)."},
    {"name": "Exports", "description": "Streamed list downloads (any token)."},
    {"name": "Readers", "description": "One reader: look up, unsubscribe, export, erase."},
    {"name": "Bounces and complaints", "description": "What the sending platform reports back."},
    {"name": "Changes", "description": "Every subscription change, oldest first, from a cursor (any token)."},
    {"name": "Webhook endpoints", "description": "Where the webhooks go, and their delivery log (admin token)."},
]

SECURITY_SCHEMES = {"bearerAuth": {
    "type": "http",
    "scheme": "bearer",
    "description": ("An API token from the admin (API tokens) or `newsletter tokens create --name NAME`, sent as "
                    "`Authorization: Bearer nlt_…`. `viewer` tokens read and export; `admin` tokens also change."),
}}

# Path parameters by name: what the URL's part means and which values make a URL at all.
PATH_PARAMETERS: dict[str, dict[str, Any]] = {
    "slug": {"description": "The newsletter's slug.", "example": "daily-briefing",
             "schema": {"type": "string", "pattern": "^[a-z0-9-]+$", "maxLength": 64}},
    "reader": {"description": "The reader's id, or their email address.", "example": "1",
               # A slash would make it another URL; "." and ".." are no names.
               "schema": {"type": "string", "minLength": 1, "maxLength": 320, "pattern": "^[^/]+$",
                          "not": {"enum": [".", ".."]}}},
    # /api/v1/webhooks (<id:…>: a positive id that fits the id columns).
    "endpoint_id": {"description": "The webhook endpoint's id.", "example": 1,
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}},
    "delivery_id": {"description": "The delivery's id, from the endpoint's delivery log.", "example": 1,
                    "schema": {"type": "integer", "minimum": 1, "maximum": MAX_ID}},
    "provider": {"description": "The sending platform.", "example": "postmark",
                 "schema": {"type": "string", "enum": ["ses", "postmark", "sendgrid", "mailgun"]}},
}

TEXT = {"type": "string"}
ERROR_ANSWER_HEADERS = {
    "401": {"WWW-Authenticate": {"schema": TEXT, "description": "Bearer realm=\"newsletter\""}},
    "429": {"Retry-After": {"schema": TEXT}},
    "503": {"Retry-After": {"schema": TEXT}},
}
STANDARD_ERRORS: dict[Access, dict[int, str]] = {
    "public": {},
    "read": {401: "No valid token: missing, malformed, unknown or revoked."},
    "change": {401: "No valid token: missing, malformed, unknown or revoked.",
               403: "The token's role is `viewer`: it can read and export, not change anything."},
}
OTHER_ERRORS = "Any other error, in the same shape."

WEBHOOK_SUMMARIES = {
    "subscription.pending": "A reader signed up and was asked to confirm",
    "subscription.confirmed": "A reader confirmed a subscription: mail them from now on",
    "subscription.unsubscribed": "A reader left a newsletter: stop mailing them",
    "reader.erased": "A reader was erased: forget them (their address and name are null)",
    "reader.suppressed": "A reader's address stopped taking mail (a bounce, a complaint, a block)",
    "reader.unsuppressed": "A reader's suppression was lifted (an admin lifted it, or unblocked them): mail may go again",
}
WEBHOOK_HEADERS = [
    {"name": "webhook-id", "in": "header", "required": True, "schema": {"type": "string"}, "example": "evt_42",
     "description": "The event's id: the same in every attempt to deliver it. Apply each id once."},
    {"name": "webhook-timestamp", "in": "header", "required": True, "schema": {"type": "string", "pattern": "^[0-9]+$"},
     "example": "1796203200",
     "description": "When this attempt was signed, in seconds since 1970 (UTC). Refuse one far from your clock."},
    {"name": "webhook-signature", "in": "header", "required": True, "schema": {"type": "string"},
     "example": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
     "description": ("Space-separated `v1,<base64 HMAC-SHA256>` signatures of "
                     "`<webhook-id>.<webhook-timestamp>.<body>` with the endpoint's secret (two while a rotated "
                     "secret overlaps). Verify it with any Standard Webhooks library, e.g. Python's "
                     "`standardwebhooks.Webhook(secret).verify(body, headers)`.")},
]
WEBHOOK_ANSWERS = {
    "2XX": {"description": "Delivered: any 2xx answer, within the timeout. Redirects are not followed."},
    "default": {"description": ("Not delivered: sent again with exponential backoff for up to three days (the "
                                "events of one reader stay in order), then the endpoint is switched off.")},
}


class _DescribeOnly(FlaskPlugin):
    """spectree's Flask plugin without its request checks: the views parse with the same models
    (schemas.parse), which keeps the API's own messages, status codes (415, 413…) and streamed answers."""

    def validate(self, func: Callable, query: Any, json: Any, form: Any, headers: Any, cookies: Any, resp: Any,
                 before: Any, after: Any, validation_error_status: int, skip_validation: bool,
                 force_resp_serialize: bool, *args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)


spec = SpecTree(
    "flask", backend=_DescribeOnly, mode="strict", annotations=False,
    title="Newsletter signups API", version="1",
    description=("Sign readers up with double opt-in, read the lists and their counts, export them, and act on "
                 "readers' rights (access, erasure). Errors are always JSON: "
                 "`{\"errors\": {\"field\": [\"message\", …]}}`."),
    naming_strategy=lambda model: model.__name__, nested_naming_strategy=lambda _parent, child: child,
    validation_error_model=Errors,
)

# What `described` knows that spectree's decorator doesn't, by operation id.
_EXTRAS: dict[str, dict[str, Any]] = {}
# The models each operation was described with, by operation id (tests/test_api_v1.py compares them with the document).
MODELS: dict[str, dict[str, Any]] = {}


def described(*, tag: str, access: Access, answers: Mapping[int, Any], json: type[BaseModel] | None = None,
              query: type[BaseModel] | None = None, body_required: bool = True,
              extra: dict[str, Any] | None = None) -> Callable[[Callable], Callable]:
    """Put the view in the OpenAPI document with these models; see the module's docstring."""
    # Each answer as (model or None, meaning); a bare string is an error with that meaning.
    codes = {status: (Errors, answer) if isinstance(answer, str) else answer if isinstance(answer, tuple)
             else (answer, None) for status, answer in {**STANDARD_ERRORS[access], **answers}.items()}

    def decorate(view: Callable) -> Callable:
        operation_id = view.__name__
        assert operation_id not in MODELS, f"Two API views are called {operation_id}: the operation ids would clash."
        MODELS[operation_id] = {"json": json, "query": query, "answers": {
            str(status): model for status, (model, _meaning) in codes.items() if model is not None}}
        _EXTRAS[operation_id] = {
            "answers": {str(status) for status in codes},
            "public": access == "public",
            "body_required": body_required,
            "extra": extra or {},
        }
        described_answers = Answers(**{f"HTTP_{status}": (model, meaning) if meaning else model
                                       for status, (model, meaning) in codes.items()})
        return spec.validate(json=json, query=query, resp=described_answers, tags=[tag], operation_id=operation_id,
                             security={} if access == "public" else None, skip_validation=True)(view)

    return decorate


def _merge(into: dict[str, Any], extra: Mapping[str, Any]) -> None:
    for key, value in extra.items():
        if isinstance(value, Mapping) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = copy.deepcopy(value)


def _finish(operation: dict[str, Any]) -> None:
    """Add to spectree's operation what `described` knows beyond the models."""
    extras = _EXTRAS[operation["operationId"]]
    operation["parameters"] = [
        {**parameter, **PATH_PARAMETERS.get(parameter["name"], {})} if parameter["in"] == "path" else parameter
        for parameter in operation["parameters"]]
    for parameter in operation["parameters"]:
        if parameter.get("schema") is None:  # spectree knows werkzeug's converters, not ours (e.g. <id:…>)
            raise LookupError(f"Describe the path parameter {parameter['name']!r} in openapi.PATH_PARAMETERS.")
        if not parameter.get("description"):
            parameter.pop("description", None)
    if not operation.get("description"):
        operation.pop("description", None)
    responses = operation["responses"]
    # spectree adds a 422 for its own request checks to every operation; ours say when they answer 422.
    for status in set(responses) - extras["answers"]:
        del responses[status]
    for status, headers in ERROR_ANSWER_HEADERS.items():
        if status in responses:
            responses[status]["headers"] = copy.deepcopy(headers)
    responses["default"] = {"description": OTHER_ERRORS,
                            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Errors"}}}}
    if extras["public"]:
        operation["security"] = []
    if "requestBody" in operation:
        operation["requestBody"]["required"] = extras["body_required"]
    _merge(operation, extras["extra"])


def webhooks(event: type[BaseModel], types: Iterable[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The document's `webhooks` (one per event type, each body an `event`) and the schemas they name."""
    _, definitions = models_json_schema([(event, "serialization")], ref_template="#/components/schemas/{model}")
    described_webhooks = {}
    for kind in types:
        described_webhooks[kind] = {"post": {
            "operationId": "webhook_" + re.sub(r"\W", "_", kind),
            "tags": ["Webhooks"],
            "summary": WEBHOOK_SUMMARIES.get(kind, kind),
            "description": (f"POSTed as JSON to every active endpoint that wants `{kind}` (or every event), signed "
                            "as the Standard Webhooks specification says."),
            "security": [],
            "parameters": copy.deepcopy(WEBHOOK_HEADERS),
            "requestBody": {"required": True, "content": {"application/json": {"schema": {"allOf": [
                {"$ref": f"#/components/schemas/{event.__name__}"},
                {"properties": {"type": {"const": kind}}},
            ]}}}},
            "responses": copy.deepcopy(WEBHOOK_ANSWERS),
        }}
    return described_webhooks, definitions.get("$defs", {})


def document() -> dict[str, Any]:
    """The OpenAPI document, with this installation's public URL as its server."""
    # spectree makes its document once, from the first app's routes: every app has the same API.
    generated = copy.deepcopy(spec.spec)
    for item in generated["paths"].values():
        for operation in item.values():
            _finish(operation)
    used = {tag for item in generated["paths"].values() for operation in item.values() for tag in operation["tags"]}
    generated |= {
        "openapi": "3.1.0",
        "servers": [{"url": current_app.config["NEWSLETTER_PUBLIC_URL"]}],
        "security": [{"bearerAuth": []}],
        "tags": [tag for tag in TAGS if tag["name"] in used] + [
            {"name": name} for name in sorted(used - {tag["name"] for tag in TAGS})],
    }
    generated["webhooks"], event_schemas = webhooks(ChangeEvent, get_args(EventType))
    generated["components"]["schemas"] |= event_schemas
    generated["tags"].append({"name": "Webhooks", "description": (
        "What this service POSTs to your endpoints (set them up in the admin or under /api/v1/webhooks): "
        "each subscription change as it happens, the same events as GET /api/v1/changes.")})
    generated["components"]["securitySchemes"] = SECURITY_SCHEMES
    # Query models are in the parameters, one by one; the schemas are what bodies and answers name.
    schemas = generated["components"]["schemas"]
    named, todo = set(), _refs([generated["paths"], generated["webhooks"]])
    while todo:
        name = todo.pop()
        if name not in named:
            named.add(name)
            todo += _refs(schemas[name])
    generated["components"]["schemas"] = {name: schemas[name] for name in sorted(named)}
    return generated


@blueprint.get("/openapi.json")
def openapi() -> Response:
    """The OpenAPI document (public: it describes the API, it holds no data)."""
    return jsonify(document())


def _type_of(schema: dict[str, Any]) -> str:
    """A schema in a few words, for the docs page: `array of Subscriber`, `string or null`…"""
    if "$ref" in schema:
        return schema["$ref"].rpartition("/")[2]
    if "anyOf" in schema:
        return " or ".join(_type_of(each) for each in schema["anyOf"])
    if "const" in schema:
        return json.dumps(schema["const"])
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
        elif each == "object" and isinstance(schema.get("additionalProperties"), dict) and not schema.get("properties"):
            words.append(f"object of {_type_of(schema['additionalProperties'])}")
        else:
            words.append(each)
    if "null" in kinds:
        words.append("null")
    return " or ".join(words)


def _refs(schema: Any) -> list[str]:
    """The schemas a schema names, for links on the docs page."""
    if isinstance(schema, dict):
        found = [schema["$ref"].rpartition("/")[2]] if "$ref" in schema else []
        return found + [name for value in schema.values() for name in _refs(value)]
    if isinstance(schema, list):
        return [name for value in schema for name in _refs(value)]
    return []


def prose(text: str | None) -> Markup:
    """A description as HTML: escaped, with `backticks` shown as code (the only markup the document uses)."""
    return Markup(re.sub(r"`([^`]+)`", r"<code>\1</code>", str(escape(text or ""))))


@blueprint.get("/docs")
def docs() -> str:
    """The document as a page people read: every operation, its parameters, answers and schemas."""
    spec_ = document()
    operations = [(path, method, operation) for path, item in spec_["paths"].items()
                  for method, operation in item.items()]
    webhooks = [(name, method, operation) for name, item in spec_.get("webhooks", {}).items()
                for method, operation in item.items()]
    return render_template("api/docs.html", spec=spec_, operations=operations, webhooks=webhooks, type_of=_type_of,
                           refs=_refs, example=json.dumps, prose=prose)
