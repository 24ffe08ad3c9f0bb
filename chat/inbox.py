"""The agent's inbox: the page, its list and count fragments, the conversation pane and the
actions taken in it.

Fragments are declared in chat/fragments.py and served by fragments.serve; actions call the
domain and answer with the refreshed pane.
"""
from __future__ import annotations

from flask import Blueprint, abort, flash, make_response, redirect, render_template, request, url_for
from flask_login import current_user, login_required
from sqlalchemy.exc import InterfaceError, OperationalError

from . import delivery, domain, fragments, reads, uploads
from .errors import DomainError, NotFound
from .extensions import db
from .fragments import CONVERSATION_LIST, CONVERSATION_PANE, MENTIONS, MESSAGES, TAB_COUNTS
from .visibility import can_see_summary
from .web import is_fragment_request

bp = Blueprint("inbox", __name__)


@bp.before_request
@login_required
def require_login():
    """Every inbox URL needs a signed-in agent."""


def _page_context(args: dict, from_snapshot: bool = False) -> dict:
    """The inbox page around its fragments: tabs with counts, filters, the list."""
    return {
        **fragments.context(CONVERSATION_LIST, current_user, args, from_snapshot),
        **fragments.context(TAB_COUNTS, current_user, args, from_snapshot),
        "args": args,
        "departments": reads.departments(),
        "labels": reads.tags(),
    }


def _pane_args(conversation_id: int) -> dict:
    """The pane of a conversation; a refresh names the oldest message loaded (?since=<id>)."""
    return {"conversation_id": conversation_id, "since": request.args.get("since", type=int)}


def _visible_summary(conversation_id: int) -> dict:
    summary = fragments.conversation(conversation_id)
    if not can_see_summary(current_user, summary):
        abort(404)
    return summary


def _pane_context(conversation_id: int, error: str | None = None, from_snapshot: bool = False) -> dict:
    _visible_summary(conversation_id)
    found = fragments.context(CONVERSATION_PANE, current_user, _pane_args(conversation_id), from_snapshot)
    return found if from_snapshot else {**found, "error": error}


@bp.get("/")
def home():
    return redirect(url_for("inbox.index"))


@bp.get("/inbox")
def index():
    args = fragments.list_args_from_request()
    return render_template("inbox/index.html", **_page_context(args, fragments.browser_has_snapshots()),
                           conversation=None)


@bp.get("/inbox/list")
def conversation_list():
    """The list fragment; with a cursor, just the next rows for infinite scroll."""
    return fragments.serve(CONVERSATION_LIST, fragments.list_args_from_request(cursor=True))


@bp.get("/inbox/counts")
def counts():
    return fragments.serve(TAB_COUNTS, fragments.list_args_from_request())


@bp.get("/conversations/<int:conversation_id>")
def conversation(conversation_id: int):
    """The full inbox page with this conversation open, or just its pane for htmx."""
    domain.mark_read_on_open(current_user, _visible_summary(conversation_id))
    if is_fragment_request():
        return fragments.serve(CONVERSATION_PANE, _pane_args(conversation_id))
    from_snapshot = fragments.browser_has_snapshots()
    return render_template("inbox/index.html", **{
        **_page_context(fragments.list_args_from_request(), from_snapshot),
        **_pane_context(conversation_id, from_snapshot=from_snapshot),
    })


@bp.get("/conversations/<int:conversation_id>/messages")
def messages(conversation_id: int):
    """The messages fragment; with ?before=<id>, the older page that "load older" prepends."""
    return fragments.serve(MESSAGES, fragments.messages_args(conversation_id, request.args.get("before", type=int),
                                                             request.args.get("since", type=int)))


def _answer_action(conversation_id: int, action, done: str = "Done.", notice=lambda: None):
    """Run a domain action, then answer with the refreshed pane (or its error); notice() says
    what the agent should know of an action that worked (a note's mentions nobody was told of)."""
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
        page = _page_context(fragments.list_args_from_request())
        return render_template("inbox/index.html", **{**page, **pane}), exc.status
    if not can_see_summary(current_user, fragments.conversation(conversation_id)):
        # Handed to someone else: this agent may no longer see it.
        if is_fragment_request():
            return render_template("inbox/_pane_empty.html", notice=done)
        flash(done, "success")
        return redirect(url_for("inbox.index"))
    if is_fragment_request():
        return render_template("inbox/_pane.html", **_pane_context(conversation_id), notice=notice())
    if notice():
        flash(notice(), "info")
    return redirect(url_for("inbox.conversation", conversation_id=conversation_id))


