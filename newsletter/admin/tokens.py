"""Admin views of API tokens: list, create (the secret shown once), revoke. Admins only."""

from __future__ import annotations

from flask import flash, redirect, render_template, url_for
from flask_login import current_user
from flask_wtf import FlaskForm
from sqlalchemy import select
from werkzeug.exceptions import NotFound
from werkzeug.wrappers import Response
from wtforms import RadioField, SelectChoice, StringField
from wtforms.validators import InputRequired, Length

from .. import api_tokens
from ..authz import admin_view
from ..extensions import db
from ..models import ApiToken
from . import blueprint
from .forms import ActionForm


class TokenForm(FlaskForm):
    name = StringField("Name", validators=[InputRequired("Say who or what will use the token."), Length(max=200)],
                       description="Who or what uses it, e.g. “CRM sync” — to tell tokens apart later.")
    role = RadioField("Role", choices=[SelectChoice("viewer", "viewer — read and export only"),
                                       SelectChoice("admin", "admin — also unsubscribe and erase readers")],
                      default="viewer", validators=[InputRequired("Choose a role.")])


def _tokens() -> list[ApiToken]:
    return list(db.session.scalars(select(ApiToken).order_by(ApiToken.revoked_at.is_not(None), ApiToken.id.desc())))


@blueprint.get("/tokens")
@admin_view(change=True)
def tokens() -> str:
    return render_template("admin/tokens.html", tokens=_tokens(), form=TokenForm(), action_form=ActionForm())


@blueprint.post("/tokens")
@admin_view(change=True)
def create_token() -> Response | tuple[str, int]:
    form = TokenForm()
    if not form.validate_on_submit():
        return render_template("admin/tokens.html", tokens=_tokens(), form=form, action_form=ActionForm()), 422
    try:
        token, secret = api_tokens.create_token(db.session, form.name.data, form.role.data,
                                                created_by_id=current_user.id)
    except ValueError as error:
        form.name.errors = [str(error)]
        return render_template("admin/tokens.html", tokens=_tokens(), form=form, action_form=ActionForm()), 422
    page = render_template("admin/token_created.html", token=token, secret=secret)
    db.session.commit()
    # The secret is in this one answer and nowhere else: no caching, no redirect carrying it.
    response = Response(page, status=201, mimetype="text/html")
    response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.post("/tokens/<id:token_id>/revoke")
@admin_view(change=True)
def revoke_token(token_id: int) -> Response:
    ActionForm().validate_on_submit()  # the CSRF check (CSRFProtect) already ran; nothing else to read
    token = api_tokens.revoke(db.session, token_id)
    if token is None:
        raise NotFound(f"There is no API token number {token_id}.")
    db.session.commit()
    flash(f"Revoked the token “{token.name}” ({token.prefix}…): it no longer works.")
    return redirect(url_for("admin.tokens"), code=303)
