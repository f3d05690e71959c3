"""The admin area: dashboard numbers and chart, newsletters (admin and CLI), readers and the actions on them,
CSRF on every form, what a viewer may do, and pages a screen reader can use."""

from __future__ import annotations

import re
from datetime import timedelta
from html.parser import HTMLParser

import pytest
import sqlalchemy as sa

from newsletter import accounts, catalog, readers, stats, tokens
from newsletter.extensions import db
from newsletter.models import ConsentEvent, Reader, Subscription, utcnow

from .conftest import TABLES, hidden_fields, link_in, query
from .test_admin_auth import PASSWORD, log_in

EDITOR, VIEWER = "editor@example.org", "viewer@example.org"


@pytest.fixture
def admins(app):
    with app.app_context():
        accounts.create_admin(db.session, EDITOR, PASSWORD, "admin")
        accounts.create_admin(db.session, VIEWER, PASSWORD, "viewer")
        db.session.commit()
        db.session.remove()


@pytest.fixture
def editor(app, admins):
    client = app.test_client()
    assert log_in(client, EDITOR, PASSWORD).status_code == 303
    return client


@pytest.fixture
def viewer(app, admins):
    client = app.test_client()
    assert log_in(client, VIEWER, PASSWORD).status_code == 303
    return client


def token_of(client) -> str:
    """A valid CSRF token of the client's session."""
    return hidden_fields(client.get("/admin/newsletters").get_data(as_text=True))["csrf_token"]


def ids(app) -> dict[str, int]:
    return dict(query(app, "SELECT slug, id FROM newsletters"))


def add_reader(app, email: str, statuses: dict[str, str] | None = None, **fields) -> int:
    """A reader with a subscription in the given status per newsletter slug; its id."""
    newsletter_ids = ids(app)
    with app.app_context():
        reader = Reader(email=email, **fields)
        db.session.add(reader)
        db.session.flush()
        now = utcnow()
        for slug, status in (statuses or {}).items():
            db.session.add(Subscription(
                reader_id=reader.id, newsletter_id=newsletter_ids[slug], status=status, pending_since=now,
                confirmed_at=now if status == "confirmed" else None,
                unsubscribed_at=now if status == "unsubscribed" else None))
        db.session.commit()
        reader_id = reader.id
        db.session.remove()
    return reader_id


def add_events(app, reader_id: int, events: list[dict]) -> None:
    newsletter_ids = ids(app)
    with app.app_context():
        for event in events:
            event = dict(event)
            slug = event.pop("newsletter", None)
            db.session.add(ConsentEvent(reader_id=reader_id, newsletter_id=newsletter_ids[slug] if slug else None,
                                        source=event.pop("source", "hosted-form"), **event))
        db.session.commit()
        db.session.remove()


def snapshot(app) -> dict[str, list]:
    """Every row of every table, to prove a refused request changed nothing."""
    return {table: sorted(map(repr, query(app, f"SELECT * FROM {table}"))) for table in TABLES}


def text_of(response) -> str:
    return response.get_data(as_text=True)


# --- The dashboard -------------------------------------------------------------------------------


def test_dashboard_counts_each_newsletter_by_status(app, editor):
    add_reader(app, "a@example.org", {"daily-briefing": "pending", "weekly-explainer": "confirmed"})
    add_reader(app, "b@example.org", {"daily-briefing": "confirmed", "weekly-explainer": "confirmed"})
    add_reader(app, "c@example.org", {"daily-briefing": "unsubscribed"})
    add_reader(app, "d@example.org", {"daily-briefing": "confirmed"})
    editor.post("/admin/newsletters/no-welcome/archive", data={"csrf_token": token_of(editor)})

    with app.app_context():
        counts = {c.newsletter.slug: (c.pending, c.confirmed, c.unsubscribed)
                  for c in stats.newsletter_counts(db.session)}
        db.session.remove()
    assert counts == {"daily-briefing": (1, 2, 1), "weekly-explainer": (0, 2, 0), "no-welcome": (0, 0, 0)}

    page = text_of(editor.get("/admin/"))
    number = r'\s*<td class="num">(\d+)</td>'
    rows = re.findall(r'<tr>\s*<th scope="row"><a href="/admin/newsletters/([\w-]+)">.*?</th>\s*<td>(\w+)</td>'
                      + number * 3, page, re.S)
    assert [(slug, state, int(p), int(c), int(u)) for slug, state, p, c, u in rows] == [
        ("daily-briefing", "Active", 1, 2, 1), ("weekly-explainer", "Active", 0, 2, 0),
        ("no-welcome", "Archived", 0, 0, 0)]
    totals = re.search(r"All newsletters</th>\s*" + r'<td class="num">(\d+)</td>\s*' * 3, page)
    assert totals.groups() == ("1", "4", "1")


def chart_rows(html: str) -> dict[str, tuple[int, int]]:
    table = html.split('id="daily-numbers"', 1)[1].split("</table>", 1)[0]
    return {day: (int(c), int(u)) for day, c, u in re.findall(
        r'<time datetime="([\d-]+)">[\d-]+</time></th><td class="num">(\d+)</td><td class="num">(\d+)</td>', table)}


