"""Bot defences as a reader, a bot and an operator see them: honeypot, minimum fill time, rate limits.

Every channel a signup comes through is covered: the hosted page (/subscribe), the iframe form
(/embed/<slug>), a plain HTML form on an allowed site (cross-origin POST to /subscribe) and the JSON
API (with and without "embed": "script"). What is checked is what anyone can observe: status codes,
page and JSON text, rows in the database, and messages at a real SMTP server after the outbox is drained.
"""

from __future__ import annotations

import html
import os
import socket
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from itsdangerous import TimestampSigner, URLSafeTimedSerializer
from limits import parse_many

from newsletter import config as settings

from .conftest import free_port, hidden_fields, query

NEWS = "https://news.example"
PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TOO_QUICK = "That was quick!"
THANKS_IFRAME = "Thank you for signing up for this newsletter. We've sent you a confirmation email."
IP_MESSAGE = "Too many signups from your network"
EMAIL_MESSAGE = "Too many signups for this email address"
STORED_TABLES = ("readers", "subscriptions", "consent_events", "outbox_messages")


# --- helpers ---------------------------------------------------------------------------------------

def text(response) -> str:
    """The response body as a reader reads it (entities such as &#39; decoded)."""
    return html.unescape(response.get_data(as_text=True))


def stored(app) -> dict[str, int]:
    return {table: query(app, f"SELECT count(*) FROM {table}")[0][0] for table in STORED_TABLES}


def assert_nothing_stored(app) -> None:
    assert stored(app) == dict.fromkeys(STORED_TABLES, 0)


def form_token_issued(app, seconds_ago: float, *, key: str | None = None) -> str:
    """A fill-time token as GET /subscribe, /embed/… or /api/v1/forms hand out, but stamped in the past."""

    class PastSigner(TimestampSigner):
        def get_timestamp(self) -> int:
            return int(time.time() - seconds_ago)

    serializer = URLSafeTimedSerializer(key or app.config["SECRET_KEY"], salt="newsletter.form", signer=PastSigner)
    return serializer.dumps({})


def api_signup(client, email: str, **extra):
    return client.post("/api/v1/subscriptions", json={"email": email, "newsletters": ["daily-briefing"], **extra})


def recipients(smtp) -> list[str]:
    return [address for _, rcpt_tos in smtp.inbox.envelopes for address in rcpt_tos]


# --- honeypot --------------------------------------------------------------------------------------

def test_honeypot_on_hosted_form_looks_like_success_and_stores_nothing(app, client, smtp, drain):
    page = client.get("/subscribe")
    fields = {**hidden_fields(page.text), "email": "bot@example.com", "newsletters": ["daily-briefing"]}

    bot = client.post("/subscribe", data={**fields, "website": "https://cheap-pills.example"})
    assert bot.status_code == 303
    assert bot.headers["Location"].endswith("/thanks")
    assert_nothing_stored(app)
    drain()
    assert smtp.inbox.messages == []

    # A person sending the same form gets exactly the same answer, so the bot learns nothing.
    person = app.test_client()
    page = person.get("/subscribe")
    real = person.post("/subscribe", data={**hidden_fields(page.text), "email": "reader@example.com",
                                           "newsletters": ["daily-briefing"], "website": ""})
    assert (real.status_code, real.headers["Location"]) == (bot.status_code, bot.headers["Location"])
    drain()
    assert recipients(smtp) == ["reader@example.com"]
    assert query(app, "SELECT email FROM readers") == [("reader@example.com",)]


def test_honeypot_on_iframe_form_shows_the_thank_you_and_stores_nothing(app, client, smtp, drain):
    page = client.get("/embed/daily-briefing?page=https%3A%2F%2Fnews.example%2Farticle")
    assert page.status_code == 200
    bot = client.post("/embed/daily-briefing", data={**hidden_fields(page.text), "email": "bot@example.com",
                                                       "website": "spam"})
    assert bot.status_code == 200
    assert THANKS_IFRAME in text(bot)
    assert 'name="email"' not in bot.text  # the form is replaced by the thanks, as for a person
    assert_nothing_stored(app)
    drain()
    assert smtp.inbox.messages == []

    person = app.test_client()
    page = person.get("/embed/daily-briefing")
    real = person.post("/embed/daily-briefing", data={**hidden_fields(page.text), "email": "reader@example.com"})
    assert real.status_code == bot.status_code
    assert THANKS_IFRAME in text(real)
    drain()
    assert recipients(smtp) == ["reader@example.com"]


