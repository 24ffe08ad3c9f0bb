"""5. Push: from a committed change to `data:updated` arriving at 1, 100, 1,000 and 5,000 clients.

Socket.IO clients (websockets speaking Engine.IO 4 / Socket.IO 5, signed in with a real session
cookie: see ThinClient; BENCH_PUSH_CLIENT=socketio uses python-socketio's AsyncClient) connect to one gunicorn process as `make run` serves it (gevent worker: a socket
is a few greenlets, not a thread); then, one change at a time, the bench POSTs a contact's
message to /api/inbound (the webhook: it commits a new pending conversation that every agent may
see) and times each client's `data:updated` naming the pending list (the agent also gets one
naming "contacts": a new contact) from the moment the POST was sent (so the figure includes the
request and its commit) until the event arrives.

  embedded   one server, no Redis: the change and the clients on the same process
  redis      two servers sharing the database and a private Redis (REDIS_URL): the change
             is posted to server A, the clients are connected to server B

At the largest client count, a few more changes are made while LIST_READERS clients read the
pending list (GET /inbox/list, signed in, as htmx asks for it) over HTTP from the same process
that is fanning the event out: every read must be answered 200, and its latency and rate are
reported next to the push latency measured under that load.

Goals (issue 12): push p99 < 250 ms at 1,000 clients, < 1 s at 5,000; list reads still served
during the fan-out. BENCH_PUSH_WORKER=gthread runs the old threaded worker instead (one thread
per websocket: clients + 50 threads), for comparison.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from pathlib import Path

from .common import (INBOUND_TOKEN, Gunicorn, Unavailable, app_env, browser_headers, copy_database, log_in,
                     percentile, save_chart)

AGENT = "ana@example.com"
LIST_PATH = "/inbox/list?tab=pending"
LIST_READERS = 4  # HTTP clients reading the list, each one request at a time, during the fan-out
LIST_CHANGES = 5  # changes made under that load
GOALS_MS = {1_000: 250, 5_000: 1_000}  # clients -> push p99 goal
WAVE = 100  # clients connecting at once


def raise_open_files(needed: int) -> None:
    """Each websocket is a file descriptor in the client and one in the server: raise the soft
    limit (inherited by the servers started after this) to what the run needs."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise Unavailable(f"push needs {needed} open files, the hard limit is {hard} (ulimit -Hn)")
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


