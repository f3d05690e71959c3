"""Bounces and complaints from the sending platforms: POST /api/v1/events/<provider>.

Each provider's documented sample payload (tests/data/events/, sources in SOURCES.md) is sent as the
provider sends it: signed with keys made here (an RSA key and self-signed certificate for Amazon SNS,
an ECDSA P-256 key for SendGrid, an HMAC key for Mailgun), over real HTTP for one test per provider.
Only the fetch of SNS's certificate (and of its SubscribeURL) is intercepted: the real AWS can't
answer here. The signature checks themselves run for real.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from newsletter import suppressions
from newsletter.extensions import db
from newsletter.provider_events import sns

from .conftest import query
from .test_api_v1 import bearer, make_token

DATA = Path(__file__).parent / "data" / "events"
TOPIC = "arn:aws:sns:us-west-2:123456789012:MyTopic"
CERT_URL = "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem"
POSTMARK_AUTH = "postmark-hook:s3cret-Pa55word"
MAILGUN_KEY = "key-mailgun-signing-0123456789abcdef"


def sample(name: str):
    return json.loads((DATA / name).read_text())


def stopped(app, address: str) -> str | None:
    """The reason mail to `address` is stopped, or None."""
    with app.app_context():
        try:
            entry = suppressions.mail_stopped(db.session, app.config, address)
            return entry.reason if entry else None
        finally:
            db.session.remove()


def events_of(app, provider: str | None = None) -> list[tuple]:
    sql = "SELECT kind, provider, provider_event_id, diagnostic FROM delivery_events"
    if provider:
        return query(app, sql + " WHERE provider = :provider ORDER BY id", provider=provider)
    return query(app, sql + " ORDER BY id")


# --- Amazon SES through SNS ---------------------------------------------------------------------------

class SnsSigner:
    """Signs SNS messages as Amazon does, with a key and certificate of its own; counts certificate fetches."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.amazonaws.com")])
        now = datetime.now(timezone.utc)
        certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                       .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                       .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
                       .sign(self.key, hashes.SHA256()))
        self.pem = certificate.public_bytes(serialization.Encoding.PEM)
        self.fetched: list[str] = []

    def fetch(self, url: str, timeout: float) -> bytes:
        self.fetched.append(url)
        if url.endswith(".pem"):
            return self.pem
        return b"<ConfirmSubscriptionResponse><ConfirmSubscriptionResult/></ConfirmSubscriptionResponse>"

    def sign(self, message: dict, version: str = "1") -> dict:
        """`message` with SignatureVersion, SigningCertURL (unless given) and a fresh Signature."""
        message = {"SigningCertURL": CERT_URL, **message, "SignatureVersion": version}
        if message["Type"] == "Notification":
            names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
        else:
            names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
        text = "".join(f"{name}\n{message[name]}\n" for name in names if message.get(name) is not None)
        algorithm = hashes.SHA1() if version == "1" else hashes.SHA256()
        signature = self.key.sign(text.encode(), padding.PKCS1v15(), algorithm)
        message["Signature"] = base64.b64encode(signature).decode()
        return message


@pytest.fixture
def signer(app, monkeypatch) -> SnsSigner:
    signer = SnsSigner()
    monkeypatch.setattr(sns, "fetch", signer.fetch)
    sns.CERTIFICATES.clear()
    app.config["NEWSLETTER_SES_TOPIC_ARNS"] = [TOPIC]
    yield signer
    sns.CERTIFICATES.clear()


def notification(ses_message: dict, message_id: str | None = None) -> dict:
    """The documented SNS notification envelope around an SES notification."""
    envelope = sample("sns_notification.json")
    envelope.pop("Subject")  # SES's notifications have none
    envelope.update(Message=json.dumps(ses_message), MessageId=message_id or str(uuid.uuid4()))
    return envelope


def post_sns(client, message: dict, **headers):
    return client.post("/api/v1/events/ses", data=json.dumps(message),
                       headers={"Content-Type": "text/plain; charset=UTF-8",
                                "x-amz-sns-message-type": message.get("Type", ""), **headers})


def test_ses_bounce_over_real_http_suppresses_and_a_redelivery_is_recorded_once(app, live_server, signer):
    message = signer.sign(notification(sample("ses_bounce.json")))
    for attempt in range(2):
        answer = requests.post(f"{live_server}/api/v1/events/ses", data=json.dumps(message), timeout=10,
                               headers={"Content-Type": "text/plain; charset=UTF-8",
                                        "x-amz-sns-message-type": "Notification"})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"recorded": 1 - attempt, "repeated": attempt, "skipped": 0, "problems": []}
    assert stopped(app, "jane@example.com") == "hard_bounce"
    assert stopped(app, "Jane@EXAMPLE.com") == "hard_bounce"
    assert stopped(app, "mary@example.com") is None  # in the destination, not among the bounced recipients
    [(kind, provider, event_id, diagnostic)] = events_of(app)
    assert (kind, provider) == ("hard_bounce", "ses")
    assert event_id.startswith("00000138111222aa-33322211-cccc-cccc-cccc-ddddaaaa068a-000000:")
    assert "jane" not in event_id  # the id outlives an erasure: no address in it
    assert diagnostic == "Permanent / General: smtp; 550 5.1.1 <jane@example.com>... User"
    # The certificate was fetched once, then taken from the cache.
    assert signer.fetched == [CERT_URL]


