"""Operating it: the database down and back, Redis down and back, /healthz, /readyz and /metrics.

The faults are real: a PostgreSQL cluster of the tests' own is stopped and started (tests/pg_cluster.py),
a redis-server of the test's own is killed and started again, and gunicorn runs as an operator runs it.
"""

from __future__ import annotations

import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from newsletter import catalog, create_app, tokens
from newsletter.extensions import db, limiter

from .conftest import SECRET, free_port, hidden_fields, query

PROJECT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REQUIRED = os.environ.get("NEWSLETTER_REQUIRE_FAULTS") == "1"
METRICS_TOKEN = "metrics-test-token"


def make_app(database_url: str, smtp_url: str, **config):
    """The app as the `app` fixture makes it, on `database_url`, with the three test newsletters."""
    app = create_app({
        "TESTING": True,
        "SQLALCHEMY_DATABASE_URI": database_url,
        "SECRET_KEY": SECRET,
        "NEWSLETTER_SMTP_URL": smtp_url,
        "NEWSLETTER_MIN_FILL_SECONDS": 0,
        "NEWSLETTER_RATE_LIMIT_IP": "10000/minute",
        "NEWSLETTER_RATE_LIMIT_EMAIL": "10000/minute",
        "NEWSLETTER_METRICS_TOKEN": METRICS_TOKEN,
        **config,
    })
    limiter.reset()
    with app.app_context():
        catalog.add_newsletter(db.session, "daily-briefing", name="The Daily Briefing")
        catalog.add_newsletter(db.session, "weekly-explainer", name="The Weekly Explainer")
        db.session.commit()
        db.session.remove()
    return app


