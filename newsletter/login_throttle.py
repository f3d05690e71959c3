"""Admin login throttling: failed password checks counted per client IP and per account, with Flask-Limiter.

Only failures count, so an admin who types the right password is never slowed down by their own
logins. A stranger who hammers an account throttles it only for browsers that have not logged in
to it before and are outside the trusted networks (NEWSLETTER_LOGIN_TRUSTED_NETWORKS): the admin's
own browser carries a signed "known device" cookie from its last successful login, and neither it
nor the office network is held back by the account's count (the per-IP count still applies).
Wrong current passwords on the change-password page are counted the same way, in counts of their own
that nothing exempts from: whoever holds a login may be a thief guessing the password.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import math
import secrets
from collections.abc import Callable
from functools import wraps
from typing import TypeVar

from flask import abort, current_app, g, request
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_limiter.errors import RateLimitExceeded
from flask_login import current_user
from itsdangerous import BadSignature, URLSafeTimedSerializer
from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage
from werkzeug.wrappers import Response

from . import accounts
from .accounts import login_address
from .extensions import db, limiter
from .models import AdminUser

View = TypeVar("View", bound=Callable[..., object])

ACCOUNT_SCOPE = "admin-login-account"
IP_SCOPE = "admin-login-ip"
PASSWORD_ACCOUNT_SCOPE = "admin-password-account"
PASSWORD_IP_SCOPE = "admin-password-ip"
DEVICE_COOKIE = "newsletter_admin_device"
# How long a browser stays known: the cookie's lifetime, and the oldest signature the server takes.
DEVICE_MAX_AGE = 180 * 24 * 3600
# The status the login view answers a wrong email or password with: what the limits count.
REFUSED = 401
# The only bodies the login and password forms are read from: the limits key on the same fields.
FORM_BODIES = ("application/x-www-form-urlencoded", "multipart/form-data")


def account_key(text: str) -> str:
    """A keyed hash of the login address, so that the limits' store (Redis) never holds an address."""
    key = current_app.config["SECRET_KEY"].encode()
    address = login_address(text)[:320].encode("utf-8", "replace")
    return hmac.new(key, b"admin-login:" + address, hashlib.sha256).hexdigest()[:32]


def _submitted_account() -> str:
    return account_key(request.form.get("email", ""))


def _current_account() -> str:
    return account_key(current_user.email)


def _device() -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt="newsletter.admin-device.timed")


def _binding(admin: AdminUser) -> str:
    # A keyed hash, so that the cookie (readable, only signed) shows neither the account's id nor its dates.
    key = current_app.config["SECRET_KEY"].encode()
    return hmac.new(key, b"admin-device:" + accounts.device_binding(admin).encode(), hashlib.sha256).hexdigest()[:32]


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
    """The browser logged in to the submitted account before, since its last password change, not too long ago."""
    cookie = request.cookies.get(DEVICE_COOKIE)
    if not cookie:
        return False
    try:
        device = _device().loads(cookie, max_age=DEVICE_MAX_AGE)
    except BadSignature:  # a forged or altered cookie, or one older than DEVICE_MAX_AGE
        return False
    if not isinstance(device, dict) or not hmac.compare_digest(str(device.get("account")), _submitted_account()):
        return False
    admin = accounts.active_admin(db.session, request.form.get("email", ""))
    return admin is not None and hmac.compare_digest(str(device.get("binding")), _binding(admin))


def remember_device(response: Response, admin: AdminUser) -> None:
    """Mark this browser as one the account logged in from (after a successful login); each browser its own."""
    value = _device().dumps({"account": account_key(admin.email), "binding": _binding(admin),
                             "nonce": secrets.token_urlsafe(12)})
    response.set_cookie(DEVICE_COOKIE, value, max_age=DEVICE_MAX_AGE, path="/admin", httponly=True,
                        samesite="Lax", secure=current_app.config["SESSION_COOKIE_SECURE"])


def _wait(item: RateLimitItem) -> str:
    """How long to wait at most after hitting this limit (its window, as Retry-After says): minutes, or hours."""
    minutes = math.ceil(item.get_expiry() / 60)
    if minutes <= 90:
        return ngettext("up to %(num)d minute", "up to %(num)d minutes", minutes)
    return ngettext("up to %(num)d hour", "up to %(num)d hours", math.ceil(minutes / 60))


def refuse_password_check() -> None:
    """Count this request as a wrong current password (the change-password view calls it)."""
    g.password_check_refused = True


