"""9. Message search: the search box over the seeded messages, on SQLite and PostgreSQL, cold and cached.

Each database holds the seed's data (the run's seed for SQLite, copied; a throwaway PostgreSQL
database migrated and seeded the same way, dropped at the end). The app runs in this process
(its Flask test client: the whole request, bearer token to JSON, without a socket), as the
embedded default on SQLite (in-process cache) and as the scaled deployment on PostgreSQL (the
run's private Redis, under a key prefix of its own).

  cold    GET /api/conversations?status=all&q=<query> right after the conversation lists were
          invalidated (one prefix, O(1)): the search's SQL (the list, its labels, the snippets)
          and the JSON; the token lookup stays cached, as it is for an agent at work.
  cached  the same request again: a cache hit, no SQL.

Queries are what agents type: words of the seed's messages (common and rare, several words, a
prefix), a name, a phone as people write it and a word nobody wrote; for an admin (every
conversation) and for an agent (Ana: her departments' queues and her own conversations).
With --quick each (viewer, query) is asked 5 times per mode, full: 30.
"""
from __future__ import annotations

import statistics
import time
import uuid
from pathlib import Path

from .common import app_env, copy_database, percentile, save_chart
from .delivery import ThrowawayPostgres, _flask

VIEWERS = ("admin@example.com", "ana@example.com")
QUERIES = ("order", "refund", "tracking link", "charged twice", "orde", "portugal", "Silva",
           "+55 (11) 90000-0123", "zebra")
REPEATS = {"quick": 5, "full": 30}


def _app(database_url: str, **config):
    from chat import create_app

    return create_app({"SQLALCHEMY_DATABASE_URI": database_url, "SECRET_KEY": "bench-secret-key",
                       "INBOUND_TOKEN": "bench-inbound-token", "SOCKETIO_MESSAGE_QUEUE": None, **config})


def _measure(app, repeats: int) -> dict:
    from sqlalchemy import event, func, select

    from chat import catalog
    from chat.cache import smart_cache
    from chat.extensions import db
    from chat.models import Message

    with app.app_context():
        headers = {email: {"Authorization": f"Bearer {catalog.issue_api_token(email)}"} for email in VIEWERS}
        messages = db.session.scalar(select(func.count()).select_from(Message))
        engine = db.engine
    client = app.test_client()
    statements: list[str] = []
    event.listen(engine, "before_cursor_execute", lambda conn, cursor, statement, *a: statements.append(statement))
    timings = {"cold": [], "cached": []}
    by_query: dict[str, dict] = {}
    sql_per_cold: list[int] = []
    found: dict[str, int] = {}
    for q in QUERIES:
        per = {"cold": [], "cached": []}
        for email in VIEWERS:
            url, args = "/api/conversations", {"status": "all", "q": q}
            client.get(url, query_string=args, headers=headers[email])  # the token lookup is cached from here on
            for _ in range(repeats):
                with app.app_context():
                    smart_cache.invalidate("conversations*")
                statements.clear()
                t = time.perf_counter()
                response = client.get(url, query_string=args, headers=headers[email])
                per["cold"].append(1000 * (time.perf_counter() - t))
                body = response.get_json()
                if response.status_code != 200 or body["cached"]:
                    raise RuntimeError(f"cold search {q!r} as {email}: {response.status_code} {body}")
                sql_per_cold.append(len(statements))
                found[f"{email} {q}"] = len(body["data"])
                t = time.perf_counter()
                response = client.get(url, query_string=args, headers=headers[email])
                per["cached"].append(1000 * (time.perf_counter() - t))
                if not response.get_json()["cached"]:
                    raise RuntimeError(f"search {q!r} as {email} was not served from the cache")
        by_query[q] = {mode: round(statistics.median(values), 2) for mode, values in per.items()}
        for mode in timings:
            timings[mode] += per[mode]
    return {"messages": messages, "requests_per_mode": len(timings["cold"]),
            **{mode: {"p50_ms": round(percentile(values, 50), 2), "p99_ms": round(percentile(values, 99), 2)}
               for mode, values in timings.items()},
            "sql_per_cold_request": statistics.median(sql_per_cold), "p50_ms_by_query": by_query,
            "items_found": found}


def run(ctx) -> dict:
    repeats = REPEATS["quick" if ctx.sizes.name == "quick" else "full"]
    results = {"settings": {"queries": list(QUERIES), "viewers": list(VIEWERS), "repeats": repeats,
                            "sqlite": "SQLite FTS5, in-process cache (the embedded default)",
                            "postgresql": "PostgreSQL tsvector + GIN, Redis cache (the scaled deployment)"},
               "databases": {}}
    database = copy_database(ctx.database, ctx.workdir / "search.db")
    app = _app(f"sqlite:///{database}")
    results["databases"]["sqlite"] = _measure(app, repeats)
    pg = ThrowawayPostgres()
    prefix = f"bench-s-{uuid.uuid4().hex[:8]}:"
    try:
        env = app_env(ctx.workdir / "unused.db", DATABASE_URL=pg.url)
        started = time.perf_counter()
        _flask(env, "db", "upgrade")
        _flask(env, "seed", "--agents", str(ctx.sizes.agents), "--conversations", str(ctx.sizes.conversations),
               "--messages", str(ctx.sizes.messages), "--departments", str(ctx.sizes.departments))
        results["settings"]["postgresql_seed_seconds"] = round(time.perf_counter() - started, 1)
        app = _app(pg.url, REDIS_URL=ctx.redis_url, CACHE_KEY_PREFIX=prefix)
        results["databases"]["postgresql"] = _measure(app, repeats)
        with app.app_context():
            from chat.extensions import db

            db.engine.dispose()
    finally:
        client = ctx.redis.client()
        for key in client.scan_iter(match=prefix + "*", count=1000):
            client.delete(key)
        pg.drop()
    return results


def chart(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels, p50, p99 = [], [], []
    for name, r in results["databases"].items():
        for mode in ("cold", "cached"):
            labels.append(f"{name}\n{mode}")
            p50.append(r[mode]["p50_ms"])
            p99.append(r[mode]["p99_ms"])
    xs = list(range(len(labels)))
    ax.bar([x - 0.2 for x in xs], p50, 0.4, label="p50")
    ax.bar([x + 0.2 for x in xs], p99, 0.4, label="p99")
    ax.set_xticks(xs, labels)
    ax.set_ylabel("GET /api/conversations?status=all&q=… (ms)")
    messages = {name: r["messages"] for name, r in results["databases"].items()}
    ax.set_title(", ".join(f"{name}: {n:,} messages" for name, n in messages.items()), fontsize=9)
    ax.legend()
    ax.grid(True, axis="y", alpha=0.3)
    save_chart(fig, "9. Message search: cold (invalidated) and cached", path)


def summary(results: dict) -> list[tuple[str, str, str]]:
    names = {"sqlite": "SQLite FTS5", "postgresql": "PostgreSQL tsvector"}
    out = []
    for name, r in results["databases"].items():
        for mode in ("cold", "cached"):
            extra = f", {r['sql_per_cold_request']:g} SQL statements" if mode == "cold" else ", no SQL"
            out.append(("search", f"{names[name]}, {r['messages']:,} messages, {mode}",
                        f"p50 {r[mode]['p50_ms']} ms, p99 {r[mode]['p99_ms']} ms ({r['requests_per_mode']} requests{extra})"))
    return out
