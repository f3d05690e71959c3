"""Readers' privacy rights: the data export, erasure (from the admin and the API), and purging stale signups.

After erasure the address is in no column of any table and in no export, its links show the "this
link doesn't work" page, and a new signup with it starts afresh. The export holds everything the
database has about the reader. purge-pending removes exactly the never-confirmed, stale readers.
"""

from __future__ import annotations

import html
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import sqlalchemy as sa

from newsletter import accounts, api_tokens, config, privacy
from newsletter.extensions import db
from newsletter.models import ConsentEvent, OutboxMessage, Reader, Subscription, utcnow

from .conftest import hidden_fields, link_in, query
from .test_admin_auth import PASSWORD, log_in

ADA = "ada.lovelace.1815@example.org"
ADA_NAME = "Ada Lovelace"
BOB = "bob@example.org"
PAGE = "https://example-news.org/2026/11/analytical-engines"
BROWSER = "Mozilla/5.0 (X11; Linux x86_64) AdaBrowser/1.0"
UK = {"Accept-Language": "uk-UA,uk;q=0.9"}


def path_of(url: str) -> str:
    return urlsplit(url).path


class Mailbox:
    """The emails the SMTP server received so far, sent from the outbox on demand."""

    def __init__(self, drain, smtp) -> None:
        self.drain, self.smtp = drain, smtp

    def to(self, address: str, subject_part: str):
        self.drain()
        found = [m for m in self.smtp.inbox.messages if address in str(m["To"]) and subject_part in str(m["Subject"])]
        assert found, f"no email to {address} about {subject_part!r}"
        return found[-1]


@pytest.fixture
def mailbox(drain, smtp) -> Mailbox:
    return Mailbox(drain, smtp)


def sign_up_and_confirm(client, mailbox: Mailbox, email: str, slugs=("daily-briefing",), name: str | None = None,
                        *, page_url: str = PAGE, browser: str = BROWSER) -> dict[str, str]:
    """A reader who signed up from an article and confirmed from the email; the paths of their links."""
    body = {"email": email, "newsletters": list(slugs), "page_url": page_url, "form_id": "article-box",
            **({"name": name} if name else {})}
    assert client.post("/api/v1/subscriptions", json=body, headers={"User-Agent": browser}).status_code == 202
    confirm = path_of(link_in(mailbox.to(email, "Confirm"), "/confirm/"))
    page = client.get(confirm)
    assert client.post(confirm, data=hidden_fields(page.get_data(as_text=True)),
                       headers={"User-Agent": browser}).status_code == 200
    welcome = mailbox.to(email, "Welcome")
    return {"confirm": confirm, "unsubscribe": path_of(link_in(welcome, "/unsubscribe/")),
            "preferences": path_of(link_in(welcome, "/preferences/"))}


@pytest.fixture
def admins(app):
    with app.app_context():
        accounts.create_admin(db.session, "editor@example.org", PASSWORD, "admin")
        accounts.create_admin(db.session, "viewer@example.org", PASSWORD, "viewer")
        db.session.commit()
        db.session.remove()


def reader_id_of(app, email: str) -> int:
    [(reader_id,)] = query(app, "SELECT id FROM readers WHERE email = :email", email=email)
    return reader_id


def cells_containing(app, needle: str) -> list[str]:
    """`table.column` of every text cell (strings, texts, JSON) in the database that contains `needle`, any case."""
    found = []
    with app.app_context():
        try:
            metadata = sa.MetaData()
            metadata.reflect(bind=db.engine)
            for table in metadata.sorted_tables:
                for column in table.columns:
                    if not isinstance(column.type, (sa.String, sa.Text, sa.JSON)):
                        continue
                    text = sa.cast(column, sa.Text)
                    hits = db.session.execute(
                        sa.select(sa.func.count()).select_from(table).where(
                            sa.func.lower(text).contains(needle.lower(), autoescape=True))
                    ).scalar()
                    if hits:
                        found.append(f"{table.name}.{column.name}")
        finally:
            db.session.remove()
    return found


# --- erasure ------------------------------------------------------------------------------------------------

