"""In-process cost of flask-river-ml's learn and predict next to river called directly.

Both sides learn and predict the same Phishing samples (600..1250, cycled to ``--samples``),
starting from identical copies of the same model, in the same process and the same run:

* direct: river on a model held in memory. "learn (bare)" is ``learn_one`` alone; "learn
  (fair)" is ``predict_proba_one`` + ``learn_one`` + the binary flavor's five metrics, which
  is what the extension does per learn (it predicts first to score the metrics
  prequentially); "predict" is ``predict_proba_one``.
* extension: ``FlaskRiverML(app)`` with ``RIVER_ML_STORAGE_BACKEND`` set and every other
  setting at its default, inside ``app.app_context()``, calling ``river_ml.learn(name,
  ground_truth=y, features=x)`` and ``river_ml.predict(x, name)``.

Each repeat starts from fresh copies and a fresh app in a fresh temporary folder; the best
(or median) of ``--repeat`` runs is reported. Upload and the first load of the replica are
not timed; snapshots taken during the learns (every RIVER_ML_SNAPSHOT_EVERY records) are.

    .venv/bin/python bench/inprocess.py [--samples N] [--backend memory|shelve] [--repeat R]

Nothing is downloaded: Phishing ships inside river.
"""

from __future__ import annotations

import argparse
import copy
import os
import pickle
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from importlib.metadata import version
from typing import Any

import river
from flask import Flask
from models import MODEL_DESCRIPTIONS, MODELS, TRAIN_SAMPLES, binary_metrics, learn, phishing

from flask_river_ml import FlaskRiverML

BACKENDS = ("memory", "shelve")
FOREST_TARGET = 0.5


def timed(samples: Iterable, step: Callable[[dict, Any], Any], count: int) -> float:
    """Operations per second of ``step`` over ``samples``."""
    started = time.perf_counter()
    for x, y in samples:
        step(x, y)
    return count / (time.perf_counter() - started)


# --- direct: river on a model held in memory -------------------------------------------------


def direct_run(base: Any, samples: list) -> dict[str, float]:
    n = len(samples)
    bare = copy.deepcopy(base)
    result = {"learn_bare": timed(samples, bare.learn_one, n)}

    model = copy.deepcopy(base)
    metric_list = binary_metrics()

    result["learn"] = timed(samples, lambda x, y: learn(model, metric_list, x, y), n)
    # The fair model has now learnt exactly what the extension's model learns.
    result["predict"] = timed(samples, lambda x, _y: model.predict_proba_one(x), n)
    return result


# --- extension: FlaskRiverML in process ------------------------------------------------------


def extension_run(base: Any, samples: list, backend: str) -> dict[str, float]:
    n = len(samples)
    with tempfile.TemporaryDirectory(prefix="river-ml-bench-") as folder:
        app = Flask("bench", instance_path=folder)
        app.config["RIVER_ML_STORAGE_BACKEND"] = backend
        river_ml = FlaskRiverML(app)
        try:
            with app.app_context():
                name = river_ml.add_model(copy.deepcopy(base), "binary")
                river_ml.metrics(name)  # loads the replica: a one-time cost, not timed
                result = {
                    "learn": timed(samples, lambda x, y: river_ml.learn(name, ground_truth=y, features=x), n),
                    "predict": timed(samples, lambda x, _y: river_ml.predict(x, name), n),
                }
        finally:
            # Closed while the folder exists; the atexit hook then finds nothing left to do.
            FlaskRiverML.state(app).close()
    return result


# --- report ----------------------------------------------------------------------------------


def summarize(runs: list[dict[str, float]], stat: str) -> dict[str, float]:
    pick = max if stat == "best" else statistics.median
    return {key: pick(run[key] for run in runs) for key in runs[0]}


