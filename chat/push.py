"""Push: the only code that talks to Socket.IO.

A browser's Socket.IO connection is accepted only from a signed-in session, and the server
(never the client) puts it in the rooms it is entitled to: its agent, its departments, every
agent's room, and admins. After a commit, invalidation.py tells `publish` which keys went
stale for which room; each socket gets one `data:updated` event naming the keys of the rooms it
is in (OneEventPerSocket), and how many sockets of this process heard them (`audience`: the
browsers spread their refetches over a window that grows with it). The event is only a hint
(Socket.IO delivers at most once): browsers revalidate on reconnect.

With REDIS_URL set, Redis is the message queue, so an event raised in any process (a web
worker, the inbound webhook, a CLI command) reaches browsers connected to any other. On a
Redis Cluster (redis+cluster://) a PUBLISH to any node reaches subscribers on every node, so
each process listens on one node and publishes through the cluster client.

Signing out ends the agent's session everywhere: after the commit that moves the agent's
session version on, `end_sessions` sends `session:ended` to the agent's room and disconnects
every socket of theirs. A room only lists this process's sockets, so with a message queue a
Redis set per agent lists them all; python-socketio's queue carries a disconnect to the
process that holds the socket. On shutdown, `close_connections` closes this process's sockets
so browsers reconnect (to another process) at once instead of waiting on a stopping server.
"""
from __future__ import annotations

import logging
import os
import queue as queues
import sys
import threading
from collections import Counter
from typing import Callable, Iterable

import redis
import socketio as python_socketio
from flask import Flask, current_app, request
from flask_login import current_user
from flask_socketio import ConnectionRefusedError, SocketIO, join_room
from flask_socketio import rooms as joined_rooms

from .config import CLUSTER_SCHEME, is_cluster_url, parse_redis_cluster_url
from .redis_guard import redis_client
from .visibility import rooms_for

log = logging.getLogger("chat.push")
socketio = SocketIO()
EVENT = "data:updated"
SESSION_ENDED = "session:ended"  # the browser goes to /login: this agent signed out somewhere
REGISTRY = "chat.socket_registry"  # app.extensions key: Redis client of the sockets registry, or None
# Only a safety net for sockets whose process died without saying goodbye: each connect of
# the agent renews it, each disconnect removes its own socket id.
REGISTRY_TTL = 7 * 24 * 3600
PUBLISHER = "chat.publisher"  # app.extensions key: the background Publisher, or None (no message queue)
PUBLISH_QUEUE_SIZE = 1000  # events waiting for the message queue; more are dropped (push is a hint)
LISTEN_WAIT_S = 2.0  # how long a new socket waits for this process to hear Redis (push events)


BUNDLE = "chat:bundle"  # the "room" of a commit's events: each process fans them out (OneEventPerSocket)


class OneEventPerSocket:
    """A client manager that turns a commit's events, room -> keys, into one `data:updated` per
    socket naming the keys of every room it is in (each room hears only its own scope, so no
    socket learns a key it is not entitled to). Emitting per room would send a socket in two
    rooms two events: every agent is in the agents' room, so a new contact doubled the fan-out,
    whose cost is per event per socket. Sockets told the same keys share one encoded packet."""

    def fan_out(self, namespace: str, rooms: dict[str, list[str]]) -> None:
        keys_of: dict[str, set[str]] = {}
        for room, keys in rooms.items():
            for sid, _ in self.get_participants(namespace, room):
                keys_of.setdefault(sid, set()).update(keys)
        audiences: dict[tuple[str, ...], list[str]] = {}
        for sid, keys in keys_of.items():
            audiences.setdefault(tuple(sorted(keys)), []).append(sid)
        told = Counter(key for keys in keys_of.values() for key in keys)  # sockets told of each key
        for keys, sids in sorted(audiences.items()):
            # This process's sockets only (every process runs fan_out on the same bundle). The
            # audience, how many sockets here were told of its most widely heard key, sizes the
            # browsers' spread: a few refetch at once, a crowd spreads its refetches out.
            event = {"keys": list(keys), "audience": max(told[key] for key in keys)}
            python_socketio.Manager.emit(self, EVENT, event, namespace, to=sids)

    @staticmethod
    def is_bundle(room) -> bool:
        return room == BUNDLE