def test_ses_complaint_signed_with_signature_version_2(app, client, signer):
    answer = post_sns(client, signer.sign(notification(sample("ses_complaint.json")), version="2"))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert stopped(app, "richard@example.com") == "complaint"
    assert events_of(app)[0][3] == "Complaint (abuse) via AnyCompany Feedback Loop (V0.01)"


def test_ses_event_publishing_uses_event_type_and_transient_bounces_accumulate(app, client, signer):
    for number in range(3):
        assert stopped(app, "jane@example.com") is None
        bounce = sample("ses_bounce.json")
        del bounce["notificationType"]
        bounce["eventType"] = "Bounce"  # configuration-set event publishing
        bounce["bounce"].update(bounceType="Transient", bounceSubType="MailboxFull",
                                feedbackId=f"feedback-{number}")
        answer = post_sns(client, signer.sign(notification(bounce)))
        assert answer.status_code == 200 and answer.get_json()["recorded"] == 1
    assert stopped(app, "jane@example.com") == "soft_bounces"
    assert [row[0] for row in events_of(app)] == ["soft_bounce"] * 3


@pytest.mark.parametrize("change", [
    lambda message: message.update(Message=message["Message"].replace("jane@example.com", "john@example.com")),
    lambda message: message.update(MessageId="another-id"),
    lambda message: message.update(Timestamp="2030-01-01T00:00:00.000Z"),
    lambda message: message.update(Signature=base64.b64encode(b"\x00" * 256).decode()),
    lambda message: message.update(Signature="not base64 !"),
    lambda message: message.pop("Signature"),
], ids=["message", "message-id", "timestamp", "zero-signature", "not-base64", "no-signature"])
def test_ses_tampered_message_is_refused_and_nothing_recorded(app, client, signer, change):
    message = signer.sign(notification(sample("ses_bounce.json")))
    change(message)
    answer = post_sns(client, message)
    assert answer.status_code == 401, answer.get_data(as_text=True)
    assert answer.get_json()["errors"]
    assert events_of(app) == [] and stopped(app, "jane@example.com") is None


def test_ses_message_signed_by_another_key_is_refused(app, client, signer):
    other = SnsSigner()
    answer = post_sns(client, other.sign(notification(sample("ses_bounce.json"))))
    assert answer.status_code == 401
    assert events_of(app) == []


@pytest.mark.parametrize("url", [
    "http://sns.us-west-2.amazonaws.com/cert.pem",
    "https://sns.us-west-2.amazonaws.com.evil.example/cert.pem",
    "https://evil.example/sns.us-west-2.amazonaws.com/cert.pem",
    "https://sns.us-west-2.amazonaws.com:8443/cert.pem",
    "https://user@sns.us-west-2.amazonaws.com/cert.pem",
    "https://s3.amazonaws.com/cert.pem",
    "https://127.0.0.1/cert.pem",
    "file:///etc/passwd",
    # The S3 bucket called "sns" (virtual-hosted style): whoever owns it could serve a certificate.
    "https://sns.s3.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem",
    "https://sns.s3-external-1.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem",
    # SNS's host, but not the path of its signing certificates.
    "https://sns.us-west-2.amazonaws.com/cert.pem",
    "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-f3ecfb7224c7233fe7bb5f59f96de52f.pem?x=1",
    "https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription",
])
def test_certificate_url_off_an_sns_host_or_path_is_never_fetched(app, client, signer, url):
    message = signer.sign({**notification(sample("ses_bounce.json")), "SigningCertURL": url})
    answer = post_sns(client, message)
    assert answer.status_code == 403, answer.get_data(as_text=True)
    assert "Amazon SNS host" in answer.get_json()["errors"]["request"][0]
    assert signer.fetched == []
    assert events_of(app) == []


@pytest.mark.parametrize("host", ["sns.cn-north-1.amazonaws.com.cn", "sns.us-gov-west-1.amazonaws.com",
                                  "sns.eu-central-2.amazonaws.com"])
def test_regional_sns_certificate_hosts_are_accepted(app, client, signer, host):
    url = f"https://{host}/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem"
    answer = post_sns(client, signer.sign({**notification(sample("ses_bounce.json")), "SigningCertURL": url}))
    assert answer.status_code == 200
    assert signer.fetched == [url]


@pytest.mark.parametrize("version", ["3", "", None, 1])
def test_unknown_signature_version_is_refused(app, client, signer, version):
    message = signer.sign(notification(sample("ses_bounce.json")))
    message["SignatureVersion"] = version
    answer = post_sns(client, message)
    assert answer.status_code == 401
    assert "SignatureVersion" in answer.get_json()["errors"]["request"][0]
    assert events_of(app) == []


def test_topic_not_listed_is_refused(app, client, signer):
    message = notification(sample("ses_bounce.json"))
    message["TopicArn"] = "arn:aws:sns:us-west-2:999999999999:someone-elses"
    answer = post_sns(client, signer.sign(message))
    assert answer.status_code == 403
    assert "NEWSLETTER_SES_TOPIC_ARNS" in answer.get_json()["errors"]["request"][0]
    assert signer.fetched == [] and events_of(app) == []


def test_subscription_confirmation_is_verified_then_confirmed(app, client, signer):
    confirmation = signer.sign(sample("sns_subscription_confirmation.json"))
    answer = post_sns(client, confirmation)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert signer.fetched == [CERT_URL, confirmation["SubscribeURL"]]
    assert events_of(app) == []


