"""Benchmark the signup path over HTTP against the cheapest possible signup endpoint.

What it measures, on a fresh PostgreSQL database of its own (created, migrated, dropped at the end):

  baseline       POST /signups of bench/baseline_app.py: a bare Flask app that INSERTs one row through a
                 pooled SQLAlchemy engine and commits, answering 202 JSON: the floor of the stack
  signup         POST /api/v1/subscriptions {"email": <new address>, "newsletters": ["daily"]}
  confirm page   GET /confirm/<token>, once for every reader the signup run made, as a reader opens the
                 link (the preparation of the next run; no warmup, no time limit)
  confirm        POST /confirm/<token> as the page's button sends it, each link once

Both servers are gunicorn with the same number of sync workers, up at the same time, loaded one at a
time. The runs alternate in rounds (baseline, signup, confirm page, confirm, baseline, signup, …),
so each of the app's runs is compared with the mean of the baseline runs just before and after it:
a machine whose speed drifts (a shared host) shifts both alike. The outbox is not drained
(NEWSLETTER_OUTBOX_IN_PROCESS=0), so the mail just accumulates in its table. The load
comes from bench/loadgen.py: closed-loop virtual users in a few processes, one connection per request.
Each timed run has a warmup and then a window of fixed length; only requests that finish inside the
window count. The report gives requests/s, the ratio to the baseline, p50/p99 latency, errors
(non-2xx or no answer), CPU time per request of the server workers, PostgreSQL and the load
generator, and the peak RSS (VmHWM) of each server's workers.

Run it with the project's venv, from any directory:

    .venv/bin/python bench/signup.py                    # 3 rounds, 10 s per run, 2×cores+1 workers
    .venv/bin/python bench/signup.py --duration 30 --workers 4 --concurrency 16

The results are also written as JSON to bench/results/ (git-ignored) unless --no-json is given.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import re
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import loadgen

BENCH_DIR = Path(__file__).resolve().parent
PROJECT_DIR = BENCH_DIR.parent
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1/test"
NEWSLETTER_SLUG = "daily"
CORES = os.cpu_count() or 1
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- Options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    database_url: str
    database_name: str
    workers: int
    concurrency: int
    load_processes: int
    duration: float
    warmup: float
    confirm_pool: float
    rounds: int
    json: bool
    results_dir: Path
    # Webhook endpoints configured (never delivered to: no worker runs), to show a signup doesn't pay for them.
    webhook_endpoints: int = 0


def new_parser(doc: str) -> argparse.ArgumentParser:
    """An argument parser described by the first paragraph of a benchmark's docstring."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                   formatter_class=argparse.ArgumentDefaultsHelpFormatter)


def add_database_options(parser: argparse.ArgumentParser, default_name: str) -> None:
    """--database-url and --database-name, as every benchmark takes them."""
    parser.add_argument("--database-url", default=DEFAULT_DATABASE_URL,
                        help="a PostgreSQL database whose user may create databases; the benchmark makes its own")
    parser.add_argument("--database-name", default=default_name, type=_identifier,
                        help="the database to create (dropped first if it exists, and at the end)")


def add_load_options(parser: argparse.ArgumentParser) -> None:
    """The gunicorn servers and the load generator's options."""
    parser.add_argument("--workers", type=int, default=2 * CORES + 1, help="gunicorn sync workers per server")
    parser.add_argument("--concurrency", type=int, default=0, help="virtual users; 0: twice the workers")
    parser.add_argument("--load-processes", type=int, default=CORES, help="processes the virtual users run in")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per timed run")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before each measured window")


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """--json / --no-json and --results-dir."""
    parser.add_argument("--json", action=argparse.BooleanOptionalAction, default=True,
                        help="write the results as JSON to --results-dir")
    parser.add_argument("--results-dir", type=Path, default=BENCH_DIR / "results")


