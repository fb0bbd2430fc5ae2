"""The restricted unpickler for uploaded models: it allows classes, not code.

A pickle is a small program for a stack machine whose instructions name globals and call them.
This unpickler (:mod:`.loader`) runs that program with four rules, checked before anything is
called:

- **Names resolve to classes on an allow-list** (:mod:`.allowlist`, looked up by
  :mod:`.names`): river's estimators, metrics, stats and the data structures their state
  holds; numpy and scipy value types; the standard containers and value types; and the
  classes defined in the modules named in ``RIVER_ML_UNPICKLE_ALLOWED_MODULES``. No function,
  method or attribute path resolves, except a short list of named functions that river models
  keep as parameters (tokenizers, distance functions, static methods used as factories).
  A name resolves only in a module the server has imported already: the unpickler never
  imports (importing a module runs it), so a custom model's module must be imported by the app.
- **Only listed callables are called.** REDUCE, NEWOBJ, NEWOBJ_EX, INST and OBJ call a class
  on the list (:mod:`.calls`) or one of the reconstructors of ``RECONSTRUCTORS`` (copyreg's,
  numpy's, dill's inert helpers, ``getattr`` limited to what river pickles need:
  :mod:`.checks`), each with its arguments checked. A callable produced any other way (an
  attribute of an object, a bound method) is refused. Calling a river estimator class runs its
  ``__init__``; river's pickles never do, so only the few classes whose pickles need it are
  callable.
- **BUILD sets plain instance state.** No state on classes, modules or functions, no dunder
  attribute, slot state only through ``object.__setattr__``; a class's own ``__setstate__``
  runs only for classes on the list, numpy's after its sizes are checked.
- **Allocations are checked before they happen.** numpy arrays and dtypes (element count with
  sub-array shapes, itemsize, offset and strides inside the buffer, no object arrays over raw
  memory: :mod:`.arrays`), ``bytes(n)``, container elements: everything is charged to one
  budget per upload (:mod:`.budget`), eight times its size plus a fixed margin.
- **What the model will allocate later is bounded too.** Once loaded, every estimator's
  parameters obey the bounds of a model built from JSON (``bounds``, checked by :mod:`.walk`:
  ensemble sizes multiplied along nested ensembles, components, tree heights, tokenizer
  patterns, n-gram lengths, stop words), and a text model's preprocessing steps take their
  arguments by keyword, within the same bounds.

Any failure while loading, whatever it raises (a Rust panic included) but the interpreter's
own exits, is an :class:`~flask_river_ml.errors.UnsafePickle` naming the problem.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from ..errors import INTERPRETER_EXITS, UnsafePickle
from .budget import SLOT_COST, upload_budget
from .loader import Loader
from .refusals import describe
from .walk import check_shape

__all__ = ["safe_loads"]


def safe_loads(data: bytes, allowed_modules: Iterable[str] = (), max_bytes: int | None = None) -> Any:
    """Unpickle an uploaded model under the allow-list (see the module docstring).

    ``max_bytes`` is RIVER_ML_UPLOAD_MAX_BYTES: a longer upload is refused, and what the
    pickle may allocate is a fixed multiple of its size.
    """
    if not isinstance(data, bytes | bytearray):
        raise UnsafePickle("The upload is not bytes.")
    budget = upload_budget(len(data), max_bytes)
    budget.charge(len(data), "the pickle's own strings and bytes")
    try:
        model = Loader(bytes(data), allowed_modules, budget).load()
        check_shape(model, budget.limit // SLOT_COST)
        return model
    except UnsafePickle:
        raise
    except INTERPRETER_EXITS:
        raise
    except BaseException as error:  # noqa: BLE001 - a Rust panic is a BaseException; any failure is the upload's
        # Never repr(error): its arguments may be the upload's objects, whose repr is their code.
        description = ", ".join(describe(arg) for arg in error.args[:3])
        raise UnsafePickle(
            f"The upload is not a loadable pickle of a model: {type(error).__name__}({description})"
        ) from None
