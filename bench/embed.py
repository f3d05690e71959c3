"""Benchmark the embeddable forms: how much they weigh, how soon a browser shows them, signups through them.

What one run measures, on a fresh PostgreSQL database of its own (created, migrated, dropped at the end),
against the app served by gunicorn (sync workers) exactly as bench/signup.py serves it:

  sizes         GET /embed.js, GET /embed/<slug> (the iframe's page) and GET /api/v1/forms (what embed.js
                fetches before it draws): bytes as served, and gzipped at levels 9 and 6.
  first render  An article page served from a second origin (another port, an allowed site) in headless
                Chromium driven by Playwright, a fresh browser context (cold cache) for each of --runs
                visits per kind of article:
                  inline  the iframe page's form markup and CSS, inline in the article: the baseline
                          (nothing to fetch after the article)
                  iframe  the iframe snippet of the embed gallery: <iframe src=/embed/<slug> loading=lazy>
                          followed by embed.js (which only fits the iframe's height)
                  script  the script snippet: <div data-newsletter=<slug>> + embed.js, which fetches
                          /api/v1/forms and draws the form in a shadow root
                The time is measured in the page: a script Playwright adds to every frame before the
                frame's own scripts checks, in each animation frame, whether the email input (in the
                document or a [data-newsletter] shadow root) has a layout box and is visible; the first
                frame in which it is, minus the article's navigation start (performance.timeOrigin of the
                top document; both on the epoch clock, so the iframe's time is comparable). The wall
                clock from page.goto() to Playwright's "visible" is reported beside it. The three kinds
                take turns (rotated each round); --browser-warmup rounds before them are not counted.
  throughput    Signups under closed-loop load (bench/loadgen.py), each request a new address:
                  baseline    POST /signups of bench/baseline_app.py: one INSERT + COMMIT, the floor
                  plain form  POST /subscribe, form-encoded as the plain-form snippet sends it, with the
                              Origin of the allowed article site; accepted: 303 to its return_to
                  api         POST /api/v1/subscriptions with JSON {"email", "newsletters"}
                with the same gunicorn settings, concurrency, warmup and window, as in bench/signup.py:
                req/s, ratio to the baseline, p50/p99, errors (answers other than the accepted one),
                CPU ms per request. At the end, the database must hold the rows of every accepted request.

Rate limits and the minimum fill time are off (NEWSLETTER_RATE_LIMITS=off, NEWSLETTER_MIN_FILL_SECONDS=0).

Run it with the project's venv, from any directory (about a minute):

    .venv/bin/python bench/embed.py
    .venv/bin/python bench/embed.py --runs 40 --duration 20

It needs PostgreSQL (a user that may create databases), Playwright for Python and a Chromium
(default /usr/bin/chromium; Playwright's own browsers are not used). The results are also written as
JSON to bench/results/embed-<time>.json (git-ignored) unless --no-json is given.
"""

from __future__ import annotations

import contextlib
import gzip
import html
import json
import math
import re
import secrets
import signal
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import loadgen
import signup
from signup import NEWSLETTER_SLUG, PROJECT_DIR, Gunicorn, Result, log

if TYPE_CHECKING:
    from playwright.sync_api import Browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1000, "height": 900}
RENDER_TIMEOUT_MS = 15_000


# --- Options -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    load: signup.Options  # the database, the servers and the load, as bench/signup.py takes them
    runs: int
    browser_warmup: int
    chromium: str


