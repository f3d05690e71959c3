"""Who may do what: admin sessions (Flask-Login) and API bearer tokens, each with a role."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

from flask import g, request
from flask_login import current_user, login_required
from werkzeug.exceptions import Forbidden, Unauthorized

from . import api_tokens
from .extensions import db

View = TypeVar("View", bound=Callable[..., Any])


def admin_view(change: bool = False) -> Callable[[View], View]:
    """Logged-in admins only; with change=True, only the `admin` role (a `viewer` gets 403)."""

    def decorate(view: View) -> View:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            if change and not current_user.can_change:
                raise Forbidden("Your account can look and export, not change anything.")
            return view(*args, **kwargs)

        return login_required(guarded)  # type: ignore[return-value]

    return decorate


class BearerRequired(Unauthorized):
    def get_headers(self, *args: Any, **kwargs: Any) -> list[tuple[str, str]]:
        return [*super().get_headers(*args, **kwargs), ("WWW-Authenticate", 'Bearer realm="newsletter"')]


def token_required(change: bool = False) -> Callable[[View], View]:
    """A valid `Authorization: Bearer <token>`; with change=True, an `admin` token. The token is in g.api_token."""

    def decorate(view: View) -> View:
        @wraps(view)
        def guarded(*args: Any, **kwargs: Any) -> Any:
            scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
            token = api_tokens.find_active(db.session, secret.strip()) if scheme.lower() == "bearer" else None
            if token is None:
                raise BearerRequired("Send a valid API token: Authorization: Bearer <token>.")
            if change and token.role != "admin":
                raise Forbidden("This token can read and export, not change anything.")
            g.api_token = token
            db.session.commit()  # keep last_used_at even if the request fails later
            return view(*args, **kwargs)

        return guarded  # type: ignore[return-value]

    return decorate
