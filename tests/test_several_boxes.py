"""Several signup boxes on one article page: every newsletter a reader asks for reaches them in a confirmation email.

The page is the one in ../shared/seed/article-page.txt: ten boxes, one per newsletter, each an iframe
form that thanks with "We've sent you a confirmation email." A reader who fills in one box and then
another must get an email naming the second newsletter too, at once, while a request repeated
within NEWSLETTER_CONFIRM_RESEND_INTERVAL sends nothing more. Checked as a reader sees it: the
answers, the emails a real SMTP server receives, and what their links do.
"""

from __future__ import annotations

import html
import threading
import time
from email.message import EmailMessage

import requests
import sqlalchemy as sa

from newsletter import accounts, catalog
from newsletter import config as settings
from newsletter.extensions import db, limiter
from newsletter.models import utcnow

from .conftest import hidden_fields, link_in, query
from .test_admin_auth import PASSWORD, log_in

ARTICLE = "https://news.example/north-korean-troops-open-fire-on-russian-unit"
THANKS = "Thank you for signing up for this newsletter. We've sent you a confirmation email."
READER = "reader@example.org"

# The ten boxes: the three newsletters every test database has, and seven more.
MORE_NEWSLETTERS = [
    ("ukraine-daily", "Ukraine Daily", None),
    ("explaining-ukraine", "Explaining Ukraine", "Kate Tsurkan"),
    ("business-ukraine", "Business Ukraine", None),
    ("culture-digest", "Culture Digest", None),
    ("investigations", "Investigations", None),
    ("reconstruction", "Reconstruction Weekly", None),
    ("editors-picks", "Editors' Picks", None),
]
NAMES = {
    "daily-briefing": "The Daily Briefing", "weekly-explainer": "The Weekly Explainer", "no-welcome": "Quiet Letter",
    **{slug: name for slug, name, _ in MORE_NEWSLETTERS},
}
BOXES = ["daily-briefing", "weekly-explainer", "no-welcome", *(slug for slug, _, _ in MORE_NEWSLETTERS)]


def add_newsletters(app) -> None:
    with app.app_context():
        for slug, name, author in MORE_NEWSLETTERS:
            catalog.add_newsletter(db.session, slug, name=name, author=author)
        db.session.commit()
        db.session.remove()


def fill_in_box(client, slug: str, email: str = READER) -> None:
    """The reader types their address into the article's box for `slug` and presses Subscribe."""
    frame = client.get(f"/embed/{slug}", query_string={"page": ARTICLE, "form_id": f"{slug}-box"})
    assert frame.status_code == 200
    answer = client.post(f"/embed/{slug}", data={**hidden_fields(frame.text), "email": email})
    assert answer.status_code == 200
    assert THANKS in html.unescape(answer.get_data(as_text=True))


def named_in(message: EmailMessage) -> set[str]:
    """The newsletters a confirmation email asks the reader to confirm."""
    body = message.get_body(("plain",)).get_content()
    return {name for name in NAMES.values() if f"  - {name}" in body}


def confirmations_to(smtp, address: str = READER) -> list[EmailMessage]:
    return [m for m in smtp.inbox.messages
            if m["To"].addresses[0].addr_spec == address and str(m["Subject"]).startswith("Confirm")]


def statuses(app, address: str = READER) -> dict[str, str]:
    return dict(query(app, "SELECT n.slug, s.status FROM subscriptions s JOIN newsletters n ON n.id = s.newsletter_id "
                           "JOIN readers r ON r.id = s.reader_id WHERE r.email = :address", address=address))


def press_confirm(client, message: EmailMessage) -> str:
    """Open the email's link and press its button; the page's text."""
    link = link_in(message, "/confirm/")
    assert client.get(link).status_code == 200
    done = client.post(link)
    assert done.status_code == 200
    return html.unescape(done.get_data(as_text=True))


def resend_interval_passes(app, address: str = READER) -> None:
    """Move the reader's last confirmation email back past NEWSLETTER_CONFIRM_RESEND_INTERVAL."""
    with app.app_context():
        db.session.execute(sa.text("UPDATE readers SET confirmation_sent_at = :long_ago WHERE email = :address"),
                           {"long_ago": "2000-01-01 00:00:00", "address": address})
        db.session.commit()
        db.session.remove()


