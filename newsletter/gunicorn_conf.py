"""gunicorn settings for metrics across workers: `gunicorn -c python:newsletter.gunicorn_conf wsgi:app`.

With PROMETHEUS_MULTIPROC_DIR set (an empty folder the server may write to), each worker writes its
counters to files there and /metrics adds up every worker's. Only hooks are set here, so command-line
options (--workers, --bind, …) still apply. Without the variable the hooks do nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


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
