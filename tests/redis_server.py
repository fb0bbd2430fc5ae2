"""A private redis server for the tests that stop, restart or flush their store.

    with RedisServer(tmp_path) as server:
        server.url            # redis://127.0.0.1:<free port>/0
        server.stop(); server.start()   # the same port, nothing kept (no persistence)

It runs the ``redis-server`` binary on a free port of its own, so nothing a test does to it
reaches any other redis. :class:`RedisClusterServers` runs three of them as a Redis Cluster of
three masters (``redis+cluster://127.0.0.1:<port>``).
"""

from __future__ import annotations

import random
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _free_cluster_port() -> int:
    """A free port whose cluster bus port, 10 000 above it, is free too (so at most 55 535)."""
    for _ in range(100):
        port = random.randint(20_000, 55_535)
        try:
            with socket.socket() as first, socket.socket() as bus:
                first.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10_000))
            return port
        except OSError:
            continue
    pytest.fail("No free pair of ports for a Redis Cluster node.")


class RedisServer:
    """One ``redis-server`` process on a free port, its files in ``folder``."""

    def __init__(self, folder: Path, *options: str, port: int | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: apt-get install redis-server, or deselect with -m 'not redis'.")
        self.binary = binary
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port or _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None
        self.options = options

    def start(self, timeout: float = 10) -> None:
        """Start the server (again) on its port, and wait until it answers."""
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += ["--dir", str(self.folder), "--logfile", str(self.folder / "redis.log"), *self.options]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as connection:
                    connection.sendall(b"PING\r\n")
                    if connection.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        self.stop()
        pytest.fail(f"redis-server did not answer on port {self.port} within {timeout} s.")

    def stop(self) -> None:
        """Stop the server at once; what it held is gone."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None

    def __enter__(self) -> RedisServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RedisClusterServers:
    """Three ``redis-server`` processes made one Redis Cluster of three masters, no replicas."""

    def __init__(self, folder: Path) -> None:
        options = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000")
        self.nodes = [RedisServer(folder / f"node{i}", *options, port=_free_cluster_port()) for i in range(3)]
        self.url = f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def __enter__(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            pytest.fail("redis-cli is not installed (Debian: apt-get install redis-tools).")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            states = [
                subprocess.run([cli, "-p", str(node.port), "cluster", "info"], capture_output=True, text=True).stdout
                for node in self.nodes
            ]
            if all("cluster_state:ok" in state for state in states):
                return self
            time.sleep(0.1)
        self.__exit__()
        pytest.fail("The Redis Cluster did not reach cluster_state:ok within 20 s.")

    def __exit__(self, *exc: object) -> None:
        for node in self.nodes:
            node.stop()
