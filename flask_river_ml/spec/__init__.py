"""Models from JSON descriptions, built with river's own constructors: nothing is unpickled.

A description names a class and the arguments of its constructor::

    {"class": "river.linear_model.LogisticRegression",
     "params": {"optimizer": {"class": "river.optim.SGD", "params": {"lr": 0.1}}}}

``args`` holds positional arguments (a pipeline's steps, a union's transformers, the keys of
``compose.Select``); a JSON list as a pipeline step is a ``TransformerUnion`` of its items, as
in river; ``{"tuple": [...]}`` is a tuple (a named step ``("scale", estimator)``), and a list
becomes the tuple or set a parameter's annotation asks for. What ``GET /api/model/<name>/``
shows of a model is valid ``params`` for its class: ``{"class": "LogisticRegression",
"params": <that JSON>}`` builds an untrained copy.

What resolves: river's public classes (those its packages export, all subclasses of
``river.base.Base``) outside the modules that read files, import or forward attribute access,
and the classes of the modules named in ``RIVER_ML_UNPICKLE_ALLOWED_MODULES`` that the
application has already imported. A path is looked up in the namespace of an imported module,
never through attributes, and nothing the request names is imported.

Construction is bounded before it starts (the size of the description, integers, the sizes
of ensembles and trees) and checked after it (time, and the size of the model's pickle;
:mod:`.checks`). Names resolve in :mod:`.classes`, parameters are checked and converted in
:mod:`.parameters`, and :mod:`.builder` calls the constructors.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from ..errors import InvalidSpec
from .builder import Builder
from .checks import MAX_CHARS, MAX_MODEL_BYTES, MAX_SECONDS, MAX_VALUES, check_built, check_size
from .classes import RIVER_FORBIDDEN, RIVER_PACKAGES

__all__ = ["MAX_CHARS", "MAX_MODEL_BYTES", "MAX_SECONDS", "MAX_VALUES", "RIVER_FORBIDDEN", "RIVER_PACKAGES", "build"]


def build(description: Any, allowed_modules: Iterable[str] = (), max_bytes: int = MAX_MODEL_BYTES) -> Any:
    """The estimator that ``description`` describes, built with river's constructors.

    ``description`` is an object with ``class`` and optional ``args`` and ``params``; its
    ``params`` may be what ``GET /api/model/<name>/`` shows of a model of that class, which
    builds an untrained copy. Raises :class:`InvalidSpec` naming the path in the description
    and what to change for anything that cannot or may not be built; the built model's pickle
    is bounded by ``max_bytes`` (and :data:`MAX_MODEL_BYTES`).
    """
    if not isinstance(description, dict):
        raise InvalidSpec(
            'A model description is an object such as {"class": "river.linear_model.LinearRegression", '
            '"params": {"l2": 0.01}}.'
        )
    check_size(description)
    started = time.monotonic()
    model = Builder(allowed_modules).describe(description, "model", (1, 1))
    check_built(model, time.monotonic() - started, min(max_bytes, MAX_MODEL_BYTES))
    return model
