"""Email address checking and normalization, a thin wrapper around email-validator."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email


class InvalidAddress(ValueError):
    """The address can't be used; str() says why, in words a reader understands."""


def normalize(text: str, *, check_deliverability: bool = False, timeout: int = 3) -> str:
    """The normalized form of `text`, or InvalidAddress saying what is wrong with it."""
    text = text.strip()
    if not text:
        raise InvalidAddress("Enter your email address.")
    if len(text) > 320:
        raise InvalidAddress("That email address is too long.")
    try:
        result = validate_email(
            text,
            check_deliverability=check_deliverability,
            timeout=timeout,
            allow_display_name=False,
            # Also enforce RFC 5321's 64-character limit on the part before the @: servers refuse longer ones.
            strict=True,
        )
    except EmailNotValidError as error:
        raise InvalidAddress(str(error)) from None
    return result.normalized
