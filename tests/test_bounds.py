"""Bounds on what a model's parameters ask for later, the same for a model built from JSON and
for an uploaded pickle: counts and sizes, tokenizer patterns that scan in linear time, n-gram
lengths, and text models' preprocessing steps."""

from __future__ import annotations

import functools
import pickle
import re
from typing import Any

import pytest
from river import base, compose, ensemble, facto, feature_extraction, linear_model, preprocessing
from river.feature_extraction import vectorize

from flask_river_ml.bounds import (
    MAX_NGRAM,
    MAX_TERMS,
    OutOfBounds,
    check_expansion,
    check_pattern,
    expansion_plan,
    widest,
)
from flask_river_ml.errors import UnsafePickle
from flask_river_ml.unpickle import safe_loads

TEXTS = [
    ({"text": "the cat sat on the mat"}, True),
    ({"text": "dogs bark at the moon"}, False),
    ({"text": "a cat and a dog"}, True),
    ({"text": "the moon is full tonight"}, False),
]
#: Patterns people tokenize with, that scan a text in linear time.
LINEAR = [
    r"(?u)\b\w[\w\-]+\b",
    r"(?u)\b\w\w+\b",
    r"\S+",
    r"\w+",
    r"(\w+)",
    r"[^\s,;]+",
    r"\b[a-z]+\b",
    r"#\w+",
    r"\w{2,15}",
]
#: Patterns that backtrack: exponential, or quadratic over a long word.
BACKTRACKING = [
    r"(a+)+$", r"(x+x+)+y", r"(a|aa)+", r"(\w+\s?)+$", r"\w+x", r"\w+$", r"[a-z]+\b", r"\d+(?:\.\d+)?",
    r"(?=\w+x)", r"(\w)\1", r"\w{1,300}", r"\w*\w*\w*z", "a" * 300, r"\w?" * 10 + r"\w{200}!",
]  # fmt: skip


@pytest.mark.parametrize("pattern", LINEAR)
def test_linear_patterns_are_accepted(pattern):
    check_pattern(pattern, "pattern")


@pytest.mark.parametrize("pattern", BACKTRACKING)
def test_backtracking_patterns_are_refused_naming_the_fix(pattern):
    with pytest.raises(OutOfBounds, match="tokenizer pattern|linear time|not allowed"):
        check_pattern(pattern, "pattern")


def _trained(model):
    for x, y in TEXTS:
        model.learn_one(x, y)
    return model


@pytest.mark.parametrize("protocol", range(6))
def test_text_models_with_n_grams_upload_and_predict_like_river(protocol):
    model = _trained(feature_extraction.BagOfWords(on="text", ngram_range=(1, 3)) | linear_model.LogisticRegression())
    loaded = safe_loads(pickle.dumps(model, protocol=protocol))
    for x, _ in TEXTS:
        assert loaded.predict_proba_one(x) == model.predict_proba_one(x)


@pytest.mark.parametrize(
    "change, fragment",
    [
        (lambda m: setattr(m, "n_factors", 10**6), "n_factors=1000000"),
        (lambda m: setattr(m, "n_factors", -1), "n_factors=-1"),
    ],
)
def test_an_uploaded_models_parameters_are_bounded(change, fragment):
    model = facto.FMRegressor()
    change(model)
    with pytest.raises(UnsafePickle, match=re.escape(fragment)):
        safe_loads(pickle.dumps(model))


@pytest.mark.parametrize(
    "step, fragment",
    [
        (functools.partial(vectorize.find_all_ngrams, ngram_range=[20000]), "n-gram lengths"),
        (functools.partial(vectorize.find_all_ngrams, ngram_range=range(1, MAX_NGRAM + 2)), "n-gram lengths"),
        (functools.partial(vectorize.find_ngrams, n=MAX_NGRAM + 1), "n-gram lengths"),
        (functools.partial(vectorize.tokenize_using_regex_pattern, pattern=r"(a+)+$"), "not allowed"),
        (functools.partial(vectorize.tokenize_using_regex_pattern, r"\w+"), "by keyword"),
        (functools.partial(vectorize.remove_stop_words, {"a"}, stop_words={"b"}), "by keyword"),
        (functools.partial(vectorize.remove_stop_words, stop_words=range(10**6)), "stop words are a set"),
        (functools.partial(vectorize.remove_stop_words, stop_words=["w"] * 1001), "stop words are a set"),
    ],
)
def test_text_preprocessing_steps_are_bounded(step, fragment):
    model = feature_extraction.BagOfWords(on="text")
    model.processing_steps.append(step)
    with pytest.raises(UnsafePickle, match=fragment):
        safe_loads(pickle.dumps(model))


