"""The dashboard: conversations by status, agent and department, over what the viewer sees."""
from __future__ import annotations

from flask import Blueprint, render_template
from flask_login import current_user, login_required

from . import fragments
from .web import is_fragment_request

bp = Blueprint("dashboard", __name__)


@bp.get("/dashboard")
@login_required
def index():
    """The dashboard page, or (for htmx) just its numbers, which refresh live."""
    if is_fragment_request():
        return fragments.serve(fragments.DASHBOARD, {})
    return render_template("dashboard/index.html", **fragments.context(fragments.DASHBOARD, current_user, {}))
