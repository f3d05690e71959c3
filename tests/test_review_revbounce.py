"""Adversarial review (revbounce) of issue 10's bounces half: each test fails now for the reason named."""

from __future__ import annotations

import pytest

from .test_own_bounces import events_of, recipients_received, rows_to, suppression_of
from .test_outbox import sign_up

READERS = ["ada@example.org", "bob@example.net", "cleo@example.com"]


@pytest.mark.parametrize("reply", [
    # Postfix's reject_unauth_destination, when our IP / SASL login is no longer allowed to relay.
    "554 5.7.1 <{rcpt}>: Relay access denied",
    # Postfix's reject_sender_login_mismatch with NEWSLETTER_BOUNCE_ADDRESS not owned by the login:
    # with smtpd_delay_reject=yes (the default) it is answered at RCPT TO.
    "553 5.7.1 <bounces@news.example.com>: Sender address rejected: not owned by user newsletter",
    # The relay's own policy (SPF of the envelope sender, our IP on a blocklist), answered at RCPT.
    "550 5.7.1 Client host rejected: Access denied",
])
def test_a_relay_refusing_every_recipient_for_the_senders_reason_suppresses_nobody(app, client, smtp, drain, reply):
    for address in READERS:
        smtp.inbox.refuse_rcpt[address] = reply.format(rcpt=address)
        sign_up(client, address)

    drain()

    assert smtp.inbox.rcpt_refused, "the relay did refuse at RCPT"
    suppressed = [address for address in READERS if suppression_of(app, address) is not None]
    # Every reader is now suppressed as a hard bounce: a relay misconfiguration for one hour wipes
    # the whole list (5.7.x is a policy/security status about the sender, RFC 3463, not the mailbox).
    assert suppressed == [], f"suppressed as hard bounces for the relay's reason: {suppressed}"


def _dsn(message_id: str, blocks: str) -> bytes:
    return f"""From: MAILER-DAEMON@mx.example.net (Mail Delivery System)
To: bounces@news.example.com
Subject: Undelivered Mail
Message-ID: <{message_id}>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="B"

--B
Content-Type: text/plain

report

--B
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

{blocks}
--B--
""".encode()


def _stopped(app, address: str):
    from .test_own_bounces import suppression_of as of
    return of(app, address)


def test_a_forged_dsn_from_anyone_does_not_mass_suppress_addresses_we_never_mailed(app, client, runner):
    # The bounce mailbox is our public envelope sender: anyone can mail it a "DSN". This one names
    # 500 readers in one message, none of whom was ever sent a message that bounced; it returns no
    # message of ours (no Message-ID in our outbox), it is from an unrelated host.
    readers = [f"reader{i}@example.org" for i in range(500)]
    blocks = "\n".join(f"Final-Recipient: rfc822; {a}\nAction: failed\nStatus: 5.1.1\n" for a in readers)
    result = runner.invoke(args=["bounce-mail"], input=_dsn("forged@evil.example", blocks))
    assert result.exit_code == 0
    suppressed = [a for a in readers if _stopped(app, a) is not None]
    assert len(suppressed) == 0, f"one forged email suppressed {len(suppressed)} addresses"


def test_delay_warnings_for_one_slow_message_do_not_suppress_the_reader(app, runner):
    # Exim repeats its delay warning every `delay_warning` (24h by default) while it retries one
    # message; a delay is not a failure, and the message may still be delivered. The provider
    # webhooks ignore deferrals for exactly this reason (sendgrid.py), the mailbox counts them.
    block = "Final-Recipient: rfc822; slow@example.org\nAction: delayed\nStatus: 4.4.1\n"
    for day in range(3):
        result = runner.invoke(args=["bounce-mail"], input=_dsn(f"delay{day}@mx.example.net", block))
        assert result.exit_code == 0
    assert _stopped(app, "slow@example.org") is None, "three delay warnings of one message suppressed the reader"


def test_a_full_mailbox_refused_at_rcpt_with_a_5xx_is_not_an_immediate_hard_bounce(app, client, smtp, drain):
    # bounce_reports._transient treats X.2.2 (mailbox full, RFC 3463 "persistent transient") as a
    # soft bounce; the relay's own 552 5.2.2 at RCPT is a hard bounce that suppresses at once.
    address = "full@example.org"
    smtp.inbox.refuse_rcpt[address] = f"552 5.2.2 <{address}>: Mailbox full"
    sign_up(client, address)
    drain()
    assert suppression_of(app, address) is None, suppression_of(app, address)


def test_the_sns_certificate_host_check_refuses_an_s3_bucket_called_sns():
    from newsletter.provider_events import Refused, sns
    # https://sns.s3.amazonaws.com/… is the S3 bucket named "sns" (virtual-hosted style), not SNS;
    # whoever owns that bucket could serve a certificate of their own. AWS's own validators also
    # pin the path (/SimpleNotificationService-<32 hex>.pem).
    for url in ("https://sns.s3.amazonaws.com/SimpleNotificationService-0123456789abcdef0123456789abcdef.pem",
                "https://sns.s3-external-1.amazonaws.com/cert.pem"):
        with pytest.raises(Refused):
            sns.check_sns_url(url, "SigningCertURL")