def test_text_preprocessing_steps_within_bounds_load():
    model = feature_extraction.BagOfWords(on="text", stop_words={"the"}, ngram_range=(1, MAX_NGRAM))
    model.processing_steps.append(functools.partial(vectorize.find_ngrams, n=2))
    loaded = safe_loads(pickle.dumps(model))
    assert loaded.transform_one({"text": "the cat sat"}) == model.transform_one({"text": "the cat sat"})


@pytest.mark.parametrize(
    "params, fragment",
    [
        ({"tokenizer_pattern": r"(a+)+$"}, "tokenizer_pattern"),
        ({"tokenizer_pattern": r"\w+x"}, "linear time"),
        ({"ngram_range": [1, 20000]}, "n-gram lengths"),
        ({"ngram_range": [1, MAX_NGRAM + 1]}, "n-gram lengths"),
    ],
)
def test_json_text_models_are_bounded(app, params, fragment):
    response = app.test_client().post(
        "/api/model/binary/text/", json={"class": "river.feature_extraction.BagOfWords", "params": params}
    )
    assert response.status_code == 400
    assert fragment in response.get_json()["message"]
    assert app.test_client().get("/api/models/").get_json()["models"] == []


def test_json_text_model_with_its_own_pattern_predicts_like_river(app):
    description = {
        "class": "river.compose.Pipeline",
        "args": [
            {"class": "river.feature_extraction.BagOfWords", "params": {"on": "text", "tokenizer_pattern": r"\S+"}},
            {"class": "river.linear_model.LogisticRegression"},
        ],
    }
    client = app.test_client()
    assert client.post("/api/model/binary/text/", json=description).status_code == 201
    local = compose.Pipeline(
        feature_extraction.BagOfWords(on="text", tokenizer_pattern=r"\S+"), linear_model.LogisticRegression()
    )
    for x, y in TEXTS:
        assert client.post("/api/learn/", json={"model": "text", "features": x, "ground_truth": y}).status_code == 201
        local.learn_one(x, y)
    for x, _ in TEXTS:
        served = client.post("/api/predict/", json={"model": "text", "features": x}).get_json()["prediction"]
        assert served == {str(label).lower(): p for label, p in local.predict_proba_one(x).items()}


def test_json_factorization_machine_factors_are_bounded(app):
    response = app.test_client().post(
        "/api/model/regression/fm/", json={"class": "river.facto.FMRegressor", "params": {"n_factors": 10**5}}
    )
    assert response.status_code == 400
    assert "n_factors=100000 is out of bounds" in response.get_json()["message"]


def test_ensembles_nested_in_an_upload_multiply_their_sizes():
    """An ensemble clones its prototype into as many members as it asks for: nested in an
    upload, their sizes multiply as a description's do, whatever members the upload holds."""
    from river import ensemble

    inner = ensemble.BaggingClassifier(linear_model.LogisticRegression(), n_models=2)
    model = ensemble.BaggingClassifier(ensemble.BaggingClassifier(inner, n_models=2), n_models=2)
    safe_loads(pickle.dumps(model))  # 8 members along the path: within bounds
    for level in (model, model.model, model.model.model):
        level.n_models = 100  # the members it holds stay 2, the clones it would make are 100
    with pytest.raises(UnsafePickle, match="members along nested ensembles"):
        safe_loads(pickle.dumps(model))