def test_chart_counts_confirmations_and_unsubscribes_per_day_for_90_days(app, editor):
    now = utcnow()
    today = now.date()
    reader_id = add_reader(app, "chart@example.org")
    at = lambda days_ago: now - timedelta(days=days_ago)  # noqa: E731
    add_events(app, reader_id, [
        *[{"action": "confirmed", "newsletter": "daily-briefing", "occurred_at": at(0)}] * 3,
        {"action": "confirmed", "newsletter": "weekly-explainer", "occurred_at": at(0)},
        {"action": "unsubscribed", "newsletter": "daily-briefing", "occurred_at": at(0)},
        *[{"action": "confirmed", "newsletter": "weekly-explainer", "occurred_at": at(5)}] * 2,
        {"action": "unsubscribed", "newsletter": "weekly-explainer", "occurred_at": at(5)},
        {"action": "confirmed", "newsletter": "daily-briefing", "occurred_at": at(89)},  # the first day shown
        {"action": "confirmed", "newsletter": "daily-briefing", "occurred_at": at(90)},  # one day too old
        {"action": "signup_requested", "newsletter": "daily-briefing", "occurred_at": at(1)},  # not drawn
        {"action": "blocked", "occurred_at": at(1), "source": "admin"},  # not drawn
    ])

    daily_id = ids(app)["daily-briefing"]
    with app.app_context():
        days = stats.daily_activity(db.session)
        daily = stats.daily_activity(db.session, newsletter_id=daily_id)
        db.session.remove()
    assert len(days) == 90 and days[0].day == today - timedelta(days=89) and days[-1].day == today
    drawn = {d.day: (d.confirmed, d.unsubscribed) for d in days if d.confirmed or d.unsubscribed}
    assert drawn == {today: (4, 1), today - timedelta(days=5): (2, 1), today - timedelta(days=89): (1, 0)}
    assert {d.day: (d.confirmed, d.unsubscribed) for d in daily if d.confirmed or d.unsubscribed} == {
        today: (3, 1), today - timedelta(days=89): (1, 0)}

    page = text_of(editor.get("/admin/"))
    rows = chart_rows(page)
    assert len(rows) == 90
    assert rows[today.isoformat()] == (4, 1) and rows[(today - timedelta(days=5)).isoformat()] == (2, 1)
    assert sum(c for c, _ in rows.values()) == 7 and sum(u for _, u in rows.values()) == 2
    svg = page.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert 'role="img"' in svg and 'aria-labelledby="chart-title chart-desc"' in svg
    assert "7 confirmed signups and 2 unsubscribes in 90 days" in svg
    assert "Confirmed signups (7)" in svg and "Unsubscribes (2)" in svg  # the legend, drawn in
    assert "Day (UTC)" in svg and "Per day" in svg  # axis titles
    assert svg.count("<polyline") == 4 and 'stroke-dasharray="6 4"' in svg  # with bounces and complaints
    assert f"{today.day} {today:%b}" in svg  # the last day is labelled on the x axis

    one = text_of(editor.get("/admin/?newsletter=daily-briefing"))
    assert "last 90 days: The Daily Briefing" in one
    assert sum(c for c, _ in chart_rows(one).values()) == 4
    assert '<option value="daily-briefing" selected>' in one
    missing = editor.get("/admin/?newsletter=nope")
    assert missing.status_code == 404 and "There is no newsletter called &#39;nope&#39;" in text_of(missing)


def test_days_are_utc_days_whatever_the_database_session_time_zone(app):
    reader_id = add_reader(app, "late@example.org")
    now = utcnow()
    late = now.replace(hour=23, minute=30) - timedelta(days=2)
    add_events(app, reader_id, [{"action": "confirmed", "newsletter": "daily-briefing", "occurred_at": late}])
    with app.app_context():
        if db.engine.dialect.name == "postgresql":
            db.session.execute(sa.text("SET TIME ZONE 'Pacific/Auckland'"))  # UTC+12/13: the next day there
        days = stats.daily_activity(db.session, today=now.date())
        db.session.remove()
    assert [d.day for d in days if d.confirmed] == [late.date()]


