"""The dashboard: its page and data route through the Flask test client, and the live page in
a real Chromium (Playwright) against gunicorn, without and with authentication."""

from __future__ import annotations

import base64
import json
import re
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dill
import pytest
import requests
from flask import Flask
from playwright.sync_api import Browser, Page, sync_playwright
from river import datasets, linear_model, preprocessing
from riverapi.main import Client
from servers import APP, FLASK, ROOT, serve, server_env

from flask_river_ml import FlaskRiverML

pytestmark = [pytest.mark.gunicorn, pytest.mark.browser]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
BINARY_METRICS = {"Accuracy", "LogLoss", "Precision", "Recall", "F1"}
#: How long the page may take to show what the server did (its refreshes are 0.5 s apart).
UI_TIMEOUT_MS = 10_000
SERVER_ENV = {"FLASK_RIVER_ML_STREAM_KEEPALIVE_SECONDS": "1"}


def binary_model() -> Any:
    return preprocessing.StandardScaler() | linear_model.LogisticRegression()


def phishing(count: int, start: int = 0) -> list[tuple[dict[str, Any], bool]]:
    return list(datasets.Phishing())[start : start + count]


def page_config(html: str) -> dict[str, Any]:
    match = re.search(r'<script id="config" type="application/json">(.*?)</script>', html, re.DOTALL)
    assert match, html
    return json.loads(match.group(1))  # type: ignore[no-any-return]


