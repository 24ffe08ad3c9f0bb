"""The agent's inbox: the page, its list and count fragments, and the conversation pane.

Every read goes through chat.fragments (the cache); fragments answer 304 to a browser whose
copy is still current. Actions call the domain and re-render from fresh cache reads.
"""
from __future__ import annotations

from flask import Blueprint, abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required

from . import domain, fragments
from .errors import DomainError, NotFound
from .visibility import DIRECTORY, TABS, can_see_summary, list_scope
from .web import cached_fragment, is_fragment_request

bp = Blueprint("inbox", __name__)
MAX_LIST_PAGES = 20  # a refreshed list keeps at most this many pages loaded by scrolling


@bp.before_request
@login_required
def require_login():
    """Every inbox URL needs a signed-in agent."""


def _list_args() -> dict:
    tab = request.args.get("tab", "pending")
    if tab not in TABS:
        tab = "pending"
    department = request.args.get("department", type=int)
    pages = min(max(request.args.get("pages", 1, type=int), 1), MAX_LIST_PAGES)
    return {"tab": tab, "department_id": department, "q": request.args.get("q", "")[:100], "pages": pages}


SNAPSHOT_COOKIE = "inbox_snapshots"


def _meta(key: str, etag_keys: list[str], tags: tuple[str, ...]) -> dict:
    """What a refreshable element carries: its key, the tags that stale it, its current ETag."""
    return {"key": key, "tags": tags, "etag": fragments.etag(current_user, etag_keys, tags)}


def _list_meta(args: dict, cursor: str | None = None) -> dict:
    """The list keeps one identity (key, URL, snapshot) however many pages it shows; its
    ETag is that of the pages shown."""
    key = fragments.conversation_list_key(current_user, cursor=cursor, **args)
    meta = _meta(key, [key], list_scope(current_user, args["tab"]).tags)
    meta["key"] = fragments.conversation_list_key(current_user, cursor=cursor, **{**args, "pages": 1})
    return meta


def _counts_meta() -> dict:
    key = fragments.counts_key(current_user)
    return _meta(key, [key], list_scope(current_user).tags)


def _shell() -> bool:
    """This browser keeps this agent's snapshots (the shim said so): send the page without
    its fragments' contents; the shim paints them from localStorage, or fetches the stale ones."""
    return request.cookies.get(SNAPSHOT_COOKIE) == str(current_user.id)


def _list_context(args: dict, cursor: str | None = None, shell: bool = False,
                  meta: dict | None = None) -> dict:
    return {
        "page": None if shell else fragments.conversation_list(current_user, cursor=cursor, **args),
        "args": args,
        "list_meta": meta or _list_meta(args, cursor),
        "shell": shell,
    }


def _page_context(args: dict, shell: bool = False) -> dict:
    return {
        **_list_context(args, shell=shell),
        "counts_meta": _counts_meta(),
        "counts": None if shell else fragments.tab_counts(current_user),
        "departments": fragments.departments(),
    }


@bp.get("/")
def home():
    return redirect(url_for("inbox.index"))


@bp.get("/inbox")
def index():
    return render_template("inbox/index.html", **_page_context(_list_args(), _shell()), conversation=None)


@bp.get("/inbox/list")
def conversation_list():
    """The list fragment; with a cursor, just the next rows for infinite scroll."""
    args = _list_args()
    cursor = request.args.get("cursor")
    meta = _list_meta(args, cursor)
    template = "inbox/_rows.html" if cursor else "inbox/_list.html"
    return cached_fragment(meta["etag"], lambda: render_template(template, **_list_context(args, cursor, meta=meta)))


@bp.get("/inbox/counts")
def counts():
    meta = _counts_meta()
    return cached_fragment(meta["etag"], lambda: render_template(
        "inbox/_counts.html", counts=fragments.tab_counts(current_user), args=_list_args(), counts_meta=meta))


def _visible_summary(conversation_id: int) -> dict:
    summary = fragments.conversation(conversation_id)
    if not can_see_summary(current_user, summary):
        abort(404)
    return summary


def _pane_keys(conversation_id: int) -> list[str]:
    return [fragments.conversation_key(conversation_id), fragments.messages_key(conversation_id),
            "quick_replies", "agents", "departments"]


def _pane_meta(conversation_id: int) -> dict:
    return _meta(fragments.conversation_key(conversation_id), _pane_keys(conversation_id), (DIRECTORY,))


