"""`newsletter bounce-mail`: bounces and complaints piped from the bounce mailbox, read from real-world samples."""

from __future__ import annotations

import email
from pathlib import Path

import pytest
import sqlalchemy as sa

from newsletter import bounce_reports, create_app, outbox, suppressions
from newsletter.extensions import db
from newsletter.models import OutboxMessage, Reader

from .conftest import SECRET, query
from .test_outbox import outbox_rows, sign_up

DATA = Path(__file__).parent / "data" / "bounces"

# (sample, the address it reports, what it is): flufl.bounce's corpus, then samples in Postfix's shape.
BOUNCES = [
    ("flufl_dsn_01.eml", "JimmyMcEgypt@go.com", "hard_bounce"),
    ("flufl_postfix_01.eml", "xxxxx@local.ie", "hard_bounce"),
    ("flufl_exim_01.eml", "delangen@its.tudelft.nl", "hard_bounce"),
    ("flufl_qmail_01.eml", "psadisc@wwwmail.n-h.de", "hard_bounce"),
    ("flufl_groupwise_01.eml", "thoff@MAINEX1.ASU.EDU", "hard_bounce"),
    ("flufl_microsoft_01.eml", "DJBENNETT@IKON.COM", "hard_bounce"),
    ("flufl_simple_17.eml", "internetsailing@gmail.com", "hard_bounce"),  # googlemail.com
    ("postfix_550_user_unknown.eml", "gone@example.org", "hard_bounce"),
    ("postfix_422_mailbox_full.eml", "full@example.org", "soft_bounce"),
]
NEITHER = ["out_of_office.eml", "reader_reply.eml", "postfix_delivered_notice.eml", "arf_auth_failure_report.eml"]
# Delay warnings: flufl_dsn_05 (Action: delayed), flufl_simple_03 ("not yet been delivered").
DELAYS = [("flufl_dsn_05.eml", "pkocmid@atlas.cz"), ("flufl_simple_03.eml", "jacobus@geo.co.za")]
GONE_ID = "<176458036312.4242.1730001@news.example.com>"  # what postfix_550_user_unknown.eml returns
FULL_ID = "<176400000001.4242.1730002@news.example.com>"  # what postfix_422_mailbox_full.eml returns


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


def we_sent(app, message_id: str, to_address: str) -> None:
    """An outbox row as if we had sent `to_address` (a reader's address) the message `message_id`."""
    with app.app_context():
        reader_id = db.session.scalar(sa.select(Reader.id).where(Reader.email == to_address))
        if reader_id is None:
            reader = Reader(email=to_address)
            db.session.add(reader)
            db.session.flush()
            reader_id = reader.id
        row = outbox.message_row(kind="confirmation", reader_id=reader_id, newsletter_ids=[1], locale="en")
        row.update(message_id=message_id, status="sent")
        db.session.execute(sa.insert(OutboxMessage), [row])
        db.session.commit()
        db.session.remove()


def event_id(app, message_id: str, address: str, kind: str) -> str:
    with app.app_context():
        key = suppressions.address_key(app.config, address)[:16]
    return f"{message_id} {key}" + ("" if kind == "soft_bounce" else f" {kind}")


def returned_id(raw: bytes) -> str:
    [message_id] = bounce_reports.returned_message_ids(email.message_from_bytes(raw))
    return message_id


@pytest.mark.parametrize("name, address, kind", BOUNCES)
def test_each_real_world_bounce_of_a_message_we_sent_is_recorded_for_its_recipient(app, runner, name, address, kind):
    we_sent(app, returned_id(sample(name)), address)
    result = bounce_mail(runner, sample(name))

    assert result.exit_code == 0, result.output
    [(recorded_kind, provider, _, event_id)] = events(app)
    assert (recorded_kind, provider) == (kind, "mailbox")
    assert event_id == globals()["event_id"](app, returned_id(sample(name)), address, kind)
    assert address.lower() not in event_id.lower()
    if kind == "hard_bounce":
        assert result.stdout == f"hard bounce of {address}: suppressed (hard bounce)\n"
        assert stopped(app, address) == "hard_bounce"
    else:
        assert result.stdout == (f"soft bounce of {address}: recorded, not suppressed "
                                 "(suppressed after 3 soft bounces within 15 days)\n")
        assert stopped(app, address) is None


