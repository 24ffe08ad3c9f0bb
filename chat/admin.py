"""Admin pages: departments, tags, quick replies, agents and the live cache panel, behind one gate."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from flask import Blueprint, Response, abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from . import catalog, observability, reads
from .errors import DomainError
from .extensions import db
from .models import User

bp = Blueprint("admin", __name__, url_prefix="/admin")


@bp.before_request
@login_required
def require_admin():
    """The one gate of every admin URL: signed out, the sign-in page (htmx: a 401 that sends the
    whole page there, see auth.py); signed in as an agent, 403."""
    if not current_user.is_admin:
        abort(403)


@dataclass(frozen=True)
class Section:
    """A list of simple records with an inline form: departments, tags, quick replies."""

    name: str
    title: str
    fields: tuple[tuple[str, str, str], ...]  # (form field, label, input type)
    rows: Callable[[], list[dict]]
    save: Callable[..., object]
    delete: Callable[[int], None]


SECTIONS = {
    "departments": Section(
        "departments", "Departments", (("name", "Name", "text"), ("color", "Colour", "color")),
        reads.departments, catalog.save_department, catalog.delete_department,
    ),
    "tags": Section(
        "tags", "Tags", (("name", "Name", "text"), ("color", "Colour", "color")),
        reads.tags, catalog.save_tag, catalog.delete_tag,
    ),
    "quick-replies": Section(
        "quick-replies", "Quick replies", (("shortcut", "Shortcut", "text"), ("body", "Text", "textarea")),
        reads.quick_replies, catalog.save_quick_reply, catalog.delete_quick_reply,
    ),
}


def _section(name: str) -> Section:
    if name not in SECTIONS:
        abort(404)
    return SECTIONS[name]


@bp.get("/")
def home():
    return redirect(url_for("admin.section", name="departments"))


@bp.get("/<name>")
def section(name: str):
    sec = _section(name)
    return render_template("admin/section.html", section=sec, rows=sec.rows(), form={}, error=None)


@bp.post("/<name>")
@bp.post("/<name>/<int:item_id>")
def save(name: str, item_id: int | None = None):
    sec = _section(name)
    values = {field: request.form.get(field, "") for field, _, _ in sec.fields}
    try:
        sec.save(**values, item_id=item_id)
    except DomainError as exc:
        db.session.rollback()
        return render_template("admin/section.html", section=sec, rows=sec.rows(), form=values,
                               error=exc.message, editing=item_id), exc.status
    flash(f"Saved {values[sec.fields[0][0]]}.", "success")
    return redirect(url_for("admin.section", name=name))


@bp.post("/<name>/<int:item_id>/delete")
def delete(name: str, item_id: int):
    sec = _section(name)
    try:
        sec.delete(item_id)
    except DomainError as exc:
        abort(exc.status)
    flash("Deleted.", "success")
    return redirect(url_for("admin.section", name=name))


@bp.get("/agents")
def agents():
    return render_template("admin/agents.html", agents=reads.agents(),
                           departments=reads.departments(), form={}, error=None)


@bp.route("/agents/<int:agent_id>", methods=["GET", "POST"])
@bp.post("/agents/new")
def agent(agent_id: int | None = None):
    existing = db.session.get(User, agent_id) if agent_id else None
    if agent_id and existing is None:
        abort(404)
    if request.method == "GET":
        form = {"email": existing.email, "name": existing.name, "role": existing.role,
                "active": existing.active, "department_ids": existing.department_ids}
        return render_template("admin/agent.html", agent=existing, departments=reads.departments(),
                               form=form, error=None)
    form = {
        "email": request.form.get("email", ""),
        "name": request.form.get("name", ""),
        "role": request.form.get("role", "agent"),
        "active": request.form.get("active") == "on" if agent_id else True,
        "department_ids": request.form.getlist("department_ids", type=int),
    }
    try:
        catalog.save_agent(password=request.form.get("password") or None, agent_id=agent_id, **form)
    except DomainError as exc:
        db.session.rollback()
        template = "admin/agent.html" if agent_id else "admin/agents.html"
        return render_template(template, agent=existing, agents=reads.agents(),
                               departments=reads.departments(), form=form, error=exc.message), exc.status
    flash(f"Saved {form['name']}.", "success")
    return redirect(url_for("admin.agents"))


@bp.get("/cache")
def cache():
    return _no_store(render_template("admin/cache.html", backend=observability.backend_info(),
                                     **observability.panel_context()))


@bp.get("/cache/panel")
def cache_panel():
    """The numbers and the chart alone: what the page's htmx poll swaps in every two seconds."""
    return _no_store(render_template("admin/_cache_panel.html", **observability.panel_context()))


def _no_store(body: str) -> Response:
    response = make_response(body)
    response.headers["Cache-Control"] = "no-store"
    return response
