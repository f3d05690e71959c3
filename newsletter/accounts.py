"""Admin accounts and their logins: passwords checked with a slow hash, logins kept on the server.

The slow parts (hashing, checking a hash) take no session: callers run them before a transaction
opens, because on SQLite every transaction holds the database's write lock.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from . import addresses
from .models import ROLES, AdminSession, AdminUser, utcnow

MIN_PASSWORD_LENGTH = 12
# A login's last_seen_at is written at most this often (and at most a quarter of the idle timeout):
# not one write per page.
TOUCH_EVERY = timedelta(minutes=1)
# Checked against when the address is unknown, so that a wrong address costs one hash check like a
# wrong password, the first one in a process too: a fixed scrypt hash (werkzeug's parameters) of a
# random password nobody kept. Even its password would open nothing: the candidate has no account.
STAND_IN_HASH = ("scrypt:32768:8:1$fYUHpkh2wrwkcDCK$dc43540923537d05f4922cfae0481ec00fdc15f5efad40dd4d06e996e6172f9a"
                 "682b5b36d3ad7a526a5ce8c805b89a0698a2ed14f47882853f6845776752b0e8")


class AccountError(ValueError):
    """An account can't be created or changed as asked; the message says why."""


@dataclass(frozen=True)
class LoginCandidate:
    """What a login needs from the database: the account that may log in (None: unknown or removed) and a hash."""

    admin_id: int | None
    password_hash: str | None


def login_address(text: str) -> str:
    """The form of a typed login address that lookups and the login throttle use: normalized, lower case."""
    text = text.strip()
    try:
        text = addresses.normalize(text)
    except ValueError:  # InvalidAddress, or a text no codec takes (a lone surrogate): used as typed
        pass
    return text.lower()


def hash_password(password: str) -> str:
    """The slow hash of a new password; AccountError if it is too short. Call it outside a transaction."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"The password must be at least {MIN_PASSWORD_LENGTH} characters long.")
    return generate_password_hash(password)


def _find(session: Session, email: str) -> AdminUser | None:
    address = login_address(email)
    # No stored address has a NUL or a lone surrogate, and PostgreSQL refuses to be sent one.
    if "\x00" in address or not _encodes(address):
        return None
    return session.scalars(select(AdminUser).where(func.lower(AdminUser.email) == address)).first()


def _encodes(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def get_admin(session: Session, email: str) -> AdminUser:
    """The account of this address, removed or not; AccountError if there is none."""
    admin = _find(session, email)
    if admin is None:
        raise AccountError(f"There is no admin account for {email.strip()}.")
    return admin


def list_admins(session: Session) -> list[AdminUser]:
    """Every account, removed ones too, by address."""
    return list(session.scalars(select(AdminUser).order_by(func.lower(AdminUser.email))))


def create_admin(session: Session, email: str, password: str, role: str = "admin") -> AdminUser:
    """A new admin account; AccountError for a bad address, a short password, an unknown role or a duplicate.

    The address of a removed account gets that account back, with this password and role.
    """
    try:
        address = addresses.normalize(email)
    except addresses.InvalidAddress as error:
        raise AccountError(str(error)) from None
    if role not in ROLES:
        raise AccountError(f"The role must be one of {', '.join(ROLES)}.")
    password_hash = hash_password(password)
    admin = _find(session, address)
    if admin is not None and admin.removed_at is None:
        raise AccountError(f"There is already an admin account for {address}.")
    if admin is None:
        admin = AdminUser(email=address, password_hash=password_hash, role=role)
        session.add(admin)
    else:
        admin.password_hash, admin.role, admin.removed_at = password_hash, role, None
        admin.password_changed_at = utcnow()
    session.flush()
    return admin


def _ensure_an_admin_stays(session: Session, leaving: AdminUser) -> None:
    others = session.scalar(select(func.count()).select_from(AdminUser).where(
        AdminUser.role == "admin", AdminUser.removed_at.is_(None), AdminUser.id != leaving.id))
    if leaving.role == "admin" and leaving.removed_at is None and not others:
        raise AccountError(f"{leaving.email} is the last account with the admin role; add or promote another first.")


def set_role(session: Session, email: str, role: str) -> AdminUser:
    """Give the account this role (it applies from its next page on); the last admin can't become a viewer."""
    if role not in ROLES:
        raise AccountError(f"The role must be one of {', '.join(ROLES)}.")
    admin = get_admin(session, email)
    if role != "admin":
        _ensure_an_admin_stays(session, admin)
    admin.role = role
    return admin


