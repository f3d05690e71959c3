"""Scrub signed links from consent_events.page_url: a stored Referer of a confirm, unsubscribe or preferences
page held the link itself, a key to the reader's subscriptions that anyone reading the history could use.

Such a page_url becomes NULL (the event's source, e.g. email-link or one-click, still says how it came).
A URL counts as a signed link when its path ends in /confirm/<token>, /unsubscribe/<token>,
/preferences/<token> or /preferences/<token>/data.json, whatever its host, with <token> shaped like an
itsdangerous token (three dot-separated base64url parts): the host may have been any name the service
answered to, and an article page with such a path is implausible.

Revision ID: 0007
Revises: 0006
"""
import re
from urllib.parse import unquote, urlsplit

import sqlalchemy as sa
from alembic import op

revision = '0007'
down_revision = '0006'
branch_labels = None
depends_on = None

BATCH = 1000
# payload.timestamp.signature; a compressed payload starts with a dot.
TOKEN_PATH = re.compile(r"/(?:confirm|unsubscribe|preferences)/\.?[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]+){2}"
                        r"(?:/data\.json)?/?$")
CANDIDATES = ("%/confirm/%", "%/unsubscribe/%", "%/preferences/%")


def carries_token(url: str) -> bool:
    """Whether a stored page URL is one of the service's signed links."""
    try:
        path = unquote(urlsplit(url.strip()).path)
    except ValueError:
        return False
    return TOKEN_PATH.search(path) is not None


def upgrade():
    connection = op.get_bind()
    events = sa.table("consent_events", sa.column("id", sa.Integer), sa.column("page_url", sa.String))
    maybe = sa.or_(*(events.c.page_url.like(pattern) for pattern in CANDIDATES))
    after = 0
    while True:
        rows = connection.execute(
            sa.select(events.c.id, events.c.page_url).where(maybe, events.c.id > after)
            .order_by(events.c.id).limit(BATCH)
        ).all()
        if not rows:
            break
        leaking = [event_id for event_id, url in rows if carries_token(url)]
        if leaking:
            connection.execute(sa.update(events).where(events.c.id.in_(leaking)).values(page_url=None))
        after = rows[-1][0]


def downgrade():
    pass  # the links are gone for good, which is the point
