"""Delivery of replies: the outbox and every change of a reply's delivery state.

A reply's delivery row commits in the same transaction as the reply (`enqueue`, called by
domain.send_reply), so a process dying after the commit loses nothing. Workers (chat/worker.py)
`claim` the oldest unfinished delivery of a conversation for a lease, hand it to the channel,
and `record_sent` or `record_failure`; a worker that dies loses its claim when the lease
expires. Provider statuses (`record_status`) are stored once each and only move a reply
forward. Like the domain, these functions change rows and commit; they know nothing of HTTP,
the cache or sockets, and reach providers only through the worker.
"""
from __future__ import annotations

import logging
import random
import secrets
from dataclasses import dataclass
from datetime import timedelta

from flask import current_app
from sqlalchemy import delete, exists, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import aliased

from .channels import OutFile, Outgoing, SendError
from .errors import Conflict, InvalidInput, NotFound
from .extensions import db
from .models import (
    DELIVERED, FAILED, NONE, PROVIDER_STATUSES, QUEUED, READ, SENDING, SENT, STORED,
    Attachment, Channel, Contact, Conversation, Delivery, DeliveryStatus, Message, utcnow,
)
from .visibility import Agent, get_visible_conversation

log = logging.getLogger(__name__)

NO_CHANNEL = "not sent: no channel"
_RANK = {SENT: 1, DELIVERED: 2, READ: 3}


def advance(current: str | None, status: str) -> str | None:
    """The state a provider's status moves a reply to, or None when it must not move it:
    sent -> delivered -> read only forward; failed only from sent (a reply delivered or read
    somewhere stays so); failed is terminal until an agent retries."""
    current = current or NONE
    if current not in _RANK:
        return None  # not handed to the provider yet (its id is unknown), or failed
    if status == FAILED:
        return FAILED if current == SENT else None
    return status if _RANK[status] > _RANK[current] else None


def fold(current: str, statuses: list[tuple[str, str | None]]) -> tuple[str, str | None]:
    """Apply stored (status, reason) reports in any order: the state and reason they lead to."""
    state, reason = current, None
    for status in sorted((s for s in statuses), key=lambda s: (s[0] == FAILED, _RANK.get(s[0], 0))):
        moved = advance(state, status[0])
        if moved:
            state, reason = moved, status[1] if moved == FAILED else None
    return state, reason


# -- enqueueing (inside the reply's own transaction) ------------------------------------------
def resolve_channel(conversation: Conversation) -> Channel | None:
    """Where a reply goes: the channel the contact wrote through, or, for a conversation that
    came through none, the default channel. An inactive channel sends nothing."""
    if conversation.channel_id is not None:
        channel = db.session.get(Channel, conversation.channel_id)
        return channel if channel is not None and channel.active else None
    return db.session.scalar(select(Channel).where(Channel.is_default.is_(True), Channel.active.is_(True))
                             .order_by(Channel.id).limit(1))


def enqueue(message: Message, conversation: Conversation) -> None:
    """Give a flushed reply its delivery row (the caller commits both at once), or say why it
    will not be sent. A private note is never sent: asking is a bug, refused here too."""
    if message.private:
        raise ValueError(f"message {message.id} is a private note: it is never sent")
    channel = resolve_channel(conversation)
    if channel is None:
        message.delivery_state, message.delivery_reason = NONE, NO_CHANNEL
        return
    message.delivery_state, message.delivery_reason = QUEUED, None
    db.session.add(Delivery(message_id=message.id, conversation_id=conversation.id, channel_id=channel.id,
                            run_after=utcnow()))


# -- the worker's side ----------------------------------------------------------------------
@dataclass(frozen=True)
class Claim:
    """A delivery a worker holds until `lease_until`; `token` proves it still does."""

    delivery_id: int
    token: str
    attempt: int
    channel_kind: str
    channel_settings: dict
    outgoing: Outgoing
    file_key: str | None = None  # where the reply's file is in storage (the worker reads its bytes)


def _settings(name: str):
    return current_app.config[name]