def _held(model: Any, x: dict) -> int:
    """The most features ``model``'s steps hold at once for ``x``, by running them."""
    if isinstance(model, compose.Pipeline):
        most = len(x)
        for step in model.steps.values():
            if not isinstance(step, base.Transformer):
                break
            most = max(most, _held(step, x))
            step.learn_one(x)
            x = step.transform_one(x)
        return max(most, len(x))
    if isinstance(model, base.Transformer):
        model.learn_one(x)
        return max(len(x), len(model.transform_one(x)))
    return max(len(x), *(_held(inner, x) for inner in [getattr(model, "model", None)] if inner is not None))


EXPANDING = [
    lambda: feature_extraction.PolynomialExtender(degree=3) | linear_model.LinearRegression(),
    lambda: feature_extraction.PolynomialExtender(degree=4, interaction_only=True, include_bias=True),
    lambda: preprocessing.StandardScaler() | feature_extraction.PolynomialExtender() | linear_model.LinearRegression(),
    lambda: compose.TransformerUnion(
        feature_extraction.PolynomialExtender(), preprocessing.StandardScaler() | compose.Prefixer("scaled_")
    ),
    lambda: compose.TransformerProduct(preprocessing.StandardScaler(), preprocessing.MinMaxScaler()),
    lambda: ensemble.BaggingRegressor(feature_extraction.PolynomialExtender() | linear_model.LinearRegression()),
    # A Grouper passes on what its transformer makes; an RBFSampler makes n_components features of each.
    lambda: (
        compose.Grouper(feature_extraction.PolynomialExtender(), by="f0")
        | feature_extraction.RBFSampler(n_components=3, seed=1)
    ),
    # Steps that make a number of features their parameters set, whatever they are given.
    lambda: preprocessing.GaussianRandomProjector(n_components=20, seed=1) | feature_extraction.PolynomialExtender(),
    lambda: preprocessing.SparseRandomProjector(n_components=20, seed=1) | linear_model.LinearRegression(),
    lambda: feature_extraction.RandomTreesEmbedding(n_trees=12, seed=1) | linear_model.LinearRegression(),
    lambda: preprocessing.LDA(n_components=15, seed=1),
]


@pytest.mark.parametrize("make", EXPANDING)
@pytest.mark.parametrize("n", [1, 3, 7])
def test_the_expansion_of_a_sample_is_what_river_builds(make, n):
    x = {f"f{i}": float(i + 1) for i in range(n)}
    assert widest(expansion_plan(make()), n) == _held(make(), x)


@pytest.mark.parametrize(
    "make",
    [
        lambda: compose.TransformerUnion(feature_extraction.PolynomialExtender(), preprocessing.StandardScaler()),
        lambda: feature_extraction.PolynomialExtender() | feature_extraction.PolynomialExtender(),
        lambda: (
            compose.Grouper(feature_extraction.PolynomialExtender(), by="f0") | feature_extraction.PolynomialExtender()
        ),
        lambda: _shared_steps(),
        lambda: _shared_product(),
    ],
)
def test_an_expansion_whose_terms_share_names_is_bounded_from_above(make):
    """A union merges its parts' features by name (a polynomial's first degree and the scaled
    features), and chained extenders (after a Grouper, or one extender run twice) build some
    products twice, as does a product of an extender with itself: river holds fewer terms than
    the bound counts, never more."""
    x = {f"f{i}": float(i + 1) for i in range(7)}
    assert widest(expansion_plan(make()), 7) > _held(make(), x) > 7


def test_models_that_do_not_multiply_features_have_no_expansion():
    model = (
        preprocessing.StandardScaler()
        | compose.TransformerUnion(compose.Select("a"), preprocessing.MinMaxScaler())
        | linear_model.LinearRegression()
    )
    assert expansion_plan(model) is None
    check_expansion(None, 10**6)


def test_a_sample_is_refused_where_its_expansion_passes_the_bound():
    """Degree 2 turns 445 features into 99 680 terms and 446 into 100 127, as river builds them."""
    model = feature_extraction.PolynomialExtender()
    for n, fits in ((445, True), (446, False)):
        x = {f"f{i}": 1.0 for i in range(n)}
        assert (len(model.transform_one(x)) <= MAX_TERMS) is fits
        if fits:
            check_expansion(expansion_plan(model), n)
        else:
            with pytest.raises(OutOfBounds, match=f"these {n} features into 100127 terms"):
                check_expansion(expansion_plan(model), n)