class LocalManager(OneEventPerSocket, python_socketio.Manager):
    """Without a message queue: this process's sockets."""

    def emit(self, event, data, namespace, room=None, skip_sid=None, callback=None, to=None, **kwargs):
        if self.is_bundle(to or room):
            return self.fan_out(namespace, data["rooms"])
        return super().emit(event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, to=to,
                            **kwargs)


class QueueManager(OneEventPerSocket, python_socketio.RedisManager):
    """python-socketio's Redis message queue, with the app's Redis discipline: publishing uses a
    client with short timeouts, no retries and the circuit breaker, and fails at once when
    Redis is being skipped; the listener keeps a client without a read timeout (it waits for
    messages), which a frozen Redis only pauses."""

    def __init__(self, url: str, channel: str) -> None:
        listen = {"socket_connect_timeout": 1.0, "socket_keepalive": True, "health_check_interval": 30}
        super().__init__(url, channel=channel, redis_options=listen)
        self._publisher = redis_client(url)
        self._listen_turn = 0  # on a cluster: which node the listener (re)connects to next
        # Set once Redis confirmed the listener's subscription; cleared while it reconnects.
        # Until then a PUBLISH, this process's own included, reaches no socket here.
        self.listening = threading.Event()
        self._subscriptions = 0

    def wait_until_listening(self, timeout: float = LISTEN_WAIT_S) -> bool:
        """Block (this greenlet or thread) until the listener is subscribed, at most `timeout`.

        python-socketio starts the listener at the process's first connection and subscribes
        from a background task: a socket accepted before that misses the events of commits
        made right after its page's revalidation, for good. A connection waits for it instead."""
        return self.listening.wait(timeout)

    def _redis_listen_with_retries(self):
        for message in super()._redis_listen_with_retries():
            if message.get("type") == "subscribe":
                self._subscribed()
                continue
            yield message

    def _subscribed(self) -> None:
        self.listening.set()
        self._subscriptions += 1
        if self._subscriptions > 1:
            # Subscribed again after Redis was lost: what was published meanwhile reached no
            # socket here, so every socket here revalidates (spread out like any crowd).
            audience = sum(1 for _ in self.get_participants("/", None))
            python_socketio.Manager.emit(self, EVENT, {"keys": ["*"], "audience": audience}, "/")

    def _handle_emit(self, message):
        """A bundle (published by any process, this one included) fans out to the sockets here."""
        if self.is_bundle(message.get("room")):
            return self.fan_out(message.get("namespace") or "/", message["data"][0]["rooms"])
        return super()._handle_emit(message)

    def _publish(self, data):
        if not is_cluster_url(self.redis_url):
            return self._publisher.publish(self.channel, self.json.dumps(data))
        # Any master spreads a PUBLISH to the whole cluster: the first one that answers (a node
        # whose breaker is open fails at once, so a frozen one costs one timeout per opening).
        failed: redis.RedisError | None = None
        for node in self._publisher.get_primaries():
            try:
                return self._publisher.publish(self.channel, self.json.dumps(data), target_nodes=node)
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                failed = exc
        raise failed or redis.ConnectionError("no master of the Redis Cluster is known")

    def _redis_connect(self):
        """On a Redis Cluster, subscribe on one of its nodes (any one hears every PUBLISH), the
        next one after each failure, so a dead node only moves the listener. Either way the
        subscription's confirmation is kept: it says when this process starts hearing."""
        self.listening.clear()
        if not is_cluster_url(self.redis_url):
            super()._redis_connect()
            self.pubsub = self.redis.pubsub(ignore_subscribe_messages=False)
            return
        nodes = self._publisher.get_nodes()
        node = nodes[self._listen_turn % len(nodes)]
        self._listen_turn += 1
        target = parse_redis_cluster_url(self.redis_url)
        self.redis = redis.Redis(host=node.host, port=node.port, username=target.username,
                                 password=target.password, **self.redis_options)
        self.pubsub = self.redis.pubsub(ignore_subscribe_messages=False)
        self.connected = True


