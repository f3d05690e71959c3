"""The authenticated API: bearer tokens, each endpoint, cursor pagination, the OpenAPI document (checked by
schemathesis against the real app), and API token management in the admin and the CLI."""

from __future__ import annotations

import re
import typing
from datetime import timedelta

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import response_schema_conformance

from newsletter import accounts, api_tokens, privacy, tokens
from newsletter.api import change_schemas, openapi
from newsletter.extensions import db
from newsletter.models import Reader, Subscription, utcnow

from .conftest import hidden_fields, query
from .test_admin_auth import PASSWORD, log_in

PAGE = "https://example-news.org/2026/11/article"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) TestBrowser/1.0"


# --- helpers ----------------------------------------------------------------------------------------

def make_token(app, role: str = "admin", name: str = "test client") -> str:
    with app.app_context():
        _, secret = api_tokens.create_token(db.session, name, role)
        db.session.commit()
        db.session.remove()
    return secret


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def admin_token(app) -> str:
    return make_token(app, "admin", "admin client")


@pytest.fixture
def viewer_token(app) -> str:
    return make_token(app, "viewer", "viewer client")


def newsletter_ids(app, *slugs: str) -> list[int]:
    rows = dict(query(app, "SELECT slug, id FROM newsletters"))
    return [rows[slug] for slug in slugs]


def sign_up(app, client, email: str, slugs: tuple[str, ...] = ("daily-briefing",), *, confirm: bool = True,
            name: str | None = None) -> int:
    """A reader signed up through the JSON API (and confirmed through the email's link); their id."""
    body = {"email": email, "newsletters": list(slugs), "page_url": PAGE, "form_id": "box-1"}
    if name:
        body["name"] = name
    answer = client.post("/api/v1/subscriptions", json=body, headers={"User-Agent": BROWSER})
    assert answer.status_code == 202, answer.get_data(as_text=True)
    [(reader_id,)] = query(app, "SELECT id FROM readers WHERE lower(email) = lower(:email)", email=email)
    if confirm:
        with app.test_request_context():
            token = tokens.confirm_token(reader_id, newsletter_ids(app, *slugs))
        page = client.get(f"/confirm/{token}")
        done = client.post(f"/confirm/{token}", data=hidden_fields(page.get_data(as_text=True)),
                           headers={"User-Agent": BROWSER})
        assert done.status_code == 200
    return reader_id


def bulk_subscribers(app, slug: str, count: int, status: str = "confirmed", prefix: str = "bulk") -> None:
    """`count` readers subscribed to `slug` in `status`, written straight to the database."""
    [newsletter_id] = newsletter_ids(app, slug)
    now = utcnow()
    with app.app_context():
        for number in range(count):
            reader = Reader(email=f"{prefix}{number:05d}@example.org", created_at=now)
            db.session.add(reader)
            db.session.flush()
            db.session.add(Subscription(reader_id=reader.id, newsletter_id=newsletter_id, status=status,
                                        created_at=now, pending_since=now,
                                        confirmed_at=now if status != "pending" else None,
                                        unsubscribed_at=now if status == "unsubscribed" else None))
        db.session.commit()
        db.session.remove()


def errors_of(response) -> dict[str, list[str]]:
    body = response.get_json()
    assert set(body) == {"errors"}, body
    return body["errors"]


# --- authentication ---------------------------------------------------------------------------------

AUTHENTICATED = [
    ("GET", "/api/v1/newsletters"),
    ("GET", "/api/v1/newsletters/daily-briefing/subscribers"),
    ("GET", "/api/v1/readers/1"),
    ("GET", "/api/v1/readers/1/export"),
    ("POST", "/api/v1/readers/1/unsubscribe"),
    ("DELETE", "/api/v1/readers/1"),
]


