"""Numbers about the cache and the database: Prometheus metrics and the admin panel's history.

Prometheus counters are process-wide (one registry); the panel keeps a short per-process
history in ten-second buckets so it can chart the last few minutes without a Prometheus server.
With PROMETHEUS_MULTIPROC_DIR set (several processes behind a load balancer), every process
also writes its counters and buckets to files there, and `panel_numbers` sums them all.
"""
from __future__ import annotations

import os
import re
import threading
import time
from collections import deque

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.multiprocess import MultiProcessCollector
from sqlalchemy import event
from sqlalchemy.engine import Engine

CACHE_HITS = Counter("chat_cache_hits_total", "Cache hits", ["family"])
CACHE_MISSES = Counter("chat_cache_misses_total", "Cache misses (a fetch from the database)", ["family"])
CACHE_BYPASSES = Counter("chat_cache_bypasses_total", "Reads that skipped the cache (uncommitted writes)", ["family"])
CACHE_INVALIDATIONS = Counter("chat_cache_invalidations_total", "Prefixes and tags invalidated")
CACHE_ERRORS = Counter("chat_cache_errors_total", "Cache backend failures served from the database")
SQL_QUERIES = Counter("chat_sql_queries_total", "SQL statements sent to the database")
FETCH_SECONDS = Histogram("chat_cache_fetch_seconds", "Time to fetch a missed entry", ["family"],
                          buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5))
# The Redis circuit breaker (chat.redis_guard.CircuitBreaker): 0 closed, 1 half-open (probing), 2 open.
REDIS_BREAKER_STATE = Gauge("chat_redis_breaker_state", "Redis circuit breaker: 0 closed, 1 half-open, 2 open",
                            multiprocess_mode="livemax")
REDIS_BREAKER_OPENS = Counter("chat_redis_breaker_opens_total", "Times a Redis circuit breaker opened")
REDIS_SKIPPED = Counter("chat_redis_skipped_total", "Redis calls skipped (failed at once) while the breaker was open")
BREAKER_STATES = {"closed": 0, "half-open": 1, "open": 2}

BUCKET_SECONDS = 10
HISTORY_BUCKETS = 30  # five minutes


def multiprocess_dir() -> str | None:
    """PROMETHEUS_MULTIPROC_DIR: where every process of the deployment writes its numbers."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


# Only in multiprocess mode: each process's ten-second buckets in the shared files, as a ring of
# HISTORY_BUCKETS slots (bounded files), and its queries-per-fetch averages. Named panel_*, so
# /metrics leaves them out. 'all' keeps a stopped process's numbers, as its counters are kept.
if multiprocess_dir():
    SHARED_BUCKETS = Gauge("panel_bucket_count", "Panel history: count in a slot", ["slot", "field"],
                           multiprocess_mode="all")
    SHARED_STARTS = Gauge("panel_bucket_start", "Panel history: start of a slot", ["slot"],
                          multiprocess_mode="all")
    SHARED_QUERIES_PER_FETCH = Gauge("panel_queries_per_fetch", "Queries a fetch costs", ["family"],
                                     multiprocess_mode="mostrecent")
else:
    SHARED_BUCKETS = SHARED_STARTS = SHARED_QUERIES_PER_FETCH = None


class History:
    """Hits, misses, invalidations and SQL queries per ten-second bucket, for the panel's chart."""

    FIELDS = ("hits", "misses", "invalidations", "queries")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._buckets: deque[dict] = deque(maxlen=HISTORY_BUCKETS)
        self.totals = dict.fromkeys(self.FIELDS, 0)
        self.queries_per_fetch: dict[str, float] = {}
        self.hits_by_family: dict[str, int] = {}

    def add(self, field: str, n: int = 1) -> None:
        start = int(time.time()) // BUCKET_SECONDS * BUCKET_SECONDS
        with self._lock:
            if not self._buckets or self._buckets[-1]["start"] != start:
                self._buckets.append({"start": start, **dict.fromkeys(self.FIELDS, 0)})
                if SHARED_BUCKETS is not None:
                    _reset_shared_slot(start)
            self._buckets[-1][field] += n
            self.totals[field] += n
            if SHARED_BUCKETS is not None:
                SHARED_BUCKETS.labels(_slot(start), field).inc(n)

    def snapshot(self) -> list[dict]:
        """The last few minutes, oldest first, with empty buckets filled in."""
        with self._lock:
            by_start = {b["start"]: dict(b) for b in self._buckets}
        return _last_minutes(by_start)


def _last_minutes(by_start: dict[int, dict]) -> list[dict]:
    now = int(time.time()) // BUCKET_SECONDS * BUCKET_SECONDS
    return [by_start.get(start, {"start": start, **dict.fromkeys(History.FIELDS, 0)})
            for start in range(now - (HISTORY_BUCKETS - 1) * BUCKET_SECONDS, now + 1, BUCKET_SECONDS)]


