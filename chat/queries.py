"""Read side: the lists and fragments the inbox shows, as plain, cacheable data.

Every function returns dicts and lists (never ORM objects), so a cache layer can store
the result as it is and a template renders the same thing from a hit or a miss.
"""
from __future__ import annotations

import json
from datetime import datetime

from flask import current_app
from sqlalchemy import Text, and_, case, cast, exists, func, or_, select
from sqlalchemy.sql import ColumnElement

from . import search
from .domain import CONTROL_CHARACTERS
from .extensions import db
from .models import (ACTIVE, CLOSED, NONE, PENDING, STORED, Attachment, Contact, Conversation, ConversationLabel,
                     Department, Mention, Message, Tag, User, Viewer)
from .visibility import TABS, tab_filter, tabs_listing, visible_to


def _iso(value: datetime | None) -> str | None:
    return value.isoformat(timespec="seconds") + "Z" if value else None


def labels_of(conversation_ids: list[int]) -> dict[int, list[dict]]:
    """conversation id -> its labels ({name, color}, by name), in one query."""
    found: dict[int, list[dict]] = {i: [] for i in conversation_ids}
    if conversation_ids:
        for conversation_id, name, color in db.session.execute(
            select(ConversationLabel.conversation_id, Tag.name, Tag.color)
            .join(Tag, Tag.id == ConversationLabel.tag_id)
            .where(ConversationLabel.conversation_id.in_(conversation_ids))
        ):
            found[conversation_id].append({"name": name, "color": color})
    return {i: _by_name(labels) for i, labels in found.items()}


def _by_name(labels: list[dict]) -> list[dict]:
    """Labels in the order every list and pane shows them, on either database (not by its collation)."""
    return sorted(labels, key=lambda label: (label["name"].lower(), label["name"]))


def _labels_column():
    """A conversation's labels as JSON text, a column of the row's own query: a list is one query."""
    pair = ("name", Tag.name, "color", Tag.color)
    if db.session.get_bind().dialect.name == "postgresql":
        labels = cast(func.json_agg(func.json_build_object(*pair)), Text)
    else:
        labels = func.json_group_array(func.json_object(*pair))
    return (select(labels).select_from(ConversationLabel).join(Tag, Tag.id == ConversationLabel.tag_id)
            .where(ConversationLabel.conversation_id == Conversation.id).correlate(Conversation)
            .scalar_subquery().label("labels"))


def _labels_from(column: str | None) -> list[dict]:
    return _by_name(json.loads(column)) if column else []


def has_label(tag_id: int) -> ColumnElement[bool]:
    """The conversation carries that tag as a label."""
    return exists().where(ConversationLabel.conversation_id == Conversation.id, ConversationLabel.tag_id == tag_id)


def conversation_summary(c: Conversation, labels: list[dict] | None = None) -> dict:
    """What lists, panes and the API show of a conversation (labels: when the caller has read them)."""
    return {
        "id": c.id,
        "status": c.status,
        "contact": {
            "id": c.contact.id,
            "name": c.contact.name,
            "phone": c.contact.phone,
            "avatar_url": c.contact.avatar_url,
        },
        "user": {"id": c.user.id, "name": c.user.name} if c.user else None,
        "department": (
            {"id": c.department.id, "name": c.department.name, "color": c.department.color}
            if c.department
            else None
        ),
        "last_message": c.last_message_body,
        "last_message_at": _iso(c.last_message_at),
        # The delivery state of the newest message when it is a reply (None when the contact's).
        "last_message_state": c.last_message_state,
        "unread_count": c.unread_count,
        "labels": labels_of([c.id])[c.id] if labels is None else labels,
    }


def conversation_summary_by_id(conversation_id: int) -> dict | None:
    found = db.session.get(Conversation, conversation_id)
    return conversation_summary(found) if found else None


def _contains(q: str) -> str:
    """A LIKE pattern matching `q` literally: '%' and '_' typed by a user are not wildcards.
    Control characters are dropped: nothing stored holds them, and PostgreSQL refuses NUL."""
    q = CONTROL_CHARACTERS.sub("", q)
    escaped = q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def contact_matches(q: str) -> ColumnElement[bool]:
    """The search box's rule, for conversations and contacts alike: the contact's name
    (any case) or phone contains what was typed."""
    return or_(
        func.lower(Contact.name).like(_contains(q.lower()), escape="\\"),
        Contact.phone.like(_contains(q), escape="\\"),
    )


def encode_cursor(conversation: Conversation) -> str:
    """Full precision: rows written in the same second must not fall between pages."""
    return _cursor(_order_of(conversation))


