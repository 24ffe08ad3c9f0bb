"""5. Push: from a committed change to `data:updated` arriving at 1, 100 and 1,000 clients.

Socket.IO clients (python-socketio AsyncClient, websocket transport, signed in with a real
session cookie) connect to a gunicorn gthread server; then, one change at a time, the bench
POSTs a contact's message to /api/inbound (the webhook: it commits a new pending conversation
that every agent may see) and times each client's `data:updated` from the moment the POST
was sent (so the figure includes the request and its commit) until the event arrives.

  embedded   one server, no Redis: the change and the clients on the same process
  redis      two servers sharing the database and a private Redis (REDIS_URL): the change
             is posted to server A, the clients are connected to server B

Note: in threading mode every websocket holds one gunicorn thread and one of gthread's
worker_connections (default 1000), so the server is started with clients + 50 threads and
enough worker connections (`make run` has 100 threads: about 100 browsers per process).
"""
from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

from .common import (INBOUND_TOKEN, Gunicorn, app_env, cookie_header, copy_database, log_in, percentile,
                     save_chart)

AGENT = "ana@example.com"


async def _measure(client_base: str, change_base: str, cookie: str, clients: int, changes: int) -> dict:
    import aiohttp
    import socketio

    arrivals: list[list[float]] = [[] for _ in range(changes)]
    current = {"change": -1}
    sockets = []

    def make():
        sio = socketio.AsyncClient(reconnection=False)

        @sio.on("data:updated")
        async def _updated(data):
            if current["change"] >= 0:
                arrivals[current["change"]].append(time.perf_counter())

        return sio

    async def connect(sio):
        await sio.connect(client_base, headers={"Cookie": cookie}, transports=["websocket"], wait_timeout=30)

    try:
        for start in range(0, clients, 100):  # connect in waves of 100
            wave = [make() for _ in range(min(100, clients - start))]
            sockets += wave
            await asyncio.gather(*(connect(s) for s in wave))
        await asyncio.sleep(0.5)
        sent, posts = [], []
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            for n in range(changes):
                current["change"] = n
                t0 = time.perf_counter()
                async with http.post(change_base + "/api/inbound",
                                     json={"phone": f"+55119{uuid.uuid4().int % 10**8:08d}",
                                           "body": f"bench push {n}"},
                                     headers={"Authorization": f"Bearer {INBOUND_TOKEN}"}) as response:
                    if response.status not in (200, 201):
                        raise RuntimeError(f"inbound answered {response.status}: {await response.text()}")
                posts.append(time.perf_counter() - t0)
                sent.append(t0)
                deadline = time.perf_counter() + 10
                while len(arrivals[n]) < clients and time.perf_counter() < deadline:
                    await asyncio.sleep(0.005)
                await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(*(s.disconnect() for s in sockets), return_exceptions=True)
    latencies = [1000 * (a - sent[n]) for n in range(changes) for a in arrivals[n]]
    received = sum(min(len(a), clients) for a in arrivals)
    return {"clients": clients, "changes": changes, "delivered": received, "expected": clients * changes,
            "p50_ms": _r(percentile(latencies, 50)), "p99_ms": _r(percentile(latencies, 99)),
            "max_ms": _r(max(latencies) if latencies else None),
            "post_p50_ms": _r(1000 * percentile(posts, 50))}


def _r(x):
    return round(x, 2) if x is not None else None


def run(ctx) -> dict:
    sizes = ctx.sizes
    results = {"settings": {"transport": "websocket", "client": "python-socketio AsyncClient, one process",
                            "change": "POST /api/inbound (commit), timed from the request",
                            "agent": AGENT}, "embedded": {}, "redis": {}}
    database = copy_database(ctx.database, ctx.workdir / "push.db")
    for clients in sizes.push_clients:
        threads = max(100, clients + 50)
        with ctx.stack_scope() as stack:
            server = Gunicorn(ctx.workdir, app_env(database), threads=threads, name=f"push-embedded-{clients}")
            stack.callback(server.stop)
            cookie = cookie_header(log_in(server.base, AGENT))
            results["embedded"][str(clients)] = asyncio.run(
                _measure(server.base, server.base, cookie, clients, sizes.push_changes))
        with ctx.stack_scope() as stack:
            prefix = f"bench-p-{uuid.uuid4().hex[:6]}:"
            env = app_env(database, ctx.redis_url, prefix)
            a = Gunicorn(ctx.workdir, env, threads=100, name=f"push-redis-a-{clients}")
            stack.callback(a.stop)
            b = Gunicorn(ctx.workdir, env, threads=threads, name=f"push-redis-b-{clients}")
            stack.callback(b.stop)
            cookie = cookie_header(log_in(b.base, AGENT))
            results["redis"][str(clients)] = asyncio.run(
                _measure(b.base, a.base, cookie, clients, sizes.push_changes))
    for mode in ("embedded", "redis"):
        for clients, r in results[mode].items():
            if r["delivered"] < r["expected"]:
                raise RuntimeError(f"push {mode}/{clients}: {r['delivered']} of {r['expected']} events arrived")
    return results


def chart(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, marker in (("embedded", "o"), ("redis", "s")):
        ns = [int(n) for n in results[mode]]
        ax.plot(ns, [results[mode][str(n)]["p50_ms"] for n in ns], marker + "-", label=f"{mode} p50")
        ax.plot(ns, [results[mode][str(n)]["p99_ms"] for n in ns], marker + "--", label=f"{mode} p99")
    ax.axhline(50, color="#dc2626", linestyle=":", label="promise: 50 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("connected Socket.IO clients")
    ax.set_ylabel("change request sent -> data:updated (ms, log)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    save_chart(fig, "5. Push latency", path)


def summary(results: dict) -> list[tuple[str, str, str]]:
    out = []
    for mode in ("embedded", "redis"):
        for clients, r in results[mode].items():
            out.append(("push", f"{mode}, {int(clients):,} clients",
                        f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms ({r['delivered']}/{r['expected']} delivered)"))
    return out
