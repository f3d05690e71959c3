"""Second-round end-to-end review of issue 11 (reviewer e2e): defects found running the service for real.

Each test fails on integ a8c987d and passes once the defect is fixed.
"""

from __future__ import annotations

from newsletter import accounts
from newsletter.extensions import db

from .conftest import hidden_fields, link_in, query
from .test_admin_auth import PASSWORD, log_in
from .test_api_v1 import bearer, make_token
from .test_changes import load_example, whole_feed


def _confirmed_reader(client, drain, smtp, email: str) -> int:
    assert client.post("/api/v1/subscriptions", json={"email": email, "newsletters": ["daily-briefing"]}).status_code == 202
    drain()
    confirm = link_in(smtp.inbox.wait_for(1)[0], "/confirm/")
    assert client.post("/" + confirm.split("://", 1)[1].split("/", 1)[1]).status_code == 200
    [(reader_id,)] = query(app_of(client), "SELECT id FROM readers WHERE email = :e", e=email)
    return reader_id


def app_of(client):
    return client.application


def test_lifting_a_suppression_is_told_to_the_feed_so_a_synced_list_mails_the_reader_again(app, client, drain, smtp):
    """A confirmed reader is put on the suppression list by an admin (by mistake), then the entry is lifted.

    The service mails the reader again (the entry no longer stops mail; the subscription stayed
    confirmed throughout), but neither the feed nor the webhooks say anything about the lift: the
    last word a sync client ever gets is `reader.suppressed`. The example receiver (examples/
    sync_receiver), fed the whole feed, keeps the contact suppressed for good, so its list no longer
    equals the service's subscribers. Fix: record the lift (and an unblock) as a consent event and
    publish it (e.g. `reader.unsuppressed`), and have the example receiver clear `suppressed` on it.
    """
    with app.app_context():
        accounts.create_admin(db.session, "editor@example.org", PASSWORD, "admin")
        db.session.commit()
        db.session.remove()
    reader_id = _confirmed_reader(client, drain, smtp, "mistake@example.org")
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

    viewer = bearer(make_token(app, "viewer", "sync job"))
    events, _ = whole_feed(client, viewer)
    mine = [e["type"] for e in events if e["data"]["reader"]["id"] == reader_id]
    assert mine[:3] == ["subscription.pending", "subscription.confirmed", "reader.suppressed"]
    # The lift is a change of whom the sending platform may mail: the feed must say so.
    assert len(mine) > 3, f"the feed tells of the suppression but never of its lift: {mine}"

    # And the example receiver, having applied the whole feed, must mail the reader again.
    example = load_example()
    synced = example.SyncedList(":memory:")
    for event in events:
        synced.apply(event)
    assert synced.subscribers("daily-briefing") == [("mistake@example.org", None)]