def _order_of(conversation: Conversation) -> tuple[str, int]:
    """A list row's place: newest first by (last message, id); microseconds always written, so
    that these strings sort as the datetimes do."""
    return conversation.last_message_at.isoformat(timespec="microseconds"), conversation.id


def _cursor(order: tuple[str, int] | list) -> str:
    return f"{order[0]}_{order[1]}"


def decode_cursor(cursor: str | None) -> tuple[datetime, int] | None:
    """A cursor is '<last_message_at>_<id>' of the last row shown; garbage means 'first page'."""
    if not cursor:
        return None
    try:
        stamp, ident = cursor.rsplit("_", 1)
        return datetime.fromisoformat(stamp.rstrip("Z")), int(ident)
    except ValueError:
        return None


def list_conversations(
    viewer: Viewer,
    tab: str,
    department_id: int | None = None,
    q: str = "",
    cursor: str | None = None,
    pages: int = 1,
    label_id: int | None = None,
) -> dict:
    """`pages` pages of the viewer's conversations in a tab, newest first, with the next cursor
    (a list refreshed after the agent scrolled refetches every page loaded, not just the first).
    A search `q` finds the contact's name or phone and what was written (chat/search.py); each
    item found then carries a `snippet`: HTML of its newest matching message, or None."""
    size = current_app.config["PAGE_SIZE"] * pages
    stmt = (
        select(Conversation)
        .where(visible_to(viewer), tab_filter(viewer, tab))
        .order_by(Conversation.last_message_at.desc(), Conversation.id.desc())
        .limit(size + 1)
    )
    if department_id is not None:
        stmt = stmt.where(Conversation.department_id == department_id)
    if label_id is not None:
        stmt = stmt.where(has_label(label_id))
    q = (q or "").strip()
    if q:
        stmt = stmt.join(Conversation.contact).where(or_(contact_matches(q), *search.conversation_matches(q)))
    after = decode_cursor(cursor)
    if after:
        stamp, ident = after
        stmt = stmt.where(
            or_(
                Conversation.last_message_at < stamp,
                and_(Conversation.last_message_at == stamp, Conversation.id < ident),
            )
        )
    page = _page(stmt, size)
    if q:
        found = search.snippets(q, [c["id"] for c in page["items"]])
        page["items"] = [{**c, "snippet": found.get(c["id"])} for c in page["items"]]
    return page


def _page(stmt, size: int) -> dict:
    """The first `size` rows of a list query asking for size + 1 (select(Conversation)), in one
    query with their labels: their summaries, the cursor of the next page, and each row's
    place (`order`, for merge_pages)."""
    found = db.session.execute(stmt.add_columns(_labels_column())).unique().all()
    rows = [conversation for conversation, _ in found]
    return {"items": [conversation_summary(c, _labels_from(labels)) for c, labels in found[:size]],
            "next_cursor": encode_cursor(rows[size - 1]) if len(rows) > size else None,
            "order": [list(_order_of(c)) for c in rows[:size]]}


def pending_queue(department_id: int | None, pages: int = 1) -> dict:
    """One department's pending queue (None: the conversations without one), paged as
    list_conversations pages a Pending list: the part of every Pending list that shows it."""
    size = current_app.config["PAGE_SIZE"] * pages
    department = (Conversation.department_id.is_(None) if department_id is None
                  else Conversation.department_id == department_id)
    return _page(select(Conversation).where(Conversation.status == PENDING, department)
                 .order_by(Conversation.last_message_at.desc(), Conversation.id.desc()).limit(size + 1), size)


def merge_pages(parts: list[dict], pages: int = 1) -> dict:
    """The first `pages` pages of the union of disjoint lists, from the same pages of each: what
    one query over their union returns (every row of the union's first pages is in its own
    list's first pages, and another row after them means a next page)."""
    size = current_app.config["PAGE_SIZE"] * pages
    rows = sorted(((tuple(order), item) for part in parts for order, item in zip(part["order"], part["items"])),
                  key=lambda row: row[0], reverse=True)
    more = len(rows) > size or any(part["next_cursor"] for part in parts)
    top = rows[:size]
    return {"items": [item for _, item in top],
            "next_cursor": _cursor(top[-1][0]) if more and top else None,
            "order": [list(order) for order, _ in top]}