@pytest.mark.parametrize("how", ["json", "pickle"])
def test_a_served_polynomial_model_refuses_samples_it_would_expand_too_far(app, how):
    """A model of degree 3 predicts like river on a few features; 100 features (176 850 terms)
    are refused with 400 on learn and predict, and the model has not learned them."""
    client = app.test_client()
    local = feature_extraction.PolynomialExtender(degree=3) | linear_model.LinearRegression()
    if how == "json":
        description = {
            "class": "river.compose.Pipeline",
            "args": [
                {"class": "river.feature_extraction.PolynomialExtender", "params": {"degree": 3}},
                {"class": "river.linear_model.LinearRegression"},
            ],
        }
        assert client.post("/api/model/regression/poly/", json=description).status_code == 201
    else:
        response = client.post("/api/model/regression/poly/", data=pickle.dumps(local.clone()))
        assert response.status_code == 201
    few = {"a": 0.5, "b": -1.0, "c": 2.0}
    wide = {f"f{i}": 0.1 for i in range(100)}
    for body in ({"model": "poly", "features": wide, "ground_truth": 1.0}, {"model": "poly", "features": wide}):
        response = client.post("/api/learn/" if "ground_truth" in body else "/api/predict/", json=body)
        assert response.status_code == 400
        assert "these 100 features into 176850 terms" in response.get_json()["message"]
    assert client.post("/api/learn/", json={"model": "poly", "features": few, "ground_truth": 1.5}).status_code == 201
    local.learn_one(few, 1.5)
    served = client.post("/api/predict/", json={"model": "poly", "features": few}).get_json()["prediction"]
    assert served == local.predict_one(few)


@pytest.mark.parametrize("degree", ["3", 2.5, None])
def test_an_upload_with_a_degree_that_is_no_integer_fails_in_river_not_in_the_server(app, degree):
    """The expansion is read from the upload's state without trusting it: a degree river
    cannot use fails in river's code on the first sample, as a 400."""
    model = feature_extraction.PolynomialExtender() | linear_model.LinearRegression()
    model["PolynomialExtender"].degree = degree
    client = app.test_client()
    assert client.post("/api/model/regression/odd/", data=pickle.dumps(model)).status_code == 201
    response = client.post("/api/learn/", json={"model": "odd", "features": {"a": 1.0}, "ground_truth": 1.0})
    assert response.status_code == 400
    assert "The model could not learn from this sample: TypeError" in response.get_json()["message"]


def _features(n: int) -> dict:
    return {f"f{i}": 1.0 + i / n for i in range(n)}


def _upload(client: Any, name: str, model: Any, flavor: str = "regression") -> None:
    body = {"json": model} if isinstance(model, dict) else {"data": pickle.dumps(model)}
    assert client.post(f"/api/model/{flavor}/{name}/", **body).status_code == 201


def _refused(client: Any, name: str, x: dict, terms: int, y: Any = 1.0) -> None:
    """Learn and predict on ``x`` answer 400, naming the terms it would have expanded into."""
    for path, body in (("/api/learn/", {"ground_truth": y}), ("/api/predict/", {})):
        response = client.post(path, json={"model": name, "features": x, **body})
        assert response.status_code == 400, response.get_json()
        assert f"these {len(x)} features into {terms} terms" in response.get_json()["message"]


def _shared_steps() -> compose.Pipeline:
    """A pipeline that runs one extender twice, under two names."""
    extender = feature_extraction.PolynomialExtender()
    model = compose.Pipeline(extender, linear_model.LinearRegression())
    regression = model.steps.pop("LinearRegression")
    model.steps["again"] = extender
    model.steps["LinearRegression"] = regression
    return model


def _shared_product() -> compose.TransformerProduct:
    """A product of one extender with itself."""
    extender = feature_extraction.PolynomialExtender()
    product = compose.TransformerProduct(extender, preprocessing.StandardScaler())
    product.transformers = {"a": extender, "b": extender}
    return product


