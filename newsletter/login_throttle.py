"""Admin login throttling: failed logins counted per client IP and per account, with Flask-Limiter.

Only failures count, so an admin who types the right password is never slowed down by their own
logins. A stranger who hammers an account throttles it only for browsers that have not logged in
to it before and are outside the trusted networks (NEWSLETTER_LOGIN_TRUSTED_NETWORKS): the admin's
own browser carries a signed "known device" cookie from its last successful login, and neither it
nor the office network is held back by the account's count (the per-IP count still applies).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from flask import current_app, request
from flask_babel import gettext as _
from itsdangerous import BadSignature, URLSafeSerializer
from limits import parse_many
from werkzeug.wrappers import Response

from .accounts import login_address
from .extensions import limiter

View = TypeVar("View", bound=Callable[..., object])

ACCOUNT_SCOPE = "admin-login-account"
IP_SCOPE = "admin-login-ip"
DEVICE_COOKIE = "newsletter_admin_device"
DEVICE_MAX_AGE = 180 * 24 * 3600
# The status the login view answers a wrong email or password with: what the limits count.
REFUSED = 401


def account_key(text: str) -> str:
    """A keyed hash of the login address, so that the limits' store (Redis) never holds an address."""
    key = current_app.config["SECRET_KEY"].encode()
    address = login_address(text)[:320].encode("utf-8", "replace")
    return hmac.new(key, b"admin-login:" + address, hashlib.sha256).hexdigest()[:32]


def _submitted_account() -> str:
    return account_key(request.form.get("email", ""))


def _device() -> URLSafeSerializer:
    return URLSafeSerializer(current_app.config["SECRET_KEY"], salt="newsletter.admin-device")


def _trusted() -> bool:
    """The login comes from a trusted network, or from a browser that logged in to the account before."""
    return _from_trusted_network() or _known_device()


def _from_trusted_network() -> bool:
    try:
        client = ipaddress.ip_address(request.remote_addr or "")
    except ValueError:
        return False
    return any(client in network for network in current_app.config["NEWSLETTER_LOGIN_TRUSTED_NETWORKS"])


def _known_device() -> bool:
    """The browser logged in to the submitted account before (its device cookie names that account)."""
    cookie = request.cookies.get(DEVICE_COOKIE)
    if not cookie:
        return False
    try:
        return hmac.compare_digest(str(_device().loads(cookie)), _submitted_account())
    except BadSignature:
        return False


def remember_device(response: Response, email: str) -> None:
    """Mark this browser as one the account logged in from (after a successful login)."""
    response.set_cookie(DEVICE_COOKIE, _device().dumps(account_key(email)), max_age=DEVICE_MAX_AGE,
                        path="/admin", httponly=True, samesite="Lax",
                        secure=current_app.config["SESSION_COOKIE_SECURE"])


def login_limits(view: View) -> View:
    """Refuse login POSTs with 429 once too many failed per client IP or per account."""
    per_account = limiter.shared_limit(
        lambda: current_app.config["NEWSLETTER_LOGIN_LIMIT_ACCOUNT"],
        scope=ACCOUNT_SCOPE,
        key_func=_submitted_account,
        exempt_when=_trusted,
        methods=["POST"],
        deduct_when=lambda response: response.status_code == REFUSED,
        error_message=lambda: _("Too many failed logins for this account. Please wait a few minutes and try "
                                "again, or ask another admin to unlock it."),
    )
    per_ip = limiter.shared_limit(
        lambda: current_app.config["NEWSLETTER_LOGIN_LIMIT_IP"],
        scope=IP_SCOPE,
        methods=["POST"],
        deduct_when=lambda response: response.status_code == REFUSED,
        error_message=lambda: _("Too many failed logins from your network. Please wait a few minutes and try again."),
    )
    limited = per_account(per_ip(view))

    @wraps(view)
    def login_view(*args: object, **kwargs: object) -> object:
        if not current_app.config["RATELIMIT_ENABLED"]:
            return view(*args, **kwargs)
        return limited(*args, **kwargs)

    return login_view  # type: ignore[return-value]


def _clear(rates: str, key: str, scope: str) -> None:
    prefix = current_app.config.get("RATELIMIT_KEY_PREFIX") or ""
    identifiers = [prefix, key, scope] if prefix else [key, scope]
    for item in parse_many(rates):
        limiter.limiter.clear(item, *identifiers)


def clear_account(email: str) -> None:
    """Forget the failed logins counted against this account (`newsletter admins unlock`)."""
    _clear(current_app.config["NEWSLETTER_LOGIN_LIMIT_ACCOUNT"], account_key(email), ACCOUNT_SCOPE)


def clear_ip(ip_address: str) -> None:
    """Forget the failed logins counted against this client IP."""
    _clear(current_app.config["NEWSLETTER_LOGIN_LIMIT_IP"], ip_address, IP_SCOPE)
