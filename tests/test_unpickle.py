"""The restricted unpickler: every river model loads, nothing else runs."""

from __future__ import annotations

import importlib
import inspect
import os
import pickle
import pkgutil
import warnings
from pathlib import Path

import dill
import pytest
import river
from river import base, datasets

from flask_river_ml import UnsafePickle
from flask_river_ml.unpickle import safe_loads


def river_estimators() -> list[type]:
    """Every concrete river estimator class that can be built from its test parameters."""
    found = []
    for info in pkgutil.walk_packages(river.__path__, "river."):
        if ".test" in info.name or info.name.endswith("conftest"):
            continue
        try:
            module = importlib.import_module(info.name)
        except ImportError:  # optional dependencies of a few modules (torch, sklearn...)
            continue
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if issubclass(cls, base.Estimator) and not inspect.isabstract(cls) and cls.__module__ == module.__name__:
                found.append(cls)
    return found


def trained(cls: type):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = cls(**next(iter(cls._unit_test_params())))
        except Exception:  # noqa: BLE001 - some estimators need arguments their tests build
            return None
        for x, y in datasets.Phishing().take(5):
            try:
                if getattr(model, "_supervised", True):
                    model.learn_one(x, y)
                else:
                    model.learn_one(x)
            except Exception:  # noqa: BLE001 - not every estimator learns from these features
                break
    return model


def test_every_river_estimator_loads():
    """dill pickles of (nearly) all of river's estimators load, equal to the original."""
    checked, refused = 0, []
    for cls in river_estimators():
        model = trained(cls)
        if model is None:
            continue
        try:
            data = dill.dumps(model)
        except Exception:  # noqa: BLE001 - a few estimators hold unpicklable state
            continue
        checked += 1
        try:
            loaded = safe_loads(data)
        except UnsafePickle as error:
            refused.append(f"{cls.__module__}.{cls.__name__}: {error}")
            continue
        assert type(loaded) is cls
        assert dill.dumps(loaded) == data or repr(loaded) == repr(model)
    assert checked > 100
    assert refused == []


class _Exploit:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


@pytest.mark.parametrize(
    "payload",
    [
        lambda marker: pickle.dumps(_Exploit(os.system, f"touch {marker}")),
        lambda marker: pickle.dumps(_Exploit(eval, f"open({str(marker)!r}, 'w')")),
        lambda marker: pickle.dumps(_Exploit(exec, f"open({str(marker)!r}, 'w')")),
        lambda marker: pickle.dumps(_Exploit(open, str(marker), "w")),
        lambda marker: pickle.dumps(_Exploit(Path.touch, Path(marker))),
        lambda marker: pickle.dumps(_Exploit(getattr, river.linear_model.LinearRegression(), "learn_one")),
        lambda marker: pickle.dumps(_Exploit(__import__, "os")),
        lambda marker: dill.dumps(lambda: Path(marker).touch()),
        lambda marker: pickle.dumps(_Exploit(importlib.import_module, "os")),
        lambda marker: pickle.dumps(_Exploit(river.stream.iter_csv, str(marker))),
        lambda marker: pickle.dumps(_Exploit(iter, river.linear_model.LinearRegression, None)),
    ],
)
def test_malicious_pickles_are_refused_unrun(tmp_path, payload):
    marker = tmp_path / "pwned"
    with pytest.raises(UnsafePickle):
        safe_loads(payload(marker))
    assert not marker.exists()


def test_a_class_defined_by_value_is_refused(tmp_path):
    marker = tmp_path / "pwned"

    class Local(base.Regressor):
        def learn_one(self, x, y):
            Path(marker).touch()

        def predict_one(self, x):
            return 0.0

    with pytest.raises(UnsafePickle, match="RIVER_ML_UNPICKLE_ALLOWED_MODULES"):
        safe_loads(dill.dumps(Local()))
    assert not marker.exists()


class Plain:
    """A custom model class in an importable module."""

    def __init__(self):
        self.seen = 3


