"""Views of the embeddable forms: parse, call the shared intake, render."""

from __future__ import annotations

from flask import current_app, render_template, request, send_from_directory
from sqlalchemy import select
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response

from .. import abuse, origins, subscriptions
from ..extensions import csrf, db
from ..links import external_url
from ..models import Newsletter
from ..public.forms import SignupForm
from ..public.intake import Outcome, take_signup
from ..ratelimits import signup_limits
from . import blueprint


@blueprint.route("/embed", methods=["GET", "POST"])
@csrf.exempt  # SignupForm checks its CSRF token itself and shows the form again with a message
@signup_limits
def index() -> Response | str | tuple[str, int]:
    """The iframe form for ?newsletters=a,b; without it, the gallery of snippets."""
    slugs = [slug for slug in request.args.get("newsletters", "").split(",") if slug.strip()]
    if not slugs:
        return gallery()
    return frame([slug.strip() for slug in slugs])


@blueprint.route("/embed/<slug>", methods=["GET", "POST"])
@csrf.exempt  # as above
@signup_limits
def single(slug: str) -> Response | str | tuple[str, int]:
    """The iframe form of one newsletter."""
    return frame([slug])


def frame(slugs: list[str]) -> tuple[str, int]:
    try:
        offered = subscriptions.find_newsletters(db.session, slugs)
    except subscriptions.SignupRejected as rejected:
        raise NotFound(" ".join(rejected.errors["newsletters"])) from None
    # Several iframes on one article start several sessions at once on a first visit, and only one
    # session cookie survives: a browser-stated Origin of our own stands in for the session's CSRF token.
    own_page = request.method == "POST" and origins.posted_from_own_page()
    form = SignupForm(meta={"csrf": False}) if own_page else SignupForm()
    form.newsletters.choices = [(n.slug, n.name) for n in offered]
    outcome = None
    if request.method == "GET":
        form.newsletters.data = [offered[0].slug] if len(offered) == 1 else []
        # The article: named by the snippet, else the frame's Referer (often only the site's origin).
        form.page_url.data = (request.args.get("page") or request.referrer or "")[:2048]
        form.form_id.data = request.args.get("form_id", "")[:200]
    else:
        outcome = take_signup(form, "embed-iframe", check_fill_time=True)
    form.form_token.data = abuse.form_token()
    done = outcome in (Outcome.SUBSCRIBED, Outcome.IGNORED)
    status = 422 if outcome in (Outcome.INVALID, Outcome.TOO_FAST) else 200
    page = render_template("embed/frame.html", form=form, offered=offered, done=done,
                           too_fast=outcome is Outcome.TOO_FAST, wording=subscriptions.consent_wording(offered))
    return page, status


def gallery() -> str:
    newsletters = list(db.session.scalars(
        select(Newsletter).where(Newsletter.archived_at.is_(None)).order_by(Newsletter.name)))
    return render_template("embed/gallery.html", newsletters=newsletters, base=external_url("public.index").rstrip("/"),
                           allowed=origins.allowed_origins())


@blueprint.get("/embed.js")
def script() -> Response:
    """The script that turns <div data-newsletter="slug"> into a signup form."""
    response = send_from_directory(current_app.static_folder, "embed.js", mimetype="text/javascript", max_age=3600)
    response.headers["Cross-Origin-Resource-Policy"] = "cross-origin"
    return response
