"""Admin views: parse, call the domain, commit, render."""

from __future__ import annotations

from flask import current_app, flash, redirect, render_template, request, session, url_for
from flask_login import current_user, login_user, logout_user
from werkzeug.wrappers import Response

from .. import accounts
from ..authz import admin_view
from ..extensions import db
from ..login_throttle import REFUSED, login_limits, password_check_limits, refuse_password_check, remember_device
from ..origins import origin_of, own_origin
from . import blueprint
from .forms import ActionForm, LoginForm, PasswordForm


@blueprint.route("/login", methods=["GET", "POST"])
@login_limits
def login() -> Response | str | tuple[str, int]:
    form = LoginForm()
    if not form.validate_on_submit():
        return render_template("admin/login.html", form=form, error=None), 422 if form.errors else 200
    candidate = accounts.find_login(db.session, form.email.data)
    # On SQLite every transaction holds the write lock: end it before the slow password check.
    db.session.commit()
    admin_id = accounts.password_matches(candidate, form.password.data)
    if admin_id is None:
        # One answer for an unknown address, a wrong password and a removed account alike.
        return render_template("admin/login.html", form=form, error="Wrong email or password."), REFUSED
    if current_user.is_authenticated:  # logging in again, over a login of this browser
        accounts.end_login(db.session, current_user.login_key)
    admin = accounts.start_login(db.session, admin_id, accounts.LoginLifetime.from_config(current_app.config))
    db.session.commit()
    session.clear()  # a fresh session at login: nothing from before carries over
    login_user(admin)
    response = redirect(_safe_next(request.args.get("next")) or url_for("admin.dashboard"), code=303)
    remember_device(response, admin)
    return response


def _safe_next(target: str | None) -> str | None:
    # Only back to our own admin pages: no open redirect through ?next=.
    if not target or not target.startswith("/admin") or target.startswith("//"):
        return None
    return target if origin_of(f"{own_origin()}{target}") == own_origin() else None


@blueprint.post("/logout")
@admin_view()
def logout() -> Response:
    ActionForm().validate_on_submit()
    accounts.end_login(db.session, current_user.login_key)
    db.session.commit()
    logout_user()
    session.clear()
    flash("You are logged out.")
    return redirect(url_for("admin.login"), code=303)


@blueprint.route("/password", methods=["GET", "POST"])
@admin_view()
@password_check_limits
def password() -> Response | str | tuple[str, int]:
    form = PasswordForm()
    if form.validate_on_submit():
        admin_id, stored_hash, login_key = current_user.id, current_user.password_hash, current_user.login_key
        # The checks and the new hash are slow: no transaction (on SQLite, the write lock) stays open for them.
        db.session.commit()
        if not accounts.password_matches(accounts.LoginCandidate(admin_id, stored_hash), form.current.data):
            form.current.errors = ["That is not your current password."]
            refuse_password_check()
        else:
            new_hash = accounts.hash_password(form.new.data)
            admin = accounts.set_password_hash(db.session, admin_id, new_hash, keep_login=login_key)
            db.session.commit()
            flash("Your password is changed. Every other login of your account has ended.")
            response = redirect(url_for("admin.dashboard"), code=303)
            # The change voids every known-device cookie of the account: this browser stays known.
            remember_device(response, admin)
            return response
    return render_template("admin/password.html", form=form), 422 if form.errors else 200
