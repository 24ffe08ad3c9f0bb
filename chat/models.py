"""The inbox's tables: agents, departments, contacts, conversations, messages and slow-changing data."""
from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timezone

from flask_login import UserMixin
from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import Mapped, mapped_column, relationship
from werkzeug.security import check_password_hash, generate_password_hash

from .extensions import db

PENDING, ACTIVE, CLOSED = "pending", "active", "closed"
ADMIN, AGENT = "admin", "agent"
ROLES = (ADMIN, AGENT)
DEFAULT_COLOR = "#64748b"  # a new department's colour, and the admin form's starting value

# Where an outgoing message is on its way to the customer (DESIGN.md, "What delivery guarantees").
# NONE: not sent by the inbox (no channel, or stored before channels existed); QUEUED: waiting
# for a worker (again, after a temporary error); SENDING: a worker holds it; SENT, DELIVERED,
# READ: the provider's word, forward only; FAILED: terminal until an agent retries it.
NONE, QUEUED, SENDING, SENT, DELIVERED, READ, FAILED = (
    "none", "queued", "sending", "sent", "delivered", "read", "failed")
DELIVERY_STATES = (NONE, QUEUED, SENDING, SENT, DELIVERED, READ, FAILED)
# What the thread says of each state (its ticks' tooltip and screen-reader text).
DELIVERY_WORDS = {NONE: "Not sent", QUEUED: "Waiting to be sent", SENDING: "Sending", SENT: "Sent",
                  DELIVERED: "Delivered", READ: "Read", FAILED: "Not delivered"}
PROVIDER_STATUSES = (SENT, DELIVERED, READ, FAILED)  # what a provider's status webhook may say
# Channel kinds (chat/channels: one adapter each).
WEBHOOK, WHATSAPP = "webhook", "whatsapp"
CHANNEL_KINDS = (WEBHOOK, WHATSAPP)


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def session_id(user_id: int, session_version: int) -> str:
    """What Flask-Login keeps in the session and remember-me cookies: "<id>:<version>"."""
    return f"{user_id}:{session_version}"


user_departments = Table(
    "user_departments",
    db.metadata,
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    Column("department_id", ForeignKey("departments.id", ondelete="CASCADE"), primary_key=True),
)


class Department(db.Model):
    __tablename__ = "departments"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(80), unique=True)
    color: Mapped[str] = mapped_column(String(7), default=DEFAULT_COLOR)

    agents: Mapped[list["User"]] = relationship(
        secondary=user_departments, back_populates="departments", order_by="User.name"
    )


