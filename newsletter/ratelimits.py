"""Rate limits on signups: per client IP and per submitted address, shared through Redis when configured."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from flask import current_app
from flask_babel import gettext as _

from . import abuse
from .extensions import limiter

View = TypeVar("View", bound=Callable[..., object])


def signup_limits(view: View) -> View:
    """Limit POSTs to `view` per IP and per email address, counting every signup endpoint together."""
    per_email = limiter.shared_limit(
        lambda: current_app.config["NEWSLETTER_RATE_LIMIT_EMAIL"],
        scope="signup-email",
        key_func=abuse.submitted_email,
        exempt_when=lambda: not abuse.submitted_email(),
        methods=["POST"],
        # Callables: the message is read per request, in that request's language.
        error_message=lambda: _("Too many signups for this email address. Please wait a few minutes and try again."),
    )
    per_ip = limiter.shared_limit(
        lambda: current_app.config["NEWSLETTER_RATE_LIMIT_IP"],
        scope="signup-ip",
        methods=["POST"],
        error_message=lambda: _("Too many signups from your network. Please wait a few minutes and try again."),
    )
    # Registered first, checked first: a request already refused per IP doesn't use up an address's budget.
    limited = per_email(per_ip(view))

    @wraps(view)
    def signup_view(*args: object, **kwargs: object) -> object:
        # Flask-Limiter works out which limits apply even when they are off; with them off, don't ask it.
        if not current_app.config["RATELIMIT_ENABLED"]:
            return view(*args, **kwargs)
        return limited(*args, **kwargs)

    return signup_view  # type: ignore[return-value]


def link_request_limits(view: View) -> View:
    """Limit POSTs asking for a fresh preferences link per IP and per address, with the signup rates.

    Counted apart from signups, so that asking for a link never costs a reader a signup; the
    structure is signup_limits'.
    """
    per_email = limiter.shared_limit(
        lambda: current_app.config["NEWSLETTER_RATE_LIMIT_EMAIL"],
        scope="link-request-email",
        key_func=abuse.submitted_email,
        exempt_when=lambda: not abuse.submitted_email(),
        methods=["POST"],
        error_message=lambda: _("Too many requests for this email address. Please wait a few minutes and try again."),
    )
    per_ip = limiter.shared_limit(
        lambda: current_app.config["NEWSLETTER_RATE_LIMIT_IP"],
        scope="link-request-ip",
        methods=["POST"],
        error_message=lambda: _("Too many requests from your network. Please wait a few minutes and try again."),
    )
    limited = per_email(per_ip(view))

    @wraps(view)
    def limited_view(*args: object, **kwargs: object) -> object:
        if not current_app.config["RATELIMIT_ENABLED"]:
            return view(*args, **kwargs)
        return limited(*args, **kwargs)

    return limited_view  # type: ignore[return-value]
