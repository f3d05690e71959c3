"""The paths whose segments are signed links, so that no log line or Referer passes the key on."""

from __future__ import annotations

import re

# The first segment of every page whose URL carries a token (confirm, unsubscribe, preferences and
# its data download), and the one page under them that carries none.
SIGNED_PAGES = ("confirm", "unsubscribe", "preferences")
UNSIGNED = "new-link"
_SIGNED_SEGMENT = re.compile(r"/(%s)/(?!%s(?:[/?#\s]|$))[^/\s?#\"]+" % ("|".join(SIGNED_PAGES), UNSIGNED))


def holds_signed_link(path: str) -> bool:
    """Whether `path` is under one of the pages whose URL carries a signed link (an error page of it too)."""
    segments = path.strip("/").split("/")
    return len(segments) > 1 and segments[0] in SIGNED_PAGES and segments[1] != UNSIGNED


def redact(text: str) -> str:
    """`text` (a path, a request line) with every signed link replaced by `…`."""
    return _SIGNED_SEGMENT.sub(r"/\1/…", text)
