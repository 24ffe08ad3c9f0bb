"""A private 3-master Redis Cluster from Debian's redis-server, for the tests that run the app on
one (tests/test_redis_cluster.py, and tests/test_cache.py's "cluster" backend).

Three `redis-server --cluster-enabled yes` on free loopback ports in a temporary directory, joined
by `redis-cli --cluster create` with no replicas, up once cluster_state is ok; stopped and their
directory removed at the end. Ours alone: tests may freeze a node with SIGSTOP.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

from bench.common import free_port, stop_process, wait_for_port

MASTERS = 3


class PrivateRedisCluster:
    def __init__(self, workdir: Path, node_timeout_ms: int = 15_000) -> None:
        server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
        if server is None or cli is None:
            raise FileNotFoundError("redis-server and redis-cli are needed (Debian: redis-server, redis-tools)")
        self.workdir = workdir
        self.ports = [free_port() for _ in range(MASTERS)]
        # The cluster bus is on port + 10000 unless told otherwise: a free one of its own instead.
        buses = [free_port() for _ in range(MASTERS)]
        self.processes: dict[int, subprocess.Popen] = {}
        try:
            for port, bus in zip(self.ports, buses):
                node_dir = workdir / str(port)
                node_dir.mkdir()
                log = (node_dir / "redis.log").open("w")
                self.processes[port] = subprocess.Popen(
                    [server, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                     "--cluster-port", str(bus), "--cluster-config-file", str(node_dir / "nodes.conf"), "--dir", str(node_dir),
                     "--cluster-node-timeout", str(node_timeout_ms), "--save", "", "--appendonly", "no"],
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            for port in self.ports:
                wait_for_port(port, 10, self.processes[port], workdir / str(port) / "redis.log")
            created = subprocess.run(
                [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in self.ports),
                 "--cluster-replicas", "0", "--cluster-yes"], capture_output=True, text=True, timeout=60)
            if created.returncode != 0:
                raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}\n{created.stderr}")
            self._wait_until_ok(cli)
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        """REDIS_URL of the app for this cluster: every node, as an operator would list them."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def _wait_until_ok(self, cli: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while True:
            states = [subprocess.run([cli, "-p", str(p), "cluster", "info"], capture_output=True, text=True,
                                     timeout=5).stdout for p in self.ports]
            if all("cluster_state:ok" in s for s in states):
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster is not ok after {timeout} s:\n{states}")
            time.sleep(0.1)

    def kill(self, port: int) -> None:
        stop_process(self.processes[port], signal.SIGKILL)

    def wait_for_state(self, port: int, state: str, timeout: float = 15) -> None:
        """Until the node at `port` says cluster_state:<state>."""
        cli, deadline = shutil.which("redis-cli"), time.monotonic() + timeout
        while f"cluster_state:{state}" not in subprocess.run([cli, "-p", str(port), "cluster", "info"],
                                                             capture_output=True, text=True, timeout=5).stdout:
            if time.monotonic() > deadline:
                raise RuntimeError(f"node {port} is not {state} after {timeout} s")
            time.sleep(0.1)

    def freeze(self, port: int) -> None:
        os.kill(self.processes[port].pid, signal.SIGSTOP)

    def thaw(self, port: int) -> None:
        os.kill(self.processes[port].pid, signal.SIGCONT)

    def stop(self) -> None:
        for port, process in self.processes.items():
            if process.poll() is None:
                self.thaw(port)
            stop_process(process)