def metric(client, name: str, **labels: str) -> float:
    """One sample of /metrics (0 when absent), read with the token."""
    response = client.get("/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert response.status_code == 200, response.get_data(as_text=True)
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                return sample.value
    return 0.0


# --- the database down and back ------------------------------------------------------------------


@pytest.fixture
def faulty_app(faulty_database_url, smtp):
    app = make_app(faulty_database_url, smtp.url, NEWSLETTER_ALLOWED_ORIGINS=["https://example-news.org"])
    yield app
    with app.app_context():
        db.session.remove()
        db.engine.dispose()


class Signups:
    """The four ways in a test sends a signup or a confirmation, each as a browser or program would."""

    def __init__(self, app) -> None:
        self.app = app
        self.client = app.test_client()

    def open_forms(self) -> tuple[dict[str, str], dict[str, str]]:
        """The hosted form's and the iframe form's hidden fields (CSRF…), drawn while the database is up."""
        hosted = self.client.get("/subscribe/daily-briefing")
        frame = self.client.get("/embed/weekly-explainer")
        assert hosted.status_code == frame.status_code == 200
        return hidden_fields(hosted.get_data(as_text=True)), hidden_fields(frame.get_data(as_text=True))

    def hosted(self, fields: dict[str, str], email: str):
        return self.client.post("/subscribe/daily-briefing",
                                data={**fields, "email": email, "newsletters": "daily-briefing"})

    def iframe(self, fields: dict[str, str], email: str):
        return self.client.post("/embed/weekly-explainer",
                                data={**fields, "email": email, "newsletters": "weekly-explainer"})

    def api(self, email: str):
        return self.client.post("/api/v1/subscriptions", json={"email": email, "newsletters": ["daily-briefing"]})

    def confirm_link(self, email: str) -> str:
        with self.app.app_context():
            (reader_id,), = query(self.app, "SELECT id FROM readers WHERE email = :email", email=email)
            ids = [row[0] for row in query(self.app, "SELECT newsletter_id FROM subscriptions WHERE reader_id = :id",
                                           id=reader_id)]
            return f"/confirm/{tokens.confirm_token(reader_id, ids)}"


def assert_unavailable_page(response, words: str) -> None:
    assert response.status_code == 503, response.get_data(as_text=True)[:500]
    assert response.headers["Retry-After"] == "5"
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    assert words in page
    assert "Nothing you sent was lost" not in page


def test_database_down_answers_503_with_retry_after_and_recovers_by_itself(faulty_app, pg_cluster, caplog):
    signups = Signups(faulty_app)
    hosted_fields, frame_fields = signups.open_forms()
    assert signups.hosted(hosted_fields, "before-hosted@example.com").status_code == 303
    assert signups.iframe(frame_fields, "before-frame@example.com").status_code == 200
    assert signups.api("before-api@example.com").status_code == 202
    confirm = signups.confirm_link("before-api@example.com")
    # Forms a reader opened before the outage, sent during it.
    hosted_fields, frame_fields = signups.open_forms()

    pg_cluster.stop()
    try:
        caplog.clear()
        assert_unavailable_page(signups.hosted(hosted_fields, "during@example.com"), "Your signup was not taken")
        assert_unavailable_page(signups.client.get("/subscribe"), "briefly unavailable")

        in_frame = signups.iframe(frame_fields, "during@example.com")
        assert_unavailable_page(in_frame, "Your signup was not taken")
        assert 'class="error" role="alert"' in in_frame.get_data(as_text=True)  # the iframe's own message page
        # Framable by the allowed sites, as the form itself, so the reader sees it in the article.
        assert "https://example-news.org" in in_frame.headers["Content-Security-Policy"]

        by_api = signups.api("during@example.com")
        assert by_api.status_code == 503
        assert by_api.headers["Retry-After"] == "5"
        assert by_api.json == {"errors": {"request": [
            "Your signup was not taken: our service is briefly unavailable. Please send it again in a few seconds."]}}

        opened = signups.client.get(confirm)  # nothing sent: nothing to say about what was saved
        assert_unavailable_page(opened, "briefly unavailable. Please try again in a few seconds.")
        assert "nothing you sent" not in opened.get_data(as_text=True)
        assert_unavailable_page(signups.client.post(confirm), "nothing you sent was saved")

        in_ukrainian = signups.client.post("/api/v1/subscriptions?lang=uk", headers={"Accept-Language": "uk"},
                                           json={"email": "during@example.com", "newsletters": ["daily-briefing"],
                                                 "lang": "uk"})
        assert in_ukrainian.status_code == 503
        assert "Вашу підписку не прийнято" in in_ukrainian.json["errors"]["request"][0]

        assert signups.client.get("/healthz").status_code == 200
        ready = signups.client.get("/readyz")
        assert ready.status_code == 503
        assert ready.json["reason"] == "database unreachable"
        assert metric(signups.client, "newsletter_database_up") == 0

        # One line per request, without a traceback.
        lines = [record for record in caplog.records if "database unavailable" in record.getMessage()]
        assert len(lines) == 7, [record.getMessage() for record in lines]
        assert all(record.exc_info is None for record in lines)
    finally:
        pg_cluster.start()

    # The same app, not restarted: the same requests now succeed.
    assert signups.hosted(hosted_fields, "during@example.com").status_code == 303
    assert signups.iframe(frame_fields, "during-frame@example.com").status_code == 200
    assert signups.api("during-api@example.com").status_code == 202
    confirmed = signups.client.post(confirm)
    assert confirmed.status_code == 200
    assert signups.client.get("/readyz").status_code == 200

    # Nothing taken before the outage was lost, and nothing refused during it was half-stored.
    emails = {row[0] for row in query(faulty_app, "SELECT email FROM readers")}
    assert emails == {"before-hosted@example.com", "before-frame@example.com", "before-api@example.com",
                      "during@example.com", "during-frame@example.com", "during-api@example.com"}
    assert query(faulty_app, "SELECT count(*) FROM outbox_messages WHERE kind = 'confirmation'") == [(6,)]
    assert query(faulty_app, "SELECT s.status FROM subscriptions s JOIN readers r ON r.id = s.reader_id "
                             "WHERE r.email = 'before-api@example.com'") == [("confirmed",)]


def test_no_free_connection_in_the_pool_answers_503(faulty_database_url, smtp):
    """Every pooled connection busy for longer than pool_timeout: the database is out of reach for this request."""
    app = make_app(faulty_database_url, smtp.url, SQLALCHEMY_ENGINE_OPTIONS={
        "pool_pre_ping": True, "pool_size": 1, "max_overflow": 0, "pool_timeout": 0.5})
    client = app.test_client()
    body = {"email": "ada@example.com", "newsletters": ["daily-briefing"]}
    with app.app_context():
        engine = db.engine
    with engine.connect():  # the pool's only connection, held by someone else
        refused = client.post("/api/v1/subscriptions", json=body)
    assert refused.status_code == 503
    assert refused.headers["Retry-After"] == "5"
    assert client.post("/api/v1/subscriptions", json=body).status_code == 202
    engine.dispose()


def test_sqlite_locked_past_the_busy_timeout_answers_503(sqlite_template, tmp_path, smtp):
    path = tmp_path / "locked.sqlite3"
    shutil.copy(sqlite_template, path)
    app = make_app(f"sqlite:///{path}", smtp.url,
                   SQLALCHEMY_ENGINE_OPTIONS={"connect_args": {"timeout": 0.2, "check_same_thread": False}})
    client = app.test_client()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing, for longer than the busy timeout
    try:
        refused = client.post("/api/v1/subscriptions",
                              json={"email": "ada@example.com", "newsletters": ["daily-briefing"]})
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "5"
        assert "not taken" in refused.json["errors"]["request"][0]
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    taken = client.post("/api/v1/subscriptions", json={"email": "ada@example.com", "newsletters": ["daily-briefing"]})
    assert taken.status_code == 202
    with app.app_context():
        db.engine.dispose()


# --- /healthz and /readyz ------------------------------------------------------------------------


def test_healthz_and_readyz_answer_without_cookie(client):
    for path, body in (("/healthz", {"status": "ok"}), ("/readyz", None)):
        response = client.get(path)
        assert response.status_code == 200
        assert "Set-Cookie" not in response.headers
        if body:
            assert response.json == body
    assert client.get("/readyz").json["status"] == "ready"


def test_readyz_refuses_a_database_behind_the_code(app, client):
    def set_version(version: str | None = None) -> str:
        with app.app_context():
            head = db.session.execute(db.text("SELECT version_num FROM alembic_version")).scalar_one()
            if version:
                db.session.execute(db.text("UPDATE alembic_version SET version_num = :v"), {"v": version})
                db.session.commit()
            db.session.remove()
        return head

    # PostgreSQL's database serves the whole test run: put its version back whatever happens.
    head = set_version("0004")
    try:
        response = client.get("/readyz")
    finally:
        set_version(head)
    assert response.status_code == 503
    assert response.json["reason"] == "migrations not current"
    assert response.json["database"] == ["0004"]


# --- /metrics ------------------------------------------------------------------------------------


@pytest.mark.parametrize("config, request_kwargs, status", [
    ({}, {"headers": {"Authorization": "Bearer anything"}}, 404),  # neither setting: metrics are off
    ({"NEWSLETTER_METRICS_TOKEN": "s3cret"}, {}, 401),
    ({"NEWSLETTER_METRICS_TOKEN": "s3cret"}, {"headers": {"Authorization": "Bearer wrong"}}, 401),
    ({"NEWSLETTER_METRICS_TOKEN": "s3cret"}, {"headers": {"Authorization": "Basic s3cret"}}, 401),
    # A NUL in any header is refused before any view (web_input): no metrics either way.
    ({"NEWSLETTER_METRICS_TOKEN": "s3cret"}, {"headers": {"Authorization": "Bearer s3cret\u0000"}}, 422),
    ({"NEWSLETTER_METRICS_TOKEN": "s3cret"}, {"headers": {"Authorization": "Bearer s3cret"}}, 200),
    ({"NEWSLETTER_METRICS_ALLOW": "10.0.0.0/8"}, {}, 403),  # the test client comes from 127.0.0.1
    ({"NEWSLETTER_METRICS_ALLOW": "10.0.0.0/8"}, {"environ_base": {"REMOTE_ADDR": "10.1.2.3"}}, 200),
    ({"NEWSLETTER_METRICS_ALLOW": "10.0.0.0/8", "NEWSLETTER_PROXY_COUNT": "1"},
     {"headers": {"X-Forwarded-For": "10.1.2.3"}}, 200),  # the client as the proxy names it
    ({"NEWSLETTER_METRICS_ALLOW": "10.0.0.0/8", "NEWSLETTER_PROXY_COUNT": "1"},
     {"headers": {"X-Forwarded-For": "192.0.2.7"}, "environ_base": {"REMOTE_ADDR": "10.1.2.3"}}, 403),
    ({"NEWSLETTER_METRICS_ALLOW": "10.0.0.0/8", "NEWSLETTER_METRICS_TOKEN": "s3cret"},
     {"environ_base": {"REMOTE_ADDR": "10.1.2.3"}}, 401),  # both set: both must hold
    ({"NEWSLETTER_METRICS_ALLOW": "10.0.0.0/8", "NEWSLETTER_METRICS_TOKEN": "s3cret"},
     {"headers": {"Authorization": "Bearer s3cret"}}, 403),
])
def test_metrics_are_served_only_to_whom_the_settings_name(sqlite_template, tmp_path, smtp, monkeypatch,
                                                          config, request_kwargs, status):
    for name, value in config.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "metrics.sqlite3"
    shutil.copy(sqlite_template, path)
    app = create_app({"TESTING": True, "SQLALCHEMY_DATABASE_URI": f"sqlite:///{path}", "SECRET_KEY": SECRET})
    response = app.test_client().get("/metrics", **request_kwargs)
    assert response.status_code == status, response.get_data(as_text=True)[:300]
    if status == 200:
        assert "newsletter_outbox_messages" in response.get_data(as_text=True)
        assert response.mimetype == "text/plain"
    if status == 401:
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    with app.app_context():
        db.engine.dispose()


def test_metrics_move_with_signups_confirmations_unsubscribes_and_the_outbox(app, client, drain, smtp):
    app.config["NEWSLETTER_METRICS_TOKEN"] = METRICS_TOKEN
    before = {
        "api": metric(client, "newsletter_signups_total", channel="api"),
        "hosted": metric(client, "newsletter_signups_total", channel="hosted-form"),
        "confirmed": metric(client, "newsletter_confirmations_total", channel="email-link"),
        "one-click": metric(client, "newsletter_unsubscribes_total", channel="one-click"),
        "latency": metric(client, "newsletter_request_duration_seconds_count",
                          endpoint="api.create_subscription", status="2xx"),
    }
    assert metric(client, "newsletter_outbox_messages", status="pending") == 0

    response = client.post("/api/v1/subscriptions",
                           json={"email": "ada@example.com", "newsletters": ["daily-briefing", "weekly-explainer"]})
    assert response.status_code == 202
    fields = hidden_fields(client.get("/subscribe/daily-briefing").get_data(as_text=True))
    assert client.post("/subscribe/daily-briefing", data={**fields, "email": "bob@example.com",
                                                          "newsletters": "daily-briefing"}).status_code == 303
    # A refused signup counts nothing.
    refused = client.post("/api/v1/subscriptions", json={"email": "not an address", "newsletters": ["x"]})
    assert refused.status_code == 422

    assert metric(client, "newsletter_signups_total", channel="api") == before["api"] + 1
    assert metric(client, "newsletter_signups_total", channel="hosted-form") == before["hosted"] + 1
    assert metric(client, "newsletter_request_duration_seconds_count",
                  endpoint="api.create_subscription", status="2xx") == before["latency"] + 1
    assert metric(client, "newsletter_request_duration_seconds_count",
                  endpoint="api.create_subscription", status="4xx") >= 1
    assert metric(client, "newsletter_outbox_messages", status="pending") == 2
    assert metric(client, "newsletter_outbox_oldest_pending_age_seconds") >= 0

    drain()
    assert metric(client, "newsletter_outbox_messages", status="pending") == 0
    assert metric(client, "newsletter_outbox_messages", status="sent") == 2

    (reader_id,), = query(app, "SELECT id FROM readers WHERE email = 'ada@example.com'")
    ids = [row[0] for row in query(app, "SELECT newsletter_id FROM subscriptions WHERE reader_id = :id", id=reader_id)]
    with app.app_context():
        confirm = f"/confirm/{tokens.confirm_token(reader_id, ids)}"
        unsubscribe = f"/unsubscribe/{tokens.unsubscribe_token(reader_id, ids[0])}"
    assert client.post(confirm).status_code == 200
    assert client.post(confirm).status_code == 200  # twice is harmless, and counts once
    assert metric(client, "newsletter_confirmations_total", channel="email-link") == before["confirmed"] + 2
    assert client.post(unsubscribe, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert metric(client, "newsletter_unsubscribes_total", channel="one-click") == before["one-click"] + 1


# --- processes: gunicorn with several workers, Redis down and back --------------------------------


def _wait_for(condition, what: str, processes: list[subprocess.Popen], timeout: float = 60,
              interval: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for process in processes:
            if process.poll() is not None:
                raise AssertionError(f"{process.args[0]} exited with {process.returncode} while waiting for {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout}s")
        time.sleep(interval)


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


def app_environment(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A migrated SQLite database with one newsletter, and the environment that points the app at it."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("NEWSLETTER_") and key != "PROMETHEUS_MULTIPROC_DIR"}
    env.update({"NEWSLETTER_DATABASE_URL": f"sqlite:///{tmp_path / 'newsletter.sqlite3'}",
                "NEWSLETTER_SECRET_KEY": "operations-test-secret",
                "NEWSLETTER_INSTANCE_PATH": str(tmp_path / "instance"),
                "NEWSLETTER_METRICS_TOKEN": METRICS_TOKEN, **extra})
    for command in (["db", "upgrade"], ["newsletters", "add", "daily-briefing", "--name", "The Daily Briefing"]):
        done = subprocess.run([str(BIN / "newsletter"), *command], cwd=PROJECT, env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, f"newsletter {' '.join(command)}:\n{done.stdout}\n{done.stderr}"
    return env


class Server:
    """gunicorn serving wsgi:app, as the README says to run it."""

    def __init__(self, tmp_path: Path, name: str, env: dict[str, str], workers: int = 1) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tmp_path / f"{name}.log"
        self.access_log = tmp_path / f"{name}-access.log"
        with self.log.open("wb") as output:
            self.process = subprocess.Popen(
                [str(BIN / "gunicorn"), "-c", "python:newsletter.gunicorn_conf", "-w", str(workers),
                 "-b", f"127.0.0.1:{self.port}", "--access-logfile", str(self.access_log),
                 "--access-logformat", "%(p)s %(s)s", "wsgi:app"],
                cwd=PROJECT, env=env, stdout=output, stderr=subprocess.STDOUT)
        # A page the app had before /healthz, so that these tests fail on that app for the right reason.
        _wait_for(lambda: _answers(f"{self.url}/api/v1/forms?newsletters=daily-briefing"), f"answer from {name}",
                  [self.process])

    def signup(self, email: str, client_ip: str) -> int:
        response = requests.post(f"{self.url}/api/v1/subscriptions", timeout=30,
                                 json={"email": email, "newsletters": ["daily-briefing"]},
                                 headers={"X-Forwarded-For": client_ip, "Connection": "close"})
        assert response.status_code in (202, 429), (response.status_code, response.text[:300])
        return response.status_code

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)


needs_gunicorn = pytest.mark.skipif(not (BIN / "gunicorn").exists() or not (BIN / "newsletter").exists(),
                                    reason="gunicorn or the newsletter command is not installed in this venv")


def metric_over_http(url: str, name: str, **labels: str) -> float:
    response = requests.get(f"{url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30)
    assert response.status_code == 200, response.text[:300]
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(key) == value for key, value in labels.items()):
                return sample.value
    return 0.0


@needs_gunicorn
def test_metrics_add_up_across_gunicorn_workers(tmp_path):
    metrics_dir = tmp_path / "prometheus"
    metrics_dir.mkdir()
    (metrics_dir / "counter_99999.db").write_bytes(b"left over by an earlier run")  # emptied at start
    env = app_environment(tmp_path, NEWSLETTER_RATE_LIMITS="off", PROMETHEUS_MULTIPROC_DIR=str(metrics_dir))
    server = Server(tmp_path, "gunicorn", env, workers=2)
    try:
        sent = 0
        for attempt in range(5):  # until the kernel has handed signups to both workers
            with ThreadPoolExecutor(max_workers=6) as pool:
                statuses = list(pool.map(lambda i: server.signup(f"reader{attempt}-{i}@example.com", "127.0.0.1"),
                                         range(20)))
            assert statuses == [202] * 20
            sent += 20
            answered_by = Counter(line.split()[0] for line in server.access_log.read_text().splitlines()
                                  if line.endswith(" 202"))
            if len(answered_by) == 2:
                break
        assert len(answered_by) == 2, answered_by
        # Whichever worker answers the scrape, it reports both workers' counts.
        for _ in range(4):
            assert metric_over_http(server.url, "newsletter_signups_total", channel="api") == sent
            assert metric_over_http(server.url, "newsletter_request_duration_seconds_count",
                                    endpoint="api.create_subscription", status="2xx") == sent
        assert metric_over_http(server.url, "newsletter_outbox_messages", status="pending") == sent
    finally:
        server.stop()


class RedisServer:
    """A redis-server of the test's own on a free port, that the test kills and starts again."""

    def __init__(self, tmp_path: Path) -> None:
        self.binary = shutil.which("redis-server")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.dir = tmp_path
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--daemonize", "no", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        client = redis.Redis.from_url(self.url, socket_connect_timeout=1)
        _wait_for(lambda: self._pings(client), "redis-server", [self.process], timeout=30)

    @staticmethod
    def _pings(client) -> bool:
        import redis

        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)

    def keys(self, pattern: str) -> list[bytes]:
        import redis

        return redis.Redis.from_url(self.url).keys(pattern)


@pytest.fixture
def redis_server(tmp_path):
    if shutil.which("redis-server") is None:
        if REQUIRED:
            pytest.fail("NEWSLETTER_REQUIRE_FAULTS=1 but redis-server is not installed")
        pytest.skip("redis-server is not installed")
    pytest.importorskip("redis")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.kill()


@needs_gunicorn
def test_redis_down_falls_back_to_per_process_limits_and_comes_back(tmp_path, redis_server):
    env = app_environment(tmp_path, NEWSLETTER_REDIS_URL=redis_server.url, NEWSLETTER_PROXY_COUNT="1",
                          NEWSLETTER_RATE_LIMIT_IP="5/minute")
    first, second = Server(tmp_path, "first", env), Server(tmp_path, "second", env)
    numbers = iter(range(10_000))

    def send(server: Server, count: int, client_ip: str) -> list[int]:
        return [server.signup(f"reader{next(numbers)}@example.com", client_ip) for _ in range(count)]

    try:
        # Redis up: the two processes count one client together, 5 a minute in all.
        assert send(first, 3, "203.0.113.1") + send(second, 3, "203.0.113.1") == [202] * 5 + [429]

        redis_server.kill()
        # Redis down: no 500; each process counts on its own, so each lets its own 5 through.
        assert send(first, 6, "203.0.113.2") == [202] * 5 + [429]
        assert send(second, 6, "203.0.113.2") == [202] * 5 + [429]
        assert query_count(env) == 5 + 10

        redis_server.start()
        # Each process looks for Redis again now and then (backing off); probe until both use it.
        probes = iter(range(1, 250))

        def uses_redis(server: Server) -> bool:
            client_ip = f"198.51.100.{next(probes)}"
            send(server, 1, client_ip)
            return bool(redis_server.keys(f"*/{client_ip}/*"))

        for server in (first, second):
            _wait_for(lambda: uses_redis(server), "a process back on Redis", [server.process], timeout=100,
                      interval=0.5)
        # Shared again.
        assert send(first, 3, "203.0.113.3") + send(second, 3, "203.0.113.3") == [202] * 5 + [429]
    finally:
        first.stop()
        second.stop()

    for server in (first, second):
        log = server.log.read_text()
        assert log.count("falling back to in-memory storage") == 1, log[-3000:]
        assert "Rate limit storage recovered" in log, log[-3000:]
        assert "Traceback" not in log, log[-3000:]


def query_count(env: dict[str, str]) -> int:
    path = env["NEWSLETTER_DATABASE_URL"].removeprefix("sqlite:///")
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT count(*) FROM readers").fetchone()[0]