def parse_options(argv: list[str] | None = None) -> Options:
    parser = signup.new_parser(__doc__)
    signup.add_database_options(parser, "newsletter_bench_embed")
    signup.add_load_options(parser)
    parser.add_argument("--runs", type=int, default=20, help="browser visits (fresh contexts) per kind of embed")
    parser.add_argument("--browser-warmup", type=int, default=2, help="rounds of visits before those, not counted")
    parser.add_argument("--chromium", default=CHROMIUM, help="the Chromium executable Playwright drives")
    signup.add_output_options(parser)
    args = parser.parse_args(argv)
    concurrency = args.concurrency or 2 * args.workers
    if min(args.workers, concurrency, args.load_processes, args.runs) < 1 or args.duration <= 0 \
            or args.warmup < 0 or args.browser_warmup < 0:
        parser.error("workers, concurrency, load processes and runs must be at least 1, duration above 0")
    load = signup.Options(
        database_url=args.database_url, database_name=args.database_name, workers=args.workers,
        concurrency=concurrency, load_processes=min(args.load_processes, concurrency), duration=args.duration,
        warmup=args.warmup, confirm_pool=0.0, rounds=1, json=args.json, results_dir=args.results_dir,
    )
    return Options(load=load, runs=args.runs, browser_warmup=args.browser_warmup, chromium=args.chromium)


# --- The embedding site --------------------------------------------------------------------------


class ArticleSite:
    """The site that embeds the forms: fixed HTML pages on another port of 127.0.0.1, served from a thread."""

    def __init__(self) -> None:
        self.pages: dict[str, bytes] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _page_handler(self.pages))
        self.origin = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, name="article-site", daemon=True)

    def url(self, path: str) -> str:
        return self.origin + path

    def __enter__(self) -> ArticleSite:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _page_handler(pages: dict[str, bytes]) -> type[BaseHTTPRequestHandler]:
    class PageHandler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            page = pages.get(self.path.partition("?")[0])
            body = page if page is not None else b"not found"
            self.send_response(200 if page is not None else 404)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return PageHandler


ARTICLE_STYLE = """
  body { font: 17px/1.5 system-ui, sans-serif; max-width: 46rem; margin: 1.5rem auto; padding: 0 1rem; color: #222; }
  section.embed { border: 1px solid #ccc; border-radius: 6px; padding: .75rem; margin: 1.25rem 0; }
"""


def article_page(title: str, embed: str, head: str = "") -> str:
    """An article with one signup embed near the top (inside the first viewport)."""
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>{html.escape(title)}</title><link rel="icon" href="data:,">
<style>{ARTICLE_STYLE}</style>{head}</head>
<body>
<h1>Council approves the new tram line</h1>
<p>The city council voted on Tuesday to build a tram line across the river. Work starts in spring.</p>
<section class="embed">
{embed}
</section>
<p>The line will have eleven stops and run every six minutes at peak times.</p>
<p>Opponents said the money would be better spent on buses; the vote was 31 to 12.</p>
</body>
</html>"""


def iframe_snippet(base: str, slug: str) -> str:
    """The iframe snippet of templates/embed/_snippets.html."""
    return f"""<iframe src="{base}/embed/{slug}?form_id={slug}-frame"
        title="Subscribe" loading="lazy" style="border:0;width:100%;max-width:480px;height:260px"></iframe>
<script src="{base}/embed.js" async></script>"""


def script_snippet(base: str, slug: str) -> str:
    """The script snippet of templates/embed/_snippets.html."""
    return f"""<div data-newsletter="{slug}" data-form-id="{slug}-script">
  <a href="{base}/subscribe/{slug}">Subscribe</a>
</div>
<script src="{base}/embed.js" async></script>"""


def inline_form(frame_page: str) -> tuple[str, str]:
    """(the <style> element, the body without scripts) of the iframe's page, to put into an article."""
    style = re.search(r"<style>.*?</style>", frame_page, re.S)
    body = re.search(r"<body>(.*)</body>", frame_page, re.S)
    if not style or not body:
        raise RuntimeError("the iframe page has no <style> or <body> to inline")
    return style[0], re.sub(r"<script>.*?</script>", "", body[1], flags=re.S)


# --- Sizes ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    resource: str
    raw: int
    gzip_9: int
    gzip_6: int
    content_encoding: str  # as served to a client that accepts gzip and br
    cache_control: str


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[bytes, dict[str, str]]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.read(), dict(response.headers.items())


def measure_size(base: str, path: str) -> Size:
    body, headers = fetch(base + path, {"Accept-Encoding": "gzip, deflate, br"})
    return Size(path, len(body), len(gzip.compress(body, 9, mtime=0)), len(gzip.compress(body, 6, mtime=0)),
                headers.get("Content-Encoding", "none"), headers.get("Cache-Control", "-"))


