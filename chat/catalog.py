"""Slow-changing data admins manage: departments, tags, quick replies, agents and channels.

Like the domain module, these functions validate, change rows and commit, and know nothing
of HTTP or the cache.
"""
from __future__ import annotations

import re

from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError

from .domain import reject_control_characters
from .errors import InvalidInput, NotFound, Unauthorized
from .extensions import db
from .models import ADMIN, CHANNEL_KINDS, ROLES, WEBHOOK, WHATSAPP, Channel, Department, QuickReply, Tag, User

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


def authenticate(email: str, password: str) -> User:
    """The agent these credentials sign in; 401 with what to tell them otherwise."""
    user = db.session.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None or not user.check_password(password):
        raise Unauthorized("Email or password is wrong.")
    if not user.active:
        raise Unauthorized("This account is deactivated. Ask an admin.")
    return user


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


# -- channels ---------------------------------------------------------------------------------
# Each kind's settings: (field, label, secret). A secret is never shown back; left blank when an
# admin edits a channel, it keeps its value.
CHANNEL_FIELDS: dict[str, tuple[tuple[str, str, bool], ...]] = {
    WEBHOOK: (("url", "URL replies are POSTed to", False), ("secret", "Signing secret (HMAC-SHA256)", True)),
    WHATSAPP: (("phone_number_id", "Phone number ID", False), ("access_token", "Access token", True),
               ("app_secret", "App secret (webhook signatures)", True), ("verify_token", "Verify token", True),
               ("graph_url", "Graph API base URL (blank: Meta's)", False)),
}
REQUIRED_SETTINGS = {WEBHOOK: ("url",), WHATSAPP: ("phone_number_id", "access_token", "app_secret", "verify_token")}
ENVIRONMENT_CHANNELS = {WEBHOOK: "Webhook (environment)", WHATSAPP: "WhatsApp (environment)"}


def _channel_settings(kind: str, given: dict, old: dict) -> dict:
    settings = {}
    for field, label, secret in CHANNEL_FIELDS[kind]:
        value = given.get(field)
        if value is not None and not isinstance(value, str):
            raise InvalidInput(f"{label} must be text")
        value = reject_control_characters((value or "").strip(), label)
        if len(value) > 1000:
            raise InvalidInput(f"{label} must be at most 1000 characters")
        if secret and not value:
            value = old.get(field, "")  # blank: keep the secret it had
        if field in ("url", "graph_url") and value and not re.match(r"^https?://[^\s/]+", value):
            raise InvalidInput(f"{label} must be an http:// or https:// URL")
        if field == "phone_number_id" and value and not value.isdigit():
            raise InvalidInput("Phone number ID must be digits")
        if value:
            settings[field] = value
    missing = [label for field, label, _ in CHANNEL_FIELDS[kind] if field in REQUIRED_SETTINGS[kind]
               and not settings.get(field)]
    if missing:
        raise InvalidInput(f"{missing[0]} is required")
    return settings


def save_channel(kind: object, name: object, settings: dict, active: bool = True, is_default: bool = False,
                 channel_id: int | None = None) -> Channel:
    """Create or update a channel; at most one is the default (for conversations that came
    through none)."""
    channel = _get(Channel, channel_id) if channel_id else Channel()
    if channel_id:
        kind = channel.kind  # a channel's kind is what it is
    if kind not in CHANNEL_KINDS:
        raise InvalidInput(f"kind must be one of {', '.join(CHANNEL_KINDS)}")
    channel.kind = kind
    channel.name = _text(name, "name", 80)
    channel.settings = _channel_settings(kind, settings, dict(channel.settings or {}))
    channel.active, channel.is_default = bool(active), bool(is_default)
    if channel.is_default:
        for other in db.session.scalars(select(Channel).where(Channel.is_default.is_(True))):
            if other is not channel:
                other.is_default = False
    db.session.add(channel)
    _commit_unique(f"a channel named {channel.name!r}")
    return channel


