"""Every Redis client of the app, guarded: the cache, the fill locks, the Socket.IO publisher,
the socket registry and the sign-in limits all build theirs here.

Each is built from `redis_options()`: short timeouts, no retries, and a connection that asks
its server's CircuitBreaker first. After a failure or a timeout, that Redis is skipped for
0.5 s, doubling up to 15 s, then one request at a time probes it (half-open). A skipped call
raises CircuitOpen at once, which every caller treats as "Redis is down" (the cache serves from
the database; the limiter and the publisher fail their one call). On a Redis Cluster the
client is a GuardedCluster, asking the breaker of the node each command goes to.
"""
from __future__ import annotations

import logging
import threading
import time

import redis
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.exceptions import ClusterDownError, SlotNotCoveredError
from redis.retry import Retry

from . import metrics
from .config import is_cluster_url, parse_redis_cluster_url

log = logging.getLogger("chat.redis")

REDIS_TIMEOUT = 0.25  # seconds to connect and to answer, for every Redis client of the app
BREAKER_FIRST_OPEN = 0.5  # seconds Redis is skipped after a failure, doubling while probes fail ...
BREAKER_MAX_OPEN = 15.0  # ... up to this
PROBE_GRACE = 2.0  # a probe that never reported (its thread died) lets another one through after this


class CircuitOpen(redis.exceptions.ConnectionError):
    """Redis is being skipped: its breaker is open, or another request is probing it."""


class CircuitBreaker:
    """Closed: calls go through. A failure or a timeout opens it: calls fail at once with
    CircuitOpen for a while, then one call probes (half-open); its success closes the breaker,
    its failure opens it again for twice as long."""

    CLOSED, HALF_OPEN, OPEN = "closed", "half-open", "open"

    def __init__(self, name: str, first_open: float = BREAKER_FIRST_OPEN,
                 max_open: float = BREAKER_MAX_OPEN) -> None:
        self.name = name
        self.first_open, self.max_open = first_open, max_open
        self.state = self.CLOSED
        self.opens = 0  # times it opened
        self.skipped = 0  # calls that did not wait for Redis
        self.interval = first_open
        self._retry_at = 0.0
        self._probe: tuple[int, float] | None = None  # (thread, since) of the call probing
        self._lock = threading.Lock()

    def allow(self) -> bool:
        """May this thread use Redis now? False means: skip it (counted)."""
        if self.state == self.CLOSED:
            return True
        now = time.monotonic()
        me = threading.get_ident()
        with self._lock:
            if self.state == self.CLOSED:
                return True
            if self._probe and self._probe[0] == me:
                return True  # the probe's own next command (connect, handshake, then the call)
            probe_lost = self._probe is not None and now - self._probe[1] > PROBE_GRACE
            if (self.state == self.OPEN and now >= self._retry_at) or probe_lost:
                self._set(self.HALF_OPEN)
                self._probe = (me, now)
                log.info("redis %s: probing", self.name)
                return True
            self.skipped += 1
        metrics.record_redis_skipped()
        return False

    def success(self) -> None:
        if self.state == self.CLOSED:
            return
        with self._lock:
            if self.state != self.CLOSED:
                self.interval = self.first_open
                self._probe = None
                self._set(self.CLOSED)
                log.warning("redis %s answers again: circuit closed", self.name)

    def failure(self, exc: BaseException) -> None:
        with self._lock:
            if self.state == self.OPEN:
                return  # a call that was already waiting when it opened
            if self.state == self.HALF_OPEN:
                self.interval = min(self.interval * 2, self.max_open)
            else:
                self.interval = self.first_open
            self._probe = None
            self._retry_at = time.monotonic() + self.interval
            self.opens += 1
            self._set(self.OPEN)
        metrics.record_redis_breaker_opened()
        log.warning("redis %s failed (%s): skipped for %.1f s", self.name, exc, self.interval)

    def retry_in(self) -> float:
        """Seconds until the next probe may go (0 when closed or probing)."""
        return max(0.0, self._retry_at - time.monotonic()) if self.state == self.OPEN else 0.0

    def _set(self, state: str) -> None:
        self.state = state
        metrics.record_redis_breaker_state(worst_breaker_state())


_breakers: dict[str, CircuitBreaker] = {}
_breakers_guard = threading.Lock()


def breaker_for(host: str, port: int | str) -> CircuitBreaker:
    """The one breaker of a Redis server in this process, shared by every client of it."""
    name = f"{host}:{port}"
    with _breakers_guard:
        if name not in _breakers:
            _breakers[name] = CircuitBreaker(name)
        return _breakers[name]


