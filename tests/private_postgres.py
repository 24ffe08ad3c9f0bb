"""A PostgreSQL server of the test's own, on a free port, that a test may stop and start again
(the machine's shared server is never restarted). Debian's binaries, run as the postgres user."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.common import free_port


def _bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise FileNotFoundError(f"PostgreSQL's {name} not found under /usr/lib/postgresql")
    return found[-1]


class PrivatePostgres:
    def __init__(self):
        # Its own directory: pytest's tmp_path is root's alone, and the server runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="chat-test-pg-"))
        self.dir = self.root / "data"
        self.port = free_port()
        self.socket_dir = self.root / "socket"
        self.socket_dir.mkdir()
        self.log = self.root / "postgres.log"
        as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        self._as = as_postgres
        if as_postgres:
            for path in (self.root, self.socket_dir):
                shutil.chown(path, "postgres")
        subprocess.run([*as_postgres, _bin("initdb"), "-D", str(self.dir), "-A", "trust", "-U", "postgres",
                        "--no-sync"], check=True, capture_output=True, timeout=120)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/inbox"
        self.start()
        subprocess.run([*as_postgres, _bin("createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres",
                        "inbox"], check=True, capture_output=True, timeout=30)

    def start(self) -> None:
        subprocess.run([*self._as, _bin("pg_ctl"), "-D", str(self.dir), "-l", str(self.log), "-w", "-t", "30",
                        "-o", f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off",
                        "start"], check=True, capture_output=True, timeout=60)

    def stop(self, mode: str = "fast") -> None:
        subprocess.run([*self._as, _bin("pg_ctl"), "-D", str(self.dir), "-m", mode, "-w", "stop"],
                       capture_output=True, timeout=60)

    def remove(self) -> None:
        self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