def test_every_box_on_the_article_page_gets_its_newsletter_into_a_confirmation_email(app, client, smtp, drain):
    add_newsletters(app)
    for number, slug in enumerate(BOXES, start=1):
        fill_in_box(client, slug)
        drain()
        emails = confirmations_to(smtp)
        # One email per box, at once, naming every newsletter asked for so far.
        assert len(emails) == number
        assert named_in(emails[-1]) == {NAMES[box] for box in BOXES[:number]}
    assert set(statuses(app).values()) == {"pending"} and len(statuses(app)) == 10

    # The last email's one link confirms all ten.
    last = confirmations_to(smtp)[-1]
    assert "Confirm your subscription to 10 newsletters" == last["Subject"]
    assert "Subscription confirmed" in press_confirm(client, last)
    assert statuses(app) == dict.fromkeys(BOXES, "confirmed")
    drain()
    welcomes = {str(m["Subject"]) for m in smtp.inbox.messages if str(m["Subject"]).startswith("Welcome")}
    assert welcomes == {f"Welcome to {NAMES[slug]}" for slug in BOXES if slug != "no-welcome"}

    # A box filled in again by a subscribed reader sends nothing (and says the same).
    fill_in_box(client, "ukraine-daily")
    assert drain().sent == 0


def test_the_default_per_address_limit_lets_a_reader_fill_in_every_box(app, client, smtp, drain, instance_dir):
    # The shipped defaults, not the tests' generous ones.
    app.config["NEWSLETTER_RATE_LIMIT_EMAIL"] = settings.load(instance_dir, {})["NEWSLETTER_RATE_LIMIT_EMAIL"]
    limiter.reset()
    add_newsletters(app)
    for slug in BOXES:
        fill_in_box(client, slug)
    drain()
    # Filled in before the sender ran: one email, naming all ten (the earlier ones are superseded).
    [email] = confirmations_to(smtp)
    assert named_in(email) == {NAMES[box] for box in BOXES}
    # Past every box of the page, the address's budget is spent.
    frame = client.get("/embed/daily-briefing")
    refused = client.post("/embed/daily-briefing", data={**hidden_fields(frame.text), "email": READER})
    assert refused.status_code == 429


def test_a_box_filled_in_again_sends_nothing_more_until_the_resend_interval_has_passed(app, client, smtp, drain):
    fill_in_box(client, "daily-briefing")
    fill_in_box(client, "daily-briefing")  # the same request again: it was in the email already
    fill_in_box(client, "weekly-explainer")
    fill_in_box(client, "daily-briefing")  # both were in an email already
    fill_in_box(client, "weekly-explainer")
    drain()
    # Two were queued (Daily, then Daily and Weekly); before the sender ran: only the second leaves.
    [first] = confirmations_to(smtp)
    assert named_in(first) == {"The Daily Briefing", "The Weekly Explainer"}

    resend_interval_passes(app)
    fill_in_box(client, "daily-briefing")
    fill_in_box(client, "daily-briefing")
    drain()
    *_, resent = confirmations_to(smtp)
    assert len(confirmations_to(smtp)) == 2
    assert named_in(resent) == {"The Daily Briefing", "The Weekly Explainer"}
    # Each link still confirms what it names: here the first, older one.
    press_confirm(client, first)
    assert statuses(app) == {"daily-briefing": "confirmed", "weekly-explainer": "confirmed"}


