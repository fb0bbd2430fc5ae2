"""Rate limiting through Flask's test client, and the rate strings it accepts.

Sections: refusing over the limit; what is and is not limited; the accepted rate forms;
counting without blocking; per-client counters; the default (off).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Blueprint, Flask
from limits import parse_many

from flask_river_ml import ConfigurationError, FlaskRiverML
from flask_river_ml.limits import limit_string

LIMITED = {"RIVER_ML_STORAGE_BACKEND": "memory", "RIVER_ML_VIEW_RATE_LIMIT_DISABLE": False}
HEADERS = ("X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset")
PASSWORD = "pw"


# --- helpers -----------------------------------------------------------------------------------


def assert_limited(response) -> dict[str, Any]:
    """A 429 with a JSON message and a Retry-After within the minute window."""
    assert response.status_code == 429, (response.status_code, response.data[:500])
    assert response.mimetype == "application/json", response.data[:500]
    body = response.get_json()
    assert isinstance(body, dict) and isinstance(body.get("message"), str) and body["message"], body
    retry_after = response.headers.get("Retry-After")
    assert retry_after is not None and retry_after.isdigit(), retry_after
    assert 0 < int(retry_after) <= 60
    return body


def remaining(response) -> int:
    return int(response.headers["X-RateLimit-Remaining"])


def basic(user: str, token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def limited_app(make_app) -> Flask:
    """An app limited to 3 requests a minute (Django form), with a host route added after registration."""
    app = make_app(**LIMITED, RIVER_ML_VIEW_RATE_LIMIT="3/m")

    @app.get("/host")
    def host() -> str:
        return "host"

    return app


@pytest.fixture
def app_with_routes_first(tmp_path) -> Iterator[Flask]:
    """A host app whose route and blueprint exist before the extension is registered."""
    app = Flask("host_first", instance_path=str(tmp_path / "host_first"))
    app.config.update(TESTING=True, **LIMITED, RIVER_ML_VIEW_RATE_LIMIT="3/m")

    @app.get("/host")
    def host() -> str:
        return "host"

    other = Blueprint("other", __name__, url_prefix="/other")

    @other.get("/")
    def other_index() -> dict[str, str]:
        return {"other": "yes"}

    app.register_blueprint(other)
    FlaskRiverML(app)
    yield app
    FlaskRiverML.state(app).close()


# --- over the limit ----------------------------------------------------------------------------


def test_fourth_request_gets_429(limited_app):
    """With 3/m the 4th request in the window is 429 with a JSON message and Retry-After."""
    client = limited_app.test_client()
    for _ in range(3):
        assert client.get("/api/").status_code == 200
    assert_limited(client.get("/api/"))
    assert_limited(client.get("/api/"))


def test_limit_is_shared_across_views(limited_app):
    """One counter for every view of the extension: three different views use up the window of a fourth."""
    client = limited_app.test_client()
    assert client.get("/api/").status_code == 200
    assert client.get("/api/models/").status_code == 200
    assert client.get("/api/model/missing/").status_code == 404
    for path in ("/api/stats/", "/api/learn/", "/api/auth/token/", "/api/models/"):
        assert_limited(client.get(path) if path != "/api/learn/" else client.post(path, json={}))


def test_rate_limit_headers_on_blueprint_responses(limited_app):
    """Blueprint responses carry X-RateLimit-Limit, -Remaining and -Reset; Remaining counts down."""
    client = limited_app.test_client()
    responses = [client.get("/api/models/") for _ in range(3)]
    for response in responses:
        assert all(header in response.headers for header in HEADERS), dict(response.headers)
        assert response.headers["X-RateLimit-Limit"] == "3"
    assert [remaining(response) for response in responses] == [2, 1, 0]
    reset = float(responses[0].headers["X-RateLimit-Reset"])
    assert time.time() < reset <= time.time() + 61
    refused = client.get("/api/models/")
    assert_limited(refused)
    assert remaining(refused) == 0


def test_host_route_added_after_registration_is_never_limited(limited_app):
    """A host route beside the blueprint: 20 hits, never 429, no X-RateLimit headers, no blueprint budget used."""
    client = limited_app.test_client()
    for _ in range(20):
        response = client.get("/host")
        assert response.status_code == 200
        assert not any(header in response.headers for header in HEADERS)
    for _ in range(3):
        assert client.get("/api/").status_code == 200
    assert_limited(client.get("/api/"))
    assert client.get("/host").status_code == 200


def test_host_routes_registered_before_are_never_limited(app_with_routes_first):
    """A route and another blueprint registered before the extension are never limited, even once it refuses."""
    client = app_with_routes_first.test_client()
    for _ in range(3):
        assert client.get("/api/models/").status_code == 200
    assert_limited(client.get("/api/models/"))
    for _ in range(20):
        assert client.get("/host").status_code == 200
        response = client.get("/other/")
        assert response.status_code == 200
        assert not any(header in response.headers for header in HEADERS)


def test_unknown_paths_under_the_prefix_are_limited_too(limited_app):
    """The prefix's JSON 404s count against the same window (every route of the extension is limited)."""
    client = limited_app.test_client()
    for _ in range(3):
        assert client.get("/api/nothing-here/").status_code == 404
    assert_limited(client.get("/api/"))


