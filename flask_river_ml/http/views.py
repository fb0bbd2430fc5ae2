"""The HTTP API: a blueprint of thin views, wire-compatible with riverapi 0.0.21.

Each view reads its payload with a schema, calls the service and renders JSON. Every rule
accepts every method and answers the ones it does not serve with a JSON 405, and a catch-all
rule answers unknown paths under the prefix with a JSON 404: routing errors never reach a
blueprint's error handlers otherwise, and the host app's own error pages stay untouched.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import river
from flask import Blueprint, Response, current_app, render_template, request, url_for
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound, RequestEntityTooLarge
from werkzeug.routing import BuildError

from ..auth import LEARN, MANAGE, PREDICT
from ..encoding import json_bytes, jsonable
from ..errors import Forbidden, InvalidInput, RiverMLError, StoreUnavailable, UnsafePickle
from ..events import EVENTS, METRICS, sse
from ..payloads import parse_json
from ..service import Service
from ..settings import VIEWS, Settings
from ..version import __version__
from .access import check_pickle_upload, issue_token, require_scope, state
from .schemas import LabelSchema, LearnBatchSchema, LearnSchema, Loader, ModelSchema, PredictBatchSchema, PredictSchema

# Named as before the views moved into this subpackage: logging configurations name it.
logger = logging.getLogger("flask_river_ml.views")
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
# Built once: building a schema copies its fields, and a loader reads them then; loading keeps no state.
_LEARN, _PREDICT, _LABEL, _MODEL = (Loader(cls()) for cls in (LearnSchema, PredictSchema, LabelSchema, ModelSchema))
# A batch's samples are read by the service, which takes the same samples in process.
_LEARN_BATCH, _PREDICT_BATCH = LearnBatchSchema(), PredictBatchSchema()
Handler = Callable[..., Response]


def _service() -> Service:
    return state().service


def _json(data: Any, status: int = 200) -> Response:
    # The API's own encoding, whatever JSON provider the host app has: compact, keys sorted.
    return current_app.response_class(json_bytes(jsonable(data)), status=status, mimetype="application/json")


def _body() -> dict[str, Any]:
    """The JSON object in the body, ``{}`` for an empty body."""
    data = request.get_data(cache=True)
    if not data:
        return {}
    payload = parse_json(data)
    if not isinstance(payload, dict):
        raise InvalidInput("The request body must be a JSON object.")
    return payload


def _model_name(name: str | None = None) -> str:
    """The model named in the path, the query string, a form or a JSON body."""
    if name is not None:
        return name
    payload = {**request.args.to_dict(), **request.form.to_dict()}
    if not request.form:
        payload.update(_body())
    return str(_MODEL.load({"model": payload.get("model")})["model"])


# --- views -------------------------------------------------------------------------------------


def service_info() -> Response:
    return _json(
        {
            "id": "flask_river_ml",
            "status": "running",
            "name": "Flask River ML Endpoint",
            "description": "This service serves online machine-learning models from river.",
            "documentationUrl": request.url_root.rstrip("/") + request.path,
            "storage": state().backend.name,
            "river_version": river.__version__,
            "version": __version__,
        }
    )


def auth_token() -> Response:
    return _json(issue_token())


def upload(flavor: str, name: str | None = None) -> Response:
    """A model from a JSON description (nothing is unpickled), or from a pickle, which only
    the clients RIVER_ML_UPLOAD_PICKLES names (or users with the manage scope) may send."""
    settings = state().settings
    # A pickle may be as large as RIVER_ML_UPLOAD_MAX_BYTES; a description, like every JSON
    # body, RIVER_ML_JSON_MAX_BYTES. Told apart by content, not Content-Type: riverapi sends
    # pickles with none, other clients with any. No pickle opcode is "{" or "[".
    request.max_content_length = settings.upload_max_bytes
    data = request.get_data(cache=True)
    if data.lstrip()[:1] in (b"{", b"["):
        if len(data) > settings.json_max_bytes:
            raise RequestEntityTooLarge(
                f"A model's JSON description may be {settings.json_max_bytes} bytes long at most "
                "(RIVER_ML_JSON_MAX_BYTES)."
            )
        return _json({"name": _service().create(_body(), flavor, name)}, 201)
    try:
        check_pickle_upload()
        stored = _service().upload(data, flavor, name)
    except (Forbidden, UnsafePickle) as error:
        logger.warning("Refused a pickle upload from %s: %s", request.remote_addr, error.message)
        raise
    return _json({"name": stored}, 201)


def model_json(name: str) -> Response:
    # A pipeline's steps come in order: the keys must not be sorted.
    body = json_bytes(_service().params(name), sort_keys=False)
    return current_app.response_class(body, status=200, mimetype="application/json")


def delete_model(name: str | None = None) -> Response:
    name = _model_name(name)
    if not _service().delete_model(name):
        raise NotFound(f"No model named '{name}'.")
    return _json({"message": f"Model '{name}' deleted.", "model": name})


def download(name: str) -> Response:
    return Response(
        _service().download(name),
        mimetype="application/octet-stream",
        headers={"Content-Disposition": f'attachment; filename="{name}.pkl"'},
    )


def models() -> Response:
    return _json({"models": _service().models()})


def learn() -> Response:
    payload = _LEARN.load(_body())
    message = _service().learn(
        payload["model"],
        ground_truth=payload["ground_truth"],
        prediction=payload["prediction"],
        features=payload["features"],
        identifier=payload["identifier"],
    )
    return _json(message, 201)


def predict() -> Response:
    payload = _PREDICT.load(_body())
    result = _service().predict(payload["features"], payload["model"], payload["identifier"])
    # riverapi's flow: 201 when a record waits for its label, 200 otherwise.
    return _json(result, 201 if "identifier" in result else 200)


def learn_batch() -> Response:
    payload = _LEARN_BATCH.load(_body())
    return _json({"learned": _service().learn_batch(payload["model"], payload["samples"])}, 201)


def predict_batch() -> Response:
    payload = _PREDICT_BATCH.load(_body())
    result = _service().predict_batch(payload["features"], payload["model"], payload["identifiers"])
    # As a single predict: 201 when predictions wait for their labels, 200 otherwise.
    return _json(result, 201 if any(identifier is not None for identifier in result["identifiers"]) else 200)


def label() -> Response:
    payload = _LABEL.load(_body())
    return _json(_service().label(payload["label"], payload["identifier"], payload["model"]))


def metrics() -> Response:
    return _json(_service().metrics(_model_name()))


def _stream(hub_name: str) -> Response:
    """A text/event-stream of one channel's messages, for as long as the client listens."""
    events = _service().events
    hub = events.events if hub_name == EVENTS else events.metrics
    keep_alive = state().settings.stream_keepalive_seconds
    # A store that cannot carry events answers 503 now: once the body is under way, no error
    # can be told to the client.
    events.check()

    def generate() -> Iterator[str]:
        # Subscribed only once the body is being sent: a HEAD never starts the generator.
        # A client that went away is noticed when a write fails, at the latest at the next
        # keep-alive; the WSGI server then closes this generator and the queue is released.
        try:
            subscription = hub.subscribe()
        except StoreUnavailable:
            return  # gone since the check: the stream ends, and an EventSource connects again
        try:
            yield ": keep-alive\n\n"  # the headers go out now: the client knows it is connected
            while not subscription.closed:
                message = subscription.get(keep_alive)
                yield ": keep-alive\n\n" if message is None else sse(message, hub_name)
        finally:
            subscription.close()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return Response(generate(), mimetype="text/event-stream", headers=headers)


