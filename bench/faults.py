"""7. Faults: Redis frozen (SIGSTOP), then killed and restarted empty, under load.

A live gunicorn (gunicorn.conf.py's gevent worker, one process, like `make run`) with a private
redis-server as its cache, its sign-in limits and its Socket.IO message queue. 8 client threads
read lists and the API (admin and agent sessions, an API token), 1 thread posts inbound
messages (the webhook) and API replies to a fixed set of conversations. Phases: warm, Redis
frozen with SIGSTOP (15 s; 4 s with --quick), SIGCONT, running again, killed (SIGKILL) and
down, restarted empty on the same port, running again. Reported: the slowest request and the
5xx count per phase, and stale reads right after each recovery: for every conversation the
writer touched, its newest message in the database (read first) must be in the API's message
list and in the conversation pane that the app serves (read after). Goal (issue 12): no request
slower than 1.5 s, 0 5xx, 0 stale reads.
"""
from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import threading
import time
import uuid
from pathlib import Path

from .common import (BIN, INBOUND_TOKEN, ROOT, Gunicorn, PrivateRedis, app_env, copy_database, http, log_in,
                     percentile, save_chart, wait_for_port)

READERS = 8
WRITE_TARGETS = 6  # conversations the writer keeps changing (contacts of its own)
GOAL_MS = 1500
PHASES_FULL = {"warm": 5, "frozen": 15, "thawed": 6, "killed": 5, "restarted": 6}
PHASES_QUICK = {"warm": 2, "frozen": 4, "thawed": 3, "killed": 2, "restarted": 3}


