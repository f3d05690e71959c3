"""GET /api/v1/changes: the changes feed, every subscription change oldest first, page by page by cursor."""

from __future__ import annotations

from flask import Response, jsonify, request
from pydantic import ValidationError

from .. import changes
from ..authz import token_required
from ..extensions import db
from . import blueprint
from .change_schemas import ChangesPage, ChangesQuery
from .openapi import described
from .routes import FieldErrors

# Events numbered per request at most (one transaction); a bigger backlog (an import's) is
# numbered by the next requests and the worker, and has_more says so meanwhile.
NUMBER_PER_REQUEST = changes.DEFAULT_BATCH


def parse_changes_query() -> ChangesQuery:
    """The query string as a ChangesQuery, or FieldErrors naming each problem."""
    errors: dict[str, list[str]] = {}
    values: dict[str, str] = {}
    for name in ("after", "limit"):
        given = request.args.getlist(name)
        if len(given) > 1:
            errors[name] = [f"Give {name} once, not {len(given)} times."]
        elif given and given[0] != "":
            values[name] = given[0]
    if errors:
        raise FieldErrors(errors)
    try:
        return ChangesQuery.model_validate(values)
    except ValidationError as error:
        raise FieldErrors({str(problem["loc"][0]): [problem["msg"]] for problem in error.errors()}) from None


def past_the_end(after: int, last: int) -> str:
    """The 422 message for a cursor beyond the feed's last position."""
    return (f"The after cursor {after} is past the end of the feed (the last change is at {last}): "
            "start again from 0 or from a cursor this server gave; a cursor from another instance, or "
            "kept from before a database was restored from a backup, is not this feed's.")


@blueprint.get("/changes")
@described(tag="Changes", access="read", query=ChangesQuery, answers={
    200: (ChangesPage, "Changes after the cursor, oldest first, and the cursor to continue from."),
    422: "after or limit is not acceptable: each is named. An after past the feed's last position (one this "
         "server never gave: a typo, another instance's cursor, a database restored from a backup) is refused "
         "too, so that no change after it is skipped: start again from 0 or from a cursor this server gave.",
})
@token_required()  # viewer tokens too: the feed is reading
def list_changes() -> Response:
    """Changes after the cursor, oldest first, with the cursor to continue from."""
    wanted = parse_changes_query()
    numbered = changes.assign_positions(db.session, batch=NUMBER_PER_REQUEST, max_batches=1)
    # Every position up to `last` is visible now (positions commit in whole blocks, in order), so
    # the page may end there even when the events between are not changes the feed shows.
    last = changes.last_position(db.session)
    if wanted.after > last:
        # Positions never go back (feed_state keeps the last one even when its event is deleted), so this
        # cursor is none of this feed's; taking it would skip every change up to it, silently.
        db.session.commit()
        raise FieldErrors({"after": [past_the_end(wanted.after, last)]})
    events = changes.changes_after(db.session, wanted.after, wanted.limit + 1, up_to=last)
    has_more = len(events) > wanted.limit or numbered >= NUMBER_PER_REQUEST
    if len(events) > wanted.limit:
        events = events[:wanted.limit]
        next_position = events[-1].feed_position
    else:
        next_position = last
    # A ChangesPage (change_schemas.py describes it; the tests check every answer against it).
    page = {"changes": changes.event_payloads(db.session, events), "next": str(next_position), "has_more": has_more}
    db.session.commit()
    return jsonify(page)
