"""Two gunicorn processes over one database, sharing Redis: once a plain Redis (a key prefix of
their own on the machine's server) and once the private 3-master Redis Cluster (REDIS_URL=
redis+cluster://..., tests/redis_cluster.py). The same promises hold on both:

  no stale read across processes .................. test_no_stale_read_across_processes
  an event raised in one process reaches another .. test_event_raised_in_one_process_reaches_a_client_of_another
  sign-out in one process ends sockets on another . test_sign_out_through_one_process_disconnects_the_socket_on_another

Through nginx with three processes: tests/test_cluster.py.
"""
from __future__ import annotations

import threading
import uuid

import pytest

from tests.conftest import REDIS_URL, redis_client
from tests.live import http, running_pair, sign_in, socket_client, wait_for


@pytest.fixture(scope="module", params=["redis", "cluster"])
def two_processes(request, tmp_path_factory):
    """gunicorn A and B; Redis is their cache, sign-in limits, sockets registry and Socket.IO
    queue. a.admin: an admin's API token (made by `flask agent token`, through Redis too)."""
    if request.param == "redis":
        redis_client()  # fails under CI=true, skips elsewhere, when Redis is missing
        url = REDIS_URL
    else:
        url = request.getfixturevalue("redis_cluster").url
    with running_pair(tmp_path_factory.mktemp(f"two-{request.param}"), redis_url=url,
                      seed=("--agents", "3", "--conversations", "10", "--messages", "20")) as (a, b):
        a.admin = {"Authorization": f"Bearer {a.flask('agent', 'token', 'admin@example.com').split()[-1]}"}
        yield a, b


def test_no_stale_read_across_processes(two_processes):
    """Write through A; each read through B that starts after the write returned sees it, while
    another reader keeps B's cache warm and racing."""
    a, b = two_processes
    phone = f"+55119{uuid.uuid4().int % 10**8:08d}"
    first = a.inbound_data(phone=phone, name="Cross Hammer", body="message 0", external_id=f"hammer-{uuid.uuid4().hex}")
    cid = first["conversation_id"]
    lists, messages = f"{b.base}/api/conversations?status=all", f"{b.base}/api/conversations/{cid}/messages"
    stop = threading.Event()

    def keep_reading():
        session = http()
        while not stop.is_set():
            session.get(messages, headers=a.admin, timeout=5)
            session.get(lists, headers=a.admin, timeout=5)

    background = threading.Thread(target=keep_reading, daemon=True)
    background.start()
    reader, stale, reads = http(), [], 0
    try:
        for i in range(1, 31):
            written = a.inbound_data(phone=phone, body=f"message {i}", external_id=f"hammer-{uuid.uuid4().hex}")
            page = reader.get(messages, headers=a.admin, timeout=5)
            listed = next(c for c in reader.get(lists, headers=a.admin, timeout=5).json()["data"] if c["id"] == cid)
            reads += 2
            if page.json()["data"][-1]["id"] != written["message_id"]:
                stale.append(("messages", i, page.json()["data"][-1]["body"]))
            if f"message {i}" not in str(listed["last_message"]):
                stale.append(("list", i, listed["last_message"]))
    finally:
        stop.set()
        background.join(timeout=10)
    assert reads == 60 and stale == []


def test_event_raised_in_one_process_reaches_a_client_of_another(two_processes):
    """Process A takes the webhook; the browser's socket is on process B; Redis carries it."""
    a, b = two_processes
    received = []
    client = socket_client(b, sign_in(b)[1], received)
    try:
        sent = a.inbound_data(phone=f"+55118{uuid.uuid4().int % 10**8:08d}", body="via A",
                       external_id=f"push-{uuid.uuid4().hex}")
        assert wait_for(lambda: any(name == "data:updated" and f"conversation:{sent['conversation_id']}" in args[0]["keys"]
                                    for _, name, args in received)), received
    finally:
        if client.connected:
            client.disconnect()


def test_sign_out_through_one_process_disconnects_the_socket_on_another(two_processes):
    """The sockets registry (a set per agent) lives in Redis: A finds B's socket there, and only
    that agent's."""
    a, b = two_processes
    received, others = [], []
    client = socket_client(b, sign_in(b)[1], received)
    bruno = socket_client(b, sign_in(b, "bruno@example.com")[1], others)
    try:
        session, _ = sign_in(a)  # the same agent, signed in through process A
        assert session.post(f"{a.base}/logout", headers={"X-CSRFToken": session.csrf},
                            allow_redirects=False).status_code == 302
        assert wait_for(lambda: not client.connected), received
        assert [name for _, name, _ in received][-2:] == ["session:ended", "disconnect"]
        assert bruno.connected and not any(name == "session:ended" for _, name, _ in others)
    finally:
        for c in (client, bruno):
            if c.connected:
                c.disconnect()
