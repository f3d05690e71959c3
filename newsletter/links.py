"""Absolute URLs for emails, built from NEWSLETTER_PUBLIC_URL without a request."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import current_app


def external_url(endpoint: str, **values: Any) -> str:
    """The absolute public URL of `endpoint`, e.g. external_url('public.confirm', token=...)."""
    public_url = current_app.config["NEWSLETTER_PUBLIC_URL"]
    # One URL adapter per app and public URL: binding one costs more than building a URL with it.
    known, adapter = current_app.extensions.get("newsletter.public_urls", (None, None))
    if known != public_url or adapter is None:
        base = urlsplit(public_url)
        adapter = current_app.url_map.bind(base.netloc, script_name=base.path or "/", url_scheme=base.scheme)
        current_app.extensions["newsletter.public_urls"] = (public_url, adapter)
    return adapter.build(endpoint, values, force_external=True)
