"""A small closed-loop HTTP load generator for bench/signup.py and bench/embed.py, standard library only.

`concurrency` virtual users, spread over a few processes (so the GIL of one is not the limit),
each a thread that sends one request, waits for the whole answer and sends the next. gunicorn's
sync workers close the connection after every response, so each request opens its own TCP
connection and says `Connection: close`; the answer is read to EOF. Requests are built as bytes
and answers are read no further than the status code (unless the workload keeps something from
them), to keep the generator's CPU per request small.

A run has a warmup and then a measured window of fixed length; only requests that finish inside
the window count. A finite workload (prepared confirm tokens) may run out first: the run then
ends when the first virtual user runs out, and the window is cut short there.
"""

from __future__ import annotations

import itertools
import json
import math
import multiprocessing as mp
import queue
import re
import resource
import signal
import socket
import threading
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import quote, urlencode

Request = tuple[bytes, Any]  # the raw request, and a tag handed back to Workload.keep with its answer
NO_RESPONSE = 0  # the status recorded when the connection failed or timed out
ERROR_SAMPLES = 3  # error descriptions kept per process


class Workload(Protocol):
    """What the virtual users send. Each load process gets a pickled copy."""

    name: str

    def requests(self, user: int, users: int) -> Iterator[Request]:
        """The requests of virtual user `user` of `users` (all processes together)."""
        ...

    def keep(self, tag: Any, status: int, response: bytes) -> Any | None:
        """What to hand back to the caller from one answer; None for nothing."""
        ...

    def accepts(self, status: int, response: bytes) -> bool:
        """Whether this answer is the success the workload expects (else it counts as an error)."""
        ...


