"""What happens to conversations: receive, accept, reply, close, transfer, mark read.

Each function validates, changes rows and commits. None of them knows about HTTP, the
cache or sockets: what a commit changed is enough for the layers above to react.
State changes are conditional UPDATEs, so two agents racing cannot both win.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from flask import current_app
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from . import delivery
from .errors import Conflict, InvalidInput, NotFound
from .extensions import db
from .models import (
    ACTIVE,
    CLOSED,
    PENDING,
    SENT,
    Contact,
    Conversation,
    Department,
    Message,
    User,
    utcnow,
)
from .visibility import Agent, get_visible_conversation, sees_pending_of

PHONE_RE = re.compile(r"^\+?\d{5,20}$")

# What can be done to a conversation in each state: the domain enforces it, the pane shows
# these buttons and no others.
ALLOWED_ACTIONS: dict[str, tuple[str, ...]] = {
    PENDING: ("accept", "transfer"),
    ACTIVE: ("close", "transfer", "reply"),
    CLOSED: (),
}


@dataclass(frozen=True)
class InboundResult:
    conversation_id: int
    message_id: int
    created: bool


# Control characters other than tab and newlines, DEL, C1 controls and lone surrogates (which
# JSON's "\ud800" can carry). PostgreSQL refuses NUL in text and neither database can encode a
# lone surrogate, so storing them would 500 on one database and store junk on the other.
# CR stays allowed: browsers send a textarea's newlines as CRLF.
CONTROL_CHARACTERS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


def reject_control_characters(value: str, field: str) -> str:
    """The one rule for text anyone sends us (webhook, API, forms): no control characters
    except tab and newlines, the same on every database."""
    if CONTROL_CHARACTERS.search(value):
        raise InvalidInput(f"{field} must not contain control characters")
    return value


def clean_body(body: object) -> str:
    """A message body: a non-blank string no longer than MAX_BODY_LENGTH."""
    if body is not None and not isinstance(body, str):
        raise InvalidInput("message body must be a string")
    if not body or not body.strip():
        raise InvalidInput("message body must not be empty")
    reject_control_characters(body, "message body")
    limit = current_app.config["MAX_BODY_LENGTH"]
    if len(body) > limit:
        raise InvalidInput(f"message body must be at most {limit} characters")
    return body.strip()


def clean_phone(phone: object) -> str:
    if phone is None:
        raise InvalidInput("phone is required")
    if not isinstance(phone, str):
        raise InvalidInput("phone must be a string")
    reject_control_characters(phone, "phone")
    digits = re.sub(r"[\s\-().]", "", phone)
    if not PHONE_RE.match(digits):
        raise InvalidInput("phone must be 5 to 20 digits, optionally starting with +")
    return digits


def _conditional_update(conversation_id: int, where: tuple, values: dict, conflict: str) -> None:
    """UPDATE ... WHERE <expected state>; nobody else's change can be overwritten."""
    result = db.session.execute(
        update(Conversation)
        .where(Conversation.id == conversation_id, *where)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:
        db.session.rollback()
        raise Conflict(conflict)


def receive_inbound(
    phone: object,
    body: object,
    name: object = None,
    external_id: object = None,
    avatar_url: object = None,
    channel_id: int | None = None,
    from_me: bool = False,
) -> InboundResult:
    """Store a contact's message, opening or reopening its conversation as pending, and
    remember the channel it came through (replies go back through it).

    The same external_id twice stores one message: webhooks are retried. from_me: the provider
    reports a message the business sent (an echo of one of our replies, or one sent from its
    phone): matched to the stored reply by its id, or stored once as sent; it opens nothing.
    """
    phone = clean_phone(phone)
    body = clean_body(body)
    if name is not None and (not isinstance(name, str) or len(name) > 120):
        raise InvalidInput("name must be a string of at most 120 characters")
    if external_id is not None and (not isinstance(external_id, str) or not external_id or len(external_id) > 255):
        raise InvalidInput("external_id must be a non-empty string of at most 255 characters")
    if avatar_url is not None and (not isinstance(avatar_url, str) or len(avatar_url) > 500):
        raise InvalidInput("avatar_url must be a string of at most 500 characters")
    for field, value in (("name", name), ("external_id", external_id), ("avatar_url", avatar_url)):
        if value is not None:
            reject_control_characters(value, field)
    if avatar_url and not avatar_url.startswith("https://"):
        # The Content-Security-Policy lets pages load images from https: only (see web.py).
        raise InvalidInput("avatar_url must be an https:// URL")
    name = (name or "").strip() or phone

    for attempt in range(3):
        existing = _by_external_id(external_id)
        if existing:
            return existing
        try:
            if from_me:
                return _store_echo(phone, body, external_id, channel_id)
            return _store_inbound(phone, body, name, external_id, avatar_url, channel_id)
        except IntegrityError:
            # A concurrent delivery of the same message or contact won the insert; look again.
            db.session.rollback()
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def _by_external_id(external_id: str | None) -> InboundResult | None:
    if external_id is None:
        return None
    row = db.session.execute(
        select(Message.id, Message.conversation_id).where(Message.external_id == external_id)
    ).first()
    return InboundResult(row.conversation_id, row.id, created=False) if row else None


def _latest_conversation(contact: Contact) -> Conversation | None:
    return db.session.scalar(
        select(Conversation)
        .where(Conversation.contact_id == contact.id)
        .order_by(Conversation.id.desc())
        .limit(1)
    )


def _contact(phone: str, name: str, avatar_url: str | None = None) -> Contact:
    contact = db.session.scalar(select(Contact).where(Contact.phone == phone))
    if contact is None:
        contact = Contact(phone=phone, name=name, avatar_url=avatar_url)
        db.session.add(contact)
        db.session.flush()
    else:
        if name != phone and contact.name != name:
            contact.name = name
        if avatar_url and contact.avatar_url != avatar_url:
            contact.avatar_url = avatar_url
    return contact


def _store_inbound(phone, body, name, external_id, avatar_url, channel_id) -> InboundResult:
    now = utcnow()
    contact = _contact(phone, name, avatar_url)
    conversation = _latest_conversation(contact)
    if conversation is None:
        conversation = Conversation(contact_id=contact.id, status=PENDING, unread_count=0)
        db.session.add(conversation)
    elif conversation.status == CLOSED:
        conversation.status = PENDING
        conversation.user_id = None
        conversation.unread_count = 0
    conversation.unread_count = (conversation.unread_count or 0) + 1
    if channel_id is not None:
        conversation.channel_id = channel_id
    return _add_message(conversation, Message(body=body, from_me=False, external_id=external_id, created_at=now))


def _add_message(conversation: Conversation, message: Message) -> InboundResult:
    """Store a message as the conversation's newest and commit."""
    db.session.flush()
    message.conversation_id = conversation.id
    db.session.add(message)
    db.session.flush()
    conversation.last_message_at = message.created_at
    conversation.last_message_body = message.body
    conversation.last_message_id = message.id
    conversation.last_message_state = message.delivery_state if message.from_me else None
    db.session.commit()
    return InboundResult(conversation.id, message.id, created=True)


def _store_echo(phone, body, external_id, channel_id) -> InboundResult:
    """A message the business sent from elsewhere (its phone, another tool): one more sent reply
    in the contact's latest conversation, which stays as it is (a new one is created closed:
    nothing waits for an agent until the contact writes)."""
    contact = _contact(phone, phone)
    conversation = _latest_conversation(contact)
    if conversation is None:
        conversation = Conversation(contact_id=contact.id, status=CLOSED, unread_count=0, channel_id=channel_id)
        db.session.add(conversation)
    message = Message(body=body, from_me=True, external_id=external_id, created_at=utcnow(), delivery_state=SENT)
    if external_id:
        delivery.settle_echo(message)
    return _add_message(conversation, message)


def accept_conversation(conversation_id: int, agent: Agent) -> Conversation:
    """Assign a pending conversation to the agent, read (they are looking at it now, in the
    inbox or through the API); 409 when someone else was faster.

    An agent of the conversation's department could see it while it was pending, so
    losing the race is a 409 for them, not a 404.
    """
    conversation = db.session.get(Conversation, conversation_id)
    if conversation is None or not sees_pending_of(agent, conversation.department_id):
        raise NotFound("conversation not found")
    _conditional_update(
        conversation_id,
        (Conversation.status == PENDING,),
        {"status": ACTIVE, "user_id": agent.id, "unread_count": 0},
        "conversation is no longer pending",
    )
    db.session.commit()
    return db.session.get(Conversation, conversation_id)


IDEMPOTENCY_KEY_RE = re.compile(r"[A-Za-z0-9_-]{8,64}")
KEY_REUSED = "this idempotency key was already used for another message"


class SentReply(NamedTuple):
    message: Message
    created: bool  # False: a retry; the key's message already existed and nothing changed


def clean_idempotency_key(key: object) -> str | None:
    """A client's idempotency key: 8 to 64 letters, digits, '-' or '_'; None means no key."""
    if key is None:
        return None
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise InvalidInput("idempotency key must be 8 to 64 characters: letters, digits, '-' or '_'")
    return key


def send_reply(
    conversation_id: int, agent: Agent, body: object, idempotency_key: object = None
) -> SentReply:
    """Store the agent's reply on an active conversation they handle.

    A key already used by this agent for the same reply returns that message and changes
    nothing, even if the conversation changed since (the reply was delivered): clients retry.
    """
    body = clean_body(body)
    key = clean_idempotency_key(idempotency_key)
    sent = _sent_with_key(agent, key, conversation_id, body)
    if sent is not None:
        return SentReply(sent, created=False)
    conversation = get_visible_conversation(agent, conversation_id)
    if conversation.status == PENDING:
        raise Conflict("accept the conversation before replying")
    if conversation.status == CLOSED:
        raise Conflict("conversation is closed")
    now = utcnow()
    where = [Conversation.status == ACTIVE]
    if not agent.is_admin:
        where.append(Conversation.user_id == agent.id)
    message = Message(
        conversation_id=conversation_id, body=body, from_me=True, user_id=agent.id, created_at=now,
        idempotency_key=key,
    )
    db.session.add(message)
    try:
        db.session.flush()
        # Its delivery row commits with it (the transactional outbox): nothing is lost after the commit.
        delivery.enqueue(message, conversation)
        _conditional_update(
            conversation_id,
            tuple(where),
            {"last_message_at": now, "last_message_body": body, "last_message_id": message.id,
             "last_message_state": message.delivery_state},
            "conversation is no longer active",
        )
        db.session.commit()
    except IntegrityError:
        # The unique (user_id, idempotency_key) settles a retry racing the original: it won.
        db.session.rollback()
        sent = _sent_with_key(agent, key, conversation_id, body)
        if sent is None:
            raise
        return SentReply(sent, created=False)
    return SentReply(message, created=True)


def _sent_with_key(agent: Agent, key: str | None, conversation_id: int, body: str) -> Message | None:
    """The agent's message stored under this key, if any; 409 if it is a different message."""
    if key is None:
        return None
    message = db.session.scalar(
        select(Message).where(Message.user_id == agent.id, Message.idempotency_key == key)
    )
    if message is not None and (message.conversation_id != conversation_id or message.body != body):
        raise Conflict(KEY_REUSED)
    return message


def close_conversation(conversation_id: int, agent: Agent) -> Conversation:
    conversation = get_visible_conversation(agent, conversation_id)
    if "close" not in ALLOWED_ACTIONS[conversation.status]:
        raise Conflict(f"only an active conversation can be closed (this one is {conversation.status})")
    where = [Conversation.status == ACTIVE]
    if not agent.is_admin:
        where.append(Conversation.user_id == agent.id)
    _conditional_update(
        conversation_id, tuple(where), {"status": CLOSED, "unread_count": 0},
        "conversation is no longer active",
    )
    db.session.commit()
    return db.session.get(Conversation, conversation_id)


def transfer_targets(agents: list[dict], agent: Agent) -> list[dict]:
    """Whom an agent can hand a conversation to (of the cached agents list): any other active agent."""
    return [a for a in agents if a["active"] and a["id"] != agent.id]


def transfer_conversation(
    conversation_id: int,
    agent: Agent,
    to_user_id: int | None = None,
    to_department_id: int | None = None,
) -> Conversation:
    """Hand a conversation to another agent (stays active) or to a department's queue (pending)."""
    if to_user_id is None and to_department_id is None:
        raise InvalidInput("choose an agent or a department to transfer to")
    conversation = get_visible_conversation(agent, conversation_id)
    if "transfer" not in ALLOWED_ACTIONS[conversation.status]:
        raise Conflict("a closed conversation cannot be transferred")
    values: dict = {}
    if to_department_id is not None:
        if db.session.get(Department, to_department_id) is None:
            raise InvalidInput("unknown department")
        values["department_id"] = to_department_id
    if to_user_id is not None:
        target = db.session.get(User, to_user_id)
        if target is None or not target.active:
            raise InvalidInput("unknown agent")
        values.update(status=ACTIVE, user_id=to_user_id)
    else:
        values.update(status=PENDING, user_id=None)
    _conditional_update(
        conversation_id,
        (Conversation.status == conversation.status, _same_assignee(conversation.user_id)),
        values,
        "conversation changed meanwhile; reload and try again",
    )
    db.session.commit()
    return db.session.get(Conversation, conversation_id)


def _same_assignee(user_id: int | None):
    return Conversation.user_id.is_(None) if user_id is None else Conversation.user_id == user_id


def mark_read_on_open(agent: Agent, summary: dict) -> None:
    """The agent opened a conversation (its cached summary): if it is theirs and has unread
    messages, it is read now. The summary spares a query when there is nothing to do."""
    if summary["unread_count"] and summary["user"] and summary["user"]["id"] == agent.id:
        mark_read(summary["id"], agent)  # its commit invalidates the summary


def mark_read(conversation_id: int, agent: Agent) -> None:
    """Opening a conversation as its assigned agent clears its unread count."""
    result = db.session.execute(
        update(Conversation)
        .where(
            Conversation.id == conversation_id,
            Conversation.user_id == agent.id,
            Conversation.unread_count > 0,
        )
        .values(unread_count=0)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount:
        db.session.commit()

