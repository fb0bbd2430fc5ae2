"""End to end: the example server under a real gunicorn, driven by riverapi, the examples and
``make run``."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from river import base, cluster, datasets, linear_model, metrics, naive_bayes, preprocessing
from riverapi.main import Client
from servers import ROOT, VENV, predict_and_download, serve, server_env, service_info, stop, wait_for_service

pytestmark = [pytest.mark.gunicorn]

EXAMPLES = sorted(path.parent.name for path in ROOT.glob("examples/*/run.py"))
#: make run's address, riverapi's default.
RUN_HOST, RUN_PORT = "127.0.0.1", 8000


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """The base URL of the example app served by gunicorn (two workers sharing a shelve store)."""
    with serve(tmp_path_factory.mktemp("e2e_server"), workers=2) as running:
        yield running.url


# --- every riverapi call ---------------------------------------------------------------------


def test_every_client_method(server, tmp_path, monkeypatch):
    cli = Client(server, quiet=False)

    info = cli.info()
    assert info["id"] == "flask_river_ml"
    assert info["status"] == "running"
    assert info["storage"] == "shelve"

    model = preprocessing.StandardScaler() | linear_model.LinearRegression()
    generated = cli.upload_model(model, "regression")
    name = cli.upload_model(model, "regression", "e2e-every-call")
    assert name == "e2e-every-call"
    assert generated != name
    assert {generated, name} <= set(cli.models()["models"])

    samples = list(datasets.TrumpApproval().take(60))
    for x, y in samples[:50]:
        assert cli.learn(name, x, y) == "Successful learn."

    params = cli.get_model_json(name)
    assert set(params) == {"StandardScaler", "LinearRegression"}
    assert params["StandardScaler"]["with_std"] is True
    assert params["LinearRegression"]["l2"] == 0.0

    x, y = samples[50]
    result, downloaded = predict_and_download(cli, name, x, tmp_path)
    # Without dest, riverapi saves <name>.pkl in the working directory.
    monkeypatch.chdir(tmp_path)
    assert cli.download_model(name) == f"{name}.pkl"
    assert (tmp_path / f"{name}.pkl").read_bytes() == (tmp_path / "model.pkl").read_bytes()

    assert cli.label(y, result["identifier"], name) == "Successful label."
    downloaded.learn_one(x, y)
    for x, _ in samples[51:]:
        assert cli.predict(name, x)["prediction"] == downloaded.predict_one(x)

    served_metrics = cli.metrics(name)
    assert set(served_metrics) == {"MAE", "RMSE", "SMAPE"}
    assert all(value > 0 for value in served_metrics.values())
    # Never fed: null, which riverapi hands back as None.
    assert cli.metrics(generated) == {"MAE": None, "RMSE": None, "SMAPE": None}

    stats = cli.stats(name)
    assert set(stats) == {"learn", "predict"}
    # 50 learns; 1 + 9 predictions; a label is not timed.
    assert stats["learn"]["n_calls"] == 50
    assert stats["predict"]["n_calls"] == 10
    for kind in stats.values():
        assert isinstance(kind["mean_duration"], int) and kind["mean_duration"] > 0
        assert isinstance(kind["ewm_duration"], int) and kind["ewm_duration"] > 0
        assert kind["mean_duration_human"].endswith("s")
    assert cli.stats(generated)["learn"] == {
        "n_calls": 0,
        "mean_duration": 0,
        "mean_duration_human": "0ns",
        "ewm_duration": 0,
        "ewm_duration_human": "0ns",
    }

    cli.delete_model(generated)
    cli.delete_model(name)
    assert not {generated, name} & set(cli.models()["models"])
    # riverapi exits on an unsuccessful response: the model is gone (404).
    with pytest.raises(SystemExit):
        cli.metrics(name)


# --- served models predict like river ---------------------------------------------------------


def _take(dataset: type, n: int) -> list[tuple[dict, Any]]:
    return list(dataset().take(n))


def _kmeans() -> Any:
    """KMeans, its centers drawn: it draws them at its first sample, in the order of a set of
    feature names, which changes with each process's hash seed."""
    model = preprocessing.StandardScaler() | cluster.KMeans(n_clusters=3, seed=42)
    model.learn_one(_take(datasets.TrumpApproval, 1)[0][0])
    return model


#: flavor -> (a fresh model, n -> n samples, its river metrics).
FLAVORS: dict[str, tuple[Callable[[], Any], Callable[[int], list], list[type]]] = {
    "regression": (
        lambda: preprocessing.StandardScaler() | linear_model.LinearRegression(),
        lambda n: _take(datasets.TrumpApproval, n),
        [metrics.MAE, metrics.RMSE, metrics.SMAPE],
    ),
    "binary": (
        lambda: preprocessing.StandardScaler() | linear_model.LogisticRegression(),
        lambda n: _take(datasets.Phishing, n),
        [metrics.Accuracy, metrics.LogLoss, metrics.Precision, metrics.Recall, metrics.F1],
    ),
    "multiclass": (
        naive_bayes.GaussianNB,
        lambda n: _take(datasets.ImageSegments, n),
        [
            metrics.Accuracy,
            metrics.CrossEntropy,
            metrics.MacroPrecision,
            metrics.MacroRecall,
            metrics.MacroF1,
            metrics.MicroPrecision,
            metrics.MicroRecall,
            metrics.MicroF1,
        ],
    ),
    "cluster": (
        _kmeans,
        # Unsupervised: the features alone.
        lambda n: [(x, None) for x, _ in _take(datasets.TrumpApproval, n)],
        [],
    ),
}