def size_table(sizes: list[Size]) -> str:
    rows = [[s.resource, str(s.raw), str(s.gzip_9), str(s.gzip_6), s.content_encoding, s.cache_control]
            for s in sizes]
    return signup.format_table(["size (bytes)", "raw", "gzip -9", "gzip -6", "Content-Encoding", "Cache-Control"],
                               rows)


# --- First render in Chromium --------------------------------------------------------------------


# Added to every frame before its own scripts: the epoch time (ms) of the first animation frame in which
# the email input, in the document or in a [data-newsletter] shadow root, has a box and is visible.
RENDER_PROBE = """
(() => {
  const probe = window.__embedBench = { timeOrigin: performance.timeOrigin, rendered: null };
  const giveUp = performance.now() + 30000;
  function emailInput() {
    const direct = document.querySelector("input[type=email]");
    if (direct) return direct;
    for (const host of document.querySelectorAll("[data-newsletter]")) {
      const inner = host.shadowRoot && host.shadowRoot.querySelector("input[type=email]");
      if (inner) return inner;
    }
    return null;
  }
  function visible(input) {
    const box = input.getBoundingClientRect();
    return box.width > 0 && box.height > 0 && input.checkVisibility({ visibilityProperty: true });
  }
  function check() {
    const input = emailInput();
    if (input && visible(input)) probe.rendered = performance.timeOrigin + performance.now();
    else if (performance.now() < giveUp) requestAnimationFrame(check);
  }
  requestAnimationFrame(check);
})();
"""


@dataclass(frozen=True)
class Variant:
    name: str
    what: str
    path: str  # on the article site
    in_frame: bool  # the form is in the article's iframe, not in the article itself
    selector: str  # the email input, for Playwright (its CSS selectors pierce open shadow roots)


VARIANTS = (
    Variant("inline", "the iframe page's form and CSS inline in the article (baseline)", "/inline", False,
            "input[type=email]"),
    Variant("iframe", "<iframe src=/embed/<slug> loading=lazy> + embed.js", "/iframe", True, "input[type=email]"),
    Variant("script", "<div data-newsletter> + embed.js (GET /api/v1/forms, shadow root)", "/script", False,
            "[data-newsletter] input[type=email]"),
)


@dataclass
class Renders:
    """The visits to one kind of article: ms from navigation start until the email input is visible."""

    variant: Variant
    in_page_ms: list[float] = field(default_factory=list)  # measured in the page (RENDER_PROBE)
    wall_ms: list[float] = field(default_factory=list)  # page.goto() to Playwright seeing it visible
    frame_start_ms: list[float] = field(default_factory=list)  # iframe only: its navigation start
    failures: list[str] = field(default_factory=list)


def build_article_pages(site: ArticleSite, base: str, slug: str) -> None:
    frame_page, _ = fetch(f"{base}/embed/{slug}?form_id={slug}-inline")
    style, form = inline_form(frame_page.decode())
    site.pages["/inline"] = article_page("Inline form", form, style).encode()
    site.pages["/iframe"] = article_page("Iframe embed", iframe_snippet(base, slug)).encode()
    site.pages["/script"] = article_page("Script embed", script_snippet(base, slug)).encode()


def warm_up_server(base: str, paths: list[str], workers: int) -> None:
    """Send each path to every gunicorn worker (very likely), so no visit pays for a first request."""
    with ThreadPoolExecutor(max_workers=2 * workers) as pool:
        list(pool.map(lambda path: fetch(base + path), [path for path in paths for _ in range(8 * workers)]))


