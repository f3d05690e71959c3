"""Webhook deliveries: queue the feed's changes for each endpoint, then sign and POST them, with retries.

Dispatch turns the changes feed into outbox rows (kind "webhook"), one per endpoint and event, and
moves the endpoint's feed_position on in the same transaction: a crash queues nothing twice and
loses nothing. Delivery claims due rows a batch at a time, shared between the endpoints with due
rows (FOR UPDATE SKIP LOCKED on PostgreSQL, so any number of workers share the work), renders the
event when it sends it, signs it as Standard Webhooks says and POSTs it through webhook_urls (no
private addresses, no redirects, a timeout).
A reader's deliveries to one endpoint leave in order: a row waits while an earlier one of the same
endpoint and reader is pending. Failures are retried with exponential backoff for
NEWSLETTER_WEBHOOK_RETRY_FOR from when the row was queued; then its endpoint is switched off, with
the reason, for an admin to look at, and the row waits (nothing is lost) until the endpoint is on again.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from sqlalchemy import delete, func, insert, or_, select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, aliased
from standardwebhooks import Webhook

from . import changes, outages
from .models import WEBHOOK_KIND, OutboxMessage, WebhookAttempt, WebhookEndpoint, utcnow
from .outbox import Backoff, describe_error
from .webhook_urls import Answer, RefusedAddress, WebhookClient
from .webhooks import signing_secrets

log = logging.getLogger(__name__)

DISPATCH_BATCH = 1000
RESPONSE_START = 500
USER_AGENT = "newsletter-webhooks/1"


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def dispatch(session: Session, batch: int = DISPATCH_BATCH) -> int:
    """Queue the feed's new changes for every active endpoint; how many deliveries were queued.

    One transaction per endpoint and batch: the rows and the endpoint's new feed_position commit
    together. On PostgreSQL an endpoint another worker is dispatching is skipped (its rows are on
    their way).
    """
    endpoint_ids = list(session.scalars(select(WebhookEndpoint.id).where(WebhookEndpoint.active.is_(True))))
    session.rollback()
    if not endpoint_ids:
        return 0
    changes.assign_positions(session)
    queued = 0
    for endpoint_id in endpoint_ids:
        while True:
            added, more = _dispatch_batch(session, endpoint_id, batch)
            queued += added
            if not more:
                break
    return queued


def _dispatch_batch(session: Session, endpoint_id: int, batch: int) -> tuple[int, bool]:
    endpoint = session.scalars(select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id,
                                                            WebhookEndpoint.active.is_(True))
                               .with_for_update(skip_locked=True)).first()
    if endpoint is None:
        session.rollback()
        return 0, False
    # Read first: positions are given in turns (changes.assign_positions), so everything up to it is in the feed.
    upto = changes.last_position(session)
    events = changes.changes_after(session, endpoint.feed_position, batch, types=endpoint.event_types or None,
                                   up_to=upto)
    now = utcnow()
    if events:
        session.execute(insert(OutboxMessage), [{
            "kind": WEBHOOK_KIND, "endpoint_id": endpoint.id, "event_id": event.id, "reader_id": event.reader_id,
            "status": "pending", "attempts": 0, "created_at": now, "next_attempt_at": now,
        } for event in events])
    full = len(events) >= batch
    position = events[-1].feed_position if full else upto
    if position is not None and position > endpoint.feed_position:
        endpoint.feed_position = position
    session.commit()
    return len(events), full


@dataclass(frozen=True)
class Delivery:
    """A leased webhook row to send: its ids, its attempts with this one, and when it was queued."""

    row_id: int
    endpoint_id: int
    event_id: int | None
    attempts: int
    created_at: datetime


# Deliveries claimed and recorded together: two commits per batch instead of two per delivery.
DELIVERY_BATCH = 20


def _lease(config: dict[str, Any], count: int = 1) -> timedelta:
    # Longer than every delivery of the batch sent one after another, each cut off at its deadline (twice the
    # timeout; webhook_urls): a crashed sender's deliveries are due again after it.
    return timedelta(seconds=count * 2 * config["NEWSLETTER_WEBHOOK_TIMEOUT"] + 30)


def claim_due(session: Session, config: dict[str, Any], due_by: datetime | None = None,
              limit: int = DELIVERY_BATCH, start_after: int = 0) -> list[Delivery]:
    """Lease up to `limit` webhook rows of active endpoints due by `due_by` (default now).

    Fair between endpoints: the endpoints with due rows share the batch, each leasing its oldest due
    rows up to an equal share (at least one), taken in turn from the first whose id is above
    `start_after` (round robin when there are more of them than `limit`), so one endpoint's backlog
    (a receiver that never answers) never keeps the others' due rows out of a batch. A row waits while
    an earlier row of the same endpoint and reader is pending (in order per reader), so no two rows of
    one reader are leased together. The caller commits the lease before it sends: no transaction stays
    open during the POSTs.
    """
    now = utcnow()
    due_by = due_by or now
    due = (select(OutboxMessage.id)
           .where(OutboxMessage.endpoint_id == WebhookEndpoint.id, OutboxMessage.status == "pending",
                  OutboxMessage.next_attempt_at <= due_by, OutboxMessage.kind == WEBHOOK_KIND)
           .exists())
    endpoint_ids = list(session.scalars(select(WebhookEndpoint.id).where(WebhookEndpoint.active.is_(True), due)
                                        .order_by(WebhookEndpoint.id)))
    share = max(1, limit // len(endpoint_ids)) if endpoint_ids else 0
    turn = [endpoint_id for endpoint_id in endpoint_ids if endpoint_id > start_after]
    turn += [endpoint_id for endpoint_id in endpoint_ids if endpoint_id <= start_after]
    earlier = aliased(OutboxMessage)
    # A scalar subquery, not NOT EXISTS: PostgreSQL then walks the due index in order and probes
    # ix_outbox_messages_endpoint_reader per row, stopping after the limit; an anti join would read
    # every pending row for each claim. Order among due rows is by time only: the per-reader order
    # is this condition's job, and an id tie-break would sort a whole dispatch batch (one time).
    first_of_reader = (select(func.min(earlier.id))
                       .where(earlier.endpoint_id == OutboxMessage.endpoint_id,
                              earlier.reader_id == OutboxMessage.reader_id, earlier.status == "pending")
                       .scalar_subquery())
    rows: list[OutboxMessage] = []
    for endpoint_id in turn:
        if len(rows) >= limit:
            break
        rows += session.scalars(
            select(OutboxMessage)
            .where(OutboxMessage.endpoint_id == endpoint_id, OutboxMessage.status == "pending",
                   OutboxMessage.next_attempt_at <= due_by, OutboxMessage.kind == WEBHOOK_KIND,
                   or_(OutboxMessage.reader_id.is_(None), OutboxMessage.id == first_of_reader))
            .order_by(OutboxMessage.next_attempt_at)
            .limit(min(share, limit - len(rows)))
            .with_for_update(skip_locked=True, of=OutboxMessage)
        ).all()
    leased_until = now + _lease(config, len(rows))
    deliveries = []
    for row in rows:
        row.attempts += 1
        row.next_attempt_at = leased_until
        deliveries.append(Delivery(row.id, row.endpoint_id or 0, row.event_id, row.attempts, _aware(row.created_at)))
    session.flush()
    return deliveries


@dataclass
class DeliveryResult:
    sent: int = 0
    retrying: int = 0
    failed: int = 0
    switched_off: int = 0


@dataclass(frozen=True)
class Signed:
    """A rendered, signed delivery: where to, its body and headers."""

    url: str
    event_type: str | None
    body: bytes
    headers: dict[str, str]


def sign(secrets: list[str], msg_id: str, timestamp: datetime, body: str) -> str:
    """The webhook-signature header: one signature per secret, space-separated (Standard Webhooks)."""
    return " ".join(Webhook(secret).sign(msg_id, timestamp, body) for secret in secrets)


def render(session: Session, delivery: Delivery) -> Signed | str:
    """The signed request of a delivery, rendered and signed now (just before it is sent); or why there is
    nothing to send (the endpoint or the event is gone). An erasure committed before this is honoured."""
    endpoint = session.get(WebhookEndpoint, delivery.endpoint_id)
    if endpoint is None:
        return "The endpoint was deleted."
    payload = changes.event_payload(session, delivery.event_id) if delivery.event_id is not None else None
    if payload is None:
        return (f"The event {delivery.event_id} no longer exists (its never-confirmed reader was deleted): "
                "there is nothing to send.")
    now = utcnow()
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    msg_id = str(payload.get("id") or f"evt_{delivery.event_id}")
    headers = {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "webhook-id": msg_id,
        "webhook-timestamp": str(int(now.timestamp())),
        "webhook-signature": sign(signing_secrets(endpoint, now), msg_id, now, body),
    }
    return Signed(endpoint.url, payload.get("type"), body.encode(), headers)


@dataclass(frozen=True)
class Outcome:
    """What one POST gave: the answer, or the error when there was none."""

    delivery: Delivery
    signed: Signed | None
    answer: Answer | None
    error: str | None
    duration_ms: int
    permanent: bool
    # False when it was not tried (its endpoint gave no answer just before): not an attempt.
    tried: bool = True
    # Set when it was not sent because the database went away before it could be (rendering it): the
    # error, raised once the outcomes are recorded; the delivery is due again at once.
    cut_off: SQLAlchemyError | None = None


class WebhookSender:
    """Dispatches and delivers webhooks; one HTTP client whose connections are reused."""

    def __init__(self, config: dict[str, Any], client: WebhookClient | None = None) -> None:
        self.config = config
        self.client = client or WebhookClient(timeout=config["NEWSLETTER_WEBHOOK_TIMEOUT"],
                                              allow_private=config["NEWSLETTER_WEBHOOK_ALLOW_PRIVATE"])
        self.concurrency = config.get("NEWSLETTER_WEBHOOK_CONCURRENCY", 4)
        self._threads: ThreadPoolExecutor | None = None
        # Round robin between endpoints: the next claim starts after the endpoint this one ended with.
        self._last_endpoint = 0
        # Outcomes the database was not there to record: recorded first on the next try, so what was
        # sent is not sent again and what was not is released at once rather than when its lease ends.
        self._unrecorded: list[Outcome] = []

    def deliver_due(self, session: Session, result: DeliveryResult, due_by: datetime | None = None,
                    limit: int = DELIVERY_BATCH) -> int:
        """Claim up to `limit` deliveries due by `due_by` (now), send them and record what happened; how many.

        Each endpoint's deliveries are sent one after another, in the order claimed; different endpoints
        at once (NEWSLETTER_WEBHOOK_CONCURRENCY threads), so a slow receiver holds up only its own.
        When the database goes away meanwhile, the deliveries not sent yet are released (their tries
        given back, due at once) when it answers again, and the error is raised for the caller to wait.
        """
        if self._unrecorded:
            record(session, self.config, self._unrecorded, result)
            self._unrecorded = []
        deliveries = claim_due(session, self.config, due_by, limit, start_after=self._last_endpoint)
        if not deliveries:
            session.rollback()
            return 0
        session.commit()
        self._last_endpoint = deliveries[-1].endpoint_id
        groups: dict[int, list[Delivery]] = {}
        for delivery in deliveries:
            groups.setdefault(delivery.endpoint_id, []).append(delivery)
        bind = session.get_bind()
        if len(groups) == 1 or self.concurrency == 1:
            outcomes = [outcome for group in groups.values() for outcome in self._send_group(bind, group)]
        else:
            if self._threads is None:
                self._threads = ThreadPoolExecutor(self.concurrency, thread_name_prefix="webhook-post")
            futures = [self._threads.submit(self._send_group, bind, group) for group in groups.values()]
            outcomes = [outcome for future in futures for outcome in future.result()]
        self._unrecorded = outcomes
        record(session, self.config, outcomes, result)
        self._unrecorded = []
        cut_off = next((outcome.cut_off for outcome in outcomes if outcome.cut_off is not None), None)
        if cut_off is not None:
            raise cut_off
        return len(deliveries)

    def _send_group(self, bind: Any, deliveries: list[Delivery]) -> list[Outcome]:
        """Render, sign and POST one endpoint's deliveries in order, each just before it is sent."""
        outcomes: list[Outcome] = []
        # An endpoint that gave no answer (refused, timed out) is not tried again in this batch: one
        # unreachable receiver would otherwise take a timeout per delivery.
        unreachable: str | None = None
        cut_off: SQLAlchemyError | None = None
        with Session(bind) as session:
            for delivery in deliveries:
                if cut_off is not None:
                    outcomes.append(Outcome(delivery, None, None, "Not sent: the database went away",
                                            0, False, tried=False, cut_off=cut_off))
                    continue
                if unreachable is not None:
                    outcomes.append(Outcome(delivery, None, None, f"Not tried: the endpoint gave no answer to the "
                                            f"delivery just before ({unreachable})", 0, False, tried=False))
                    continue
                try:
                    signed = render(session, delivery)
                except SQLAlchemyError as error:
                    cut_off = error
                    outcomes.append(Outcome(delivery, None, None, "Not sent: the database went away",
                                            0, False, tried=False, cut_off=cut_off))
                    continue
                finally:
                    with contextlib.suppress(SQLAlchemyError):
                        session.rollback()  # no transaction (nor SQLite lock) stays open during the POST
                outcome = self._post(delivery, signed)
                if outcome.answer is None and not outcome.permanent and outcome.error:
                    unreachable = outcome.error[:200]
                outcomes.append(outcome)
        return outcomes

    def _post(self, delivery: Delivery, signed: Signed | str) -> Outcome:
        if isinstance(signed, str):
            return Outcome(delivery, None, None, signed, 0, permanent=True)
        started = time.perf_counter()
        try:
            answer = self.client.post(signed.url, signed.body, signed.headers)
        except RefusedAddress as refused:
            error = str(refused)
        except Exception as failure:  # noqa: BLE001 (refused, timed out, reset: each is a failed try)
            error = describe_error(failure)
        else:
            return Outcome(delivery, signed, answer, None, answer.duration_ms, permanent=False)
        return Outcome(delivery, signed, None, error, int((time.perf_counter() - started) * 1000), permanent=False)

    def drain(self, session: Session, limit: int | None = None, stop: threading.Event | None = None) -> DeliveryResult:
        """Queue the feed's new changes, then deliver until none is due, `limit` were handled or `stop` is set."""
        result = DeliveryResult()
        dispatch(session)
        # Only what was due when the drain began: a retry falling due meanwhile waits for the next drain.
        started = utcnow()
        handled = 0
        while (limit is None or handled < limit) and not (stop is not None and stop.is_set()):
            batch = DELIVERY_BATCH if limit is None else min(DELIVERY_BATCH, limit - handled)
            done = self.deliver_due(session, result, started, batch)
            if not done:
                break
            handled += done
        return result

    def close(self) -> None:
        if self._threads is not None:
            self._threads.shutdown(wait=True)
            self._threads = None
        self.client.close()


