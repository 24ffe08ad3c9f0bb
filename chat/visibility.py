"""Who sees what, in every form the app needs it: one vocabulary that queries, cached reads,
fragments, invalidation and push all import.

The rule: admins see everything; a pending conversation is seen by the agents of its
department (by everyone when it has none); an active or closed one by its assignee.

- SQL: `visible_to`, `tab_filter`; the same in Python: `can_see_summary`, `sees_pending_of`,
  `tabs_listing`, `pending_queues`.
- Cache: `list_scope` (the permission set in a list's key, and the tags that make it stale);
  `conversation_tags` (the tags a changed conversation row makes stale).
- Sockets: `rooms_for` (the rooms a viewer's connection joins), `conversation_rooms` (the rooms
  told about a changed conversation row), `hears` (whether a room may hear a tag).
"""
from __future__ import annotations

from typing import Iterable, NamedTuple, Union

from sqlalchemy import and_, false, or_, select, true
from sqlalchemy.sql import ColumnElement

from .errors import NotFound
from .extensions import db
from .models import ACTIVE, CLOSED, PENDING, Conversation, User, Viewer

Agent = Union[User, Viewer]  # a row from the users table, or the signed-in agent from the cache

TABS = ("pending", "mine", "closed", "all")
DIRECTORY = "directory"  # tag: names and colours of agents, departments, contacts shown in lists
# The admin's tags as labels: what every list, pane and dashboard showing a label depends on.
LABELS = "labels"

# Tags: what can change a conversation list.
ALL_CONVERSATIONS = "convs:all"  # every conversation: an admin's All tab, counts, dashboard


def state_tag(status: str) -> str:
    """Every conversation in this state: an admin's Pending or Closed tab (a reply in an active
    conversation leaves them as they are)."""
    return f"{ALL_CONVERSATIONS}:{status}"


def assignee_tag(user_id: int | None) -> str:
    return f"convs:user:{'none' if user_id is None else user_id}"


def queue_tag(department_id: int | None) -> str:
    """A department's pending queue ('none': the queue of conversations without one)."""
    return f"convs:dept:{'none' if department_id is None else department_id}"


# Socket.IO rooms: a connection joins exactly the rooms of what its agent may see.
ADMINS, AGENTS = "admins", "agents"


def agent_room(user_id: int) -> str:
    return f"user:{user_id}"


def queue_room(department_id: int | None) -> str:
    return f"dept:{'none' if department_id is None else department_id}"


# -- SQL ------------------------------------------------------------------------------------
def visible_to(viewer: Agent) -> ColumnElement[bool]:
    """Pending: agents of its department (everyone when it has none); otherwise its assignee."""
    if viewer.is_admin:
        return true()
    dept_ids = viewer.department_ids
    pending_ok = Conversation.department_id.is_(None)
    if dept_ids:
        pending_ok = or_(pending_ok, Conversation.department_id.in_(dept_ids))
    return or_(
        and_(Conversation.status == PENDING, pending_ok),
        and_(Conversation.status.in_((ACTIVE, CLOSED)), Conversation.user_id == viewer.id),
    )


def tab_filter(viewer: Agent, tab: str) -> ColumnElement[bool]:
    """Which visible conversations a tab lists (tabs_listing says the same in Python)."""
    if tab == "pending":
        return Conversation.status == PENDING
    if tab == "mine":
        return and_(Conversation.status == ACTIVE, Conversation.user_id == viewer.id)
    if tab == "closed":
        return Conversation.status == CLOSED
    if tab == "all":
        return true()
    return false()


def get_visible_conversation(viewer: Agent, conversation_id: int) -> Conversation:
    """The conversation, or NotFound when it does not exist or the viewer may not see it."""
    conversation = db.session.scalar(
        select(Conversation).where(Conversation.id == conversation_id, visible_to(viewer))
    )
    if conversation is None:
        raise NotFound("conversation not found")
    return conversation


# -- the same rule in Python ------------------------------------------------------------------
def tabs_listing(viewer: Agent, status: str, user_id: int | None) -> tuple[str, ...]:
    """The tabs that list a visible conversation in this state: tab_filter in Python."""
    if status == PENDING:
        return ("pending", "all")
    if status == CLOSED:
        return ("closed", "all")
    if status == ACTIVE and user_id == viewer.id:
        return ("mine", "all")
    return ("all",)