def delete_channel(channel_id: int) -> None:
    """Conversations it carried keep their messages; their replies then say "no channel"."""
    _delete(Channel, channel_id)


def channels() -> list[dict]:
    """Every channel, its settings as the admin page may show them (secrets only as set or not)."""
    from .channels import adapter_for

    return [{"id": c.id, "kind": c.kind, "name": c.name, "active": c.active, "is_default": c.is_default,
             "settings": adapter_for(c.kind, dict(c.settings or {})).describe()}
            for c in db.session.scalars(select(Channel).order_by(Channel.name))]


def inbound_webhook_channel(channel_id: object = None) -> int | None:
    """The generic webhook channel a message to POST /api/inbound came through: the one it names,
    else the default channel if it is a webhook one, else the first active webhook channel."""
    if channel_id is not None:
        if not isinstance(channel_id, int) or isinstance(channel_id, bool):
            raise InvalidInput("channel must be a channel id")
        channel = db.session.get(Channel, channel_id)
        if channel is None or channel.kind != WEBHOOK or not channel.active:
            raise InvalidInput("channel must name an active webhook channel")
        return channel.id
    return db.session.scalar(select(Channel.id).where(Channel.kind == WEBHOOK, Channel.active.is_(True))
                             .order_by(Channel.is_default.desc(), Channel.id).limit(1))


def whatsapp_channels() -> list[Channel]:
    return list(db.session.scalars(select(Channel).where(Channel.kind == WHATSAPP, Channel.active.is_(True))
                                   .order_by(Channel.id)))


def channels_from_environment(config) -> list[Channel]:
    """The channels the environment configures (CHANNEL_WEBHOOK_*, WHATSAPP_*), created or
    brought up to date; the first becomes the default when there is none."""
    wanted = {}
    if config.get("CHANNEL_WEBHOOK_URL"):
        wanted[WEBHOOK] = {"url": config["CHANNEL_WEBHOOK_URL"], "secret": config.get("CHANNEL_WEBHOOK_SECRET") or ""}
    if config.get("WHATSAPP_PHONE_NUMBER_ID"):
        wanted[WHATSAPP] = {key: config.get(f"WHATSAPP_{key.upper()}") or "" for key in
                            ("phone_number_id", "access_token", "app_secret", "verify_token", "graph_url")}
    found = []
    for kind, settings in wanted.items():
        settings = {k: v for k, v in settings.items() if v}
        channel = db.session.scalar(select(Channel).where(Channel.name == ENVIRONMENT_CHANNELS[kind]))
        if channel is None:
            channel = Channel(kind=kind, name=ENVIRONMENT_CHANNELS[kind], active=True)
            db.session.add(channel)
        if channel.settings != settings:
            channel.settings = settings
        found.append(channel)
    if found and not db.session.scalar(select(func.count()).select_from(Channel).where(Channel.is_default.is_(True))):
        found[0].is_default = True
    if db.session.new or db.session.dirty:
        try:
            db.session.commit()
        except IntegrityError:
            db.session.rollback()  # another process made them at the same moment
    return found


def init_app(app) -> None:
    """Channels configured by the environment are made (or updated) on this process's first
    request, once the schema exists; `flask worker` makes them when it starts."""
    if not (app.config.get("CHANNEL_WEBHOOK_URL") or app.config.get("WHATSAPP_PHONE_NUMBER_ID")):
        return
    state = {"done": False}

    @app.before_request
    def environment_channels():
        if state["done"]:
            return
        from sqlalchemy.exc import SQLAlchemyError

        try:
            channels_from_environment(app.config)
            state["done"] = True
        except SQLAlchemyError:
            db.session.rollback()
            app.logger.warning("channels from the environment not saved yet (is the schema upgraded?)", exc_info=True)


def _get(model, ident: int | None):
    obj = db.session.get(model, ident) if ident is not None else None
    if obj is None:
        raise NotFound(f"{model.__name__.lower()} not found")
    return obj
