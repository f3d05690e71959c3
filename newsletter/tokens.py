"""Signed links: one itsdangerous serializer per purpose, so a token for one never works for another."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from flask import current_app
from itsdangerous import BadSignature, SignatureExpired, TimestampSigner, URLSafeTimedSerializer

CONFIRM = "newsletter.confirm"
UNSUBSCRIBE = "newsletter.unsubscribe"
PREFERENCES = "newsletter.preferences"
FORM = "newsletter.form"
CURSOR = "newsletter.api-cursor"


class InvalidToken(Exception):
    """The link was tampered with, cut short, or made for another purpose."""


class ExpiredToken(InvalidToken):
    """The link was genuine but is too old."""


@dataclass(frozen=True)
class Signed:
    payload: dict[str, Any]
    issued_at: datetime


def _serializer(purpose: str) -> URLSafeTimedSerializer:
    config = current_app.config
    # itsdangerous signs with the last key and accepts any of them: old keys keep old links working.
    return _serializer_for((*reversed(config["SECRET_KEY_FALLBACKS"]), config["SECRET_KEY"]), purpose)


@lru_cache(maxsize=64)
def _serializer_for(keys: tuple[str | bytes, ...], purpose: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(list(keys), salt=purpose)


def sign(purpose: str, payload: dict[str, Any]) -> str:
    """A URL-safe token carrying `payload` for `purpose`, stamped with the current time."""
    return _serializer(purpose).dumps(payload)


class _SignedAtSigner(TimestampSigner):
    """A signer that stamps a given time instead of the present one."""

    def __init__(self, *args: Any, stamp: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._stamp = stamp

    def get_timestamp(self) -> int:
        return self._stamp


def sign_at(purpose: str, payload: dict[str, Any], issued_at: datetime) -> str:
    """sign(), stamped with `issued_at` instead of now: for an email that leaves later (imports' confirmations).

    The link then counts its validity from when the email is sent, and doesn't work before.
    """
    config = current_app.config
    keys = [*reversed(config["SECRET_KEY_FALLBACKS"]), config["SECRET_KEY"]]
    serializer = URLSafeTimedSerializer(keys, salt=purpose, signer=_SignedAtSigner,
                                        signer_kwargs={"stamp": int(issued_at.timestamp())})
    return serializer.dumps(payload)


def verify(purpose: str, token: str, max_age: int | None = None) -> Signed:
    """The payload of a token made for `purpose`, or InvalidToken / ExpiredToken."""
    try:
        payload, issued_at = _serializer(purpose).loads(token, max_age=max_age, return_timestamp=True)
    except SignatureExpired:
        raise ExpiredToken(purpose) from None
    except BadSignature:
        raise InvalidToken(purpose) from None
    if not isinstance(payload, dict):
        raise InvalidToken(purpose)
    return Signed(payload, issued_at)


def confirm_token(reader_id: int, newsletter_ids: list[int], issued_at: datetime | None = None) -> str:
    payload = {"r": reader_id, "n": sorted(newsletter_ids)}
    return sign(CONFIRM, payload) if issued_at is None else sign_at(CONFIRM, payload, issued_at)


def unsubscribe_token(reader_id: int, newsletter_id: int) -> str:
    return sign(UNSUBSCRIBE, {"r": reader_id, "n": newsletter_id})


def preferences_token(reader_id: int) -> str:
    return sign(PREFERENCES, {"r": reader_id})


def _integer(value: Any, purpose: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidToken(purpose)
    return value


def read_confirm(token: str, max_age: int) -> tuple[int, list[int], datetime]:
    """(reader id, newsletter ids, issued at) from a confirmation link."""
    signed = verify(CONFIRM, token, max_age=max_age)
    ids = signed.payload.get("n")
    if not isinstance(ids, list) or not ids:
        raise InvalidToken(CONFIRM)
    return _integer(signed.payload.get("r"), CONFIRM), [_integer(i, CONFIRM) for i in ids], signed.issued_at


def read_unsubscribe(token: str) -> tuple[int, int]:
    """(reader id, newsletter id) from an unsubscribe link; these never expire (RFC 8058)."""
    payload = verify(UNSUBSCRIBE, token).payload
    return _integer(payload.get("r"), UNSUBSCRIBE), _integer(payload.get("n"), UNSUBSCRIBE)


def read_preferences(token: str, max_age: int) -> int:
    """The reader id from a preferences (or data download) link; ExpiredToken after `max_age` seconds."""
    return _integer(verify(PREFERENCES, token, max_age=max_age).payload.get("r"), PREFERENCES)


def cursor_token(after_id: int) -> str:
    """An opaque API page cursor: where the next page starts."""
    return sign(CURSOR, {"a": after_id})


def read_cursor(token: str) -> int:
    """The id after which the page of a cursor starts; InvalidToken if it isn't one of ours."""
    return _integer(verify(CURSOR, token).payload.get("a"), CURSOR)
