"""The import engine: consent carried over, policies for unconfirmed rows, idempotence, refusals, resume."""

from __future__ import annotations

import itertools
import random
import string
import threading
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from newsletter import addresses, imports, subscriptions, suppressions
from newsletter.extensions import db
from newsletter.models import ConsentEvent, ImportRun, Newsletter, OutboxMessage, Reader, Subscription, utcnow

from .conftest import link_in, query
from .import_files import member, readers_of_files, write_members  # noqa: F401 (a fixture)

pytestmark = pytest.mark.usefixtures("readers_of_files")

OPTIN = "2023-03-01 10:00:00"
CONFIRM = "2023-03-01 10:05:00"


def run_import(app, path: Path, *, slug: str = "daily-briefing", unconfirmed: str = "ask", dry_run: bool = False,
               batch_rows: int = 5000, name: str | None = None) -> ImportRun:
    with app.app_context():
        newsletter = db.session.scalars(sa.select(Newsletter).where(Newsletter.slug == slug)).one()
        run = imports.record_upload(db.session, app.config, source=path, file_name=name or path.name,
                                    newsletter=newsletter, channel="cli", unconfirmed=unconfirmed, dry_run=dry_run)
        imports.queue(db.session, run, dry_run=dry_run, unconfirmed=unconfirmed)
        db.session.commit()
        run = imports.execute(db.session, app.config, run.id, batch_rows=batch_rows)
        db.session.expunge(run)
        db.session.remove()
        return run


def due_times(app) -> list[datetime]:
    with app.app_context():
        try:
            return list(db.session.scalars(sa.select(OutboxMessage.next_attempt_at)
                                           .where(OutboxMessage.kind == "import_confirmation")
                                           .order_by(OutboxMessage.next_attempt_at)))
        finally:
            db.session.remove()


def time_passes(app, how_long: timedelta) -> None:
    """Every outbox time moved back by `how_long`: what a wait of that long would find."""
    with app.app_context():
        for message in db.session.scalars(sa.select(OutboxMessage)):
            message.next_attempt_at -= how_long
            message.created_at -= how_long
            if message.sent_at is not None:
                message.sent_at -= how_long
        db.session.commit()
        db.session.remove()


def test_consent_carries_over_with_times_and_ips(app, tmp_path):
    path = write_members(tmp_path / "subscribed_members_export_1a2b.csv", [
        member("ada@example.com", first="Ada", optin=OPTIN, optin_ip="198.51.100.7", confirm=CONFIRM,
               confirm_ip="198.51.100.8", changed=CONFIRM),
    ])
    run = run_import(app, path)
    assert run.status == "finished" and run.counts["new"] == 1 and run.rows_done == 1
    [(status, confirmed_at, pending_since, name)] = query(app, """
        SELECT s.status, s.confirmed_at, s.pending_since, r.name FROM subscriptions s
        JOIN readers r ON r.id = s.reader_id""")
    assert status == "confirmed" and name == "Ada"
    assert str(confirmed_at).startswith("2023-03-01 10:05:00") and str(pending_since).startswith("2023-03-01 10:00:00")
    events = query(app, "SELECT action, occurred_at, source, ip_address, wording FROM consent_events ORDER BY id")
    assert [(e.action, str(e.occurred_at)[:19], e.source, e.ip_address) for e in events] == [
        ("signup_requested", "2023-03-01 10:00:00", "import", "198.51.100.7"),
        ("confirmed", "2023-03-01 10:05:00", "import", "198.51.100.8"),
    ]
    assert all("subscribed_members_export_1a2b.csv" in e.wording and f"import #{run.id}" in e.wording
               for e in events)


def test_the_same_file_twice_changes_nothing(app, tmp_path):
    path = write_members(tmp_path / "members.csv", [
        member("one@example.com", optin=OPTIN, confirm=CONFIRM),
        member("two@example.com"),  # unconfirmed: asked by email
        member("ONE@example.com".lower(), optin=OPTIN),  # duplicate of the first
        member("not an address"),
    ])
    unsub = write_members(tmp_path / "unsubscribed_members.csv",
                          [member("three@example.com", optin=OPTIN, unsub="2024-01-01 00:00:00")], "unsubscribed")
    first = run_import(app, path)
    assert first.counts == {"new": 2, "updated": 0, "unchanged": 0, "suppressed": 0, "confirmations_queued": 1,
                            "refused": {"duplicate_in_file": 1, "invalid_address": 1}}
    run_import(app, unsub)
    before = query(app, "SELECT count(*) FROM consent_events")[0][0], query(app, "SELECT count(*) FROM outbox_messages")[0][0]
    again = run_import(app, path)
    assert again.counts == {"new": 0, "updated": 0, "unchanged": 2, "suppressed": 0, "confirmations_queued": 0,
                            "refused": {"duplicate_in_file": 1, "invalid_address": 1}}
    assert run_import(app, unsub).counts["unchanged"] == 1
    after = query(app, "SELECT count(*) FROM consent_events")[0][0], query(app, "SELECT count(*) FROM outbox_messages")[0][0]
    assert before == after
    assert query(app, "SELECT status FROM subscriptions s JOIN readers r ON r.id = s.reader_id "
                      "WHERE r.email = 'three@example.com'")[0][0] == "unsubscribed"