def test_honeypot_on_plain_cross_origin_form_redirects_back_and_stores_nothing(app, client, smtp, drain):
    app.config["NEWSLETTER_ALLOWED_ORIGINS"] = [NEWS]
    # A plain <form action=".../subscribe"> on the news site: no CSRF token, no fill-time token.
    form = {"email": "bot@example.com", "newsletters": "daily-briefing",
            "page_url": f"{NEWS}/article", "return_to": f"{NEWS}/article#signed-up"}
    bot = client.post("/subscribe", data={**form, "website": "https://spam.example"}, headers={"Origin": NEWS})
    assert bot.status_code == 303
    assert bot.headers["Location"] == f"{NEWS}/article#signed-up"
    assert_nothing_stored(app)
    drain()
    assert smtp.inbox.messages == []

    real = client.post("/subscribe", data={**form, "email": "reader@example.com", "website": ""},
                       headers={"Origin": NEWS})
    assert (real.status_code, real.headers["Location"]) == (bot.status_code, bot.headers["Location"])
    drain()
    assert recipients(smtp) == ["reader@example.com"]


def test_honeypot_on_json_api_answers_202_pending_and_stores_nothing(app, client, smtp, drain):
    bot = api_signup(client, "bot@example.com", website="https://spam.example")
    assert bot.status_code == 202
    assert bot.get_json() == {"status": "pending"}
    assert_nothing_stored(app)
    drain()
    assert smtp.inbox.messages == []

    real = api_signup(client, "reader@example.com")
    assert (real.status_code, real.get_json()) == (bot.status_code, bot.get_json())
    drain()
    assert recipients(smtp) == ["reader@example.com"]


# --- minimum fill time -----------------------------------------------------------------------------

def test_hosted_form_sent_right_after_it_was_shown_is_refused_then_accepted_with_an_older_token(
        app, client, smtp, drain):
    app.config["NEWSLETTER_MIN_FILL_SECONDS"] = 2
    page = client.get("/subscribe")
    fields = {**hidden_fields(page.text), "email": "quick@example.com", "newsletters": ["daily-briefing"]}

    quick = client.post("/subscribe", data=fields)
    assert quick.status_code == 422
    assert TOO_QUICK in text(quick)
    assert 'value="quick@example.com"' in quick.text  # what the reader typed is kept for the second try
    assert_nothing_stored(app)

    for token in ("", "not-a-token", form_token_issued(app, 5, key="some-other-secret")):
        refused = client.post("/subscribe", data={**fields, "form_token": token})
        assert refused.status_code == 422, token
        assert TOO_QUICK in text(refused)
    assert_nothing_stored(app)
    drain()
    assert smtp.inbox.messages == []

    # Shown five seconds ago: a person could have typed it.
    taken = client.post("/subscribe", data={**fields, "form_token": form_token_issued(app, 5)})
    assert taken.status_code == 303
    assert taken.headers["Location"].endswith("/thanks")
    drain()
    assert recipients(smtp) == ["quick@example.com"]
    assert query(app, "SELECT source FROM consent_events") == [("hosted-form",)]


def test_iframe_form_sent_right_after_it_was_shown_is_refused_then_accepted_with_an_older_token(
        app, client, smtp, drain):
    app.config["NEWSLETTER_MIN_FILL_SECONDS"] = 2
    page = client.get("/embed/daily-briefing")
    fields = {**hidden_fields(page.text), "email": "quick@example.com"}

    quick = client.post("/embed/daily-briefing", data=fields)
    assert quick.status_code == 422
    assert TOO_QUICK in text(quick)
    assert THANKS_IFRAME not in text(quick)
    missing = client.post("/embed/daily-briefing", data={**fields, "form_token": ""})
    assert missing.status_code == 422 and TOO_QUICK in text(missing)
    assert_nothing_stored(app)
    drain()
    assert smtp.inbox.messages == []

    taken = client.post("/embed/daily-briefing", data={**fields, "form_token": form_token_issued(app, 5)})
    assert taken.status_code == 200
    assert THANKS_IFRAME in text(taken)
    drain()
    assert recipients(smtp) == ["quick@example.com"]
    assert query(app, "SELECT source FROM consent_events") == [("embed-iframe",)]