class User(UserMixin, db.Model):
    """An agent who logs in; admins see and manage everything."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    name: Mapped[str] = mapped_column(String(120))
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default="agent")
    api_token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # Part of every session's id: moving it on signs out every copy of every cookie issued before.
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")

    departments: Mapped[list[Department]] = relationship(
        secondary=user_departments, back_populates="agents", order_by="Department.name"
    )

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    @property
    def is_active(self) -> bool:  # Flask-Login refuses inactive accounts
        return self.active

    @property
    def department_ids(self) -> list[int]:
        return sorted(d.id for d in self.departments)

    def set_password(self, password: str) -> None:
        self.password_hash = generate_password_hash(password)

    def check_password(self, password: str) -> bool:
        return check_password_hash(self.password_hash, password)

    def get_id(self) -> str:
        return session_id(self.id, self.session_version)

    def end_sessions(self) -> None:
        """Sign out everywhere: sessions and remember-me cookies issued so far stop working."""
        self.session_version = (self.session_version or 0) + 1

    def issue_api_token(self) -> str:
        """Make a new API token, keep only its hash, and return it (shown once)."""
        token = secrets.token_urlsafe(32)
        self.api_token_hash = hash_token(token)
        return token


class Contact(db.Model):
    __tablename__ = "contacts"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(120))
    phone: Mapped[str] = mapped_column(String(32), unique=True)
    avatar_url: Mapped[str | None] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (Index("ix_contacts_name", "name"),)


class Channel(db.Model):
    """How messages come in and go out for a set of contacts: a provider account and its
    settings (URLs, ids and secrets; chat/channels reads them, admin pages never show secrets)."""

    __tablename__ = "channels"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(80), unique=True)
    settings: Mapped[dict] = mapped_column(JSON, default=dict)
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    # Replies on a conversation that came in through no channel go out through this one.
    is_default: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Conversation(db.Model):
    """One thread with a contact; pending until an agent accepts it, active, then closed."""

    __tablename__ = "conversations"
    id: Mapped[int] = mapped_column(primary_key=True)
    contact_id: Mapped[int] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    department_id: Mapped[int | None] = mapped_column(
        ForeignKey("departments.id", ondelete="SET NULL")
    )
    status: Mapped[str] = mapped_column(String(16), default=PENDING)
    last_message_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_message_body: Mapped[str] = mapped_column(Text, default="")
    unread_count: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # The channel the contact last wrote through: replies go back through it.
    channel_id: Mapped[int | None] = mapped_column(ForeignKey("channels.id", ondelete="SET NULL"))
    # The newest message, and its delivery state when it is a reply (the list shows its ticks).
    last_message_id: Mapped[int | None] = mapped_column(Integer)
    last_message_state: Mapped[str | None] = mapped_column(String(16))

    contact: Mapped[Contact] = relationship(lazy="joined", innerjoin=True)
    user: Mapped[User | None] = relationship(lazy="joined")
    department: Mapped[Department | None] = relationship(lazy="joined")

    __table_args__ = (
        # Each list query filters on one of these and orders by recency.
        Index("ix_conversations_status_recent", "status", "last_message_at", "id"),
        Index("ix_conversations_user_status_recent", "user_id", "status", "last_message_at"),
        Index("ix_conversations_dept_status_recent", "department_id", "status", "last_message_at"),
        Index("ix_conversations_recent", "last_message_at", "id"),
        Index("ix_conversations_contact", "contact_id"),
    )


class Message(db.Model):
    __tablename__ = "messages"
    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE")
    )
    body: Mapped[str] = mapped_column(Text)
    from_me: Mapped[bool] = mapped_column(Boolean, default=False)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    # The provider's id of the message: of an inbound one as it arrived, of a reply once sent.
    external_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    # Chosen by the agent's client so a retried send stores one message (NULL for inbound).
    idempotency_key: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # A reply's way to the customer (NULL reads as NONE): state, why (failed, retrying, no
    # channel), attempts made in all, and how many times an agent pressed Retry.
    delivery_state: Mapped[str | None] = mapped_column(String(16))
    delivery_reason: Mapped[str | None] = mapped_column(Text)
    delivery_attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    delivery_retries: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # A private note: agents only. Never sent through a channel, never the conversation's last
    # message (its preview, order and ticks stay the customer's thread).
    private: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    sender: Mapped[User | None] = relationship(lazy="joined")

    __table_args__ = (
        Index("ix_messages_conversation_id", "conversation_id", "id"),
        UniqueConstraint("user_id", "idempotency_key", name="uq_messages_user_idempotency_key"),
    )


class Delivery(db.Model):
    """The outbox: one row per reply to send, committed with the reply itself. Workers claim the
    oldest unfinished one of a conversation (so replies go out in order) for a lease; a worker
    that dies loses it to another when the lease expires."""

    __tablename__ = "deliveries"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"), unique=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    channel_id: Mapped[int | None] = mapped_column(ForeignKey("channels.id", ondelete="SET NULL"))
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # of this round (a Retry starts a new one)
    run_after: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime)
    lease_token: Mapped[str | None] = mapped_column(String(32))  # who holds it: a stale holder can't finish
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (
        Index("ix_deliveries_due", "done", "run_after", "id"),
        Index("ix_deliveries_conversation", "conversation_id", "done", "id"),
    )


class DeliveryStatus(db.Model):
    """A provider's status report, stored once per (provider message id, status): retried
    webhooks change nothing, and a report that beats the worker's own record of the id waits here."""

    __tablename__ = "delivery_statuses"
    id: Mapped[int] = mapped_column(primary_key=True)
    provider_message_id: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (UniqueConstraint("provider_message_id", "status", name="uq_delivery_statuses_id_status"),)


class Tag(db.Model):
    __tablename__ = "tags"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(60), unique=True)
    color: Mapped[str] = mapped_column(String(7), default="#0ea5e9")


