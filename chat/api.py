"""JSON API for integrations (per-agent bearer tokens) and the inbound webhook."""
from __future__ import annotations

import hmac
import json
from functools import wraps

from flask import Blueprint, current_app, g, jsonify, request

from . import catalog, delivery, domain, fragments, metrics, queries, reads, throttle, uploads
from .channels.webhook import attachments_of
from .errors import DomainError, InvalidInput, NotFound, UnsupportedMediaType
from .responses import json_error
from .visibility import TABS, can_see_summary

bp = Blueprint("api", __name__, url_prefix="/api")


def ok(data, status: int = 200, **extra):
    """The API's one success shape: {"data": ..., "cached": bool} plus paging cursors.

    "cached" is true when every read behind the answer was a cache hit."""
    cached = metrics.request_cache_state() == "HIT"
    return jsonify({"data": data, **extra, "cached": cached}), status


@bp.errorhandler(DomainError)
def domain_error(error: DomainError):
    return json_error(error.message, error.status)


@bp.errorhandler(429)
def too_many_refused_tokens(_error):
    """Throttled after too many wrong bearer tokens from this address (chat/throttle.py)."""
    wait = throttle.retry_after()
    response, status = json_error(f"too many invalid tokens from this address; retry in {wait} s", 429)
    response.headers["Retry-After"] = str(wait)
    return response, status


def _bearer() -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def agent_required(view):
    """Authenticate by the agent's API token; the session cookie is never accepted here."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        token = _bearer()
        if token is None:
            return json_error("missing bearer token", 401)
        user = reads.viewer_by_token(token)
        if user is None or not user.active:
            return json_error("invalid token", 401)
        g.agent = user
        return view(*args, **kwargs)

    return wrapper


def _json_body(*fields: str, optional: bool = False) -> dict:
    """The request's JSON object, holding only `fields`. Whatever the parser refuses (not JSON,
    invalid UTF-8, nested past the recursion limit) is a 400, never a 500; MAX_CONTENT_LENGTH
    makes an oversized body a 413 before it is read. optional: no body at all is {}."""
    if optional and not request.content_length and not request.headers.get("Transfer-Encoding"):
        return {}
    if not request.is_json:
        raise UnsupportedMediaType("Content-Type must be application/json")
    try:
        data = json.loads(request.get_data(cache=False))
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        data = None
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    unknown = sorted(set(data) - set(fields))
    if unknown:
        expected = f"; expected {', '.join(fields)}" if fields else "; this request takes none"
        raise InvalidInput(f"unknown field {unknown[0]!r}{expected}")
    return data


@bp.get("/conversations")
@agent_required
def conversations():
    tab = request.args.get("status", "pending")
    if tab not in TABS:
        return json_error(f"status must be one of {', '.join(TABS)}", 400)
    page = fragments.conversation_list(
        g.agent, tab, request.args.get("department", type=int), request.args.get("q", ""),
        request.args.get("cursor"), label=request.args.get("label"),
    )
    return ok(page["items"], next_cursor=page["next_cursor"])


@bp.post("/conversations/<int:conversation_id>/labels")
@agent_required
def add_label(conversation_id: int):
    """201 with the conversation's labels; 200 when it carried that label already."""
    added = domain.add_label(conversation_id, g.agent, _json_body("label").get("label"))
    return ok(queries.labels_of([conversation_id])[conversation_id], 201 if added else 200)


@bp.delete("/conversations/<int:conversation_id>/labels/<path:name>")
@agent_required
def remove_label(conversation_id: int, name: str):
    domain.remove_label(conversation_id, g.agent, name)
    return ok(queries.labels_of([conversation_id])[conversation_id])


@bp.get("/conversations/<int:conversation_id>/messages")
@agent_required
def messages(conversation_id: int):
    if not can_see_summary(g.agent, fragments.conversation(conversation_id)):
        raise NotFound("conversation not found")
    before = request.args.get("before")
    if before is not None and not before.isdigit():
        return json_error("before must be a message id", 400)
    page = fragments.messages(conversation_id, int(before) if before else None)
    return ok(page["items"], older_cursor=page["older_cursor"])


