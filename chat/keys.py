"""Names of the refreshable fragments: each is the element's data-cache-key.

One place builds them so pages, fragments and (later) the cache and push agree.
"""
from __future__ import annotations

import hashlib

from .models import User


def _viewer(viewer: User) -> str:
    return f"user:{viewer.id}"


def conversation_list(viewer: User, tab: str, department_id: int | None, q: str) -> str:
    key = f"conversations:{_viewer(viewer)}:tab:{tab}"
    if department_id is not None:
        key += f":dept:{department_id}"
    if q:
        key += ":q:" + hashlib.sha1(q.strip().lower().encode()).hexdigest()[:12]
    return key


def tab_counts(viewer: User) -> str:
    return f"counts:{_viewer(viewer)}"


def conversation(conversation_id: int) -> str:
    return f"conversation:{conversation_id}"


def conversation_messages(conversation_id: int) -> str:
    return f"conversation:{conversation_id}:messages"
