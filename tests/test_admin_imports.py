"""The admin's imports: upload, what was read, dry run, the import in the background, its record and refusals;
admins only, with the upload's own size limit."""

from __future__ import annotations

import csv
import hashlib
import html
import io
import json
import os
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
import requests

from newsletter import accounts, addresses, import_runner, imports
from newsletter.extensions import db
from newsletter.models import utcnow

from .conftest import csrf_token, hidden_fields, query
from .test_admin_auth import PASSWORD, log_in

HEADER = ("Email Address,First Name,Last Name,MEMBER_RATING,OPTIN_TIME,OPTIN_IP,CONFIRM_TIME,CONFIRM_IP,"
          "LATITUDE,LONGITUDE,GMTOFF,DSTOFF,TIMEZONE,CC,REGION,LAST_CHANGED,LEID,EUID,NOTES,TAGS")


def mailchimp_row(email: str, first: str = "", optin: str = "2024-03-01 09:00:00",
                  confirm: str = "2024-03-01 09:05:00") -> str:
    return (f'"{email}",{first},,2,{optin},198.51.100.7,{confirm},198.51.100.7,,,,,,,,'
            f"2024-03-02 10:00:00,12345,abc{len(email)},,")


FORMULA = '=HYPERLINK("http://evil.example/","x")'
# A Mailchimp "subscribed members" export: three good rows, and two that must be refused.
SUBSCRIBED_CSV = "\r\n".join([
    HEADER,
    mailchimp_row("ann@example.org", "Ann"),                 # line 2
    mailchimp_row("bob@example.org", "Bob"),                 # line 3
    mailchimp_row(FORMULA.replace('"', '""')),               # line 4: not an address
    mailchimp_row("ann@Example.ORG", "Ann again"),           # line 5: ann once more
    mailchimp_row("carol@example.org", "Carol"),             # line 6
]).encode() + b"\r\n"
FILE_NAME = "subscribed_members_export_4f2a.csv"
GOOD = {"ann@example.org", "bob@example.org", "carol@example.org"}


@pytest.fixture
def admins(app):
    with app.app_context():
        accounts.create_admin(db.session, "editor@example.org", PASSWORD, "admin")
        accounts.create_admin(db.session, "viewer@example.org", PASSWORD, "viewer")
        db.session.commit()
        db.session.remove()
    # The tests run the queued imports themselves (run_due), as a worker does; one test uses the thread.
    app.config["NEWSLETTER_IMPORTS_IN_PROCESS"] = False


@pytest.fixture
def editor(client, admins):
    assert log_in(client, "editor@example.org", PASSWORD).status_code == 303
    return client


def upload(client, content: bytes, name: str = FILE_NAME, **fields):
    page = client.get("/admin/imports")
    form = {"csrf_token": csrf_token(page.get_data(as_text=True)), "newsletter": "daily-briefing",
            "format": "auto", "unconfirmed": "ask", "file": (io.BytesIO(content), name), **fields}
    return client.post("/admin/imports", data=form, content_type="multipart/form-data")


def uploaded_run(client, content: bytes = SUBSCRIBED_CSV) -> str:
    """The page of a new upload (its path)."""
    answer = upload(client, content)
    assert answer.status_code == 303, answer.get_data(as_text=True)
    return answer.headers["Location"]


def start(client, page: str, action: str, unconfirmed: str = "ask"):
    token = csrf_token(client.get(page).get_data(as_text=True))
    return client.post(page, data={"csrf_token": token, "action": action, "unconfirmed": unconfirmed})


def run_queued(app) -> int:
    """What a worker does: run every queued import to its end."""
    with app.app_context():
        try:
            return import_runner.run_due(db.session, app.config)
        finally:
            db.session.remove()


def readers(app) -> set[str]:
    return {email for (email,) in query(app, "SELECT email FROM readers")}