class ThinClient:
    """A websocket speaking just enough Engine.IO 4 / Socket.IO 5 to be one connected browser to
    the server: the handshake, the namespace connect (the server checks the session cookie and
    joins the agent's rooms), answering pings, and each event's arrival time, stamped as its
    frame is read. python-socketio's AsyncClient does the same through several more layers and a
    task per event: with thousands in one process on the server's 2 cores, the load generator's
    own work would be most of the figure (BENCH_PUSH_CLIENT=socketio measures with it)."""

    def __init__(self, http, base: str, headers: dict, on_event) -> None:
        self.http, self.url, self.headers, self.on_event = http, base.replace("http", "ws", 1), headers, on_event
        self.ws, self.reader, self.connected = None, None, False

    async def connect(self) -> None:
        self.ws = await self.http.ws_connect(self.url + "/socket.io/?EIO=4&transport=websocket",
                                             headers=self.headers, autoping=True)
        opened = await self.ws.receive_str(timeout=60)
        if not opened.startswith("0"):
            raise RuntimeError(f"Engine.IO open expected, got {opened[:80]!r}")
        await self.ws.send_str("40")
        joined = await self.ws.receive_str(timeout=60)
        if not joined.startswith("40"):
            raise RuntimeError(f"Socket.IO connect refused: {joined[:120]!r}")
        self.connected = True
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        import aiohttp

        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                break
            if message.data == "2":  # Engine.IO ping
                await self.ws.send_str("3")
            elif message.data.startswith("42"):
                at = time.perf_counter()
                name, data = json.loads(message.data[2:])
                self.on_event(name, data, at)
        self.connected = False

    async def disconnect(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            await asyncio.gather(self.reader, return_exceptions=True)


async def _measure(client_base: str, change_base: str, headers: dict, clients: int, changes: int,
                   list_changes: int = 0) -> dict:
    import aiohttp
    import socketio

    arrivals: list[list[float]] = [[] for _ in range(changes + list_changes)]
    current = {"change": -1}
    sockets = []

    def updated(name, data, at):
        # The event that refreshes the pending list: a new contact also sends every agent one
        # naming "contacts" (another room), which must not count as this one arriving.
        if name == "data:updated" and current["change"] >= 0 and \
                any(k.startswith("convs:") for k in (data or {}).get("keys", [])):
            arrivals[current["change"]].append(at)

    def make():
        if os.environ.get("BENCH_PUSH_CLIENT") != "socketio":
            return ThinClient(ws_http, client_base, headers, updated)
        sio = socketio.AsyncClient(reconnection=False)

        @sio.on("data:updated")
        async def _updated(data):
            updated("data:updated", data, time.perf_counter())

        return sio

    async def connect(sio):
        if isinstance(sio, ThinClient):
            await sio.connect()
        else:
            await sio.connect(client_base, headers=headers, transports=["websocket"], wait_timeout=60)

    reads: list[tuple[float, float, int]] = []  # (sent, ms, status) of every list read under load
    windows: list[float] = []  # seconds each loaded fan-out lasted

    async def read_list(http, stop: asyncio.Event):
        while not stop.is_set():
            t0 = time.perf_counter()
            try:
                async with http.get(client_base + LIST_PATH, headers={**headers, "HX-Request": "true"}) as r:
                    await r.read()
                    status = r.status
            except (aiohttp.ClientError, asyncio.TimeoutError):
                status = 0
            reads.append((t0, 1000 * (time.perf_counter() - t0), status))

    ws_http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    try:
        started = time.perf_counter()
        for start in range(0, clients, WAVE):
            wave = [make() for _ in range(min(WAVE, clients - start))]
            sockets += wave
            await asyncio.gather(*(connect(s) for s in wave))
        connect_seconds = time.perf_counter() - started
        connected = sum(1 for s in sockets if s.connected)
        await asyncio.sleep(0.5)
        sent, posts = [], []
        timeout = aiohttp.ClientTimeout(total=30)
        # A new connection for each change: gunicorn closes one idle for its keepalive (2 s), and
        # a busy hub may do so just as a reused one is written to.
        async with aiohttp.ClientSession(timeout=timeout, connector=aiohttp.TCPConnector(force_close=True)) as post, \
                aiohttp.ClientSession(timeout=timeout) as http:
            async with http.get(client_base + LIST_PATH, headers={**headers, "HX-Request": "true"}) as r:
                if r.status != 200:  # warms the list's cache; a wrong cookie fails here, not later
                    raise RuntimeError(f"GET {LIST_PATH} answered {r.status}")
            for n in range(changes + list_changes):
                loaded = n >= changes
                stop = asyncio.Event()
                readers = [asyncio.create_task(read_list(http, stop)) for _ in range(LIST_READERS if loaded else 0)]
                try:
                    current["change"] = n
                    t0 = time.perf_counter()
                    async with post.post(change_base + "/api/inbound",
                                         json={"phone": f"+55119{uuid.uuid4().int % 10**8:08d}",
                                               "body": f"bench push {n}"},
                                         headers={"Authorization": f"Bearer {INBOUND_TOKEN}"}) as response:
                        if response.status not in (200, 201):
                            raise RuntimeError(f"inbound answered {response.status}: {await response.text()}")
                    posts.append(time.perf_counter() - t0)
                    sent.append(t0)
                    deadline = time.perf_counter() + 15
                    while len(arrivals[n]) < clients and time.perf_counter() < deadline:
                        await asyncio.sleep(0.005)
                    if loaded:
                        windows.append(time.perf_counter() - t0)
                finally:
                    stop.set()
                    await asyncio.gather(*readers, return_exceptions=True)
                await asyncio.sleep(0.05)
    finally:
        await asyncio.gather(*(s.disconnect() for s in sockets), return_exceptions=True)
        await ws_http.close()

    def latencies(changes_range):
        return [1000 * (a - sent[n]) for n in changes_range for a in arrivals[n]]

    plain = latencies(range(changes))
    out = {"clients": clients, "connected": connected, "connect_s": round(connect_seconds, 1),
           "changes": changes, "delivered": sum(min(len(arrivals[n]), clients) for n in range(changes)),
           "expected": clients * changes,
           "p50_ms": _r(percentile(plain, 50)), "p99_ms": _r(percentile(plain, 99)),
           "max_ms": _r(max(plain) if plain else None),
           "post_p50_ms": _r(1000 * percentile(posts[:changes], 50))}
    if list_changes:
        loaded = latencies(range(changes, changes + list_changes))
        ms = [m for _, m, _ in reads]
        out["during_fanout"] = {
            "changes": list_changes, "list_readers": LIST_READERS,
            "delivered": sum(min(len(arrivals[n]), clients) for n in range(changes, changes + list_changes)),
            "expected": clients * list_changes,
            "push_p50_ms": _r(percentile(loaded, 50)), "push_p99_ms": _r(percentile(loaded, 99)),
            "list_requests": len(reads), "list_ok": sum(1 for _, _, s in reads if s == 200),
            "list_p50_ms": _r(percentile(ms, 50)), "list_p99_ms": _r(percentile(ms, 99)),
            "list_max_ms": _r(max(ms) if ms else None),
            "list_rps": _r(len(reads) / sum(windows)) if windows else None,
        }
    return out


def _r(x):
    return round(x, 2) if x is not None else None


def run(ctx) -> dict:
    sizes = ctx.sizes
    gthread = os.environ.get("BENCH_PUSH_WORKER") == "gthread"
    largest = max(sizes.push_clients)
    raise_open_files(2 * largest + 2_000)  # the clients' sockets, the server's, and some to spare
    client = "python-socketio AsyncClient" if os.environ.get("BENCH_PUSH_CLIENT") == "socketio" else \
        "thin Engine.IO/Socket.IO websocket clients (aiohttp)"
    results = {"settings": {"transport": "websocket", "client": f"{client}, one process",
                            "change": "POST /api/inbound (commit), timed from the request",
                            "server": "gunicorn gthread, clients + 50 threads" if gthread
                            else "gunicorn gevent (gunicorn.conf.py), 1 worker",
                            "list_load": f"{LIST_READERS} HTTP readers of {LIST_PATH} during {LIST_CHANGES} "
                                         f"more changes at {largest:,} clients",
                            "agent": AGENT}, "embedded": {}, "redis": {}}
    database = copy_database(ctx.database, ctx.workdir / "push.db")
    for clients in sizes.push_clients:
        threads = clients + 50 if gthread else None
        list_changes = LIST_CHANGES if clients == largest else 0
        with ctx.stack_scope() as stack:
            server = Gunicorn(ctx.workdir, app_env(database), threads=threads, name=f"push-embedded-{clients}")
            stack.callback(server.stop)
            headers = browser_headers(log_in(server.base, AGENT))  # its cookie and sign-in User-Agent
            results["embedded"][str(clients)] = asyncio.run(
                _measure(server.base, server.base, headers, clients, sizes.push_changes, list_changes))
            print(f"  embedded, {clients:,} clients: {results['embedded'][str(clients)]}", flush=True)
        with ctx.stack_scope() as stack:
            prefix = f"bench-p-{uuid.uuid4().hex[:6]}:"
            env = app_env(database, ctx.redis_url, prefix)
            a = Gunicorn(ctx.workdir, env, threads=100 if gthread else None, name=f"push-redis-a-{clients}")
            stack.callback(a.stop)
            b = Gunicorn(ctx.workdir, env, threads=threads, name=f"push-redis-b-{clients}")
            stack.callback(b.stop)
            headers = browser_headers(log_in(b.base, AGENT))
            results["redis"][str(clients)] = asyncio.run(
                _measure(b.base, a.base, headers, clients, sizes.push_changes, list_changes))
            print(f"  redis, {clients:,} clients: {results['redis'][str(clients)]}", flush=True)
    for mode in ("embedded", "redis"):
        for clients, r in results[mode].items():
            if r["delivered"] < r["expected"]:
                raise RuntimeError(f"push {mode}/{clients}: {r['delivered']} of {r['expected']} events arrived")
            loaded = r.get("during_fanout")
            if loaded and (loaded["delivered"] < loaded["expected"] or loaded["list_ok"] < loaded["list_requests"]
                           or not loaded["list_requests"]):
                raise RuntimeError(f"push {mode}/{clients} under list load: {loaded}")
    return results


def chart(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for mode, marker in (("embedded", "o"), ("redis", "s")):
        ns = [int(n) for n in results[mode]]
        ax.plot(ns, [results[mode][str(n)]["p50_ms"] for n in ns], marker + "-", label=f"{mode} p50")
        ax.plot(ns, [results[mode][str(n)]["p99_ms"] for n in ns], marker + "--", label=f"{mode} p99")
    ax.axhline(50, color="#dc2626", linestyle=":", label="promise: 50 ms")
    for clients, goal in GOALS_MS.items():
        ax.plot([clients], [goal], "x", color="#dc2626", markersize=9)
    ax.plot([], [], "x", color="#dc2626", label="goal: p99 (issue 12)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("connected Socket.IO clients (one process)")
    ax.set_ylabel("change request sent -> data:updated (ms, log)")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    save_chart(fig, f"5. Push latency ({results['settings']['server']})", path)


def summary(results: dict) -> list[tuple[str, str, str]]:
    out = []
    for mode in ("embedded", "redis"):
        for clients, r in results[mode].items():
            out.append(("push", f"{mode}, {int(clients):,} clients",
                        f"p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms ({r['delivered']}/{r['expected']} delivered)"))
    for clients, goal in GOALS_MS.items():
        measured = [(mode, results[mode][str(clients)]["p99_ms"]) for mode in ("embedded", "redis")
                    if str(clients) in results[mode]]
        if measured:
            met = all(p99 is not None and p99 < goal for _, p99 in measured)
            out.append(("push", f"goal: p99 < {goal:,} ms at {clients:,} clients",
                        ("met" if met else "NOT met") + ": " + ", ".join(f"{m} {p} ms" for m, p in measured)))
    for mode in ("embedded", "redis"):
        for clients, r in results[mode].items():
            if loaded := r.get("during_fanout"):
                out.append(("push", f"goal: list reads served during the {int(clients):,}-client fan-out ({mode})",
                            f"{loaded['list_ok']}/{loaded['list_requests']} answered 200, {loaded['list_rps']} req/s, "
                            f"p50 {loaded['list_p50_ms']} ms, p99 {loaded['list_p99_ms']} ms; push meanwhile "
                            f"p99 {loaded['push_p99_ms']} ms ({loaded['delivered']}/{loaded['expected']} delivered)"))
    return out
