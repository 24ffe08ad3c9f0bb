"""SmartCache: the only code that talks to the cache backend.

Read-through with generation stamps, so invalidation is O(1) and never stale:

- Every key is split on ':' into prefixes ("conversations", "conversations:user",
  "conversations:user:42", ...). Each prefix, each tag a caller names, and a global epoch
  has a *generation*: a random stamp stored in the backend.
- An entry is stored together with the generations read *before* its fetch ran. A read
  fetches all of them in one round trip and serves the entry only when they all still match.
- invalidate("conversations:user:42*") writes one new random stamp: whatever is under that
  prefix, 1,000 or 10,000,000 entries, stops matching. No KEYS, no SCAN.
- A generation that vanishes (evicted, expired, Redis restarted) comes back as a new random
  stamp, never as a value an old entry carries.

Backends come from Flask-Caching: Redis when REDIS_URL (or CACHE_TYPE) says so, otherwise a
size-bounded in-process SimpleCache. With the backend down, reads fall back to fetch() and a
warning is logged; the first successful contact afterwards bumps the epoch, so invalidations
lost during the outage can never let an older entry be served.

Every Redis client of the app is built by chat/redis_guard.py (short timeouts, no retries, a
circuit breaker per server). A call it skips raises CircuitOpen at once, which this cache treats
as "Redis is down": it serves from the database and marks itself degraded, so the epoch bump on
recovery stands in for the invalidations that were skipped.

Redis Cluster (REDIS_URL=redis+cluster://host1:port1,host2:port2): a hit reads the generations
and the entry in one MGET, and a cluster runs a multi-key command only when every key is in
one hash slot. So on a cluster every key of this cache (entries, generations, the epoch, fill
locks) carries one hash tag, the key prefix in braces (`chat:` becomes `{chat:}`; a prefix that
already holds a `{tag}` keeps it), and lives in one slot. The trade-off: the whole cache lives
on one master (and its replicas). The cluster brings failover and room for everything else, not
a cache spread over masters; splitting the keys per slot would cost a round trip per slot on
every hit and the atomic read of a hit's generations with its entry. Deployments that share a
cluster each have their own CACHE_KEY_PREFIX, hence their own tag, slot and likely master.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
import weakref
from typing import Any, Callable, Iterable, NamedTuple

from flask import Flask, current_app
from flask_caching import Cache
from flask_caching.backends.rediscache import RedisCache
from redis.cluster import ClusterNode, RedisCluster

from . import metrics
from .config import is_cluster_url
from .redis_guard import CircuitBreaker, CircuitOpen, breaker_for, redis_client, redis_options

log = logging.getLogger("chat.cache")

TTL_CLASSES = {"static": 86_400, "moderate": 3_600, "dynamic": 1_800}
EPOCH = "@epoch"
LOCK_SECONDS = 5.0  # a filler that dies leaves its lock for at most this long
WAIT_STEP = 0.01


def hash_tagged(prefix: str) -> str:
    """The key prefix of a cache on a Redis Cluster: one hash tag, so every key is in one slot.
    `chat:` -> `{chat:}`; a prefix that already holds a non-empty `{tag}` is kept."""
    start = prefix.find("{")
    if start != -1 and prefix.find("}", start) > start + 1:
        return prefix
    if not prefix:
        raise ValueError("CACHE_KEY_PREFIX may not be empty on a Redis Cluster: it is the cache's hash tag")
    return "{" + prefix + "}"


class ClusterCache(RedisCache):
    """Flask-Caching's Redis backend over a GuardedCluster, every key under one hash tag."""

    @classmethod
    def factory(cls, app: Flask, config: dict, args: list, kwargs: dict) -> "ClusterCache":
        return cls(redis_client(config["CACHE_REDIS_URL"]), key_prefix=hash_tagged(config["CACHE_KEY_PREFIX"]),
                   default_timeout=kwargs.get("default_timeout", 300))


def _stamp() -> str:
    return secrets.token_hex(8)


def prefixes(key: str) -> list[str]:
    """'a:b:c' -> ['a', 'a:b', 'a:b:c']: the prefixes whose generations guard the key."""
    parts = key.split(":")
    return [":".join(parts[: n + 1]) for n in range(len(parts))]