def test_a_viewer_meets_403_on_every_import_page_and_sees_no_link(app, client, admins):
    assert log_in(client, "editor@example.org", PASSWORD).status_code == 303
    page = uploaded_run(client)
    assert 'href="/admin/imports"' in client.get("/admin/").get_data(as_text=True)
    client.post("/admin/logout", data=hidden_fields(client.get("/admin/").get_data(as_text=True)))

    assert log_in(client, "viewer@example.org", PASSWORD).status_code == 303
    dashboard = client.get("/admin/").get_data(as_text=True)
    assert "/admin/imports" not in dashboard and "Imports" not in dashboard
    token = csrf_token(dashboard)
    assert client.get("/admin/imports").status_code == 403
    assert client.get(page).status_code == 403
    assert client.get(f"{page}/refusals.csv").status_code == 403
    refused = client.post("/admin/imports", data={
        "csrf_token": token, "newsletter": "daily-briefing", "format": "auto", "unconfirmed": "ask",
        "file": (io.BytesIO(SUBSCRIBED_CSV), FILE_NAME)}, content_type="multipart/form-data")
    assert refused.status_code == 403
    assert client.post(page, data={"csrf_token": token, "action": "import", "unconfirmed": "ask"}).status_code == 403
    assert [row[0] for row in query(app, "SELECT status FROM imports")] == ["uploaded"]
    assert run_queued(app) == 0 and readers(app) == set()


def test_upload_dry_run_import_and_the_record(app, editor):
    page = uploaded_run(editor)
    shown = editor.get(page)
    assert shown.status_code == 200
    text = html.unescape(shown.get_data(as_text=True))
    assert "Format</dt><dd>Mailchimp export" in text and FILE_NAME in text
    # The mapping (their column, our field), the columns left aside, the first rows.
    assert "Email Address" in text and "LEID" in text and "not used" in text
    for email in ("ann@example.org", "bob@example.org", "carol@example.org", FORMULA):
        assert email in text
    assert 'http-equiv="refresh"' not in text
    [(sha, size)] = query(app, "SELECT file_sha256, file_size FROM imports")
    assert sha == hashlib.sha256(SUBSCRIBED_CSV).hexdigest() and size == len(SUBSCRIBED_CSV)

    # The dry run: queued (the page follows it), then its summary; nothing written.
    assert start(editor, page, "dry-run").status_code == 303
    waiting = editor.get(page).get_data(as_text=True)
    assert 'http-equiv="refresh"' in waiting and 'aria-live="polite"' in waiting and "Waiting to start" in waiting
    assert run_queued(app) == 1
    summary = html.unescape(editor.get(page).get_data(as_text=True))
    assert "The dry run is finished" in summary and "nothing was changed" in summary
    [(counts,)] = query(app, "SELECT counts FROM imports")
    counts = counts if isinstance(counts, dict) else json.loads(counts)
    assert counts["new"] == 3 and sum(counts["refused"].values()) == 2
    for reason in counts["refused"]:
        assert imports.REFUSAL_REASONS[reason] in summary
    assert readers(app) == set()
    assert query(app, "SELECT count(*) FROM subscriptions")[0][0] == 0

    # The import itself, on the same record.
    assert start(editor, page, "import").status_code == 303
    assert "Waiting to start" in editor.get(page).get_data(as_text=True)
    assert run_queued(app) == 1
    done = html.unescape(editor.get(page).get_data(as_text=True))
    assert "Imported (" in done and 'http-equiv="refresh"' not in done
    assert readers(app) == GOOD
    subscribed = query(app, "SELECT r.email, n.slug FROM subscriptions s JOIN readers r ON r.id = s.reader_id "
                            "JOIN newsletters n ON n.id = s.newsletter_id")
    assert {(email, slug) for email, slug in subscribed} == {(email, "daily-briefing") for email in GOOD}
    assert [row[0] for row in query(app, "SELECT status FROM imports")] == ["finished"]

    # The refused rows, with their lines; a formula is never a live cell.
    download = editor.get(f"{page}/refusals.csv")
    assert download.status_code == 200 and download.headers["Content-Disposition"].startswith("attachment")
    assert download.mimetype == "text/csv"
    rows = list(csv.reader(io.StringIO(download.get_data(as_text=True).lstrip("\ufeff"))))
    lines = {cell for row in rows[1:] for cell in row if cell in {"4", "5"}}
    assert lines == {"4", "5"}, rows
    for row in rows:
        assert not any(cell[:1] in ("=", "+", "-", "@") for cell in row), row

    # Leaving and coming back: the same summary, from the record. The list shows the run.
    assert html.unescape(editor.get(page).get_data(as_text=True)) == done
    listing = html.unescape(editor.get("/admin/imports").get_data(as_text=True))
    assert FILE_NAME in listing and "editor@example.org" in listing and sha[:12] in listing
    assert "daily-briefing" in listing and "finished" in listing

    # A finished import is not run again.
    again = start(editor, page, "import")
    assert again.status_code == 303 and run_queued(app) == 0


