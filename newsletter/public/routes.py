"""Views of the hosted pages: parse, call the domain, commit, render."""

from __future__ import annotations

import json
from functools import lru_cache
from typing import NamedTuple

from flask import current_app, redirect, render_template, request, url_for
from flask_babel import get_locale
from flask_babel import gettext as _
from sqlalchemy import select
from werkzeug.exceptions import BadRequest, NotFound
from werkzeug.wrappers import Response

from .. import abuse, metrics, origins, preferences_links, privacy, signed_paths, subscriptions, tokens
from ..extensions import csrf, db
from ..models import Newsletter, Reader
from ..provenance import request_source as source
from ..ratelimits import link_request_limits, signup_limits
from . import blueprint
from .forms import NewLinkForm, PreferencesForm, SignupForm
from .intake import Outcome, take_signup


def _active_newsletters() -> list[Newsletter]:
    return list(db.session.scalars(
        select(Newsletter).where(Newsletter.archived_at.is_(None)).order_by(Newsletter.name)
    ))


@blueprint.after_app_request
def _no_referrer_from_signed_links(response: Response) -> Response:
    """Pages whose URL holds a signed link (error pages too) tell the browser not to pass that URL on."""
    # Else the Referer of a form's POST, a followed link or a loaded image carries the key to the reader.
    # By path, not by the route matched: a 404 or 405 under a token page has the token in its URL too.
    if (request.view_args and "token" in request.view_args) or signed_paths.holds_signed_link(request.path):
        response.headers["Referrer-Policy"] = "no-referrer"
    return response


@blueprint.get("/")
def index() -> Response:
    return redirect(url_for("public.subscribe"))


@blueprint.route("/subscribe", methods=["GET", "POST"])
@blueprint.route("/subscribe/<slug>", methods=["GET", "POST"])
@csrf.exempt  # the form checks its own CSRF token, except on a plain form from an allowed site
@signup_limits
def subscribe(slug: str | None = None) -> Response | str | tuple[str, int]:
    """The hosted signup page; its POST also takes plain HTML forms embedded on allowed sites."""
    offered = None
    if slug is not None:
        offered = [n for n in _active_newsletters() if n.slug == slug]
        if not offered:
            raise NotFound(_("There is no newsletter called %(slug)r taking signups.", slug=slug))
    # A plain form on an allowed site can't carry our CSRF token: its Origin stands in for it.
    cross_origin = request.method == "POST" and origins.cross_origin_post()
    form = SignupForm(meta={"csrf": False}) if cross_origin else SignupForm()
    too_fast = False
    if request.method == "GET":
        form.newsletters.data = [slug] if slug else []
        form.return_to.data = request.args.get("return_to", "")
    else:
        return_to = form.return_to.data
        if return_to and origins.safe_return_to(return_to) is None:
            raise BadRequest(_("The form's return_to address is not on a site allowed to embed these forms."))
        outcome = take_signup(form, "embed-form" if cross_origin else "hosted-form", check_fill_time=not cross_origin)
        if outcome in (Outcome.SUBSCRIBED, Outcome.IGNORED):
            # The thank-you page speaks the language the form was sent in.
            return redirect(return_to or url_for("public.thanks", lang=request.values.get("lang") or None), code=303)
        too_fast = outcome is Outcome.TOO_FAST
    # Only now, when the page is drawn: a taken signup (the plain forms' hot path) never needs the list.
    offered = offered if offered is not None else _active_newsletters()
    form.newsletters.choices = [(n.slug, n.name) for n in offered]
    form.form_token.data = abuse.form_token()
    status = 422 if form.errors or too_fast else 200
    return render_template("public/subscribe.html", form=form, offered=offered, single=slug is not None,
                           too_fast=too_fast, wording=subscriptions.consent_wording(offered)), status


@blueprint.get("/thanks")
def thanks() -> str:
    return render_template("public/thanks.html")


@blueprint.route("/confirm/<token>", methods=["GET", "POST"])
@csrf.exempt  # the signed token is the credential: whoever can POST here could as well open the link
def confirm(token: str) -> str | tuple[str, int]:
    reader_id, newsletter_ids, issued_at = tokens.read_confirm(token, current_app.config["NEWSLETTER_CONFIRM_MAX_AGE"])
    if request.method == "POST":  # confirm() itself refuses a reader that is gone
        try:
            result = subscriptions.confirm(
                db.session, reader_id, newsletter_ids, issued_at=issued_at,
                source=source("email-link"), config=current_app.config,
            )
        except subscriptions.UnknownReader:
            raise tokens.InvalidToken("reader") from None
        page = _confirmed_page(result)
        db.session.commit()
        metrics.count("confirmations", "email-link", len(result.confirmed))
        return page
    # GET must not confirm: mail scanners prefetch links.
    _reader_or_gone(reader_id)
    try:
        preview = subscriptions.preview_confirmation(db.session, reader_id, newsletter_ids, issued_at=issued_at)
    except subscriptions.UnknownReader:
        raise tokens.InvalidToken("reader") from None
    return render_template("public/confirm.html", preview=preview)


