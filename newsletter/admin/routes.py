"""Admin views: parse, call the domain, commit, render."""

from __future__ import annotations

from flask import flash, redirect, render_template, request, session, url_for
from flask_login import login_user, logout_user
from werkzeug.wrappers import Response

from .. import accounts
from ..authz import admin_view
from ..extensions import db
from ..origins import origin_of, own_origin
from . import blueprint
from .forms import ActionForm, LoginForm


@blueprint.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int]:
    form = LoginForm()
    error = None
    if form.validate_on_submit():
        try:
            admin = accounts.authenticate(db.session, form.email.data, form.password.data)
        except accounts.LoginRefused as refused:
            db.session.commit()  # keep the failure count
            error = ("Too many wrong passwords: this account is locked for a while. Try again later."
                     if refused.locked_until else "Wrong email or password.")
        else:
            db.session.commit()
            session.clear()  # a fresh session at login: nothing from before carries over
            login_user(admin)
            return redirect(_safe_next(request.args.get("next")) or url_for("admin.dashboard"), code=303)
    status = 401 if error else (422 if form.errors else 200)
    return render_template("admin/login.html", form=form, error=error), status


def _safe_next(target: str | None) -> str | None:
    # Only back to our own admin pages: no open redirect through ?next=.
    if not target or not target.startswith("/admin") or target.startswith("//"):
        return None
    return target if origin_of(f"{own_origin()}{target}") == own_origin() else None


@blueprint.post("/logout")
@admin_view()
def logout() -> Response:
    ActionForm().validate_on_submit()
    logout_user()
    session.clear()
    flash("You are logged out.")
    return redirect(url_for("admin.login"), code=303)
