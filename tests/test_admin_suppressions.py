"""The admin's suppression list: search, filter, add, lift (admins; viewers read), the reader's page showing its
suppression and bounces, and the dashboard counting bounces and complaints per day. SQLite and PostgreSQL."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from newsletter import suppressions
from newsletter.extensions import db
from newsletter.models import utcnow

from .conftest import hidden_fields, query
from .test_admin import EDITOR, admins, editor, text_of, viewer  # noqa: F401 (fixtures)


def record(app, address: str, kind: str = "hard_bounce", provider: str = "ses", diagnostic: str | None = None,
           occurred_at=None) -> None:
    with app.app_context():
        suppressions.record_event(db.session, app.config, address, kind=kind, provider=provider,
                                  diagnostic=diagnostic, occurred_at=occurred_at)
        db.session.commit()
        db.session.remove()


def sign_up(client, address: str) -> None:
    assert client.post("/api/v1/subscriptions", json={"email": address, "newsletters": ["daily-briefing"]}
                       ).status_code == 202


def listed(page: str) -> list[str]:
    """The addresses in the list's table, in order."""
    table = page.split("<tbody>", 1)[1].split("</tbody>", 1)[0] if "<tbody>" in page else ""
    return re.findall(r'<th scope="row"><a href="/admin/suppressions/\d+">([^<]+)</a></th>', table)


def post_form(client, page_url: str, action: str, **fields):
    page = client.get(page_url).get_data(as_text=True)
    return client.post(action, data={**hidden_fields(page), **fields})


def test_the_list_newest_first_filtered_by_reason_and_found_by_address(app, editor):  # noqa: F811
    record(app, "first@example.org", diagnostic="550 5.1.1 user unknown")
    record(app, "Second@Example.org", kind="complaint", provider="postmark")
    with app.app_context():
        suppressions.suppress(db.session, app.config, None, key=suppressions.address_key(app.config, "gone@example.org"),
                              reason="erased", source="erasure")
        db.session.commit()
        db.session.remove()

    page = text_of(editor.get("/admin/suppressions"))
    assert '<a href="/admin/suppressions">Suppression list</a>' in page  # in the navigation
    assert listed(page) == ["Erased reader (no address kept)", "Second@Example.org", "first@example.org"]
    assert "550 5.1.1 user unknown" in page and "postmark" in page
    assert "3 entries; showing 1–3, newest first." in page

    assert listed(text_of(editor.get("/admin/suppressions?reason=complaint"))) == ["Second@Example.org"]
    # Exact address search: by its key (any case), or as written.
    assert listed(text_of(editor.get("/admin/suppressions?q=SECOND@example.ORG"))) == ["Second@Example.org"]
    assert listed(text_of(editor.get("/admin/suppressions?q=gone@example.org"))) == ["Erased reader (no address kept)"]
    assert listed(text_of(editor.get("/admin/suppressions?q=example.org"))) == []  # no fragment search
    for bad in ("?reason=nope", "?state=all", "?q=" + "a" * 321):
        answer = editor.get("/admin/suppressions" + bad)
        assert answer.status_code == 400, bad


def test_the_list_is_paginated(app, editor, monkeypatch):  # noqa: F811
    from newsletter import suppression_list

    monkeypatch.setattr(suppression_list, "PAGE_SIZE", 2)
    start = utcnow()
    with app.app_context():
        for number in range(5):
            suppressions.suppress(db.session, app.config, f"r{number}@example.org", reason="manual", source="admin",
                                  when=start + timedelta(seconds=number))
        db.session.commit()
        db.session.remove()
    first = text_of(editor.get("/admin/suppressions"))
    assert listed(first) == ["r4@example.org", "r3@example.org"]
    assert "Page 1 of 3" in first and 'rel="next" href="/admin/suppressions?state=in_force&amp;page=2"' in first
    assert listed(text_of(editor.get("/admin/suppressions?page=3"))) == ["r0@example.org"]
    assert listed(text_of(editor.get("/admin/suppressions?page=99"))) == ["r0@example.org"]  # the last page


