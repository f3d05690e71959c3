"""Email address checking and normalization, a thin wrapper around email-validator."""

from __future__ import annotations

from email_validator import EmailNotValidError, validate_email
from flask_babel import gettext as _

from .locale import N_


class InvalidAddress(ValueError):
    """The address can't be used; str() says why, in words a reader understands."""


# email-validator's fixed messages (it speaks English only): catalogued here so pybabel extracts
# them, looked up when shown. Messages with the address's own parts in them stay English.
VALIDATOR_MESSAGES = (
    N_("An email address must have an @-sign."),
    N_("There must be something before the @-sign."),
    N_("There must be something after the @-sign."),
    N_("The email address has the \"full-width\" at-sign (@) character instead of a regular at-sign."),
    N_("The email address has the \"small commercial at\" character instead of a regular at-sign."),
    N_("An open angle bracket at the start of the email address has to be followed by a close angle bracket "
       "at the end."),
    N_("There can't be anything after the email address."),
    N_("A display name and angle brackets around the email address are not permitted here."),
    N_("Internationalized characters before the @-sign are not supported."),
    N_("The email address contains an invalid character."),
    N_("The email address contains invalid characters before the @-sign."),
    N_("The email address contains invalid characters after the @-sign after IDNA encoding."),
    N_("The email address is not valid ASCII."),
    N_("An email address cannot start with a period."),
    N_("An email address cannot have a period immediately before the @-sign."),
    N_("An email address cannot have a period immediately after the @-sign."),
    N_("An email address cannot end with a period."),
    N_("An email address cannot have a hyphen immediately after the @-sign."),
    N_("An email address cannot end with a hyphen."),
    N_("An email address cannot have two periods in a row."),
    N_("An email address cannot have a period and a hyphen next to each other."),
    N_("An email address cannot have two letters followed by two dashes immediately after the @-sign or after a "
       "period, except Punycode."),
    N_("The part after the @-sign is not valid. It should have a period."),
    N_("The part after the @-sign is not valid. It is not within a valid top-level domain."),
    N_("The part after the @-sign is a special-use or reserved name that cannot be used with email."),
    N_("Quoting the part before the @-sign is not allowed here."),
    N_("A bracketed IP address after the @-sign is not allowed here."),
    N_("The IPv6 address in brackets after the @-sign is not valid (It has a zone index)."),
    N_("The part after the @-sign in brackets is not an IPv4 address and has no address literal tag."),
    N_("The part after the @-sign contains an invalid address literal tag in brackets."),
)


def normalize(text: str, *, check_deliverability: bool = False, timeout: int = 3) -> str:
    """The normalized form of `text`, or InvalidAddress saying what is wrong with it."""
    text = text.strip()
    if not text:
        raise InvalidAddress(_("Enter your email address."))
    if len(text) > 320:
        raise InvalidAddress(_("That email address is too long."))
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
        raise InvalidAddress(_(str(error))) from None
    return result.normalized
