"""Attachments' rows: inbound files waiting to be fetched, their claims, what became of them.

Like chat/delivery.py for replies: an inbound message's attachments commit with the message,
`downloading`, holding the provider's reference; a worker (chat/worker.py) `claim`s the oldest
due one for a lease, fetches it through its channel, checks it (chat/media_types.py), puts it
in storage and `record_stored`s it, or `record_failure`s it (tried again later when that can
help, else `failed` with the reason the thread shows). Nothing is half stored: the row says
`stored` only after the bytes are in storage. These functions change rows and commit; they know
nothing of HTTP, the cache, sockets or providers.
"""
from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Iterable

from flask import current_app
from sqlalchemy import or_, select, update

from .channels import MediaRef
from .errors import NotFound
from .extensions import db
from .models import DOWNLOADING, FAILED, STORED, WEBHOOK, Attachment, Channel, Message, utcnow
from .visibility import Agent, get_visible_conversation

log = logging.getLogger(__name__)

MAX_PER_MESSAGE = 10


def add_inbound(message: Message, refs: Iterable[MediaRef], channel_id: int | None) -> None:
    """Give a flushed inbound message its attachments, to fetch after the commit (the caller
    commits them with the message)."""
    for ref in list(refs)[:MAX_PER_MESSAGE]:
        db.session.add(Attachment(
            message_id=message.id, conversation_id=message.conversation_id, channel_id=channel_id,
            source=ref.ref, kind=ref.kind, declared_type=(ref.content_type or None) and ref.content_type[:255],
            filename=(ref.filename or None) and ref.filename[:255], caption=ref.caption, state=DOWNLOADING,
            run_after=utcnow()))


def preview(refs: Iterable[MediaRef]) -> str:
    """What the list shows for a message that is only files: "Attachment: invoice.pdf (+1)"
    (words, not an emoji: not every machine has a font with one)."""
    refs = list(refs)
    if not refs:
        return ""
    first = refs[0].filename or refs[0].kind or "attachment"
    more = f" (+{len(refs) - 1})" if len(refs) > 1 else ""
    return f"Attachment: {first}{more}"


# -- an agent's files (already in storage: chat/uploads.py) ---------------------------------------
@dataclass(frozen=True)
class StoredFile:
    """A file an agent attached, checked and put in storage before the reply's transaction."""

    storage_key: str
    thumb_key: str | None
    content_type: str
    kind: str
    size: int
    filename: str


CAPTIONED = ("image", "video", "document")  # the kinds a text can ride on (WhatsApp's rule too)


def reply_parts(body: str, files) -> list[tuple[str, "StoredFile | None"]]:
    """(text, file) of each message a reply becomes: one file per message, the text as the first
    file's caption when it can be one, else a message of its own before the files."""
    files = list(files)
    if not files:
        return [(body, None)]
    if body and files[0].kind not in CAPTIONED:
        return [(body, None)] + [("", f) for f in files]
    return [(body if n == 0 else "", f) for n, f in enumerate(files)]


def add_stored(message: Message, file: StoredFile) -> None:
    db.session.add(Attachment(
        message_id=message.id, conversation_id=message.conversation_id, state=STORED, kind=file.kind,
        content_type=file.content_type, declared_type=file.content_type, filename=file.filename, size=file.size,
        storage_key=file.storage_key, thumb_key=file.thumb_key, run_after=utcnow()))


def preview_of(file: "StoredFile | None") -> str:
    return f"Attachment: {file.filename}" if file is not None else ""


# -- the worker's side ----------------------------------------------------------------------
@dataclass(frozen=True)
class FetchClaim:
    """An attachment a worker holds until its lease ends; `token` proves it still does."""

    attachment_id: int
    conversation_id: int
    token: str
    attempt: int
    channel_kind: str
    channel_settings: dict
    media: MediaRef


def _config(name: str):
    return current_app.config[name]


