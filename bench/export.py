"""Benchmark the streamed export over HTTP against PostgreSQL's own COPY of the same rows.

What it measures, on a fresh PostgreSQL database of its own (created, migrated, dropped at the end)
holding --rows generated subscriptions of the newsletter `daily` (and 100 of `other`):

  http   GET /api/v1/newsletters/daily/subscribers.csv with an API token, from gunicorn serving
         wsgi:app with one sync worker: rows/s, time to the first byte of the answer, the worker's
         CPU time, and its peak RSS (VmHWM) against its idle baseline
  copy   COPY (<the export's own SELECT, the same rows and cells>) TO STDOUT (FORMAT csv, HEADER)
         read by psycopg in this process: the rate the database can hand the rows out at all

The two alternate, --runs times each; the table gives each run and the medians, and the ratio of
the medians (http rows/s ÷ copy rows/s). The client reads the answer with plain sockets over
HTTP/1.0 (no chunked encoding to undo), so that it takes little of the machine's CPU.
Targets from issue 4: ratio ≥ 0.5, RSS growth under 50 MB.

With --suppressed N (default 10,000) the suppression list holds N addresses in force, none of them
on the exported list: the export then takes the keyed hash of every row's address to leave the
suppressed out (its worst case: every row checked, none dropped, so the row counts still match
COPY's). --suppressed 0 measures an empty list, where the export skips the check altogether.

    .venv/bin/python bench/export.py                    # 1,000,000 rows, 3 runs each
    .venv/bin/python bench/export.py --rows 200000 --runs 1 --suppressed 0
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from signup import (PROJECT_DIR, Gunicorn, _admin_execute, add_database_options, add_output_options, app_environment,
                    cpu_seconds_of, environ, format_table, fresh_database, log, machine_busy_percent, newsletter_cli,
                    new_parser, peak_rss_kib)

SLUG = "daily"


@dataclass(frozen=True)
class Options:
    database_url: str
    database_name: str
    rows: int
    runs: int
    suppressed: int
    json: bool
    results_dir: Path


def parse_options(argv: list[str] | None = None) -> Options:
    parser = new_parser(__doc__)
    add_database_options(parser, "newsletter_bench_export")
    parser.add_argument("--rows", type=int, default=1_000_000, help="subscriptions of the exported newsletter")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each of http and copy, alternating")
    parser.add_argument("--suppressed", type=int, default=10_000,
                        help="addresses on the suppression list (none of them exported)")
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.rows < 1 or args.runs < 1 or args.suppressed < 0:
        parser.error("rows and runs must be at least 1, suppressed at least 0")
    return Options(args.database_url, args.database_name, args.rows, args.runs, args.suppressed, args.json,
                   args.results_dir)


# --- Data ----------------------------------------------------------------------------------------

GENERATE = [
    # Readers: a name on most, some that need CSV quoting, some that a spreadsheet would run.
    """INSERT INTO readers (email, name, created_at)
       SELECT 'reader' || i || '@example.org',
              CASE WHEN i % 10 = 0 THEN NULL WHEN i % 1000 = 1 THEN 'Smith, "Jo" ' || i
                   WHEN i % 1000 = 2 THEN '=HYPERLINK(' || i || ')' ELSE 'Reader Number ' || i END,
              timestamptz '2024-01-01 00:00:00+00' + i * interval '20 seconds'
       FROM generate_series(1, {rows} + 100) AS i""",
    """INSERT INTO subscriptions (reader_id, newsletter_id, status, created_at, pending_since, confirmed_at,
                                  unsubscribed_at)
       SELECT r.id, CASE WHEN r.id <= {rows} THEN {daily} ELSE {other} END,
              CASE WHEN r.id % 10 < 7 THEN 'confirmed' WHEN r.id % 10 < 9 THEN 'pending' ELSE 'unsubscribed' END,
              r.created_at, r.created_at,
              CASE WHEN r.id % 10 < 7 OR r.id % 10 = 9 THEN r.created_at + interval '3 minutes' END,
              CASE WHEN r.id % 10 = 9 THEN r.created_at + interval '30 days' END
       FROM readers r ORDER BY r.id""",
    # The proof of consent as the app keeps it: a signup request and a confirmation per subscription.
    """INSERT INTO consent_events (reader_id, newsletter_id, action, occurred_at, source, page_url, ip_address,
                                   user_agent, wording)
       SELECT s.reader_id, s.newsletter_id, 'signup_requested', s.created_at,
              (ARRAY['hosted-form', 'embed-iframe', 'embed-script', 'api'])[1 + s.reader_id % 4],
              'https://news.example.org/2024/article-' || (s.reader_id % 5000), '203.0.113.' || (s.reader_id % 250),
              'Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36',
              'Send me The Daily by email. I can unsubscribe at any time from a link in every email.'
       FROM subscriptions s ORDER BY s.id""",
    """INSERT INTO consent_events (reader_id, newsletter_id, action, occurred_at, source)
       SELECT s.reader_id, s.newsletter_id, 'confirmed', s.confirmed_at, 'email-link'
       FROM subscriptions s WHERE s.confirmed_at IS NOT NULL ORDER BY s.id""",
]


def generate(database_url: str, rows: int) -> None:
    """The readers, subscriptions and consent events, made by set-based SQL; then VACUUM ANALYZE."""
    import psycopg

    with psycopg.connect(_conninfo(database_url)) as connection:
        ids = dict(connection.execute("SELECT slug, id FROM newsletters").fetchall())
        for statement in GENERATE:
            connection.execute(statement.format(rows=rows, daily=ids[SLUG], other=ids["other"]))
    _admin_execute(database_url, "VACUUM ANALYZE")


def _conninfo(database_url: str) -> str:
    return database_url.replace("postgresql+psycopg://", "postgresql://", 1)


def add_suppressions(env: dict[str, str], count: int) -> None:
    """`count` entries on the suppression list, keyed with the app's own secret, of addresses not on the list."""
    from sqlalchemy import insert

    from newsletter import create_app, suppressions
    from newsletter.extensions import db
    from newsletter.models import Suppression, utcnow

    with environ(env):
        app = create_app()
    with app.app_context():
        now = utcnow()
        for start in range(0, count, 10_000):
            db.session.execute(insert(Suppression), [
                {"address_key": suppressions.address_key(app.config, f"bounced{i}@example.net"),
                 "email": f"bounced{i}@example.net", "reason": "hard_bounce", "source": "smtp", "created_at": now}
                for i in range(start, min(count, start + 10_000))])
        db.session.commit()
        db.session.remove()
        db.engine.dispose()