# --- accepted rates ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rate", "amount", "seconds"),
    [
        ("100/1day", 100, 86400),
        ("10000/1day", 10000, 86400),
        ("10000/1d", 10000, 86400),
        ("5/m", 5, 60),
        ("5/1m", 5, 60),
        ("5/min", 5, 60),
        ("7/10m", 7, 600),
        ("1/s", 1, 1),
        ("3/h", 3, 3600),
        ("3/2hour", 3, 7200),
        (" 5 / m ", 5, 60),
        ("5/M", 5, 60),
        ("2 per minute", 2, 60),
        ("100 per day", 100, 86400),
        ("100/day", 100, 86400),
        ("10 per 5 minutes", 10, 300),
    ],
)
def test_limit_string_converts(rate, amount, seconds):
    """limit_string turns the Django forms into flask-limiter strings and passes flask-limiter strings through."""
    converted = limit_string(rate)
    (item,) = parse_many(converted)
    assert item.amount == amount
    assert item.get_expiry() == seconds


@pytest.mark.parametrize("rate", ["2 per minute", "100 per day", "10 per 5 minutes"])
def test_limit_string_keeps_flask_limiter_strings(rate):
    """A flask-limiter string comes back unchanged."""
    assert limit_string(rate) == rate


@pytest.mark.parametrize("rate", ["often", "", "5", "/m", "5/", "5/x", "m/5", "five/m", "5 per fortnight"])
def test_limit_string_refuses_nonsense(rate):
    """A string that is neither form raises ValueError."""
    with pytest.raises(ValueError):
        limit_string(rate)


@pytest.mark.parametrize(
    ("rate", "amount", "seconds"),
    [("100/1day", 100, 86400), ("5/m", 5, 60), ("10000/1d", 10000, 86400), ("2 per minute", 2, 60)],
)
def test_accepted_rates_are_enforced(make_app, rate, amount, seconds):
    """Each accepted form starts the app and is what the headers report: its count and its window."""
    app = make_app(**LIMITED, RIVER_ML_VIEW_RATE_LIMIT=rate)
    response = app.test_client().get("/api/")
    assert response.status_code == 200
    assert response.headers["X-RateLimit-Limit"] == str(amount)
    assert remaining(response) == amount - 1
    window = float(response.headers["X-RateLimit-Reset"]) - time.time()
    assert seconds - 5 < window <= seconds + 1


def test_flask_limiter_string_refuses_over_its_limit(make_app):
    """'2 per minute' refuses the third request."""
    client = make_app(**LIMITED, RIVER_ML_VIEW_RATE_LIMIT="2 per minute").test_client()
    assert [client.get("/api/").status_code for _ in range(2)] == [200, 200]
    assert_limited(client.get("/api/"))