def test_after_erasure_the_address_is_in_no_table_and_no_export(app, client, mailbox, smtp, admins):
    sign_up_and_confirm(client, mailbox, ADA, ("daily-briefing", "weekly-explainer"), name=ADA_NAME)
    sign_up_and_confirm(client, mailbox, BOB, ("daily-briefing",), name="Bob", page_url="https://example-news.org/bob",
                        browser="BobBrowser/2.0")
    # One email refused with the address in the server's answer, one still waiting to be sent.
    app.config["NEWSLETTER_CONFIRM_RESEND_INTERVAL"] = 0
    smtp.inbox.refuse_with = f"550 5.1.1 <{ADA}>: mailbox unavailable"
    client.post("/api/v1/subscriptions", json={"email": ADA, "newsletters": ["no-welcome"]})
    mailbox.drain()
    smtp.inbox.refuse_with = None
    client.post("/api/v1/subscriptions", json={"email": ADA, "newsletters": ["no-welcome"]},
                headers={"User-Agent": BROWSER})
    ada = reader_id_of(app, ADA)
    # The scan finds the address where it is stored (the server's refusal quotes it in last_error).
    # (Not in the outbox's rows themselves: an email is rendered, and addressed, when it is sent.)
    assert set(cells_containing(app, ADA)) >= {"readers.email", "outbox_messages.last_error"}
    assert "outbox_messages.to_address" not in cells_containing(app, ADA)
    assert "readers.name" in cells_containing(app, ADA_NAME)
    assert query(app, "SELECT status FROM outbox_messages WHERE reader_id = :id ORDER BY id", id=ada) == [
        ("sent",), ("sent",), ("sent",), ("failed",), ("pending",)]
    events_before = query(app, "SELECT id, action, newsletter_id, occurred_at, source, form_id, wording "
                               "FROM consent_events WHERE reader_id = :id ORDER BY id", id=ada)
    bob_before = {table: query(app, f"SELECT * FROM {table} WHERE {column} = :id ORDER BY id",
                               id=reader_id_of(app, BOB))
                  for table, column in (("readers", "id"), ("subscriptions", "reader_id"),
                                        ("consent_events", "reader_id"), ("outbox_messages", "reader_id"))}

    log_in(client, "editor@example.org", PASSWORD)
    fields = hidden_fields(client.get("/admin/").get_data(as_text=True))
    erased = client.post(f"/admin/readers/{ada}/erase", data={**fields, "confirm": "yes"})
    assert erased.status_code == 303 and erased.headers["Location"].endswith(f"/admin/readers/{ada}")

    for needle in (ADA, "lovelace", ADA_NAME, BROWSER, PAGE):
        assert cells_containing(app, needle) == [], needle
    # The row stays, anonymized; history keeps its actions and times for the counts.
    assert query(app, "SELECT email, name FROM readers WHERE id = :id", id=ada) == [(f"erased-{ada}@invalid", None)]
    events_after = query(app, "SELECT id, action, newsletter_id, occurred_at, source, form_id, wording "
                              "FROM consent_events WHERE reader_id = :id ORDER BY id", id=ada)
    assert events_after[:len(events_before)] == events_before
    assert [row[1] for row in events_after[len(events_before):]] == ["unsubscribed"] * 3 + ["erased"]
    assert query(app, "SELECT count(*) FROM consent_events WHERE reader_id = :id AND (ip_address IS NOT NULL "
                      "OR user_agent IS NOT NULL OR page_url IS NOT NULL)", id=ada) == [(0,)]
    assert query(app, "SELECT DISTINCT status FROM subscriptions WHERE reader_id = :id", id=ada) == [("unsubscribed",)]
    assert query(app, "SELECT status, last_error, to_address, to_name, body_text, body_html FROM outbox_messages "
                      "WHERE reader_id = :id ORDER BY id", id=ada)[-2:] == [
        ("failed", "erased", None, None, None, None)] * 2
    # Nobody else was touched.
    assert bob_before == {table: query(app, f"SELECT * FROM {table} WHERE {column} = :id ORDER BY id",
                                       id=reader_id_of(app, BOB))
                          for table, column in (("readers", "id"), ("subscriptions", "reader_id"),
                                                ("consent_events", "reader_id"), ("outbox_messages", "reader_id"))}

    # No export has it: the list download, the API's subscribers, the admin's reader export.
    token = _token(app)
    for path in ("/api/v1/newsletters/daily-briefing/subscribers.csv",
                 "/api/v1/newsletters/daily-briefing/subscribers.ndjson",
                 "/api/v1/newsletters/daily-briefing/subscribers"):
        answer = client.get(path, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 200 and BOB in answer.get_data(as_text=True)
        assert "lovelace" not in answer.get_data(as_text=True).lower() and f"erased-{ada}" not in answer.get_data(
            as_text=True)
    exported = client.get(f"/admin/readers/{ada}/export.json").get_data(as_text=True)
    assert "lovelace" not in exported.lower() and f"erased-{ada}@invalid" in exported
    # The dashboard's counts are anonymous and keep the reader: three subscriptions, now unsubscribed.
    counts = {n["slug"]: n["counts"] for n in client.get(
        "/api/v1/newsletters", headers={"Authorization": f"Bearer {token}"}).get_json()["newsletters"]}
    assert counts["daily-briefing"] == {"pending": 0, "confirmed": 1, "unsubscribed": 1}
    assert counts["no-welcome"] == {"pending": 0, "confirmed": 0, "unsubscribed": 1}


DSN = b"""From: MAILER-DAEMON@mx.example.net
To: bounces@news.example
Subject: Delivery Status Notification (Failure)
Message-ID: <dsn-1@mx.example.net>
MIME-Version: 1.0
Content-Type: multipart/report; report-type=delivery-status; boundary="b1"

--b1
Content-Type: text/plain

Delivery failed permanently.

--b1
Content-Type: message/delivery-status

Reporting-MTA: dns; mx.example.net

Final-Recipient: rfc822; Erase.Me@example.org
Action: failed
Status: 5.1.1
Diagnostic-Code: smtp; 550 5.1.1 user unknown

--b1
Content-Type: text/rfc822-headers

Message-ID: %s
To: Erase.Me@example.org

--b1--
"""


def _erase(app, email: str) -> None:
    with app.app_context():
        privacy.erase_reader(db.session, reader_id_of(app, email), source=privacy.Source(channel="admin"),
                             config=app.config)
        db.session.commit()
        db.session.remove()


def test_erasure_clears_the_address_from_bounce_ids_refused_import_rows_and_admins_notes(app, client, runner, drain,
                                                                                       tmp_path: Path):
    from newsletter import subscriptions, suppression_list

    address = "Erase.Me@example.org"
    assert client.post("/api/v1/subscriptions", json={"email": address,
                                                      "newsletters": ["daily-briefing"]}).status_code == 202
    drain()  # the Message-ID is given when the email is sent
    # A bounce of our confirmation, piped from the bounce mailbox (its event id names the message and the recipient)...
    [confirmation_id] = [row[0] for row in query(app, "SELECT message_id FROM outbox_messages")]
    bounced = runner.invoke(args=["bounce-mail"], input=DSN % confirmation_id.encode())
    assert bounced.exit_code == 0 and "hard bounce" in bounced.output, bounced.output
    # ...an import that refused the address, in two spellings, beside an unrelated refused row...
    listing = tmp_path / "list.csv"
    listing.write_text("email\nerase.me@example.org\nERASE.ME@example.org\nnot-an-address\n")
    assert runner.invoke(args=["import", str(listing), "--newsletter", "daily-briefing", "--format", "csv"]
                         ).exit_code == 0
    # ...and admins' notes quoting it: a lifted bounce, and a block lifted (which unblocks the reader).
    reader = reader_id_of(app, address)
    with app.app_context():
        bounce = suppression_list.for_address(db.session, app.config, address)
        suppression_list.lift(db.session, app.config, bounce.id, "ERASE.ME@example.org can receive mail again",
                              admin_id=None)
        subscriptions.block(db.session, reader, source=subscriptions.Source(channel="admin"),
                            config=app.config)
        block = suppression_list.for_address(db.session, app.config, address)
        suppression_list.lift(db.session, app.config, block.id, f"{address} asked by phone", admin_id=None)
        db.session.commit()
        db.session.remove()
    assert {"delivery_events.provider_event_id", "import_refusals.email", "suppressions.lift_note",
            "consent_events.wording"} - set(cells_containing(app, address)) == {"delivery_events.provider_event_id"}

    _erase(app, address)

    assert cells_containing(app, address) == []
    # What is not the address stays: the refused rows' lines and reasons, the rest of each note.
    assert query(app, "SELECT line, email, reason FROM import_refusals ORDER BY line") == [
        (2, None, "suppressed"), (3, None, "suppressed"), (4, "not-an-address", "invalid_address")]
    assert query(app, "SELECT lift_note FROM suppressions WHERE lift_note IS NOT NULL ORDER BY id") == [
        ("[erased] can receive mail again",), ("[erased] asked by phone",)]
    assert query(app, "SELECT wording FROM consent_events WHERE action = 'unblocked'") == [
        ("[erased] asked by phone",)]


def test_a_bounce_or_complaint_after_erasure_keeps_no_address_and_the_erasure_entry_stays(app, client):
    from newsletter import provider_events, suppressions

    assert client.post("/api/v1/subscriptions", json={"email": "late.bounce@example.org",
                                                      "newsletters": ["daily-briefing"]}).status_code == 202
    _erase(app, "late.bounce@example.org")
    assert cells_containing(app, "late.bounce@example.org") == []
    # The sending platform mailed the last issue before its list was updated: a complaint arrives by webhook.
    with app.app_context():
        provider_events.record(db.session, app.config, "generic", [provider_events.ProviderEvent(
            address="late.bounce@example.org", kind="complaint", occurred_at=None,
            diagnostic="Feedback-ID: abuse report for late.bounce@example.org")])
        db.session.commit()
        db.session.remove()

    assert cells_containing(app, "late.bounce@example.org") == []
    assert query(app, "SELECT reason, email, detail FROM suppressions WHERE lifted_at IS NULL ORDER BY id") == [
        ("erased", None, None), ("complaint", None, None)]
    assert query(app, "SELECT kind, diagnostic FROM delivery_events") == [("complaint", None)]
    with app.app_context():
        assert suppressions.mail_stopped(db.session, app.config, "late.bounce@example.org").reason == "complaint"
        db.session.remove()


def _token(app) -> str:
    with app.app_context():
        _, secret = api_tokens.create_token(db.session, "privacy test", "admin")
        db.session.commit()
        db.session.remove()
    return secret


def test_erased_readers_links_no_longer_work(app, client, mailbox):
    links = sign_up_and_confirm(client, mailbox, ADA, ("daily-briefing",))
    bob = sign_up_and_confirm(client, mailbox, BOB, ("daily-briefing",))
    # A genuine CSRF token, so that only the link itself can be what is refused.
    fields = hidden_fields(client.get(bob["preferences"]).get_data(as_text=True))
    data_link = f"{links['preferences']}/data.json"
    assert client.get(links["preferences"]).status_code == 200
    assert client.get(data_link).status_code == 200
    assert client.get(links["unsubscribe"]).status_code == 200

    with app.app_context():
        privacy.erase_reader(db.session, reader_id_of(app, ADA), source=privacy.Source(channel="cli"),
                             config=app.config)
        db.session.commit()
        db.session.remove()

    for method, path, data in (
        ("GET", links["confirm"], None),
        ("POST", links["confirm"], fields),
        ("GET", links["unsubscribe"], None),
        ("POST", links["unsubscribe"], {"List-Unsubscribe": "One-Click"}),
        ("GET", links["preferences"], None),
        ("POST", links["preferences"], {**fields, "newsletters": ["1"]}),
        ("GET", data_link, None),
    ):
        response = client.open(path, method=method, data=data)
        assert response.status_code == 400, (method, path)
        assert "This link doesn't work" in html.unescape(response.get_data(as_text=True)), (method, path)
    # The reader was not subscribed again by any of them; another reader's links still work.
    assert query(app, "SELECT DISTINCT s.status FROM subscriptions s JOIN readers r ON r.id = s.reader_id "
                      "WHERE r.erased_at IS NOT NULL") == [("unsubscribed",)]
    assert client.get(bob["preferences"]).status_code == 200


def test_a_new_signup_after_erasure_makes_a_fresh_reader(app, client, mailbox, smtp):
    sign_up_and_confirm(client, mailbox, ADA, ("daily-briefing",), name=ADA_NAME)
    old = reader_id_of(app, ADA)
    with app.app_context():
        privacy.erase_reader(db.session, old, source=privacy.Source(channel="cli"), config=app.config)
        db.session.commit()
        db.session.remove()
    sent_before = len(smtp.inbox.messages)
    assert client.post("/api/v1/subscriptions", json={"email": ADA, "newsletters": ["daily-briefing"]}
                       ).status_code == 202
    new = reader_id_of(app, ADA)
    assert new != old
    assert query(app, "SELECT name, erased_at FROM readers WHERE id = :id", id=new) == [(None, None)]
    assert query(app, "SELECT status FROM subscriptions WHERE reader_id = :id", id=new) == [("pending",)]
    mailbox.drain()
    assert len(smtp.inbox.messages) == sent_before + 1  # a fresh confirmation email: nothing carried over


def test_erasing_from_the_api_and_twice_is_harmless(app, client, mailbox):
    sign_up_and_confirm(client, mailbox, ADA)
    ada = reader_id_of(app, ADA)
    token = _token(app)
    first = client.delete(f"/api/v1/readers/{ADA}", headers={"Authorization": f"Bearer {token}"})
    assert first.status_code == 200
    rows = {table: query(app, f"SELECT * FROM {table} ORDER BY id") for table in
            ("readers", "subscriptions", "consent_events", "outbox_messages")}
    again = client.delete(f"/api/v1/readers/{ada}", headers={"Authorization": f"Bearer {token}"})
    assert again.status_code == 200 and again.get_json() == first.get_json()
    assert rows == {table: query(app, f"SELECT * FROM {table} ORDER BY id") for table in rows}
    assert cells_containing(app, ADA) == []


def test_admin_erase_needs_an_admin_the_csrf_token_and_a_confirmation(app, client, mailbox, admins):
    sign_up_and_confirm(client, mailbox, ADA)
    ada = reader_id_of(app, ADA)
    log_in(client, "viewer@example.org", PASSWORD)
    fields = hidden_fields(client.get("/admin/").get_data(as_text=True))
    assert client.post(f"/admin/readers/{ada}/erase", data={**fields, "confirm": "yes"}).status_code == 403
    client.post("/admin/logout", data=fields)

    log_in(client, "editor@example.org", PASSWORD)
    fields = hidden_fields(client.get("/admin/").get_data(as_text=True))
    assert client.post(f"/admin/readers/{ada}/erase", data={"confirm": "yes"}).status_code == 400
    unconfirmed = client.post(f"/admin/readers/{ada}/erase", data=fields, follow_redirects=True)
    assert "Nothing was erased" in html.unescape(unconfirmed.get_data(as_text=True))
    assert query(app, "SELECT email, erased_at FROM readers WHERE id = :id", id=ada) == [(ADA, None)]
    assert client.post("/admin/readers/999/erase", data={**fields, "confirm": "yes"}).status_code == 404
    done = client.post(f"/admin/readers/{ada}/erase", data={**fields, "confirm": "yes"}, follow_redirects=True)
    assert done.status_code == 200 and "is erased" in html.unescape(done.get_data(as_text=True))
    assert cells_containing(app, ADA) == []


# --- the data export ---------------------------------------------------------------------------------------

def _rows(app, statement: str, **params) -> list[dict]:
    with app.app_context():
        try:
            return [dict(row._mapping) for row in db.session.execute(sa.text(statement), params)]
        finally:
            db.session.remove()


def _iso(value) -> str | None:
    """A timestamp as read by raw SQL (text on SQLite, naive or aware), as the export writes it."""
    if value is None:
        return None
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    return (value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)).isoformat()