def test_ask_queues_spaced_confirmations_that_arrive_and_confirm(app, tmp_path, smtp, drain, client):
    app.config["NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR"] = 60  # one a minute
    path = write_members(tmp_path / "members.csv", [member(f"ask{i}@example.com") for i in range(3)])
    run = run_import(app, path)
    assert run.counts["confirmations_queued"] == 3 and run.counts["new"] == 3
    due = due_times(app)
    assert len(due) == 3
    gaps = [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(due)]
    assert gaps == [60.0, 60.0]
    # A second import continues after the last one scheduled.
    second = write_members(tmp_path / "more.csv", [member("ask9@example.com")])
    run_import(app, second)
    assert (due_times(app)[-1] - due[-1]).total_seconds() == 60.0
    assert query(app, "SELECT status FROM subscriptions")[0][0] == "pending"

    drain()
    assert len(smtp.inbox.messages) == 1  # only the first is due yet
    for _minute in range(3):
        time_passes(app, timedelta(minutes=1))
        drain()
    messages = smtp.inbox.wait_for(4)
    recipients = sorted(str(message["To"]) for message in messages)
    assert recipients == sorted(f"ask{i}@example.com" for i in (0, 1, 2, 9))
    # The link confirms the subscription.
    link = link_in(messages[0], "/confirm/")
    page = client.get(urlsplit(link).path)
    assert page.status_code == 200 and "confirm" in page.get_data(as_text=True).lower()


def test_an_admins_resend_replaces_the_import_confirmation_still_waiting(app, tmp_path, smtp, drain):
    app.config["NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR"] = 1  # the second waits an hour
    path = write_members(tmp_path / "members.csv", [member(f"wait{i}@example.com") for i in range(2)])
    run_import(app, path)
    # The later of the two, an hour away.
    [waiting] = query(app, "SELECT reader_id FROM outbox_messages ORDER BY next_attempt_at DESC LIMIT 1")
    with app.app_context():
        subscriptions.resend_confirmation(db.session, waiting[0], source=subscriptions.Source(channel="admin"),
                                          config=app.config)
        db.session.commit()
        db.session.remove()
    assert query(app, "SELECT kind FROM outbox_messages WHERE reader_id = :reader ORDER BY id",
                 reader=waiting[0]) == [("confirmation",)]
    time_passes(app, timedelta(hours=2))
    drain()
    drain()
    messages = smtp.inbox.wait_for(2)
    assert sorted(str(message["To"]) for message in messages) == ["wait0@example.com", "wait1@example.com"]


def test_unconfirmed_confirmed_policy_records_without_proof(app, tmp_path):
    path = write_members(tmp_path / "members.csv", [member("bare@example.com", changed="2023-05-05 05:05:05")])
    run = run_import(app, path, unconfirmed="confirmed")
    assert run.counts["new"] == 1 and run.counts["confirmations_queued"] == 0
    assert query(app, "SELECT status FROM subscriptions")[0][0] == "confirmed"
    wordings = [row[0] for row in query(app, "SELECT wording FROM consent_events WHERE action = 'confirmed'")]
    assert wordings and "imported without proof of confirmation" in wordings[0]
    assert query(app, "SELECT count(*) FROM outbox_messages")[0][0] == 0


def test_unconfirmed_skip_policy_refuses(app, tmp_path):
    path = write_members(tmp_path / "members.csv", [member("bare@example.com"),
                                                    member("proof@example.com", optin=OPTIN)])
    run = run_import(app, path, unconfirmed="skip")
    assert run.counts["new"] == 1 and run.counts["refused"] == {"unconfirmed_skipped": 1}
    assert query(app, "SELECT email FROM readers") == [("proof@example.com",)]


def test_newer_state_here_wins_and_an_unsubscribe_is_never_undone(app, tmp_path):
    path = write_members(tmp_path / "members.csv", [member("left@example.com", optin=OPTIN, confirm=CONFIRM)])
    run_import(app, path)
    # The reader unsubscribes here, later.
    with app.app_context():
        reader = db.session.scalars(sa.select(Reader)).one()
        subscriptions.unsubscribe(db.session, reader.id, None, source=subscriptions.Source("one-click"))
        db.session.commit()
        db.session.remove()
    again = run_import(app, path)
    assert again.counts["refused"] == {"unsubscribed_here": 1}
    # An older unsubscribed row does not undo a later confirmation here.
    write_members(tmp_path / "b.csv", [member("stay@example.com", optin="2024-06-01 00:00:00",
                                              confirm="2024-06-01 00:00:00")])
    run_import(app, tmp_path / "b.csv")
    old_unsub = write_members(tmp_path / "unsubscribed_old.csv",
                              [member("stay@example.com", unsub="2024-01-01 00:00:00")], "unsubscribed")
    assert run_import(app, old_unsub).counts["refused"] == {"newer_state_here": 1}
    new_unsub = write_members(tmp_path / "unsubscribed_new.csv",
                              [member("stay@example.com", unsub="2025-01-01 00:00:00")], "unsubscribed")
    assert run_import(app, new_unsub).counts["updated"] == 1
    assert query(app, "SELECT s.status FROM subscriptions s JOIN readers r ON r.id = s.reader_id "
                      "WHERE r.email = 'stay@example.com'")[0][0] == "unsubscribed"
    assert query(app, "SELECT count(*) FROM consent_events WHERE action = 'unsubscribed' AND source = 'import'"
                 )[0][0] == 1


