"""Serve a binary classifier with riverapi: learn Phishing, predict, label, check metrics.

Start the server first (`make run`), then, from the repository root:

    .venv/bin/python examples/binary/run.py

RIVER_ML_SERVER names another server (default http://127.0.0.1:8000). riverapi exits with
status 1 on any unsuccessful response; the asserts catch wrong results.
"""

import os
import tempfile

import dill
from river import datasets, linear_model, preprocessing
from riverapi.main import Client

cli = Client(os.environ.get("RIVER_ML_SERVER", "http://127.0.0.1:8000"))
assert cli.info()["status"] == "running"

model = preprocessing.StandardScaler() | linear_model.LogisticRegression()
name = "phishing-detector"  # a name of our choice; the server makes one up when none is given
if name in cli.models()["models"]:  # left behind by a run that stopped early
    cli.delete_model(name)
assert cli.upload_model(model, "binary", name) == name

samples = list(datasets.Phishing().take(201))
for x, y in samples[:200]:
    cli.learn(name, x=x, y=y)

params = cli.get_model_json(name)
assert set(params) == {"StandardScaler", "LogisticRegression"}, params

# A binary model predicts the probability of each class; JSON turns the labels into strings.
x, y = samples[200]
result = cli.predict(name, x=x)
proba = result["prediction"]
assert set(proba) == {"true", "false"} and abs(sum(proba.values()) - 1) < 1e-9, result
print(f"Phishing probability {proba['true']:.3f}; truth: {y}")

# The downloaded model is the served one: it predicts the same.
with tempfile.TemporaryDirectory() as folder:
    with open(cli.download_model(name, os.path.join(folder, "model.pkl")), "rb") as handle:
        downloaded = dill.load(handle)
assert downloaded.predict_proba_one(x)[True] == proba["true"]

# The truth arrives later: label the prediction by its identifier. The label may be spelled
# as the prediction's keys are: "true" is the class True.
cli.label("true" if y else "false", result["identifier"], name)

metrics = cli.metrics(name)
assert set(metrics) == {"Accuracy", "LogLoss", "Precision", "Recall", "F1"}, metrics
assert 0.5 < metrics["Accuracy"] <= 1, metrics
stats = cli.stats(name)
assert stats["learn"]["n_calls"] == 200 and stats["predict"]["n_calls"] == 1, stats

assert name in cli.models()["models"]
cli.delete_model(name)
assert name not in cli.models()["models"]
print(f"Binary example done: accuracy {metrics['Accuracy']:.3f}")
