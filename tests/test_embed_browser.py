"""The embeddable signup forms in a real browser (Debian's Chromium driven by Playwright).

An article page is served from a second origin (another port on 127.0.0.1: a different origin, the
same site) and carries every embed kind: two iframes, two script-embedded forms (embed.js) and one
plain HTML form posting to /subscribe. A page on a third port, not in NEWSLETTER_ALLOWED_ORIGINS,
stands for a site that may not embed the forms. Signups go through the live app to a real SMTP
server; the consent_events rows say where each came from. Screenshots land in tests/artifacts/.
"""

from __future__ import annotations

import html
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pytest
import requests
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from .conftest import query

playwright_api = pytest.importorskip("playwright.sync_api")
expect = playwright_api.expect

CHROMIUM = "/usr/bin/chromium"
if not Path(CHROMIUM).exists():
    # CI sets NEWSLETTER_REQUIRE_BROWSER, so there a missing browser fails instead of skipping.
    if os.environ.get("NEWSLETTER_REQUIRE_BROWSER"):
        raise RuntimeError(f"{CHROMIUM} is missing: apt-get install -y chromium")
    pytest.skip("Debian's Chromium is not installed (apt-get install -y chromium)", allow_module_level=True)
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"

THANKS = "Thank you for signing up for this newsletter. We've sent you a confirmation email."
INVALID = "Please, enter correct email address"
TIMEOUT_MS = 10_000


# ---------------------------------------------------------------- the embedding sites ----------

@dataclass
class Site:
    """A tiny web site on its own port: its pages are built per request from the current app URL."""

    pages: dict[str, Callable[[Site], str]]
    base: str = ""  # the newsletter app's URL, set by each test (live_server's port changes)
    origin: str = ""

    def url(self, path: str) -> str:
        return self.origin + path

    def __call__(self, environ, start_response):
        request = Request(environ)
        build = self.pages.get(request.path)
        if build is None:
            return Response("not found", 404)(environ, start_response)
        return Response(build(self), mimetype="text/html")(environ, start_response)


def _serve(site: Site) -> Iterator[Site]:
    server = make_server("127.0.0.1", 0, site, threaded=True)
    site.origin = f"http://127.0.0.1:{server.port}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield site
    server.shutdown()
    thread.join(5)


PAGE_STYLE = """
  body { font: 17px/1.5 system-ui, sans-serif; max-width: 46rem; margin: 1.5rem auto; padding: 0 1rem; color: #222; }
  section.embed { border: 1px solid #ccc; border-radius: 6px; padding: .75rem; margin: 1.25rem 0; }
  section.embed > h2 { font-size: .8rem; text-transform: uppercase; color: #777; margin: 0 0 .5rem; }
"""


def article_page(site: Site) -> str:
    """An article carrying every embed kind, marked up as templates/embed/_snippets.html suggests."""
    base, article = html.escape(site.base), site.url("/article")
    page = quote(article, safe="")
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>An article with signup forms</title><style>{PAGE_STYLE}</style></head>
<body>
<h1>Council approves the new tram line</h1>
<p>The city council voted on Tuesday to build a tram line across the river. Work starts in spring.</p>

<section class="embed" id="box-frame-1"><h2>Iframe, one newsletter</h2>
<iframe id="frame-1" src="{base}/embed/daily-briefing?form_id=frame-1"
        title="Subscribe to The Daily Briefing" loading="lazy"
        style="border:0;width:100%;max-width:480px;height:260px"></iframe>
<script src="{base}/embed.js" async></script>
</section>

<section class="embed" id="box-frame-2"><h2>Iframe, a choice of newsletters</h2>
<iframe id="frame-2" src="{base}/embed?newsletters=daily-briefing,weekly-explainer&amp;form_id=frame-2&amp;page={page}"
        title="Subscribe to our newsletters" loading="lazy"
        style="border:0;width:100%;max-width:480px;height:260px"></iframe>
</section>

<p>The line will have eleven stops. <a id="before-script-1" href="#box-script-1">Read more below</a>.</p>

<section class="embed" id="box-script-1"><h2>Script, one newsletter</h2>
<div data-newsletter="daily-briefing" data-form-id="script-1">
  <a href="{base}/subscribe/daily-briefing">Subscribe to The Daily Briefing</a>
</div>
<script src="{base}/embed.js" async></script>
</section>

<section class="embed" id="box-script-2"><h2>Script, a choice of newsletters</h2>
<div data-newsletter="weekly-explainer,no-welcome" data-form-id="script-2">
  <a href="{base}/subscribe/weekly-explainer">Subscribe to The Weekly Explainer</a>
