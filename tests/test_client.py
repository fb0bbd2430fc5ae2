"""The in-process client: model management, errors, stats."""

from __future__ import annotations

import uuid

import pytest
from river import datasets, linear_model, preprocessing

import flask_river_ml
from flask_river_ml import (
    Busy,
    IdentifierNotFound,
    InvalidInput,
    ModelExists,
    ModelNotFound,
    RiverMLError,
    StoreUnavailable,
    layout,
)
from flask_river_ml.names import NAME_PATTERN
from flask_river_ml.stats import humanize_ns


def regressor():
    return preprocessing.StandardScaler() | linear_model.LinearRegression()


def trained(river_ml, name, count=30):
    samples = list(datasets.TrumpApproval().take(count))
    for x, y in samples:
        river_ml.learn(name, ground_truth=y, features=x)
    return samples


def test_add_list_delete(river_ml):
    assert river_ml.models() == []
    generated = river_ml.add_model(regressor(), "regression")
    assert NAME_PATTERN.fullmatch(generated) and generated.count("-") >= 1
    river_ml.add_model(regressor(), "regression", name="b-model")
    river_ml.add_model(regressor(), "regression", name="a-model")
    assert river_ml.models() == sorted(["a-model", "b-model", generated])
    with pytest.raises(ModelExists):
        river_ml.add_model(regressor(), "regression", name="a-model")
    assert river_ml.delete_model("a-model") is True
    assert river_ml.delete_model("a-model") is False
    assert "a-model" not in river_ml.models()
    # The name is free again, for a fresh model.
    river_ml.add_model(regressor(), "regression", name="a-model")
    assert river_ml.stats("a-model")["learn"]["n_calls"] == 0


def test_get_model_is_a_copy(river_ml):
    name = river_ml.add_model(regressor(), "regression")
    samples = trained(river_ml, name)
    x = samples[0][0]
    before = river_ml.predict(x, name)["prediction"]
    copy = river_ml.get_model(name)
    assert copy.predict_one(x) == pytest.approx(before)
    for sample_x, sample_y in samples:
        copy.learn_one(sample_x, sample_y * 100)
    assert river_ml.predict(x, name)["prediction"] == before


def test_save_model_replaces_and_keeps_flavor(river_ml):
    name = river_ml.add_model(regressor(), "regression")
    samples = trained(river_ml, name)
    metrics = river_ml.metrics(name)
    replacement = regressor()
    replacement.learn_one(*samples[0])
    river_ml.save_model(replacement, name)
    assert river_ml.predict(samples[1][0], name)["prediction"] == pytest.approx(replacement.predict_one(samples[1][0]))
    assert river_ml.metrics(name) == metrics
    assert river_ml.stats(name)["learn"]["n_calls"] == len(samples)
    with pytest.raises(flask_river_ml.IncompatibleModel):
        river_ml.save_model(linear_model.LogisticRegression(), name)
    with pytest.raises(ModelNotFound):
        river_ml.save_model(regressor(), "nobody")


def test_save_pickle_load_model_round_trip(river_ml, tmp_path):
    name = river_ml.add_model(regressor(), "regression")
    samples = trained(river_ml, name)
    path = tmp_path / "model.pkl"
    river_ml.save_pickle(name, str(path))
    loaded = river_ml.load_model(str(path))
    for x, _ in samples[:5]:
        assert loaded.predict_one(x) == pytest.approx(river_ml.predict(x, name)["prediction"], abs=1e-12)


def test_unknown_model_everywhere(river_ml):
    calls = [
        lambda: river_ml.get_model("ghost"),
        lambda: river_ml.save_model(regressor(), "ghost"),
        lambda: river_ml.stats("ghost"),
        lambda: river_ml.metrics("ghost"),
        lambda: river_ml.learn("ghost", ground_truth=1.0, features={"x": 1}),
        lambda: river_ml.predict({"x": 1}, "ghost"),
        lambda: river_ml.label(1.0, "some-id", "ghost"),
        lambda: river_ml.save_pickle("ghost", "unused.pkl"),
    ]
    for call in calls:
        with pytest.raises(ModelNotFound, match="No model named 'ghost'."):
            call()


def test_bad_input(river_ml):
    name = river_ml.add_model(regressor(), "regression")
    with pytest.raises(InvalidInput):
        river_ml.add_model(regressor(), "regression", name="has space")
    with pytest.raises(InvalidInput):
        river_ml.add_model(regressor(), "regression", name="a:b")
    with pytest.raises(InvalidInput):
        river_ml.predict([1, 2], name)
    with pytest.raises(InvalidInput):
        river_ml.learn(name, ground_truth=1.0, features="x=1")
    with pytest.raises(InvalidInput):
        river_ml.predict({"x": 1}, name, identifier="")
    with pytest.raises(InvalidInput):
        river_ml.label(None, "id", name)
    with pytest.raises(IdentifierNotFound):
        river_ml.label(1.0, "never-made", name)
    with pytest.raises(InvalidInput):
        river_ml.learn(name, ground_truth=1.0, prediction={"a": None, "b": 1}, features={"x": 1})
    assert river_ml.stats(name)["learn"]["n_calls"] == 0


