"""Webhook deliveries to real HTTP receivers on 127.0.0.1 that verify every signature with standardwebhooks:
the events of a reader's changes in order, retries and backoff, switching a failing endpoint off, secret
rotation, erasure, redirects, timeouts and the request-forgery guard."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select as sa_select
from standardwebhooks.webhooks import WebhookVerificationError

from newsletter import tokens, webhook_sender, webhooks
from newsletter.extensions import db
from newsletter.models import WebhookEndpoint, utcnow

from .conftest import free_port, hidden_fields, query
from .webhook_receiver import Receiver

PAGE = "https://example-news.org/2026/11/article"


@pytest.fixture
def receiver():
    server = Receiver().start()
    yield server
    server.stop()


@pytest.fixture
def local_app(app):
    """The app with webhooks allowed to reach 127.0.0.1 (where the test receivers are) and retried at once."""
    app.config.update(NEWSLETTER_WEBHOOK_ALLOW_PRIVATE=True, NEWSLETTER_WEBHOOK_RETRY_BASE=0,
                      NEWSLETTER_WEBHOOK_TIMEOUT=2)
    return app


def add_endpoint(app, url: str, event_types=()) -> tuple[int, str]:
    with app.app_context():
        endpoint, secret = webhooks.create_endpoint(db.session, app.config, url=url, event_types=list(event_types))
        db.session.commit()
        endpoint_id = endpoint.id
        db.session.remove()
    return endpoint_id, secret


def deliver(app) -> webhook_sender.DeliveryResult:
    """Queue and deliver what is due, as the worker's webhook thread does once."""
    with app.app_context():
        sender = webhook_sender.WebhookSender(app.config)
        try:
            return sender.drain(db.session)
        finally:
            sender.close()
            db.session.remove()


def newsletter_id(app, slug: str) -> int:
    return dict(query(app, "SELECT slug, id FROM newsletters"))[slug]


def sign_up(app, client, email: str, slug: str = "daily-briefing", name: str | None = None) -> int:
    body = {"email": email, "newsletters": [slug], "page_url": PAGE, "form_id": "box-1"}
    if name:
        body["name"] = name
    answer = client.post("/api/v1/subscriptions", json=body)
    assert answer.status_code == 202, answer.get_data(as_text=True)
    [(reader_id,)] = query(app, "SELECT id FROM readers WHERE email = :email", email=email)
    return reader_id


def confirm(app, client, reader_id: int, slug: str = "daily-briefing") -> None:
    with app.test_request_context():
        token = tokens.confirm_token(reader_id, [newsletter_id(app, slug)])
    page = client.get(f"/confirm/{token}")
    assert client.post(f"/confirm/{token}", data=hidden_fields(page.get_data(as_text=True))).status_code == 200


def admin_token(app) -> dict[str, str]:
    from newsletter import api_tokens

    with app.app_context():
        _, secret = api_tokens.create_token(db.session, "sync", "admin")
        db.session.commit()
        db.session.remove()
    return {"Authorization": f"Bearer {secret}"}


def endpoint_state(app, endpoint_id: int) -> dict:
    [row] = query(app, "SELECT active, disabled_at, disabled_reason FROM webhook_endpoints WHERE id = :id",
                  id=endpoint_id)
    return dict(row._mapping)


def rows(app) -> list[dict]:
    return [dict(row._mapping) for row in query(
        app, "SELECT id, status, attempts, event_id, last_error FROM outbox_messages "
             "WHERE kind = 'webhook' ORDER BY id")]


# --- the events ------------------------------------------------------------------------------------------