</div>
<script src="{base}/embed.js" async></script>
</section>

<section class="embed" id="box-plain"><h2>Plain HTML form</h2>
<form action="{base}/subscribe" method="post">
  <input type="hidden" name="newsletters" value="daily-briefing">
  <input type="hidden" name="form_id" value="plain-1">
  <input type="hidden" name="return_to" value="{html.escape(article)}#subscribed">
  <input type="hidden" name="page_url" value="{html.escape(article)}">
  <label for="daily-briefing-email">Enter your email to subscribe to The Daily Briefing
    <span aria-hidden="true">*</span></label>
  <input type="email" id="daily-briefing-email" name="email" required autocomplete="email">
  <div style="position:absolute;left:-10000px" aria-hidden="true">
    <label>Leave this field empty <input type="text" name="website" tabindex="-1" autocomplete="off"></label>
  </div>
  <p><span aria-hidden="true">*</span> indicates required</p>
  <button type="submit">Subscribe</button>
</form>
</section>
<p id="subscribed">The end of the article.</p>
</body>
</html>"""


def foreign_page(site: Site) -> str:
    """A page on a site that is not allowed to embed the forms, trying all three kinds."""
    base = html.escape(site.base)
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Not an allowed site</title><style>{PAGE_STYLE}</style></head>
<body>
<h1>Someone else's page</h1>
<iframe id="foreign-frame" src="{base}/embed/daily-briefing?form_id=foreign-frame"
        title="Subscribe to The Daily Briefing" style="border:0;width:100%;max-width:480px;height:260px"></iframe>
<div data-newsletter="daily-briefing" data-form-id="foreign-script">
  <a href="{base}/subscribe/daily-briefing">Subscribe to The Daily Briefing</a>
</div>
<script src="{base}/embed.js" async></script>
<form id="foreign-form" action="{base}/subscribe" method="post">
  <input type="hidden" name="newsletters" value="daily-briefing">
  <input type="hidden" name="form_id" value="foreign-plain">
  <label for="foreign-email">Email</label>
  <input type="email" id="foreign-email" name="email" required>
  <button type="submit">Subscribe</button>
</form>
</body>
</html>"""


@pytest.fixture(scope="module")
def article_site() -> Iterator[Site]:
    yield from _serve(Site({"/article": article_page}))


@pytest.fixture(scope="module")
def foreign_site() -> Iterator[Site]:
    yield from _serve(Site({"/page": foreign_page}))


@dataclass
class Sites:
    base: str
    article: Site
    foreign: Site

    @property
    def article_url(self) -> str:
        return self.article.url("/article")


