"""Soak: a steady signup rate for minutes, with a PostgreSQL restart in the middle; what clients see.

What it runs, all of its own: a PostgreSQL cluster in a temporary folder (tests/pg_cluster.py's
PostgresCluster, with synchronous_commit on so that a commit answered is a commit kept), gunicorn
(2 sync workers) serving the app, one `newsletter worker` sending the outbox to an SMTP sink
(aiosmtpd) in this process. The load is open-loop: POST /api/v1/subscriptions with a new address at
a fixed rate, whatever the answers (clients don't retry), each request on its own connection. Halfway
through, the cluster is stopped (`pg_ctl stop -m fast`, or `immediate` as a crash), left down for a
few seconds, and started again.

The report:

  requests lost   a request with no answer (connection refused, reset or timed out), or a 2xx answer
                  whose reader, subscription or confirmation email is not in the database: must be 0
  error window    seconds from the first non-2xx answer's request to the last one's answer
  answers         by status (503 with Retry-After is what an outage should give)
  p99 latency     before the stop, while the database is down (from the stop to its start), after
  emails          every signup answered 202 must reach the SMTP sink as a confirmation email
  timeline        per 5 s of the schedule: requests, 2xx, non-2xx and p99 latency

Run it with the project's venv (and `pip install '.[test]'`: it reuses the tests' cluster and aiosmtpd):

    .venv/bin/python bench/soak.py                      # 50 signups/s for 3 minutes, 5 s down
    .venv/bin/python bench/soak.py --minutes 0.5 --rate 20 --down 3 --stop-mode immediate

Needs PostgreSQL's server binaries (initdb, pg_ctl in /usr/lib/postgresql/<version>/bin). The exit
status is 1 when a request was lost or an accepted signup's email never arrived.
"""

from __future__ import annotations

import json
import math
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import loadgen
from signup import PROJECT_DIR, Gunicorn, app_environment, free_port, log, new_parser, newsletter_cli

sys.path.insert(0, str(PROJECT_DIR))  # tests/pg_cluster.py: the cluster the fault tests stop and start
from tests.pg_cluster import PostgresCluster, _bin_dir  # noqa: E402

NEWSLETTER_SLUG = "daily"


@dataclass(frozen=True)
class Options:
    rate: float
    minutes: float
    down: float
    stop_mode: str
    workers: int
    mail_wait: float
    timeout: float


def parse_options(argv: list[str] | None = None) -> Options:
    parser = new_parser(__doc__)
    parser.add_argument("--rate", type=float, default=50.0, help="signups per second, sent whatever the answers")
    parser.add_argument("--minutes", type=float, default=3.0, help="how long the load lasts")
    parser.add_argument("--down", type=float, default=5.0, help="seconds the database stays stopped, halfway")
    parser.add_argument("--stop-mode", choices=["fast", "immediate"], default="fast",
                        help="pg_ctl's stop mode: fast (an operator's restart) or immediate (a crash)")
    parser.add_argument("--workers", type=int, default=2, help="gunicorn sync workers")
    parser.add_argument("--mail-wait", type=float, default=120.0,
                        help="seconds to wait after the load for the worker to send every confirmation")
    parser.add_argument("--timeout", type=float, default=30.0, help="a client's timeout per request, seconds")
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.minutes <= 0 or args.down < 0 or args.workers < 1:
        parser.error("rate and minutes must be above 0, down at least 0, workers at least 1")
    return Options(rate=args.rate, minutes=args.minutes, down=args.down, stop_mode=args.stop_mode,
                   workers=args.workers, mail_wait=args.mail_wait, timeout=args.timeout)


# --- The parts -----------------------------------------------------------------------------------


