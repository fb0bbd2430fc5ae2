"""Processes the HTTP benchmarks start and watch: WSGI servers, a private redis, /proc readings,
and the machine and versions their reports name.

Every server runs from the repository's root with the root first on ``PYTHONPATH``, so it
serves this checkout's flask-river-ml (and ``bench`` is a namespace package). Each is started
in a session of its own and stopped through its process group, whatever happens to the
benchmark; :class:`Servers` keeps the list.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
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


def server_command(kind: str, program: Path, port: int, workers: int, app: str, threads: int = 1) -> list[str]:
    """The command serving ``app`` on ``port`` with ``workers`` processes of ``threads`` Python
    threads each answering requests: gunicorn's sync workers (its threaded workers for more
    than one), or granian in WSGI mode with that many blocking threads per worker."""
    if kind == "gunicorn":
        command = [str(program), "--bind", f"127.0.0.1:{port}", "--workers", str(workers)]
        return [*command, *(("--threads", str(threads)) if threads > 1 else ()), app]
    if kind == "granian":
        return [
            *(str(program), "--interface", "wsgi", "--host", "127.0.0.1", "--port", str(port)),
            *("--workers", str(workers), "--blocking-threads", str(threads), "--http", "1", "--no-ws", app),
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


# --- the machine and the versions ----------------------------------------------------------------


def machine() -> dict[str, Any]:
    """CPU model, cores, RAM and kernel."""
    cpu, memory = platform.processor() or "unknown CPU", None
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = round(int(line.split()[1]) / 1024 / 1024, 1)
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": memory,
        "kernel": f"{platform.system()} {platform.release()} ({platform.machine()})",
    }


def machine_line(found: dict[str, Any]) -> str:
    """The machine as a report's line, with the load average now."""
    return (
        f"- Machine: {found['cpu']}, {found['cores']} cores, {found['memory_gib']} GiB RAM, "
        f"{found['kernel']}; load average before the run {load_average()}"
    )


def load_average() -> str:
    return " ".join(f"{value:.2f}" for value in os.getloadavg())


def package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def first_line(command: list[str]) -> str:
    """The first line a command prints (stdout, then stderr), or "" if it cannot run."""
    with contextlib.suppress(OSError):
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        text = (done.stdout + done.stderr).strip()
        return text.splitlines()[0] if text else ""
    return ""


def git_commit() -> str:
    commit = first_line(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"]) or "unknown"
    if first_line(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"]):
        commit += " with uncommitted changes"
    return commit


def versions(redis: PrivateRedis | None, tools: dict[str, str] | None = None) -> dict[str, str]:
    """The versions of the served stack, then ``tools`` (the load's programs), then this
    checkout's commit."""
    return {
        "Python": platform.python_version(),
        "river": package_version("river"),
        "Flask": package_version("flask"),
        "gunicorn": package_version("gunicorn"),
        "granian": package_version("granian"),
        "redis-server": redis.version() if redis else "not used",
        "redis-py": package_version("redis"),
        "SQLite": sqlite3.sqlite_version,
        **(tools or {}),
        "flask-river-ml": git_commit(),
    }


# --- reporting -----------------------------------------------------------------------------------


def rate_text(value: float) -> str:
    """A rate as the tables show it: whole numbers from 100 up, one decimal below."""
    return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"


def tail_lines(noisy: int, measured: int, started: float) -> list[str]:
    """The report's last lines: a warning if ``noisy`` of the ``measured`` runs had the machine
    busy elsewhere, the load average and the time since ``started`` (``time.perf_counter``)."""
    lines = []
    if noisy:
        lines.append(f"\n**{noisy} of {measured} runs had the machine busy elsewhere: compare with care.**")
    elapsed = time.perf_counter() - started
    lines.append(f"\nLoad average after the run: {load_average()}. Total time: {elapsed:.0f} s.")
    return lines


# --- the scripts' frame --------------------------------------------------------------------------


def add_options(parser: argparse.ArgumentParser) -> None:
    """The options every HTTP benchmark takes: the redis-server program, the seed of its
    shuffled orders, the threshold of a noisy run, the JSON file."""
    parser.add_argument("--redis-server", default=shutil.which("redis-server"), help="the redis-server program")
    parser.add_argument("--seed", type=int, help="seed of the shuffled orders (default: a random one, printed)")
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.25,
        help="mark runs during which more than this many cores were busy elsewhere (default 0.25)",
    )
    parser.add_argument("--json", type=Path, help="also write every run and the summary to this file")


def check_options(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every WSGI server asked for installed beside this Python; a seed drawn if none was given."""
    for server in args.servers:
        if not (Path(sys.prefix) / "bin" / server).exists():
            parser.error(
                f"{server} is not installed in {sys.prefix} (pip install {server}); or leave it out of --servers"
            )
    args.seed = random.randrange(2**32) if args.seed is None else args.seed


def options_json(args: argparse.Namespace) -> dict[str, Any]:
    return {key: str(value) if isinstance(value, Path) else value for key, value in vars(args).items()}


def bench_main(
    script: str, args: argparse.Namespace, run: Callable[[Path, Servers, PrivateRedis | None], dict[str, Any]]
) -> int:
    """Run ``run(scratch, servers, redis)`` in a workspace (with a private redis if a backend
    is redis), SIGTERM unwinding like Ctrl-C; its result to ``--json``. 1 on a BenchError."""

    def terminate(signum: int, _frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    space = workspace(f"river-ml-{Path(script).stem}-bench-", "redis" in args.backends, args.redis_server)
    try:
        with space as (scratch, servers, redis):
            result = run(scratch, servers, redis)
    except BenchError as error:
        print(f"{script} FAILED: {error}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0
