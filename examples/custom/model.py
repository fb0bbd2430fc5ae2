"""A custom river model for the ``custom`` flavor.

The server can unpickle it because the app (examples/app.py) imports this module and
``examples`` is in RIVER_ML_UNPICKLE_ALLOWED_MODULES: the unpickler resolves classes only in
modules already imported, and never imports one itself.
"""

from river import base


class EWMeanRegressor(base.Regressor):
    """Predicts an exponentially weighted mean of the targets seen so far: a baseline.

    Parameters
    ----------
    alpha
        The weight of the newest target, between 0 and 1.
    """

    def __init__(self, alpha: float = 0.1):
        self.alpha = alpha
        self.mean = None

    def learn_one(self, x, y):
        self.mean = y if self.mean is None else self.mean + self.alpha * (y - self.mean)

    def predict_one(self, x):
        return 0.0 if self.mean is None else self.mean