def claim() -> Claim | None:
    """Take the oldest due delivery whose conversation has no earlier one unfinished, for a lease;
    mark its reply `sending`. PostgreSQL: FOR UPDATE SKIP LOCKED, so workers never wait on each
    other; everywhere: a conditional UPDATE, so two workers can never hold one delivery."""
    for _ in range(5):
        now = utcnow()
        earlier = aliased(Delivery)
        stmt = (
            select(Delivery.id, Delivery.attempts)
            .where(Delivery.done.is_(False), Delivery.run_after <= now,
                   or_(Delivery.lease_until.is_(None), Delivery.lease_until < now),
                   ~exists().where(earlier.conversation_id == Delivery.conversation_id,
                                   earlier.done.is_(False), earlier.id < Delivery.id))
            .order_by(Delivery.run_after, Delivery.id)
            .limit(1)
        )
        if db.session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True, of=Delivery)
        row = db.session.execute(stmt).first()
        if row is None:
            db.session.rollback()
            return None
        token = secrets.token_hex(16)
        taken = db.session.execute(
            update(Delivery)
            .where(Delivery.id == row.id, Delivery.done.is_(False),
                   or_(Delivery.lease_until.is_(None), Delivery.lease_until < now))
            .values(lease_token=token, lease_until=now + timedelta(seconds=_settings("DELIVERY_LEASE_SECONDS")),
                    attempts=Delivery.attempts + 1)
            .execution_options(synchronize_session=False)
        )
        if taken.rowcount != 1:
            db.session.rollback()  # another worker was faster: look again
            continue
        found = db.session.execute(
            select(Delivery, Message, Contact.phone, Channel)
            .join(Message, Message.id == Delivery.message_id)
            .join(Conversation, Conversation.id == Delivery.conversation_id)
            .join(Contact, Contact.id == Conversation.contact_id)
            .outerjoin(Channel, Channel.id == Delivery.channel_id)
            .where(Delivery.id == row.id)
        ).first()
        delivery, message, phone, channel = found
        attempt = delivery.attempts
        if message.private:
            # Never sent, whatever queued it (domain.write_note queues nothing): the note stays as it is.
            log.error("delivery %s is of private note %s: refused, never sent", delivery.id, message.id)
            db.session.execute(update(Delivery).where(Delivery.id == delivery.id)
                               .values(done=True, lease_until=None, lease_token=None)
                               .execution_options(synchronize_session=False))
            db.session.commit()
            continue
        if channel is None or not channel.active:
            _finish(delivery, message, FAILED, "its channel was removed or deactivated before it was sent")
            db.session.commit()
            continue
        if attempt > _settings("DELIVERY_MAX_ATTEMPTS"):
            # Claimed that often, never finished: the workers holding it died (or it kills them).
            _finish(delivery, message, FAILED, f"gave up after {attempt - 1} attempts: the worker sending it stopped")
            db.session.commit()
            continue
        key = str(message.id) if not message.delivery_retries else f"{message.id}-retry-{message.delivery_retries}"
        # Read before the commit: after it the rows are expired, and reading them would open a
        # transaction that stays open (locks and a snapshot held) for the whole send.
        file = db.session.scalar(select(Attachment).where(Attachment.message_id == message.id, Attachment.state == STORED)
                                 .order_by(Attachment.id).limit(1))
        held = Claim(delivery.id, token, attempt, channel.kind, dict(channel.settings or {}),
                     Outgoing(message.id, key, phone, message.body, message.conversation_id,
                              OutFile(file.id, file.kind, file.content_type, file.filename, file.size or 0)
                              if file is not None else None),
                     file.storage_key if file is not None else None)
        _set_state(message.id, message.conversation_id, SENDING, None, (QUEUED, SENDING),
                   delivery_attempts=Message.delivery_attempts + 1)
        db.session.commit()
        return held
    return None