def basic(user: str, token: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{token}".encode()).decode()}


# --- the page and its data, through the test client --------------------------------------------


@pytest.fixture
def memory_app(make_app) -> Flask:
    return make_app(RIVER_ML_STORAGE_BACKEND="memory")


def test_page_carries_its_config_and_data_lists_models(memory_app):
    """GET /api/dashboard/ is an HTML page holding the config JSON (the routes it calls);
    /api/dashboard/data/ lists every model with its flavor, stats and metrics."""
    client = memory_app.test_client()
    for path in ("/api/dashboard/", "/api/dashboard"):
        with client.get(path) as response:
            assert response.status_code == 200 and response.mimetype == "text/html"
            assert page_config(response.get_data(as_text=True)) == {
                "authRequired": False,
                "tokenUrl": "/api/auth/token/",
                "dataUrl": "/api/dashboard/data/",
                "eventsUrl": "/api/stream/events/",
                "metricsUrl": "/api/stream/metrics/",
            }
    with client.get("/api/dashboard/data/") as response:
        assert response.status_code == 200 and response.get_json() == []

    river_ml = FlaskRiverML()
    with memory_app.app_context():
        river_ml.add_model(binary_model(), "binary", "watched")
        river_ml.add_model(linear_model.LinearRegression(), "regression", "also-watched")
        for x, y in phishing(4):
            river_ml.learn("watched", ground_truth=y, features=x)
        river_ml.predict(phishing(1, start=4)[0][0], "watched")
        expected = {name: (river_ml.stats(name), river_ml.metrics(name)) for name in ("watched", "also-watched")}
    with client.get("/api/dashboard/data") as response:
        assert response.status_code == 200 and response.mimetype == "application/json"
        listed = response.get_json()
    assert [entry["name"] for entry in listed] == ["also-watched", "watched"]
    assert [entry["flavor"] for entry in listed] == ["regression", "binary"]
    for entry in listed:
        stats, metrics = expected[entry["name"]]
        assert set(entry) == {"name", "flavor", "stats", "metrics"}
        assert {kind: stat["n_calls"] for kind, stat in entry["stats"].items()} == {
            kind: stat["n_calls"] for kind, stat in stats.items()
        }
        assert entry["metrics"] == metrics
    watched = listed[1]
    assert watched["stats"]["learn"]["n_calls"] == 4 and watched["stats"]["predict"]["n_calls"] == 1
    assert set(watched["metrics"]) == BINARY_METRICS


def test_page_is_open_but_data_needs_a_token_when_auth_is_on(make_app):
    """With authentication on, the page is served (it asks for a token, authRequired true), but
    /api/dashboard/data/ answers 401 JSON without a valid access token and 200 with one."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_DISABLE_AUTHENTICATION=False)
    client = app.test_client()
    with client.get("/api/dashboard/") as response:
        assert response.status_code == 200 and response.mimetype == "text/html"
        assert page_config(response.get_data(as_text=True))["authRequired"] is True
    for headers in ({}, {"Authorization": "Bearer not-a-token"}):
        with client.get("/api/dashboard/data/", headers=headers) as response:
            assert response.status_code == 401 and response.mimetype == "application/json"
            assert response.get_json()["message"]
            assert response.headers["WWW-Authenticate"].startswith("Bearer realm=")
    # ?token= is for the streams (EventSource cannot send headers); the data route wants the header.
    with client.get("/api/dashboard/data/", query_string={"token": "x"}) as response:
        assert response.status_code == 401
    with app.app_context():
        api_token = FlaskRiverML().create_user("viewer", "a password")
    with client.get("/api/auth/token/", headers=basic("viewer", api_token)) as response:
        token = response.get_json()["token"]
    with client.get("/api/dashboard/data/", headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status_code == 200 and response.get_json() == []


def test_page_needs_no_token_when_dashboard_is_not_an_authenticated_view(make_app):
    """Auth on but "dashboard" left out of AUTHENTICATED_VIEWS: the page says no login is
    needed and its data is open."""
    app = make_app(
        RIVER_ML_STORAGE_BACKEND="memory",
        RIVER_ML_DISABLE_AUTHENTICATION=False,
        RIVER_ML_AUTHENTICATED_VIEWS=["learn", "predict", "label"],
    )
    client = app.test_client()
    with client.get("/api/dashboard/") as response:
        assert page_config(response.get_data(as_text=True))["authRequired"] is False
    with client.get("/api/dashboard/data/") as response:
        assert response.status_code == 200


def test_disabled_dashboard_is_a_json_404(make_app):
    """RIVER_ML_API_VIEWS_ENABLED without "dashboard": both dashboard routes answer 404 JSON."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_API_VIEWS_ENABLED=["service_info", "learn"])
    client = app.test_client()
    for path in ("/api/dashboard/", "/api/dashboard/data/", "/api/dashboard"):
        with client.get(path) as response:
            assert response.status_code == 404, path
            assert response.mimetype == "application/json" and response.get_json()["message"]
    with client.get("/api/") as response:
        assert response.status_code == 200


def test_static_assets_are_served(make_app):
    """Every stylesheet and script the page links (uPlot's js and css, dashboard.js and
    dashboard.css) is served with its type, without a token even when auth is on."""
    app = make_app(RIVER_ML_STORAGE_BACKEND="memory", RIVER_ML_DISABLE_AUTHENTICATION=False)
    client = app.test_client()
    with client.get("/api/dashboard/") as response:
        html = response.get_data(as_text=True)
    assets = re.findall(r'<link rel="stylesheet" href="([^"]+)">', html) + re.findall(r'<script src="([^"]+)">', html)
    assert {Path(asset).name for asset in assets} == {
        "uPlot.min.css",
        "dashboard.css",
        "uPlot.iife.min.js",
        "dashboard.js",
    }
    for asset in assets:
        assert asset.startswith("/api/"), asset
        with client.get(asset) as response:
            assert response.status_code == 200, asset
            expected = "text/css" if asset.endswith(".css") else "text/javascript"
            assert response.mimetype == expected, (asset, response.mimetype)
            assert len(response.get_data()) > 100, asset
    with client.get("/api/static/river_ml/vendor/uplot/uPlot.iife.min.js") as response:
        assert b"uPlot" in response.get_data()


# --- the live page in Chromium -----------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Debian's Chromium driven by Playwright (a missing Chromium fails the tests: make test
    installs it)."""
    assert Path(CHROMIUM).exists(), f"{CHROMIUM} is missing: apt-get install chromium, or deselect: -m 'not browser'"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page_errors() -> list[str]:
    """What went wrong in the page: uncaught errors, console errors, failed responses; the
    test takes out what it expects, anything left fails it."""
    return []


@pytest.fixture
def page(browser, page_errors) -> Iterator[Page]:
    """A fresh browser page that records its errors in ``page_errors``."""
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    opened = context.new_page()
    opened.on("pageerror", lambda error: page_errors.append(str(error)))
    # A failed load shows in the console without its address (the browser's own favicon
    # request included): the response event names the page's failed loads.
    opened.on(
        "console",
        lambda message: (
            page_errors.append(message.text)
            if message.type == "error" and not message.text.startswith("Failed to load resource")
            else None
        ),
    )
    opened.on(
        "response",
        lambda response: page_errors.append(f"{response.status} {response.url}") if response.status >= 400 else None,
    )
    yield opened
    # Closing the page closes its EventSources before the server stops.
    context.close()
    assert page_errors == []


def chart_points(page: Page, name: str, metric: str) -> int:
    value = page.locator(f"[data-chart='{name}/{metric}'] .uplot").get_attribute("data-points")
    return int(value or 0)


def check_live_updates(page: Page, name: str, learn: Any, learned: int) -> None:
    """With the page open, learns sent over HTTP add points to the charts and learn entries to
    the events feed, and the table's learn count follows, all without a reload."""
    page.wait_for_selector(f"#models tr[data-model='{name}']", timeout=UI_TIMEOUT_MS)
    row = page.locator(f"#models tr[data-model='{name}'] td")
    assert row.nth(1).inner_text() == "binary"
    assert row.nth(2).inner_text() == str(learned)
    page.wait_for_selector(f"[data-chart='{name}/Accuracy'] .uplot[data-points]", timeout=UI_TIMEOUT_MS)
    page.wait_for_function("document.getElementById('status').textContent === 'live'", timeout=UI_TIMEOUT_MS)
    page.evaluate("window.__not_reloaded = true")
    before = {metric: chart_points(page, name, metric) for metric in BINARY_METRICS}
    assert all(points >= 1 for points in before.values()), before

    # The metrics stream may open a moment after the events stream: learn until the charts move.
    deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
    for x, y in phishing(60, start=learned):
        learn(x, y)
        learned += 1
        if chart_points(page, name, "Accuracy") >= before["Accuracy"] + 3:
            break
        assert time.monotonic() < deadline, "the charts never moved"
        time.sleep(0.1)
    else:
        pytest.fail("the charts never moved")
    page.wait_for_function(
        f"document.querySelector(\"#models tr[data-model='{name}'] td:nth-child(3)\").textContent === '{learned}'",
        timeout=UI_TIMEOUT_MS,
    )
    assert all(chart_points(page, name, metric) > before[metric] for metric in BINARY_METRICS)
    entries = page.locator("#events li.learn")
    assert entries.count() >= 3
    assert f" learn {name} prediction=" in entries.first.inner_text()
    assert page.evaluate("window.__not_reloaded") is True


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