def parse_options(argv: list[str] | None = None) -> Options:
    parser = new_parser(__doc__)
    add_database_options(parser, "newsletter_bench")
    add_load_options(parser)
    parser.add_argument("--confirm-pool", type=float, default=2.0,
                        help="confirmation links to prepare, as a multiple of what the confirm run would use "
                             "at the signup run's rate (more readers are signed up, untimed, if needed)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds of baseline, signup, confirm; the report gives each and their median")
    parser.add_argument("--webhook-endpoints", type=int, default=0,
                        help="webhook endpoints to configure first (deliveries are made by workers, never in "
                             "the request: compare the ratios with 0 and 3)")
    add_output_options(parser)
    args = parser.parse_args(argv)
    concurrency = args.concurrency or 2 * args.workers
    if min(args.workers, concurrency, args.load_processes, args.rounds) < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("workers, concurrency, load processes and rounds must be at least 1, duration above 0")
    return Options(
        database_url=args.database_url, database_name=args.database_name, workers=args.workers,
        concurrency=concurrency, load_processes=min(args.load_processes, concurrency), duration=args.duration,
        warmup=args.warmup, confirm_pool=args.confirm_pool, rounds=args.rounds, json=args.json,
        results_dir=args.results_dir, webhook_endpoints=max(args.webhook_endpoints, 0),
    )


def _identifier(value: str) -> str:
    if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", value):
        raise argparse.ArgumentTypeError("use lowercase letters, digits and _")
    return value


# --- The database --------------------------------------------------------------------------------


def _admin_execute(admin_url: str, *statements: str) -> list[Any]:
    """Run statements outside a transaction (CREATE/DROP DATABASE); each one's first value, or None."""
    import sqlalchemy as sa

    engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as connection:
            results = [connection.exec_driver_sql(statement) for statement in statements]
            return [result.scalar() if result.returns_rows else None for result in results]
    finally:
        engine.dispose()


def checkpoint(admin_url: str) -> None:
    """Write PostgreSQL's dirty pages out now, so that no run pays for what came before it (best effort:
    CHECKPOINT needs a superuser or pg_checkpoint)."""
    try:
        _admin_execute(admin_url, "CHECKPOINT")
    except Exception as error:  # noqa: BLE001 (any refusal just leaves the runs a little noisier)
        log(f"note: CHECKPOINT refused ({type(error).__name__}); runs may pay for earlier writes")


@contextlib.contextmanager
def fresh_database(admin_url: str, name: str) -> Iterator[str]:
    """A new empty database on the server of `admin_url`, dropped on the way out; yields its URL."""
    import sqlalchemy as sa

    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    _admin_execute(admin_url, drop, f'CREATE DATABASE "{name}"')
    try:
        yield sa.engine.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        _admin_execute(admin_url, drop)
        log(f"dropped database {name}")


