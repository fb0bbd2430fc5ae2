"""The Flask extension object, which is also the in-process client of the host app's code."""

from __future__ import annotations

import atexit
import logging
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

import dill
from flask import Flask

from . import keys, limits
from . import settings as settings_module
from .auth import SCOPES, Auth, CredentialsCheck, ScopeNames
from .cli import river_ml_cli
from .engine import Engine
from .errors import ConfigurationError, StoreUnavailable
from .http import access
from .http.access import rate_limit_key
from .http.views import create_blueprint
from .serialization import Codec
from .service import Service
from .settings import EXTENSION_KEY, Settings
from .storage import Backend, create_backend

logger = logging.getLogger(__name__)


@dataclass
class State:
    """What one app's registration owns, kept in ``app.extensions["river_ml"]``."""

    settings: Settings
    backend: Backend
    engine: Engine
    service: Service
    auth: Auth
    extension: FlaskRiverML
    #: Whether this host's keys agree with the store's; nothing is served until they do.
    keys: keys.KeyCheck

    def close(self) -> None:
        """Snapshot what changed since the last snapshots and release the store."""
        self.service.events.close()
        try:
            self.engine.close()
        except StoreUnavailable as error:
            # The log in the store still holds every change the missing snapshots would have.
            logger.warning("Snapshots not written at shutdown: %s", error.message)
        self.backend.close()


def _keys_checked() -> None:
    """Before every request of the blueprint: 503 until this host's keys agree with the store."""
    access.state().keys.ensure()


def _close_at_exit(reference: weakref.ReferenceType[State]) -> None:
    state = reference()
    if state is not None:
        state.close()


def _unknown_option(key: str) -> str:
    close = settings_module.closest_setting(key.upper())
    hint = f"; did you mean {close.lower()}?" if close else " (the options are the settings, without RIVER_ML_)."
    return f"Unknown flask-river-ml option {key}{hint}"


