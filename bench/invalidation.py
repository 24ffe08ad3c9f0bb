"""3. Prefix invalidation cost with 1k ... 10M keys in a real Redis.

A private redis-server of its own (it is flushed between sizes; the shared one is never
touched). Each size loads N cache entries with DEBUG POPULATE (server-side, fast): 1% of them
under the prefix being invalidated (one agent's lists), the rest under other agents'.
Then, on the same keyspace:
  product   SmartCache.invalidate("conversations:user:7*"): one SET of a new generation
  seed      SCAN MATCH <prefix>conversations:user:7:* COUNT 1000 + DEL in batches of 1000
            (generous: the literal scan_iter() default is COUNT 10, about 100x more round trips)
"""
from __future__ import annotations

import statistics
import time
import uuid
from pathlib import Path

from .baselines import SeedCache
from .common import PrivateRedis, ratio, save_chart
from .queries import make_app

TARGET_USER = 7


def run(ctx) -> dict:
    sizes = ctx.sizes.invalidation_keys
    results = {"settings": {"share_under_prefix": 0.01, "scan_count": 1000, "value_bytes": 64,
                            "redis": "private redis-server, no persistence"}, "sizes": {}}
    with ctx.stack_scope() as stack:
        server = PrivateRedis(ctx.workdir)
        stack.callback(server.stop)
        client = server.client()
        prefix = f"bench-i-{uuid.uuid4().hex[:6]}:"
        app = make_app(ctx.database, server.url, prefix)
        from chat.cache import smart_cache

        seed = SeedCache(client, prefix + "v:")
        for n in sizes:
            targets = max(n // 100, 1)
            client.flushall()
            started = time.perf_counter()
            client.execute_command("DEBUG", "POPULATE", n - targets, f"{prefix}v:conversations:user:8:k", 64)
            client.execute_command("DEBUG", "POPULATE", targets, f"{prefix}v:conversations:user:{TARGET_USER}:k", 64)
            load_seconds = time.perf_counter() - started
            keys = client.dbsize()
            with app.app_context():
                timings = []
                for _ in range(7):
                    t = time.perf_counter()
                    smart_cache.invalidate(f"conversations:user:{TARGET_USER}*")
                    timings.append(time.perf_counter() - t)
            product_ms = statistics.median(timings) * 1000
            t = time.perf_counter()
            deleted = seed.invalidate(f"conversations:user:{TARGET_USER}:*")
            seed_ms = (time.perf_counter() - t) * 1000
            if deleted != targets:
                raise RuntimeError(f"SCAN+DEL deleted {deleted} keys, expected {targets}")
            results["sizes"][str(n)] = {"keys": keys, "matching": targets, "load_seconds": round(load_seconds, 2),
                                        "product_ms": round(product_ms, 3), "seed_scan_del_ms": round(seed_ms, 1),
                                        "seed_over_product": ratio(seed_ms, product_ms),
                                        "redis_used_memory_mb": round(client.info("memory")["used_memory"] / 2**20)}
        client.flushall()
    return results


def chart(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    ns = [int(n) for n in results["sizes"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(ns, [results["sizes"][str(n)]["seed_scan_del_ms"] for n in ns], "o-", label="seed: SCAN + DEL")
    ax.plot(ns, [results["sizes"][str(n)]["product_ms"] for n in ns], "o-", label="product: invalidate() (one SET)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("keys in Redis")
    ax.set_ylabel("ms to invalidate one agent's prefix (log)")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    save_chart(fig, "3. Prefix invalidation cost", path)


def summary(results: dict) -> list[tuple[str, str, str]]:
    return [("invalidation", f"{int(n):,} keys",
             f"product {r['product_ms']:.2f} ms vs seed SCAN+DEL {r['seed_scan_del_ms']:.1f} ms ({r['seed_over_product']:.0f}x)")
            for n, r in results["sizes"].items()]
