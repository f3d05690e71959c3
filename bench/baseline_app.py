"""The baseline for bench/signup.py: the least a signup endpoint can do on the same stack.

One POST route that parses a JSON body, INSERTs one row through a pooled SQLAlchemy engine,
commits and answers 202 with JSON, as the real app does; nothing else (no validation, no ORM,
no templates). Served by gunicorn with the app's worker settings:

    BENCH_DATABASE_URL=postgresql+psycopg://postgres@127.0.0.1/newsletter_bench \\
        gunicorn --chdir bench 'baseline_app:create_app()'

bench/signup.py creates the table (TABLE_DDL) before starting the workers.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone

import sqlalchemy as sa
from flask import Flask, Response, jsonify, request

TABLE_DDL = """
CREATE TABLE bench_baseline (
    id serial PRIMARY KEY,
    email text NOT NULL,
    created_at timestamptz NOT NULL
)
"""

metadata = sa.MetaData()
baseline = sa.Table(
    "bench_baseline",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("email", sa.Text, nullable=False),
    sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
)


def create_app(database_url: str | None = None) -> Flask:
    """The baseline app on `database_url` (default: $BENCH_DATABASE_URL)."""
    # The same engine options as newsletter.create_app() uses on PostgreSQL.
    engine = sa.create_engine(database_url or os.environ["BENCH_DATABASE_URL"], pool_pre_ping=True)
    app = Flask(__name__)

    @app.get("/health")
    def health() -> Response:
        with engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        return jsonify({"status": "ok"})

    @app.post("/signups")
    def signup() -> tuple[Response, int]:
        body = request.get_json()
        with engine.begin() as connection:
            connection.execute(baseline.insert().values(email=body["email"], created_at=datetime.now(timezone.utc)))
        return jsonify({"status": "pending"}), 202

    return app