def worst_breaker_state() -> str:
    states = {b.state for b in list(_breakers.values())}
    for state in (CircuitBreaker.OPEN, CircuitBreaker.HALF_OPEN):
        if state in states:
            return state
    return CircuitBreaker.CLOSED


class GuardedConnection(redis.connection.Connection):
    """A Redis connection that asks its server's breaker before each command and tells it
    whether the server answered in time."""

    @property
    def breaker(self) -> CircuitBreaker:
        return breaker_for(self.host, self.port)

    def connect_check_health(self, *args, **kwargs):
        if self._sock:
            return super().connect_check_health(*args, **kwargs)
        breaker = self.breaker
        if not breaker.allow():
            raise CircuitOpen(f"redis {breaker.name} is being skipped (circuit open)")
        try:
            return super().connect_check_health(*args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            breaker.failure(exc)
            raise

    def send_packed_command(self, command, check_health=True):
        breaker = self.breaker
        if not breaker.allow():
            raise CircuitOpen(f"redis {breaker.name} is being skipped (circuit open)")
        try:
            return super().send_packed_command(command, check_health)
        except CircuitOpen:
            raise
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            breaker.failure(exc)
            raise

    def read_response(self, *args, **kwargs):
        try:
            response = super().read_response(*args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            self.breaker.failure(exc)
            raise
        except redis.exceptions.ResponseError:
            self.breaker.success()  # an error reply is still an answer
            raise
        self.breaker.success()
        return response


def redis_options(url: str = "redis://", timeout: float | None = None) -> dict:
    """Keyword arguments for every Redis client of the app (redis.Redis.from_url and what
    Flask-Caching and Flask-Limiter pass on to it): short timeouts, no retries (redis-py
    retries 10 times by default: seconds per call on a frozen server), and the breaker on
    plain TCP (redis:// and each node of a redis+cluster://; rediss:// and unix:// keep their
    own connection classes). For a cluster client `retry` is the cluster-level one (its nodes'
    connections never retry)."""
    timeout = REDIS_TIMEOUT if timeout is None else timeout
    options = {"socket_timeout": timeout, "socket_connect_timeout": timeout, "retry": Retry(NoBackoff(), 0)}
    if url.startswith("redis://") or is_cluster_url(url):
        options["connection_class"] = GuardedConnection
    return options


class GuardedCluster(RedisCluster):
    """redis-py's cluster client, asking the breaker of the node a command goes to before
    sending it. redis-py rediscovers the cluster (CLUSTER SLOTS, and drops pooled connections)
    after every connection error; a call that the breaker skips fails here instead, before
    that, so a frozen or dead node costs one rediscovery per breaker opening, not one per call."""

    def _execute_command(self, target_node, *args, **kwargs):
        breaker = breaker_for(target_node.host, target_node.port)
        if not breaker.allow():
            raise CircuitOpen(f"redis {breaker.name} is being skipped (circuit open)")
        try:
            return super()._execute_command(target_node, *args, **kwargs)
        except (ClusterDownError, SlotNotCoveredError) as exc:
            # The cluster refuses every command while a master is lost (CLUSTERDOWN), and
            # redis-py sleeps 0.25 s and re-reads the layout on each: skip it like a dead node.
            breaker.failure(exc)
            raise


def cluster_options(url: str) -> dict:
    """Keyword arguments of a redis-py RedisCluster (ours, or the one Flask-Limiter's storage
    builds) for a redis+cluster:// URL, with redis_options(). The first node goes in as `url`:
    only then does redis-py build each node's connection pool from the keyword arguments,
    connection_class (the breaker) included."""
    target = parse_redis_cluster_url(url)
    (host, port), *others = target.nodes
    return {"url": f"redis://{f'[{host}]' if ':' in host else host}:{port}",
            "startup_nodes": [ClusterNode(h, p) for h, p in others],
            "username": target.username, "password": target.password, **redis_options(url)}


def redis_client(url: str, **options) -> "redis.Redis | GuardedCluster":
    """A client for a REDIS_URL with redis_options(): redis.Redis, or a GuardedCluster for
    redis+cluster://host:port,host:port (it reads the cluster's layout from the first node
    that answers)."""
    if is_cluster_url(url):
        return GuardedCluster(**cluster_options(url), **options)
    return redis.Redis.from_url(url, **redis_options(url), **options)
