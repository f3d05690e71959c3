"""Benchmark `newsletter import` of a Mailchimp audience export against PostgreSQL's COPY of the same addresses.

What it measures, on a fresh PostgreSQL database of its own (created, migrated, dropped at the end):

  import  a Mailchimp audience export of --rows members (a zip of subscribed_members_export_….csv with
          Mailchimp's full header, 93.5% subscribed with opt-in and confirmation times and IPs, 0.5%
          without proof — confirmation emails asked for —, 5% unsubscribed and 1% cleaned members)
          imported into the newsletter `daily` by this process, as `newsletter import` does it
          (record_upload, then execute) in a fresh process: rows/s, and that process's peak RSS growth
          while importing, sampled from /proc/self/statm every 20 ms against its RSS just before
  copy    COPY bare (email) FROM STDIN of the same addresses into a table with one text column,
          sent by psycopg from this process: the rate the database takes rows in at all
  floor   what the import writes for a subscribed row (a reader, a subscription, two consent events)
          written by set-based INSERT … SELECT generate_series, no Python per row: the least any
          import into this schema, with its indexes and foreign keys, can cost (tables emptied after)

The table gives both rates, the ratio (import rows/s ÷ copy rows/s; target from issue 10 ≥ 0.25),
the RSS growth (target < 100 MB) and where the import's time went (reading the file, checking
addresses, the database), and checks that the counts add up.

    .venv/bin/python bench/import.py                    # 1,000,000 rows
    .venv/bin/python bench/import.py --rows 100000
"""

from __future__ import annotations

import contextlib
import cProfile
import csv
import io
import json
import multiprocessing
import os
import pstats
import random
import secrets
import signal
import sys
import tempfile
import threading
import time
import zipfile
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from signup import (PROJECT_DIR, _admin_execute, add_database_options, add_output_options, app_environment, environ,
                    format_table, fresh_database, log, machine_busy_percent, new_parser, newsletter_cli)

SLUG = "daily"
HEADER = ["Email Address", "First Name", "Last Name", "MEMBER_RATING", "OPTIN_TIME", "OPTIN_IP", "CONFIRM_TIME",
          "CONFIRM_IP", "LATITUDE", "LONGITUDE", "GMTOFF", "DSTOFF", "TIMEZONE", "CC", "REGION", "LAST_CHANGED",
          "LEID", "EUID", "NOTES", "TAGS"]
EXTRA = {"unsubscribed": ["UNSUB_TIME", "UNSUB_CAMPAIGN_TITLE", "UNSUB_CAMPAIGN_ID", "UNSUB_REASON",
                          "UNSUB_REASON_OTHER"],
         "cleaned": ["CLEAN_TIME", "CLEAN_CAMPAIGN_TITLE", "CLEAN_CAMPAIGN_ID"]}
DOMAINS = ["gmail.com", "yahoo.com", "hotmail.com", "outlook.com", "aol.com", "icloud.com", "gmx.de", "web.de",
           "mail.ru", "orange.fr", "libero.it", "proton.me", "ukr.net", "example.org", "newsroom.example.com",
           "uni-heidelberg.de", "ox.ac.uk", "t-online.de", "comcast.net", "yandex.ru"]
FIRST = ["Anna", "Ben", "Chloé", "Dmytro", "Eva", "Farid", "Greta", "Hiro", "Ines", "Jonas", "Olena", "Zoë"]
LAST = ["Smith", "Müller", "Kovalenko", "García", "Rossi", "Dubois", "Nowak", "Tanaka", "O'Brien", "Silva"]


@dataclass(frozen=True)
class Options:
    database_url: str
    database_name: str
    rows: int
    profile: bool
    json: bool
    results_dir: Path


def parse_options(argv: list[str] | None = None) -> Options:
    parser = new_parser(__doc__)
    add_database_options(parser, "newsletter_bench_import")
    parser.add_argument("--rows", type=int, default=1_000_000, help="members in the Mailchimp export")
    parser.add_argument("--profile", action="store_true",
                        help="run the import under cProfile and print its top functions (slower)")
    add_output_options(parser)
    args = parser.parse_args(argv)
    if args.rows < 1:
        parser.error("rows must be at least 1")
    return Options(args.database_url, args.database_name, args.rows, args.profile, args.json, args.results_dir)


