"""Bot defences of the signup forms: a honeypot field, a minimum fill time, rate-limit keys."""

from __future__ import annotations

import hashlib
import hmac
import unicodedata

from flask import current_app, g, request

from . import addresses, tokens
from .request_body import json_object
from .models import utcnow

# A field people never see or fill; bots that fill every input give themselves away.
HONEYPOT_FIELD = "website"


class TooFast(Exception):
    """The form was sent sooner after it was shown than a person could have filled it."""


def form_token() -> str:
    """A token stamped with the time the form was shown."""
    return tokens.sign(tokens.FORM, {})


def check_fill_time(token: str | None) -> None:
    """TooFast unless `token` was issued at least NEWSLETTER_MIN_FILL_SECONDS ago (and not too long ago).

    NEWSLETTER_MIN_FILL_SECONDS=0 turns the check off.
    """
    minimum = current_app.config["NEWSLETTER_MIN_FILL_SECONDS"]
    if minimum <= 0:
        return
    if not token:
        raise TooFast()
    try:
        signed = tokens.verify(tokens.FORM, token, max_age=current_app.config["NEWSLETTER_FORM_MAX_AGE"])
    except tokens.InvalidToken:
        raise TooFast() from None
    if (utcnow() - signed.issued_at).total_seconds() < minimum:
        raise TooFast()


def is_bot(form_values: dict) -> bool:
    """True when the honeypot field was filled in."""
    value = form_values.get(HONEYPOT_FIELD)
    return bool(value.strip()) if isinstance(value, str) else value not in (None, "", False)


def submitted_email() -> str:
    """The per-address rate-limit key of the submitted signup: a keyed hash of the normalized address.

    Normalized as a signup stores it (email-validator, syntax only), so that spellings of one
    address (`ADA@ｅｘａｍｐｌｅ.ORG`) share one budget; text that is no address keys as typed.
    Hashed so that the rate-limit store (Redis) never holds readers' addresses.
    """
    if "newsletter_email_key" not in g:  # asked twice a request: for the key and whether to count at all
        g.newsletter_email_key = _email_key()
    return g.newsletter_email_key


def _email_key() -> str:
    body = json_object() if request.is_json else request.form
    email = body.get("email") if body is not None else None
    if not isinstance(email, str) or not email.strip():
        return ""
    try:
        address = addresses.normalize(email)
    except addresses.InvalidAddress:
        address = email.strip()[:320]
    # Wider than the reader's key: mailboxes that tell `Ada` from `ada`, or full-width letters from
    # plain ones, are too rare to give each spelling a budget of its own.
    folded = unicodedata.normalize("NFKC", address).casefold()
    key = current_app.config["SECRET_KEY"].encode()
    return hmac.new(key, folded.encode("utf-8", "replace"), hashlib.sha256).hexdigest()[:32]
