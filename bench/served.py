"""Requests per second of flask-river-ml's learn and predict served by gunicorn, loaded by wrk.

For each storage backend and worker count, the example app (``examples.app:app``) is started
under gunicorn with sync workers on a free port, from the repository's root::

    <venv>/bin/gunicorn --bind 127.0.0.1:<port> --workers N examples.app:app

with its settings from the environment (``FLASK_RIVER_ML_STORAGE_BACKEND``, ``..._REDIS_URL``,
a unique ``..._REDIS_PREFIX`` deleted at the end, ``..._APP_DIR`` in a temporary folder). Two
models are uploaded as ``binary`` models over HTTP (``dill.dumps(model)``, as riverapi does):

* small: ``preprocessing.StandardScaler() | linear_model.LogisticRegression()``;
* forest: ``forest.ARFClassifier(n_models=5, seed=1)`` trained here on Phishing samples
  0..600 (about 1.6 MB pickled).

Each model is then loaded by ``wrk -t2 -c8 -d5s -s bench/post.lua`` with POST /api/learn/
(``{model, features, ground_truth}``), then POST /api/predict/ (``{model, features}``),
rotating through Phishing samples 600..1250; every answer must be 201, or the script fails.
A short warm-up run with the same command precedes each measured run.

In the same run, django-river-ml 0.0.21 (``bench/django_app.py``, its default shelve store,
one sync worker) serves the same two models under the same load: the server this project
replaces, against which the table gives each configuration's ratio. It runs in its own virtual
environment, built on first use in
``bench/.django-venv`` (``--django-venv``) with pip from the package index.

A bare Flask app (``bench/bare_app.py``: ``predict_proba_one`` then
``learn_one`` on a model held in memory) is served by gunicorn with one sync worker and loaded
with the same command and the same bodies: the ceiling of a Python WSGI stack on the machine.

The machine must be otherwise idle: during each measured run the script also reads the CPU
time of the server's processes, of wrk and of redis-server, and of the whole machine (Linux
/proc). A run during which more than ``--quiet-cores`` cores were busy with anything else is
run again (``--retries`` times at most); the table shows the server's CPU time per request
and what ran elsewhere, and marks runs that never were quiet.

Every server is stopped and the redis prefix deleted at the end, also on failure.

    .venv/bin/python bench/served.py [--duration 5] [--workers 1 2 4] [--models small forest]
                                     [--no-shelve] [--no-django] [--no-bare]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import dill
import redis
import river
from models import MODEL_DESCRIPTIONS, MODELS, TRAIN_SAMPLES
from river import datasets

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
LUA = HERE / "post.lua"
APP = "examples.app:app"
BARE_APP = "bench.bare_app:app"
DJANGO_APP = "bench.django_app:application"
#: What bench/django_app.py needs: 0.0.21 imports ``ratelimit``, renamed in django-ratelimit 4.
DJANGO_REQUIREMENTS = ("django-river-ml==0.0.21", "django-ratelimit<4", "pyjwt", "gunicorn")
#: The targets: the extension's req/s at least these multiples of django-river-ml's.
DJANGO_TARGETS = {("small", "learn"): 2, ("small", "predict"): 2, ("forest", "learn"): 50, ("forest", "predict"): 20}
#: The target: small-model learns through the extension at least this share of bare Flask's.
BARE_TARGET = 0.6
#: Every answer the benchmark accepts: learn and predict (with its generated identifier).
EXPECTED_STATUS = 201


class BenchError(RuntimeError):
    """A measurement that must not be reported: the script exits non-zero with this message."""




@dataclass(frozen=True)
class Measurement:
    rate: float
    latency_ms: float
    requests: int
    #: CPU time of the server's processes (gunicorn's master and workers) per request, in µs.
    server_cpu_us: float | None
    #: CPU used by everything else on the machine during the run (not the server, wrk or
    #: redis-server), in cores: another load that makes the numbers unreliable.
    elsewhere: float | None
    attempts: int


@dataclass(frozen=True)
class Row:
    backend: str
    workers: int
    model: str
    operation: str
    result: Measurement


# --- servers -------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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


class Servers:
    """Every gunicorn started, so that all of them are stopped whatever happens."""

    def __init__(self, gunicorn: Path) -> None:
        self.gunicorn = gunicorn
        self.running: list[Server] = []

    @contextlib.contextmanager
    def serve(
        self, app: str, workers: int, folder: Path, env: dict[str, str], gunicorn: Path | None = None
    ) -> Iterator[Server]:
        """``app`` under ``gunicorn`` (this environment's unless given) until the block ends."""
        port = free_port()
        log = folder / "gunicorn.log"
        program = str(gunicorn or self.gunicorn)
        command = [program, "--bind", f"127.0.0.1:{port}", "--workers", str(workers), app]
        full_env = {key: value for key, value in os.environ.items() if not key.startswith("FLASK_RIVER_ML_")}
        # gunicorn >= 25.1 opens a control socket in $XDG_RUNTIME_DIR: one per server.
        full_env["XDG_RUNTIME_DIR"] = str(folder)
        full_env.update(env)
        with open(log, "wb") as output:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=full_env,
                stdout=output,
                stderr=subprocess.STDOUT,
                # Its own session: a Ctrl-C reaches this script, which stops it in order.
                start_new_session=True,
            )
        server = Server(f"http://127.0.0.1:{port}", process, log)
        self.running.append(server)
        try:
            wait_until_up(server, timeout=60)
            yield server
        finally:
            self.stop(server)

    def stop(self, server: Server) -> None:
        process = server.process
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if server in self.running:
            self.running.remove(server)

    def stop_all(self) -> None:
        for server in list(self.running):
            self.stop(server)