def _url(endpoint: str) -> str | None:
    """The path of one of the blueprint's views, or None when it is not enabled."""
    try:
        return url_for(endpoint)
    except BuildError:
        return None


def dashboard() -> Response:
    """The dashboard's page: it holds no data, so it needs no token (it asks for one)."""
    settings = state().settings
    config = {
        # A token is asked for when the page's data or its streams need one.
        "authRequired": any(settings.protects(view) for view in ("dashboard", "stream_events", "stream_metrics")),
        "tokenUrl": _url(".auth_token"),
        "dataUrl": _url(".dashboard_data"),
        "eventsUrl": _url(".stream_events"),
        "metricsUrl": _url(".stream_metrics"),
    }
    page = render_template("river_ml/dashboard.html", config=config, static_endpoint=".static")
    return Response(page, mimetype="text/html")


def dashboard_data() -> Response:
    return _json(_service().overview())


def stream_events() -> Response:
    return _stream(EVENTS)


def stream_metrics() -> Response:
    return _stream(METRICS)


def stats() -> Response:
    return _json(_service().stats(_model_name()))


class Route(NamedTuple):
    """One rule of the blueprint and the view that serves it."""

    rule: str
    #: What API_VIEWS_ENABLED and AUTHENTICATED_VIEWS refer to; one view may serve several rules.
    view: str
    #: The rule's name for url_for, chosen here so that no name depends on the order of the rules.
    endpoint: str
    #: method -> (handler, the scope a token needs when the view is protected).
    handlers: dict[str, tuple[Handler, str]]