class _Named(NamedTuple):
    name: str


class _Confirmed(NamedTuple):
    confirmed: tuple[_Named, ...]
    already_confirmed: tuple[_Named, ...]
    lapsed: tuple[_Named, ...]


def _confirmed_page(result: subscriptions.ConfirmResult) -> str:
    """The page after pressing the confirm button.

    It shows nothing but the newsletters' names, so it is rendered once per language and names.
    """
    shown = _Confirmed(*(tuple(_Named(n.name) for n in newsletters)
                         for newsletters in (result.confirmed, result.already_confirmed, result.lapsed)))
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return _render_confirmed(id(app), str(get_locale() or "en"), request.script_root, shown)


@lru_cache(maxsize=256)
def _render_confirmed(app_id: int, locale: str, script_root: str, shown: _Confirmed) -> str:
    # The arguments besides `shown` are what the rendering reads from the app and the request.
    return render_template("public/confirmed.html", result=shown)


def _reader_or_gone(reader_id: int):
    try:
        reader = subscriptions.get_reader(db.session, reader_id)
    except subscriptions.UnknownReader:
        raise tokens.InvalidToken("reader") from None
    if reader.erased_at is not None:
        # Erased on request: the links sent to the address are dead, like links to no one.
        raise tokens.InvalidToken("reader")
    return reader


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
    # No preferences link here: mailbox providers' servers POST the one-click link and see this page.
    page = render_template("public/unsubscribed.html", left=left, newsletter=newsletter, everything=everything)
    db.session.commit()
    metrics.count("unsubscribes", "one-click" if one_click else "unsubscribe-page", len(left))
    return page


def _preferences_reader(token: str) -> Reader:
    """The reader of a preferences (or data download) link; ExpiredToken once it is too old."""
    return _reader_or_gone(tokens.read_preferences(token, current_app.config["NEWSLETTER_PREFERENCES_MAX_AGE"]))


def _expired_preferences_link() -> tuple[str, int]:
    return render_template("public/new_link.html", form=NewLinkForm(), expired=True, sent=False), 410


@blueprint.route("/preferences/<token>", methods=["GET", "POST"])
# The form checks its own CSRF token: over https CSRFProtect also wants a Referer, and no-referrer sends none.
@csrf.exempt
def preferences(token: str) -> tuple[str, int]:
    try:
        reader = _preferences_reader(token)
    except tokens.ExpiredToken:
        return _expired_preferences_link()
    form = PreferencesForm()
    saved = None
    if form.validate_on_submit():
        saved = subscriptions.set_preferences(db.session, reader.id, form.newsletters.data or [],
                                              source=source("preferences"))
        db.session.commit()
        metrics.count("unsubscribes", "preferences", len(saved[1]))
    pairs = subscriptions.subscriptions_of(db.session, reader.id)
    status = 400 if form.errors.get("csrf_token") else 200
    return render_template("public/preferences.html", form=form, pairs=pairs, reader=reader, saved=saved), status


@blueprint.get("/preferences/<token>/data.json")
def my_data(token: str) -> Response | tuple[str, int]:
    """Everything stored about the reader of a preferences link, as a JSON file (the right of access)."""
    try:
        reader = _preferences_reader(token)
    except tokens.ExpiredToken:
        return _expired_preferences_link()
    data = privacy.export_reader(db.session, reader.id, for_reader=True)
    response = Response(json.dumps(data, ensure_ascii=False, indent=2) + "\n", mimetype="application/json")
    response.headers["Content-Disposition"] = 'attachment; filename="my-newsletter-data.json"'
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.route("/preferences/new-link", methods=["GET", "POST"])
@csrf.exempt  # the form checks its own CSRF token; the expired link's page sends no Referer
@link_request_limits
def new_preferences_link() -> str | tuple[str, int]:
    """Ask for a fresh preferences link by address; the answer is the same whoever the address is."""
    form = NewLinkForm()
    if not form.validate_on_submit():
        status = 400 if form.errors.get("csrf_token") else 422 if form.errors else 200
        return render_template("public/new_link.html", form=form, expired=False, sent=False), status
    preferences_links.send_preferences_link(db.session, form.normalized_email, current_app.config)
    db.session.commit()
    return render_template("public/new_link.html", form=form, expired=False, sent=True)
