"""Two checkouts of flask-river-ml side by side: bench/inprocess.py of each, interleaved.

Each round runs the in-process benchmark of one checkout, then of the other (the order
alternates between rounds), each with its own package first on the path and the same
interpreter. The table gives, per model, backend and operation, the median over the rounds of
each checkout's extension ops/s and of its ratio to river called directly (the benchmark's own
ratio, measured in the same process), and after/before of the medians. A change is slower
only where after/before stays below 1 across rounds; a shared machine moves single rounds by
10 to 20 %.

    .venv/bin/python bench/versions.py --before ../old-checkout [--after .] [--rounds 3]

Give ``--before`` a ``git worktree add`` of the commit to compare with.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

_ROW = re.compile(r"^\| (\w+) \| (\w+) \| ([^|]+) \| ([\d,]+) \| ([\d,]+) \| ([\d.]+) \|")


def run(tree: Path, samples: int) -> dict[tuple[str, str, str], tuple[float, float]]:
    """``{(model, backend, operation): (extension ops/s, ratio)}`` of one benchmark run of ``tree``."""
    output = subprocess.run(
        [sys.executable, str(tree / "bench" / "inprocess.py"), "--samples", str(samples)],
        env={**os.environ, "PYTHONPATH": str(tree)},
        cwd=tree,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = {}
    for line in output.splitlines():
        match = _ROW.match(line)
        if match:
            model, backend, operation, _, extension, ratio = match.groups()
            rows[model, backend, operation.strip()] = (float(extension.replace(",", "")), float(ratio))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--before", type=Path, required=True, help="the checkout to compare with")
    parser.add_argument("--after", type=Path, default=Path(__file__).resolve().parent.parent, help="default: this one")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each checkout (default 3)")
    parser.add_argument("--samples", type=int, default=2000, help="learns and predicts per run (default 2000)")
    args = parser.parse_args(argv)
    trees = {"before": args.before.resolve(), "after": args.after.resolve()}
    found: dict[tuple[str, str, str], dict[str, list[tuple[float, float]]]] = defaultdict(lambda: defaultdict(list))
    for round_ in range(args.rounds):
        order = list(trees.items()) if round_ % 2 == 0 else list(trees.items())[::-1]
        for label, tree in order:
            for key, measured in run(tree, args.samples).items():
                found[key][label].append(measured)

    print(f"# {trees['before']} (before) and {trees['after']} (after), {args.rounds} interleaved rounds\n")
    print("| model | backend | operation | before ops/s | after ops/s | after/before | before ratio | after ratio |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for (model, backend, operation), by in found.items():
        if len(by["before"]) != args.rounds or len(by["after"]) != args.rounds:
            continue  # an operation only one of the checkouts measures
        before = statistics.median(ops for ops, _ in by["before"])
        after = statistics.median(ops for ops, _ in by["after"])
        ratios = [statistics.median(ratio for _, ratio in by[label]) for label in ("before", "after")]
        print(
            f"| {model} | {backend} | {operation} | {before:,.0f} | {after:,.0f} | {after / before:.2f} "
            f"| {ratios[0]:.2f} | {ratios[1]:.2f} |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