class Publisher:
    """A daemon thread per process that sends events to the message queue, so a commit never
    waits on Redis: events wait in a bounded queue, and are dropped with a log line when it is
    full (browsers revalidate on reconnect and when a tab is shown again)."""

    def __init__(self, maxsize: int = PUBLISH_QUEUE_SIZE) -> None:
        self._queue: queues.Queue[Callable[[], None]] = queues.Queue(maxsize)
        self._lock = threading.Lock()
        self._pid: int | None = None  # the thread is started lazily, again in a forked worker
        self.dropped = 0

    def submit(self, send: Callable[[], None]) -> None:
        self._start()
        try:
            self._queue.put_nowait(send)
        except queues.Full:
            self.dropped += 1
            log.warning("push queue full (%d waiting): event dropped", self._queue.maxsize)

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every submitted event was sent or dropped (tests); False on timeout."""
        done = self._queue.all_tasks_done
        with done:
            return done.wait_for(lambda: not self._queue.unfinished_tasks, timeout)

    def _start(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                threading.Thread(target=self._run, name="chat-push-publisher", daemon=True).start()
                self._pid = os.getpid()

    def _run(self) -> None:
        while True:
            send = self._queue.get()
            try:
                send()
            except Exception as exc:  # noqa: BLE001 - a lost hint is caught by revalidation
                log.warning("push dropped: %s", exc)
            finally:
                self._queue.task_done()


def async_mode() -> str:
    """"gevent" under gunicorn's gevent worker (which monkey-patches the standard library before
    the app loads): each socket is a greenlet, thousands per process. "threading" everywhere
    else (the test client, `flask` commands, gthread): each socket holds a thread."""
    monkey = sys.modules.get("gevent.monkey")
    return "gevent" if monkey is not None and monkey.is_module_patched("socket") else "threading"


def init_app(app: Flask) -> None:
    # Redis carries events between processes; SOCKETIO_MESSAGE_QUEUE overrides (None: this
    # process only, as the tests that build hundreds of apps in one process want).
    queue = app.config["SOCKETIO_MESSAGE_QUEUE"] if "SOCKETIO_MESSAGE_QUEUE" in app.config \
        else app.config.get("REDIS_URL")
    channel = app.config.get("SOCKETIO_CHANNEL", "chat-socketio")
    on_redis = bool(queue) and queue.startswith(("redis://", "rediss://", "unix://", CLUSTER_SCHEME))
    # Always name the manager (LocalManager: this process only): Flask-SocketIO keeps the
    # options of an earlier init_app, and tests make many apps.
    queue_options = {"client_manager": QueueManager(queue, channel) if on_redis else LocalManager()}
    if queue and not on_redis:
        queue_options = {"message_queue": queue, "channel": channel}
    socketio.init_app(
        app,
        async_mode=async_mode(),
        **queue_options,
        cors_allowed_origins=app.config.get("SOCKETIO_CORS_ORIGINS", []),  # same origin only
        manage_session=False,  # read the Flask session cookie; never write it from a socket
    )
    registry = None
    if on_redis:
        registry = redis_client(queue, decode_responses=True)
    app.extensions[REGISTRY] = registry
    # Without a message queue an emit only writes to this process's sockets (never blocks), so
    # it stays synchronous: tests and the embedded default see the event right after the commit.
    app.extensions[PUBLISHER] = Publisher() if queue else None


@socketio.on("connect")
def connect(auth=None):
    """Refuse anonymous connections; join the rooms this agent is entitled to."""
    if not current_user.is_authenticated or not current_user.is_active:
        raise ConnectionRefusedError("sign in first")  # the shim sends the page to /login
    manager = socketio.server.manager
    if isinstance(manager, QueueManager) and not manager.wait_until_listening():
        log.warning("socket accepted before this process hears Redis: it may miss events until then")
    for room in rooms_for(current_user):
        join_room(room)
    _remember(current_user.id, request.sid)


@socketio.on("disconnect")
def disconnect(reason=None) -> None:
    # current_user may be signed out by now: the agent's room says whose socket this was.
    for room in joined_rooms():
        if room.startswith("user:"):
            _forget(int(room.removeprefix("user:")), request.sid)


def end_sessions(agent_ids: Iterable[int]) -> None:
    """Tell every browser of these agents that the session ended, then disconnect each of
    their sockets, in this process and any other; failures are logged, never raised."""
    for agent_id in sorted(agent_ids):
        try:
            socketio.emit(SESSION_ENDED, {}, to=f"user:{agent_id}")
            local = {sid for sid, _ in socketio.server.manager.get_participants("/", f"user:{agent_id}")}
            for sid in sorted(local | _registered(agent_id)):
                # Another process's socket: the message queue takes the disconnect there.
                socketio.server.disconnect(sid, namespace="/")
            log.info("SESSION ENDED user:%s", agent_id)
        except Exception as exc:  # noqa: BLE001 - the cookie is revoked already; the socket is the hint
            log.warning("could not end the sockets of user:%s: %s", agent_id, exc)


def close_connections() -> None:
    """Close every connection of this process at the Engine.IO level: the browser sees its
    transport close and reconnects, unlike a Socket.IO disconnect, which it takes as final."""
    eio = socketio.server.eio
    for connection in list(eio.sockets.values()):
        connection.close(wait=False, reason=eio.reason.SERVER_DISCONNECT)


def _registry(agent_id: int):
    """(Redis client, key of the agent's socket set), or None without a Redis message queue."""
    client = current_app.extensions.get(REGISTRY)
    if client is None:
        return None
    return client, f"{current_app.config.get('CACHE_KEY_PREFIX', 'chat:')}sockets:user:{agent_id}"


def _remember(agent_id: int, sid: str) -> None:
    if found := _registry(agent_id):
        client, key = found
        try:
            client.pipeline().sadd(key, sid).expire(key, REGISTRY_TTL).execute()
        except redis.RedisError as exc:
            log.warning("could not register socket of user:%s: %s", agent_id, exc)


def _forget(agent_id: int, sid: str) -> None:
    if found := _registry(agent_id):
        client, key = found
        try:
            client.srem(key, sid)
        except redis.RedisError as exc:
            log.warning("could not unregister socket of user:%s: %s", agent_id, exc)


def _registered(agent_id: int) -> set[str]:
    """The agent's sockets in every process (empty without a Redis message queue)."""
    if found := _registry(agent_id):
        client, key = found
        try:
            return set(client.smembers(key))
        except redis.RedisError as exc:
            log.warning("could not list sockets of user:%s: %s", agent_id, exc)
    return set()


def publish(rooms: dict[str, set[str]]) -> None:
    """One `data:updated` {"keys": [...]} per socket, the keys of its rooms; failures are logged,
    never raised: push is a hint. With a message queue the events go through the background
    Publisher, as one bundle for every process."""
    events = [(room, sorted(keys)) for room, keys in sorted(rooms.items())]
    publisher = current_app.extensions.get(PUBLISHER)
    if not events:
        return
    if publisher is None:
        _emit(events)
    else:
        publisher.submit(lambda: _emit(events))


def flush(timeout: float = 5.0) -> bool:
    """Wait until the events published so far have been sent or dropped (tests, benchmarks)."""
    publisher = current_app.extensions.get(PUBLISHER)
    return publisher.flush(timeout) if publisher else True


def _emit(events: list[tuple[str, list[str]]]) -> None:
    if isinstance(socketio.server.manager, OneEventPerSocket):
        try:
            socketio.emit(EVENT, {"rooms": dict(events)}, to=BUNDLE)
            log.debug("PUSH %s", events)
        except Exception as exc:  # noqa: BLE001 - a lost hint is caught by revalidation
            log.warning("could not push %s: %s", [room for room, _ in events], exc)
        return
    for room, keys in events:  # another message queue (SOCKETIO_MESSAGE_QUEUE): one event per room
        try:
            socketio.emit(EVENT, {"keys": keys}, to=room)
            log.debug("PUSH %s %s", room, keys)
        except Exception as exc:  # noqa: BLE001 - a lost hint is caught by revalidation
            log.warning("could not push to %s: %s", room, exc)
