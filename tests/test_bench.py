"""The HTTP benchmarks run end to end, in a few seconds, so that they cannot rot.

One round of bench/served.py on gunicorn, the shelve store, the small model and the ceiling
(no django-river-ml, no redis), one of bench/batch.py on gunicorn and the shelve store, and
bench/memory.py on a few models. Nothing here judges a speed or a size: only that every
configuration was measured and every number reported.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gunicorn]

ROOT = Path(__file__).resolve().parent.parent


def bench(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    command = [sys.executable, str(ROOT / "bench" / script), *args]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{script} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.mark.wrk
def test_served_benchmark_measures_every_configuration(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.fail("wrk is not installed: apt-get install wrk (make test does), or deselect with -m 'not wrk'.")
    output = tmp_path / "served.json"
    options = ["--rounds", "1", "--duration", "1", "--warmup", "0", "--servers", "gunicorn"]
    options += ["--backends", "shelve", "--models", "small", "--no-django", "--json", str(output)]
    done = bench("served.py", *options)

    result = json.loads(output.read_text())
    assert result["configurations"] == ["ceiling, gunicorn", "shelve, gunicorn"]
    rows = {(row["configuration"], row["operation"]): row for row in result["summary"]}
    assert set(rows) == {(c, op) for c in result["configurations"] for op in ("predict", "learn")}
    for (configuration, _), row in rows.items():
        assert row["rate_median"] > 0 and row["server_cpu_us"] > 0
        assert (row["ceiling_ratio_median"] is None) == (configuration == "ceiling, gunicorn")
    assert len(result["runs"]) == 4
    for configuration, operation in rows:
        assert re.search(rf"^\| small \| {operation} \| {configuration} \| [\d,.]+ \(", done.stdout, re.MULTILINE)


def test_batch_benchmark_measures_every_configuration_and_checks_the_stats(tmp_path: Path) -> None:
    output = tmp_path / "batch.json"
    options = ["--rounds", "1", "--duration", "1", "--warmup", "0", "--servers", "gunicorn", "--backends", "shelve"]
    done = bench("batch.py", *options, "--json", str(output))

    result = json.loads(output.read_text())
    served, in_process = ["shelve, gunicorn"], ["in process, memory", "in process, shelve"]
    assert result["configurations"] == ["river loop", *in_process, *served]
    rows = {(row["configuration"], row["operation"]): row for row in result["summary"]}
    assert set(rows) == {(c, op) for c in result["configurations"] for op in ("predict", "learn")}
    for (configuration, operation), row in rows.items():
        assert row["samples_per_s_median"] > 0 and row["cpu_us_per_sample"] > 0
        assert (row["river_ratio_median"] is None) == (configuration == "river loop")
        line = rf"^\| {operation} \| {re.escape(configuration)} \| [\d,.]+ \([\d,.]+–[\d,.]+\) \|"
        assert re.search(line, done.stdout, re.MULTILINE), done.stdout
    assert len(result["runs"]) == 8
    assert re.search(r"^- learn, shelve, gunicorn: [\d,]+ samples/s .* the 50,000 target$", done.stdout, re.MULTILINE)
    assert re.search(r"^- learn, shelve, gunicorn: [\d.]+ \(min [\d.]+\) .* the 0.6 target$", done.stdout, re.MULTILINE)

    # Each server and app counted one call per sample sent and fed its metrics: the samples/s
    # were really learnt.
    checks = {check["configuration"]: check for check in result["checks"]}
    assert set(checks) == {*in_process, *served}
    for check in checks.values():
        assert check["passed"] and check["counted"] == check["sent"]
        assert check["sent"]["learn"] > 0 and check["sent"]["predict"] > 0
        assert check["sent"]["learn"] % 1000 == 0 and check["sent"]["predict"] % 1000 == 0
        assert 0 < check["accuracy"] <= 1
    assert re.search(r"^Stats: .*; 3 checks passed\)\.$", done.stdout, re.MULTILINE), done.stdout


def test_memory_benchmark_reports_each_step() -> None:
    done = bench("memory.py", "--models", "3", "--samples", "2")
    for step in ("idle (answered GET /api/)", "1 model uploaded and used", "3 models uploaded and used"):
        assert re.search(rf"^\| {re.escape(step)} \| [\d.]+ \|", done.stdout, re.MULTILINE), done.stdout
