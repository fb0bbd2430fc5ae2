"""flask-river-ml's batch routes over HTTP, paired round by round with river's own loop.

Configurations, for each operation (predict, then learn), all on the small model of
``bench/models.py`` (trained on Phishing samples 0..600, pickled once with dill):

* shelve and redis on each WSGI server chosen (``--servers``: one gunicorn sync worker, or
  one granian WSGI worker with one blocking thread): the example app, the model uploaded, sent
  ``POST /api/predict/batch/`` then ``POST /api/learn/batch/`` with 1000 samples a request by
  this script's own client (``--connections`` keep-alive connections, one thread each);
* river loop: river on a copy of the same model in this process, sample by sample: for a
  learn ``predict_proba_one``, ``learn_one`` and the five binary metrics (what the server does
  per sample), for a predict ``predict_proba_one`` and its most probable label;
* in process: ``FlaskRiverML.learn_batch`` / ``predict_batch`` of an app in this process, on
  the memory and shelve stores, with the same batches.

The batches rotate through Phishing's 1250 samples, 1000 a batch (the fifth ends where the
first began). Each round starts every configuration afresh, then runs, operation by operation,
every configuration once in a shuffled order: a warm-up, then a measured run of
``--duration`` seconds, during which the CPU time of whatever does the work (the server's
processes, or this process), of the client, of redis-server and of the whole machine is read
from /proc. A configuration's ratio in a round is its samples/s divided by the river loop's
for the same operation in the same round. After each round every server's and app's stats
must count exactly the samples sent, or the benchmark fails.

    .venv/bin/python bench/batch.py [--rounds 3] [--duration 5] [--warmup 1]
        [--servers gunicorn granian] [--backends shelve redis] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import http.client
import json
import math
import random
import resource
import statistics
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import dill
from flask import Flask
from models import MODEL_DESCRIPTIONS, binary_metrics, learn, make_small, phishing, predict
from servers import (
    EXTENSION_APP,
    WSGI_SERVERS,
    BenchError,
    PrivateRedis,
    Server,
    Servers,
    add_options,
    bench_main,
    check_options,
    extension_env,
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

from flask_river_ml import FlaskRiverML

BATCH = 1000
MODEL = "bench-small"
BACKENDS = ("shelve", "redis")
IN_PROCESS_BACKENDS = ("memory", "shelve")
OPERATIONS = ("predict", "learn")
RIVER = "river loop"
#: The project's targets for learn batches over HTTP on one worker.
SAMPLES_TARGET = 50_000
RIVER_TARGET = 0.6
SERVER_NOTES = {
    "gunicorn": "one gunicorn sync worker (it closes the connection after each answer)",
    "granian": "one granian worker, `--interface wsgi --blocking-threads 1 --http 1`",
}


def batches(data: list) -> list[list]:
    """Batches of ``BATCH`` samples rotating through ``data``, until the next would start where
    the first did."""
    count = len(data) // math.gcd(len(data), BATCH)
    return [[data[(k * BATCH + i) % len(data)] for i in range(BATCH)] for k in range(count)]


# --- what runs a configuration -------------------------------------------------------------------


@dataclass
class Totals:
    """What one run did: requests (or calls, or batches of the river loop) and their latencies."""

    requests: int
    seconds: float
    latencies: list[float]


class Runner(Protocol):
    """One configuration: it runs an operation for some seconds and tells its work's CPU."""

    sent: dict[str, int]

    def run(self, operation: str, seconds: float) -> Totals: ...

    def work_cpu(self) -> float: ...

    def client_cpu(self) -> float: ...


