"""Settings read once from NEWSLETTER_* environment variables, with defaults and validation."""

from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from limits import parse_many

DAY = 24 * 60 * 60


class ConfigError(Exception):
    """A setting is missing or malformed; the message says which and how to fix it."""


def _duration(name: str, raw: str | None, default: int) -> int:
    """Seconds from '600', '10m', '12h' or '7d'."""
    if raw is None or raw.strip() == "":
        return default
    match = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", raw)
    if not match:
        raise ConfigError(f"{name}={raw!r} is not a duration: use seconds or a number ending in s, m, h or d")
    number, unit = int(match[1]), match[2] or "s"
    return number * {"s": 1, "m": 60, "h": 3600, "d": DAY}[unit]


def _integer(name: str, raw: str | None, default: int) -> int:
    if raw is None or raw.strip() == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a whole number") from None


def _positive(name: str, value: int) -> int:
    if value < 1:
        raise ConfigError(f"{name}={value} must be at least 1")
    return value


def _flag(name: str, raw: str | None, default: bool) -> bool:
    if raw is None or raw.strip() == "":
        return default
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off"}:
        return False
    raise ConfigError(f"{name}={raw!r} is not on/off (use 1/0, true/false, yes/no or on/off)")


def _secret_key(instance_path: Path, raw: str | None, production: bool) -> str:
    if raw:
        return raw
    if production:
        raise ConfigError(
            "NEWSLETTER_SECRET_KEY is not set. In production every signed link depends on it: "
            "set it to a long random value, e.g. from `python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
        )
    # A development key generated once and kept, so links survive a restart.
    key_file = instance_path / "secret_key"
    if key_file.exists():
        return key_file.read_text().strip()
    instance_path.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(48)
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return key


def _database_url(raw: str | None, instance_path: Path) -> str:
    if not raw:
        return f"sqlite:///{instance_path / 'newsletter.sqlite3'}"
    if raw.startswith("postgres://") or raw.startswith("postgresql://"):
        # Heroku-style URLs: SQLAlchemy needs the driver named to pick psycopg 3.
        return "postgresql+psycopg://" + raw.split("://", 1)[1]
    return raw


def _public_url(raw: str | None) -> str:
    url = (raw or "http://127.0.0.1:5000").rstrip("/")
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.netloc:
        raise ConfigError(f"NEWSLETTER_PUBLIC_URL={raw!r} must be an absolute http(s) URL such as https://news.example.org")
    return url


def _smtp_url(raw: str | None) -> str | None:
    if not raw:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in {"smtp", "smtps"} or not parts.hostname:
        raise ConfigError(f"NEWSLETTER_SMTP_URL must look like smtp://user:pass@host:587?tls=starttls or smtps://host:465, not {raw!r}")
    return raw


def _envelope_address(name: str, raw: str | None) -> str | None:
    if raw is None or raw.strip() == "":
        return None
    if not re.fullmatch(r"[^@\s<>\"]+@[^@\s<>\"]+", raw.strip()):
        raise ConfigError(f"{name}={raw!r} is not a bare email address (e.g. bounces@news.example.com)")
    return raw.strip()


def _origins(raw: str | None) -> list[str]:
    origins = []
    for item in (raw or "").split(","):
        item = item.strip().rstrip("/").lower()
        if not item:
            continue
        parts = urlsplit(item)
        if parts.scheme not in {"http", "https"} or not parts.netloc or parts.path or parts.query:
            raise ConfigError(f"NEWSLETTER_ALLOWED_ORIGINS: {item!r} is not an origin such as https://example-news.org")
        origins.append(f"{parts.scheme}://{parts.netloc}")
    return origins


def _rate(name: str, raw: str | None, default: str) -> str:
    value = (raw or default).strip()
    try:
        parse_many(value)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a rate such as '10/minute;100/hour'") from None
    return value


