"""Outgoing webhooks under adversarial conditions (from the review of issue 11, section 2): nothing lost across
a switch-off, rotation overlaps kept, slow and dripping receivers, send-time signing, erasure, request-forgery
ranges, internationalized names, and what viewers see."""

from __future__ import annotations

import socket
import threading
import time
from datetime import timedelta

import pytest
import sqlalchemy as sa

from newsletter import webhook_sender, webhooks
from newsletter.extensions import db
from newsletter.models import WebhookEndpoint, utcnow
from newsletter.webhook_urls import WebhookClient

from .conftest import query
from .test_webhooks import add_endpoint, admin_token, confirm, deliver, local_app, receiver, sign_up  # noqa: F401
from .webhook_receiver import Receiver


def _set(app, statement: str, **params) -> None:
    with app.app_context():
        db.session.execute(sa.text(statement), params)
        db.session.commit()
        db.session.remove()


# --- 1. "nothing lost, in order per reader" across a switch-off ------------------------------------------------


def test_turning_a_switched_off_endpoint_on_again_sends_the_delivery_that_switched_it_off(local_app, client, receiver):
    """The delivery whose retry period ran out switches its endpoint off but keeps waiting: turned on again,
    the endpoint gets it first, then the reader's later events, in order."""
    app = local_app
    receiver.behaviour.status = 503
    endpoint_id, secret = add_endpoint(app, receiver.url)
    ann = sign_up(app, client, "ann@example.org")
    confirm(app, client, ann)
    deliver(app)  # pending fails once; confirmed waits behind it
    _set(app, "UPDATE outbox_messages SET created_at = :t, next_attempt_at = :t",
         t=utcnow() - timedelta(days=3, minutes=1))
    assert deliver(app).switched_off == 1

    receiver.behaviour.status = 204
    before = len(receiver.requests)
    with app.app_context():
        webhooks.update_endpoint(db.session, app.config, db.session.get(WebhookEndpoint, endpoint_id),
                                 {"active": True})
        db.session.commit()
        db.session.remove()
    deliver(app)
    deliver(app)
    got = [r.verify(secret)["type"] for r in receiver.requests[before:]]
    assert got == ["subscription.pending", "subscription.confirmed"]


# --- 2. rotation overlap ------------------------------------------------------------------------------------


def test_a_second_rotation_during_the_overlap_is_refused_and_the_first_secret_keeps_signing(local_app, client, receiver):
    """After a rotation the page says the previous secret signs until <overlap end>. Rotating again (a second
    click, two admins) would drop it at once, so it is refused, saying until when; the original still signs."""
    app = local_app
    endpoint_id, original = add_endpoint(app, receiver.url)
    with app.app_context():
        endpoint = db.session.get(WebhookEndpoint, endpoint_id)
        webhooks.rotate_secret(db.session, app.config, endpoint)
        db.session.commit()
        # Refused while the first overlap runs, saying until when.
        with pytest.raises(webhooks.EndpointErrors, match="signs beside it until .* UTC"):
            webhooks.rotate_secret(db.session, app.config, endpoint)
        db.session.rollback()
        db.session.remove()
    headers = admin_token(app)
    again = client.post(f"/api/v1/webhooks/{endpoint_id}/rotate-secret", headers=headers)
    assert again.status_code == 422 and "until" in again.get_json()["errors"]["secret"][0]
    sign_up(app, client, "ann@example.org")
    deliver(app)
    [request] = receiver.requests
    assert request.verify(original)["type"] == "subscription.pending"


# --- 3. timeouts: a receiver that drips its answer ----------------------------------------------------------


