"""Cached reads: every list, fragment and lookup the views need, by key, TTL class and tags.

Keys name what an entry shows and who may see it (`data-cache-key` in the HTML); viewers
with the same permissions share entries: the pending queue of a department set is one entry
for all its agents. Tags say which changes make an entry stale (see invalidation.py).
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterable

from flask import current_app
from sqlalchemy import select

from . import queries
from .cache import smart_cache
from .extensions import db
from .invalidation import has_pending_writes
from .models import Conversation, QuickReply, Tag, User, Viewer, hash_token
from .visibility import DIRECTORY, list_scope

def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def read(key: str, fetch: Callable[[], Any], ttl: str = "dynamic", tags: Iterable[str] = ()) -> Any:
    """get_or_fetch, bypassed inside a transaction with uncommitted writes."""
    return smart_cache.get_or_fetch(key, fetch, ttl=ttl, tags=tuple(tags),
                                    bypass=has_pending_writes(db.session))


def conversation_list_key(viewer: Viewer, tab: str, department_id: int | None, q: str,
                          cursor: str | None = None, pages: int = 1) -> str:
    key = f"conversations:{list_scope(viewer, tab).name}:tab:{tab}"
    if department_id is not None:
        key += f":dept:{department_id}"
    if q.strip():
        key += f":q:{_digest(q.strip().lower())}"
    if cursor:
        key += f":after:{_digest(cursor)}"
    if pages > 1:
        key += f":pages:{pages}"
    return key


def conversation_list(viewer: Viewer, tab: str, department_id: int | None = None, q: str = "",
                      cursor: str | None = None, pages: int = 1) -> dict:
    return read(conversation_list_key(viewer, tab, department_id, q, cursor, pages),
                lambda: queries.list_conversations(viewer, tab, department_id, q, cursor, pages),
                tags=list_scope(viewer, tab).tags)


def counts_key(viewer: Viewer) -> str:
    return f"counts:{list_scope(viewer).name}"


def tab_counts(viewer: Viewer) -> dict:
    return read(counts_key(viewer), lambda: queries.tab_counts(viewer), tags=list_scope(viewer).tags)


def dashboard_key(viewer: Viewer) -> str:
    return f"dashboard:{list_scope(viewer).name}"


def dashboard(viewer: Viewer) -> dict:
    return read(dashboard_key(viewer), lambda: queries.dashboard(viewer), tags=list_scope(viewer).tags)


# -- one conversation ---------------------------------------------------------------------
def conversation_key(conversation_id: int) -> str:
    return f"conversation:{conversation_id}"


def conversation(conversation_id: int) -> dict | None:
    """The conversation's summary, or None; callers check visibility with can_see_summary."""
    def fetch():
        found = db.session.get(Conversation, conversation_id)
        return queries.conversation_summary(found) if found else None

    return read(conversation_key(conversation_id), fetch, tags=(DIRECTORY,))


def messages_key(conversation_id: int, before: int | None = None) -> str:
    key = f"conversation:{conversation_id}:messages"
    return key + f":before:{before}" if before else key


def messages(conversation_id: int, before: int | None = None) -> dict:
    return read(messages_key(conversation_id, before),
                lambda: queries.conversation_messages(conversation_id, before), tags=(DIRECTORY,))


# -- slow-changing data ---------------------------------------------------------------------
def quick_replies() -> list[dict]:
    return read("quick_replies", lambda: [
        {"id": r.id, "shortcut": r.shortcut, "body": r.body}
        for r in db.session.scalars(select(QuickReply).order_by(QuickReply.shortcut))
    ], ttl="moderate")


def tags() -> list[dict]:
    return read("tags", lambda: [
        {"id": t.id, "name": t.name, "color": t.color}
        for t in db.session.scalars(select(Tag).order_by(Tag.name))
    ], ttl="static")


def departments() -> list[dict]:
    return read("departments", queries.departments, ttl="static")


def agents() -> list[dict]:
    return read("agents", queries.agents, ttl="moderate")


def contacts_key(q: str, page: int) -> str:
    return f"contacts:q:{_digest(q.strip().lower())}:page:{page}"


def contacts(q: str, page: int) -> dict:
    return read(contacts_key(q, page), lambda: queries.list_contacts(q, page), ttl="moderate")


# -- who is asking ----------------------------------------------------------------------------
def viewer(user_id: int) -> Viewer | None:
    """The signed-in agent, from the cache: a request served from cache runs no SQL at all."""
    def fetch():
        user = db.session.get(User, user_id)
        return Viewer.of(user).as_dict() if user else None

    data = read(f"user:{user_id}", fetch, ttl="moderate")
    return Viewer.from_dict(data) if data else None


def viewer_by_token(token: str) -> Viewer | None:
    digest = hash_token(token)

    def fetch():
        user = db.session.scalar(select(User).where(User.api_token_hash == digest))
        return Viewer.of(user).as_dict() if user else None

    data = read(f"token:{digest}", fetch, ttl="moderate")
    return Viewer.from_dict(data) if data else None


def etag(viewer: Viewer, keys: Iterable[str], tags: Iterable[str] = ()) -> str | None:
    """Validator of a response built from `keys`, for this viewer and this release."""
    salt = f"{current_app.config.get('RELEASE', '1')}:{viewer.id}"
    return smart_cache.etag(keys, tags, salt=salt)
