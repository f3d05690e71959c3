"""Views of the hosted pages: parse, call the domain, commit, render."""

from __future__ import annotations

from flask import current_app, redirect, render_template, request, url_for
from sqlalchemy import select
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response

from .. import subscriptions, tokens
from ..extensions import csrf, db
from ..models import Newsletter
from ..provenance import request_source as source
from . import blueprint
from .forms import ConfirmForm, PreferencesForm, SignupForm


def _active_newsletters() -> list[Newsletter]:
    return list(db.session.scalars(
        select(Newsletter).where(Newsletter.archived_at.is_(None)).order_by(Newsletter.name)
    ))


@blueprint.get("/")
def index() -> Response:
    return redirect(url_for("public.subscribe"))


@blueprint.route("/subscribe", methods=["GET", "POST"])
@blueprint.route("/subscribe/<slug>", methods=["GET", "POST"])
def subscribe(slug: str | None = None) -> Response | str | tuple[str, int]:
    offered = _active_newsletters()
    if slug is not None:
        offered = [n for n in offered if n.slug == slug]
        if not offered:
            raise NotFound(f"There is no newsletter called {slug!r} taking signups.")
    form = SignupForm()
    form.newsletters.choices = [(n.slug, n.name) for n in offered]
    if slug is not None and request.method == "GET":
        form.newsletters.data = [slug]
    if form.validate_on_submit():
        try:
            chosen = subscriptions.find_newsletters(db.session, form.newsletters.data)
            subscriptions.sign_up(
                db.session, form.normalized_email, chosen, name=form.name.data,
                source=source("hosted-form", subscriptions.consent_wording(chosen)), config=current_app.config,
            )
        except subscriptions.SignupRejected as rejected:
            db.session.rollback()
            form.newsletters.errors = list(rejected.errors.get("newsletters", []))
        else:
            db.session.commit()
            return redirect(url_for("public.thanks"), code=303)
    status = 422 if form.errors else 200
    return render_template("public/subscribe.html", form=form, offered=offered, single=slug is not None,
                           wording=subscriptions.consent_wording(offered)), status


@blueprint.get("/thanks")
def thanks() -> str:
    return render_template("public/thanks.html")


@blueprint.route("/confirm/<token>", methods=["GET", "POST"])
def confirm(token: str) -> str | tuple[str, int]:
    reader_id, newsletter_ids, issued_at = tokens.read_confirm(token, current_app.config["NEWSLETTER_CONFIRM_MAX_AGE"])
    form = ConfirmForm()
    if form.validate_on_submit():
        try:
            result = subscriptions.confirm(
                db.session, reader_id, newsletter_ids, issued_at=issued_at,
                source=source("email-link"), config=current_app.config,
            )
        except subscriptions.UnknownReader:
            raise tokens.InvalidToken("reader") from None
        # Rendered before the commit, which would expire every object the page shows.
        page = render_template("public/confirmed.html", result=result)
        db.session.commit()
        return page
    # GET must not confirm: mail scanners prefetch links.
    try:
        preview = subscriptions.preview_confirmation(db.session, reader_id, newsletter_ids, issued_at=issued_at)
    except subscriptions.UnknownReader:
        raise tokens.InvalidToken("reader") from None
    return render_template("public/confirm.html", form=form, preview=preview)


def _reader_or_gone(reader_id: int):
    try:
        return subscriptions.get_reader(db.session, reader_id)
    except subscriptions.UnknownReader:
        raise tokens.InvalidToken("reader") from None


@blueprint.route("/unsubscribe/<token>", methods=["GET", "POST"])
@csrf.exempt  # the signed token is the credential; RFC 8058 one-click POSTs carry no cookie or CSRF token
def unsubscribe(token: str) -> str | tuple[str, int]:
    reader_id, newsletter_id = tokens.read_unsubscribe(token)
    reader = _reader_or_gone(reader_id)
    newsletter = db.session.get(Newsletter, newsletter_id)
    # Only a POST unsubscribes: link checkers and mail scanners send GET and HEAD.
    if request.method != "POST":
        return render_template("public/unsubscribe.html", reader=reader, newsletter=newsletter, token=token)
    one_click = request.form.get("List-Unsubscribe") == "One-Click"
    everything = request.form.get("scope") == "all"
    try:
        left = subscriptions.unsubscribe(
            db.session, reader_id, None if everything else newsletter_id,
            source=source("one-click" if one_click else "unsubscribe-page"),
        )
    except subscriptions.UnknownReader:
        raise tokens.InvalidToken("reader") from None
    page = render_template("public/unsubscribed.html", left=left, newsletter=newsletter, everything=everything,
                           preferences_token=tokens.preferences_token(reader_id))
    db.session.commit()
    return page


@blueprint.route("/preferences/<token>", methods=["GET", "POST"])
def preferences(token: str) -> str | tuple[str, int]:
    reader_id = tokens.read_preferences(token)
    reader = _reader_or_gone(reader_id)
    form = PreferencesForm()
    saved = None
    if form.validate_on_submit():
        saved = subscriptions.set_preferences(db.session, reader_id, form.newsletters.data or [],
                                              source=source("preferences"))
        db.session.commit()
    pairs = subscriptions.subscriptions_of(db.session, reader.id)
    return render_template("public/preferences.html", form=form, pairs=pairs, reader=reader, saved=saved)
