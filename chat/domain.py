"""What happens to conversations: receive, accept, reply, write a private note, close, transfer,
mark read.

Each function validates, changes rows and commits. None of them knows about HTTP, the
cache or sockets: what a commit changed is enough for the layers above to react.
State changes are conditional UPDATEs, so two agents racing cannot both win.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import NamedTuple, Sequence

from flask import current_app
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from . import attachments, delivery
from .channels import MediaRef
from .errors import Conflict, InvalidInput, NotFound
from .extensions import db
from .models import (
    ACTIVE,
    CLOSED,
    PENDING,
    SENT,
    Contact,
    Conversation,
    ConversationLabel,
    Department,
    Mention,
    Message,
    Tag,
    User,
    utcnow,
)
from .visibility import Agent, get_visible_conversation, sees_pending_of, visible_to

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
    from_me: object = False,
    attachments: Sequence[MediaRef] = (),
) -> InboundResult:
    """Store a contact's message, opening or reopening its conversation as pending, and
    remember the channel it came through (replies go back through it).

    The same external_id twice stores one message: webhooks are retried. from_me: the provider
    reports a message the business sent (an echo of one of our replies, or one sent from its
    phone): matched to the stored reply by its id, or stored once as sent; it opens nothing.
    """
    if not isinstance(from_me, bool):
        raise InvalidInput("from_me must be true or false")
    phone = clean_phone(phone)
    # A message that is only files (a photo, a voice note) has no text; its files say what it is.
    body = clean_body(body) if body or not attachments else ""
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
                return _store_echo(phone, body, external_id, channel_id, attachments)
            return _store_inbound(phone, body, name, external_id, avatar_url, channel_id, attachments)
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


def _store_inbound(phone, body, name, external_id, avatar_url, channel_id, files=()) -> InboundResult:
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
    return _add_message(conversation, Message(body=body, from_me=False, external_id=external_id, created_at=now),
                        files, channel_id)


def _add_message(conversation: Conversation, message: Message, files: Sequence[MediaRef] = (),
                 channel_id: int | None = None) -> InboundResult:
    """Store a message as the conversation's newest, with its files to fetch, and commit."""
    db.session.flush()
    message.conversation_id = conversation.id
    db.session.add(message)
    db.session.flush()
    attachments.add_inbound(message, files, channel_id)
    conversation.last_message_at = message.created_at
    conversation.last_message_body = message.body or attachments.preview(files)
    conversation.last_message_id = message.id
    conversation.last_message_state = message.delivery_state if message.from_me else None
    db.session.commit()
    return InboundResult(conversation.id, message.id, created=True)


def _store_echo(phone, body, external_id, channel_id, files=()) -> InboundResult:
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
    return _add_message(conversation, message, files, channel_id)


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


@dataclass(frozen=True)
class SentReply:
    message: Message
    created: bool  # False: a retry; the key's message already existed and nothing changed
    also: tuple[Message, ...] = ()  # the reply's other parts: one message per further file

    def __iter__(self):  # `message, created = send_reply(...)`
        return iter((self.message, self.created))


def clean_idempotency_key(key: object) -> str | None:
    """A client's idempotency key: 8 to 64 letters, digits, '-' or '_'; None means no key."""
    if key is None:
        return None
    if not isinstance(key, str) or not IDEMPOTENCY_KEY_RE.fullmatch(key):
        raise InvalidInput("idempotency key must be 8 to 64 characters: letters, digits, '-' or '_'")
    return key