def test_an_admin_adds_an_address_and_it_stops_signups(app, editor, client):  # noqa: F811
    answer = post_form(editor, "/admin/suppressions", "/admin/suppressions", address=" Asked.Us@Example.ORG ",
                       note="Asked by phone not to be mailed.")
    assert answer.status_code == 303
    entry_page = text_of(editor.get(answer.headers["Location"]))
    assert "Asked.Us@example.org" in entry_page and "Added by an admin" in entry_page
    assert "Asked by phone not to be mailed." in entry_page and EDITOR in entry_page
    assert query(app, "SELECT reason, source, email FROM suppressions") == [("manual", "admin", "Asked.Us@example.org")]

    sign_up(client, "asked.us@example.org")
    assert query(app, "SELECT count(*) FROM readers") == [(0,)]

    again = post_form(editor, "/admin/suppressions", "/admin/suppressions", address="asked.us@example.org")
    assert "was on the list already" in text_of(editor.get(again.headers["Location"]))
    assert query(app, "SELECT count(*) FROM suppressions") == [(1,)]


@pytest.mark.parametrize("address, why", [
    ("", "Enter your email address."),
    ("   ", "Enter your email address."),
    ("not an address", "An email address must have an @-sign."),
    ("a@@example.org", "invalid characters"),
    ("x" * 400 + "@example.org", "That email address is too long."),
])
def test_a_bad_address_is_refused_with_an_error_summary_linked_to_the_field(app, editor, address, why):  # noqa: F811
    answer = post_form(editor, "/admin/suppressions", "/admin/suppressions", address=address, note="n")
    assert answer.status_code == 422
    page = text_of(answer)
    assert 'role="alert"' in page and '<a href="#address">' in page and why in page
    assert 'id="address"' in page and 'aria-invalid="true"' in page and "address-error" in page
    assert query(app, "SELECT count(*) FROM suppressions") == [(0,)]


def test_nul_bytes_change_nothing(app, editor):  # noqa: F811
    page = text_of(editor.get("/admin/suppressions"))
    token = hidden_fields(page)["csrf_token"]
    for raw in (b"address=a@b%00.org", b"address=a@b.org&note=why%00"):
        answer = editor.post("/admin/suppressions", data=b"csrf_token=" + token.encode() + b"&" + raw,
                             content_type="application/x-www-form-urlencoded")
        assert answer.status_code == 422, raw
    assert editor.get("/admin/suppressions?q=%00x").status_code == 422  # the app's answer to a NUL anywhere
    assert query(app, "SELECT count(*) FROM suppressions") == [(0,)]


def test_an_admin_lifts_an_entry_with_a_note_and_it_shows_under_lifted(app, editor, client):  # noqa: F811
    record(app, "back@example.org", kind="complaint")
    [(entry_id,)] = query(app, "SELECT id FROM suppressions")
    url = f"/admin/suppressions/{entry_id}"

    no_note = post_form(editor, url, f"{url}/lift", note="   ")
    assert no_note.status_code == 422 and "Say why, for the record." in text_of(no_note)
    assert '<a href="#note">' in text_of(no_note)
    assert query(app, "SELECT lifted_at FROM suppressions") == [(None,)]

    lifted = post_form(editor, url, f"{url}/lift", note="Wrote to us: the complaint was a slip.")
    assert lifted.status_code == 303
    assert "can be mailed again" in text_of(editor.get(lifted.headers["Location"]))
    [(note, by)] = query(app, "SELECT s.lift_note, a.email FROM suppressions s JOIN admin_users a ON a.id = s.lifted_by_id")
    assert (note, by) == ("Wrote to us: the complaint was a slip.", EDITOR)

    assert listed(text_of(editor.get("/admin/suppressions"))) == []
    under_lifted = text_of(editor.get("/admin/suppressions?state=lifted"))
    assert listed(under_lifted) == ["back@example.org"] and "the complaint was a slip" in under_lifted

    twice = post_form(editor, url, f"{url}/lift", note="again")
    assert twice.status_code == 303 and "lifted already" in text_of(editor.get(twice.headers["Location"]))
    assert editor.post("/admin/suppressions/999999/lift", data=hidden_fields(text_of(editor.get(url))) | {
        "note": "x"}).status_code == 404

    sign_up(client, "back@example.org")  # mailed again
    assert query(app, "SELECT count(*) FROM outbox_messages") == [(1,)]


