"""Delivery workers as the scaled deployment runs them: real `flask --app app worker` processes
on a throwaway PostgreSQL database (migrated with `flask db upgrade`), sending to the fake
provider (tests/provider.py, a real HTTP server on a loopback port).

- Never stuck: a worker killed (SIGKILL) while it holds a delivery loses it to another when its
  lease expires; the provider gets the reply again under the same Idempotency-Key, and takes
  it once.
- Nothing lost, nothing twice, in order: with the provider down for a while, workers back off
  and retry; once it is back every reply arrives once, each conversation's in reply order.
- Never twice, at scale: 2 and 4 workers drain 1,000 replies over 100 conversations; the
  provider sees each id in exactly one request, and the drain rate is printed.
- `make cluster`'s workers (deploy/cluster.py) deliver, and stop with the rest.

This process's own app only makes the world and the replies (through the domain, or in bulk
the way chat.delivery.enqueue does) and reads their states; it never delivers.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import defaultdict
from contextlib import suppress
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from chat import catalog, create_app, delivery, domain
from chat.extensions import db
from chat.models import ACTIVE, SENDING, SENT, Conversation, Delivery, Message, User, utcnow
from tests.conftest import make_config, make_conversation, make_user, throwaway_postgres
from tests.provider import FakeProvider

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv running pytest; deliberately not resolved
SECRET = "workers-signing-secret"
READY = "Delivery worker:"  # `flask worker` prints it once its loops are about to start
STOPPED = "Delivery worker stopped."
# Settings from the environment that must not leak from the shell running the tests into the
# workers: every worker here gets exactly the ones its test gives it.
FOREIGN = ("DELIVERY_", "CHANNEL_", "WHATSAPP_", "REDIS_URL", "CACHE_KEY_PREFIX", "SOCKETIO_CHANNEL",
           "PROMETHEUS_MULTIPROC_DIR", "DATABASE_URL")


class WorkerProcess:
    """One `flask --app app worker` process in a process group of its own, its output in a log."""

    def __init__(self, env: dict[str, str], log_path: Path, concurrency: int):
        self.log_path = log_path
        with log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(BIN / "flask"), "--app", "app", "worker", "--concurrency", str(concurrency)],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_ready(self, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while READY not in self.log():
            if self.process.poll() is not None:
                pytest.fail(f"worker {self.pid} exited with {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                pytest.fail(f"worker {self.pid} did not start within {seconds:.0f} s:\n{self.log()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL, like a crash or the OOM killer: no chance to record or release anything."""
        with suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        self.process.wait(timeout=5)

    def stop(self, seconds: float = 15) -> int:
        """SIGTERM, as systemd or a deploy stops it; SIGKILL if it is not gone in `seconds`."""
        if self.process.poll() is None:
            with suppress(ProcessLookupError):
                self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=seconds)
            except subprocess.TimeoutExpired:
                with suppress(ProcessLookupError):
                    os.killpg(self.pid, signal.SIGKILL)
                self.process.wait(timeout=5)
        return self.process.returncode