def _json(*steps: dict) -> dict:
    return {"class": "river.compose.Pipeline", "args": [*steps, {"class": "river.linear_model.LinearRegression"}]}


def _extender(degree: int = 2) -> dict:
    return {"class": "river.feature_extraction.PolynomialExtender", "params": {"degree": degree}}


def test_a_served_grouper_counts_what_its_transformer_makes(app):
    """A Grouper passes on its transformer's output: an extender after a Grouper of one sees
    464 features from 29 (108 344 terms), not 29."""
    client = app.test_client()
    grouper = {"class": "river.compose.Grouper", "params": {"transformer": _extender(), "by": "g"}}
    _upload(client, "grouped", _json(grouper, _extender()))
    _refused(client, "grouped", {**_features(28), "g": 1.0}, 108344)
    fits = {**_features(27), "g": 1.0}  # 94 829 terms
    assert (
        client.post("/api/learn/", json={"model": "grouped", "features": fits, "ground_truth": 1.0}).status_code == 201
    )


def _bagging_member() -> tuple[Any, Any, str, Any]:
    member = feature_extraction.PolynomialExtender(degree=3) | linear_model.LinearRegression()
    model = ensemble.BaggingRegressor(linear_model.LinearRegression(), n_models=2)
    model.data = [member, linear_model.LinearRegression()]
    return model, member, "regression", 1.0


def _chain_member() -> tuple[Any, Any, str, Any]:
    from river import multioutput

    member = feature_extraction.PolynomialExtender(degree=3) | linear_model.LinearRegression()
    model = multioutput.RegressorChain(linear_model.LinearRegression(), order=["a"])
    model.data = {"a": member}
    return model, member, "custom", {"a": 1.0}


def _grouper_copy() -> tuple[Any, Any, str, Any]:
    grouper = compose.Grouper(preprocessing.StandardScaler(), by="f0")
    grouper.transformers["1.0"] = member = feature_extraction.PolynomialExtender(degree=3)
    return grouper | linear_model.LinearRegression(), member, "regression", 1.0


def _grouper_factory() -> tuple[Any, Any, str, Any]:
    import copy

    grouper = compose.Grouper(preprocessing.StandardScaler(), by="f0")
    member = feature_extraction.PolynomialExtender(degree=3)
    grouper.transformers.default_factory = functools.partial(copy.deepcopy, member)
    return grouper | linear_model.LinearRegression(), member, "regression", 1.0


HIDDEN = [_bagging_member, _chain_member, _grouper_copy, _grouper_factory]


@pytest.mark.parametrize("make", HIDDEN)
def test_estimators_an_upload_holds_outside_its_parameters_are_counted(make):
    """Ensemble members, a chain's models, a Grouper's copies and the factory it makes them
    with are where an upload keeps estimators its parameters do not show."""
    model, member, _, _ = make()
    x = _features(7)
    assert widest(expansion_plan(model), 7) == _held(member, x) == 119


@pytest.mark.parametrize("make", HIDDEN)
def test_a_served_upload_refuses_samples_its_hidden_members_would_expand(app, make):
    """90 features are 129 765 terms of degree 3."""
    model, _, flavor, y = make()
    client = app.test_client()
    _upload(client, "hidden", model, flavor)
    _refused(client, "hidden", {**_features(90), "f0": 1.0}, 129765, y)


@pytest.mark.parametrize(("make", "n", "terms"), [(_shared_steps, 30, 123255), (_shared_product, 24, 104976)])
def test_a_served_model_counts_a_step_it_runs_twice(app, make, n, terms):
    """One extender run twice: 30 features become 495, then 123 255 in a pipeline; 24 become
    324, and 324 * 324 in a product."""
    client = app.test_client()
    model = make()
    _upload(client, "twice", model if isinstance(model, compose.Pipeline) else model | linear_model.LinearRegression())
    _refused(client, "twice", _features(n), terms)