def test_forged_subscription_confirmation_is_not_confirmed(app, client, signer):
    confirmation = signer.sign(sample("sns_subscription_confirmation.json"))
    confirmation["SubscribeURL"] = "https://internal.example/admin?delete=all"
    assert post_sns(client, confirmation).status_code == 401  # the signature no longer matches
    signed_elsewhere = signer.sign({**sample("sns_subscription_confirmation.json"),
                                    "SubscribeURL": "https://internal.example/admin?delete=all"})
    assert post_sns(client, signed_elsewhere).status_code == 403  # signed, but not an SNS URL
    assert "internal.example" not in " ".join(signer.fetched)


@pytest.mark.parametrize("subscribe_url", [
    "https://sns.us-west-2.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem",
    "https://sns.us-west-2.amazonaws.com/?Action=Publish&TopicArn=x",
    "https://sns.s3.amazonaws.com/?Action=ConfirmSubscription&Token=t",
    "https://sns.us-west-2.amazonaws.com/other?Action=ConfirmSubscription&Token=t",
])
def test_a_signed_subscribe_url_that_is_not_snss_confirmation_is_not_visited(app, client, signer, subscribe_url):
    confirmation = signer.sign({**sample("sns_subscription_confirmation.json"), "SubscribeURL": subscribe_url})
    answer = post_sns(client, confirmation)
    assert answer.status_code == 403, answer.get_data(as_text=True)
    assert signer.fetched == [CERT_URL]


def test_other_messages_on_the_topic_and_other_ses_events_are_accepted_and_ignored(app, client, signer):
    plain = signer.sign({**sample("sns_notification.json"), "TopicArn": TOPIC})  # "Hello world!", with a Subject
    assert post_sns(client, plain).status_code == 200
    delivery = {"notificationType": "Delivery", "mail": {}, "delivery": {"recipients": ["jane@example.com"]}}
    answer = post_sns(client, signer.sign(notification(delivery)))
    assert answer.status_code == 200 and answer.get_json()["recorded"] == 0
    assert events_of(app) == []


@pytest.mark.parametrize("body, status", [
    (b"not json", 422),
    (b"[1, 2]", 422),
    (b'{"Type": "Notification", "TopicArn": "' + TOPIC.encode() + b'", "Message": "\xff\xfe"}', 422),
    (b'{"Type": "Surprise", "TopicArn": "' + TOPIC.encode() + b'", "SignatureVersion": "1"}', 422),
    (b"[" * 100000 + b"]" * 100000, 422),
])
def test_malformed_sns_bodies_get_a_clear_4xx(app, client, signer, body, status):
    answer = client.post("/api/v1/events/ses", data=body, headers={"Content-Type": "text/plain; charset=UTF-8"})
    assert answer.status_code == status, answer.get_data(as_text=True)[:300]
    assert answer.get_json()["errors"]


def test_nul_and_lone_surrogates_inside_a_signed_notification_do_no_harm(app, client, signer):
    bounce = sample("ses_bounce.json")
    bounce["bounce"]["bouncedRecipients"] = [
        {"emailAddress": "jane@example.com", "diagnosticCode": "smtp; 550 \x00 user \ud800 unknown"},
        {"emailAddress": "nul\x00@example.com"},
        {"emailAddress": "\udc80@example.com"},
    ]
    answer = post_sns(client, signer.sign(notification(bounce)))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["recorded"] == 1 and answer.get_json()["skipped"] == 2
    assert stopped(app, "jane@example.com") == "hard_bounce"
    assert "\x00" not in events_of(app)[0][3]


def test_certificate_that_cannot_be_fetched_is_a_503_so_sns_retries(app, client, signer, monkeypatch):
    def unreachable(url, timeout):
        raise OSError("connection timed out")

    monkeypatch.setattr(sns, "fetch", unreachable)
    answer = post_sns(client, signer.sign(notification(sample("ses_bounce.json"))))
    assert answer.status_code == 503 and answer.headers["Retry-After"]
    assert events_of(app) == []


# --- Postmark -----------------------------------------------------------------------------------------