def own_cpu() -> float:
    """User + system seconds of this process, all its threads."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _until(seconds: float, step: Callable[[int], None], start: int = 0) -> Totals:
    """Call ``step(i)`` with i = start, start + 1, ... until ``seconds`` have passed."""
    latencies, index = [], start
    began = time.perf_counter()
    deadline = began + seconds
    while time.perf_counter() < deadline:
        before = time.perf_counter()
        step(index)
        latencies.append(time.perf_counter() - before)
        index += 1
    return Totals(len(latencies), time.perf_counter() - began, latencies)


class HttpRunner:
    """The example app on a WSGI server, sent ready-made batch bodies over ``connections``
    connections at once; every answer is checked."""

    def __init__(self, server: Server, bodies: dict[str, list[bytes]], connections: int) -> None:
        self.server, self.bodies, self.connections = server, bodies, connections
        self.sent = dict.fromkeys(OPERATIONS, 0)

    def run(self, operation: str, seconds: float) -> Totals:
        with ThreadPoolExecutor(self.connections) as pool:
            began = time.perf_counter()
            futures = [pool.submit(self._connection, operation, seconds, c) for c in range(self.connections)]
            found = [future.result() for future in futures]
            elapsed = time.perf_counter() - began
        requests = sum(totals.requests for totals in found)
        self.sent[operation] += requests * BATCH
        if requests == 0:
            raise BenchError(f"{self.server.url} answered no {operation} batch:\n{self.server.log_tail()}")
        return Totals(requests, elapsed, [latency for totals in found for latency in totals.latencies])

    def _connection(self, operation: str, seconds: float, number: int) -> Totals:
        address = urllib.parse.urlsplit(self.server.url)
        connection = http.client.HTTPConnection(address.hostname or "", address.port, timeout=60)
        bodies, path = self.bodies[operation], f"/api/{operation}/batch/"
        headers = {"Content-Type": "application/json"}

        def post(index: int) -> None:
            # http.client connects again by itself after an answer that closed the connection.
            connection.request("POST", path, bodies[index % len(bodies)], headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status not in (200, 201):
                raise BenchError(f"POST {path} answered {response.status}: {answer[:300]!r}\n{self.server.log_tail()}")
            check_answer(operation, json.loads(answer))

        try:
            return _until(seconds, post, start=number * 2)
        finally:
            connection.close()

    def work_cpu(self) -> float:
        return self.server.cpu()

    def client_cpu(self) -> float:
        return own_cpu()

    def stats(self) -> dict[str, Any]:
        return self._get("stats")

    def metrics(self) -> dict[str, Any]:
        return self._get("metrics")

    def _get(self, route: str) -> dict[str, Any]:
        query = urllib.parse.urlencode({"model": MODEL})
        with urllib.request.urlopen(f"{self.server.url}/api/{route}/?{query}", timeout=30) as response:
            return json.loads(response.read())


def check_answer(operation: str, answer: dict[str, Any]) -> None:
    """A batch's answer: every sample learnt, or a prediction and an identifier for each."""
    if operation == "learn":
        if answer != {"learned": BATCH}:
            raise BenchError(f"a learn batch of {BATCH} answered {str(answer)[:300]}")
        return
    predictions, identifiers = answer.get("predictions") or [], answer.get("identifiers") or []
    if len(predictions) != BATCH or len(identifiers) != BATCH or None in predictions:
        raise BenchError(f"a predict batch of {BATCH} answered {str(answer)[:300]}")


