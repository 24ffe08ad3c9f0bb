"""The agent's inbox: the page, its list and count fragments, and the conversation pane."""
from __future__ import annotations

from flask import Blueprint, abort, flash, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy import select

from . import domain, keys, queries
from .errors import DomainError, NotFound
from .extensions import db
from .models import Conversation, QuickReply
from .visibility import can_see, get_visible_conversation
from .web import is_fragment_request

bp = Blueprint("inbox", __name__)


@bp.before_request
@login_required
def require_login():
    """Every inbox URL needs a signed-in agent."""


def _list_args() -> dict:
    tab = request.args.get("tab", "pending")
    if tab not in queries.TABS:
        tab = "pending"
    department = request.args.get("department", type=int)
    return {"tab": tab, "department_id": department, "q": request.args.get("q", "")[:100]}


def _list_context(args: dict, cursor: str | None = None) -> dict:
    page = queries.list_conversations(current_user, cursor=cursor, **args)
    return {
        "page": page,
        "args": args,
        "list_key": keys.conversation_list(current_user, **args),
        "counts_key": keys.tab_counts(current_user),
    }


def _page_context(args: dict) -> dict:
    return {
        **_list_context(args),
        "counts": queries.tab_counts(current_user),
        "departments": queries.departments(),
    }


@bp.get("/")
def home():
    return redirect(url_for("inbox.index"))


@bp.get("/inbox")
def index():
    return render_template("inbox/index.html", **_page_context(_list_args()), conversation=None)


@bp.get("/inbox/list")
def conversation_list():
    """The list fragment; with a cursor, just the next rows for infinite scroll."""
    args = _list_args()
    cursor = request.args.get("cursor")
    context = _list_context(args, cursor)
    template = "inbox/_rows.html" if cursor else "inbox/_list.html"
    return render_template(template, **context)


@bp.get("/inbox/counts")
def counts():
    return render_template(
        "inbox/_counts.html",
        counts=queries.tab_counts(current_user),
        args=_list_args(),
        counts_key=keys.tab_counts(current_user),
    )


def _pane_context(conversation_id: int, error: str | None = None) -> dict:
    try:
        conversation = get_visible_conversation(current_user, conversation_id)
    except NotFound:
        abort(404)
    return {
        "conversation": queries.conversation_detail(conversation),
        "messages": queries.conversation_messages(conversation_id),
        "messages_key": keys.conversation_messages(conversation_id),
        "pane_key": keys.conversation(conversation_id),
        "quick_replies": [
            {"shortcut": r.shortcut, "body": r.body}
            for r in db.session.scalars(select(QuickReply).order_by(QuickReply.shortcut))
        ],
        "agents": [a for a in queries.agents() if a["active"] and a["id"] != current_user.id],
        "departments": queries.departments(),
        "error": error,
    }


@bp.get("/conversations/<int:conversation_id>")
def conversation(conversation_id: int):
    """The full inbox page with this conversation open, or just its pane for htmx."""
    try:
        get_visible_conversation(current_user, conversation_id)
    except NotFound:
        abort(404)
    domain.mark_read(conversation_id, current_user)
    pane = _pane_context(conversation_id)
    if is_fragment_request():
        return render_template("inbox/_pane.html", **pane)
    return render_template("inbox/index.html", **{**_page_context(_list_args()), **pane})


@bp.get("/conversations/<int:conversation_id>/messages")
def messages(conversation_id: int):
    """The messages fragment; with ?before=<id>, the older page that "load older" prepends."""
    try:
        get_visible_conversation(current_user, conversation_id)
    except NotFound:
        abort(404)
    before = request.args.get("before", type=int)
    page = queries.conversation_messages(conversation_id, before)
    template = "inbox/_older.html" if before else "inbox/_messages.html"
    return render_template(
        template,
        messages=page,
        conversation={"id": conversation_id},
        messages_key=keys.conversation_messages(conversation_id),
    )


def _act(conversation_id: int, action, done: str = "Done."):
    """Run a domain action, then answer with the refreshed pane (or its error)."""
    try:
        action()
    except NotFound:
        abort(404)
    except DomainError as exc:
        conversation = db.session.get(Conversation, conversation_id)
        if conversation is None or not can_see(current_user, conversation):
            # e.g. lost the race to accept it: say why, without showing someone else's conversation
            if is_fragment_request():
                return render_template("inbox/_pane_empty.html", error=exc.message), exc.status
            flash(exc.message, "error")
            return redirect(url_for("inbox.index"))
        pane = _pane_context(conversation_id, exc.message)
        if is_fragment_request():
            return render_template("inbox/_pane.html", **pane), exc.status
        return render_template("inbox/index.html", **{**_page_context(_list_args()), **pane}), exc.status
    conversation = db.session.get(Conversation, conversation_id)
    if conversation is None or not can_see(current_user, conversation):
        # Handed to someone else: this agent may no longer see it.
        if is_fragment_request():
            return render_template("inbox/_pane_empty.html", notice=done)
        flash(done, "success")
        return redirect(url_for("inbox.index"))
    if is_fragment_request():
        return render_template("inbox/_pane.html", **_pane_context(conversation_id))
    return redirect(url_for("inbox.conversation", conversation_id=conversation_id))


@bp.post("/conversations/<int:conversation_id>/messages")
def reply(conversation_id: int):
    body = request.form.get("body", "")
    return _act(conversation_id, lambda: domain.send_reply(conversation_id, current_user, body))


@bp.post("/conversations/<int:conversation_id>/accept")
def accept(conversation_id: int):
    def action():
        domain.accept_conversation(conversation_id, current_user)
        domain.mark_read(conversation_id, current_user)  # the agent is looking at it right now

    return _act(conversation_id, action)


@bp.post("/conversations/<int:conversation_id>/close")
def close(conversation_id: int):
    return _act(conversation_id, lambda: domain.close_conversation(conversation_id, current_user))


@bp.post("/conversations/<int:conversation_id>/transfer")
def transfer(conversation_id: int):
    to_user = request.form.get("user_id", type=int)
    to_department = request.form.get("department_id", type=int)
    return _act(
        conversation_id,
        lambda: domain.transfer_conversation(conversation_id, current_user, to_user, to_department),
        done="Conversation transferred.",
    )


@bp.get("/contacts")
def contacts():
    q = request.args.get("q", "")[:100]
    page = max(request.args.get("page", 1, type=int), 1)
    data = queries.list_contacts(q, page)
    template = "contacts/_rows.html" if is_fragment_request() else "contacts/index.html"
    return render_template(template, contacts=data, q=q)


@bp.get("/dashboard")
def dashboard():
    return render_template("dashboard/index.html", stats=queries.dashboard(current_user))

