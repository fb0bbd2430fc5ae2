"""Serve a clusterer with riverapi: learn TrumpApproval's features, assign a cluster.

Start the server first (`make run`), then, from the repository root:

    .venv/bin/python examples/cluster/run.py

RIVER_ML_SERVER names another server (default http://127.0.0.1:8000). riverapi exits with
status 1 on any unsuccessful response; the asserts catch wrong results.
"""

import os
import tempfile

import dill
from river import cluster, datasets, preprocessing
from riverapi.main import Client

cli = Client(os.environ.get("RIVER_ML_SERVER", "http://127.0.0.1:8000"))
assert cli.info()["status"] == "running"

model = preprocessing.StandardScaler() | cluster.KMeans(n_clusters=3, seed=42)
name = cli.upload_model(model, "cluster")

# Clustering is unsupervised: learn from the features alone (no y).
features = [x for x, _ in datasets.TrumpApproval().take(201)]
for x in features[:200]:
    cli.learn(name, x=x)

params = cli.get_model_json(name)
assert params["KMeans"]["n_clusters"] == 3, params

# A clusterer predicts the number of a cluster.
x = features[200]
result = cli.predict(name, x=x)
assert result["prediction"] in range(3), result
print(f"Assigned to cluster {result['prediction']}")

# The downloaded model is the served one: it predicts the same.
with tempfile.TemporaryDirectory() as folder:
    with open(cli.download_model(name, os.path.join(folder, "model.pkl")), "rb") as handle:
        downloaded = dill.load(handle)
assert downloaded.predict_one(x) == result["prediction"]

# Labelling a cluster prediction makes the model learn that sample (a clusterer ignores the label).
cli.label(result["prediction"], result["identifier"], name)

assert cli.metrics(name) == {}  # river has no metrics for this flavor
stats = cli.stats(name)
assert stats["learn"]["n_calls"] == 200 and stats["predict"]["n_calls"] == 1, stats

assert name in cli.models()["models"]
cli.delete_model(name)
assert name not in cli.models()["models"]
print("Cluster example done")