class LocalRunner:
    """A configuration run in this process, batch by batch: its work's CPU is this process's."""

    def __init__(self, samples: list[list]) -> None:
        self.samples = samples
        self.sent = dict.fromkeys(OPERATIONS, 0)

    def step(self, operation: str, batch: int) -> None:
        raise NotImplementedError

    def context(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext()

    def run(self, operation: str, seconds: float) -> Totals:
        with self.context():
            totals = _until(seconds, lambda index: self.step(operation, index % len(self.samples)))
        self.sent[operation] += totals.requests * BATCH
        return totals

    def work_cpu(self) -> float:
        return own_cpu()

    def client_cpu(self) -> float:
        return 0.0


class RiverLoop(LocalRunner):
    """river on a copy of the model, sample by sample, doing the server's river work."""

    def __init__(self, base: Any, samples: list[list]) -> None:
        super().__init__(samples)
        self.model, self.metrics = copy.deepcopy(base), binary_metrics()

    def step(self, operation: str, batch: int) -> None:
        model, metrics = self.model, self.metrics
        if operation == "learn":
            for x, y in self.samples[batch]:
                learn(model, metrics, x, y)
        else:
            for x, _ in self.samples[batch]:
                predict(model, x)


class InProcess(LocalRunner):
    """``FlaskRiverML.learn_batch`` and ``predict_batch`` of an app in this process."""

    def __init__(self, base: Any, backend: str, samples: list[list], folder: Path) -> None:
        super().__init__(samples)
        folder.mkdir(parents=True)
        self.app = Flask("bench-batch", instance_path=str(folder))
        self.app.config["RIVER_ML_STORAGE_BACKEND"] = backend
        self.river_ml = FlaskRiverML(self.app)
        self.features = [[x for x, _ in batch] for batch in samples]
        with self.app.app_context():
            self.river_ml.add_model(copy.deepcopy(base), "binary", name=MODEL)
            self.river_ml.metrics(MODEL)  # loads the replica: a one-time cost, not timed

    def step(self, operation: str, batch: int) -> None:
        if operation == "learn":
            if self.river_ml.learn_batch(MODEL, self.samples[batch]) != BATCH:
                raise BenchError(f"learn_batch learnt fewer than {BATCH} samples")
        else:
            check_answer("predict", self.river_ml.predict_batch(self.features[batch], MODEL))

    def context(self) -> contextlib.AbstractContextManager[Any]:
        return self.app.app_context()

    def stats(self) -> dict[str, Any]:
        with self.app.app_context():
            return self.river_ml.stats(MODEL)

    def metrics(self) -> dict[str, Any]:
        with self.app.app_context():
            return self.river_ml.metrics(MODEL)

    def close(self) -> None:
        FlaskRiverML.state(self.app).close()


# --- measurements --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Measurement:
    """One measured run; CPU figures in cores (CPU seconds per second of the run)."""

    round: int
    configuration: str
    operation: str
    requests: int
    samples: int
    seconds: float
    samples_per_s: float
    requests_per_s: float
    latency_p50_ms: float
    #: CPU time of what does the work (the server's processes, or this process) per sample.
    cpu_us_per_sample: float
    client_cores: float
    redis_cores: float
    machine_cores: float
    #: What ran besides the work, the client and redis-server: another load on the machine.
    elsewhere_cores: float


def measure(
    number: int, name: str, operation: str, runner: Runner, args: argparse.Namespace, redis: PrivateRedis | None
) -> Measurement:
    if args.warmup:
        runner.run(operation, args.warmup)
    redis_cpu = redis.cpu if redis else lambda: 0.0
    before = (machine_busy(), runner.work_cpu(), runner.client_cpu(), redis_cpu())
    totals = runner.run(operation, args.duration)
    after = (machine_busy(), runner.work_cpu(), runner.client_cpu(), redis_cpu())
    busy, work, client, redis_used = (end - start for start, end in zip(before, after, strict=True))
    samples, seconds = totals.requests * BATCH, totals.seconds
    return Measurement(
        round=number,
        configuration=name,
        operation=operation,
        requests=totals.requests,
        samples=samples,
        seconds=seconds,
        samples_per_s=samples / seconds,
        requests_per_s=totals.requests / seconds,
        latency_p50_ms=statistics.median(totals.latencies) * 1000,
        cpu_us_per_sample=work / samples * 1e6,
        client_cores=client / seconds,
        redis_cores=redis_used / seconds,
        machine_cores=busy / seconds,
        elsewhere_cores=max(0.0, (busy - work - client - redis_used) / seconds),
    )


# --- rounds --------------------------------------------------------------------------------------


@dataclass
class Bench:
    """What every round shares: the options, the programs, the model, its batches and bodies."""

    args: argparse.Namespace
    servers: Servers
    redis: PrivateRedis | None
    scratch: Path
    base: Any
    blob: bytes
    samples: list[list]
    bodies: dict[str, list[bytes]]
    checks: list[dict[str, Any]] = field(default_factory=list)

    def names(self) -> list[str]:
        """Every configuration, in the table's order."""
        served = [f"{backend}, {server}" for server in self.args.servers for backend in self.args.backends]
        return [RIVER, *(f"in process, {backend}" for backend in IN_PROCESS_BACKENDS), *served]

    def round(self, number: int, rng: random.Random) -> list[Measurement]:
        """Every configuration started afresh, then each operation run on every one once, in a
        shuffled order; then the stats checked."""
        measurements = []
        with self.started(self.scratch / f"round-{number}") as runners:
            for operation in OPERATIONS:
                order = list(runners)
                rng.shuffle(order)
                for name in order:
                    redis = self.redis if name.startswith("redis") else None
                    found = measure(number, name, operation, runners[name], self.args, redis)
                    if found.elsewhere_cores > self.args.quiet_cores:
                        print(
                            f"  round {number}, {name}, {operation}: {found.elsewhere_cores:.2f} cores busy elsewhere",
                            file=sys.stderr,
                        )
                    measurements.append(found)
            for name, runner in runners.items():
                if isinstance(runner, HttpRunner | InProcess):
                    self.checks.append(stats_check(number, name, runner))
        return measurements

    @contextlib.contextmanager
    def started(self, folder: Path) -> Iterator[dict[str, Runner]]:
        runners: dict[str, Runner] = {}
        running: list[Server] = []
        apps: list[InProcess] = []
        try:
            for server in self.args.servers:
                program = Path(sys.prefix) / "bin" / server
                for backend in self.args.backends:
                    command = server_command(server, program, free_port(), 1, EXTENSION_APP)
                    where = folder / f"{backend}-{server}"
                    running.append(self.servers.start(command, where, extension_env(backend, where, self.redis)))
                    upload(running[-1], self.blob, MODEL)
                    runners[f"{backend}, {server}"] = HttpRunner(running[-1], self.bodies, self.args.connections)
            runners[RIVER] = RiverLoop(self.base, self.samples)
            for backend in IN_PROCESS_BACKENDS:
                apps.append(InProcess(self.base, backend, self.samples, folder / f"in-process-{backend}"))
                runners[f"in process, {backend}"] = apps[-1]
            yield runners
        finally:
            for app in apps:
                app.close()
            for server in running:
                self.servers.stop(server)
        if self.redis is not None:
            self.redis.flush()  # the next round starts from an empty store too


def stats_check(number: int, name: str, runner: HttpRunner | InProcess) -> dict[str, Any]:
    """The model's stats must count one learn or predict call per sample sent, warm-ups
    included, and its metrics must have been fed (they are null until a learn scores them): a
    batch route that skipped samples cannot report a fast run."""
    found = runner.stats()
    counted = {operation: found[operation]["n_calls"] for operation in OPERATIONS}
    accuracy = runner.metrics()["Accuracy"]
    check = {"round": number, "configuration": name, "sent": dict(runner.sent), "counted": counted}
    check |= {"accuracy": accuracy, "passed": counted == runner.sent and isinstance(accuracy, float)}
    if not check["passed"]:
        raise BenchError(
            f"round {number}, {name}: the stats count {counted} calls for {runner.sent} samples sent, "
            f"and the accuracy is {accuracy!r}"
        )
    return check


# --- summary -------------------------------------------------------------------------------------


def summarize(measurements: list[Measurement], names: list[str]) -> list[dict[str, Any]]:
    """Per operation and configuration: samples/s median (min, max), the medians of the other
    figures, and the paired ratios to the river loop."""
    found = {(m.round, m.configuration, m.operation): m for m in measurements}
    rounds = sorted({m.round for m in measurements})
    rows = []
    for operation in OPERATIONS:
        for name in names:
            runs = [found[number, name, operation] for number in rounds]
            rates = [run.samples_per_s for run in runs]
            ratios = None
            if name != RIVER:
                ratios = [run.samples_per_s / found[run.round, RIVER, operation].samples_per_s for run in runs]
            rows.append(
                {
                    "operation": operation,
                    "configuration": name,
                    "rounds": len(runs),
                    "samples_per_s_median": statistics.median(rates),
                    "samples_per_s_min": min(rates),
                    "samples_per_s_max": max(rates),
                    "requests_per_s_median": statistics.median(run.requests_per_s for run in runs),
                    "latency_p50_ms": statistics.median(run.latency_p50_ms for run in runs),
                    "cpu_us_per_sample": statistics.median(run.cpu_us_per_sample for run in runs),
                    "river_ratio_min": min(ratios) if ratios else None,
                    "river_ratio_median": statistics.median(ratios) if ratios else None,
                    "elsewhere_cores_max": max(run.elsewhere_cores for run in runs),
                }
            )
    return rows


def served(name: str) -> bool:
    return name != RIVER and not name.startswith("in process")


def report(rows: list[dict[str, Any]], quiet: float) -> list[str]:
    """The table and the targets, as markdown lines."""
    lines = [
        "| operation | configuration | samples/s median (min–max) | batches/s | p50 ms per batch | CPU µs/sample "
        "| ratio to river loop min / median | busy elsewhere (max) |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        ratio = "—"
        if row["river_ratio_median"] is not None:
            ratio = f"{row['river_ratio_min']:.2f} / {row['river_ratio_median']:.2f}"
        elsewhere = f"{row['elsewhere_cores_max']:.2f}" + (" (!)" if row["elsewhere_cores_max"] > quiet else "")
        rates = (rate_text(row[f"samples_per_s_{stat}"]) for stat in ("median", "min", "max"))
        lines.append(
            f"| {row['operation']} | {row['configuration']} | {'{} ({}–{})'.format(*rates)} "
            f"| {rate_text(row['requests_per_s_median'])} | {row['latency_p50_ms']:.1f} "
            f"| {row['cpu_us_per_sample']:.1f} | {ratio} | {elsewhere} |"
        )
    targets = []
    for row in rows:
        if row["operation"] != "learn" or not served(row["configuration"]):
            continue
        median, low = row["samples_per_s_median"], row["samples_per_s_min"]
        targets.append(
            f"- learn, {row['configuration']}: {median:,.0f} samples/s (min {low:,.0f}) over HTTP on one worker: "
            f"{'meets' if median >= SAMPLES_TARGET else 'MISSES'} the {SAMPLES_TARGET:,} target"
        )
        median, low = row["river_ratio_median"], row["river_ratio_min"]
        targets.append(
            f"- learn, {row['configuration']}: {median:.2f} (min {low:.2f}) of the river loop's samples/s: "
            f"{'meets' if median >= RIVER_TARGET else 'MISSES'} the {RIVER_TARGET:g} target"
        )
    if targets:
        lines += ["", "Targets (medians over the rounds, with the minimum):", "", *targets]
    return lines


# --- main ----------------------------------------------------------------------------------------


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each running every configuration (default 3)")
    parser.add_argument("--duration", type=float, default=5, help="seconds of each measured run (default 5)")
    parser.add_argument("--warmup", type=float, default=1, help="seconds of each warm-up before it (0: none)")
    parser.add_argument("--connections", type=int, default=2, help="the client's connections (default 2)")
    parser.add_argument("--servers", nargs="+", choices=WSGI_SERVERS, default=["gunicorn"], help="WSGI servers")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS), help="stores to serve")
    add_options(parser)
    args = parser.parse_args(argv)
    if args.rounds < 1 or args.duration <= 0 or args.warmup < 0 or args.connections < 1:
        parser.error("--rounds and --connections must be at least 1, --duration above 0, --warmup at least 0")
    check_options(parser, args)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    return bench_main("bench/batch.py", args, lambda scratch, servers, redis: run(args, servers, scratch, redis))


