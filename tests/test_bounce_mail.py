"""`newsletter bounce-mail`: bounces and complaints piped from the bounce mailbox, read from real-world samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from newsletter import create_app, suppressions
from newsletter.extensions import db

from .conftest import SECRET, query
from .test_outbox import outbox_rows, sign_up

DATA = Path(__file__).parent / "data" / "bounces"

# (sample, the address it reports, what it is): flufl.bounce's corpus, then samples in Postfix's shape.
BOUNCES = [
    ("flufl_dsn_01.eml", "JimmyMcEgypt@go.com", "hard_bounce"),
    ("flufl_dsn_05.eml", "pkocmid@atlas.cz", "soft_bounce"),  # Action: delayed
    ("flufl_postfix_01.eml", "xxxxx@local.ie", "hard_bounce"),
    ("flufl_exim_01.eml", "delangen@its.tudelft.nl", "hard_bounce"),
    ("flufl_qmail_01.eml", "psadisc@wwwmail.n-h.de", "hard_bounce"),
    ("flufl_groupwise_01.eml", "thoff@MAINEX1.ASU.EDU", "hard_bounce"),
    ("flufl_microsoft_01.eml", "DJBENNETT@IKON.COM", "hard_bounce"),
    ("flufl_simple_17.eml", "internetsailing@gmail.com", "hard_bounce"),  # googlemail.com
    ("flufl_yahoo_01.eml", "subscribe.motorcycles@listsociety.com", "hard_bounce"),
    ("flufl_simple_03.eml", "jacobus@geo.co.za", "soft_bounce"),  # "not yet been delivered" warning
    ("postfix_550_user_unknown.eml", "gone@example.org", "hard_bounce"),
    ("postfix_422_mailbox_full.eml", "full@example.org", "soft_bounce"),
]
NEITHER = ["out_of_office.eml", "reader_reply.eml", "postfix_delivered_notice.eml", "arf_auth_failure_report.eml"]


def sample(name: str) -> bytes:
    return (DATA / name).read_bytes()


def events(app):
    return query(app, "SELECT kind, provider, diagnostic, provider_event_id FROM delivery_events ORDER BY id")


def stopped(app, address: str) -> str | None:
    with app.app_context():
        try:
            entry = suppressions.mail_stopped(db.session, app.config, address)
            return None if entry is None else entry.reason
        finally:
            db.session.remove()


def bounce_mail(runner, raw: bytes):
    return runner.invoke(args=["bounce-mail"], input=raw)


@pytest.mark.parametrize("name, address, kind", BOUNCES)
def test_each_real_world_bounce_is_recorded_for_its_recipient(app, runner, name, address, kind):
    result = bounce_mail(runner, sample(name))

    assert result.exit_code == 0, result.output
    [(recorded_kind, provider, _, event_id)] = events(app)
    assert (recorded_kind, provider) == (kind, "mailbox")
    # The recipient is named by its keyed hash: an event id outlives an erasure, an address must not.
    assert event_id.endswith(" " + suppressions.address_key(app.config, address)[:16])
    assert address.lower() not in event_id.lower()
    if kind == "hard_bounce":
        assert result.stdout == f"hard bounce of {address}: suppressed (hard bounce)\n"
        assert stopped(app, address) == "hard_bounce"
    else:
        assert result.stdout == (f"soft bounce of {address}: recorded, not suppressed "
                                 "(suppressed after 3 soft bounces within 15 days)\n")
        assert stopped(app, address) is None


def test_a_dsn_keeps_the_status_and_diagnostic_of_its_recipient_and_stops_our_mail(app, client, runner, smtp, drain):
    result = runner.invoke(args=["bounce-mail", str(DATA / "postfix_550_user_unknown.eml")])  # a file, not stdin

    assert result.exit_code == 0, result.output
    [(kind, provider, diagnostic, event_id)] = events(app)
    assert diagnostic == ("5.1.1 (smtp; 550 5.1.1 <gone@example.org>: Recipient address rejected: "
                          "User unknown in virtual mailbox table)")
    assert event_id == ("<20261201091244.9E1C31C0F3@relay.news.example.com> "
                        + suppressions.address_key(app.config, "gone@example.org")[:16])
    # The next signup of the address gets the usual answer, and no mail reaches it.
    sign_up(client, "gone@example.org")
    sign_up(client, "kept@example.org")
    drain()
    assert [envelope[1] for envelope in smtp.inbox.envelopes] == [["kept@example.org"]]


def test_the_same_message_piped_twice_is_recorded_once(app, runner):
    first = bounce_mail(runner, sample("postfix_550_user_unknown.eml"))
    again = bounce_mail(runner, sample("postfix_550_user_unknown.eml"))

    assert again.exit_code == 0
    assert again.stdout == ("hard bounce of gone@example.org (already recorded: this message was read before): "
                            "suppressed (hard bounce)\n"), first.output
    assert len(events(app)) == 1
    assert query(app, "SELECT count(*) FROM suppressions")[0][0] == 1


def test_transient_failures_count_toward_the_soft_bounce_rule(app, runner):
    raw = sample("postfix_422_mailbox_full.eml")
    # The same notification again is one soft bounce, not two.
    for _ in range(3):
        bounce_mail(runner, raw)
    assert len(events(app)) == 1
    assert stopped(app, "full@example.org") is None

    # Two more notifications (each its own Message-Id) make three within the window: suppressed.
    for number in (2, 3):
        result = bounce_mail(runner, raw.replace(b"AA11BB22CC@", f"AA11BB22C{number}@".encode()))
        assert result.exit_code == 0, result.output
    assert [row.kind for row in events(app)] == ["soft_bounce"] * 3
    assert result.stdout == "soft bounce of full@example.org: suppressed (soft bounces)\n"
    detail = query(app, "SELECT detail FROM suppressions")[0][0]
    assert detail.startswith("3 soft bounces within 15 days; last: 4.2.2 (smtp; 452 4.2.2")


def test_an_arf_complaint_suppresses_the_reader_once(app, runner):
    raw = sample("rfc5965_abuse_report.eml")  # the RFC's example: no Message-ID of its own
    result = bounce_mail(runner, raw)

    assert result.exit_code == 0, result.output
    assert result.stdout == "complaint of user@example.com: suppressed (complaint)\n"
    [(kind, provider, diagnostic, _)] = events(app)
    assert (kind, provider, diagnostic) == ("complaint", "mailbox", "ARF feedback type abuse from SomeGenerator/1.0")
    assert stopped(app, "User@Example.com") == "complaint"
    assert "already recorded" in bounce_mail(runner, raw).stdout
    assert len(events(app)) == 1


def test_a_complaint_with_the_recipient_redacted_is_traced_by_our_message_id(app, client, runner, drain):
    sign_up(client, "reader@example.org")
    drain()
    [sent] = outbox_rows(app)
    raw = (sample("rfc5965_abuse_report.eml")
           .replace(b"Original-Rcpt-To: <user@example.com>\r\n", b"")
           .replace(b"Removal-Recipient: user@example.com\r\n", b"")
           .replace(b"Reported-Uri: mailto:user@example.com\r\n", b"")
           .replace(b"To: <Undisclosed Recipients>", b"To: [redacted]")
           .replace(b"Message-ID: 8787KJKJ3K4J3K4J3K4J3.mail@example.net", f"Message-ID: {sent.message_id}".encode()))

    result = bounce_mail(runner, raw)

    assert result.exit_code == 0, result.output
    assert result.stdout == "complaint of reader@example.org: suppressed (complaint)\n"


@pytest.mark.parametrize("name", NEITHER)
def test_mail_that_is_neither_a_bounce_nor_a_complaint_records_nothing_and_succeeds(app, runner, name):
    result = bounce_mail(runner, sample(name))

    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr.startswith("Nothing recognized: ")
    assert events(app) == []


BAD_INPUT = [
    (b"", "empty"),
    (b"\r\n\r\n   \r\n", "blank lines"),
    (b"\x00" * 4096, "NUL bytes"),
    (bytes(range(256)) * 64, "binary"),
    ("Subject: caf\udcc3\n\nbody".encode("utf-8", "surrogateescape"), "undecodable header byte"),
    (b"Content-Type: multipart/report; report-type=delivery-status\n\n--\n--\n", "multipart without boundary"),
    (b"From: x@y\nContent-Type: multipart/report; boundary=B\n\n--B\nContent-Type: message/delivery-status\n\n"
     b"Final-Recipient: rfc822; \x00@\x00\nAction: failed\nStatus: 5.1.1\n--B--\n", "NUL in the recipient"),
    (b"From: x@y\nContent-Type: multipart/report; report-type=feedback-report; boundary=B\n\n--B\n"
     b"Content-Type: message/feedback-report\n\nFeedback-Type: abuse\n--B--\n", "complaint naming no one"),
    (b"From: x@y\nContent-Type: multipart/report; boundary=B\n\n--B\nContent-Type: message/delivery-status\n\n"
     b"Final-Recipient: rfc822; " + b"a" * 5000 + b"@example.org\nAction: failed\n--B--\n", "huge recipient"),
]


@pytest.mark.parametrize("raw, why", BAD_INPUT, ids=[why for _, why in BAD_INPUT])
def test_malformed_input_is_said_in_one_line_without_a_traceback(app, runner, raw, why):
    result = bounce_mail(runner, raw)

    assert result.exit_code == 0, result.output
    assert result.exception is None
    assert "Traceback" not in result.output
    assert result.stderr.startswith("Nothing recognized: ") and result.stderr.count("\n") == 1, result.stderr
    assert events(app) == []


def test_a_very_large_message_is_read_up_to_the_cap_and_still_recorded(app, runner):
    # A bounce that returns a big message whole: the report comes first, the 11 MB after the cap.
    raw = sample("postfix_550_user_unknown.eml").replace(
        b"--4B2A31C0F2.1764580364/relay.news.example.com--",
        b"--4B2A31C0F2.1764580364/relay.news.example.com\r\nContent-Type: text/plain\r\n\r\n"
        + b"x" * 76 + (b"\r\n" + b"x" * 76) * 140_000 + b"\r\n--4B2A31C0F2.1764580364/relay.news.example.com--")
    assert len(raw) > 10 * 1024 * 1024

    result = bounce_mail(runner, raw)

    assert result.exit_code == 0, result.output
    assert "larger than 10 MB: only its beginning was read" in result.stderr
    assert result.stdout == "hard bounce of gone@example.org: suppressed (hard bounce)\n"


def test_an_unavailable_database_asks_the_mail_server_to_deliver_again_later(tmp_path):
    app = create_app({"TESTING": True, "SECRET_KEY": SECRET,
                      "SQLALCHEMY_DATABASE_URI": f"sqlite:///{tmp_path}/missing/folder/newsletter.sqlite3"})

    result = app.test_cli_runner().invoke(args=["bounce-mail"], input=sample("postfix_550_user_unknown.eml"))

    assert result.exit_code == 75, result.output
    assert "The database is unavailable" in result.stderr
    assert "Traceback" not in result.output
