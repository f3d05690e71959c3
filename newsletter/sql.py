"""Small SQL building blocks shared by the hand-built statements of the hot paths."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import ARRAY, ColumnElement, Connection, any_, bindparam
from sqlalchemy.orm import Session, scoped_session
from sqlalchemy.types import TypeEngine


def in_list(column: ColumnElement[Any], name: str, item_type: TypeEngine[Any], dialect: str) -> ColumnElement[bool]:
    """`column IN (<the list bound as name>)`.

    On PostgreSQL as `column = ANY(:name)` with one array parameter: an "expanding" IN list makes
    SQLAlchemy rewrite the SQL text on every execution, and each list length is a new prepared statement.
    """
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(item_type)))
    return column.in_(bindparam(name, expanding=True))


@contextmanager
def statement_at_a_time(session: Session) -> Iterator[Connection]:
    """A connection for work whose every write is a single statement, each whole by itself.

    PostgreSQL runs each statement atomically, so such work needs no BEGIN and COMMIT, which are
    two of the three round trips of a one-statement transaction: on PostgreSQL this is a connection
    of its own in autocommit, when the session has begun nothing yet. Otherwise (a session that has
    read or written already, SQLite) it is the session's connection, in the session's transaction.
    """
    engine = session.get_bind()
    begun = (session() if isinstance(session, scoped_session) else session).in_transaction()
    if begun or engine.dialect.name != "postgresql":
        yield session.connection()
        return
    with engine.connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")
