"""The dashboard: counts per newsletter, a chart of the last 90 days, the pages that bring signups."""

from __future__ import annotations

from flask import render_template, request
from werkzeug.exceptions import NotFound

from .. import catalog, stats
from ..authz import admin_view
from ..extensions import db
from . import blueprint
from .charts import daily_chart


@blueprint.get("/")
@admin_view()
def dashboard() -> str:
    counts = stats.newsletter_counts(db.session)
    slug = request.args.get("newsletter") or None
    chosen = None
    if slug is not None:
        try:
            chosen = catalog.get_newsletter(db.session, slug)
        except catalog.UnknownNewsletter as error:
            raise NotFound(str(error)) from None
    newsletter_id = chosen.id if chosen else None
    activity = stats.daily_activity(db.session, newsletter_id=newsletter_id)
    return render_template(
        "admin/dashboard.html", counts=counts, chosen=chosen, activity=activity,
        chart=daily_chart(activity, with_delivery=chosen is None),
        top_pages=stats.top_pages(db.session, newsletter_id=newsletter_id), days=stats.CHART_DAYS,
    )