def test_top_pages_that_brought_signups(app, client, editor):
    reader_id = add_reader(app, "pages@example.org")
    now = utcnow()
    signup = lambda url, source="embed-iframe", days_ago=1: {  # noqa: E731
        "action": "signup_requested", "newsletter": "daily-briefing", "page_url": url, "source": source,
        "occurred_at": now - timedelta(days=days_ago)}
    add_events(app, reader_id, [
        *[signup("https://news.example/a")] * 5,
        *[signup("https://news.example/a", "embed-script")] * 2,
        *[signup("https://news.example/b", "embed-form")] * 6,
        *[signup(f"https://news.example/tail-{n:02}") for n in range(12)],
        *[signup("https://news.example/old", days_ago=91)] * 9,  # too long ago
        signup(None),
        {"action": "confirmed", "newsletter": "daily-briefing", "page_url": "https://news.example/c",
         "occurred_at": now},
        *[signup("javascript:alert(1)")] * 3,
    ])
    client.post("/api/v1/subscriptions", json={"email": "api@example.org", "newsletters": ["weekly-explainer"],
                                               "page_url": "https://news.example/b"})

    weekly_id = ids(app)["weekly-explainer"]
    with app.app_context():
        top = stats.top_pages(db.session)
        weekly = stats.top_pages(db.session, newsletter_id=weekly_id)
        db.session.remove()
    assert len(top) == 10
    assert [(p.page_url, p.signups, p.channels) for p in top[:3]] == [
        ("https://news.example/a", 7, {"embed-iframe": 5, "embed-script": 2}),
        ("https://news.example/b", 7, {"embed-form": 6, "api": 1}),
        ("javascript:alert(1)", 3, {"embed-iframe": 3}),
    ]
    assert all(p.signups == 1 for p in top[3:])
    assert "https://news.example/old" not in [p.page_url for p in top]
    assert [(p.page_url, p.channels) for p in weekly] == [("https://news.example/b", {"api": 1})]

    page = text_of(editor.get("/admin/"))
    assert '<a href="https://news.example/a" rel="noopener noreferrer nofollow" class="url">' in page
    assert "embed-iframe: 5, embed-script: 2" in page and "embed-form: 6, api: 1" in page
    # A page URL is what a form said: only http(s) ones become links.
    assert 'href="javascript:' not in page and "javascript:alert(1)" in page


# --- Newsletters --------------------------------------------------------------------------------

NEW = {"slug": "morning-sport", "name": "Morning Sport", "description": "Results first.", "author": "Ann Lee",
       "sender": "Sport desk <sport@example.org>", "send_welcome": "y", "welcome_text": "Hi!\n\nThanks."}


SENDERS = [
    ("news@Example.ORG", "news@example.org"),
    ("The Daily <daily@example.org>", "The Daily <daily@example.org>"),
    ('"Doe, J" <j@example.org>', '"Doe, J" <j@example.org>'),
    ("  ", None),
    ("a@example.org, b@example.org", "one email address"),
    ("Name <broken@>", "one email address"),
    ("nobody", "must be an email address"),
    ("x@example.org\r\nBcc: y@example.org", "one line of text"),
]


@pytest.mark.parametrize("sender, outcome", SENDERS)
def test_sender_is_one_address_with_an_optional_name(sender, outcome):
    if outcome is None or "@" in outcome:
        assert catalog.check_sender(sender) == outcome
    else:
        with pytest.raises(catalog.CatalogError, match=outcome) as refused:
            catalog.check_sender(sender)
        assert refused.value.field == "sender"


def newsletter_row(app, slug: str):
    rows = query(app, "SELECT name, description, author, sender, send_welcome, welcome_text, archived_at "
                      "FROM newsletters WHERE slug = :slug", slug=slug)
    return rows[0] if rows else None


def test_create_a_newsletter_in_the_admin(app, editor):
    form = editor.get("/admin/newsletters/new")
    assert form.status_code == 200
    created = editor.post("/admin/newsletters/new", data={**hidden_fields(text_of(form)), **NEW})
    assert created.status_code == 303 and created.headers["Location"].endswith("/admin/newsletters/morning-sport")
    name, description, author, sender, welcome, text, archived = newsletter_row(app, "morning-sport")
    assert (name, description, author, sender, bool(welcome), text, archived) == (
        "Morning Sport", "Results first.", "Ann Lee", "Sport desk <sport@example.org>", True, "Hi!\n\nThanks.", None)
    assert "morning-sport" in text_of(editor.get("/admin/newsletters"))

    token = hidden_fields(text_of(form))["csrf_token"]
    for data, field, message in [
        ({**NEW, "slug": "Bad Slug"}, "slug", "can&#39;t be a slug"),
        ({**NEW, "slug": "morning-sport"}, "slug", "exists already"),
        ({**NEW, "slug": "other", "name": "  "}, "name", "needs a name"),
        ({**NEW, "slug": "other", "sender": "not an address"}, "sender", "The sender must be an email address"),
        ({**NEW, "slug": "other", "name": "Evil\r\nBcc: everyone@example.org"}, "name", "one line of text"),
        ({**NEW, "slug": ""}, "slug", "needs a slug"),
    ]:
        refused = editor.post("/admin/newsletters/new", data={**data, "csrf_token": token})
        assert refused.status_code == 422, data
        html = text_of(refused)
        assert re.search(rf'<p class="error" id="{field}-error">[^<]*{message}', html), (field, html)
        assert f'aria-describedby="{field}-hint {field}-error"' in html or f'aria-describedby="{field}-error"' in html
    assert query(app, "SELECT count(*) FROM newsletters")[0][0] == 4


