"""Our own relay's refusals as bounces, and the sender's last check against the suppression list (real SMTP)."""

from __future__ import annotations

import logging

import pytest
import sqlalchemy as sa
from prometheus_client import REGISTRY

from newsletter import config, outbox, suppressions
from newsletter.extensions import db
from newsletter.models import utcnow

from .conftest import query
from .test_outbox import outbox_rows, sign_up

GONE = "gone@example.org"
USER_UNKNOWN = f"550 5.1.1 <{GONE}>: Recipient address rejected: User unknown"
FULL = "full@example.org"
MAILBOX_FULL = f"452 4.2.2 <{FULL}>: Recipient address rejected: Mailbox full"


def rows_to(app, address: str):
    return [row for row in outbox_rows(app) if row.address.lower() == address.lower()]


def suppression_of(app, address: str):
    """(reason, source, detail) of the entry that stops mail to `address`, or None."""
    with app.app_context():
        try:
            entry = suppressions.mail_stopped(db.session, app.config, address)
            return None if entry is None else (entry.reason, entry.source, entry.detail)
        finally:
            db.session.remove()


def events_of(app, address: str):
    with app.app_context():
        try:
            return [(event.kind, event.provider, event.diagnostic, event.provider_event_id)
                    for event in suppressions.events_for(db.session, app.config, address)]
        finally:
            db.session.remove()


def make_due(app) -> None:
    """Bring every pending message's next attempt to now, as the back-off's end would."""
    with app.app_context():
        db.session.execute(sa.text("UPDATE outbox_messages SET next_attempt_at = :now WHERE status = 'pending'"),
                           {"now": utcnow()})
        db.session.commit()
        db.session.remove()


def recipients_received(smtp) -> list[str]:
    return [recipient for _, recipients in smtp.inbox.envelopes for recipient in recipients]


def test_a_recipient_refused_for_good_at_rcpt_is_a_hard_bounce_and_the_rest_still_go(
        app, client, smtp, drain, caplog):
    smtp.inbox.refuse_rcpt[GONE] = USER_UNKNOWN
    sign_up(client, "first@example.org")
    sign_up(client, GONE)
    sign_up(client, "second@example.org")

    with caplog.at_level(logging.INFO, logger="newsletter.outbox"):
        result = drain()

    assert (result.sent, result.retrying, result.failed) == (2, 0, 1)
    assert sorted(recipients_received(smtp)) == ["first@example.org", "second@example.org"]
    [row] = rows_to(app, GONE)
    assert (row.status, row.attempts) == ("failed", 1)
    assert "550 5.1.1" in row.last_error
    assert suppression_of(app, GONE) == ("hard_bounce", "smtp", USER_UNKNOWN)
    assert events_of(app, GONE) == [("hard_bounce", "smtp", USER_UNKNOWN, row.message_id)]
    # The log says what happened, never to whom.
    assert "hard bounce; the address is suppressed" in caplog.text
    assert GONE not in caplog.text

    # Failed at once: no retry knocks on the relay again.
    assert drain().failed == 0
    assert smtp.inbox.rcpt_refused == [GONE]

    # A later signup of the address (in another case) sends it nothing, and leaves nothing waiting.
    answer = client.post("/api/v1/subscriptions",
                         json={"email": "Gone@Example.org", "newsletters": ["weekly-explainer"]})
    assert answer.status_code == 202
    sign_up(client, "third@example.org")
    drain()
    assert sorted(recipients_received(smtp)) == ["first@example.org", "second@example.org", "third@example.org"]
    assert smtp.inbox.rcpt_refused == [GONE]
    assert [row.status for row in rows_to(app, GONE) if row.status != "failed"] == []
    assert len(events_of(app, GONE)) == 1


