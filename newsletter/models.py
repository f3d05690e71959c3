"""The domain's tables: Newsletter, Reader, Subscription, ConsentEvent, OutboxMessage, and what runs beside them."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.orm import Mapped, configure_mappers, mapped_column, relationship

from .extensions import db

M = TypeVar("M", bound=db.Model)  # type: ignore[name-defined]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in Python on every backend (SQLite keeps no time zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use an aware UTC datetime")
        value = value.astimezone(timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


def snapshot(model: type[M], values: dict[str, Any]) -> M:
    """A `model` object holding `values` as if loaded, in no session: for reading only.

    It skips what the constructor does to track changes, which costs more than the read it serves.
    """
    configure_mappers()  # what the constructor would have made sure of (a no-op once done)
    instance = model.__mapper__.class_manager.new_instance()
    instance.__dict__.update(values)
    return instance


SUBSCRIPTION_STATUSES = ("pending", "confirmed", "unsubscribed")
# The largest id an INTEGER primary key holds (PostgreSQL's int4): a larger one in a URL names nothing.
MAX_ID = 2**31 - 1
OUTBOX_STATUSES = ("pending", "sent", "failed")


class Newsletter(db.Model):
    __tablename__ = "newsletters"

    id: Mapped[int] = mapped_column(primary_key=True)
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    description: Mapped[str] = mapped_column(Text, default="")
    author: Mapped[str | None] = mapped_column(String(200))
    sender: Mapped[str | None] = mapped_column(String(320))
    send_welcome: Mapped[bool] = mapped_column(Boolean, default=True)
    welcome_text: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    archived_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (CheckConstraint("slug <> ''", name="slug_not_empty"),)

    @property
    def is_active(self) -> bool:
        return self.archived_at is None

    def __repr__(self) -> str:
        return f"<Newsletter {self.slug}>"


class Reader(db.Model):
    __tablename__ = "readers"

    id: Mapped[int] = mapped_column(primary_key=True)
    # email-validator's normalized form: the domain lowercased and IDNA-normalized.
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str | None] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    confirmation_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # An admin blocked the address: signups from it are taken silently and change nothing.
    blocked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Erased on request (GDPR): the email is replaced by a placeholder, the name and history's PII removed.
    erased_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    subscriptions: Mapped[list[Subscription]] = relationship(back_populates="reader")

    __table_args__ = (
        # Bounce reports and suppressions quote an address in any case (suppressions.record_suppressed).
        Index("ix_readers_lower_email", func.lower(email)),
    )

    def __repr__(self) -> str:
        return f"<Reader {self.id}>"


class Subscription(db.Model):
    __tablename__ = "subscriptions"

    id: Mapped[int] = mapped_column(primary_key=True)
    reader_id: Mapped[int] = mapped_column(ForeignKey("readers.id", ondelete="CASCADE"))
    newsletter_id: Mapped[int] = mapped_column(ForeignKey("newsletters.id", ondelete="RESTRICT"))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    pending_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    confirmed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    unsubscribed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # When a confirmation email last named this newsletter; before pending_since, the pending
    # subscription has not been in one yet (see subscriptions.sign_up).
    confirmation_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    reader: Mapped[Reader] = relationship(back_populates="subscriptions")
    newsletter: Mapped[Newsletter] = relationship()

    __table_args__ = (
        UniqueConstraint("reader_id", "newsletter_id", name="uq_subscriptions_reader_newsletter"),
        Index("ix_subscriptions_newsletter_status", "newsletter_id", "status"),
        CheckConstraint("status IN ('pending', 'confirmed', 'unsubscribed')", name="status_known"),
    )

    def __repr__(self) -> str:
        return f"<Subscription reader={self.reader_id} newsletter={self.newsletter_id} {self.status}>"


# The columns of a ConsentEvent that say where the change came from (Source in subscriptions.py).
CONSENT_SOURCE_COLUMNS = ("source", "page_url", "form_id", "ip_address", "user_agent", "wording")


class ConsentEvent(db.Model):
    """Append-only proof of every change to a reader's consent."""

    __tablename__ = "consent_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    reader_id: Mapped[int] = mapped_column(ForeignKey("readers.id", ondelete="CASCADE"), index=True)
    newsletter_id: Mapped[int | None] = mapped_column(ForeignKey("newsletters.id", ondelete="RESTRICT"))
    # signup_requested, confirmed, unsubscribed, confirmation_resent, blocked, unblocked, suppressed, unsuppressed, erased
    action: Mapped[str] = mapped_column(String(32))
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # hosted-form, embed-form, embed-iframe, embed-script, api, email-link, one-click, preferences …
    source: Mapped[str] = mapped_column(String(32))
    page_url: Mapped[str | None] = mapped_column(String(2048))
    # The id the embedding page gave its form, to tell apart several forms on one page.
    form_id: Mapped[str | None] = mapped_column(String(200))
    ip_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(512))
    wording: Mapped[str | None] = mapped_column(Text)
    # Its place in the changes feed, given after it commits (changes.py): commit order, not id order.
    feed_position: Mapped[int | None] = mapped_column(BigInteger)

    __table_args__ = (
        Index("ix_consent_events_action_time", "action", "occurred_at"),
        Index("ix_consent_events_feed_position", "feed_position", unique=True),
        Index("ix_consent_events_unpositioned", "id", postgresql_where=text("feed_position IS NULL"),
              sqlite_where=text("feed_position IS NULL")),
        # The export's "source" column: the first signup_requested event of a reader for a newsletter.
        Index("ix_consent_events_first_signup", "reader_id", "newsletter_id", "id",
              postgresql_include=["source"], postgresql_where=text("action = 'signup_requested'"),
              sqlite_where=text("action = 'signup_requested'")),
    )


