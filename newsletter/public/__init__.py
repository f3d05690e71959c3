"""Hosted pages: signup, confirmation, unsubscribe and preferences."""

from flask import Blueprint

blueprint = Blueprint("public", __name__)

from . import routes  # noqa: E402,F401  (routes attach themselves to the blueprint)
