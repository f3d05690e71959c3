"""Running queued imports to their end: in a thread of the web process, and in the outbox worker.

Any process may take a queued run, or one whose process died (its heartbeat, kept per batch, is
stale); the database decides who gets it (imports.claim_next), so several may look at once.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from flask import Flask
from sqlalchemy import exists, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from . import imports, outages
from .models import ImportRun, utcnow

log = logging.getLogger(__name__)


def stale_after(config: dict[str, Any]) -> timedelta:
    """How old a running import's heartbeat is when its process is taken to be dead."""
    return timedelta(seconds=config["NEWSLETTER_IMPORT_STALE_AFTER"])


def run_due(session: Session, config: dict[str, Any], stop: threading.Event | None = None) -> int:
    """Run every queued import, and every one left by a dead process, to its end; how many were run.

    Uploads of runs not imported within NEWSLETTER_IMPORT_KEEP_UPLOADS are deleted first.

    A database error propagates (the run stays "running" and is taken up again once stale); any other
    error fails that run, with the error on its record, and the next one is run.
    """
    imports.delete_old_uploads(session, config)
    ran = 0
    while stop is None or not stop.is_set():
        claimed = imports.claim_next(session, stale_after=stale_after(config))
        if claimed is None:
            session.commit()
            return ran
        run_id = claimed.id
        session.commit()
        log.info("import %d: running (%s)", run_id, claimed.file_name)
        try:
            done = imports.execute(session, config, run_id)
        except SQLAlchemyError:
            raise
        except Exception as error:  # a bug, or the stored file gone: say so on the record, go on with the next
            log.exception("import %d stopped on an unexpected error", run_id)
            session.rollback()
            _fail(session, run_id, error)
        else:
            log.info("import %d: %s, %d rows", run_id, done.status, done.rows_done)
        ran += 1
    return ran


def _fail(session: Session, run_id: int, error: Exception) -> None:
    message = f"The import stopped on an unexpected error ({type(error).__name__}: {error})."[:2000]
    session.execute(update(ImportRun).where(ImportRun.id == run_id, ImportRun.status == "running")
                    .values(status="failed", error=message, finished_at=utcnow()))
    session.commit()


def _reset(session: Any) -> None:
    with contextlib.suppress(SQLAlchemyError):
        session.rollback()
    session.remove()


def unfinished(session: Session) -> bool:
    """Whether any run is queued or running (here or in another process, alive or not)."""
    return bool(session.scalar(select(exists().where(ImportRun.status.in_(("queued", "running"))))))


def look_until_done(app: Flask, wait: Callable[[float], bool], *, max_pause: float = 30.0) -> None:
    """Run due imports, then look again while any run is queued or running; return when none is.

    A run cut off by a restart keeps "running" with a fresh heartbeat for a while: it is looked at
    again every NEWSLETTER_IMPORT_STALE_AFTER / 2 until it is taken up. A database outage pauses
    1 s doubling to `max_pause`. `wait(seconds)` sleeps and returns True to stop at once.
    """
    from .extensions import db
    from .outbox import Backoff

    backoff = Backoff(most=max_pause)
    with app.app_context():
        while True:
            try:
                run_due(db.session, app.config)
                backoff.reset()
                if not unfinished(db.session):
                    return
                pause = stale_after(app.config).total_seconds() / 2
            except SQLAlchemyError as error:
                pause = backoff.next()
                log.warning("imports: the database is unavailable (%s); trying again in %g s",
                            outages.summary(error), pause)
            except Exception:
                pause = backoff.next()
                log.exception("imports: unexpected error")
            finally:
                _reset(db.session)
            if wait(pause):
                return


class InProcessImports:
    """The web process's import thread: started when an import is queued or may have been cut off.

    It ends when no run is queued or running any more (see look_until_done).
    """

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._lock = threading.Lock()
        self._wanted = False
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def kick(self) -> None:
        """Look for imports to run now (a thread is started unless one is running; it looks again)."""
        with self._lock:
            self._wanted = True
            self._wake.set()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="imports", daemon=True)
                self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        """Wait for the thread to end (tests, shutdown)."""
        thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def _wait(self, seconds: float) -> bool:
        # A kick during the pause ends it early.
        self._wake.wait(seconds)
        self._wake.clear()
        return False

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._wanted:
                    self._thread = None
                    return
                self._wanted = False
                self._wake.clear()
            try:
                look_until_done(self.app, self._wait)
            except Exception:  # never expected (look_until_done logs its own); the next kick starts again
                log.exception("imports: unexpected error")


_registry_lock = threading.Lock()


def kick(app: Flask) -> None:
    """Run queued imports in this process, in the background (when NEWSLETTER_IMPORTS_IN_PROCESS is on)."""
    if not app.config["NEWSLETTER_IMPORTS_IN_PROCESS"]:
        return
    with _registry_lock:
        runner = app.extensions.setdefault("newsletter.imports", InProcessImports(app))
    runner.kick()


def run_in_worker(app: Flask, stop: threading.Event, *, poll_seconds: float = 5.0, max_pause: float = 30.0) -> None:
    """The worker's import loop: look for due imports every `poll_seconds` until `stop`, through outages."""
    from .extensions import db
    from .outbox import Backoff, describe_error

    backoff = Backoff(most=max_pause)
    with app.app_context():
        while not stop.is_set():
            pause = poll_seconds
            try:
                run_due(db.session, app.config, stop)
                backoff.reset()
            except SQLAlchemyError as error:
                if outages.schema_missing(error):
                    problem = f"the database has no imports table yet; run `newsletter db upgrade` ({describe_error(error)})"
                else:
                    problem = f"the database is unavailable ({describe_error(error)})"
                pause = backoff.next()
                log.warning("imports: %s; trying again in %g s", problem, pause)
            except Exception:
                log.exception("imports: unexpected error")
                pause = backoff.next()
            finally:
                _reset(db.session)
            stop.wait(pause)


def start_in_worker(app: Flask, stop: threading.Event, **options: Any) -> threading.Thread:
    """The worker's import loop in a thread of its own, so that a long import never holds up the outbox."""
    thread = threading.Thread(target=run_in_worker, args=(app, stop), kwargs=options, name="imports", daemon=True)
    thread.start()
    return thread