class FeedState(db.Model):
    """The changes feed's last position ever given (one row): positions are never given twice.

    The largest feed_position alone would not do: a purge deletes never-confirmed readers with their
    events, and the last of them may hold the largest position, which a client has as its cursor.
    """

    __tablename__ = "feed_state"

    id: Mapped[int] = mapped_column(primary_key=True)
    last_position: Mapped[int] = mapped_column(BigInteger)

    __table_args__ = (CheckConstraint("id = 1", name="one_row"),)


OUTBOX_EMAIL_KINDS = ("confirmation", "import_confirmation", "welcome", "preferences_link")
WEBHOOK_KIND = "webhook"


class OutboxMessage(db.Model):
    """Something to deliver, written in the same transaction as the change that causes it.

    A row says what to deliver, not the finished thing: the kind, the reader, the newsletters and
    the language of an email; the endpoint and the consent event of a webhook. The sender renders
    it when it sends. Only rows queued before migration 0011 hold a rendered email (mail_from …
    body_html, headers); they are sent as they are.
    """

    __tablename__ = "outbox_messages"

    id: Mapped[int] = mapped_column(primary_key=True)
    # OUTBOX_EMAIL_KINDS or WEBHOOK_KIND
    kind: Mapped[str] = mapped_column(String(32))
    reader_id: Mapped[int | None] = mapped_column(ForeignKey("readers.id", ondelete="SET NULL"), index=True)
    # An email's newsletters (their ids) and language (a locale name such as "uk").
    newsletter_ids: Mapped[list[int] | None] = mapped_column(JSON)
    locale: Mapped[str | None] = mapped_column(String(35))
    # A webhook's endpoint and the consent event it tells of (no foreign key: the event may be
    # deleted with a never-confirmed reader; the delivery then says so).
    endpoint_id: Mapped[int | None] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    event_id: Mapped[int | None] = mapped_column(BigInteger)
    # An email's Message-ID, set when it is first claimed and kept for every attempt.
    message_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    mail_from: Mapped[str | None] = mapped_column(String(400))
    to_address: Mapped[str | None] = mapped_column(String(320))
    to_name: Mapped[str | None] = mapped_column(String(200))
    subject: Mapped[str | None] = mapped_column(String(400))
    body_text: Mapped[str | None] = mapped_column(Text)
    body_html: Mapped[str | None] = mapped_column(Text)
    headers: Mapped[dict[str, str] | None] = mapped_column(JSON)
    status: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("status IN ('pending', 'sent', 'failed')", name="status_known"),
        Index("ix_outbox_messages_due", "status", "next_attempt_at"),
        # A webhook delivery waits for the earlier ones of its endpoint and reader: found by this.
        Index("ix_outbox_messages_endpoint_reader", "endpoint_id", "reader_id", "id",
              postgresql_where=text("endpoint_id IS NOT NULL"), sqlite_where=text("endpoint_id IS NOT NULL")),
        # The email sender's claim (outbox.due_emails): only pending emails, never the webhook rows
        # that stay pending and due for days behind an earlier delivery or a switched-off endpoint.
        Index("ix_outbox_messages_email_due", "next_attempt_at", "id",
              postgresql_where=text("status = 'pending' AND endpoint_id IS NULL"),
              sqlite_where=text("status = 'pending' AND endpoint_id IS NULL")),
    )