BAD_FILES = [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)), "photo.png"),
    (b"name,city\r\nAnn,Kyiv\r\n", "people.csv"),
    (b"", "empty.csv"),
    ("Email Address\r\nann@example.org\r\n".encode("utf-16"), "utf16.csv"),
]


@pytest.mark.parametrize("content, name", BAD_FILES)
def test_a_file_that_is_no_list_is_refused_on_the_form(app, editor, content, name):
    answer = upload(editor, content, name)
    assert answer.status_code in (400, 422)
    page = answer.get_data(as_text=True)
    assert "The file was not taken" in page and 'aria-invalid="true"' in page
    assert query(app, "SELECT count(*) FROM imports")[0][0] == 0


def test_form_fields_are_checked(app, editor):
    no_file = editor.post("/admin/imports", data={
        "csrf_token": csrf_token(editor.get("/admin/imports").get_data(as_text=True)),
        "newsletter": "daily-briefing", "format": "auto", "unconfirmed": "ask"}, content_type="multipart/form-data")
    assert no_file.status_code == 422 and "Choose the file to import." in no_file.get_data(as_text=True)
    for fields in ({"newsletter": "no-such-letter"}, {"format": "excel"}, {"unconfirmed": "maybe"}):
        answer = upload(editor, SUBSCRIBED_CSV, **fields)
        assert answer.status_code == 422, fields
    assert query(app, "SELECT count(*) FROM imports")[0][0] == 0


def test_a_missing_csrf_token_is_refused(app, editor):
    answer = editor.post("/admin/imports", data={"newsletter": "daily-briefing", "format": "auto",
                                                  "unconfirmed": "ask", "file": (io.BytesIO(SUBSCRIBED_CSV), FILE_NAME)},
                         content_type="multipart/form-data")
    assert answer.status_code in (400, 422)
    assert query(app, "SELECT count(*) FROM imports")[0][0] == 0
    page = uploaded_run(editor)
    assert editor.post(page, data={"action": "import", "unconfirmed": "ask"}).status_code in (400, 422)
    assert [row[0] for row in query(app, "SELECT status FROM imports")] == ["uploaded"]


def test_an_upload_over_its_limit_gets_a_413_page_and_others_keep_the_small_limit(app, editor):
    app.config["NEWSLETTER_IMPORT_MAX_BYTES"] = 200 * 1024
    # Larger than the public forms' 64 KB, within the import's limit: taken.
    big = SUBSCRIBED_CSV + b"".join(mailchimp_row(f"reader{i}@example.org").encode() + b"\r\n" for i in range(600))
    assert 64 * 1024 < len(big) < 200 * 1024
    assert upload(editor, big).status_code == 303
    # Over it: a page that says so.
    huge = big + b"x" * (200 * 1024)
    answer = upload(editor, huge)
    assert answer.status_code == 413
    text = answer.get_data(as_text=True)
    assert "too large to upload: at most 200 KB" in text and "newsletter import" in text
    assert query(app, "SELECT count(*) FROM imports")[0][0] == 1
    editor.environ_base["HTTP_ACCEPT_LANGUAGE"] = "uk"
    in_ukrainian = upload(editor, huge)
    assert in_ukrainian.status_code == 413
    assert "Файл завеликий для завантаження: щонайбільше 200 КБ" in in_ukrainian.get_data(as_text=True)

    # A stranger (not logged in) can't send more than the usual 64 KB there.
    stranger = app.test_client()
    assert stranger.post("/admin/imports", data={"file": (io.BytesIO(big), FILE_NAME)},
                         content_type="multipart/form-data").status_code == 413


