"""Managing webhook endpoints: the admin pages (admins change, viewers look) and /api/v1/webhooks (admin tokens),
with "send again" delivering the same event to a real receiver."""

from __future__ import annotations

import re

import pytest

from newsletter import accounts, api_tokens
from newsletter.extensions import db

from .conftest import hidden_fields, query
from .test_admin_auth import PASSWORD, log_in
from .test_webhooks import add_endpoint, deliver, sign_up
from .webhook_receiver import Receiver

ADMIN, VIEWER = "boss@example.org", "looker@example.org"


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def people(app):
    app.config.update(NEWSLETTER_WEBHOOK_ALLOW_PRIVATE=True, NEWSLETTER_WEBHOOK_RETRY_BASE=0)
    with app.app_context():
        accounts.create_admin(db.session, ADMIN, PASSWORD, "admin")
        accounts.create_admin(db.session, VIEWER, PASSWORD, "viewer")
        db.session.commit()
        db.session.remove()
    admin, viewer = app.test_client(), app.test_client()
    assert log_in(admin, ADMIN, PASSWORD).status_code == 303
    assert log_in(viewer, VIEWER, PASSWORD).status_code == 303
    return admin, viewer


def token(app, role: str) -> dict[str, str]:
    with app.app_context():
        _, secret = api_tokens.create_token(db.session, f"{role} client", role)
        db.session.commit()
        db.session.remove()
    return {"Authorization": f"Bearer {secret}"}


def form_of(client, path: str) -> dict[str, str]:
    return hidden_fields(client.get(path).get_data(as_text=True))


def secret_in(html: str) -> str:
    match = re.search(r'id="secret" value="(whsec_[A-Za-z0-9+/=]+)"', html)
    assert match, html
    return match.group(1)


def test_admin_adds_edits_rotates_and_deletes_an_endpoint(app, people, receiver):
    admin, _ = people
    page = admin.get("/admin/webhooks")
    assert page.status_code == 200 and "No endpoints yet." in page.get_data(as_text=True)
    assert 'href="/admin/webhooks"' in page.get_data(as_text=True)  # in the nav

    created = admin.post("/admin/webhooks", data={**form_of(admin, "/admin/webhooks"), "url": receiver.url,
                                                  "description": "CRM", "event_types": ["subscription.confirmed"],
                                                  "active": "y"})
    # POST, redirect, GET: the secret is shown once, and a refresh adds no second endpoint.
    assert created.status_code == 303
    shown = admin.get(created.headers["Location"])
    assert shown.status_code == 200 and shown.headers["Cache-Control"] == "no-store"
    secret = secret_in(shown.get_data(as_text=True))
    refreshed = admin.get(created.headers["Location"])
    assert refreshed.status_code == 303 and secret not in refreshed.get_data(as_text=True)
    assert "shown once" in admin.get(refreshed.headers["Location"]).get_data(as_text=True)
    [(endpoint_id, stored, types)] = query(app, "SELECT id, secret, event_types FROM webhook_endpoints")
    assert stored == secret
    listing = admin.get("/admin/webhooks").get_data(as_text=True)
    assert receiver.url in listing and "subscription.confirmed" in listing and secret not in listing
    edit_page = admin.get(f"/admin/webhooks/{endpoint_id}").get_data(as_text=True)
    assert secret not in edit_page and "the delivery log" in edit_page

    saved = admin.post(f"/admin/webhooks/{endpoint_id}", data={
        **form_of(admin, f"/admin/webhooks/{endpoint_id}"), "url": receiver.url + "?v=2", "description": "CRM 2"})
    assert saved.status_code == 303
    [(url, types, active)] = query(app, "SELECT url, event_types, active FROM webhook_endpoints")
    assert url.endswith("?v=2") and types in ([], "[]") and not active

    bad = admin.post(f"/admin/webhooks/{endpoint_id}", data={
        **form_of(admin, f"/admin/webhooks/{endpoint_id}"), "url": "ftp://example.org/", "active": "y"})
    assert bad.status_code == 422 and "must start with https://" in bad.get_data(as_text=True)
    assert query(app, "SELECT url FROM webhook_endpoints")[0][0].endswith("?v=2")

    rotated = admin.post(f"/admin/webhooks/{endpoint_id}/rotate", data=form_of(admin, f"/admin/webhooks/{endpoint_id}"))
    assert rotated.status_code == 303
    rotated = admin.get(rotated.headers["Location"])
    assert rotated.status_code == 200 and rotated.headers["Cache-Control"] == "no-store"
    new = secret_in(rotated.get_data(as_text=True))
    assert new != secret and "signs too until" in rotated.get_data(as_text=True)
    assert admin.get(f"/admin/webhooks/{endpoint_id}/secret").status_code == 303  # a refresh shows it no more
    # A second rotation during the overlap is refused, saying until when (it would end the overlap at once).
    again = admin.post(f"/admin/webhooks/{endpoint_id}/rotate", data=form_of(admin, f"/admin/webhooks/{endpoint_id}"))
    assert again.status_code == 303
    assert "signs beside it until" in admin.get(again.headers["Location"]).get_data(as_text=True)
    assert query(app, "SELECT secret, previous_secret FROM webhook_endpoints")[0] == (new, secret)

    deleted = admin.post(f"/admin/webhooks/{endpoint_id}/delete", data=form_of(admin, f"/admin/webhooks/{endpoint_id}"))
    assert deleted.status_code == 303
    assert query(app, "SELECT count(*) FROM webhook_endpoints")[0][0] == 0
    assert admin.get(f"/admin/webhooks/{endpoint_id}").status_code == 404