def http_request(method: str, path: str, host: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    """An HTTP/1.1 request asking the server to close the connection after answering."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "User-Agent: newsletter-bench/1", "Connection: close"]
    if body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def exchange(address: tuple[str, int], request: bytes, timeout: float) -> tuple[int, bytes]:
    """Send `request` on a new connection; (status code, the whole raw response)."""
    with socket.create_connection(address, timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    response = b"".join(chunks)
    if not response.startswith(b"HTTP/1."):
        raise ConnectionError(f"not an HTTP response: {response[:40]!r}")
    return int(response[9:12]), response


def body_of(response: bytes) -> bytes:
    return response.partition(b"\r\n\r\n")[2]


LOCATION = re.compile(rb"^Location: *([^\r\n]*)", re.IGNORECASE | re.MULTILINE)


def location_of(response: bytes) -> str | None:
    """The Location header of a raw response, if it has one."""
    head = response.partition(b"\r\n\r\n")[0]
    match = LOCATION.search(head)
    return match[1].decode("latin-1") if match else None


def _share(total: int, user: int, users: int) -> int:
    """How many of `total` requests virtual user `user` of `users` sends."""
    per, extra = divmod(total, users)
    return per + (1 if user < extra else 0)


# --- Workloads -----------------------------------------------------------------------------------


class Answers2xx:
    """A workload whose every 2xx answer is a success."""

    def accepts(self, status: int, response: bytes) -> bool:
        return 200 <= status < 300


@dataclass(frozen=True)
class JsonSignups(Answers2xx):
    """POSTs of {"email": <new address each time>, "newsletters": [...]} to `path`."""

    name: str
    host: str
    path: str
    email_prefix: str  # unique per run, so no address is ever sent twice
    newsletters: tuple[str, ...]
    count: int | None = None  # in all; None: no end

    def requests(self, user: int, users: int) -> Iterator[Request]:
        headers = {"Content-Type": "application/json"}
        numbers = itertools.count(1) if self.count is None else range(1, _share(self.count, user, users) + 1)
        for number in numbers:
            body = json.dumps({"email": f"{self.email_prefix}-{user}-{number}@example.com",
                               "newsletters": list(self.newsletters)}).encode()
            yield http_request("POST", self.path, self.host, body, headers), None

    def keep(self, tag: Any, status: int, response: bytes) -> None:
        return None


@dataclass(frozen=True)
class FormSignups:
    """POSTs of a plain HTML form on another site, as a browser sends them: form-encoded, with that
    site's Origin, a new address each time. Accepted: 303 See Other to the form's return_to."""

    name: str
    host: str
    path: str
    origin: str  # the embedding site, e.g. http://127.0.0.1:8001
    return_to: str  # on that site
    page_url: str
    form_id: str
    email_prefix: str  # unique per run, so no address is ever sent twice
    newsletters: tuple[str, ...]

    def requests(self, user: int, users: int) -> Iterator[Request]:
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Origin": self.origin}
        fields = [*(("newsletters", slug) for slug in self.newsletters), ("form_id", self.form_id),
                  ("return_to", self.return_to), ("page_url", self.page_url)]
        for number in itertools.count(1):
            body = urlencode([*fields, ("email", f"{self.email_prefix}-{user}-{number}@example.com"),
                              ("website", "")]).encode()  # the empty honeypot field
            yield http_request("POST", self.path, self.host, body, headers), None

    def keep(self, tag: Any, status: int, response: bytes) -> None:
        return None

    def accepts(self, status: int, response: bytes) -> bool:
        return status == 303 and location_of(response) == self.return_to


CONFIRM_BUTTON = re.compile(rb'<form method="post">\s*<button type="submit">')


@dataclass(frozen=True)
class ConfirmPages(Answers2xx):
    """GET /confirm/<token> for each token once, keeping the tokens whose page shows the confirm button."""

    name: str
    host: str
    tokens: tuple[str, ...]

    def requests(self, user: int, users: int) -> Iterator[Request]:
        for token in self.tokens[user::users]:
            yield http_request("GET", f"/confirm/{quote(token)}", self.host), token

    def keep(self, tag: Any, status: int, response: bytes) -> str | None:
        return tag if status == 200 and CONFIRM_BUTTON.search(body_of(response)) else None


@dataclass(frozen=True)
class ConfirmPosts(Answers2xx):
    """POST /confirm/<token>, each once, as the page's button sends it (an empty form, no cookie)."""

    name: str
    host: str
    tokens: tuple[str, ...]

    def requests(self, user: int, users: int) -> Iterator[Request]:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        for token in self.tokens[user::users]:
            yield http_request("POST", f"/confirm/{quote(token)}", self.host, b"", headers), None

    def keep(self, tag: Any, status: int, response: bytes) -> None:
        return None


# --- Running -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    address: tuple[str, int]
    concurrency: int
    processes: int
    warmup: float
    duration: float | None  # None: until every virtual user has sent all its requests
    timeout: float = 60.0

    def users_of(self, process: int) -> range:
        """The virtual users (global numbers) that load process `process` runs."""
        start = sum(_share(self.concurrency, earlier, self.processes) for earlier in range(process))
        return range(start, start + _share(self.concurrency, process, self.processes))


@dataclass
class Log:
    """What one thread or process saw: one entry per request, in parallel arrays."""

    finished: array = field(default_factory=lambda: array("d"))  # time.monotonic() at the end
    latency: array = field(default_factory=lambda: array("d"))  # seconds
    status: array = field(default_factory=lambda: array("H"))
    ok: array = field(default_factory=lambda: array("b"))  # 1: the workload accepted the answer
    kept: list[Any] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0  # the process's own CPU time in the measured window

    def extend(self, other: Log) -> None:
        self.finished.extend(other.finished)
        self.latency.extend(other.latency)
        self.status.extend(other.status)
        self.ok.extend(other.ok)
        self.kept.extend(other.kept)
        self.error_samples.extend(other.error_samples[:ERROR_SAMPLES - len(self.error_samples)])


def _virtual_user(workload: Workload, plan: Plan, user: int, stop_at: float, ran_out: Any, log: Log) -> None:
    timed = plan.duration is not None
    for request, tag in workload.requests(user, plan.concurrency):
        if time.monotonic() >= stop_at or (timed and ran_out.value):
            return
        began = time.monotonic()
        try:
            status, response = exchange(plan.address, request, plan.timeout)
        except OSError as error:
            status, response = NO_RESPONSE, b""
            if len(log.error_samples) < ERROR_SAMPLES:
                log.error_samples.append(f"{type(error).__name__}: {error}")
        ended = time.monotonic()
        log.finished.append(ended)
        log.latency.append(ended - began)
        log.status.append(status)
        ok = bool(status) and workload.accepts(status, response)
        log.ok.append(ok)
        if status and not ok and len(log.error_samples) < ERROR_SAMPLES:
            log.error_samples.append(_describe(status, response))
        if (kept := workload.keep(tag, status, response)) is not None:
            log.kept.append(kept)
    if timed:
        with ran_out.get_lock():
            ran_out.value = ran_out.value or time.monotonic()


def _describe(status: int, response: bytes) -> str:
    if 300 <= status < 400:
        return f"HTTP {status} to {location_of(response)!r}"
    return f"HTTP {status}: {body_of(response)[:200]!r}"


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _load_process(workload: Workload, plan: Plan, process: int, start: Any, ran_out: Any, results: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the parent, which stops us
    logs = [Log() for _ in plan.users_of(process)]
    start.wait()
    window_start = time.monotonic() + plan.warmup
    stop_at = window_start + plan.duration if plan.duration is not None else math.inf
    threads = [threading.Thread(target=_virtual_user, args=(workload, plan, user, stop_at, ran_out, log), daemon=True)
               for user, log in zip(plan.users_of(process), logs)]
    for thread in threads:
        thread.start()
    time.sleep(max(0.0, window_start - time.monotonic()))
    cpu_at_start = _cpu_seconds()
    for thread in threads:
        thread.join()
    merged = Log(cpu_seconds=_cpu_seconds() - cpu_at_start)
    for log in logs:
        merged.extend(log)
    results.put(merged)


@dataclass
class Measurement:
    """The requests that finished inside one run's measured window."""

    name: str
    seconds: float
    latencies_ms: list[float]  # sorted
    errors: int  # answers the workload does not accept (for most: non-2xx) and failed connections
    all_requests: int  # including warmup and the tail after the window
    all_ok: int  # answers the workload accepted, warmup and tail included
    loadgen_cpu_seconds: float
    kept: list[Any]
    error_samples: list[str]
    cut_short: bool  # a finite workload ran out before the window's end
    samples: tuple[Any, Any]  # what `sample()` returned at the window's start and end

    @property
    def requests(self) -> int:
        return len(self.latencies_ms)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, q: float) -> float:
        """The nearest-rank percentile of latency in ms (q in 0..100)."""
        if not self.latencies_ms:
            return math.nan
        rank = max(1, math.ceil(q / 100 * len(self.latencies_ms)))
        return self.latencies_ms[rank - 1]


def run(workload: Workload, plan: Plan, sample: Callable[[], Any] = lambda: None) -> Measurement:
    """Run `workload` as `plan` says; `sample()` is called at the window's start and end (e.g. CPU counters)."""
    context = mp.get_context("spawn")
    start = context.Barrier(plan.processes + 1)
    ran_out = context.Value("d", 0.0)
    results = context.Queue()
    processes = [context.Process(target=_load_process, args=(workload, plan, index, start, ran_out, results),
                                 name=f"loadgen-{workload.name}-{index}", daemon=True)
                 for index in range(plan.processes)]
    for process in processes:
        process.start()
    try:
        start.wait(timeout=60)
        window_start = time.monotonic() + plan.warmup
        if plan.duration is None:
            first = sample()
            log = _collect(results, processes)
            last = sample()
            window_end, cut_short = max(log.finished, default=window_start), False
        else:
            planned_end = window_start + plan.duration
            time.sleep(plan.warmup)
            first = sample()
            window_end = _wait_for_end(planned_end, ran_out, processes)
            last = sample()
            log = _collect(results, processes)
            cut_short = window_end < planned_end
    finally:
        for process in processes:
            if process.is_alive():
                process.terminate()
            process.join()
    return _measure(workload.name, log, window_start, window_end, cut_short=cut_short, samples=(first, last))


def _wait_for_end(planned_end: float, ran_out: Any, processes: Sequence[Any]) -> float:
    """Sleep until the planned end or the first virtual user running out of requests."""
    while (now := time.monotonic()) < planned_end:
        if ran_out.value:
            return min(ran_out.value, planned_end)
        _raise_if_died(processes)
        time.sleep(min(0.05, planned_end - now))
    return planned_end


def _raise_if_died(processes: Sequence[Any]) -> None:
    failed = [process for process in processes if process.exitcode not in (None, 0)]
    if failed:
        raise RuntimeError(f"load process {failed[0].name} died with exit code {failed[0].exitcode}")


def _collect(results: Any, processes: Sequence[Any]) -> Log:
    merged = Log()
    for _ in processes:
        while True:
            try:
                log = results.get(timeout=1)
                break
            except queue.Empty:
                _raise_if_died(processes)
        merged.extend(log)
        merged.cpu_seconds += log.cpu_seconds
    return merged


def _measure(name: str, log: Log, window_start: float, window_end: float, *, cut_short: bool,
             samples: tuple[Any, Any]) -> Measurement:
    latencies, errors = [], 0
    for finished, latency, ok in zip(log.finished, log.latency, log.ok):
        if window_start <= finished <= window_end:
            latencies.append(latency * 1000)
            errors += not ok
    latencies.sort()
    return Measurement(
        name=name, seconds=window_end - window_start, latencies_ms=latencies, errors=errors,
        all_requests=len(log.status), all_ok=sum(log.ok),
        loadgen_cpu_seconds=log.cpu_seconds, kept=log.kept, error_samples=log.error_samples,
        cut_short=cut_short, samples=samples,
    )