class FlaskRiverML:
    """Serve river models from a Flask app.

    ``FlaskRiverML(app)``, or ``river_ml = FlaskRiverML()`` then ``river_ml.init_app(app)``
    for app factories; one object can serve several apps. ``options`` are settings without
    their prefix (``storage_backend="memory"``) and serve as defaults under ``app.config``.

    Inside an app context the object is also the in-process client (the counterpart of
    django-river-ml's ``DjangoClient``): its methods see the same models, metrics, stats and
    events as the HTTP API, and raise the package's exceptions.
    """

    def __init__(self, app: Flask | None = None, **options: Any) -> None:
        #: The host app's own check of ``(username, api_token)``, if it gave one.
        self.credentials_check: CredentialsCheck | None = None
        unknown = sorted(key for key in options if key.upper() not in settings_module.SETTINGS)
        if unknown:
            raise ConfigurationError(" ".join(_unknown_option(key) for key in unknown))
        self.options = {settings_module.PREFIX + key.upper(): value for key, value in options.items()}
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Validate the settings of ``app`` and set up its store, engine and service."""
        if EXTENSION_KEY in app.extensions:
            raise RuntimeError("flask-river-ml is already registered on this app.")
        for key, value in self.options.items():
            app.config.setdefault(key, value)
        configured = settings_module.load(app)
        blob_key, token_key = keys.host_keys(configured, app.config.get("SECRET_KEY"))
        # The settings name the keys in force, wherever each came from.
        settings = replace(configured, shelve_secret_key=blob_key.value, jwt_secret_key=token_key.value)
        backend = create_backend(settings.store_url, root=settings.app_dir, prefix=settings.redis_prefix)
        # The token key matters only where tokens are issued: hosts with authentication off may
        # each keep their own.
        checked = [blob_key] if settings.disable_authentication else [blob_key, token_key]
        check = keys.KeyCheck(backend, checked)
        try:
            check.start()
        except BaseException:
            backend.close()
            raise
        engine = Engine(
            backend,
            Codec(blob_key.value),
            snapshot_every=settings.snapshot_every,
            waiting_ttl=settings.identifier_expires_seconds,
        )
        service = Service(
            engine,
            generate_identifiers=settings.generate_identifiers,
            unpickle_allowed_modules=list(settings.unpickle_allowed_modules),
            upload_max_bytes=settings.upload_max_bytes,
            max_features=settings.max_features,
            batch_max_samples=settings.batch_max_samples,
        )
        auth = Auth(backend, token_key.value, settings.token_expires_seconds)
        state = State(settings, backend, engine, service, auth, self, check)
        app.extensions[EXTENSION_KEY] = state
        blueprint = create_blueprint(settings)
        blueprint.before_request(_keys_checked)
        if not settings.view_rate_limit_disable:
            limits.install(app, blueprint, settings, rate_limit_key)
        app.register_blueprint(blueprint)
        app.cli.add_command(river_ml_cli)
        # A clean exit folds the logs into snapshots; the weak reference lets apps made by
        # tests be collected.
        atexit.register(_close_at_exit, weakref.ref(state))

    @staticmethod
    def state(app: Flask | None = None) -> State:
        """The registration state of ``app`` (default: the current app)."""
        return access.state(app)

    @staticmethod
    def _checked() -> State:
        # The in-process client serves nothing either before this host's keys agree with the store.
        state = access.state()
        state.keys.ensure()
        return state

    @property
    def service(self) -> Service:
        """The service of the current app."""
        return self._checked().service

    def verify_credentials(self, check: CredentialsCheck) -> CredentialsCheck:
        """Decorator: let the host app check ``(username, api_token)`` at the token endpoint.

        For apps that already have users: the check replaces the users kept by the extension,
        and the access tokens it leads to are valid until they expire. It returns True (every
        scope), False or None (refused), or the scope names it grants::

            @river_ml.verify_credentials
            def check(username: str, token: str) -> bool | list[str]:
                user = my_users.by_api_token(username, token)
                return user is not None and (["predict"] if user.is_viewer else True)
        """
        self.credentials_check = check
        return check

    # --- users --------------------------------------------------------------------------------

    def create_user(self, name: str, password: str, scopes: ScopeNames = SCOPES) -> str:
        """Create a user with ``scopes`` (predict, learn and manage by default); their API token
        (for RIVER_ML_TOKEN), shown once."""
        return self.state().auth.create_user(name, password, scopes)

    def set_scopes(self, name: str, scopes: ScopeNames) -> tuple[str, ...]:
        """Give the user exactly ``scopes``; access tokens already issued lose the others at once."""
        return self.state().auth.set_scopes(name, scopes)

    def get_token(self, name: str, password: str) -> str:
        """A fresh API token for the user; the old one stops working."""
        return self._checked().auth.get_token(name, password)

    def delete_user(self, name: str) -> bool:
        """Delete the user; True if they existed."""
        return self._checked().auth.delete_user(name)

    def users(self) -> list[str]:
        """Every user's name, sorted."""
        return self._checked().auth.users()

    # --- the in-process client -----------------------------------------------------------------

    def models(self) -> list[str]:
        """The names of every stored model, sorted."""
        return self.service.models()

    def add_model(self, model: Any, flavor: str, name: str | None = None) -> str:
        """Store ``model`` to be served as ``flavor``; its name (generated when None).

        ``model`` is an estimator, or a JSON description of one (a dict, as the HTTP API
        takes it: see ``docs/models.md``), built with river's own constructors.
        """
        if isinstance(model, dict):
            return self.service.create(model, flavor, name)
        return self.service.add_model(model, flavor, name)

    def delete_model(self, name: str) -> bool:
        """Delete the model; True if it existed."""
        return self.service.delete_model(name)

    def get_model(self, name: str) -> Any:
        """A copy of the model: changing it changes nothing stored."""
        return self.service.get_model(name)

    def save_model(self, model: Any, name: str) -> None:
        """Replace the stored model, keeping its flavor, metrics and stats."""
        self.service.save_model(model, name)

    def save_pickle(self, name: str, filename: str) -> None:
        """Write the model to ``filename`` as a dill pickle (what the download route serves)."""
        model = self.service.get_model(name)
        with open(filename, "wb") as handle:
            dill.dump(model, handle)

    def load_model(self, filename: str) -> Any:
        """Read a model written by :meth:`save_pickle`. Unpickling runs code: trusted files only."""
        with open(filename, "rb") as handle:
            return dill.load(handle)

    def stats(self, name: str) -> dict[str, dict[str, Any]]:
        """Counts and durations of the model's learn and predict calls."""
        return self.service.stats(name)

    def metrics(self, name: str) -> dict[str, Any]:
        """The model's metric values."""
        return self.service.metrics(name)

    def learn(
        self,
        model_name: str,
        ground_truth: Any = None,
        prediction: Any = None,
        features: Any = None,
        identifier: Any = None,
    ) -> str:
        """Make the model learn one sample (see :meth:`Service.learn`)."""
        return self.service.learn(model_name, ground_truth, prediction, features, identifier)

    def predict(self, features: Any, model_name: str, identifier: Any = None) -> dict[str, Any]:
        """``{"model", "prediction", "identifier"?}`` for the features."""
        return self.service.predict(features, model_name, identifier)

    def label(self, label: Any, identifier: Any, model_name: str) -> str:
        """Learn from the prediction stored under ``identifier`` with its true ``label``."""
        return self.service.label(label, identifier, model_name)

    def learn_batch(self, model_name: str, samples: Iterable[Any]) -> int:
        """Make the model learn every sample in order, as as many :meth:`learn` calls would, in
        one durable write; the number learnt. ``samples``: ``(features, ground_truth)`` pairs
        (``river.datasets.Phishing().take(100)``, ``river.stream.iter_pandas(X, y)``) or
        dictionaries as the HTTP route takes them; one refused refuses the batch (see
        :meth:`Service.learn_batch`)."""
        return self.service.learn_batch(model_name, samples)

    def predict_batch(
        self, features: Iterable[Any], model_name: str, identifiers: Iterable[Any] | None = None
    ) -> dict[str, Any]:
        """``{"model", "predictions", "identifiers"}`` for feature dictionaries (or
        ``(features, ground_truth)`` pairs), as as many :meth:`predict` calls would answer."""
        return self.service.predict_batch(features, model_name, identifiers)
