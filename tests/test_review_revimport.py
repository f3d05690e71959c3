"""Review of issue 10's import half (revimport): failing tests for what was found."""

from __future__ import annotations

import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

from newsletter import import_runner
from newsletter.extensions import db
from newsletter.import_formats import detect, read_rows
from newsletter.models import utcnow

from .conftest import query
from .test_admin_imports import GOOD, editor, admins, readers, start, uploaded_run  # noqa: F401


def test_a_file_of_one_giant_line_is_read_in_flat_memory(tmp_path: Path):
    """'Streamed, memory flat whatever the size': a 40 MB line must not be held whole (128 kB is the cell limit)."""
    path = tmp_path / "giant.csv"
    with path.open("wb") as file:
        file.write(b"email,name\r\nann@example.org,Ann\r\n")
        file.write(b"x" * (40 << 20))
        file.write(b"\r\nbob@example.org,Bob\r\n")
    detected = detect(path)
    tracemalloc.start()
    try:
        rows = list(read_rows(path, detected))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [row.email for row in rows if row.problem is None] == ["ann@example.org", "bob@example.org"]
    assert peak < 8 << 20, f"reading the file held {peak / 2**20:.0f} MiB at its peak"


def test_an_import_cut_off_by_a_restart_goes_on_without_anyone_opening_its_page(app, editor):
    """`newsletter serve` kicks the imports at start, but a run cut off a moment ago is not stale yet:
    nothing looks again, and it stays "running" until an admin happens to open that run's page."""
    page = uploaded_run(editor)
    assert start(editor, page, "import").status_code == 303
    run_id = int(page.rsplit("/", 1)[1])
    with app.app_context():
        from newsletter.models import ImportRun

        run = db.session.get(ImportRun, run_id)
        # The web process that ran it was restarted a second ago.
        run.status, run.heartbeat_at, run.started_at = "running", utcnow() - timedelta(seconds=1), utcnow()
        db.session.commit()
        db.session.remove()
    app.config["NEWSLETTER_IMPORTS_IN_PROCESS"] = True
    app.config["NEWSLETTER_IMPORT_STALE_AFTER"] = 2
    import_runner.kick(app)  # what `newsletter serve` does as it starts
    app.extensions["newsletter.imports"].join(10)
    # Nobody opens the run's page; the import list may be looked at.
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        editor.get("/admin/imports")
        if query(app, "SELECT status FROM imports")[0][0] == "finished":
            break
        time.sleep(0.5)
    app.extensions["newsletter.imports"].join(10)
    assert [row[0] for row in query(app, "SELECT status FROM imports")] == ["finished"]
    assert readers(app) == GOOD


def test_erasure_leaves_no_copy_of_the_address_in_import_records(app, tmp_path):
    """'An erased reader … no address is kept': not in the refused rows of earlier imports, nor of later ones."""
    import sqlalchemy as sa

    from newsletter import imports, privacy
    from newsletter.models import ImportRun, Newsletter
    from newsletter.subscriptions import Source

    from .import_files import member, write_members

    def run_import(path: Path) -> ImportRun:
        with app.app_context():
            newsletter = db.session.scalars(sa.select(Newsletter).where(Newsletter.slug == "daily-briefing")).one()
            run = imports.record_upload(db.session, app.config, source=path, file_name=path.name,
                                        newsletter=newsletter, channel="cli")
            imports.queue(db.session, run, dry_run=False, unconfirmed="ask")
            db.session.commit()
            run = imports.execute(db.session, app.config, run.id)
            db.session.expunge(run)
            db.session.remove()
            return run

    optin = "2023-03-01 10:00:00"
    # Ann's row appears twice: the second is refused (duplicate_in_file) and kept with her address.
    first = write_members(tmp_path / "members.csv", [member("ann@example.com", optin=optin),
                                                     member("ann@example.com", optin=optin)])
    assert run_import(first).counts["refused"] == {"duplicate_in_file": 1}
    with app.app_context():
        ann = privacy.find_reader(db.session, "ann@example.com")
        privacy.erase_reader(db.session, ann.id, source=Source(channel="admin"), config=app.config)
        db.session.commit()
        db.session.remove()
    # Someone imports an old list again: her row is refused (erased) — and her address stored once more.
    again = write_members(tmp_path / "old_members.csv", [member("ann@example.com", optin=optin)])
    assert run_import(again).counts["refused"] == {"erased": 1}
    kept = query(app, "SELECT import_id, email, reason FROM import_refusals WHERE lower(email) LIKE '%ann@%'")
    assert kept == [], f"the erased reader's address is still stored: {kept}"


