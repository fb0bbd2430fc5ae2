"""flask-river-ml's learn and predict over HTTP, paired round by round with a ceiling.

Configurations, each on every WSGI server chosen (``--servers``: gunicorn sync workers, and
granian in WSGI mode with one blocking thread per worker), all with ``--workers`` processes
(and ``--server-threads`` threads answering requests in each: gunicorn's threaded workers,
granian's blocking threads):

* ceiling: ``bench/bare_app.py``, the same river work on the same models in memory, the
  same bodies and answers, nothing else;
* shelve and redis: the example app (``examples.app:app``) on that store; redis is a private
  ``redis-server`` this script starts on a free port and stops at the end;
* django-river-ml 0.0.21 (``bench/django_app.py``, on gunicorn, in its own virtual environment
  built on first use in ``bench/.django-venv``), for reference.

Both models (``bench/models.py``) are trained on Phishing samples 0..600, pickled once with
dill, uploaded to every server as ``binary`` models and loaded from the same bytes by the
ceiling. The workloads are, per model, POST /api/predict/ then POST /api/learn/, with bodies
rotating through Phishing samples 600..1250 (``bench/post.lua``); every answer must be a 2xx,
or the run fails.

Each round starts every configuration afresh (new stores, models uploaded again), then runs,
workload by workload, every configuration once in a shuffled order: a warm-up, then one
measured ``wrk`` run, during which the CPU time of the server's processes, of wrk, of
redis-server and of the whole machine is read from /proc. A configuration's ratio in a round is
its req/s divided by that of the ceiling on the same WSGI server, same workload, same round;
the table gives the minimum and median of those paired ratios over the rounds, so that a
machine whose speed drifts moves both sides of each ratio alike.

    .venv/bin/python bench/served.py [--rounds 3] [--duration 5] [--workers 1] [--server-threads 1]
        [--servers gunicorn granian] [--backends shelve redis] [--models small forest]
        [--no-django] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dill
from models import MODEL_DESCRIPTIONS, MODELS, TRAIN_SAMPLES, phishing
from servers import (
    CEILING_APP,
    DJANGO_APP,
    EXTENSION_APP,
    HERE,
    WSGI_SERVERS,
    BenchError,
    PrivateRedis,
    Server,
    Servers,
    add_options,
    bench_main,
    check_options,
    extension_env,
    first_line,
    free_port,
    machine,
    machine_busy,
    machine_line,
    options_json,
    rate_text,
    server_command,
    tail_lines,
    upload,
    versions,
)

LUA = HERE / "post.lua"
BACKENDS = ("shelve", "redis")
CEILING = "ceiling"
DJANGO = "django-river-ml"
#: What bench/django_app.py needs: 0.0.21 imports ``ratelimit``, renamed in django-ratelimit 4.
DJANGO_REQUIREMENTS = ("django-river-ml==0.0.21", "django-ratelimit<4", "pyjwt", "gunicorn")
#: The project's targets: the small model's req/s at these shares of the ceiling's on the same
#: server at least, by (store, server, operation), and the extension's req/s at these multiples
#: of django-river-ml's.
CEILING_TARGETS = {
    ("shelve", "gunicorn", "learn"): 0.75,
    ("shelve", "gunicorn", "predict"): 0.85,
    ("redis", "gunicorn", "learn"): 0.65,
    ("redis", "gunicorn", "predict"): 0.75,
    ("shelve", "granian", "learn"): 0.6,
    ("shelve", "granian", "predict"): 0.6,
}
DJANGO_TARGETS = {("small", "learn"): 2, ("small", "predict"): 2, ("forest", "learn"): 50, ("forest", "predict"): 20}
#: How each WSGI server runs, as the report tells it.
SERVER_NOTES = {
    "gunicorn": "gunicorn's sync workers (`--threads N`: its threaded workers)",
    "granian": "granian `--interface wsgi --blocking-threads N --http 1`",
}
#: wrk's timeout per request: far above django-river-ml's slowest forest learn.
WRK_TIMEOUT = "30s"


@dataclass(frozen=True)
class Config:
    """What serves: ``app`` (the ceiling, a backend of the extension, or django-river-ml) on
    ``server``."""

    app: str
    server: str

    @property
    def name(self) -> str:
        return f"{self.app}, {self.server}"


@dataclass(frozen=True)
class Workload:
    """One kind of request: ``operation`` on the model ``model``, with the same bodies for
    every configuration."""

    model: str
    operation: str

    @property
    def path(self) -> str:
        return f"/api/{self.operation}/"

    @property
    def model_name(self) -> str:
        return f"bench-{self.model}"


@dataclass(frozen=True)
class Measurement:
    """One measured wrk run; CPU figures in cores (CPU seconds per second of the run)."""

    round: int
    configuration: str
    model: str
    operation: str
    requests: int
    seconds: float
    rate: float
    latency_p50_ms: float
    latency_p99_ms: float
    #: User + system time of the server's processes per request.
    server_cpu_us: float
    wrk_cores: float
    redis_cores: float
    machine_cores: float
    #: What ran besides the server, wrk and redis-server: another load on the machine.
    elsewhere_cores: float


# --- load ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    wrk: str
    threads: int
    connections: int
    duration: int
    warmup: int
    scratch: Path

    def command(self, url: str, bodies: Path, seconds: int) -> list[str]:
        options = [f"-t{self.threads}", f"-c{self.connections}", f"-d{seconds}s", "--timeout", WRK_TIMEOUT]
        return [self.wrk, *options, "-s", str(LUA), url, "--", str(bodies)]

    def shown(self) -> str:
        return f"wrk -t{self.threads} -c{self.connections} -d{self.duration}s -s bench/post.lua"

    def run(self, server: Server, path: str, bodies: Path, seconds: int) -> tuple[dict[str, Any], float]:
        """wrk's totals and its own CPU seconds; :class:`BenchError` on any answer that is not
        a 2xx, any socket error, or no request at all."""
        url = server.url + path
        with tempfile.TemporaryFile("w+", dir=self.scratch) as output:
            process = subprocess.Popen(self.command(url, bodies, seconds), stdout=output, stderr=subprocess.STDOUT)
            try:
                _, status, usage = os.wait4(process.pid, 0)
            except BaseException:
                process.kill()
                process.wait()
                raise
            process.returncode = os.waitstatus_to_exitcode(status)
            output.seek(0)
            text = output.read()
        lines = [line for line in text.splitlines() if line.startswith("RESULT ")]
        if process.returncode != 0 or not lines:
            raise BenchError(f"wrk failed on {url} (exit {process.returncode}):\n{text}")
        result: dict[str, Any] = json.loads(lines[-1][len("RESULT ") :])
        errors = {kind: count for kind, count in result["errors"].items() if count}
        if result["unexpected_status"] or errors:
            raise BenchError(
                f"wrk on {url} got {result['unexpected_status']} answers that are not 2xx and socket errors "
                f"{errors}; first: {result['first_unexpected']!r}\n{text}\nserver log:\n{server.log_tail()}"
            )
        if result["requests"] == 0:
            raise BenchError(f"wrk on {url} completed no request:\n{text}\nserver log:\n{server.log_tail()}")
        return result, usage.ru_utime + usage.ru_stime

    def measure(
        self, number: int, config: Config, workload: Workload, server: Server, bodies: Path, redis: PrivateRedis | None
    ) -> Measurement:
        if self.warmup:
            self.run(server, workload.path, bodies, self.warmup)
        machine, cpu, redis_cpu = machine_busy(), server.cpu(), redis.cpu() if redis else 0.0
        result, wrk_cpu = self.run(server, workload.path, bodies, self.duration)
        machine, cpu = machine_busy() - machine, server.cpu() - cpu
        redis_cpu = (redis.cpu() if redis else 0.0) - redis_cpu
        seconds = result["duration_us"] / 1e6
        return Measurement(
            round=number,
            configuration=config.name,
            model=workload.model,
            operation=workload.operation,
            requests=result["requests"],
            seconds=seconds,
            rate=result["requests"] / seconds,
            latency_p50_ms=result["latency_p50_us"] / 1000,
            latency_p99_ms=result["latency_p99_us"] / 1000,
            server_cpu_us=cpu / result["requests"] * 1e6,
            wrk_cores=wrk_cpu / seconds,
            redis_cores=redis_cpu / seconds,
            machine_cores=machine / seconds,
            elsewhere_cores=max(0.0, (machine - cpu - wrk_cpu - redis_cpu) / seconds),
        )


def write_bodies(path: Path, samples: list, workload: Workload) -> Path:
    """One JSON body a line, as riverapi sends them: ``{model, features[, ground_truth]}``."""
    with open(path, "w") as handle:
        for x, y in samples:
            body: dict[str, Any] = {"model": workload.model_name, "features": x}
            if workload.operation == "learn":
                body["ground_truth"] = y
            handle.write(json.dumps(body) + "\n")
    return path


# --- one round -----------------------------------------------------------------------------------


@dataclass
class Bench:
    """What every round shares: the load, the programs, the models and their bodies."""

    load: Load
    servers: Servers
    programs: dict[str, Path]
    django_gunicorn: Path | None
    workers: int
    threads: int
    blobs: dict[str, bytes]
    models_dir: Path
    bodies: dict[Workload, Path]
    redis: PrivateRedis | None
    quiet: float

    def start(self, config: Config, folder: Path) -> Server:
        """A fresh server of ``config``, its models uploaded."""
        port = free_port()
        if config.app == CEILING:
            command = server_command(
                config.server, self.programs[config.server], port, self.workers, CEILING_APP, self.threads
            )
            return self.servers.start(command, folder, {"BENCH_MODELS_DIR": str(self.models_dir)})
        if config.app == DJANGO:
            assert self.django_gunicorn is not None
            command = server_command("gunicorn", self.django_gunicorn, port, self.workers, DJANGO_APP, self.threads)
            env = {"DJANGO_RIVER_ML_APP_DIR": str(folder / "store")}
            (folder / "store").mkdir(parents=True)
        else:
            command = server_command(
                config.server, self.programs[config.server], port, self.workers, EXTENSION_APP, self.threads
            )
            env = extension_env(config.app, folder, self.redis)
        server = self.servers.start(command, folder, env)
        for label, blob in self.blobs.items():
            upload(server, blob, f"bench-{label}")
        return server

    def round(self, number: int, configs: list[Config], rng: random.Random, scratch: Path) -> list[Measurement]:
        """Every configuration started afresh, then each workload run on every configuration
        once, in a shuffled order."""
        measurements = []
        with self.started(configs, scratch / f"round-{number}") as running:
            for workload, bodies in self.bodies.items():
                order = list(configs)
                rng.shuffle(order)
                for config in order:
                    redis = self.redis if config.app == "redis" else None
                    found = self.load.measure(number, config, workload, running[config], bodies, redis)
                    if found.elsewhere_cores > self.quiet:
                        print(
                            f"  round {number}, {config.name}, {workload.model} {workload.operation}: "
                            f"{found.elsewhere_cores:.2f} cores busy elsewhere",
                            file=sys.stderr,
                        )
                    measurements.append(found)
        return measurements

    @contextlib.contextmanager
    def started(self, configs: list[Config], folder: Path) -> Iterator[dict[Config, Server]]:
        running: dict[Config, Server] = {}
        try:
            for config in configs:
                running[config] = self.start(config, folder / config.name.replace(", ", "-"))
            yield running
        finally:
            for server in running.values():
                self.servers.stop(server)
        if self.redis is not None:
            self.redis.flush()  # the next round starts from an empty store too


# --- summary -------------------------------------------------------------------------------------


def summarize(measurements: list[Measurement], configs: list[Config], workloads: list[Workload]) -> list[dict]:
    """Per workload and configuration: req/s median (min, max), the medians of the latencies
    and of the CPU per request, and the paired ratios to the ceiling (and to django-river-ml)."""
    found = {(m.round, m.configuration, m.model, m.operation): m for m in measurements}
    rounds = sorted({m.round for m in measurements})
    names = {config.name for config in configs}

    def paired(runs: list[Measurement], other: Config) -> list[float] | None:
        """The ratios of ``runs`` to the runs of ``other`` in the same rounds, if it ran."""
        if other.name not in names or other.name == runs[0].configuration:
            return None
        return [run.rate / found[run.round, other.name, run.model, run.operation].rate for run in runs]

    rows = []
    for workload in workloads:
        for config in configs:
            runs = [found[number, config.name, workload.model, workload.operation] for number in rounds]
            rates = [run.rate for run in runs]
            ceiling = paired(runs, Config(CEILING, "gunicorn" if config.app == DJANGO else config.server))
            django = None
            if config.app in BACKENDS and config.server == "gunicorn":
                django = paired(runs, Config(DJANGO, "gunicorn"))
            rows.append(
                {
                    "configuration": config.name,
                    "model": workload.model,
                    "operation": workload.operation,
                    "rounds": len(runs),
                    "rate_median": statistics.median(rates),
                    "rate_min": min(rates),
                    "rate_max": max(rates),
                    "latency_p50_ms": statistics.median(run.latency_p50_ms for run in runs),
                    "latency_p99_ms": statistics.median(run.latency_p99_ms for run in runs),
                    "server_cpu_us": statistics.median(run.server_cpu_us for run in runs),
                    "ceiling_ratio_min": min(ceiling) if ceiling else None,
                    "ceiling_ratio_median": statistics.median(ceiling) if ceiling else None,
                    "django_ratio_min": min(django) if django else None,
                    "django_ratio_median": statistics.median(django) if django else None,
                    "elsewhere_cores_max": max(run.elsewhere_cores for run in runs),
                }
            )
    return rows


def report(rows: list[dict], quiet: float) -> list[str]:
    """The table and the targets, as markdown lines."""
    lines = [
        "| model | operation | configuration | req/s median (min–max) | p50 ms | p99 ms | CPU µs/req "
        "| ratio to ceiling min / median | busy elsewhere (max) |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = "—"
        if row["ceiling_ratio_median"] is not None:
            ratio = f"{row['ceiling_ratio_min']:.2f} / {row['ceiling_ratio_median']:.2f}"
        elsewhere = f"{row['elsewhere_cores_max']:.2f}" + (" (!)" if row["elsewhere_cores_max"] > quiet else "")
        lines.append(
            f"| {row['model']} | {row['operation']} | {row['configuration']} "
            f"| {rate_text(row['rate_median'])} ({rate_text(row['rate_min'])}–{rate_text(row['rate_max'])}) "
            f"| {row['latency_p50_ms']:.2f} | {row['latency_p99_ms']:.2f} | {row['server_cpu_us']:,.0f} "
            f"| {ratio} | {elsewhere} |"
        )
    targets = []
    for row in rows:
        app, server = row["configuration"].split(", ")
        target = CEILING_TARGETS.get((app, server, row["operation"])) if row["model"] == "small" else None
        if target is not None:
            targets.append(_verdict(row, "ceiling", f"of the ceiling's req/s on {server}", target))
        if row["django_ratio_median"] is not None:
            target = DJANGO_TARGETS[row["model"], row["operation"]]
            targets.append(_verdict(row, "django", "times django-river-ml's req/s", target))
    if targets:
        lines += ["", "Targets (paired ratios, median and minimum over the rounds):", "", *targets]
    return lines


def _verdict(row: dict, kind: str, what: str, target: float) -> str:
    median, low = row[f"{kind}_ratio_median"], row[f"{kind}_ratio_min"]
    verdict = "meets" if median >= target else "MISSES"
    return (
        f"- {row['model']} {row['operation']}, {row['configuration']}: {median:.2f} (min {low:.2f}) {what}: "
        f"{verdict} the {target:g} target"
    )


# --- the versions --------------------------------------------------------------------------------


def served_versions(wrk: str, redis: PrivateRedis | None, django_gunicorn: Path | None) -> dict[str, str]:
    found = versions(redis, {"wrk": first_line([wrk, "--version"]).split(" [")[0].removeprefix("wrk ")})
    if django_gunicorn is not None:
        script = "from importlib.metadata import version as v; print(v('django-river-ml'), v('django'))"
        shown = first_line([str(django_gunicorn.parent / "python"), "-c", script]).split()
        found["django-river-ml"] = f"{shown[0]} (Django {shown[1]})" if len(shown) == 2 else "unknown"
    return found


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


# --- main ----------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running every configuration (default 3)")
    parser.add_argument("--duration", type=int, default=5, help="seconds of each measured wrk run (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="seconds of wrk before each measured run (0: none)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument("--connections", type=int, default=2, help="wrk connections (default 2)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes of every server (default 1)")
    parser.add_argument(
        "--server-threads", type=int, default=1, help="threads answering requests in each worker (default 1)"
    )
    parser.add_argument("--servers", nargs="+", choices=WSGI_SERVERS, default=list(WSGI_SERVERS), help="WSGI servers")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS), help="stores to serve")
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS), help="models to serve")
    parser.add_argument("--no-django", action="store_true", help="leave django-river-ml out")
    default_django = HERE / ".django-venv"
    parser.add_argument("--django-venv", type=Path, default=default_django, help=f"its environment ({default_django})")
    parser.add_argument("--wrk", default=shutil.which("wrk") or "/usr/bin/wrk", help="the wrk program")
    add_options(parser)
    args = parser.parse_args(argv)
    if min(args.rounds, args.duration, args.threads, args.workers, args.server_threads) < 1 or args.warmup < 0:
        parser.error(
            "--rounds, --duration, --threads, --workers and --server-threads must be at least 1, --warmup at least 0"
        )
    if args.connections < args.threads:
        parser.error("--connections must be at least --threads")
    if not os.access(args.wrk, os.X_OK):
        parser.error(f"wrk not found at {args.wrk} (Debian: apt-get install wrk)")
    if "gunicorn" not in args.servers:
        args.no_django = True  # django-river-ml is paired with the ceiling on gunicorn
    check_options(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    return bench_main("bench/served.py", args, lambda scratch, servers, redis: run(args, servers, scratch, redis))


def run(args: argparse.Namespace, servers: Servers, scratch: Path, redis: PrivateRedis | None) -> dict[str, Any]:
    started = time.perf_counter()
    gunicorn_django = None if args.no_django else django_gunicorn(args.django_venv)
    train, pool = phishing()
    blobs = {label: dill.dumps(MODELS[label](train)) for label in args.models}
    models_dir = scratch / "models"
    models_dir.mkdir()
    for label, blob in blobs.items():
        (models_dir / f"bench-{label}.pkl").write_bytes(blob)
    workloads = [Workload(label, operation) for label in args.models for operation in ("predict", "learn")]
    (scratch / "bodies").mkdir()
    bodies = {w: write_bodies(scratch / "bodies" / f"{w.model}-{w.operation}.jsonl", pool, w) for w in workloads}
    configs = [Config(app, server) for server in args.servers for app in (CEILING, *args.backends)]
    if gunicorn_django is not None:
        configs.append(Config(DJANGO, "gunicorn"))
    load = Load(args.wrk, args.threads, args.connections, args.duration, args.warmup, scratch)
    programs = {server: Path(sys.prefix) / "bin" / server for server in args.servers}
    bench = Bench(
        load,
        servers,
        programs,
        gunicorn_django,
        args.workers,
        args.server_threads,
        blobs,
        models_dir,
        bodies,
        redis,
        args.quiet_cores,
    )

    found_machine, found_versions = machine(), served_versions(args.wrk, redis, gunicorn_django)
    header = [
        "# flask-river-ml over HTTP: interleaved rounds, paired with the ceiling",
        "",
        machine_line(found_machine),
        "- Versions: " + ", ".join(f"{name} {value}" for name, value in found_versions.items()),
        f"- Servers: {args.workers} worker process{'es' if args.workers > 1 else ''} of "
        f"{args.server_threads} thread{'s' if args.server_threads > 1 else ''} each: "
        + "; ".join(SERVER_NOTES[server] for server in args.servers)
        + ("; a redis-server of the run's own on the same machine" if redis else ""),
        f"- Load: `{load.shown()}` on the same machine, after a {args.warmup} s warm-up; bodies rotate through "
        f"Phishing samples {TRAIN_SAMPLES}..{TRAIN_SAMPLES + len(pool)}",
        f"- {args.rounds} round(s); each starts every configuration afresh and runs it once per workload, "
        f"in an order shuffled with seed {args.seed}",
    ]
    for label, blob in blobs.items():
        size = f"{len(blob) / 1e6:.2f} MB" if len(blob) >= 100_000 else f"{len(blob):,} bytes"
        header.append(f"- {label}: {MODEL_DESCRIPTIONS[label]}, uploaded as a {size} dill pickle")
    print("\n".join(header) + "\n", flush=True)

    rng = random.Random(args.seed)
    measurements: list[Measurement] = []
    for number in range(1, args.rounds + 1):
        began = time.perf_counter()
        measurements += bench.round(number, configs, rng, scratch)
        print(f"round {number}/{args.rounds} done in {time.perf_counter() - began:.0f} s", file=sys.stderr)

    rows = summarize(measurements, configs, workloads)
    lines = report(rows, args.quiet_cores)
    noisy = [m for m in measurements if m.elsewhere_cores > args.quiet_cores]
    lines += [
        "",
        "req/s = completed requests / wrk's run time; p50 and p99 from wrk's latency distribution (medians over "
        "the rounds); CPU = user+system time of the server's processes per request (median). Ratio to ceiling = "
        "req/s / req/s of the ceiling on the same WSGI server (django-river-ml: gunicorn) for the same workload "
        "in the same round, minimum and median over the rounds. Busy elsewhere = cores used during a run by "
        "anything but that server, wrk and redis-server (the largest over the rounds); (!) marks more than "
        f"{args.quiet_cores:g}.",
    ]
    lines += tail_lines(len(noisy), len(measurements), started)
    print("\n".join(lines))
    return {
        "machine": found_machine,
        "versions": found_versions,
        "options": options_json(args),
        "configurations": [config.name for config in configs],
        "runs": [asdict(measurement) for measurement in measurements],
        "summary": rows,
        "seconds": time.perf_counter() - started,
    }


if __name__ == "__main__":
    sys.exit(main())
