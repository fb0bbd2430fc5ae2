"""Processes the HTTP benchmarks start and watch: WSGI servers, a private redis, /proc readings.

Every server runs from the repository's root with the root first on ``PYTHONPATH``, so it
serves this checkout's flask-river-ml (and ``bench`` is a namespace package). Each is started
in a session of its own and stopped through its process group, whatever happens to the
benchmark; :class:`Servers` keeps the list.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: The example app (flask-river-ml), the ceiling, and django-river-ml.
EXTENSION_APP = "examples.app:app"
CEILING_APP = "bench.bare_app:app"
DJANGO_APP = "bench.django_app:application"
#: The WSGI servers a configuration can run on.
WSGI_SERVERS = ("gunicorn", "granian")


class BenchError(RuntimeError):
    """A measurement that must not be reported: the benchmark exits non-zero with this message."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# --- /proc (Linux) -------------------------------------------------------------------------------

_TICK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str]:
    # The command name, in parentheses, may hold spaces: the fields start after its last ")".
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu(pid: int) -> float:
    """User + system seconds of one process (0 once it is gone)."""
    try:
        fields = _stat_fields(pid)
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (a gunicorn master and its workers, granian's
    main process and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                children.setdefault(int(_stat_fields(int(entry.name))[1]), []).append(int(entry.name))
    tree, todo = [], [pid]
    while todo:
        current = todo.pop()
        tree.append(current)
        todo.extend(children.get(current, ()))
    return tree


def machine_busy() -> float:
    """Busy seconds of all CPUs together since boot: all but idle and iowait."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    return (sum(values) - values[3] - values[4]) / _TICK


def rss_bytes(pid: int) -> int:
    """Resident set size of one process."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise BenchError(f"no VmRSS for process {pid}")


# --- servers -------------------------------------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cpu(self) -> float:
        """CPU seconds used so far by the server's processes that are running."""
        return sum(process_cpu(pid) for pid in process_tree(self.process.pid))

    def workers(self) -> list[int]:
        """The processes that answer requests: the children of gunicorn's or granian's main one."""
        return process_tree(self.process.pid)[1:]


def server_command(kind: str, program: Path, port: int, workers: int, app: str) -> list[str]:
    """The command serving ``app`` on ``port`` with ``workers`` processes of one Python thread
    each: gunicorn's sync workers, or granian in WSGI mode with one blocking thread per worker."""
    if kind == "gunicorn":
        return [str(program), "--bind", f"127.0.0.1:{port}", "--workers", str(workers), app]
    if kind == "granian":
        return [
            *(str(program), "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port)),
            *("--workers", str(workers), "--blocking-threads", "1", "--http", "1", "--no-ws", app),
        ]
    raise ValueError(f"unknown WSGI server {kind!r}")


class Servers:
    """Every server started, so that all of them are stopped whatever happens."""

    def __init__(self) -> None:
        self.running: list[Server] = []

    def start(self, command: list[str], folder: Path, env: dict[str, str], timeout: float = 60) -> Server:
        """Run ``command`` (ending in its port) from the repository's root; return once
        ``GET /api/`` answers 200."""
        folder.mkdir(parents=True, exist_ok=True)
        full_env = {key: value for key, value in os.environ.items() if not key.startswith("FLASK_RIVER_ML_")}
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))
        # gunicorn >= 25.1 opens a control socket in $XDG_RUNTIME_DIR: one folder per server.
        full_env["XDG_RUNTIME_DIR"] = str(folder)
        full_env.update(env)
        log = folder / "server.log"
        port = _port_of(command)
        with open(log, "wb") as output:
            process = subprocess.Popen(
                command, cwd=ROOT, env=full_env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = Server(f"http://127.0.0.1:{port}", process, log)
        self.running.append(server)
        wait_until_up(server, timeout)
        return server

    def stop(self, server: Server) -> None:
        """SIGTERM to the server's process group, SIGKILL after 30 s."""
        process = server.process
        if process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        if server in self.running:
            self.running.remove(server)

    def stop_all(self) -> None:
        for server in list(self.running):
            self.stop(server)

    @contextlib.contextmanager
    def serving(self, command: list[str], folder: Path, env: dict[str, str]) -> Iterator[Server]:
        server = self.start(command, folder, env)
        try:
            yield server
        finally:
            self.stop(server)


def extension_env(backend: str, folder: Path, redis: PrivateRedis | None) -> dict[str, str]:
    """The example app's settings for ``backend``: its store in ``folder``, or on ``redis``
    under a prefix named after ``folder``."""
    env = {"FLASK_RIVER_ML_STORAGE_BACKEND": backend, "FLASK_RIVER_ML_APP_DIR": str(folder / "instance")}
    if backend == "redis":
        if redis is None:
            raise BenchError("the redis backend needs a redis-server")
        env |= {"FLASK_RIVER_ML_REDIS_URL": redis.url, "FLASK_RIVER_ML_REDIS_PREFIX": f"{folder.name}:"}
    return env


def _port_of(command: list[str]) -> int:
    for flag, value in zip(command, command[1:], strict=False):
        if flag == "--port":
            return int(value)
        if flag == "--bind":
            return int(value.rsplit(":", 1)[1])
    raise ValueError(f"no port in {command}")


def wait_until_up(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(f"{server.url}'s server exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/api/", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise BenchError(f"{server.url} did not answer within {timeout} s:\n{server.log_tail()}")


def post(server: Server, path: str, body: bytes, content_type: str = "application/json") -> Any:
    """POST ``body``; the JSON answer, or :class:`BenchError` on any status but 2xx."""
    request = urllib.request.Request(
        server.url + path, data=body, method="POST", headers={"Content-Type": content_type}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise BenchError(f"POST {path} answered {error.code}: {error.read()[:500]!r}") from None


def upload(server: Server, blob: bytes, name: str) -> None:
    """Upload ``dill.dumps(model)`` as a binary model called ``name``, as riverapi does."""
    answer = post(server, f"/api/model/binary/{name}/", blob, "application/octet-stream")
    if answer.get("name") != name:
        raise BenchError(f"Uploading {name} answered {answer!r}")


# --- a private redis -----------------------------------------------------------------------------


class PrivateRedis:
    """``redis-server`` on a free port of its own, without persistence, for one benchmark: the
    machine's own redis (if any) is never touched."""

    def __init__(self, folder: Path, binary: str | None = None) -> None:
        found = binary or shutil.which("redis-server")
        if found is None:
            raise BenchError("redis-server is not installed (Debian: apt-get install redis-server)")
        self.binary = found
        self.folder = folder
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen | None = None

    def version(self) -> str:
        done = subprocess.run([self.binary, "--version"], capture_output=True, text=True)
        for word in done.stdout.split():
            if word.startswith("v="):
                return word[2:]
        return done.stdout.strip() or "unknown"

    def __enter__(self) -> PrivateRedis:
        self.folder.mkdir(parents=True, exist_ok=True)
        command = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        command += ["--dir", str(self.folder), "--logfile", str(self.folder / "redis.log")]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.command(b"PING").startswith(b"+PONG"):
                    return self
            time.sleep(0.05)
        self.__exit__()
        raise BenchError(f"redis-server did not answer on port {self.port} within 10 s")

    def command(self, line: bytes) -> bytes:
        """One inline command, its raw reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as connection:
            connection.sendall(line + b"\r\n")
            return connection.recv(256)

    def flush(self) -> None:
        if not self.command(b"FLUSHALL").startswith(b"+OK"):
            raise BenchError("redis-server refused FLUSHALL")

    def cpu(self) -> float:
        return process_cpu(self.process.pid) if self.process else 0.0

    def __exit__(self, *exc: object) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.process = None


@contextlib.contextmanager
def workspace(
    prefix: str, redis: bool, redis_binary: str | None = None
) -> Iterator[tuple[Path, Servers, PrivateRedis | None]]:
    """A scratch folder, the list of servers started in it, and a private redis if asked;
    every server and redis stopped and the folder removed at the end, whatever happens."""
    servers = Servers()
    with tempfile.TemporaryDirectory(prefix=prefix) as folder, contextlib.ExitStack() as stack:
        scratch = Path(folder)
        private = stack.enter_context(PrivateRedis(scratch / "redis", redis_binary)) if redis else None
        try:
            yield scratch, servers, private
        finally:
            servers.stop_all()