class Deployment:
    """The module's database, emptied, with the webhook channel pointing at `provider`, one
    agent, and the worker processes a test starts (all stopped by the fixture)."""

    def __init__(self, database_url: str, provider: FakeProvider, tmp: Path):
        self.tmp, self.provider = tmp, provider
        self.env = {**worker_environment(database_url), "CHANNEL_WEBHOOK_URL": provider.webhook_url,
                    "CHANNEL_WEBHOOK_SECRET": SECRET}
        self.workers: list[WorkerProcess] = []
        self.app = create_app(make_config(database_url, REDIS_URL=None, CHANNEL_WEBHOOK_URL=provider.webhook_url,
                                          CHANNEL_WEBHOOK_SECRET=SECRET))
        with self.app.app_context():
            tables = ", ".join(f'"{t.name}"' for t in db.metadata.sorted_tables)
            db.session.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))  # the last test's rows
            db.session.commit()
            catalog.channels_from_environment(self.app.config)  # what each worker also does at start
            agent = make_user("ana@example.com", "Ana Costa")
            db.session.commit()
            self.agent_id = agent.id

    # -- the world ---------------------------------------------------------------------------
    def conversations(self, count: int) -> list[int]:
        """`count` active conversations assigned to the agent."""
        with self.app.app_context():
            agent = db.session.get(User, self.agent_id)
            made = [make_conversation(f"+55119{n:08d}", f"Contact {n}", ACTIVE, user=agent) for n in range(count)]
            db.session.commit()
            return [c.id for c in made]

    def reply(self, conversation_id: int, body: str) -> int:
        """A reply as an agent sends it (domain.send_reply: the reply and its delivery row commit
        together); its message id."""
        with self.app.app_context():
            message, created = domain.send_reply(conversation_id, db.session.get(User, self.agent_id), body)
            assert created
            return message.id

    def queue_many(self, conversation_ids: list[int], per_conversation: int) -> dict[int, list[int]]:
        """per_conversation replies in each conversation, interleaved, committed at once with their
        delivery rows by chat.delivery.enqueue (as send_reply does, in one transaction instead of
        one each): conversation id -> its message ids in reply order."""
        with self.app.app_context(), db.session.no_autoflush:
            conversations = db.session.scalars(select(Conversation).where(Conversation.id.in_(conversation_ids))).all()
            now, rows = utcnow(), []
            for n in range(per_conversation):
                for conversation in conversations:
                    rows.append((Message(conversation_id=conversation.id, body=f"reply {n + 1} in {conversation.id}",
                                         from_me=True, user_id=self.agent_id, created_at=now), conversation))
            db.session.add_all(message for message, _ in rows)
            db.session.flush()
            replies = defaultdict(list)
            for message, conversation in rows:
                delivery.enqueue(message, conversation)
                replies[conversation.id].append(message.id)
                conversation.last_message_at, conversation.last_message_body = now, message.body
                conversation.last_message_id, conversation.last_message_state = message.id, message.delivery_state
            db.session.commit()
            return dict(replies)

    # -- what happened -----------------------------------------------------------------------
    def messages(self, ids) -> dict[int, Message]:
        with self.app.app_context():
            found = db.session.scalars(select(Message).where(Message.id.in_(list(ids)))).all()
            db.session.expunge_all()
            return {m.id: m for m in found}

    def delivery_of(self, message_id: int) -> Delivery:
        with self.app.app_context():
            row = db.session.scalar(select(Delivery).where(Delivery.message_id == message_id))
            db.session.expunge_all()
            return row

    def count_sent(self) -> int:
        with self.app.app_context():
            return db.session.scalar(select(func.count()).select_from(Message).where(Message.delivery_state == SENT))

    def open_transactions(self) -> list[tuple]:
        """Sessions of the database's other clients left inside a transaction (holding locks)."""
        with self.app.app_context():
            return db.session.execute(text(
                "SELECT pid, state, query FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'")).all()

    def wait_until(self, condition, what: str, seconds: float = 20, every: float = 0.05):
        deadline = time.monotonic() + seconds
        while True:
            found = condition()
            if found:
                return found
            if time.monotonic() > deadline:
                pytest.fail(f"{what}: not within {seconds:.0f} s. Provider got {len(self.provider.requests)} "
                            f"requests.\n{self.logs()}")
            time.sleep(every)

    def logs(self) -> str:
        return "\n".join(f"--- worker {w.pid} (exit {w.process.poll()}):\n{w.log()[-4000:]}" for w in self.workers)

    # -- workers -----------------------------------------------------------------------------
    def start_workers(self, count: int, concurrency: int, **settings) -> list[WorkerProcess]:
        """`count` worker processes with these DELIVERY_* settings (lower-case names without the
        prefix: lease_seconds=2), started at once, each answering before this returns."""
        env = {**self.env, **{f"DELIVERY_{k.upper()}": str(v) for k, v in settings.items()}}
        started = [WorkerProcess(env, self.tmp / f"worker-{len(self.workers) + n}.log", concurrency)
                   for n in range(count)]
        self.workers.extend(started)
        for worker in started:
            worker.wait_ready()
        return started

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        with self.app.app_context():
            db.session.remove()
            db.engine.dispose()