def visit(browser: Browser, url: str, variant: Variant) -> tuple[float, float, float | None]:
    """One visit in a fresh browser context: (in-page ms, wall-clock ms, the iframe's start in ms or None)."""
    context = browser.new_context(viewport=VIEWPORT, locale="en-US")
    try:
        context.set_default_timeout(RENDER_TIMEOUT_MS)
        context.add_init_script(RENDER_PROBE)
        page = context.new_page()
        scope = page.frame_locator("iframe") if variant.in_frame else page
        began = time.perf_counter()
        page.goto(url, wait_until="commit")
        scope.locator(variant.selector).wait_for(state="visible")
        wall_ms = (time.perf_counter() - began) * 1000
        frame = page.locator("iframe").element_handle().content_frame() if variant.in_frame else page.main_frame
        assert frame is not None
        frame.wait_for_function("() => window.__embedBench && window.__embedBench.rendered")
        rendered, frame_origin = frame.evaluate("() => [__embedBench.rendered, __embedBench.timeOrigin]")
        navigation_start = page.evaluate("() => __embedBench.timeOrigin")
        frame_start = frame_origin - navigation_start if variant.in_frame else None
        return rendered - navigation_start, wall_ms, frame_start
    finally:
        context.close()


def measure_renders(options: Options, site: ArticleSite) -> tuple[list[Renders], str]:
    """Visit each kind of article --runs times, the kinds taking turns; (the visits, the browser's version)."""
    from playwright.sync_api import Error as PlaywrightError
    from playwright.sync_api import sync_playwright

    renders = [Renders(variant) for variant in VARIANTS]
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=options.chromium, headless=True, args=CHROMIUM_ARGS)
        try:
            for round_ in range(-options.browser_warmup, options.runs):
                for turn in range(len(renders)):
                    render = renders[(round_ + turn) % len(renders)]  # rotated: no kind always goes first
                    try:
                        in_page, wall, frame_start = visit(browser, site.url(render.variant.path), render.variant)
                    except PlaywrightError as error:
                        message = str(error).splitlines()[0]
                        if round_ >= 0:
                            render.failures.append(message)
                        log(f"  {render.variant.name}: visit failed: {message}")
                        continue
                    if round_ >= 0:
                        render.in_page_ms.append(in_page)
                        render.wall_ms.append(wall)
                        if frame_start is not None:
                            render.frame_start_ms.append(frame_start)
            return renders, browser.version
        finally:
            browser.close()


def percentile(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q in 0..100), as loadgen reports latency."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]


def render_summary(render: Renders, baseline: Renders) -> dict[str, Any]:
    figures: dict[str, Any] = {"variant": render.variant.name, "what": render.variant.what,
                               "runs": len(render.in_page_ms), "failures": render.failures}
    for q in (50, 90):
        figures[f"p{q}_ms"] = percentile(render.in_page_ms, q)
        figures[f"p{q}_vs_inline"] = figures[f"p{q}_ms"] / percentile(baseline.in_page_ms, q)
        figures[f"wall_p{q}_ms"] = percentile(render.wall_ms, q)
    if render.frame_start_ms:
        figures["iframe_start_p50_ms"] = percentile(render.frame_start_ms, 50)
    figures["in_page_ms"] = [round(v, 1) for v in render.in_page_ms]
    figures["wall_ms"] = [round(v, 1) for v in render.wall_ms]
    return figures


def render_table(summaries: list[dict[str, Any]]) -> str:
    rows = [[s["variant"], str(s["runs"]), str(len(s["failures"])), f"{s['p50_ms']:.0f}", f"{s['p90_ms']:.0f}",
             f"{s['p50_vs_inline']:.2f}", f"{s['p90_vs_inline']:.2f}", f"{s['wall_p50_ms']:.0f}",
             f"{s['wall_p90_ms']:.0f}"] for s in summaries]
    return signup.format_table(["first render (ms)", "runs", "failed", "median", "p90", "median vs inline",
                                "p90 vs inline", "wall median", "wall p90"], rows)


# --- Throughput ----------------------------------------------------------------------------------


