"""Adversarial review of issue 11's changes feed (sections 3 and 4): each test fails on integ 749dc9b and
passes once its defect is fixed."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from .test_api_v1 import bearer, make_token
from .test_changes import load_example, page_of, whole_feed


# --- 2. a cursor beyond the feed's end is taken silently, and the changes after it are skipped ---------------------

def test_review_a_cursor_past_the_last_position_never_skips_later_changes(app, client):
    """A cursor the feed never gave (a typo, a copy of another instance's, a database restored from a backup
    or failed over to a lagging replica, so positions restart below the client's cursor) is answered 200
    with next = that cursor; the client then polls from there and silently misses every change until the
    positions catch up (here: forever). Either refuse it (4xx, so the client knows to resync) or never skip."""
    viewer = bearer(make_token(app, "viewer"))
    client.post("/api/v1/subscriptions", json={"email": "one@example.org", "newsletters": ["daily-briefing"]})
    first = page_of(client, viewer)
    assert first["next"] == "1"
    answer = client.get("/api/v1/changes", query_string={"after": "1000000"}, headers=viewer)
    if answer.status_code >= 400:
        return  # refused: the client knows its cursor is not one of this feed's
    cursor = answer.get_json()["next"]
    client.post("/api/v1/subscriptions", json={"email": "two@example.org", "newsletters": ["daily-briefing"]})
    later = page_of(client, viewer, after=cursor)
    assert [e["data"]["reader"]["email"] for e in later["changes"]] == ["two@example.org"], later


# --- 3. the example receiver's feed reader dies for good on one bad answer ------------------------------------------

class _Flaky(BaseHTTPRequestHandler):
    """A changes feed whose first answer is cut off (the service restarted mid-answer) and whose next ones are good."""

    calls = 0
    event = {"id": "evt_1", "type": "subscription.confirmed", "timestamp": "2026-12-01T00:00:00+00:00",
             "cursor": "1", "data": {"reader": {"id": 1, "email": "ada@example.org", "name": None},
                                     "newsletter": {"slug": "daily-briefing"}, "channel": "api",
                                     "source": {"page_url": None, "form_id": None}}}

    def do_GET(self) -> None:  # noqa: N802
        type(self).calls += 1
        if type(self).calls == 1:
            # What a proxy's "502/maintenance" page or a restart half-way through the body looks like.
            body = b"<html>upstream restarting</html>"
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        after = int(self.path.split("after=")[1].split("&")[0])
        page = {"changes": [self.event] if after < 1 else [], "next": "1", "has_more": False}
        body = json.dumps(page).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_review_the_example_receiver_keeps_polling_after_one_bad_answer(tmp_path):
    """Feed.run catches only OSError: a non-JSON answer (a proxy's page while the service restarts) raises
    ValueError, an answer cut off mid-body raises http.client.IncompleteRead; either ends the feed thread
    for good, and the receiver silently stops filling gaps (webhooks lost meanwhile are never read)."""
    example = load_example()
    _Flaky.calls = 0
    service = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=service.serve_forever, daemon=True).start()
    synced = example.SyncedList(str(tmp_path / "sync.sqlite3"))
    feed = example.Feed(f"http://127.0.0.1:{service.server_address[1]}", "nlt_x", synced, poll_seconds=0.2)
    runner = threading.Thread(target=feed.run, daemon=True)
    runner.start()
    try:
        for _ in range(50):
            if synced.cursor == 1:
                break
            time.sleep(0.1)
        assert runner.is_alive(), "the feed reader thread died on one bad answer"
        assert synced.cursor == 1 and synced.subscribers("daily-briefing") == [("ada@example.org", None)]
    finally:
        feed.stopped.set()
        feed.wanted.set()
        service.shutdown()
