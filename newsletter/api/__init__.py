"""The JSON API under /api/v1."""

from flask import Blueprint

from ..extensions import csrf

blueprint = Blueprint("api", __name__, url_prefix="/api/v1")
# The API takes JSON from other origins' scripts and programs: no cookie, so no CSRF token.
csrf.exempt(blueprint)

from . import routes  # noqa: E402,F401
from . import openapi, v1  # noqa: E402,F401
from . import exports  # noqa: E402,F401
from . import events  # noqa: E402,F401
from . import changes  # noqa: E402,F401
from . import webhooks  # noqa: E402,F401