def test_several_flask_limiter_limits_in_one_string(make_app):
    """flask-limiter strings may hold several limits ('2 per minute; 100 per day'): each one holds."""
    app = make_app(**LIMITED, RIVER_ML_VIEW_RATE_LIMIT="2 per minute; 100 per day")
    client = app.test_client()
    assert [client.get("/api/").status_code for _ in range(2)] == [200, 200]
    assert_limited(client.get("/api/"))


@pytest.mark.parametrize("disable", [False, True])
@pytest.mark.parametrize("rate", ["often", 5, "", "5/x", None, ["5/m"]])
def test_bad_rate_fails_at_start_up(make_app, rate, disable):
    """A bad RIVER_ML_VIEW_RATE_LIMIT raises ConfigurationError naming the key when the app starts."""
    with pytest.raises(ConfigurationError, match="RIVER_ML_VIEW_RATE_LIMIT"):
        make_app(
            RIVER_ML_STORAGE_BACKEND="memory",
            RIVER_ML_VIEW_RATE_LIMIT_DISABLE=disable,
            RIVER_ML_VIEW_RATE_LIMIT=rate,
        )


# --- counting without blocking -----------------------------------------------------------------


def test_non_blocking_limit_counts_but_never_refuses(make_app):
    """RIVER_ML_VIEW_RATE_LIMIT_BLOCK=False: past the limit requests still succeed and Remaining says 0."""
    app = make_app(**LIMITED, RIVER_ML_VIEW_RATE_LIMIT="3/m", RIVER_ML_VIEW_RATE_LIMIT_BLOCK=False)
    client = app.test_client()
    responses = [client.get("/api/models/") for _ in range(10)]
    assert [response.status_code for response in responses] == [200] * 10
    assert [remaining(response) for response in responses] == [2, 1, 0] + [0] * 7
    assert all(response.headers["X-RateLimit-Limit"] == "3" for response in responses)
    assert client.post("/api/learn/", json={}).status_code == 400


def test_non_blocking_limit_is_per_client_too(make_app):
    """Counting without blocking keeps one counter per client: a second address starts afresh."""
    app = make_app(**LIMITED, RIVER_ML_VIEW_RATE_LIMIT="3/m", RIVER_ML_VIEW_RATE_LIMIT_BLOCK=False)
    client = app.test_client()
    for _ in range(5):
        assert client.get("/api/").status_code == 200
    other = client.get("/api/", environ_base={"REMOTE_ADDR": "10.0.0.2"})
    assert other.status_code == 200
    assert remaining(other) == 2


# --- per client --------------------------------------------------------------------------------


def test_addresses_have_separate_counters(limited_app):
    """Two remote addresses each get their own window."""
    client = limited_app.test_client()
    first, second = {"REMOTE_ADDR": "10.0.0.1"}, {"REMOTE_ADDR": "10.0.0.2"}
    for _ in range(3):
        assert client.get("/api/", environ_base=first).status_code == 200
    assert_limited(client.get("/api/", environ_base=first))
    responses = [client.get("/api/", environ_base=second) for _ in range(3)]
    assert [response.status_code for response in responses] == [200, 200, 200]
    assert [remaining(response) for response in responses] == [2, 1, 0]
    assert_limited(client.get("/api/", environ_base=second))
    assert_limited(client.get("/api/", environ_base=first))


@pytest.fixture
def auth_limited_app(make_app) -> Flask:
    """Authentication on, 3 requests a minute."""
    return make_app(**LIMITED, RIVER_ML_VIEW_RATE_LIMIT="3/m", RIVER_ML_DISABLE_AUTHENTICATION=False)


def tokens(app: Flask, *names: str) -> dict[str, str]:
    """An access token per user, fetched from an address of its own so that no test window is used."""
    client = app.test_client()
    result = {}
    for index, name in enumerate(names):
        with app.app_context():
            api_token = FlaskRiverML().create_user(name, PASSWORD)
        response = client.get(
            "/api/auth/token/", headers=basic(name, api_token), environ_base={"REMOTE_ADDR": f"10.9.9.{index}"}
        )
        assert response.status_code == 200, response.get_json()
        result[name] = response.get_json()["token"]
    return result


