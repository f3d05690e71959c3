"""What load balancers and Prometheus ask: /healthz, /readyz and /metrics, and the request-latency hooks."""

from __future__ import annotations

import hmac
import ipaddress
import time
from functools import lru_cache

from alembic.script import ScriptDirectory
from flask import Blueprint, Flask, current_app, g, jsonify, request
from sqlalchemy import Engine, exc, text
from sqlalchemy.orm import Session
from werkzeug.exceptions import Forbidden, NotFound, Unauthorized
from werkzeug.wrappers import Response

from . import metrics, outages
from .extensions import db, limiter

blueprint = Blueprint("health", __name__)


@blueprint.get("/healthz")
@limiter.exempt
def healthz() -> Response:
    """The process answers; nothing else is asked (no database), so a database outage restarts nothing."""
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
@limiter.exempt
def readyz() -> tuple[Response, int]:
    """Ready for traffic: the database answers and its schema is the one this code's migrations make."""
    expected = sorted(_migration_heads(current_app.extensions["migrate"].directory))
    try:
        with _reading(db.engine).connect() as connection:
            found = sorted(connection.scalars(text("SELECT version_num FROM alembic_version")))
    except exc.SQLAlchemyError as error:
        missing_table = isinstance(error, exc.ProgrammingError | exc.OperationalError)
        if outages.database_unavailable(error) or not missing_table:
            current_app.logger.warning("readyz: database unreachable: %s", outages.summary(error))
            return jsonify({"status": "unavailable", "reason": "database unreachable"}), 503
        found = []  # no alembic_version table: never migrated
    if found != expected:
        return jsonify({"status": "unavailable", "reason": "migrations not current",
                        "database": found, "code": expected}), 503
    return jsonify({"status": "ready", "migrations": expected}), 200


@lru_cache(maxsize=8)
def _migration_heads(directory: str) -> tuple[str, ...]:
    return tuple(ScriptDirectory(directory).get_heads())


@blueprint.get("/metrics")
@limiter.exempt
def scrape() -> Response:
    """Prometheus metrics, for the token's holder or the allowed networks only."""
    _check_scraper()
    body = metrics.exposition(lambda: Session(_reading(db.engine)))
    return Response(body, content_type=metrics.CONTENT_TYPE_LATEST, headers={"Cache-Control": "no-store"})


def _reading(engine: Engine) -> Engine:
    # Probes only read: on SQLite they must not queue for the write lock (see _sqlite_begin).
    return engine.execution_options(newsletter_read_only=True)


def _check_scraper() -> None:
    config = current_app.config
    token, networks = config["NEWSLETTER_METRICS_TOKEN"], config["NEWSLETTER_METRICS_ALLOW"]
    if not token and not networks:
        raise NotFound()  # metrics are off until the operator says who may read them
    if networks:
        try:
            client = ipaddress.ip_address(request.remote_addr or "")
        except ValueError:
            client = None
        if client is None or not any(client in network for network in networks):
            raise Forbidden("Metrics are not served to this network.")
    if token:
        sent = request.headers.get("Authorization", "")
        scheme, _, credential = sent.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode(), token.encode()):
            raise _TokenRequired("Send the metrics token as Authorization: Bearer <token>.")


class _TokenRequired(Unauthorized):
    def get_headers(self, *args: object, **kwargs: object) -> list[tuple[str, str]]:
        return [*super().get_headers(*args, **kwargs), ("WWW-Authenticate", 'Bearer realm="metrics"')]


def register(app: Flask) -> None:
    """Add the routes and time every request for the latency histogram."""
    app.register_blueprint(blueprint)
    # First of the before_request hooks, so that the time includes the rate limiter's checks.
    app.before_request_funcs.setdefault(None, []).insert(0, _start_clock)
    app.after_request(_record_latency)


def _start_clock() -> None:
    g.request_started = time.perf_counter()


def _record_latency(response: Response) -> Response:
    started = g.get("request_started")
    if started is not None:
        metrics.observe_request(request.endpoint, response.status_code, time.perf_counter() - started)
    return response