def test_the_data_export_holds_everything_stored_about_the_reader(app, client, mailbox, admins):
    links = sign_up_and_confirm(client, mailbox, ADA, ("daily-briefing", "weekly-explainer"), name=ADA_NAME)
    sign_up_and_confirm(client, mailbox, BOB)
    client.post(links["unsubscribe"], data={"List-Unsubscribe": "One-Click"})
    ada = reader_id_of(app, ADA)

    # The reader's own link: a download from the preferences page.
    page = client.get(links["preferences"]).get_data(as_text=True)
    assert f'href="{links["preferences"]}/data.json"' in page and "Download my data" in page
    download = client.get(f"{links['preferences']}/data.json")
    assert download.status_code == 200 and download.mimetype == "application/json"
    assert download.headers["Content-Disposition"].startswith("attachment")
    assert download.headers["Cache-Control"] == "no-store"
    data = download.get_json()

    [reader] = _rows(app, "SELECT * FROM readers WHERE id = :id", id=ada)
    assert data["reader"] == {key: (_iso(value) if key.endswith("_at") else value) for key, value in reader.items()}

    subscriptions = _rows(app, "SELECT s.*, n.slug, n.name AS newsletter_name FROM subscriptions s JOIN newsletters n "
                               "ON n.id = s.newsletter_id WHERE reader_id = :id ORDER BY s.id", id=ada)
    assert [(s["newsletter"], s["status"], s["subscribed_at"], s["confirmed_at"], s["unsubscribed_at"])
            for s in data["subscriptions"]] == [
        (s["slug"], s["status"], _iso(s["created_at"]), _iso(s["confirmed_at"]), _iso(s["unsubscribed_at"]))
        for s in subscriptions]
    assert sorted(s["status"] for s in data["subscriptions"]) == ["confirmed", "unsubscribed"]

    events = _rows(app, "SELECT e.*, n.slug FROM consent_events e LEFT JOIN newsletters n ON n.id = e.newsletter_id "
                        "WHERE reader_id = :id ORDER BY e.occurred_at, e.id", id=ada)
    assert data["consent_events"] == [{
        "id": e["id"], "action": e["action"], "newsletter": e["slug"], "occurred_at": _iso(e["occurred_at"]),
        "source": e["source"], "page_url": e["page_url"], "form_id": e["form_id"], "ip_address": e["ip_address"],
        "user_agent": e["user_agent"], "wording": e["wording"]} for e in events]
    assert [e["action"] for e in data["consent_events"]] == [
        "signup_requested", "signup_requested", "confirmed", "confirmed", "unsubscribed"]
    assert data["consent_events"][0]["page_url"] == PAGE and data["consent_events"][0]["user_agent"] == BROWSER

    emails = _rows(app, "SELECT * FROM outbox_messages WHERE reader_id = :id ORDER BY id", id=ada)
    assert [(m["id"], m["kind"], m["message_id"], m["to_address"], m["to_name"], m["subject"], m["status"],
             m["attempts"], m["created_at"], m["sent_at"]) for m in data["emails"]] == [
        (m["id"], m["kind"], m["message_id"], m["to_address"], m["to_name"], m["subject"], m["status"],
         m["attempts"], _iso(m["created_at"]), _iso(m["sent_at"])) for m in emails]
    assert [m["kind"] for m in data["emails"]] == ["confirmation", "welcome", "welcome"]
    # Nothing about anybody else.
    assert BOB not in download.get_data(as_text=True)

    # The admin's download and the API's export say the same (but for the time of the export).
    log_in(client, "viewer@example.org", PASSWORD)
    admin_copy = client.get(f"/admin/readers/{ada}/export.json")
    assert admin_copy.status_code == 200 and admin_copy.headers["Content-Disposition"].startswith("attachment")
    token = _token(app)
    api_copy = client.get(f"/api/v1/readers/{ada}/export", headers={"Authorization": f"Bearer {token}"}).get_json()
    for copy in (admin_copy.get_json(), api_copy):
        assert {**copy, "exported_at": None} == {**data, "exported_at": None}


