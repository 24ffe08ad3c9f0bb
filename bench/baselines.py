"""The designs the product is measured against, side by side in the same run.

BENCH ONLY. Nothing here is used by the app; the app's cache is chat.cache.SmartCache.

Every design answers the same two questions the workloads ask:
  read(key, fetch)            a cached read (or not) of one list
  mutate(do, targets, ...)    run a domain function that commits, and invalidate the way that
                              design does it (before or after the commit, by key or by pattern)

- NoCache            every read runs its SQL.
- FlaskCaching       plain Flask-Caching, the usual Flask way: @cache.memoize on the read, per
                     viewer, and a manual cache.delete_memoized(...) per affected list after the
                     commit in the code that made the change.
- SeedDesign         the seed's design ported literally, flaws included on purpose:
                       * get-or-fetch treats any falsy value ([], 0, "", None) as a miss,
                       * invalidation deletes by pattern: SCAN MATCH <pattern> + DEL,
                       * no single flight: every concurrent miss fetches,
                       * invalidation runs BEFORE the commit (in before_commit).
- Product            chat.fragments / SmartCache as the app uses them: generations, single
                     flight, invalidation from after_commit by INVALIDATION_MAP.
"""
from __future__ import annotations

import pickle
import threading
from typing import Any, Callable, Iterable

from sqlalchemy import event
from sqlalchemy.orm import Session

BEFORE_COMMIT = "bench.before_commit"  # session.info: callbacks the seed design runs before commit


def _run_before_commit(session: Session) -> None:
    for callback in session.info.pop(BEFORE_COMMIT, []):
        callback()


def install_before_commit_hook() -> None:
    if not event.contains(Session, "before_commit", _run_before_commit):
        event.listen(Session, "before_commit", _run_before_commit)


class Design:
    name = "?"
    label = "?"

    def read(self, key: str, fetch: Callable[[], Any], tags: Iterable[str] = ()) -> Any:
        raise NotImplementedError

    def mutate(self, do: Callable[[], Any], patterns: Iterable[str], memo_targets: Iterable[tuple]) -> Any:
        """Run `do` (a domain function; it commits) and invalidate as this design does.
        `patterns`: key patterns the seed design deletes; `memo_targets`: (viewer_id, tab) lists
        the Flask-Caching code deletes by hand. The product needs neither: its commit does it."""
        return do()


class NoCache(Design):
    name, label = "no_cache", "no cache"

    def read(self, key, fetch, tags=()):
        return fetch()


class Product(Design):
    name, label = "product", "this product (SmartCache)"

    def read(self, key, fetch, tags=()):
        from chat.cache import smart_cache
        from chat.extensions import db
        from chat.invalidation import has_pending_writes

        return smart_cache.get_or_fetch(key, fetch, tags=tuple(tags), bypass=has_pending_writes(db.session))


class ProductPerScope(Product):
    """The product's cache with a list entry per permission set, as it read them before a
    Pending list became the merge of its queues' lists (bench/queries.py reads Product's lists
    through their fragment)."""

    name, label = "product_per_scope", "this product, one entry per permission set (before)"


class FlaskCaching(Design):
    """@cache.memoize(timeout) on a function of (key) plus delete_memoized after the commit."""

    name, label = "flask_caching", "plain Flask-Caching (memoize + manual deletes)"

    def __init__(self, app, redis_url: str, prefix: str):
        from flask_caching import Cache

        self.cache = Cache(app, config={"CACHE_TYPE": "RedisCache", "CACHE_REDIS_URL": redis_url,
                                        "CACHE_KEY_PREFIX": prefix, "CACHE_DEFAULT_TIMEOUT": 1800})
        self._fetchers: dict[str, Callable[[], Any]] = {}
        local = threading.local()
        self._local = local

        @self.cache.memoize(timeout=1800)
        def conversation_list(viewer_id: int, tab: str):
            return local.fetch()

        self.conversation_list = conversation_list

        @self.cache.memoize(timeout=1800)
        def by_key(key: str):
            return local.fetch()

        self.by_key = by_key

    def read(self, key, fetch, tags=(), viewer_id: int | None = None, tab: str | None = None):
        self._local.fetch = fetch
        if viewer_id is not None:  # a list, memoized per viewer as a Flask view would be
            return self.conversation_list(viewer_id, tab)
        return self.by_key(key)

    def mutate(self, do, patterns, memo_targets):
        result = do()  # the commit happens inside
        for viewer_id, tab in memo_targets:  # then the hand-written deletes
            self.cache.delete_memoized(self.conversation_list, viewer_id, tab)
        return result


class SeedCache:
    """The seed's cache, literally: GET/SET pickles in Redis, falsy = miss, SCAN+DEL patterns."""

    def __init__(self, client, prefix: str):
        self.client, self.prefix = client, prefix

    def get_or_fetch(self, key: str, fetch: Callable[[], Any], ttl: int = 1800) -> Any:
        raw = self.client.get(self.prefix + key)
        value = pickle.loads(raw) if raw is not None else None
        if value:  # the seed's test: [], 0, "" and None all read as a miss
            return value
        value = fetch()  # no single flight: every concurrent miss runs this
        self.client.set(self.prefix + key, pickle.dumps(value), ex=ttl)
        return value

    def invalidate(self, pattern: str, count: int = 1000) -> int:
        """Delete every key matching the glob: SCAN the whole keyspace, DEL in batches."""
        deleted, batch = 0, []
        for key in self.client.scan_iter(match=self.prefix + pattern, count=count):
            batch.append(key)
            if len(batch) >= count:
                deleted += self.client.delete(*batch)
                batch = []
        if batch:
            deleted += self.client.delete(*batch)
        return deleted


class SeedDesign(Design):
    name, label = "seed_design", "seed design, ported literally"

    def __init__(self, client, prefix: str):
        self.cache = SeedCache(client, prefix)
        install_before_commit_hook()

    def read(self, key, fetch, tags=()):
        return self.cache.get_or_fetch(key, fetch)

    def mutate(self, do, patterns, memo_targets):
        from chat.extensions import db

        session = db.session()
        session.info[BEFORE_COMMIT] = [lambda p=p: self.cache.invalidate(p) for p in patterns]
        try:
            return do()
        finally:
            session.info.pop(BEFORE_COMMIT, None)
