"""Resident memory of one server worker: idle, then serving many small models.

The example app (``examples.app:app``) is served by one worker process (gunicorn's sync worker,
or granian in WSGI mode) on the chosen store, from the repository's root. Once it answers
``GET /api/`` its RSS is read (idle); then ``--models`` copies of the small model of
``bench/models.py`` (trained on 600 Phishing samples) are uploaded under names of their own,
and each learns and predicts ``--samples`` Phishing samples, the RSS read again after the
first model, the tenth and the last. The project's aim is less than 20 MB above idle after 100
models; this prints the numbers and judges nothing.

    .venv/bin/python bench/memory.py [--models 100] [--samples 10] [--backend shelve|redis]
                                     [--server gunicorn|granian]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import dill
from models import MODEL_DESCRIPTIONS, make_small, phishing
from servers import (
    EXTENSION_APP,
    WSGI_SERVERS,
    BenchError,
    PrivateRedis,
    Server,
    Servers,
    extension_env,
    free_port,
    post,
    rss_bytes,
    server_command,
    upload,
    workspace,
)

#: The aim: a worker serving 100 small models holds less than this above its idle RSS.
AIM_BYTES = 20 * 1024 * 1024


def worker(server: Server) -> int:
    workers = server.workers()
    if len(workers) != 1:
        raise BenchError(f"expected one worker process, found {workers}")
    return workers[0]


def use(server: Server, name: str, samples: list) -> None:
    """``name`` learns then predicts ``samples``; every answer must be a 2xx."""
    for x, y in samples:
        post(server, "/api/learn/", json.dumps({"model": name, "features": x, "ground_truth": y}).encode())
    for x, _ in samples:
        post(server, "/api/predict/", json.dumps({"model": name, "features": x}).encode())


def measure(args: argparse.Namespace, servers: Servers, scratch: Path, redis: PrivateRedis | None) -> list[tuple]:
    train, pool = phishing()
    blob = dill.dumps(make_small(train))
    samples = pool[: args.samples]
    program = Path(sys.prefix) / "bin" / args.server
    command = server_command(args.server, program, free_port(), 1, EXTENSION_APP)
    with servers.serving(command, scratch / "server", extension_env(args.backend, scratch / "server", redis)) as server:
        pid = worker(server)
        idle = rss_bytes(pid)
        rows = [("idle (answered GET /api/)", 0, idle)]
        checkpoints = {1, 10, args.models}
        for number in range(1, args.models + 1):
            name = f"memory-{number}"
            upload(server, blob, name)
            use(server, name, samples)
            if number in checkpoints:
                rows.append((f"{number} model{'s' if number > 1 else ''} uploaded and used", number, rss_bytes(pid)))
        if worker(server) != pid:
            raise BenchError("the worker was replaced during the measurement")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--models", type=int, default=100, help="small models uploaded and used (default 100)")
    parser.add_argument("--samples", type=int, default=10, help="learns and predicts per model (default 10)")
    parser.add_argument("--backend", choices=("shelve", "redis"), default="shelve", help="the store (default shelve)")
    parser.add_argument("--server", choices=WSGI_SERVERS, default="gunicorn", help="the WSGI server (default gunicorn)")
    args = parser.parse_args(argv)
    if args.models < 1 or args.samples < 1:
        parser.error("--models and --samples must be at least 1")
    try:
        with workspace("river-ml-memory-bench-", args.backend == "redis") as (scratch, servers, redis):
            rows = measure(args, servers, scratch, redis)
    except BenchError as error:
        print(f"bench/memory.py FAILED: {error}", file=sys.stderr)
        return 1

    idle = rows[0][2]
    print(f"# RSS of one {args.server} worker of the example app, {args.backend} store\n")
    print(f"- model: {MODEL_DESCRIPTIONS['small']}, uploaded {args.models} times under names of its own")
    print(f"- each model learns then predicts {args.samples} Phishing samples over HTTP\n")
    # The first model also pays what the worker loads once (modules, the store's connection).
    first = rows[1][2]
    print("| after | RSS (MB) | above idle (MB) | per model after the first (kB) |")
    print("|---|---:|---:|---:|")
    for label, count, rss in rows:
        per_model = f"{(rss - first) / (count - 1) / 1024:,.0f}" if count > 1 else "—"
        print(f"| {label} | {rss / 2**20:.1f} | {(rss - idle) / 2**20:.1f} | {per_model} |")
    above = rows[-1][2] - idle
    aim = "within" if above < AIM_BYTES else "ABOVE"
    print(f"\n{args.models} models: {above / 2**20:.1f} MB above idle ({aim} the aim of < 20 MB for 100 models).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
