"""Where a web request came from, for the ConsentEvent that proves a change."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from flask import current_app, request

from . import signed_paths
from .subscriptions import Source


def request_source(channel: str, wording: str | None = None, *, page_url: str | None = None,
                   form_id: str | None = None) -> Source:
    """The Source of the current request; the page is the form's own word, else the Referer.

    IP address and user agent are kept only when NEWSLETTER_RECORD_IP is on. A page that is one of
    our own signed links is not kept at all: the link is a key to the reader's subscriptions.
    """
    record_ip = current_app.config["NEWSLETTER_RECORD_IP"]
    page = (page_url or request.referrer or "")[:2048] or None
    return Source(
        channel=channel,
        page_url=None if page is None or is_token_url(page) else page,
        form_id=(form_id or "")[:200] or None,
        ip_address=request.remote_addr if record_ip else None,
        user_agent=(request.user_agent.string[:512] or None) if record_ip else None,
        wording=wording,
    )


def is_token_url(url: str) -> bool:
    """Whether `url` is on our host (NEWSLETTER_PUBLIC_URL's or this request's) with a signed link in its path."""
    public = urlsplit(current_app.config["NEWSLETTER_PUBLIC_URL"])
    # Where our pages start on each of our hosts; any port, since a proxy may stand in front.
    roots: dict[str, set[str]] = {}
    for our_host, root in ((public.hostname, public.path), (_host_of("//" + request.host), request.script_root)):
        if our_host:
            roots.setdefault(our_host, {""}).add(root.rstrip("/"))
    host = _host_of(url.strip())
    if host not in roots:
        return False
    path = unquote(urlsplit(url.strip()).path)
    return any(_carries_token(path[len(root):]) for root in roots[host] if not root or path.startswith(root + "/"))


def _host_of(url: str) -> str | None:
    try:
        return (urlsplit(url).hostname or "").lower() or None
    except ValueError:  # e.g. a malformed IPv6 address: not one of ours
        return None


def _carries_token(path: str) -> bool:
    # By the path's shape, not by the routes: a doubled slash or a trailing one reaches no route
    # (a redirect, a 404) but still holds the key.
    return signed_paths.holds_signed_link(path)