@pytest.fixture
def article_allowed_at_start(article_site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    # As an operator allows a site: in the environment when the app starts. flask-cors reads the
    # origins only then (create_app), unlike the per-request checks (Origin, return_to, frame-ancestors).
    monkeypatch.setenv("NEWSLETTER_ALLOWED_ORIGINS", article_site.origin)


@pytest.fixture
def app(article_allowed_at_start, app):
    """conftest's app (both backends), started with the article's site allowed."""
    return app


@pytest.fixture
def sites(app, live_server: str, article_site: Site, foreign_site: Site) -> Sites:
    """The live app with the article's site allowed to embed it, in app.config too (read per request)."""
    app.config["NEWSLETTER_ALLOWED_ORIGINS"] = [article_site.origin]
    article_site.base = foreign_site.base = live_server
    return Sites(live_server, article_site, foreign_site)


# ---------------------------------------------------------------- the browser -----------------

@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


def _new_page(browser, **options):
    context = browser.new_context(viewport={"width": 1000, "height": 900}, locale="en-US", **options)
    context.set_default_timeout(TIMEOUT_MS)
    page = context.new_page()
    page.problems = []  # type: ignore[attr-defined]
    page.on("pageerror", lambda error: page.problems.append(f"page error: {error}"))
    page.on("console", lambda message: page.problems.append(f"console {message.type}: {message.text}")
            if message.type == "error" else None)
    return context, page


@pytest.fixture
def page(browser):
    context, page = _new_page(browser)
    yield page
    context.close()


@pytest.fixture
def page_without_js(browser):
    context, page = _new_page(browser, java_script_enabled=False)
    yield page
    context.close()


# ---------------------------------------------------------------- helpers ---------------------

def consent_rows(app) -> list[tuple]:
    """(email, newsletter, action, source, form_id, page_url) of every consent event, in a stable order."""
    return [tuple(row) for row in query(app, """
        SELECT r.email, n.slug, e.action, e.source, e.form_id, e.page_url
        FROM consent_events e JOIN readers r ON r.id = e.reader_id JOIN newsletters n ON n.id = e.newsletter_id
        ORDER BY r.email, n.slug""")]


def rows_of(app, email: str) -> list[tuple]:
    return [row[1:] for row in consent_rows(app) if row[0] == email]


def recipients(messages) -> list[str]:
    return sorted(message["To"].addresses[0].addr_spec for message in messages)


def script_form(page, form_id: str, sites: Sites):
    """The host of a script-embedded form, once embed.js has drawn it (explains why when it hasn't)."""
    host = page.locator(f'[data-form-id="{form_id}"]')
    try:
        expect(host.locator("input[type=email]")).to_be_visible()
    except AssertionError:
        # Say why: embed.js reads /api/v1/forms cross-origin, so it needs CORS for the article's origin.
        probe = requests.get(f"{sites.base}/api/v1/forms?newsletters=daily-briefing",
                             headers={"Origin": sites.article.origin}, timeout=10)
        raise AssertionError(
            f"embed.js drew no form in [data-form-id={form_id}]. GET /api/v1/forms with Origin "
            f"{sites.article.origin} (in NEWSLETTER_ALLOWED_ORIGINS={sites.article.origin!r}) answers "
            f"{probe.status_code}, Access-Control-Allow-Origin={probe.headers.get('Access-Control-Allow-Origin')!r}. "
            f"Browser said: {page.problems}") from None
    return host


def frame_of(page, frame_id: str):
    """The Playwright Frame inside <iframe id=frame_id>, after it has loaded."""
    element = page.locator(f"#{frame_id}")
    element.scroll_into_view_if_needed()  # the snippet's iframes are loading="lazy"
    frame = element.element_handle().content_frame()
    assert frame is not None
    frame.wait_for_load_state("load")
    return frame


def eventually(check: Callable[[], object], timeout: float = 5.0, every: float = 0.1):
    """check()'s value once it is truthy; the last value when time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(every)


def shoot(locator, name: str) -> None:
    """A screenshot of one element in tests/artifacts/, for people to look at; never fails the test."""
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        locator.screenshot(path=str(ARTIFACTS / name), timeout=3000)
    except playwright_api.Error:
        pass


def assert_described_error(input_locator, message: str) -> None:
    """The field is marked invalid and points (aria-describedby) at an element next to it showing `message`."""
    expect(input_locator).to_have_attribute("aria-invalid", "true")
    described = input_locator.get_attribute("aria-describedby")
    assert described, "the invalid field has no aria-describedby"
    error = input_locator.locator(f"xpath=../*[@id='{described}']")  # a sibling in the same form
    expect(error).to_be_visible()
    expect(error).to_contain_text(message)


# ---------------------------------------------------------------- tests -----------------------

def returning_reader(page, sites: Sites) -> None:
    """Visit one of our pages first, so the iframes on the article find our session cookie already set.

    On a first visit, two iframes loading at once each start a session of their own and the form of one
    of them fails its CSRF check: test_two_iframes_on_a_first_visit covers that case by itself.
    """
    page.goto(f"{sites.base}/embed/daily-briefing")
    assert any(cookie["name"] == "session" for cookie in page.context.cookies(sites.base))


def test_signup_through_every_embed_kind_with_javascript(app, sites, smtp, page):
    article = sites.article_url
    returning_reader(page, sites)
    page.goto(article)

    # Iframe, one newsletter: the thank-you replaces the form inside the frame.
    frame_1 = page.frame_locator("#frame-1")
    page.locator("#frame-1").scroll_into_view_if_needed()
    frame_1.get_by_label("Enter your email to subscribe").fill("frame-one@example.com")
    frame_1.get_by_role("button", name="Subscribe").click()
    expect(frame_1.locator(".thanks")).to_have_text(THANKS)
    expect(frame_1.locator("form")).to_have_count(0)
    shoot(page.locator("#frame-1"), "embed-iframe-thanks.png")

    # Iframe, a choice: pick one of two.
    frame_2 = page.frame_locator("#frame-2")
    page.locator("#frame-2").scroll_into_view_if_needed()
    frame_2.get_by_label("Enter your email to subscribe").fill("frame-two@example.com")
    frame_2.get_by_label("The Weekly Explainer").check()
    frame_2.get_by_role("button", name="Subscribe").click()
    expect(frame_2.locator(".thanks")).to_have_text(THANKS)

    # Script form, one newsletter: the thank-you appears in its shadow root and takes the focus.
    script_1 = script_form(page, "script-1", sites)
    assert script_1.evaluate("host => host.shadowRoot !== null && host.shadowRoot.mode === 'open'")
    script_1.get_by_label("Enter your email to subscribe").fill("script-one@example.com")
    script_1.get_by_role("button", name="Subscribe").click()
    expect(script_1.locator(".thanks")).to_have_text(THANKS)
    expect(script_1.locator(".thanks")).to_be_focused()
    expect(script_1.locator("form")).to_have_count(0)
    shoot(script_1, "embed-script-thanks.png")

    # Script form, a choice of two: both.
    script_2 = script_form(page, "script-2", sites)
    script_2.get_by_label("Enter your email to subscribe").fill("script-two@example.com")
    script_2.get_by_label("The Weekly Explainer").check()
    script_2.get_by_label("Quiet Letter").check()
    script_2.get_by_role("button", name="Subscribe").click()
    expect(script_2.locator(".thanks")).to_have_text(THANKS)

    # Plain form, last (it leaves the page): back on the article, at the fragment it asked for.
    plain = page.locator("#box-plain")
    plain.get_by_label("Enter your email to subscribe to The Daily Briefing").fill("plain-form@example.com")
    plain.get_by_role("button", name="Subscribe").click()
    page.wait_for_url(article + "#subscribed")
    assert page.url == article + "#subscribed"

    messages = smtp.inbox.wait_for(5)
    assert recipients(messages) == ["frame-one@example.com", "frame-two@example.com", "plain-form@example.com",
                                    "script-one@example.com", "script-two@example.com"]
    assert all("confirm" in message["Subject"].lower() for message in messages), [m["Subject"] for m in messages]

    assert rows_of(app, "frame-two@example.com") == [
        ("weekly-explainer", "signup_requested", "embed-iframe", "frame-2", article)]
    assert rows_of(app, "script-one@example.com") == [
        ("daily-briefing", "signup_requested", "embed-script", "script-1", article)]
    assert rows_of(app, "script-two@example.com") == [
        ("no-welcome", "signup_requested", "embed-script", "script-2", article),
        ("weekly-explainer", "signup_requested", "embed-script", "script-2", article)]
    assert rows_of(app, "plain-form@example.com") == [
        ("daily-briefing", "signup_requested", "embed-form", "plain-1", article)]
    # The iframe snippet passes no page=: the event must still name the article's site, not our own
    # /embed URL (the frame is never the page the reader was on).
    [(slug, action, source, form_id, page_url)] = rows_of(app, "frame-one@example.com")
    assert (slug, action, source, form_id) == ("daily-briefing", "signup_requested", "embed-iframe", "frame-1")
    assert not [p for p in page.problems if "embed.js" in p or "/api/" in p], page.problems
    assert page_url and page_url.startswith(sites.article.origin + "/"), (
        f"the iframe signup recorded page_url={page_url!r}, not the embedding article's page")


def test_signup_without_javascript(app, sites, smtp, page_without_js):
    page = page_without_js
    article = sites.article_url
    returning_reader(page, sites)
    page.goto(article)

    # Without JavaScript the script embeds stay a plain link to the hosted signup page.
    fallback = page.locator('[data-form-id="script-1"] a')
    expect(fallback).to_have_attribute("href", f"{sites.base}/subscribe/daily-briefing")
    assert page.locator('[data-form-id="script-1"]').evaluate("host => host.shadowRoot") is None

    # The iframe still works: a real form post inside the frame, the thank-you shown there.
    frame_1 = page.frame_locator("#frame-1")
    frame_1.get_by_label("Enter your email to subscribe").fill("nojs-frame@example.com")
    frame_1.get_by_role("button", name="Subscribe").click()
    expect(frame_1.get_by_text(THANKS)).to_be_visible()

    # The plain form: through /subscribe and straight back to the article's #fragment.
    plain = page.locator("#box-plain")
    plain.get_by_label("Enter your email to subscribe to The Daily Briefing").fill("nojs-plain@example.com")
    plain.get_by_role("button", name="Subscribe").click()
    page.wait_for_url(article + "#subscribed")

    assert recipients(smtp.inbox.wait_for(2)) == ["nojs-frame@example.com", "nojs-plain@example.com"]
    assert rows_of(app, "nojs-plain@example.com") == [
        ("daily-briefing", "signup_requested", "embed-form", "plain-1", article)]
    [(slug, action, source, form_id, page_url)] = rows_of(app, "nojs-frame@example.com")
    assert (slug, action, source, form_id) == ("daily-briefing", "signup_requested", "embed-iframe", "frame-1")
    assert page_url and page_url.startswith(sites.article.origin + "/"), (
        f"the iframe signup recorded page_url={page_url!r}, not the embedding article's page")


def test_two_iframes_on_a_first_visit(app, sites, smtp, page):
    """A reader's first visit: both iframes of the article take a signup (no cookie set beforehand)."""
    page.goto(sites.article_url)
    for frame_id, address in (("frame-1", "first-visit-1@example.com"), ("frame-2", "first-visit-2@example.com")):
        frame_of(page, frame_id)
        frame = page.frame_locator(f"#{frame_id}")
        frame.get_by_label("Enter your email to subscribe").fill(address)
        if frame_id == "frame-2":
            frame.get_by_label("The Daily Briefing").check()
        inside = frame_of(page, frame_id)
        blocked = None
        with page.expect_response(lambda r: r.request.method == "POST" and "/embed" in r.url) as answer:
            try:
                with inside.expect_navigation():
                    frame.get_by_role("button", name="Subscribe").click()
            except playwright_api.Error as error:  # e.g. net::ERR_BLOCKED_BY_RESPONSE
                blocked = error.message.splitlines()[0]
        try:
            errors = [line.strip() for line in answer.value.text().splitlines() if 'class="error"' in line]
        except playwright_api.Error:
            errors = []
        assert answer.value.status == 200 and not blocked, (
            f"{frame_id}: the signup was answered {answer.value.status} {errors} and the frame showed "
            f"{blocked or inside.url}")
        expect(frame.locator(".thanks")).to_have_text(THANKS)
    assert recipients(smtp.inbox.wait_for(2)) == ["first-visit-1@example.com", "first-visit-2@example.com"]


def test_iframe_error_page_shows_in_the_frame(app, sites, page):
    """Our error pages under /embed are framed like the form: the reader sees the message, not a broken frame."""
    page.goto(sites.article_url)
    page.evaluate("""(base) => {
        const frame = document.createElement("iframe");
        frame.id = "frame-missing";
        frame.src = base + "/embed/no-such-newsletter";
        frame.style = "border:0;width:100%;height:120px";
        document.body.prepend(frame);
    }""", sites.base)
    frame = frame_of(page, "frame-missing")
    assert frame.url == f"{sites.base}/embed/no-such-newsletter", (
        f"the 404 page of /embed was blocked in the article's frame ({frame.url})")
    expect(page.frame_locator("#frame-missing").get_by_role("alert")).to_be_visible()


def test_inline_errors_in_script_form_and_iframe(app, sites, smtp, page):
    returning_reader(page, sites)
    page.goto(sites.article_url)
    posts: list[str] = []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" and "/api/v1/subscriptions" in r.url
            else None)

    script_1 = script_form(page, "script-1", sites)
    email = script_1.locator("input[type=email]")
    button = script_1.get_by_role("button", name="Subscribe")

    # Caught in the browser: no request, the message next to the field, the field says so.
    email.fill("not-an-email")
    button.click()
    assert_described_error(email, INVALID)
    expect(email).to_be_focused()
    assert posts == []

    # Passes the simple check in the browser, fails the server's validation: its 422 is shown inline.
    email.fill("reader@localhost")
    with page.expect_response(lambda r: "/api/v1/subscriptions" in r.url and r.request.method == "POST") as caught:
        button.click()
    response = caught.value
    assert response.status == 422
    [server_message] = response.json()["errors"]["email"]
    assert_described_error(email, server_message)
    expect(script_1.get_by_text(INVALID)).to_have_count(0)  # the old message is gone
    expect(button).to_be_enabled()
    expect(button).to_have_text("Subscribe")
    shoot(script_1, "embed-script-error.png")

    # Put right, the errors go away and the signup is taken.
    email.fill("fixed@example.com")
    button.click()
    expect(script_1.locator(".thanks")).to_have_text(THANKS)

    # The iframe: the server's error shown inside the frame, on the field.
    frame_1 = page.frame_locator("#frame-1")
    page.locator("#frame-1").scroll_into_view_if_needed()
    frame_email = frame_1.get_by_label("Enter your email to subscribe")
    frame_email.fill("a@b")
    frame_1.get_by_role("button", name="Subscribe").click()
    expect(frame_1.locator(".error").first).to_be_visible()
    frame_email = frame_1.get_by_label("Enter your email to subscribe")
    assert_described_error(frame_email, "period")
    expect(frame_email).to_have_value("a@b")  # what the reader typed is kept
    expect(frame_1.get_by_text(THANKS)).to_have_count(0)
    shoot(page.locator("#frame-1"), "embed-iframe-error.png")

    assert recipients(smtp.inbox.wait_for(1)) == ["fixed@example.com"]
    assert [row[0] for row in consent_rows(app)] == ["fixed@example.com"]