def _networks(name: str, raw: str | None) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    networks = []
    for item in (raw or "").split(","):
        if item.strip():
            try:
                networks.append(ipaddress.ip_network(item.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"{name}: {item.strip()!r} is not a network such as 192.0.2.0/24 or 2001:db8::/48") from None
    return networks


def _redis_options(url: str | None) -> dict[str, object]:
    if not url:
        return {}
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    # Short timeouts and one quick retry: with Redis gone a signup must not wait seconds for it
    # (redis-py's default retries back off for up to ten) before the limits fall back to memory.
    return {"socket_connect_timeout": 1, "socket_timeout": 1, "retry": Retry(NoBackoff(), 1)}



_TOPIC_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]{1,256}")


def _topic_arns(raw: str | None) -> list[str] | None:
    """NEWSLETTER_SES_TOPIC_ARNS: the SNS topics whose notifications are taken; None when SES is off, ["*"] for any."""
    if raw is None or not raw.strip():
        return None
    arns = [item.strip() for item in raw.split(",") if item.strip()]
    if arns == ["*"]:
        return arns
    for arn in arns:
        if not _TOPIC_ARN.fullmatch(arn):
            raise ConfigError(f"NEWSLETTER_SES_TOPIC_ARNS: {arn!r} is not an SNS topic ARN such as "
                              "arn:aws:sns:eu-west-1:123456789012:ses-bounces (or use * for any topic)")
    return arns


def _basic_auth(raw: str | None) -> str | None:
    """NEWSLETTER_POSTMARK_WEBHOOK_AUTH: "user:password", as put in the webhook URL's https://user:password@host/."""
    if raw is None or not raw.strip():
        return None
    user, colon, password = raw.strip().partition(":")
    if not colon or not user or not password:
        raise ConfigError("NEWSLETTER_POSTMARK_WEBHOOK_AUTH must be user:password, both parts non-empty "
                          "(the credentials you put in the webhook URL at Postmark)")
    return raw.strip()


def _ec_public_key(raw: str | None) -> str | None:
    """NEWSLETTER_SENDGRID_WEBHOOK_PUBLIC_KEY: SendGrid's verification key, base64 DER as its settings page shows it."""
    if raw is None or not raw.strip():
        return None
    import base64
    import binascii

    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_der_public_key

    text = "".join(raw.replace("-----BEGIN PUBLIC KEY-----", "").replace("-----END PUBLIC KEY-----", "").split())
    try:
        key = load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error, TypeError):
        key = None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigError("NEWSLETTER_SENDGRID_WEBHOOK_PUBLIC_KEY is not an elliptic-curve public key: paste the "
                          "Verification Key shown under Settings > Mail Settings > Event Webhook > Signed Event Webhook")
    return text


def _oldest_key(secret_key: str, fallbacks: list[str]) -> str:
    """The suppression key when NEWSLETTER_SUPPRESSION_KEY is unset: the secret key the list was built with.

    That is the oldest secret key in use. With no fallback it is SECRET_KEY; with one, the fallback
    (rotating moved it there). With several, which is oldest rests on the order they were written
    in: tokens.py reads them newest first, but only to choose the signing key, which is always
    SECRET_KEY, so a list written the other way round works for links and would silently switch the
    suppression list off. So several fallbacks need the key said outright.
    """
    if len(fallbacks) > 1:
        raise ConfigError(
            "NEWSLETTER_SUPPRESSION_KEY is not set and NEWSLETTER_SECRET_KEY_FALLBACKS holds several keys, so it "
            "is not certain which secret key the suppression list was built with. Set NEWSLETTER_SUPPRESSION_KEY "
            "to that key: the oldest secret key this service has used since the list started (usually the last "
            "of the fallbacks). A wrong key makes bounced, complained and erased addresses unknown to the list.")
    return fallbacks[0] if fallbacks else secret_key


