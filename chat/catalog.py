"""Slow-changing data admins manage: departments, tags, quick replies and agents.

Like the domain module, these functions validate, change rows and commit, and know nothing
of HTTP or the cache.
"""
from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from .domain import reject_control_characters
from .errors import InvalidInput, NotFound
from .extensions import db
from .models import ADMIN, ROLES, Department, QuickReply, Tag, User

COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


def _text(value: object, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput(f"{field} is required")
    value = reject_control_characters(value.strip(), field)
    if len(value) > limit:
        raise InvalidInput(f"{field} must be at most {limit} characters")
    return value


def _color(value: object) -> str:
    if not isinstance(value, str) or not COLOR_RE.fullmatch(value):  # match() allows a trailing "\n"
        raise InvalidInput("colour must look like #1a2b3c")
    return value.lower()


def _commit_unique(what: str) -> None:
    try:
        db.session.commit()
    except IntegrityError:
        db.session.rollback()
        raise InvalidInput(f"{what} already exists") from None


def _save_labelled(model, label: str, limit: int, name: object, color: object, item_id: int | None):
    """Departments and tags are the same shape: a unique name and a colour."""
    item = _get(model, item_id) if item_id else model()
    item.name = _text(name, "name", limit)
    item.color = _color(color)
    db.session.add(item)
    _commit_unique(f"a {label} named {item.name!r}")
    return item


def save_department(name: object, color: object, item_id: int | None = None) -> Department:
    return _save_labelled(Department, "department", 80, name, color, item_id)


def save_tag(name: object, color: object, item_id: int | None = None) -> Tag:
    return _save_labelled(Tag, "tag", 60, name, color, item_id)


def delete_department(item_id: int) -> None:
    _delete(Department, item_id)


def delete_tag(item_id: int) -> None:
    _delete(Tag, item_id)


def save_quick_reply(shortcut: object, body: object, item_id: int | None = None) -> QuickReply:
    reply = _get(QuickReply, item_id) if item_id else QuickReply()
    reply.shortcut = _text(shortcut, "shortcut", 40)
    reply.body = _text(body, "text", 4096)
    db.session.add(reply)
    _commit_unique(f"a quick reply with shortcut {reply.shortcut!r}")
    return reply


def delete_quick_reply(item_id: int) -> None:
    _delete(QuickReply, item_id)


def _delete(model, item_id: int) -> None:
    db.session.delete(_get(model, item_id))
    db.session.commit()


def save_agent(
    email: object,
    name: object,
    role: object,
    department_ids: list[int],
    password: object = None,
    active: bool = True,
    agent_id: int | None = None,
) -> User:
    """Create or update an agent; a new agent needs a password of 8 characters or more."""
    agent = _get(User, agent_id) if agent_id else User()
    email = _text(email, "email", 254).lower()
    if not EMAIL_RE.match(email):
        raise InvalidInput("email does not look like an address")
    if role not in ROLES:
        raise InvalidInput(f"role must be one of {', '.join(ROLES)}")
    if password or not agent_id:
        if not isinstance(password, str) or len(password) < 8:
            raise InvalidInput("password must have at least 8 characters")
        reject_control_characters(password, "password")  # the sign-in form refuses them too
        agent.set_password(password)
    departments = list(db.session.scalars(select(Department).where(Department.id.in_(department_ids))))
    if len(departments) != len(set(department_ids)):
        raise InvalidInput("unknown department")
    if (agent_id and agent.role == ADMIN and agent.active and (role != ADMIN or not active)
            and _admin_count() == 1):
        raise InvalidInput("the last admin cannot be demoted or deactivated")
    name = _text(name, "name", 120)
    if agent_id and (password or (agent.active and not active)):
        agent.end_sessions()  # a new password or a deactivation signs the agent out everywhere
    with db.session.no_autoflush:  # loading the old departments must not flush a duplicate email early
        agent.email, agent.name, agent.role, agent.active = email, name, role, active
        agent.departments = departments
    db.session.add(agent)
    _commit_unique(f"an agent with email {email}")
    return agent


def _admin_count() -> int:
    return db.session.scalar(
        select(func.count()).select_from(User).where(User.role == ADMIN, User.active.is_(True))
    )


def end_sessions(agent_id: int) -> None:
    """Sign an agent out everywhere: every session and remember-me cookie issued so far stops
    working, and (through the commit, see invalidation.py) every socket of theirs closes."""
    _get(User, agent_id).end_sessions()
    db.session.commit()


def issue_api_token(email: str) -> str:
    agent = db.session.scalar(select(User).where(User.email == email.strip().lower()))
    if agent is None:
        raise NotFound(f"no agent with email {email}")
    token = agent.issue_api_token()
    db.session.commit()
    return token


def _get(model, ident: int | None):
    obj = db.session.get(model, ident) if ident is not None else None
    if obj is None:
        raise NotFound(f"{model.__name__.lower()} not found")
    return obj
