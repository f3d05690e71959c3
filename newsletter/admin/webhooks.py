"""Admin views of webhook endpoints: list with their state, create and rotate (the secret shown once),
edit, delete, and each endpoint's delivery log with "send again". Viewers may look; admins change."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from flask import current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response
from wtforms import BooleanField, SelectMultipleField, StringField
from wtforms.validators import Length
from wtforms.widgets import CheckboxInput, ListWidget

from .. import webhooks
from ..webhook_sender import span
from ..authz import admin_view
from ..extensions import db
from ..models import WebhookEndpoint, utcnow
from ..webhook_urls import MAX_URL_LENGTH, masked_url
from . import blueprint
from .forms import ActionForm


class CheckboxesField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class EndpointForm(FlaskForm):
    url = StringField("URL", validators=[Length(max=MAX_URL_LENGTH + 100)],
                      description="Where the events are POSTed, e.g. https://crm.example.org/hooks/newsletter.",
                      render_kw={"required": True})
    description = StringField("Description", validators=[Length(max=webhooks.MAX_DESCRIPTION)],
                              description="What receives them, to tell endpoints apart.")
    event_types = CheckboxesField("Events", validate_choice=False,
                                  description="Tick none to be sent every event, new types included.")
    active = BooleanField("Active: send events to it", default=True)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.event_types.choices = [(name, name) for name in webhooks.event_type_names()]

    def fields_given(self) -> dict[str, Any]:
        return {"url": self.url.data or "", "description": self.description.data or None,
                "event_types": list(self.event_types.data or []), "active": bool(self.active.data)}


def _list_page(form: EndpointForm) -> str:
    retry_for = span(timedelta(seconds=current_app.config["NEWSLETTER_WEBHOOK_RETRY_FOR"]))
    return render_template("admin/webhooks.html", endpoints=webhooks.endpoints(db.session), form=form,
                           retry_for=retry_for,
                           failing=webhooks.failing_counts(db.session), waiting=webhooks.waiting_counts(db.session))


def _endpoint(endpoint_id: int) -> WebhookEndpoint:
    endpoint = db.session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None:
        raise NotFound(f"There is no webhook endpoint number {endpoint_id}.")
    return endpoint


def _apply_errors(form: EndpointForm, error: webhooks.EndpointErrors) -> None:
    for name, messages in error.errors.items():
        field = getattr(form, name, None)
        if field is not None:
            field.errors = list(messages)


@blueprint.app_template_global()
def endpoint_url(endpoint: WebhookEndpoint) -> str:
    """The endpoint's URL as the signed-in account may see it: in full for admins, masked for viewers (a
    receiver's key is often in it)."""
    return endpoint.url if current_user.can_change else masked_url(endpoint.url)


# The endpoint whose secret the next GET of its secret page shows, once: a refresh of the POST's answer
# is that GET, never a second endpoint or rotation. Only the id is in the session cookie, not the secret.
SHOW_SECRET = "webhook_secret_for"


def _show_secret_once(endpoint: WebhookEndpoint, rotated: bool) -> Response:
    db.session.commit()
    session[SHOW_SECRET] = {"id": endpoint.id, "rotated": rotated}
    return redirect(url_for("admin.webhook_secret", endpoint_id=endpoint.id), code=303)