def test_script_form_by_keyboard(app, sites, smtp, page):
    page.goto(sites.article_url)
    script_1 = script_form(page, "script-1", sites)
    email = script_1.locator("input[type=email]")
    button = script_1.get_by_role("button", name="Subscribe")

    page.locator("#before-script-1").focus()
    page.keyboard.press("Tab")
    expect(email).to_be_focused()
    page.keyboard.press("Tab")  # past the honeypot (tabindex=-1) straight to the button
    expect(button).to_be_focused()
    page.keyboard.press("Shift+Tab")
    expect(email).to_be_focused()

    page.keyboard.type("keyboard@example.com")
    page.keyboard.press("Enter")
    expect(script_1.locator(".thanks")).to_have_text(THANKS)
    expect(script_1.locator(".thanks")).to_be_focused()
    assert recipients(smtp.inbox.wait_for(1)) == ["keyboard@example.com"]
    assert rows_of(app, "keyboard@example.com") == [
        ("daily-briefing", "signup_requested", "embed-script", "script-1", sites.article_url)]


def _heights(page, frame_id: str) -> tuple[float, float, float]:
    """(the iframe element's height on the article, its document's scrollHeight, its content's height)."""
    element = page.locator(f"#{frame_id}")
    frame = frame_of(page, frame_id)
    outer = element.evaluate("e => e.getBoundingClientRect().height")
    scroll, content = frame.evaluate("""() => [document.documentElement.scrollHeight,
                                              Math.ceil(document.body.getBoundingClientRect().bottom)]""")
    return outer, scroll, content