def app_environment(database_url: str, instance_path: Path, secret_key: str) -> dict[str, str]:
    """The environment of the newsletter CLI and both servers: ours, none of the caller's NEWSLETTER_*."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSLETTER_")}
    env.update({
        "NEWSLETTER_ENV": "production",
        "NEWSLETTER_DATABASE_URL": database_url,
        "NEWSLETTER_SECRET_KEY": secret_key,
        "NEWSLETTER_PUBLIC_URL": "https://news.example.org",  # only in the links of the mails
        "NEWSLETTER_INSTANCE_PATH": str(instance_path),
        "NEWSLETTER_OUTBOX_IN_PROCESS": "0",
        # The bot defences would refuse a load generator: one IP sending many signups a second.
        "NEWSLETTER_RATE_LIMITS": "off",
        "NEWSLETTER_MIN_FILL_SECONDS": "0",
        "BENCH_DATABASE_URL": database_url,
    })
    return env


def newsletter_cli(env: dict[str, str], *args: str) -> None:
    command = Path(sys.executable).with_name("newsletter")
    finished = subprocess.run([str(command), *args], env=env, cwd=PROJECT_DIR, capture_output=True, text=True)
    if finished.returncode != 0:
        raise RuntimeError(f"`newsletter {' '.join(args)}` failed:\n{finished.stdout}{finished.stderr}")


def prepare_database(env: dict[str, str], database_url: str) -> None:
    """Migrate the app's tables, add the newsletter, and create the baseline's table."""
    from baseline_app import TABLE_DDL

    newsletter_cli(env, "db", "upgrade")
    newsletter_cli(env, "newsletters", "add", NEWSLETTER_SLUG, "--name", "Daily")
    _admin_execute(database_url, TABLE_DDL)


def add_webhook_endpoints(env: dict[str, str], count: int) -> None:
    """`count` active webhook endpoints wanting every event (on a documentation address: nothing is sent)."""
    if not count:
        return
    from newsletter import create_app, webhooks
    from newsletter.extensions import db

    with environ(env):
        app = create_app()
    with app.app_context():
        for number in range(count):
            webhooks.create_endpoint(db.session, app.config, url=f"https://hooks.example.org/bench/{number}")
        db.session.commit()
        db.session.remove()
        db.engine.dispose()


@contextlib.contextmanager
def environ(env: dict[str, str]) -> Iterator[None]:
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def confirm_tokens(env: dict[str, str]) -> list[str]:
    """A confirmation token for every reader with pending subscriptions, made as the app makes them."""
    from sqlalchemy import select

    from newsletter import create_app, tokens
    from newsletter.extensions import db
    from newsletter.models import Subscription

    with environ(env):
        app = create_app()
    with app.app_context():
        pending: dict[int, list[int]] = {}
        for reader_id, newsletter_id in db.session.execute(
            select(Subscription.reader_id, Subscription.newsletter_id)
            .where(Subscription.status == "pending").order_by(Subscription.reader_id)
        ):
            pending.setdefault(reader_id, []).append(newsletter_id)
        made = [tokens.confirm_token(reader_id, ids) for reader_id, ids in pending.items()]
        db.session.remove()
        db.engine.dispose()
    return made


def row_counts(database_url: str) -> dict[str, int]:
    """What the runs left in the database, to check the answers against."""
    queries = {
        "baseline rows": "SELECT count(*) FROM bench_baseline",
        "readers": "SELECT count(*) FROM readers",
        "subscriptions pending": "SELECT count(*) FROM subscriptions WHERE status = 'pending'",
        "subscriptions confirmed": "SELECT count(*) FROM subscriptions WHERE status = 'confirmed'",
        "consent events": "SELECT count(*) FROM consent_events",
        "outbox confirmation mails": "SELECT count(*) FROM outbox_messages WHERE kind = 'confirmation'",
        "outbox welcome mails": "SELECT count(*) FROM outbox_messages WHERE kind = 'welcome'",
    }
    return dict(zip(queries, _admin_execute(database_url, *queries.values())))


# --- Processes: gunicorn, CPU and memory ---------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stat_fields(pid: int) -> list[str]:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2:].split()


def _pids() -> Iterator[int]:
    return (int(entry) for entry in os.listdir("/proc") if entry.isdigit())


def children_of(parent: int) -> list[int]:
    found = []
    for pid in _pids():
        with contextlib.suppress(OSError, ValueError):
            if int(_stat_fields(pid)[1]) == parent:
                found.append(pid)
    return sorted(found)


def cpu_seconds_of(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = _stat_fields(pid)
            total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


CLIENT_BACKEND = re.compile(r"\S+\(\d+\)|\[local\]")  # "user db 127.0.0.1(5432) idle" in a backend's title


def postgres_pids(database: str) -> list[int]:
    """The PostgreSQL server's processes, less the backends serving other databases (e.g. a test run's)."""
    found = []
    for pid in _pids():
        with contextlib.suppress(OSError):
            if Path(f"/proc/{pid}/comm").read_text().strip() != "postgres":
                continue
            title = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if f" {database} " in title or not CLIENT_BACKEND.search(title):
                found.append(pid)
    return found


def peak_rss_kib(pid: int) -> int:
    match = re.search(r"^VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    return int(match[1]) if match else 0


@dataclass(frozen=True)
class CpuSample:
    server: float  # CPU seconds used so far by the gunicorn workers
    postgres: float  # by every postgres process on this machine
    machine_busy: float  # by the whole machine, all cores
    machine_total: float  # wall time × cores


def machine_busy_percent(seconds: float = 1.0) -> float:
    """How busy the machine's CPUs are now (before the benchmark loads them)."""
    busy, total = machine_cpu()
    time.sleep(seconds)
    busy_after, total_after = machine_cpu()
    return 100 * (busy_after - busy) / max(total_after - total, 1e-9)


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, from /proc/stat."""
    user, nice, system, idle, iowait, irq, softirq, steal = map(int, Path("/proc/stat").read_text().split()[1:9])
    busy = user + nice + system + irq + softirq + steal
    return busy / CLOCK_TICKS, (busy + idle + iowait) / CLOCK_TICKS


@dataclass(frozen=True)
class PeakRss:
    workers: int
    sum_mib: float
    max_mib: float


class Gunicorn:
    """A gunicorn master with sync workers serving `target`, in its own session so Ctrl-C reaches only us."""

    def __init__(self, name: str, target: str, chdir: Path, workers: int, env: dict[str, str], log_dir: Path,
                 database: str):
        self.name, self.target, self.chdir, self.workers, self.env = name, target, chdir, workers, env
        self.database = database  # whose PostgreSQL backends count in cpu_sample()
        self.port = free_port()
        self.log_path = log_dir / f"gunicorn-{name}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> Gunicorn:
        command = [sys.executable, "-m", "gunicorn", "--worker-class", "sync", "--workers", str(self.workers),
                   "--bind", self.host, "--chdir", str(self.chdir), "--log-level", "warning", self.target]
        with self.log_path.open("wb") as output:
            self.process = subprocess.Popen(command, env=self.env, stdout=output, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def wait_ready(self, path: str, timeout: float = 60) -> None:
        """Wait until every worker is up and `path` answers without a server error."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                raise RuntimeError(f"gunicorn ({self.name}) exited:\n{self.log_tail()}")
            if len(self.worker_pids()) == self.workers:
                with contextlib.suppress(OSError):
                    status, response = loadgen.exchange(("127.0.0.1", self.port),
                                                        loadgen.http_request("GET", path, self.host), 10)
                    if status < 500:
                        return
                    raise RuntimeError(f"GET {path} on {self.name} answered {status}:\n{response[:2000]!r}\n"
                                       f"{self.log_tail()}")
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn ({self.name}) not ready after {timeout} s:\n{self.log_tail()}")

    def worker_pids(self) -> list[int]:
        return children_of(self.process.pid) if self.process else []

    def peak_rss(self) -> PeakRss:
        peaks = [peak_rss_kib(pid) / 1024 for pid in self.worker_pids()]
        return PeakRss(workers=len(peaks), sum_mib=sum(peaks), max_mib=max(peaks, default=0.0))

    def cpu_sample(self) -> CpuSample:
        busy, total = machine_cpu()
        return CpuSample(server=cpu_seconds_of(self.worker_pids()),
                         postgres=cpu_seconds_of(postgres_pids(self.database)), machine_busy=busy, machine_total=total)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()  # graceful: the master stops its workers
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)  # the master's session: it and its workers
            self.process.wait()