@pytest.fixture
def postmark(app):
    app.config["NEWSLETTER_POSTMARK_WEBHOOK_AUTH"] = POSTMARK_AUTH


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def test_postmark_bounce_over_real_http_with_credentials_in_the_url(app, live_server, postmark):
    host = live_server.removeprefix("http://")
    answer = requests.post(f"http://{POSTMARK_AUTH}@{host}/api/v1/events/postmark", json=sample("postmark_bounce.json"),
                           timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json()["recorded"] == 1
    assert stopped(app, "john@example.com") == "hard_bounce"
    [(kind, provider, event_id, diagnostic)] = events_of(app)
    assert (kind, provider, event_id) == ("hard_bounce", "postmark", "4323372036854775807")
    assert diagnostic == "HardBounce: Test bounce details"


@pytest.mark.parametrize("headers", [
    {},
    basic("postmark-hook:wrong"),
    basic("postmark-hook"),
    basic("other:s3cret-Pa55word"),
    {"Authorization": "Bearer " + POSTMARK_AUTH},
    {"Authorization": "Basic !!!"},
])
def test_postmark_without_the_right_credentials_is_refused(app, client, postmark, headers):
    answer = client.post("/api/v1/events/postmark", json=sample("postmark_bounce.json"), headers=headers)
    assert answer.status_code == 401
    assert answer.headers["WWW-Authenticate"].startswith("Basic")
    assert events_of(app) == [] and stopped(app, "john@example.com") is None


def test_postmark_spam_complaint(app, client, postmark):
    answer = client.post("/api/v1/events/postmark", json=sample("postmark_spam_complaint.json"),
                         headers=basic(POSTMARK_AUTH))
    assert answer.status_code == 200
    assert stopped(app, "john@example.com") == "complaint"


@pytest.mark.parametrize("bounce_type, kind", [
    ("HardBounce", "hard_bounce"), ("BadEmailAddress", "hard_bounce"),
    ("SoftBounce", "soft_bounce"), ("Transient", "soft_bounce"), ("DnsError", "soft_bounce"),
    ("SpamNotification", "soft_bounce"), ("Blocked", "soft_bounce"), ("Unknown", "soft_bounce"),
    ("AutoResponder", None), ("AddressChange", None), ("ChallengeVerification", None), ("Subscribe", None),
    ("Unsubscribe", None), ("ManuallyDeactivated", None), ("DMARCPolicy", None), ("SMTPApiError", None),
])
def test_postmark_bounce_types(app, client, postmark, bounce_type, kind):
    answer = client.post("/api/v1/events/postmark", json={**sample("postmark_bounce.json"), "Type": bounce_type},
                         headers=basic(POSTMARK_AUTH))
    assert answer.status_code == 200
    assert [row[0] for row in events_of(app)] == ([kind] if kind else [])


def test_postmark_soft_bounces_count_once_per_message_and_suppress_at_the_limit(app, client, postmark):
    def soft(message_id: str, bounce_id: int):
        return client.post("/api/v1/events/postmark", headers=basic(POSTMARK_AUTH), json={
            **sample("postmark_bounce.json"), "Type": "SoftBounce", "ID": bounce_id, "MessageID": message_id})

    assert soft("message-1", 1).get_json()["recorded"] == 1
    assert soft("message-1", 2).get_json()["repeated"] == 1  # the same message reported again
    assert soft("message-2", 3).get_json()["recorded"] == 1
    assert stopped(app, "john@example.com") is None
    assert soft("message-3", 4).get_json()["recorded"] == 1
    assert stopped(app, "john@example.com") == "soft_bounces"


def test_postmark_other_records_are_accepted_and_ignored(app, client, postmark):
    delivery = {"RecordType": "Delivery", "ServerID": 23, "MessageStream": "outbound",
                "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "Recipient": "john@example.com",
                "Tag": "welcome-email", "DeliveredAt": "2019-11-05T16:33:54.9070259Z", "Details": "Test delivery"}
    answer = client.post("/api/v1/events/postmark", json=delivery, headers=basic(POSTMARK_AUTH))
    assert answer.status_code == 200 and answer.get_json()["recorded"] == 0
    assert events_of(app) == []


@pytest.mark.parametrize("body, content_type, status", [
    ("not json", "application/json", 422),
    ("[]", "application/json", 422),
    ('{"RecordType": "Bounce", "Email": "a\\u0000b@example.com"}', "application/json", 422),
    ('{"RecordType": "Bounce", "Details": "\\udc80"}', "application/json", 422),
    ('{"RecordType": "Bounce", "Email": 42, "Type": "HardBounce"}', "application/json", 200),
    ('{"RecordType": "Bounce", "Email": "not an address", "Type": "HardBounce"}', "application/json", 200),
])
def test_postmark_malformed_bodies(app, client, postmark, body, content_type, status):
    answer = client.post("/api/v1/events/postmark", data=body, content_type=content_type,
                         headers=basic(POSTMARK_AUTH))
    assert answer.status_code == status, answer.get_data(as_text=True)
    assert events_of(app) == []


# --- SendGrid -----------------------------------------------------------------------------------------

class SendGridSigner:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public_key = base64.b64encode(der).decode()  # as SendGrid shows it

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        signature = self.key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {"Content-Type": "application/json",
                "X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(signature).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": stamp}


@pytest.fixture
def sendgrid(app) -> SendGridSigner:
    signer = SendGridSigner()
    app.config["NEWSLETTER_SENDGRID_WEBHOOK_PUBLIC_KEY"] = signer.public_key
    return signer


def test_sendgrid_batch_over_real_http(app, live_server, sendgrid):
    body = (DATA / "sendgrid_events.json").read_bytes()
    answer = requests.post(f"{live_server}/api/v1/events/sendgrid", data=body, headers=sendgrid.headers(body),
                           timeout=10)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"recorded": 4, "repeated": 0, "skipped": 0, "problems": []}
    assert stopped(app, "bounce@example.com") == "hard_bounce"
    assert stopped(app, "dropped@example.com") == "hard_bounce"  # dropped: Bounced Address
    assert stopped(app, "spamreport@example.com") == "complaint"
    assert stopped(app, "blocked@example.com") is None  # one soft bounce so far
    for address in ("processed", "deferred", "delivered", "open", "unsubscribed"):
        assert stopped(app, f"{address}@example.com") is None
    kinds = {event_id: (kind, diagnostic) for kind, _, event_id, diagnostic in events_of(app, "sendgrid")}
    assert kinds["H8Ah4o8DSx2pr1r3ZbF8Jg=="] == (
        "soft_bounce", "bounce (blocked): 5.7.1 550 5.7.1 Message rejected due to sender reputation")
    # SendGrid retries a batch it got no 2xx for: the same events are recorded once.
    again = requests.post(f"{live_server}/api/v1/events/sendgrid", data=body, headers=sendgrid.headers(body),
                          timeout=10)
    assert again.json()["repeated"] == 4 and len(events_of(app)) == 4