def test_users_have_separate_counters_from_one_address(auth_limited_app):
    """With auth on, two users at the same address count separately, and apart from the anonymous address."""
    access = tokens(auth_limited_app, "alice", "bob")
    client = auth_limited_app.test_client()
    for _ in range(3):
        assert client.get("/api/models/", headers=bearer(access["alice"])).status_code == 200
    assert_limited(client.get("/api/models/", headers=bearer(access["alice"])))
    bob = [client.get("/api/models/", headers=bearer(access["bob"])) for _ in range(3)]
    assert [response.status_code for response in bob] == [200, 200, 200]
    assert [remaining(response) for response in bob] == [2, 1, 0]
    assert_limited(client.get("/api/models/", headers=bearer(access["bob"])))
    anonymous = [client.get("/api/") for _ in range(3)]
    assert [response.status_code for response in anonymous] == [200, 200, 200]
    assert [remaining(response) for response in anonymous] == [2, 1, 0]
    assert_limited(client.get("/api/"))
    assert_limited(client.get("/api/models/", headers=bearer(access["alice"])))


def test_user_counter_follows_the_user_across_addresses(auth_limited_app):
    """A user's window is theirs wherever they call from; their calls leave the addresses' windows untouched."""
    access = tokens(auth_limited_app, "alice")
    client = auth_limited_app.test_client()
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3"):
        response = client.get("/api/models/", headers=bearer(access["alice"]), environ_base={"REMOTE_ADDR": address})
        assert response.status_code == 200
    assert_limited(
        client.get("/api/models/", headers=bearer(access["alice"]), environ_base={"REMOTE_ADDR": "10.0.0.4"})
    )
    response = client.get("/api/", environ_base={"REMOTE_ADDR": "10.0.0.1"})
    assert response.status_code == 200
    assert remaining(response) == 2


def test_invalid_token_counts_against_the_address(auth_limited_app):
    """A request whose Bearer token is not valid counts against its address, not against a user."""
    client = auth_limited_app.test_client()
    assert client.get("/api/").status_code == 200
    assert client.get("/api/models/", headers=bearer("garbage")).status_code == 401
    assert client.get("/api/models/").status_code == 401
    assert_limited(client.get("/api/"))


# --- off by default ----------------------------------------------------------------------------


def test_rate_limiting_is_off_by_default(make_app):
    """RIVER_ML_VIEW_RATE_LIMIT_DISABLE defaults to True: 50 requests, no 429, no X-RateLimit headers."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory")
    assert app.config["RIVER_ML_VIEW_RATE_LIMIT_DISABLE"] is True
    client = app.test_client()
    for index in range(50):
        response = client.get("/api/models/" if index % 2 else "/api/")
        assert response.status_code == 200
        assert not any(header in response.headers for header in HEADERS)
        assert "Retry-After" not in response.headers


def test_disabled_ignores_a_tight_rate(make_app):
    """With the default DISABLE, even a 1/m rate limits nothing."""
    client = make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_VIEW_RATE_LIMIT="1/m").test_client()
    assert [client.get("/api/").status_code for _ in range(10)] == [200] * 10


def test_default_rate_is_10000_a_day(make_app):
    """Turned on without a rate, the limit is the Django default, 10000 a day."""
    app = make_app(**LIMITED)
    assert app.config["RIVER_ML_VIEW_RATE_LIMIT"] == "10000/1day"
    response = app.test_client().get("/api/")
    assert response.headers["X-RateLimit-Limit"] == "10000"
    window = float(response.headers["X-RateLimit-Reset"]) - time.time()
    assert 86400 - 5 < window <= 86401


def test_the_429_message_says_what_to_do(make_app):
    """The body names the limit and says to wait for Retry-After."""
    app = make_app(
        RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_VIEW_RATE_LIMIT_DISABLE=False, RIVER_ML_VIEW_RATE_LIMIT="1/m"
    )
    client = app.test_client()
    assert client.get("/api/").status_code == 200
    refused = client.get("/api/")
    assert refused.status_code == 429
    assert refused.get_json()["message"].startswith("Too many requests: the limit is 1 per 1 minute")
    assert "Retry-After" in refused.get_json()["message"]