def _backoff(attempts: int, config: dict[str, Any]) -> timedelta:
    base, most = config["NEWSLETTER_WEBHOOK_RETRY_BASE"], config["NEWSLETTER_WEBHOOK_RETRY_MAX"]
    return timedelta(seconds=min(base * 2 ** min(max(attempts - 1, 0), 30), most))


def _describe_answer(answer: Answer) -> str:
    if answer.location is not None:
        return f"HTTP {answer.status}: a redirect to {answer.location[:300]!r}, not followed"
    return f"HTTP {answer.status}"


def record(session: Session, config: dict[str, Any], outcomes: list[Outcome], result: DeliveryResult) -> None:
    """Log each attempt and write its row's new state; switch an endpoint off when a retry period is over. Commits."""
    ids = [outcome.delivery.row_id for outcome in outcomes]
    rows = {row.id: row for row in session.scalars(
        select(OutboxMessage).where(OutboxMessage.id.in_(ids)).order_by(OutboxMessage.id)
        .with_for_update().execution_options(populate_existing=True))}
    now = utcnow()
    for outcome in outcomes:
        row = rows.get(outcome.delivery.row_id)
        if row is None:
            log.info("webhook delivery %s: its endpoint or row was deleted while it was sent", outcome.delivery.row_id)
            continue
        _record_one(session, config, outcome, row, now, result)
    session.commit()


