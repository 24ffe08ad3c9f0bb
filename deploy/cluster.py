"""`make cluster`: the scaled deployment on loopback, as production runs it.

nginx (Debian's) with sticky sessions in front of several gunicorn processes (gunicorn.conf.py)
that share PostgreSQL and Redis, and beside them delivery workers (`flask --app app worker`) as
processes of their own, so the gunicorns run none inside (DELIVERY_WORKER=off). Everything it
starts keeps its config, pid and log files in a directory of its own on free ports (the system
nginx and port 80 are never touched), with PROMETHEUS_MULTIPROC_DIR there, so /metrics and the
cache panel sum every web process. tests/test_cluster.py drives the same `Cluster`.
"""
from __future__ import annotations

import argparse
import getpass
import os
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent  # the venv's python runs this; deliberately not resolved
TEMPLATE = Path(__file__).with_name("nginx.conf.template")
STICKY_COOKIE = "inbox_node"  # nginx hashes a browser to a process by it
SERVED_BY = "X-Served-By"  # nginx's answer header naming the process (its address)
DATABASE_URL = "postgresql://postgres@127.0.0.1:5432/inbox_cluster"
REDIS_URL = "redis://127.0.0.1:6379/0"
PREFIX = "inbox-cluster:"  # its own keys and channel in a Redis that others may share
WORKER_READY = "Delivery worker:"  # what `flask worker` prints when its loops start (chat/cli.py)
LOGINS = ("admin@example.com (admin), ana@example.com and bruno@example.com (agents), "
          "password demo-pass")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def nginx_binary() -> str | None:
    """Debian installs nginx in /usr/sbin, which is not on every user's PATH."""
    return shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)