def test_lifting_a_blocked_entry_unblocks_the_reader(app, editor, client):  # noqa: F811
    sign_up(client, "blocked@example.org")
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    reader_url = f"/admin/readers/{reader_id}"
    assert post_form(editor, reader_url, f"{reader_url}/block").status_code == 303
    [(entry_id,)] = query(app, "SELECT id FROM suppressions WHERE reason = 'blocked'")
    reader_page = text_of(editor.get(reader_url))
    assert f'href="/admin/suppressions/{entry_id}">Suppressed since' in reader_page

    url = f"/admin/suppressions/{entry_id}"
    assert post_form(editor, url, f"{url}/lift", note="Blocked by mistake.").status_code == 303
    assert query(app, "SELECT blocked_at FROM readers") == [(None,)]
    assert query(app, "SELECT lift_note FROM suppressions") == [("Blocked by mistake.",)]


def test_a_viewer_reads_the_list_but_gets_no_forms_and_403_on_changes(app, viewer):  # noqa: F811
    record(app, "seen@example.org")
    [(entry_id,)] = query(app, "SELECT id FROM suppressions")
    page = text_of(viewer.get("/admin/suppressions"))
    assert listed(page) == ["seen@example.org"]
    assert "Add an address" not in page and 'action="/admin/suppressions"' not in page.split('role="search"')[1]
    entry = text_of(viewer.get(f"/admin/suppressions/{entry_id}"))
    assert "Lift this entry" not in entry
    token = hidden_fields(entry).get("csrf_token") or hidden_fields(page)["csrf_token"]
    assert viewer.post("/admin/suppressions", data={"csrf_token": token, "address": "x@example.org"}
                       ).status_code == 403
    assert viewer.post(f"/admin/suppressions/{entry_id}/lift", data={"csrf_token": token, "note": "x"}
                       ).status_code == 403
    assert query(app, "SELECT count(*), count(lifted_at) FROM suppressions") == [(1, 0)]


def test_changes_need_the_csrf_token(app, editor):  # noqa: F811
    record(app, "kept@example.org")
    [(entry_id,)] = query(app, "SELECT id FROM suppressions")
    assert editor.post("/admin/suppressions", data={"address": "x@example.org"}).status_code == 400
    assert editor.post(f"/admin/suppressions/{entry_id}/lift", data={"note": "x"}).status_code == 400
    assert query(app, "SELECT count(*), count(lifted_at) FROM suppressions") == [(1, 0)]


def test_the_readers_page_shows_its_suppression_bounces_and_complaints(app, editor, client):  # noqa: F811
    sign_up(client, "Troubled@Example.org")
    [(reader_id,)] = query(app, "SELECT id FROM readers")
    quiet = text_of(editor.get(f"/admin/readers/{reader_id}"))
    assert "Not suppressed" in quiet and "Bounces and complaints" in quiet and "None recorded." in quiet
    assert "Resend the confirmation email" in quiet

    record(app, "troubled@example.org", kind="soft_bounce", provider="mailgun", diagnostic="452 4.2.2 Mailbox full")
    record(app, "TROUBLED@example.org", kind="complaint", provider="sendgrid", diagnostic="<script>x</script>")
    page = text_of(editor.get(f"/admin/readers/{reader_id}"))
    [(entry_id,)] = query(app, "SELECT id FROM suppressions")
    assert f'<a href="/admin/suppressions/{entry_id}">Suppressed since' in page
    assert "complaint (reported as spam)" in page and "nothing is sent to this address" in page
    events = page.split('id="events-heading"', 1)[1].split("</table>", 1)[0]
    assert events.index("Complaint") < events.index("Soft bounce")  # newest first
    assert "mailgun" in events and "452 4.2.2 Mailbox full" in events
    assert "&lt;script&gt;x&lt;/script&gt;" in events and "<script>x" not in page
    assert "Resend the confirmation email" not in page  # it would send nothing


