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
    assert [row["email"] for row in only] == list(SUPPRESSED)
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
    assert [row["email"] for row in csv_table(result.stdout_bytes)] == list(SUPPRESSED)
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