def test_sendgrid_tampered_or_unsigned_batches_are_refused(app, client, sendgrid):
    body = (DATA / "sendgrid_events.json").read_bytes()
    headers = sendgrid.headers(body)
    tampered = body.replace(b"bounce@example.com", b"victim@example.com")
    assert client.post("/api/v1/events/sendgrid", data=tampered, headers=headers).status_code == 401
    later = {**headers, "X-Twilio-Email-Event-Webhook-Timestamp": str(int(time.time()) + 1)}
    assert client.post("/api/v1/events/sendgrid", data=body, headers=later).status_code == 401
    assert client.post("/api/v1/events/sendgrid", data=body,
                       headers={"Content-Type": "application/json"}).status_code == 401
    other = SendGridSigner()
    assert client.post("/api/v1/events/sendgrid", data=body, headers=other.headers(body)).status_code == 401
    assert events_of(app) == []


def test_sendgrid_old_signature_is_refused_as_a_replay(app, client, sendgrid):
    body = (DATA / "sendgrid_events.json").read_bytes()
    answer = client.post("/api/v1/events/sendgrid", data=body,
                         headers=sendgrid.headers(body, timestamp=int(time.time()) - 3600))
    assert answer.status_code == 403
    assert "replay" in answer.get_json()["errors"]["request"][0]
    assert events_of(app) == []


@pytest.mark.parametrize("reason, kind", [
    ("Bounced Address", "hard_bounce"), ("Invalid", "hard_bounce"), ("Spam Reporting Address", "complaint"),
    ("Expired", "soft_bounce"), ("Unsubscribed Address", None), ("Spam Content (if spam checker app enabled)", None),
])
def test_sendgrid_dropped_reasons(app, client, sendgrid, reason, kind):
    body = json.dumps([{"email": "dropped@example.com", "timestamp": 1513299569, "event": "dropped",
                        "sg_event_id": "drop-1", "reason": reason}]).encode()
    assert client.post("/api/v1/events/sendgrid", data=body, headers=sendgrid.headers(body)).status_code == 200
    assert [row[0] for row in events_of(app)] == ([kind] if kind else [])


def test_sendgrid_batch_larger_than_a_signup_body_is_taken_up_to_the_events_limit(app, client, sendgrid):
    events = [{"email": f"reader{n}@example.com", "timestamp": 1513299569, "event": "delivered",
               "sg_event_id": f"id-{n}", "response": "250 OK " + "x" * 100} for n in range(2000)]
    events.append({"email": "last@example.com", "timestamp": 1513299569, "event": "bounce", "type": "bounce",
                   "sg_event_id": "last", "reason": "550 5.1.1 unknown", "status": "5.1.1"})
    body = json.dumps(events).encode()
    assert 64 * 1024 < len(body) < 1024 * 1024
    answer = client.post("/api/v1/events/sendgrid", data=body, headers=sendgrid.headers(body))
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]
    assert stopped(app, "last@example.com") == "hard_bounce"

    huge = json.dumps(events * 6).encode()
    assert len(huge) > 1024 * 1024
    answer = client.post("/api/v1/events/sendgrid", data=huge, headers=sendgrid.headers(huge))
    assert answer.status_code == 413
    assert "1048576 bytes" in answer.get_json()["errors"]["request"][0]


def test_signup_body_limit_is_unchanged(app, client):
    answer = client.post("/api/v1/subscriptions", json={"email": "a@example.org", "newsletters": ["x" * 70000]})
    assert answer.status_code == 413
    assert "65536 bytes" in answer.get_json()["errors"]["request"][0]


def test_sendgrid_odd_events_in_a_signed_batch(app, client, sendgrid):
    body = json.dumps([
        "not an event", 42, None,
        {"event": "bounce", "email": "nul\u0000@example.com", "sg_event_id": "a", "type": "bounce"},
        {"event": "bounce", "email": "\udc80@example.com", "sg_event_id": "b", "type": "bounce"},
        {"event": "bounce", "email": "not an address", "sg_event_id": "c", "type": "bounce"},
        {"event": "bounce", "email": ["x@example.com"], "sg_event_id": "d"},
        {"event": "spamreport", "email": "fine@example.com", "sg_event_id": "e", "timestamp": "soon",
         "reason": "\u0000\udc80"},
    ]).encode()
    answer = client.post("/api/v1/events/sendgrid", data=body, headers=sendgrid.headers(body))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json()["recorded"] == 1 and answer.get_json()["skipped"] == 3
    assert stopped(app, "fine@example.com") == "complaint"


@pytest.mark.parametrize("body", [b"{}", b"not json", b'"text"', b"\xff\xfe"])
def test_sendgrid_signed_body_that_is_not_a_batch_is_422(app, client, sendgrid, body):
    answer = client.post("/api/v1/events/sendgrid", data=body, headers=sendgrid.headers(body))
    assert answer.status_code == 422
    assert events_of(app) == []