def message_dict(m: Message, mentions: list[dict] | None = None, files: list[dict] | None = None) -> dict:
    """A message as the thread and the API show it, with its attachments (`files`: when the
    caller has read them, else read here). A private note (agents only, never sent) also names
    the agents it told (`mentions`: likewise)."""
    found = {
        "id": m.id,
        "body": m.body,
        "from_me": m.from_me,
        "private": bool(m.private),
        "sender": m.sender.name if m.sender else None,
        "created_at": _iso(m.created_at),
        "delivery": delivery_dict(m),
        "attachments": files if files is not None else attachments_of([m.id])[m.id],
    }
    if m.private:
        found["mentions"] = mentions if mentions is not None else mentions_of([m.id])[m.id]
    return found


def attachments_of(message_ids: list[int]) -> dict[int, list[dict]]:
    """message id -> its attachments as the thread and the API show them, in one query. A file's
    url (and an image's thumbnail) only once it is stored; `reason` when it was not."""
    found: dict[int, list[dict]] = {i: [] for i in message_ids}
    if message_ids:
        for a in db.session.scalars(select(Attachment).where(Attachment.message_id.in_(message_ids))
                                    .order_by(Attachment.message_id, Attachment.id)):
            stored = a.state == STORED
            found[a.message_id].append({
                "id": a.id, "state": a.state, "reason": a.reason if a.state != STORED else None,
                "kind": a.kind, "content_type": a.content_type if stored else a.declared_type,
                "filename": a.filename, "size": a.size, "caption": a.caption,
                "url": f"/attachments/{a.id}" if stored else None,
                "thumbnail_url": f"/attachments/{a.id}/thumbnail" if stored and a.thumb_key else None,
            })
    return found


def mentions_of(message_ids: list[int]) -> dict[int, list[dict]]:
    """message id -> the agents its note mentioned ({id, name}, by name), in one query."""
    found: dict[int, list[dict]] = {i: [] for i in message_ids}
    if message_ids:
        for message_id, user_id, name in db.session.execute(
            select(Mention.message_id, User.id, User.name).join(User, User.id == Mention.user_id)
            .where(Mention.message_id.in_(message_ids)).order_by(User.name)
        ):
            found[message_id].append({"id": user_id, "name": name})
    return found


def delivery_dict(m: Message) -> dict:
    """A reply's way to the customer (a contact's message: none)."""
    return {"state": m.delivery_state or NONE, "reason": m.delivery_reason, "attempts": m.delivery_attempts or 0}


def conversation_messages(conversation_id: int, before: int | None = None, since: int | None = None,
                          max_pages: int = 1) -> dict:
    """A page of messages, oldest first: the newest page; or the page older than `before` ("load
    older"); or every message from `since` on (what an agent has loaded), at most `max_pages` pages."""
    size = current_app.config["MESSAGE_PAGE_SIZE"]
    stmt = select(Message).where(Message.conversation_id == conversation_id).order_by(Message.id.desc())
    if before is not None:
        stmt = stmt.where(Message.id < before)
    elif since is not None:
        size *= max_pages
        stmt = stmt.where(Message.id >= since)
    rows = db.session.scalars(stmt.limit(size + 1)).unique().all()
    page = list(reversed(rows[:size]))
    older = len(rows) > size
    if since is not None and page and not older:
        older = db.session.scalar(select(Message.id).where(Message.conversation_id == conversation_id,
                                                           Message.id < page[0].id).limit(1)) is not None
    notes = mentions_of([m.id for m in page if m.private])
    files = attachments_of([m.id for m in page])
    return {
        "items": [message_dict(m, notes.get(m.id), files[m.id]) for m in page],
        "older_cursor": page[0].id if older and page else None,
    }


MENTIONS_SHOWN = 10  # the newest mentions the topbar lists


def mentions(viewer: Viewer) -> dict:
    """The agent's mentions in notes on conversations they may see now: how many are unseen, and
    the newest few (who wrote what, on whose conversation, when)."""
    visible = visible_to(viewer)
    unseen = db.session.scalar(
        select(func.count()).select_from(Mention).join(Conversation, Conversation.id == Mention.conversation_id)
        .where(Mention.user_id == viewer.id, Mention.seen.is_(False), visible))
    rows = db.session.execute(
        select(Mention.id, Mention.conversation_id, Mention.seen, Mention.created_at, Message.body,
               Contact.name.label("contact"), User.name.label("author"))
        .select_from(Mention)
        .join(Message, Message.id == Mention.message_id)
        .join(Conversation, Conversation.id == Mention.conversation_id)
        .join(Contact, Contact.id == Conversation.contact_id)
        .outerjoin(User, User.id == Mention.author_id)
        .where(Mention.user_id == viewer.id, visible)
        .order_by(Mention.id.desc())
        .limit(MENTIONS_SHOWN)
    ).all()
    return {
        "unseen": unseen or 0,
        "items": [{"id": r.id, "conversation_id": r.conversation_id, "seen": r.seen, "created_at": _iso(r.created_at),
                   "body": r.body[:200], "contact": r.contact, "author": r.author} for r in rows],
    }