def test_admin_refuses_a_private_address_and_a_post_without_csrf_token(app, people):
    admin, _ = people
    app.config["NEWSLETTER_WEBHOOK_ALLOW_PRIVATE"] = False
    refused = admin.post("/admin/webhooks", data={**form_of(admin, "/admin/webhooks"),
                                                  "url": "http://169.254.169.254/latest/meta-data/"})
    assert refused.status_code == 422 and "NEWSLETTER_WEBHOOK_ALLOW_PRIVATE" in refused.get_data(as_text=True)
    assert admin.post("/admin/webhooks", data={"url": "https://example.org/hook"}).status_code == 400
    assert query(app, "SELECT count(*) FROM webhook_endpoints")[0][0] == 0


def test_send_again_delivers_the_same_event_again(app, people, client, receiver):
    admin, _ = people
    endpoint_id, secret = add_endpoint(app, receiver.url)
    sign_up(app, client, "ann@example.org")
    deliver(app)
    [first] = receiver.requests
    log = admin.get(f"/admin/webhooks/{endpoint_id}/deliveries")
    html = log.get_data(as_text=True)
    assert "204 delivered" in html and " ms" in html
    [(attempt_id,)] = query(app, "SELECT id FROM webhook_attempts")
    again = admin.post(f"/admin/webhooks/{endpoint_id}/deliveries/{attempt_id}/send-again", data=hidden_fields(html))
    assert again.status_code == 303
    assert "Queued the event again" in admin.get(again.headers["Location"]).get_data(as_text=True)
    deliver(app)
    second = receiver.requests[1]
    assert second.verify(secret) == first.verify(secret)
    assert second.headers["webhook-id"] == first.headers["webhook-id"]


