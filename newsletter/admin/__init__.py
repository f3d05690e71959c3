"""The admin area: login, dashboard, newsletters, readers, exports, imports, API tokens, webhooks."""

from flask import Blueprint

blueprint = Blueprint("admin", __name__, url_prefix="/admin")

from . import routes  # noqa: E402,F401
from . import privacy, tokens  # noqa: E402,F401
from . import dashboard, newsletters, readers  # noqa: E402,F401
from . import exports, imports, suppressions  # noqa: E402,F401
from . import webhooks  # noqa: E402,F401