def measure_form_and_api(options: Options, server: Gunicorn, site: ArticleSite) -> list[Result]:
    run = secrets.token_hex(4)
    form = loadgen.FormSignups(
        "plain form", server.host, "/subscribe", origin=site.origin, return_to=site.url("/article#subscribed"),
        page_url=site.url("/article"), form_id="bench-plain", email_prefix=f"form-{run}",
        newsletters=(NEWSLETTER_SLUG,))
    api = loadgen.JsonSignups("api", server.host, "/api/v1/subscriptions", f"api-{run}", (NEWSLETTER_SLUG,))
    plan = signup.plan(options.load, server)
    return [
        signup.measure("plain form", f"POST /subscribe form-encoded, Origin {site.origin}, 303 to return_to",
                       form, plan, server),
        signup.measure("api", "POST /api/v1/subscriptions JSON", api, plan, server),
    ]


def row_counts(database_url: str) -> dict[str, int]:
    """What the runs left in the database, to check the answers against."""
    queries = {
        "baseline rows": "SELECT count(*) FROM bench_baseline",
        "readers": "SELECT count(*) FROM readers",
        "subscriptions pending": "SELECT count(*) FROM subscriptions WHERE status = 'pending'",
        "consent events embed-form": "SELECT count(*) FROM consent_events WHERE source = 'embed-form' "
                                     "AND action = 'signup_requested' AND form_id = 'bench-plain'",
        "consent events api": "SELECT count(*) FROM consent_events WHERE source = 'api' "
                              "AND action = 'signup_requested'",
        "outbox confirmation mails": "SELECT count(*) FROM outbox_messages WHERE kind = 'confirmation'",
    }
    return dict(zip(queries, signup._admin_execute(database_url, *queries.values())))


def mismatches(answered: dict[str, int], counts: dict[str, int]) -> list[str]:
    """Where the rows in the database don't match the accepted answers (each must leave its rows)."""
    signups = answered["plain form"] + answered["api"]
    expected = {"baseline rows": answered["baseline"], "readers": signups, "subscriptions pending": signups,
                "consent events embed-form": answered["plain form"], "consent events api": answered["api"],
                "outbox confirmation mails": signups}
    return [f"{name}: {counts[name]} in the database, but {want} accepted answers"
            for name, want in expected.items() if counts[name] != want]


# --- Report --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    summary: dict[str, Any]
    sizes: list[Size]
    renders: list[dict[str, Any]]
    results: list[Result]
    peaks: dict[str, signup.PeakRss]
    answered: dict[str, int]
    counts: dict[str, int]
    problems: list[str]


def report(outcome: Outcome) -> str:
    settings = ", ".join(f"{key} {value}" for key, value in outcome.summary.items())
    parts = [settings, "", size_table(outcome.sizes),
             "(the app sends them uncompressed; the gzip columns are what a compressing proxy would send)", "",
             render_table(outcome.renders),
             "ms from the article's navigation start to the first animation frame with the email input visible,",
             "measured in the page; vs inline: the ratio to the inline form's figure of this run; wall: page.goto()",
             "to Playwright seeing the input visible, measured by this script", ""]
    starts = [r for r in outcome.renders if "iframe_start_p50_ms" in r]
    parts += [f"iframe: its own navigation starts {r['iframe_start_p50_ms']:.0f} ms (median) after the article's"
              for r in starts]
    for render in outcome.renders:
        parts += [f"failed visit ({render['variant']}): {failure}" for failure in render["failures"][:3]]
    parts += ["", signup.throughput_table(outcome.results),
              "errors: answers other than the accepted one (2xx; for the plain form 303 to its return_to), "
              "failed connections", "", signup.cpu_table(outcome.results), "", signup.rss_table(outcome.peaks), "",
              "rows left: " + ", ".join(f"{name} {count}" for name, count in outcome.counts.items()),
              "check: " + ("every accepted request left its rows" if not outcome.problems
                           else "MISMATCH " + "; ".join(outcome.problems))]
    for result in outcome.results:
        parts += [f"error in {result.scenario}: {sample}" for sample in result.measurement.error_samples]
    return "\n".join(parts)


