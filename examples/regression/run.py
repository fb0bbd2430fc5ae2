"""Serve a regression model with riverapi: learn TrumpApproval, predict, label, check metrics.

Start the server first (`make run`), then, from the repository root:

    .venv/bin/python examples/regression/run.py

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

model = preprocessing.StandardScaler() | linear_model.LinearRegression(intercept_lr=0.1)
name = cli.upload_model(model, "regression")

samples = list(datasets.TrumpApproval().take(201))
for x, y in samples[:200]:
    cli.learn(name, x=x, y=y)

params = cli.get_model_json(name)
assert set(params) == {"StandardScaler", "LinearRegression"}, params

x, y = samples[200]
result = cli.predict(name, x=x)
assert isinstance(result["prediction"], float), result
print(f"Predicted {result['prediction']:.2f} for a true approval of {y:.2f}")

# The downloaded model is the served one: it predicts the same.
with tempfile.TemporaryDirectory() as folder:
    with open(cli.download_model(name, os.path.join(folder, "model.pkl")), "rb") as handle:
        downloaded = dill.load(handle)
assert downloaded.predict_one(x) == result["prediction"]

# The truth arrives later: label the prediction by its identifier.
cli.label(y, result["identifier"], name)

metrics = cli.metrics(name)
assert set(metrics) == {"MAE", "RMSE", "SMAPE"} and metrics["MAE"] > 0, metrics
stats = cli.stats(name)
assert stats["learn"]["n_calls"] == 200 and stats["predict"]["n_calls"] == 1, stats

assert name in cli.models()["models"]
cli.delete_model(name)
assert name not in cli.models()["models"]
print(f"Regression example done: MAE {metrics['MAE']:.3f}")
