"""A model that takes its time over each sample and counts the samples it learnt, and the example
app that may unpickle it (``serve(..., app="slow_model:app")``): a batch sent to it is still
being learnt when a test kills the server.

The app is imported only when gunicorn asks for it, so that a test may import the model
without creating the example app in its own process.
"""

from __future__ import annotations

import time
from typing import Any

from river import linear_model


class SlowRegressor(linear_model.LinearRegression):
    """A linear regression that sleeps ``DELAY`` seconds in each learn and counts them in ``learnt``."""

    DELAY = 0.02

    def learn_one(self, x: dict, y: Any, w: float = 1.0) -> None:
        time.sleep(self.DELAY)
        self.learnt = getattr(self, "learnt", 0) + 1
        super().learn_one(x, y, w)


def __getattr__(name: str) -> Any:
    if name == "app":
        from examples.app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