def test_live_dashboard_in_chromium(tmp_path, page):
    """Chromium opens the dashboard of a gunicorn server: the table lists an uploaded binary
    model, and learns sent over HTTP add chart points and events without a reload."""
    with serve(tmp_path, env=SERVER_ENV, workers=1, threads=8) as server:
        cli = Client(server.url, quiet=True)
        name = cli.upload_model(binary_model(), "binary", "live-model")
        first = phishing(5)
        for x, y in first:
            cli.learn(name, x, y)

        # A model never scored (its replica loaded by a predict): its metrics are null.
        unfed = cli.upload_model(binary_model(), "binary", "unfed-model")
        cli.predict(unfed, first[0][0])

        page.goto(f"{server.url}/api/dashboard/")
        assert page.locator("#login").is_hidden()
        check_live_updates(page, name, lambda x, y: cli.learn(name, x, y), len(first))
        # Null metrics show as dashes (in the data's order, sorted), and their charts wait for
        # a first value.
        cells = page.locator(f"#models tr[data-model='{unfed}'] td")
        assert cells.nth(6).inner_text() == ", ".join(f"{metric} —" for metric in sorted(BINARY_METRICS))
        assert chart_points(page, unfed, "Accuracy") == 0

        screenshot = tmp_path / "dashboard.png"
        page.screenshot(path=str(screenshot), full_page=True)
        width, height = png_size(screenshot)
        assert width >= 800 and height >= 600
        assert screenshot.stat().st_size > 20_000
        page.close()
        assert "Traceback" not in server.log_text(), server.log_text()