@bp.post("/conversations/<int:conversation_id>/messages")
def reply(conversation_id: int):
    """Send a reply, or with private=1 (the pane's "Private note" switch) store a note: 201 with
    the pane; a retry with the same idempotency key (form field or Idempotency-Key header) stores
    nothing and answers 200 with the same pane."""
    key = request.form.get("idempotency_key", request.headers.get("Idempotency-Key"))
    private = request.form.get("private", "") not in ("", "0")  # anything else: a note, never sent
    sent = {}

    def action():
        with uploads.stored(request.files.getlist("file")) as files:
            sent["it"] = domain.send_message(conversation_id, current_user, request.form.get("body", ""), key,
                                             private, files.files)
            files.keep_if(sent["it"].created)

    response = make_response(_answer_action(conversation_id, action, notice=lambda: _not_told(sent.get("it"))))
    if "it" in sent and sent["it"].created and response.status_code == 200:
        response.status_code = 201
    return response


def _not_told(sent) -> str | None:
    """What the pane says of a note's mentions of agents who may not see the conversation."""
    if sent is None or not sent.not_notified:
        return None
    return f"Not told of this note (they cannot see this conversation): {', '.join(sent.not_notified)}."


@bp.get("/inbox/mentions")
def mentions():
    """The topbar's mentions of the signed-in agent (fragment)."""
    return fragments.serve(MENTIONS, {})


@bp.post("/inbox/mentions/seen")
def mentions_seen():
    """"Mark all read": every mention of this agent is seen; answers with the refreshed fragment
    (or, without htmx, goes back to the page it was pressed on)."""
    domain.mark_mentions_seen(current_user)
    if is_fragment_request():
        return render_template(MENTIONS.template, **fragments.context(MENTIONS, current_user, {}))
    target = request.referrer if request.referrer and request.referrer.startswith(request.host_url) else None
    return redirect(target or url_for("inbox.index"))


@bp.app_context_processor
def topbar_mentions():
    """base.html's topbar shows the signed-in agent's mentions: read only when a page renders it."""
    def read() -> dict | None:
        if not current_user.is_authenticated:
            return None
        try:
            return fragments.context(MENTIONS, current_user, {})
        except (OperationalError, InterfaceError):
            # The database is away (this may be its 503 page): the page goes without them.
            try:
                db.session.rollback()
            except Exception:  # noqa: BLE001 - the connection is gone; the pool replaces it
                pass
            return None

    return {"topbar_mentions": read}


@bp.post("/conversations/<int:conversation_id>/messages/<int:message_id>/retry")
def retry(conversation_id: int, message_id: int):
    """Retry on a failed reply: sends it again, then the refreshed pane."""
    return _answer_action(conversation_id, lambda: delivery.retry(message_id, current_user, conversation_id),
                          done="Sending it again.")


@bp.post("/conversations/<int:conversation_id>/accept")
def accept(conversation_id: int):
    return _answer_action(conversation_id, lambda: domain.accept_conversation(conversation_id, current_user))


@bp.post("/conversations/<int:conversation_id>/close")
def close(conversation_id: int):
    return _answer_action(conversation_id, lambda: domain.close_conversation(conversation_id, current_user))


@bp.post("/conversations/<int:conversation_id>/transfer")
def transfer(conversation_id: int):
    to_user = request.form.get("user_id", type=int)
    to_department = request.form.get("department_id", type=int)
    return _answer_action(
        conversation_id,
        lambda: domain.transfer_conversation(conversation_id, current_user, to_user, to_department),
        done="Conversation transferred.",
    )


@bp.post("/conversations/<int:conversation_id>/labels")
def add_label(conversation_id: int):
    return _answer_action(conversation_id, lambda: domain.add_label(conversation_id, current_user, request.form.get("label")),
                          done="Label added.")


@bp.post("/conversations/<int:conversation_id>/labels/remove")
def remove_label(conversation_id: int):
    return _answer_action(conversation_id,
                          lambda: domain.remove_label(conversation_id, current_user, request.form.get("label")),
                          done="Label removed.")
