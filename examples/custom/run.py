"""Serve a custom model with riverapi: a model class of your own, learning TrumpApproval.

Start the server first (`make run`), then, from the repository root:

    .venv/bin/python examples/custom/run.py

The model's class lives in an importable module, examples/custom/model.py, so the pickle
refers to it by name (examples.custom.model.EWMeanRegressor); the server resolves it because
the app (examples/app.py) imports that module and its RIVER_ML_UNPICKLE_ALLOWED_MODULES names
"examples": the unpickler never imports a module itself.
A class defined in this script (in __main__) would be pickled by value, which the server
refuses.

RIVER_ML_SERVER names another server (default http://127.0.0.1:8000). riverapi exits with
status 1 on any unsuccessful response; the asserts catch wrong results.
"""

import os
import sys
import tempfile

import dill
from river import datasets
from riverapi.main import Client

# Run as a script, this file's folder is on sys.path, not the repository root.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from examples.custom.model import EWMeanRegressor  # noqa: E402

cli = Client(os.environ.get("RIVER_ML_SERVER", "http://127.0.0.1:8000"))
assert cli.info()["status"] == "running"

name = cli.upload_model(EWMeanRegressor(alpha=0.2), "custom")

samples = list(datasets.TrumpApproval().take(201))
for x, y in samples[:200]:
    cli.learn(name, x=x, y=y)

# The parameters are those of the class's __init__.
assert cli.get_model_json(name) == {"alpha": 0.2}

# Locally, the same model learning the same samples predicts the same.
local = EWMeanRegressor(alpha=0.2)
for x, y in samples[:200]:
    local.learn_one(x, y)
x, y = samples[200]
result = cli.predict(name, x=x)
assert abs(result["prediction"] - local.predict_one(x)) < 1e-9, result
print(f"Predicted {result['prediction']:.2f} for a true approval of {y:.2f}")

# The downloaded model is an EWMeanRegressor again.
with tempfile.TemporaryDirectory() as folder:
    with open(cli.download_model(name, os.path.join(folder, "model.pkl")), "rb") as handle:
        downloaded = dill.load(handle)
assert isinstance(downloaded, EWMeanRegressor) and downloaded.predict_one(x) == result["prediction"]

# The truth arrives later: label the prediction by its identifier.
cli.label(y, result["identifier"], name)

assert cli.metrics(name) == {}  # the custom flavor has no metrics, but it has stats
stats = cli.stats(name)
assert stats["learn"]["n_calls"] == 200 and stats["predict"]["n_calls"] == 1, stats

assert name in cli.models()["models"]
cli.delete_model(name)
assert name not in cli.models()["models"]
print("Custom example done")
