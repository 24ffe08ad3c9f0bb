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
"""
from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
import weakref
from typing import Any, Callable, Iterable

from flask import Flask, current_app
from flask_caching import Cache

from . import metrics

log = logging.getLogger("chat.cache")

TTL_CLASSES = {"static": 86_400, "moderate": 3_600, "dynamic": 1_800}
EPOCH = "@epoch"
LOCK_SECONDS = 5.0  # a filler that dies leaves its lock for at most this long
WAIT_STEP = 0.01


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


class SmartCache:
    def __init__(self) -> None:
        self._flask_cache = Cache()
        self._locks: "weakref.WeakValueDictionary[str, threading.Lock]" = weakref.WeakValueDictionary()
        self._locks_guard = threading.Lock()
        self._degraded = False  # set when the backend failed; cleared by bumping the epoch

    # -- setup -----------------------------------------------------------------
    def init_app(self, app: Flask) -> None:
        config = {k: v for k, v in app.config.items() if k.startswith("CACHE_")}
        if "CACHE_TYPE" not in config:
            if app.config.get("REDIS_URL"):
                config.update(CACHE_TYPE="RedisCache", CACHE_REDIS_URL=app.config["REDIS_URL"])
            else:
                config.update(CACHE_TYPE="SimpleCache")
        config.setdefault("CACHE_KEY_PREFIX", "chat:")
        config.setdefault("CACHE_THRESHOLD", 20_000)  # the in-process backend's size bound
        config.setdefault("CACHE_DEFAULT_TIMEOUT", TTL_CLASSES["dynamic"])
        config.setdefault("CACHE_OPTIONS", {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}
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
            gens = self._generations(names)
            entry = self.backend.get("v:" + key)
        except Exception as exc:  # noqa: BLE001 - any backend failure means: serve from the database
            self._failed("read", key, exc)
            return fetch()
        if entry is not None and entry[0] == gens:
            metrics.record_hit(key)
            log.debug("HIT %s", key)
            return entry[1]
        log.debug("MISS %s", key)
        return self._fill(key, gens, fetch, self.ttl(ttl))

    def etag(self, keys: Iterable[str], tags: Iterable[str] = (), salt: str = "") -> str | None:
        """A validator for a response built from `keys`: it changes exactly when one of them is
        invalidated. One round trip, no database. None when the backend is down."""
        names: list[str] = []
        for key in keys:
            names.extend(self._guards(key, ()))
        names.extend("t:" + t for t in sorted(set(tags)))
        names = list(dict.fromkeys(names))
        try:
            gens = self._generations(names)
        except Exception as exc:  # noqa: BLE001
            self._failed("etag", ",".join(keys), exc)
            return None
        digest = hashlib.sha1(repr((salt, names, gens)).encode()).hexdigest()[:20]
        return f'W/"{digest}"'


    def invalidate(self, pattern: str) -> None:
        """Drop everything under a prefix ('conversations:user:42*') or one exact key, in O(1)."""
        self._bump("g:" + pattern_prefix(pattern), pattern)

    def invalidate_tag(self, tag: str) -> None:
        """Drop every entry that named this tag."""
        self._bump("t:" + tag, f"tag {tag}")

    def update_after_mutation(self, key: str, value: Any, patterns: Iterable[str],
                              ttl: str | int = "dynamic") -> None:
        """Invalidate `patterns`, then write `value` through under the fresh generations."""
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

    def _generations(self, names: list[str]) -> tuple:
        """Current stamps of `names` in one round trip; missing ones are born random."""
        if self._degraded:
            self._recover()
        values = self.backend.get_many(*names)
        if any(v is None for v in values):
            for name, value in zip(names, values):
                if value is None:  # add: of concurrent births, one wins
                    self.backend.add(name, _stamp(), timeout=self._generation_ttl())
            values = self.backend.get_many(*names)
            if any(v is None for v in values):  # a bounded in-process cache evicted it already
                raise RuntimeError("generation could not be stored")
        return tuple(values)

    def _bump(self, name: str, what: str) -> None:
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
        metrics.record_error()
        if not self._degraded:
            log.warning("cache backend unavailable (%s %s): %s; serving from the database", action, key, exc)
        self._degraded = True

    def _recover(self) -> None:
        """First contact after an outage: a new epoch makes everything cached before it invisible."""
        self.backend.set("g:" + EPOCH, _stamp(), timeout=self._generation_ttl())
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
                    self._release_shared(key, token)

    def _acquire_shared(self, key: str, gens: tuple):
        """Redis only: take the fill lock, or wait for its holder's value; None when not shared."""
        if not self.is_redis:
            return None
        client = self.backend._write_client
        lock_name = self.backend._get_prefix() + "l:" + key
        token = _stamp()
        deadline = time.monotonic() + LOCK_SECONDS
        while True:
            if client.set(lock_name, token, nx=True, px=int(LOCK_SECONDS * 1000)):
                # The previous holder may have filled it just before letting go.
                entry = self.backend.get("v:" + key)
                if entry is not None and entry[0] == gens:
                    self._release_shared(key, token)
                    return ("filled", entry[1])
                return token
            entry = self.backend.get("v:" + key)
            if entry is not None and entry[0] == gens:
                return ("filled", entry[1])
            if time.monotonic() >= deadline:
                return None  # the holder is slow or gone: fetch ourselves rather than fail
            time.sleep(WAIT_STEP)

    def _release_shared(self, key: str, token: str) -> None:
        client = self.backend._write_client
        lock_name = self.backend._get_prefix() + "l:" + key
        try:
            if client.get(lock_name) == token.encode():
                client.delete(lock_name)
        except Exception as exc:  # noqa: BLE001
            self._failed("unlock", key, exc)


smart_cache = SmartCache()