def claim() -> FetchClaim | None:
    """Take the oldest due attachment to fetch, for a lease (PostgreSQL: SKIP LOCKED; everywhere
    a conditional UPDATE, so two workers never hold one)."""
    for _ in range(5):
        now = utcnow()
        stmt = (select(Attachment.id)
                .where(Attachment.state == DOWNLOADING, Attachment.run_after <= now,
                       or_(Attachment.lease_until.is_(None), Attachment.lease_until < now))
                .order_by(Attachment.run_after, Attachment.id).limit(1))
        if db.session.get_bind().dialect.name == "postgresql":
            stmt = stmt.with_for_update(skip_locked=True)
        found = db.session.scalar(stmt)
        if found is None:
            db.session.rollback()
            return None
        token = secrets.token_hex(16)
        lease = now + timedelta(seconds=_config("ATTACHMENT_FETCH_SECONDS") + 30)
        taken = db.session.execute(
            update(Attachment).where(Attachment.id == found, Attachment.state == DOWNLOADING,
                                     or_(Attachment.lease_until.is_(None), Attachment.lease_until < now))
            .values(lease_token=token, lease_until=lease, attempts=Attachment.attempts + 1)
            .execution_options(synchronize_session=False))
        if taken.rowcount != 1:
            db.session.rollback()
            continue
        row = db.session.get(Attachment, found)
        db.session.refresh(row)
        channel = db.session.get(Channel, row.channel_id) if row.channel_id else None
        if row.attempts > _config("ATTACHMENT_MAX_ATTEMPTS"):
            _finish(row.id, token, FAILED, f"could not download: gave up after {row.attempts - 1} attempts")
            db.session.commit()
            continue
        held = FetchClaim(row.id, row.conversation_id, token, row.attempts,
                          channel.kind if channel else WEBHOOK, dict(channel.settings or {}) if channel else {},
                          MediaRef(row.source or "", row.kind, row.declared_type, row.filename, row.caption))
        db.session.commit()
        return held
    return None


def record_stored(held: FetchClaim, content_type: str, kind: str, size: int, storage_key: str,
                  thumb_key: str | None, filename: str) -> bool:
    """The file is in storage: the attachment is `stored`. False when the lease was lost."""
    done = _finish(held.attachment_id, held.token, STORED, None, content_type=content_type, kind=kind, size=size,
                   storage_key=storage_key, thumb_key=thumb_key, filename=filename)
    db.session.commit()
    return done


def record_failure(held: FetchClaim, reason: str, temporary: bool) -> bool:
    """Not fetched: tried again later when that can help and attempts are left, else `failed`."""
    limit = _config("ATTACHMENT_MAX_ATTEMPTS")
    if temporary and held.attempt < limit:
        from .delivery import backoff

        delay = backoff(held.attempt)
        moved = db.session.execute(
            update(Attachment).where(Attachment.id == held.attachment_id, Attachment.lease_token == held.token)
            .values(lease_token=None, lease_until=None, run_after=utcnow() + timedelta(seconds=delay),
                    reason=f"{reason}; trying again (attempt {held.attempt} of {limit})"[:1000])
            .execution_options(synchronize_session=False)).rowcount == 1
    else:
        moved = _finish(held.attachment_id, held.token, FAILED, reason[:1000])
    db.session.commit()
    return moved


def _finish(attachment_id: int, token: str, state: str, reason: str | None, **values) -> bool:
    moved = db.session.execute(
        update(Attachment).where(Attachment.id == attachment_id, Attachment.lease_token == token)
        .values(state=state, reason=reason, lease_token=None, lease_until=None, **values)
        .execution_options(synchronize_session=False)).rowcount == 1
    if not moved:
        log.warning("attachment %s: the lease expired before the worker finished", attachment_id)
    return moved


# -- links for the provider's side -----------------------------------------------------------------
LINK_SALT = "chat.attachment-link"


def public_link(attachment_id: int) -> str | None:
    """An absolute link to a file that works without signing in (the customer's system fetches
    an agent's file from it), signed with SECRET_KEY and valid ATTACHMENT_LINK_DAYS; None
    without PUBLIC_URL (this inbox's address as the outside world reaches it)."""
    from itsdangerous import URLSafeTimedSerializer

    base = current_app.config.get("PUBLIC_URL")
    if not base:
        return None
    token = URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=LINK_SALT).dumps(attachment_id)
    return f"{base.rstrip('/')}/files/{token}"


def from_link(token: str) -> Attachment:
    """The stored file a public_link names, while the link is valid; else NotFound."""
    from itsdangerous import BadSignature, URLSafeTimedSerializer

    signer = URLSafeTimedSerializer(current_app.config["SECRET_KEY"], salt=LINK_SALT)
    try:
        attachment_id = signer.loads(token, max_age=current_app.config["ATTACHMENT_LINK_DAYS"] * 86400)
    except BadSignature:  # tampered with, or expired (SignatureExpired is one)
        raise NotFound("this link is not valid (any more)") from None
    row = db.session.get(Attachment, attachment_id) if isinstance(attachment_id, int) else None
    if row is None or row.state != STORED or not row.storage_key:
        raise NotFound("attachment not found")
    return row


# -- the reader's side ----------------------------------------------------------------------
def visible(agent: Agent, attachment_id: int) -> Attachment:
    """An attachment of a conversation the agent may see, stored; else NotFound (another agent's
    conversation is a 404, like everything else)."""
    row = db.session.get(Attachment, attachment_id)
    if row is None:
        raise NotFound("attachment not found")
    get_visible_conversation(agent, row.conversation_id)  # NotFound when not theirs
    if row.state != STORED or not row.storage_key:
        raise NotFound("attachment not stored")
    return row