def test_erased_suppressed_and_blocked_are_refused(app, tmp_path):
    with app.app_context():
        suppressions.suppress(db.session, app.config, None, reason="erased", source="erasure",
                              key=suppressions.address_key(app.config, "Gone@Example.com"))
        suppressions.suppress(db.session, app.config, "bounced@example.com", reason="hard_bounce", source="smtp")
        reader = Reader(email="blocked@example.com", created_at=utcnow(), blocked_at=utcnow())
        db.session.add(reader)
        db.session.commit()
        db.session.remove()
    path = write_members(tmp_path / "members.csv", [
        member("gone@example.com", optin=OPTIN), member("bounced@example.com", optin=OPTIN),
        member("blocked@example.com", optin=OPTIN), member("fine@example.com", optin=OPTIN)])
    run = run_import(app, path)
    assert run.counts["new"] == 1
    assert run.counts["refused"] == {"blocked": 1, "erased": 1, "suppressed": 1}
    assert {row[0] for row in query(app, "SELECT email FROM readers")} == {"blocked@example.com", "fine@example.com"}
    with app.app_context():
        csv_text = b"".join(imports.refusals_csv(db.session, run.id)).decode()
        db.session.remove()
    lines = csv_text.splitlines()
    assert lines[0] == "file,line,email,reason,detail"
    # An erased reader's address is not stored, even in the refusal report.
    assert "members.csv,2,,erased," in lines
    assert query(app, "SELECT count(*) FROM import_refusals WHERE email LIKE '%gone@%'")[0][0] == 0
    assert any(line.startswith("members.csv,3,bounced@example.com,suppressed,") and "hard_bounce" in line
               for line in lines)
    # A cleaned row of an erased reader does not bring the address back onto the list.
    cleaned = write_members(tmp_path / "cleaned_members.csv", [member("gone@example.com", clean=OPTIN),
                                                               member("dead@example.com", clean=OPTIN)], "cleaned")
    run = run_import(app, cleaned)
    assert run.counts["suppressed"] == 1 and run.counts["refused"] == {"erased": 1}
    assert query(app, "SELECT count(*) FROM suppressions WHERE email = 'gone@example.com'")[0][0] == 0
    [(reason, source, detail)] = query(app, "SELECT reason, source, detail FROM suppressions "
                                            "WHERE email = 'dead@example.com'")
    assert (reason, source) == ("import", "import") and detail.startswith("cleaned in Mailchimp export at 2023-03-01")
    assert run_import(app, cleaned).counts["unchanged"] == 1


INTERNATIONAL = ["ü@example.com", "user@bücher.de"]
BAD = ["plain", "two@@example.com", "dot.@example.com", "x@localhost", "a" * 65 + "@example.com",
       "nul\x00@example.com", "surrogate\udc80@example.com", "=cmd()@example.com|x"]


def test_invalid_addresses_are_refused_and_international_ones_import(app, tmp_path):
    rows = [member(address, optin=OPTIN) for address in INTERNATIONAL + BAD]
    # The csv module can't write a lone surrogate: let the stand-in or real reader see what a file could hold.
    path = tmp_path / "members.csv"
    write_members(path, [r for r in rows if "\udc80" not in r["Email Address"]])
    run = run_import(app, path)
    assert run.counts["new"] == 2
    refused = run.counts["refused"]
    # A NUL byte may already make the row unreadable to the file reader.
    assert sum(refused.values()) == len(BAD) - 1 and set(refused) <= {"invalid_address", "unreadable_row"}
    assert {row[0] for row in query(app, "SELECT email FROM readers")} == {"ü@example.com", "user@bücher.de"}
    details = [row[0] for row in query(app, "SELECT detail FROM import_refusals ORDER BY line")]
    assert details[0] == "An email address must have an @-sign."


def test_refusals_csv_neutralizes_formulas(app, tmp_path):
    path = write_members(tmp_path / "members.csv", [member("=HYPERLINK(1)"), member("+1@bad")])
    run = run_import(app, path)
    with app.app_context():
        text = b"".join(imports.refusals_csv(db.session, run.id)).decode()
        db.session.remove()
    assert "'=HYPERLINK(1)" in text and "'+1@bad" in text


def test_dry_run_writes_nothing_then_runs_for_real(app, tmp_path):
    path = write_members(tmp_path / "members.csv", [member("a@example.com", optin=OPTIN), member("b@example.com"),
                                                    member("bad")])
    app.config["NEWSLETTER_IMPORT_DIR"] = str(tmp_path / "kept")
    with app.app_context():
        newsletter = db.session.scalars(sa.select(Newsletter).where(Newsletter.slug == "daily-briefing")).one()
        run = imports.record_upload(db.session, app.config, source=path, file_name="members.csv",
                                    newsletter=newsletter, channel="admin", keep_file=True)
        assert run.status == "uploaded" and Path(run.stored_path).parent == tmp_path / "kept"
        assert Path(run.stored_path).stat().st_mode & 0o777 == 0o600 and not path.exists()
        shown = imports.preview(run, rows=2)
        assert shown.format == "mailchimp" and [r.email for r in shown.rows] == ["a@example.com", "b@example.com"]
        imports.queue(db.session, run, dry_run=True, unconfirmed="ask")
        db.session.commit()
        done = imports.execute(db.session, app.config, run.id)
        assert done.status == "finished" and done.dry_run
        assert done.counts == {"new": 2, "updated": 0, "unchanged": 0, "suppressed": 0, "confirmations_queued": 1,
                               "refused": {"invalid_address": 1}}
        assert Path(done.stored_path).exists()
        for table in ("readers", "subscriptions", "consent_events", "outbox_messages", "suppressions"):
            assert db.session.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar() == 0, table
        # The same record, queued as the real run.
        imports.queue(db.session, done, dry_run=False, unconfirmed="ask")
        db.session.commit()
        real = imports.execute(db.session, app.config, run.id)
        assert real.status == "finished" and not real.dry_run and real.counts == done.counts | {}
        assert real.stored_path is None and not list((tmp_path / "kept").iterdir())
        assert db.session.execute(sa.text("SELECT count(*) FROM import_refusals")).scalar() == 1
        assert [r.id for r in imports.recent(db.session)] == [run.id]
        db.session.remove()