def api_token_and_copy_sql(env: dict[str, str]) -> tuple[str, str]:
    """A new API token's secret, and the COPY statement of the export's own query for `daily`."""
    from sqlalchemy.dialects.postgresql import psycopg

    from newsletter import api_tokens, create_app, exports
    from newsletter.extensions import db

    with environ(env):
        app = create_app()
    with app.app_context():
        _, secret = api_tokens.create_token(db.session, "export benchmark", role="viewer")
        selection = exports.parse_selection(exports.newsletter_named(db.session, SLUG))
        db.session.commit()
        db.session.remove()
        db.engine.dispose()
    select_sql = exports.rows_query(selection).compile(dialect=psycopg.dialect(),
                                                       compile_kwargs={"literal_binds": True})
    return secret, f"COPY ({select_sql}) TO STDOUT (FORMAT csv, HEADER)"


# --- Runs ----------------------------------------------------------------------------------------


@dataclass
class Run:
    kind: str  # http or copy
    rows: int
    bytes: int
    seconds: float
    first_byte_ms: float
    server_cpu_s: float | None = None  # the gunicorn worker's CPU time in the run

    @property
    def rate(self) -> float:
        return self.rows / self.seconds


def http_run(server: Gunicorn, path: str, secret: str) -> Run:
    """One download, read to the end with a plain socket; rows counted as line ends less the header."""
    request = (f"GET {path} HTTP/1.0\r\nHost: {server.host}\r\nAuthorization: Bearer {secret}\r\n"
               "User-Agent: newsletter-bench/1\r\n\r\n").encode()
    worker = server.worker_pids()
    cpu_before = cpu_seconds_of(worker)
    buffer = bytearray(1 << 20)
    view = memoryview(buffer)
    head, in_head = b"", True
    body_bytes = newlines = 0
    began = time.perf_counter()
    first = None
    with socket.create_connection(("127.0.0.1", server.port), timeout=300) as sock:
        sock.sendall(request)
        while received := sock.recv_into(buffer):
            if first is None:
                first = time.perf_counter()
            chunk = view[:received]
            if in_head:
                head += bytes(chunk)
                if b"\r\n\r\n" not in head:
                    continue
                in_head = False
                head, _, rest = head.partition(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.") or head[9:12] != b"200":
                    raise RuntimeError(f"the download answered {head[:200]!r}\n{server.log_tail()}")
                body_bytes += len(rest)
                newlines += rest.count(b"\n")
                continue
            body_bytes += received
            newlines += buffer.count(b"\n", 0, received)
    seconds = time.perf_counter() - began
    return Run("http", newlines - 1, body_bytes, seconds, ((first or began) - began) * 1000,
               cpu_seconds_of(worker) - cpu_before)


def copy_run(database_url: str, copy_sql: str) -> Run:
    """PostgreSQL's COPY of the same rows, read block by block (nothing kept)."""
    import psycopg

    with psycopg.connect(_conninfo(database_url)) as connection, connection.cursor() as cursor:
        began = time.perf_counter()
        first = None
        size = newlines = 0
        with cursor.copy(copy_sql) as copy:
            for block in copy:
                if first is None:
                    first = time.perf_counter()
                size += len(block)
                newlines += bytes(block).count(b"\n")
        seconds = time.perf_counter() - began
    return Run("copy", newlines - 1, size, seconds, ((first or began) - began) * 1000)


def vm_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    return 0


@dataclass
class Memory:
    startup_hwm_mib: float  # the worker's VmHWM once it answers, before any export
    idle_hwm_mib: float  # the worker's VmHWM after start-up and a small export, before the big ones
    idle_rss_mib: float
    peak_hwm_mib: float  # after all the big exports

    @property
    def growth_mib(self) -> float:
        return self.peak_hwm_mib - self.idle_hwm_mib


# --- Report --------------------------------------------------------------------------------------


def runs_table(runs: list[Run]) -> str:
    rows = []
    for run in runs:
        rows.append([run.kind, f"{run.rows}", f"{run.bytes / 1e6:.1f}", f"{run.seconds:.2f}", f"{run.rate:,.0f}",
                     f"{run.first_byte_ms:.1f}", f"{run.server_cpu_s:.2f}" if run.server_cpu_s is not None else "-"])
    return format_table(["run", "rows", "MB", "seconds", "rows/s", "first byte ms", "worker CPU s"], rows)


def summary_table(http: list[Run], copy: list[Run], memory: Memory) -> tuple[str, dict[str, Any]]:
    http_rate = statistics.median(run.rate for run in http)
    copy_rate = statistics.median(run.rate for run in copy)
    figures = {
        "http_rows_per_s": round(http_rate), "copy_rows_per_s": round(copy_rate),
        "ratio_to_copy": round(http_rate / copy_rate, 3),
        "http_first_byte_ms": round(statistics.median(run.first_byte_ms for run in http), 1),
        "copy_first_byte_ms": round(statistics.median(run.first_byte_ms for run in copy), 1),
        "worker_idle_hwm_mib": round(memory.idle_hwm_mib, 1), "worker_peak_hwm_mib": round(memory.peak_hwm_mib, 1),
        "worker_rss_growth_mib": round(memory.growth_mib, 1),
    }
    rows = [
        ["http rows/s ÷ copy rows/s (medians)", f"{figures['ratio_to_copy']:.2f}", "≥ 0.5",
         "ok" if figures["ratio_to_copy"] >= 0.5 else "BELOW"],
        ["http rows/s", f"{http_rate:,.0f}", "", ""],
        ["copy rows/s", f"{copy_rate:,.0f}", "", ""],
        ["http time to first byte, ms", f"{figures['http_first_byte_ms']:.1f}", "", ""],
        ["worker peak RSS, MiB (start-up, idle, after)",
         f"{memory.startup_hwm_mib:.1f}, {memory.idle_hwm_mib:.1f}, {memory.peak_hwm_mib:.1f}", "", ""],
        ["worker RSS growth, MiB", f"{memory.growth_mib:.1f}", "< 50 MB (47.7 MiB)",
         "ok" if memory.growth_mib * 1.048576 < 50 else "ABOVE"],
    ]
    return format_table(["figure", "value", "target", ""], rows), figures


# --- Main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # clean up as on Ctrl-C
    busy_before = machine_busy_percent()
    if busy_before > 20:
        log(f"warning: the machine is {busy_before:.0f}% busy before the benchmark; expect noisy results")
    with contextlib.ExitStack() as cleanup:
        log(f"creating database {options.database_name}")
        database_url = cleanup.enter_context(fresh_database(options.database_url, options.database_name))
        work_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="newsletter-bench-")))
        env = app_environment(database_url, work_dir / "instance", secrets.token_urlsafe(32))
        # A sync worker is killed after --timeout seconds on one request; a big export may take longer.
        env["GUNICORN_CMD_ARGS"] = "--timeout 600"
        newsletter_cli(env, "db", "upgrade")
        newsletter_cli(env, "newsletters", "add", SLUG, "--name", "The Daily")
        newsletter_cli(env, "newsletters", "add", "other", "--name", "Other")
        log(f"generating {options.rows:,} subscriptions")
        began = time.monotonic()
        generate(database_url, options.rows)
        log(f"  done in {time.monotonic() - began:.1f} s")
        if options.suppressed:
            log(f"adding {options.suppressed:,} addresses to the suppression list")
            add_suppressions(env, options.suppressed)
        secret, copy_sql = api_token_and_copy_sql(env)

        with Gunicorn("app", "wsgi:app", PROJECT_DIR, 1, env, work_dir, options.database_name) as server:
            server.wait_ready("/subscribe")
            [worker] = server.worker_pids()
            startup_hwm = vm_kib(worker, "VmHWM") / 1024
            # The idle baseline: the worker after it has served one small export (code loaded, pool open).
            warmup = http_run(server, "/api/v1/newsletters/other/subscribers.csv", secret)
            assert warmup.rows == 100, warmup
            memory = Memory(startup_hwm_mib=startup_hwm, idle_hwm_mib=vm_kib(worker, "VmHWM") / 1024, idle_rss_mib=vm_kib(worker, "VmRSS") / 1024,
                            peak_hwm_mib=0.0)
            runs: list[Run] = []
            for number in range(1, options.runs + 1):
                for kind in ("copy", "http"):
                    log(f"run {number}/{options.runs}: {kind}")
                    run = (copy_run(database_url, copy_sql) if kind == "copy"
                           else http_run(server, f"/api/v1/newsletters/{SLUG}/subscribers.csv", secret))
                    log(f"  {run.rows:,} rows in {run.seconds:.2f} s: {run.rate:,.0f} rows/s")
                    runs.append(run)
            memory.peak_hwm_mib = peak_rss_kib(worker) / 1024
            if server.worker_pids() != [worker]:
                raise RuntimeError(f"the gunicorn worker was replaced during the runs:\n{server.log_tail()}")

        recorded = _admin_execute(database_url, "SELECT count(*) FROM exports WHERE finished_at IS NOT NULL "
                                                f"AND row_count = {options.rows}")[0]
        http = [run for run in runs if run.kind == "http"]
        copy = [run for run in runs if run.kind == "copy"]
        problems = [f"{run.kind} gave {run.rows} rows, not {options.rows}" for run in runs if run.rows != options.rows]
        if recorded != len(http):
            problems.append(f"{recorded} finished export records of {options.rows} rows, not {len(http)}")

        summary, figures = summary_table(http, copy, memory)
        settings = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": options.rows,
                    "runs": options.runs, "suppressed": options.suppressed, "cores": os.cpu_count(), "machine_busy_before_percent": round(busy_before),
                    "gunicorn": "1 sync worker", "python": sys.version.split()[0]}
        print(", ".join(f"{key} {value}" for key, value in settings.items()))
        print()
        print(runs_table(runs))
        print()
        print(summary)
        print("check: " + ("every run gave every row, and every download was recorded as finished" if not problems
                           else "PROBLEM " + "; ".join(problems)))
        if options.json:
            options.results_dir.mkdir(parents=True, exist_ok=True)
            path = options.results_dir / f"export-{datetime.now():%Y%m%d-%H%M%S}.json"
            path.write_text(json.dumps({"settings": settings, "figures": figures,
                                        "runs": [asdict(run) | {"rows_per_s": round(run.rate)} for run in runs],
                                        "memory": asdict(memory), "problems": problems}, indent=2) + "\n")
            log(f"wrote {path}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT_DIR))  # the newsletter package, when run with a Python that lacks it
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; stopped the server and dropped the database", file=sys.stderr)
        sys.exit(130)