STAFF_BROWSER = "Mozilla/5.0 (Windows NT 10.0) NewsroomBrowser/7.1"


def test_the_readers_own_download_says_what_staff_did_but_not_who(app, client, mailbox, admins):
    links = sign_up_and_confirm(client, mailbox, ADA, ("daily-briefing", "weekly-explainer"))
    ada = reader_id_of(app, ADA)
    [(daily,)] = query(app, "SELECT id FROM newsletters WHERE slug = 'daily-briefing'")
    # An administrator unsubscribes Ada from one newsletter in the admin, from the newsroom's network...
    editor = app.test_client()
    log_in(editor, "editor@example.org", PASSWORD)
    fields = hidden_fields(editor.get(f"/admin/readers/{ada}").get_data(as_text=True))
    assert editor.post(f"/admin/readers/{ada}/unsubscribe", data={**fields, "newsletter_id": str(daily)},
                       headers={"User-Agent": STAFF_BROWSER}, environ_base={"REMOTE_ADDR": "198.51.100.7"}
                       ).status_code == 303
    # ...and a program with an API token from the other.
    secret = _token(app)
    assert client.post(f"/api/v1/readers/{ada}/unsubscribe", json={"newsletters": ["weekly-explainer"]},
                       headers={"Authorization": f"Bearer {secret}", "User-Agent": "crm-sync/2.0"},
                       environ_base={"REMOTE_ADDR": "203.0.113.9"}).status_code == 200
    staff = ("editor@example.org", "privacy test", secret[:8], STAFF_BROWSER, "198.51.100.7", "crm-sync/2.0",
             "203.0.113.9")

    # Ada's own download, from her preferences page: what was done, and by whom in general terms only.
    download = client.get(f"{links['preferences']}/data.json")
    assert download.status_code == 200
    text = download.get_data(as_text=True)
    assert not [who for who in staff if who in text]
    events = download.get_json()["consent_events"]
    assert [(e["action"], e["source"], e["wording"], e["ip_address"], e["user_agent"], e["page_url"])
            for e in events if e["action"] == "unsubscribed"] == [
        ("unsubscribed", "admin", "By an administrator", None, None, None),
        ("unsubscribed", "api", "By an administrator, through the API", None, None, None)]
    # Her own doings keep all they record: the page she signed up on, her browser.
    assert events[0]["action"] == "signup_requested" and events[0]["page_url"] == PAGE
    assert events[0]["user_agent"] == BROWSER and events[0]["wording"]

    # The admin's and the API's exports of her data still say who acted, from where.
    log_in(client, "viewer@example.org", PASSWORD)
    admin_copy = client.get(f"/admin/readers/{ada}/export.json").get_data(as_text=True)
    api_copy = client.get(f"/api/v1/readers/{ada}/export", headers={"Authorization": f"Bearer {secret}"}
                          ).get_data(as_text=True)
    for copy in (admin_copy, api_copy):
        assert [who for who in staff if who in copy] == list(staff)