def _record_one(session: Session, config: dict[str, Any], outcome: Outcome, row: OutboxMessage, now: datetime,
                result: DeliveryResult) -> None:
    delivery, answer, error = outcome.delivery, outcome.answer, outcome.error
    if not outcome.tried:
        # Not an attempt: its try is given back, and it waits as long as a first retry would (its
        # endpoint gave no answer), or not at all (the database went away before it was sent).
        if row.status == "pending" and row.attempts == delivery.attempts:
            row.attempts -= 1
            row.next_attempt_at = now if outcome.cut_off is not None else now + _backoff(1, config)
            result.retrying += 1
        return
    delivered = answer is not None and 200 <= answer.status < 300
    if answer is not None and not delivered:
        error = _describe_answer(answer)
    session.add(WebhookAttempt(
        endpoint_id=delivery.endpoint_id, outbox_message_id=row.id, event_id=delivery.event_id,
        event_type=outcome.signed.event_type if outcome.signed is not None else None, attempted_at=now,
        status_code=answer.status if answer is not None else None, duration_ms=outcome.duration_ms,
        response_start=answer.body_start[:RESPONSE_START] if answer is not None else None,
        error=error[:RESPONSE_START] if error else None))
    if row.status != "pending" or row.attempts != delivery.attempts:
        # Sent again by "send again", or claimed again after the lease ran out: its state is theirs now.
        return
    retry_for = timedelta(seconds=config["NEWSLETTER_WEBHOOK_RETRY_FOR"])
    deadline = delivery.created_at + retry_for
    if delivered:
        row.status, row.sent_at, row.last_error = "sent", now, None
        result.sent += 1
        return
    log.info("webhook delivery %s to endpoint %s: %s", delivery.row_id, delivery.endpoint_id, error)
    if outcome.permanent:
        row.status, row.next_attempt_at, row.last_error = "failed", now, error
        result.failed += 1
    elif now >= deadline:
        # The row keeps waiting (first in its reader's order): turning the endpoint on sends it first,
        # with a fresh retry period (webhooks.update_endpoint).
        row.next_attempt_at, row.last_error = now, error
        result.retrying += 1
        # Locked only here: every worker delivering to the endpoint reads it, none waits on it otherwise.
        endpoint = session.get(WebhookEndpoint, delivery.endpoint_id, with_for_update=True, populate_existing=True)
        if endpoint is not None and endpoint.active:
            endpoint.active, endpoint.disabled_at = False, now
            endpoint.disabled_reason = (
                f"A delivery kept failing for {span(retry_for)} ({row.attempts} tries; the last: "
                f"{error}). Fix the receiver, then turn the endpoint on: its waiting deliveries are sent then.")
            result.switched_off += 1
            log.warning("webhook endpoint %s switched off: delivery %s failed for %s (%s)", endpoint.id, row.id,
                        span(retry_for), error)
    else:
        # The last try falls on the deadline, not a long backoff after it.
        row.next_attempt_at = min(now + _backoff(row.attempts, config), max(deadline, now))
        row.last_error = error
        result.retrying += 1


