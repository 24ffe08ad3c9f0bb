"""Thousands of sockets per process (issue 12, item 3): one gunicorn process started from
gunicorn.conf.py, as `make run` starts it, holds 2,000 signed-in websocket clients without a
thread each; one change through the inbound webhook reaches every one of them, and HTTP reads
of the list are answered while the event fans out. Once on the embedded default, once with
Redis as cache and Socket.IO message queue (the event then goes out through Redis)."""
from __future__ import annotations

import asyncio
import time
from pathlib import Path

from bench.common import Unavailable, cookie_header, log_in
from bench.push import raise_open_files
from tests.conftest import unavailable
from tests.live import INBOUND_TOKEN, embedded_and_redis

CLIENTS = 2_000
WAVE = 200  # clients connecting at once
LIST = "/inbox/list?tab=pending"

server = embedded_and_redis("many-sockets", seed=("--agents", "3", "--conversations", "10", "--messages", "20"))


def setup_module() -> None:
    # Every websocket is a file descriptor here and one in the server, which inherits this limit.
    try:
        raise_open_files(2 * CLIENTS + 1_000)
    except Unavailable as exc:
        unavailable(str(exc))


def workers(master_pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()]


def os_threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("Threads:")))


async def fan_out(base: str, cookie: str, worker: int) -> dict:
    """Connect CLIENTS sockets, post one inbound message, and read the list until every socket
    has heard of the new conversation."""
    import aiohttp
    import socketio

    heard: dict[int, list[tuple[float, dict]]] = {}
    clients = []
    for n in range(CLIENTS):
        client = socketio.AsyncClient(reconnection=False)
        client.on("data:updated", lambda data, n=n: heard.setdefault(n, []).append((time.monotonic(), data)))
        clients.append(client)
    reads: list[tuple[float, int]] = []  # (answered at, status)
    try:
        for start in range(0, CLIENTS, WAVE):
            await asyncio.gather(*(c.connect(base, headers={"Cookie": cookie}, transports=["websocket"],
                                             wait_timeout=60) for c in clients[start:start + WAVE]))
        connected = sum(1 for c in clients if c.connected and c.transport() == "websocket")
        threads = os_threads(worker)  # of the server, while they are all connected
        await asyncio.sleep(0.5)
        heard.clear()  # only what the change below causes
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
            headers = {"Cookie": cookie, "HX-Request": "true"}
            done = asyncio.Event()

            async def read_list():
                while not done.is_set():
                    async with http.get(base + LIST, headers=headers) as response:
                        await response.read()
                        reads.append((time.monotonic(), response.status))

            readers = [asyncio.create_task(read_list()) for _ in range(2)]  # reading all along
            await asyncio.sleep(0.1)
            sent = time.monotonic()
            async with http.post(base + "/api/inbound", json={"phone": "+5511955550000", "body": "to everyone"},
                                 headers={"Authorization": f"Bearer {INBOUND_TOKEN}"}) as response:
                assert response.status in (200, 201), await response.text()
                key = f"conversation:{(await response.json())['data']['conversation_id']}"

            def reached() -> int:
                return sum(1 for events in heard.values() if any(key in data["keys"] for _, data in events))

            deadline = time.monotonic() + 30
            while reached() < CLIENTS and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            done.set()
            await asyncio.gather(*readers)
        last = max((t for events in heard.values() for t, data in events if key in data["keys"]), default=None)
        return {"connected": connected, "threads": threads, "reached": reached(), "reads": reads,
                "sent": sent, "last_event": last}
    finally:
        await asyncio.gather(*(c.disconnect() for c in clients), return_exceptions=True)


def run_in_own_loop(coroutine):
    """asyncio.run in a thread of its own: Playwright's sync API (the browser tests of this
    session) keeps an event loop running in the main thread, where asyncio.run refuses to start."""
    import threading

    outcome = {}

    def run():
        try:
            outcome["result"] = asyncio.run(coroutine)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            outcome["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def test_one_process_holds_thousands_of_sockets_and_reaches_them_all(server):
    (worker,) = workers(server.process.pid)  # one gunicorn worker process, as shipped
    cookie = cookie_header(log_in(server.base, "ana@example.com"))
    threads_before = os_threads(worker)

    result = run_in_own_loop(fan_out(server.base, cookie, worker))

    assert result["connected"] == CLIENTS
    assert result["reached"] == CLIENTS  # one change, every socket told
    statuses = [status for _, status in result["reads"]]
    assert statuses and set(statuses) == {200}, statuses
    # List reads were answered while the change was on its way to the sockets.
    assert any(result["sent"] <= answered <= result["last_event"] for answered, _ in result["reads"])
    # Sockets are greenlets, not threads: the worker had about as many threads with them as without.
    assert result["threads"] <= threads_before + 10, (threads_before, result["threads"])
    assert server.process.poll() is None