def test_a_worker_takes_up_a_run_whose_process_died(app, editor):
    page = uploaded_run(editor)
    assert start(editor, page, "import").status_code == 303
    run_id = int(page.rsplit("/", 1)[1])
    # The process that ran it died mid-way: "running", its heartbeat older than the stale limit.
    with app.app_context():
        from newsletter.models import ImportRun

        run = db.session.get(ImportRun, run_id)
        run.status, run.heartbeat_at, run.started_at = "running", utcnow() - timedelta(seconds=30), utcnow()
        db.session.commit()
        db.session.remove()
    app.config["NEWSLETTER_IMPORT_STALE_AFTER"] = 60
    assert run_queued(app) == 0  # its heartbeat is recent: another process may still be on it
    assert [row[0] for row in query(app, "SELECT status FROM imports")] == ["running"]
    assert 'http-equiv="refresh"' in editor.get(page).get_data(as_text=True)

    app.config["NEWSLETTER_IMPORT_STALE_AFTER"] = 10
    assert run_queued(app) == 1
    assert [row[0] for row in query(app, "SELECT status FROM imports")] == ["finished"]
    assert readers(app) == GOOD
    assert "Imported (" in editor.get(page).get_data(as_text=True)


def test_the_web_process_runs_an_import_in_the_background(app, admins, live_server):
    app.config["NEWSLETTER_IMPORTS_IN_PROCESS"] = True
    browser = requests.Session()
    login = browser.get(f"{live_server}/admin/login")
    assert browser.post(f"{live_server}/admin/login", data={
        **hidden_fields(login.text), "email": "editor@example.org", "password": PASSWORD}).ok
    form = browser.get(f"{live_server}/admin/imports")
    uploaded = browser.post(f"{live_server}/admin/imports", data={
        "csrf_token": csrf_token(form.text), "newsletter": "daily-briefing", "format": "auto", "unconfirmed": "ask"},
        files={"file": (FILE_NAME, SUBSCRIBED_CSV, "text/csv")})
    assert uploaded.status_code == 200 and uploaded.url != f"{live_server}/admin/imports"
    page = uploaded.url
    answer = browser.post(page, data={"csrf_token": csrf_token(uploaded.text), "action": "import", "unconfirmed": "ask"})
    assert answer.status_code == 200
    # Follow the page as a browser does, until the import is over (the page reloads itself meanwhile).
    deadline = time.monotonic() + 60
    while 'http-equiv="refresh"' in answer.text and time.monotonic() < deadline:
        time.sleep(0.2)
        answer = browser.get(page)
    assert "Imported (" in answer.text, answer.text
    assert readers(app) == GOOD
    app.extensions["newsletter.imports"].join(10)


def test_worker_once_runs_a_queued_import(app, editor, runner):
    page = uploaded_run(editor)
    assert start(editor, page, "import").status_code == 303
    result = runner.invoke(args=["worker", "--once"])
    assert result.exit_code == 0, result.output
    assert "ran 1 import(s)" in result.output
    assert readers(app) == GOOD
    assert "Imported (" in editor.get(page).get_data(as_text=True)


def test_the_policy_for_unconfirmed_rows_can_change_between_the_dry_run_and_the_import(app, editor):
    unproven = SUBSCRIBED_CSV + mailchimp_row("dan@example.org", "Dan", optin="", confirm="").encode() + b"\r\n"
    page = uploaded_run(editor, unproven)
    assert start(editor, page, "dry-run", unconfirmed="ask").status_code == 303
    run_queued(app)
    [(counts,)] = query(app, "SELECT counts FROM imports")
    counts = counts if isinstance(counts, dict) else json.loads(counts)
    assert counts["confirmations_queued"] == 1 and counts["new"] == 4

    assert start(editor, page, "import", unconfirmed="skip").status_code == 303
    run_queued(app)
    done = html.unescape(editor.get(page).get_data(as_text=True))
    assert imports.REFUSAL_REASONS["unconfirmed_skipped"] in done
    assert readers(app) == GOOD
    assert query(app, "SELECT count(*) FROM outbox_messages")[0][0] == 0