def test_download_my_data_speaks_ukrainian(app, client, mailbox):
    links = sign_up_and_confirm(client, mailbox, ADA)
    page = html.unescape(client.get(links["preferences"], headers=UK).get_data(as_text=True))
    assert "Завантажити мої дані" in page and "Ваші дані" in page and "Download my data" not in page


def test_admin_export_and_erase_of_an_unknown_reader_is_404(app, client, admins):
    log_in(client, "editor@example.org", PASSWORD)
    fields = hidden_fields(client.get("/admin/").get_data(as_text=True))
    for reader_id in (999, 2**31, 10**30):  # beyond PostgreSQL's integers too
        assert client.get(f"/admin/readers/{reader_id}/export.json").status_code == 404
        assert client.post(f"/admin/readers/{reader_id}/erase", data={**fields, "confirm": "yes"}).status_code == 404


# --- purging never-confirmed signups -------------------------------------------------------------------------

def _reader(session, email: str, age_days: float, subscriptions=(), *, blocked=False, erased=False,
            events=("signup_requested",)) -> None:
    """A reader created `age_days` ago with subscriptions given as (slug id, status, days ago of last change)."""
    now = utcnow()
    created = now - timedelta(days=age_days)
    reader = Reader(email=email, created_at=created, blocked_at=now if blocked else None,
                    erased_at=now if erased else None)
    session.add(reader)
    session.flush()
    for newsletter_id, status, days_ago in subscriptions:
        moment = now - timedelta(days=days_ago)
        session.add(Subscription(
            reader_id=reader.id, newsletter_id=newsletter_id, status=status, created_at=created, pending_since=moment,
            confirmed_at=moment if status == "confirmed" else None,
            unsubscribed_at=moment if status == "unsubscribed" else None))
        for action in events:
            session.add(ConsentEvent(reader_id=reader.id, newsletter_id=newsletter_id, action=action,
                                     occurred_at=moment, source="api", ip_address="192.0.2.1"))
    session.add(OutboxMessage(kind="confirmation", reader_id=reader.id, message_id=f"<{email}.x@localhost>",
                              mail_from="n@localhost", to_address=email, subject="Confirm", body_text=email,
                              body_html=email, headers={}, status="sent", created_at=created))