def pattern_prefix(pattern: str) -> str:
    """'conversations:user:42*' -> 'conversations:user:42'; an exact key is its own prefix."""
    star = pattern.find("*")
    if star != -1 and star != len(pattern) - 1:
        raise ValueError(
            f"invalid cache pattern {pattern!r}: '*' may only end a pattern, as in 'conversations:user:42*'"
        )
    prefix = pattern[:-1] if star != -1 else pattern
    prefix = prefix.rstrip(":")
    if not prefix:
        raise ValueError("invalid cache pattern: name at least one key segment before '*'")
    return prefix


class Lookup(NamedTuple):
    """What SmartCache.lookup read in its one round trip."""

    etag: str  # the validator of the response
    gens: tuple  # the generations it was computed from, read before any fetch
    key: str | None  # the entry read with them, if any ...
    entry: Any  # ... as stored: (generations, value), or None


class SmartCache:
    def __init__(self) -> None:
        self._flask_cache = Cache()
        self._locks: "weakref.WeakValueDictionary[str, threading.Lock]" = weakref.WeakValueDictionary()
        self._locks_guard = threading.Lock()
        self._degraded = False  # set when the backend failed; cleared once the epoch has moved
        self._failures = 0  # writes lost so far: a recovery counts only if none was lost during it
        self._recovering = threading.Lock()
        self._bumps = threading.local()  # invalidations made by each thread (invalidations_in_this_thread)

    # -- setup -----------------------------------------------------------------
    def init_app(self, app: Flask) -> None:
        config = {k: v for k, v in app.config.items() if k.startswith("CACHE_")}
        if "CACHE_TYPE" not in config:
            if is_cluster_url(app.config.get("REDIS_URL")):
                config.update(CACHE_TYPE="chat.cache.ClusterCache", CACHE_REDIS_URL=app.config["REDIS_URL"])
            elif app.config.get("REDIS_URL"):
                config.update(CACHE_TYPE="RedisCache", CACHE_REDIS_URL=app.config["REDIS_URL"])
            else:
                config.update(CACHE_TYPE="SimpleCache")
        config.setdefault("CACHE_KEY_PREFIX", "chat:")
        config.setdefault("CACHE_THRESHOLD", 20_000)  # the in-process backend's size bound
        config.setdefault("CACHE_DEFAULT_TIMEOUT", TTL_CLASSES["dynamic"])
        config.setdefault("CACHE_OPTIONS", redis_options(config.get("CACHE_REDIS_URL") or "redis://")
                          if config["CACHE_TYPE"] in ("RedisCache", "redis") else {})
        app.config.setdefault("CACHE_TTL", dict(TTL_CLASSES))
        self._flask_cache.init_app(app, config=config)
        app.extensions["smart_cache"] = self

    @property
    def backend(self):
        return self._flask_cache.cache

    @property
    def is_redis(self) -> bool:
        return hasattr(self.backend, "_write_client")

    @property
    def breaker(self) -> CircuitBreaker | None:
        """The breaker of this app's cache Redis (None for the in-process backend)."""
        if not self.is_redis:
            return None
        if node := self.cluster_node():
            return breaker_for(node.host, node.port)
        kwargs = self.backend._write_client.connection_pool.connection_kwargs
        if kwargs.get("path"):
            return None  # a unix socket: plain connections, no breaker
        return breaker_for(kwargs.get("host", "localhost"), kwargs.get("port", 6379))

    def cluster_node(self) -> ClusterNode | None:
        """On a Redis Cluster, the master that holds this cache's slot (its hash tag); else None."""
        client = getattr(self.backend, "_write_client", None)
        if not isinstance(client, RedisCluster):
            return None
        return client.get_node_from_key(self.backend._get_prefix())

    def ttl(self, ttl: str | int) -> int:
        if isinstance(ttl, int):
            return ttl
        classes = current_app.config.get("CACHE_TTL", TTL_CLASSES)
        if ttl not in classes:
            raise ValueError(f"unknown TTL class {ttl!r}; use one of {', '.join(classes)}")
        return int(classes[ttl])

    # -- the three verbs ---------------------------------------------------------
    def get_or_fetch(
        self,
        key: str,
        fetch: Callable[[], Any],
        ttl: str | int = "dynamic",
        tags: Iterable[str] = (),
        bypass: bool = False,
    ) -> Any:
        """The cached value of `key`, or fetch() stored under the generations read before it ran.

        `[]`, `0`, `""` and `None` are values like any other. bypass=True (a transaction with
        pending writes) neither reads nor fills the cache.
        """
        if bypass:
            metrics.record_bypass(key)
            return fetch()
        names = self._guards(key, tags)
        try:
            gens, entry = self._generations(names, "v:" + key)  # one round trip
        except Exception as exc:  # noqa: BLE001 - any backend failure means: serve from the database
            self._failed("read", key, exc)
            return fetch()
        return self._serve(key, gens, entry, fetch, ttl)

    def lookup(self, keys: Iterable[str], tags: Iterable[str] = (), salt: str = "",
               entry: str | None = None) -> "Lookup | None":
        """The ETag of a response built from `keys` and, when `entry` names a key, that entry as
        stored under the same generations, in one round trip, no database (the caller then
        serves it with get_or_fetch_looked_up). None when the backend is down."""
        names = self._validator_names(keys, tags)
        try:
            if entry:
                gens, value = self._generations(names, "v:" + entry)
            else:
                gens, value = self._generations(names), None
        except Exception as exc:  # noqa: BLE001
            self._failed("etag", ",".join(keys), exc)
            return None
        digest = hashlib.sha1(repr((salt, names, gens)).encode()).hexdigest()[:20]
        return Lookup(f'W/"{digest}"', gens, entry, value)

    def get_or_fetch_and_lookup(self, key: str, fetch: Callable[[], Any], ttl: str | int,
                                keys: Iterable[str], tags: Iterable[str], salt: str,
                                entry: str | None) -> "tuple[Any, Lookup | None]":
        """get_or_fetch(key) and lookup(keys, tags, salt, entry) in one round trip: what a
        request needs first (its viewer) and what it will most likely ask next. The lookup is
        None when it could not be made in that trip (a generation had to be born, or the
        backend is down); get_or_fetch's guarantees hold either way."""
        names, other = self._guards(key, ()), self._validator_names(keys, tags)
        extra = ["v:" + key] + (["v:" + entry] if entry else [])
        try:
            if self._degraded:
                self._recover()
            values = self.backend.get_many(*names, *other, *extra)
        except Exception as exc:  # noqa: BLE001
            self._failed("read", key, exc)
            return fetch(), None
        stamps = values[: len(names) + len(other)]
        if any(v is None for v in stamps):
            return self.get_or_fetch(key, fetch, ttl=ttl), None  # rare: generations are born first
        gens, lgens = tuple(values[: len(names)]), tuple(values[len(names): len(names) + len(other)])
        digest = hashlib.sha1(repr((salt, other, lgens)).encode()).hexdigest()[:20]
        found = Lookup(f'W/"{digest}"', lgens, entry, values[-1] if entry else None)
        return self._serve(key, gens, values[len(stamps)], fetch, ttl), found

    def invalidations_in_this_thread(self) -> int:
        """How many invalidations this thread has made: a lookup read before one is not used after it."""
        return getattr(self._bumps, "count", 0)

    def get_or_fetch_looked_up(self, found: "Lookup | None", fetch: Callable[[], Any],
                               ttl: str | int = "dynamic", bypass: bool = False) -> Any:
        """The entry a lookup() read, if it is stored under the generations read with it; else
        fetch() stored under those generations (read before the fetch: no stale set), single
        flight. A lookup without an entry key, or none at all (backend down), just fetches."""
        if bypass or found is None or found.key is None:
            if bypass and found is not None and found.key:
                metrics.record_bypass(found.key)
            return fetch()
        return self._serve(found.key, found.gens, found.entry, fetch, ttl)

    def etag(self, keys: Iterable[str], tags: Iterable[str] = (), salt: str = "") -> str | None:
        """A validator for a response built from `keys`: it changes exactly when one of them is
        invalidated. One round trip, no database. None when the backend is down."""
        found = self.lookup(keys, tags, salt)
        return found.etag if found else None


    def invalidate(self, pattern: str) -> None:
        """Drop everything under a prefix ('conversations:user:42*') or one exact key, in O(1)."""
        self._bump("g:" + pattern_prefix(pattern), pattern)

    def invalidate_tag(self, tag: str) -> None:
        """Drop every entry that named this tag."""
        self._bump("t:" + tag, f"tag {tag}")

    def update_after_mutation(self, key: str, value: Any, patterns: Iterable[str],
                              ttl: str | int = "dynamic") -> None:
        """Invalidate `patterns`, then write `value` through under the fresh generations.

        The seed's write-through API, kept for callers outside a request's commit (a script
        that rebuilds an entry it just computed). The product never needs it: invalidation
        comes from the commit and the next read fills the entry with its tags in one fetch,
        single-flight. An entry written here is guarded by its key's prefixes only, not by
        tags, so use it only for keys that no tag names."""
        for pattern in patterns:
            self.invalidate(pattern)
        try:
            gens = self._generations(self._guards(key, ()))
            self.backend.set("v:" + key, (gens, value), timeout=self.ttl(ttl))
        except Exception as exc:  # noqa: BLE001
            self._failed("write", key, exc)

    def clear(self) -> None:
        """Forget every entry by moving the epoch (O(1), never touches other apps' keys)."""
        self._bump("g:" + EPOCH, "everything")

    # -- internals -----------------------------------------------------------------
    def _guards(self, key: str, tags: Iterable[str]) -> list[str]:
        return ["g:" + EPOCH] + ["g:" + p for p in prefixes(key)] + ["t:" + t for t in sorted(set(tags))]

    def _validator_names(self, keys: Iterable[str], tags: Iterable[str]) -> list[str]:
        """The generations a response built from `keys` (and tags) depends on, epoch first; for
        one key that is exactly its entry's guards."""
        names: list[str] = []
        for key in keys:
            names.extend(self._guards(key, ()))
        names.extend("t:" + t for t in sorted(set(tags)))
        return list(dict.fromkeys(names))

    def _serve(self, key: str, gens: tuple, entry: Any, fetch: Callable[[], Any], ttl: str | int) -> Any:
        if entry is not None and entry[0] == gens:
            metrics.record_hit(key)
            log.debug("HIT %s", key)
            return entry[1]
        log.debug("MISS %s", key)
        return self._fill(key, gens, fetch, self.ttl(ttl))

    def _generations(self, names: list[str], entry: str | None = None):
        """Current stamps of `names` in one round trip (one MGET); missing ones are born random.
        With `entry` (a stored key), that entry is read in the same MGET: (stamps, entry)."""
        if self._degraded:
            self._recover()
        values = self.backend.get_many(*names, *([entry] if entry else []))
        if entry:
            values, value = values[:-1], values[-1]
        if any(v is None for v in values):
            for name, stamp in zip(names, values):
                if stamp is None:  # add: of concurrent births, one wins
                    self.backend.add(name, _stamp(), timeout=self._generation_ttl())
            values = self.backend.get_many(*names)
            if any(v is None for v in values):  # a bounded in-process cache evicted it already
                raise RuntimeError("generation could not be stored")
            # An entry read next to a generation that was just born cannot match it anyway.
        return (tuple(values), value) if entry else tuple(values)

    def _bump(self, name: str, what: str) -> None:
        self._bumps.count = getattr(self._bumps, "count", 0) + 1
        metrics.record_invalidation()
        try:
            if self._degraded:
                self._recover()
            self.backend.set(name, _stamp(), timeout=self._generation_ttl())
            log.info("INVALIDATE %s", what)
        except Exception as exc:  # noqa: BLE001
            # The invalidation is lost; the epoch bump on recovery stands in for it.
            self._failed("invalidate", what, exc)

    def _failed(self, action: str, key: str, exc: Exception) -> None:
        # Skipped (CircuitOpen) or failed, the write may be lost: the epoch moves on recovery.
        if not isinstance(exc, CircuitOpen):
            metrics.record_error()
        if not self._degraded:
            log.warning("cache backend unavailable (%s %s): %s; serving from the database", action, key, exc)
        self._failures += 1
        self._degraded = True

    def _recover(self) -> None:
        """First contact after an outage: a new epoch makes everything cached before it invisible.

        The cache stays degraded until the new epoch is written: every other thread (greenlet,
        under gevent, where the write yields) that finds it degraded waits here for that write,
        instead of reading entries under the old epoch that a lost invalidation left stale. A
        write lost by another thread during the recovery keeps it degraded: the epoch moves again."""
        with self._recovering:
            if not self._degraded:
                return  # another thread moved the epoch while this one waited
            lost = self._failures
            self._bumps.count = getattr(self._bumps, "count", 0) + 1  # a new epoch, like an invalidation
            self.backend.set("g:" + EPOCH, _stamp(), timeout=self._generation_ttl())
            if self._failures == lost:
                self._degraded = False
        log.warning("cache backend is back; new epoch, entries from before the outage are dropped")

    def _generation_ttl(self) -> int:
        """Generations outlive any entry they guard, yet expire, so memory stays bounded; one
        that expires is reborn random and only costs a miss."""
        return 2 * max(int(t) for t in current_app.config.get("CACHE_TTL", TTL_CLASSES).values())

    def _local_lock(self, key: str) -> threading.Lock:
        with self._locks_guard:
            lock = self._locks.get(key)
            if lock is None:
                lock = threading.Lock()
                self._locks[key] = lock
            return lock

    def _fill(self, key: str, gens: tuple, fetch: Callable[[], Any], ttl: int) -> Any:
        """Single flight: one fetch per key at a time, in this process and (on Redis) across processes."""
        lock = self._local_lock(key)
        with lock:
            try:
                entry = self.backend.get("v:" + key)
                if entry is not None and entry[0] == gens:
                    metrics.record_hit(key)
                    return entry[1]  # filled by the thread we waited for
                token = self._acquire_shared(key, gens)
            except Exception as exc:  # noqa: BLE001
                self._failed("lock", key, exc)
                return fetch()
            if isinstance(token, tuple):  # another process filled it while we waited
                metrics.record_hit(key)
                return token[1]
            try:
                started, queries = time.perf_counter(), metrics.queries_in_this_thread()
                value = fetch()
                metrics.record_miss(key, time.perf_counter() - started,
                                    metrics.queries_in_this_thread() - queries)
                try:
                    self.backend.set("v:" + key, (gens, value), timeout=ttl)
                except Exception as exc:  # noqa: BLE001
                    self._failed("write", key, exc)
                return value
            finally:
                if token:
                    self._release_shared(key, gens, token)

    def _acquire_shared(self, key: str, gens: tuple):
        """Redis only: take the fill lock, or wait for its holder's value; None when not shared."""
        if not self.is_redis:
            return None
        client = self.backend._write_client
        lock_name = self._lock_name(key, gens)
        token = _stamp()
        deadline = time.monotonic() + LOCK_SECONDS
        while True:
            if client.set(lock_name, token, nx=True, px=int(LOCK_SECONDS * 1000)):
                # The previous holder may have filled it just before letting go.
                entry = self.backend.get("v:" + key)
                if entry is not None and entry[0] == gens:
                    self._release_shared(key, gens, token)
                    return ("filled", entry[1])
                return token
            entry = self.backend.get("v:" + key)
            if entry is not None and entry[0] == gens:
                return ("filled", entry[1])
            if time.monotonic() >= deadline:
                return None  # the holder is slow or gone: fetch ourselves rather than fail
            time.sleep(WAIT_STEP)

    def _lock_name(self, key: str, gens: tuple) -> str:
        """Per key and epoch: a lock whose release an outage swallowed is left behind by the
        epoch bump on recovery, instead of stalling the key's readers for LOCK_SECONDS."""
        return f"{self.backend._get_prefix()}l:{key}@{gens[0]}"

    def _release_shared(self, key: str, gens: tuple, token: str) -> None:
        client = self.backend._write_client
        lock_name = self._lock_name(key, gens)
        try:
            if client.get(lock_name) == token.encode():
                client.delete(lock_name)
        except Exception as exc:  # noqa: BLE001
            self._failed("unlock", key, exc)


smart_cache = SmartCache()
