"""Nothing of ours is queued to a suppressed address: signups (hosted form, iframe form, JSON API)
answer as usual and store nothing, confirmations, welcomes and preferences links are not queued;
blocks keep an entry on the list; erasure leaves only the address's keyed hash.

Over real HTTP with the real SMTP server behind the outbox, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
import requests
import sqlalchemy as sa

from newsletter import suppressions
from newsletter.extensions import db
from newsletter.models import DeliveryEvent, Reader, Suppression

from .conftest import hidden_fields, link_in, query
from .test_admin_auth import PASSWORD, admin, log_in  # noqa: F401 (a fixture)

STORED = ("readers", "subscriptions", "consent_events", "outbox_messages")


def suppress(app, address: str, reason: str = "hard_bounce", **extra) -> int:
    with app.app_context():
        entry = suppressions.suppress(db.session, app.config, address, reason=reason, source="smtp",
                                      detail=f"550 5.1.1 <{address}>: no such user", **extra)
        db.session.commit()
        entry_id = entry.id
        db.session.remove()
    return entry_id


def counts(app) -> dict[str, int]:
    return {table: query(app, f"SELECT count(*) FROM {table}")[0][0] for table in STORED}


def comparable(text: str, address: str) -> str:
    """A page with what differs between two visitors anyway taken out: their address and fresh tokens."""
    text = text.replace(address, "ADDRESS")
    return re.sub(r'(name="(?:csrf_token|form_token)"[^>]*value=")[^"]*"|(value=")[^"]*("[^>]*name="(?:csrf_token|'
                  r'form_token)")', "TOKEN", text)


def api_signup(base: str, address: str) -> requests.Response:
    return requests.post(f"{base}/api/v1/subscriptions", timeout=10, json={
        "email": address, "newsletters": ["daily-briefing", "weekly-explainer"], "page_url": "https://news.example/a"})


def hosted_signup(base: str, address: str) -> requests.Response:
    browser = requests.Session()
    form = browser.get(f"{base}/subscribe", timeout=10)
    return browser.post(f"{base}/subscribe", timeout=10, data={
        **hidden_fields(form.text), "email": address, "newsletters": ["daily-briefing"]})


def iframe_signup(base: str, address: str) -> requests.Response:
    browser = requests.Session()
    form = browser.get(f"{base}/embed/daily-briefing", timeout=10)
    return browser.post(f"{base}/embed/daily-briefing", timeout=10, data={
        **hidden_fields(form.text), "email": address, "newsletters": ["daily-briefing"]})


@pytest.mark.parametrize("signup", [api_signup, hosted_signup, iframe_signup], ids=["api", "hosted", "iframe"])
def test_a_suppressed_address_gets_the_usual_answer_and_nothing_is_stored_or_sent(app, live_server, smtp, signup):
    # Reported in another case than the reader types it: the key is of the lowercased address.
    suppress(app, "Bounced.Person@EXAMPLE.org")
    before = counts(app)

    refused = signup(live_server, "bounced.person@example.org")

    assert counts(app) == before  # no reader, subscription, consent event or email
    usual = signup(live_server, "someone.else@example.org")
    assert refused.status_code == usual.status_code and refused.url.replace(
        "bounced.person", "X") == usual.url.replace("someone.else", "X")
    assert comparable(refused.text, "bounced.person@example.org") == comparable(usual.text, "someone.else@example.org")
    # The usual address's confirmation arrives; by then the outbox had nothing before it for the other.
    smtp.inbox.wait_for(1)
    assert [envelope[1] for envelope in smtp.inbox.envelopes] == [["someone.else@example.org"]]
    assert query(app, "SELECT count(*) FROM readers WHERE lower(email) = 'bounced.person@example.org'") == [(0,)]


@pytest.mark.parametrize("reason", ["complaint", "soft_bounces", "manual", "import", "blocked"])
def test_every_mail_stopping_reason_stops_a_signup(app, live_server, reason):
    suppress(app, "x@example.org", reason=reason)
    assert api_signup(live_server, "x@example.org").status_code == 202
    assert counts(app) == dict.fromkeys(STORED, 0)


def test_a_lifted_or_erased_entry_stops_nothing(app, live_server, smtp):
    lifted = suppress(app, "back@example.org", reason="complaint")
    with app.app_context():
        suppressions.lift(db.session, lifted, admin_id=None, note="asked to be mailed again")
        suppressions.suppress(db.session, app.config, None, key=suppressions.address_key(app.config, "gone@example.org"),
                              reason="erased", source="erasure")
        db.session.commit()
        db.session.remove()

    assert api_signup(live_server, "back@example.org").status_code == 202
    assert api_signup(live_server, "Gone@example.org").status_code == 202
    smtp.inbox.wait_for(2)
    assert sorted(envelope[1][0] for envelope in smtp.inbox.envelopes) == ["Gone@example.org", "back@example.org"]


def test_a_known_reader_suppressed_later_signs_up_again_and_gets_nothing(app, live_server, smtp):
    assert api_signup(live_server, "known@example.org").status_code == 202
    smtp.inbox.wait_for(1)
    suppress(app, "known@example.org", reason="complaint")
    with app.app_context():  # unsubscribed, so that a signup would change something
        db.session.execute(sa.text("UPDATE subscriptions SET status = 'unsubscribed'"))
        db.session.commit()
        db.session.remove()
    before = counts(app)
    events = query(app, "SELECT id, action FROM consent_events ORDER BY id")

    answer = api_signup(live_server, "known@example.org")

    assert answer.status_code == 202 and answer.json() == {"status": "pending"}
    assert counts(app) == before
    assert query(app, "SELECT id, action FROM consent_events ORDER BY id") == events
    assert query(app, "SELECT DISTINCT status FROM subscriptions") == [("unsubscribed",)]


def test_confirming_from_a_suppressed_address_queues_no_welcome(app, live_server, smtp):
    assert api_signup(live_server, "late@example.org").status_code == 202
    [confirmation] = smtp.inbox.wait_for(1)
    suppress(app, "late@example.org", reason="complaint")

    done = requests.post(link_in(confirmation, "/confirm/"), timeout=10)

    assert done.status_code == 200 and "Subscription confirmed" in done.text
    assert sorted(query(app, "SELECT status FROM subscriptions")) == [("confirmed",), ("confirmed",)]
    assert query(app, "SELECT kind FROM outbox_messages ORDER BY id") == [("confirmation",)]
    # A welcome to someone not suppressed still goes, and it is the only one.
    assert api_signup(live_server, "fine@example.org").status_code == 202
    fine = smtp.inbox.wait_for(2)[1]
    requests.post(link_in(fine, "/confirm/"), timeout=10)
    smtp.inbox.wait_for(4)
    assert [envelope[1][0] for envelope in smtp.inbox.envelopes].count("late@example.org") == 1


def test_a_new_preferences_link_is_not_sent_to_a_suppressed_address(app, live_server, smtp):
    for address in ("kept@example.org", "stopped@example.org"):
        assert api_signup(live_server, address).status_code == 202
    smtp.inbox.wait_for(2)
    suppress(app, "stopped@example.org")

    pages = {}
    for address in ("stopped@example.org", "kept@example.org"):
        browser = requests.Session()
        form = browser.get(f"{live_server}/preferences/new-link", timeout=10)
        pages[address] = browser.post(f"{live_server}/preferences/new-link", timeout=10,
                                      data={**hidden_fields(form.text), "email": address})
    assert pages["stopped@example.org"].status_code == pages["kept@example.org"].status_code == 200
    assert comparable(pages["stopped@example.org"].text, "stopped@example.org") == \
        comparable(pages["kept@example.org"].text, "kept@example.org")
    smtp.inbox.wait_for(3)
    assert smtp.inbox.envelopes[2][1] == ["kept@example.org"]
    assert query(app, "SELECT r.email FROM outbox_messages m JOIN readers r ON r.id = m.reader_id "
                      "WHERE m.kind = 'preferences_link'") == [("kept@example.org",)]


def reader_id(app, address: str) -> int:
    return query(app, "SELECT id FROM readers WHERE email = :address", address=address)[0][0]


def test_the_admin_cannot_resend_a_confirmation_to_a_suppressed_address(app, client, admin):  # noqa: F811
    client.post("/api/v1/subscriptions", json={"email": "waiting@example.org", "newsletters": ["daily-briefing"]})
    suppress(app, "waiting@example.org")
    before = counts(app)
    log_in(client, "editor@example.org", PASSWORD)
    reader = reader_id(app, "waiting@example.org")
    page = client.get(f"/admin/readers/{reader}").get_data(as_text=True)

    answer = client.post(f"/admin/readers/{reader}/resend", data=hidden_fields(page), follow_redirects=True)

    assert answer.status_code == 200
    assert "on the suppression list" in answer.get_data(as_text=True)
    assert counts(app) == before


def test_blocking_puts_the_address_on_the_list_and_unblocking_lifts_that_entry_only(app, client, admin):  # noqa: F811
    for address in ("blocked@example.org", "bounced@example.org"):
        client.post("/api/v1/subscriptions", json={"email": address, "newsletters": ["daily-briefing"]})
    log_in(client, "editor@example.org", PASSWORD)

    def act(address: str, action: str) -> None:
        reader = reader_id(app, address)
        page = client.get(f"/admin/readers/{reader}").get_data(as_text=True)
        assert client.post(f"/admin/readers/{reader}/{action}", data=hidden_fields(page)).status_code == 303

    act("blocked@example.org", "block")
    [(reason, source, email, lifted, by)] = query(
        app, "SELECT s.reason, s.source, s.email, s.lifted_at, a.email FROM suppressions s "
             "JOIN admin_users a ON a.id = s.created_by_id")
    assert (reason, source, email, lifted, by) == ("blocked", "admin", "blocked@example.org", None, "editor@example.org")
    assert query(app, "SELECT blocked_at IS NOT NULL FROM readers WHERE email = 'blocked@example.org'") == [(True,)]

    act("blocked@example.org", "unblock")
    assert query(app, "SELECT reason, lifted_at IS NOT NULL, lift_note FROM suppressions") == [
        ("blocked", True, "Unblocked from the reader's page.")]
    assert query(app, "SELECT blocked_at FROM readers WHERE email = 'blocked@example.org'") == [(None,)]

    # A reader who bounced and was then blocked and unblocked still bounces: that entry stays.
    suppress(app, "bounced@example.org")
    act("bounced@example.org", "block")
    act("bounced@example.org", "unblock")
    assert query(app, "SELECT reason FROM suppressions WHERE email = 'bounced@example.org' AND lifted_at IS NULL") \
        == [("hard_bounce",)]


def test_erasure_leaves_only_the_keyed_hash_and_the_person_may_sign_up_again(app, live_server, smtp):
    assert api_signup(live_server, "Leaving@Example.org").status_code == 202
    smtp.inbox.wait_for(1)
    with app.app_context():
        suppressions.record_event(db.session, app.config, "LEAVING@example.org", kind="soft_bounce", provider="ses",
                                  diagnostic="452 4.2.2 <leaving@example.org> mailbox full")
        old = suppressions.suppress(db.session, app.config, "leaving@EXAMPLE.org", reason="manual", source="admin")
        suppressions.lift(db.session, old.id, admin_id=None, note="by mistake")
        db.session.commit()
        db.session.remove()
    reader = reader_id(app, "Leaving@example.org")

    with app.app_context():
        from newsletter import privacy

        privacy.erase_reader(db.session, reader, source=privacy.Source(channel="admin"), config=app.config)
        db.session.commit()
        key = suppressions.address_key(app.config, "leaving@example.org")
        entries = db.session.execute(sa.select(Suppression.reason, Suppression.email, Suppression.detail,
                                               Suppression.lifted_at.is_(None)).order_by(Suppression.id)).all()
        assert [tuple(row) for row in entries] == [("manual", None, None, False), ("erased", None, None, True)]
        assert db.session.scalar(sa.select(Suppression.address_key).where(Suppression.reason == "erased")) == key
        assert db.session.scalars(sa.select(DeliveryEvent.diagnostic)).all() == [None]
        db.session.remove()
    for table in ("suppressions", "delivery_events"):
        for row in query(app, f"SELECT * FROM {table}"):
            assert not any("leaving" in str(value).lower() for value in row)

    # The erased entry stops imports, not the person's own signup.
    assert api_signup(live_server, "leaving@example.org").status_code == 202
    smtp.inbox.wait_for(2)
    assert smtp.inbox.envelopes[1][1] == ["leaving@example.org"]


def test_erasing_a_bounced_address_keeps_its_entry_without_the_address(app, client):
    client.post("/api/v1/subscriptions", json={"email": "dead@example.org", "newsletters": ["daily-briefing"]})
    suppress(app, "dead@example.org")
    with app.app_context():
        from newsletter import privacy

        reader = db.session.scalar(sa.select(Reader.id).where(Reader.email == "dead@example.org"))
        privacy.erase_reader(db.session, reader, source=privacy.Source(channel="admin"), config=app.config)
        privacy.erase_reader(db.session, reader, source=privacy.Source(channel="admin"), config=app.config)
        db.session.commit()
        db.session.remove()
    assert query(app, "SELECT reason, email, detail, lifted_at FROM suppressions ORDER BY id") == [
        ("hard_bounce", None, None, None), ("erased", None, None, None)]
    # Still suppressed: a signup stores nothing.
    before = counts(app)
    assert client.post("/api/v1/subscriptions", json={"email": "dead@example.org", "newsletters": ["daily-briefing"]}
                       ).status_code == 202
    assert counts(app) == before


@pytest.mark.parametrize("address", ["Ünïcode@Bücher.example", "MiXeD.Case+tag@Example.ORG", "a@xn--bcher-kva.example"])
def test_the_key_of_a_normalized_address_is_its_address_key(app, address):
    from newsletter import addresses

    normalized = addresses.normalize(address)
    assert suppressions.normalized_key(app.config, normalized) == suppressions.address_key(app.config, address)
    assert suppressions.key_maker(app.config)(normalized) == suppressions.address_key(app.config, address)


# --- Exports ------------------------------------------------------------------------------------


@pytest.fixture
def mixed_list(app, client):
    """Six readers of the Daily Briefing: two bounced (one reported in capitals), one lifted, one erased-then-back, two fine."""
    for address in ("fine1@example.org", "Bounced1@example.org", "bounced2@example.org", "lifted@example.org",
                    "returned@example.org", "fine2@example.org"):
        assert client.post("/api/v1/subscriptions", json={"email": address, "newsletters": ["daily-briefing"]}
                           ).status_code == 202
    suppress(app, "BOUNCED1@EXAMPLE.ORG")
    suppress(app, "bounced2@example.org", reason="complaint")
    lifted = suppress(app, "lifted@example.org")
    with app.app_context():
        suppressions.lift(db.session, lifted, admin_id=None, note="fixed")
        suppressions.suppress(db.session, app.config, None, reason="erased", source="erasure",
                              key=suppressions.address_key(app.config, "returned@example.org"))
        db.session.commit()
        db.session.remove()


KEPT = ["fine1@example.org", "lifted@example.org", "returned@example.org", "fine2@example.org"]
SUPPRESSED = {"Bounced1@example.org": "hard_bounce", "bounced2@example.org": "complaint"}


def csv_table(body: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(body.decode("utf-8"), newline="")))


@pytest.mark.parametrize("chunk_rows", [5000, 2])  # 2: chunks left empty once the suppressed are out
@pytest.mark.parametrize("key_only", [False, True], ids=["by-address", "by-key"])
def test_the_admin_export_leaves_suppressed_addresses_out_unless_asked(app, client, admin, mixed_list,  # noqa: F811
                                                                      monkeypatch, chunk_rows, key_only):
    from newsletter import exports

    monkeypatch.setattr(exports, "CHUNK_ROWS", chunk_rows)
    if key_only:  # an entry with no address: every row is then matched by its key
        with app.app_context():
            suppressions.suppress(db.session, app.config, None, reason="import", source="import",
                                  key=suppressions.address_key(app.config, "elsewhere@example.net"))
            db.session.commit()
            db.session.remove()
    log_in(client, "viewer@example.org", PASSWORD)

    def download(**fields):
        page = client.get("/admin/exports").get_data(as_text=True)
        assert 'name="suppressed" value="exclude" checked' in page
        return client.post("/admin/exports/download", data={**hidden_fields(page), "newsletter": "daily-briefing",
                                                            "format": "csv", **fields})

    default = csv_table(download().get_data())
    assert [row["email"] for row in default] == KEPT
    assert "suppressed" not in default[0]
    included = csv_table(download(suppressed="include").get_data())
    assert {row["email"]: row["suppressed"] for row in included} == {**dict.fromkeys(KEPT, ""), **SUPPRESSED}
    only = csv_table(download(suppressed="only").get_data())
    assert {row["email"]: row["suppressed"] for row in only} == SUPPRESSED  # each with why
    assert query(app, "SELECT row_count, filters FROM exports ORDER BY id")[-1][0] == 2

    wrong = download(suppressed="some")
    assert wrong.status_code == 422
    assert "use exclude, include, only, not &#39;some&#39;" in wrong.get_data(as_text=True)


def test_the_api_and_cli_exports_take_the_same_filter(app, client, runner, mixed_list):
    from newsletter import api_tokens

    with app.app_context():
        _, secret = api_tokens.create_token(db.session, "sync", "viewer")
        db.session.commit()
        db.session.remove()
    headers = {"Authorization": f"Bearer {secret}"}
    url = "/api/v1/newsletters/daily-briefing/subscribers.ndjson"
    default = client.get(url, headers=headers)
    assert [row["email"] for row in map(json.loads, default.get_data(as_text=True).splitlines())] == KEPT
    included = client.get(url + "?suppressed=include", headers=headers).get_data(as_text=True)
    marks = {row["email"]: row["suppressed"] for row in map(json.loads, included.splitlines())}
    assert marks == {**dict.fromkeys(KEPT), **SUPPRESSED}  # null where not suppressed
    bad = client.get(url + "?suppressed=\x00", headers=headers)
    assert bad.status_code == 422 and "suppressed" in bad.get_json()["errors"]

    result = runner.invoke(args=["export", "daily-briefing", "--suppressed", "only"])
    assert result.exit_code == 0, result.output
    assert {row["email"]: row["suppressed"] for row in csv_table(result.stdout_bytes)} == SUPPRESSED
    assert [row["email"] for row in csv_table(runner.invoke(args=["export", "daily-briefing"]).stdout_bytes)] == KEPT
    refused = runner.invoke(args=["export", "daily-briefing", "--suppressed", "all"])
    assert refused.exit_code != 0 and "'all' is not one of 'exclude', 'include', 'only'" in refused.output


@pytest.mark.parametrize("key_only", [False, True], ids=["by-address", "by-key"])
def test_the_matcher_finds_an_address_reported_in_any_form(app, key_only):
    with app.app_context():
        for reported, reason in (("SOMEONE@xn--bcher-kva.example", "hard_bounce"), ("<Loud@EXAMPLE.org>", "complaint"),
                                 ("lifted@example.org", "manual"), ("gone@example.org", "erased")):
            entry = suppressions.suppress(db.session, app.config, reported if reason != "erased" else None,
                                          key=suppressions.address_key(app.config, reported), reason=reason,
                                          source="ses")
            if reported.startswith("lifted"):
                suppressions.lift(db.session, entry.id, admin_id=None)
        if key_only:
            suppressions.suppress(db.session, app.config, None, key="0" * 64, reason="import", source="import")
        db.session.flush()
        reason_of = suppressions.mail_stopping_matcher(db.session, app.config).reason
        db.session.rollback()
        db.session.remove()
    assert reason_of("someone@bücher.example") == "hard_bounce"
    assert reason_of("Loud@example.org") == "complaint"
    assert reason_of("lifted@example.org") is None and reason_of("gone@example.org") is None
    assert reason_of("someone.else@bücher.example") is None


def test_no_matcher_when_nothing_stops_mail(app):
    with app.app_context():
        suppressions.suppress(db.session, app.config, None, key="1" * 64, reason="erased", source="erasure")
        assert suppressions.mail_stopping_matcher(db.session, app.config) is None
        db.session.rollback()
        db.session.remove()


def erase(app, address: str) -> None:
    from newsletter import privacy

    with app.app_context():
        reader = query(app, "SELECT id FROM readers WHERE email = :a", a=address)[0][0]
        privacy.erase_reader(db.session, reader, source=privacy.Source(channel="admin"), config=app.config)
        db.session.commit()
        db.session.remove()


def test_lifting_the_bounce_entry_of_an_erased_reader_still_keeps_imports_from_bringing_them_back(
        app, client, runner, tmp_path):
    from newsletter import suppression_list

    assert client.post("/api/v1/subscriptions", json={"email": "bounced.then.erased@example.org",
                                                      "newsletters": ["daily-briefing"]}).status_code == 202
    entry_id = suppress(app, "bounced.then.erased@example.org")
    erase(app, "bounced.then.erased@example.org")
    # Erasure added its own `erased` entry beside the bounce's; an admin lifts the bounce (the mailbox works again).
    assert query(app, "SELECT reason FROM suppressions WHERE lifted_at IS NULL ORDER BY id") == [
        ("hard_bounce",), ("erased",)]
    with app.app_context():
        suppression_list.lift(db.session, app.config, entry_id, "mailbox fixed", admin_id=None)
        db.session.commit()
        db.session.remove()

    file = tmp_path / "old-list.csv"
    file.write_text("email,status,confirmed_at\nBounced.Then.Erased@example.org,confirmed,2024-01-01T00:00:00Z\n")
    result = runner.invoke(args=["import", str(file), "--newsletter", "daily-briefing", "--format", "csv",
                                 "--unconfirmed", "confirmed"])

    assert result.exit_code == 0, result.output
    assert query(app, "SELECT lower(email) FROM readers WHERE lower(email) LIKE 'bounced.then.erased%'") == []
    assert query(app, "SELECT reason, email FROM import_refusals") == [("erased", None)]  # not even the refusal keeps it


def test_an_import_refuses_an_erased_reader_as_erased_even_while_their_address_bounces(app, client, runner, tmp_path):
    assert client.post("/api/v1/subscriptions", json={"email": "both@example.org",
                                                      "newsletters": ["daily-briefing"]}).status_code == 202
    erase(app, "both@example.org")
    suppress(app, "both@example.org", reason="complaint")  # a late complaint: a second entry, no address
    file = tmp_path / "list.csv"
    file.write_text("email\nBoth@example.org\n")
    result = runner.invoke(args=["import", str(file), "--newsletter", "daily-briefing", "--format", "csv"])
    assert result.exit_code == 0, result.output
    assert query(app, "SELECT reason FROM import_refusals ORDER BY id") == [("erased",)]
    assert query(app, "SELECT reason, email, detail FROM suppressions WHERE lifted_at IS NULL ORDER BY id") == [
        ("erased", None, None), ("complaint", None, None)]


def test_outbox_retry_leaves_messages_to_suppressed_addresses_failed_with_their_error(app, client, runner):
    for address in ("gone@example.org", "fine@example.org"):
        assert client.post("/api/v1/subscriptions", json={"email": address,
                                                          "newsletters": ["daily-briefing"]}).status_code == 202
    refusal = "550 5.1.1 <gone@example.org>: Recipient address rejected"
    with app.app_context():
        db.session.execute(sa.text("UPDATE outbox_messages SET status = 'failed', last_error = :e"), {"e": refusal})
        db.session.commit()
        db.session.remove()
    suppress(app, "gone@example.org")

    result = runner.invoke(args=["outbox", "retry"])

    assert result.exit_code == 0, result.output
    assert "Skipped 1 message to addresses on the suppression list (1 hard bounce)" in result.output
    assert "Queued 1 failed message again." in result.output
    assert query(app, "SELECT r.email, o.status, o.last_error FROM outbox_messages o JOIN readers r ON "
                      "r.id = o.reader_id ORDER BY r.email") == [
        ("fine@example.org", "pending", None), ("gone@example.org", "failed", refusal)]
    [(gone_id,)] = query(app, "SELECT o.id FROM outbox_messages o JOIN readers r ON r.id = o.reader_id "
                              "WHERE r.email = 'gone@example.org'")
    alone = runner.invoke(args=["outbox", "retry", "--id", str(gone_id)])
    assert alone.exit_code != 0 and "on the suppression list" in alone.output


def test_lifting_the_entry_of_a_confirmed_reader_puts_the_address_back_in_the_next_export(app, client, runner):
    # Suppression never changes a subscription's status: once lifted, the address is exported (and mailed) again
    # at once, with no new signup (as the README and the lift page say).
    assert client.post("/api/v1/subscriptions", json={"email": "was.bounced@example.org",
                                                      "newsletters": ["daily-briefing"]}).status_code == 202
    with app.app_context():
        db.session.execute(sa.text("UPDATE subscriptions SET status = 'confirmed', confirmed_at = pending_since"))
        db.session.commit()
        db.session.remove()
    entry_id = suppress(app, "was.bounced@example.org")
    export = ["export", "daily-briefing", "--status", "confirmed"]
    assert "was.bounced" not in runner.invoke(args=export).output
    with app.app_context():
        suppressions.lift(db.session, entry_id, admin_id=None, note="mailbox works again")
        db.session.commit()
        db.session.remove()

    assert "was.bounced@example.org" in runner.invoke(args=export).output


def test_a_suppressed_reader_joining_from_the_preferences_page_is_subscribed_but_mailed_nothing(
        app, live_server, smtp, drain):
    assert requests.post(f"{live_server}/api/v1/subscriptions", timeout=10, json={
        "email": "joins@example.org", "newsletters": ["daily-briefing"]}).status_code == 202
    confirm = link_in(smtp.inbox.wait_for(1)[0], "/confirm/")
    browser = requests.Session()
    page = browser.get(confirm, timeout=10)
    browser.post(confirm, data=hidden_fields(page.text), timeout=10)
    preferences = link_in(smtp.inbox.wait_for(2)[1], "/preferences/")  # in the welcome
    suppress(app, "joins@example.org", reason="soft_bounces")
    before = query(app, "SELECT count(*) FROM outbox_messages")
    received = len(smtp.inbox.messages)

    form = browser.get(preferences, timeout=10)
    ids = [str(row[0]) for row in query(app, "SELECT id FROM newsletters ORDER BY id")]
    answer = browser.post(preferences, data={**hidden_fields(form.text), "newsletters": ids}, timeout=10)

    # Joining from the reader's own preferences link is their confirmed consent: it is recorded, but no email
    # of ours is queued to the suppressed address.
    assert answer.status_code == 200
    assert query(app, "SELECT count(*) FROM subscriptions s JOIN newsletters n ON n.id = s.newsletter_id "
                      "WHERE s.status = 'confirmed' AND n.slug IN ('weekly-explainer', 'no-welcome')") == [(2,)]
    assert query(app, "SELECT count(*) FROM outbox_messages") == before
    drain()
    assert len(smtp.inbox.messages) == received


def test_rotating_the_secret_key_once_keeps_the_suppression_list_working(database_url, instance_dir, monkeypatch):
    from newsletter import create_app

    from .conftest import close_app

    monkeypatch.setenv("NEWSLETTER_DATABASE_URL", database_url)
    monkeypatch.delenv("NEWSLETTER_SUPPRESSION_KEY", raising=False)
    monkeypatch.delenv("NEWSLETTER_SECRET_KEY_FALLBACKS", raising=False)
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "the-old-key-" + "x" * 40)
    before = create_app({"TESTING": True})
    with before.app_context():
        suppressions.suppress(db.session, before.config, "complained@example.org", reason="complaint", source="ses")
        db.session.commit()
    close_app(before)

    # The README's rotation: the old key moves into the fallbacks, a new one becomes the secret key.
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY_FALLBACKS", "the-old-key-" + "x" * 40)
    monkeypatch.setenv("NEWSLETTER_SECRET_KEY", "the-new-key-" + "y" * 40)
    after = create_app({"TESTING": True})
    try:
        with after.app_context():
            assert suppressions.mail_stopped(db.session, after.config, "complained@example.org") is not None
    finally:
        close_app(after)


def test_with_several_old_keys_the_suppression_key_must_be_set(tmp_path):
    from newsletter import config

    keys = {"NEWSLETTER_SECRET_KEY": "c" * 40, "NEWSLETTER_SECRET_KEY_FALLBACKS": "b" * 40 + ", " + "a" * 40}
    with pytest.raises(config.ConfigError, match="Set NEWSLETTER_SUPPRESSION_KEY to that key"):
        config.load(tmp_path, keys)
    chosen = config.load(tmp_path, {**keys, "NEWSLETTER_SUPPRESSION_KEY": "a" * 40})
    assert chosen["NEWSLETTER_SUPPRESSION_KEY"] == "a" * 40
    assert config.load(tmp_path, {"NEWSLETTER_SECRET_KEY": "c" * 40})["NEWSLETTER_SUPPRESSION_KEY"] == "c" * 40
    assert config.load(tmp_path, {"NEWSLETTER_SECRET_KEY": "c" * 40, "NEWSLETTER_SECRET_KEY_FALLBACKS": "b" * 40}
                       )["NEWSLETTER_SUPPRESSION_KEY"] == "b" * 40