def _fits(page, frame_id: str) -> bool:
    """The iframe is as tall as its content (within a few px) and has nothing to scroll."""
    outer, scroll, content = _heights(page, frame_id)
    return abs(outer - content) <= 4 and outer >= scroll - 4


def test_iframes_fit_their_content(app, sites, page):
    returning_reader(page, sites)
    page.goto(sites.article_url)
    for frame_id in ("frame-1", "frame-2"):
        assert eventually(lambda: _fits(page, frame_id)), (
            f"{frame_id}: (iframe height, scrollHeight, content height) = {_heights(page, frame_id)}")
        # embed.js set the height: the snippet's 260px is gone (unless the content is 260px tall).
        style = page.locator(f"#{frame_id}").evaluate("e => e.style.height")
        assert style != "260px" or abs(_heights(page, frame_id)[2] - 260) <= 4, style

    # It follows its content: errors make the form taller and the frame grows with it…
    before = _heights(page, "frame-2")[0]
    frame_2 = page.frame_locator("#frame-2")
    frame_2.get_by_label("Enter your email to subscribe").fill("a@b")
    frame_2.get_by_role("button", name="Subscribe").click()  # and no newsletter ticked: two errors
    expect(frame_2.locator(".error")).to_have_count(2)
    assert eventually(lambda: _heights(page, "frame-2")[0] > before + 20), (before, _heights(page, "frame-2"))
    assert eventually(lambda: _fits(page, "frame-2")), _heights(page, "frame-2")
    # …and the short thank-you makes it shrink again.
    grown = _heights(page, "frame-2")[0]
    frame_2.get_by_label("Enter your email to subscribe").fill("fits@example.com")
    frame_2.get_by_label("The Daily Briefing").check()
    frame_2.get_by_role("button", name="Subscribe").click()
    expect(frame_2.locator(".thanks")).to_have_text(THANKS)
    assert eventually(lambda: _fits(page, "frame-2")), (
        f"after the thank-you: (iframe height, scrollHeight, content height) = {_heights(page, 'frame-2')}, "
        f"was {grown}")