def remove_admin(session: Session, email: str) -> AdminUser:
    """Remove the account: its logins end and it can't log in; the export log still names it."""
    admin = get_admin(session, email)
    if admin.removed_at is None:
        _ensure_an_admin_stays(session, admin)
        admin.removed_at = utcnow()
    end_logins(session, admin.id)
    return admin


def set_password_hash(session: Session, admin_id: int, password_hash: str, *,
                      keep_login: str | None = None) -> AdminUser:
    """Store a new password (hashed with hash_password); every login of the account ends but `keep_login`."""
    admin = session.get_one(AdminUser, admin_id)
    admin.password_hash = password_hash
    admin.password_changed_at = utcnow()
    end_logins(session, admin_id, keep=keep_login)
    return admin


def find_login(session: Session, email: str) -> LoginCandidate:
    """The account a login with this address may open, and the hash to check its password against."""
    admin = _find(session, email)
    if admin is None:
        return LoginCandidate(None, None)
    return LoginCandidate(admin.id if admin.removed_at is None else None, admin.password_hash)


def device_binding(admin: AdminUser) -> str:
    """What ties a remembered browser to this account: it changes with the password, and when the
    account is removed and added back (which sets a new password)."""
    changed = admin.password_changed_at or admin.created_at
    return f"{admin.id}:{changed.isoformat()}"


def active_admin(session: Session, email: str) -> AdminUser | None:
    """The account of this address if it may log in (not removed), else None."""
    admin = _find(session, email)
    return admin if admin is not None and admin.removed_at is None else None


def password_matches(candidate: LoginCandidate, password: str) -> int | None:
    """The id of the account the password opens, else None: one hash is checked whatever the account.

    Slow (scrypt): call it outside a transaction.
    """
    matches = check_password_hash(candidate.password_hash or STAND_IN_HASH, password)
    return candidate.admin_id if matches else None


def _key_hash(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()


@dataclass(frozen=True)
class LoginLifetime:
    """How long a login lasts: `idle` without a page, `max_age` in all."""

    idle: timedelta
    max_age: timedelta

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LoginLifetime:
        return cls(idle=timedelta(seconds=config["NEWSLETTER_ADMIN_IDLE_TIMEOUT"]),
                   max_age=timedelta(seconds=config["NEWSLETTER_ADMIN_SESSION_MAX_AGE"]))


def start_login(session: Session, admin_id: int, lifetime: LoginLifetime) -> AdminUser:
    """A new login of the account: the admin, whose `login_key` the session cookie is to hold.

    Logins that ran out and were never presented again are deleted here, so the table stays small.
    """
    now = utcnow()
    session.execute(delete(AdminSession).where(
        (AdminSession.last_seen_at < now - lifetime.idle) | (AdminSession.created_at < now - lifetime.max_age)))
    admin = session.get_one(AdminUser, admin_id)
    key = secrets.token_urlsafe(32)
    session.add(AdminSession(admin_id=admin_id, key_hash=_key_hash(key), created_at=now, last_seen_at=now))
    admin.last_login_at = now
    admin.login_key = key
    return admin


def load_login(session: Session, key: str, lifetime: LoginLifetime) -> AdminUser | None:
    """The admin of a session cookie's login key, if that login is still open; an expired one ends here."""
    now = utcnow()
    row = session.execute(
        select(AdminSession, AdminUser).join(AdminSession.admin)
        .where(AdminSession.key_hash == _key_hash(key), AdminUser.removed_at.is_(None))
    ).first()
    if row is None:
        return None
    login, admin = row
    if now - login.last_seen_at > lifetime.idle or now - login.created_at > lifetime.max_age:
        session.delete(login)
        return None
    if now - login.last_seen_at > min(TOUCH_EVERY, lifetime.idle / 4):
        login.last_seen_at = now
    admin.login_key = key
    return admin


def end_login(session: Session, key: str) -> None:
    """End this login: its session cookie, and every copy of it, stops working."""
    session.execute(delete(AdminSession).where(AdminSession.key_hash == _key_hash(key)))


def end_logins(session: Session, admin_id: int, *, keep: str | None = None) -> None:
    """End every login of the account, but `keep` (a login key) if given."""
    statement = delete(AdminSession).where(AdminSession.admin_id == admin_id)
    if keep is not None:
        statement = statement.where(AdminSession.key_hash != _key_hash(keep))
    session.execute(statement)


def last_seen(session: Session, admin_id: int) -> datetime | None:
    """When the account's most recent open login last showed a page."""
    return session.scalar(select(func.max(AdminSession.last_seen_at)).where(AdminSession.admin_id == admin_id))