def worker_environment(database_url: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(FOREIGN)}
    return {**base, "DATABASE_URL": database_url, "SECRET_KEY": "workers-test-secret",
            "INBOUND_TOKEN": "workers-test-token", "DELIVERY_WORKER": "off", "DELIVERY_POLL_SECONDS": "0.1",
            "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def workers_database():
    """A throwaway PostgreSQL database for this module, migrated as production is; each test
    empties it first."""
    with throwaway_postgres("chat_workers") as url:
        done = subprocess.run([str(BIN / "flask"), "--app", "app", "db", "upgrade"], cwd=ROOT,
                              env=worker_environment(url), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"flask db upgrade failed:\n{done.stdout}\n{done.stderr}"
        yield url


@pytest.fixture
def provider():
    with FakeProvider(secret=SECRET) as running:
        yield running


@pytest.fixture
def deployment(workers_database, provider, tmp_path):
    made = Deployment(workers_database, provider, tmp_path)
    try:
        yield made
    finally:
        made.close()


def test_a_killed_workers_delivery_goes_to_another_under_the_same_key(deployment, provider):
    lease = 2.0
    settings = dict(lease_seconds=lease, send_timeout=1.5, backoff_base=0.2, backoff_max=1)
    provider.default, provider.hang_seconds = "hang", 30  # the provider takes it in, and never answers
    (conversation,) = deployment.conversations(1)
    message_id = deployment.reply(conversation, "Your refund was approved")
    key = str(message_id)

    (first,) = deployment.start_workers(1, concurrency=1, **settings)
    deployment.wait_until(lambda: provider.requests, "the first worker sending the reply", every=0.01)
    held = deployment.delivery_of(message_id)
    assert held.lease_token is not None and held.lease_until > utcnow() and not held.done, vars(held)
    # It waits on the provider with no transaction open: nothing locked, no snapshot held.
    assert deployment.open_transactions() == []
    first.kill()  # in the middle of the send, holding the lease
    after = deployment.delivery_of(message_id)
    assert (after.lease_token, after.done, after.attempts) == (held.lease_token, False, 1), \
        f"the worker finished the attempt before it was killed:\n{deployment.logs()}"
    assert deployment.messages([message_id])[message_id].delivery_state == SENDING

    provider.default = "ok"
    deployment.start_workers(1, concurrency=1, **settings)
    deployment.wait_until(lambda: deployment.messages([message_id])[message_id].delivery_state == SENT,
                          "the reply sent by the second worker")

    keys = [r.key for r in provider.requests]
    assert keys == [key, key]  # received again, under the same idempotency key
    assert provider.requests[1].at - provider.requests[0].at >= lease - 0.25  # after the lease expired
    assert provider.delivered_keys() == [key] and len(provider.accepted()) == 1  # the customer gets it once
    assert provider.requests[1].signature_ok is True
    message = deployment.messages([message_id])[message_id]
    assert (message.delivery_state, message.delivery_reason, message.external_id, message.delivery_attempts) == \
        (SENT, None, f"prov-{key}", 2)
    done = deployment.delivery_of(message_id)
    assert (done.done, done.attempts, done.lease_token, done.lease_until) == (True, 2, None, None)


def test_a_provider_outage_loses_nothing_sends_nothing_twice_and_keeps_order(deployment, provider):
    workers = deployment.start_workers(2, concurrency=2, lease_seconds=10, send_timeout=2, backoff_base=0.2,
                                       backoff_max=0.5, max_attempts=100)
    provider.stop()
    down_since = time.monotonic()
    conversations = deployment.conversations(5)
    expected: dict[int, list[str]] = {c: [] for c in conversations}
    ids: dict[int, list[int]] = {c: [] for c in conversations}
    for n in range(6):  # interleaved, as several agents would reply at once
        for conversation in conversations:
            body = f"answer {n + 1} to conversation {conversation}"
            ids[conversation].append(deployment.reply(conversation, body))
            expected[conversation].append(body)
    every_id = [i for c in conversations for i in ids[c]]
    heads = [ids[c][0] for c in conversations]

    # Down: the first reply of each conversation is tried again and again, the later ones wait.
    deployment.wait_until(lambda: all(m.delivery_attempts >= 3 for m in deployment.messages(heads).values()),
                          "every conversation's first reply retried while the provider is down")
    time.sleep(max(0.0, 1.5 - (time.monotonic() - down_since)))
    seen = deployment.messages(every_id)
    assert provider.requests == []
    for conversation in conversations:
        head, *rest = ids[conversation]
        assert seen[head].delivery_state in ("queued", "sending"), vars(seen[head])
        assert all(seen[i].delivery_attempts == 0 and seen[i].delivery_state == "queued" for i in rest)
    assert any("could not connect to the provider; trying again in" in (seen[h].delivery_reason or "")
               for h in heads), [vars(seen[h]) for h in heads]

    provider.start()  # up again, on the same port
    deployment.wait_until(lambda: all(m.delivery_state == SENT for m in deployment.messages(every_id).values()),
                          "every reply sent once the provider is back")

    accepted = provider.accepted()
    keys = [r.key for r in accepted]
    assert len(keys) == len(set(keys)) == len(provider.requests)  # none twice: not even a second request
    assert sorted(int(k) for k in keys) == sorted(every_id)  # none lost
    order: dict[int, list[str]] = {c: [] for c in conversations}
    for request in accepted:
        order[request.json["conversation_id"]].append(request.json["body"])
    assert order == expected  # in order per conversation
    for worker in workers:
        assert worker.stop() == 0 and STOPPED in worker.log(), worker.log()


@pytest.mark.parametrize("processes", [2, 4])
def test_workers_drain_a_thousand_replies_each_sent_once(deployment, provider, processes, capsys):
    conversations = deployment.conversations(100)
    replies = deployment.queue_many(conversations, per_conversation=10)
    every_id = sorted(i for ids in replies.values() for i in ids)
    assert len(every_id) == 1000

    began = time.monotonic()
    workers = deployment.start_workers(processes, concurrency=4, lease_seconds=60, send_timeout=10)
    deployment.wait_until(lambda: deployment.count_sent() == len(every_id),
                          f"1,000 replies sent by {processes} workers", seconds=90, every=0.1)
    wall = time.monotonic() - began

    requests = provider.requests
    keys = [r.key for r in requests]
    assert len(keys) == len(set(keys)), "a reply was sent twice without its lease expiring"
    accepted = provider.accepted()
    assert len(accepted) == len(requests) and sorted(int(r.key) for r in accepted) == every_id
    sent_order: dict[int, list[int]] = defaultdict(list)
    for request in accepted:
        assert request.json["id"] == request.key and request.signature_ok is True
        sent_order[request.json["conversation_id"]].append(int(request.key))
    assert dict(sent_order) == replies  # each conversation's replies in the order they were sent
    messages = deployment.messages(every_id)
    assert {(m.delivery_state, m.delivery_attempts, m.external_id == f"prov-{m.id}") for m in messages.values()} \
        == {(SENT, 1, True)}
    with deployment.app.app_context():
        assert db.session.execute(select(Delivery.done, Delivery.attempts, Delivery.lease_token)
                                  .distinct()).all() == [(True, 1, None)]
    for worker in workers:
        assert worker.stop() == 0 and STOPPED in worker.log(), worker.log()
        assert "lease expired" not in worker.log() and "Traceback" not in worker.log(), worker.log()

    span = requests[-1].at - requests[0].at
    with capsys.disabled():
        print(f"\n{processes} worker processes x 4: drained 1,000 replies in {span:.2f} s "
              f"({len(requests) / span:.0f} replies/s at the provider; {wall:.2f} s from starting the workers)")


def test_the_clusters_delivery_workers_deliver_and_stop_with_it(deployment, provider, tmp_path):
    """`make cluster` (deploy/cluster.py) runs two `flask worker` processes beside its gunicorns,
    whose environment says DELIVERY_WORKER=off; stopping the cluster stops them, gracefully.
    (tests/test_cluster.py runs the whole of it, nginx and gunicorns included.)"""
    from deploy.cluster import Cluster

    cluster = Cluster(tmp_path / "cluster", deployment.env)
    try:
        assert cluster.env["DELIVERY_WORKER"] == "off" and cluster.worker_count == 2
        for _ in range(cluster.worker_count):
            cluster.add_worker()
        assert cluster.running()
        conversations = deployment.conversations(2)
        ids = [deployment.reply(c, f"through the cluster's workers {n}") for n, c in enumerate(conversations * 3)]
        deployment.wait_until(lambda: all(m.delivery_state == SENT for m in deployment.messages(ids).values()),
                              "every reply sent by the cluster's workers")
        assert sorted(int(k) for k in provider.delivered_keys()) == sorted(ids) and len(provider.requests) == len(ids)
    finally:
        cluster.stop()
    logs = [path.read_text() for path in sorted(cluster.dir.glob("worker-*.log"))]
    assert [w.returncode for w in cluster.workers] == [0, 0], logs
    assert len(logs) == 2 and all(STOPPED in log for log in logs), logs