def _drip_server(seconds: float) -> tuple[socket.socket, int, threading.Event]:
    """Answers a status line at once, then one header byte every 0.3 s for `seconds`."""
    server = socket.socket()
    server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    done = threading.Event()

    def serve() -> None:
        connection, _ = server.accept()
        connection.recv(65536)
        connection.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
        deadline = time.monotonic() + seconds
        try:
            while time.monotonic() < deadline and not done.is_set():
                connection.sendall(b"a")
                time.sleep(0.3)
            connection.sendall(b"\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass
        finally:
            connection.close()

    threading.Thread(target=serve, daemon=True).start()
    return server, server.getsockname()[1], done


def test_a_receiver_dripping_its_answer_is_cut_off_at_the_timeout():
    """urllib3's read timeout is per recv(): a receiver sending a byte every 0.3 s must still be cut off by the
    request's wall-clock deadline (twice the timeout)."""
    server, port, done = _drip_server(12)
    client = WebhookClient(timeout=1, allow_private=True)
    started = time.monotonic()
    try:
        try:
            client.post(f"http://127.0.0.1:{port}/hook", b"{}", {"Content-Type": "application/json"})
        except Exception:  # noqa: BLE001 (a timeout error is the wanted outcome)
            pass
        elapsed = time.monotonic() - started
    finally:
        done.set()
        client.close()
        server.close()
    assert elapsed < 4, f"the request took {elapsed:.1f} s with a 1 s timeout"


# --- 4. one slow endpoint holds up the others; stale signature timestamps -----------------------------------


class _SlowReceiver(Receiver):
    """A receiver that takes `delay` seconds to answer each request."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def start(self) -> _SlowReceiver:
        super().start()
        handler = self._server.RequestHandlerClass
        original = handler.do_POST
        delay = self.delay

        def do_post(handler_self) -> None:
            time.sleep(delay)
            original(handler_self)

        handler.do_POST = do_post
        return self


def test_one_slow_endpoint_does_not_hold_up_another(local_app, client, receiver):
    """A receiver taking 1 s per answer (well under the timeout) delays only its own deliveries: endpoints are
    sent to concurrently."""
    app = local_app
    app.config["NEWSLETTER_WEBHOOK_TIMEOUT"] = 5
    slow = _SlowReceiver(1.0).start()
    try:
        add_endpoint(app, slow.url)  # dispatched first: its rows come first in the batch
        add_endpoint(app, receiver.url)
        for number in range(6):
            sign_up(app, client, f"reader{number}@example.org")
        worker = threading.Thread(target=deliver, args=(app,), daemon=True)
        started = time.monotonic()
        worker.start()
        receiver.wait_for(6, timeout=20)
        took = time.monotonic() - started
        worker.join(30)
    finally:
        slow.stop()
    assert took < 3, f"the fast endpoint got its 6 events after {took:.1f} s"


def test_the_webhook_timestamp_is_when_the_request_is_sent(local_app, client):
    """Each delivery is signed just before it is sent: behind a slow receiver a batch signed at claim time would
    carry timestamps older than the send by the whole batch's time, past standardwebhooks' 5-minute tolerance."""
    app = local_app
    app.config["NEWSLETTER_WEBHOOK_TIMEOUT"] = 5
    slow = _SlowReceiver(1.0).start()
    try:
        add_endpoint(app, slow.url)
        for number in range(4):
            sign_up(app, client, f"reader{number}@example.org")
        deliver(app)
    finally:
        slow.stop()
    # The 4 requests arrived one after another, each 1 s after the one before (the receiver's delay):
    # the last left >= 3 s after the first, and its timestamp should say so (1 s of slack).
    stamps = [int(r.headers["webhook-timestamp"]) for r in slow.requests]
    assert len(stamps) == 4
    assert stamps[-1] - stamps[0] >= 2, stamps


# --- 5. erasure between signing and sending -----------------------------------------------------------------


class _ErasingClient(WebhookClient):
    """Before its first POST, erases the reader of the batch's other delivery (an erasure committed while the
    batch is being sent)."""

    def __init__(self, app, emails: dict[str, int], **kwargs) -> None:
        super().__init__(**kwargs)
        self.app, self.emails, self.erased = app, emails, None

    def post(self, url, body, headers):
        if self.erased is None:
            other = next(email for email in self.emails if email.encode() not in body)
            self.erased = other
            reader_id = self.emails[other]

            def erase() -> None:
                answer = self.app.test_client().delete(f"/api/v1/readers/{reader_id}", headers=admin_token(self.app))
                assert answer.status_code == 200, answer.get_data(as_text=True)

            thread = threading.Thread(target=erase)
            thread.start()
            thread.join(30)
        return super().post(url, body, headers)


def test_no_request_sent_after_an_erasure_carries_the_address(local_app, client, receiver):
    """A delivery is rendered just before its POST: a reader erased while the batch is being sent has no
    address in any request sent after the erasure committed."""
    app = local_app
    add_endpoint(app, receiver.url)
    emails = {"ann@example.org": sign_up(app, client, "ann@example.org"),
              "bob@example.org": sign_up(app, client, "bob@example.org")}
    with app.app_context():
        sender = webhook_sender.WebhookSender(app.config, client=_ErasingClient(
            app, emails, timeout=2, allow_private=True))
        try:
            sender.drain(db.session)
        finally:
            sender.close()
            db.session.remove()
    erased = sender.client.erased
    assert erased is not None
    [(erased_at,)] = query(app, "SELECT erased_at FROM readers WHERE id = :id", id=emails[erased])
    assert erased_at is not None
    leaked = [r for r in receiver.requests if erased.encode() in r.body]
    assert leaked == []


# --- 6. request forgery: a deprecated site-local IPv6 range passes the guard ---------------------------------


@pytest.mark.parametrize("url", ["http://[fec0::1]/hook", "http://[fec0:0:0:1::5]:8080/hook"])
def test_site_local_ipv6_addresses_are_refused(app, url):
    """fec0::/10 (site-local, RFC 3879) is still routed inside some networks; Python 3.11's is_global says
    True for it."""
    with app.app_context():
        with pytest.raises(webhooks.EndpointErrors):
            webhooks.create_endpoint(db.session, app.config, url=url)
        db.session.rollback()
        db.session.remove()


# --- 7. internationalized host names --------------------------------------------------------------------------


def test_an_internationalized_host_name_is_sent_as_punycode_in_the_host_header(local_app, client, receiver,
                                                                               monkeypatch):
    """https://bücher.example/ goes out as its A-label "xn--bcher-kva.example" (DNS, Host, TLS), not as raw
    Latin-1 bytes that no virtual host or certificate matches."""
    real = socket.getaddrinfo

    def fake(host, port, *args, **kwargs):
        if host in ("bücher.example", "xn--bcher-kva.example"):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", fake)
    app = local_app
    add_endpoint(app, f"http://bücher.example:{receiver.port}/hook")
    sign_up(app, client, "ann@example.org")
    deliver(app)
    [request] = receiver.requests
    assert request.headers["Host"] == f"xn--bcher-kva.example:{receiver.port}"


# --- 8. erasure and the delivery log -------------------------------------------------------------------------


def test_erasure_leaves_no_copy_of_the_address_in_the_delivery_log(local_app, client, receiver):
    """Receivers often quote what they got ("unknown list member ann@…"); erasure scrubs the log's copy of their
    answers as it scrubs bounce diagnostics."""
    app = local_app
    receiver.behaviour.status, receiver.behaviour.body = 200, b'{"ok": true, "added": "ann@example.org"}'
    add_endpoint(app, receiver.url)
    ann = sign_up(app, client, "ann@example.org")
    deliver(app)
    assert client.delete(f"/api/v1/readers/{ann}", headers=admin_token(app)).status_code == 200
    kept = query(app, "SELECT id FROM webhook_attempts WHERE response_start LIKE '%ann@example.org%' "
                      "OR error LIKE '%ann@example.org%'")
    assert kept == []


def test_deliveries_queued_before_an_erasure_are_still_delivered_without_the_address(local_app, client, receiver):
    """Erasure cancels the reader's unsent emails, not their queued webhook deliveries: an event queued while the
    receiver was down is still delivered (at least once), rendered at send time without the address."""
    app = local_app
    receiver.behaviour.status = 503
    endpoint_id, secret = add_endpoint(app, receiver.url)
    ann = sign_up(app, client, "ann@example.org")
    deliver(app)  # subscription.pending: the receiver is down, it waits for a retry
    headers = admin_token(app)
    assert client.delete(f"/api/v1/readers/{ann}", headers=headers).status_code == 200
    receiver.behaviour.status = 204
    before = len(receiver.requests)
    deliver(app)
    deliver(app)
    got = [r.verify(secret)["type"] for r in receiver.requests[before:]]
    assert got == ["subscription.pending", "subscription.unsubscribed", "reader.erased"]
    assert all(b"ann@example.org" not in r.body for r in receiver.requests[before:])
    described = client.get(f"/api/v1/webhooks/{endpoint_id}", headers=headers).get_json()
    assert described["failing_deliveries"] == 0


# --- 9. viewers and the receiver's key in the URL -------------------------------------------------------------


def test_a_viewer_does_not_see_the_receivers_key_in_an_endpoint_url(app):
    """The URL check tells admins to "put any key of the receiver's in the path or query" (and hook URLs of
    Zapier, Make, Slack … are bearer secrets themselves): viewers see it masked on the list, the endpoint page
    and the delivery log, e.g. https://crm.example.org/hooks/…"""
    from newsletter import accounts

    from .test_admin_auth import PASSWORD, log_in

    key = "k3y-0f-th3-r3c31v3r-9f8e7d"
    with app.app_context():
        endpoint, _ = webhooks.create_endpoint(db.session, app.config,
                                               url=f"https://crm.example.org/hooks/newsletter?key={key}")
        endpoint_id = endpoint.id
        accounts.create_admin(db.session, "looker@example.org", PASSWORD, "viewer")
        db.session.commit()
        db.session.remove()
    viewer = app.test_client()
    assert log_in(viewer, "looker@example.org", PASSWORD).status_code == 303
    for path in ["/admin/webhooks", f"/admin/webhooks/{endpoint_id}", f"/admin/webhooks/{endpoint_id}/deliveries"]:
        page = viewer.get(path)
        assert page.status_code == 200
        assert key not in page.get_data(as_text=True), path