def test_edit_archive_and_unarchive_a_newsletter_in_the_admin(app, editor, client):
    page = editor.get("/admin/newsletters/daily-briefing")
    assert page.status_code == 200 and 'value="The Daily Briefing"' in text_of(page)
    token = hidden_fields(text_of(page))["csrf_token"]
    saved = editor.post("/admin/newsletters/daily-briefing", data={
        "csrf_token": token, "name": "The Briefing", "description": "New words.", "author": "Bo Chen",
        "sender": "briefing@Example.ORG", "welcome_text": "Welcome aboard."})  # send_welcome unticked
    assert saved.status_code == 303
    assert newsletter_row(app, "daily-briefing")[:6] == (
        "The Briefing", "New words.", "Bo Chen", "briefing@example.org", False, "Welcome aboard.")
    assert "changed name, description, author, sender, send_welcome, welcome_text" in text_of(
        editor.get("/admin/newsletters/daily-briefing"))

    before = newsletter_row(app, "daily-briefing")
    bad = editor.post("/admin/newsletters/daily-briefing", data={
        "csrf_token": token, "name": "Changed", "sender": "Name <broken@>", "author": "x"})
    assert bad.status_code == 422 and "Nothing was saved" in text_of(bad)
    assert newsletter_row(app, "daily-briefing") == before
    assert editor.get("/admin/newsletters/nope").status_code == 404

    archived = editor.post("/admin/newsletters/daily-briefing/archive", data={"csrf_token": token})
    assert archived.status_code == 303 and newsletter_row(app, "daily-briefing")[6] is not None
    refused = client.post("/api/v1/subscriptions",
                          json={"email": "late@example.org", "newsletters": ["daily-briefing"]})
    assert refused.status_code == 422 and "archived" in refused.get_json()["errors"]["newsletters"][0]
    assert client.get("/subscribe/daily-briefing").status_code == 404
    assert query(app, "SELECT count(*) FROM subscriptions")[0][0] == 0
    assert "Make The Briefing active again" in text_of(editor.get("/admin/newsletters/daily-briefing"))

    editor.post("/admin/newsletters/daily-briefing/unarchive", data={"csrf_token": token})
    assert newsletter_row(app, "daily-briefing")[6] is None
    taken = client.post("/api/v1/subscriptions", json={"email": "late@example.org", "newsletters": ["daily-briefing"]})
    assert taken.status_code == 202


def test_the_welcome_text_goes_into_the_welcome_email(app, client, editor, drain, smtp):
    token = token_of(editor)
    saved = editor.post("/admin/newsletters/weekly-explainer", data={
        "csrf_token": token, "name": "The Weekly Explainer", "send_welcome": "y",
        "sender": '"Щотижня, Пояснення" <weekly@Example.org>',
        "welcome_text": "First paragraph.\n\nSecond <paragraph>."})
    assert saved.status_code == 303
    client.post("/api/v1/subscriptions", json={"email": "welcome@example.org", "newsletters": ["weekly-explainer"]})
    drain()
    path = "/" + link_in(smtp.inbox.wait_for(1)[0], "/confirm/").split("/", 3)[3]
    client.post(path, data=hidden_fields(text_of(client.get(path))))
    drain()
    welcome = smtp.inbox.wait_for(2)[1]
    [sender] = welcome["From"].addresses
    assert (sender.display_name, sender.addr_spec) == ("Щотижня, Пояснення", "weekly@example.org")
    assert "First paragraph.\n\nSecond <paragraph>." in welcome.get_body(("plain",)).get_content().replace("\r\n", "\n")
    html = welcome.get_body(("html",)).get_content()
    assert "<p>First paragraph.</p><p>Second &lt;paragraph&gt;.</p>" in html


def test_newsletters_cli_edit_archive_unarchive(app, runner, client):
    added = runner.invoke(args=["newsletters", "add", "evening", "--name", "Evening", "--welcome-text", "Hello"])
    assert added.exit_code == 0, added.output
    assert newsletter_row(app, "evening")[5] == "Hello"

    edited = runner.invoke(args=["newsletters", "edit", "weekly-explainer", "--name", "The Explainer",
                                 "--description", "Deep.", "--author", "", "--sender", "Ex <ex@example.org>",
                                 "--no-welcome", "--welcome-text", "Hi there"])
    assert edited.exit_code == 0, edited.output
    assert "Changed name, description, author, sender, send_welcome, welcome_text of weekly-explainer" in edited.output
    assert newsletter_row(app, "weekly-explainer")[:6] == (
        "The Explainer", "Deep.", None, "Ex <ex@example.org>", False, "Hi there")

    only_name = runner.invoke(args=["newsletters", "edit", "weekly-explainer", "--name", "Explainer"])
    assert only_name.exit_code == 0 and "Changed name of" in only_name.output
    assert newsletter_row(app, "weekly-explainer")[:6] == (
        "Explainer", "Deep.", None, "Ex <ex@example.org>", False, "Hi there")
    same = runner.invoke(args=["newsletters", "edit", "weekly-explainer", "--name", "Explainer"])
    assert "Nothing to change" in same.output

    for args, message in [
        (["edit", "nope", "--name", "X"], "There is no newsletter called 'nope'"),
        (["edit", "weekly-explainer", "--name", " "], "needs a name"),
        (["edit", "weekly-explainer", "--sender", "nobody"], "The sender must be an email address"),
        (["archive", "nope"], "There is no newsletter called 'nope'"),
        (["unarchive", "Bad Slug"], "There is no newsletter called 'Bad Slug'"),
    ]:
        result = runner.invoke(args=["newsletters", *args])
        assert result.exit_code != 0 and message in result.output, (args, result.output)
    assert newsletter_row(app, "weekly-explainer")[0] == "Explainer"

    archived = runner.invoke(args=["newsletters", "archive", "weekly-explainer"])
    assert archived.exit_code == 0 and "Archived weekly-explainer" in archived.output
    assert "archived already" in runner.invoke(args=["newsletters", "archive", "weekly-explainer"]).output
    assert "(archived)" in runner.invoke(args=["newsletters", "list"]).output
    refused = client.post("/api/v1/subscriptions", json={"email": "x@example.org", "newsletters": ["weekly-explainer"]})
    assert refused.status_code == 422
    unarchived = runner.invoke(args=["newsletters", "unarchive", "weekly-explainer"])
    assert unarchived.exit_code == 0 and "active again" in unarchived.output
    assert newsletter_row(app, "weekly-explainer")[6] is None