def test_purge_pending_removes_exactly_the_stale_never_confirmed_readers(app, client, runner):
    with app.app_context():
        daily, weekly = (n for n, in db.session.execute(sa.text(
            "SELECT id FROM newsletters WHERE slug IN ('daily-briefing', 'weekly-explainer') ORDER BY slug")))
        s = db.session
        _reader(s, "stale@example.org", 40, [(daily, "pending", 40)])
        _reader(s, "stale-two@example.org", 31, [(daily, "pending", 31), (weekly, "pending", 35)])
        _reader(s, "gave-up@example.org", 50, [(daily, "unsubscribed", 45)])  # left before ever confirming
        _reader(s, "fresh@example.org", 5, [(daily, "pending", 5)])
        _reader(s, "just-under@example.org", 29, [(daily, "pending", 29)])
        _reader(s, "asked-again@example.org", 90, [(daily, "pending", 2)])  # signed up again lately
        _reader(s, "one-confirmed@example.org", 90, [(daily, "pending", 90), (weekly, "confirmed", 80)],
                events=("signup_requested", "confirmed"))
        _reader(s, "was-confirmed@example.org", 90, [(daily, "unsubscribed", 60)],
                events=("signup_requested", "confirmed", "unsubscribed"))
        _reader(s, "blocked@example.org", 90, [(daily, "pending", 90)], blocked=True)
        _reader(s, "erased@example.org", 90, [(daily, "unsubscribed", 60)], erased=True)
        s.commit()
        s.remove()

    app.config["NEWSLETTER_PENDING_RETENTION_DAYS"] = 30
    result = runner.invoke(args=["purge-pending"])
    assert result.exit_code == 0, result.output
    assert "Purged 3 never-confirmed readers older than 30 days." in result.output
    assert sorted(email for email, in query(app, "SELECT email FROM readers")) == sorted([
        "fresh@example.org", "just-under@example.org", "asked-again@example.org", "one-confirmed@example.org",
        "was-confirmed@example.org", "blocked@example.org", "erased@example.org"])
    # Their subscriptions, history and emails went with them.
    for table, column in (("subscriptions", "reader_id"), ("consent_events", "reader_id"),
                          ("outbox_messages", "reader_id")):
        assert query(app, f"SELECT count(*) FROM {table} WHERE {column} IS NULL OR {column} NOT IN "
                          "(SELECT id FROM readers)") == [(0,)]
    for gone in ("stale@", "stale-two@", "gave-up@"):
        assert cells_containing(app, gone) == []

    again = runner.invoke(args=["purge-pending", "--days", "30"])
    assert "Purged 0 never-confirmed readers" in again.output
    shorter = runner.invoke(args=["purge-pending", "--days", "3"])
    assert "Purged 2 never-confirmed readers older than 3 days." in shorter.output  # just-under, fresh
    assert runner.invoke(args=["purge-pending", "--days", "0"]).exit_code != 0


