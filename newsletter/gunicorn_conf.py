"""gunicorn settings: `gunicorn -c python:newsletter.gunicorn_conf wsgi:app`.

Access log lines (with --access-logfile) leave signed links out of the request line, path and Referer.

With PROMETHEUS_MULTIPROC_DIR set (an empty folder the server may write to), each worker writes its
counters to files there and /metrics adds up every worker's. Only hooks are set here, so command-line
options (--workers, --bind, …) still apply. Without the variable the hooks do nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from gunicorn.glogging import Logger

from newsletter.signed_paths import redact


class RedactingLogger(Logger):
    """gunicorn's logger, with the signed links in a request's URL and Referer replaced by `…`."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> dict[str, Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        for key in ("r", "U", "f", "{referer}i"):
            if isinstance(atoms.get(key), str):
                atoms[key] = redact(atoms[key])
        return atoms


logger_class = RedactingLogger


def on_starting(server: Any) -> None:
    """Empty the metrics folder: counts of an earlier run's workers would otherwise be added in."""
    folder = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        for stale in Path(folder).glob("*.db"):
            stale.unlink()


def child_exit(server: Any, worker: Any) -> None:
    """Tell prometheus_client a worker is gone, so that its live gauges stop counting."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