def test_a_viewer_can_look_but_not_manage_endpoints(app, people, receiver):
    admin, viewer = people
    endpoint_id, _ = add_endpoint(app, receiver.url)
    before = query(app, "SELECT id, url, secret, active FROM webhook_endpoints")
    listing = viewer.get("/admin/webhooks")
    assert listing.status_code == 200 and receiver.url in listing.get_data(as_text=True)
    assert "New endpoint" not in listing.get_data(as_text=True)
    assert viewer.get(f"/admin/webhooks/{endpoint_id}/deliveries").status_code == 200
    csrf = form_of(viewer, "/admin/webhooks")
    for path, data in [("/admin/webhooks", {"url": "https://example.org/x"}),
                       (f"/admin/webhooks/{endpoint_id}", {"url": "https://example.org/x"}),
                       (f"/admin/webhooks/{endpoint_id}/rotate", {}),
                       (f"/admin/webhooks/{endpoint_id}/delete", {}),
                       (f"/admin/webhooks/{endpoint_id}/deliveries/1/send-again", {})]:
        assert viewer.post(path, data={**csrf, **data}).status_code == 403, path
    assert query(app, "SELECT id, url, secret, active FROM webhook_endpoints") == before
    assert viewer.get(f"/admin/webhooks/{endpoint_id}/secret").status_code == 403


# --- the API ---------------------------------------------------------------------------------------------------


def test_api_manages_endpoints_with_an_admin_token(app, people, client, receiver):
    headers = token(app, "admin")
    created = client.post("/api/v1/webhooks", headers=headers, json={
        "url": receiver.url, "description": "warehouse", "event_types": ["subscription.pending"]})
    assert created.status_code == 201, created.get_json()
    body = created.get_json()
    assert body["secret"].startswith("whsec_") and created.headers["Cache-Control"] == "no-store"
    assert body["event_types"] == ["subscription.pending"] and body["active"] is True
    endpoint_id = body["id"]

    listed = client.get("/api/v1/webhooks", headers=headers).get_json()["webhooks"]
    assert [e["id"] for e in listed] == [endpoint_id] and "secret" not in listed[0]

    changed = client.patch(f"/api/v1/webhooks/{endpoint_id}", headers=headers, json={"event_types": []})
    assert changed.status_code == 200 and changed.get_json()["event_types"] == []

    rotated = client.post(f"/api/v1/webhooks/{endpoint_id}/rotate-secret", headers=headers).get_json()
    assert rotated["secret"] != body["secret"] and rotated["secret_rotating_until"] is not None

    sign_up(app, client, "ann@example.org")
    deliver(app)
    [request] = receiver.requests
    assert request.verify(rotated["secret"]) == request.verify(body["secret"])
    deliveries = client.get(f"/api/v1/webhooks/{endpoint_id}/deliveries", headers=headers).get_json()
    assert deliveries["total"] == 1 and deliveries["pages"] == 1
    [delivery] = deliveries["deliveries"]
    assert delivery["status_code"] == 204 and delivery["event_type"] == "subscription.pending"
    assert delivery["event_id"] == request.headers["webhook-id"]

    retried = client.post(f"/api/v1/webhooks/{endpoint_id}/deliveries/{delivery['id']}/retry", headers=headers)
    assert retried.status_code == 202 and retried.get_json()["queued"] is True
    deliver(app)
    assert receiver.requests[1].headers["webhook-id"] == request.headers["webhook-id"]

    assert client.delete(f"/api/v1/webhooks/{endpoint_id}", headers=headers).status_code == 204
    gone = client.get(f"/api/v1/webhooks/{endpoint_id}", headers=headers)
    assert gone.status_code == 404 and "webhook" in gone.get_json()["errors"]


BAD_BODIES = [
    ({"url": "ftp://example.org/"}, "url", "must start with https://"),
    ({}, "url", "required"),
    ({"url": 5}, "url", "must be a string"),
    ({"url": "https://example.org/h", "event_types": ["subscription.maybe"]}, "event_types", "no event type"),
    ({"url": "https://example.org/h", "event_types": "subscription.pending"}, "event_types", "must be a list"),
    ({"url": "https://example.org/h", "active": "yes"}, "active", "true or false"),
    ({"url": "https://example.org/h", "secret": "whsec_mine"}, "body", "Unexpected field 'secret'"),
    ({"url": "https://example.org/h", "description": "x" * 201}, "description", "at most 200"),
]