def test_live_dashboard_with_login_in_chromium(tmp_path, page, page_errors):
    """With auth on, the page shows its login form; a wrong API token is refused there; the user
    and API token made by `flask river-ml create-user` open the table and its live updates
    (the streams get the access token as ?token=)."""
    env = {**SERVER_ENV, "FLASK_RIVER_ML_DISABLE_AUTHENTICATION": "false"}
    created = subprocess.run(
        [str(FLASK), "--app", APP, "river-ml", "create-user", "watcher", "--password", "a password"],
        cwd=ROOT,
        env=server_env(tmp_path, env),
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    api_token = created.stdout.strip().splitlines()[-1]
    with serve(tmp_path, env=env, workers=1, threads=8) as server, requests.Session() as session:
        with session.get(f"{server.url}/api/auth/token/", headers=basic("watcher", api_token), timeout=10) as response:
            assert response.status_code == 200, response.text
            session.headers["Authorization"] = f"Bearer {response.json()['token']}"

        def learn(x: dict[str, Any], y: bool) -> None:
            payload = {"model": "guarded-model", "features": x, "ground_truth": y}
            with session.post(f"{server.url}/api/learn/", json=payload, timeout=10) as answer:
                assert answer.status_code == 201, answer.text

        upload = f"{server.url}/api/model/binary/guarded-model/"
        with session.post(upload, data=dill.dumps(binary_model()), timeout=10) as response:
            assert response.status_code == 201, response.text
        for x, y in phishing(3):
            learn(x, y)

        page.goto(f"{server.url}/api/dashboard/")
        page.wait_for_selector("#login", state="visible", timeout=UI_TIMEOUT_MS)
        assert page.locator("#dashboard").is_hidden()
        page.fill("#user", "watcher")
        page.fill("#api-token", "not-the-token")
        page.click("#login button[type=submit]")
        page.wait_for_function("document.getElementById('login-error').textContent !== ''", timeout=UI_TIMEOUT_MS)
        assert page.locator("#dashboard").is_hidden()
        assert page_errors == [f"401 {server.url}/api/auth/token/"]
        page_errors.clear()

        page.fill("#api-token", api_token)
        page.click("#login button[type=submit]")
        page.wait_for_selector("#dashboard", state="visible", timeout=UI_TIMEOUT_MS)
        assert page.locator("#login").is_hidden()
        check_live_updates(page, "guarded-model", learn, 3)
        page.close()
        assert "Traceback" not in server.log_text(), server.log_text()


def test_the_page_asks_for_a_token_when_only_its_streams_need_one(make_app):
    """Streams protected, dashboard data open: the page still logs in, or its streams fail."""
    import json as json_module
    import re

    app = make_app(
        RIVER_ML_STORAGE_BACKEND="memory",
        RIVER_ML_DISABLE_AUTHENTICATION=False,
        RIVER_ML_AUTHENTICATED_VIEWS=["stream_events", "stream_metrics"],
    )
    page = app.test_client().get("/api/dashboard/").get_data(as_text=True)
    config = json_module.loads(re.search(r'<script id="config" type="application/json">(.*?)</script>', page).group(1))
    assert config["authRequired"] is True
