"""The changes feed (GET /api/v1/changes) and the events it shares with the webhooks: every change type,
commit order with two really overlapping transactions (PostgreSQL), paging, erasure, purges, suppressions."""

from __future__ import annotations

import json
import threading
import time
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from newsletter import accounts, changes, privacy, suppressions
from newsletter.api.change_schemas import ChangesPage
from newsletter.extensions import db
from newsletter.models import ConsentEvent, Reader, Subscription, Suppression, utcnow

from .conftest import hidden_fields, link_in, query
from .import_files import member, write_members
from .test_admin_auth import PASSWORD, log_in
from .test_api_v1 import BROWSER, PAGE, bearer, errors_of, make_token
from .test_imports import OPTIN, run_import

POSTMARK_AUTH = "postmark-hook:s3cret-Pa55word"
POSTMARK_BOUNCE = {
    "RecordType": "Bounce", "ID": 4323372036854775807, "Type": "HardBounce", "TypeCode": 1,
    "MessageID": "883953f4-6105-42a2-a16a-77a8eac79483", "Details": "550 5.1.1 user unknown",
    "Email": "bounced@example.org", "BouncedAt": "2026-11-05T16:33:54.9070259Z",
}


@pytest.fixture
def viewer(app) -> dict[str, str]:
    return bearer(make_token(app, "viewer", "sync job"))


