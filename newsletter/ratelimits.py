"""Rate limits on signups and link requests: per client IP and per submitted address, shared through Redis when configured."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from flask import current_app
from flask_babel import gettext as _

from . import abuse
from .extensions import limiter

View = TypeVar("View", bound=Callable[..., object])


def _per_address_and_ip(scope: str, email_message: Callable[[], str], ip_message: Callable[[], str]
                        ) -> Callable[[View], View]:
    """A decorator limiting POSTs per submitted address and per client IP, at the signup rates, under `scope`."""

    def decorate(view: View) -> View:
        per_email = limiter.shared_limit(
            lambda: current_app.config["NEWSLETTER_RATE_LIMIT_EMAIL"],
            scope=f"{scope}-email",
            key_func=abuse.submitted_email,
            exempt_when=lambda: not abuse.submitted_email(),
            methods=["POST"],
            # Callables: the message is read per request, in that request's language.
            error_message=email_message,
        )
        per_ip = limiter.shared_limit(
            lambda: current_app.config["NEWSLETTER_RATE_LIMIT_IP"],
            scope=f"{scope}-ip",
            methods=["POST"],
            error_message=ip_message,
        )
        # Registered first, checked first: a request already refused per IP doesn't use up an address's budget.
        limited = per_email(per_ip(view))

        @wraps(view)
        def limited_view(*args: object, **kwargs: object) -> object:
            # Flask-Limiter works out which limits apply even when they are off; with them off, don't ask it.
            if not current_app.config["RATELIMIT_ENABLED"]:
                return view(*args, **kwargs)
            return limited(*args, **kwargs)

        return limited_view  # type: ignore[return-value]

    return decorate


# Every signup endpoint counts together.
signup_limits = _per_address_and_ip(
    "signup",
    lambda: _("Too many signups for this email address. Please wait a few minutes and try again."),
    lambda: _("Too many signups from your network. Please wait a few minutes and try again."),
)

# Asking for a fresh preferences link is counted apart, so that it never costs a reader a signup.
link_request_limits = _per_address_and_ip(
    "link-request",
    lambda: _("Too many requests for this email address. Please wait a few minutes and try again."),
    lambda: _("Too many requests from your network. Please wait a few minutes and try again."),
)