def test_signup_confirm_unsubscribe_and_erasure_arrive_signed_and_in_order(local_app, client, receiver):
    app = local_app
    endpoint_id, secret = add_endpoint(app, receiver.url)
    headers = admin_token(app)
    ann = sign_up(app, client, "ann@example.org", name="Ann")
    bob = sign_up(app, client, "bob@example.org", slug="weekly-explainer")
    confirm(app, client, ann)
    assert client.post(f"/api/v1/readers/{ann}/unsubscribe", headers=headers).status_code == 200
    confirm(app, client, bob, "weekly-explainer")

    result = deliver(app)
    assert result.sent == 5 and result.retrying == 0
    events = [request.verify(secret) for request in receiver.requests]
    by_reader = {}
    for event in events:
        by_reader.setdefault(event["data"]["reader"]["id"], []).append(event["type"])
    assert by_reader == {ann: ["subscription.pending", "subscription.confirmed", "subscription.unsubscribed"],
                         bob: ["subscription.pending", "subscription.confirmed"]}
    first = events[0]
    assert first["data"]["reader"] == {"id": ann, "email": "ann@example.org", "name": "Ann"}
    assert first["data"]["newsletter"] == {"slug": "daily-briefing"}
    assert first["data"]["channel"] == "api"
    assert first["data"]["source"] == {"page_url": PAGE, "form_id": "box-1"}
    for request, event in zip(receiver.requests, events, strict=True):
        assert request.headers["webhook-id"] == event["id"] and event["id"].startswith("evt_")
        assert request.headers["Content-Type"] == "application/json"
    # Nothing twice: a second run finds nothing new.
    assert deliver(app).sent == 0
    assert len(receiver.requests) == 5

    # Erasure: reader.erased is delivered, and no delivery after it carries the address or the name.
    assert client.delete(f"/api/v1/readers/{ann}", headers=headers).status_code == 200
    deliver(app)
    after = receiver.requests[5:]
    assert [request.verify(secret)["type"] for request in after] == ["reader.erased"]
    # Even an earlier event sent again now carries no address.
    [(attempt_id,)] = query(app, "SELECT min(id) FROM webhook_attempts")
    with app.app_context():
        webhooks.send_again(db.session, endpoint_id, attempt_id)
        db.session.commit()
        db.session.remove()
    deliver(app)
    later = receiver.requests[5:]
    assert len(later) == 2
    for request in later:
        assert b"ann@example.org" not in request.body and b"Ann" not in request.body
        assert request.verify(secret)["data"]["reader"] == {"id": ann, "email": None, "name": None}


def test_a_new_endpoint_gets_changes_from_its_creation_on_and_only_the_types_it_wants(local_app, client, receiver):
    app = local_app
    early = sign_up(app, client, "early@example.org")
    endpoint_id, secret = add_endpoint(app, receiver.url, ["subscription.confirmed"])
    confirm(app, client, early)
    late = sign_up(app, client, "late@example.org")
    confirm(app, client, late)
    deliver(app)
    events = [request.verify(secret) for request in receiver.requests]
    assert [(e["type"], e["data"]["reader"]["id"]) for e in events] == [
        ("subscription.confirmed", early), ("subscription.confirmed", late)]


def test_one_readers_events_wait_for_the_earlier_one_and_others_go_on(local_app, client, receiver):
    app = local_app
    endpoint_id, secret = add_endpoint(app, receiver.url)
    ann = sign_up(app, client, "ann@example.org")
    confirm(app, client, ann)
    bob = sign_up(app, client, "bob@example.org")
    [(pending_id,)] = query(app, "SELECT id FROM consent_events WHERE reader_id = :r AND action = 'signup_requested'",
                            r=ann)
    receiver.behaviour.fail_ids = {f"evt_{pending_id}"}

    deliver(app)
    got = [(request.verify(secret)["type"], request.verify(secret)["data"]["reader"]["id"])
           for request in receiver.requests]
    # Ann's confirmation waits behind her failed signup; Bob's goes.
    assert got == [("subscription.pending", ann), ("subscription.pending", bob)] or \
        got == [("subscription.pending", bob), ("subscription.pending", ann)]
    assert ("subscription.confirmed", ann) not in got

    receiver.behaviour.fail_ids = set()
    deliver(app)
    later = [request.verify(secret) for request in receiver.requests[2:]]
    assert [(e["type"], e["data"]["reader"]["id"]) for e in later] == [
        ("subscription.pending", ann), ("subscription.confirmed", ann)]
    assert later[0]["id"] == f"evt_{pending_id}"


