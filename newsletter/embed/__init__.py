"""Forms embedded on other sites' pages: the iframe form, embed.js and the snippet gallery."""

from flask import Blueprint

blueprint = Blueprint("embed", __name__)

from . import routes  # noqa: E402,F401