# --- Runs ----------------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    note: str
    measurement: loadgen.Measurement
    round: int = 0
    # The mean rate of the baseline runs just before and after this one (for the app's timed runs).
    baseline_rate: float | None = None

    @property
    def vs_baseline(self) -> float | None:
        return self.measurement.rate / self.baseline_rate if self.baseline_rate else None

    @property
    def cpu_ms_per_request(self) -> dict[str, float]:
        first, last = self.measurement.samples
        requests = max(self.measurement.requests, 1)
        return {
            "server": (last.server - first.server) / requests * 1000,
            "postgres": (last.postgres - first.postgres) / requests * 1000,
            "loadgen": self.measurement.loadgen_cpu_seconds / requests * 1000,
        }

    @property
    def machine_busy_percent(self) -> float:
        first, last = self.measurement.samples
        return self._percent_of_machine(last.machine_busy - first.machine_busy)

    @property
    def others_percent(self) -> float:
        """The machine's CPU time in the window used by neither the servers, PostgreSQL nor the load generator."""
        first, last = self.measurement.samples
        ours = (last.server - first.server) + (last.postgres - first.postgres) + self.measurement.loadgen_cpu_seconds
        return max(0.0, self._percent_of_machine(last.machine_busy - first.machine_busy - ours))

    def _percent_of_machine(self, cpu_seconds: float) -> float:
        first, last = self.measurement.samples
        total = last.machine_total - first.machine_total
        return 100 * cpu_seconds / total if total > 0 else 0.0