# --- failures, retries, switching off -----------------------------------------------------------------------


def test_receiver_down_then_up_gets_the_same_event_with_the_same_id_after_backoff(local_app, client):
    app = local_app
    app.config["NEWSLETTER_WEBHOOK_RETRY_BASE"] = 60
    port = free_port()
    down = Receiver(port)
    endpoint_id, secret = add_endpoint(app, down.url)
    sign_up(app, client, "ann@example.org")

    result = deliver(app)
    assert result.retrying == 1 and result.sent == 0
    [row] = rows(app)
    assert row["status"] == "pending" and row["attempts"] == 1 and "refused" in row["last_error"].lower()
    assert last_wait(app) == pytest.approx(60, abs=2)
    assert deliver(app).sent == 0  # not due yet

    # Due again (the clock moved by an hour): fails again, and waits twice as long.
    query_update(app, "UPDATE outbox_messages SET next_attempt_at = :t", t=utcnow() - timedelta(seconds=1))
    assert deliver(app).retrying == 1
    assert last_wait(app) == pytest.approx(120, abs=2)

    down.start()
    try:
        query_update(app, "UPDATE outbox_messages SET next_attempt_at = :t", t=utcnow() - timedelta(seconds=1))
        assert deliver(app).sent == 1
        [request] = down.requests
        event = request.verify(secret)
        [row] = rows(app)
        assert row["status"] == "sent" and row["attempts"] == 3
        assert request.headers["webhook-id"] == event["id"] == f"evt_{row['event_id']}"
        log = query(app, "SELECT status_code, error FROM webhook_attempts ORDER BY id")
        assert [code for code, _ in log] == [None, None, 204]
    finally:
        down.stop()


def last_wait(app) -> float:
    """Seconds from the last attempt to when the delivery is due again."""
    from newsletter.models import OutboxMessage, WebhookAttempt

    with app.app_context():
        attempt = db.session.scalars(sa_select(WebhookAttempt).order_by(WebhookAttempt.id.desc())).first()
        row = db.session.get(OutboxMessage, attempt.outbox_message_id)
        wait = (row.next_attempt_at - attempt.attempted_at).total_seconds()
        db.session.remove()
    return wait


def query_update(app, statement: str, **params) -> None:
    import sqlalchemy as sa

    with app.app_context():
        db.session.execute(sa.text(statement), params)
        db.session.commit()
        db.session.remove()