class WebhookEndpoint(db.Model):
    """A URL that is sent the subscription changes it wants, signed as Standard Webhooks says."""

    __tablename__ = "webhook_endpoints"

    id: Mapped[int] = mapped_column(primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    description: Mapped[str | None] = mapped_column(String(200))
    # The event types wanted (changes.EVENT_TYPES); empty: every type.
    event_types: Mapped[list[str]] = mapped_column(JSON, default=list)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # "whsec_" + base64, as the standardwebhooks library takes it. During a rotation the previous
    # secret signs too, until previous_secret_expires_at.
    secret: Mapped[str] = mapped_column(String(100))
    previous_secret: Mapped[str | None] = mapped_column(String(100))
    previous_secret_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # The feed position up to which changes were queued for this endpoint.
    feed_position: Mapped[int] = mapped_column(BigInteger, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # Set when the service switched it off (deliveries kept failing), with why; cleared when turned on.
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    disabled_reason: Mapped[str | None] = mapped_column(Text)


class WebhookAttempt(db.Model):
    """One try at delivering a webhook: the delivery log of its endpoint."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(primary_key=True)
    endpoint_id: Mapped[int] = mapped_column(ForeignKey("webhook_endpoints.id", ondelete="CASCADE"))
    outbox_message_id: Mapped[int | None] = mapped_column(ForeignKey("outbox_messages.id", ondelete="SET NULL"),
                                                          index=True)
    event_id: Mapped[int | None] = mapped_column(BigInteger)
    event_type: Mapped[str | None] = mapped_column(String(64))
    attempted_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The answer's HTTP status; None when there was none (refused, timed out, blocked address).
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer, default=0)
    # The start of the answer's body, or what went wrong before there was one.
    response_start: Mapped[str | None] = mapped_column(Text)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_webhook_attempts_endpoint", "endpoint_id", "id"),)


ROLES = ("admin", "viewer")


class AdminUser(db.Model):
    """An editor or operator who logs in to /admin. `viewer`s read and export; `admin`s also change."""

    __tablename__ = "admin_users"

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="viewer")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_login_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    password_changed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Removed accounts stay, so that the export log and API tokens still say who; they can't log in.
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (CheckConstraint("role IN ('admin', 'viewer')", name="role_known"),)

    # Flask-Login's user protocol. `login_key` is the key of the login this request came with
    # (an AdminSession's), set when the session cookie is loaded; get_id() hands it to Flask-Login.
    is_authenticated = True
    is_active = True
    is_anonymous = False
    login_key: str = ""

    def get_id(self) -> str:
        return self.login_key

    @property
    def can_change(self) -> bool:
        return self.role == "admin"


class AdminSession(db.Model):
    """One login of an admin: the cookie holds a random key, this row its SHA-256 hash.

    Deleting the row ends the login, whoever holds a copy of the cookie.
    """

    __tablename__ = "admin_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    admin_id: Mapped[int] = mapped_column(ForeignKey("admin_users.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    admin: Mapped[AdminUser] = relationship()


class ApiToken(db.Model):
    """A bearer token for /api/v1: shown once, stored as a SHA-256 hash, revocable."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # The first characters, kept in clear so a list of tokens can tell them apart.
    prefix: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="admin")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("admin_users.id", ondelete="SET NULL"))
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)

    __table_args__ = (CheckConstraint("role IN ('admin', 'viewer')", name="role_known"),)