def test_signing_up_again_after_unsubscribing_sends_a_new_email_at_once(app, client, smtp, drain):
    fill_in_box(client, "daily-briefing")
    drain()
    [confirmation] = confirmations_to(smtp)
    press_confirm(client, confirmation)
    drain()
    [welcome] = [m for m in smtp.inbox.messages if str(m["Subject"]).startswith("Welcome")]
    assert client.post(link_in(welcome, "/unsubscribe/"), data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert statuses(app) == {"daily-briefing": "unsubscribed"}

    # A minute later, within the resend interval of the first email, the reader changes their mind.
    fill_in_box(client, "daily-briefing")
    drain()
    _, new = confirmations_to(smtp)
    assert named_in(new) == {"The Daily Briefing"}
    assert "Subscription confirmed" in press_confirm(client, new)
    assert statuses(app) == {"daily-briefing": "confirmed"}


def test_a_newsletter_archived_while_pending_is_left_out_of_the_next_email(app, client, smtp, drain):
    fill_in_box(client, "weekly-explainer")
    with app.app_context():
        catalog.archive(catalog.get_newsletter(db.session, "weekly-explainer"))
        db.session.commit()
        db.session.remove()
    fill_in_box(client, "daily-briefing")
    drain()
    # The first email would have named only the archived one: it is not sent.
    [only] = confirmations_to(smtp)
    assert named_in(only) == {"The Daily Briefing"}


def make_pending_unmailed(app, slug: str, address: str = READER) -> None:
    """A pending subscription no email ever named: what the old resend rule left behind (migration 0006 keeps it so)."""
    with app.app_context():
        db.session.execute(sa.text(
            "INSERT INTO subscriptions (reader_id, newsletter_id, status, created_at, pending_since) "
            "SELECT r.id, n.id, 'pending', :now, :now FROM readers r, newsletters n "
            "WHERE r.email = :address AND n.slug = :slug"), {"now": utcnow(), "address": address, "slug": slug})
        db.session.commit()
        db.session.remove()


def test_a_newsletter_left_unmailed_before_the_upgrade_is_mailed_at_the_next_signup_or_an_admins_resend(
        app, client, smtp, drain):
    add_newsletters(app)
    fill_in_box(client, "daily-briefing")
    make_pending_unmailed(app, "weekly-explainer")
    fill_in_box(client, "daily-briefing")  # within the resend interval, but Weekly was never mailed
    drain()
    # The first (Daily only) was superseded by the second before the sender ran.
    assert [named_in(m) for m in confirmations_to(smtp)] == [{"The Daily Briefing", "The Weekly Explainer"}]

    make_pending_unmailed(app, "culture-digest")
    with app.app_context():
        accounts.create_admin(db.session, "editor@example.org", PASSWORD, "admin")
        db.session.commit()
        db.session.remove()
    editor = app.test_client()
    assert log_in(editor, "editor@example.org", PASSWORD).status_code == 303
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    token = hidden_fields(editor.get("/admin/newsletters").get_data(as_text=True))["csrf_token"]
    assert editor.post(f"/admin/readers/{reader_id}/resend", data={"csrf_token": token}).status_code == 303
    # The resend named Culture Digest: the reader's own signup for it now sends nothing more.
    fill_in_box(client, "culture-digest")
    drain()
    *_, resent = confirmations_to(smtp)
    assert len(confirmations_to(smtp)) == 2
    assert named_in(resent) == {"The Daily Briefing", "The Weekly Explainer", "Culture Digest"}


def test_two_boxes_sent_at_the_same_moment_both_reach_the_reader(app, live_server, smtp):
    """Over real HTTP, the JSON API as embed.js calls it: the two requests meet in the database."""
    for attempt in range(5):
        address = f"both{attempt}@example.org"
        start = threading.Barrier(2)
        answers: list[int] = []

        def submit(slug: str, address: str = address, start: threading.Barrier = start) -> None:
            start.wait()
            answers.append(requests.post(f"{live_server}/api/v1/subscriptions", timeout=10, json={
                "email": address, "newsletters": [slug], "page_url": ARTICLE}).status_code)

        threads = [threading.Thread(target=submit, args=(slug,)) for slug in ("daily-briefing", "weekly-explainer")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert answers == [202, 202]
        assert statuses(app, address) == {"daily-briefing": "pending", "weekly-explainer": "pending"}
        arrived = wait_for_confirmations(smtp, address, sent_when_done(app, address))
        # Whichever came first, the last email names both, and its link confirms both.
        assert named_in(arrived[-1]) == {"The Daily Briefing", "The Weekly Explainer"}
        assert "Subscription confirmed" in requests.post(link_in(arrived[-1], "/confirm/"), timeout=10).text
        assert statuses(app, address) == {"daily-briefing": "confirmed", "weekly-explainer": "confirmed"}


def sent_when_done(app, address: str) -> int:
    """How many emails to `address` were sent once the in-process drainer has handled all (some may be superseded)."""
    deadline = time.monotonic() + 15
    sql = ("SELECT o.status FROM outbox_messages o JOIN readers r ON r.id = o.reader_id "
           "WHERE r.email = :address")
    while "pending" in {status for (status,) in query(app, sql, address=address)} and time.monotonic() < deadline:
        time.sleep(0.1)
    statuses_now = [status for (status,) in query(app, sql, address=address)]
    assert "pending" not in statuses_now, statuses_now
    return statuses_now.count("sent")


def wait_for_confirmations(smtp, address: str, count: int) -> list[EmailMessage]:
    """The `count` confirmation emails to `address`, once the in-process drainer has sent them."""
    deadline = time.monotonic() + 15
    while len(confirmations_to(smtp, address)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    found = confirmations_to(smtp, address)
    assert len(found) == count, f"expected {count} confirmation emails to {address}, got {len(found)}"
    return found