@bp.post("/conversations/<int:conversation_id>/messages")
@agent_required
def reply(conversation_id: int):
    """201 with the new message; with an Idempotency-Key header a retry gets 200 and the same one.
    With "private": true it is a note (agents only, never sent; its @mentions told), and the answer
    also names the agents it mentions who may not see the conversation ("not_notified")."""
    body, private = _reply_fields()
    with uploads.stored(request.files.getlist("file")) as files:
        sent = domain.send_message(conversation_id, g.agent, body, request.headers.get("Idempotency-Key"), private,
                                   files.files)
        files.keep_if(sent.created)
    extra = {"not_notified": list(sent.not_notified)} if private else {}
    if sent.also:  # one message per file: the first is `data`, the others follow
        extra["parts"] = [queries.message_dict(m) for m in sent.also]
    return ok(queries.message_dict(sent.message), 201 if sent.created else 200, **extra)


def _reply_fields() -> tuple[object, bool]:
    """A reply's body and private flag: JSON {"body", "private"}, or multipart/form-data with
    `body`, `private` (true/1) and `file` fields (read by the caller; chat/uploads.py sets the limit)."""
    if request.mimetype != "multipart/form-data":
        data = _json_body("body", "private")
        private = data.get("private", False)
        if not isinstance(private, bool):
            raise InvalidInput("private must be true or false")
        return data.get("body"), private
    unknown = sorted(set(request.form) - {"body", "private"} | set(request.files) - {"file"})
    if unknown:
        raise InvalidInput(f"unknown fields: {', '.join(unknown)}")
    return request.form.get("body", ""), request.form.get("private", "").lower() in ("true", "1")


@bp.post("/conversations/<int:conversation_id>/accept")
@agent_required
def accept(conversation_id: int):
    _json_body(optional=True)  # takes no fields, but a body sent is checked like any other
    conversation = domain.accept_conversation(conversation_id, g.agent)
    return ok(queries.conversation_summary(conversation))


@bp.post("/conversations/<int:conversation_id>/close")
@agent_required
def close(conversation_id: int):
    _json_body(optional=True)
    conversation = domain.close_conversation(conversation_id, g.agent)
    return ok(queries.conversation_summary(conversation))


@bp.post("/messages/<int:message_id>/retry")
@agent_required
def retry(message_id: int):
    """Send a failed reply again (a new attempt the provider receives); 409 unless it failed."""
    _json_body(optional=True)
    return ok(queries.message_dict(delivery.retry(message_id, g.agent)))


# -- the provider's side: the generic webhook channel (the inbound token) ------------------------
INBOUND_FIELDS = ("phone", "body", "name", "external_id", "avatar_url", "from_me", "channel", "attachments")


def provider_required(view):
    """The messaging provider's bearer token (INBOUND_TOKEN)."""

    @wraps(view)
    def wrapper(*args, **kwargs):
        token = _bearer()
        if token is None:
            return json_error("missing bearer token", 401)
        if not hmac.compare_digest(token.encode(), current_app.config["INBOUND_TOKEN"].encode()):
            return json_error("invalid token", 401)
        return view(*args, **kwargs)

    return wrapper


@bp.post("/inbound")
@provider_required
def inbound():
    """A contact's message from the messaging provider (or, with "from_me": true, the echo of one
    the business sent); retried deliveries are stored once."""
    data = _json_body(*INBOUND_FIELDS)
    channel = catalog.inbound_webhook_channel(data.pop("channel", None))
    files = _inbound_files(data.pop("attachments", None))
    result = domain.receive_inbound(data.pop("phone", None), data.pop("body", None), **data, channel_id=channel,
                                    attachments=files)
    payload = {"conversation_id": result.conversation_id, "message_id": result.message_id}
    return ok(payload, 201 if result.created else 200)


def _inbound_files(value) -> tuple:
    """The generic channel's `attachments` ([{url, content_type, filename, caption}]): fetched later
    by a worker; anything malformed is a 400 naming the field."""
    try:
        return attachments_of(value)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None


@bp.post("/status")
@provider_required
def status():
    """A delivery status for a provider message id; late, repeated and unknown ones answer 200."""
    data = _json_body("id", "status", "reason")
    outcome = delivery.record_status(data.get("id"), data.get("status"), data.get("reason"))
    return ok({"id": data.get("id"), "status": data.get("status"), "outcome": outcome})