# --- Readers ------------------------------------------------------------------------------------


def test_reader_search_is_case_insensitive_and_paginated(app, editor):
    with app.app_context():
        db.session.add_all(Reader(email=f"user{n:02}@example.org") for n in range(60))
        db.session.add_all([Reader(email="Ada.Lovelace@example.com"), Reader(email="odd_one@else.net"),
                            Reader(email="oddXone@else.net"), Reader(email="100%@else.net")])
        db.session.commit()
        found = readers.search(db.session, "EXAMPLE.ORG", page=2)
        assert (found.total, found.page, found.pages, len(found.readers)) == (60, 2, 2, 10)
        assert (found.first_number, found.last_number) == (51, 60)
        assert [r.email for r in readers.search(db.session, "lovelace").readers] == ["Ada.Lovelace@example.com"]
        # LIKE's wildcards are plain characters here.
        assert [r.email for r in readers.search(db.session, "_one").readers] == ["odd_one@else.net"]
        assert [r.email for r in readers.search(db.session, "%@").readers] == ["100%@else.net"]
        assert readers.search(db.session, "nul\x00byte").total == 0
        assert readers.search(db.session, "").total == 64
        db.session.remove()

    first = text_of(editor.get("/admin/readers?q=Example.ORG"))
    assert "60 readers whose address contains “Example.ORG”; showing 1–50, newest first." in first
    assert first.count('href="/admin/readers/') == 50
    assert "user59@example.org" in first and "user09@example.org" not in first
    assert 'rel="next" href="/admin/readers?q=Example.ORG&amp;page=2"' in first and 'rel="prev"' not in first
    second = text_of(editor.get("/admin/readers?q=Example.ORG&page=2"))
    assert "showing 51–60" in second and "user00@example.org" in second and "Page 2 of 2" in second
    assert 'rel="prev"' in second and 'rel="next"' not in second
    assert "showing 51–60" in text_of(editor.get("/admin/readers?q=Example.ORG&page=99"))  # the last page
    assert "No reader’s address contains “nobody”." in text_of(editor.get("/admin/readers?q=nobody"))
    assert editor.get("/admin/readers?q=%00").status_code == 422  # text no database can hold
    assert editor.get("/admin/readers?q=" + "x" * 321).status_code == 400
    assert editor.get("/admin/readers?page=abc").status_code == 200


def test_reader_page_shows_subscriptions_and_full_consent_history(app, client, editor, drain, smtp):
    client.post("/api/v1/subscriptions", json={
        "email": "History@Example.org", "name": "Hugo", "newsletters": ["daily-briefing", "weekly-explainer"],
        "page_url": "https://news.example/story", "form_id": "box-1"}, headers={"User-Agent": "TestBrowser/1.0"})
    drain()
    path = "/" + link_in(smtp.inbox.wait_for(1)[0], "/confirm/").split("/", 3)[3]
    client.post(path, data=hidden_fields(text_of(client.get(path))))
    [(reader_id,)] = query(app, "SELECT id FROM readers")

    found = text_of(editor.get("/admin/readers?q=history"))
    assert f'<a href="/admin/readers/{reader_id}">History@example.org</a>' in found
    assert "The Daily Briefing: confirmed" in found
    page = text_of(editor.get(f"/admin/readers/{reader_id}"))
    assert "<h1>History@example.org</h1>" in page and "Hugo" in page
    history = page.split('id="history-heading"', 1)[1]
    rows = re.findall(r"<tr>(.*?)</tr>", history.split("<tbody>", 1)[1], re.S)
    assert len(rows) == 4
    cells = [re.findall(r"<t[hd][^>]*>(.*?)</t[hd]>", row, re.S) for row in rows]
    signup = cells[0]
    assert signup[1] == "signup requested" and signup[3] == "api"
    assert "https://news.example/story" in signup[4] and signup[5] == "box-1"
    assert signup[6] == "127.0.0.1" and "TestBrowser/1.0" in signup[7]
    assert "Send me The Daily Briefing, The Weekly Explainer by email" in signup[8]
    assert sorted(c[2] for c in cells[:2]) == ["The Daily Briefing", "The Weekly Explainer"]
    assert [c[1] for c in cells[2:]] == ["confirmed", "confirmed"] and {c[3] for c in cells[2:]} == {"email-link"}
    assert editor.get("/admin/readers/999999").status_code == 404


