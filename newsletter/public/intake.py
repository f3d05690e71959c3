"""Taking a submitted signup form: the steps the hosted page, the iframe and the plain form share."""

from __future__ import annotations

from enum import Enum

from flask import current_app, request

from .. import abuse, metrics, subscriptions
from ..extensions import db
from ..provenance import request_source
from .forms import SignupForm


class Outcome(Enum):
    SUBSCRIBED = "subscribed"
    IGNORED = "ignored"  # a bot: answered like a success, nothing stored or sent
    INVALID = "invalid"  # the form's fields carry the errors
    TOO_FAST = "too fast"


def take_signup(form: SignupForm, channel: str, *, check_fill_time: bool) -> Outcome:
    """Validate and store a submitted signup form; commit when it is taken."""
    if abuse.is_bot(request.form):
        return Outcome.IGNORED
    # End the read the page made (its newsletters) before validating: the address check may ask DNS,
    # and on SQLite an open transaction holds the write lock.
    db.session.commit()
    if not form.validate():
        return Outcome.INVALID
    if check_fill_time:
        try:
            abuse.check_fill_time(form.form_token.data)
        except abuse.TooFast:
            return Outcome.TOO_FAST
    try:
        chosen = subscriptions.find_newsletters(db.session, form.newsletters.data, cached=True)
        source = request_source(channel, subscriptions.consent_wording(chosen),
                                page_url=form.page_url.data, form_id=form.form_id.data)
        subscriptions.sign_up(db.session, form.normalized_email, chosen, name=form.name.data, source=source,
                              config=current_app.config)
    except subscriptions.SignupRejected as rejected:
        db.session.rollback()
        form.newsletters.errors = list(rejected.errors.get("newsletters", []))
        return Outcome.INVALID
    db.session.commit()
    metrics.count("signups", channel)
    return Outcome.SUBSCRIBED