def save_json(results_dir: Path, outcome: Outcome) -> Path:
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f"embed-{datetime.now():%Y%m%d-%H%M%S}.json"
    path.write_text(json.dumps({
        "settings": outcome.summary, "sizes": [asdict(size) for size in outcome.sizes],
        "first_render": _rounded(outcome.renders), "throughput": signup.scenarios_json(outcome.results),
        "peak_rss": {name: asdict(peak) for name, peak in outcome.peaks.items()},
        "accepted": outcome.answered, "rows": outcome.counts, "mismatches": outcome.problems,
    }, indent=2) + "\n")
    return path


def _rounded(value: Any) -> Any:
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 3)
    if isinstance(value, dict):
        return {key: _rounded(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_rounded(item) for item in value]
    return value


# --- Main ----------------------------------------------------------------------------------------


@dataclass
class AppRun:
    sizes: list[Size]
    renders: list[Renders]
    browser_version: str
    throughput: signup.ServerRun


def run_app(options: Options, env: dict[str, str], work_dir: Path, site: ArticleSite) -> AppRun:
    """Sizes, first renders and the two signup paths, against one gunicorn serving the app."""
    load = options.load
    with Gunicorn("app", "wsgi:app", PROJECT_DIR, load.workers, env, work_dir, load.database_name) as server:
        server.wait_ready("/subscribe")
        base, slug = f"http://{server.host}", NEWSLETTER_SLUG
        sizes = [measure_size(base, path)
                 for path in ("/embed.js", f"/embed/{slug}", f"/api/v1/forms?newsletters={slug}")]
        build_article_pages(site, base, slug)
        warm_up_server(base, ["/embed.js", f"/embed/{slug}?form_id={slug}-frame",
                              f"/api/v1/forms?newsletters={slug}&lang=en-US"], load.workers)
        log(f"first render: {options.runs} visits per kind (+{options.browser_warmup} rounds of warmup), "
            f"fresh browser contexts")
        renders, browser_version = measure_renders(options, site)
        results = measure_form_and_api(options, server, site)
        answered = {result.scenario: result.measurement.all_ok for result in results}
        return AppRun(sizes, renders, browser_version, signup.ServerRun(results, server.peak_rss(), answered))


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))  # clean up as on Ctrl-C
    busy_before = signup.machine_busy_percent()
    if busy_before > 20:
        log(f"warning: the machine is {busy_before:.0f}% busy before the benchmark; expect noisy results")
    load = options.load
    with contextlib.ExitStack() as cleanup:
        site = cleanup.enter_context(ArticleSite())
        log(f"creating database {load.database_name}; the article site is {site.origin}")
        database_url = cleanup.enter_context(signup.fresh_database(load.database_url, load.database_name))
        work_dir = Path(cleanup.enter_context(tempfile.TemporaryDirectory(prefix="newsletter-bench-")))
        env = signup.app_environment(database_url, work_dir / "instance", secrets.token_urlsafe(32))
        env["NEWSLETTER_ALLOWED_ORIGINS"] = site.origin
        signup.prepare_database(env, database_url)
        summary = signup.environment_summary(load, database_url, busy_before)

        baseline = signup.run_baseline(load, env, work_dir)
        app = run_app(options, env, work_dir, site)
        signup.compare_with(baseline.results[0], app.throughput.results)
        summary |= {"database": "postgresql", "chromium": app.browser_version, "render_runs": options.runs,
                    "browser_warmup_rounds": options.browser_warmup}
        answered = baseline.answered | app.throughput.answered
        counts = row_counts(database_url)
        inline = app.renders[0]
        outcome = Outcome(summary, app.sizes, [render_summary(render, inline) for render in app.renders],
                          baseline.results + app.throughput.results,
                          {"baseline": baseline.peak_rss, "app": app.throughput.peak_rss},
                          answered, counts, mismatches(answered, counts))

        print(report(outcome), flush=True)
        if load.json:
            log(f"wrote {save_json(load.results_dir, outcome)}")
    return 1 if outcome.problems else 0


if __name__ == "__main__":
    sys.path.insert(0, str(PROJECT_DIR))  # the newsletter package, when run with a Python that lacks it
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; stopped the servers and dropped the database", file=sys.stderr)
        sys.exit(130)