def test_embed_script_signup_needs_a_form_token_old_enough(app, client, smtp, drain):
    app.config["NEWSLETTER_MIN_FILL_SECONDS"] = 2
    settings_ = client.get("/api/v1/forms?newsletters=daily-briefing")
    assert settings_.status_code == 200
    fresh = settings_.get_json()["form_token"]

    def script_signup(**token):
        return api_signup(client, "quick@example.com", embed="script", **token)

    quick = script_signup(form_token=fresh)
    assert quick.status_code == 422
    assert TOO_QUICK in quick.get_json()["errors"]["form"][0]

    refusals = {
        "missing": script_signup(),
        "empty": script_signup(form_token=""),
        "garbage": script_signup(form_token="definitely.not.signed"),
        "forged": script_signup(form_token=form_token_issued(app, 5, key="attacker-guess")),
        "too old": script_signup(form_token=form_token_issued(app, app.config["NEWSLETTER_FORM_MAX_AGE"] + 60)),
    }
    for why, response in refusals.items():
        assert response.status_code == 422, why
        assert "form" in response.get_json()["errors"], why
    assert_nothing_stored(app)
    drain()
    assert smtp.inbox.messages == []

    taken = script_signup(form_token=form_token_issued(app, 5))
    assert taken.status_code == 202
    assert taken.get_json() == {"status": "pending"}
    drain()
    assert recipients(smtp) == ["quick@example.com"]
    assert query(app, "SELECT source FROM consent_events") == [("embed-script",)]


def test_plain_api_call_from_a_site_back_end_is_not_subject_to_the_fill_time(app, client, smtp, drain):
    app.config["NEWSLETTER_MIN_FILL_SECONDS"] = 2
    response = api_signup(client, "backend@example.com")
    assert response.status_code == 202
    drain()
    assert recipients(smtp) == ["backend@example.com"]
    assert query(app, "SELECT source FROM consent_events") == [("api",)]


# --- rate limit per IP -----------------------------------------------------------------------------

def test_rate_limit_per_ip_on_the_api(app, client, smtp, drain):
    app.config["NEWSLETTER_RATE_LIMIT_IP"] = "20/minute"
    statuses = []
    for i in range(200):
        # A made-up X-Forwarded-For does not make a new client: no proxy is configured to be trusted.
        response = client.post("/api/v1/subscriptions",
                               json={"email": f"reader{i}@example.com", "newsletters": ["daily-briefing"]},
                               headers={"X-Forwarded-For": f"198.51.100.{i % 250}"})
        statuses.append(response.status_code)
        if response.status_code == 429:
            refused = response
    assert statuses == [202] * 20 + [429] * 180

    assert refused.mimetype == "application/json"
    message = refused.get_json()["errors"]["request"][0]
    assert message.startswith(IP_MESSAGE), message
    assert "try again" in message
    assert int(refused.headers["Retry-After"]) > 0

    assert stored(app)["readers"] == 20
    drain()
    assert len(smtp.inbox.messages) == 20

    # Another network is not held back by this one.
    other = app.test_client()
    other.environ_base["REMOTE_ADDR"] = "203.0.113.9"
    assert api_signup(other, "neighbour@example.com").status_code == 202


def test_rate_limited_hosted_form_and_iframe_answer_with_a_page(app, client):
    app.config["NEWSLETTER_RATE_LIMIT_IP"] = "1/minute"
    page = client.get("/subscribe")
    fields = {**hidden_fields(page.text), "newsletters": ["daily-briefing"]}
    assert client.post("/subscribe", data={**fields, "email": "first@example.com"}).status_code == 303

    hosted = client.post("/subscribe", data={**fields, "email": "second@example.com"})
    assert hosted.status_code == 429
    assert hosted.mimetype == "text/html"
    assert IP_MESSAGE in text(hosted)
    assert "Traceback" not in hosted.text
    assert int(hosted.headers["Retry-After"]) > 0

    frame_page = client.get("/embed/daily-briefing")
    assert frame_page.status_code == 200  # showing a form is not limited, only sending it
    framed = client.post("/embed/daily-briefing", data={**hidden_fields(frame_page.text), "email": "third@example.com"})
    assert framed.status_code == 429
    assert framed.mimetype == "text/html"
    assert IP_MESSAGE in text(framed)
    assert stored(app)["readers"] == 1


