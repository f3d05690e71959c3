"""The admin area's forms (each carries Flask-WTF's CSRF token)."""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import BooleanField, EmailField, IntegerField, PasswordField, StringField, TextAreaField
from wtforms.validators import EqualTo, InputRequired, Length, NumberRange
from wtforms.widgets import HiddenInput

from ..accounts import MIN_PASSWORD_LENGTH
from ..models import MAX_ID


class LoginForm(FlaskForm):
    email = EmailField("Email address", validators=[InputRequired("Enter your email address."), Length(max=320)])
    password = PasswordField("Password", validators=[InputRequired("Enter your password."), Length(max=1024)])


class PasswordForm(FlaskForm):
    """Change one's own password: the current one, and the new one twice."""

    current = PasswordField("Current password", validators=[InputRequired("Enter your current password."),
                                                            Length(max=1024)])
    new = PasswordField("New password", validators=[
        InputRequired("Enter a new password."),
        Length(min=MIN_PASSWORD_LENGTH, max=1024,
               message=f"The new password must be {MIN_PASSWORD_LENGTH} to 1024 characters long."),
    ], description=f"At least {MIN_PASSWORD_LENGTH} characters.")
    repeat = PasswordField("New password again", validators=[
        InputRequired("Enter the new password again."), EqualTo("new", "The two new passwords differ.")])


class ActionForm(FlaskForm):
    """Only the CSRF token: for buttons that POST an action."""


class NewsletterForm(FlaskForm):
    """Edit a newsletter; the catalog checks the values."""

    name = StringField("Name", validators=[InputRequired("A newsletter needs a name."), Length(max=200)])
    description = TextAreaField("Description", validators=[Length(max=2000)],
                                description="One or two sentences shown on signup forms.")
    author = StringField("Author", validators=[Length(max=200)], description="Optional: who writes it.")
    sender = StringField("Sender", validators=[Length(max=320)],
                         description="Optional From: of its emails, e.g. The Daily <daily@example.org>. "
                                     "Empty: the service's default sender.")
    send_welcome = BooleanField("Send a welcome email when a reader confirms")
    welcome_text = TextAreaField("Welcome email text", validators=[Length(max=20000)],
                                 description="Optional; empty uses the description. Blank lines separate paragraphs.")


class NewNewsletterForm(NewsletterForm):
    """Add a newsletter: its fields and the slug, which can't change afterwards."""

    slug = StringField("Slug", validators=[InputRequired("A newsletter needs a slug."), Length(max=64)],
                       description="Lowercase letters, digits and dashes; used in URLs and embeds. "
                                   "It can't change later.")


class UnsubscribeForm(FlaskForm):
    """Unsubscribe a reader from one newsletter."""

    newsletter_id = IntegerField(widget=HiddenInput(), validators=[InputRequired(), NumberRange(min=1, max=MAX_ID)])