def test_a_recipient_put_off_at_rcpt_is_retried_and_counts_once_as_a_soft_bounce_when_it_fails(
        app, client, smtp, drain):
    app.config.update(NEWSLETTER_OUTBOX_MAX_ATTEMPTS=2, NEWSLETTER_SOFT_BOUNCE_LIMIT=2,
                      NEWSLETTER_OUTBOX_RETRY_BASE=600)
    smtp.inbox.refuse_rcpt[FULL] = MAILBOX_FULL
    sign_up(client, FULL)
    sign_up(client, "other@example.org")

    first = drain()
    assert (first.sent, first.retrying, first.failed) == (1, 1, 0)
    assert events_of(app, FULL) == [], "a 4xx that will be retried is no bounce yet"

    make_due(app)
    second = drain()
    assert (second.sent, second.retrying, second.failed) == (0, 0, 1)
    [row] = rows_to(app, FULL)
    assert (row.status, row.attempts) == ("failed", 2)
    assert events_of(app, FULL) == [("soft_bounce", "smtp", MAILBOX_FULL, row.message_id)]
    assert suppression_of(app, FULL) is None, "one soft bounce is below the limit of 2"

    # A second message that fails the same way reaches the limit: the address is suppressed.
    sign_up(client, FULL, ("weekly-explainer",))
    sign_up(client, "another@example.org")
    drain()
    make_due(app)
    drain()
    assert [kind for kind, *_ in events_of(app, FULL)] == ["soft_bounce", "soft_bounce"]
    reason, source, detail = suppression_of(app, FULL)
    assert (reason, source) == ("soft_bounces", "smtp")
    assert "2 soft bounces" in detail
    assert smtp.inbox.rcpt_refused == [FULL] * 4


def test_a_refusal_at_data_fails_the_message_but_is_no_bounce_of_the_address(app, client, smtp, drain):
    smtp.inbox.refuse_with = "554 5.7.1 Message rejected as spam"
    sign_up(client, "content@example.org")
    assert drain().failed == 1
    assert events_of(app, "content@example.org") == []
    assert suppression_of(app, "content@example.org") is None


def not_sent_count(reason: str) -> float:
    return REGISTRY.get_sample_value("newsletter_outbox_not_sent_total", {"reason": reason}) or 0.0


def test_a_message_whose_address_was_suppressed_meanwhile_is_not_sent(app, client, smtp, runner):
    sign_up(client, "bounced@example.org")
    sign_up(client, "kept@example.org")
    sign_up(client, "erased-once@example.org")
    sign_up(client, "complained@example.org")
    with app.app_context():
        # Reports that arrive between queueing and sending; the address in any case.
        suppressions.suppress(db.session, app.config, "BOUNCED@example.org", reason="hard_bounce", source="mailbox")
        suppressions.record_event(db.session, app.config, "complained@EXAMPLE.org", kind="complaint", provider="ses")
        # An erasure's entry keeps imports out but does not stop mail to someone who signed up again.
        suppressions.suppress(db.session, app.config, None, reason="erased", source="erasure",
                              key=suppressions.address_key(app.config, "erased-once@example.org"))
        db.session.commit()
        db.session.remove()
    before = not_sent_count("hard_bounce"), not_sent_count("complaint")

    result = runner.invoke(args=["worker", "--once"])

    assert "sent 2, will retry 0, failed 0, not sent to suppressed addresses 2" in result.output, result.output
    assert sorted(recipients_received(smtp)) == ["erased-once@example.org", "kept@example.org"]
    [bounced] = rows_to(app, "bounced@example.org")
    assert (bounced.status, bounced.attempts) == ("failed", 0)
    assert bounced.last_error == "Not sent: the address is suppressed (hard bounce)"
    [complained] = rows_to(app, "complained@example.org")
    assert complained.last_error == "Not sent: the address is suppressed (complaint)"
    assert (not_sent_count("hard_bounce"), not_sent_count("complaint")) == (before[0] + 1, before[1] + 1)

    # Not retried, neither by the sender nor by `outbox retry`.
    again = runner.invoke(args=["worker", "--once"])
    assert "sent 0, will retry 0, failed 0" in again.output
    with app.app_context():
        assert outbox.retry_failed(db.session, app.config).queued == 0
        db.session.rollback()
        db.session.remove()
    assert query(app, "SELECT count(*) FROM outbox_messages WHERE status = 'pending'")[0][0] == 0
    assert len(smtp.inbox.envelopes) == 2