@pytest.mark.parametrize("name, shown", [
    ("C:/Users/ann/Desktop/list.csv", "list.csv"),
    ("../../../etc/passwd.csv", "passwd.csv"),
    ("список читачів.csv", "список читачів.csv"),
])
def test_the_browser_s_file_name_is_only_shown_never_a_path(app, editor, name, shown):
    page = upload(editor, SUBSCRIBED_CSV, name).headers["Location"]
    assert [row[0] for row in query(app, "SELECT file_name FROM imports")] == [shown]
    [(stored,)] = query(app, "SELECT stored_path FROM imports")
    assert stored.startswith(str(app.config["NEWSLETTER_IMPORT_DIR"])) or "imports" in stored
    assert shown in html.unescape(editor.get(page).get_data(as_text=True))


def test_unstorable_file_names_and_unknown_runs_are_clear_errors(app, editor):
    assert upload(editor, SUBSCRIBED_CSV, "list\x00.csv").status_code == 422
    # A name that is not UTF-8 (what a lone surrogate is on the wire), sent as a raw multipart body.
    token = csrf_token(editor.get("/admin/imports").get_data(as_text=True)).encode()
    parts = [(b'name="csrf_token"', token), (b'name="newsletter"', b"daily-briefing"), (b'name="format"', b"auto"),
             (b'name="unconfirmed"', b"ask"), (b'name="file"; filename="list\xed\xa0\x80\xff.csv"', SUBSCRIBED_CSV)]
    body = b"".join(b"--XyZ\r\nContent-Disposition: form-data; " + header + b"\r\n\r\n" + value + b"\r\n"
                    for header, value in parts) + b"--XyZ--\r\n"
    answer = editor.post("/admin/imports", data=body, content_type="multipart/form-data; boundary=XyZ")
    assert answer.status_code == 400
    assert query(app, "SELECT count(*) FROM imports")[0][0] == 0
    for path in ("/admin/imports/999", "/admin/imports/99999999999999999999", "/admin/imports/999/refusals.csv"):
        assert editor.get(path).status_code == 404


def test_a_failed_run_shows_why_and_can_t_be_started_again(app, editor):
    page = uploaded_run(editor)
    assert start(editor, page, "import").status_code == 303
    # The kept file vanished before a process took the run (a disk cleaned by hand, say).
    [(stored,)] = query(app, "SELECT stored_path FROM imports")
    os.unlink(stored)
    run_queued(app)
    shown = html.unescape(editor.get(page).get_data(as_text=True))
    assert [row[0] for row in query(app, "SELECT status FROM imports")] == ["failed"]
    assert "The import failed" in shown and "no longer there" in shown
    assert 'value="import"' not in shown and 'http-equiv="refresh"' not in shown
    assert "The uploaded file is no longer kept" in shown
    assert readers(app) == set()


def test_an_unknown_button_or_a_full_disk_is_said_plainly(app, editor, monkeypatch):
    page = uploaded_run(editor)
    token = csrf_token(editor.get(page).get_data(as_text=True))
    odd = editor.post(page, data={"csrf_token": token, "action": "delete-everything", "unconfirmed": "ask"})
    assert odd.status_code == 422 and "Press Dry run or Import." in odd.get_data(as_text=True)
    assert [row[0] for row in query(app, "SELECT status FROM imports")] == ["uploaded"]

    def disk_full(self, destination, buffer_size=16384):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("werkzeug.datastructures.FileStorage.save", disk_full)
    answer = upload(editor, SUBSCRIBED_CSV)
    assert answer.status_code == 503
    assert "could not store the file" in answer.get_data(as_text=True)
    assert query(app, "SELECT count(*) FROM imports")[0][0] == 1
    leftovers = [p.name for p in Path(app.config["NEWSLETTER_IMPORT_DIR"]).glob("upload-*.part")]
    assert leftovers == []


