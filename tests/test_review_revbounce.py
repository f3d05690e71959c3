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