def reader_state(app, reader_id: int):
    return {
        "subscriptions": dict(query(app, "SELECT n.slug, s.status FROM subscriptions s JOIN newsletters n "
                                         "ON n.id = s.newsletter_id WHERE s.reader_id = :id", id=reader_id)),
        "events": [tuple(row) for row in query(app, "SELECT action, source, wording FROM consent_events "
                                                    "WHERE reader_id = :id ORDER BY id", id=reader_id)],
        "outbox": [tuple(row) for row in query(app, "SELECT kind, status FROM outbox_messages ORDER BY id")],
        "blocked": query(app, "SELECT blocked_at FROM readers WHERE id = :id", id=reader_id)[0][0] is not None,
    }


def test_admin_unsubscribes_a_reader_from_one_newsletter(app, editor):
    reader_id = add_reader(app, "out@example.org", {"daily-briefing": "confirmed", "weekly-explainer": "pending"})
    newsletter_ids = ids(app)
    token = token_of(editor)
    done = editor.post(f"/admin/readers/{reader_id}/unsubscribe",
                       data={"csrf_token": token, "newsletter_id": newsletter_ids["daily-briefing"]})
    assert done.status_code == 303 and done.headers["Location"].endswith(f"/admin/readers/{reader_id}")
    state = reader_state(app, reader_id)
    assert state["subscriptions"] == {"daily-briefing": "unsubscribed", "weekly-explainer": "pending"}
    assert state["events"] == [("unsubscribed", "admin", f"Unsubscribed by {EDITOR} in the admin")]
    assert "Unsubscribed from The Daily Briefing." in text_of(editor.get(f"/admin/readers/{reader_id}"))

    again = editor.post(f"/admin/readers/{reader_id}/unsubscribe",
                        data={"csrf_token": token, "newsletter_id": newsletter_ids["daily-briefing"]})
    assert again.status_code == 303
    assert "not subscribed to that newsletter" in text_of(editor.get(f"/admin/readers/{reader_id}"))
    assert len(reader_state(app, reader_id)["events"]) == 1
    assert editor.post(f"/admin/readers/{reader_id}/unsubscribe", data={"csrf_token": token}).status_code == 400
    assert editor.post(f"/admin/readers/{reader_id}/unsubscribe",
                       data={"csrf_token": token, "newsletter_id": "x"}).status_code == 400


def test_admin_resends_the_confirmation_email_whatever_the_interval(app, client, editor, drain, smtp):
    client.post("/api/v1/subscriptions", json={"email": "slow@example.org", "newsletters": ["daily-briefing"]})
    drain()
    smtp.inbox.wait_for(1)
    [(reader_id, first_sent)] = query(app, "SELECT id, confirmation_sent_at FROM readers")
    # A public signup now would send nothing: the resend interval has not passed.
    client.post("/api/v1/subscriptions", json={"email": "slow@example.org", "newsletters": ["daily-briefing"]})
    assert query(app, "SELECT count(*) FROM outbox_messages")[0][0] == 1

    done = editor.post(f"/admin/readers/{reader_id}/resend", data={"csrf_token": token_of(editor)})
    assert done.status_code == 303
    flashed = text_of(editor.get(done.headers["Location"]))
    assert "new confirmation email is on its way for The Daily Briefing" in flashed
    drain()
    first, second = smtp.inbox.wait_for(2)
    assert second["To"].addresses[0].addr_spec == "slow@example.org"
    assert second["Subject"] == first["Subject"] == "Confirm your subscription to The Daily Briefing"
    link_in(second, "/confirm/")
    state = reader_state(app, reader_id)
    assert state["events"][-1] == ("confirmation_resent", "admin", f"Confirmation resent by {EDITOR} in the admin")
    assert query(app, "SELECT confirmation_sent_at FROM readers")[0][0] != first_sent

    confirmed = add_reader(app, "done@example.org", {"daily-briefing": "confirmed"})
    editor.post(f"/admin/readers/{confirmed}/resend", data={"csrf_token": token_of(editor)})
    assert "no pending subscription" in text_of(editor.get(f"/admin/readers/{confirmed}"))
    assert query(app, "SELECT count(*) FROM outbox_messages")[0][0] == 2