def test_the_dashboard_counts_bounces_and_complaints_per_day_beside_signups(app, editor):  # noqa: F811
    now = utcnow()
    today, two_days_ago = now.date(), (now - timedelta(days=2)).date()
    record(app, "a@example.org", occurred_at=now)
    record(app, "b@example.org", kind="soft_bounce", occurred_at=now)
    record(app, "c@example.org", kind="complaint", occurred_at=now - timedelta(days=2))
    record(app, "d@example.org", occurred_at=now - timedelta(days=95))  # too old to show

    page = text_of(editor.get("/admin/"))
    table = page.split('id="daily-numbers"', 1)[1].split("</table>", 1)[0]
    assert "<th scope=\"col\" class=\"num\">Bounces</th><th scope=\"col\" class=\"num\">Complaints</th>" in table
    rows = {day: (int(b), int(c)) for day, b, c in re.findall(
        r'<time datetime="([\d-]+)">[\d-]+</time></th><td class="num">\d+</td><td class="num">\d+</td>'
        r'<td class="num">(\d+)</td><td class="num">(\d+)</td>', table)}
    assert len(rows) == 90
    assert rows[today.isoformat()] == (2, 0) and rows[two_days_ago.isoformat()] == (0, 1)
    assert sum(b for b, _ in rows.values()) == 2 and sum(c for _, c in rows.values()) == 1
    svg = page.split("<svg", 1)[1].split("</svg>", 1)[0]
    assert "with 2 bounces and 1 complaints" in svg and "Bounces (2)" in svg and "Complaints (1)" in svg
    assert svg.count("<polyline") == 4

    one = text_of(editor.get("/admin/?newsletter=daily-briefing"))  # bounces concern addresses, not a newsletter
    assert "<polyline" in one and one.split("<svg", 1)[1].count("<polyline") == 2
    assert "the chart of all newsletters shows them" in one


def erase(app, address: str) -> None:
    from newsletter import privacy

    with app.app_context():
        [(reader_id,)] = query(app, "SELECT id FROM readers WHERE email = :a", a=address)
        privacy.erase_reader(db.session, reader_id, source=privacy.Source(channel="admin"), config=app.config)
        db.session.commit()
        db.session.remove()


def test_the_lift_page_says_lifting_mails_a_still_subscribed_address_again_at_once(app, editor):  # noqa: F811
    record(app, "back@example.org")
    [(entry_id,)] = query(app, "SELECT id FROM suppressions")
    page = text_of(editor.get(f"/admin/suppressions/{entry_id}"))
    assert "Lifting takes effect at once" in page
    assert "it is in the very next export and gets our emails again, with no new signup" in page
    assert "if its owner signs up again" not in page


def test_the_lift_forms_error_summary_comes_after_the_heading(app, editor):  # noqa: F811
    record(app, "back@example.org")
    [(entry_id,)] = query(app, "SELECT id FROM suppressions")
    url = f"/admin/suppressions/{entry_id}"
    page = text_of(post_form(editor, url, f"{url}/lift", note=""))
    assert page.index("<h1>") < page.index('class="error-summary"') < page.index(f'action="{url}/lift"')
    assert 'tabindex="-1"' in page.split('class="error-summary"', 1)[1].split(">", 1)[0]


def test_an_erased_entry_cannot_be_lifted(app, editor, client):  # noqa: F811
    sign_up(client, "gone@example.org")
    erase(app, "gone@example.org")
    [(entry_id,)] = query(app, "SELECT id FROM suppressions WHERE reason = 'erased'")
    url = f"/admin/suppressions/{entry_id}"
    page = text_of(editor.get(url))
    assert "This entry can't be lifted" in page
    assert "Nothing stops them from signing up again themselves." in page
    assert f'action="{url}/lift"' not in page

    token = hidden_fields(text_of(editor.get("/admin/suppressions")))["csrf_token"]
    answer = editor.post(f"{url}/lift", data={"csrf_token": token, "note": "let imports have them"})
    assert answer.status_code == 303
    after = text_of(editor.get(answer.headers["Location"]))
    assert "This entry can&#39;t be lifted" in after and "Nothing was changed." in after
    assert query(app, "SELECT reason, lifted_at FROM suppressions") == [("erased", None)]


