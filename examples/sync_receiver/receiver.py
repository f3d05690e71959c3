"""Keep another list in sync with a newsletter service: its webhooks as they come, its changes feed to fill gaps.

A stand-alone example (Python 3.11+, `pip install standardwebhooks`). It keeps a small SQLite list of
contacts and their subscriptions, as a sending platform or CRM would, and:

- receives webhooks on POST /webhook, verifies each with the standardwebhooks library
  (Webhook(secret).verify), and applies the event once, however often it is delivered (by its id);
- on start, every POLL_SECONDS, and whenever a webhook shows the feed has moved past the cursor it
  stored, reads GET /api/v1/changes?after=<cursor> until has_more is false, applies what it had not
  seen, and stores the new cursor: a webhook that never came (the receiver was down longer than the
  retries last, or the endpoint was switched off) is filled in from the feed.

Events may come twice and, across readers, in any order; for one reader and newsletter the latest
change wins: each row keeps the feed cursor of the event that set it, and an older event changes
nothing (so does a contact's suppression, set by reader.suppressed and cleared by reader.unsuppressed).
An erased reader's address and name are removed here too.

Settings (environment): NEWSLETTER_URL (e.g. https://news.example.com), NEWSLETTER_TOKEN (a viewer
API token), WEBHOOK_SECRET (the endpoint's whsec_… secret), LISTEN (default 127.0.0.1:8765),
SYNC_DATABASE (default sync.sqlite3), POLL_SECONDS (default 300).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import threading
import urllib.error
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

log = logging.getLogger("sync-receiver")

SCHEMA = """
CREATE TABLE IF NOT EXISTS applied (event_id TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS contacts (
    reader_id INTEGER PRIMARY KEY, email TEXT, name TEXT, suppressed TEXT, erased INTEGER NOT NULL DEFAULT 0,
    cursor INTEGER NOT NULL DEFAULT 0, suppressed_cursor INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS memberships (
    reader_id INTEGER, newsletter TEXT, status TEXT, cursor INTEGER NOT NULL, PRIMARY KEY (reader_id, newsletter));
CREATE TABLE IF NOT EXISTS state (name TEXT PRIMARY KEY, value TEXT);
"""
# The first pause after a failed read of the feed; it doubles while failures last, up to POLL_SECONDS.
FIRST_RETRY_SECONDS = 5.0
STATUS_OF = {"subscription.pending": "pending", "subscription.confirmed": "confirmed",
             "subscription.unsubscribed": "unsubscribed"}


class SyncedList:
    """The other side's list: contacts, their subscriptions, the events applied and the feed cursor."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(contacts)")}
        if "suppressed_cursor" not in columns:  # a list made by an earlier version of this example
            self._db.execute("ALTER TABLE contacts ADD COLUMN suppressed_cursor INTEGER NOT NULL DEFAULT 0")
        self._lock = threading.Lock()

    @property
    def cursor(self) -> int:
        row = self._db.execute("SELECT value FROM state WHERE name = 'cursor'").fetchone()
        return int(row[0]) if row else 0

    def store_cursor(self, cursor: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO state VALUES ('cursor', ?)", (cursor,))

    def apply(self, event: dict[str, Any]) -> bool:
        """Apply one event unless it was applied before (by its id); whether it was new."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                new = self._db.execute("INSERT OR IGNORE INTO applied VALUES (?)", (event["id"],)).rowcount == 1
                if new:
                    self._change(event)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return new

    def _change(self, event: dict[str, Any]) -> None:
        data, position = event["data"], int(event["cursor"] or 0)
        reader = data["reader"]
        self._db.execute("INSERT OR IGNORE INTO contacts (reader_id) VALUES (?)", (reader["id"],))
        erased = self._db.execute("SELECT erased FROM contacts WHERE reader_id = ?", (reader["id"],)).fetchone()[0]
        if event["type"] == "reader.erased" or erased:
            # Erasure is final: nothing with the address afterwards, and every subscription ends.
            self._db.execute("UPDATE contacts SET email = NULL, name = NULL, erased = 1 WHERE reader_id = ?",
                             (reader["id"],))
            self._db.execute("UPDATE memberships SET status = 'unsubscribed' WHERE reader_id = ?", (reader["id"],))
            return
        # The address and name as of the latest event of the reader.
        self._db.execute("UPDATE contacts SET email = ?, name = ?, cursor = ? WHERE reader_id = ? AND cursor < ?",
                         (reader["email"], reader["name"], position, reader["id"], position))
        if event["type"] in ("reader.suppressed", "reader.unsuppressed"):
            # Suppressed (with the reason) or not any more, as of the latest of these events.
            suppressed = (data.get("reason") or "suppressed") if event["type"] == "reader.suppressed" else None
            self._db.execute("UPDATE contacts SET suppressed = ?, suppressed_cursor = ? "
                             "WHERE reader_id = ? AND suppressed_cursor < ?",
                             (suppressed, position, reader["id"], position))
        elif event["type"] in STATUS_OF and data["newsletter"]:
            self._db.execute(
                "INSERT INTO memberships VALUES (?, ?, ?, ?) ON CONFLICT (reader_id, newsletter) DO UPDATE "
                "SET status = excluded.status, cursor = excluded.cursor WHERE excluded.cursor > memberships.cursor",
                (reader["id"], data["newsletter"]["slug"], STATUS_OF[event["type"]], position))

    def subscribers(self, newsletter: str) -> list[tuple[str, str | None]]:
        """Whom the other side may mail for `newsletter`: confirmed, not suppressed, not erased."""
        return self._db.execute(
            "SELECT c.email, c.name FROM memberships m JOIN contacts c USING (reader_id) WHERE m.newsletter = ? "
            "AND m.status = 'confirmed' AND c.suppressed IS NULL AND NOT c.erased ORDER BY c.email", (newsletter,)
        ).fetchall()


class Feed:
    """Reads the changes feed from the stored cursor on, applying each event once."""

    def __init__(self, base_url: str, token: str, synced: SyncedList, poll_seconds: float = 300) -> None:
        self.base_url, self.token, self.synced, self.poll_seconds = base_url.rstrip("/"), token, synced, poll_seconds
        self.wanted = threading.Event()
        self.stopped = threading.Event()
        self._catching_up = threading.Lock()

    def catch_up(self) -> int:
        """Read the feed after the stored cursor until has_more is false; how many events were new."""
        new = 0
        with self._catching_up:
            while True:
                query = urllib.parse.urlencode({"after": self.synced.cursor, "limit": 500})
                request = urllib.request.Request(f"{self.base_url}/api/v1/changes?{query}",
                                                 headers={"Authorization": f"Bearer {self.token}"})
                with urllib.request.urlopen(request, timeout=30) as answer:
                    page = json.load(answer)
                for event in page["changes"]:
                    new += self.synced.apply(event)
                # The cursor moves only once the page's events are applied: a crash re-reads them (harmlessly).
                self.synced.store_cursor(page["next"])
                if not page["has_more"]:
                    return new

    def run(self) -> None:
        """Catch up on start, then whenever asked (a webhook past the cursor) or every poll_seconds.

        A failed read never ends the loop: the service down, a proxy's HTML page while it restarts, an
        answer cut off half-way, a page not as expected. It is logged and tried again after a pause
        that doubles from FIRST_RETRY_SECONDS up to poll_seconds while the failures last.
        """
        retry = FIRST_RETRY_SECONDS
        while not self.stopped.is_set():
            wait = self.poll_seconds
            try:
                count = self.catch_up()
                if count:
                    log.info("caught up: %d events from the feed", count)
                retry = FIRST_RETRY_SECONDS
            except urllib.error.HTTPError as error:
                log.error("the changes feed answered %s: %s", error.code, _said(error))
                wait, retry = min(retry, self.poll_seconds), retry * 2
            except Exception:  # noqa: BLE001 (whatever went wrong, the feed must be read again later)
                log.exception("could not read the changes feed; trying again")
                wait, retry = min(retry, self.poll_seconds), retry * 2
            self.wanted.wait(wait)
            self.wanted.clear()


def _said(error: urllib.error.HTTPError) -> str:
    """What an error answer says: the API's {"errors": …} or {"error": …} as JSON text, else its first bytes.

    A 422 naming `after` means the stored cursor is not this feed's (the service's database was
    restored from a backup, or the URL is another instance's): a person must decide how to resync.
    """
    try:
        return error.read(2000).decode("utf-8", "replace") or error.reason
    except Exception:  # noqa: BLE001
        return str(error.reason)


def handler_for(webhook: Webhook, synced: SyncedList, feed: Feed) -> type[BaseHTTPRequestHandler]:
    class WebhookHandler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's name)
            if self.path != "/webhook":
                return self._answer(404)
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            try:
                event = webhook.verify(body, dict(self.headers))
            except (WebhookVerificationError, ValueError):  # ValueError: a body or header that is not even well-formed
                return self._answer(401)
            synced.apply(event)
            if event.get("cursor") and int(event["cursor"]) > synced.cursor:
                feed.wanted.set()  # the feed has moved on: anything in between that no webhook brought is read
            self._answer(204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            log.debug(format, *args)

    return WebhookHandler


def serve(base_url: str, token: str, secret: str, listen: str = "127.0.0.1:8765", database: str = "sync.sqlite3",
          poll_seconds: float = 300) -> tuple[ThreadingHTTPServer, Feed, SyncedList]:
    """Start the receiver and the feed reader in threads; the server, the feed reader and the list."""
    synced = SyncedList(database)
    feed = Feed(base_url, token, synced, poll_seconds)
    host, _, port = listen.rpartition(":")
    server = ThreadingHTTPServer((host, int(port)), handler_for(Webhook(secret), synced, feed))
    threading.Thread(target=feed.run, daemon=True).start()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, feed, synced


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    server, feed, _ = serve(os.environ["NEWSLETTER_URL"], os.environ["NEWSLETTER_TOKEN"], os.environ["WEBHOOK_SECRET"],
                            os.environ.get("LISTEN", "127.0.0.1:8765"), os.environ.get("SYNC_DATABASE", "sync.sqlite3"),
                            float(os.environ.get("POLL_SECONDS", "300")))
    log.info("receiving webhooks on http://%s:%d/webhook", *server.server_address[:2])
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        feed.stopped.set()
        feed.wanted.set()
        server.shutdown()


if __name__ == "__main__":
    main()