def record_sent(held: Claim, provider_id: str) -> bool:
    """The provider took the reply: it is `sent` (or further, if its statuses came first).
    False when the lease was lost meanwhile (the new holder records it)."""
    if not _release(held, done=True):
        return False
    message_id, conversation_id = held.outgoing.message_id, held.outgoing.conversation_id
    echo = db.session.scalar(select(Message).where(Message.external_id == provider_id, Message.id != message_id))
    if echo is not None:
        if not (echo.from_me and echo.user_id is None):
            db.session.rollback()
            log.error("provider id %s of message %s already belongs to message %s", provider_id, message_id, echo.id)
            return False
        # Its echo came back before this answer and was stored on its own: it is this reply.
        db.session.execute(update(Conversation).where(Conversation.id == echo.conversation_id,
                                                      Conversation.last_message_id == echo.id)
                           .values(last_message_id=message_id).execution_options(synchronize_session=False))
        db.session.execute(delete(Message).where(Message.id == echo.id).execution_options(synchronize_session=False))
    state, reason = fold(SENT, _stored_statuses(provider_id))
    _set_state(message_id, conversation_id, state, reason, (SENDING,), external_id=provider_id)
    db.session.commit()
    return True


def record_failure(held: Claim, error: SendError) -> bool:
    """The provider did not take it: try again later when the error is temporary and attempts are
    left (after Retry-After, else exponential backoff with jitter), otherwise `failed` with why."""
    message_id, conversation_id = held.outgoing.message_id, held.outgoing.conversation_id
    limit = _settings("DELIVERY_MAX_ATTEMPTS")
    if error.temporary and held.attempt < limit:
        delay = error.retry_after if error.retry_after is not None else backoff(held.attempt)
        if not _release(held, done=False, run_after=utcnow() + timedelta(seconds=delay)):
            return False
        reason = f"{error.reason}; trying again in {_seconds(delay)} (attempt {held.attempt} of {limit})"
        _set_state(message_id, conversation_id, QUEUED, reason, (SENDING,))
    else:
        if not _release(held, done=True):
            return False
        reason = f"gave up after {held.attempt} attempts: {error.reason}" if error.temporary else error.reason
        _set_state(message_id, conversation_id, FAILED, reason[:1000], (SENDING,))
    db.session.commit()
    return True


def backoff(attempt: int) -> float:
    """Seconds before attempt `attempt + 1`: doubling from DELIVERY_BACKOFF_BASE up to
    DELIVERY_BACKOFF_MAX, with full jitter on its upper half so retries of many replies spread."""
    ceiling = min(_settings("DELIVERY_BACKOFF_MAX"), _settings("DELIVERY_BACKOFF_BASE") * 2 ** (attempt - 1))
    return ceiling / 2 + random.random() * ceiling / 2


def _seconds(delay: float) -> str:
    return f"{delay:.1f} s" if delay < 10 else f"{round(delay)} s"


def _release(held: Claim, done: bool, run_after=None) -> bool:
    values = {"lease_until": None, "lease_token": None, "done": done}
    if run_after is not None:
        values["run_after"] = run_after
    result = db.session.execute(update(Delivery).where(Delivery.id == held.delivery_id, Delivery.lease_token == held.token)
                                .values(**values).execution_options(synchronize_session=False))
    if result.rowcount != 1:
        db.session.rollback()
        log.warning("delivery %s: the lease expired before the worker finished; its new holder records it",
                    held.delivery_id)
        return False
    return True


def _finish(delivery: Delivery, message: Message, state: str, reason: str) -> None:
    db.session.execute(update(Delivery).where(Delivery.id == delivery.id)
                       .values(done=True, lease_until=None, lease_token=None)
                       .execution_options(synchronize_session=False))
    _set_state(message.id, message.conversation_id, state, reason, (QUEUED, SENDING))


def _set_state(message_id: int, conversation_id: int, state: str, reason: str | None, expected: tuple[str, ...],
               **values) -> bool:
    """Move a reply to `state` if it is in one of the `expected` states (a conditional UPDATE: two
    writers can't both move it from the same state), and its conversation's row with it when it
    is the newest message (the list shows its ticks)."""
    column = Message.delivery_state
    where = column.in_(expected) if NONE not in expected else or_(column.in_(expected), column.is_(None))
    moved = db.session.execute(
        update(Message).where(Message.id == message_id, where)
        .values(delivery_state=state, delivery_reason=reason, **values)
        .execution_options(synchronize_session=False)
    ).rowcount == 1
    if moved:
        db.session.execute(
            update(Conversation).where(Conversation.id == conversation_id, Conversation.last_message_id == message_id,
                                       or_(Conversation.last_message_state.is_(None),
                                           Conversation.last_message_state != state))
            .values(last_message_state=state).execution_options(synchronize_session=False))
    return moved