def _slot(start: int) -> str:
    return str(start // BUCKET_SECONDS % HISTORY_BUCKETS)


def _reset_shared_slot(start: int) -> None:
    """The slot now holds a new bucket: what it held is HISTORY_BUCKETS buckets old."""
    slot = _slot(start)
    for field in History.FIELDS:
        SHARED_BUCKETS.labels(slot, field).set(0)
    SHARED_STARTS.labels(slot).set(start)


history = History()
_local = threading.local()


def family(key: str) -> str:
    return key.split(":", 1)[0]


def start_request() -> None:
    _local.reads, _local.misses = 0, 0


def request_cache_state() -> str | None:
    """'HIT' when every cache read of this request was a hit, 'MISS' otherwise, None if none."""
    if not getattr(_local, "reads", 0):
        return None
    return "MISS" if _local.misses else "HIT"


RENDERED = "html"  # rendered fragments: a miss there re-renders from cached data, no SQL


def _count_read(missed: bool, key: str) -> None:
    if family(key) == RENDERED:
        return  # X-Cache says whether the database was needed, not whether a template ran
    _local.reads = getattr(_local, "reads", 0) + 1
    if missed:
        _local.misses = getattr(_local, "misses", 0) + 1


def record_hit(key: str) -> None:
    name = family(key)
    CACHE_HITS.labels(name).inc()
    history.add("hits")
    history.hits_by_family[name] = history.hits_by_family.get(name, 0) + 1
    _count_read(False, key)


def record_miss(key: str, seconds: float, queries: int) -> None:
    name = family(key)
    _count_read(True, key)
    CACHE_MISSES.labels(name).inc()
    FETCH_SECONDS.labels(name).observe(seconds)
    history.add("misses")
    # How many queries a hit on this family saves, as a moving average of real fetches.
    previous = history.queries_per_fetch.get(name, queries)
    history.queries_per_fetch[name] = previous * 0.8 + queries * 0.2
    if SHARED_QUERIES_PER_FETCH is not None:
        SHARED_QUERIES_PER_FETCH.labels(name).set(history.queries_per_fetch[name])


def record_bypass(key: str) -> None:
    CACHE_BYPASSES.labels(family(key)).inc()
    _count_read(True, key)


def record_invalidation() -> None:
    CACHE_INVALIDATIONS.inc()
    history.add("invalidations")


def record_error() -> None:
    CACHE_ERRORS.inc()


def queries_in_this_thread() -> int:
    """SQL statements this thread has sent so far (a fetch's cost is the difference)."""
    return getattr(_local, "queries", 0)


@event.listens_for(Engine, "before_cursor_execute")
def _count_query(*_args) -> None:
    SQL_QUERIES.inc()
    history.add("queries")
    _local.queries = getattr(_local, "queries", 0) + 1


def queries_saved() -> int:
    """Estimated queries the cache spared the database: each family's hits times the
    queries a fetch of that family costs (a moving average of real fetches)."""
    return round(sum(hits * history.queries_per_fetch.get(name, 1.0)
                     for name, hits in list(history.hits_by_family.items())))


# -- the whole deployment (multiprocess mode) ---------------------------------------------------
_PID_IN_FILE_NAME = re.compile(r"_(\d+)\.db$")


def collect_all_processes():
    """Every metric family summed over the processes sharing PROMETHEUS_MULTIPROC_DIR."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, multiprocess_dir())
    return registry.collect()


def processes() -> tuple[int, int]:
    """(processes whose numbers are summed, of which still running) from the shared files."""
    pids = {int(m.group(1)) for name in os.listdir(multiprocess_dir())
            if (m := _PID_IN_FILE_NAME.search(name))}
    return len(pids), sum(_running(pid) for pid in pids)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def panel_numbers() -> dict:
    """What the admin panel shows: totals, the last minutes' buckets and queries saved, for this
    process, or for every process sharing PROMETHEUS_MULTIPROC_DIR (then with their count)."""
    if not multiprocess_dir():
        return {"totals": dict(history.totals), "buckets": history.snapshot(),
                "queries_saved": queries_saved(), "processes": None}
    counters = {"chat_cache_hits_total": "hits", "chat_cache_misses_total": "misses",
                "chat_cache_invalidations_total": "invalidations", "chat_sql_queries_total": "queries"}
    totals = dict.fromkeys(History.FIELDS, 0)
    hits_by_family: dict[str, float] = {}
    per_fetch: dict[str, float] = {}
    starts: dict[tuple[str, str], int] = {}  # (pid, slot) -> bucket start
    counts: list[tuple[str, str, str, float]] = []  # (pid, slot, field, count)
    for family_ in collect_all_processes():
        for sample in family_.samples:
            if sample.name in counters:
                totals[counters[sample.name]] += int(sample.value)
                if sample.name == "chat_cache_hits_total":
                    name = sample.labels["family"]
                    hits_by_family[name] = hits_by_family.get(name, 0) + sample.value
            elif sample.name == "panel_queries_per_fetch":
                per_fetch[sample.labels["family"]] = sample.value
            elif sample.name == "panel_bucket_start":
                starts[sample.labels["pid"], sample.labels["slot"]] = int(sample.value)
            elif sample.name == "panel_bucket_count":
                labels = sample.labels
                counts.append((labels["pid"], labels["slot"], labels["field"], sample.value))
    by_start: dict[int, dict] = {}
    for pid, slot, field, count in counts:
        start = starts.get((pid, slot))
        if start is None:
            continue
        bucket = by_start.setdefault(start, {"start": start, **dict.fromkeys(History.FIELDS, 0)})
        bucket[field] += int(count)
    saved = round(sum(hits * per_fetch.get(name, 1.0) for name, hits in hits_by_family.items()))
    summed, running = processes()
    return {"totals": totals, "buckets": _last_minutes(by_start), "queries_saved": saved,
            "processes": {"summed": summed, "running": running}}


def record_redis_breaker_state(state: str) -> None:
    REDIS_BREAKER_STATE.set(BREAKER_STATES[state])


def record_redis_breaker_opened() -> None:
    REDIS_BREAKER_OPENS.inc()


def record_redis_skipped() -> None:
    REDIS_SKIPPED.inc()