def test_the_page_of_a_reader_who_signed_up_again_after_erasure_shows_no_erased_entry(app, editor, client):  # noqa: F811
    sign_up(client, "again@example.org")
    erase(app, "again@example.org")
    sign_up(client, "again@example.org")  # the person may sign up again themselves
    [(reader_id,)] = query(app, "SELECT id FROM readers WHERE email = 'again@example.org'")
    page = text_of(editor.get(f"/admin/readers/{reader_id}"))
    assert "Not suppressed" in page and "erased reader" not in page.lower()
    assert "Resend the confirmation email" in page

    # Now the address bounces: the page shows that entry (which keeps no address: its earlier reader was erased).
    record(app, "again@example.org", diagnostic="550 5.1.1 <again@example.org> user unknown")
    [(bounce_id,)] = query(app, "SELECT id FROM suppressions WHERE reason = 'hard_bounce'")
    page = text_of(editor.get(f"/admin/readers/{reader_id}"))
    assert f'<a href="/admin/suppressions/{bounce_id}">Suppressed since' in page and "hard bounce" in page
    assert query(app, "SELECT email, detail FROM suppressions WHERE id = :i", i=bounce_id) == [(None, None)]


def test_an_admin_adding_an_erased_readers_address_gets_a_manual_entry_beside_the_erased_one(app, editor, client):  # noqa: F811
    sign_up(client, "gone@example.org")
    erase(app, "gone@example.org")
    answer = post_form(editor, "/admin/suppressions", "/admin/suppressions", address="Gone@example.org", note="")
    assert answer.status_code == 303
    assert "Added Gone@example.org to the suppression list" in text_of(editor.get(answer.headers["Location"]))
    assert query(app, "SELECT reason, email FROM suppressions WHERE lifted_at IS NULL ORDER BY id") == [
        ("erased", None), ("manual", None)]


def test_two_admins_lifting_a_blocked_entry_at_once_both_get_an_answer(app, editor, client, database_url):  # noqa: F811
    import threading

    from newsletter import subscriptions, suppression_list

    if not database_url.startswith("postgresql"):
        pytest.skip("row locks: PostgreSQL")
    sign_up(client, "blocked@example.org")
    with app.app_context():
        [(reader_id,)] = query(app, "SELECT id FROM readers")
        subscriptions.block(db.session, reader_id, source=subscriptions.Source(channel="admin"), config=app.config)
        db.session.commit()
        entry_id = suppression_list.for_address(db.session, app.config, "blocked@example.org").id
        db.session.remove()

    outcome: dict[str, BaseException | None] = {}
    first_locked = threading.Event()

    def second() -> None:
        with app.app_context():
            try:
                first_locked.wait(5)
                suppression_list.lift(db.session, app.config, entry_id, "second admin", admin_id=None)
                db.session.commit()
                outcome["second"] = None
            except BaseException as error:  # noqa: BLE001
                outcome["second"] = error
            finally:
                db.session.remove()

    thread = threading.Thread(target=second)
    with app.app_context():
        suppression_list.lift(db.session, app.config, entry_id, "first admin", admin_id=None)  # rows locked
        thread.start()
        first_locked.set()
        thread.join(1.5)  # the second waits on the locks
        db.session.commit()
        db.session.remove()
    thread.join(10)

    # The second finds the entry lifted: the view answers "This entry was lifted already".
    assert isinstance(outcome["second"], suppressions.UnknownSuppression), repr(outcome["second"])
    assert query(app, "SELECT lift_note FROM suppressions") == [("first admin",)]
    assert query(app, "SELECT blocked_at FROM readers") == [(None,)]
    url = f"/admin/suppressions/{entry_id}"
    late = post_form(editor, url, f"{url}/lift", note="third admin")
    assert late.status_code == 303 and "lifted already" in text_of(editor.get(late.headers["Location"]))