# --- Mailgun ------------------------------------------------------------------------------------------

@pytest.fixture
def mailgun(app):
    app.config["NEWSLETTER_MAILGUN_SIGNING_KEY"] = MAILGUN_KEY


def mailgun_signed(payload: dict, *, timestamp: int | None = None, token: str | None = None,
                   key: str = MAILGUN_KEY) -> dict:
    """The sample with a fresh signature block, as Mailgun signs it: HMAC-SHA256(key, timestamp + token)."""
    payload = copy.deepcopy(payload)
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    token = token or uuid.uuid4().hex + uuid.uuid4().hex[:18]
    payload["signature"] = {"timestamp": stamp, "token": token,
                            "signature": hmac.new(key.encode(), (stamp + token).encode(), hashlib.sha256).hexdigest()}
    return payload


def test_mailgun_permanent_failure_over_real_http_and_a_replayed_token_is_refused(app, live_server, mailgun):
    payload = mailgun_signed(sample("mailgun_failed_permanent.json"))
    answer = requests.post(f"{live_server}/api/v1/events/mailgun", json=payload, timeout=10)
    assert answer.status_code == 200, answer.text
    assert stopped(app, "alice@example.com") == "hard_bounce"
    [(kind, provider, event_id, diagnostic)] = events_of(app)
    assert (kind, event_id) == ("hard_bounce", "G9Bn5sl1TC6nu79C8C0bwg")
    assert diagnostic == "failed / permanent / suppress-bounce: 605 Not delivering to previously bounced address"
    replay = requests.post(f"{live_server}/api/v1/events/mailgun", json=payload, timeout=10)
    assert replay.status_code == 403
    assert "replay" in replay.json()["errors"]["request"][0]
    assert len(events_of(app)) == 1


def test_mailgun_bad_or_old_signatures_are_refused(app, client, mailgun):
    base = sample("mailgun_failed_permanent.json")
    wrong_key = mailgun_signed(base, key="another-key")
    assert client.post("/api/v1/events/mailgun", json=wrong_key).status_code == 401
    tampered = mailgun_signed(base)
    tampered["signature"]["token"] = "x" + tampered["signature"]["token"][1:]
    assert client.post("/api/v1/events/mailgun", json=tampered).status_code == 401
    assert client.post("/api/v1/events/mailgun", json=base).status_code == 401  # signed with Mailgun's own key
    old = mailgun_signed(base, timestamp=int(time.time()) - 3600)
    assert client.post("/api/v1/events/mailgun", json=old).status_code == 403
    unsigned = {"event-data": base["event-data"]}
    assert client.post("/api/v1/events/mailgun", json=unsigned).status_code == 401
    future = mailgun_signed(base, timestamp=int(time.time()) + 3600)
    assert client.post("/api/v1/events/mailgun", json=future).status_code == 403
    assert events_of(app) == []


def test_mailgun_temporary_failures_count_once_per_message(app, client, mailgun):
    temporary = sample("mailgun_failed_temporary.json")
    for attempt in range(2):  # Mailgun reports each retry of the same message
        temporary["event-data"]["id"] = f"attempt-{attempt}"
        answer = client.post("/api/v1/events/mailgun", json=mailgun_signed(temporary))
        assert answer.status_code == 200
    assert [row[0] for row in events_of(app)] == ["soft_bounce"]
    assert events_of(app)[0][3] == ("failed / temporary / generic: "
                                    "452 4.2.2 The email account that you tried to reach is over quota.")
    for message in range(2):
        temporary["event-data"]["message"]["headers"]["message-id"] = f"other-{message}@example.org"
        client.post("/api/v1/events/mailgun", json=mailgun_signed(temporary))
    assert stopped(app, "alice@example.com") == "soft_bounces"


def test_mailgun_complaint_and_ignored_events(app, client, mailgun):
    assert client.post("/api/v1/events/mailgun", json=mailgun_signed(sample("mailgun_complained.json"))).status_code == 200
    assert stopped(app, "alice@example.com") == "complaint"
    for event in ({"event": "delivered"}, {"event": "opened"},
                  {"event": "failed", "severity": "permanent", "reason": "suppress-unsubscribe"}):
        data = {**sample("mailgun_complained.json")["event-data"], **event, "recipient": "bob@example.com", "id": "x"}
        answer = client.post("/api/v1/events/mailgun", json=mailgun_signed({"event-data": data}))
        assert answer.status_code == 200 and answer.get_json()["recorded"] == 0
    assert stopped(app, "bob@example.com") is None


def test_mailgun_legacy_form_webhook_is_refused_clearly(app, client, mailgun):
    answer = client.post("/api/v1/events/mailgun", data={"event": "bounced", "recipient": "alice@example.com"})
    assert answer.status_code == 422
    assert "legacy" in answer.get_json()["errors"]["body"][0]


# --- the generic shape --------------------------------------------------------------------------------

