"""Where a web request came from, for the ConsentEvent that proves a change."""

from __future__ import annotations

from flask import current_app, request

from .subscriptions import Source


def request_source(channel: str, wording: str | None = None) -> Source:
    """The Source of the current request, recording IP and user agent only when configured to."""
    record_ip = current_app.config["NEWSLETTER_RECORD_IP"]
    return Source(
        channel=channel,
        page_url=(request.referrer or "")[:2048] or None,
        ip_address=request.remote_addr if record_ip else None,
        user_agent=(request.user_agent.string[:512] or None) if record_ip else None,
        wording=wording,
    )