# --- The export ----------------------------------------------------------------------------------


def kind_of(i: int) -> str:
    """The member's list: 93.5% subscribed with proof, 0.5% without, 5% unsubscribed, 1% cleaned."""
    slot = i % 200
    if slot < 10:
        return "unsubscribed"
    if slot < 12:
        return "cleaned"
    if slot == 12:
        return "unconfirmed"
    return "subscribed"


def address_of(i: int) -> str:
    first, last = FIRST[i % len(FIRST)], LAST[(i // 7) % len(LAST)]
    local = f"{first}.{last}".lower().encode("ascii", "ignore").decode().replace("'", "")
    if i % 13 == 0:
        local = local.title()  # some people type capitals; the local part is kept as written
    return f"{local}{i}@{DOMAINS[i % len(DOMAINS)]}"


def write_export(directory: Path, rows: int) -> tuple[Path, list[str], dict[str, int]]:
    """The zip, every address in file order (for COPY), and how many rows each list holds."""
    rng = random.Random(10)
    base = datetime(2019, 1, 1, tzinfo=timezone.utc)
    files = {kind: io.StringIO() for kind in ("subscribed", "unsubscribed", "cleaned")}
    writers = {kind: csv.writer(buffer, lineterminator="\n") for kind, buffer in files.items()}
    for kind, writer in writers.items():
        header = HEADER[:16] + EXTRA.get(kind, []) + HEADER[16:]
        writer.writerow(header)
    per_list = {kind: 0 for kind in files}
    ordered: dict[str, list[str]] = {kind: [] for kind in files}
    for i in range(rows):
        kind = kind_of(i)
        file_kind = "subscribed" if kind == "unconfirmed" else kind
        address = address_of(i)
        optin = base + timedelta(seconds=i * 97)
        confirm = optin + timedelta(seconds=rng.randint(30, 3600))
        stamp = "%Y-%m-%d %H:%M:%S"
        row = [address, FIRST[i % len(FIRST)], LAST[(i // 7) % len(LAST)], str(rng.randint(1, 5)),
               "" if kind == "unconfirmed" else optin.strftime(stamp), f"203.0.113.{i % 250}",
               "" if kind == "unconfirmed" else confirm.strftime(stamp), f"198.51.100.{i % 250}",
               f"{rng.uniform(-60, 60):.7f}", f"{rng.uniform(-120, 120):.7f}", "1", "1", "Europe/Berlin", "DE", "BE",
               (confirm + timedelta(days=30)).strftime(stamp)]
        if kind == "unsubscribed":
            row += [(confirm + timedelta(days=200)).strftime(stamp), "Weekly #12", "a1b2c3", "NORMAL", ""]
        elif kind == "cleaned":
            row += [(confirm + timedelta(days=100)).strftime(stamp), "Weekly #7", "d4e5f6"]
        row += [str(100000 + i), f"{i:010x}", "", '"Newsletter",Sports' if i % 3 == 0 else ""]
        writers[file_kind].writerow(row)
        per_list[file_kind] += 1
        ordered[file_kind].append(address)
    path = directory / "members_export_5a1b2c3d4e.zip"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for kind, buffer in files.items():
            archive.writestr(f"{kind}_members_export_5a1b2c3d4e.csv", buffer.getvalue())
    addresses = [address for kind in ("subscribed", "unsubscribed", "cleaned") for address in ordered[kind]]
    return path, addresses, per_list


# --- Runs ----------------------------------------------------------------------------------------


def copy_run(database_url: str, addresses: list[str]) -> float:
    """Seconds to COPY the addresses into a bare one-column table (created first, outside the timing)."""
    import psycopg

    conninfo = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo) as connection:
        connection.execute("CREATE TABLE bare (email text)")
        connection.commit()
        began = time.perf_counter()
        with connection.cursor() as cursor, cursor.copy("COPY bare (email) FROM STDIN") as copy:
            for start in range(0, len(addresses), 10000):
                copy.write("\n".join(addresses[start:start + 10000]) + "\n")
        connection.commit()
        seconds = time.perf_counter() - began
        copied = connection.execute("SELECT count(*) FROM bare").fetchone()[0]
    if copied != len(addresses):
        raise RuntimeError(f"COPY took {copied} rows of {len(addresses)}")
    return seconds


class RssSampler:
    """The largest resident set of this process seen every 20 ms, in bytes."""

    def __init__(self) -> None:
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * self.page

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.now())

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


@dataclass
class ImportResult:
    record_seconds: float
    execute_seconds: float
    rss_before_mib: float
    rss_peak_mib: float
    counts: dict[str, Any]
    rows_done: int
    status: str
    steps: dict[str, float] | None = None
    profile: str | None = None

    @property
    def seconds(self) -> float:
        return self.record_seconds + self.execute_seconds


FLOOR = [
    ("readers", "INSERT INTO readers (email, name, created_at) SELECT 'floor' || i || '@example.org', "
                "'Reader ' || i, now() FROM generate_series(1, {rows}) AS i"),
    ("subscriptions", "INSERT INTO subscriptions (reader_id, newsletter_id, status, created_at, pending_since, "
                      "confirmed_at) SELECT id, {newsletter}, 'confirmed', now(), now(), now() FROM readers"),
    ("consent events (2 a row)",
     "INSERT INTO consent_events (reader_id, newsletter_id, action, occurred_at, source, ip_address, wording) "
     "SELECT id, {newsletter}, action, now(), 'import', '203.0.113.1', 'Imported from members.csv (Mailchimp "
     "export, import #1)' FROM readers, (VALUES ('signup_requested'), ('confirmed')) AS actions (action)"),
]


def floor_run(database_url: str, rows: int) -> dict[str, float]:
    """Seconds PostgreSQL takes to write what an import of `rows` subscribed rows writes, by set-based SQL.

    No Python per row: the least any import into this schema (its indexes and foreign keys) can cost.
    The tables are emptied again afterwards.
    """
    import psycopg

    conninfo = database_url.replace("postgresql+psycopg://", "postgresql://", 1)
    seconds = {}
    with psycopg.connect(conninfo) as connection:
        newsletter = connection.execute("SELECT id FROM newsletters WHERE slug = %s", (SLUG,)).fetchone()[0]
        for name, statement in FLOOR:
            began = time.perf_counter()
            connection.execute(statement.format(rows=rows, newsletter=newsletter))
            connection.commit()
            seconds[name] = time.perf_counter() - began
        connection.execute("TRUNCATE consent_events, subscriptions, readers RESTART IDENTITY CASCADE")
        connection.commit()
    _admin_execute(database_url, "VACUUM ANALYZE")
    return seconds


def import_run(env: dict[str, str], path: Path, profile: bool) -> ImportResult:
    """The import, as `newsletter import FILE --newsletter daily` runs it, in this process."""
    import sqlalchemy as sa

    from newsletter import create_app, imports
    from newsletter.extensions import db
    from newsletter.models import Newsletter

    with environ(env):
        app = create_app()
    with app.app_context():
        newsletter = db.session.scalars(sa.select(Newsletter).where(Newsletter.slug == SLUG)).one()
        db.session.execute(sa.text("SELECT 1"))
        sampler = RssSampler()
        rss_before = sampler.now()
        profiler = cProfile.Profile() if profile else None
        with sampler:
            began = time.perf_counter()
            run = imports.record_upload(db.session, app.config, source=path, file_name=path.name,
                                        newsletter=newsletter, channel="cli")
            imports.queue(db.session, run, dry_run=False, unconfirmed="ask")
            db.session.commit()
            recorded = time.perf_counter()
            if profiler:
                profiler.enable()
            imports.STEP_SECONDS.clear()
            run = imports.execute(db.session, app.config, run.id)
            if profiler:
                profiler.disable()
            executed = time.perf_counter()
        text = None
        if profiler:
            out = io.StringIO()
            pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(20)
            pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats("newsletter/", 30)
            text = out.getvalue()
        result = ImportResult(recorded - began, executed - recorded, rss_before / 2**20, sampler.peak / 2**20,
                              dict(run.counts), run.rows_done, run.status, dict(imports.STEP_SECONDS), text)
        db.session.remove()
        db.engine.dispose()
    return result


def time_split(rows_path: Path, sample: int = 100_000) -> dict[str, float]:
    """µs a row spent reading the file and checking the address, measured on the first `sample` rows."""
    from newsletter import import_formats, imports

    detected = import_formats.detect(rows_path, "auto", name=rows_path.name)
    began = time.perf_counter()
    rows = []
    for row in import_formats.read_rows(rows_path, detected):
        rows.append(row)
        if len(rows) >= sample:
            break
    read = time.perf_counter() - began
    began = time.perf_counter()
    for row in rows:
        with contextlib.suppress(Exception):
            imports.normalize_address(row.email)
    check = time.perf_counter() - began
    return {"read_us_per_row": read / len(rows) * 1e6, "address_us_per_row": check / len(rows) * 1e6}


# --- Main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # clean up as on Ctrl-C
    busy_before = machine_busy_percent()
    if busy_before > 20:
        log(f"warning: the machine is {busy_before:.0f}% busy before the benchmark; expect noisy results")
    with contextlib.ExitStack() as cleanup:
        work_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="newsletter-bench-")))
        log(f"writing a Mailchimp export of {options.rows:,} members")
        path, addresses, per_list = write_export(work_dir, options.rows)
        log(f"  {path.stat().st_size / 1e6:.1f} MB zipped: {per_list}")
        log(f"creating database {options.database_name}")
        database_url = cleanup.enter_context(fresh_database(options.database_url, options.database_name))
        env = app_environment(database_url, work_dir / "instance", secrets.token_urlsafe(32))
        newsletter_cli(env, "db", "upgrade")
        newsletter_cli(env, "newsletters", "add", SLUG, "--name", "The Daily")

        log("copy: COPY bare (email) FROM STDIN")
        copy_seconds = copy_run(database_url, addresses)
        copy_rate = len(addresses) / copy_seconds
        log(f"  {len(addresses):,} rows in {copy_seconds:.2f} s: {copy_rate:,.0f} rows/s")
        del addresses
        log("floor: the same writes by set-based SQL")
        floor = floor_run(database_url, options.rows)
        floor_rate = options.rows / sum(floor.values())
        log(f"  {floor_rate:,.0f} rows/s")
        log("import (in a process of its own, so that its RSS owes nothing to the generated file)")
        with multiprocessing.get_context("spawn").Pool(1) as pool:
            result = pool.apply(import_run, (env, path, options.profile))
        import_rate = result.rows_done / result.seconds
        log(f"  {result.rows_done:,} rows in {result.seconds:.2f} s: {import_rate:,.0f} rows/s")
        with environ(env):
            split = time_split(path, min(options.rows, 100_000))
        stored = dict(zip(["readers", "subscriptions", "consent_events", "suppressions", "outbox_messages"],
                          _admin_execute(database_url, *(f"SELECT count(*) FROM {table}" for table in (
                              "readers", "subscriptions", "consent_events", "suppressions", "outbox_messages")))))

    counts = result.counts
    refused = sum(counts.get("refused", {}).values())
    problems = []
    if result.status != "finished":
        problems.append(f"the import ended {result.status}")
    if result.rows_done != options.rows:
        problems.append(f"{result.rows_done} rows read, not {options.rows}")
    accounted = counts["new"] + counts["updated"] + counts["unchanged"] + counts["suppressed"] + refused
    if accounted != options.rows:
        problems.append(f"the counts add up to {accounted}, not {options.rows}")
    if stored["subscriptions"] != counts["new"]:
        problems.append(f"{stored['subscriptions']} subscriptions stored, {counts['new']} counted new")
    if stored["suppressions"] != per_list["cleaned"]:
        problems.append(f"{stored['suppressions']} suppressions, {per_list['cleaned']} cleaned rows")

    ratio = import_rate / copy_rate
    growth = result.rss_peak_mib - result.rss_before_mib
    per_row_us = result.seconds / result.rows_done * 1e6
    database_us = per_row_us - split["read_us_per_row"] - split["address_us_per_row"]
    rows = [
        ["import rows/s ÷ copy rows/s", f"{ratio:.3f}", "≥ 0.25", "ok" if ratio >= 0.25 else "BELOW"],
        ["import rows/s (record + execute)", f"{import_rate:,.0f}", "", ""],
        ["copy rows/s", f"{copy_rate:,.0f}", "", ""],
        ["floor rows/s (the import's writes as set-based SQL)", f"{floor_rate:,.0f}", "", ""],
        ["import rows/s ÷ floor rows/s", f"{import_rate / floor_rate:.2f}", "", ""],
        ["import seconds: record (hash, detect) + execute",
         f"{result.record_seconds:.1f} + {result.execute_seconds:.1f}", "", ""],
        ["import RSS growth, MiB (before, peak)",
         f"{growth:.1f} ({result.rss_before_mib:.1f}, {result.rss_peak_mib:.1f})", "< 100 MB (95.4 MiB)",
         "ok" if growth * 1.048576 < 100 else "ABOVE"],
        ["µs a row: all", f"{per_row_us:.1f}", "", ""],
        ["µs a row: reading the file (import_formats)", f"{split['read_us_per_row']:.1f}", "", ""],
        ["µs a row: checking the address", f"{split['address_us_per_row']:.1f}", "", ""],
        ["µs a row: the rest (deciding, database)", f"{database_us:.1f}", "", ""],
    ]
    steps = dict(result.steps or {})
    steps["read the file, the rest"] = result.execute_seconds - sum(steps.values())
    step_rows = [[f"floor: {name}", f"{seconds:.1f}", f"{seconds / options.rows * 1e6:.1f}", ""]
                 for name, seconds in floor.items()]
    step_rows += [[step, f"{seconds:.1f}", f"{seconds / result.rows_done * 1e6:.1f}",
                  f"{100 * seconds / result.execute_seconds:.0f}%"]
                 for step, seconds in sorted(steps.items(), key=lambda item: -item[1])]
    settings = {"when": datetime.now(timezone.utc).isoformat(timespec="seconds"), "rows": options.rows,
                "cores": os.cpu_count(), "machine_busy_before_percent": round(busy_before),
                "python": sys.version.split()[0]}
    print(", ".join(f"{key} {value}" for key, value in settings.items()))
    print()
    print(format_table(["figure", "value", "target", ""], rows))
    print()
    print(format_table(["import step", "seconds", "µs a row", "share"], step_rows))
    print()
    print("counts: " + json.dumps(counts))
    print("stored: " + json.dumps(stored))
    print("check: " + ("every row is accounted for" if not problems else "PROBLEM " + "; ".join(problems)))
    if result.profile:
        print()
        print(result.profile)
    if options.json:
        options.results_dir.mkdir(parents=True, exist_ok=True)
        out = options.results_dir / f"import-{datetime.now():%Y%m%d-%H%M%S}.json"
        out.write_text(json.dumps({
            "settings": settings, "problems": problems, "counts": counts, "stored": stored,
            "figures": {"import_rows_per_s": round(import_rate), "copy_rows_per_s": round(copy_rate),
                        "ratio_to_copy": round(ratio, 3),
                        "floor_rows_per_s": round(floor_rate), "floor_seconds": {k: round(v, 2) for k, v in floor.items()}, "record_seconds": round(result.record_seconds, 2),
                        "execute_seconds": round(result.execute_seconds, 2), "rss_growth_mib": round(growth, 1),
                        "us_per_row": round(per_row_us, 2), "steps_seconds": {k: round(v, 2) for k, v in steps.items()}, **{k: round(v, 2) for k, v in split.items()}},
        }, indent=2) + "\n")
        log(f"wrote {out}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT_DIR))  # the newsletter package, when run with a Python that lacks it
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; dropped the database", file=sys.stderr)
        sys.exit(130)
