"""Benchmark webhook deliveries per second of one sender loop (one worker) against plain signed POSTs.

What it measures, on a fresh PostgreSQL database of its own (created, migrated, dropped at the end),
with a local receiver (a threading HTTP/1.1 server with keep-alive, in a process of its own, that
answers 204 to every POST):

  baseline     the same number of POSTs from a loop with no database: each body signed with
               standardwebhooks and sent through the same HTTP client (webhook_urls.WebhookClient):
               the floor of signing and HTTP
  dispatch     webhook_sender.dispatch: the feed's new changes become outbox rows for the endpoint
  deliveries   WebhookSender.drain after the dispatch: claim a batch (FOR UPDATE SKIP LOCKED), render the
               events, sign, POST each, record the attempts, as one worker does

Each round writes `--events` consent events (signups of new readers) straight to the database
first, untimed. Baseline and deliveries alternate in rounds, so a drifting machine shifts both
alike; the report gives each round, the median ratio, and the peak RSS (VmHWM) of this process,
which is the sender.

    .venv/bin/python bench/webhooks.py                    # 3 rounds of 2000 events
    .venv/bin/python bench/webhooks.py --events 5000 --rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import secrets
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from signup import (
    PROJECT_DIR,
    _admin_execute,
    add_database_options,
    add_output_options,
    app_environment,
    environ,
    fresh_database,
    log,
    new_parser,
    newsletter_cli,
    peak_rss_kib,
)


def parse_options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = new_parser(__doc__)
    add_database_options(parser, "newsletter_bench_webhooks")
    parser.add_argument("--events", type=int, default=2000, help="events (deliveries) per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of baseline and deliveries")
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.events < 1 or args.rounds < 1:
        parser.error("events and rounds must be at least 1")
    return args


# --- The receiver -----------------------------------------------------------------------------------


class _Answer204(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a real receiver behind a proxy would

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


def _serve(port_out: Any) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Answer204)
    port_out.put(server.server_address[1])
    server.serve_forever()


@contextlib.contextmanager
def receiver() -> Any:
    ports: Any = multiprocessing.Queue()
    process = multiprocessing.Process(target=_serve, args=(ports,), daemon=True)
    process.start()
    try:
        yield f"http://127.0.0.1:{ports.get(timeout=10)}/hook"
    finally:
        process.terminate()
        process.join(5)


# --- The runs ---------------------------------------------------------------------------------------


def add_events(database_url: str, count: int, round_number: int) -> None:
    """`count` new readers, each with one signup_requested event, written in one statement each."""
    _admin_execute(
        database_url,
        f"""INSERT INTO readers (email, created_at)
            SELECT 'bench{round_number}-' || n || '@example.org', now() FROM generate_series(1, {count}) AS n""",
        f"""INSERT INTO consent_events (reader_id, newsletter_id, action, occurred_at, source, page_url, form_id)
            SELECT r.id, (SELECT id FROM newsletters LIMIT 1), 'signup_requested', now(), 'api',
                   'https://news.example.org/article', 'box-1'
            FROM readers r WHERE starts_with(r.email, 'bench{round_number}-')""",
    )


def baseline(url: str, secret: str, count: int, config: dict[str, Any]) -> float:
    """Seconds for `count` signed POSTs of a typical event body from a loop, no database."""
    from newsletter.webhook_sender import sign
    from newsletter.webhook_urls import WebhookClient

    client = WebhookClient(timeout=config["NEWSLETTER_WEBHOOK_TIMEOUT"], allow_private=True)
    started = time.perf_counter()
    for number in range(count):
        event = {"id": f"evt_{number}", "type": "subscription.pending",
                 "timestamp": datetime.now(UTC).isoformat(), "cursor": str(number),
                 "data": {"reader": {"id": number, "email": f"bench-{number}@example.org", "name": None},
                          "newsletter": {"slug": "daily"}, "channel": "api",
                          "source": {"page_url": "https://news.example.org/article", "form_id": "box-1"}}}
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":"))
        now = datetime.now(UTC)
        answer = client.post(url, body.encode(), {
            "Content-Type": "application/json", "webhook-id": event["id"],
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": sign([secret], event["id"], now, body)})
        assert answer.status == 204, answer
    elapsed = time.perf_counter() - started
    client.close()
    return elapsed


def deliveries(app: Any) -> tuple[float, float, int]:
    """(dispatch seconds, delivery seconds, deliveries sent) of one sender draining what is due."""
    from newsletter import webhook_sender
    from newsletter.extensions import db

    with app.app_context():
        sender = webhook_sender.WebhookSender(app.config)
        started = time.perf_counter()
        queued = webhook_sender.dispatch(db.session)
        dispatched = time.perf_counter()
        result = webhook_sender.DeliveryResult()
        while sender.deliver_due(db.session, result):
            pass
        finished = time.perf_counter()
        sender.close()
        db.session.remove()
    assert result.sent == queued and not result.retrying and not result.failed, (queued, result)
    return dispatched - started, finished - dispatched, result.sent


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    with contextlib.ExitStack() as cleanup:
        database_url = cleanup.enter_context(fresh_database(options.database_url, options.database_name))
        work_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="newsletter-bench-")))
        env = app_environment(database_url, work_dir / "instance", secrets.token_urlsafe(32))
        env["NEWSLETTER_WEBHOOK_ALLOW_PRIVATE"] = "on"  # the receiver is on 127.0.0.1
        newsletter_cli(env, "db", "upgrade")
        newsletter_cli(env, "newsletters", "add", "daily", "--name", "Daily")
        url = cleanup.enter_context(receiver())

        from newsletter import create_app, webhooks
        from newsletter.extensions import db

        with environ(env):
            app = create_app()
        with app.app_context():
            _, secret = webhooks.create_endpoint(db.session, app.config, url=url)
            db.session.commit()
            db.session.remove()

        rows = []
        for number in range(1, options.rounds + 1):
            base = baseline(url, secret, options.events, app.config)
            add_events(database_url, options.events, number)
            dispatch_s, deliver_s, sent = deliveries(app)
            rows.append({"round": number, "events": sent, "baseline_per_s": options.events / base,
                         "dispatch_per_s": sent / dispatch_s, "deliveries_per_s": sent / deliver_s,
                         "ratio": (sent / deliver_s) / (options.events / base)})
            log(f"round {number}: baseline {rows[-1]['baseline_per_s']:.0f}/s, "
                f"deliveries {rows[-1]['deliveries_per_s']:.0f}/s")
        with app.app_context():
            db.engine.dispose()
        peak = peak_rss_kib(os.getpid()) / 1024

        print(f"{'round':>5}  {'baseline POST/s':>15}  {'dispatch rows/s':>15}  {'deliveries/s':>12}  {'ratio':>6}")
        for row in rows:
            print(f"{row['round']:>5}  {row['baseline_per_s']:>15.0f}  {row['dispatch_per_s']:>15.0f}  "
                  f"{row['deliveries_per_s']:>12.0f}  {row['ratio']:>6.2f}")
        median = {key: statistics.median(row[key] for row in rows)
                  for key in ("baseline_per_s", "dispatch_per_s", "deliveries_per_s", "ratio")}
        print(f"{'median':>5}  {median['baseline_per_s']:>15.0f}  {median['dispatch_per_s']:>15.0f}  "
              f"{median['deliveries_per_s']:>12.0f}  {median['ratio']:>6.2f}")
        print(f"peak RSS of the sender process: {peak:.0f} MiB")
        if options.json:
            options.results_dir.mkdir(parents=True, exist_ok=True)
            path = options.results_dir / f"webhooks-{datetime.now(UTC):%Y%m%dT%H%M%S}.json"
            path.write_text(json.dumps({"rounds": rows, "median": median, "peak_rss_mib": peak,
                                        "events": options.events}, indent=2))
            log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT_DIR))
    sys.exit(main())