def _backdate_everything(app, days: int) -> None:
    """Move every stored moment `days` into the past, as if the signups so far happened then."""
    columns = {"readers": ["created_at", "confirmation_sent_at"],
               "subscriptions": ["created_at", "pending_since", "confirmation_sent_at"],
               "consent_events": ["occurred_at"], "outbox_messages": ["created_at"]}
    with app.app_context():
        for table, names in columns.items():
            for column in names:
                for row_id, moment in db.session.execute(sa.text(f"SELECT id, {column} FROM {table}")).all():
                    if moment is None:
                        continue
                    if isinstance(moment, str):  # SQLite hands raw text to a plain text() query
                        moment = datetime.fromisoformat(moment)
                    moment = moment.replace(tzinfo=None) - timedelta(days=days)
                    db.session.execute(sa.text(f"UPDATE {table} SET {column} = :moment WHERE id = :row_id"),
                                       {"moment": moment, "row_id": row_id})
        db.session.commit()
        db.session.remove()


def test_purge_pending_keeps_a_reader_who_signed_up_again_within_the_retention(app, client, runner):
    for address in (ADA, BOB):
        assert client.post("/api/v1/subscriptions", json={"email": address, "newsletters": ["daily-briefing"]}
                           ).status_code == 202
    _backdate_everything(app, 40)
    # Ada asks again (and is sent a new confirmation email); Bob never came back.
    assert client.post("/api/v1/subscriptions", json={"email": ADA, "newsletters": ["daily-briefing"]}
                       ).status_code == 202
    _backdate_everything(app, 2)

    result = runner.invoke(args=["purge-pending", "--days", "30"])
    assert "Purged 1 never-confirmed reader older than 30 days." in result.output, result.output
    assert query(app, "SELECT email FROM readers") == [(ADA,)]

    _backdate_everything(app, 30)
    assert "Purged 1 never-confirmed" in runner.invoke(args=["purge-pending", "--days", "30"]).output
    assert query(app, "SELECT count(*) FROM readers") == [(0,)]


