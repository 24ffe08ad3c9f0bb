"""The contacts page: everyone who wrote in, searchable, with infinite scroll."""
from __future__ import annotations

from flask import Blueprint, render_template, request
from flask_login import login_required

from . import reads
from .fragments import clean_query
from .web import is_fragment_request

bp = Blueprint("contacts", __name__)


@bp.get("/contacts")
@login_required
def index():
    """The page, or (for htmx) just the rows of one search and page."""
    q = clean_query(request.args.get("q"))
    page = max(request.args.get("page", 1, type=int), 1)
    template = "contacts/_rows.html" if is_fragment_request() else "contacts/index.html"
    return render_template(template, contacts=reads.contacts(q, page), q=q)