def tab_counts(viewer: Viewer) -> dict:
    """How many conversations the viewer sees in each tab (the badges next to the tabs)."""
    visible = visible_to(viewer)
    rows = db.session.execute(
        select(Conversation.status, Conversation.user_id, func.count())
        .where(visible)
        .group_by(Conversation.status, Conversation.user_id)
    ).all()
    counts = dict.fromkeys(TABS, 0)
    for status, user_id, n in rows:
        for tab in tabs_listing(viewer, status, user_id):
            counts[tab] += n
    return counts


def dashboard(viewer: Viewer) -> dict:
    """Counts by status, by agent and by department over what the viewer can see."""
    visible = visible_to(viewer)
    by_status = dict.fromkeys((PENDING, ACTIVE, CLOSED), 0)
    for status, n in db.session.execute(
        select(Conversation.status, func.count()).where(visible).group_by(Conversation.status)
    ):
        by_status[status] = n
    by_agent = [
        {"name": name or "Unassigned", "active": active or 0, "closed": closed or 0}
        for name, active, closed in db.session.execute(
            select(
                User.name,
                func.sum(case((Conversation.status == ACTIVE, 1), else_=0)),
                func.sum(case((Conversation.status == CLOSED, 1), else_=0)),
            )
            .select_from(Conversation)
            .outerjoin(User, Conversation.user_id == User.id)
            .where(visible, Conversation.status != PENDING)
            .group_by(User.name)
            .order_by(User.name)
        )
    ]
    by_department = [
        {"name": name or "No department", "color": color or "#94a3b8", "pending": p or 0,
         "active": a or 0, "closed": c or 0}
        for name, color, p, a, c in db.session.execute(
            select(
                Department.name,
                Department.color,
                func.sum(case((Conversation.status == PENDING, 1), else_=0)),
                func.sum(case((Conversation.status == ACTIVE, 1), else_=0)),
                func.sum(case((Conversation.status == CLOSED, 1), else_=0)),
            )
            .select_from(Conversation)
            .outerjoin(Department, Conversation.department_id == Department.id)
            .where(visible)
            .group_by(Department.name, Department.color)
            .order_by(Department.name)
        )
    ]
    by_label = [
        {"name": name, "color": color, "pending": p or 0, "active": a or 0, "closed": c or 0}
        for name, color, p, a, c in db.session.execute(
            select(
                Tag.name,
                Tag.color,
                func.sum(case((Conversation.status == PENDING, 1), else_=0)),
                func.sum(case((Conversation.status == ACTIVE, 1), else_=0)),
                func.sum(case((Conversation.status == CLOSED, 1), else_=0)),
            )
            .select_from(ConversationLabel)
            .join(Tag, Tag.id == ConversationLabel.tag_id)
            .join(Conversation, Conversation.id == ConversationLabel.conversation_id)
            .where(visible)
            .group_by(Tag.name, Tag.color)
            .order_by(Tag.name)
        )
    ]
    return {"by_status": by_status, "by_agent": by_agent, "by_department": by_department, "by_label": by_label}


def list_contacts(q: str = "", page: int = 1) -> dict:
    size = current_app.config["PAGE_SIZE"]
    stmt = select(Contact).order_by(Contact.name, Contact.id)
    q = (q or "").strip()
    if q:
        stmt = stmt.where(contact_matches(q))
    rows = db.session.scalars(stmt.offset((page - 1) * size).limit(size + 1)).all()
    return {
        "items": [
            {"id": c.id, "name": c.name, "phone": c.phone, "avatar_url": c.avatar_url}
            for c in rows[:size]
        ],
        "next_page": page + 1 if len(rows) > size else None,
    }


def departments() -> list[dict]:
    return [
        {"id": d.id, "name": d.name, "color": d.color}
        for d in db.session.scalars(select(Department).order_by(Department.name))
    ]


def agents() -> list[dict]:
    return [
        {
            "id": u.id,
            "name": u.name,
            "email": u.email,
            "role": u.role,
            "active": u.active,
            "departments": [d.name for d in u.departments],
            "department_ids": [d.id for d in u.departments],
        }
        for u in db.session.scalars(select(User).order_by(User.name))
    ]