def load(instance_path: Path, environ: Mapping[str, str] | None = None) -> dict[str, object]:
    """Flask config keys built from the NEWSLETTER_* variables in `environ` (default: os.environ)."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        return env.get(f"NEWSLETTER_{name}")

    production = (get("ENV") or "development").strip().lower() == "production"
    secret_key = _secret_key(instance_path, get("SECRET_KEY"), production)
    if production and not get("PUBLIC_URL"):
        raise ConfigError("NEWSLETTER_PUBLIC_URL is not set. In production every email's links start with it: "
                          "set it to the service's public address, e.g. https://newsletters.example-news.org")
    public_url = _public_url(get("PUBLIC_URL"))
    # The iframe form keeps its CSRF token in the session: over https the cookie must be allowed in
    # third-party frames (SameSite=None) and is partitioned per embedding site (CHIPS).
    cross_site_cookie = public_url.startswith("https://")
    fallbacks = [key.strip() for key in (get("SECRET_KEY_FALLBACKS") or "").split(",") if key.strip()]
    return {
        "NEWSLETTER_PRODUCTION": production,
        "SQLALCHEMY_DATABASE_URI": _database_url(get("DATABASE_URL"), instance_path),
        "SECRET_KEY": secret_key,
        "SECRET_KEY_FALLBACKS": fallbacks,
        "NEWSLETTER_PUBLIC_URL": public_url,
        "NEWSLETTER_SMTP_URL": _smtp_url(get("SMTP_URL")),
        "NEWSLETTER_SMTP_TIMEOUT": _duration("NEWSLETTER_SMTP_TIMEOUT", get("SMTP_TIMEOUT"), 30),
        "NEWSLETTER_MAIL_DIR": get("MAIL_DIR") or str(instance_path / "mail"),
        "NEWSLETTER_MAIL_FROM": get("MAIL_FROM") or "Newsletters <newsletters@localhost>",
        "NEWSLETTER_UNSUBSCRIBE_MAILTO": get("UNSUBSCRIBE_MAILTO"),
        # The envelope sender (MAIL FROM, Return-Path): where receiving servers send bounces. Unset, the From address.
        "NEWSLETTER_BOUNCE_ADDRESS": _envelope_address("NEWSLETTER_BOUNCE_ADDRESS", get("BOUNCE_ADDRESS")),
        "NEWSLETTER_CONFIRM_MAX_AGE": _duration("NEWSLETTER_CONFIRM_MAX_AGE", get("CONFIRM_MAX_AGE"), 7 * DAY),
        "NEWSLETTER_CONFIRM_RESEND_INTERVAL": _duration(
            "NEWSLETTER_CONFIRM_RESEND_INTERVAL", get("CONFIRM_RESEND_INTERVAL"), 5 * 60
        ),
        "NEWSLETTER_PREFERENCES_MAX_AGE": _duration(
            "NEWSLETTER_PREFERENCES_MAX_AGE", get("PREFERENCES_MAX_AGE"), 30 * DAY
        ),
        "NEWSLETTER_CHECK_DELIVERABILITY": _flag("NEWSLETTER_CHECK_DELIVERABILITY", get("CHECK_DELIVERABILITY"), False),
        "NEWSLETTER_DNS_TIMEOUT": _duration("NEWSLETTER_DNS_TIMEOUT", get("DNS_TIMEOUT"), 3),
        "MAX_CONTENT_LENGTH": _integer("NEWSLETTER_MAX_BODY_BYTES", get("MAX_BODY_BYTES"), 64 * 1024),
        "NEWSLETTER_MAX_NEWSLETTERS_PER_SIGNUP": 50,
        "NEWSLETTER_PROXY_COUNT": _integer("NEWSLETTER_PROXY_COUNT", get("PROXY_COUNT"), 0),
        "NEWSLETTER_RECORD_IP": _flag("NEWSLETTER_RECORD_IP", get("RECORD_IP"), True),
        "NEWSLETTER_OUTBOX_MAX_ATTEMPTS": _integer("NEWSLETTER_OUTBOX_MAX_ATTEMPTS", get("OUTBOX_MAX_ATTEMPTS"), 8),
        "NEWSLETTER_OUTBOX_RETRY_BASE": _duration("NEWSLETTER_OUTBOX_RETRY_BASE", get("OUTBOX_RETRY_BASE"), 30),
        "NEWSLETTER_OUTBOX_IN_PROCESS": _flag("NEWSLETTER_OUTBOX_IN_PROCESS", get("OUTBOX_IN_PROCESS"), False),
        "NEWSLETTER_ALLOWED_ORIGINS": _origins(get("ALLOWED_ORIGINS")),
        "NEWSLETTER_MIN_FILL_SECONDS": _integer("NEWSLETTER_MIN_FILL_SECONDS", get("MIN_FILL_SECONDS"), 2),
        "NEWSLETTER_FORM_MAX_AGE": _duration("NEWSLETTER_FORM_MAX_AGE", get("FORM_MAX_AGE"), DAY),
        "NEWSLETTER_PENDING_RETENTION_DAYS": _positive(
            "NEWSLETTER_PENDING_RETENTION_DAYS", _integer("NEWSLETTER_PENDING_RETENTION_DAYS",
                                                          get("PENDING_RETENTION_DAYS"), 30)),
        "NEWSLETTER_RATE_LIMIT_IP": _rate("NEWSLETTER_RATE_LIMIT_IP", get("RATE_LIMIT_IP"), "20/minute;200/hour"),
        "NEWSLETTER_RATE_LIMIT_EMAIL": _rate("NEWSLETTER_RATE_LIMIT_EMAIL", get("RATE_LIMIT_EMAIL"), "10/10minutes;20/day"),
        "NEWSLETTER_LOGIN_LIMIT_IP": _rate("NEWSLETTER_LOGIN_LIMIT_IP", get("LOGIN_LIMIT_IP"), "10/minute;50/hour"),
        "NEWSLETTER_LOGIN_LIMIT_ACCOUNT": _rate("NEWSLETTER_LOGIN_LIMIT_ACCOUNT", get("LOGIN_LIMIT_ACCOUNT"),
                                                "5/10minutes;50/day"),
        "NEWSLETTER_LOGIN_TRUSTED_NETWORKS": _networks("NEWSLETTER_LOGIN_TRUSTED_NETWORKS",
                                                       get("LOGIN_TRUSTED_NETWORKS")),
        "NEWSLETTER_ADMIN_IDLE_TIMEOUT": _positive("NEWSLETTER_ADMIN_IDLE_TIMEOUT", _duration(
            "NEWSLETTER_ADMIN_IDLE_TIMEOUT", get("ADMIN_IDLE_TIMEOUT"), 30 * 60)),
        "NEWSLETTER_ADMIN_SESSION_MAX_AGE": _positive("NEWSLETTER_ADMIN_SESSION_MAX_AGE", _duration(
            "NEWSLETTER_ADMIN_SESSION_MAX_AGE", get("ADMIN_SESSION_MAX_AGE"), 12 * 3600)),
        "RATELIMIT_STORAGE_URI": get("REDIS_URL") or "memory://",
        "RATELIMIT_STORAGE_OPTIONS": _redis_options(get("REDIS_URL")),
        # Redis down: count in this process's memory (logged once), and go back to Redis when it answers.
        "RATELIMIT_IN_MEMORY_FALLBACK_ENABLED": True,
        "RATELIMIT_SWALLOW_ERRORS": True,
        "RATELIMIT_ENABLED": _flag("NEWSLETTER_RATE_LIMITS", get("RATE_LIMITS"), True),
        # Off: a per-address "remaining" count would tell anyone how often an address was signed up.
        "RATELIMIT_HEADERS_ENABLED": False,
        # The secret of the suppression list's address keys; kept apart so that SECRET_KEY can rotate.
        "NEWSLETTER_SUPPRESSION_KEY": get("SUPPRESSION_KEY") or _oldest_key(secret_key, fallbacks),
        "NEWSLETTER_SOFT_BOUNCE_LIMIT": _positive("NEWSLETTER_SOFT_BOUNCE_LIMIT", _integer(
            "NEWSLETTER_SOFT_BOUNCE_LIMIT", get("SOFT_BOUNCE_LIMIT"), 3)),
        "NEWSLETTER_SOFT_BOUNCE_WINDOW": _positive("NEWSLETTER_SOFT_BOUNCE_WINDOW", _duration(
            "NEWSLETTER_SOFT_BOUNCE_WINDOW", get("SOFT_BOUNCE_WINDOW"), 15 * DAY)),
        # Bounces and complaints from the sending platform (POST /api/v1/events/<provider>); each is off
        # (404) until its secret is set.
        "NEWSLETTER_SES_TOPIC_ARNS": _topic_arns(get("SES_TOPIC_ARNS")),
        "NEWSLETTER_POSTMARK_WEBHOOK_AUTH": _basic_auth(get("POSTMARK_WEBHOOK_AUTH")),
        "NEWSLETTER_SENDGRID_WEBHOOK_PUBLIC_KEY": _ec_public_key(get("SENDGRID_WEBHOOK_PUBLIC_KEY")),
        "NEWSLETTER_MAILGUN_SIGNING_KEY": (get("MAILGUN_SIGNING_KEY") or "").strip() or None,
        # A signed event older than this (SendGrid, Mailgun) is refused as a replay.
        "NEWSLETTER_WEBHOOK_MAX_AGE": _positive("NEWSLETTER_WEBHOOK_MAX_AGE", _duration(
            "NEWSLETTER_WEBHOOK_MAX_AGE", get("WEBHOOK_MAX_AGE"), 10 * 60)),
        # Providers batch events: their bodies may be larger than a signup's.
        "NEWSLETTER_EVENTS_MAX_BODY_BYTES": _positive("NEWSLETTER_EVENTS_MAX_BODY_BYTES", _integer(
            "NEWSLETTER_EVENTS_MAX_BODY_BYTES", get("EVENTS_MAX_BODY_BYTES"), 1024 * 1024)),
        # Fetching Amazon SNS's signing certificate and confirming a subscription.
        "NEWSLETTER_SNS_TIMEOUT": _positive("NEWSLETTER_SNS_TIMEOUT", _duration(
            "NEWSLETTER_SNS_TIMEOUT", get("SNS_TIMEOUT"), 5)),
        # Uploaded import files wait here until their run ends.
        "NEWSLETTER_IMPORT_DIR": get("IMPORT_DIR") or str(instance_path / "imports"),
        # An upload whose run is not imported within this long is deleted (it holds addresses).
        "NEWSLETTER_IMPORT_KEEP_UPLOADS": _positive("NEWSLETTER_IMPORT_KEEP_UPLOADS", _duration(
            "NEWSLETTER_IMPORT_KEEP_UPLOADS", get("IMPORT_KEEP_UPLOADS"), 7 * DAY)),
        # The admin's import upload, the one route whose body may pass MAX_CONTENT_LENGTH (admins only).
        "NEWSLETTER_IMPORT_MAX_BYTES": _positive("NEWSLETTER_IMPORT_MAX_BYTES", _integer(
            "NEWSLETTER_IMPORT_MAX_BYTES", get("IMPORT_MAX_BYTES"), 200 * 1024 * 1024)),
        # Imports queued on the admin page run in a thread of the web process (besides any worker).
        "NEWSLETTER_IMPORTS_IN_PROCESS": _flag("NEWSLETTER_IMPORTS_IN_PROCESS", get("IMPORTS_IN_PROCESS"), True),
        # A running import whose heartbeat (one per batch) is older than this is taken up by another process.
        "NEWSLETTER_IMPORT_STALE_AFTER": _positive("NEWSLETTER_IMPORT_STALE_AFTER", _duration(
            "NEWSLETTER_IMPORT_STALE_AFTER", get("IMPORT_STALE_AFTER"), 120)),
        # Confirmation emails to imported readers without proof of consent, at most this many per hour.
        "NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR": _positive("NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR", _integer(
            "NEWSLETTER_IMPORT_CONFIRMATIONS_PER_HOUR", get("IMPORT_CONFIRMATIONS_PER_HOUR"), 500)),
        # Outgoing webhooks (webhook_sender.py): private, loopback and link-local addresses are refused
        # unless this is on (a receiver on the same host or network); each request's connect and read limit;
        # how long a delivery is retried (from when it was queued) before it fails and its endpoint is
        # switched off; the first retry's delay (doubling up to NEWSLETTER_WEBHOOK_RETRY_MAX); how long a
        # rotated-out secret keeps signing beside the new one.
        "NEWSLETTER_WEBHOOK_ALLOW_PRIVATE": _flag("NEWSLETTER_WEBHOOK_ALLOW_PRIVATE", get("WEBHOOK_ALLOW_PRIVATE"),
                                                  False),
        "NEWSLETTER_WEBHOOK_TIMEOUT": _positive("NEWSLETTER_WEBHOOK_TIMEOUT", _duration(
            "NEWSLETTER_WEBHOOK_TIMEOUT", get("WEBHOOK_TIMEOUT"), 10)),
        "NEWSLETTER_WEBHOOK_RETRY_FOR": _positive("NEWSLETTER_WEBHOOK_RETRY_FOR", _duration(
            "NEWSLETTER_WEBHOOK_RETRY_FOR", get("WEBHOOK_RETRY_FOR"), 3 * DAY)),
        "NEWSLETTER_WEBHOOK_RETRY_BASE": _duration("NEWSLETTER_WEBHOOK_RETRY_BASE", get("WEBHOOK_RETRY_BASE"), 30),
        "NEWSLETTER_WEBHOOK_RETRY_MAX": _positive("NEWSLETTER_WEBHOOK_RETRY_MAX", _duration(
            "NEWSLETTER_WEBHOOK_RETRY_MAX", get("WEBHOOK_RETRY_MAX"), 6 * 3600)),
        "NEWSLETTER_WEBHOOK_SECRET_OVERLAP": _duration("NEWSLETTER_WEBHOOK_SECRET_OVERLAP",
                                                       get("WEBHOOK_SECRET_OVERLAP"), DAY),
        # How many endpoints are sent to at once (one thread each; a reader's deliveries stay in order).
        "NEWSLETTER_WEBHOOK_CONCURRENCY": _positive("NEWSLETTER_WEBHOOK_CONCURRENCY", _integer(
            "NEWSLETTER_WEBHOOK_CONCURRENCY", get("WEBHOOK_CONCURRENCY"), 4)),
        # Sent webhook deliveries and the delivery log are deleted after this many days.
        "NEWSLETTER_WEBHOOK_LOG_DAYS": _positive("NEWSLETTER_WEBHOOK_LOG_DAYS", _integer(
            "NEWSLETTER_WEBHOOK_LOG_DAYS", get("WEBHOOK_LOG_DAYS"), 30)),
        "NEWSLETTER_METRICS_TOKEN": get("METRICS_TOKEN") or None,
        "NEWSLETTER_METRICS_ALLOW": _networks("NEWSLETTER_METRICS_ALLOW", get("METRICS_ALLOW")),
        "SESSION_COOKIE_HTTPONLY": True,
        "SESSION_COOKIE_SAMESITE": "None" if cross_site_cookie else "Lax",
        "SESSION_COOKIE_SECURE": production or cross_site_cookie,
        "SESSION_COOKIE_PARTITIONED": cross_site_cookie,
        "WTF_CSRF_TIME_LIMIT": None,
    }