def span(duration: timedelta) -> str:
    """A duration in words for people: 3 days, 12 h, 90 s."""
    seconds = int(duration.total_seconds())
    if seconds >= 86400 and seconds % 86400 == 0:
        return f"{seconds // 86400} day{'s' if seconds != 86400 else ''}"
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    return f"{seconds} s"


PRUNE_BATCH = 500
PRUNE_EVERY = timedelta(minutes=10)


def prune(session: Session, config: dict[str, Any], stop: threading.Event | None = None,
          batch: int = PRUNE_BATCH) -> int:
    """Delete delivery-log rows and sent webhook deliveries older than NEWSLETTER_WEBHOOK_LOG_DAYS; how many.

    `batch` rows per transaction, so no long lock is held and other work goes on between them.
    """
    cutoff = utcnow() - timedelta(days=config["NEWSLETTER_WEBHOOK_LOG_DAYS"])
    old_attempts = (select(WebhookAttempt.id).where(WebhookAttempt.attempted_at < cutoff)
                    .order_by(WebhookAttempt.id).limit(batch))
    old_sent = (select(OutboxMessage.id).where(OutboxMessage.kind == WEBHOOK_KIND, OutboxMessage.status == "sent",
                                               OutboxMessage.sent_at < cutoff)
                .order_by(OutboxMessage.id).limit(batch))
    deleted = 0
    for table, old in ((WebhookAttempt, old_attempts), (OutboxMessage, old_sent)):
        while not (stop is not None and stop.is_set()):
            ids = list(session.scalars(old))
            if ids:
                session.execute(delete(table).where(table.id.in_(ids)).execution_options(synchronize_session=False))
            session.commit()
            deleted += len(ids)
            if len(ids) < batch:
                break
    return deleted