@blueprint.get("/webhooks/<id:endpoint_id>/secret")
@admin_view(change=True)
def webhook_secret(endpoint_id: int) -> Response:
    endpoint = _endpoint(endpoint_id)
    shown = session.pop(SHOW_SECRET, None)
    if not isinstance(shown, dict) or shown.get("id") != endpoint.id:
        flash("The secret is shown once, just after it is made. If it was lost, make a new one.")
        return redirect(url_for("admin.webhook_page", endpoint_id=endpoint_id), code=303)
    rotated = bool(shown.get("rotated"))
    page = render_template("admin/webhook_secret.html", endpoint=endpoint, secret=endpoint.secret, rotated=rotated,
                           overlap_until=endpoint.previous_secret_expires_at if rotated else None)
    # The secret is in this one answer and nowhere else: no caching.
    response = Response(page, status=200, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.get("/webhooks")
@admin_view()
def webhooks_page() -> str:
    return _list_page(EndpointForm(formdata=None))


@blueprint.post("/webhooks")
@admin_view(change=True)
def create_webhook() -> Response | tuple[str, int]:
    form = EndpointForm()
    if not form.validate_on_submit():
        return _list_page(form), 422
    try:
        endpoint, _ = webhooks.create_endpoint(db.session, current_app.config, **form.fields_given())
    except webhooks.EndpointErrors as error:
        db.session.rollback()
        _apply_errors(form, error)
        return _list_page(form), 422
    return _show_secret_once(endpoint, rotated=False)


def _edit_page(endpoint: WebhookEndpoint, form: EndpointForm) -> str:
    return render_template("admin/webhook.html", endpoint=endpoint, form=form, action_form=ActionForm(),
                           failing=webhooks.failing_counts(db.session).get(endpoint.id, 0),
                           waiting=webhooks.waiting_counts(db.session).get(endpoint.id, 0),
                           rotating=len(webhooks.signing_secrets(endpoint)) > 1,
                           overlap=span(timedelta(seconds=current_app.config["NEWSLETTER_WEBHOOK_SECRET_OVERLAP"])))


@blueprint.get("/webhooks/<id:endpoint_id>")
@admin_view()
def webhook_page(endpoint_id: int) -> str:
    endpoint = _endpoint(endpoint_id)
    form = EndpointForm(formdata=None, obj=endpoint)
    return _edit_page(endpoint, form)


@blueprint.post("/webhooks/<id:endpoint_id>")
@admin_view(change=True)
def edit_webhook(endpoint_id: int) -> Response | tuple[str, int]:
    endpoint = _endpoint(endpoint_id)
    form = EndpointForm()
    if not form.validate_on_submit():
        return _edit_page(endpoint, form), 422
    try:
        webhooks.update_endpoint(db.session, current_app.config, endpoint, form.fields_given())
    except webhooks.EndpointErrors as error:
        db.session.rollback()
        _apply_errors(form, error)
        return _edit_page(_endpoint(endpoint_id), form), 422
    db.session.commit()
    flash(f"Saved the endpoint {endpoint.url}.")
    return redirect(url_for("admin.webhook_page", endpoint_id=endpoint_id), code=303)


@blueprint.post("/webhooks/<id:endpoint_id>/delete")
@admin_view(change=True)
def delete_webhook(endpoint_id: int) -> Response:
    ActionForm().validate_on_submit()  # the CSRF check (CSRFProtect) already ran; nothing else to read
    endpoint = webhooks.delete_endpoint(db.session, endpoint_id)
    if endpoint is None:
        raise NotFound(f"There is no webhook endpoint number {endpoint_id}.")
    url = endpoint.url
    db.session.commit()
    flash(f"Deleted the endpoint {url}, with its waiting deliveries and its log.")
    return redirect(url_for("admin.webhooks_page"), code=303)


@blueprint.post("/webhooks/<id:endpoint_id>/rotate")
@admin_view(change=True)
def rotate_webhook_secret(endpoint_id: int) -> Response:
    ActionForm().validate_on_submit()
    endpoint = _endpoint(endpoint_id)
    try:
        webhooks.rotate_secret(db.session, current_app.config, endpoint)
    except webhooks.EndpointErrors as error:
        db.session.rollback()
        flash(str(error))
        return redirect(url_for("admin.webhook_page", endpoint_id=endpoint_id), code=303)
    return _show_secret_once(endpoint, rotated=True)


@blueprint.get("/webhooks/<id:endpoint_id>/deliveries")
@admin_view()
def webhook_deliveries(endpoint_id: int) -> str:
    endpoint = _endpoint(endpoint_id)
    raw = request.args.get("page", "1")
    number = int(raw) if raw.isascii() and raw.isdigit() and 0 < len(raw) < 8 else 1
    page = webhooks.deliveries_page(db.session, endpoint.id, number)
    return render_template("admin/webhook_deliveries.html", endpoint=endpoint, results=page,
                           action_form=ActionForm(), now=utcnow())


@blueprint.post("/webhooks/<id:endpoint_id>/deliveries/<id:attempt_id>/send-again")
@admin_view(change=True)
def send_webhook_again(endpoint_id: int, attempt_id: int) -> Response:
    ActionForm().validate_on_submit()
    endpoint = _endpoint(endpoint_id)
    row_id = webhooks.send_again(db.session, endpoint.id, attempt_id)
    if row_id is None:
        raise NotFound(f"The endpoint has no delivery number {attempt_id}.")
    db.session.commit()
    later = "" if endpoint.active else " It leaves once the endpoint is turned on again."
    flash(f"Queued the event again for {endpoint.url}: the worker sends it within seconds.{later}")
    return redirect(url_for("admin.webhook_deliveries", endpoint_id=endpoint_id,
                            page=request.args.get("page", "1")), code=303)
