"""Push: the only code that talks to Socket.IO.

A browser's Socket.IO connection is accepted only from a signed-in session, and the server
(never the client) puts it in the rooms it is entitled to: its agent, its departments, every
agent's room, and admins. After a commit, invalidation.py tells `publish` which keys went
stale for which room; each room gets one `data:updated` event naming them. The event is only
a hint (Socket.IO delivers at most once): browsers revalidate on reconnect.

With REDIS_URL set, Redis is the message queue, so an event raised in any process (a web
worker, the inbound webhook, a CLI command) reaches browsers connected to any other.
"""
from __future__ import annotations

import logging

from flask import Flask
from flask_login import current_user
from flask_socketio import ConnectionRefusedError, SocketIO, join_room

log = logging.getLogger("chat.push")
socketio = SocketIO()
EVENT = "data:updated"


def rooms_for(viewer) -> list[str]:
    """The rooms a viewer's connection joins: exactly what the viewer may see."""
    if viewer.is_admin:
        return ["admins", "agents", f"user:{viewer.id}"]
    return ["agents", f"user:{viewer.id}", "dept:none"] + [f"dept:{d}" for d in viewer.department_ids]


def init_app(app: Flask) -> None:
    # Redis carries events between processes; SOCKETIO_MESSAGE_QUEUE overrides (None: this
    # process only, as the tests that build hundreds of apps in one process want).
    queue = app.config["SOCKETIO_MESSAGE_QUEUE"] if "SOCKETIO_MESSAGE_QUEUE" in app.config \
        else app.config.get("REDIS_URL")
    socketio.init_app(
        app,
        async_mode="threading",
        message_queue=queue or None,
        channel=app.config.get("SOCKETIO_CHANNEL", "chat-socketio"),
        cors_allowed_origins=app.config.get("SOCKETIO_CORS_ORIGINS", []),  # same origin only
        manage_session=False,  # read the Flask session cookie; never write it from a socket
    )


@socketio.on("connect")
def connect(auth=None):
    """Refuse anonymous connections; join the rooms this agent is entitled to."""
    if not current_user.is_authenticated or not current_user.is_active:
        raise ConnectionRefusedError("sign in first")  # the shim sends the page to /login
    for room in rooms_for(current_user):
        join_room(room)


def publish(rooms: dict[str, set[str]]) -> None:
    """One `data:updated` {"keys": [...]} per room; failures are logged, never raised: push is a hint."""
    for room, keys in sorted(rooms.items()):
        try:
            socketio.emit(EVENT, {"keys": sorted(keys)}, to=room)
            log.debug("PUSH %s %s", room, sorted(keys))
        except Exception as exc:  # noqa: BLE001 - a lost hint is caught by revalidation
            log.warning("could not push to %s: %s", room, exc)
