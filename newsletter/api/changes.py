"""GET /api/v1/changes: the changes feed, every subscription change oldest first, page by page by cursor."""

from __future__ import annotations

from flask import Response, jsonify, request
from pydantic import ValidationError

from .. import changes
from ..authz import token_required
from ..extensions import db
from . import blueprint
from .change_schemas import ChangesQuery
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


@blueprint.get("/changes")
@token_required()  # viewer tokens too: the feed is reading
def list_changes() -> Response:
    """Changes after the cursor, oldest first, with the cursor to continue from."""
    wanted = parse_changes_query()
    numbered = changes.assign_positions(db.session, batch=NUMBER_PER_REQUEST, max_batches=1)
    # Every position up to `last` is visible now (positions commit in whole blocks, in order), so
    # the page may end there even when the events between are not changes the feed shows.
    last = changes.last_position(db.session)
    events = changes.changes_after(db.session, wanted.after, wanted.limit + 1, up_to=last)
    has_more = len(events) > wanted.limit or numbered >= NUMBER_PER_REQUEST
    if len(events) > wanted.limit:
        events = events[:wanted.limit]
        next_position = events[-1].feed_position
    else:
        next_position = max(last, wanted.after)
    # A ChangesPage (change_schemas.py describes it; the tests check every answer against it).
    page = {"changes": changes.event_payloads(db.session, events), "next": str(next_position), "has_more": has_more}
    db.session.commit()
    return jsonify(page)
