"""The scaled deployment as it runs: nginx with sticky sessions in front of 3 gunicorns
(deploy/cluster.py, what `make cluster` starts) over a throwaway PostgreSQL database and Redis
under a key prefix of its own. Live updates between processes, no stale read across processes,
a crashed process's browsers moving on without missing anything, a process added while running,
and /metrics summing them all."""
from __future__ import annotations

import os
import re
import subprocess
import threading
import time
import uuid

import pytest

from deploy.cluster import STICKY_COOKIE, Cluster, flask, nginx_binary
from tests.conftest import REDIS_URL, redis_client, throwaway_postgres, unavailable
from tests.live import INBOUND_TOKEN, engineio_websocket, http, log_in, new_page, row

SOCKET_IO = "/socket.io/"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    if nginx_binary() is None:
        unavailable("nginx not found; `make nginx` installs Debian's")
    client = redis_client()
    prefix = f"chat-test-{uuid.uuid4().hex[:10]}:"
    with throwaway_postgres("chat_cluster") as database_url:
        env = {**os.environ, "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL,
               "CACHE_KEY_PREFIX": prefix, "SOCKETIO_CHANNEL": prefix + "socketio",
               "SECRET_KEY": "cluster-test-secret", "INBOUND_TOKEN": INBOUND_TOKEN}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        flask(env, "db", "upgrade")
        flask(env, "seed", "--agents", "3", "--conversations", "10", "--messages", "30")
        admin_token = flask(env, "agent", "token", "admin@example.com").split()[-1]
        cluster = Cluster(tmp_path_factory.mktemp("cluster"), env)
        try:
            cluster.start(3)
            cluster.first = sorted(cluster.processes)  # the 3 ports, before any test adds one
            cluster.admin = {"Authorization": f"Bearer {admin_token}"}
            yield cluster
        finally:
            cluster.stop()
            for key in client.scan_iter(match=prefix + "*", count=1000):  # only this test's keys
                client.delete(key)


def served_by(response) -> int:
    """The port of the process that answered (the last one nginx tried)."""
    return int(response.headers["X-Served-By"].split(",")[-1].rsplit(":", 1)[1])