def test_bad_uploads_are_invalid_imports(app, tmp_path):
    other = tmp_path / "notes.csv"
    other.write_text("what,is,this\n1,2,3\n")
    with app.app_context():
        newsletter = db.session.scalars(sa.select(Newsletter).where(Newsletter.slug == "daily-briefing")).one()
        with pytest.raises(imports.InvalidImport):
            imports.record_upload(db.session, app.config, source=other, file_name="notes.csv",
                                  newsletter=newsletter, channel="cli")
        with pytest.raises(imports.InvalidImport, match="no file"):
            imports.record_upload(db.session, app.config, source=tmp_path / "missing.csv", file_name="missing.csv",
                                  newsletter=newsletter, channel="cli")
        db.session.remove()


def test_a_run_that_died_mid_way_resumes_after_its_last_batch(app, tmp_path, monkeypatch):
    rows = [member(f"r{i}@example.com", optin=OPTIN) for i in range(25)]
    rows.insert(20, member("r3@example.com", optin=OPTIN))  # a duplicate after the crash point
    path = write_members(tmp_path / "members.csv", rows)
    batches = []

    def crash_on_third(batch):
        batches.append(len(batch))
        if len(batches) == 3:
            raise RuntimeError("the process died")

    monkeypatch.setattr(imports, "before_commit", crash_on_third)
    with app.app_context():
        newsletter = db.session.scalars(sa.select(Newsletter).where(Newsletter.slug == "daily-briefing")).one()
        run = imports.record_upload(db.session, app.config, source=path, file_name="members.csv",
                                    newsletter=newsletter, channel="cli")
        imports.queue(db.session, run, dry_run=False, unconfirmed="ask")
        db.session.commit()
        run_id = run.id
        with pytest.raises(RuntimeError):
            imports.execute(db.session, app.config, run_id, batch_rows=5)
        db.session.rollback()
        db.session.remove()
    monkeypatch.setattr(imports, "before_commit", None)
    [(status, rows_done)] = query(app, "SELECT status, rows_done FROM imports")
    assert (status, rows_done) == ("running", 10)
    with app.app_context():
        assert imports.claim_next(db.session, stale_after=timedelta(minutes=5)) is None  # still beating
        taken = imports.claim_next(db.session, stale_after=timedelta(seconds=-1))
        assert taken is not None and taken.id == run_id
        # A second worker can't take it too while it beats.
        assert imports.claim_next(db.session, stale_after=timedelta(minutes=5)) is None
        done = imports.execute(db.session, app.config, run_id, batch_rows=5)
        db.session.remove()
    assert done.status == "finished" and done.rows_done == 26
    assert done.counts == {"new": 25, "updated": 0, "unchanged": 0, "suppressed": 0, "confirmations_queued": 0,
                           "refused": {"duplicate_in_file": 1}}
    assert query(app, "SELECT count(*) FROM readers")[0][0] == 25
    assert query(app, "SELECT count(*) FROM consent_events")[0][0] == 50
    assert query(app, "SELECT line FROM import_refusals") == [(22,)]


def test_claim_next_takes_a_queued_run_once(app, tmp_path):
    path = write_members(tmp_path / "members.csv", [member("q@example.com", optin=OPTIN)])
    with app.app_context():
        newsletter = db.session.scalars(sa.select(Newsletter).where(Newsletter.slug == "daily-briefing")).one()
        run = imports.record_upload(db.session, app.config, source=path, file_name="members.csv",
                                    newsletter=newsletter, channel="cli")
        assert imports.claim_next(db.session, stale_after=timedelta(minutes=1)) is None  # uploaded, not queued
        imports.queue(db.session, run, dry_run=False, unconfirmed="ask")
        db.session.commit()
        first = imports.claim_next(db.session, stale_after=timedelta(minutes=1))
        assert first is not None and first.status == "running"
        assert imports.claim_next(db.session, stale_after=timedelta(minutes=1)) is None
        db.session.remove()


def test_a_live_signup_at_the_same_time_does_not_fail_the_import(app, tmp_path):
    if app.config["SQLALCHEMY_DATABASE_URI"].startswith("sqlite"):
        pytest.skip("SQLite runs one writer at a time; the race needs PostgreSQL")
    addresses_ = [f"race{i}@example.com" for i in range(300)]
    path = write_members(tmp_path / "members.csv", [member(a, optin=OPTIN, confirm=CONFIRM) for a in addresses_])
    errors = []

    def sign_up_all() -> None:
        try:
            with app.app_context(), app.test_request_context():
                newsletter = db.session.scalars(sa.select(Newsletter).where(Newsletter.slug == "daily-briefing")).one()
                for address in reversed(addresses_):
                    subscriptions.sign_up(db.session, address, [newsletter], source=subscriptions.Source("api"),
                                          config=app.config)
                    db.session.commit()
                db.session.remove()
        except Exception as error:  # noqa: BLE001 (reported by the test)
            errors.append(error)

    signups = threading.Thread(target=sign_up_all)
    signups.start()
    run = run_import(app, path, batch_rows=20)
    signups.join(60)
    assert not errors and run.status == "finished"
    total = run.counts["new"] + run.counts["unchanged"] + sum(run.counts["refused"].values())
    assert total == 300 and set(run.counts["refused"]) <= {"newer_state_here"}
    assert query(app, "SELECT count(*) FROM readers")[0][0] == 300
    assert query(app, "SELECT count(*) FROM subscriptions")[0][0] == 300


def _random_address(rng: random.Random) -> str:
    atext = string.ascii_letters + string.digits + "!#$%&'*+/=?^_`{|}~-."
    local = "".join(rng.choice(atext) for _ in range(rng.randint(1, 70)))
    labels = ["".join(rng.choice(string.ascii_letters + string.digits + "-") for _ in range(rng.randint(1, 12)))
              for _ in range(rng.randint(1, 3))]
    tld = rng.choice(["com", "org", "de", "io", "test", "local", "x1", "COM", "museum", "xn--p1ai", "localhost"])
    return f"{local}@{'.'.join(labels + [tld])}"


