"""Prometheus metrics: what the views count, request latency, and the outbox read at scrape time.

Counters and the latency histogram live in each process; under gunicorn with PROMETHEUS_MULTIPROC_DIR
set, prometheus_client keeps them in files of that folder and a scrape adds up every worker's
(see newsletter/gunicorn_conf.py). The outbox figures are read from the database when scraped, so
every process reports the same, whole truth.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .models import OUTBOX_EMAIL_KINDS, OutboxMessage

__all__ = ["CONTENT_TYPE_LATEST", "count", "exposition", "observe_request"]

logger = logging.getLogger(__name__)
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # Outside gunicorn_conf (e.g. `newsletter serve`) nothing else makes the folder.
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

SIGNUPS = Counter("newsletter_signups", "Signup requests taken (stored), by channel.", ["channel"])
CONFIRMATIONS = Counter("newsletter_confirmations", "Subscriptions confirmed, by channel.", ["channel"])
UNSUBSCRIBES = Counter("newsletter_unsubscribes", "Subscriptions ended, by channel.", ["channel"])
REQUEST_SECONDS = Histogram(
    "newsletter_request_duration_seconds", "Time to answer a request, by endpoint and status class.",
    ["endpoint", "status"], buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
NOT_SENT = Counter("newsletter_outbox_not_sent", "Emails not sent because their address was suppressed by the "
                   "time they were due, by the suppression's reason.", ["reason"])
_COUNTERS = {"signups": SIGNUPS, "confirmations": CONFIRMATIONS, "unsubscribes": UNSUBSCRIBES}


def count(what: str, channel: str, amount: int = 1) -> None:
    """Count `amount` signups, confirmations or unsubscribes of `channel`; call it after the commit."""
    if amount > 0:
        with _never_failing("count %s", what):
            _COUNTERS[what].labels(channel=channel).inc(amount)


def count_not_sent(reason: str) -> None:
    """Count one email the sender did not send because its address is suppressed for `reason`."""
    with _never_failing("count a message not sent (%s)", reason):
        NOT_SENT.labels(reason=reason).inc()


def observe_request(endpoint: str | None, status: int, seconds: float) -> None:
    """Record one answered request: its endpoint (None when no route matched) and status class."""
    with _never_failing("time %s", endpoint):
        REQUEST_SECONDS.labels(endpoint=endpoint or "none", status=f"{status // 100}xx").observe(seconds)


@contextmanager
def _never_failing(what: str, *args: object) -> Iterator[None]:
    # The change is committed by now: a metrics failure (e.g. the multiprocess folder's disk full)
    # must not turn its answer into an error.
    try:
        yield
    except Exception:  # noqa: BLE001
        logger.exception("metrics: could not " + what, *args)


class OutboxCollector(Collector):
    """The outbox's pending, sent and failed counts and its oldest pending message's age, read when scraped."""

    def __init__(self, session_factory: Callable[[], Session]) -> None:
        self.session_factory = session_factory

    def collect(self) -> Iterator[GaugeMetricFamily]:
        up = GaugeMetricFamily("newsletter_database_up", "1 when the scrape could read the database, else 0.")
        try:
            counts, oldest = self._read()
        except Exception:  # noqa: BLE001 (a scrape during an outage reports the outage, not an error)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        messages = GaugeMetricFamily("newsletter_outbox_messages", "Emails in the outbox, by status.",
                                     labels=["status"])
        for status in ("pending", "sent", "failed"):
            messages.add_metric([status], counts.get(status, 0))
        yield messages
        age = 0.0 if oldest is None else max(0.0, (datetime.now(timezone.utc) - oldest).total_seconds())
        yield GaugeMetricFamily("newsletter_outbox_oldest_pending_age_seconds",
                                "Age of the oldest email waiting to be sent; 0 when none waits.", value=age)

    def _read(self) -> tuple[dict[str, int], datetime | None]:
        session = self.session_factory()
        try:
            emails = OutboxMessage.kind.in_(OUTBOX_EMAIL_KINDS)  # webhook deliveries are not emails
            counts = {status: number for status, number in session.execute(
                select(OutboxMessage.status, func.count()).where(emails).group_by(OutboxMessage.status))}
            oldest = session.scalar(select(func.min(OutboxMessage.created_at))
                                    .where(OutboxMessage.status == "pending", emails))
        finally:
            session.close()
        if oldest is not None and oldest.tzinfo is None:
            oldest = oldest.replace(tzinfo=timezone.utc)
        return counts, oldest


def exposition(session_factory: Callable[[], Session]) -> bytes:
    """The text a Prometheus scrape gets: this process's (or every worker's) metrics and the outbox's."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        counted = generate_latest(registry)
    else:
        counted = generate_latest(REGISTRY)
    outbox = CollectorRegistry(auto_describe=False)
    outbox.register(OutboxCollector(session_factory))
    return counted + generate_latest(outbox)
