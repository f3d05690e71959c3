"""The paths whose segments are signed links or reader addresses, so that no log line, Referer or history
passes the key (or whom) on."""

from __future__ import annotations

import re
from urllib.parse import unquote

# The first segment of every page whose URL carries a token (confirm, unsubscribe, preferences and
# its data download), and the one page under them that carries none.
SIGNED_PAGES = ("confirm", "unsubscribe", "preferences")
UNSIGNED = "new-link"
# Any spelling a server may still route, or a log may show: doubled slashes, any case.
_SIGNED_SEGMENT = re.compile(r"/+(%s)/+(?!%s(?:[/?#\s\"]|$))[^/\s?#\"]+" % ("|".join(SIGNED_PAGES), UNSIGNED),
                             re.IGNORECASE)

# The API names a reader by id or by address (/api/v1/readers/<reader>/…): an address is whom, not for logs.
# Still encoded once decoded (%2540) is kept out too.
_READER_ADDRESS = re.compile(r"(/+api/+v1/+readers/+)[^/\s?#\"]*(?:@|%40)[^/\s?#\"]*", re.IGNORECASE)


def holds_signed_link(path: str) -> bool:
    """Whether `path` (percent-encoded or not) is under a page whose URL carries a signed link."""
    segments = [segment for segment in unquote(path).split("/") if segment]
    return len(segments) > 1 and segments[0].lower() in SIGNED_PAGES and segments[1].lower() != UNSIGNED


def redact(text: str) -> str:
    """`text` (a path, a request line, a URL), percent-decoded, with every signed link and every reader's
    address in an API path replaced by `…`."""
    return _READER_ADDRESS.sub(r"\1…", _SIGNED_SEGMENT.sub(r"/\1/…", unquote(text)))