def plan(options: Options, server: Gunicorn, *, timed: bool = True) -> loadgen.Plan:
    return loadgen.Plan(address=("127.0.0.1", server.port), concurrency=options.concurrency,
                        processes=options.load_processes, warmup=options.warmup if timed else 0.0,
                        duration=options.duration if timed else None)


def measure(scenario: str, note: str, workload: loadgen.Workload, run_plan: loadgen.Plan, server: Gunicorn,
            round_: int = 0, admin_url: str | None = None) -> Result:
    """One run of `workload`; with `admin_url`, after a CHECKPOINT."""
    if admin_url:
        checkpoint(admin_url)
    log(f"round {round_}, {scenario}: {note}" if round_ else f"{scenario}: {note}")
    measurement = loadgen.run(workload, run_plan, server.cpu_sample)
    log(f"  {measurement.requests} requests in {measurement.seconds:.1f} s, {measurement.errors} errors"
        + (" (cut short: ran out of prepared requests)" if measurement.cut_short else ""))
    return Result(scenario, note, measurement, round_)


@dataclass
class ServerRun:
    """One server's runs (bench/embed.py: the baseline, then the app's form and API runs)."""

    results: list[Result]
    peak_rss: PeakRss
    answered: dict[str, int]  # 2xx answers per scenario, warmup and untimed runs included


def run_baseline(options: Options, env: dict[str, str], log_dir: Path) -> ServerRun:
    """A single baseline run on its own server."""
    with Gunicorn("baseline", "baseline_app:create_app()", BENCH_DIR, options.workers, env, log_dir,
                  options.database_name) as server:
        server.wait_ready("/health")
        workload = loadgen.JsonSignups("baseline", server.host, "/signups", f"base-{secrets.token_hex(4)}",
                                       (NEWSLETTER_SLUG,))
        result = measure("baseline", "POST /signups: one INSERT + COMMIT", workload, plan(options, server), server)
        return ServerRun([result], server.peak_rss(), {"baseline": result.measurement.all_ok})


def compare_with(baseline: Result, results: list[Result]) -> None:
    """Set `baseline`'s rate as the baseline of each of `results` (a single baseline run for all)."""
    for result in results:
        result.baseline_rate = baseline.measurement.rate


@dataclass
class Runs:
    results: list[Result]
    peaks: dict[str, PeakRss]
    answered: dict[str, int]  # 2xx answers per scenario, warmup and untimed runs included


