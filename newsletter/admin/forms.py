"""The admin area's forms (each carries Flask-WTF's CSRF token)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField
from wtforms.validators import InputRequired, Length


class LoginForm(FlaskForm):
    email = EmailField("Email address", validators=[InputRequired("Enter your email address."), Length(max=320)])
    password = PasswordField("Password", validators=[InputRequired("Enter your password."), Length(max=1024)])


class ActionForm(FlaskForm):
    """Only the CSRF token: for buttons that POST an action."""