def _messages_meta(conversation_id: int, before: int | None = None) -> dict:
    key = fragments.messages_key(conversation_id, before)
    return _meta(key, [key], (DIRECTORY,))


def _pane_context(conversation_id: int, error: str | None = None, shell: bool = False,
                  meta: dict | None = None) -> dict:
    pane_meta = meta or _pane_meta(conversation_id)
    if shell:
        return {"conversation": _visible_summary(conversation_id), "pane_meta": pane_meta, "shell": True}
    return {
        "conversation": _visible_summary(conversation_id),
        "messages": fragments.messages(conversation_id),
        "messages_meta": _messages_meta(conversation_id),
        "pane_meta": pane_meta,
        "quick_replies": fragments.quick_replies(),
        "agents": [a for a in fragments.agents() if a["active"] and a["id"] != current_user.id],
        "departments": fragments.departments(),
        "error": error,
    }


@bp.get("/conversations/<int:conversation_id>")
def conversation(conversation_id: int):
    """The full inbox page with this conversation open, or just its pane for htmx."""
    summary = _visible_summary(conversation_id)
    if summary["unread_count"] and summary["user"] and summary["user"]["id"] == current_user.id:
        domain.mark_read(conversation_id, current_user)  # its commit invalidates the summary
    if is_fragment_request():
        meta = _pane_meta(conversation_id)
        return cached_fragment(meta["etag"], lambda: render_template(
            "inbox/_pane.html", **_pane_context(conversation_id, meta=meta)),
            keep_html=False)  # its forms carry this session's CSRF token
    shell = _shell()
    return render_template("inbox/index.html",
                           **{**_page_context(_list_args(), shell), **_pane_context(conversation_id, shell=shell)})


@bp.get("/conversations/<int:conversation_id>/messages")
def messages(conversation_id: int):
    """The messages fragment; with ?before=<id>, the older page that "load older" prepends."""
    _visible_summary(conversation_id)
    before = request.args.get("before", type=int)
    meta = _messages_meta(conversation_id, before)
    template = "inbox/_older.html" if before else "inbox/_messages.html"  # only the latter shows meta
    return cached_fragment(meta["etag"], lambda: render_template(
        template,
        messages=fragments.messages(conversation_id, before),
        conversation={"id": conversation_id},
        messages_meta=meta,
    ))


def _act(conversation_id: int, action, done: str = "Done."):
    """Run a domain action, then answer with the refreshed pane (or its error)."""
    try:
        action()
    except NotFound:
        abort(404)
    except DomainError as exc:
        if not can_see_summary(current_user, fragments.conversation(conversation_id)):
            # e.g. lost the race to accept it: say why, without showing someone else's conversation
            if is_fragment_request():
                return render_template("inbox/_pane_empty.html", error=exc.message), exc.status
            flash(exc.message, "error")
            return redirect(url_for("inbox.index"))
        pane = _pane_context(conversation_id, exc.message)
        if is_fragment_request():
            return render_template("inbox/_pane.html", **pane), exc.status
        return render_template("inbox/index.html", **{**_page_context(_list_args()), **pane}), exc.status
    if not can_see_summary(current_user, fragments.conversation(conversation_id)):
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
    """Send a reply: 201 with the pane; a retry with the same idempotency key (form field
    or Idempotency-Key header) stores nothing and answers 200 with the same pane."""
    body = request.form.get("body", "")
    key = request.form.get("idempotency_key", request.headers.get("Idempotency-Key"))
    sent = {}

    def action():
        sent["created"] = domain.send_reply(conversation_id, current_user, body, key).created

    response = make_response(_act(conversation_id, action))
    if sent.get("created") and response.status_code == 200:
        response.status_code = 201
    return response


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
    data = fragments.contacts(q, page)
    template = "contacts/_rows.html" if is_fragment_request() else "contacts/index.html"
    return render_template(template, contacts=data, q=q)


@bp.get("/dashboard")
def dashboard():
    """The dashboard page, or (for htmx) just its numbers, which refresh live."""
    key = fragments.dashboard_key(current_user)
    meta = _meta(key, [key], list_scope(current_user).tags)
    if is_fragment_request():
        return cached_fragment(meta["etag"], lambda: render_template(
            "dashboard/_stats.html", stats=fragments.dashboard(current_user), dashboard_meta=meta))
    return render_template("dashboard/index.html", stats=fragments.dashboard(current_user), dashboard_meta=meta)