def test_generic_events_with_an_admin_token(app, client):
    token = make_token(app, "admin")
    body = {"events": [
        {"type": "hard_bounce", "email": "Gone@Example.org", "occurred_at": "2026-11-30T08:15:00Z",
         "diagnostic": "550 5.1.1 user unknown", "id": "evt-1"},
        {"type": "complaint", "email": "angry@example.org"},
        {"type": "soft_bounce", "email": "not an address", "id": "evt-3"},
    ]}
    answer = client.post("/api/v1/events/generic", json=body, headers=bearer(token))
    assert answer.status_code == 200, answer.get_data(as_text=True)
    assert answer.get_json() == {"recorded": 2, "repeated": 0, "skipped": 1,
                                 "problems": ["'not an address' is not a valid email address: skipped."]}
    assert stopped(app, "gone@example.org") == "hard_bounce"
    assert stopped(app, "angry@example.org") == "complaint"
    again = client.post("/api/v1/events/generic", json={"events": body["events"][:1]}, headers=bearer(token))
    assert again.get_json()["repeated"] == 1
    assert query(app, "SELECT provider, occurred_at FROM delivery_events WHERE provider_event_id = 'evt-1'")[0][0] == "generic"


def test_generic_events_need_an_admin_token(app, client):
    body = {"events": [{"type": "hard_bounce", "email": "gone@example.org"}]}
    assert client.post("/api/v1/events/generic", json=body).status_code == 401
    assert client.post("/api/v1/events/generic", json=body, headers=bearer("nlt_wrong")).status_code == 401
    viewer = make_token(app, "viewer")
    assert client.post("/api/v1/events/generic", json=body, headers=bearer(viewer)).status_code == 403
    assert events_of(app) == []


@pytest.mark.parametrize("body, field", [
    ({}, "body"),
    ({"events": []}, "events"),
    ({"events": "x"}, "events"),
    ({"events": [{"type": "bounce", "email": "a@example.org"}]}, "events[0].type"),
    ({"events": [{"type": "hard_bounce"}]}, "events[0].email"),
    ({"events": [{"type": "hard_bounce", "email": "a@example.org", "occurred_at": "yesterday"}]},
     "events[0].occurred_at"),
    ({"events": [{"type": "hard_bounce", "email": "a@example.org", "id": 5}]}, "events[0].id"),
    ({"events": [{"type": "hard_bounce", "email": "a@example.org", "colour": "red"}]}, "events[0]"),
    ({"events": [{"type": "hard_bounce", "email": "a@example.org"}] * 1001}, "events"),
    ({"events": [{"type": "hard_bounce", "email": "a@example.org", "diagnostic": "\u0000"}]}, "events"),
])
def test_generic_malformed_bodies_get_422_naming_the_field_and_record_nothing(app, client, body, field):
    token = make_token(app, "admin")
    answer = client.post("/api/v1/events/generic", json=body, headers=bearer(token))
    assert answer.status_code == 422, answer.get_data(as_text=True)
    assert field in answer.get_json()["errors"]
    assert events_of(app) == []


DEEP = "[" * 100000 + "]" * 100000


@pytest.mark.parametrize("provider", ["postmark", "mailgun", "generic"])
def test_absurdly_nested_json_is_a_422_not_a_crash(app, client, provider):
    app.config.update(NEWSLETTER_POSTMARK_WEBHOOK_AUTH=POSTMARK_AUTH, NEWSLETTER_MAILGUN_SIGNING_KEY=MAILGUN_KEY)
    headers = basic(POSTMARK_AUTH) if provider == "postmark" else bearer(make_token(app, "admin"))
    answer = client.post(f"/api/v1/events/{provider}", data=DEEP, content_type="application/json", headers=headers)
    assert answer.status_code == 422, answer.get_data(as_text=True)[:300]


def test_generic_needs_json(app, client):
    token = make_token(app, "admin")
    answer = client.post("/api/v1/events/generic", data="events", headers=bearer(token))
    assert answer.status_code == 415 and "application/json" in answer.get_json()["errors"]["request"][0]


# --- every provider ---------------------------------------------------------------------------------

@pytest.mark.parametrize("provider, setting", [
    ("ses", "NEWSLETTER_SES_TOPIC_ARNS"), ("postmark", "NEWSLETTER_POSTMARK_WEBHOOK_AUTH"),
    ("sendgrid", "NEWSLETTER_SENDGRID_WEBHOOK_PUBLIC_KEY"), ("mailgun", "NEWSLETTER_MAILGUN_SIGNING_KEY"),
])
def test_unconfigured_provider_is_404_and_takes_nothing(app, client, provider, setting):
    answer = client.post(f"/api/v1/events/{provider}", json={"event-data": {}, "RecordType": "Bounce"})
    assert answer.status_code == 404
    message = answer.get_json()["errors"]["request"][0]
    assert "not configured" in message and setting in message
    assert events_of(app) == []


def test_unknown_provider_is_404(app, client):
    answer = client.post("/api/v1/events/sparkpost", json={})
    assert answer.status_code == 404 and "ses, postmark, sendgrid, mailgun, generic" in answer.get_json()["errors"]["request"][0]


def test_webhooks_are_not_held_by_the_signup_rate_limits(app, client, mailgun):
    app.config["NEWSLETTER_RATE_LIMIT_IP"] = "2/minute"
    for number in range(5):
        payload = mailgun_signed(sample("mailgun_complained.json"))
        payload["event-data"]["id"] = f"complaint-{number}"
        assert client.post("/api/v1/events/mailgun", json=payload).status_code == 200
    statuses = [client.post("/api/v1/subscriptions", json={"email": f"r{n}@example.org",
                                                          "newsletters": ["daily-briefing"]}).status_code
                for n in range(3)]
    assert statuses == [202, 202, 429]  # the signup limit is in force, and did not count the webhooks


