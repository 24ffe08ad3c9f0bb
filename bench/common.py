"""What every measurement shares: sizes, a seeded database, a private redis-server, gunicorn
processes, logging in, percentiles and the machine's description. Everything binds to
127.0.0.1 and is stopped by the ExitStack that started it, failure or not.
"""
from __future__ import annotations

import contextlib
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv running the bench; deliberately not resolved
PASSWORD = "demo-pass"
INBOUND_TOKEN = "bench-inbound-token"
SECRET_KEY = "bench-secret-key"
IN_CI = os.environ.get("CI", "").lower() == "true"


class Unavailable(RuntimeError):
    """A tool the bench needs is missing (wrk, redis-server, chromium)."""


@dataclass(frozen=True)
class Sizes:
    """How big a run is. FULL is the seed's promise; QUICK is the smoke run of tests/test_bench.py."""

    name: str
    agents: int
    conversations: int
    messages: int
    departments: int
    wrk_seconds: float
    wrk_connections: int
    workload_minutes: int
    reads_per_agent_minute: int
    mutations_per_agent_minute: float
    invalidation_keys: tuple[int, ...]
    stampede_threads: int
    push_clients: tuple[int, ...]
    push_changes: int
    browser_repeats: int

    def as_dict(self) -> dict:
        return asdict(self)


FULL = Sizes("full", agents=50, conversations=10_000, messages=200_000, departments=5,
             wrk_seconds=10, wrk_connections=32, workload_minutes=3, reads_per_agent_minute=100,
             mutations_per_agent_minute=1.5, invalidation_keys=(1_000, 100_000, 1_000_000, 10_000_000),
             stampede_threads=50, push_clients=(1, 100, 1_000, 5_000), push_changes=20, browser_repeats=7)
QUICK = Sizes("quick", agents=10, conversations=300, messages=3_000, departments=5,
              wrk_seconds=1, wrk_connections=16, workload_minutes=2, reads_per_agent_minute=100,
              mutations_per_agent_minute=1.5, invalidation_keys=(1_000, 100_000),
              stampede_threads=50, push_clients=(1, 20), push_changes=5, browser_repeats=3)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Debian's chromium as the bench and the browser tests (tests/live.py) run it.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def chromium_executable() -> str:
    """Where chromium is (check os.access before launching: `make chromium` installs it)."""
    return shutil.which("chromium") or "/usr/bin/chromium"


def wait_for_port(port: int, timeout: float, process: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode}:\n{log.read_text() if log else ''}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port} after {timeout} s:\n{log.read_text() if log else ''}")


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    """Stop a process started with start_new_session=True, and its children (its group)."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


# -- a private redis-server ------------------------------------------------------------------
class PrivateRedis:
    """redis-server on a free loopback port, no persistence, DEBUG allowed: ours to flush."""

    def __init__(self, workdir: Path, maxmemory: str | None = None):
        exe = shutil.which("redis-server")
        if not exe:
            raise Unavailable("redis-server not found (apt-get install redis-server)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = workdir / f"redis-{self.port}.log"
        args = [exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--dir", str(workdir), "--protected-mode", "yes", "--enable-debug-command", "local"]
        if maxmemory:
            args += ["--maxmemory", maxmemory]
        self.process = subprocess.Popen(args, stdout=self.log.open("w"), stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_for_port(self.port, 10, self.process, self.log)

    def client(self):
        import redis

        # Loading or scanning 10M keys takes a while: no read timeout on our own server.
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=None, socket_connect_timeout=5)

    def stop(self) -> None:
        stop_process(self.process)


# -- a seeded database ---------------------------------------------------------------------
def app_env(database: Path, redis_url: str | None = None, prefix: str | None = None, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "CACHE_KEY_PREFIX")}
    env.update(DATABASE_URL=f"sqlite:///{database}", SECRET_KEY=SECRET_KEY, INBOUND_TOKEN=INBOUND_TOKEN,
               PYTHONUNBUFFERED="1")
    if redis_url:
        prefix = prefix or f"bench-{uuid.uuid4().hex[:8]}:"
        env.update(REDIS_URL=redis_url, CACHE_KEY_PREFIX=prefix, SOCKETIO_CHANNEL=prefix + "socketio")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def seed_database(workdir: Path, sizes: Sizes) -> tuple[Path, float]:
    """A migrated SQLite database with the seed's data; returns its path and the seconds it took."""
    database = workdir / "seed.db"
    env = app_env(database)
    flask = [str(BIN / "flask"), "--app", "app"]
    started = time.perf_counter()
    for args in (["db", "upgrade"],
                 ["seed", "--agents", str(sizes.agents), "--conversations", str(sizes.conversations),
                  "--messages", str(sizes.messages), "--departments", str(sizes.departments)]):
        done = subprocess.run(flask + args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            raise RuntimeError(f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return database, time.perf_counter() - started


def copy_database(database: Path, target: Path) -> Path:
    """A consistent copy (WAL included) for a measurement that writes."""
    source = sqlite3.connect(database)
    dest = sqlite3.connect(target)
    with dest:
        source.backup(dest)
    source.close()
    dest.close()
    return target


def row_counts(database: Path) -> dict:
    with contextlib.closing(sqlite3.connect(database)) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("users", "departments", "contacts", "conversations", "messages")}


# -- gunicorn -------------------------------------------------------------------------------
class Gunicorn:
    """The bench app (bench.benchapp: the product plus /bench/hello) under gunicorn as `make run`
    serves it (gunicorn.conf.py: the gevent worker, one process). threads=N runs the old
    threaded worker instead (gthread, N threads: one per open websocket), for comparison."""

    def __init__(self, workdir: Path, env: dict, name: str = "gunicorn", port: int | None = None,
                 threads: int | None = None):
        self.port = port or free_port()  # a given port: the same server started again
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = workdir / f"{name}-{self.port}.log"
        self.worker = "gthread" if threads else "gevent"
        # gthread accepts at most worker_connections connections at once; every websocket holds one.
        gthread = ["--worker-class", "gthread", "--threads", str(threads),
                   "--worker-connections", str(threads + 100)] if threads else []
        self.process = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"), *gthread,
             "--bind", f"127.0.0.1:{self.port}", "--backlog", "4096", "bench.benchapp:app"],
            cwd=ROOT, env=env, stdout=self.log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
        wait_for_port(self.port, 30, self.process, self.log)
        # The worker imports the app after the master binds: wait until it answers.
        deadline = time.monotonic() + 30
        while True:
            try:
                if http().get(self.base + "/bench/hello", timeout=2).status_code == 200:
                    break
            except Exception:  # noqa: BLE001
                pass
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise RuntimeError(f"gunicorn did not answer:\n{self.log.read_text()}")
            time.sleep(0.1)

    def stop(self) -> None:
        stop_process(self.process, signal.SIGINT)