def test_a_lifted_suppression_lets_new_mail_go(app, client, smtp, drain):
    with app.app_context():
        entry = suppressions.suppress(db.session, app.config, "back@example.org", reason="hard_bounce", source="smtp")
        db.session.commit()
        suppressions.lift(db.session, entry.id, admin_id=None, note="the reader fixed their mailbox")
        db.session.commit()
        db.session.remove()
    sign_up(client, "back@example.org")
    assert drain().sent == 1
    assert recipients_received(smtp) == ["back@example.org"]


def test_the_bounce_address_is_the_envelope_sender_so_bounces_reach_the_bounce_mailbox(app, client, smtp, drain):
    app.config["NEWSLETTER_BOUNCE_ADDRESS"] = "bounces@news.example.com"
    sign_up(client, "reader@example.org")
    drain()
    [(mail_from, recipients)] = smtp.inbox.envelopes
    assert (mail_from, recipients) == ("bounces@news.example.com", ["reader@example.org"])
    assert smtp.inbox.messages[0]["From"] != "bounces@news.example.com"  # readers still see and answer From


@pytest.mark.parametrize("raw", ["Bounces <bounces@news.example.com>", "bounces", "a b@example.com",
                                 "x@y\r\nRCPT TO:<z@w>"])
def test_a_malformed_bounce_address_is_refused_at_startup(tmp_path, raw):
    with pytest.raises(config.ConfigError, match="NEWSLETTER_BOUNCE_ADDRESS"):
        config.load(tmp_path, {"NEWSLETTER_BOUNCE_ADDRESS": raw})


def test_without_a_bounce_address_the_from_address_is_the_envelope_sender(app, client, smtp, drain):
    sign_up(client, "reader@example.org")
    drain()
    [(mail_from, _)] = smtp.inbox.envelopes
    assert mail_from == smtp.inbox.messages[0]["From"].addresses[0].addr_spec


READERS = ["ada@example.org", "bob@example.net", "cleo@example.com"]


@pytest.mark.parametrize("reply", [
    # Postfix's reject_unauth_destination, when our IP / SASL login is no longer allowed to relay.
    "554 5.7.1 <{rcpt}>: Relay access denied",
    # Postfix's reject_sender_login_mismatch with NEWSLETTER_BOUNCE_ADDRESS not owned by the login,
    # answered at RCPT TO (smtpd_delay_reject=yes, the default).
    "553 5.7.1 <bounces@news.example.com>: Sender address rejected: not owned by user newsletter",
    # The relay's own policy (SPF of the envelope sender, our IP on a blocklist), answered at RCPT.
    "550 5.7.1 Client host rejected: Access denied",
    # No enhanced status code, and words that are no proof of a missing mailbox.
    "550 Requested action not taken: mailbox unavailable",
])
def test_a_relay_refusing_every_recipient_for_its_own_reason_suppresses_nobody_and_pauses_sending(
        app, client, smtp, drain, caplog, reply):
    for address in READERS:
        smtp.inbox.refuse_rcpt[address] = reply.format(rcpt=address)
        sign_up(client, address)

    with caplog.at_level(logging.INFO, logger="newsletter.outbox"):
        result = drain()

    assert smtp.inbox.rcpt_refused == READERS
    assert [address for address in READERS if suppression_of(app, address) or events_of(app, address)] == []
    # The first two fail (a policy refusal is about the message, not the address); the third
    # refusal alike makes it the relay's problem: that message waits, its attempt unspent.
    assert [(row.status, row.attempts) for address in READERS for row in rows_to(app, address)] == [
        ("failed", 1), ("failed", 1), ("pending", 0)]
    assert result.stopped_by_error is not None and "refuses every recipient" in result.stopped_by_error
    [loud] = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert "same refusal for 3 different recipients in a row" in loud.getMessage()
    assert not any(address in caplog.text for address in READERS)