# --- the database out of reach ------------------------------------------------------------------------

def test_database_down_answers_503_so_the_provider_retries_and_the_retry_is_taken(faulty_database_url, pg_cluster,
                                                                                  smtp):
    """A real outage: our own PostgreSQL cluster stopped. Nothing is lost: the same signed delivery, sent
    again when the database is back, is recorded (its Mailgun token was not used up by the failed try)."""
    from .test_operations import make_app

    app = make_app(faulty_database_url, smtp.url, NEWSLETTER_MAILGUN_SIGNING_KEY=MAILGUN_KEY,
                   NEWSLETTER_POSTMARK_WEBHOOK_AUTH=POSTMARK_AUTH)
    client = app.test_client()
    payload = mailgun_signed(sample("mailgun_failed_permanent.json"))
    try:
        pg_cluster.stop()
        try:
            for answer in (client.post("/api/v1/events/mailgun", json=payload),
                           client.post("/api/v1/events/postmark", json=sample("postmark_bounce.json"),
                                       headers=basic(POSTMARK_AUTH))):
                assert answer.status_code == 503, answer.get_data(as_text=True)
                assert answer.headers["Retry-After"] == "5"
                assert "nothing you sent was saved" in answer.get_json()["errors"]["request"][0]
        finally:
            pg_cluster.start()
        answer = client.post("/api/v1/events/mailgun", json=payload)
        assert answer.status_code == 200 and answer.get_json()["recorded"] == 1
        assert stopped(app, "alice@example.com") == "hard_bounce"
    finally:
        with app.app_context():
            db.session.remove()
            db.engine.dispose()


def test_oversized_sns_body_is_413(app, client, signer):
    answer = client.post("/api/v1/events/ses", data=b"x" * (1024 * 1024 + 1),
                         headers={"Content-Type": "text/plain; charset=UTF-8"})
    assert answer.status_code == 413 and answer.get_json()["errors"]["request"]


# --- settings -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, value, words", [
    ("SES_TOPIC_ARNS", "my-topic", "not an SNS topic ARN"),
    ("SES_TOPIC_ARNS", f"{TOPIC}, arn:aws:s3:::bucket", "'arn:aws:s3:::bucket'"),
    ("POSTMARK_WEBHOOK_AUTH", "only-a-user", "user:password"),
    ("POSTMARK_WEBHOOK_AUTH", ":password", "user:password"),
    ("SENDGRID_WEBHOOK_PUBLIC_KEY", "not base64!", "not an elliptic-curve public key"),
    ("SENDGRID_WEBHOOK_PUBLIC_KEY", base64.b64encode(b"MFkw but not DER").decode(), "Verification Key"),
    ("WEBHOOK_MAX_AGE", "soon", "not a duration"),
    ("EVENTS_MAX_BODY_BYTES", "0", "must be at least 1"),
])
def test_bad_settings_are_named(tmp_path, name, value, words):
    from newsletter import config

    with pytest.raises(config.ConfigError, match=words.replace("(", r"\(")) as error:
        config.load(tmp_path, {f"NEWSLETTER_{name}": value})
    assert f"NEWSLETTER_{name}" in str(error.value)


def test_good_settings(tmp_path):
    from newsletter import config

    key = SendGridSigner().public_key
    loaded = config.load(tmp_path, {"NEWSLETTER_SES_TOPIC_ARNS": f" {TOPIC} ,arn:aws-cn:sns:cn-north-1:123456789012:b",
                                    "NEWSLETTER_SENDGRID_WEBHOOK_PUBLIC_KEY": f"\n{key}\n",
                                    "NEWSLETTER_POSTMARK_WEBHOOK_AUTH": "user:pa:ss"})
    assert loaded["NEWSLETTER_SES_TOPIC_ARNS"] == [TOPIC, "arn:aws-cn:sns:cn-north-1:123456789012:b"]
    assert loaded["NEWSLETTER_SENDGRID_WEBHOOK_PUBLIC_KEY"] == key
    assert loaded["NEWSLETTER_POSTMARK_WEBHOOK_AUTH"] == "user:pa:ss"
    defaults = config.load(tmp_path, {})
    assert defaults["NEWSLETTER_SES_TOPIC_ARNS"] is None and defaults["NEWSLETTER_MAILGUN_SIGNING_KEY"] is None
    assert defaults["NEWSLETTER_EVENTS_MAX_BODY_BYTES"] == 1024 * 1024


def test_a_sendgrid_batch_naming_an_event_twice_or_sent_again_records_each_event_once(app, client, sendgrid):
    # More events than one look-up of known ids takes (500), with one event repeated inside the batch.
    batch = [{"email": f"reader{number}@example.org", "event": "bounce", "type": "bounce",
              "sg_event_id": f"event-{number}", "timestamp": 1700000000, "reason": "550 5.1.1 user unknown"}
             for number in range(600)]
    batch.append(dict(batch[0]))
    body = json.dumps(batch).encode()

    first = client.post("/api/v1/events/sendgrid", data=body, headers=sendgrid.headers(body))
    assert first.get_json() == {"recorded": 600, "repeated": 1, "skipped": 0, "problems": []}
    again = client.post("/api/v1/events/sendgrid", data=body, headers=sendgrid.headers(body))
    assert again.get_json() == {"recorded": 0, "repeated": 601, "skipped": 0, "problems": []}
    assert len(events_of(app)) == 600