def test_purge_pending_counts_the_last_signup_request_and_the_last_confirmation_email(app, runner):
    with app.app_context():
        [daily] = db.session.execute(sa.text("SELECT id FROM newsletters WHERE slug = 'daily-briefing'")).one()
        s = db.session
        two_days_ago = utcnow() - timedelta(days=2)
        _reader(s, "old@example.org", 40, [(daily, "pending", 40)])
        _reader(s, "mailed-lately@example.org", 40, [(daily, "pending", 40)])
        _reader(s, "asked-lately@example.org", 40, [(daily, "pending", 40)])
        _reader(s, "resent-lately@example.org", 40, [(daily, "pending", 40)])
        s.flush()
        ids = dict(s.execute(sa.select(Reader.email, Reader.id)).all())
        s.execute(sa.update(Reader).where(Reader.email == "mailed-lately@example.org")
                  .values(confirmation_sent_at=two_days_ago))
        for email, action in (("asked-lately@example.org", "signup_requested"),
                              ("resent-lately@example.org", "confirmation_resent")):
            s.add(ConsentEvent(reader_id=ids[email], newsletter_id=daily, action=action, occurred_at=two_days_ago,
                               source="api"))
        s.commit()
        s.remove()

    assert "Purged 1 never-confirmed" in runner.invoke(args=["purge-pending", "--days", "30"]).output
    assert sorted(email for email, in query(app, "SELECT email FROM readers")) == [
        "asked-lately@example.org", "mailed-lately@example.org", "resent-lately@example.org"]


def test_purge_pending_leaves_a_reader_who_is_signing_up_right_now(app, client):
    assert client.post("/api/v1/subscriptions", json={"email": ADA, "newsletters": ["daily-briefing"]}
                       ).status_code == 202
    with app.app_context():
        assert privacy.purge_pending(db.session, 1) == 0
        with pytest.raises(ValueError):
            privacy.purge_pending(db.session, 0)
        db.session.remove()
    assert query(app, "SELECT email FROM readers") == [(ADA,)]


@pytest.mark.parametrize("raw, expected", [(None, 30), ("", 30), ("7", 7), ("365", 365)])
def test_retention_setting(tmp_path: Path, raw, expected):
    environ = {"NEWSLETTER_SECRET_KEY": "k"} | ({"NEWSLETTER_PENDING_RETENTION_DAYS": raw} if raw is not None else {})
    assert config.load(tmp_path, environ)["NEWSLETTER_PENDING_RETENTION_DAYS"] == expected


@pytest.mark.parametrize("raw", ["0", "-3", "a month"])
def test_bad_retention_setting_is_refused(tmp_path: Path, raw):
    with pytest.raises(config.ConfigError, match="NEWSLETTER_PENDING_RETENTION_DAYS"):
        config.load(tmp_path, {"NEWSLETTER_SECRET_KEY": "k", "NEWSLETTER_PENDING_RETENTION_DAYS": raw})