def test_the_same_user_unknown_for_three_recipients_in_a_row_stops_recording_bounces(app, client, smtp, drain):
    # A relay that lost its recipient table answers "user unknown" for everyone, each with its address.
    addresses = [f"reader{number}@example.org" for number in range(4)]
    for address in addresses:
        smtp.inbox.refuse_rcpt[address] = f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        sign_up(client, address)

    result = drain()

    assert [address for address in addresses if suppression_of(app, address)] == addresses[:2]
    assert events_of(app, addresses[2]) == [] and events_of(app, addresses[3]) == []
    assert result.stopped_by_error is not None
    assert smtp.inbox.rcpt_refused == addresses[:3]


def test_refusals_with_mail_going_through_in_between_are_each_the_readers_bounce(app, client, smtp, drain):
    gone = [f"gone{number}@example.org" for number in range(3)]
    for number, address in enumerate(gone):
        smtp.inbox.refuse_rcpt[address] = f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        sign_up(client, address)
        sign_up(client, f"kept{number}@example.org")

    result = drain()

    assert (result.sent, result.failed, result.stopped_by_error) == (3, 3, None)
    assert [suppression_of(app, address)[0] for address in gone] == ["hard_bounce"] * 3


@pytest.mark.parametrize("reply, kind", [
    ("550 User unknown", "hard_bounce"),
    ("553 sorry, no such user here", "hard_bounce"),
    ("550 5.1.10 <{rcpt}>: Recipient address rejected: null MX", "hard_bounce"),
    ("550 5.2.1 <{rcpt}>: Mailbox disabled", "hard_bounce"),
    ("550 5.4.1 <{rcpt}>: Recipient address rejected: Access denied", None),
    ("552 5.3.4 Message size exceeds fixed limit", None),
    ("554 Transaction failed", None),
])
def test_a_refusal_at_rcpt_is_a_bounce_only_when_its_status_is_about_the_mailbox(app, client, smtp, drain, reply, kind):
    address = "reader@example.org"
    smtp.inbox.refuse_rcpt[address] = reply.format(rcpt=address)
    sign_up(client, address)

    assert drain().failed == 1
    assert [event[0] for event in events_of(app, address)] == ([kind] if kind else [])
    assert (suppression_of(app, address) or (None,))[0] == kind


def test_a_full_mailbox_refused_at_rcpt_with_a_5xx_fails_the_message_and_counts_once_as_a_soft_bounce(
        app, client, smtp, drain):
    address = "full@example.org"
    reply = f"552 5.2.2 <{address}>: Mailbox full"
    smtp.inbox.refuse_rcpt[address] = reply
    sign_up(client, address)

    assert drain().failed == 1
    [row] = rows_to(app, address)
    assert row.status == "failed"
    assert events_of(app, address) == [("soft_bounce", "smtp", reply, row.message_id)]
    assert suppression_of(app, address) is None


def test_a_relay_refusing_our_envelope_sender_fails_no_message_and_sending_resumes_once_it_takes_it(
        app, client, smtp, drain):
    app.config["NEWSLETTER_BOUNCE_ADDRESS"] = "bounces@news.example.com"
    smtp.inbox.refuse_mail_from = "553 5.7.1 <bounces@news.example.com>: Sender address rejected: not owned by user"
    sign_up(client, "ada@example.org")
    sign_up(client, "bob@example.net")

    result = drain()

    assert (result.sent, result.failed, result.retrying) == (0, 0, 0)
    assert "refuses our envelope sender" in result.stopped_by_error
    assert "Sender address rejected: not owned by user" in result.stopped_by_error
    assert [(row.status, row.attempts) for row in outbox_rows(app)] == [("pending", 0), ("pending", 0)]

    smtp.inbox.refuse_mail_from = None
    assert drain().sent == 2
    assert sorted(recipients_received(smtp)) == ["ada@example.org", "bob@example.net"]