def test_blocked_address_signups_are_answered_but_store_and_send_nothing(app, client, editor, drain, smtp):
    client.post("/api/v1/subscriptions", json={"email": "spam@example.org", "newsletters": ["daily-briefing"]})
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    token = token_of(editor)
    blocked = editor.post(f"/admin/readers/{reader_id}/block", data={"csrf_token": token})
    assert blocked.status_code == 303
    state = reader_state(app, reader_id)
    assert state["blocked"] and state["subscriptions"] == {"daily-briefing": "unsubscribed"}
    # The block puts the address on the suppression list: the changes feed's reader.suppressed (changes.py).
    assert [e[:2] for e in state["events"]] == [("signup_requested", "api"), ("unsubscribed", "admin"),
                                                ("blocked", "admin"), ("suppressed", "admin")]
    assert state["events"][-1][2] == "blocked"
    assert state["outbox"] == [("confirmation", "failed")]  # the unsent confirmation never leaves
    page = text_of(editor.get(f"/admin/readers/{reader_id}"))
    assert "Blocked: signups from this address are ignored" in page and "Unblock this address" in page

    before = snapshot(app)
    answer = client.post("/api/v1/subscriptions", json={
        "email": "spam@EXAMPLE.org", "name": "New Name", "newsletters": ["daily-briefing", "weekly-explainer"]})
    assert answer.status_code == 202 and answer.get_json() == {"status": "pending"}
    form = client.get("/subscribe")
    hosted = client.post("/subscribe", data={**hidden_fields(text_of(form)), "email": "spam@example.org",
                                             "newsletters": ["weekly-explainer"]})
    assert hosted.status_code == 303 and hosted.headers["Location"].endswith("/thanks")
    # Nor can an old preferences link join anything (leaving stays possible).
    with app.app_context():
        preferences = f"/preferences/{tokens.preferences_token(reader_id)}"
    page = client.get(preferences)
    client.post(preferences, data={**hidden_fields(text_of(page)), "newsletters": [str(ids(app)["daily-briefing"])]})
    assert snapshot(app) == before
    assert drain().sent == 0 and smtp.inbox.messages == []

    assert "blocked already" in text_of(editor.get(
        editor.post(f"/admin/readers/{reader_id}/block", data={"csrf_token": token}).headers["Location"]))
    unblocked = editor.post(f"/admin/readers/{reader_id}/unblock", data={"csrf_token": token})
    assert unblocked.status_code == 303
    state = reader_state(app, reader_id)
    # Its `blocked` entry is lifted with it: the changes feed's reader.unsuppressed (the reason as wording).
    assert not state["blocked"] and [e[:2] for e in state["events"][-2:]] == [
        ("unblocked", "admin"), ("unsuppressed", "admin")]
    assert state["events"][-1][2] == "blocked"
    with app.app_context():  # the resend interval since the first signup has passed
        db.session.execute(sa.text("UPDATE readers SET confirmation_sent_at = NULL"))
        db.session.commit()
        db.session.remove()
    client.post("/api/v1/subscriptions", json={"email": "spam@example.org", "newsletters": ["daily-briefing"]})
    assert reader_state(app, reader_id)["subscriptions"] == {"daily-briefing": "pending"}
    drain()
    assert len(smtp.inbox.wait_for(1)) == 1


# --- Who may change what ------------------------------------------------------------------------


def changing_requests(app) -> list[tuple[str, dict]]:
    """Every POST of the admin forms built here, with valid data."""
    reader_id = add_reader(app, "target@example.org", {"daily-briefing": "pending", "weekly-explainer": "confirmed"})
    newsletter_ids = ids(app)
    return [
        ("/admin/newsletters/new", NEW),
        ("/admin/newsletters/daily-briefing", {"name": "Renamed", "description": "x"}),
        ("/admin/newsletters/daily-briefing/archive", {}),
        ("/admin/newsletters/daily-briefing/unarchive", {}),
        (f"/admin/readers/{reader_id}/unsubscribe", {"newsletter_id": newsletter_ids["weekly-explainer"]}),
        (f"/admin/readers/{reader_id}/resend", {}),
        (f"/admin/readers/{reader_id}/block", {}),
        (f"/admin/readers/{reader_id}/unblock", {}),
    ]


def test_every_admin_form_refuses_a_post_without_csrf_token(app, editor):
    requests = changing_requests(app)
    with app.app_context():  # unarchive and unblock must have something to undo
        db.session.execute(sa.text("UPDATE newsletters SET archived_at = CURRENT_TIMESTAMP WHERE slug = 'no-welcome'"))
        db.session.commit()
        db.session.remove()
    requests.append(("/admin/newsletters/no-welcome/unarchive", {}))
    before = snapshot(app)
    for path, data in requests:
        response = editor.post(path, data=data)
        assert response.status_code == 400, path
        assert "reload the page" in text_of(response)
        forged = editor.post(path, data={**data, "csrf_token": "forged"})
        assert forged.status_code == 400, path
    assert snapshot(app) == before


