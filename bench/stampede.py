"""4. Stampede: N concurrent cold misses on one key, counting the fetches that reach the database.

Once with N threads in one process, once with N/2 threads in each of two processes, on a
private redis-server (the only backend shared by processes). The fetch is the real list query
(queries.list_conversations) of one agent plus 50 ms of sleep, so that the misses really overlap
(without it, a query of a few ms on a 2-core machine lets some threads arrive after the
first fill, and the baselines' counts turn into noise); the counter sits in the fetch itself.
"""
from __future__ import annotations

import multiprocessing
import threading
import time
import uuid
from pathlib import Path

from .common import ratio, save_chart

FETCH_EXTRA_SECONDS = 0.05
DESIGNS = ("no_cache", "flask_caching", "seed_design", "product")


def _burst(database: str, redis_url: str, prefix: str, design_name: str, threads: int, ready, results) -> None:
    """Run in a process: once every process is ready, `threads` threads read the same cold key."""
    from chat import queries
    from chat.extensions import db
    from chat.models import User, Viewer

    from .baselines import FlaskCaching, NoCache, Product, SeedDesign
    from .queries import make_app

    app = make_app(Path(database), redis_url, prefix)
    if design_name == "seed_design":
        import redis

        design = SeedDesign(redis.Redis.from_url(redis_url), prefix + "seed:")
    elif design_name == "flask_caching":
        design = FlaskCaching(app, redis_url, prefix + "fc:")
    else:
        design = {"no_cache": NoCache, "product": Product}[design_name]()
    with app.app_context():
        viewer = Viewer.of(db.session.get(User, 2))
        db.session.remove()
    fetches, lock, errors, durations = [0], threading.Lock(), [], []
    key = "conversations:bench:stampede"

    def fetch():
        with lock:
            fetches[0] += 1
        time.sleep(FETCH_EXTRA_SECONDS)  # a fetch as slow as a busy database's, so misses overlap
        return queries.list_conversations(viewer, "pending")

    ready.wait()  # every process has built its app
    start_at = time.time() + 0.2
    barrier = threading.Barrier(threads)

    def one():
        try:
            with app.app_context():
                barrier.wait()
                time.sleep(max(0.0, start_at - time.time()))
                started = time.perf_counter()
                if isinstance(design, FlaskCaching):
                    design.read(key, fetch, viewer_id=viewer.id, tab="stampede")
                else:
                    design.read(key, fetch)
                durations.append(time.perf_counter() - started)
                db.session.remove()
        except BaseException as exc:  # noqa: BLE001
            errors.append(repr(exc))

    pool = [threading.Thread(target=one) for _ in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    results.put({"fetches": fetches[0], "errors": errors, "durations": durations})


def run(ctx) -> dict:
    n = ctx.sizes.stampede_threads
    results = {"settings": {"concurrent_misses": n, "key": "one cold key", "fetch": "the pending-list query + 50 ms sleep",
                            "backend": "private redis-server"}, "designs": {}}
    spawn = multiprocessing.get_context("spawn")
    for name in DESIGNS:
        row = {}
        # N threads in one fresh process, then N/2 threads in each of two processes.
        for mode, processes in (("threads", 1), ("two_processes", 2)):
            prefix = f"bench-s-{name}-{mode}-{uuid.uuid4().hex[:6]}:"
            ready, out = spawn.Barrier(processes), spawn.Queue()
            children = [spawn.Process(target=_burst, args=(str(ctx.database), ctx.redis_url, prefix, name,
                                                           n // processes, ready, out)) for _ in range(processes)]
            try:
                for child in children:
                    child.start()
                parts = [out.get(timeout=120) for _ in children]
            finally:
                for child in children:
                    child.join(timeout=10)
                    if child.is_alive():
                        child.kill()
            errors = [e for p in parts for e in p["errors"]]
            if errors:
                raise RuntimeError(f"stampede {name}/{mode}: {errors[0]}")
            durations = sorted(d for p in parts for d in p["durations"])
            row[mode] = {"fetches": sum(p["fetches"] for p in parts),
                         "slowest_ms": round(1000 * durations[-1], 1) if durations else None}
        results["designs"][name] = row
    return results


def chart(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    names = list(results["designs"])
    fig, ax = plt.subplots(figsize=(8, 3.8))
    y = range(len(names))
    ax.barh([i - 0.2 for i in y], [results["designs"][n]["threads"]["fetches"] for n in names], height=0.4,
            label="threads, one process")
    ax.barh([i + 0.2 for i in y], [results["designs"][n]["two_processes"]["fetches"] for n in names],
            height=0.4, label="two processes")
    ax.set_yticks(list(y), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"database fetches for {results['settings']['concurrent_misses']} concurrent cold misses (ideal: 1)")
    ax.legend(fontsize=8)
    save_chart(fig, "4. Stampede on one cold key", path)


def summary(results: dict) -> list[tuple[str, str, str]]:
    n = results["settings"]["concurrent_misses"]
    return [("stampede", name, f"{r['threads']['fetches']} fetches for {n} misses in threads, "
                               f"{r['two_processes']['fetches']} across two processes")
            for name, r in results["designs"].items()]


__all__ = ["run", "chart", "summary", "ratio"]
