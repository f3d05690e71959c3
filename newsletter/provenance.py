"""Where a web request came from, for the ConsentEvent that proves a change."""

from __future__ import annotations

from flask import current_app, request

from .subscriptions import Source


def request_source(channel: str, wording: str | None = None, *, page_url: str | None = None,
                   form_id: str | None = None) -> Source:
    """The Source of the current request; the page is the form's own word, else the Referer.

    IP address and user agent are kept only when NEWSLETTER_RECORD_IP is on.
    """
    record_ip = current_app.config["NEWSLETTER_RECORD_IP"]
    return Source(
        channel=channel,
        page_url=((page_url or request.referrer or "")[:2048]) or None,
        form_id=(form_id or "")[:200] or None,
        ip_address=request.remote_addr if record_ip else None,
        user_agent=(request.user_agent.string[:512] or None) if record_ip else None,
        wording=wording,
    )