def run(sender: WebhookSender, stop: threading.Event, *, poll_seconds: float, max_pause: float = 30.0) -> None:
    """Dispatch and deliver webhooks until `stop` is set, living through database outages. Needs an app context."""
    from .extensions import db

    backoff = Backoff(most=max_pause)
    trouble = False
    pruned_at: datetime | None = None
    while not stop.is_set():
        problem = None
        result = DeliveryResult()
        try:
            result = sender.drain(db.session, stop=stop)
            if pruned_at is None or utcnow() - pruned_at >= PRUNE_EVERY:
                prune(db.session, sender.config, stop)
                pruned_at = utcnow()
        except SQLAlchemyError as error:
            if outages.schema_missing(error):
                problem = ("the database has no webhook tables yet; run `newsletter db upgrade` "
                           f"({describe_error(error)})")
            else:
                problem = f"the database is unavailable ({describe_error(error)})"
        except Exception as error:  # a bug: the traceback once, then one line per try
            if not trouble:
                log.exception("the webhook sender hit an unexpected error")
            problem = f"an unexpected error ({describe_error(error)})"
        finally:
            with contextlib.suppress(SQLAlchemyError):
                db.session.rollback()
            db.session.remove()
        if problem:
            trouble = True
            pause = backoff.next()
            log.warning("webhooks: %s; trying again in %g s", problem, pause)
            stop.wait(pause)
            continue
        if trouble:
            log.warning("webhooks: delivering again")
            trouble = False
        backoff.reset()
        if not result.sent:
            stop.wait(poll_seconds)


def start_in_worker(app: Flask, stop: threading.Event, *, poll_seconds: float = 1.0,
                    max_pause: float = 30.0) -> threading.Thread:
    """The webhook sender in a thread of its own beside the email sender (the worker; the embedded default)."""

    def loop() -> None:
        with app.app_context():
            sender = WebhookSender(app.config)
            try:
                run(sender, stop, poll_seconds=poll_seconds, max_pause=max_pause)
            finally:
                sender.close()

    thread = threading.Thread(target=loop, name="webhook-sender", daemon=True)
    thread.start()
    return thread


class InProcessWebhookSender:
    """The webhook sender in a thread of the web process (the embedded default, `newsletter serve`)."""

    def __init__(self, app: Flask, poll_seconds: float = 1.0, max_pause: float = 30.0) -> None:
        self.app = app
        self.poll_seconds = poll_seconds
        self.max_pause = max_pause
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> InProcessWebhookSender:
        self._thread = start_in_worker(self.app, self._stop, poll_seconds=self.poll_seconds, max_pause=self.max_pause)
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=15)

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def attach(app: Flask, sender: InProcessWebhookSender) -> None:
    app.extensions["newsletter.webhook_sender"] = sender