def _cut_off(app, run_id: int, seconds_ago: float) -> None:
    """The run as a web process restarted `seconds_ago` left it: running, its heartbeat that old."""
    from newsletter.models import ImportRun

    with app.app_context():
        run = db.session.get(ImportRun, run_id)
        run.status, run.started_at = "running", utcnow()
        run.heartbeat_at = utcnow() - timedelta(seconds=seconds_ago)
        db.session.commit()
        db.session.remove()


def test_a_run_cut_off_by_a_restart_is_taken_up_once_stale_without_anyone_opening_its_page(app, editor,
                                                                                         monkeypatch):
    """`serve` looks as it starts, when the cut-off run's heartbeat is still fresh: the runner looks again."""
    page = uploaded_run(editor)
    assert start(editor, page, "import").status_code == 303
    run_id = int(page.rsplit("/", 1)[1])
    _cut_off(app, run_id, 1)
    app.config["NEWSLETTER_IMPORT_STALE_AFTER"] = 120
    # And the database is away at the first look.
    claim_next, looks = imports.claim_next, []

    def flaky_claim(session, **options):
        looks.append(1)
        if len(looks) == 1:
            import sqlalchemy.exc
            raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("server closed the connection"))
        return claim_next(session, **options)

    monkeypatch.setattr(imports, "claim_next", flaky_claim)
    pauses = []

    def wait(seconds: float) -> bool:  # time passes: the heartbeat grows older by the pause
        pauses.append(seconds)
        _cut_off(app, run_id, 1 + sum(pauses))
        return False

    import_runner.look_until_done(app, wait)
    assert pauses == [1.0, 60.0, 60.0]  # the outage's back-off, then half of STALE_AFTER until it is stale
    assert [row[0] for row in query(app, "SELECT status FROM imports")] == ["finished"]
    assert readers(app) == GOOD


def test_the_runner_stops_looking_when_told_or_when_nothing_is_left(app, editor):
    pauses = []
    import_runner.look_until_done(app, lambda seconds: pauses.append(seconds) or True)
    assert pauses == []  # nothing queued or running: it returns at once
    page = uploaded_run(editor)
    assert start(editor, page, "import").status_code == 303
    _cut_off(app, int(page.rsplit("/", 1)[1]), 0)
    import_runner.look_until_done(app, lambda seconds: pauses.append(seconds) or True)
    assert pauses == [60.0]  # STALE_AFTER's default, 2 minutes, halved; then told to stop
    assert [row[0] for row in query(app, "SELECT status FROM imports")] == ["running"]


def test_the_imports_list_takes_up_a_queued_run_in_the_web_process(app, editor):
    page = uploaded_run(editor)
    assert start(editor, page, "import").status_code == 303  # queued; the web process was not running them
    app.config["NEWSLETTER_IMPORTS_IN_PROCESS"] = True
    assert editor.get("/admin/imports").status_code == 200
    app.extensions["newsletter.imports"].join(30)
    assert [row[0] for row in query(app, "SELECT status FROM imports")] == ["finished"]
    assert readers(app) == GOOD