def test_a_black_holed_endpoint_does_not_hold_up_the_other_endpoints(app):
    """One endpoint's host accepts connections and never answers, with a backlog of 200 readers' deliveries
    due before anything else: the next batch still carries the healthy endpoint's delivery, sent in its own
    thread (claims are fair between endpoints, a few rows of each per batch)."""
    app.config["NEWSLETTER_WEBHOOK_ALLOW_PRIVATE"] = True
    app.config["NEWSLETTER_WEBHOOK_TIMEOUT"] = 1
    hole = socket.socket()
    hole.bind(("127.0.0.1", 0))
    hole.listen(1024)  # accepts (the kernel does) and never answers
    healthy = Receiver().start()
    try:
        hole_id, _ = add_endpoint(app, f"http://127.0.0.1:{hole.getsockname()[1]}/hook")
        client = app.test_client()
        for number in range(200):
            assert client.post("/api/v1/subscriptions", json={"email": f"backlog{number}@example.org",
                                                              "newsletters": ["daily-briefing"]}).status_code == 202
        with app.app_context():
            webhook_sender.dispatch(db.session)
            db.session.remove()
        healthy_id, secret = add_endpoint(app, healthy.url)
        assert client.post("/api/v1/subscriptions", json={"email": "fresh@example.org",
                                                          "newsletters": ["daily-briefing"]}).status_code == 202
        with app.app_context():
            sender = webhook_sender.WebhookSender(app.config)
            try:
                webhook_sender.dispatch(db.session)
                sender.deliver_due(db.session, webhook_sender.DeliveryResult())  # one batch
            finally:
                sender.close()
                db.session.remove()
        assert [r.verify(secret)["data"]["reader"]["email"] for r in healthy.requests] == ["fresh@example.org"]
        assert query(app, "SELECT count(*) FROM outbox_messages WHERE endpoint_id = :e AND status = 'sent'",
                     e=healthy_id) == [(1,)]
        assert query(app, "SELECT count(*) FROM outbox_messages WHERE endpoint_id = :e AND status = 'pending'",
                     e=hole_id) == [(201,)]  # none lost
    finally:
        healthy.stop()
        hole.close()