class ConversationLabel(db.Model):
    """A tag (the admin's list) put on a conversation by an agent: its label."""

    __tablename__ = "conversation_labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    tag_id: Mapped[int] = mapped_column(ForeignKey("tags.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("conversation_id", "tag_id", name="uq_conversation_labels_conversation_tag"),
        Index("ix_conversation_labels_tag", "tag_id", "conversation_id"),
    )


class Mention(db.Model):
    """An agent named in a private note (`@Bruno`): told live, listed until they mark it seen."""

    __tablename__ = "mentions"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))  # who is mentioned
    author_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    seen: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (
        UniqueConstraint("message_id", "user_id", name="uq_mentions_message_user"),
        Index("ix_mentions_user_seen", "user_id", "seen", "id"),
    )


# An attachment's file: being fetched from the provider, kept in storage, or not kept (why).
DOWNLOADING, STORED = "downloading", "stored"
ATTACHMENT_STATES = (DOWNLOADING, STORED, FAILED)


class Attachment(db.Model):
    """A file on a message. Inbound ones are committed `downloading` with the provider's
    reference (`source`: a URL, or WhatsApp's media id) and fetched after the commit by a worker,
    which claims them for a lease like deliveries; an agent's upload is `stored` at once. The
    bytes live in storage (chat/storage.py) under `storage_key`; `content_type` is sniffed from
    them, never the sender's claim (`declared_type`)."""

    __tablename__ = "attachments"
    id: Mapped[int] = mapped_column(primary_key=True)
    message_id: Mapped[int] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))
    conversation_id: Mapped[int] = mapped_column(ForeignKey("conversations.id", ondelete="CASCADE"))
    channel_id: Mapped[int | None] = mapped_column(ForeignKey("channels.id", ondelete="SET NULL"))
    source: Mapped[str | None] = mapped_column(String(2000))
    kind: Mapped[str | None] = mapped_column(String(16))  # image | audio | video | document | sticker
    declared_type: Mapped[str | None] = mapped_column(String(255))
    content_type: Mapped[str | None] = mapped_column(String(255))
    filename: Mapped[str | None] = mapped_column(String(255))
    caption: Mapped[str | None] = mapped_column(Text)
    size: Mapped[int | None] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=DOWNLOADING)
    reason: Mapped[str | None] = mapped_column(Text)
    storage_key: Mapped[str | None] = mapped_column(String(500))
    thumb_key: Mapped[str | None] = mapped_column(String(500))
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    run_after: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime)
    lease_token: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

    __table_args__ = (
        Index("ix_attachments_message", "message_id", "id"),
        Index("ix_attachments_due", "state", "run_after"),
    )


class QuickReply(db.Model):
    """A reply template an agent can insert into the reply box."""

    __tablename__ = "quick_replies"
    id: Mapped[int] = mapped_column(primary_key=True)
    shortcut: Mapped[str] = mapped_column(String(40), unique=True)
    body: Mapped[str] = mapped_column(Text)


class Setting(db.Model):
    """Kept for the `settings` table the initial migration creates (dropping it needs a
    migration of its own); nothing reads or writes it yet, so no rule invalidates it."""

    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(80), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


@dataclass(frozen=True)
class Viewer(UserMixin):
    """The signed-in agent as the cache keeps it: what permission checks and templates need.

    Loading it from the cache (not the users table) lets a cache hit run zero SQL queries.
    """

    id: int
    email: str
    name: str
    role: str
    active: bool
    department_ids: tuple[int, ...]
    session_version: int = 0

    @classmethod
    def of(cls, user: User) -> "Viewer":
        return cls(user.id, user.email, user.name, user.role, user.active, tuple(user.department_ids),
                   user.session_version or 0)

    def as_dict(self) -> dict:
        return {"id": self.id, "email": self.email, "name": self.name, "role": self.role,
                "active": self.active, "department_ids": list(self.department_ids),
                "session_version": self.session_version}

    @classmethod
    def from_dict(cls, data: dict) -> "Viewer":
        # An entry cached before session versions existed predates every bump (a bump
        # invalidates user:<id>), so its version is the column's default, 0.
        return cls(data["id"], data["email"], data["name"], data["role"], data["active"],
                   tuple(data["department_ids"]), data.get("session_version", 0))

    def get_id(self) -> str:
        return session_id(self.id, self.session_version)

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN

    @property
    def is_active(self) -> bool:
        return self.active
