"""The reconstructors one load offers in place of the callables pickles name
(:data:`~.allowlist.RECONSTRUCTORS`): each checks its arguments against the upload's budget
before it allocates or calls anything, and none runs once the load is over."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import UnsafePickle
from .allowlist import RECONSTRUCTORS
from .arrays import ArrayChecks
from .standard import StandardChecks

if TYPE_CHECKING:
    from .loader import Loader


class Checks(ArrayChecks, StandardChecks):
    """The reconstructors an upload may call, each checking its arguments against one upload's
    budget before it allocates or calls anything."""

    def __init__(self, loader: Loader) -> None:
        self.loader = loader
        self.budget = loader.budget
        self.allow = loader.allow
        self.names = loader.names
        self.own_dtypes = set()
        self.wrappers = {method: self._while_loading(getattr(self, method)) for method in set(RECONSTRUCTORS.values())}
        #: (module, name) -> what ``find_class`` gives for it.
        self.reconstructors = {key: self.wrappers[method] for key, method in RECONSTRUCTORS.items()}
        self.callable_ids = {id(function) for function in self.reconstructors.values()}

    def _while_loading(self, function: Callable[..., Any]) -> Callable[..., Any]:
        """``function``, refusing to run once the load is over: a model keeping a reconstructor
        as state cannot call it later, outside this upload's budget."""

        @functools.wraps(function)
        def reconstructor(*args: Any) -> Any:
            if not self.loader.loading:
                raise UnsafePickle("A reconstructor of an uploaded pickle was called after the upload was loaded.")
            return function(*args)

        return reconstructor