def test_an_iframe_loaded_before_embed_js_still_fits(app, sites, page):
    """embed.js is async: a frame may report its height before anyone listens; embed.js asks again."""
    held = []
    page.route("**/embed.js", lambda route: held.append(route))  # embed.js waits until the frames have loaded and reported
    page.goto(sites.article_url, wait_until="commit")
    expect(page.frame_locator("#frame-1").get_by_role("button", name="Subscribe")).to_be_visible()
    [frame] = [frame for frame in page.frames if "form_id=frame-1" in frame.url]
    frame.wait_for_load_state("load")  # it has reported its height: to nobody yet
    assert _heights(page, "frame-1")[0] == 260 and not _fits(page, "frame-1")  # the snippet's height, unfitted
    assert held, "embed.js was not requested"
    for route in held:
        route.continue_()
    assert eventually(lambda: _fits(page, "frame-1")), _heights(page, "frame-1")


def test_a_site_not_allowed_can_neither_frame_nor_post(app, sites, smtp, page):
    foreign = sites.foreign
    api_calls: list[tuple[str, str]] = []
    page.on("requestfailed", lambda r: api_calls.append(("failed", r.url)) if "/api/v1/" in r.url else None)
    page.on("requestfinished", lambda r: api_calls.append(("finished", r.url)) if "/api/v1/" in r.url else None)
    page.goto(foreign.url("/page"))
    page.wait_for_load_state("load")

    # The frame is refused by CSP frame-ancestors: Chromium shows its error page, no form.
    frame = frame_of(page, "foreign-frame")
    assert not frame.url.startswith(sites.base), frame.url
    assert "<form" not in frame.content()
    assert eventually(lambda: any("/api/v1/forms" in url for _, url in api_calls)), api_calls

    # embed.js can't read /api/v1/forms (no CORS for this origin): no form drawn, the link stays.
    host = page.locator('[data-form-id="foreign-script"]')
    assert host.evaluate("h => h.shadowRoot === null || h.shadowRoot.querySelector('form') === null")
    expect(host.locator("a")).to_be_visible()
    assert ("failed", f"{sites.base}/api/v1/forms?newsletters=daily-briefing&lang=en") in api_calls, api_calls

    # A script on the page posting to the API: the JSON POST's preflight fails (or it is refused)…
    outcome = page.evaluate("""async (base) => {
        try {
            const response = await fetch(base + "/api/v1/subscriptions", {method: "POST",
                headers: {"Content-Type": "application/json"},
                body: JSON.stringify({email: "foreign-fetch@example.com", newsletters: ["daily-briefing"]})});
            return {status: response.status};
        } catch (error) { return {error: String(error)}; }
    }""", sites.base)
    assert "error" in outcome or outcome["status"] == 403, outcome
    # …and a "simple" no-cors POST, which skips the preflight, reaches the server and is refused there.
    with page.expect_response(lambda r: "/api/v1/subscriptions" in r.url and r.request.method == "POST") as caught:
        page.evaluate("""(base) => fetch(base + "/api/v1/subscriptions", {method: "POST", mode: "no-cors",
            headers: {"Content-Type": "text/plain"},
            body: JSON.stringify({email: "foreign-simple@example.com", newsletters: ["daily-briefing"]})}
        ).catch(() => null)""", sites.base)
    assert caught.value.status == 403

    # The plain form: a 403 page that says why.
    page.locator("#foreign-email").fill("foreign-form@example.com")
    with page.expect_navigation() as navigation:
        page.get_by_role("button", name="Subscribe").click()
    assert navigation.value.status == 403
    expect(page.locator("body")).to_contain_text("not allowed to embed")

    assert query(app, "SELECT COUNT(*) FROM readers")[0][0] == 0
    assert query(app, "SELECT COUNT(*) FROM consent_events")[0][0] == 0
    assert query(app, "SELECT COUNT(*) FROM outbox_messages")[0][0] == 0

    # The control: once the site is allowed, the same page frames the form. (So the check above is
    # really CSP frame-ancestors at work, not a frame that failed to load for another reason.)
    app.config["NEWSLETTER_ALLOWED_ORIGINS"] = [sites.article.origin, foreign.origin]
    page.goto(foreign.url("/page"))
    allowed = frame_of(page, "foreign-frame")
    assert allowed.url.startswith(f"{sites.base}/embed/daily-briefing")
    expect(page.frame_locator("#foreign-frame").get_by_label("Enter your email to subscribe")).to_be_visible()