def test_a_dsn_keeps_the_status_and_diagnostic_of_its_recipient_and_stops_our_mail(app, client, runner, smtp, drain):
    we_sent(app, GONE_ID, "gone@example.org")
    result = runner.invoke(args=["bounce-mail", str(DATA / "postfix_550_user_unknown.eml")])  # a file, not stdin

    assert result.exit_code == 0, result.output
    [(kind, provider, diagnostic, event_id)] = events(app)
    assert diagnostic == ("5.1.1 (smtp; 550 5.1.1 <gone@example.org>: Recipient address rejected: "
                          "User unknown in virtual mailbox table)")
    assert event_id == globals()["event_id"](app, GONE_ID, "gone@example.org", "hard_bounce")
    # The next signup of the address gets the usual answer, and no mail reaches it.
    sign_up(client, "gone@example.org")
    sign_up(client, "kept@example.org")
    drain()
    assert [envelope[1] for envelope in smtp.inbox.envelopes] == [["kept@example.org"]]


def test_the_same_message_piped_twice_is_recorded_once(app, runner):
    we_sent(app, GONE_ID, "gone@example.org")
    first = bounce_mail(runner, sample("postfix_550_user_unknown.eml"))
    again = bounce_mail(runner, sample("postfix_550_user_unknown.eml"))

    assert again.exit_code == 0
    assert again.stdout == ("hard bounce of gone@example.org (already recorded: this message was read before): "
                            "suppressed (hard bounce)\n"), first.output
    assert len(events(app)) == 1
    assert query(app, "SELECT count(*) FROM suppressions")[0][0] == 1


def test_failures_of_one_message_count_once_and_failures_of_three_messages_suppress(app, runner):
    raw = sample("postfix_422_mailbox_full.eml")
    we_sent(app, FULL_ID, "full@example.org")
    # The same notification again, or another notification (its own Message-Id) about the same
    # message of ours, is one soft bounce, not several.
    for number in range(3):
        bounce_mail(runner, raw.replace(b"AA11BB22CC@", f"AA11BB22C{number}@".encode()))
    assert len(events(app)) == 1
    assert stopped(app, "full@example.org") is None

    # Two more of our messages failing make three within the window: suppressed.
    for number in (3, 4):
        our_id = f"<176400000001.4242.173000{number}@news.example.com>"
        we_sent(app, our_id, "full@example.org")
        result = bounce_mail(runner, raw.replace(FULL_ID.encode(), our_id.encode()))
        assert result.exit_code == 0, result.output
    assert [row.kind for row in events(app)] == ["soft_bounce"] * 3
    assert result.stdout == "soft bounce of full@example.org: suppressed (soft bounces)\n"
    detail = query(app, "SELECT detail FROM suppressions")[0][0]
    assert detail.startswith("3 soft bounces within 15 days; last: 4.2.2 (smtp; 452 4.2.2")


@pytest.mark.parametrize("name, address", DELAYS)
def test_a_delay_warning_records_nothing(app, runner, name, address):
    raw = sample(name)
    for message_id in bounce_reports.returned_message_ids(email.message_from_bytes(raw)):
        we_sent(app, message_id, address)
    result = bounce_mail(runner, raw)
    assert result.exit_code == 0
    assert result.stderr == "Nothing recognized: it only warns of a delay; the message may still be delivered.\n"
    assert events(app) == []


def _dsn(message_id: str, blocks: str, returned: str = "") -> bytes:
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
--B
Content-Type: text/rfc822-headers