def test_the_fast_path_normalizes_exactly_as_email_validator(app):
    rng = random.Random(10)
    sample = [_random_address(rng) for _ in range(4000)] + [
        "Ada@EXAMPLE.COM", "a@b.co", "x@xn--bcher-kva.de", "a..b@example.com", ".a@example.com", "a@-x.com",
        "a@x-.com", "a@x..com", "a@123.456", "a@[127.0.0.1]", '"q"@example.com', "a" * 64 + "@example.com",
        "a@" + "b" * 63 + ".com", "a@" + "b" * 64 + ".com", "a@" + ".".join(["abcdefghi"] * 25) + ".com"]
    with app.app_context():
        for address in sample:
            try:
                expected: str | None = addresses.normalize(address)
            except addresses.InvalidAddress:
                expected = None
            try:
                got: str | None = imports.normalize_address(address)
            except addresses.InvalidAddress:
                got = None
            assert got == expected, address
            if expected is not None:
                assert imports._key_function(app.config)(expected) == suppressions.address_key(app.config, address)


def test_the_seen_table_tells_new_from_repeated():
    seen = imports._SeenAddresses()
    assert all(seen.add(f"a{i}@example.com") for i in range(50000))
    assert not any(seen.add(f"a{i}@example.com") for i in range(0, 50000, 7))
    assert seen.add("A0@example.com")


@pytest.mark.parametrize("name", ["Ada", "  Ada Lovelace  ", "", "   ", "O'Brien, \"Jo\"", "x" * 200, "x" * 201,
                                  "=HYPERLINK()", "Zoë", "Ada\u202eecalvoL", "tab\there", "a\x00b", "👩\u200d💻"])
def test_the_fast_name_check_agrees_with_signups(app, name):
    def outcome(check):
        try:
            return check(name)
        except ValueError:
            return ValueError

    with app.app_context():
        assert outcome(imports._name) == outcome(subscriptions.check_name)


def test_every_refusal_reason_reads_in_ukrainian(app):
    from flask_babel import force_locale

    with app.test_request_context(), force_locale("uk"):
        for reason, sentence in imports.REFUSAL_REASONS.items():
            assert imports.reason_text(reason) != sentence, reason


SLOW_IMPORT = """
import sys, time
from newsletter import imports
from newsletter.cli import main
run_batch = imports._run_batch


def slow_batch(context, batch):  # time enough to be killed between batches, the database left unlocked
    run_batch(context, batch)
    time.sleep(0.3)


imports._run_batch = slow_batch
sys.argv = ["newsletter", "import", sys.argv[1], "--newsletter", "daily-briefing"]
main()
"""