SHOTS = {  # file name: what it shows
    "embed-plain-form.png": "#box-plain",
    "embed-iframe.png": "#frame-1",
    "embed-iframe-choice.png": "#frame-2",
    "embed-script-form.png": '[data-form-id="script-1"]',
    "embed-script-choice.png": '[data-form-id="script-2"]',
}


def test_screenshots_of_each_embed_kind(app, sites, page):
    """Screenshots in tests/artifacts/ (taken even when a check fails), and each form fully visible."""
    ARTIFACTS.mkdir(exist_ok=True)
    page.goto(sites.article_url)
    try:
        for frame_id in ("frame-1", "frame-2"):
            frame_of(page, frame_id)
            page.frame_locator(f"#{frame_id}").get_by_role("button", name="Subscribe").wait_for()
        script_1 = script_form(page, "script-1", sites)
        script_form(page, "script-2", sites)
        page.wait_for_timeout(300)  # let the frames settle to their reported heights

        # Each kind shows its label, field and button, all inside its box (nothing clipped).
        kinds = {
            "plain": (page.locator("#box-plain"), page.locator("#box-plain")),
            "iframe": (page.locator("#frame-1"), page.frame_locator("#frame-1").locator("body")),
            "script": (script_1, script_1),
        }
        for kind, (outline, inside) in kinds.items():
            for part in (inside.get_by_text("Enter your email to subscribe").first,
                         inside.locator("input[type=email]"), inside.get_by_role("button", name="Subscribe")):
                expect(part).to_be_visible()
                if kind != "iframe":
                    box, whole = part.bounding_box(), outline.bounding_box()
                    assert box and whole and box["y"] + box["height"] <= whole["y"] + whole["height"] + 1, (kind, part)
        # Inside the iframes, the button ends within the frame's viewport: no scrolling, no cut-off.
        for frame_id in ("frame-1", "frame-2"):
            assert frame_of(page, frame_id).evaluate("""() =>
                document.querySelector('button').getBoundingClientRect().bottom <= document.documentElement.clientHeight
            """), frame_id
    finally:
        # The whole page first: after element shots scroll it, Chromium may paint a scrolled-away iframe blank.
        page.evaluate("scrollTo(0, 0)")
        page.wait_for_timeout(200)
        page.screenshot(path=str(ARTIFACTS / "embed-article.png"), full_page=True)
        for name, selector in SHOTS.items():
            shoot(page.locator(selector), name)
    for name in [*SHOTS, "embed-article.png"]:
        assert (ARTIFACTS / name).stat().st_size > 1000