def test_allowed_modules_admit_custom_models():
    data = pickle.dumps(Plain())
    module = Plain.__module__.split(".")[0]
    with pytest.raises(UnsafePickle, match="RIVER_ML_UNPICKLE_ALLOWED_MODULES"):
        safe_loads(data)
    assert safe_loads(data, allowed_modules=[module]).seen == 3
    # Allowing a module admits its classes and functions, not what an instance reduces to.
    with pytest.raises(UnsafePickle, match="posix.system"):
        safe_loads(pickle.dumps(_Exploit(os.system, "true")), allowed_modules=[module])


def test_garbage_is_refused():
    for data in (b"", b"not a pickle", b"\x80\x05\x95" + b"\xff" * 20):
        with pytest.raises(UnsafePickle):
            safe_loads(data)


def test_text_pipelines_with_itemgetter_load():
    """BagOfWords(on=...) keeps an operator.itemgetter: allowed; attrgetter is not."""
    import operator

    from river import feature_extraction, naive_bayes

    model = feature_extraction.BagOfWords(on="text") | naive_bayes.MultinomialNB()
    model.learn_one({"text": "sweet honey"}, "sweet")
    loaded = safe_loads(dill.dumps(model))
    assert loaded.predict_proba_one({"text": "honey"}) == model.predict_proba_one({"text": "honey"})
    assert safe_loads(pickle.dumps(operator.itemgetter("text")))({"text": 1}) == 1
    with pytest.raises(UnsafePickle):
        safe_loads(pickle.dumps(operator.attrgetter("__globals__")))


def _opcode_string(text: str) -> bytes:
    return b"V" + text.encode() + b"\n"


def test_state_cannot_change_classes_or_special_attributes(tmp_path):
    """BUILD may fill an instance's attributes, not a class's, nor an instance's dunders.

    The second payload is the shape of a real attack: a model whose ``__reduce_ex__`` would
    make the server's own snapshot of it name ``subprocess.Popen``.
    """
    import river.linear_model

    marker = tmp_path / "pwned"
    patch_class = (
        b"\x80\x04criver.linear_model\nLinearRegression\n(N}"
        + _opcode_string("predict_one")
        + b"criver.utils.math\nsigmoid\nstb."
    )
    with pytest.raises(UnsafePickle, match="sets attributes"):
        safe_loads(patch_class)
    assert river.linear_model.LinearRegression.predict_one is not river.utils.math.sigmoid

    command = f"touch {marker}"
    swap_reduce = (
        b"\x80\x04cfunctools\npartial\n(cdill._dill\n_getattr\n(cbuiltins\ndict\n"
        + _opcode_string("get")
        + b"tR}K\x05"
        + _opcode_string(command)
        + b"stRp1\n0criver.linear_model\nLinearRegression\n)R(N}"
        + _opcode_string("__reduce_ex__")
        + b"g1\nstb."
    )
    with pytest.raises(UnsafePickle, match="dunder"):
        safe_loads(swap_reduce)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"\x80\x04cbuiltins\nbytearray\nJ\x00\xe1\xf5\x05\x85R.",  # bytearray(100_000_000)
        b"\x80\x04cnumpy\nones\nJ\x00\xe1\xf5\x05\x85R.",  # numpy.ones(100_000_000)
        b"\x80\x04cbuiltins\nrange\nJ\x00\xe1\xf5\x05\x85R.",  # range(...), for list() to fill
        b"\x80\x04ccollections\nnamedtuple\n(" + _opcode_string("Popen") + _opcode_string("a") + b"tR.",
    ],
)
def test_small_uploads_cannot_ask_for_huge_allocations_or_new_classes(payload):
    with pytest.raises(UnsafePickle):
        safe_loads(payload)


def test_bound_methods_of_random_generators_only():
    """A plain pickle names rng.gauss as getattr(rng, "gauss"): allowed; others are not."""
    import random

    import numpy

    rng = random.Random(1)
    assert safe_loads(pickle.dumps(rng.gauss))(0, 1) == random.Random(1).gauss(0, 1)
    with pytest.raises(UnsafePickle, match="tofile"):
        safe_loads(pickle.dumps(_Exploit(getattr, numpy.zeros(2), "tofile")))