def run_rounds(options: Options, env: dict[str, str], log_dir: Path) -> Runs:
    """Both servers up; baseline, then per round signup, confirm page, confirm and baseline again."""
    answered = {"baseline": 0, "signup": 0, "confirm page": 0, "confirm": 0}
    results: list[Result] = []
    with Gunicorn("baseline", "baseline_app:create_app()", BENCH_DIR, options.workers, env, log_dir,
                  options.database_name) as base, \
            Gunicorn("app", "wsgi:app", PROJECT_DIR, options.workers, env, log_dir, options.database_name) as app:
        base.wait_ready("/health")
        app.wait_ready("/subscribe")

        def baseline(round_: int) -> Result:
            workload = loadgen.JsonSignups("baseline", base.host, "/signups", f"base-{round_}-{secrets.token_hex(4)}",
                                           (NEWSLETTER_SLUG,))
            result = measure("baseline", "POST /signups: one INSERT + COMMIT", workload, plan(options, base), base,
                             round_, options.database_url)
            answered["baseline"] += result.measurement.all_ok
            results.append(result)
            return result

        before = baseline(0)
        for round_ in range(1, options.rounds + 1):
            signup = measure("signup", "POST /api/v1/subscriptions, a new address each", _signups(app),
                             plan(options, app), app, round_, options.database_url)
            answered["signup"] += signup.measurement.all_ok + _sign_up_more(options, app, signup.measurement)

            log("making confirmation tokens for the readers signed up and not yet confirmed")
            pages = loadgen.ConfirmPages("confirm page", app.host, tuple(confirm_tokens(env)))
            page = measure("confirm page", f"GET /confirm/<token> for all {len(pages.tokens)} pending readers "
                           "(the preparation: no warmup, no time limit)", pages, plan(options, app, timed=False), app,
                           round_)
            answered["confirm page"] += page.measurement.all_ok
            prepared = tuple(page.measurement.kept)
            if len(prepared) < len(pages.tokens):
                log(f"  only {len(prepared)} of {len(pages.tokens)} pages showed the confirm button")
            confirm = measure("confirm", "POST /confirm/<token> as its page's button sends it, each link once",
                              loadgen.ConfirmPosts("confirm", app.host, prepared), plan(options, app), app, round_,
                              options.database_url)
            answered["confirm"] += confirm.measurement.all_ok

            after = baseline(round_)
            for result in (signup, page, confirm):
                result.baseline_rate = (before.measurement.rate + after.measurement.rate) / 2
            results += [signup, page, confirm]
            before = after
        peaks = {"baseline": base.peak_rss(), "app": app.peak_rss()}
    order = {"baseline": 0, "signup": 1, "confirm page": 2, "confirm": 3}
    results.sort(key=lambda result: (order[result.scenario], result.round))
    return Runs(results, peaks, answered)


def _signups(server: Gunicorn, count: int | None = None) -> loadgen.JsonSignups:
    return loadgen.JsonSignups("signup", server.host, "/api/v1/subscriptions", f"bench-{secrets.token_hex(4)}",
                               (NEWSLETTER_SLUG,), count)


def _sign_up_more(options: Options, server: Gunicorn, signup: loadgen.Measurement) -> int:
    """Sign up enough readers (untimed) that the confirm run is unlikely to run out of links; how many were."""
    wanted = math.ceil(options.confirm_pool * signup.rate * (options.warmup + options.duration))
    missing = wanted - signup.all_ok
    if missing <= 0:
        return 0
    log(f"signing up {missing} more readers (untimed), for {wanted} confirmation links")
    more = loadgen.run(_signups(server, missing), plan(options, server, timed=False))
    log(f"  {more.requests} requests in {more.seconds:.1f} s, {more.errors} errors")
    return more.all_ok


# --- Report --------------------------------------------------------------------------------------