def test_an_endpoint_failing_past_the_retry_period_is_switched_off_and_the_admin_says_so(local_app, client,
                                                                                          receiver):
    app = local_app
    receiver.behaviour.status, receiver.behaviour.body = 503, b"maintenance until Monday"
    endpoint_id, secret = add_endpoint(app, receiver.url)
    sign_up(app, client, "ann@example.org")
    assert deliver(app).retrying == 1
    assert endpoint_state(app, endpoint_id)["active"]

    # Three days and a minute later (the row's created_at moved back, not the clock slept on).
    long_ago = utcnow() - timedelta(days=3, minutes=1)
    with app.app_context():
        import sqlalchemy as sa

        db.session.execute(sa.text("UPDATE outbox_messages SET created_at = :t, next_attempt_at = :t"), {"t": long_ago})
        db.session.commit()
        db.session.remove()
    result = deliver(app)
    assert result.failed == 0 and result.switched_off == 1
    [row] = rows(app)
    # It waits for the endpoint to be on again, nothing lost.
    assert row["status"] == "pending" and "HTTP 503" in row["last_error"]
    state = endpoint_state(app, endpoint_id)
    assert not state["active"] and state["disabled_at"] is not None
    assert "3 days" in state["disabled_reason"] and "HTTP 503" in state["disabled_reason"]

    # Nothing more goes to it, and new changes wait.
    sign_up(app, client, "bob@example.org")
    before = len(receiver.requests)
    deliver(app)
    assert len(receiver.requests) == before

    from .test_admin_auth import PASSWORD, log_in
    from newsletter import accounts

    with app.app_context():
        accounts.create_admin(db.session, "boss@example.org", PASSWORD, "admin")
        db.session.commit()
        db.session.remove()
    admin = app.test_client()
    log_in(admin, "boss@example.org", PASSWORD)
    page = admin.get("/admin/webhooks").get_data(as_text=True)
    assert "Switched off" in page and "HTTP 503" in page
    log = admin.get(f"/admin/webhooks/{endpoint_id}/deliveries").get_data(as_text=True)
    assert "503" in log and "maintenance until Monday" in log

    # Turned on again: the waiting deliveries go, with a new retry period.
    receiver.behaviour.status = 204
    with app.app_context():
        endpoint = db.session.get(WebhookEndpoint, endpoint_id)
        webhooks.update_endpoint(db.session, app.config, endpoint, {"active": True})
        db.session.commit()
        db.session.remove()
    assert endpoint_state(app, endpoint_id)["disabled_reason"] is None
    assert deliver(app).sent >= 1
    assert [r.verify(secret)["data"]["reader"]["email"] for r in receiver.requests[before:]][-1] == "bob@example.org"


# --- secrets --------------------------------------------------------------------------------------------------


def test_rotation_signs_with_both_secrets_during_the_overlap_then_only_the_new(local_app, client, receiver):
    app = local_app
    endpoint_id, old = add_endpoint(app, receiver.url)
    assert old.startswith("whsec_")
    with app.app_context():
        endpoint = db.session.get(WebhookEndpoint, endpoint_id)
        new = webhooks.rotate_secret(db.session, app.config, endpoint)
        db.session.commit()
        db.session.remove()
    assert new != old and new.startswith("whsec_")
    sign_up(app, client, "ann@example.org")
    deliver(app)
    [during] = receiver.requests
    assert len(during.headers["webhook-signature"].split(" ")) == 2
    assert during.verify(old) == during.verify(new)

    # The overlap is over: only the new secret signs.
    query_update(app, "UPDATE webhook_endpoints SET previous_secret_expires_at = :t",
                 t=utcnow() - timedelta(seconds=1))
    sign_up(app, client, "bob@example.org")
    deliver(app)
    after = receiver.requests[1]
    assert len(after.headers["webhook-signature"].split(" ")) == 1
    assert after.verify(new)["type"] == "subscription.pending"
    with pytest.raises(WebhookVerificationError):
        after.verify(old)


# --- what requests may not do --------------------------------------------------------------------------------


def test_a_redirect_is_not_followed(local_app, client, receiver):
    app = local_app
    target = Receiver().start()
    try:
        receiver.behaviour.status, receiver.behaviour.location = 302, target.url
        add_endpoint(app, receiver.url)
        sign_up(app, client, "ann@example.org")
        assert deliver(app).retrying == 1
        assert len(receiver.requests) == 1 and target.requests == []
        [(code, error)] = query(app, "SELECT status_code, error FROM webhook_attempts")
        assert code == 302 and "not followed" in error and target.url in error
    finally:
        target.stop()


def test_a_receiver_that_never_answers_times_out(local_app, client, receiver):
    import threading

    app = local_app
    app.config["NEWSLETTER_WEBHOOK_TIMEOUT"] = 1
    release = threading.Event()
    receiver.behaviour.hang = release
    try:
        add_endpoint(app, receiver.url)
        sign_up(app, client, "ann@example.org")
        assert deliver(app).retrying == 1
        [(code, error)] = query(app, "SELECT status_code, error FROM webhook_attempts")
        assert code is None and "timed out" in error.lower()
    finally:
        release.set()


