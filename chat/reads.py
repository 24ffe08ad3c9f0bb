"""Cached reads that are not fragments of their own: who is asking (session and API token),
the slow-changing lists (departments, agents, tags, quick replies) and contacts.

`read` is the one door to the cache for data, and holds the one bypass rule: a read inside a
transaction with uncommitted writes neither uses nor fills the cache. Fragments
(chat/fragments.py) read through it too.
"""
from __future__ import annotations

import hashlib
from typing import Any, Callable, Iterable

from flask import current_app, g, has_request_context, request
from sqlalchemy import select

from . import queries
from .cache import Lookup, smart_cache
from .extensions import db
from .invalidation import has_pending_writes
from .models import QuickReply, Tag, User, Viewer, hash_token


def digest(text: str) -> str:
    """A short stable hash for free text in a key (a search, a cursor)."""
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def read(key: str, fetch: Callable[[], Any], ttl: str = "dynamic", tags: Iterable[str] = ()) -> Any:
    """get_or_fetch, bypassed inside a transaction with uncommitted writes."""
    return smart_cache.get_or_fetch(key, fetch, ttl=ttl, tags=tuple(tags),
                                    bypass=has_pending_writes(db.session))


def salt(viewer: Viewer) -> str:
    """What a response's validator names besides its data: this viewer and this release."""
    return _salt(viewer.id)


def _salt(user_id: int) -> str:
    return f"{current_app.config.get('RELEASE', '1')}:{user_id}"


def etag(viewer: Viewer, keys: Iterable[str], tags: Iterable[str] = ()) -> str | None:
    """Validator of a response built from `keys`, for this viewer and this release."""
    return smart_cache.etag(keys, tags, salt=salt(viewer))


def lookup(viewer: Viewer, keys: Iterable[str], tags: Iterable[str] = (), entry: str | None = None) -> Lookup | None:
    """The validator of a response built from `keys` and, in the same round trip, the entry
    `entry` as stored under the same generations (None when the backend is down).

    Remembered per viewer and URL, so that the viewer's next request for this URL reads it in
    the same round trip as the viewer itself (see viewer())."""
    keys, tags = tuple(keys), tuple(tags)
    plan = (keys, tags, entry)
    if has_request_context() and request.method == "GET":
        plans = _plans()
        if len(plans) >= MAX_PLANS:
            plans.clear()
        plans[_plan_key(viewer.id)] = plan
        ahead = g.pop("cache_lookup_ahead", None)
        if ahead and ahead[0] == (viewer.id, plan) and ahead[1] == smart_cache.invalidations_in_this_thread():
            return ahead[2]  # read with the viewer, at the start of this request
    return smart_cache.lookup(keys, tags, salt=salt(viewer), entry=entry)


def read_looked_up(found: Lookup | None, fetch: Callable[[], Any], ttl: str = "dynamic") -> Any:
    """The entry of a lookup, or fetch() stored under its generations; bypassed like read()."""
    return smart_cache.get_or_fetch_looked_up(found, fetch, ttl=ttl, bypass=has_pending_writes(db.session))


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
    return f"contacts:q:{digest(q.strip().lower())}:page:{page}"


def contacts(q: str, page: int) -> dict:
    return read(contacts_key(q, page), lambda: queries.list_contacts(q, page), ttl="moderate")


# -- who is asking ----------------------------------------------------------------------------
def viewer(user_id: int) -> Viewer | None:
    """The signed-in agent, from the cache: a request served from cache runs no SQL at all."""
    def fetch():
        user = db.session.get(User, user_id)
        return Viewer.of(user).as_dict() if user else None

    plan = _plans().get(_plan_key(user_id)) if has_request_context() and request.method == "GET" else None
    if plan is None or has_pending_writes(db.session):
        data = read(f"user:{user_id}", fetch, ttl="moderate")
    else:  # what this viewer's last request for this URL looked up, in the same round trip
        data, found = smart_cache.get_or_fetch_and_lookup(f"user:{user_id}", fetch, "moderate", *plan[:2],
                                                          salt=_salt(user_id), entry=plan[2])
        if found is not None:
            g.cache_lookup_ahead = ((user_id, plan), smart_cache.invalidations_in_this_thread(), found)
    return Viewer.from_dict(data) if data else None


MAX_PLANS = 10_000  # (viewer, URL) pairs remembered per process


def _plans() -> dict[tuple, tuple]:
    """(viewer, URL, revalidating) -> what its last request looked up, for this app."""
    return current_app.extensions.setdefault("cache_read_ahead", {})


def _plan_key(user_id: int) -> tuple:
    return (user_id, request.full_path, bool(request.headers.get("If-None-Match")))


def viewer_by_token(token: str) -> Viewer | None:
    digest_ = hash_token(token)

    def fetch():
        user = db.session.scalar(select(User).where(User.api_token_hash == digest_))
        return Viewer.of(user).as_dict() if user else None

    data = read(f"token:{digest_}", fetch, ttl="moderate")
    return Viewer.from_dict(data) if data else None