def http():
    import requests

    session = requests.Session()
    session.trust_env = False  # loopback only, never through a proxy from the environment
    return session


def log_in(base: str, email: str) -> "requests.Session":
    """A requests session signed in through the login form (CSRF token and all); session.csrf
    is the token, for an X-CSRFToken header."""
    session = http()
    page = session.get(base + "/login", timeout=10)
    token = re.search(r'name="csrf_token" type="hidden" value="([^"]+)"', page.text) or \
        re.search(r'name="csrf_token"[^>]*value="([^"]+)"', page.text)
    if not token:
        raise RuntimeError("no CSRF token on /login")
    done = session.post(base + "/login", data={"csrf_token": token.group(1), "email": email,
                                               "password": PASSWORD}, timeout=10, allow_redirects=False)
    if done.status_code not in (302, 303) or "session" not in session.cookies:
        raise RuntimeError(f"could not sign in as {email}: {done.status_code}")
    session.csrf = token.group(1)  # still valid: the session keeps the token it was signed for
    return session


def cookie_header(session) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in session.cookies)


def browser_headers(session) -> dict:
    """What a browser signed in as `session` sends with each request: its cookie and the
    User-Agent it signed in with. (Flask-Login's session protection remembers the sign-in's
    address and User-Agent: a request from another one, wrk's, marks the session not fresh and
    has its cookie signed and set again on every response, which no browser's request costs.)"""
    return {"Cookie": cookie_header(session), "User-Agent": session.headers["User-Agent"]}


# -- numbers ------------------------------------------------------------------------------------
def save_chart(fig, title: str, path) -> None:
    """Title, lay out, write the PNG and free the figure: the end of every chart."""
    import matplotlib.pyplot as plt

    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def ratio(a, b) -> float | None:
    return round(a / b, 4) if a is not None and b else None


def machine() -> dict:
    import importlib.metadata as md

    def version(cmd: list[str]) -> str | None:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (out.stdout or out.stderr).strip().splitlines()[0]
        except Exception:  # noqa: BLE001
            return None

    memory = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    cpu = None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    packages = {}
    for name in ("Flask", "Flask-Caching", "Flask-SocketIO", "python-socketio", "SQLAlchemy", "gunicorn",
                 "redis", "playwright", "matplotlib", "aiohttp"):
        with contextlib.suppress(md.PackageNotFoundError):
            packages[name] = md.version(name)
    return {
        "cores": os.cpu_count(), "cpu": cpu, "memory_gb": memory,
        "os": platform.platform(), "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "redis_server": version(["redis-server", "--version"]),
        "wrk": version(["wrk", "--version"]),
        "chromium": version(["chromium", "--version"]),
        "packages": packages,
    }
