"""Which sites may embed our forms: CORS, frame-ancestors, return_to and the cross-origin POST check."""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import current_app, request
from flask_babel import gettext as _
from werkzeug.exceptions import Forbidden


class ForeignOrigin(Forbidden):
    """A POST from a site that is not in NEWSLETTER_ALLOWED_ORIGINS."""

    def __init__(self, origin: str) -> None:
        super().__init__(_("Signups from %(origin)s are not accepted: that site is not allowed to embed these forms.",
                           origin=origin))
        self.origin = origin


def origin_of(url: str | None) -> str | None:
    """'https://host:port' of an absolute http(s) URL, lowercased; None for anything else."""
    if not url:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        return None
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        return None
    return f"{parts.scheme}://{parts.netloc}".lower()


def own_origin() -> str:
    return origin_of(request.host_url) or ""


def allowed_origins() -> list[str]:
    return list(current_app.config["NEWSLETTER_ALLOWED_ORIGINS"])


def is_allowed(origin: str | None) -> bool:
    return origin is not None and origin in allowed_origins()


def _posting_origin() -> str | None:
    # Browsers send Origin with every POST; the Referer is the fallback of older ones.
    origin = request.headers.get("Origin")
    if origin is None:
        return origin_of(request.referrer)
    return None if origin == "null" else origin.lower()


def posted_from_own_page() -> bool:
    """True when the browser says this POST comes from a page of ours (e.g. the iframe form)."""
    return _posting_origin() == own_origin()


def cross_origin_post() -> bool:
    """True for a POST from an allowed other site; False for our own pages or no browser origin at all.

    Raises ForeignOrigin for a POST that a browser says comes from any other site.
    """
    origin = _posting_origin()
    if origin is None or origin == own_origin():
        return False
    if is_allowed(origin):
        return True
    raise ForeignOrigin(origin)


def safe_return_to(url: str | None) -> str | None:
    """`url` if it is an absolute http(s) URL on an allowed site, else None (no open redirects)."""
    if not url or any(char in url for char in "\r\n\t\\") or url.strip() != url:
        return None
    origin = origin_of(url)
    return url if origin is not None and (is_allowed(origin) or origin == own_origin()) else None


def frame_ancestors() -> str:
    """The CSP frame-ancestors value: our own pages and the allowed sites."""
    return " ".join(["'self'", *allowed_origins()])