def test_one_ip_counter_shared_by_api_hosted_form_and_iframe(app, client, smtp, drain):
    app.config["NEWSLETTER_RATE_LIMIT_IP"] = "20/minute"
    hosted_fields = {**hidden_fields(client.get("/subscribe").text), "newsletters": ["daily-briefing"]}
    frame_fields = hidden_fields(client.get("/embed/daily-briefing").text)

    def via_api(i):
        return api_signup(client, f"api{i}@example.com").status_code

    def via_hosted(i):
        return client.post("/subscribe", data={**hosted_fields, "email": f"hosted{i}@example.com"}).status_code

    def via_iframe(i):
        return client.post("/embed/daily-briefing", data={**frame_fields, "email": f"frame{i}@example.com"}).status_code

    accepted = {via_api: 202, via_hosted: 303, via_iframe: 200}
    # Interleaved, 20 in all (8 API, 7 hosted, 5 iframe): each channel alone stays far below the limit.
    plan = [via_api, via_hosted, via_iframe] * 5 + [via_api, via_hosted, via_api, via_hosted, via_api]
    assert Counter(plan) == {via_api: 8, via_hosted: 7, via_iframe: 5}
    for n, channel in enumerate(plan):
        assert channel(n) == accepted[channel], (n, channel.__name__)

    assert via_api(100) == 429
    assert via_hosted(100) == 429
    assert via_iframe(100) == 429
    assert stored(app)["readers"] == 20
    drain()
    assert len(smtp.inbox.messages) == 20


# --- rate limit per address ------------------------------------------------------------------------

def test_one_address_flooded_from_many_ips_gets_one_confirmation(app, smtp, drain, tmp_path):
    default = settings.load(tmp_path, environ={})["NEWSLETTER_RATE_LIMIT_EMAIL"]
    app.config["NEWSLETTER_RATE_LIMIT_EMAIL"] = default
    allowed = min(item.amount for item in parse_many(default))
    assert 1 <= allowed < 50

    # The same victim, written the ways a bot might vary it to look like new addresses.
    spellings = ["victim@example.com", "victim@EXAMPLE.com", " victim@example.com ", "victim@Example.Com"]
    statuses, refusals = [], []
    for i in range(50):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"10.0.0.{i + 1}"
        response = api_signup(client, spellings[i % len(spellings)])
        statuses.append(response.status_code)
        if response.status_code == 429:
            refusals.append(response.get_json()["errors"]["request"][0])
    assert statuses == [202] * allowed + [429] * (50 - allowed)
    assert all(message.startswith(EMAIL_MESSAGE) for message in refusals), refusals[:1]

    # The hosted page counts the same address on the same counter.
    browser = app.test_client()
    browser.environ_base["REMOTE_ADDR"] = "10.0.1.1"
    page = browser.get("/subscribe")
    hosted = browser.post("/subscribe", data={**hidden_fields(page.text), "email": "victim@example.com",
                                               "newsletters": ["weekly-explainer"]})
    assert hosted.status_code == 429
    assert EMAIL_MESSAGE in text(hosted)

    # Other addresses, even from the IPs that flooded the victim, are unaffected.
    for i in (1, 50):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"10.0.0.{i}"
        assert api_signup(client, f"other{i}@example.com").status_code == 202

    drain()
    received = Counter(recipients(smtp))
    assert received == {"victim@example.com": 1, "other1@example.com": 1, "other50@example.com": 1}
    assert query(app, "SELECT count(*) FROM readers WHERE email = 'victim@example.com'") == [(1,)]