class FaultyRedis(PrivateRedis):
    """The bench's private redis-server, which this measurement freezes, kills and restarts."""

    def freeze(self) -> None:
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def restart_empty(self, workdir: Path) -> None:
        exe = self.process.args[0]
        self.process = subprocess.Popen(
            [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
             "--dir", str(workdir), "--protected-mode", "yes"],
            stdout=self.log.open("a"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, 10, self.process, self.log)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.thaw()
        super().stop()


class Recorder:
    """Every request: when it started, how long it took, what it answered (or raised)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests: list[tuple[float, float, int, str]] = []  # (start, ms, status, kind)
        self.phase = "warm"
        self.phase_of: list[str] = []

    def call(self, kind: str, send):
        start = time.monotonic()
        try:
            response = send()
            status = response.status_code
        except Exception:  # noqa: BLE001 - a timeout or a reset counts as a failure (status 0)
            response, status = None, 0
        ms = (time.monotonic() - start) * 1000
        with self.lock:
            self.requests.append((start, ms, status, kind))
            self.phase_of.append(self.phase)
        return response


def _api_token(database: Path, email: str) -> str:
    done = subprocess.run([str(BIN / "flask"), "--app", "app", "agent", "token", email], cwd=ROOT,
                          env=app_env(database), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"flask agent token failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip().split()[-1]


def _csrf(session, base: str) -> str:
    page = session.get(base + "/inbox", timeout=10)
    return re.search(r'<meta name="csrf-token" content="([^"]+)"', page.text).group(1)


def _newest_bodies(database: Path, ids: list[int]) -> dict[int, str]:
    with sqlite3.connect(database, timeout=10) as conn:
        return {cid: conn.execute("SELECT body FROM messages WHERE conversation_id = ? ORDER BY id DESC LIMIT 1",
                                  (cid,)).fetchone()[0] for cid in ids}


def _stale_check(database: Path, base: str, admin, token: str, ids: list[int], recorder: Recorder) -> dict:
    """Right after a recovery: the newest message of each written conversation, as committed
    before the read starts, must be what the app serves (API and pane)."""
    reads = stale = 0
    newest = _newest_bodies(database, ids)
    for cid in ids:
        response = recorder.call("check-api", lambda: admin.get(
            f"{base}/api/conversations/{cid}/messages", headers={"Authorization": f"Bearer {token}"}, timeout=10))
        reads += 1
        if response is None or response.status_code != 200 or newest[cid] not in response.text:
            stale += 1
        response = recorder.call("check-pane", lambda: admin.get(
            f"{base}/conversations/{cid}", headers={"HX-Request": "true"}, timeout=10))
        reads += 1
        if response is None or response.status_code != 200 or newest[cid] not in response.text:
            stale += 1
    return {"reads": reads, "stale": stale}


def run(ctx) -> dict:
    phases = PHASES_QUICK if ctx.sizes.name == "quick" else PHASES_FULL
    database = copy_database(ctx.database, ctx.workdir / "faults.db")
    admin_token = _api_token(database, "admin@example.com")
    redis = FaultyRedis(ctx.workdir)
    server = None
    stop = threading.Event()
    recorder = Recorder()
    try:
        server = Gunicorn(ctx.workdir, app_env(database, redis.url), name="faults")
        base = server.base
        # The writer's own conversations, created through the webhook before the load starts.
        inbound = http()
        run_id = uuid.uuid4().int % 10**6
        phones = [f"+55118{run_id:06d}{n:02d}" for n in range(WRITE_TARGETS)]  # contacts of this run only
        ids = []
        for phone in phones:
            r = inbound.post(base + "/api/inbound", json={"phone": phone, "name": f"Fault {phone[-2:]}",
                                                            "body": f"start {uuid.uuid4().hex[:6]}"},
                             headers={"Authorization": f"Bearer {INBOUND_TOKEN}"}, timeout=10)
            ids.append(r.json()["data"]["conversation_id"])
            # Accepted by the admin, so the writer's replies are taken (inbound ones keep coming).
            inbound.post(f"{base}/api/conversations/{ids[-1]}/accept",
                         headers={"Authorization": f"Bearer {admin_token}"}, timeout=10).raise_for_status()
        sessions = [log_in(base, "admin@example.com" if n % 2 else "ana@example.com") for n in range(READERS)]
        checker = log_in(base, "admin@example.com")
        writes = {"inbound": 0, "reply": 0, "refused": 0}

        def reader(n: int) -> None:
            session = sessions[n]
            paths = [("list", "/inbox/list?tab=pending", {"HX-Request": "true"}),
                     ("list", "/inbox/list?tab=mine", {"HX-Request": "true"}),
                     ("api", "/api/conversations?status=pending", {"Authorization": f"Bearer {admin_token}"}),
                     ("api", f"/api/conversations/{ids[n % len(ids)]}/messages",
                      {"Authorization": f"Bearer {admin_token}"})]
            i = n
            while not stop.is_set():
                kind, path, headers = paths[i % len(paths)]
                recorder.call(kind, lambda: session.get(base + path, headers=headers, timeout=15))
                i += 1

        def writer() -> None:
            session = http()
            i = 0
            while not stop.is_set():
                cid, phone = ids[i % len(ids)], phones[i % len(phones)]
                body = f"w{i} {uuid.uuid4().hex[:8]}"
                if i % 2 == 0:
                    r = recorder.call("inbound", lambda: session.post(
                        base + "/api/inbound", json={"phone": phone, "body": body},
                        headers={"Authorization": f"Bearer {INBOUND_TOKEN}"}, timeout=15))
                    writes["inbound"] += 1
                else:
                    r = recorder.call("reply", lambda: session.post(
                        f"{base}/api/conversations/{cid}/messages", json={"body": body},
                        headers={"Authorization": f"Bearer {admin_token}"}, timeout=15))
                    writes["reply"] += 1
                if r is not None and 400 <= r.status_code < 500:
                    writes["refused"] += 1  # e.g. a reply to a conversation nobody accepted
                i += 1
                time.sleep(0.05)

        threads = [threading.Thread(target=reader, args=(n,), daemon=True) for n in range(READERS)]
        threads.append(threading.Thread(target=writer, daemon=True))
        for t in threads:
            t.start()
        checks = {}
        time.sleep(phases["warm"])
        recorder.phase = "frozen"
        redis.freeze()
        time.sleep(phases["frozen"])
        redis.thaw()
        recorder.phase = "thawed"
        checks["after_sigcont"] = _stale_check(database, base, checker, admin_token, ids, recorder)
        time.sleep(phases["thawed"])
        recorder.phase = "killed"
        redis.kill()
        time.sleep(phases["killed"])
        redis.restart_empty(ctx.workdir)
        recorder.phase = "restarted"
        checks["after_restart"] = _stale_check(database, base, checker, admin_token, ids, recorder)
        time.sleep(phases["restarted"])
        stop.set()
        for t in threads:
            t.join(20)
        checks["at_end"] = _stale_check(database, base, checker, admin_token, ids, recorder)
        metrics_text = http().get(base + "/metrics", timeout=10).text
    finally:
        stop.set()
        if server:
            server.stop()
        redis.stop()

    per_phase = {}
    for name in phases:
        rows = [r for r, p in zip(recorder.requests, recorder.phase_of) if p == name]
        ms = [r[1] for r in rows]
        per_phase[name] = {"requests": len(rows), "max_ms": round(max(ms), 1) if ms else None,
                           "p99_ms": round(percentile(ms, 99), 1) if ms else None,
                           "over_goal": sum(1 for m in ms if m > GOAL_MS),
                           "status_5xx": sum(1 for r in rows if r[2] >= 500),
                           "failed": sum(1 for r in rows if r[2] == 0)}
    opens = re.search(r"^chat_redis_breaker_opens_total (\S+)$", metrics_text, re.M)
    skipped = re.search(r"^chat_redis_skipped_total (\S+)$", metrics_text, re.M)
    all_ms = [r[1] for r in recorder.requests]
    return {
        "setup": {"readers": READERS, "writers": 1, "phases_s": phases, "goal_ms": GOAL_MS,
                  "server": "gunicorn gevent, 1 worker; Redis = cache, limits, message queue"},
        "phases": per_phase,
        "requests": len(all_ms),
        "max_ms": round(max(all_ms), 1),
        "status_5xx": sum(p["status_5xx"] for p in per_phase.values()),
        "failed": sum(p["failed"] for p in per_phase.values()),
        "over_goal": sum(p["over_goal"] for p in per_phase.values()),
        "stale": checks,
        "stale_reads": sum(c["stale"] for c in checks.values()),
        "writes": writes,
        "breaker": {"opens": float(opens.group(1)) if opens else None,
                    "skipped": float(skipped.group(1)) if skipped else None},
        "_timeline": [(round(r[0] - recorder.requests[0][0], 3), round(r[1], 1), r[2], p)
                     for r, p in zip(recorder.requests, recorder.phase_of)],
    }


def chart(results: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4))
    colours = {"warm": "#6b7280", "frozen": "#2563eb", "thawed": "#16a34a", "killed": "#dc2626",
               "restarted": "#d97706"}
    for phase, colour in colours.items():
        points = [(t, ms) for t, ms, _status, p in results["_timeline"] if p == phase]
        if points:
            ax.scatter([t for t, _ in points], [ms for _, ms in points], s=4, color=colour, label=phase)
    bad = [(t, ms) for t, ms, status, _p in results["_timeline"] if status >= 500 or status == 0]
    if bad:
        ax.scatter([t for t, _ in bad], [ms for _, ms in bad], s=30, marker="x", color="black", label="5xx / failed")
    ax.axhline(results["setup"]["goal_ms"], color="#dc2626", linestyle=":", label="goal: 1.5 s")
    ax.set_yscale("log")
    ax.set_xlabel("seconds since the load started")
    ax.set_ylabel("request latency (ms, log)")
    ax.legend(fontsize=8, markerscale=3)
    ax.grid(True, which="both", alpha=0.3)
    save_chart(fig, f"7. Redis frozen, then killed: max {results['max_ms']} ms, "
                    f"{results['status_5xx']} 5xx, {results['stale_reads']} stale", path)


def summary(results: dict) -> list[tuple[str, str, str]]:
    out = []
    for phase, r in results["phases"].items():
        out.append(("faults", f"{phase} ({results['setup']['phases_s'][phase]} s)",
                    f"{r['requests']} requests, max {r['max_ms']} ms, p99 {r['p99_ms']} ms, "
                    f"{r['status_5xx']} 5xx, {r['failed']} failed"))
    checks = ", ".join(f"{name.replace('_', ' ')} {c['stale']}/{c['reads']}" for name, c in results["stale"].items())
    out.append(("faults", "stale reads after recovery", f"{results['stale_reads']} ({checks})"))
    b = results["breaker"]
    out.append(("faults", "breaker", f"opened {b['opens']:.0f} times, {b['skipped']:.0f} Redis calls skipped"))
    return out