def test_a_reader_unsubscribed_after_an_ask_import_gets_no_confirmation_email(app, tmp_path, drain):
    """`ask` spaces its confirmations over hours or days; a reader who unsubscribes meanwhile (here: the
    later unsubscribed export of the same audience) must not be asked to confirm any more."""
    import sqlalchemy as sa

    from newsletter import imports
    from newsletter.models import Newsletter

    from .import_files import member, write_members

    def run_import(path: Path) -> dict:
        with app.app_context():
            newsletter = db.session.scalars(sa.select(Newsletter).where(Newsletter.slug == "daily-briefing")).one()
            run = imports.record_upload(db.session, app.config, source=path, file_name=path.name,
                                        newsletter=newsletter, channel="cli")
            imports.queue(db.session, run, dry_run=False, unconfirmed="ask")
            db.session.commit()
            counts = imports.execute(db.session, app.config, run.id).counts
            db.session.remove()
            return counts

    first = write_members(tmp_path / "subscribed_members_export_a.csv", [member("bob@example.com")])
    assert run_import(first)["confirmations_queued"] == 1
    later = (utcnow() + timedelta(minutes=2)).strftime("%Y-%m-%d %H:%M:%S")
    unsubscribed = write_members(tmp_path / "unsubscribed_members_export_b.csv",
                                 [member("bob@example.com", unsub=later, changed=later)], "unsubscribed")
    assert run_import(unsubscribed)["updated"] == 1
    assert query(app, "SELECT status FROM subscriptions") == [("unsubscribed",)]
    drain()
    sent = query(app, "SELECT to_address FROM outbox_messages WHERE kind = 'import_confirmation' AND status = 'sent'")
    assert sent == [], "the confirmation email went to a reader who had unsubscribed"


def test_after_a_relay_outage_import_confirmations_keep_to_their_hourly_rate(app, tmp_path, drain):
    """The rate is there "so that a big list does not look like spam": confirmations held back by an outage
    (relay or worker down) must not all leave in one burst when it ends."""
    import sqlalchemy as sa

    from newsletter import imports
    from newsletter.models import Newsletter

    from .import_files import member, write_members

    app.config["NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR"] = 3600  # one a second
    path = write_members(tmp_path / "subscribed_members_export_a.csv",
                         [member(f"reader{i}@example.com") for i in range(12)])
    with app.app_context():
        newsletter = db.session.scalars(sa.select(Newsletter).where(Newsletter.slug == "daily-briefing")).one()
        run = imports.record_upload(db.session, app.config, source=path, file_name=path.name,
                                    newsletter=newsletter, channel="cli")
        imports.queue(db.session, run, dry_run=False, unconfirmed="ask")
        db.session.commit()
        assert imports.execute(db.session, app.config, run.id).counts["confirmations_queued"] == 12
        db.session.remove()
    time.sleep(12)  # the relay (or the worker) is down for 12 seconds: 12 confirmations fall due meanwhile
    drain()
    sent = query(app, "SELECT count(*) FROM outbox_messages WHERE kind = 'import_confirmation' AND status = 'sent'")
    assert sent[0][0] <= 2, f"{sent[0][0]} confirmations left at once, at a rate of one a second"


def test_a_time_in_the_future_is_not_taken_as_consent_proof(app, tmp_path):
    """A typo'd year (2099) becomes the consent events' time and confirmed_at: every later unsubscribed row from
    the source is then refused as newer_state_here, forever. Times after the import's own are not proof."""
    import sqlalchemy as sa

    from newsletter import imports
    from newsletter.models import Newsletter

    from .import_files import member, write_members

    path = write_members(tmp_path / "subscribed_members_export_f.csv", [
        member("future@example.com", optin="2099-01-01 00:00:00", confirm="2099-01-01 00:00:00",
               optin_ip="not an ip")])
    with app.app_context():
        newsletter = db.session.scalars(sa.select(Newsletter).where(Newsletter.slug == "daily-briefing")).one()
        run = imports.record_upload(db.session, app.config, source=path, file_name=path.name,
                                    newsletter=newsletter, channel="cli")
        imports.queue(db.session, run, dry_run=False, unconfirmed="ask")
        db.session.commit()
        imports.execute(db.session, app.config, run.id)
        db.session.remove()
    future = query(app, "SELECT action, occurred_at FROM consent_events WHERE occurred_at > :now", now=utcnow())
    assert future == [], f"consent events dated in the future: {future}"