def test_spellings_of_one_address_share_one_budget(app, smtp, drain):
    """Keyed on the address as a signup stores it, not as typed: width, case and IDNA forms count as one."""
    app.config["NEWSLETTER_RATE_LIMIT_EMAIL"] = "3/10minutes"
    spellings = ["ada@example.org", "ada@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.org", "ADA@EXAMPLE.ORG",
                 " Ada@Example.Org ", "\uff41\uff44\uff41@example.org", "ada@EXAMPLE.org"]
    answers = []
    for number, spelling in enumerate(spellings):
        client = app.test_client()
        client.environ_base["REMOTE_ADDR"] = f"10.0.2.{number + 1}"
        answers.append(api_signup(client, spelling))
    assert [answer.status_code for answer in answers] == [202, 202, 202, 429, 429, 429]
    assert all(answer.get_json()["errors"]["request"][0].startswith(EMAIL_MESSAGE) for answer in answers[3:])

    # The iframe form counts on the same budget, whatever the spelling.
    browser = app.test_client()
    browser.environ_base["REMOTE_ADDR"] = "10.0.2.100"
    frame = browser.get("/embed/weekly-explainer")
    wide = "ADA@\uff45\uff58\uff41\uff4d\uff50\uff4c\uff45.ORG"
    refused = browser.post("/embed/weekly-explainer", data={**hidden_fields(frame.text), "email": wide})
    assert refused.status_code == 429 and EMAIL_MESSAGE in text(refused)
    # A spelling that is no address at all is refused as such, and reaches nobody.
    dotted = api_signup(app.test_client(), "ada@example.org.")
    assert dotted.status_code == 422 and "email" in dotted.get_json()["errors"]
    # Another address is unaffected.
    assert api_signup(app.test_client(), "grace@example.org").status_code == 202

    drain()
    # Readers are told apart by the local part as typed (ada, ADA); the budget was theirs together.
    assert Counter(recipients(smtp)) == {"ada@example.org": 1, "ADA@example.org": 1, "grace@example.org": 1}


# --- names: only the address's owner names themselves -----------------------------------------------

def test_a_signup_by_anyone_never_names_or_renames_a_known_reader(app, client, smtp, drain):
    app.config["NEWSLETTER_CONFIRM_RESEND_INTERVAL"] = 0  # so that every signup below sends an email
    api_signup(client, "nameless@example.org")
    api_signup(client, "ada@example.org", name="Ada")
    # A stranger types their addresses into forms on every channel, with a name of their choosing.
    api_signup(client, "nameless@example.org", name="Your Bank Security Team")
    api_signup(client, "ada@example.org", name="Eve")
    page = client.get("/subscribe")
    client.post("/subscribe", data={**hidden_fields(page.text), "email": "nameless@example.org",
                                    "name": "Mallory", "newsletters": ["weekly-explainer"]})
    frame = client.get("/embed/weekly-explainer")
    client.post("/embed/weekly-explainer", data={**hidden_fields(frame.text), "email": "ada@example.org",
                                                 "name": "Mallory"})
    assert sorted(query(app, "SELECT email, name FROM readers")) == [("ada@example.org", "Ada"),
                                                                     ("nameless@example.org", None)]
    drain()
    greetings = [(m["To"].addresses[0].addr_spec, m["To"].addresses[0].display_name,
                  m.get_body(("plain",)).get_content().splitlines()[0]) for m in smtp.inbox.messages]
    # Each reader's later confirmation names what the earlier ones did: those are superseded, not sent.
    assert sorted(address for address, _, _ in greetings) == ["ada@example.org", "nameless@example.org"]
    assert set(greetings) == {("nameless@example.org", "", "Hello,"), ("ada@example.org", "Ada", "Hello Ada,")}


INVISIBLE = [
    pytest.param("\u202e", id="right-to-left-override"),
    pytest.param("\u202d", id="left-to-right-override"),
    pytest.param("\u2066", id="left-to-right-isolate"),
    pytest.param("\u2067", id="right-to-left-isolate"),
    pytest.param("\u2069", id="pop-directional-isolate"),
    pytest.param("\u200b", id="zero-width-space"),
    pytest.param("\u200e", id="left-to-right-mark"),
    pytest.param("\u200f", id="right-to-left-mark"),
    pytest.param("\u2060", id="word-joiner"),
    pytest.param("\ufeff", id="byte-order-mark"),
    pytest.param("\u00ad", id="soft-hyphen"),
    pytest.param("\U000e0041", id="tag-letter"),
    pytest.param("\u3164", id="hangul-filler"),
    pytest.param("\uffa0", id="halfwidth-hangul-filler"),
    pytest.param("\u034f", id="combining-grapheme-joiner"),
    pytest.param("\u17b4", id="khmer-inherent-vowel"),
    pytest.param("\u180b", id="mongolian-variation-selector"),
    pytest.param("\u2800", id="braille-blank"),
]
INVISIBLE_MESSAGE = "A name can't contain invisible formatting characters"


