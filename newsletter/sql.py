"""Small SQL building blocks shared by the hand-built statements of the hot paths."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ARRAY, ColumnElement, any_, bindparam
from sqlalchemy.types import TypeEngine


def in_list(column: ColumnElement[Any], name: str, item_type: TypeEngine[Any], dialect: str) -> ColumnElement[bool]:
    """`column IN (<the list bound as name>)`.

    On PostgreSQL as `column = ANY(:name)` with one array parameter: an "expanding" IN list makes
    SQLAlchemy rewrite the SQL text on every execution, and each list length is a new prepared statement.
    """
    if dialect == "postgresql":
        return column == any_(bindparam(name, type_=ARRAY(item_type)))
    return column.in_(bindparam(name, expanding=True))
