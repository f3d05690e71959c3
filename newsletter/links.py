"""Absolute URLs for emails, built from NEWSLETTER_PUBLIC_URL without a request."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import current_app


def external_url(endpoint: str, **values: Any) -> str:
    """The absolute public URL of `endpoint`, e.g. external_url('public.confirm', token=...)."""
    base = urlsplit(current_app.config["NEWSLETTER_PUBLIC_URL"])
    adapter = current_app.url_map.bind(base.netloc, script_name=base.path or "/", url_scheme=base.scheme)
    return adapter.build(endpoint, values, force_external=True)