def send_reply(
    conversation_id: int, agent: Agent, body: object, idempotency_key: object = None,
    files: Sequence[attachments.StoredFile] = (),
) -> SentReply:
    """Store the agent's reply on an active conversation they handle, with the files the agent
    attached (already in storage: chat/uploads.py).

    A reply carries at most one file, as a WhatsApp message does, so each file is a message of
    its own, delivered in order, each with its own state: the text rides as the first file's
    caption when that file can have one (image, video, document), else it goes first, alone.
    A key already used by this agent for the same reply returns that message and changes
    nothing, even if the conversation changed since (the reply was delivered): clients retry.
    """
    if len(files) > attachments.MAX_PER_MESSAGE:
        raise InvalidInput(f"a reply may carry at most {attachments.MAX_PER_MESSAGE} files")
    body = clean_body(body) if body or not files else ""
    key = clean_idempotency_key(idempotency_key)
    sent = _sent_with_key(agent, key, conversation_id, attachments.reply_parts(body, files)[0][0], False)
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
    parts = attachments.reply_parts(body, files)
    messages = []
    try:
        for n, (text, file) in enumerate(parts):
            message = Message(conversation_id=conversation_id, body=text, from_me=True, user_id=agent.id,
                              created_at=now, idempotency_key=key if n == 0 or key is None else f"{key[:60]}+{n}")
            db.session.add(message)
            db.session.flush()
            if file is not None:
                attachments.add_stored(message, file)
            # Its delivery row commits with it (the transactional outbox): nothing is lost after the commit.
            delivery.enqueue(message, conversation)
            messages.append(message)
        last = messages[-1]
        _conditional_update(
            conversation_id,
            tuple(where),
            {"last_message_at": now, "last_message_body": last.body or attachments.preview_of(parts[-1][1]),
             "last_message_id": last.id, "last_message_state": last.delivery_state},
            "conversation is no longer active",
        )
        db.session.commit()
    except IntegrityError:
        # The unique (user_id, idempotency_key) settles a retry racing the original: it won.
        db.session.rollback()
        sent = _sent_with_key(agent, key, conversation_id, parts[0][0], False)
        if sent is None:
            raise
        return SentReply(sent, created=False)
    return SentReply(messages[0], created=True, also=tuple(messages[1:]))


def _sent_with_key(agent: Agent, key: str | None, conversation_id: int, body: str,
                   private: bool) -> Message | None:
    """The agent's message stored under this key, if any; 409 if it is a different message (a
    note is never the same message as a reply with the same text)."""
    if key is None:
        return None
    message = db.session.scalar(
        select(Message).where(Message.user_id == agent.id, Message.idempotency_key == key)
    )
    if message is not None and (message.conversation_id != conversation_id or message.body != body
                                or bool(message.private) != private):
        raise Conflict(KEY_REUSED)
    return message


# -- private notes and mentions ----------------------------------------------------------------
class SentNote(NamedTuple):
    message: Message
    created: bool  # False: a retry; the key's note already existed and nothing changed
    # Agents the note names (@Name) who may not see the conversation: not told (empty on a retry).
    not_notified: tuple[str, ...] = ()
    also: tuple[Message, ...] = ()  # a reply's further parts: one message per further file


def write_note(
    conversation_id: int, agent: Agent, body: object, idempotency_key: object = None
) -> SentNote:
    """Store a private note: a message only agents see, on any conversation the agent may see,
    whatever its status (agents talk a pending one over before accepting it, or a closed one
    after). It is never sent (no delivery row: no channel ever gets it) and never the
    conversation's last message (the list's preview, order, ticks and unread count stay the
    customer's thread). `@Name` in it mentions other agents (mentioned_agents); those who may
    see the conversation get a Mention row, committed with the note. The idempotency key works
    as for a reply.
    """
    body = clean_body(body)
    key = clean_idempotency_key(idempotency_key)
    sent = _sent_with_key(agent, key, conversation_id, body, True)
    if sent is not None:
        return SentNote(sent, created=False)
    conversation = get_visible_conversation(agent, conversation_id)
    message = Message(
        conversation_id=conversation_id, body=body, from_me=True, user_id=agent.id, created_at=utcnow(),
        idempotency_key=key, private=True,
    )
    db.session.add(message)
    try:
        db.session.flush()
        told, not_told = _reachable(mentioned_agents(body, agent), conversation_id)
        db.session.add_all(Mention(message_id=message.id, conversation_id=conversation_id, user_id=user.id,
                                   author_id=agent.id, created_at=message.created_at) for user in told)
        db.session.commit()
    except IntegrityError:
        db.session.rollback()  # a retry racing the original: it won
        sent = _sent_with_key(agent, key, conversation_id, body, True)
        if sent is None:
            raise
        return SentNote(sent, created=False)
    return SentNote(message, created=True, not_notified=tuple(user.name for user in not_told))


def send_message(conversation_id: int, agent: Agent, body: object, idempotency_key: object = None,
                 private: bool = False, files: Sequence[attachments.StoredFile] = ()) -> SentNote:
    """What the reply box sends: a reply (send_reply), or with `private` a note (write_note)."""
    if private:
        if files:
            raise InvalidInput("a private note cannot carry files (only replies do)")
        return write_note(conversation_id, agent, body, idempotency_key)
    sent = send_reply(conversation_id, agent, body, idempotency_key, files)
    return SentNote(sent.message, sent.created, also=sent.also)


MENTION_SIGN = re.compile(r"(?<!\w)@")  # an @ that starts a word: "ana@example.com" mentions nobody