def pending_queues(viewer: Agent, every_department: Iterable[int] = ()) -> list[int | None]:
    """The pending queues a viewer sees (visible_to): those of its departments (an admin's: of
    `every_department`) and the queue of conversations without a department (None)."""
    return [*(every_department if viewer.is_admin else viewer.department_ids), None]


def sees_pending_of(viewer: Agent, department_id: int | None) -> bool:
    """Whether the viewer sees pending conversations of this department (everyone: of none)."""
    return viewer.is_admin or department_id is None or department_id in viewer.department_ids


def can_see_summary(viewer: Agent, summary: dict | None) -> bool:
    """visible_to() in Python, for a cached conversation summary (queries.conversation_summary)."""
    if summary is None:
        return False
    if viewer.is_admin:
        return True
    if summary["status"] == PENDING:
        return sees_pending_of(viewer, summary["department"] and summary["department"]["id"])
    return summary["user"] is not None and summary["user"]["id"] == viewer.id


# -- cache: scopes and tags --------------------------------------------------------------------
class ListScope(NamedTuple):
    """A viewer's permission set as far as a list depends on it: `name` goes in the cache key
    (viewers with the same set share the entry), `tags` say which changes make it stale."""

    name: str
    tags: tuple[str, ...]


def _queue_tags(viewer: Agent) -> tuple[str, ...]:
    return tuple(queue_tag(d) for d in viewer.department_ids) + (queue_tag(None),)


def list_scope(viewer: Agent, tab: str = "all") -> ListScope:
    """The scope of a conversation list (tab) or of a summary over every tab ('all')."""
    if tab == "mine":  # the viewer's own, admin or not
        return ListScope(f"user:{viewer.id}", (assignee_tag(viewer.id), DIRECTORY))
    if viewer.is_admin:  # one entry for every admin
        if tab in ("pending", "closed"):
            return ListScope("all", (state_tag(PENDING if tab == "pending" else CLOSED), DIRECTORY))
        return ListScope("all", (ALL_CONVERSATIONS, DIRECTORY))
    if tab == "pending":  # one entry for every agent with the same departments
        depts = ",".join(str(d) for d in viewer.department_ids) or "none"
        return ListScope(f"depts:{depts}", _queue_tags(viewer) + (DIRECTORY,))
    if tab == "closed":
        return ListScope(f"user:{viewer.id}", (assignee_tag(viewer.id), DIRECTORY))
    return ListScope(f"user:{viewer.id}", _queue_tags(viewer) + (assignee_tag(viewer.id), DIRECTORY))


def conversation_tags(row: dict) -> list[str]:
    """The tags a conversation row, as it was or as it is, makes stale: every admin list, the
    admins' tab of its state, its assignee's lists, and its department's queue while it is
    pending."""
    tags = [ALL_CONVERSATIONS]
    if "status" in row:
        tags.append(state_tag(row["status"]))
    if "user_id" in row:
        tags.append(assignee_tag(row["user_id"]))
    if row.get("status") == PENDING and "department_id" in row:
        tags.append(queue_tag(row["department_id"]))
    return tags


# -- sockets: rooms ------------------------------------------------------------------------------
def rooms_for(viewer: Agent) -> list[str]:
    """The rooms a viewer's connection joins: exactly what the viewer may see."""
    if viewer.is_admin:
        return [ADMINS, AGENTS, agent_room(viewer.id)]
    return [AGENTS, agent_room(viewer.id), queue_room(None)] + [queue_room(d) for d in viewer.department_ids]


def conversation_rooms(row: dict) -> list[str]:
    """The rooms whose members may see a conversation row: admins, its assignee, and while it
    is pending, its department's queue."""
    rooms = [ADMINS]
    if row.get("user_id") is not None:
        rooms.append(agent_room(row["user_id"]))
    if row.get("status") == PENDING and "department_id" in row:
        rooms.append(queue_room(row["department_id"]))
    return rooms


def hears(room: str, tag: str) -> bool:
    """A room hears the tags of its own scope only (and shared ones, like 'directory')."""
    if tag == ALL_CONVERSATIONS or tag.startswith(ALL_CONVERSATIONS + ":"):
        return room == ADMINS
    for tag_prefix, room_prefix in (("convs:user:", "user:"), ("convs:dept:", "dept:")):
        if tag.startswith(tag_prefix):
            return room == ADMINS or room == room_prefix + tag[len(tag_prefix):]
    return True