@pytest.mark.parametrize("url", [
    "http://127.0.0.1/hook", "http://10.1.2.3/hook", "http://169.254.169.254/latest/meta-data/",
    "http://[::1]/hook", "http://[::ffff:127.0.0.1]/hook", "http://0.0.0.0/", "http://192.168.1.1:8080/x",
])
def test_private_addresses_are_refused_without_the_setting(app, url):
    with app.app_context():
        with pytest.raises(webhooks.EndpointErrors) as refused:
            webhooks.create_endpoint(db.session, app.config, url=url)
        assert "NEWSLETTER_WEBHOOK_ALLOW_PRIVATE" in refused.value.errors["url"][0]
        db.session.rollback()
    app.config["NEWSLETTER_WEBHOOK_ALLOW_PRIVATE"] = True
    with app.app_context():
        webhooks.create_endpoint(db.session, app.config, url=url)
        db.session.rollback()
        db.session.remove()


def test_a_name_resolving_to_a_private_address_gets_nothing(app, client, receiver):
    """localhost passes the URL check (a name) but resolves to 127.0.0.1: the delivery is refused."""
    app.config.update(NEWSLETTER_WEBHOOK_RETRY_BASE=0)
    url = f"http://localhost:{receiver.port}/hook"
    add_endpoint(app, url)
    sign_up(app, client, "ann@example.org")
    assert deliver(app).retrying == 1
    assert receiver.requests == []
    [(code, error)] = query(app, "SELECT status_code, error FROM webhook_attempts")
    assert code is None and "localhost resolves to" in error and "NEWSLETTER_WEBHOOK_ALLOW_PRIVATE" in error

    # Allowed, the same endpoint is delivered to.
    app.config["NEWSLETTER_WEBHOOK_ALLOW_PRIVATE"] = True
    assert deliver(app).sent == 1
    assert len(receiver.requests) == 1 and receiver.requests[0].headers["Host"] == f"localhost:{receiver.port}"


BAD_URLS = [
    ("", "Enter the URL"),
    ("ftp://example.org/hook", "must start with https://"),
    ("javascript:alert(1)", "must start with https://"),
    ("/relative/hook", "must start with https://"),
    ("https://user:pass@example.org/hook", "user name or password"),
    ("https://example.org/" + "a" * 2100, "at most 2048"),
    ("https://exa mple.org/", "spaces"),
    ("https://example.org/\r\nX-Injected: 1", "control characters"),
    ("https:///no-host", "must name a host"),
    ("https://example.org:99999/", "not a valid URL"),
]


@pytest.mark.parametrize("url, why", BAD_URLS)
def test_bad_urls_are_refused_with_a_clear_message(app, url, why):
    with app.app_context():
        with pytest.raises(webhooks.EndpointErrors) as refused:
            webhooks.create_endpoint(db.session, app.config, url=url)
        assert why in refused.value.errors["url"][0]


# --- who delivers ----------------------------------------------------------------------------------------------


def test_the_worker_delivers_webhooks_beside_the_email(local_app, client, receiver, smtp):
    app = local_app
    _, secret = add_endpoint(app, receiver.url)
    sign_up(app, client, "ann@example.org")
    result = app.test_cli_runner().invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert "webhooks: delivered 1" in result.output
    assert receiver.requests[0].verify(secret)["type"] == "subscription.pending"
    assert len(smtp.inbox.wait_for(1)) == 1