def fold_name(text: str) -> str:
    """Case- and accent-insensitive form of a name or text: "Joao", "JOÃO" and "joão" read alike."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()


def _name_pattern(words: list[str]) -> re.Pattern:
    """The folded words of a name, as typed after the @: any spaces between them, then no letter."""
    return re.compile(r"[^\S\n]+".join(re.escape(w) for w in words) + r"(?!\w)")


def mentioned_agents(body: str, author: Agent) -> list[User]:
    """The active agents a text mentions, other than its author, in the order named.

    `@Bruno` names the agent whose first name is Bruno, `@Bruno Lima` (or `@bruno   lima`) the
    one whose full name that is; case and accents do not matter (`@joao` is João). At each @
    the longest name that fits wins. A name two agents share mentions neither of them (an
    ambiguous `@Ana`, when there are Ana Costa and Ana Souza: write the full name). Names are
    read against every active agent, so what `@Ana` means never depends on who may see the
    conversation; who is then told is `_reachable`'s call.
    """
    text = fold_name(body)
    signs = [m.end() for m in MENTION_SIGN.finditer(text)]
    if not signs:
        return []
    full: dict[str, list[User]] = {}
    first: dict[str, list[User]] = {}
    for user in db.session.scalars(select(User).where(User.active.is_(True)).order_by(User.id)):
        words = fold_name(user.name).split()
        if words:
            full.setdefault(" ".join(words), []).append(user)
            first.setdefault(words[0], []).append(user)
    # Full names first: at the same length a full name beats a first name ("@Ana" is the agent
    # called just Ana, not Ana Costa).
    patterns = [(_name_pattern(name.split()), users) for names in (full, first) for name, users in names.items()]
    found: dict[int, User] = {}
    for start in signs:
        best_end, best = 0, None
        for pattern, users in patterns:
            matched = pattern.match(text, start)
            if matched and matched.end() > best_end:
                best_end, best = matched.end(), users
        if best is not None and len(best) == 1 and best[0].id != author.id:
            found.setdefault(best[0].id, best[0])
    return list(found.values())


def _reachable(users: list[User], conversation_id: int) -> tuple[list[User], list[User]]:
    """(who may see the conversation, who may not), by the one visibility rule: a mention of an
    agent who may not see it (another agent's active conversation, another department's queue)
    is not stored and tells them nothing; the note keeps its text."""
    told, not_told = [], []
    for user in users:
        sees = db.session.scalar(select(Conversation.id).where(Conversation.id == conversation_id, visible_to(user)))
        (told if sees is not None else not_told).append(user)
    return told, not_told


def mark_mentions_seen(agent: Agent) -> int:
    """The agent has seen every mention of them ("Mark all read"); how many were unseen."""
    result = db.session.execute(
        update(Mention)
        .where(Mention.user_id == agent.id, Mention.seen.is_(False))
        .values(seen=True)
        .execution_options(synchronize_session=False)
    )
    if result.rowcount:
        db.session.commit()
    return result.rowcount


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


# -- labels ------------------------------------------------------------------------------------
def _label(name: object) -> Tag:
    """The admin's tag a label names (any case)."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidInput("name a label: one of the tags an admin made")
    found = db.session.scalar(select(Tag).where(func.lower(Tag.name) == name.strip().lower()))
    if found is None:
        raise InvalidInput(f"there is no label named {name.strip()[:60]!r}: labels are the tags an admin made")
    return found


def add_label(conversation_id: int, agent: Agent, name: object) -> bool:
    """Put a label on a conversation the agent may see (any status); False when it was on it already."""
    conversation = get_visible_conversation(agent, conversation_id)
    tag = _label(name)
    on_it = select(ConversationLabel.id).where(ConversationLabel.conversation_id == conversation.id,
                                               ConversationLabel.tag_id == tag.id)
    if db.session.scalar(on_it) is not None:
        return False
    db.session.add(ConversationLabel(conversation_id=conversation.id, tag_id=tag.id))
    try:
        db.session.commit()
    except IntegrityError:  # another agent put it on at the same moment: it is on
        db.session.rollback()
        return False
    return True


def remove_label(conversation_id: int, agent: Agent, name: object) -> None:
    """Take a label off a conversation the agent may see; 404 when it does not carry it."""
    conversation = get_visible_conversation(agent, conversation_id)
    tag = _label(name)
    found = db.session.scalar(select(ConversationLabel).where(ConversationLabel.conversation_id == conversation.id,
                                                              ConversationLabel.tag_id == tag.id))
    if found is None:
        raise NotFound(f"the conversation has no label {tag.name!r}")
    db.session.delete(found)
    db.session.commit()


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