class Sink:
    """An SMTP server that keeps the recipients of what it receives."""

    def __init__(self) -> None:
        from aiosmtpd.controller import Controller

        self.recipients: Counter[str] = Counter()
        self._lock = threading.Lock()
        self.port = free_port()
        self.controller = Controller(self, hostname="127.0.0.1", port=self.port)

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 (aiosmtpd's name)
        with self._lock:
            self.recipients.update(address.lower() for address in envelope.rcpt_tos)
        return "250 OK"

    def received(self) -> Counter[str]:
        with self._lock:
            return Counter(self.recipients)


@dataclass
class Sent:
    email: str
    scheduled: float  # seconds from the start of the load
    started: float
    finished: float
    status: int  # 0: no answer
    retry_after: str | None
    error: str | None = None

    @property
    def latency(self) -> float:
        return self.finished - self.started


RETRY_AFTER = b"\r\nretry-after:"


def send_signup(address: tuple[str, int], host: str, email: str, scheduled: float, t0: float,
                timeout: float) -> Sent:
    body = json.dumps({"email": email, "newsletters": [NEWSLETTER_SLUG]}).encode()
    request = loadgen.http_request("POST", "/api/v1/subscriptions", host, body, {"Content-Type": "application/json"})
    started = time.monotonic()
    try:
        status, response = loadgen.exchange(address, request, timeout)
        error = None
    except OSError as failure:
        status, response, error = 0, b"", f"{type(failure).__name__}: {failure}"
    finished = time.monotonic()
    head = response.partition(b"\r\n\r\n")[0].lower()
    retry_after = None
    if RETRY_AFTER in head:
        retry_after = head.split(RETRY_AFTER, 1)[1].split(b"\r\n", 1)[0].strip().decode()
    return Sent(email, scheduled, started - t0, finished - t0, status, retry_after, error)


@dataclass
class Outage:
    stopping: float  # seconds from the start of the load
    stopped: float
    starting: float
    up: float


def restart_database(cluster: PostgresCluster, at: float, down: float, mode: str, t0: float, outage: list[Outage]
                     ) -> None:
    time.sleep(max(0.0, t0 + at - time.monotonic()))
    log(f"stopping PostgreSQL ({mode})")
    stopping = time.monotonic() - t0
    cluster.stop(mode)
    stopped = time.monotonic() - t0
    time.sleep(down)
    log("starting PostgreSQL")
    starting = time.monotonic() - t0
    cluster.start()
    up = time.monotonic() - t0
    log(f"PostgreSQL up again after {up - stopping:.1f} s")
    outage.append(Outage(stopping, stopped, starting, up))


def run_load(options: Options, server: Gunicorn, cluster: PostgresCluster) -> tuple[list[Sent], Outage, float]:
    """Send signups at the planned rate; restart the database halfway. (answers, outage, max lateness)"""
    seconds = options.minutes * 60
    count = int(seconds * options.rate)
    prefix = f"soak-{secrets.token_hex(3)}"
    address = ("127.0.0.1", server.port)
    outage: list[Outage] = []
    futures = []
    lateness = 0.0
    # Enough threads for every request of `timeout` seconds at the rate: a slow answer never delays the next.
    threads = min(1000, max(32, math.ceil(options.rate * options.timeout / 4)))
    t0 = time.monotonic() + 0.5
    restarter = threading.Thread(target=restart_database, daemon=True,
                                 args=(cluster, seconds / 2, options.down, options.stop_mode, t0, outage))
    restarter.start()
    log(f"sending {count} signups at {options.rate:g}/s for {seconds:g} s")
    with ThreadPoolExecutor(max_workers=threads) as pool:
        for number in range(count):
            scheduled = number / options.rate
            delay = t0 + scheduled - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            else:
                lateness = max(lateness, -delay)
            futures.append(pool.submit(send_signup, address, server.host, f"{prefix}-{number}@example.com",
                                       scheduled, t0, options.timeout))
        answers = [future.result() for future in futures]
    restarter.join()
    return answers, outage[0], lateness


# --- The report ----------------------------------------------------------------------------------


def p99_ms(answers: list[Sent]) -> str:
    if not answers:
        return "-"
    latencies = sorted(sent.latency * 1000 for sent in answers)
    return f"{latencies[max(0, math.ceil(0.99 * len(latencies)) - 1)]:.0f} ms"


def stored(database_url: str, emails: list[str]) -> dict[str, tuple[int, int]]:
    """For each address: (pending subscriptions, confirmation emails in the outbox)."""
    import sqlalchemy as sa

    engine = sa.create_engine(database_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(sa.text(
                "SELECT r.email,"
                " (SELECT count(*) FROM subscriptions s WHERE s.reader_id = r.id AND s.status = 'pending'),"
                " (SELECT count(*) FROM outbox_messages o WHERE o.reader_id = r.id AND o.kind = 'confirmation')"
                " FROM readers r WHERE r.email = ANY(:emails)"), {"emails": emails})
            return {email: (subscriptions, confirmations) for email, subscriptions, confirmations in rows}
    finally:
        engine.dispose()


def wait_for_mail(sink: Sink, accepted: list[str], seconds: float, worker: subprocess.Popen) -> Counter[str]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        received = sink.received()
        if all(received[email] for email in accepted) or worker.poll() is not None:
            return received
        time.sleep(0.5)
    return sink.received()


def report(options: Options, answers: list[Sent], outage: Outage, lateness: float, rows: dict[str, tuple[int, int]],
           received: Counter[str], worker_exit: int | None) -> int:
    accepted = [sent for sent in answers if 200 <= sent.status < 300]
    unanswered = [sent for sent in answers if sent.status == 0]
    missing_rows = [sent.email for sent in accepted if rows.get(sent.email, (0, 0))[0] < 1]
    missing_outbox = [sent.email for sent in accepted if rows.get(sent.email, (0, 0))[1] < 1]
    missing_mail = [sent.email for sent in accepted if not received[sent.email]]
    failed = [sent for sent in answers if not 200 <= sent.status < 300]
    by_status = Counter(sent.status for sent in answers)
    retry_after = Counter(sent.retry_after for sent in answers if sent.status == 503)
    lost = len(unanswered) + len(missing_rows)
    window = (max(sent.finished for sent in failed) - min(sent.started for sent in failed)) if failed else 0.0
    before = [sent for sent in answers if sent.started < outage.stopping]
    during = [sent for sent in answers if outage.stopping <= sent.started < outage.up]
    after = [sent for sent in answers if sent.started >= outage.up]
    seconds = options.minutes * 60

    print()
    print(f"soak: {len(answers)} signups at {options.rate:g}/s over {seconds:g} s (largest send delay "
          f"{lateness * 1000:.0f} ms); PostgreSQL stopped ({options.stop_mode}) at {outage.stopping:.1f} s, "
          f"down {outage.starting - outage.stopped:.1f} s, accepting again at {outage.up:.1f} s "
          f"({outage.up - outage.stopping:.1f} s from the stop)")
    print()
    print(f"  requests lost                {lost}   (no answer: {len(unanswered)}; "
          f"2xx without reader/subscription: {len(missing_rows)})")
    print(f"  error window                 {window:.1f} s" + (
        f"   (first non-2xx sent at {min(s.started for s in failed):.1f} s, last answered at "
        f"{max(s.finished for s in failed):.1f} s)" if failed else ""))
    print("  answers                      " + ", ".join(
        f"{status or 'no answer'}: {number}" for status, number in sorted(by_status.items())))
    if retry_after:
        print("  503 Retry-After              "
              + ", ".join(f"{value}: {number}" for value, number in retry_after.items()))
    print(f"  p99 latency before           {p99_ms(before)}   ({len(before)} requests)")
    print(f"  p99 latency during           {p99_ms(during)}   ({len(during)} requests, stop to start)")
    print(f"  p99 latency after            {p99_ms(after)}   ({len(after)} requests)")
    print(f"  accepted (2xx)               {len(accepted)}")
    print(f"  confirmation in the outbox   {len(accepted) - len(missing_outbox)} of {len(accepted)}")
    print(f"  confirmation email received  {len(accepted) - len(missing_mail)} of {len(accepted)}"
          + (f"   (the worker exited with {worker_exit})" if worker_exit is not None else ""))
    print()
    print(f"  {'seconds':>9}  {'sent':>5}  {'2xx':>5}  {'non-2xx':>7}  {'p99':>8}")
    step = 5.0
    for start in range(0, math.ceil(seconds / step)):
        slice_ = [sent for sent in answers if start * step <= sent.scheduled < (start + 1) * step]
        bad = sum(not 200 <= sent.status < 300 for sent in slice_)
        print(f"  {start * step:4.0f}-{(start + 1) * step:<4.0f}  {len(slice_):5}  {len(slice_) - bad:5}  {bad:7}  "
              f"{p99_ms(slice_):>8}")
    for sent in unanswered[:3]:
        print(f"    no answer at {sent.started:.1f} s: {sent.error}")
    ok = lost == 0 and not missing_outbox and not missing_mail
    print()
    print("PASS: nothing lost" if ok else "FAIL: see above")
    return 0 if ok else 1


# --- Main ----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    bin_dir = _bin_dir()
    if bin_dir is None:
        log("PostgreSQL server binaries (initdb, pg_ctl) not found in /usr/lib/postgresql/<version>/bin")
        return 2
    with tempfile.TemporaryDirectory(prefix="newsletter-soak-") as folder:
        base = Path(folder)
        # Its own folder, which the cluster hands to the postgres user (see PostgresCluster.init).
        cluster = PostgresCluster(bin_dir, Path(tempfile.mkdtemp(prefix="newsletter-soak-pg-")))
        cluster.init()
        cluster.start()
        sink = Sink()
        sink.controller.start()
        worker = None
        try:
            database_url = cluster.create_database("soak")
            env = app_environment(database_url, base / "instance", secrets.token_urlsafe(32))
            env["NEWSLETTER_SMTP_URL"] = f"smtp://127.0.0.1:{sink.port}"
            newsletter_cli(env, "db", "upgrade")
            newsletter_cli(env, "newsletters", "add", NEWSLETTER_SLUG, "--name", "Daily")
            worker_log = (base / "worker.log").open("wb")
            worker = subprocess.Popen([str(Path(sys.executable).with_name("newsletter")), "worker", "--poll", "0.5"],
                                      env=env, cwd=PROJECT_DIR, stdout=worker_log, stderr=subprocess.STDOUT)
            with Gunicorn("soak", "wsgi:app", PROJECT_DIR, options.workers, env, base, "soak") as server:
                server.wait_ready("/healthz")
                answers, outage, lateness = run_load(options, server, cluster)
            accepted = [sent.email for sent in answers if 200 <= sent.status < 300]
            rows = stored(database_url, accepted)
            log(f"waiting up to {options.mail_wait:g} s for {len(accepted)} confirmation emails")
            received = wait_for_mail(sink, accepted, options.mail_wait, worker)
            worker_exit = worker.poll()
            if worker_exit is not None:
                tail = (base / "worker.log").read_text(errors="replace").splitlines()[-5:]
                log("the worker exited:\n  " + "\n  ".join(tail))
            return report(options, answers, outage, lateness, rows, received, worker_exit)
        finally:
            if worker is not None and worker.poll() is None:
                worker.terminate()
                worker.wait(20)
            sink.controller.stop()
            cluster.stop("immediate")
            shutil.rmtree(cluster.base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