def _stored_statuses(provider_id: str) -> list[tuple[str, str | None]]:
    return [(r.status, r.reason) for r in db.session.execute(
        select(DeliveryStatus.status, DeliveryStatus.reason).where(DeliveryStatus.provider_message_id == provider_id))]


# -- the provider's side --------------------------------------------------------------------
def record_status(provider_id: object, status: object, reason: object = None) -> str:
    """A provider's status report. Stored once per (id, status); moves the reply forward only.
    Returns what happened: "applied", "duplicate", "stale" (it would move the reply back) or
    "unknown" (no reply of ours has that id, yet: kept, in case the worker's record comes next)."""
    if not isinstance(provider_id, str) or not provider_id or len(provider_id) > 255:
        raise InvalidInput("id must be the provider's message id, a string of at most 255 characters")
    if status not in PROVIDER_STATUSES:
        raise InvalidInput(f"status must be one of {', '.join(PROVIDER_STATUSES)}")
    if reason is not None and not isinstance(reason, str):
        raise InvalidInput("reason must be a string")
    from .domain import reject_control_characters

    for field, value in (("id", provider_id), ("reason", reason)):
        if value:
            reject_control_characters(value, field)
    reason = (reason or "").strip()[:1000] or (None if status != FAILED else "the provider reported a failure")
    db.session.add(DeliveryStatus(provider_message_id=provider_id, status=status, reason=reason))
    try:
        db.session.flush()
    except IntegrityError:
        db.session.rollback()  # this report was stored before (a retried webhook)
        return "duplicate"
    for _ in range(3):
        message = db.session.execute(
            select(Message.id, Message.conversation_id, Message.delivery_state)
            .where(Message.external_id == provider_id, Message.from_me.is_(True))
        ).first()
        if message is None:
            db.session.commit()
            return "unknown"
        moved = advance(message.delivery_state, status)
        if moved is None:
            db.session.commit()
            return "stale"
        if _set_state(message.id, message.conversation_id, moved, reason if moved == FAILED else None,
                      (message.delivery_state or NONE,)):
            db.session.commit()
            return "applied"
        # Another report moved it between our read and our write: read it again.
    db.session.commit()
    return "stale"


def settle_echo(message: Message) -> None:
    """An echo stored as a reply sent from elsewhere: apply statuses that came before it."""
    state, reason = fold(SENT, _stored_statuses(message.external_id))
    message.delivery_state, message.delivery_reason = state, reason


# -- the agent's side -----------------------------------------------------------------------
def retry(message_id: int, agent: Agent, conversation_id: int | None = None) -> Message:
    """Send a failed reply again: a new round of attempts, under a new idempotency key, that the
    provider receives. 409 unless it failed (or was never sent for want of a channel)."""
    message = db.session.get(Message, message_id)
    if message is None or not message.from_me or conversation_id not in (None, message.conversation_id):
        raise NotFound("message not found")
    conversation = get_visible_conversation(agent, message.conversation_id)
    if message.private:
        raise Conflict("a private note is never sent to the customer")
    state = message.delivery_state or NONE
    if not (state == FAILED or (state == NONE and message.delivery_reason == NO_CHANNEL)):
        raise Conflict(f"only a failed reply can be retried (this one is {state})")
    channel = resolve_channel(conversation)
    if channel is None:
        raise Conflict("this conversation has no channel to send the reply through")
    if not _set_state(message.id, conversation.id, QUEUED, None, (state,), external_id=None,
                      delivery_retries=Message.delivery_retries + 1):
        db.session.rollback()
        raise Conflict("the reply changed meanwhile; reload and try again")
    values = dict(done=False, attempts=0, run_after=utcnow(), lease_until=None, lease_token=None, channel_id=channel.id)
    if db.session.execute(update(Delivery).where(Delivery.message_id == message.id).values(**values)
                          .execution_options(synchronize_session=False)).rowcount == 0:
        db.session.add(Delivery(message_id=message.id, conversation_id=conversation.id, **values))
    db.session.commit()
    db.session.expire(message)
    return db.session.get(Message, message_id)