# ---------------------------------------------------------------- the snippet gallery ----------

PLAIN_CODE = "#code-daily-briefing-plain_form"


@pytest.mark.parametrize("clipboard", ["granted", "refused"])
def test_gallery_shows_snippets_as_code_and_copies_them(app, live_server, browser, clipboard):
    context, page = _new_page(browser)
    try:
        if clipboard == "granted":
            context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live_server)
        else:  # a browser that won't let the page write: the code is selected for Ctrl+C instead
            page.add_init_script("navigator.clipboard.writeText = () => Promise.reject(new Error('denied'))")
        page.goto(f"{live_server}/embed")
        expect(page).to_have_title("Embed signup forms")
        code = page.locator(PLAIN_CODE)
        text = code.text_content()
        # The snippet is text on the page: its source shows, and no form of a snippet is live.
        assert text.startswith(f'<form action="{live_server}/subscribe" method="post">'), text
        assert '<input type="hidden" name="newsletters" value="daily-briefing">' in text
        expect(code).to_be_visible()
        expect(page.get_by_text('<form action="', exact=False).first).to_be_visible()
        expect(page.locator(".preview [data-newsletter] form").first).to_be_attached()  # embed.js drew its preview
        # ...every one of them (it draws each as its settings arrive), before the page's forms are counted.
        drawn = page.locator(".preview [data-newsletter]").count()
        expect(page.locator(".preview [data-newsletter] form")).to_have_count(drawn)
        assert page.locator("pre form, pre iframe, pre script, pre div").count() == 0
        assert page.locator("form").count() == page.locator(".preview form").count() > 0
        for preview in page.locator(".preview").all():
            assert preview.get_attribute("role") == "region"
            expect(preview.locator(".preview-label")).to_have_text(re.compile(r"^Preview: "))

        button = page.get_by_role("button", name="Copy the Plain HTML form code for The Daily Briefing")
        expect(button).to_have_text("Copy")
        button.click()
        status = page.locator(f"{PLAIN_CODE}-status")
        if clipboard == "granted":
            expect(status).to_have_text("Copied")
            assert page.evaluate("navigator.clipboard.readText()") == text
            ARTIFACTS.mkdir(exist_ok=True)
            shoot(page.locator("section").first, "embed-gallery.png")
        else:
            expect(status).to_have_text("Selected: press Ctrl+C (⌘C on a Mac) to copy")
            assert page.evaluate("getSelection().toString()") == text
        assert status.get_attribute("aria-live") == "polite"
        # (The browser's own request for /favicon.ico is a 404: not a script error.)
        assert not [p for p in page.problems if "404" not in p], page.problems  # type: ignore[attr-defined]
    finally:
        context.close()


def test_gallery_without_javascript_shows_selectable_code(app, live_server, page_without_js):
    page = page_without_js
    page.goto(f"{live_server}/embed")
    code = page.locator(PLAIN_CODE)
    expect(code).to_be_visible()
    assert code.text_content().startswith(f'<form action="{live_server}/subscribe"')
    # A copy button that can't work is not shown.
    expect(page.get_by_role("button", name="Copy the Plain HTML form code for The Daily Briefing")).to_be_hidden()
    code.select_text()
    assert page.evaluate("getSelection().toString()") == code.text_content()
