"""The authenticated API: newsletters with counts, subscribers page by page, readers and their rights.

Every view needs `Authorization: Bearer <token>`; the changing ones an `admin` token. Answers and
errors are JSON, errors as {"errors": {"field": ["message", …]}} like the rest of /api.
"""

from __future__ import annotations

import functools
from typing import Any

from flask import Response, current_app, g, jsonify, request

from .. import metrics, privacy, subscribers, subscriptions, tokens
from ..authz import token_required
from ..extensions import db
from ..models import Newsletter, Reader, Subscription
from ..provenance import request_source
from ..subscriptions import Source, UnknownReader
from . import blueprint
from .openapi import described
from .routes import _body
from .schemas import Reader as ReaderAnswer
from .schemas import (NewsletterList, ReaderExport, SubscriberPage, SubscriberQuery, UnsubscribeRequest,
                      UnsubscribeResult, parse)


NO_NEWSLETTER = "No newsletter has this slug."
NO_READER = "No reader has this id or address."


class Missing(Exception):
    """What the URL names doesn't exist: a 404 whose body says which part of the URL."""

    status = 404

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.errors = {field: [message]}


class Erased(Missing):
    """The reader the URL names was erased: 410, nothing more can be done for them."""

    status = 410


@blueprint.errorhandler(Missing)
def missing(error: Missing) -> tuple[Response, int]:
    db.session.rollback()
    return jsonify({"errors": error.errors}), error.status


