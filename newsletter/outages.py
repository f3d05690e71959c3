"""Which exceptions mean the database is out of reach for a while (down, restarting, full), not a bug."""

from __future__ import annotations

import sqlite3

import psycopg
from sqlalchemy import exc

# SQLSTATE classes of a server that can't serve now: 08 connection exception, 53 insufficient
# resources (too many connections), 57P operator intervention (shutting down, starting up).
_UNAVAILABLE_SQLSTATES = ("08", "53", "57P")


def database_unavailable(error: BaseException) -> bool:
    """Whether `error` says the database can't be reached now, so that a retry in a few seconds may work."""
    if isinstance(error, exc.TimeoutError):  # every pooled connection busy for pool_timeout
        return True
    if not isinstance(error, exc.DBAPIError):
        return False
    if error.connection_invalidated:  # SQLAlchemy saw the connection drop
        return True
    cause = error.orig
    if isinstance(cause, psycopg.OperationalError):
        # No SQLSTATE: the client's own failure to connect or to talk to the server.
        return cause.sqlstate is None or cause.sqlstate.startswith(_UNAVAILABLE_SQLSTATES)
    if isinstance(cause, psycopg.InterfaceError):
        return "closed" in str(cause)
    if isinstance(cause, sqlite3.OperationalError):
        # Another process held the write lock for longer than the busy timeout.
        return "database is locked" in str(cause) or "database is busy" in str(cause)
    return False


def schema_missing(error: BaseException) -> bool:
    """Whether `error` says a table is missing: the database was never upgraded (`newsletter db upgrade`)."""
    if not isinstance(error, exc.DBAPIError):
        return False
    cause = error.orig
    if isinstance(cause, psycopg.Error):
        return cause.sqlstate == "42P01"  # undefined_table
    return isinstance(cause, sqlite3.OperationalError) and str(cause).startswith("no such table")


def summary(error: BaseException) -> str:
    """The first line of the driver's message, for a one-line log entry."""
    cause = getattr(error, "orig", None) or error
    text = str(cause).strip().splitlines()
    return f"{type(cause).__name__}: {text[0] if text else ''}"