@pytest.mark.parametrize("character", INVISIBLE)
def test_names_with_direction_overrides_or_invisible_characters_are_refused_on_every_channel(
        app, client, smtp, drain, character):
    name = f"Ada{character} Lovelace"
    api = api_signup(client, "ada@example.com", name=name)
    assert api.status_code == 422 and api.get_json()["errors"]["name"][0].startswith(INVISIBLE_MESSAGE)
    script = api_signup(client, "ada@example.com", name=name, embed="script")
    assert script.status_code == 422 and script.get_json()["errors"]["name"][0].startswith(INVISIBLE_MESSAGE)
    page = client.get("/subscribe")
    hosted = client.post("/subscribe", data={**hidden_fields(page.text), "email": "ada@example.com", "name": name,
                                             "newsletters": ["daily-briefing"]})
    assert hosted.status_code == 422 and INVISIBLE_MESSAGE in text(hosted)
    assert 'value="ada@example.com"' in hosted.text  # what the reader typed is kept for the second try
    frame = client.get("/embed/daily-briefing")
    iframe = client.post("/embed/daily-briefing", data={**hidden_fields(frame.text), "email": "ada@example.com",
                                                        "name": name})
    assert iframe.status_code == 422 and INVISIBLE_MESSAGE in text(iframe)
    assert_nothing_stored(app)
    drain()
    assert smtp.inbox.messages == []


@pytest.mark.parametrize("name", ["\ufe0f", "\u200d\u200d", " \ufe0f \u200c ", "\u0301\u0301\u0301", "\ue000",
                                  "\u2065", "\ufff0"])
def test_a_name_of_nothing_visible_is_refused(app, client, name):
    answer = api_signup(client, "ada@example.com", name=name)
    assert answer.status_code == 422
    assert answer.get_json()["errors"]["name"] == ["A name needs at least one visible character."]
    assert_nothing_stored(app)


@pytest.mark.parametrize("name", ["Ада ❤️", "Ådå 👩\u200d💻", "\u0645\u06cc\u200c\u0631\u0648\u0632",
                                  "Morag 🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f"])
def test_names_with_emoji_and_joiners_are_kept(app, client, name):
    assert api_signup(client, "ada@example.com", name=name).status_code == 202
    assert query(app, "SELECT name FROM readers") == [(name,)]


def test_the_refusal_of_an_invisible_character_speaks_ukrainian(app, client):
    answer = api_signup(client, "ada@example.com", name="\u202eecalevoL adA", lang="uk")
    assert answer.status_code == 422
    assert answer.get_json()["errors"]["name"] == [
        "Ім’я не може містити невидимих символів форматування, як-от позначок напрямку тексту."]


@pytest.mark.parametrize("name", ["Ådå Łøvëlacé 👩\u200d💻", "\u0645\u0647\u0631\u0627\u0646\u200c\u067e\u0648\u0631",
                                  "\u05e2\u05d3\u05d4 \u05dc\u05d1\u05dc\u05d9\u05d9\u05e1"])
def test_names_that_need_joiners_or_run_right_to_left_are_taken(app, client, name):
    assert api_signup(client, "ada@example.com", name=name).status_code == 202
    assert query(app, "SELECT name FROM readers") == [(name,)]


# --- shared counters across processes (gunicorn + Redis) -------------------------------------------

REDIS_DB = 15


@pytest.fixture
def redis_url():
    redis = pytest.importorskip("redis")
    url = f"redis://127.0.0.1:6379/{REDIS_DB}"
    connection = redis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        connection.ping()
    except redis.exceptions.ConnectionError as error:
        pytest.skip(f"Redis is not reachable at {url} ({error}); shared rate-limit counters need it")
    connection.flushdb()
    yield url
    connection.flushdb()
    connection.close()


