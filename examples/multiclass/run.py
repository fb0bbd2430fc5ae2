"""Serve a multiclass classifier with riverapi: learn ImageSegments, predict, label, metrics.

Start the server first (`make run`), then, from the repository root:

    .venv/bin/python examples/multiclass/run.py

RIVER_ML_SERVER names another server (default http://127.0.0.1:8000). riverapi exits with
status 1 on any unsuccessful response; the asserts catch wrong results.
"""

import os
import tempfile

import dill
from river import datasets, preprocessing, tree
from riverapi.main import Client

cli = Client(os.environ.get("RIVER_ML_SERVER", "http://127.0.0.1:8000"))
assert cli.info()["status"] == "running"

model = preprocessing.StandardScaler() | tree.HoeffdingTreeClassifier(grace_period=50)
name = cli.upload_model(model, "multiclass")

samples = list(datasets.ImageSegments().take(301))
for x, y in samples[:300]:
    cli.learn(name, x=x, y=y)

params = cli.get_model_json(name)
assert params["HoeffdingTreeClassifier"]["grace_period"] == 50, params

# A multiclass model predicts the class itself.
x, y = samples[300]
result = cli.predict(name, x=x)
classes = {label for _, label in samples}
assert result["prediction"] in classes, result
print(f"Predicted {result['prediction']!r}; truth: {y!r}")

# The downloaded model is the served one: it predicts the same.
with tempfile.TemporaryDirectory() as folder:
    with open(cli.download_model(name, os.path.join(folder, "model.pkl")), "rb") as handle:
        downloaded = dill.load(handle)
assert downloaded.predict_one(x) == result["prediction"]

# The truth arrives later: label the prediction by its identifier.
cli.label(y, result["identifier"], name)

metrics = cli.metrics(name)
assert set(metrics) == {
    "Accuracy", "CrossEntropy", "MacroPrecision", "MacroRecall", "MacroF1",
    "MicroPrecision", "MicroRecall", "MicroF1",
}, metrics  # fmt: skip
assert 0 < metrics["Accuracy"] <= 1 and metrics["CrossEntropy"] > 0, metrics
stats = cli.stats(name)
assert stats["learn"]["n_calls"] == 300 and stats["predict"]["n_calls"] == 1, stats

assert name in cli.models()["models"]
cli.delete_model(name)
assert name not in cli.models()["models"]
print(f"Multiclass example done: accuracy {metrics['Accuracy']:.3f}")