{returned}
--B--
""".encode()


def test_delay_warnings_then_the_failure_of_one_message_count_as_one_soft_bounce(app, runner):
    our_id = "<slow-1@news.example.com>"
    we_sent(app, our_id, "slow@example.org")
    returned = f"From: newsletters@news.example.com\nTo: slow@example.org\nMessage-ID: {our_id}\n"
    # Exim repeats its delay warning (every 24 h by default) while it retries one message.
    for day in range(3):
        block = "Final-Recipient: rfc822; slow@example.org\nAction: delayed\nStatus: 4.4.1\n"
        assert bounce_mail(runner, _dsn(f"delay{day}@mx.example.net", block, returned)).exit_code == 0
    assert events(app) == []
    failed = "Final-Recipient: rfc822; slow@example.org\nAction: failed\nStatus: 4.4.7\n"
    bounce_mail(runner, _dsn("gave-up@mx.example.net", failed, returned))
    bounce_mail(runner, _dsn("gave-up-again@mx.example.net", failed, returned))
    assert [row.kind for row in events(app)] == ["soft_bounce"]
    assert stopped(app, "slow@example.org") is None


def test_a_forged_dsn_returning_no_message_of_ours_suppresses_no_one(app, runner):
    # The bounce mailbox is our public envelope sender: anyone can mail it a "DSN" naming readers.
    readers = [f"reader{i}@example.org" for i in range(500)]
    for reader in readers[:3]:
        we_sent(app, f"<real-{reader}>", reader)
    blocks = "\n".join(f"Final-Recipient: rfc822; {a}\nAction: failed\nStatus: 5.1.1\n" for a in readers)
    result = bounce_mail(runner, _dsn("forged@evil.example", blocks, "Message-ID: <made-up@evil.example>\n"))
    assert result.exit_code == 0
    assert result.stdout == ""
    assert result.stderr == "Nothing recognized: not a bounce of a message we sent (it returns no Message-ID of ours).\n"
    assert events(app) == []
    assert [reader for reader in readers if stopped(app, reader)] == []


def test_a_dsn_returning_our_message_counts_only_for_the_address_we_sent_it_to(app, runner):
    our_id = "<ours-1@news.example.com>"
    we_sent(app, our_id, "Ada@Example.org")
    others = "".join(f"Final-Recipient: rfc822; other{i}@example.org\nAction: failed\nStatus: 5.1.1\n\n"
                     for i in range(3))
    only_others = bounce_mail(runner, _dsn("n1@mx.example.net", others, f"Message-ID: {our_id}\n"))
    assert only_others.stderr == ("Nothing recognized: not a bounce of a message we sent "
                                  "(the address it reports is not the one we sent to).\n")
    assert events(app) == []

    ada = "Final-Recipient: rfc822; ada@EXAMPLE.org\nAction: failed\nStatus: 5.1.1\n"
    result = bounce_mail(runner, _dsn("n2@mx.example.net", others + ada, f"Message-ID: {our_id}\n"))
    assert result.stdout == "hard bounce of ada@EXAMPLE.org: suppressed (hard bounce)\n"
    assert [row.kind for row in events(app)] == ["hard_bounce"]
    assert [f"other{i}@example.org" for i in range(3) if stopped(app, f"other{i}@example.org")] == []


def test_a_bounce_whose_original_headers_were_stripped_is_not_recorded(app, runner):
    # Yahoo's old format returns no header of the message: nothing says it was one of ours.
    result = bounce_mail(runner, sample("flufl_yahoo_01.eml"))
    assert result.exit_code == 0
    assert result.stderr.startswith("Nothing recognized: not a bounce of a message we sent")
    assert events(app) == []


def test_a_report_in_reply_to_our_message_is_traced_by_that_header(app, runner):
    we_sent(app, "<ours-2@news.example.com>", "bob@example.net")
    raw = _dsn("n3@mx.example.net", "Final-Recipient: rfc822; bob@example.net\nAction: failed\nStatus: 5.1.1\n")
    raw = raw.replace(b"Subject:", b"In-Reply-To: <ours-2@news.example.com>\nSubject:", 1)
    assert bounce_mail(runner, raw).stdout == "hard bounce of bob@example.net: suppressed (hard bounce)\n"


def arf(raw_rcpt: bytes, message_id: str) -> bytes:
    return (sample("rfc5965_abuse_report.eml")
            .replace(b"Original-Rcpt-To: <user@example.com>", b"Original-Rcpt-To: " + raw_rcpt)
            .replace(b"Removal-Recipient: user@example.com\r\n", b"")
            .replace(b"Message-ID: 8787KJKJ3K4J3K4J3K4J3.mail@example.net", f"Message-ID: {message_id}".encode()))


def test_an_rfc_2047_encoded_recipient_of_a_complaint_is_decoded(app, runner):
    we_sent(app, "<ours-3@news.example.com>", "cleo@example.com")
    result = bounce_mail(runner, arf(b"=?utf-8?q?cleo=40example=2Ecom?=", "<ours-3@news.example.com>"))
    assert result.stdout == "complaint of cleo@example.com: suppressed (complaint)\n"
    assert stopped(app, "cleo@example.com") == "complaint"


def test_a_forged_complaint_returning_no_message_of_ours_suppresses_no_one(app, runner):
    we_sent(app, "<ours-4@news.example.com>", "dora@example.com")
    result = bounce_mail(runner, arf(b"<dora@example.com>", "<not-ours@evil.example>"))
    assert result.exit_code == 0
    assert result.stderr.startswith("Nothing recognized: not a bounce of a message we sent")
    assert stopped(app, "dora@example.com") is None


def test_an_arf_complaint_suppresses_the_reader_once(app, runner):
    # The RFC's example (no Message-ID of its own), returning a message of ours.
    raw = sample("rfc5965_abuse_report.eml").replace(b"Message-ID: 8787KJKJ3K4J3K4J3K4J3.mail@example.net",
                                                     b"Message-ID: <8787KJKJ3K4J3K4J3K4J3.mail@example.net>")
    we_sent(app, "<8787KJKJ3K4J3K4J3K4J3.mail@example.net>", "user@example.com")
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
    we_sent(app, GONE_ID, "gone@example.org")
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
