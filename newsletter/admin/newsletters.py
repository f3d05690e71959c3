"""Admin views of newsletters: list, create, edit, archive. Viewers see them read-only."""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response

from .. import catalog, stats
from ..authz import admin_view
from ..extensions import db
from ..models import Newsletter
from . import blueprint
from .forms import NewNewsletterForm, NewsletterForm


def _newsletter(slug: str) -> Newsletter:
    try:
        return catalog.get_newsletter(db.session, slug)
    except catalog.UnknownNewsletter as error:
        raise NotFound(str(error)) from None


def _show_problem(form: NewsletterForm, error: catalog.CatalogError) -> None:
    if error.field and error.field in form:
        form[error.field].errors = [*form[error.field].errors, str(error)]
    else:
        form.form_errors.append(str(error))


@blueprint.get("/newsletters")
@admin_view()
def newsletters() -> str:
    return render_template("admin/newsletters.html", counts=stats.newsletter_counts(db.session))


@blueprint.route("/newsletters/new", methods=["GET", "POST"])
@admin_view(change=True)
def new_newsletter() -> Response | str | tuple[str, int]:
    form = NewNewsletterForm(data={"send_welcome": True})
    if form.validate_on_submit():
        try:
            newsletter = catalog.add_newsletter(
                db.session, (form.slug.data or "").strip(), name=form.name.data or "",
                description=form.description.data or "", author=form.author.data, sender=form.sender.data,
                send_welcome=form.send_welcome.data, welcome_text=form.welcome_text.data,
            )
        except catalog.CatalogError as error:
            db.session.rollback()
            _show_problem(form, error)
        else:
            db.session.commit()
            flash(f"Added {newsletter.name} ({newsletter.slug}).")
            return redirect(url_for("admin.newsletter", slug=newsletter.slug), code=303)
    return render_template("admin/newsletter_new.html", form=form), 422 if form.errors else 200


@blueprint.get("/newsletters/<slug>")
@admin_view()
def newsletter(slug: str) -> str:
    item = _newsletter(slug)
    return render_template("admin/newsletter.html", newsletter=item, form=NewsletterForm(obj=item))


@blueprint.post("/newsletters/<slug>")
@admin_view(change=True)
def edit_newsletter(slug: str) -> Response | tuple[str, int]:
    item = _newsletter(slug)
    form = NewsletterForm()
    if form.validate_on_submit():
        try:
            changed = catalog.edit_newsletter(
                item, name=form.name.data or "", description=form.description.data or "",
                author=form.author.data or "", sender=form.sender.data or "", send_welcome=form.send_welcome.data,
                welcome_text=form.welcome_text.data or "",
            )
        except catalog.CatalogError as error:
            _show_problem(form, error)
        else:
            db.session.commit()
            flash(f"Saved {item.name}: changed {', '.join(changed)}." if changed else "Nothing to change.")
            return redirect(url_for("admin.newsletter", slug=item.slug), code=303)
    return render_template("admin/newsletter.html", newsletter=item, form=form), 422


@blueprint.post("/newsletters/<slug>/archive")
@admin_view(change=True)
def archive_newsletter(slug: str) -> Response:
    item = _newsletter(slug)
    if catalog.archive(item):
        db.session.commit()
        flash(f"Archived {item.name}: it takes no new signups. Its readers and history stay.")
    else:
        flash(f"{item.name} was archived already.")
    return redirect(url_for("admin.newsletter", slug=item.slug), code=303)


@blueprint.post("/newsletters/<slug>/unarchive")
@admin_view(change=True)
def unarchive_newsletter(slug: str) -> Response:
    item = _newsletter(slug)
    if catalog.unarchive(item):
        db.session.commit()
        flash(f"{item.name} is active again and takes signups.")
    else:
        flash(f"{item.name} was active already.")
    return redirect(url_for("admin.newsletter", slug=item.slug), code=303)