@pytest.mark.parametrize("authorization", [
    None,
    "",
    "Bearer",
    "Bearer ",
    "Bearer nlt_not-a-real-token",
    "Basic dXNlcjpwYXNz",
    "nlt_without_a_scheme",
])
@pytest.mark.parametrize("method, path", AUTHENTICATED)
def test_missing_or_malformed_token_gets_401_with_www_authenticate(app, client, method, path, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    response = client.open(path, method=method, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert "Bearer" in errors_of(response)["request"][0]


def test_token_under_another_scheme_or_revoked_gets_401(app, client, admin_token):
    assert client.get("/api/v1/newsletters", headers=bearer(admin_token)).status_code == 200
    assert client.get("/api/v1/newsletters", headers={"Authorization": f"Basic {admin_token}"}).status_code == 401
    # The scheme is case-insensitive (RFC 7235); extra spaces around the token are forgiven.
    assert client.get("/api/v1/newsletters", headers={"Authorization": f"bearer  {admin_token} "}).status_code == 200

    [(token_id,)] = query(app, "SELECT id FROM api_tokens")
    with app.app_context():
        api_tokens.revoke(db.session, token_id)
        db.session.commit()
    revoked = client.get("/api/v1/newsletters", headers=bearer(admin_token))
    assert revoked.status_code == 401 and revoked.headers["WWW-Authenticate"].startswith("Bearer")


def test_tokens_are_stored_hashed_and_last_use_is_recorded(app, client, admin_token):
    [(token_hash, prefix, last_used)] = query(app, "SELECT token_hash, prefix, last_used_at FROM api_tokens")
    assert admin_token not in token_hash and admin_token.startswith(prefix) and last_used is None
    before = utcnow()
    client.get("/api/v1/newsletters", headers=bearer(admin_token))
    with app.app_context():
        [token] = db.session.scalars(db.select(api_tokens.ApiToken)).all()
        assert before - timedelta(seconds=1) <= token.last_used_at <= utcnow()
        db.session.remove()
    # A failing request still counts as a use of the token.
    client.get("/api/v1/readers/nobody@example.org", headers=bearer(admin_token))
    with app.app_context():
        [token] = db.session.scalars(db.select(api_tokens.ApiToken)).all()
        assert token.last_used_at >= before
        db.session.remove()


def test_viewer_token_reads_but_cannot_change(app, client, viewer_token):
    reader_id = sign_up(app, client, "ada@example.org")
    headers = bearer(viewer_token)
    for path in ("/api/v1/newsletters", "/api/v1/newsletters/daily-briefing/subscribers",
                 f"/api/v1/readers/{reader_id}", f"/api/v1/readers/{reader_id}/export"):
        assert client.get(path, headers=headers).status_code == 200, path

    refused = client.post(f"/api/v1/readers/{reader_id}/unsubscribe", headers=headers)
    assert refused.status_code == 403 and "not change" in errors_of(refused)["request"][0]
    assert client.delete(f"/api/v1/readers/{reader_id}", headers=headers).status_code == 403
    # Nothing changed.
    assert query(app, "SELECT email, erased_at FROM readers") == [("ada@example.org", None)]
    assert query(app, "SELECT status FROM subscriptions") == [("confirmed",)]


# --- newsletters and subscribers ----------------------------------------------------------------------

def test_newsletters_with_counts(app, client, admin_token):
    sign_up(app, client, "one@example.org", ("daily-briefing", "weekly-explainer"))
    sign_up(app, client, "two@example.org", ("daily-briefing",), confirm=False)
    three = sign_up(app, client, "three@example.org", ("daily-briefing",))
    client.post(f"/api/v1/readers/{three}/unsubscribe", headers=bearer(admin_token))

    response = client.get("/api/v1/newsletters", headers=bearer(admin_token))
    assert response.status_code == 200
    listed = {item["slug"]: item for item in response.get_json()["newsletters"]}
    assert list(listed) == ["daily-briefing", "no-welcome", "weekly-explainer"]
    assert listed["daily-briefing"]["counts"] == {"pending": 1, "confirmed": 1, "unsubscribed": 1}
    assert listed["weekly-explainer"]["counts"] == {"pending": 0, "confirmed": 1, "unsubscribed": 0}
    assert listed["no-welcome"]["counts"] == {"pending": 0, "confirmed": 0, "unsubscribed": 0}
    assert listed["weekly-explainer"]["author"] == "Olena Kovalenko"
    assert listed["daily-briefing"]["active"] is True


def test_subscribers_filtered_by_status_and_search(app, client, admin_token):
    sign_up(app, client, "ada.lovelace@example.org", name="Ada Lovelace")
    sign_up(app, client, "grace@example.org", confirm=False)
    sign_up(app, client, "alan@example.net")
    headers = bearer(admin_token)

    def emails(**params):
        response = client.get("/api/v1/newsletters/daily-briefing/subscribers", query_string=params, headers=headers)
        assert response.status_code == 200, response.get_json()
        return [row["email"] for row in response.get_json()["subscribers"]]

    assert emails() == ["ada.lovelace@example.org", "grace@example.org", "alan@example.net"]
    assert emails(status="confirmed") == ["ada.lovelace@example.org", "alan@example.net"]
    assert emails(status="pending") == ["grace@example.org"]
    assert emails(status="unsubscribed") == []
    assert emails(q="EXAMPLE.ORG") == ["ada.lovelace@example.org", "grace@example.org"]
    assert emails(q="lovelace") == ["ada.lovelace@example.org"]
    assert emails(q="ADA LOVE") == ["ada.lovelace@example.org"]  # the name matches too
    assert emails(q="%") == [] and emails(q="_") == []  # LIKE wildcards are plain characters
    assert emails(q="a", status="pending") == ["grace@example.org"]

    response = client.get("/api/v1/newsletters/daily-briefing/subscribers", query_string={"q": "ada"},
                          headers=headers)
    [ada] = response.get_json()["subscribers"]
    assert ada["name"] == "Ada Lovelace" and ada["status"] == "confirmed"
    assert ada["confirmed_at"] and ada["subscribed_at"] and ada["unsubscribed_at"] is None
    assert response.get_json()["next_cursor"] is None


@pytest.mark.parametrize("params, field", [
    ({"status": "active"}, "status"),
    ({"limit": "0"}, "limit"),
    ({"limit": "501"}, "limit"),
    ({"limit": "-1"}, "limit"),
    ({"limit": "ten"}, "limit"),
    ({"limit": "1e2"}, "limit"),
    ({"cursor": "not-a-cursor"}, "cursor"),
    ({"q": "x" * 321}, "q"),
    ({"q": "a\x00b"}, "q"),
])
def test_bad_subscriber_queries_get_422_naming_the_field(app, client, admin_token, params, field):
    response = client.get("/api/v1/newsletters/daily-briefing/subscribers", query_string=params,
                          headers=bearer(admin_token))
    assert response.status_code == 422
    assert list(errors_of(response)) == [field]


def test_a_cursor_from_another_purpose_is_refused(app, client, admin_token):
    with app.test_request_context():
        preferences = tokens.preferences_token(1)
    response = client.get("/api/v1/newsletters/daily-briefing/subscribers", query_string={"cursor": preferences},
                          headers=bearer(admin_token))
    assert response.status_code == 422 and "cursor" in errors_of(response)


@pytest.mark.parametrize("slug", ["nope", "Daily-Briefing", "a%00b", "x" * 100])
def test_unknown_newsletter_is_404(app, client, admin_token, slug):
    response = client.get(f"/api/v1/newsletters/{slug}/subscribers", headers=bearer(admin_token))
    assert response.status_code == 404
    assert "newsletter" in errors_of(response)


def test_cursor_pagination_walks_every_row_exactly_once(app, client, admin_token):
    bulk_subscribers(app, "daily-briefing", 180, "confirmed", prefix="c")
    bulk_subscribers(app, "daily-briefing", 77, "pending", prefix="p")
    bulk_subscribers(app, "weekly-explainer", 20, "confirmed", prefix="w")
    expected = [row[0] for row in query(app, "SELECT s.id FROM subscriptions s JOIN newsletters n "
                                             "ON n.id = s.newsletter_id WHERE n.slug = 'daily-briefing' ORDER BY s.id")]
    assert len(expected) == 257

    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 50, **({"cursor": cursor} if cursor else {})}
        response = client.get("/api/v1/newsletters/daily-briefing/subscribers", query_string=params,
                              headers=bearer(admin_token))
        assert response.status_code == 200
        body = response.get_json()
        seen += [row["id"] for row in body["subscribers"]]
        pages += 1
        if pages == 2:
            # Readers who sign up during the walk come at the end: nothing is skipped or seen twice.
            bulk_subscribers(app, "daily-briefing", 3, "pending", prefix="late")
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert len(body["subscribers"]) == 50
    assert pages == 6
    assert seen == sorted(seen) and len(seen) == len(set(seen)) == 260
    assert seen[:257] == expected

    # The default page is 100 rows; a filter applies across pages too.
    first = client.get("/api/v1/newsletters/daily-briefing/subscribers", headers=bearer(admin_token)).get_json()
    assert len(first["subscribers"]) == 100 and first["next_cursor"]
    pending, cursor = [], None
    while True:
        params = {"status": "pending", "limit": 30, **({"cursor": cursor} if cursor else {})}
        body = client.get("/api/v1/newsletters/daily-briefing/subscribers", query_string=params,
                          headers=bearer(admin_token)).get_json()
        pending += [row["email"] for row in body["subscribers"]]
        if not (cursor := body["next_cursor"]):
            break
    assert len(pending) == 80 and all(email.startswith(("p", "late")) for email in pending)


def test_a_page_that_ends_exactly_at_the_last_row_has_no_next_cursor(app, client, admin_token):
    bulk_subscribers(app, "no-welcome", 4)
    body = client.get("/api/v1/newsletters/no-welcome/subscribers?limit=4", headers=bearer(admin_token)).get_json()
    assert len(body["subscribers"]) == 4 and body["next_cursor"] is None
    body = client.get("/api/v1/newsletters/no-welcome/subscribers?limit=3", headers=bearer(admin_token)).get_json()
    last = client.get(f"/api/v1/newsletters/no-welcome/subscribers?limit=3&cursor={body['next_cursor']}",
                      headers=bearer(admin_token)).get_json()
    assert len(last["subscribers"]) == 1 and last["next_cursor"] is None


# --- readers --------------------------------------------------------------------------------------------

def test_reader_by_id_or_address_with_subscriptions_and_history(app, client, admin_token):
    reader_id = sign_up(app, client, "Ada@Example.ORG", ("daily-briefing", "weekly-explainer"), name="Ada")
    headers = bearer(admin_token)
    by_id = client.get(f"/api/v1/readers/{reader_id}", headers=headers)
    assert by_id.status_code == 200
    reader = by_id.get_json()
    # The address is found as it was normalized at signup, however it is typed.
    for reference in ("Ada@example.org", "Ada@EXAMPLE.org", " Ada@example.org "):
        assert client.get(f"/api/v1/readers/{reference}", headers=headers).get_json() == reader
    assert reader["email"] == "Ada@example.org" and reader["name"] == "Ada" and reader["erased_at"] is None
    assert [(s["newsletter"], s["status"]) for s in reader["subscriptions"]] == [
        ("daily-briefing", "confirmed"), ("weekly-explainer", "confirmed")]
    events = [(e["action"], e["newsletter"], e["source"]) for e in reader["consent_events"]]
    assert events == [
        ("signup_requested", "daily-briefing", "api"), ("signup_requested", "weekly-explainer", "api"),
        ("confirmed", "daily-briefing", "email-link"), ("confirmed", "weekly-explainer", "email-link")]
    signup = reader["consent_events"][0]
    assert signup["page_url"] == PAGE and signup["form_id"] == "box-1" and signup["user_agent"] == BROWSER
    assert signup["ip_address"] == "127.0.0.1" and "The Daily Briefing" in signup["wording"]


@pytest.mark.parametrize("reference", ["999", "2147483648", "9" * 18, "9" * 30, "0", "-1", "nobody@example.org",
                                       "not an address", "%00", "ada%40example.org"])
def test_unknown_reader_is_404(app, client, admin_token, reference):
    for method, suffix in (("GET", ""), ("GET", "/export"), ("POST", "/unsubscribe"), ("DELETE", "")):
        response = client.open(f"/api/v1/readers/{reference}{suffix}", method=method, headers=bearer(admin_token))
        assert response.status_code == 404, (method, suffix)
        assert "reader" in errors_of(response)


def test_unsubscribe_from_some_newsletters_then_all(app, client, admin_token):
    reader_id = sign_up(app, client, "ada@example.org", ("daily-briefing", "weekly-explainer", "no-welcome"))
    headers = {**bearer(admin_token), "User-Agent": "crm-sync/2.0"}
    some = client.post(f"/api/v1/readers/{reader_id}/unsubscribe", json={"newsletters": ["weekly-explainer"]},
                       headers=headers)
    assert some.status_code == 200
    assert some.get_json()["unsubscribed"] == ["weekly-explainer"]
    states = {s["newsletter"]: s["status"] for s in some.get_json()["reader"]["subscriptions"]}
    assert states == {"daily-briefing": "confirmed", "weekly-explainer": "unsubscribed", "no-welcome": "confirmed"}

    again = client.post(f"/api/v1/readers/{reader_id}/unsubscribe", json={"newsletters": ["weekly-explainer"]},
                        headers=headers)
    assert again.status_code == 200 and again.get_json()["unsubscribed"] == []

    everything = client.post(f"/api/v1/readers/ada@example.org/unsubscribe", headers=headers)
    assert everything.status_code == 200
    assert sorted(everything.get_json()["unsubscribed"]) == ["daily-briefing", "no-welcome"]
    assert query(app, "SELECT DISTINCT status FROM subscriptions") == [("unsubscribed",)]
    events = query(app, "SELECT action, source, user_agent FROM consent_events WHERE action = 'unsubscribed'")
    assert sorted(events) == [("unsubscribed", "api", "crm-sync/2.0")] * 3
    assert query(app, "SELECT DISTINCT wording FROM consent_events WHERE action = 'unsubscribed'") == [
        (f"Unsubscribed with the API token 'admin client' ({admin_token[:12]}…)",)]

    # {"newsletters": null} and {} mean all too.
    assert client.post(f"/api/v1/readers/{reader_id}/unsubscribe", json={}, headers=headers).status_code == 200
    assert client.post(f"/api/v1/readers/{reader_id}/unsubscribe", json={"newsletters": None},
                       headers=headers).status_code == 200


@pytest.mark.parametrize("body, field", [
    ({"newsletters": ["nope"]}, "newsletters"),
    ({"newsletters": []}, "newsletters"),
    ({"newsletters": "daily-briefing"}, "newsletters"),
    ({"newsletters": [1]}, "newsletters"),
    ({"newsletters": ["daily-briefing"], "reason": "spam"}, "body"),
    ([], "body"),
    ("daily-briefing", "body"),
])
def test_bad_unsubscribe_bodies_get_422_and_change_nothing(app, client, admin_token, body, field):
    reader_id = sign_up(app, client, "ada@example.org")
    response = client.post(f"/api/v1/readers/{reader_id}/unsubscribe", json=body, headers=bearer(admin_token))
    assert response.status_code == 422
    assert field in errors_of(response)
    assert query(app, "SELECT status FROM subscriptions") == [("confirmed",)]


def test_unsubscribe_body_must_be_json(app, client, admin_token):
    reader_id = sign_up(app, client, "ada@example.org")
    response = client.post(f"/api/v1/readers/{reader_id}/unsubscribe", data="newsletters=daily-briefing",
                           headers={**bearer(admin_token), "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 415
    broken = client.post(f"/api/v1/readers/{reader_id}/unsubscribe", data="{not json",
                         headers={**bearer(admin_token), "Content-Type": "application/json"})
    assert broken.status_code == 422 and "body" in errors_of(broken)
    assert query(app, "SELECT status FROM subscriptions") == [("confirmed",)]


def test_delete_erases_the_reader(app, client, admin_token):
    reader_id = sign_up(app, client, "ada@example.org", name="Ada")
    response = client.delete("/api/v1/readers/ada@example.org", headers=bearer(admin_token))
    assert response.status_code == 200
    erased = response.get_json()
    assert erased["id"] == reader_id and erased["email"] == f"erased-{reader_id}@invalid" and erased["name"] is None
    assert erased["erased_at"] and [s["status"] for s in erased["subscriptions"]] == ["unsubscribed"]
    assert all(e["ip_address"] is None and e["user_agent"] is None and e["page_url"] is None
               for e in erased["consent_events"])
    assert [(e["action"], e["source"]) for e in erased["consent_events"]][-2:] == [
        ("unsubscribed", "api"), ("erased", "api")]
    # The history says which program erased the reader.
    assert "admin client" in erased["consent_events"][-1]["wording"]

    assert client.get("/api/v1/readers/ada@example.org", headers=bearer(admin_token)).status_code == 404
    assert client.get(f"/api/v1/readers/{reader_id}", headers=bearer(admin_token)).get_json()["erased_at"]
    # Erasing again is harmless.
    again = client.delete(f"/api/v1/readers/{reader_id}", headers=bearer(admin_token))
    assert again.status_code == 200 and again.get_json()["erased_at"] == erased["erased_at"]
    listed = client.get("/api/v1/newsletters/daily-briefing/subscribers", headers=bearer(admin_token)).get_json()
    assert listed["subscribers"] == []


def test_reader_export_holds_everything(app, client, admin_token):
    reader_id = sign_up(app, client, "ada@example.org", ("daily-briefing",), name="Ada")
    response = client.get(f"/api/v1/readers/{reader_id}/export", headers=bearer(admin_token))
    assert response.status_code == 200
    data = response.get_json()
    assert data["format"] == "newsletter-reader-export/1"
    assert data["reader"]["email"] == "ada@example.org" and data["reader"]["name"] == "Ada"
    assert [e["kind"] for e in data["emails"]] == ["confirmation", "welcome"]
    # An email is addressed when it is sent, to the reader's address then: its row keeps no copy.
    assert all(e["to_address"] is None for e in data["emails"])
    assert len(data["consent_events"]) == 2 and len(data["subscriptions"]) == 1


# --- the OpenAPI document ----------------------------------------------------------------------------------

def _openapi_path(rule: str) -> str:
    return re.sub(r"<(?:[a-z]+:)?([a-z_]+)>", r"{\1}", rule)


def _api_routes(app) -> set[tuple[str, str]]:
    """(path as the document writes it, method) of every /api/v1 route but the document's own two."""
    return {(_openapi_path(rule.rule), method) for rule in app.url_map.iter_rules()
            if rule.rule.startswith("/api/v1/") and rule.endpoint not in ("api.openapi", "api.docs")
            for method in rule.methods - {"HEAD", "OPTIONS"}}


def test_openapi_document_describes_every_api_route(app, client):
    spec = client.get("/api/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    documented = {(path, method.upper()) for path, item in spec["paths"].items() for method in item}
    routes = _api_routes(app)
    assert routes - documented == set(), "routes missing from the OpenAPI document"
    assert documented - routes == set(), "the OpenAPI document describes routes that don't exist"
    # Each path parameter is declared, and every authenticated operation says how it can fail.
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(re.findall(r"{(\w+)}", path)), (method, path)
            if operation.get("security") != []:
                assert "401" in operation["responses"], (method, path)
            if method in ("post", "delete") and operation.get("security") != []:
                assert "403" in operation["responses"], (method, path)
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {**spec["components"]["securitySchemes"][
        "bearerAuth"], "type": "http", "scheme": "bearer"}


def _schema_of(model, mode: str) -> tuple[dict, dict]:
    """A model's JSON schema as the document holds it: refs to components, nested models apart."""
    schema = model.model_json_schema(mode=mode, ref_template="#/components/schemas/{model}")
    return schema, schema.pop("$defs", {})


def test_the_document_is_made_from_each_views_models(app, client):
    """Every /api/v1 view is @described, and the document says exactly what its pydantic models say:
    the request body, each query parameter and each answer (no schema is written by hand)."""
    spec = client.get("/api/v1/openapi.json").get_json()
    components = spec["components"]["schemas"]
    checked = set()
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/v1/") or rule.endpoint in ("api.openapi", "api.docs"):
            continue
        view = app.view_functions[rule.endpoint]
        assert openapi.spec.get_function_metadata(view) is not None, f"{rule.endpoint} is not @described"
        for method in rule.methods - {"HEAD", "OPTIONS"}:
            operation = spec["paths"][_openapi_path(rule.rule)][method.lower()]
            models = openapi.MODELS[operation["operationId"]]
            if models["json"] is not None:
                body = operation["requestBody"]["content"]["application/json"]["schema"]
                assert body == {"$ref": f"#/components/schemas/{models['json'].__name__}"}
                schema, nested = _schema_of(models["json"], "validation")
                assert components[models["json"].__name__] == schema, operation["operationId"]
                assert all(components[name] == each for name, each in nested.items())
            if models["query"] is not None:
                schema, _ = _schema_of(models["query"], "validation")
                in_query = {p["name"]: p for p in operation["parameters"] if p["in"] == "query"}
                assert list(in_query) == list(schema["properties"]), operation["operationId"]
                for name, parameter in in_query.items():
                    assert parameter["required"] == (name in schema.get("required", []))
                    assert {**parameter["schema"], **{k: schema["properties"][name][k] for k in ("style", "explode")
                                                      if k in schema["properties"][name]}} == schema["properties"][name]
            for status, model in models["answers"].items():
                answer = operation["responses"][status]["content"]["application/json"]["schema"]
                assert answer == {"$ref": f"#/components/schemas/{model.__name__}"}, (operation["operationId"], status)
                schema, nested = _schema_of(model, "serialization")
                assert components[model.__name__] == schema, model.__name__
                assert all(components[name] == each for name, each in nested.items())
            checked.add(operation["operationId"])
    assert checked == {operation["operationId"] for item in spec["paths"].values() for operation in item.values()}
    # Errors are described once, and every answer's body is one of the models.
    assert components["Errors"]["additionalProperties"] is False and components["Errors"]["required"] == ["errors"]


def test_the_webhooks_are_described_from_the_event_model(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    assert spec["openapi"] == "3.1.0"
    assert set(spec["webhooks"]) == set(typing.get_args(change_schemas.EventType))
    schema, nested = _schema_of(change_schemas.ChangeEvent, "serialization")
    assert spec["components"]["schemas"]["ChangeEvent"] == schema
    assert all(spec["components"]["schemas"][name] == each for name, each in nested.items())
    for kind, item in spec["webhooks"].items():
        operation = item["post"]
        body = operation["requestBody"]["content"]["application/json"]["schema"]
        assert body["allOf"] == [{"$ref": "#/components/schemas/ChangeEvent"},
                                 {"properties": {"type": {"const": kind}}}]
        headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
        assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
        assert all(header["required"] for header in headers.values())
        assert "2XX" in operation["responses"]


def test_docs_page_shows_every_operation_and_schema(app, client):
    page = client.get("/api/v1/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    html = page.get_data(as_text=True)
    spec = client.get("/api/v1/openapi.json").get_json()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert f'id="{operation["operationId"]}"' in html
            assert f"<code>{path}</code>" in html
    for name in spec["components"]["schemas"]:
        assert f'id="schema-{name}"' in html
    for name, item in spec["webhooks"].items():
        assert f'id="{item["post"]["operationId"]}"' in html and f"<code>{name}</code>" in html
    assert "webhook-signature" in html
    assert "<script" not in html and "cdn" not in html.lower()


@pytest.fixture
def api_schema(app, client):
    """The app's own OpenAPI document, loaded by schemathesis, with readers behind it."""
    sign_up(app, client, "ada@example.org", ("daily-briefing", "weekly-explainer"), name="Ada")
    sign_up(app, client, "grace@example.org", ("daily-briefing",), confirm=False)
    bulk_subscribers(app, "daily-briefing", 5)
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)


# Path parameters that name real rows, so that generated queries and bodies also meet real data.
KNOWN = {"slug": "daily-briefing", "reader": "ada@example.org"}
EXAMPLES_PER_RUN = 25


def _exercise(strategy, headers: dict[str, str], examples: int = EXAMPLES_PER_RUN) -> None:
    @given(case=strategy)
    @settings(max_examples=examples, deadline=None, database=None, derandomize=True, print_blob=False,
              suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        case.call_and_validate(headers=headers, checks=[not_a_server_error, response_schema_conformance])

    run()


def test_api_answers_match_the_openapi_document(app, api_schema, admin_token):
    """schemathesis drives the real app with requests made from the document: no 500, every answer matches.

    Each operation gets valid requests aimed at real rows, valid requests anywhere, and invalid ones
    (negative mode, which may also leave the token out), with a valid admin token. Derandomized and bounded:
    a few seconds per backend.
    """
    # Erasing comes last: before it, the known reader is there to be read, exported and unsubscribed.
    operations = sorted((result.ok() for result in api_schema.get_all_operations()),
                        key=lambda operation: operation.method.upper() == "DELETE")
    assert len(operations) == len(_api_routes(app)) >= 12
    headers = bearer(admin_token)
    for operation in operations:
        known = {name: KNOWN[name] for name in re.findall(r"{(\w+)}", operation.path) if name in KNOWN}
        # Negative cases may also leave the token out: their 401s are checked against the document too.
        strategies = [operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)]
        if known:
            strategies.insert(0, operation.as_strategy(GenerationMode.POSITIVE, path_parameters=known))
        for strategy in strategies:
            _exercise(strategy, headers)


def test_schemathesis_catches_an_answer_that_drifts_from_its_model(app, api_schema, admin_token, monkeypatch):
    """The conformance check has teeth: a reader answer with a field its model doesn't have fails it."""
    describe = privacy.describe_reader
    monkeypatch.setattr(privacy, "describe_reader", lambda session, reader: {**describe(session, reader), "vip": True})
    operation = api_schema["/api/v1/readers/{reader}"]["GET"]
    strategy = operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"reader": KNOWN["reader"]})
    with pytest.raises(FailureGroup) as caught:
        _exercise(strategy, bearer(admin_token), examples=3)
    [failure] = caught.value.exceptions
    assert "Response violates schema" in failure.title and "'vip' was unexpected" in failure.message



# --- API tokens in the admin and the CLI --------------------------------------------------------------------

@pytest.fixture
def admins(app):
    with app.app_context():
        accounts.create_admin(db.session, "editor@example.org", PASSWORD, "admin")
        accounts.create_admin(db.session, "viewer@example.org", PASSWORD, "viewer")
        db.session.commit()
        db.session.remove()


def test_admin_creates_a_token_sees_it_once_and_revokes_it(app, client, admins):
    log_in(client, "editor@example.org", PASSWORD)
    page = client.get("/admin/tokens")
    assert page.status_code == 200 and "No tokens yet." in page.get_data(as_text=True)
    fields = hidden_fields(page.get_data(as_text=True))
    created = client.post("/admin/tokens", data={**fields, "name": "CRM sync", "role": "viewer"})
    assert created.status_code == 201 and created.headers["Cache-Control"] == "no-store"
    html = created.get_data(as_text=True)
    assert "Copy it now" in html
    secret = re.search(r'value="(nlt_[^"]+)"', html).group(1)
    [(token_id, name, role, prefix, token_hash, created_by)] = query(
        app, "SELECT id, name, role, prefix, token_hash, created_by_id FROM api_tokens")
    assert (name, role) == ("CRM sync", "viewer") and secret.startswith(prefix) and secret not in token_hash
    assert created_by == query(app, "SELECT id FROM admin_users WHERE email = 'editor@example.org'")[0][0]

    # The list shows it without its secret, and the token works.
    listing = client.get("/admin/tokens").get_data(as_text=True)
    assert "CRM sync" in listing and f"{prefix}…" in listing and secret not in listing
    assert client.get("/api/v1/newsletters", headers=bearer(secret)).status_code == 200
    assert "never" not in client.get("/admin/tokens").get_data(as_text=True).split("CRM sync")[1].split("</tr>")[0]

    # Revoking needs the CSRF token.
    assert client.post(f"/admin/tokens/{token_id}/revoke").status_code == 400
    revoked = client.post(f"/admin/tokens/{token_id}/revoke", data=hidden_fields(listing))
    assert revoked.status_code == 303
    assert client.get("/api/v1/newsletters", headers=bearer(secret)).status_code == 401
    assert query(app, "SELECT revoked_at IS NOT NULL FROM api_tokens") in ([(1,)], [(True,)])
    assert client.post("/admin/tokens/999/revoke", data=hidden_fields(listing)).status_code == 404
    assert client.post(f"/admin/tokens/{2**31}/revoke", data=hidden_fields(listing)).status_code == 404


def test_token_form_errors_and_csrf(app, client, admins):
    log_in(client, "editor@example.org", PASSWORD)
    fields = hidden_fields(client.get("/admin/tokens").get_data(as_text=True))
    nameless = client.post("/admin/tokens", data={**fields, "name": "  ", "role": "admin"})
    assert nameless.status_code == 422 and "A token needs a name" in nameless.get_data(as_text=True)
    bad_role = client.post("/admin/tokens", data={**fields, "name": "x", "role": "owner"})
    assert bad_role.status_code == 422
    assert client.post("/admin/tokens", data={"name": "x", "role": "admin"}).status_code == 400
    assert query(app, "SELECT count(*) FROM api_tokens") == [(0,)]


def test_viewer_admins_cannot_manage_tokens(app, client, admins, admin_token):
    log_in(client, "viewer@example.org", PASSWORD)
    fields = hidden_fields(client.get("/admin/").get_data(as_text=True))
    assert client.get("/admin/tokens").status_code == 403
    assert client.post("/admin/tokens", data={**fields, "name": "x", "role": "admin"}).status_code == 403
    assert client.post("/admin/tokens/1/revoke", data=fields).status_code == 403
    assert query(app, "SELECT count(*), count(revoked_at) FROM api_tokens") == [(1, 0)]


def test_cli_tokens_create_list_revoke(app, runner, client):
    created = runner.invoke(args=["tokens", "create", "--name", "nightly export", "--role", "viewer"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("nlt_") and "not shown again" in created.stderr
    assert client.get("/api/v1/newsletters", headers=bearer(secret)).status_code == 200
    assert client.delete("/api/v1/readers/1", headers=bearer(secret)).status_code == 403

    listed = runner.invoke(args=["tokens", "list"])
    assert listed.exit_code == 0 and "nightly export" in listed.output and "viewer" in listed.output
    assert secret not in listed.output and secret[:12] in listed.output
    [(token_id,)] = query(app, "SELECT id FROM api_tokens")

    revoked = runner.invoke(args=["tokens", "revoke", str(token_id)])
    assert revoked.exit_code == 0 and "Revoked token" in revoked.output
    assert client.get("/api/v1/newsletters", headers=bearer(secret)).status_code == 401
    for number in ("999", str(10**20)):
        missing = runner.invoke(args=["tokens", "revoke", number])
        assert missing.exit_code != 0 and f"no API token {number}" in missing.output
    nameless = runner.invoke(args=["tokens", "create", "--name", " "])
    assert nameless.exit_code != 0 and "needs a name" in nameless.output
    default = runner.invoke(args=["tokens", "create", "--name", "ops"])
    assert default.exit_code == 0 and query(app, "SELECT role FROM api_tokens WHERE name = 'ops'") == [("admin",)]