def cookie_for(cluster: Cluster, port: int, seconds: float = 10) -> str:
    """A sticky cookie that nginx hashes to the process on `port`."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = uuid.uuid4().hex
        response = http().get(f"{cluster.url}/login", cookies={STICKY_COOKIE: value}, timeout=5)
        if served_by(response) == port:
            return value
    pytest.fail(f"no sticky cookie reached port {port} within {seconds} s")


def session_on(cluster: Cluster, port: int):
    """A requests session whose requests nginx sends to the process on `port`."""
    session = http()
    session.cookies.set(STICKY_COOKIE, cookie_for(cluster, port), domain="127.0.0.1", path="/")
    return session


def inbound(session, cluster: Cluster, **message) -> dict:
    response = session.post(f"{cluster.url}/api/inbound", json=message, timeout=5,
                            headers={"Authorization": f"Bearer {INBOUND_TOKEN}"})
    assert response.status_code in (200, 201), response.text
    return {"served_by": served_by(response), **response.json()["data"]}


def socket_requests(cluster: Cluster, cookie: str) -> list[tuple[str, str]]:
    """(process that served it: the last upstream nginx tried, request line) of every Socket.IO
    request of this browser, as nginx logged them (a websocket when it closed)."""
    return [(upstream.split(",")[-1].strip(), request) for value, upstream, _, request in cluster.access_log()
            if value == cookie and SOCKET_IO in request]


def socket_upstreams(cluster: Cluster, cookie: str) -> list[str]:
    return [upstream for upstream, _ in socket_requests(cluster, cookie)]


@pytest.fixture
def open_page(browser, cluster):
    """open_page(port) -> a page whose requests nginx sends to that process."""
    pages, errors = [], []

    def _open(port: int):
        page = new_page(browser, cluster.url, errors)
        page.sticky = cookie_for(cluster, port)
        page.context.add_cookies([{"name": STICKY_COOKIE, "value": page.sticky, "url": cluster.url}])
        pages.append(page)
        return page

    yield _open
    for page in pages:
        page.context.close()
    unexpected = [e for e in errors if "WebSocket" not in e]  # a killed process drops its sockets
    assert not unexpected, "the browser reported errors:\n" + "\n".join(unexpected)


def connected(page, state: bool = True) -> None:
    page.wait_for_function(f"() => window.__inboxSocketConnected === {str(state).lower()}", timeout=10_000)


def test_live_updates_between_agents_on_different_processes(cluster, open_page):
    """Ana's socket is on process 1, Bruno's on process 2, the webhook lands on process 3:
    Redis carries the push between them."""
    from playwright.sync_api import expect

    p_ana, p_bruno, p_hook = cluster.first
    ana, bruno = open_page(p_ana), open_page(p_bruno)
    for page, email in ((ana, "ana@example.com"), (bruno, "bruno@example.com")):
        log_in(page, email)
        connected(page)

    sent = inbound(session_on(cluster, p_hook), cluster, phone="+5511966600001", name="Cross Process",
                   body="Who gets this?", external_id=f"cluster-{uuid.uuid4().hex}")
    assert sent["served_by"] == p_hook
    expect(row(ana, "Cross Process")).to_have_count(1)
    expect(row(bruno, "Cross Process")).to_have_count(1)

    row(ana, "Cross Process").get_by_role("link").click()
    ana.locator("#conversation-pane").get_by_role("button", name="Accept").click()
    expect(ana.locator("#conversation-pane .status")).to_have_text("active")
    expect(row(bruno, "Cross Process")).to_have_count(0)  # accepted on process 1, seen on 2

    # Each socket really lived on its own process: nginx logged every Socket.IO request.
    assert set(socket_upstreams(cluster, ana.sticky)) == {f"127.0.0.1:{p_ana}"}
    assert set(socket_upstreams(cluster, bruno.sticky)) == {f"127.0.0.1:{p_bruno}"}


def test_no_stale_read_across_processes(cluster):
    """Write through process 1; each read that starts after the write returned, through
    processes 2 and 3, sees it, while other readers keep those caches warm and racing."""
    writer_port, *reader_ports = cluster.first
    writer = session_on(cluster, writer_port)
    readers = [session_on(cluster, port) for port in reader_ports]
    first = inbound(writer, cluster, phone="+5511966600002", name="Hammer Time", body="message 0",
                    external_id=f"hammer-{uuid.uuid4().hex}")
    cid = first["conversation_id"]
    lists, messages = (f"{cluster.url}/api/conversations?status=all",
                       f"{cluster.url}/api/conversations/{cid}/messages")
    stop = threading.Event()

    def keep_reading(session):
        while not stop.is_set():
            session.get(messages, headers=cluster.admin, timeout=5)
            session.get(lists, headers=cluster.admin, timeout=5)

    background = [threading.Thread(target=keep_reading, args=(session_on(cluster, port),), daemon=True)
                  for port in reader_ports]
    for thread in background:
        thread.start()
    stale, reads = [], 0
    try:
        for i in range(1, 41):
            written = inbound(writer, cluster, phone="+5511966600002", body=f"message {i}",
                              external_id=f"hammer-{uuid.uuid4().hex}")
            for reader in readers:
                page = reader.get(messages, headers=cluster.admin, timeout=5)
                newest = page.json()["data"][-1]
                conversations = reader.get(lists, headers=cluster.admin, timeout=5).json()["data"]
                listed = next(c for c in conversations if c["id"] == cid)
                reads += 2
                if newest["id"] != written["message_id"]:
                    stale.append((served_by(page), i, newest["body"]))
                if f"message {i}" not in str(listed["last_message"]):
                    stale.append(("list", i, listed["last_message"]))
    finally:
        stop.set()
        for thread in background:
            thread.join(timeout=10)
    assert reads == 160
    assert stale == []


def test_metrics_sum_every_process(cluster):
    """/metrics through nginx is the sum of the three processes' own counts, and the cache
    panel says it sums three processes."""
    from prometheus_client.multiprocess import MultiProcessCollector

    own = {}
    for port in cluster.first:
        pid = cluster.worker_pid(port)
        files = [str(cluster.metrics_dir / f"counter_{pid}.db")]
        own[port] = sum(s.value for m in MultiProcessCollector.merge(files) for s in m.samples
                        if s.name == "chat_sql_queries_total")
    assert all(own.values()), own  # each process has served queries of its own
    text = http().get(f"{cluster.url}/metrics", timeout=5).text
    total = sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                if line.startswith("chat_sql_queries_total "))
    assert total >= sum(own.values())

    admin = session_on(cluster, cluster.first[0])
    page = admin.get(f"{cluster.url}/login", timeout=5).text
    token = re.search(r'name="csrf-token" content="([^"]+)"', page).group(1)
    admin.post(f"{cluster.url}/login", data={"email": "admin@example.com", "password": "demo-pass",
                                             "csrf_token": token}, timeout=5)
    panel = admin.get(f"{cluster.url}/admin/cache/panel", headers={"HX-Request": "true"}, timeout=5).text
    assert "Whole deployment: summing 3 processes" in panel


def test_killed_process_browsers_reconnect_elsewhere_and_miss_nothing(cluster, open_page):
    """Process 2 crashes under Bruno's browser; a message arrives while the browser is
    reconnecting (its push is lost); through nginx it reaches another process and revalidates."""
    from playwright.sync_api import expect

    victim, hook = cluster.first[1], cluster.first[0]
    bruno = open_page(victim)
    log_in(bruno, "bruno@example.com")
    connected(bruno)
    held, released = [], []  # the reconnect's requests wait until the message has been committed

    def hold(route):
        route.continue_() if released else held.append(route)

    bruno.route(re.compile(r"/socket\.io/"), hold)
    served_before = len(socket_upstreams(cluster, bruno.sticky))

    cluster.kill_process(victim)
    connected(bruno, False)
    bruno.wait_for_timeout(100)
    deadline = time.monotonic() + 10
    while not held and time.monotonic() < deadline:
        bruno.wait_for_timeout(50)  # lets Playwright run the route handler
    assert held, "the browser did not try to reconnect"
    inbound(session_on(cluster, hook), cluster, phone="+5511966600003", name="While Away",
            body="sent during the reconnect", external_id=f"away-{uuid.uuid4().hex}")
    released.append(True)
    for route in held:
        route.continue_()

    connected(bruno)
    expect(row(bruno, "While Away")).to_have_count(1)
    # From the new Socket.IO session's handshake on, nginx sent the browser to a live process.
    after = socket_requests(cluster, bruno.sticky)[served_before:]
    handshake = next(i for i, (_, request) in enumerate(after) if "transport=polling" in request
                     and "sid=" not in request)
    assert {upstream for upstream, _ in after[handshake:]} <= {f"127.0.0.1:{p}" for p in cluster.first
                                                              if p != victim}


def test_process_added_while_running_serves_requests(cluster):
    """A fourth gunicorn joins the upstream with an nginx reload and serves signed-in pages
    and Socket.IO; the panel then sums four processes, three of them running."""
    new_port = cluster.add_process()
    session = session_on(cluster, new_port)  # waits for the reload to take effect
    page = session.get(f"{cluster.url}/login", timeout=5)
    token = re.search(r'name="csrf-token" content="([^"]+)"', page.text).group(1)
    response = session.post(f"{cluster.url}/login", data={"email": "admin@example.com", "password": "demo-pass",
                                                          "csrf_token": token}, timeout=5)
    assert response.status_code == 200 and served_by(response) == new_port
    inbox = session.get(f"{cluster.url}/inbox", timeout=5)
    assert inbox.status_code == 200 and served_by(inbox) == new_port and 'id="conversation-list"' in inbox.text

    # A websocket is one request, so the sticky cookie takes it to the new process.
    cookie = "; ".join(f"{c.name}={c.value}" for c in session.cookies)
    with engineio_websocket(cluster.url, cookie) as ws:
        assert ws.recv(timeout=15).startswith("0")  # Engine.IO open (a fresh process may be slow)
        ws.send("40")
        assert ws.recv(timeout=15).startswith("40")  # Socket.IO connected: signed in
        sent = inbound(session_on(cluster, cluster.first[0]), cluster, phone="+5511966600004",
                       body="to the newcomer", external_id=f"new-{uuid.uuid4().hex}")
        wanted, deadline = f"conversation:{sent['conversation_id']}", time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                packet = ws.recv(timeout=1)
            except TimeoutError:
                continue
            if packet == "2":
                ws.send("3")  # Engine.IO ping, pong
            elif packet.startswith("42") and "data:updated" in packet and wanted in packet:
                break
        else:
            pytest.fail(f"no data:updated for {wanted} reached the socket on the new process")
    deadline = time.monotonic() + 5  # nginx logs a websocket once it has closed
    while not socket_upstreams(cluster, session.cookies[STICKY_COOKIE]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert set(socket_upstreams(cluster, session.cookies[STICKY_COOKIE])) == {f"127.0.0.1:{new_port}"}

    panel = session.get(f"{cluster.url}/admin/cache/panel", headers={"HX-Request": "true"}, timeout=5).text
    assert "summing 4 processes (3 running)" in panel


def test_nginx_config_never_touches_system_paths(cluster):
    config = (cluster.dir / "nginx.conf").read_text()
    assert "/etc/nginx" not in config and "/var/log" not in config and "listen 80;" not in config
    assert subprocess.run([nginx_binary(), "-t", "-q", "-p", str(cluster.dir), "-e", str(cluster.dir / "t.log"),
                           "-c", str(cluster.dir / "nginx.conf")], capture_output=True).returncode == 0
