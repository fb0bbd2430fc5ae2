"""Models from JSON descriptions (POST /api/model/<flavor>/ with a JSON body, add_model(dict)):
built with river's constructors, predicting like the same river model trained locally;
refusals that name what to fix; bounds on construction and on the JSON of GET /api/model/."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
import tracemalloc
from typing import Any

import pytest
from river import compose, datasets, feature_extraction, linear_model, multiclass, optim, preprocessing

from flask_river_ml import InvalidInput, InvalidSpec
from flask_river_ml.encoding import jsonable, model_params
from flask_river_ml.spec import build

TRUMP = list(datasets.TrumpApproval().take(40))
PHISHING = list(datasets.Phishing().take(40))
SEGMENTS = list(datasets.ImageSegments().take(60))

LOGISTIC = {
    "class": "river.linear_model.LogisticRegression",
    "params": {"optimizer": {"class": "river.optim.SGD", "params": {"lr": 0.1}}, "l2": 0.001},
}
UNION_PIPELINE = {
    "class": "river.compose.Pipeline",
    "args": [
        {
            "class": "river.compose.TransformerUnion",
            "args": [
                {
                    "class": "river.compose.Pipeline",
                    "args": [
                        {"class": "river.compose.Select", "args": ["ordinal_date", "gallup"]},
                        {"class": "river.preprocessing.StandardScaler"},
                    ],
                },
                {"class": "river.preprocessing.MinMaxScaler"},
            ],
        },
        {
            "class": "LinearRegression",
            "params": {"intercept_lr": {"class": "Constant", "params": {"learning_rate": 0.05}}},
        },
    ],
}
ONE_VS_REST = {
    "class": "river.multiclass.OneVsRestClassifier",
    "params": {"classifier": {"class": "river.linear_model.LogisticRegression"}},
}


def logistic():
    return linear_model.LogisticRegression(optimizer=optim.SGD(0.1), l2=0.001)


def union_pipeline():
    union = (compose.Select("ordinal_date", "gallup") | preprocessing.StandardScaler()) + preprocessing.MinMaxScaler()
    return union | linear_model.LinearRegression(intercept_lr=optim.schedulers.Constant(0.05))


def one_vs_rest():
    return multiclass.OneVsRestClassifier(linear_model.LogisticRegression())


CASES = [
    ("binary", LOGISTIC, logistic, PHISHING),
    ("regression", UNION_PIPELINE, union_pipeline, TRUMP),
    ("multiclass", ONE_VS_REST, one_vs_rest, SEGMENTS),
]


def assert_error(response, status: int, *fragments: str) -> str:
    assert response.status_code == status, (response.status_code, response.data[:500])
    assert response.mimetype == "application/json"
    message = response.get_json()["message"]
    for fragment in fragments:
        assert fragment in message, message
    return message


def served_prediction(client, name: str, x: dict) -> Any:
    response = client.post("/api/predict/", json={"model": name, "features": x})
    assert response.status_code in (200, 201), response.data
    return response.get_json()["prediction"]


def local_prediction(model: Any, flavor: str, x: dict) -> Any:
    return jsonable(model.predict_proba_one(x) if flavor == "binary" else model.predict_one(x))


# --- building and serving ----------------------------------------------------------------------


@pytest.mark.parametrize(("flavor", "description", "local", "samples"), CASES, ids=[c[0] for c in CASES])
def test_json_model_predicts_like_river(app, flavor, description, local, samples):
    """A model created from JSON and trained over HTTP predicts exactly as river does."""
    client = app.test_client()
    response = client.post(f"/api/model/{flavor}/json-model/", json=description)
    assert response.status_code == 201 and response.get_json() == {"name": "json-model"}
    model = local()
    train, test = samples[: len(samples) // 2], samples[len(samples) // 2 :]
    for x, y in train:
        response = client.post("/api/learn/", json={"model": "json-model", "features": x, "ground_truth": y})
        assert response.status_code == 201, response.data
        model.learn_one(x, y)
    for x, _ in test:
        assert served_prediction(client, "json-model", x) == pytest.approx(local_prediction(model, flavor, x))
    assert local_prediction(model, flavor, test[0][0]) != local_prediction(local(), flavor, test[0][0])


@pytest.mark.parametrize(("flavor", "description", "local", "samples"), CASES, ids=[c[0] for c in CASES])
def test_shown_params_round_trip_to_an_untrained_copy(app, river_ml, flavor, description, local, samples):
    """{"class": C, "params": <the model's JSON>} builds a copy with the same parameters, untrained."""
    client = app.test_client()
    assert client.post(f"/api/model/{flavor}/trained/", json=description).status_code == 201
    for x, y in samples[:10]:
        response = client.post("/api/learn/", json={"model": "trained", "features": x, "ground_truth": y})
        assert response.status_code == 201
    shown = model_params(river_ml.get_model("trained"))
    assert shown == model_params(local())
    river_ml.add_model({"class": type(local()).__name__, "params": shown}, flavor, "copy")
    assert model_params(river_ml.get_model("copy")) == shown
    fresh = local()
    for x, _ in samples[10:15]:
        assert served_prediction(client, "copy", x) == pytest.approx(local_prediction(fresh, flavor, x))


@pytest.mark.parametrize(("flavor", "description", "local", "samples"), CASES, ids=[c[0] for c in CASES])
def test_get_json_round_trips_over_http(app, flavor, description, local, samples):
    """What GET /api/model/<name>/ answers, posted back as "params", builds the same model."""
    client = app.test_client()
    assert client.post(f"/api/model/{flavor}/trained/", json=description).status_code == 201
    shown = client.get("/api/model/trained/").get_json()
    # Sent as a client would: the test client's own JSON encoder sorts keys (pipeline steps).
    copy = json.dumps({"class": type(local()).__name__, "params": shown})
    response = client.post(f"/api/model/{flavor}/copy/", data=copy, content_type="application/json")
    assert response.status_code == 201, response.data
    assert client.get("/api/model/copy/").get_json() == shown


def test_in_process_add_model_takes_a_description(river_ml):
    name = river_ml.add_model(LOGISTIC, "binary")
    built = river_ml.get_model(name)
    assert model_params(built) == model_params(logistic())
    for not_an_object in ("river.linear_model.LinearRegression", ["LinearRegression", {}]):
        with pytest.raises(InvalidSpec, match="A model description is an object"):
            build(not_an_object)
    with pytest.raises(InvalidSpec, match="LinearRegression takes"):
        river_ml.add_model({"class": "river.linear_model.LinearRegression", "params": {"lr": 1}}, "regression")
    assert river_ml.models() == [name]


def test_positional_args_tuples_and_lists_as_river_takes_them(river_ml):
    """Named steps are tuples, a list step is a union, and a JSON list becomes the tuple or set
    a parameter's annotation asks for (BagOfWords' ngram_range and stop_words)."""
    description = {
        "class": "river.compose.Pipeline",
        "args": [
            {"tuple": ["words", {"class": "BagOfWords", "params": {"ngram_range": [1, 2], "stop_words": ["the"]}}]},
            {"tuple": ["nb", {"class": "river.naive_bayes.MultinomialNB", "params": {"alpha": 0.5}}]},
        ],
    }
    model = river_ml.get_model(river_ml.add_model(description, "multiclass"))
    assert list(model.steps) == ["words", "nb"]
    assert model["words"].ngram_range == (1, 2) and model["words"].stop_words == {"the"}
    expected = feature_extraction.BagOfWords(ngram_range=(1, 2), stop_words={"the"})
    assert model_params(model["words"]) == model_params(expected)


def test_imported_custom_module_resolves_and_unimported_one_is_never_imported(make_app, tmp_path, monkeypatch):
    marker = tmp_path / "imported.txt"
    package = tmp_path / "custom_models_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(
        "from river import linear_model\n"
        "class Doubler(linear_model.LinearRegression):\n"
        "    def predict_one(self, x):\n"
        "        return 2 * super().predict_one(x)\n"
    )
    (package / "sneaky.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\nclass Model: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_UNPICKLE_ALLOWED_MODULES=["custom_models_pkg"])
    client = app.test_client()
    message = assert_error(
        client.post("/api/model/custom/", json={"class": "custom_models_pkg.sneaky.Model"}), 400, "not imported"
    )
    assert "application must import" in message
    assert not marker.exists() and "custom_models_pkg.sneaky" not in sys.modules
    importlib.import_module("custom_models_pkg.models")  # what the application does at start-up
    response = client.post("/api/model/regression/doubler/", json={"class": "custom_models_pkg.models.Doubler"})
    assert response.status_code == 201, response.data
    x, y = TRUMP[0]
    client.post("/api/learn/", json={"model": "doubler", "features": x, "ground_truth": y})
    local = sys.modules["custom_models_pkg.models"].Doubler()
    local.learn_one(x, y)
    assert served_prediction(client, "doubler", TRUMP[1][0]) == pytest.approx(local.predict_one(TRUMP[1][0]))
    sys.modules.pop("custom_models_pkg.models")
    sys.modules.pop("custom_models_pkg")


# --- refusals ----------------------------------------------------------------------------------

REFUSED = [
    ({"class": "river.linear_model.NoSuchModel"}, "not one of river's"),
    ({"class": "NoSuchModel"}, "not one of river's public classes"),
    ({"class": "os.system"}, "outside river and the modules named in RIVER_ML_UNPICKLE_ALLOWED_MODULES"),
    ({"class": "subprocess.Popen", "args": [["touch", "/tmp/x"]]}, "outside river"),
    ({"class": "river.utils.math.minkowski_distance"}, "no functions"),
    ({"class": "river.utils.rolling.Rolling"}, "not one of river's"),
    ({"class": "river.utils.Rolling"}, "not one of river's"),
    ({"class": "river.base.Base.__getattr__"}, "no functions, methods or attributes"),
    ({"class": "river.linear_model.LinearRegression.__init__.__globals__"}, "not one of river's"),
    ({"class": "river.datasets.Phishing"}, "not one of river's"),
    ({"class": "river.stream.iter_csv"}, "not one of river's"),
    ({"class": "river.evaluate.progressive_val_score"}, "not one of river's"),
    ({"class": "Constant"}, "river.optim.initializers.Constant, river.optim.schedulers.Constant"),
    ({"class": "river.linear_model.LinearRegression", "params": {"learning_rate": 0.1}}, "unknown parameter"),
    ({"class": "river.linear_model.LinearRegression", "params": {"l2": "a lot"}}, "model.l2", "takes float"),
    ({"class": "river.linear_model.LinearRegression", "params": {"optimizer": 0.1}}, "Optimizer | None"),
    (
        {"class": "river.linear_model.LinearRegression", "params": {"optimizer": {"class": "river.stats.Mean"}}},
        "model.optimizer: Mean is not a valid value",
    ),
    ({"class": "river.tree.HoeffdingTreeRegressor", "params": {"grace_period": True}}, "takes int"),
    ({"class": "river.linear_model.LinearRegression", "args": [1]}, "takes no positional"),
    ({"class": "river.compose.FuncTransformer"}, "FuncTransformer", "missing 1 required positional argument"),
    ({"class": "river.stats.Entropy", "params": {"fading_factor": 2.0}}, "Entropy", "ValueError"),
    ({"model": "json, not a pickle"}, '"class"'),
    ({"class": ["river.linear_model.LinearRegression"]}, "'class' must be a class name"),
    (
        {"class": "river.compose.Pipeline", "params": {"StandardScaler": {}, "os.system": {}}},
        "model.os.system: 'os.system' is outside river",
    ),
    ({"class": "river.compose.Pipeline", "params": {"scale": {}}}, "'scale' is not one of river's public classes"),
]


@pytest.mark.parametrize(("description", "fragments"), [(c[0], c[1:]) for c in REFUSED], ids=range(len(REFUSED)))
def test_refusals_say_what_to_fix(app, description, fragments):
    client = app.test_client()
    assert_error(client.post("/api/model/regression/refused/", json=description), 400, *fragments)
    assert client.get("/api/models/").get_json() == {"models": []}


def nested_list(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


BOMBS = [
    ({"class": "river.anomaly.HalfSpaceTrees", "params": {"n_trees": 1_000_000}}, "n_trees=1000000 is out of bounds"),
    ({"class": "river.anomaly.HalfSpaceTrees", "params": {"height": 40}}, "height=40 is out of bounds"),
    ({"class": "river.anomaly.HalfSpaceTrees", "params": {"n_trees": 100, "height": 14}}, "multiply to"),
    ({"class": "river.forest.ARFClassifier", "params": {"n_models": 10**6}}, "n_models=1000000"),
    (
        {
            "class": "river.ensemble.BaggingClassifier",
            "params": {
                "n_models": 100,
                "model": {"class": "river.forest.ARFClassifier", "params": {"n_models": 100, "seed": 1}},
            },
        },
        "multiply to",
    ),
    (
        {
            "class": "river.neighbors.KNNClassifier",
            "params": {"engine": {"class": "river.neighbors.LazySearch", "params": {"window_size": 10**12}}},
        },
        "model.engine.window_size: the integer 1000000000000 is too large",
    ),
    ({"class": "river.metrics.ROCAUC", "params": {"n_thresholds": 10**9}}, "n_thresholds"),
    ({"class": "river.time_series.SNARIMAX", "params": {"p": 1, "d": 10**6, "q": 1}}, "d=1000000"),
    ({"class": "river.sketch.Counter", "params": {"epsilon": 1e-8}}, "epsilon=1e-08 is below"),
    ({"class": "river.sketch.Counter", "params": {"epsilon": 1e-5, "delta": 1e-10}}, "would take more than"),
    ({"class": "river.feature_extraction.RBFSampler", "params": {"n_components": 10**7}}, "n_components"),
    ({"class": "river.preprocessing.StandardScaler", "params": {"window_size": 10**9}}, "too large"),
    ({"class": "river.compose.Select", "args": [str(i) for i in range(2000)]}, "too large"),
    ({"class": "river.compose.Select", "args": ["x" * 100_000]}, "too large"),
    ({"class": "river.compose.Select", "args": [nested_list(30)]}, "nests deeper"),
]


@pytest.mark.parametrize(("description", "fragment"), BOMBS, ids=range(len(BOMBS)))
def test_memory_bombs_are_refused_before_they_allocate(make_app, description, fragment):
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory")
    client = app.test_client()
    tracemalloc.start()
    started = time.monotonic()
    try:
        response = client.post("/api/model/custom/bomb/", json=description)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert_error(response, 400, fragment)
    assert time.monotonic() - started < 5 and peak < 64 * 2**20, peak
    assert client.get("/api/models/").get_json() == {"models": []}


def test_defaults_and_seeds_are_not_size_bounded(river_ml):
    """River's own large defaults (memory_estimate_period) and big seeds build."""
    description = {
        "class": "river.forest.ARFClassifier",
        "params": {"memory_estimate_period": 2_000_000, "seed": 2**40},
    }
    model = river_ml.get_model(river_ml.add_model(description, "multiclass"))
    assert model.seed == 2**40
    with pytest.raises(InvalidSpec, match="memory_estimate_period: the integer 3000000 is too large"):
        river_ml.add_model({**description, "params": {"memory_estimate_period": 3_000_000}}, "multiclass")


# --- the JSON of GET /api/model/<name>/ is bounded -------------------------------------------


class Panicking(BaseException):
    """Stands for a Rust panic: a BaseException that passes every ``except Exception``."""


class BrokenParams:
    """A custom model whose parameters cannot be read."""

    def learn_one(self, x: dict, y: Any = None) -> None:
        pass

    def predict_one(self, x: dict) -> int:
        return 0

    def _get_params(self) -> dict:
        raise Panicking("called `Option::unwrap()` on a `None` value")


def shared_references(levels: int, width: int) -> list:
    value: list = [0]
    for _ in range(levels):
        value = [value] * width
    return value


def self_referencing() -> list:
    value: list = []
    value.append(value)
    return value


@pytest.mark.parametrize(
    ("make_value", "fragment"),
    [(lambda: shared_references(4, 1000), "too large to show"), (self_referencing, "nest deeper")],
    ids=["shared", "cycle"],
)
def test_model_json_is_bounded(app, river_ml, make_value, fragment):
    model = linear_model.LinearRegression()
    model.l2 = make_value()
    name = river_ml.add_model(model, "regression")
    started = time.monotonic()
    assert_error(app.test_client().get(f"/api/model/{name}/"), 400, fragment)
    assert time.monotonic() - started < 5
    with pytest.raises(InvalidInput):
        model_params(model)


def test_model_json_of_a_failing_model_is_400(app, river_ml):
    name = river_ml.add_model(BrokenParams(), "custom")
    assert_error(app.test_client().get(f"/api/model/{name}/"), 400, "cannot be read", "Panicking")
    assert app.test_client().get("/api/").status_code == 200


def test_a_models_json_is_the_same_in_every_process():
    """A set among the parameters (``Select``'s keys) is shown sorted, not in the order of the
    process's string hashing: every worker shows one JSON, and posting it back builds the same."""
    code = (
        "import json; from river import compose; from flask_river_ml.encoding import model_params; "
        "print(json.dumps(model_params(compose.Select('ordinal_date', 'gallup', 'approve', 'disapprove'))))"
    )
    shown = {
        subprocess.run(
            [sys.executable, "-c", code], env={**os.environ, "PYTHONHASHSEED": str(seed)}, capture_output=True,
            text=True, check=True,
        ).stdout
        for seed in range(6)
    }  # fmt: skip
    assert len(shown) == 1
    assert json.loads(shown.pop())["_POSITIONAL_ARGS"] == ["approve", "disapprove", "gallup", "ordinal_date"]