class ExportRecord(db.Model):
    """Every list export: who took which rows, when, through what."""

    __tablename__ = "exports"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # admin, api or cli; with the admin or token that asked.
    channel: Mapped[str] = mapped_column(String(16))
    admin_id: Mapped[int | None] = mapped_column(ForeignKey("admin_users.id", ondelete="SET NULL"))
    token_id: Mapped[int | None] = mapped_column(ForeignKey("api_tokens.id", ondelete="SET NULL"))
    newsletter_id: Mapped[int | None] = mapped_column(ForeignKey("newsletters.id", ondelete="SET NULL"))
    format: Mapped[str] = mapped_column(String(8))
    filters: Mapped[dict[str, str]] = mapped_column(JSON, default=dict)
    row_count: Mapped[int | None] = mapped_column(Integer)


# Why an address is on the suppression list. `erased` entries only stop imports and syncs from
# bringing an erased reader back; the others also stop every email of ours.
SUPPRESSION_REASONS = ("hard_bounce", "complaint", "soft_bounces", "blocked", "manual", "import", "erased")
# Where a delivery event came from: our own relay, a provider's webhook, or the bounce mailbox.
DELIVERY_EVENT_KINDS = ("hard_bounce", "soft_bounce", "complaint")


class Suppression(db.Model):
    """An address we must not mail (or, for `erased`, not bring back), with why and when.

    Looked up by `address_key`, a keyed hash of the lowercased address (see suppressions.address_key):
    an erased reader's entry keeps only that, no address.
    """

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(primary_key=True)
    address_key: Mapped[str] = mapped_column(String(64))
    # The address as reported; None once its reader was erased.
    email: Mapped[str | None] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(32))
    # smtp, ses, postmark, sendgrid, mailgun, generic, mailbox, admin, import, erasure
    source: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    created_by_id: Mapped[int | None] = mapped_column(ForeignKey("admin_users.id", ondelete="SET NULL"))
    # Lifted entries stay, as the record of who lifted them and why.
    lifted_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    lifted_by_id: Mapped[int | None] = mapped_column(ForeignKey("admin_users.id", ondelete="SET NULL"))
    lift_note: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # At most one mail-stopping entry in force per address, and apart from it at most one `erased`
        # entry: the do-not-import record of an erasure outlives any bounce or block that is lifted.
        Index("uq_suppressions_active_key", "address_key", unique=True,
              postgresql_where=text("lifted_at IS NULL AND reason <> 'erased'"),
              sqlite_where=text("lifted_at IS NULL AND reason <> 'erased'")),
        Index("uq_suppressions_active_erased_key", "address_key", unique=True,
              postgresql_where=text("lifted_at IS NULL AND reason = 'erased'"),
              sqlite_where=text("lifted_at IS NULL AND reason = 'erased'")),
        Index("ix_suppressions_created_at", "created_at"),
        CheckConstraint("reason IN ('hard_bounce', 'complaint', 'soft_bounces', 'blocked', 'manual', 'import', "
                        "'erased')", name="reason_known"),
    )


