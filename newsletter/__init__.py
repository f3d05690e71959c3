"""newsletter: self-hosted newsletter signups with double opt-in and proof of consent."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from flask import Flask, request
from flask_babel import get_locale
from sqlalchemy import event
from sqlalchemy.engine import Engine
from werkzeug.middleware.proxy_fix import ProxyFix
from werkzeug.routing import IntegerConverter

from . import config as settings
from .extensions import babel, cors, csrf, db, limiter, login_manager, migrate
from .models import MAX_ID
from .origins import frame_ancestors
from .sessions import CookieSessionInterface

PACKAGE_DIR = Path(__file__).resolve().parent


def _resource_dir(name: str) -> Path:
    """templates/ and migrations/ live at the top of the source tree and inside the installed package."""
    packaged = PACKAGE_DIR / name
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / name


def create_app(config: dict[str, Any] | None = None) -> Flask:
    """Build the app from NEWSLETTER_* variables; `config` overrides them (tests)."""
    instance_path = os.environ.get("NEWSLETTER_INSTANCE_PATH") or os.path.abspath("instance")
    app = Flask(__name__, instance_path=instance_path, template_folder=str(_resource_dir("templates")))
    app.session_interface = CookieSessionInterface()
    app.config.from_mapping(settings.load(Path(instance_path)))
    if config:
        app.config.update(config)
    app.config.setdefault("SQLALCHEMY_ENGINE_OPTIONS", _engine_options(app.config["SQLALCHEMY_DATABASE_URI"]))

    if app.config["NEWSLETTER_PROXY_COUNT"]:
        hops = app.config["NEWSLETTER_PROXY_COUNT"]
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops, x_proto=hops, x_host=hops)  # type: ignore[method-assign]

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    db.init_app(app)
    migrate.init_app(app, db, directory=str(_resource_dir("migrations")), render_as_batch=True)
    csrf.init_app(app)
    limiter.init_app(app)
    login_manager.init_app(app)
    login_manager.login_view = "admin.login"
    login_manager.login_message = "Log in to see that page."
    # Off: Flask-Login's check rewrites any session without a login (e.g. one holding only a CSRF
    # token) and so adds Set-Cookie to public answers, making them differ. Logins end instead on the
    # server: the cookie names an AdminSession row, which logout, a password change and idleness delete.
    login_manager.session_protection = None
    from .locale import select_locale

    babel.init_app(app, locale_selector=select_locale,
                   default_translation_directories=str(PACKAGE_DIR / "translations"))
    app.context_processor(lambda: {"current_locale": str(get_locale() or "en")})
    # Only allowed sites' scripts may read the API's answers (embed.js, the site's own front end).
    cors.init_app(app, resources={r"/api/v1/*": {"origins": app.config["NEWSLETTER_ALLOWED_ORIGINS"]}},
                  methods=["GET", "POST"], allow_headers=["Content-Type", "Accept-Language"], max_age=3600)

    from . import errors, health, request_body, web_input
    from .admin import blueprint as admin_blueprint
    from .api import blueprint as api_blueprint
    from .embed import blueprint as embed_blueprint
    from .public import blueprint as public_blueprint

    app.url_map.converters["id"] = RowIdConverter
    app.register_blueprint(public_blueprint)
    app.register_blueprint(embed_blueprint)
    app.register_blueprint(api_blueprint)
    app.register_blueprint(admin_blueprint)
    errors.register(app)
    web_input.init_app(app)
    request_body.init_app(app)  # after web_input: an upload's own size limit is set before its body is read
    health.register(app)  # after web_input: its clock is the first hook, so refused requests are timed too
    app.after_request(_no_framing_by_default)

    from .cli import register_commands

    register_commands(app)
    if app.config["NEWSLETTER_OUTBOX_IN_PROCESS"]:
        from . import outbox

        outbox.attach_drainer(app, outbox.InProcessDrainer(app).start())
        from . import webhook_sender

        webhook_sender.attach(app, webhook_sender.InProcessWebhookSender(app).start())
    return app


@login_manager.user_loader
def _load_admin(login_key: str) -> Any:
    from flask import current_app

    from .accounts import LoginLifetime, load_login

    admin = load_login(db.session, login_key, LoginLifetime.from_config(current_app.config))
    # Keep the login's last-seen time (or its end), and end the transaction: on SQLite it holds the
    # write lock, and the view may have slow work to do before it writes anything.
    db.session.commit()
    return admin


def _no_framing_by_default(response: Any) -> Any:
    # Only the iframe form (and its error pages) may be framed by the allowed sites.
    if response.mimetype == "text/html":
        ancestors = frame_ancestors() if request.blueprint == "embed" else "'self'"
        response.headers.setdefault("Content-Security-Policy", f"frame-ancestors {ancestors}")
    return response


class RowIdConverter(IntegerConverter):
    """<id:name>: a positive integer that fits the id columns, so larger numbers are a 404, not a database error."""

    def __init__(self, url_map: Any) -> None:
        super().__init__(url_map, min=1, max=MAX_ID)


def _engine_options(url: str) -> dict[str, Any]:
    # A statement's parameters stay out of error messages and logs: they hold addresses, names and
    # emails with signed links in them.
    if url.startswith("sqlite"):
        # Many threads of one process write to one file: wait for the lock instead of failing.
        # (sqlite3's timeout is SQLite's busy timeout; after it the request answers 503.)
        return {"connect_args": {"timeout": 30, "check_same_thread": False}, "hide_parameters": True}
    # pre_ping: a connection that a database restart broke is replaced before use, not failed on.
    # connect_timeout: with the server unreachable, answer 503 within seconds rather than hang.
    return {"pool_pre_ping": True, "connect_args": {"connect_timeout": 5}, "hide_parameters": True}


@event.listens_for(Engine, "connect")
def _sqlite_connect(dbapi_connection: Any, connection_record: Any) -> None:
    if type(dbapi_connection).__module__.startswith("sqlite3"):
        # Let SQLAlchemy, not the driver, begin transactions, so we can begin them IMMEDIATE below.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.close()


@event.listens_for(Engine, "begin")
def _sqlite_begin(connection: Any) -> None:
    if connection.dialect.name == "sqlite" and not connection.get_execution_options().get("newsletter_read_only"):
        # Take the write lock at the start: two deferred transactions upgrading to write would deadlock.
        connection.exec_driver_sql("BEGIN IMMEDIATE")