def test_the_embedded_default_delivers_from_a_thread_of_the_web_process(database_url, smtp, receiver):
    from newsletter import create_app

    from .conftest import SECRET, close_app

    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": database_url, "SECRET_KEY": SECRET,
                      "NEWSLETTER_SMTP_URL": smtp.url, "NEWSLETTER_OUTBOX_IN_PROCESS": True,
                      "NEWSLETTER_WEBHOOK_ALLOW_PRIVATE": True, "NEWSLETTER_MIN_FILL_SECONDS": 0,
                      "NEWSLETTER_RATE_LIMIT_IP": "10000/minute", "NEWSLETTER_RATE_LIMIT_EMAIL": "10000/minute"})
    try:
        assert app.extensions["newsletter.webhook_sender"].is_alive()
        with app.app_context():
            from newsletter import catalog

            catalog.add_newsletter(db.session, "daily-briefing", name="The Daily Briefing")
            db.session.commit()
            db.session.remove()
        _, secret = add_endpoint(app, receiver.url)
        sign_up(app, app.test_client(), "ann@example.org")
        [request] = receiver.wait_for(1)
        assert request.verify(secret)["data"]["reader"]["email"] == "ann@example.org"
    finally:
        close_app(app)


def test_every_address_of_a_name_is_checked_and_the_request_goes_to_the_checked_one(app, client, receiver,
                                                                                  monkeypatch):
    """A name with one public and one private address is refused; an allowed name is looked up once per
    delivery and connected to at the address looked up (DNS rebinding gets no second answer)."""
    import socket

    from newsletter import webhook_urls

    real = socket.getaddrinfo
    looked_up: list[str] = []
    answers = {"mixed.example": ["93.184.215.14", "10.0.0.7"], "hooks.example": ["127.0.0.1"]}

    def fake(host, port, *args, **kwargs):
        if host in answers:
            looked_up.append(host)
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in answers[host]]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    with pytest.raises(webhook_urls.RefusedAddress, match="10.0.0.7"):
        webhook_urls.resolve("mixed.example", 443, allow_private=False)

    app.config.update(NEWSLETTER_WEBHOOK_ALLOW_PRIVATE=True, NEWSLETTER_WEBHOOK_RETRY_BASE=0)
    _, secret = add_endpoint(app, f"http://hooks.example:{receiver.port}/hook")
    sign_up(app, client, "ann@example.org")
    answers["hooks.example"] = ["127.0.0.1"]
    assert deliver(app).sent == 1
    assert looked_up.count("hooks.example") == 1
    [request] = receiver.requests
    assert request.headers["Host"] == f"hooks.example:{receiver.port}"
    assert request.verify(secret)["type"] == "subscription.pending"


def test_only_the_start_of_a_long_answer_is_read_and_kept(local_app, client, receiver):
    app = local_app
    receiver.behaviour.status, receiver.behaviour.body = 500, ("é" * 600_000).encode()
    add_endpoint(app, receiver.url)
    sign_up(app, client, "ann@example.org")
    assert deliver(app).retrying == 1
    [(code, start, error)] = query(app, "SELECT status_code, response_start, error FROM webhook_attempts")
    assert code == 500 and error == "HTTP 500"
    assert 0 < len(start) <= 500 and set(start) == {"é"}


def test_the_example_receiver_keeps_its_list_in_sync_from_our_webhooks(local_app, client, tmp_path):
    """examples/sync_receiver fed by the real sender: signup, confirmation and erasure reach its list."""
    import threading
    import time

    from werkzeug.serving import make_server

    from .test_changes import load_example

    app = local_app
    web = make_server("127.0.0.1", 0, app, threaded=True)
    threading.Thread(target=web.serve_forever, daemon=True).start()
    example = load_example()
    token = admin_token(app)["Authorization"].removeprefix("Bearer ")
    endpoint_id, secret = add_endpoint(app, "http://127.0.0.1:9/placeholder")
    server, feed, synced = example.serve(f"http://127.0.0.1:{web.port}", token, secret, "127.0.0.1:0",
                                         str(tmp_path / "sync.sqlite3"), poll_seconds=3600)
    with app.app_context():
        endpoint = db.session.get(WebhookEndpoint, endpoint_id)
        webhooks.update_endpoint(db.session, app.config, endpoint,
                                 {"url": f"http://127.0.0.1:{server.server_address[1]}/webhook"})
        db.session.commit()
        db.session.remove()

    def until(condition, what: str) -> None:
        for _ in range(600):
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"never happened: {what}")

    try:
        ann = sign_up(app, client, "ann@example.org", name="Ann")
        confirm(app, client, ann)
        assert deliver(app).sent == 2
        until(lambda: synced.subscribers("daily-briefing") == [("ann@example.org", "Ann")], "Ann in the list")

        assert client.delete(f"/api/v1/readers/{ann}", headers=admin_token(app)).status_code == 200
        result = deliver(app)
        assert result.sent >= 2 and not result.retrying  # unsubscribed, then reader.erased
        until(lambda: synced.subscribers("daily-briefing") == [], "Ann gone from the list")
        assert query(app, "SELECT count(*) FROM webhook_attempts WHERE status_code = 204")[0][0] == result.sent + 2
    finally:
        feed.stopped.set()
        feed.wanted.set()
        server.shutdown()
        web.shutdown()