def _text(page: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", "", page)).split())


def test_the_run_page_says_when_an_upload_not_imported_is_deleted(app, editor, runner):
    from newsletter.models import ImportRun

    app.config["NEWSLETTER_IMPORT_KEEP_UPLOADS"] = 7 * 24 * 3600
    page = uploaded_run(editor)
    run_id = int(page.rsplit("/", 1)[1])
    with app.app_context():
        run = db.session.get(ImportRun, run_id)
        created, stored = run.created_at, Path(run.stored_path)
        db.session.remove()
    shown = _text(editor.get(page).get_data(as_text=True))
    assert f"The uploaded file is deleted on {(created + timedelta(days=7)):%Y-%m-%d %H:%M} UTC if it is not " \
           "imported by then." in shown
    # The imports folder is this service's alone.
    assert stored.is_file() and stored.parent.stat().st_mode & 0o777 == 0o700
    assert stored.stat().st_mode & 0o777 == 0o600
    # Eight days later: `purge-pending` deletes the file; the run keeps its record and can't be started.
    with app.app_context():
        db.session.get(ImportRun, run_id).created_at = created - timedelta(days=8)
        db.session.commit()
        db.session.remove()
    result = runner.invoke(args=["purge-pending"])
    assert result.exit_code == 0, result.output
    assert "Deleted 1 uploaded import file never imported." in result.output
    assert not stored.exists()
    assert query(app, "SELECT status, stored_path FROM imports") == [("uploaded", None)]
    shown = _text(editor.get(page).get_data(as_text=True))
    assert "The uploaded file is deleted on" not in shown and "The uploaded file is no longer kept" in shown
    answer = start(editor, page, "import")
    assert answer.status_code == 422
    assert "is no longer kept (uploads not imported are deleted after a while): upload it again." in \
        html.unescape(answer.get_data(as_text=True))


def _outcome_table(page: str) -> dict[str, int]:
    """The "Rows by outcome" table: each row's header and its number."""
    table = page[page.index("Rows by outcome"):]
    table = table[:table.index("</table>")]
    return {_text(header): int(_text(number).replace(",", ""))
            for header, number in re.findall(r'<th scope="row"[^>]*>(.*?)</th><td class="num[^"]*">(.*?)</td>', table)}


def test_the_rows_by_outcome_add_up_to_the_rows_read(app, editor):
    """Asked to confirm is a part of the new rows, shown as such, not an outcome counted a second time."""
    content = SUBSCRIBED_CSV + (mailchimp_row("dan@example.org", "Dan", optin="", confirm="") + "\r\n").encode()
    page = uploaded_run(editor, content)
    assert start(editor, page, "import").status_code == 303
    assert run_queued(app) == 1
    shown = _outcome_table(editor.get(page).get_data(as_text=True))
    parts = {header: number for header, number in shown.items() if header.startswith("of which")}
    read = {header: number for header, number in shown.items() if header.startswith("Rows read")}
    outcomes = {header: number for header, number in shown.items() if header not in parts and header not in read}
    assert list(parts.values()) == [1] and list(read.values()) == [6]
    assert sum(outcomes.values()) == 6, shown


def test_the_preview_flags_an_invalid_address_as_the_import_will(app, editor):
    page = uploaded_run(editor)
    text = html.unescape(editor.get(page).get_data(as_text=True))
    rows = re.findall(r'<tr><td>[^<]*</td><td class="num">(\d+)</td>(.*?)</tr>', text, re.DOTALL)
    problem_of = {line: re.findall(r"<td>([^<]*)</td>", cells)[-1] for line, cells in rows}
    assert set(problem_of) == {"2", "3", "4", "5", "6"}
    assert problem_of["4"], "the formula in line 4 is not an address: its Problem cell says so"
    assert not any(problem_of[line] for line in ("2", "3", "5", "6")), problem_of
    with pytest.raises(addresses.InvalidAddress) as refused:
        imports.normalize_address(FORMULA)
    assert problem_of["4"] == str(refused.value)  # the engine's words


def test_the_refused_rows_download_is_in_file_order(app, editor):
    """Rows refused by the database (suppressed) and by their own content (invalid) come back by line."""
    from newsletter import suppressions

    with app.app_context():
        suppressions.suppress(db.session, app.config, "ann@example.org", reason="complaint", source="admin")
        db.session.commit()
        db.session.remove()
    page = uploaded_run(editor)
    assert start(editor, page, "import").status_code == 303
    assert run_queued(app) == 1
    rows = list(csv.reader(io.StringIO(editor.get(f"{page}/refusals.csv").get_data(as_text=True).lstrip("\ufeff"))))
    assert [(row[1], row[3]) for row in rows[1:]] == [("2", "suppressed"), ("4", "invalid_address"),
                                                      ("5", "duplicate_in_file")]