ROUTES: list[Route] = [
    Route("/", "service_info", "service_info", {"GET": (service_info, PREDICT)}),
    Route("/auth/token/", "auth_token", "auth_token", {"GET": (auth_token, PREDICT)}),
    Route("/models/", "models", "models", {"GET": (models, PREDICT)}),
    Route("/model/", "model", "model", {"DELETE": (delete_model, MANAGE)}),
    Route(
        "/model/<name>/",
        "model",
        "model_named",
        {
            "GET": (model_json, PREDICT),
            "DELETE": (delete_model, MANAGE),
            "POST": (lambda name: upload(flavor=name), MANAGE),
        },
    ),
    Route("/model/<flavor>/<name>/", "model", "model_upload", {"POST": (upload, MANAGE)}),
    Route("/model/download/<name>/", "model_download", "model_download", {"GET": (download, MANAGE)}),
    Route("/learn/", "learn", "learn", {"POST": (learn, LEARN)}),
    Route("/predict/", "predict", "predict", {"POST": (predict, PREDICT)}),
    Route("/label/", "label", "label", {"POST": (label, LEARN)}),
    Route("/learn/batch/", "learn_batch", "learn_batch", {"POST": (learn_batch, LEARN)}),
    Route("/predict/batch/", "predict_batch", "predict_batch", {"POST": (predict_batch, PREDICT)}),
    Route("/metrics/", "metrics", "metrics", {"GET": (metrics, PREDICT)}),
    Route("/stats/", "stats", "stats", {"GET": (stats, PREDICT)}),
    Route("/stream/events/", "stream_events", "stream_events", {"GET": (stream_events, PREDICT)}),
    Route("/stream/metrics/", "stream_metrics", "stream_metrics", {"GET": (stream_metrics, PREDICT)}),
    Route("/dashboard/", "dashboard", "dashboard", {"GET": (dashboard, PREDICT)}),
    Route("/dashboard/data/", "dashboard", "dashboard_data", {"GET": (dashboard_data, PREDICT)}),
]
#: Endpoints that never need a token: the dashboard's page holds no data and asks for one.
_OPEN_ENDPOINTS = ("dashboard",)


def _dispatch(handlers: dict[str, tuple[Handler, str]], protected: bool, max_body: int) -> Handler:
    allowed = sorted({*handlers, "HEAD"} if "GET" in handlers else handlers)

    def view(**kwargs: Any) -> Response:
        # A larger body is refused with 413 before it is read (only these views read one; the
        # upload view allows pickles more). Set here rather than in a before_request hook,
        # which Flask would also call for every static file and unknown path.
        request.max_content_length = max_body
        method = "GET" if request.method == "HEAD" else request.method
        if method not in handlers:
            raise MethodNotAllowed(allowed, f"{request.method} is not allowed here; use {', '.join(allowed)}.")
        handler, scope = handlers[method]
        if protected:
            require_scope(scope)
        return handler(**kwargs)

    return view


def _not_found(path: str) -> Response:
    raise NotFound(f"No route {request.path}; the service's root is {request.script_root}{_prefix_root()}.")


def _prefix_root() -> str:
    return "/" + state().settings.url_prefix.strip("/") + "/"


# --- errors ------------------------------------------------------------------------------------


def _package_error(error: RiverMLError) -> Response:
    body: dict[str, Any] = {"message": error.message}
    if error.errors:
        body["errors"] = error.errors
    response = _json(body, error.status)
    response.headers.update(error.headers)
    return response


def _invalid_payload(error: ValidationError) -> Response:
    messages = error.messages if isinstance(error.messages, dict) else {"_schema": error.messages}
    fields = ", ".join(sorted(messages))
    return _json({"message": f"Invalid payload: check {fields}.", "errors": messages}, 400)


def _http_error(error: HTTPException) -> Response:
    message = error.description
    if error.code == 429:
        message = f"Too many requests: the limit is {message}. Wait for the Retry-After seconds, then try again."
    response = _json({"message": message}, error.code or 500)
    # Keep what the exception adds, such as Allow on a 405.
    for header, value in error.get_headers():
        if header.lower() != "content-type":
            response.headers[header] = value
    return response


def create_blueprint(settings: Settings) -> Blueprint:
    """The blueprint for one app's settings: its prefix and its enabled views."""
    prefix = "/" + settings.url_prefix.strip("/")
    blueprint = Blueprint(
        "river_ml",
        __name__,
        # The templates and static files stay at the package's root, where it ships them.
        root_path=_PACKAGE_ROOT,
        url_prefix=prefix if prefix != "/" else None,
        static_folder="static",
        static_url_path="/static",
        template_folder="templates",
    )
    enabled = set(settings.api_views_enabled or VIEWS)
    for route in ROUTES:
        if route.view in enabled:
            protected = settings.protects(route.view) and route.endpoint not in _OPEN_ENDPOINTS
            blueprint.add_url_rule(
                route.rule,
                endpoint=route.endpoint,
                view_func=_dispatch(route.handlers, protected, settings.json_max_bytes),
                methods=_METHODS,
                strict_slashes=False,
            )
    if prefix != "/":
        # Without a prefix the whole app would be the catch-all's; the host's 404 stays.
        blueprint.add_url_rule("/<path:path>", endpoint="not_found", view_func=_not_found, methods=_METHODS)

    blueprint.register_error_handler(RiverMLError, _package_error)
    blueprint.register_error_handler(ValidationError, _invalid_payload)
    blueprint.register_error_handler(HTTPException, _http_error)
    return blueprint