def test_errors_share_one_base():
    for error in flask_river_ml.errors.__all__:
        assert issubclass(getattr(flask_river_ml, error), RiverMLError)


def test_predict_identifiers_setting(make_app):
    x = {"x": 1.0}
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_GENERATE_IDENTIFIERS=False)
    river_ml = flask_river_ml.FlaskRiverML()
    with app.app_context():
        name = river_ml.add_model(regressor(), "regression")
        assert river_ml.predict(x, name) == {"model": name, "prediction": 0.0}
        assert river_ml.predict(x, name, identifier=7) == {"model": name, "prediction": 0.0, "identifier": "7"}
        assert river_ml.label(1.0, 7, name) == "Successful label."


def test_generated_identifiers_are_random_uuids(river_ml):
    name = river_ml.add_model(regressor(), "regression")
    identifiers = [river_ml.predict({"x": 1.0}, name)["identifier"] for _ in range(50)]
    assert len(set(identifiers)) == 50
    for identifier in identifiers:
        parsed = uuid.UUID(identifier)
        assert (parsed.version, parsed.variant, str(parsed)) == (4, uuid.RFC_4122, identifier)


def test_stats_format(river_ml):
    name = river_ml.add_model(regressor(), "regression")
    empty = river_ml.stats(name)
    assert empty == {
        kind: {
            "n_calls": 0,
            "mean_duration": 0,
            "mean_duration_human": "0ns",
            "ewm_duration": 0,
            "ewm_duration_human": "0ns",
        }
        for kind in ("learn", "predict")
    }
    trained(river_ml, name, 5)
    river_ml.predict({"x": 1}, name)
    stats = river_ml.stats(name)
    assert stats["learn"]["n_calls"] == 5 and stats["predict"]["n_calls"] == 1
    for kind in ("learn", "predict"):
        assert isinstance(stats[kind]["mean_duration"], int) and stats[kind]["mean_duration"] > 0
        assert stats[kind]["mean_duration_human"] == humanize_ns(stats[kind]["mean_duration"])
    # A single call: the weighted mean is that call.
    assert stats["predict"]["ewm_duration"] == stats["predict"]["mean_duration"]


def test_humanize_ns():
    assert humanize_ns(0) == "0ns"
    assert humanize_ns(4773592) == "4ms773μs592ns"
    assert humanize_ns(61_000_000_001) == "1m1s1ns"


def test_ewm_weights_the_newest_call(river_ml):
    from flask_river_ml import stats

    backend = river_ml.state().backend
    for duration in (10, 20, 30):
        backend.observe(layout.timings("m", "learn"), duration, stats.EWM_ALPHA)
    rendered = stats.render({"learn": backend.observed(layout.timings("m", "learn"))})["learn"]
    assert rendered["n_calls"] == 3
    assert rendered["mean_duration"] == 20
    # 10, then 0.3 * 20 + 0.7 * 10 = 13, then 0.3 * 30 + 0.7 * 13 = 18.1
    assert rendered["ewm_duration"] == 18


def test_supervised_flavors_refuse_a_learn_without_ground_truth(river_ml):
    """Refused before anything is logged: the model and its log stay as they were."""
    name = river_ml.add_model(regressor(), "regression")
    with pytest.raises(InvalidInput, match="ground_truth"):
        river_ml.learn(name, features={"x": 1.0})
    assert river_ml.state().backend.read(layout.log(name)) == []
    assert river_ml.stats(name)["learn"]["n_calls"] == 0


@pytest.mark.parametrize("failure", [Busy("busy"), StoreUnavailable("away"), RuntimeError("unexpected")])
def test_a_label_that_fails_keeps_its_prediction_waiting(river_ml, monkeypatch, failure):
    """A label answered with an error was not learnt: its prediction keeps waiting, so the
    client's retry finds it and is learnt once."""
    name = river_ml.add_model(regressor(), "regression")
    samples = trained(river_ml, name, 5)
    x, y = samples[0]
    identifier = river_ml.predict(x, name)["identifier"]
    service = river_ml.service
    learn = service.engine.learn

    def fail_once(*args, **kwargs):
        monkeypatch.setattr(service.engine, "learn", learn)
        raise failure

    monkeypatch.setattr(service.engine, "learn", fail_once)
    with pytest.raises(type(failure)):
        river_ml.label(y, identifier, name)
    assert river_ml.label(y, identifier, name) == "Successful label."
    with pytest.raises(IdentifierNotFound):
        river_ml.label(y, identifier, name)
    local = regressor()
    for sample_x, sample_y in [*samples, (x, y)]:
        local.learn_one(sample_x, sample_y)
    assert river_ml.predict(x, name)["prediction"] == local.predict_one(x)