@pytest.mark.parametrize("body, field, message", BAD_BODIES)
def test_api_refuses_bad_bodies_with_field_errors(app, client, body, field, message):
    headers = token(app, "admin")
    answer = client.post("/api/v1/webhooks", headers=headers, json=body)
    assert answer.status_code == 422, answer.get_json()
    errors = answer.get_json()["errors"]
    assert message in " ".join(errors[field]), errors
    assert query(app, "SELECT count(*) FROM webhook_endpoints")[0][0] == 0


def test_api_refuses_viewer_tokens_and_no_token(app, client):
    endpoint_id, _ = add_endpoint(app, "https://example.org/hook")
    viewer = token(app, "viewer")
    for method, path in [("get", "/api/v1/webhooks"), ("post", "/api/v1/webhooks"),
                         ("get", f"/api/v1/webhooks/{endpoint_id}"), ("patch", f"/api/v1/webhooks/{endpoint_id}"),
                         ("delete", f"/api/v1/webhooks/{endpoint_id}"),
                         ("post", f"/api/v1/webhooks/{endpoint_id}/rotate-secret"),
                         ("get", f"/api/v1/webhooks/{endpoint_id}/deliveries"),
                         ("post", f"/api/v1/webhooks/{endpoint_id}/deliveries/1/retry")]:
        assert getattr(client, method)(path, headers=viewer, json={"url": "https://example.org/x"}).status_code == 403
        assert getattr(client, method)(path, json={}).status_code == 401
    assert query(app, "SELECT count(*) FROM webhook_endpoints")[0][0] == 1


def test_webhook_pages_are_accessible(app, people, client, receiver):
    from .test_admin import PageStructure

    admin, viewer = people
    endpoint_id, _ = add_endpoint(app, receiver.url)
    sign_up(app, client, "ann@example.org")
    deliver(app)
    invalid = admin.post("/admin/webhooks", data={**form_of(admin, "/admin/webhooks"), "url": "ftp://x"})
    created = admin.post("/admin/webhooks", data={**form_of(admin, "/admin/webhooks"), "url": receiver.url})
    pages = {"invalid": invalid.get_data(as_text=True), "created": created.get_data(as_text=True)}
    for who, person in (("admin", admin), ("viewer", viewer)):
        for path in ["/admin/webhooks", f"/admin/webhooks/{endpoint_id}", f"/admin/webhooks/{endpoint_id}/deliveries"]:
            response = person.get(path)
            assert response.status_code == 200, path
            pages[f"{path} ({who})"] = response.get_data(as_text=True)
    for name, html in pages.items():
        page = PageStructure()
        page.feed(html)
        assert not page.duplicate_ids, (name, page.duplicate_ids)
        for control in page.controls:
            labelled = control["_wrapped"] or control.get("id") in page.label_for or control.get("aria-label")
            assert labelled, (name, control)
            for described in (control.get("aria-describedby") or "").split():
                assert described in page.ids, (name, control, described)
        assert page.headings and page.headings.count(1) == 1, (name, page.headings)
        assert all(b - a <= 1 for a, b in zip(page.headings, page.headings[1:])), (name, page.headings)
        if page.tables:
            assert all(cell.get("scope") in ("col", "row") for cell in page.header_cells), name
        assert page.buttons_without_text == 0, name


@pytest.mark.parametrize(("url", "shown"), [
    ("https://hooks.slack.com/services/T000/B000/XXXXSECRET", "https://hooks.slack.com/services/…"),
    ("https://crm.example.org/k3y-0f-th3-r3c31v3r", "https://crm.example.org/…"),
    ("https://crm.example.org/hook?token=abc", "https://crm.example.org/hook?…"),
    ("https://crm.example.org:8443/?token=abc", "https://crm.example.org:8443/…"),
    ("https://crm.example.org/hook", "https://crm.example.org/hook"),
])
def test_viewers_see_an_endpoint_url_without_what_may_be_the_receivers_key(url, shown):
    from newsletter.webhook_urls import masked_url

    assert masked_url(url) == shown