def _failure_limits(view: View, *, account_rates: str, ip_rates: str, account_scope: str, ip_scope: str,
                    account_key_func: Callable[[], str], refused: Callable[[Response], bool],
                    account_message: Callable[[str], str], ip_message: Callable[[str], str],
                    exempt_when: Callable[[], bool] | None = None) -> View:
    per_account = limiter.shared_limit(
        lambda: current_app.config[account_rates], scope=account_scope, key_func=account_key_func,
        exempt_when=exempt_when, methods=["POST"], deduct_when=refused)
    per_ip = limiter.shared_limit(
        lambda: current_app.config[ip_rates], scope=ip_scope, methods=["POST"], deduct_when=refused)
    limited = per_account(per_ip(view))
    messages = {account_scope: account_message, ip_scope: ip_message}

    @wraps(view)
    def throttled_view(*args: object, **kwargs: object) -> object:
        # The limits read the form's fields: a body of another kind (JSON) would slip past them.
        if request.method == "POST" and request.mimetype not in FORM_BODIES:
            abort(415, _("Send this form as a web form (application/x-www-form-urlencoded)."))
        if not current_app.config["RATELIMIT_ENABLED"]:
            return view(*args, **kwargs)
        try:
            return limited(*args, **kwargs)
        except RateLimitExceeded as error:
            # The wait of the limit that was hit, as its Retry-After says, not of the longest one.
            message = messages.get(str(error.limit.scope))
            if message:
                error.description = message(_wait(error.limit.limit))
            raise

    return throttled_view  # type: ignore[return-value]


def login_limits(view: View) -> View:
    """Refuse login POSTs with 429 once too many failed per client IP or per account."""
    return _failure_limits(
        view, account_rates="NEWSLETTER_LOGIN_LIMIT_ACCOUNT", ip_rates="NEWSLETTER_LOGIN_LIMIT_IP",
        account_scope=ACCOUNT_SCOPE, ip_scope=IP_SCOPE, account_key_func=_submitted_account, exempt_when=_trusted,
        refused=lambda response: response.status_code == REFUSED,
        account_message=lambda wait: _(
            "Too many failed logins for this account. Please wait %(wait)s and try again, log in from a browser "
            "you used for this account before, or ask whoever runs the server to unlock the account.", wait=wait),
        ip_message=lambda wait: _(
            "Too many failed logins from your network. Please wait %(wait)s and try again.", wait=wait),
    )


def password_check_limits(view: View) -> View:
    """Refuse change-password POSTs with 429 once too many wrong current passwords per client IP or per account."""
    return _failure_limits(
        view, account_rates="NEWSLETTER_LOGIN_LIMIT_ACCOUNT", ip_rates="NEWSLETTER_LOGIN_LIMIT_IP",
        account_scope=PASSWORD_ACCOUNT_SCOPE, ip_scope=PASSWORD_IP_SCOPE, account_key_func=_current_account,
        refused=lambda response: bool(g.get("password_check_refused")),
        account_message=lambda wait: _(
            "Too many wrong current passwords for this account. Please wait %(wait)s and try again.", wait=wait),
        ip_message=lambda wait: _(
            "Too many wrong current passwords from your network. Please wait %(wait)s and try again.", wait=wait),
    )


def counts_shared() -> bool:
    """The counts live in a store every process reads (Redis), not in each web process's own memory."""
    return not isinstance(limiter.storage, MemoryStorage)


def _clear(rates: str, key: str, scope: str) -> None:
    prefix = current_app.config.get("RATELIMIT_KEY_PREFIX") or ""
    identifiers = [prefix, key, scope] if prefix else [key, scope]
    for item in parse_many(rates):
        limiter.limiter.clear(item, *identifiers)


def clear_account(email: str) -> None:
    """Forget the failed logins and wrong current passwords counted against this account (`admins unlock`)."""
    for scope in (ACCOUNT_SCOPE, PASSWORD_ACCOUNT_SCOPE):
        _clear(current_app.config["NEWSLETTER_LOGIN_LIMIT_ACCOUNT"], account_key(email), scope)


def clear_ip(ip_address: str) -> None:
    """Forget the failed logins and wrong current passwords counted against this client IP."""
    for scope in (IP_SCOPE, PASSWORD_IP_SCOPE):
        _clear(current_app.config["NEWSLETTER_LOGIN_LIMIT_IP"], ip_address, scope)
