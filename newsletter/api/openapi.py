"""The OpenAPI 3.1 document of /api/v1, made by spectree from the views and their pydantic models.

Served as JSON (GET /api/v1/openapi.json) and as a page people read (GET /api/v1/docs).
tests/test_api_v1.py checks that every /api/v1 route is in it with its models' schemas, and runs
schemathesis against the real app with it: an answer that doesn't match its model fails the tests.

Nothing here describes a body by hand. spectree reads the Flask routes, the view's docstring (first
paragraph: the summary; the rest: the description) and the models given to `described`; this
module adds only what a model can't say: who may call (`access`), the path parameters' meaning,
headers of some answers, the answers that aren't JSON, the security scheme and the webhooks.

To add an endpoint:

1. Describe its query, body and answers as pydantic models (`schemas.Closed`, or `schemas.Query`
   for a query string), in api/schemas.py or in the feature's own api/<feature>_schemas.py.
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
from collections.abc import Callable, Mapping
from typing import Any, Literal

from flask import Response, current_app, jsonify, render_template
from markupsafe import Markup, escape
from pydantic import BaseModel
from spectree import SpecTree
from spectree import Response as Answers
from spectree.plugins.flask_plugin import FlaskPlugin

from . import blueprint
from .schemas import Errors

Access = Literal["public", "read", "change"]

TAGS = [
    {"name": "Signup", "description": "Public: what signup forms call."},
    {"name": "Lists", "description": "Newsletters and their subscribers (any token)."},
    {"name": "Exports", "description": "Streamed list downloads (any token)."},
    {"name": "Readers", "description": "One reader: look up, unsubscribe, export, erase."},
    {"name": "Bounces and complaints", "description": "What the sending platform reports back."},
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


class _DescribeOnly(FlaskPlugin):
    """spectree's Flask plugin without its request checks: the views parse with the same models
    (schemas.parse), which keeps the API's own messages, status codes (415, 413…) and streamed answers."""

    def validate(self, func: Callable, *models_and_hooks: Any, **kwargs: Any) -> Any:
        # spectree passes the view's models and hooks first (12 of them), then the view's own arguments.
        return func(*models_and_hooks[11:], **kwargs)


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


def described(*, tag: str, access: Access, answers: Mapping[int, Any], json: type[BaseModel] | None = None,
              query: type[BaseModel] | None = None, body_required: bool = True,
              extra: dict[str, Any] | None = None) -> Callable[[Callable], Callable]:
    """Put the view in the OpenAPI document with these models; see the module's docstring."""
    codes: dict[str, Any] = {}
    for status, answer in {**STANDARD_ERRORS[access], **answers}.items():
        if isinstance(answer, str):
            answer = (Errors, answer)
        codes[f"HTTP_{status}"] = answer

    def decorate(view: Callable) -> Callable:
        operation_id = view.__name__
        _EXTRAS[operation_id] = {
            "answers": {str(status) for status in {**STANDARD_ERRORS[access], **answers}},
            "public": access == "public",
            "body_required": body_required,
            "extra": extra or {},
        }
        return spec.validate(json=json, query=query, resp=Answers(**codes), tags=[tag], operation_id=operation_id,
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


def document() -> dict[str, Any]:
    """The OpenAPI document, with this installation's public URL as its server."""
    # spectree keeps its first document; the routes are the same for every app, but tests add some.
    spec.__dict__.pop("_spec", None)
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
    generated["components"]["securitySchemes"] = SECURITY_SCHEMES
    generated["components"]["schemas"] = dict(sorted(generated["components"]["schemas"].items()))
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