def test_numpy_integers_are_bounded_like_ints(app):
    """An upload may hold numpy integers where river expects ints: they are capped, and
    counted, the same."""
    import numpy as np

    from flask_river_ml.bounds import is_int

    assert is_int(np.int64(3)) and is_int(np.uint8(3)) and not is_int(True) and not is_int(np.bool_(True))
    model = feature_extraction.PolynomialExtender() | linear_model.LinearRegression()
    model["PolynomialExtender"].degree = np.int64(11)
    with pytest.raises(UnsafePickle, match="degree=11 is out of bounds"):
        safe_loads(pickle.dumps(model))
    model["PolynomialExtender"].degree = np.int64(3)
    assert widest(expansion_plan(model), 7) == _held(model, _features(7)) == 119
    client = app.test_client()
    _upload(client, "numpy", model)
    _refused(client, "numpy", _features(90), 129765)


@pytest.mark.parametrize("flag", ["interaction_only", "include_bias"])
def test_an_upload_with_a_flag_that_is_no_bool_fails_in_river_not_in_the_server(app, flag):
    """``bool()`` of an array raises: the plan does not call it, and reads the flag the way
    that counts the most terms (all products, and the bias); river fails on the sample, as a
    400, instead of every request failing with 500."""
    import numpy as np

    model = feature_extraction.PolynomialExtender() | linear_model.LinearRegression()
    setattr(model["PolynomialExtender"], flag, np.array([1, 2]))
    assert widest(expansion_plan(model), 7) == 35 + (flag == "include_bias")
    client = app.test_client()
    _upload(client, "flag", model)
    response = client.post("/api/learn/", json={"model": "flag", "features": {"a": 1.0}, "ground_truth": 1.0})
    assert response.status_code == 400
    assert "The model could not learn from this sample: ValueError" in response.get_json()["message"]


def test_a_state_the_plan_cannot_read_refuses_every_sample(monkeypatch):
    from flask_river_ml import expansion

    def fails(value: Any, parts: list) -> None:
        raise TypeError("an odd state")

    monkeypatch.setattr(expansion, "_step", fails)
    plan = expansion_plan(linear_model.LinearRegression())
    with pytest.raises(OutOfBounds, match="could not be read"):
        check_expansion(plan, 1)


@pytest.mark.parametrize(
    "make",
    [
        lambda: facto.HOFMRegressor(degree=2, seed=1),
        lambda: facto.HOFMRegressor(degree=3, seed=1),
        lambda: facto.HOFMClassifier(degree=4, seed=1),
        lambda: facto.FMRegressor(seed=1),
        lambda: facto.FFMRegressor(seed=1),
        lambda: facto.FwFMClassifier(seed=1),
    ],
)
@pytest.mark.parametrize("n", [1, 3, 7])
def test_a_factorization_machine_counts_the_combinations_it_loops_over(make, n):
    model, x = make(), _features(n)
    assert widest(expansion_plan(model), n) == max(n, len(list(model._interaction_combination_keys(x))))


def test_a_served_higher_order_factorization_machine_refuses_too_many_combinations(app):
    """Degree 3 on 85 features loops over 3570 pairs and 98 770 triples."""
    client = app.test_client()
    _upload(client, "hofm", {"class": "river.facto.HOFMRegressor", "params": {"degree": 3}})
    _refused(client, "hofm", _features(85), 102340)
    assert (
        client.post("/api/learn/", json={"model": "hofm", "features": _features(5), "ground_truth": 1.0}).status_code
        == 201
    )


def test_a_served_rbf_sampler_counts_the_features_it_makes(app):
    """300 components of each of 2 features, then a degree of 2: 180 900 terms."""
    client = app.test_client()
    rbf = {"class": "river.feature_extraction.RBFSampler", "params": {"n_components": 300}}
    _upload(client, "rbf", _json(rbf, _extender()))
    _refused(client, "rbf", _features(2), 180900)


def test_an_rbf_sampler_counts_the_weights_an_upload_holds():
    """Weights already drawn for a feature are used as they are, however many."""
    sampler = feature_extraction.RBFSampler(n_components=2)
    sampler.weights["f0"], sampler.offsets = [0.5] * 50, [0.0] * 50
    assert widest(expansion_plan(sampler), 1) == len(sampler.transform_one({"f0": 1.0})) == 50