def _iso(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None


def _newsletter(slug: str) -> Newsletter:
    newsletter = subscribers.find_newsletter(db.session, slug)
    if newsletter is None:
        raise Missing("newsletter", f"There is no newsletter called {slug!r}.")
    return newsletter


def _reader(reference: str) -> Reader:
    try:
        return privacy.find_reader(db.session, reference)
    except UnknownReader:
        raise Missing("reader", f"There is no reader with the id or address {reference!r}.") from None


def _erased(reader_id: int) -> Erased:
    return Erased("reader", f"Reader {reader_id} was erased: nothing more can be done for them. Nothing was changed.")


def _live_reader(reference: str) -> Reader:
    """The reader to act on; Erased (410) when they were erased, e.g. by another client a moment ago."""
    reader = _reader(reference)
    if reader.erased_at is not None:
        raise _erased(reader.id)
    return reader


def _token_label() -> str:
    # Kept in the consent history: which program acted (the API's "who", as the admin's email is there).
    return f"the API token {g.api_token.name!r} ({g.api_token.prefix}…)"


@blueprint.get("/newsletters")
@described(tag="Lists", access="read", answers={200: (NewsletterList, "Newsletters by slug, archived ones included.")})
@token_required()
def list_newsletters() -> Response:
    """Every newsletter with its counts"""
    return jsonify({"newsletters": [{
        "slug": newsletter.slug,
        "name": newsletter.name,
        "description": newsletter.description,
        "author": newsletter.author,
        "active": newsletter.is_active,
        "created_at": _iso(newsletter.created_at),
        "counts": counts,
    } for newsletter, counts in subscribers.newsletters_with_counts(db.session)]})


def _subscriber(subscription: Subscription, reader: Reader) -> dict[str, Any]:
    return {
        "id": subscription.id,
        "reader_id": reader.id,
        "email": reader.email,
        "name": reader.name,
        "status": subscription.status,
        "subscribed_at": _iso(subscription.created_at),
        "pending_since": _iso(subscription.pending_since),
        "confirmed_at": _iso(subscription.confirmed_at),
        "unsubscribed_at": _iso(subscription.unsubscribed_at),
    }


@blueprint.get("/newsletters/<slug>/subscribers")
@described(tag="Lists", access="read", query=SubscriberQuery, answers={
    200: (SubscriberPage, "One page."),
    404: NO_NEWSLETTER,
    422: "status, q, limit or cursor is not acceptable: each is named.",
})
@token_required()
def list_subscribers(slug: str) -> Response:
    """A newsletter's subscribers, page by page

    Ordered by subscription id. Follow `next_cursor` until it is null to get every row exactly once,
    even while readers sign up. Erased readers are left out.
    """
    newsletter = _newsletter(slug)
    wanted = parse(SubscriberQuery, request.args.to_dict())
    page = subscribers.subscribers_page(db.session, newsletter, status=wanted.status, search=wanted.q,
                                        after_id=wanted.after_id, limit=wanted.limit)
    return jsonify({
        "subscribers": [_subscriber(subscription, reader) for subscription, reader in page.rows],
        "next_cursor": tokens.cursor_token(page.last_id) if page.has_more and page.last_id else None,
    })


@blueprint.get("/readers/<reader>")
@described(tag="Readers", access="read", answers={200: (ReaderAnswer, "The reader."), 404: NO_READER})
@token_required()
def get_reader(reader: str) -> Response:
    """A reader with their subscriptions and consent history"""
    return jsonify(privacy.describe_reader(db.session, _reader(reader)))


def parse_unsubscribe(body: dict[str, Any] | None) -> list[Newsletter] | None:
    """The newsletters an unsubscribe body names; None for all of them (no body, or no "newsletters")."""
    if body is None:
        return None
    find = functools.partial(subscribers.find_newsletter, db.session)
    slugs = parse(UnsubscribeRequest, body, {"find_newsletter": find}).newsletters
    return None if slugs is None else [find(slug) for slug in slugs]


@blueprint.post("/readers/<reader>/unsubscribe")
@described(tag="Readers", access="change", json=UnsubscribeRequest, body_required=False, answers={
    200: (UnsubscribeResult, "What changed, and the reader now."),
    404: NO_READER,
    410: "The reader was erased: nothing more can be done for them.",
    415: "A body was sent, not as application/json.",
    422: "The body is not an object with a list of known slugs.",
})
@token_required(change=True)
def unsubscribe_reader(reader: str) -> Response:
    """Unsubscribe a reader from some newsletters, or all

    Recorded as a consent event with source `api`. Needs an admin token.
    """
    found = _live_reader(reader)
    chosen = parse_unsubscribe(_body() if request.get_data() else None)
    source = request_source("api", f"Unsubscribed with {_token_label()}")
    left: list[Newsletter] = []
    try:
        for newsletter_id in [None] if chosen is None else [n.id for n in chosen]:
            left += subscriptions.unsubscribe(db.session, found.id, newsletter_id, source=source)
    except UnknownReader:  # erased between the look-up and the lock
        raise _erased(found.id) from None
    db.session.commit()
    metrics.count("unsubscribes", "api", len(left))
    return jsonify({"unsubscribed": [n.slug for n in left], "reader": privacy.describe_reader(db.session, found)})


@blueprint.delete("/readers/<reader>")
@described(tag="Readers", access="change", answers={200: (ReaderAnswer, "What is left of the reader."),
                                                    404: NO_READER})
@token_required(change=True)
def erase_reader(reader: str) -> Response:
    """Erase a reader (the GDPR right to erasure)

    Removes the address and personal fields everywhere: the email becomes erased-<id>@invalid, the
    name goes, consent events lose page URL, IP and user agent (their actions and times stay, for
    anonymous counts), emails lose address and bodies and unsent ones are cancelled. Every
    subscription ends. The reader's links stop working; a new signup later makes a new reader.
    Needs an admin token. Erasing again changes nothing.
    """
    erased = privacy.erase_reader(db.session, _reader(reader).id,
                                  source=Source(channel="api", wording=f"Erased with {_token_label()}"),
                                  config=current_app.config)
    db.session.commit()
    return jsonify(privacy.describe_reader(db.session, erased))


@blueprint.get("/readers/<reader>/export")
@described(tag="Readers", access="read", answers={200: (ReaderExport, "The reader's data."), 404: NO_READER})
@token_required()
def export_reader(reader: str) -> Response:
    """Everything stored about a reader (the GDPR right of access)"""
    return jsonify(privacy.export_reader(db.session, _reader(reader).id))