def test_an_unreachable_endpoint_is_tried_once_per_batch_and_holds_up_no_other(local_app, client, receiver):
    app = local_app
    down_id, _ = add_endpoint(app, Receiver(free_port()).url)  # nothing listens there
    up_id, secret = add_endpoint(app, receiver.url)
    for number in range(3):
        sign_up(app, client, f"reader{number}@example.org")
    result = deliver(app)
    assert result.sent == 3 and result.retrying == 3
    assert len(receiver.requests) == 3
    # The deliveries not tried after the refusal are no attempts: neither logged nor counted.
    log = query(app, "SELECT error FROM webhook_attempts WHERE endpoint_id = :e ORDER BY id", e=down_id)
    assert len(log) == 1 and "refused" in log[0][0].lower()
    tries = query(app, "SELECT attempts FROM outbox_messages WHERE endpoint_id = :e ORDER BY id", e=down_id)
    assert sorted(attempts for (attempts,) in tries) == [0, 0, 1]


@pytest.mark.parametrize("url", ["https://☃.example/hook", "https://a\u200db.example/hook"])
def test_a_host_name_that_is_no_valid_internationalized_name_is_refused_with_a_message(app, url):
    with app.app_context():
        with pytest.raises(webhooks.EndpointErrors, match="not a valid internationalized name"):
            webhooks.create_endpoint(db.session, app.config, url=url)
        db.session.rollback()
        db.session.remove()


def test_sent_deliveries_and_their_log_are_pruned_after_the_log_days_in_small_batches(local_app, client, receiver):
    app = local_app
    receiver.behaviour.status = 503
    add_endpoint(app, receiver.url)
    for number in range(5):
        sign_up(app, client, f"reader{number}@example.org")
    deliver(app)  # 5 failed tries, logged
    receiver.behaviour.status = 204
    with app.app_context():
        import sqlalchemy as sa

        db.session.execute(sa.text("UPDATE outbox_messages SET next_attempt_at = :t"), {"t": utcnow()})
        db.session.commit()
        db.session.remove()
    deliver(app)  # sent now
    sign_up(app, client, "recent@example.org")
    deliver(app)
    long_ago = utcnow() - timedelta(days=31)
    with app.app_context():
        import sqlalchemy as sa

        # Everything but the last reader's delivery (and its log) is 31 days old.
        recent = db.session.execute(sa.text("SELECT max(id) FROM outbox_messages WHERE kind = 'webhook'")).scalar_one()
        db.session.execute(sa.text("UPDATE outbox_messages SET sent_at = :t WHERE id <> :r"), {"t": long_ago, "r": recent})
        db.session.execute(sa.text("UPDATE webhook_attempts SET attempted_at = :t WHERE outbox_message_id <> :r"),
                           {"t": long_ago, "r": recent})
        db.session.commit()
        assert webhook_sender.prune(db.session, app.config, batch=2) == 10 + 5
        db.session.remove()
    assert query(app, "SELECT id, status FROM outbox_messages WHERE kind = 'webhook'") == [(recent, "sent")]
    assert len(query(app, "SELECT id FROM webhook_attempts")) == 1
