"""The signup form (hosted page, iframe and plain cross-origin form) and the preferences form."""

from __future__ import annotations

from flask import current_app
from flask_babel import lazy_gettext as _l
from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, SelectMultipleField, StringField, ValidationError, widgets
from wtforms.validators import InputRequired, Length

from .. import addresses
from ..subscriptions import check_name


class NewsletterChoices(SelectMultipleField):
    widget = widgets.ListWidget(prefix_label=False)
    option_widget = widgets.CheckboxInput()


class SignupForm(FlaskForm):
    email = EmailField(_l("Email address"),
                       validators=[InputRequired(_l("Enter your email address.")), Length(max=320)])
    name = StringField(_l("Name (optional)"))
    # The domain names unknown or archived newsletters itself, in the same words as the API.
    newsletters = NewsletterChoices(_l("Newsletters"), validate_choice=False)
    # Provenance and return trip, set by the embedding page or our own templates.
    page_url = HiddenField(validators=[Length(max=2048)])
    form_id = HiddenField(validators=[Length(max=200)])
    return_to = HiddenField(validators=[Length(max=2048)])
    # Signed time the form was shown: sent back too soon, it was not a person.
    form_token = HiddenField()
    # The honeypot (see abuse.HONEYPOT_FIELD): hidden from people and screen readers.
    website = StringField(_l("Leave this field empty"))

    normalized_email: str = ""

    def validate_email(self, field: EmailField) -> None:
        try:
            self.normalized_email = addresses.normalize(
                field.data or "",
                check_deliverability=current_app.config["NEWSLETTER_CHECK_DELIVERABILITY"],
                timeout=current_app.config["NEWSLETTER_DNS_TIMEOUT"],
            )
        except addresses.InvalidAddress as error:
            raise ValidationError(str(error)) from None

    def validate_name(self, field: StringField) -> None:
        try:
            field.data = check_name(field.data)
        except ValueError as error:
            raise ValidationError(str(error)) from None

    def validate_newsletters(self, field: NewsletterChoices) -> None:
        if not field.data:
            raise ValidationError(_l("Choose at least one newsletter."))


class PreferencesForm(FlaskForm):
    newsletters = NewsletterChoices(_l("Newsletters"), validate_choice=False, coerce=int)


class NewLinkForm(FlaskForm):
    """An address to email a fresh preferences link to."""

    email = EmailField(_l("Email address"),
                       validators=[InputRequired(_l("Enter your email address.")), Length(max=320)])

    normalized_email: str = ""

    def validate_email(self, field: EmailField) -> None:
        # Syntax only: whether the address is known must not show, and unknown ones get nothing anyway.
        try:
            self.normalized_email = addresses.normalize(field.data or "")
        except addresses.InvalidAddress as error:
            raise ValidationError(str(error)) from None
