"""The admin area: login, dashboard, newsletters, readers, exports, API tokens."""

from flask import Blueprint

blueprint = Blueprint("admin", __name__, url_prefix="/admin")

from . import routes  # noqa: E402,F401