def test_a_viewer_sees_every_page_and_changes_nothing(app, viewer, editor):
    requests = changing_requests(app)
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    token = token_of(viewer)
    before = snapshot(app)
    for path, data in requests:
        response = viewer.post(path, data={**data, "csrf_token": token})
        assert response.status_code == 403, path
        assert "not change anything" in text_of(response)
    assert viewer.get("/admin/newsletters/new").status_code == 403
    assert snapshot(app) == before

    for path in ["/admin/", "/admin/?newsletter=weekly-explainer", "/admin/newsletters",
                 "/admin/newsletters/daily-briefing", "/admin/readers", "/admin/readers?q=target",
                 f"/admin/readers/{reader_id}"]:
        page = viewer.get(path)
        assert page.status_code == 200, path
        html = text_of(page)
        assert "<button" not in html.replace('<button type="submit">Log out</button>', "").replace(
            '<button type="submit">Show</button>', "").replace('<button type="submit">Search</button>', ""), path
    newsletter = text_of(viewer.get("/admin/newsletters/daily-briefing"))
    assert "The day&#39;s news every morning." in newsletter and "can look and export" in newsletter
    assert "Add a newsletter" not in text_of(viewer.get("/admin/newsletters"))
    # The editor, with the same requests, does change things: the guard is the role, not the request.
    assert editor.post(requests[1][0], data={**requests[1][1], "csrf_token": token_of(editor)}).status_code == 303


# --- Pages a screen reader can use --------------------------------------------------------------


class PageStructure(HTMLParser):
    """What the accessibility checks need: controls and their labels, headings, table headers, images."""

    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.duplicate_ids: list[str] = []
        self.label_for: set[str] = set()
        self.controls: list[dict] = []
        self.headings: list[int] = []
        self.tables = 0
        self.header_cells: list[dict] = []
        self.svgs: list[dict] = []
        self.buttons_without_text = 0
        self._label_depth = 0
        self._button: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list) -> None:
        attributes = dict(attrs)
        if "id" in attributes:
            if attributes["id"] in self.ids:
                self.duplicate_ids.append(attributes["id"])
            self.ids.add(attributes["id"])
        if tag == "label":
            self._label_depth += 1
            if attributes.get("for"):
                self.label_for.add(attributes["for"])
        elif tag in ("input", "select", "textarea") and attributes.get("type") != "hidden":
            self.controls.append({**attributes, "_wrapped": self._label_depth > 0})
        elif re.fullmatch(r"h[1-6]", tag):
            self.headings.append(int(tag[1]))
        elif tag == "table":
            self.tables += 1
        elif tag == "th":
            self.header_cells.append(attributes)
        elif tag == "svg":
            self.svgs.append(attributes)
        elif tag == "button":
            self._button = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "label":
            self._label_depth -= 1
        elif tag == "button" and self._button is not None:
            if not "".join(self._button).strip():
                self.buttons_without_text += 1
            self._button = None

    def handle_data(self, data: str) -> None:
        if self._button is not None:
            self._button.append(data)


def test_admin_pages_are_accessible(app, editor, viewer):
    reader_id = add_reader(app, "a11y@example.org", {"daily-briefing": "pending", "weekly-explainer": "confirmed"})
    add_events(app, reader_id, [{"action": "signup_requested", "newsletter": "daily-briefing",
                                 "page_url": "https://news.example/x", "occurred_at": utcnow()}])
    invalid = editor.post("/admin/newsletters/new", data={**NEW, "slug": "Bad", "csrf_token": token_of(editor)})
    pages = {"invalid new-newsletter form": text_of(invalid)}
    for client in (editor, viewer):
        for path in ["/admin/", "/admin/newsletters", "/admin/newsletters/daily-briefing", "/admin/readers",
                     f"/admin/readers/{reader_id}"] + (["/admin/newsletters/new"] if client is editor else []):
            response = client.get(path)
            assert response.status_code == 200, path
            pages[f"{path} ({'editor' if client is editor else 'viewer'})"] = text_of(response)

    for name, html in pages.items():
        page = PageStructure()
        page.feed(html)
        assert '<html lang="en">' in html, name
        assert not page.duplicate_ids, (name, page.duplicate_ids)
        for control in page.controls:
            labelled = control["_wrapped"] or control.get("id") in page.label_for or control.get("aria-label")
            assert labelled, (name, control)
            for described in (control.get("aria-describedby") or "").split():
                assert described in page.ids, (name, control, described)
        assert page.headings and page.headings[0] == 1 and page.headings.count(1) == 1, (name, page.headings)
        assert all(b - a <= 1 for a, b in zip(page.headings, page.headings[1:])), (name, page.headings)
        if page.tables:
            assert page.header_cells and all(cell.get("scope") in ("col", "row") for cell in page.header_cells), name
        for svg in page.svgs:
            assert svg.get("role") == "img" and all(i in page.ids for i in svg["aria-labelledby"].split()), name
        assert page.buttons_without_text == 0, name
    assert "Unsubscribe<span class=\"visually-hidden\"> from The Weekly Explainer</span>" in pages[
        f"/admin/readers/{reader_id} (editor)"]
