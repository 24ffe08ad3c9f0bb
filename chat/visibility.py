"""Who may see which conversation: the one rule pages, fragments and the API all apply."""
from __future__ import annotations

from sqlalchemy import and_, false, or_, select, true
from sqlalchemy.sql import ColumnElement

from .errors import NotFound
from .extensions import db
from .models import ACTIVE, CLOSED, PENDING, Conversation, User


def visible_to(user: User) -> ColumnElement[bool]:
    """Pending: agents of its department (everyone when it has none); otherwise its assignee."""
    if user.is_admin:
        return true()
    dept_ids = user.department_ids
    pending_ok = Conversation.department_id.is_(None)
    if dept_ids:
        pending_ok = or_(pending_ok, Conversation.department_id.in_(dept_ids))
    return or_(
        and_(Conversation.status == PENDING, pending_ok),
        and_(Conversation.status.in_((ACTIVE, CLOSED)), Conversation.user_id == user.id),
    )


def tab_filter(user: User, tab: str) -> ColumnElement[bool]:
    if tab == "pending":
        return Conversation.status == PENDING
    if tab == "mine":
        return and_(Conversation.status == ACTIVE, Conversation.user_id == user.id)
    if tab == "closed":
        return Conversation.status == CLOSED
    if tab == "all":
        return true()
    return false()


def get_visible_conversation(user: User, conversation_id: int) -> Conversation:
    """The conversation, or NotFound when it does not exist or the user may not see it."""
    conversation = db.session.scalar(
        select(Conversation).where(Conversation.id == conversation_id, visible_to(user))
    )
    if conversation is None:
        raise NotFound("conversation not found")
    return conversation


def sees_pending_of(user, department_id: int | None) -> bool:
    """Whether the user sees pending conversations of this department (everyone: of none)."""
    return user.is_admin or department_id is None or department_id in user.department_ids


def can_see_summary(user, summary: dict | None) -> bool:
    """visible_to() in Python, for a cached conversation summary (queries.conversation_summary)."""
    if summary is None:
        return False
    if user.is_admin:
        return True
    if summary["status"] == PENDING:
        return sees_pending_of(user, summary["department"] and summary["department"]["id"])
    return summary["user"] is not None and summary["user"]["id"] == user.id