def test_a_killed_import_process_is_resumed_by_claim_next(app, tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    from .conftest import SECRET

    rows = [member(f"k{i}@example.com", optin=OPTIN) for i in range(20000)]
    rows.insert(15000, member("k7@example.com", optin=OPTIN))
    path = write_members(tmp_path / "members.csv", rows)
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSLETTER_")}
    env.update({"NEWSLETTER_DATABASE_URL": app.config["SQLALCHEMY_DATABASE_URI"], "NEWSLETTER_SECRET_KEY": SECRET,
                "NEWSLETTER_INSTANCE_PATH": str(tmp_path / "instance"), "PYTHONPATH": str(Path(__file__).parents[1])})
    process = subprocess.Popen([sys.executable, "-c", SLOW_IMPORT, str(path)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not query(app, "SELECT rows_done FROM imports WHERE rows_done > 0"):
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "the import never committed a batch"
            time.sleep(0.05)
        process.send_signal(signal.SIGKILL)
        process.wait(30)
    finally:
        if process.poll() is None:
            process.kill()
        process.stderr.close()
    [(status, rows_done)] = query(app, "SELECT status, rows_done FROM imports")
    assert status == "running" and 0 < rows_done < 20001

    with app.app_context():
        taken = imports.claim_next(db.session, stale_after=timedelta(0))
        assert taken is not None
        done = imports.execute(db.session, app.config, taken.id)
        db.session.remove()
    assert done.status == "finished" and done.rows_done == 20001
    assert done.counts["new"] == 20000 and done.counts["refused"] == {"duplicate_in_file": 1}
    assert query(app, "SELECT count(*) FROM readers")[0][0] == 20000
    assert query(app, "SELECT count(*) FROM consent_events")[0][0] == 40000


def test_a_confirmation_sent_days_later_counts_its_link_from_then(app, clock):
    from newsletter import tokens

    later = utcnow() + timedelta(days=10)
    with app.app_context():
        token = tokens.confirm_token(1, [2], issued_at=later)
        max_age = app.config["NEWSLETTER_CONFIRM_MAX_AGE"]
        with pytest.raises(tokens.ExpiredToken):
            tokens.verify(tokens.CONFIRM, token, max_age=max_age)  # not before the email leaves
        clock.advance(timedelta(days=10, hours=1).total_seconds())
        signed = tokens.verify(tokens.CONFIRM, token, max_age=max_age)
        assert signed.payload == {"r": 1, "n": [2]} and abs((signed.issued_at - later).total_seconds()) < 1
        clock.advance(timedelta(days=7).total_seconds())
        with pytest.raises(tokens.ExpiredToken):
            tokens.verify(tokens.CONFIRM, token, max_age=max_age)


def test_a_duplicate_row_of_an_erased_reader_keeps_no_address_either(app, tmp_path):
    with app.app_context():
        suppressions.suppress(db.session, app.config, None, reason="erased", source="erasure",
                              key=suppressions.address_key(app.config, "ann@example.com"))
        db.session.commit()
        db.session.remove()
    # Within one batch, and in a later batch (the erased row is found after its duplicates are screened).
    path = write_members(tmp_path / "members.csv", [member("ann@example.com", optin=OPTIN),
                                                    member("ann@example.com", optin=OPTIN),
                                                    member("other@example.com", optin=OPTIN),
                                                    member("ann@example.com", optin=OPTIN)])
    run = run_import(app, path, batch_rows=3)
    assert run.counts["refused"] == {"duplicate_in_file": 2, "erased": 1}
    assert query(app, "SELECT line, email, reason FROM import_refusals ORDER BY line") == [
        (2, None, "erased"), (3, None, "duplicate_in_file"), (5, None, "duplicate_in_file")]


def test_a_reader_unsubscribed_after_an_ask_import_is_not_sent_its_confirmation(app, tmp_path, smtp, drain):
    """`ask` spaces its confirmations over hours: one who unsubscribed meanwhile is not asked any more."""
    app.config["NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR"] = 60
    first = write_members(tmp_path / "subscribed_members_export_a.csv",
                          [member("first@example.com"), member("bob@example.com")])
    assert run_import(app, first).counts["confirmations_queued"] == 2
    later = (utcnow() + timedelta(minutes=2)).strftime("%Y-%m-%d %H:%M:%S")
    unsubscribed = write_members(tmp_path / "unsubscribed_members_export_b.csv",
                                 [member("bob@example.com", unsub=later, changed=later)], "unsubscribed")
    assert run_import(app, unsubscribed).counts["updated"] == 1
    drain()
    time_passes(app, timedelta(minutes=5))
    drain()
    assert [str(message["To"]) for message in smtp.inbox.wait_for(1)] == ["first@example.com"]
    assert query(app, "SELECT r.email, o.status, o.attempts, o.last_error FROM outbox_messages o "
                      "JOIN readers r ON r.id = o.reader_id WHERE r.email = 'bob@example.com'") == [
        ("bob@example.com", "failed", 0,
         "Not sent: the reader no longer waits to confirm (unsubscribed, confirmed or erased meanwhile)")]
    smtp.inbox.wait_for(1)  # nothing else came


def test_after_an_outage_import_confirmations_keep_to_their_hourly_rate(app, tmp_path, smtp, drain):
    """Confirmations held back by an outage fall due together: they still leave one per 3600/rate seconds."""
    app.config["NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR"] = 60  # one a minute
    path = write_members(tmp_path / "subscribed_members_export_a.csv",
                         [member(f"reader{i}@example.com") for i in range(6)])
    assert run_import(app, path).counts["confirmations_queued"] == 6
    with app.app_context():
        # A news email, not an import's confirmation, is due too: the rate holds it up not.
        from newsletter import outbox
        reader = Reader(email="news@example.com")
        db.session.add(reader)
        db.session.flush()
        daily = db.session.scalar(sa.select(Newsletter.id).where(Newsletter.slug == "daily-briefing"))
        db.session.add(Subscription(reader_id=reader.id, newsletter_id=daily, status="confirmed"))
        outbox.enqueue(db.session, kind="welcome", reader_id=reader.id, newsletter_ids=[daily], locale="en")
        db.session.commit()
        db.session.remove()
    time_passes(app, timedelta(minutes=10))  # the relay was down: all six are overdue
    drain()
    assert sorted(str(message["To"]) for message in smtp.inbox.messages) == ["news@example.com",
                                                                              "reader0@example.com"]
    [(attempts,)] = set(query(app, "SELECT attempts FROM outbox_messages WHERE status = 'pending'"))
    assert attempts == 0  # postponed, no attempt spent
    # They keep their spacing from the last one sent: one a minute.
    with app.app_context():
        due = list(db.session.scalars(sa.select(OutboxMessage.next_attempt_at)
                                      .where(OutboxMessage.status == "pending").order_by(OutboxMessage.id)))
        db.session.remove()
    assert [(later - earlier).total_seconds() for earlier, later in itertools.pairwise(due)] == [60.0] * 4
    for sent in range(2, 7):
        time_passes(app, timedelta(minutes=1))
        drain()
        assert len(smtp.inbox.messages) == sent + 1


def test_a_time_in_the_future_is_refused_as_proof_of_consent(app, tmp_path):
    """A typo'd year would become the consent's time, and every later unsubscribe would lose to it."""
    path = write_members(tmp_path / "subscribed_members_export_f.csv", [
        member("future@example.com", optin="2099-01-01 00:00:00", confirm="2099-01-01 00:00:00"),
        member("odd-ip@example.com", optin=OPTIN, optin_ip="not an ip", confirm=CONFIRM, confirm_ip="192.0.2.9")])
    run = run_import(app, path)
    assert run.counts["new"] == 1 and run.counts["refused"] == {"unreadable_row": 1}
    [(email, reason, detail)] = query(app, "SELECT email, reason, detail FROM import_refusals")
    assert (email, reason) == ("future@example.com", "unreadable_row")
    assert detail == "The opt-in time is in the future (2099-01-01 00:00:00 UTC): it proves nothing."
    assert query(app, "SELECT count(*) FROM consent_events WHERE occurred_at > :now", now=utcnow())[0][0] == 0
    assert query(app, "SELECT email FROM readers") == [("odd-ip@example.com",)]


def _postgresql(app) -> bool:
    with app.app_context():
        return db.engine.dialect.name == "postgresql"


def test_a_deadlock_during_copy_runs_the_batch_again(app, tmp_path, monkeypatch):
    """psycopg's own error from the raw connection (COPY) reaches the deadlock retry as any other's does."""
    if not _postgresql(app):
        pytest.skip("COPY is PostgreSQL's")
    insert_rows, calls = imports._insert_rows, []

    def deadlocked_once(context, table, columns, rows):
        calls.append(table.name)
        if len(calls) == 1:  # the server's own 40P01, through the raw driver connection as COPY's would come
            with imports._driver_connection(context).cursor() as cursor:
                cursor.execute("DO $$ BEGIN RAISE EXCEPTION 'deadlock detected' USING ERRCODE = 'deadlock_detected'; "
                               "END $$")
        return insert_rows(context, table, columns, rows)

    monkeypatch.setattr(imports, "_insert_rows", deadlocked_once)
    path = write_members(tmp_path / "members.csv", [member("ann@example.com", optin=OPTIN),
                                                    member("bob@example.com", optin=OPTIN)])
    run = run_import(app, path)
    assert run.status == "finished" and run.counts["new"] == 2
    assert len(calls) == 2  # the batch, run again
    assert query(app, "SELECT count(*) FROM consent_events")[0][0] > 0


def test_a_database_outage_during_copy_is_an_outage_not_an_unexpected_error(app, tmp_path, monkeypatch, caplog):
    """The connection dies under COPY: the run stays running (taken up again), nothing says "unexpected error"."""
    if not _postgresql(app):
        pytest.skip("COPY is PostgreSQL's")
    import sqlalchemy.exc

    from newsletter import import_runner, outages

    insert_rows = imports._insert_rows

    def connection_killed(context, table, columns, rows):
        pid = imports._driver_connection(context).info.backend_pid
        with db.engine.connect() as other:  # another session ends this one's backend, as a server restart does
            other.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            other.commit()
        return insert_rows(context, table, columns, rows)

    monkeypatch.setattr(imports, "_insert_rows", connection_killed)
    path = write_members(tmp_path / "members.csv", [member("ann@example.com", optin=OPTIN)])
    with app.app_context():
        newsletter = db.session.scalars(sa.select(Newsletter).where(Newsletter.slug == "daily-briefing")).one()
        run = imports.record_upload(db.session, app.config, source=path, file_name=path.name,
                                    newsletter=newsletter, channel="cli")
        imports.queue(db.session, run, dry_run=False, unconfirmed="ask")
        db.session.commit()
        with pytest.raises(sqlalchemy.exc.DBAPIError) as raised:
            import_runner.run_due(db.session, app.config)
        assert outages.database_unavailable(raised.value)
        db.session.rollback()
        db.session.remove()
    assert query(app, "SELECT status, error FROM imports") == [("running", None)]
    assert "unexpected error" not in caplog.text and "Traceback" not in caplog.text
    monkeypatch.setattr(imports, "_insert_rows", insert_rows)
    app.config["NEWSLETTER_IMPORT_STALE_AFTER"] = 1
    with app.app_context():
        db.session.execute(sa.update(ImportRun).values(heartbeat_at=utcnow() - timedelta(seconds=5)))
        db.session.commit()
        assert import_runner.run_due(db.session, app.config) == 1
        db.session.remove()
    assert query(app, "SELECT status FROM imports") == [("finished",)]


def test_an_import_confirmation_is_dated_when_it_is_sent_not_when_it_was_queued(app, tmp_path, smtp, drain):
    """`ask` spreads confirmations over hours or days: one dated at the import arrives looking days old (spam)."""
    app.config["NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR"] = 1
    path = write_members(tmp_path / "subscribed_members_export_a.csv",
                         [member(f"reader{i}@example.com") for i in range(3)])
    assert run_import(app, path).counts["confirmations_queued"] == 3
    drain()
    for _hour in range(2):
        time_passes(app, timedelta(hours=1, minutes=1))
        drain()
    messages = smtp.inbox.wait_for(3)
    last = next(message for message in messages if str(message["To"]) == "reader2@example.com")
    dated = parsedate_to_datetime(last["Date"])
    assert utcnow() - dated < timedelta(minutes=5), f"sent now, dated {dated} ({utcnow() - dated} ago)"


OUR_EXPORT_HEADER = "email,name,status,subscribed_at,confirmed_at,source"


def test_our_export_with_a_suppressed_column_suppresses_its_complainers_and_bounces(app, tmp_path):
    """`newsletter export SLUG --suppressed include` imported elsewhere: a reason in `suppressed` makes the row cleaned."""
    path = tmp_path / "export.csv"
    path.write_text(f"{OUR_EXPORT_HEADER},suppressed\r\n"
                    "carol@example.org,Carol,confirmed,2024-03-02T10:00:00Z,2024-03-02T10:00:00Z,import,complaint\r\n"
                    "alice@example.org,Alice,confirmed,2024-03-01T10:00:00Z,2024-03-01T10:05:00Z,import,hard_bounce\r\n"
                    "bob@example.org,Bob,confirmed,2024-03-01T10:00:00Z,2024-03-01T10:05:00Z,signup_form,\r\n",
                    encoding="utf-8")
    run = run_import(app, path)
    assert (run.counts["suppressed"], run.counts["new"]) == (2, 1)
    with app.app_context():
        stopped = {address: suppressions.mail_stopped(db.session, app.config, address)
                   for address in ("carol@example.org", "alice@example.org", "bob@example.org")}
        db.session.remove()
    assert stopped["bob@example.org"] is None
    assert {address: stop.reason for address, stop in stopped.items() if stop is not None} == {
        "carol@example.org": "import", "alice@example.org": "import"}
    details = dict(query(app, "SELECT email, detail FROM suppressions"))
    assert "complaint" in details["carol@example.org"] and "hard_bounce" in details["alice@example.org"]
    # Not subscribed: the next export, what the sending platform mails, does not hold them.
    assert query(app, "SELECT r.email FROM subscriptions s JOIN readers r ON r.id = s.reader_id") == [
        ("bob@example.org",)]


def history(app) -> dict[str, list[tuple[str, datetime]]]:
    """Each reader's consent events (action, naive UTC time), in order."""
    with app.app_context():
        try:
            rows = db.session.execute(sa.select(Reader.email, ConsentEvent.action, ConsentEvent.occurred_at)
                                      .join(ConsentEvent, ConsentEvent.reader_id == Reader.id)
                                      .order_by(Reader.email, ConsentEvent.occurred_at, ConsentEvent.id)).all()
        finally:
            db.session.remove()
    found: dict[str, list[tuple[str, datetime]]] = {}
    for email, action, when in rows:
        found.setdefault(email, []).append((action, when.replace(tzinfo=None)))
    return found


def test_an_exported_unsubscribe_keeps_its_own_times_not_the_import_s(app, tmp_path):
    """Our export has no unsubscribe time: the latest time the row has stands for it, not today.

    Moving a list of 10,000 long-gone readers would otherwise put 10,000 unsubscribes on today's chart.
    """
    path = tmp_path / "export.csv"
    path.write_text(f"{OUR_EXPORT_HEADER}\r\n"
                    "uma@example.org,Uma,unsubscribed,2023-01-01T10:00:00Z,2023-01-01T10:01:00Z,import\r\n"
                    "ned@example.org,Ned,unsubscribed,,,import\r\n",
                    encoding="utf-8")
    assert run_import(app, path).counts["new"] == 2
    events = history(app)
    assert events["uma@example.org"] == [("signup_requested", datetime(2023, 1, 1, 10, 0)),
                                         ("confirmed", datetime(2023, 1, 1, 10, 1)),
                                         ("unsubscribed", datetime(2023, 1, 1, 10, 1))]
    with app.app_context():
        left = db.session.scalar(sa.select(Subscription.unsubscribed_at).join(Reader, Reader.id == Subscription.reader_id)
                                 .where(Reader.email == "uma@example.org"))
        db.session.remove()
    assert left.replace(tzinfo=None) == datetime(2023, 1, 1, 10, 1)
    # A row with no time at all: only then the import's time.
    [(action, when)] = events["ned@example.org"]
    assert action == "unsubscribed" and when > (utcnow() - timedelta(hours=1)).replace(tzinfo=None)


def test_a_mailchimp_unsubscribed_row_keeps_how_it_joined_before_it_left(app, tmp_path):
    path = write_members(tmp_path / "unsubscribed_members_export_a.csv",
                         [member("gone@example.com", optin=OPTIN, confirm=CONFIRM, unsub="2024-05-05 08:00:00")],
                         "unsubscribed")
    assert run_import(app, path).counts["new"] == 1
    assert history(app)["gone@example.com"] == [("signup_requested", datetime(2023, 3, 1, 10, 0)),
                                                ("confirmed", datetime(2023, 3, 1, 10, 5)),
                                                ("unsubscribed", datetime(2024, 5, 5, 8, 0))]


def test_an_import_confirmation_is_recorded_as_sent_at_its_scheduled_time(app, tmp_path):
    """The admin's reader page shows when it is due; a signup meanwhile sends no second email before it."""
    app.config["NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR"] = 1
    path = write_members(tmp_path / "subscribed_members_export_a.csv",
                         [member("first@example.com"), member("second@example.com")])
    assert run_import(app, path).counts["confirmations_queued"] == 2
    with app.app_context():
        due = dict(db.session.execute(sa.select(Reader.email, OutboxMessage.next_attempt_at)
                                      .join(Reader, Reader.id == OutboxMessage.reader_id)).all())
        sent = dict(db.session.execute(sa.select(Reader.email, Reader.confirmation_sent_at)).all())
        newsletter = db.session.scalars(sa.select(Newsletter).where(Newsletter.slug == "daily-briefing")).one()
        result = subscriptions.sign_up(db.session, "second@example.com", [newsletter],
                                       source=subscriptions.Source(channel="form"), config=app.config)
        db.session.commit()
        db.session.remove()
    assert sent == due and sent["second@example.com"] > utcnow() + timedelta(minutes=30)
    assert not result.confirmation_queued
    assert query(app, "SELECT count(*) FROM outbox_messages")[0][0] == 2


def test_an_import_confirmation_says_the_list_moved_and_asks_to_confirm_to_keep_it(app, tmp_path, smtp, drain):
    """The reader did not just sign up here: "if you did not sign up, ignore this" would read as spam."""
    path = write_members(tmp_path / "subscribed_members_export_a.csv", [member("moved@example.com")])
    assert run_import(app, path).counts["confirmations_queued"] == 1
    drain()
    [message] = smtp.inbox.wait_for(1)
    for part in ("plain", "html"):
        body = " ".join(message.get_body((part,)).get_content().split())
        assert "We have moved our mailing list to a new service" in body and "To keep receiving it" in body
        assert "If you did not sign up" not in body
    assert link_in(message, "/confirm/")


def test_an_import_confirmation_reads_in_ukrainian(app):
    from newsletter import emails

    with app.app_context():
        newsletter = db.session.scalars(sa.select(Newsletter).where(Newsletter.slug == "daily-briefing")).one()
        reader = Reader(id=1, email="moved@example.com", name=None)
        text = emails.render_for(emails.IMPORT_CONFIRMATION, reader, [newsletter], "uk", app.config).body_text
        db.session.remove()
    assert "Ми перенесли наш список розсилки на новий сервіс" in text and "Щоб і далі отримувати листи" in text
