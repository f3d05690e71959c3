"""Admin accounts: creating them, checking passwords with a slow hash, locking out guessers."""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from functools import cache

from sqlalchemy import func, select
from sqlalchemy.orm import Session
from werkzeug.security import check_password_hash, generate_password_hash

from . import addresses
from .models import ROLES, AdminUser, utcnow

MAX_FAILURES = 5
LOCKOUT = timedelta(minutes=15)
MIN_PASSWORD_LENGTH = 12


@cache
def _dummy_hash() -> str:
    # Checked against when the email is unknown, so a wrong email costs as long as a wrong password.
    # Made on first use: scrypt takes 32 MiB, which web processes that never see a login shouldn't pay.
    return generate_password_hash(secrets.token_urlsafe(16))


class AccountError(ValueError):
    """An account can't be created or changed as asked; the message says why."""


class LoginRefused(Exception):
    """Wrong email or password, or the account is locked; `locked_until` says till when, if locked."""

    def __init__(self, locked_until: datetime | None = None) -> None:
        super().__init__(locked_until)
        self.locked_until = locked_until


def create_admin(session: Session, email: str, password: str, role: str = "admin") -> AdminUser:
    """A new admin account; AccountError for a bad address, a short password, an unknown role or a duplicate."""
    try:
        address = addresses.normalize(email)
    except addresses.InvalidAddress as error:
        raise AccountError(str(error)) from None
    if role not in ROLES:
        raise AccountError(f"The role must be one of {', '.join(ROLES)}.")
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"The password must be at least {MIN_PASSWORD_LENGTH} characters long.")
    if session.scalar(select(AdminUser.id).where(func.lower(AdminUser.email) == address.lower())) is not None:
        raise AccountError(f"There is already an admin account for {address}.")
    admin = AdminUser(email=address, password_hash=generate_password_hash(password), role=role,
                      session_nonce=secrets.token_urlsafe(16))
    session.add(admin)
    session.flush()
    return admin


def authenticate(session: Session, email: str, password: str) -> AdminUser:
    """The admin whose email and password these are, with a fresh session nonce; else LoginRefused.

    After MAX_FAILURES wrong passwords in a row the account is locked for LOCKOUT, right password or not.
    """
    now = utcnow()
    admin = session.scalars(
        select(AdminUser).where(func.lower(AdminUser.email) == email.strip().lower()).with_for_update()
    ).first()
    if admin is None:
        check_password_hash(_dummy_hash(), password)
        raise LoginRefused()
    if admin.locked_until is not None and admin.locked_until > now:
        raise LoginRefused(admin.locked_until)
    if not check_password_hash(admin.password_hash, password):
        admin.failed_logins += 1
        if admin.failed_logins >= MAX_FAILURES:
            admin.locked_until, admin.failed_logins = now + LOCKOUT, 0
        raise LoginRefused(admin.locked_until if admin.locked_until and admin.locked_until > now else None)
    admin.failed_logins, admin.locked_until, admin.last_login_at = 0, None, now
    admin.session_nonce = secrets.token_urlsafe(16)
    return admin


def load_from_session(session: Session, user_id: str) -> AdminUser | None:
    """The admin of a session cookie's `id:nonce`, if the nonce is still the current one."""
    admin_id, _, nonce = user_id.partition(":")
    if not admin_id.isdigit():
        return None
    admin = session.get(AdminUser, int(admin_id))
    return admin if admin is not None and secrets.compare_digest(admin.session_nonce, nonce) else None


def set_password(admin: AdminUser, password: str) -> None:
    """Change the password; every existing session of this admin ends."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"The password must be at least {MIN_PASSWORD_LENGTH} characters long.")
    admin.password_hash = generate_password_hash(password)
    admin.session_nonce = secrets.token_urlsafe(16)