def combined(learn: float, predict: float) -> float:
    """Learn+predict pairs per second from the two rates."""
    return 1.0 / (1.0 / learn + 1.0 / predict)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=2000, help="learns and predicts per run (default 2000)")
    parser.add_argument("--backend", choices=BACKENDS, help="one backend (default: both)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per measurement (default 3)")
    parser.add_argument("--stat", choices=("best", "median"), default="best", help="how runs are combined")
    parser.add_argument("--models", nargs="+", choices=tuple(MODELS), default=list(MODELS), help="models to run")
    args = parser.parse_args(argv)
    if args.samples < 1 or args.repeat < 1:
        parser.error("--samples and --repeat must be at least 1")
    backends = [args.backend] if args.backend else list(BACKENDS)

    train, pool = phishing()
    samples = [pool[i % len(pool)] for i in range(args.samples)]

    print("# flask-river-ml in-process benchmark\n")
    print(f"- Python {platform.python_version()}, river {river.__version__}, Flask {version('flask')}")
    print(f"- {platform.machine()}, {os.cpu_count()} CPUs, {platform.system()} {platform.release()}")
    print(
        f"- {args.samples} learns then {args.samples} predicts per run (Phishing samples "
        f"{TRAIN_SAMPLES}..{TRAIN_SAMPLES + len(pool)}, cycled); {args.stat} of {args.repeat} runs"
    )

    bases = {}
    for label in args.models:
        bases[label] = MODELS[label](train)
        size = len(pickle.dumps(bases[label], protocol=pickle.HIGHEST_PROTOCOL))
        print(f"- {label}: {MODEL_DESCRIPTIONS[label]}, pickled size {size / 1e6:.2f} MB ({size} bytes)")
    print()

    rows = []
    forest_ratio = None
    started = time.perf_counter()
    for label, base in bases.items():
        for backend in backends:
            direct_runs, extension_runs = [], []
            for _ in range(args.repeat):
                direct_runs.append(direct_run(base, samples))
                extension_runs.append(extension_run(base, samples, backend))
            direct = summarize(direct_runs, args.stat)
            ext = summarize(extension_runs, args.stat)
            pair_direct = combined(direct["learn"], direct["predict"])
            pair_bare = combined(direct["learn_bare"], direct["predict"])
            pair_ext = combined(ext["learn"], ext["predict"])
            rows += [
                (label, backend, "learn vs bare learn_one", direct["learn_bare"], ext["learn"]),
                (label, backend, "learn vs predict+learn+metrics", direct["learn"], ext["learn"]),
                (label, backend, "predict", direct["predict"], ext["predict"]),
                (label, backend, "learn+predict vs bare", pair_bare, pair_ext),
                (label, backend, "learn+predict", pair_direct, pair_ext),
            ]
            if label == "forest":
                ratio = pair_ext / pair_direct
                forest_ratio = ratio if forest_ratio is None else min(forest_ratio, ratio)

    print("| model | backend | operation | direct ops/s | extension ops/s | ratio | added µs/op |")
    print("|---|---|---|---:|---:|---:|---:|")
    for label, backend, operation, direct_rate, ext_rate in rows:
        added = 1e6 / ext_rate - 1e6 / direct_rate
        print(
            f"| {label} | {backend} | {operation} | {direct_rate:,.0f} | {ext_rate:,.0f} "
            f"| {ext_rate / direct_rate:.2f} | {added:,.0f} |"
        )
    print()
    print("ratio = extension ops/s / direct ops/s. The fair learn baseline is predict_proba_one +")
    print("learn_one + metric updates; learn+predict is one learn and one predict per pair;")
    print("added µs/op = extension time per operation - direct time per operation.")
    if forest_ratio is not None:
        verdict = "meets" if forest_ratio >= FOREST_TARGET else "MISSES"
        print(
            f"\nForest learn+predict ratio (worst backend): {forest_ratio:.2f} ({verdict} the {FOREST_TARGET} target)"
        )
    print(f"\nTotal measuring time: {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