class DeliveryEvent(db.Model):
    """A bounce or complaint about an address, from our relay, a sending platform or the bounce mailbox."""

    __tablename__ = "delivery_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    address_key: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))
    provider: Mapped[str] = mapped_column(String(32))
    # When the provider says it happened; received_at is when we heard of it.
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    # The receiving server's words (e.g. "550 5.1.1 user unknown"); cleared when the reader is erased.
    diagnostic: Mapped[str | None] = mapped_column(Text)
    # The provider's own id of the event, so that a redelivered webhook is recorded once.
    provider_event_id: Mapped[str | None] = mapped_column(String(255))

    __table_args__ = (
        UniqueConstraint("provider", "provider_event_id", name="uq_delivery_events_provider_event"),
        Index("ix_delivery_events_key_kind_time", "address_key", "kind", "occurred_at"),
        Index("ix_delivery_events_received_at", "received_at"),
        CheckConstraint("kind IN ('hard_bounce', 'soft_bounce', 'complaint')", name="kind_known"),
    )



class WebhookNonce(db.Model):
    """A one-time value of a signed webhook (Mailgun's token), kept while its signature is fresh.

    Written in the transaction that records the webhook's events: a replay of the same signed
    request finds it and is refused, while a delivery that failed to commit leaves none behind,
    so the provider's retry is taken.
    """

    __tablename__ = "webhook_nonces"

    id: Mapped[int] = mapped_column(primary_key=True)
    provider: Mapped[str] = mapped_column(String(32))
    nonce: Mapped[str] = mapped_column(String(255))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("provider", "nonce", name="uq_webhook_nonces_provider_nonce"),
        Index("ix_webhook_nonces_seen_at", "seen_at"),
    )

IMPORT_STATUSES = ("uploaded", "queued", "running", "finished", "failed")
IMPORT_FORMATS = ("mailchimp", "listmonk", "csv")
UNCONFIRMED_POLICIES = ("ask", "confirmed", "skip")


class ImportRun(db.Model):
    """Every import of a list: who brought which file in, when, with what outcome."""

    __tablename__ = "imports"

    id: Mapped[int] = mapped_column(primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Set while a process works on it, so that a run whose process died can be taken up again.
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # admin or cli; with the admin who asked.
    channel: Mapped[str] = mapped_column(String(16))
    admin_id: Mapped[int | None] = mapped_column(ForeignKey("admin_users.id", ondelete="SET NULL"))
    newsletter_id: Mapped[int | None] = mapped_column(ForeignKey("newsletters.id", ondelete="SET NULL"))
    # What was uploaded: the name shown, and each file's name, size and SHA-256.
    file_name: Mapped[str] = mapped_column(String(255))
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON, default=list)
    file_sha256: Mapped[str] = mapped_column(String(64))
    file_size: Mapped[int] = mapped_column(BigInteger, default=0)
    # Where an uploaded file waits until the run ends (admin uploads); deleted then.
    stored_path: Mapped[str | None] = mapped_column(String(1024))
    format: Mapped[str | None] = mapped_column(String(16))
    unconfirmed: Mapped[str] = mapped_column(String(16), default="ask")
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), default="uploaded")
    # Rows read so far (progress), and the outcome: {"new": n, "updated": n, "unchanged": n,
    # "refused": {reason: n}, ...}.
    rows_done: Mapped[int] = mapped_column(Integer, default=0)
    rows_total: Mapped[int | None] = mapped_column(Integer)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        CheckConstraint("status IN ('uploaded', 'queued', 'running', 'finished', 'failed')", name="status_known"),
        Index("ix_imports_created_at", "created_at"),
    )


class ImportRefusal(db.Model):
    """A row an import did not take, with its place in the file and why."""

    __tablename__ = "import_refusals"

    id: Mapped[int] = mapped_column(primary_key=True)
    import_id: Mapped[int] = mapped_column(ForeignKey("imports.id", ondelete="CASCADE"))
    file: Mapped[str] = mapped_column(String(255))
    line: Mapped[int] = mapped_column(Integer)
    # The address as the file wrote it (cut to the column's size), to find the row again.
    email: Mapped[str | None] = mapped_column(String(320))
    reason: Mapped[str] = mapped_column(String(64))
    detail: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (Index("ix_import_refusals_import_line", "import_id", "id"),)