def _learn_prequentially(model: Any, scores: metrics.base.Metrics, x: dict, y: Any) -> None:
    """What river's progressive validation does: score the prediction first, then learn."""
    if scores:
        prediction = model.predict_proba_one(x) if isinstance(model, base.Classifier) else model.predict_one(x)
        if prediction not in (None, {}):
            scores.update(y, prediction)
    if y is None:
        model.learn_one(x)
    else:
        model.learn_one(x, y)


def _as_json(value: Any) -> Any:
    """What a value becomes on the wire (``{True: 0.2}`` -> ``{"true": 0.2}``)."""
    return json.loads(json.dumps(value))


def _assert_close(served: Any, local: Any) -> None:
    if isinstance(local, float):
        assert abs(served - local) <= 1e-9, (served, local)
    elif isinstance(local, dict):
        assert set(served) == set(local), (served, local)
        for key in local:
            _assert_close(served[key], local[key])
    else:
        assert served == local


@pytest.mark.parametrize("flavor", FLAVORS)
def test_served_model_predicts_like_local_river(server, flavor):
    make_model, take, metric_classes = FLAVORS[flavor]
    cli = Client(server, quiet=True)
    name = cli.upload_model(make_model(), flavor)
    local = make_model()
    local_metrics = metrics.base.Metrics([metric() for metric in metric_classes])
    samples = take(130)

    for x, y in samples[:100]:
        cli.learn(name, x, y)
        _learn_prequentially(local, local_metrics, x, y)

    # Predict, then label: the label scores the prediction made then, and the model learns.
    x, y = samples[100]
    result = cli.predict(name, x)
    local_prediction = local.predict_proba_one(x) if flavor == "binary" else local.predict_one(x)
    _assert_close(result["prediction"], _as_json(local_prediction))
    # A clusterer has no truth to be told; its label is its own prediction, and it ignores it.
    cli.label(result["prediction"] if y is None else y, result["identifier"], name)
    _learn_prequentially(local, local_metrics, x, y)

    for x, _ in samples[101:]:
        local_prediction = local.predict_proba_one(x) if flavor == "binary" else local.predict_one(x)
        _assert_close(cli.predict(name, x)["prediction"], _as_json(local_prediction))

    served_metrics = cli.metrics(name)
    assert set(served_metrics) == {metric.__name__ for metric in metric_classes}
    for metric in local_metrics:
        assert abs(served_metrics[type(metric).__name__] - metric.get()) <= 1e-9, (served_metrics, metric)
    assert cli.stats(name)["predict"]["n_calls"] == 30
    cli.delete_model(name)


# --- the examples ------------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES)
def test_example(server, example):
    completed = subprocess.run(
        [sys.executable, str(ROOT / "examples" / example / "run.py")],
        cwd=ROOT,
        env={**os.environ, "RIVER_ML_SERVER": server},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, f"stdout:\n{completed.stdout}\nstderr:\n{completed.stderr}"


def test_the_examples_are_found():
    assert EXAMPLES == ["binary", "cluster", "custom", "multiclass", "regression"]


# --- make run ----------------------------------------------------------------------------------


def _make(*arguments: str) -> list[str]:
    # The venv of these tests; its stamp counts as up to date, so make never reinstalls.
    return ["make", "--no-print-directory", f"VENV={VENV}", "-o", f"{VENV}/bin/.installed", *arguments]


def test_make_run_installs_first():
    dry_run = subprocess.run(
        # --no-print-directory: under `make test` this make is nested and would say where it is.
        ["make", "--no-print-directory", "--dry-run", "--always-make", "run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert dry_run.returncode == 0, dry_run.stderr
    lines = dry_run.stdout.splitlines()
    assert any("pip install" in line for line in lines[:-1])
    served = ".venv/bin/gunicorn --bind 127.0.0.1:8000 --workers 1 --threads 8 --access-logfile - examples.app:app"
    assert lines[-1] == served


def test_make_run(tmp_path):
    with socket.socket() as probe:
        # gunicorn binds with SO_REUSEADDR: so does the probe, or a socket in TIME_WAIT would count.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((RUN_HOST, RUN_PORT))
        except OSError as error:
            pytest.fail(
                f"make run serves on {RUN_HOST}:{RUN_PORT}, which is in use ({error}): stop what listens there."
            )
    log = tmp_path / "make-run.log"
    with open(log, "wb") as output:
        # A session of its own: make, gunicorn's master and its worker share one process group.
        process = subprocess.Popen(
            _make("run"),
            cwd=ROOT,
            env=server_env(tmp_path),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        info = wait_for_service(f"http://{RUN_HOST}:{RUN_PORT}/api/", process, log, timeout=60)
        assert info["id"] == "flask_river_ml"
        # The environment override reached the app: the store is in the tmp folder.
        assert (tmp_path / "instance" / "cache").is_dir()
        # The requests it answered show in its output, one access log line each.
        deadline = time.monotonic() + 10
        while '"GET /api/ HTTP/1.1" 200' not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert '"GET /api/ HTTP/1.1" 200' in log.read_text(), log.read_text()
    finally:
        stop(process, lambda signum: os.killpg(process.pid, signum))
        # make is gone; its gunicorn may take a moment more to let the port go.
        deadline = time.monotonic() + 15
        while service_info(f"http://{RUN_HOST}:{RUN_PORT}/api/") is not None and time.monotonic() < deadline:
            time.sleep(0.2)
        if service_info(f"http://{RUN_HOST}:{RUN_PORT}/api/") is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
