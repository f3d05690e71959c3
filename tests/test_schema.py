"""The schema comes only from the migrations: they must build exactly what the models describe."""

from __future__ import annotations

import re
import warnings

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column

from newsletter.extensions import db


def _expression_indexes() -> dict[str, str]:
    """The models' indexes on an expression (lower(email)), each name with its expression as SQL."""
    found = {}
    for table in db.metadata.tables.values():
        for index in table.indexes:
            expressions = [e for e in index.expressions if not isinstance(e, Column)]
            if expressions:
                found[index.name] = ", ".join(str(e.compile(dialect=db.engine.dialect, compile_kwargs={"include_table": False})) for e in expressions)
    return found


def test_migrations_build_the_schema_the_models_describe(app):
    with app.app_context(), db.engine.connect() as connection:
        with warnings.catch_warnings():
            if connection.dialect.name == "sqlite":
                # SQLite's reflection cannot read an index on an expression, so autogenerate leaves those
                # out of its comparison (with a warning each); the test below compares them itself.
                warnings.filterwarnings("ignore", "Skipped unsupported reflection of expression-based index")
                warnings.filterwarnings("ignore", "autogenerate skipping metadata-specified expression-based index")
            differences = compare_metadata(MigrationContext.configure(connection), db.metadata)
    assert differences == []


def test_migrations_build_the_expression_indexes_the_models_describe_on_sqlite_too(app):
    """What compare_metadata cannot see on SQLite: each expression index, on the same expression.

    (On PostgreSQL compare_metadata reflects and compares them, in the test above.)
    """
    with app.app_context(), db.engine.connect() as connection:
        if connection.dialect.name != "sqlite":
            pytest.skip("PostgreSQL's expression indexes are compared by compare_metadata")
        wanted = _expression_indexes()
        rows = connection.exec_driver_sql("SELECT name, sql FROM sqlite_master WHERE type = 'index'").all()
    built = {name: re.sub(r"\s+", "", sql.split(" ON ", 1)[1]).lower() for name, sql in rows if sql}
    assert "ix_readers_lower_email" in wanted
    for name, expression in wanted.items():
        assert name in built, f"the migrations build no index {name}"
        assert re.sub(r"\s+", "", expression).lower() in built[name], (name, built[name])