def format_table(headers: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: first column left-aligned, the others right-aligned."""
    widths = [max(len(row[i]) for row in [headers, *rows]) for i in range(len(headers))]

    def line(cells: list[str]) -> str:
        return "  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                         for i, (cell, width) in enumerate(zip(cells, widths))).rstrip()

    return "\n".join([line(headers), line(["-" * width for width in widths]), *map(line, rows)])


def throughput_table(results: list[Result]) -> str:
    rows = []
    for result in results:
        m = result.measurement
        ratio = result.vs_baseline
        rows.append([
            result.scenario + (" *" if m.cut_short else ""), str(result.round), str(m.requests), f"{m.seconds:.1f}",
            f"{m.rate:.1f}", "-" if ratio is None else f"{ratio:.2f}", f"{m.percentile(50):.1f}",
            f"{m.percentile(99):.1f}", str(m.errors),
        ])
    return format_table(["scenario", "round", "requests", "seconds", "req/s", "vs baseline", "p50 ms", "p99 ms",
                         "errors"], rows)


def timed(results: list[Result]) -> dict[str, list[Result]]:
    """The timed runs by scenario (the confirm page runs are preparation, untimed)."""
    runs: dict[str, list[Result]] = {}
    for result in results:
        if result.scenario != "confirm page":
            runs.setdefault(result.scenario, []).append(result)
    return runs


def summary_rows(results: list[Result]) -> list[dict[str, Any]]:
    """Per scenario, the median over the rounds of req/s, ratio to the baseline and latency percentiles."""
    rows = []
    for scenario, runs in timed(results).items():
        ratios = [r.vs_baseline for r in runs if r.vs_baseline is not None]
        rows.append({
            "scenario": scenario, "rounds": len(runs),
            "req_per_s": statistics.median(r.measurement.rate for r in runs),
            "vs_baseline": statistics.median(ratios) if ratios else None,
            "vs_baseline_min": min(ratios) if ratios else None, "vs_baseline_max": max(ratios) if ratios else None,
            "p50_ms": statistics.median(r.measurement.percentile(50) for r in runs),
            "p99_ms": statistics.median(r.measurement.percentile(99) for r in runs),
            "errors": sum(r.measurement.errors for r in runs),
        })
    return rows


def summary_table(results: list[Result]) -> str:
    rows = [[row["scenario"], str(row["rounds"]), f"{row['req_per_s']:.1f}",
             "-" if row["vs_baseline"] is None else f"{row['vs_baseline']:.2f}",
             "-" if row["vs_baseline"] is None else f"{row['vs_baseline_min']:.2f}–{row['vs_baseline_max']:.2f}",
             f"{row['p50_ms']:.1f}", f"{row['p99_ms']:.1f}", str(row["errors"])]
            for row in summary_rows(results)]
    return format_table(["median of the rounds", "rounds", "req/s", "vs baseline", "range", "p50 ms", "p99 ms",
                         "errors"], rows)


def cpu_table(results: list[Result]) -> str:
    rows = []
    for scenario, runs in timed(results).items():
        requests = sum(max(r.measurement.requests, 1) for r in runs)
        cpu = {key: sum(r.cpu_ms_per_request[key] * max(r.measurement.requests, 1) for r in runs) / requests
               for key in ("server", "postgres", "loadgen")}
        busy = statistics.mean(r.machine_busy_percent for r in runs)
        others = statistics.mean(r.others_percent for r in runs)
        rows.append([scenario, f"{cpu['server']:.2f}", f"{cpu['postgres']:.2f}", f"{cpu['loadgen']:.2f}",
                     f"{busy:.0f}%", f"{others:.0f}%"])
    return format_table(["CPU ms per request, all rounds", "gunicorn workers", "postgres", "load generator",
                         "machine busy", "other processes"], rows)


def rss_table(peaks: dict[str, PeakRss]) -> str:
    rows = [[name, str(peak.workers), f"{peak.sum_mib:.1f}", f"{peak.max_mib:.1f}"] for name, peak in peaks.items()]
    return format_table(["peak RSS (VmHWM)", "workers", "sum MiB", "max per worker MiB"], rows)


def mismatches(answered: dict[str, int], counts: dict[str, int]) -> list[str]:
    """Where the rows in the database don't match the 2xx answers (each answer must leave its rows)."""
    expected = {
        "baseline rows": answered["baseline"],
        "readers": answered["signup"],
        "outbox confirmation mails": answered["signup"],
        "subscriptions confirmed": answered["confirm"],
        "outbox welcome mails": answered["confirm"],
    }
    return [f"{name}: {counts[name]} in the database, but {want} 2xx answers"
            for name, want in expected.items() if counts[name] != want]


def environment_summary(options: Options, database_url: str, busy_before: float) -> dict[str, Any]:
    import gunicorn

    version, sync_commit = _admin_execute(database_url, "SHOW server_version", "SHOW synchronous_commit")
    commit = subprocess.run(["git", "-C", str(PROJECT_DIR), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip()
    return {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "commit": commit or "unknown",
        "python": platform.python_version(),
        "gunicorn": gunicorn.__version__,
        "postgresql": version,
        "synchronous_commit": sync_commit,
        "cores": CORES,
        "machine_busy_before_percent": round(busy_before),
        "workers": options.workers,
        "concurrency": options.concurrency,
        "load_processes": options.load_processes,
        "warmup_s": options.warmup,
        "duration_s": options.duration,
        "rounds": options.rounds,
        "webhook_endpoints": options.webhook_endpoints,
    }


def report(summary: dict[str, Any], results: list[Result], peaks: dict[str, PeakRss], counts: dict[str, int],
           problems: list[str]) -> str:
    settings = ", ".join(f"{key} {value}" for key, value in summary.items())
    parts = [settings, "", throughput_table(results),
             "vs baseline: req/s over the mean of the baseline runs just before and after (rounds n-1 and n)",
             "confirm page: the preparation of confirm, every pending link once, without warmup or time limit",
             "", summary_table(results)]
    if any(r.measurement.cut_short for r in results):
        parts.append("* ran out of prepared confirmation links before the window's end; measured until then")
    parts += ["", cpu_table(results), "", rss_table(peaks), "",
              "rows left: " + ", ".join(f"{name} {count}" for name, count in counts.items()),
              "check: " + ("every 2xx answer left its rows" if not problems else "MISMATCH " + "; ".join(problems))]
    for result in results:
        for sample in result.measurement.error_samples:
            parts.append(f"error in {result.scenario}: {sample}")
    return "\n".join(parts)


def scenarios_json(results: list[Result]) -> list[dict[str, Any]]:
    """Each timed run's figures, as save_json writes them."""
    scenarios = []
    for result in results:
        m = result.measurement
        scenarios.append({
            "scenario": result.scenario, "round": result.round, "what": result.note, "requests": m.requests,
            "seconds": round(m.seconds, 3), "req_per_s": round(m.rate, 1),
            "vs_baseline": round(result.vs_baseline, 3) if result.vs_baseline is not None else None,
            **{f"p{q}_ms": round(m.percentile(q), 2) if m.latencies_ms else None for q in (50, 90, 99)},
            "max_ms": round(m.latencies_ms[-1], 2) if m.latencies_ms else None,
            "errors": m.errors, "error_samples": m.error_samples, "cut_short": m.cut_short,
            "cpu_ms_per_request": {k: round(v, 3) for k, v in result.cpu_ms_per_request.items()},
            "machine_busy_percent": round(result.machine_busy_percent, 1),
            "other_processes_percent": round(result.others_percent, 1),
        })
    return scenarios


def save_json(options: Options, summary: dict[str, Any], results: list[Result], peaks: dict[str, PeakRss],
              counts: dict[str, int], answered: dict[str, int], problems: list[str]) -> Path:
    scenarios = scenarios_json(results)
    options.results_dir.mkdir(parents=True, exist_ok=True)
    path = options.results_dir / f"signup-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({"settings": summary, "scenarios": scenarios, "summary": summary_rows(results),
                                "peak_rss": {name: asdict(peak) for name, peak in peaks.items()},
                                "answered_2xx": answered, "rows": counts, "mismatches": problems}, indent=2) + "\n")
    return path


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
        prepare_database(env, database_url)
        add_webhook_endpoints(env, options.webhook_endpoints)
        summary = environment_summary(options, database_url, busy_before)

        runs = run_rounds(options, env, work_dir)
        results, peaks, answered, counts = runs.results, runs.peaks, runs.answered, row_counts(database_url)
        problems = mismatches(answered, counts)

        print(report(summary, results, peaks, counts, problems), flush=True)
        if options.json:
            log(f"wrote {save_json(options, summary, results, peaks, counts, answered, problems)}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT_DIR))  # the newsletter package, when run with a Python that lacks it
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; stopped the servers and dropped the database", file=sys.stderr)
        sys.exit(130)
