"""The example server, served by ``make run`` on http://127.0.0.1:8000 (riverapi's default).

    gunicorn --bind 127.0.0.1:8000 --workers 1 --threads 8 examples.app:app

Models are kept in a shelve store in ``examples/instance/``. Every setting can be overridden
from the environment with the ``FLASK_`` prefix, e.g. ``FLASK_RIVER_ML_APP_DIR=/tmp/river``.
"""

import logging
from pathlib import Path

from flask import Flask

import examples.custom.model  # noqa: F401 - the unpickler resolves classes only in modules the app imported
from flask_river_ml import FlaskRiverML

# The package's own log at INFO (models created and deleted, snapshots, a store that cannot be
# used), every other logger's at WARNING, on stderr beside gunicorn's lines and in their form.
logging.basicConfig(
    format="[%(asctime)s] [%(process)d] [%(levelname)s] %(name)s: %(message)s",
    datefmt="%Y-%m-%d %H:%M:%S %z",
    level=logging.WARNING,
)
logging.getLogger("flask_river_ml").setLevel(logging.INFO)

app = Flask(__name__, instance_path=str(Path(__file__).resolve().parent / "instance"))
app.config["RIVER_ML_STORAGE_BACKEND"] = "shelve"
# The custom example uploads a model whose class lives in examples.custom.model: the server
# unpickles classes of that module only because it is named here and imported above.
app.config["RIVER_ML_UNPICKLE_ALLOWED_MODULES"] = ["examples"]
app.config.from_prefixed_env()

river_ml = FlaskRiverML(app)