def _answers(url: str) -> bool:
    import urllib.request

    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback, no proxy
    try:
        with opener.open(url, timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


class Cluster:
    """nginx on `port` in front of gunicorn processes on free ports, and `workers` delivery
    workers beside them, all under `workdir`."""

    def __init__(self, workdir: Path, env: dict[str, str], port: int | None = None, workers: int = 2):
        self.dir = Path(workdir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.metrics_dir = self.dir / "prometheus"
        self.metrics_dir.mkdir(parents=True, exist_ok=True)
        self.worker_count = workers
        # With workers of their own, the gunicorns deliver nothing themselves.
        delivery = {"DELIVERY_WORKER": "off"} if workers else {}
        self.env = {**env, **delivery, "PROMETHEUS_MULTIPROC_DIR": str(self.metrics_dir), "PYTHONUNBUFFERED": "1"}
        self.processes: dict[int, subprocess.Popen] = {}  # gunicorn port -> its master
        self.workers: list[subprocess.Popen] = []  # `flask worker` processes
        self.nginx: subprocess.Popen | None = None

    # -- gunicorn --------------------------------------------------------------------------
    def add_process(self) -> int:
        """Start one more gunicorn; with nginx running, reload it with the new upstream."""
        port = free_port()
        log = (self.dir / f"gunicorn-{port}.log").open("a")
        self.processes[port] = subprocess.Popen(
            [str(BIN / "gunicorn"), "-c", str(ROOT / "gunicorn.conf.py"),
             "--bind", f"127.0.0.1:{port}", "--access-logfile", "-", "app:app"],
            cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True)  # its own process group: Ctrl+C reaches us, we stop it
        self._wait(lambda: _answers(f"http://127.0.0.1:{port}/login"), f"gunicorn on port {port}",
                   self.processes[port])
        if self.nginx is not None:
            self._write_config()
            self.reload_nginx()
        return port

    def reload_nginx(self) -> None:
        """Reload nginx's config and wait until only workers with the new one are left."""
        old = set(_children(self.nginx.pid))
        self.nginx.send_signal(signal.SIGHUP)
        self._wait(lambda: (workers := _children(self.nginx.pid)) and not old & set(workers),
                   "the nginx reload", self.nginx)

    def kill_process(self, port: int) -> None:
        """SIGKILL one gunicorn, master and worker, like a crash: its sockets drop at once.
        It stays in nginx's upstream, as a crashed server would."""
        process = self.processes[port]
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)

    # -- delivery workers ------------------------------------------------------------------
    def add_worker(self) -> subprocess.Popen:
        """Start one more `flask --app app worker` and wait until it looks for replies. Not in
        PROMETHEUS_MULTIPROC_DIR: the panel and /metrics sum the web processes (gunicorn's
        child_exit marks those dead when they stop; nothing would mark a worker)."""
        path = self.dir / f"worker-{len(self.workers) + 1}.log"
        env = {k: v for k, v in self.env.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
        with path.open("ab") as log:
            process = subprocess.Popen([str(BIN / "flask"), "--app", "app", "worker"], cwd=ROOT, env=env,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True)  # Ctrl+C reaches us, we stop it
        self.workers.append(process)
        self._wait(lambda: WORKER_READY in path.read_text(errors="replace"), f"delivery worker {len(self.workers)}",
                   process)
        return process

    def worker_pid(self, port: int) -> int:
        """The pid of the gunicorn worker serving `port` (its multiprocess files are named so)."""
        return _children(self.processes[port].pid)[0]

    # -- nginx -----------------------------------------------------------------------------
    def _write_config(self) -> Path:
        servers = "\n".join(f"        server 127.0.0.1:{port} max_fails=1 fail_timeout=5s;"
                            for port in sorted(self.processes))
        user = f"user {getpass.getuser()};" if os.geteuid() == 0 else ""  # workers can read our dir
        text = string.Template(TEMPLATE.read_text()).safe_substitute(
            dir=self.dir, port=self.port, servers=servers, cookie=STICKY_COOKIE, user=user)
        assert "${" not in text, "unfilled placeholder in nginx.conf.template"
        path = self.dir / "nginx.conf"
        path.write_text(text)
        return path

    def start_nginx(self) -> None:
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (`make cluster` installs Debian's)")
        config = self._write_config()
        checked = subprocess.run([binary, "-t", "-q", "-p", str(self.dir), "-e", str(self.dir / "nginx-error.log"),
                                  "-c", str(config)], capture_output=True, text=True)
        if checked.returncode:
            raise RuntimeError(f"nginx refused its config:\n{checked.stderr}")
        self.nginx = subprocess.Popen([binary, "-p", str(self.dir), "-e", str(self.dir / "nginx-error.log"),
                                       "-c", str(config)], start_new_session=True)
        self._wait(lambda: _answers(f"{self.url}/login"), "nginx", self.nginx)

    def access_log(self) -> list[tuple[str, str, str, str]]:
        """nginx's access log: (sticky cookie, upstream address(es), status, request line)."""
        path = self.dir / "nginx-access.log"
        rows = []
        for line in path.read_text().splitlines() if path.exists() else []:
            head, _, request = line.partition(' "')
            cookie, upstream, status = head.split(" ", 2) if head.count(" ") >= 2 else (head, "", "")
            rows.append((cookie, upstream, status, request.rstrip('"')))
        return rows

    # -- the whole -------------------------------------------------------------------------
    def start(self, processes: int = 3) -> None:
        for _ in range(processes):
            self.add_process()
        for _ in range(self.worker_count):
            self.add_worker()
        self.start_nginx()

    def running(self) -> bool:
        """Whether every process it started is still running."""
        return all(p is None or p.poll() is None for p in [self.nginx, *self.processes.values(), *self.workers])

    def stop(self) -> None:
        """nginx first (no new requests), then every gunicorn and delivery worker; each waits a
        little, then SIGKILL."""
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.send_signal(signal.SIGQUIT)  # graceful: lets open answers finish
            _wait_or_kill(self.nginx, 5)
        for process in [*self.processes.values(), *self.workers]:
            if process.poll() is None:
                # gunicorn.conf.py closes the sockets at once; a worker finishes the sends it is
                # in (DELIVERY_SEND_TIMEOUT at most) and records them.
                process.send_signal(signal.SIGTERM)
        for process in self.processes.values():
            _wait_or_kill(process, 10)
        for process in self.workers:
            _wait_or_kill(process, 10 + float(self.env.get("DELIVERY_SEND_TIMEOUT") or 10))

    def _wait(self, ready, what: str, process: subprocess.Popen, seconds: float = 30) -> None:
        deadline = time.monotonic() + seconds
        while not ready():
            if process.poll() is not None:
                raise RuntimeError(f"{what} exited with {process.returncode}; logs in {self.dir}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer within {seconds:.0f} s; logs in {self.dir}")
            time.sleep(0.1)


def _children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux)."""
    return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _wait_or_kill(process: subprocess.Popen, seconds: float) -> None:
    try:
        process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def create_database(url: str) -> None:
    """Create the PostgreSQL database of `url` if it does not exist yet."""
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True, connect_timeout=3) as admin:
        if not admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone():
            admin.execute(f'CREATE DATABASE "{name}"')


def flask(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(BIN / "flask"), "--app", "app", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"flask {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout.strip()


def _interrupt(*_) -> None:
    raise KeyboardInterrupt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("CLUSTER_PORT", 8080)))
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2, help="delivery workers (flask worker) beside them")
    args = parser.parse_args()

    env = {**os.environ}
    env.setdefault("DATABASE_URL", DATABASE_URL)
    env.setdefault("REDIS_URL", REDIS_URL)
    env.setdefault("CACHE_KEY_PREFIX", PREFIX)
    env.setdefault("SOCKETIO_CHANNEL", PREFIX + "socketio")
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # set for the servers only: the seed is not one
    if env["DATABASE_URL"].startswith("postgresql"):
        create_database(env["DATABASE_URL"])
    flask(env, "db", "upgrade")
    print("Seeding demo data (first start only)...", flush=True)
    flask(env, "seed", "--if-empty")
    token = flask(env, "inbound-token")

    workdir = Path(tempfile.mkdtemp(prefix="inbox-cluster-"))
    cluster = Cluster(workdir, env, port=args.port, workers=args.workers)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as Ctrl+C does
    try:
        cluster.start(args.processes)
        print(f"Serving the inbox on {cluster.url} (nginx, sticky sessions, {args.processes} gunicorn "
              f"processes on ports {', '.join(map(str, cluster.processes))}; {args.workers} delivery workers, "
              f"pids {', '.join(str(w.pid) for w in cluster.workers) or 'none'})")
        print(f"Logins: {LOGINS}")
        print(f"Inbound webhook token: {token}")
        print(f"Database {env['DATABASE_URL']}, Redis {env['REDIS_URL']} under {env['CACHE_KEY_PREFIX']}")
        print(f"Config and logs: {workdir}. Ctrl+C stops everything.", flush=True)
        while cluster.running():
            time.sleep(1)
        print(f"A process of the cluster exited; stopping. Logs in {workdir}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print("\nStopping nginx, the gunicorns and the delivery workers...", flush=True)
    finally:
        cluster.stop()
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
