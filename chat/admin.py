"""Admin pages: departments, tags, quick replies, agents, channels and the live cache panel, behind one gate."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from flask import Blueprint, Response, abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from . import catalog, observability, reads
from .errors import DomainError
from .extensions import db
from .models import CHANNEL_KINDS, WEBHOOK, WHATSAPP, Channel, User

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
        return _agent_page("admin/agent.html", existing, _agent_form(existing))
    form = _agent_form_submitted(new=agent_id is None)
    try:
        catalog.save_agent(password=request.form.get("password") or None, agent_id=agent_id, **form)
    except DomainError as exc:
        db.session.rollback()
        return _agent_page("admin/agent.html" if agent_id else "admin/agents.html", existing, form, exc)
    flash(f"Saved {form['name']}.", "success")
    return redirect(url_for("admin.agents"))


def _agent_form(existing: User) -> dict:
    return {"email": existing.email, "name": existing.name, "role": existing.role,
            "active": existing.active, "department_ids": existing.department_ids}


def _agent_form_submitted(new: bool) -> dict:
    """The agent form's fields as posted (a new agent starts active)."""
    return {
        "email": request.form.get("email", ""),
        "name": request.form.get("name", ""),
        "role": request.form.get("role", "agent"),
        "active": True if new else request.form.get("active") == "on",
        "department_ids": request.form.getlist("department_ids", type=int),
    }


def _agent_page(template: str, existing: User | None, form: dict, error: DomainError | None = None):
    page = render_template(template, agent=existing, agents=reads.agents(), departments=reads.departments(),
                           form=form, error=error.message if error else None)
    return page, error.status if error else 200


# -- channels: secrets go in, never out (the templates get their set-or-not state only) --------
CHANNEL_KIND_TITLES = {WEBHOOK: "Generic webhook", WHATSAPP: "WhatsApp Cloud API"}


@bp.get("/channels")
def channels():
    kind = request.args.get("kind")  # the add form's kind select asks for that kind's fields
    return _channels_page({"kind": kind if kind in CHANNEL_KINDS else WEBHOOK, "active": True, "settings": {}})


@bp.route("/channels/<int:channel_id>", methods=["GET", "POST"])
@bp.post("/channels/new")
def channel(channel_id: int | None = None):
    existing = db.session.get(Channel, channel_id) if channel_id else None
    if channel_id and existing is None:
        abort(404)
    if request.method == "GET":
        return _channel_page(existing, _channel_form(existing.kind, existing.settings or {}, existing.name,
                                                     existing.active, existing.is_default))
    return _save_channel(existing)


def _save_channel(existing: Channel | None):
    """The channel form posted: saved, or the form again with what is wrong."""
    channel_id = existing.id if existing else None
    settings, form = _posted_channel(existing.kind if existing else request.form.get("kind", ""))
    try:
        catalog.save_channel(form["kind"], form["name"], settings, form["active"], form["is_default"],
                             channel_id=channel_id)
    except DomainError as exc:
        db.session.rollback()
        page = _channel_page(existing, form, exc.message) if existing else _channels_page(form, exc.message)
        return page, exc.status
    flash(f"Saved {form['name'].strip()}.", "success")
    return redirect(url_for("admin.channels"))


@bp.post("/channels/<int:channel_id>/delete")
def delete_channel(channel_id: int):
    try:
        catalog.delete_channel(channel_id)
    except DomainError as exc:
        abort(exc.status)
    flash("Deleted the channel.", "success")
    return redirect(url_for("admin.channels"))


def _posted_channel(kind: str) -> tuple[dict, dict]:
    """The settings an admin typed (secrets too, for save_channel) and the form to show again."""
    settings = {field: request.form.get(field, "") for field, _, _ in catalog.CHANNEL_FIELDS.get(kind, ())}
    return settings, _channel_form(kind, settings, request.form.get("name", ""),
                                   request.form.get("active") == "on", request.form.get("is_default") == "on")


def _channel_form(kind: str, settings: dict, name: str, active: bool, is_default: bool) -> dict:
    """What a channel form shows again: everything but the secrets, typed or stored."""
    public = {field: settings.get(field) or "" for field, _, secret in catalog.CHANNEL_FIELDS.get(kind, ())
              if not secret}
    return {"kind": kind, "name": name, "active": active, "is_default": is_default, "settings": public}


def _channel_template_context() -> dict:
    return {"kinds": CHANNEL_KIND_TITLES, "fields": catalog.CHANNEL_FIELDS, "required": catalog.REQUIRED_SETTINGS,
            "environment_names": set(catalog.ENVIRONMENT_CHANNELS.values())}


def _channels_page(form: dict, error: str | None = None) -> str:
    return render_template("admin/channels.html", channels=catalog.channels(), form=form, error=error,
                           secrets_set=None, **_channel_template_context())


def _channel_page(channel: Channel, form: dict, error: str | None = None) -> str:
    stored = dict(channel.settings or {})  # as committed: a failed save was rolled back
    secrets_set = {field: bool(stored.get(field))
                   for field, _, secret in catalog.CHANNEL_FIELDS[channel.kind] if secret}
    shown = {"id": channel.id, "name": channel.name, "kind": channel.kind}  # not its settings
    return render_template("admin/channel.html", channel=shown, form=form, error=error,
                           secrets_set=secrets_set, **_channel_template_context())


@bp.get("/cache")
def cache():
    # The numbers are read where the page shows them, after the top bar's own reads above them.
    return _no_store(render_template("admin/cache.html", backend=observability.backend_info(),
                                     panel_numbers=observability.panel_context))


@bp.get("/cache/panel")
def cache_panel():
    """The numbers and the chart alone: what the page's htmx poll swaps in every two seconds."""
    return _no_store(render_template("admin/_cache_panel.html", panel=observability.panel_context()))


def _no_store(body: str) -> Response:
    response = make_response(body)
    response.headers["Cache-Control"] = "no-store"
    return response