def run(args: argparse.Namespace, servers: Servers, scratch: Path, redis: PrivateRedis | None) -> dict[str, Any]:
    started = time.perf_counter()
    train, pool = phishing()
    base = make_small(train)
    blob = dill.dumps(base)
    samples = batches(train + pool)
    bodies = {
        "learn": [_body([{"features": x, "ground_truth": y} for x, y in batch]) for batch in samples],
        "predict": [_body([{"features": x} for x, _ in batch]) for batch in samples],
    }
    bench = Bench(args, servers, redis, scratch, base, blob, samples, bodies)
    names = bench.names()

    found_machine, found_versions = machine(), versions(redis)
    sizes = {operation: statistics.mean(map(len, found)) / 1000 for operation, found in bodies.items()}
    header = [
        "# flask-river-ml's batch routes: interleaved rounds, paired with river's own loop",
        "",
        machine_line(found_machine),
        "- Versions: " + ", ".join(f"{name} {value}" for name, value in found_versions.items()),
        "- Servers: "
        + "; ".join(SERVER_NOTES[server] for server in args.servers)
        + "; the example app"
        + ("; a redis-server of the run's own on the same machine" if redis else ""),
        f"- Load: this script's client on {args.connections} keep-alive connection(s), one thread each, after a "
        f"{args.warmup:g} s warm-up; {BATCH} samples a request (learn bodies {sizes['learn']:.0f} kB, predict "
        f"{sizes['predict']:.0f} kB), {len(samples)} batches rotating through Phishing's {len(train + pool)} samples",
        f"- Model: {MODEL_DESCRIPTIONS['small']}, uploaded as a {len(blob):,} byte dill pickle",
        f"- {args.rounds} round(s) of {args.duration:g} s runs; each starts every configuration afresh and runs it "
        f"once per operation, in an order shuffled with seed {args.seed}",
    ]
    print("\n".join(header) + "\n", flush=True)

    rng = random.Random(args.seed)
    measurements: list[Measurement] = []
    for number in range(1, args.rounds + 1):
        began = time.perf_counter()
        measurements += bench.round(number, rng)
        print(f"round {number}/{args.rounds} done in {time.perf_counter() - began:.0f} s", file=sys.stderr)

    rows = summarize(measurements, names)
    lines = report(rows, args.quiet_cores)
    noisy = [m for m in measurements if m.elsewhere_cores > args.quiet_cores]
    lines += [
        "",
        "Stats: after every round, each server's and in-process app's stats counted one learn or predict call "
        f"per sample sent, and its metrics were fed (accuracy {_accuracies(bench.checks)}; "
        f"{len(bench.checks)} checks passed).",
        "",
        f"samples/s = {BATCH} × completed requests (calls, batches of the river loop) / the run's time; p50 = "
        "median time per batch; CPU = user+system time per sample of the server's processes (over HTTP) or of this "
        "process (river loop, in process), median over the rounds. Ratio to river loop = samples/s / the river "
        "loop's samples/s for the same operation in the same round, minimum and median over the rounds. Busy "
        "elsewhere = cores used during a run by anything but the work, the client and redis-server (the largest "
        f"over the rounds); (!) marks more than {args.quiet_cores:g}.",
    ]
    lines += tail_lines(len(noisy), len(measurements), started)
    print("\n".join(lines))
    return {
        "machine": found_machine,
        "versions": found_versions,
        "options": options_json(args),
        "configurations": names,
        "runs": [asdict(measurement) for measurement in measurements],
        "checks": bench.checks,
        "summary": rows,
        "seconds": time.perf_counter() - started,
    }


def _accuracies(checks: list[dict[str, Any]]) -> str:
    found = [check["accuracy"] for check in checks]
    return f"{min(found):.3f} to {max(found):.3f}" if found else "none checked"


def _body(samples: list[dict[str, Any]]) -> bytes:
    return json.dumps({"model": MODEL, "samples": samples}).encode()


if __name__ == "__main__":
    sys.exit(main())
