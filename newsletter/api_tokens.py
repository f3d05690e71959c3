"""API tokens: made once and shown once, stored as SHA-256 hashes, revocable, last use recorded."""

from __future__ import annotations

import hashlib
import secrets
import unicodedata

from sqlalchemy import select
from sqlalchemy.orm import Session

from .models import MAX_ID, ROLES, ApiToken, utcnow

PREFIX = "nlt_"


def _digest(token: str) -> str:
    # The token is 256 random bits: a fast hash is enough, there is nothing to brute-force.
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(session: Session, name: str, role: str = "admin", created_by_id: int | None = None
                 ) -> tuple[ApiToken, str]:
    """(the stored token, its secret text): the text is never stored and can't be shown again."""
    if not name.strip():
        raise ValueError("A token needs a name saying who uses it.")
    # Shown in lists and in the consent history: one line, and text a database can store (no NUL, no lone surrogate).
    if any(unicodedata.category(char) in ("Cc", "Cs") for char in name):
        raise ValueError("The name must be one line of text, without control characters.")
    if role not in ROLES:
        raise ValueError(f"The role must be one of {', '.join(ROLES)}.")
    secret = PREFIX + secrets.token_urlsafe(32)
    token = ApiToken(name=name.strip()[:200], prefix=secret[:12], token_hash=_digest(secret), role=role,
                     created_by_id=created_by_id)
    session.add(token)
    session.flush()
    return token, secret


def find_active(session: Session, secret: str) -> ApiToken | None:
    """The unrevoked token with this secret text, its last use set to now; None otherwise."""
    token = session.scalars(select(ApiToken).where(ApiToken.token_hash == _digest(secret))).first()
    if token is None or token.revoked_at is not None:
        return None
    token.last_used_at = utcnow()
    return token


def revoke(session: Session, token_id: int) -> ApiToken | None:
    """Revoke a token (idempotent); None if there is no such token."""
    token = session.get(ApiToken, token_id) if 0 < token_id <= MAX_ID else None
    if token is not None and token.revoked_at is None:
        token.revoked_at = utcnow()
    return token