def page_of(client, headers, **params) -> dict:
    """One page of the feed, checked against its pydantic description."""
    answer = client.get("/api/v1/changes", query_string=params, headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    ChangesPage.model_validate(answer.get_json())
    return answer.get_json()


def whole_feed(client, headers, after: int | str = 0, limit: int = 1000) -> tuple[list[dict], str]:
    """Every change after `after`, following next while has_more; and the last next."""
    events, cursor = [], str(after)
    while True:
        page = page_of(client, headers, after=cursor, limit=limit)
        events += page["changes"]
        cursor = page["next"]
        if not page["has_more"]:
            return events, cursor


def basic(credentials: str) -> dict[str, str]:
    import base64

    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def path_of(url: str) -> str:
    return "/" + url.split("://", 1)[1].split("/", 1)[1]


def insert_events(app, count: int, action: str = "signup_requested", email: str = "many@example.org") -> list[int]:
    """`count` consent events of one reader, written straight to the database in one transaction; their ids."""
    with app.app_context():
        reader = db.session.scalars(sa.select(Reader).where(Reader.email == email)).first()
        if reader is None:
            reader = Reader(email=email)
            db.session.add(reader)
            db.session.flush()
        ids = list(db.session.scalars(sa.insert(ConsentEvent).returning(ConsentEvent.id), [
            {"reader_id": reader.id, "action": action, "source": "api", "occurred_at": utcnow()}
            for _ in range(count)]))
        db.session.commit()
        db.session.remove()
    return ids


# --- every change type ------------------------------------------------------------------------------------

def test_every_change_type_appears_once_in_commit_order(app, client, drain, smtp, viewer):
    app.config["NEWSLETTER_POSTMARK_WEBHOOK_AUTH"] = POSTMARK_AUTH
    signup = client.post("/api/v1/subscriptions", headers={"User-Agent": BROWSER}, json={
        "email": "Ada@Example.org", "name": "Ada", "newsletters": ["daily-briefing", "weekly-explainer"],
        "page_url": PAGE, "form_id": "box-1"})
    assert signup.status_code == 202
    [(ada,)] = query(app, "SELECT id FROM readers")
    drain()
    confirm = path_of(link_in(smtp.inbox.wait_for(1)[0], "/confirm/"))
    client.post(confirm, data=hidden_fields(client.get(confirm).get_data(as_text=True)))
    drain()
    welcomes = {message["Subject"]: message for message in smtp.inbox.wait_for(3)[1:]}
    daily = path_of(link_in(welcomes["Welcome to The Daily Briefing"], "/unsubscribe/"))
    weekly = path_of(link_in(welcomes["Welcome to The Weekly Explainer"], "/unsubscribe/"))
    # The unsubscribe page's button, then the mail client's one-click POST.
    assert client.post(daily, data=hidden_fields(client.get(daily).get_data(as_text=True))).status_code == 200
    assert client.post(weekly, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    # Bob bounces (a provider's webhook), an address nobody signed up with too.
    client.post("/api/v1/subscriptions", json={"email": "bounced@example.org", "newsletters": ["daily-briefing"]})
    [(bob,)] = query(app, "SELECT id FROM readers WHERE email = 'bounced@example.org'")
    for address in ("bounced@example.org", "stranger@example.org"):
        bounce = client.post("/api/v1/events/postmark", headers=basic(POSTMARK_AUTH),
                             json={**POSTMARK_BOUNCE, "Email": address, "ID": hash(address) % 10**9})
        assert bounce.status_code == 200, bounce.get_data(as_text=True)

    events, cursor = whole_feed(client, viewer)
    assert [(e["type"], e["data"]["reader"]["id"], (e["data"]["newsletter"] or {}).get("slug"), e["data"]["channel"])
            for e in events] == [
        ("subscription.pending", ada, "daily-briefing", "api"),
        ("subscription.pending", ada, "weekly-explainer", "api"),
        ("subscription.confirmed", ada, "daily-briefing", "email-link"),
        ("subscription.confirmed", ada, "weekly-explainer", "email-link"),
        ("subscription.unsubscribed", ada, "daily-briefing", "unsubscribe-page"),
        ("subscription.unsubscribed", ada, "weekly-explainer", "one-click"),
        ("subscription.pending", bob, "daily-briefing", "api"),
        ("reader.suppressed", bob, None, "postmark"),
    ]
    first = events[0]
    assert first["data"]["reader"] == {"id": ada, "email": "Ada@example.org", "name": "Ada"}
    assert first["data"]["source"] == {"page_url": PAGE, "form_id": "box-1"}
    assert first["id"].startswith("evt_") and first["timestamp"].endswith("+00:00")
    assert events[-1]["data"]["reason"] == "hard_bounce" and "reason" not in first["data"]
    assert [int(e["cursor"]) for e in events] == sorted(int(e["cursor"]) for e in events)
    assert len({e["id"] for e in events}) == len(events)
    # The same events as the webhooks render, one by one.
    with app.app_context():
        assert [changes.event_payload(db.session, int(e["id"][4:])) for e in events] == events

    # Erasure: reader.erased last, and from now on none of Ada's events carries her address or name.
    erased = client.delete(f"/api/v1/readers/{ada}", headers=bearer(make_token(app, "admin")))
    assert erased.status_code == 200
    later, _ = whole_feed(client, viewer, after=cursor)
    assert [(e["type"], e["data"]["reader"]) for e in later] == [
        ("reader.erased", {"id": ada, "email": None, "name": None})]
    again, _ = whole_feed(client, viewer)
    assert all(e["data"]["reader"]["email"] is None and e["data"]["reader"]["name"] is None
               for e in again if e["data"]["reader"]["id"] == ada)
    assert "ada@" not in str(again).lower() and PAGE not in str(again)
    # Polling again at the end gives nothing new, and the same cursor.
    assert page_of(client, viewer, after=cursor)["next"] != cursor
    end = page_of(client, viewer, after=page_of(client, viewer, after=cursor)["next"])
    assert end["changes"] == [] and end["has_more"] is False


def test_a_hard_bounce_from_the_bounce_mailbox_is_reader_suppressed(app, client, runner, viewer):
    from .test_bounce_mail import GONE_ID, returned_id, sample, we_sent

    client.post("/api/v1/subscriptions", json={"email": "gone@example.org", "newsletters": ["daily-briefing"]})
    we_sent(app, GONE_ID, "gone@example.org")
    raw = sample("postfix_550_user_unknown.eml")
    assert returned_id(raw) == GONE_ID
    assert runner.invoke(args=["bounce-mail"], input=raw).exit_code == 0
    # The same report piped twice is recorded once, and so is its change.
    assert runner.invoke(args=["bounce-mail"], input=raw).exit_code == 0

    events, _ = whole_feed(client, viewer)
    assert [(e["type"], e["data"]["channel"], e["data"].get("reason")) for e in events] == [
        ("subscription.pending", "api", None), ("reader.suppressed", "mailbox", "hard_bounce")]
    assert events[1]["data"]["reader"]["email"] == "gone@example.org"


def test_a_block_and_a_manual_entry_are_told_once_and_shown_in_the_readers_history(app, client, viewer):
    with app.app_context():
        accounts.create_admin(db.session, "editor@example.org", PASSWORD, "admin")
        db.session.commit()
    client.post("/api/v1/subscriptions", json={"email": "Mixed.Case@example.org", "newsletters": ["daily-briefing"]})
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    log_in(client, "editor@example.org", PASSWORD)
    page = client.get("/admin/suppressions")
    added = client.post("/admin/suppressions", data={**hidden_fields(page.get_data(as_text=True)),
                                                     "address": "Mixed.Case@EXAMPLE.org", "note": "asked by phone"})
    assert added.status_code in (200, 303), added.get_data(as_text=True)
    # Already suppressed: a block puts no new entry in force, so no second suppression (it unsubscribes).
    reader_page = client.get(f"/admin/readers/{reader_id}")
    client.post(f"/admin/readers/{reader_id}/block", data=hidden_fields(reader_page.get_data(as_text=True)))
    # Blocked first, another reader's address is suppressed as `blocked`.
    client.post("/api/v1/subscriptions", json={"email": "second@example.org", "newsletters": ["daily-briefing"]})
    [(second,)] = query(app, "SELECT id FROM readers WHERE email = 'second@example.org'")
    reader_page = client.get(f"/admin/readers/{second}")
    client.post(f"/admin/readers/{second}/block", data=hidden_fields(reader_page.get_data(as_text=True)))

    events, _ = whole_feed(client, viewer)
    assert [(e["type"], e["data"]["reader"]["id"], e["data"]["channel"], e["data"].get("reason"))
            for e in events] == [
        ("subscription.pending", reader_id, "api", None), ("reader.suppressed", reader_id, "admin", "manual"),
        ("subscription.unsubscribed", reader_id, "admin", None),
        ("subscription.pending", second, "api", None), ("subscription.unsubscribed", second, "admin", None),
        ("reader.suppressed", second, "admin", "blocked")]
    history = client.get(f"/admin/readers/{reader_id}").get_data(as_text=True)
    assert "suppressed (manual)" in history


def test_an_import_that_brings_a_cleaned_address_tells_its_reader(app, client, viewer, tmp_path):
    client.post("/api/v1/subscriptions", json={"email": "cleaned@example.org", "newsletters": ["daily-briefing"]})
    listing = write_members(tmp_path / "cleaned_members.csv", [
        member("cleaned@example.org", clean=OPTIN), member("nobody-here@example.org", clean=OPTIN)], "cleaned")
    run_import(app, listing)
    assert query(app, "SELECT count(*) FROM suppressions WHERE reason = 'import'") == [(2,)]
    events, _ = whole_feed(client, viewer)
    suppressed = [e for e in events if e["type"] == "reader.suppressed"]
    assert [(e["data"]["reader"]["email"], e["data"]["channel"], e["data"]["reason"]) for e in suppressed] == [
        ("cleaned@example.org", "import", "import")]
    # The same file again suppresses nothing new, so tells nothing new.
    run_import(app, listing)
    assert [e["type"] for e in whole_feed(client, viewer)[0]].count("reader.suppressed") == 1


@pytest.mark.parametrize("reported", ["john.doe@example.org", "JOHN.DOE@EXAMPLE.ORG", "john.DOE@Example.ORG"])
def test_a_bounce_quoting_the_address_in_another_case_is_told_as_reader_suppressed(app, client, viewer, reported):
    """The reader signed up as John.Doe@example.org; providers report the address in any case (most
    lowercase it). The suppression key is case-blind, so mail stops: the feed must say so too."""
    admin = bearer(make_token(app, "admin"))
    assert client.post("/api/v1/subscriptions", json={"email": "John.Doe@example.org",
                                                      "newsletters": ["daily-briefing"]}).status_code == 202
    # Another reader whose address differs only in case is the same mailbox for the suppression list.
    assert client.post("/api/v1/subscriptions", json={"email": "JOHN.doe@example.org",
                                                      "newsletters": ["daily-briefing"]}).status_code == 202
    client.post("/api/v1/subscriptions", json={"email": "john.doe2@example.org", "newsletters": ["daily-briefing"]})
    ids = dict(query(app, "SELECT email, id FROM readers"))
    answer = client.post("/api/v1/events/generic", headers=admin,
                         json={"events": [{"type": "hard_bounce", "email": reported}]})
    assert answer.status_code == 200, answer.get_data(as_text=True)
    with app.app_context():
        assert suppressions.stopping_reason(
            db.session, suppressions.normalized_key(app.config, "John.Doe@example.org")) == "hard_bounce"
        db.session.remove()
    events, _ = whole_feed(client, viewer)
    suppressed = sorted(e["data"]["reader"]["id"] for e in events if e["type"] == "reader.suppressed")
    assert suppressed == sorted([ids["John.Doe@example.org"], ids["JOHN.doe@example.org"]])


def test_lifting_a_suppression_is_told_as_reader_unsuppressed_and_shown_in_the_readers_history(app, client, viewer):
    """Once an entry is lifted the address is mailed again: a system kept in sync must learn it too, for each
    reader of the address whatever its case, and only when no other entry stops mail to it."""
    admin = bearer(make_token(app, "admin"))
    with app.app_context():
        accounts.create_admin(db.session, "editor@example.org", PASSWORD, "admin")
        db.session.commit()
    for email in ("John.Doe@example.org", "blocked@example.org"):
        client.post("/api/v1/subscriptions", json={"email": email, "newsletters": ["daily-briefing"]})
    ids = dict(query(app, "SELECT email, id FROM readers"))
    john, blocked = ids["John.Doe@example.org"], ids["blocked@example.org"]
    client.post("/api/v1/events/generic", headers=admin,
                json={"events": [{"type": "complaint", "email": "john.doe@example.org"},
                                 # Nobody's address: lifting its entry tells no reader.
                                 {"type": "hard_bounce", "email": "stranger@example.org"}]})
    log_in(client, "editor@example.org", PASSWORD)
    entries = dict(query(app, "SELECT email, id FROM suppressions"))
    for address in ("john.doe@example.org", "stranger@example.org"):
        url = f"/admin/suppressions/{entries[address]}"
        page = client.get(url)
        lifted = client.post(f"{url}/lift", data={**hidden_fields(page.get_data(as_text=True)),
                                                  "note": "Wrote to us: it was a slip."})
        assert lifted.status_code == 303, lifted.get_data(as_text=True)
    # A block and an unblock: suppressed, then unsuppressed, each once.
    page = client.get(f"/admin/readers/{blocked}")
    client.post(f"/admin/readers/{blocked}/block", data=hidden_fields(page.get_data(as_text=True)))
    page = client.get(f"/admin/readers/{blocked}")
    assert client.post(f"/admin/readers/{blocked}/unblock",
                       data=hidden_fields(page.get_data(as_text=True))).status_code in (200, 303)

    events, _ = whole_feed(client, viewer)
    told = [(e["type"], e["data"]["reader"]["id"], e["data"]["channel"], e["data"].get("reason"))
            for e in events if e["type"].startswith("reader.")]
    assert told == [
        ("reader.suppressed", john, "generic", "complaint"), ("reader.unsuppressed", john, "admin", "complaint"),
        ("reader.suppressed", blocked, "admin", "blocked"), ("reader.unsuppressed", blocked, "admin", "blocked")]
    for event in events:
        ChangesPage.model_validate({"changes": [event], "next": "1", "has_more": False})
    history = client.get(f"/admin/readers/{john}").get_data(as_text=True)
    assert "unsuppressed (complaint)" in history and "suppressed (complaint)" in history


def test_a_lift_is_not_told_while_another_entry_still_stops_mail(app):
    """An address has one mail-stopping entry in force at most; should another be there anyway (a race, or
    a database edited by hand), lifting one must not tell the reader that mail may go to them again."""
    with app.app_context():
        db.session.add(Reader(email="Twice@example.org"))
        db.session.flush()
        first = suppressions.suppress(db.session, app.config, "twice@example.org", reason="complaint", source="ses")
        key = first.address_key
        db.session.execute(sa.text("DROP INDEX uq_suppressions_active_key"))  # rolled back below
        db.session.execute(sa.insert(Suppression).values(
            address_key=key, email="twice@example.org", reason="manual", source="admin", created_at=utcnow()))
        suppressions.lift(db.session, first.id, admin_id=None, note="one of two")
        actions = list(db.session.scalars(sa.select(ConsentEvent.action).order_by(ConsentEvent.id)))
        db.session.rollback()
        db.session.remove()
    assert actions == ["suppressed"]


def test_postgresql_finds_the_readers_of_a_suppressed_address_through_the_lower_email_index(app):
    """record_suppressed looks readers up by lower(email): with many readers, PostgreSQL's planner must
    use ix_readers_lower_email, not read every reader."""
    with app.app_context():
        if db.engine.dialect.name != "postgresql":
            pytest.skip("the query plan is PostgreSQL's")
        db.session.execute(sa.text(
            "INSERT INTO readers (email, created_at) "
            "SELECT 'Reader.' || n || '@example.org', now() FROM generate_series(1, 20000) AS n"))
        db.session.execute(sa.text("ANALYZE readers"))
        statement = suppressions.readers_by_lowered_email("postgresql")
        compiled = statement.compile(dialect=db.engine.dialect)
        plan = "\n".join(row[0] for row in db.session.connection().exec_driver_sql(
            f"EXPLAIN {compiled}", {"emails": ["reader.17@example.org", "reader.4242@example.org"]}))
        found = db.session.execute(statement, {"emails": ["reader.17@example.org", "reader.4242@example.org"]}).all()
        db.session.rollback()
        db.session.remove()
    assert "ix_readers_lower_email" in plan and "Seq Scan" not in plan, plan
    assert sorted(email for _, email in found) == ["reader.17@example.org", "reader.4242@example.org"]


# --- the API: tokens and bad input ---------------------------------------------------------------------------

def test_no_token_is_401_and_a_viewer_token_reads(app, client, viewer):
    answer = client.get("/api/v1/changes")
    assert answer.status_code == 401 and "Bearer" in answer.headers["WWW-Authenticate"]
    assert client.get("/api/v1/changes", headers=bearer("nlt_not-a-real-token")).status_code == 401
    assert client.get("/api/v1/changes", headers=viewer).get_json() == {"changes": [], "next": "0", "has_more": False}


AFTER = "after"
LIMIT = "limit"
BAD_QUERIES = [
    ({"after": "abc"}, AFTER),
    ({"after": "-1"}, AFTER),
    ({"after": "1.5"}, AFTER),
    ({"after": "1e3"}, AFTER),
    ({"after": " 7"}, AFTER),
    ({"after": "+7"}, AFTER),
    ({"after": "٣"}, AFTER),  # an Arabic-Indic digit: str.isdigit says yes
    ({"after": "9223372036854775808"}, AFTER),  # one past BIGINT
    ({"after": "9" * 5000}, AFTER),  # past Python's int() digit limit
    ({"after": "12\x00"}, AFTER),
    ({"after": "evt_12"}, AFTER),
    ({"limit": "0"}, LIMIT),
    ({"limit": "1001"}, LIMIT),
    ({"limit": "1e9"}, LIMIT),
    ({"limit": "1000000000"}, LIMIT),
    ({"limit": "-5"}, LIMIT),
    ({"limit": "ten"}, LIMIT),
    ({"limit": "\x00"}, LIMIT),
    ({"after": ["1", "2"]}, AFTER),
    ({"limit": ["10", "10"]}, LIMIT),
]


@pytest.mark.parametrize("params, field", BAD_QUERIES)
def test_bad_query_is_a_422_naming_the_parameter(app, client, viewer, params, field):
    answer = client.get("/api/v1/changes", query_string=params, headers=viewer)
    assert answer.status_code == 422, answer.get_data(as_text=True)
    errors = errors_of(answer)
    assert list(errors) == [field]
    [message] = errors[field]
    assert message.startswith((f"The {field}", f"Give {field} once", f"There is a character in {field}"))


def test_both_bad_are_named_and_empty_values_mean_the_defaults(app, client, viewer):
    answer = client.get("/api/v1/changes?after=x&limit=y", headers=viewer)
    assert answer.status_code == 422 and set(errors_of(answer)) == {"after", "limit"}
    assert client.get("/api/v1/changes?after=&limit=", headers=viewer).status_code == 200
    big = client.get(f"/api/v1/changes?after={2**63 - 1}&limit=1000", headers=viewer)
    assert big.status_code == 422 and list(errors_of(big)) == ["after"]


def test_a_cursor_past_the_end_of_the_feed_is_a_422_so_no_later_change_is_skipped(app, client, viewer):
    """A cursor the feed never gave (a typo, another instance's, one kept from before the database was
    restored from a backup) would make the client skip every change until the positions reach it: refused."""
    client.post("/api/v1/subscriptions", json={"email": "one@example.org", "newsletters": ["daily-briefing"]})
    assert page_of(client, viewer)["next"] == "1"
    for beyond in ("2", "1000000", str(2**63 - 1)):
        answer = client.get("/api/v1/changes", query_string={"after": beyond}, headers=viewer)
        assert answer.status_code == 422, answer.get_data(as_text=True)
        assert errors_of(answer) == {"after": [
            f"The after cursor {beyond} is past the end of the feed (the last change is at 1): start again from 0 "
            "or from a cursor this server gave; a cursor from another instance, or kept from before a database "
            "was restored from a backup, is not this feed's."]}
    # The last position itself is the end of the feed, not past it; and the feed goes on from it.
    assert page_of(client, viewer, after=1) == {"changes": [], "next": "1", "has_more": False}
    client.post("/api/v1/subscriptions", json={"email": "two@example.org", "newsletters": ["daily-briefing"]})
    assert client.get("/api/v1/changes?after=2", headers=viewer).status_code == 200
    later = page_of(client, viewer, after=1)
    assert [e["data"]["reader"]["email"] for e in later["changes"]] == ["two@example.org"]


# --- paging --------------------------------------------------------------------------------------------------

def test_paging_with_small_limits_gets_each_of_1000_events_once_in_order(app, client, viewer):
    ids = insert_events(app, 400)
    # Events the feed doesn't show (resent confirmations) are skipped, and the cursor moves past them.
    insert_events(app, 50, action="confirmation_resent")
    ids += insert_events(app, 300, action="confirmed")
    seen, cursor, pages = [], "0", 0
    while True:
        page = page_of(client, viewer, after=cursor, limit=7)
        seen += [int(e["id"][4:]) for e in page["changes"]]
        assert len(page["changes"]) <= 7
        cursor, pages = page["next"], pages + 1
        if pages == 20:  # changes made while a client pages come at the end
            ids += insert_events(app, 300, action="unsubscribed")
        if not page["has_more"]:
            break
    assert len(ids) == 1000 and seen == ids
    assert page_of(client, viewer, after=cursor)["changes"] == []
    assert int(cursor) == 1050  # past the resent confirmations too


def test_a_backlog_is_numbered_a_batch_per_request_and_has_more_says_so(app, client, viewer, monkeypatch):
    from newsletter.api import changes as view

    monkeypatch.setattr(view, "NUMBER_PER_REQUEST", 100)
    ids = insert_events(app, 250)
    first = page_of(client, viewer, limit=1000)
    assert [int(e["id"][4:]) for e in first["changes"]] == ids[:100] and first["has_more"] is True
    events, _ = whole_feed(client, viewer, after=first["next"])
    assert [int(e["id"][4:]) for e in events] == ids[100:]


# --- positions ---------------------------------------------------------------------------------------------

def engine_of(app) -> sa.Engine:
    url = app.config["SQLALCHEMY_DATABASE_URI"]
    return sa.create_engine(url, connect_args={"timeout": 30} if url.startswith("sqlite") else {})


def positions(app) -> list[tuple[int, int | None]]:
    return [tuple(row) for row in query(app, "SELECT id, feed_position FROM consent_events ORDER BY id")]


def test_two_concurrent_numberers_never_give_the_same_position_or_skip_one(app):
    engine = engine_of(app)
    writing = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            for _ in range(20):
                insert_events(app, 50)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            writing.set()

    def numberer() -> None:
        try:
            with Session(engine) as session:
                while not writing.is_set():
                    changes.assign_positions(session, batch=37)
                changes.assign_positions(session, batch=37)
        except BaseException as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=writer), threading.Thread(target=numberer), threading.Thread(target=numberer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    engine.dispose()
    assert errors == []
    rows = positions(app)
    assert len(rows) == 1000
    # Every event numbered, 1..1000 with no gap and no repeat (the unique index would refuse one anyway).
    assert sorted(position for _, position in rows) == list(range(1, 1001))


def test_overlapping_transactions_the_one_committing_late_comes_later(app, client, viewer):
    """T1 inserts (lower id) and stays open; T2 inserts (higher id) and commits; the feed shows T2's; T1
    commits; the next poll from the returned cursor shows T1's. Ids are not commit order: positions are."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("two writing transactions at once need PostgreSQL (SQLite's writers take turns)")
    [(newsletter_id,)] = query(app, "SELECT id FROM newsletters WHERE slug = 'daily-briefing'")
    with app.app_context():
        db.session.add_all([Reader(email="t1@example.org"), Reader(email="t2@example.org")])
        db.session.commit()
        db.session.remove()
    readers = dict(query(app, "SELECT email, id FROM readers"))
    insert = sa.text("INSERT INTO consent_events (reader_id, newsletter_id, action, occurred_at, source) "
                     "VALUES (:reader, :newsletter, 'signup_requested', now(), 'api') RETURNING id")
    engine = engine_of(app)
    with engine.connect() as t1, engine.connect() as t2:
        first = t1.execute(insert, {"reader": readers["t1@example.org"], "newsletter": newsletter_id}).scalar_one()
        second = t2.execute(insert, {"reader": readers["t2@example.org"], "newsletter": newsletter_id}).scalar_one()
        t2.commit()
        assert first < second

        page = page_of(client, viewer)
        assert [e["id"] for e in page["changes"]] == [f"evt_{second}"] and page["has_more"] is False
        assert positions(app) == [(second, 1)]  # T1's row is not visible yet

        t1.commit()
        later = page_of(client, viewer, after=page["next"])
        assert [e["id"] for e in later["changes"]] == [f"evt_{first}"]
        assert [e["data"]["reader"]["email"] for e in later["changes"]] == ["t1@example.org"]
        assert int(later["changes"][0]["cursor"]) > int(page["next"])
    engine.dispose()


def test_a_numberer_waits_for_the_one_holding_the_lock_and_continues_after_it(app):
    """PostgreSQL: while one caller holds the advisory lock (and has given a position), another waits, then
    reads the max after the first committed, so no position is given twice."""
    if not app.config["SQLALCHEMY_DATABASE_URI"].startswith("postgresql"):
        pytest.skip("the advisory lock is PostgreSQL's; SQLite's writers take turns by BEGIN IMMEDIATE")
    ids = insert_events(app, 5)
    engine = engine_of(app)
    done: list[int] = []
    with engine.connect() as holder:
        holder.execute(sa.select(sa.func.pg_advisory_xact_lock(changes.POSITION_LOCK)))
        holder.execute(sa.text("UPDATE consent_events SET feed_position = 1 WHERE id = :id"), {"id": ids[0]})

        def number() -> None:
            with Session(engine) as session:
                done.append(changes.assign_positions(session))

        thread = threading.Thread(target=number)
        thread.start()
        with engine.connect() as watcher:  # until it waits for a lock: which one?
            waiting: list[str] = []
            for _ in range(1200):
                waiting = list(watcher.execute(sa.text("SELECT locktype FROM pg_locks WHERE NOT granted")).scalars())
                watcher.rollback()
                if waiting or not thread.is_alive():
                    break
                thread.join(0.05)
        holder.commit()
        thread.join(60)
        assert waiting == ["advisory"], "assign_positions did not wait for the advisory lock"
        thread.join(60)
    engine.dispose()
    assert done == [4]
    assert positions(app) == list(zip(ids, range(1, 6)))


# --- readers who are gone --------------------------------------------------------------------------------------

@pytest.mark.parametrize("stale_last", [False, True])
def test_a_purged_pending_reader_leaves_the_feed_and_their_events_are_gone(app, client, runner, viewer, stale_last):
    """Also when the purged events held the last positions: those are never given again, so a client whose
    cursor is one of them still gets every later change."""
    order = ["fresh@example.org", "stale@example.org"] if stale_last else ["stale@example.org", "fresh@example.org"]
    for email in order:
        client.post("/api/v1/subscriptions", json={"email": email, "newsletters": ["daily-briefing"]})
    before, cursor = whole_feed(client, viewer)
    assert [e["data"]["reader"]["email"] for e in before] == order
    with app.app_context():  # sixty days ago, as far as purge-pending looks
        old = utcnow() - timedelta(days=60)
        stale = db.session.scalar(sa.select(Reader.id).where(Reader.email == "stale@example.org"))
        db.session.execute(sa.update(Reader).where(Reader.id == stale)
                           .values(created_at=old, confirmation_sent_at=old))
        db.session.execute(sa.update(Subscription).where(Subscription.reader_id == stale)
                           .values(created_at=old, pending_since=old, confirmation_sent_at=old))
        db.session.execute(sa.update(ConsentEvent).where(ConsentEvent.reader_id == stale).values(occurred_at=old))
        db.session.commit()
        db.session.remove()
    result = runner.invoke(args=["purge-pending", "--days", "30"])
    assert result.exit_code == 0, result.output
    assert query(app, "SELECT email FROM readers") == [("fresh@example.org",)]

    after, _ = whole_feed(client, viewer)
    assert [e["data"]["reader"]["email"] for e in after] == ["fresh@example.org"]
    assert whole_feed(client, viewer, after=cursor)[0] == []
    with app.app_context():
        assert changes.event_payload(db.session, int(before[order.index("stale@example.org")]["id"][4:])) is None

    client.post("/api/v1/subscriptions", json={"email": "next@example.org", "newsletters": ["daily-briefing"]})
    news, _ = whole_feed(client, viewer, after=cursor)
    assert [e["data"]["reader"]["email"] for e in news] == ["next@example.org"]
    assert int(news[0]["cursor"]) == int(cursor) + 1


def test_an_erased_readers_earlier_events_carry_no_address_even_when_numbered_after(app, client, viewer):
    """Events of a reader erased before the feed numbered them: the payload is made when read, after erasure."""
    client.post("/api/v1/subscriptions", json={"email": "quick@example.org", "name": "Quick",
                                               "newsletters": ["daily-briefing"], "page_url": PAGE})
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    with app.app_context():
        privacy.erase_reader(db.session, reader_id, source=privacy.Source(channel="cli"), config=app.config)
        db.session.commit()
        db.session.remove()
    events, _ = whole_feed(client, viewer)
    assert [e["type"] for e in events] == ["subscription.pending", "subscription.unsubscribed", "reader.erased"]
    assert all(e["data"]["reader"] == {"id": reader_id, "email": None, "name": None} for e in events)
    assert all(e["data"]["source"]["page_url"] is None for e in events)
    assert [e["data"]["channel"] for e in events[1:]] == ["cli", "cli"]


# --- the example receiver (examples/sync_receiver) -----------------------------------------------------------

def load_example():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parent.parent / "examples" / "sync_receiver" / "receiver.py"
    spec = importlib.util.spec_from_file_location("sync_receiver", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def signed_post(url: str, secret: str, event: dict, *, tamper: bool = False):
    import json
    from datetime import datetime, timezone

    import requests
    from standardwebhooks import Webhook

    body = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
    now = datetime.now(timezone.utc)
    signature = Webhook(secret).sign(event["id"], now, body)
    return requests.post(url, data=(body.replace("a", "b", 1) if tamper else body).encode(), timeout=10, headers={
        "content-type": "application/json", "webhook-id": event["id"],
        "webhook-timestamp": str(int(now.timestamp())), "webhook-signature": signature})


def test_the_example_receiver_applies_webhooks_once_and_fills_gaps_from_the_feed(app, live_server, smtp, tmp_path):
    import base64
    import secrets
    import time

    import requests

    example = load_example()
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    token = make_token(app, "viewer", "the other list")

    def sign_up(email: str) -> int:
        assert requests.post(f"{live_server}/api/v1/subscriptions", timeout=10,
                             json={"email": email, "newsletters": ["daily-briefing"]}).status_code == 202
        return query(app, "SELECT id FROM readers WHERE email = :email", email=email)[0][0]

    def confirm(count: int) -> None:
        url = link_in(smtp.inbox.wait_for(count)[count - 1], "/confirm/")
        assert requests.post(url, timeout=10).status_code == 200

    def feed_events() -> list[dict]:
        return requests.get(f"{live_server}/api/v1/changes", headers=bearer(token), timeout=10).json()["changes"]

    def until(condition, what: str) -> None:  # waits for the receiver's threads, whatever the machine's speed
        for _ in range(600):
            if condition():
                return
            time.sleep(0.05)
        raise AssertionError(f"never happened: {what}")

    # Changes made while the receiver was not running: it reads them from the feed when it starts.
    ada = sign_up("ada@example.org")
    confirm(1)
    server, feed, synced = example.serve(live_server, token, secret, "127.0.0.1:0", str(tmp_path / "sync.sqlite3"),
                                         poll_seconds=3600)
    hook = f"http://127.0.0.1:{server.server_address[1]}/webhook"
    try:
        until(lambda: synced.subscribers("daily-briefing") == [("ada@example.org", None)], "the catch-up at start")

        # A webhook, verified, applied once however often it comes; a forged one is refused.
        bob = sign_up("bob@example.org")
        confirm(3)  # Ada's welcome is the second email
        bobs = [e for e in feed_events() if e["data"]["reader"]["id"] == bob]
        for event in bobs + bobs:
            assert signed_post(hook, secret, event).status_code == 204
        assert signed_post(hook, secret, bobs[-1], tamper=True).status_code == 401
        assert signed_post(hook, "whsec_" + base64.b64encode(b"x" * 24).decode(), bobs[-1]).status_code == 401
        assert synced.subscribers("daily-briefing") == [("ada@example.org", None), ("bob@example.org", None)]

        # Ada is erased and the webhook is lost; a later webhook (Carol's) is past the cursor: the gap is filled.
        assert requests.delete(f"{live_server}/api/v1/readers/{ada}", timeout=10,
                               headers=bearer(make_token(app, "admin"))).status_code == 200
        carol = sign_up("carol@example.org")
        [carols] = [e for e in feed_events() if e["data"]["reader"]["id"] == carol]
        assert signed_post(hook, secret, carols).status_code == 204
        until(lambda: synced.subscribers("daily-briefing") == [("bob@example.org", None)], "the gap filled")
        until(lambda: synced.cursor >= int(carols["cursor"]), "the cursor stored")
        rows = synced._db.execute("SELECT email, name, erased FROM contacts WHERE reader_id = ?", (ada,)).fetchall()
        assert rows == [(None, None, 1)]
        # An old event delivered late changes nothing: the latest change wins.
        late = [e for e in feed_events() if e["type"] == "subscription.confirmed"
                         and e["data"]["reader"]["id"] == bob][0]
        assert synced.apply({**late, "id": "evt_0", "type": "subscription.pending"}) is True
        assert synced.subscribers("daily-briefing") == [("bob@example.org", None)]
    finally:
        feed.stopped.set()
        feed.wanted.set()
        server.shutdown()


FEED_EVENT = {"id": "evt_1", "type": "subscription.confirmed", "timestamp": "2026-12-01T00:00:00+00:00",
              "cursor": "1", "data": {"reader": {"id": 1, "email": "ada@example.org", "name": None},
                                      "newsletter": {"slug": "daily-briefing"}, "channel": "api",
                                      "source": {"page_url": None, "form_id": None}}}


def test_the_example_receiver_mails_a_reader_again_once_unsuppressed_whatever_the_order(tmp_path):
    example = load_example()
    synced = example.SyncedList(str(tmp_path / "sync.sqlite3"))

    def event(number: int, kind: str, reason: str | None = None) -> dict:
        data = {**FEED_EVENT["data"], "newsletter": None, "channel": "admin", "reason": reason}
        return {**FEED_EVENT, "id": f"evt_{number}", "type": kind, "cursor": str(number), "data": data}

    synced.apply(FEED_EVENT)
    synced.apply(event(2, "reader.suppressed", "hard_bounce"))
    assert synced.subscribers("daily-briefing") == []
    synced.apply(event(3, "reader.unsuppressed", "hard_bounce"))
    assert synced.subscribers("daily-briefing") == [("ada@example.org", None)]
    # A suppression told late (the feed filling a gap after the webhook of the lift) changes nothing.
    synced.apply(event(2, "reader.suppressed", "hard_bounce") | {"id": "evt_2b"})
    assert synced.subscribers("daily-briefing") == [("ada@example.org", None)]
    synced.apply(event(5, "reader.suppressed", "complaint"))
    synced.apply(event(4, "reader.unsuppressed", "hard_bounce"))
    assert synced.subscribers("daily-briefing") == []


class BadAnswersFirst(BaseHTTPRequestHandler):
    """A changes feed whose first answers are bad, each as a proxy or a restarting service gives them, then good."""

    bad: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.bad:
            kind = self.bad.pop(0)
            if kind == "html":  # a proxy's maintenance page, 200 and all
                self._send(200, "text/html", b"<html>upstream restarting</html>")
            elif kind == "cut":  # the service restarted half-way through the body: IncompleteRead
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "500")
                self.end_headers()
                self.wfile.write(b'{"changes": [')
            elif kind == "shape":  # JSON, but not a page of changes: KeyError
                self._send(200, "application/json", b'{"detail": "not found"}')
            elif kind == "refused":  # an HTTP error with the API's errors
                self._send(422, "application/json", b'{"errors": {"after": ["past the end of the feed"]}}')
            return
        after = int(self.path.split("after=")[1].split("&")[0])
        page = {"changes": [FEED_EVENT] if after < 1 else [], "next": "1", "has_more": False}
        self._send(200, "application/json", json.dumps(page).encode())

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_the_example_receiver_keeps_reading_the_feed_after_bad_answers(tmp_path, caplog):
    """A bad answer (not JSON, cut off, not a page, an error) is logged and the feed is read again later:
    the feed thread never dies, or the receiver would silently stop filling gaps."""
    example = load_example()
    BadAnswersFirst.bad = ["html", "cut", "shape", "refused"]
    service = ThreadingHTTPServer(("127.0.0.1", 0), BadAnswersFirst)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    synced = example.SyncedList(str(tmp_path / "sync.sqlite3"))
    feed = example.Feed(f"http://127.0.0.1:{service.server_address[1]}", "nlt_x", synced, poll_seconds=0.05)
    runner = threading.Thread(target=feed.run, daemon=True)
    with caplog.at_level("INFO", logger="sync-receiver"):
        runner.start()
        try:
            for _ in range(100):
                if synced.cursor == 1:
                    break
                time.sleep(0.1)
            assert runner.is_alive(), "the feed reader thread died on a bad answer"
            assert synced.cursor == 1 and synced.subscribers("daily-briefing") == [("ada@example.org", None)]
        finally:
            feed.stopped.set()
            feed.wanted.set()
            runner.join(10)
            service.shutdown()
    assert BadAnswersFirst.bad == []
    failures = [record for record in caplog.records if record.levelname == "ERROR"]
    assert len(failures) == 4, [record.getMessage() for record in failures]
    assert "past the end of the feed" in failures[-1].getMessage()


def test_a_signup_leaves_numbering_to_the_feed_and_the_worker(app, client, viewer):
    """The signup request does no feed work: its event has no position until the feed (or the worker) numbers it."""
    client.post("/api/v1/subscriptions", json={"email": "hot@example.org", "newsletters": ["daily-briefing"]})
    assert query(app, "SELECT feed_position FROM consent_events") == [(None,)]
    assert [e["type"] for e in page_of(client, viewer)["changes"]] == ["subscription.pending"]
    assert query(app, "SELECT feed_position FROM consent_events") == [(1,)]


def test_a_synced_list_fed_the_whole_feed_mails_a_reader_again_after_a_suppression_made_by_mistake_is_lifted(
        app, client, drain, smtp):
    """A confirmed reader is put on the suppression list by an admin by mistake, then the entry is lifted: the
    feed tells `reader.unsuppressed` after `reader.suppressed`, and the example receiver, fed the whole feed,
    has the reader among the subscribers again, as the service does."""
    with app.app_context():
        accounts.create_admin(db.session, "editor@example.org", PASSWORD, "admin")
        db.session.commit()
        db.session.remove()
    assert client.post("/api/v1/subscriptions", json={"email": "mistake@example.org",
                                                      "newsletters": ["daily-briefing"]}).status_code == 202
    drain()
    confirm = link_in(smtp.inbox.wait_for(1)[0], "/confirm/")
    assert client.post(path_of(confirm)).status_code == 200
    [(reader_id,)] = query(app, "SELECT id FROM readers WHERE email = 'mistake@example.org'")
    log_in(client, "editor@example.org", PASSWORD)
    page = client.get("/admin/suppressions")
    added = client.post("/admin/suppressions", data={**hidden_fields(page.get_data(as_text=True)),
                                                     "address": "mistake@example.org", "note": "wrong address typed"})
    assert added.status_code in (200, 303), added.get_data(as_text=True)
    [(entry_id,)] = query(app, "SELECT id FROM suppressions WHERE lifted_at IS NULL")
    entry_page = client.get(f"/admin/suppressions/{entry_id}")
    lifted = client.post(f"/admin/suppressions/{entry_id}/lift",
                         data={**hidden_fields(entry_page.get_data(as_text=True)), "note": "was a mistake"})
    assert lifted.status_code in (200, 303), lifted.get_data(as_text=True)
    assert query(app, "SELECT count(*) FROM suppressions WHERE lifted_at IS NULL") == [(0,)]
    assert query(app, "SELECT status FROM subscriptions WHERE reader_id = :r", r=reader_id) == [("confirmed",)]

    events, _ = whole_feed(client, bearer(make_token(app, "viewer", "sync job")))
    mine = [e["type"] for e in events if e["data"]["reader"]["id"] == reader_id]
    assert mine == ["subscription.pending", "subscription.confirmed", "reader.suppressed", "reader.unsuppressed"]
    synced = load_example().SyncedList(":memory:")
    for event in events:
        synced.apply(event)
    assert synced.subscribers("daily-briefing") == [("mistake@example.org", None)]