def _wait_for(condition, what: str, process: subprocess.Popen, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"gunicorn exited with {process.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"gunicorn: no {what} within {timeout}s")
        time.sleep(0.1)


def _port_open(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def run_two_workers(tmp_path: Path, redis_url: str | None, requests_sent: int = 30) -> tuple[list[int], Counter]:
    """Start gunicorn -w 2 as an operator would, send signups; (statuses, requests answered per worker pid)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("NEWSLETTER_")}
    env.update({
        "NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp_path / 'newsletter.sqlite3'}",
        "NEWSLETTER_SECRET_KEY": "gunicorn-test-secret",
        "NEWSLETTER_INSTANCE_PATH": str(tmp_path / "instance"),
        "NEWSLETTER_RATE_LIMIT_IP": "10/minute",
    })
    if redis_url:
        env["NEWSLETTER_REDIS_URL"] = redis_url
    for command in (["db", "upgrade"], ["newsletters", "add", "daily-briefing", "--name", "The Daily Briefing"]):
        done = subprocess.run([str(BIN / "newsletter"), *command], cwd=PROJECT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f"newsletter {' '.join(command)}:\n{done.stdout}\n{done.stderr}"

    port = free_port()
    access_log, error_log = tmp_path / "access.log", tmp_path / "error.log"
    process = subprocess.Popen(
        [str(BIN / "gunicorn"), "-w", "2", "-b", f"127.0.0.1:{port}", "--access-logfile", str(access_log),
         "--access-logformat", "%(p)s %(s)s", "--error-logfile", str(error_log), "wsgi:app"],
        cwd=PROJECT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for(lambda: error_log.exists() and error_log.read_text().count("Booting worker") >= 2,
                  "two booted workers", process)
        _wait_for(lambda: _port_open(port), "open port", process)

        def answering_pids() -> set[str]:
            # Showing a form (GET) is not rate-limited: it tells when both workers have loaded the app.
            with ThreadPoolExecutor(max_workers=4) as pool:
                list(pool.map(lambda _: requests.get(f"http://127.0.0.1:{port}/api/v1/forms", timeout=30), range(8)))
            return {line.split()[0] for line in access_log.read_text().splitlines() if line.strip()}

        _wait_for(lambda: len(answering_pids()) >= 2, "answer from both workers", process)

        def signup(i: int) -> int:
            # A new connection per request (no Session); gunicorn's sync workers close each one anyway.
            response = requests.post(f"http://127.0.0.1:{port}/api/v1/subscriptions",
                                     json={"email": f"reader{i}@example.com", "newsletters": ["daily-briefing"]},
                                     headers={"Connection": "close"}, timeout=60)
            assert response.status_code in (202, 429), (response.status_code, response.text)
            return response.status_code

        # A few at a time, so that both sync workers are kept busy and both answer.
        with ThreadPoolExecutor(max_workers=6) as pool:
            statuses = list(pool.map(signup, range(requests_sent)))
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
    lines = [line.split() for line in access_log.read_text().splitlines() if line.strip()]
    answered_by = Counter(pid for pid, status in lines if status in ("202", "429"))
    return statuses, answered_by


def run_on_both_workers(tmp_path: Path, redis_url: str | None) -> tuple[list[int], Counter]:
    """run_two_workers, again (fresh server and database) if the kernel handed every signup to one worker."""
    for attempt in range(3):
        if redis_url:
            import redis

            redis.Redis.from_url(redis_url).flushdb()
        statuses, answered_by = run_two_workers(tmp_path / f"attempt{attempt}", redis_url)
        if len(answered_by) == 2:
            return statuses, answered_by
    raise AssertionError(f"three runs, and the signups never reached both workers: {answered_by}")


needs_gunicorn = pytest.mark.skipif(not (BIN / "gunicorn").exists() or not (BIN / "newsletter").exists(),
                                    reason="gunicorn or the newsletter command is not installed in this venv")


@needs_gunicorn
def test_two_gunicorn_workers_share_ip_counters_through_redis(tmp_path, redis_url):
    statuses, answered_by = run_on_both_workers(tmp_path / "redis", redis_url)
    assert sum(answered_by.values()) == 30
    assert Counter(statuses) == {202: 10, 429: 20}, answered_by

    # What an operator can see: the counters live in Redis, not in a worker.
    import redis

    keys = redis.Redis.from_url(redis_url).keys("*")
    assert any(b"signup-ip" in key for key in keys), keys


@needs_gunicorn
def test_without_redis_each_worker_counts_alone(tmp_path):
    """The control: memory storage in two workers lets more through, so the Redis result above is real."""
    statuses, answered_by = run_on_both_workers(tmp_path / "memory", None)
    accepted = statuses.count(202)
    # Each worker lets its own first ten through: exactly what the access log's pids predict.
    assert accepted == sum(min(10, count) for count in answered_by.values()), answered_by
    assert accepted > 10, answered_by