def wait_until_up(server: Server, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise BenchError(f"gunicorn exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            with urllib.request.urlopen(f"{server.url}/api/", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise BenchError(f"{server.url} did not answer within {timeout} s:\n{server.log_tail()}")


def upload(server: Server, blob: bytes, name: str) -> None:
    request = urllib.request.Request(
        f"{server.url}/api/model/binary/{name}/",
        data=blob,
        method="POST",
        headers={"Content-Type": "application/octet-stream"},
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise BenchError(f"Uploading {name} answered {error.code}: {error.read()[:500]!r}") from None
    if answer.get("name") != name:
        raise BenchError(f"Uploading {name} answered {answer!r}")


# --- CPU accounting (Linux /proc; None elsewhere) ------------------------------------------------


def _process_cpu(pid: int) -> float:
    """User + system seconds of one process (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def _machine_busy() -> float | None:
    """Busy seconds of all CPUs together since boot."""
    try:
        values = [int(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except (OSError, ValueError):
        return None
    # user nice system idle iowait irq softirq steal: busy is all but idle and iowait.
    return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class CpuSample:
    machine: float | None
    server: float
    children: float
    redis: float


def cpu_sample(server: Server, redis_pid: int | None) -> CpuSample:
    pids = [server.process.pid, *_children(server.process.pid)]
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once it has been waited for
    return CpuSample(
        _machine_busy(),
        sum(_process_cpu(pid) for pid in pids),
        usage.ru_utime + usage.ru_stime,
        _process_cpu(redis_pid) if redis_pid else 0.0,
    )


# --- load ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    wrk: str
    threads: int
    connections: int
    duration: float
    warmup: float
    retries: int
    #: A run during which more than this many cores were busy elsewhere is run again.
    quiet: float
    redis_pid: int | None

    def command(self, url: str, bodies: Path, seconds: float) -> list[str]:
        return [
            self.wrk,
            f"-t{self.threads}",
            f"-c{self.connections}",
            f"-d{max(1, round(seconds))}s",
            "-s",
            str(LUA),
            url,
            "--",
            str(bodies),
            str(EXPECTED_STATUS),
        ]

    def shown(self) -> str:
        return f"wrk -t{self.threads} -c{self.connections} -d{max(1, round(self.duration))}s -s bench/post.lua"

    def run(self, server: Server, path: str, bodies: Path, seconds: float) -> dict[str, Any]:
        """wrk's totals; :class:`BenchError` on any answer other than 201 or any socket error."""
        url = server.url + path
        done = subprocess.run(self.command(url, bodies, seconds), capture_output=True, text=True, timeout=seconds + 60)
        output = done.stdout + done.stderr
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode != 0 or not lines:
            raise BenchError(f"wrk failed on {url} (exit {done.returncode}):\n{output}")
        result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
        errors = {kind: count for kind, count in result["errors"].items() if count}
        if result["unexpected_status"] or "Non-2xx" in output or errors:
            raise BenchError(
                f"wrk on {url} got {result['unexpected_status']} answers other than {EXPECTED_STATUS}"
                f" and socket errors {errors}; first: {result['first_unexpected']!r}\n{output}\n"
                f"server log:\n{server.log_tail()}"
            )
        if result["requests"] == 0:
            raise BenchError(f"wrk on {url} completed no request:\n{output}\nserver log:\n{server.log_tail()}")
        return result

    def measure(self, server: Server, path: str, bodies: Path, redis_used: bool = True) -> Measurement:
        """One measured run after a warm-up; run again (up to ``retries`` times) while the
        machine was busy with something else, keeping the quietest run."""
        if self.warmup > 0:
            self.run(server, path, bodies, self.warmup)
        best: Measurement | None = None
        for attempt in range(1, self.retries + 2):
            before = cpu_sample(server, self.redis_pid)
            result = self.run(server, path, bodies, self.duration)
            after = cpu_sample(server, self.redis_pid)
            seconds = result["duration_us"] / 1e6
            elsewhere = None
            if before.machine is not None and after.machine is not None:
                ours = after.server - before.server + after.children - before.children
                if redis_used:
                    ours += after.redis - before.redis
                elsewhere = max(0.0, (after.machine - before.machine - ours) / seconds)
            measurement = Measurement(
                rate=result["requests"] / seconds,
                latency_ms=result["latency_mean_us"] / 1000,
                requests=result["requests"],
                server_cpu_us=(after.server - before.server) / result["requests"] * 1e6,
                elsewhere=elsewhere,
                attempts=attempt,
            )
            if best is None or (measurement.elsewhere or 0.0) < (best.elsewhere or 0.0):
                best = measurement
            if elsewhere is None or elsewhere <= self.quiet:
                break
            print(
                f"  {server.url}{path}: {elsewhere:.2f} cores busy elsewhere during the run; measuring again",
                file=sys.stderr,
            )
        assert best is not None
        return Measurement(**{**best.__dict__, "attempts": attempt})


def django_gunicorn(venv: Path) -> Path:
    """gunicorn of the virtual environment that serves django-river-ml, built on first use."""
    gunicorn = venv / "bin" / "gunicorn"
    if not gunicorn.exists():
        print(f"Installing {', '.join(DJANGO_REQUIREMENTS)} into {venv}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        install = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", *DJANGO_REQUIREMENTS]
        if subprocess.run(install).returncode != 0 or not gunicorn.exists():
            raise BenchError(f"Could not install django-river-ml into {venv}; remove it and try again")
    return gunicorn


def write_bodies(path: Path, samples: list, model: str | None, learn: bool) -> Path:
    with open(path, "w") as handle:
        for x, y in samples:
            body: dict[str, Any] = {"features": x}
            if model is not None:
                body = {"model": model, **body}
            if learn:
                body["ground_truth"] = y
            handle.write(json.dumps(body) + "\n")
    return path


# --- the machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def memory_gb() -> str:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return f"{int(line.split()[1]) / 1024 / 1024:.0f} GB RAM"
    return "unknown RAM"


def local_redis_pid(info: dict[str, Any]) -> int | None:
    """redis-server's process id when it runs on this machine (its CPU is then accounted for)."""
    pid = info.get("process_id")
    with contextlib.suppress(OSError):
        if pid and "redis" in Path(f"/proc/{pid}/comm").read_text():
            return int(pid)
    return None


def load_average() -> str:
    try:
        return " ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        return "unknown"


def wrk_version(wrk: str) -> str:
    done = subprocess.run([wrk, "--version"], capture_output=True, text=True)
    first = (done.stdout + done.stderr).strip().splitlines()
    return first[0].split(" Copyright")[0] if first else "wrk"


def delete_prefix(client: redis.Redis, prefix: str) -> int:
    deleted = 0
    batch: list[bytes] = []
    for key in client.scan_iter(match=prefix.replace("*", r"\*").replace("?", r"\?") + "*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += int(client.delete(*batch))
            batch = []
    if batch:
        deleted += int(client.delete(*batch))
    return deleted


# --- main ----------------------------------------------------------------------------------------


def _terminate(signum: int, _frame: Any) -> None:
    # SIGTERM unwinds like Ctrl-C, so the finally blocks stop the servers and clean redis.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--duration", type=float, default=5, help="seconds of each measured wrk run (default 5)")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of the warm-up before each run (0: none)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=8, help="wrk connections (default 8)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4], help="redis worker counts (1 2 4)")
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS), help="models to run")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0", help="the redis server to use")
    parser.add_argument("--no-shelve", action="store_true", help="skip the shelve reference (1 worker)")
    parser.add_argument("--no-bare", action="store_true", help="skip the bare Flask baseline")
    parser.add_argument("--no-django", action="store_true", help="skip django-river-ml (1 worker)")
    default_django = HERE / ".django-venv"
    parser.add_argument(
        "--django-venv", type=Path, default=default_django, help=f"django-river-ml's environment ({default_django})"
    )
    parser.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk", help="the wrk program")
    parser.add_argument(
        "--quiet-cores",
        type=float,
        default=0.25,
        help="run a measurement again when more than this many cores were busy elsewhere (default 0.25)",
    )
    parser.add_argument("--retries", type=int, default=2, help="how many times at most (default 2)")
    default_gunicorn = Path(sys.prefix) / "bin" / "gunicorn"
    parser.add_argument("--gunicorn", type=Path, default=default_gunicorn, help=f"(default {default_gunicorn})")
    args = parser.parse_args(argv)
    if args.duration < 1 or args.threads < 1 or args.connections < args.threads or min(args.workers) < 1:
        parser.error("--duration must be at least 1 s, --connections at least --threads, workers at least 1")
    if args.retries < 0:
        parser.error("--retries must be at least 0")
    if not os.access(args.wrk, os.X_OK):
        parser.error(f"wrk not found at {args.wrk}")
    if not args.gunicorn.exists():
        parser.error(f"gunicorn not found at {args.gunicorn}")

    signal.signal(signal.SIGTERM, _terminate)
    client = redis.Redis.from_url(args.redis_url)
    try:
        info = client.info("server")
    except redis.RedisError as error:
        print(f"redis at {args.redis_url} does not answer: {error}", file=sys.stderr)
        return 1
    redis_version = info["redis_version"]
    load = Load(
        args.wrk,
        args.threads,
        args.connections,
        args.duration,
        args.warmup,
        args.retries,
        args.quiet_cores,
        local_redis_pid(info),
    )
    prefix = f"river_ml_bench:{uuid.uuid4().hex[:12]}:"
    servers = Servers(args.gunicorn)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="river-ml-http-bench-") as scratch:
            rows, bare = run(args, load, servers, Path(scratch), prefix, redis_version)
    except BenchError as error:
        print(f"bench/served.py FAILED: {error}", file=sys.stderr)
        return 1
    finally:
        servers.stop_all()
        with contextlib.suppress(redis.RedisError):
            delete_prefix(client, prefix)
        client.close()
    report(rows, bare, load, time.perf_counter() - started)
    return 0


def run(
    args: argparse.Namespace, load: Load, servers: Servers, scratch: Path, prefix: str, redis_version: str
) -> tuple[list[Row], float | None]:
    data = list(datasets.Phishing())
    train, pool = data[:TRAIN_SAMPLES], data[TRAIN_SAMPLES:]
    blobs = {label: dill.dumps(MODELS[label](train)) for label in args.models}

    print("# flask-river-ml over HTTP: gunicorn sync workers, loaded by wrk\n")
    print(f"- {cpu_model()}, {os.cpu_count()} CPUs, {memory_gb()}, {platform.system()} {platform.release()}")
    print(
        f"- Python {platform.python_version()}, river {river.__version__}, Flask {version('flask')}, "
        f"gunicorn {version('gunicorn')}, redis-py {version('redis')}, redis server {redis_version}, "
        f"{wrk_version(args.wrk)}"
    )
    print(f"- load average (1, 5, 15 min) before the run: {load_average()}")
    print(
        f"- client: `{load.shown()}` on the same machine, after a {args.warmup:g} s warm-up; POST bodies rotate "
        f"through Phishing samples {TRAIN_SAMPLES}..{len(data)}"
    )
    for label, blob in blobs.items():
        size = f"{len(blob) / 1e6:.2f} MB" if len(blob) >= 100_000 else f"{len(blob):,} bytes"
        print(f"- {label}: {MODEL_DESCRIPTIONS[label]}, uploaded as a {size} dill pickle")
    print()
    sys.stdout.flush()

    configs = [("redis", workers) for workers in args.workers]
    if not args.no_shelve:
        configs.append(("shelve", 1))
    rows: list[Row] = []
    for number, (backend, workers) in enumerate(configs):
        folder = scratch / f"{number}-{backend}-{workers}"
        folder.mkdir()
        env = {
            "FLASK_RIVER_ML_STORAGE_BACKEND": backend,
            "FLASK_RIVER_ML_APP_DIR": str(folder / "instance"),
            "FLASK_RIVER_ML_REDIS_URL": args.redis_url,
            "FLASK_RIVER_ML_REDIS_PREFIX": prefix,
        }
        with servers.serve(APP, workers, folder, env) as server:
            rows += measure_models(load, server, blobs, pool, folder, backend, workers)

    if not args.no_django:
        gunicorn = django_gunicorn(args.django_venv)
        folder = scratch / "django"
        store = folder / "store"
        store.mkdir(parents=True)
        with servers.serve(DJANGO_APP, 1, folder, {"DJANGO_RIVER_ML_APP_DIR": str(store)}, gunicorn) as server:
            rows += measure_models(load, server, blobs, pool, folder, "django-river-ml", 1)

    bare = None
    if not args.no_bare:
        folder = scratch / "bare"
        folder.mkdir()
        bodies = write_bodies(folder / "learn.jsonl", pool, "bare", learn=True)
        with servers.serve(BARE_APP, 1, folder, {}) as server:
            result = load.measure(server, "/api/learn/", bodies, redis_used=False)
        rows.append(Row("bare Flask", 1, "small", "predict_proba_one + learn_one", result))
        bare = result.rate
    return rows, bare


def measure_models(
    load: Load, server: Server, blobs: dict[str, bytes], pool: list, folder: Path, backend: str, workers: int
) -> list[Row]:
    """Upload each model to ``server`` (a fresh one per server: every configuration starts from
    the same state), then load its learn and predict."""
    rows = []
    for label, blob in blobs.items():
        name = f"bench-{label}-{folder.name}"
        upload(server, blob, name)
        for operation in ("learn", "predict"):
            bodies = write_bodies(folder / f"{name}-{operation}.jsonl", pool, name, operation == "learn")
            result = load.measure(server, f"/api/{operation}/", bodies, redis_used=backend == "redis")
            rows.append(Row(backend, workers, label, operation, result))
    return rows


def report(rows: list[Row], bare: float | None, load: Load, elapsed: float) -> None:
    print("| backend | workers | model | operation | req/s | mean latency (ms) | server CPU µs/req | busy elsewhere |")
    print("|---|---:|---|---|---:|---:|---:|---:|")
    for row in rows:
        result = row.result
        cpu = "n/a" if result.server_cpu_us is None else f"{result.server_cpu_us:,.0f}"
        elsewhere = "n/a" if result.elsewhere is None else f"{result.elsewhere:.2f}"
        if result.elsewhere is not None and result.elsewhere > load.quiet:
            elsewhere += " (!)"
        print(
            f"| {row.backend} | {row.workers} | {row.model} | {row.operation} "
            f"| {result.rate:,.0f} | {result.latency_ms:.2f} | {cpu} | {elsewhere} |"
        )
    print()
    print(
        f"req/s = completed requests / wrk's run time. Mean latency = wrk's mean over its {load.connections} "
        "connections (a sync worker answers one request at a time, so it includes queueing). Server CPU = "
        "user+system time of gunicorn's master and workers per request. Busy elsewhere = cores used during "
        "the run by anything but the server, wrk and redis-server"
        f"; a run with more than {load.quiet:g} was measured again (up to {load.retries} times) and the "
        "quietest kept; (!) marks one that never was quiet."
    )
    disturbed = [row for row in rows if row.result.elsewhere is not None and row.result.elsewhere > load.quiet]
    if disturbed:
        print(f"\n**{len(disturbed)} measurement(s) ran while the machine was busy elsewhere: compare with care.**")
    if bare:
        print()
        for backend in ("redis", "shelve"):
            for row in rows:
                if (row.backend, row.workers, row.model, row.operation) == (backend, 1, "small", "learn"):
                    ratio = row.result.rate / bare
                    verdict = "meets" if ratio >= BARE_TARGET else "MISSES"
                    print(
                        f"- small-model learn through the extension ({backend}, 1 worker) / bare Flask "
                        f"(1 worker): {row.result.rate:,.0f} / {bare:,.0f} = **{ratio:.2f}** "
                        f"({verdict} the {BARE_TARGET} target)"
                    )
    django = {(row.model, row.operation): row.result.rate for row in rows if row.backend == "django-river-ml"}
    if django:
        print()
    for row in rows:
        theirs = django.get((row.model, row.operation))
        if row.workers == 1 and row.backend in ("redis", "shelve") and theirs:
            target = DJANGO_TARGETS[(row.model, row.operation)]
            ratio = row.result.rate / theirs
            verdict = "meets" if ratio >= target else "MISSES"
            print(
                f"- {row.model} {row.operation} ({row.backend}, 1 worker) / django-river-ml (1 worker): "
                f"{row.result.rate:,.0f} / {theirs:,.1f} = **{ratio:,.1f}x** ({verdict} the {target}x target)"
            )
    print(f"\nLoad average (1, 5, 15 min) after the run: {load_average()}. Total time: {elapsed:.0f} s.")


if __name__ == "__main__":
    sys.exit(main())
