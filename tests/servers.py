"""Real servers for the end-to-end tests: the example app under gunicorn, on a free port.

    with serve(folder, env={"FLASK_RIVER_ML_DISABLE_AUTHENTICATION": "false"}) as server:
        Client(server.url).info()
        assert "Traceback" not in server.log_text()

Each server keeps its store, its secrets, gunicorn's configuration and its control socket in
``folder``, and its output (gunicorn's and the app's, interleaved as written) in
``folder / "gunicorn.log"``.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
#: The virtual environment running the tests (not resolved: its bin holds gunicorn and flask).
VENV = Path(sys.prefix)
BIN = Path(sys.executable).parent
GUNICORN = BIN / "gunicorn"
FLASK = BIN / "flask"
#: The app every server runs.
APP = "examples.app:app"
LOG_NAME = "gunicorn.log"
#: gunicorn's access log line (``serve(..., access_log=True)``): what :class:`Request` reads.
ACCESS_FORMAT = "access pid=%(p)s address=%(h)s method=%(m)s path=%(U)s query=%(q)s status=%(s)s user=%(u)s"
_ACCESS_LINE = re.compile(
    r"^access pid=<(?P<pid>\d+)> address=(?P<address>\S*) method=(?P<method>\S*) path=(?P<path>\S*)"
    r" query=(?P<query>\S*) status=(?P<status>\d{3}) user=(?P<user>.*)$",
    re.MULTILINE,
)
#: gunicorn's line for each worker it starts.
_WORKER_LINE = re.compile(r"Booting worker with pid: (\d+)")
#: A gunicorn configuration that logs each worker once it has loaded the app and can answer.
CONFIG_NAME = "gunicorn_test.conf.py"
_CONFIG = """def post_worker_init(worker):
    worker.log.info("Worker ready with pid: %s", worker.pid)
"""
_READY_LINE = re.compile(r"Worker ready with pid: (\d+)")


class Request(NamedTuple):
    """One line of the access log; ``user`` is the name in a Basic Authorization, or '-';
    ``pid`` the worker that answered; ``address`` the client's."""

    method: str
    path: str
    query: str
    status: int
    user: str
    pid: int = 0
    address: str = "-"


@dataclass(frozen=True)
class Server:
    """A running server: its base URL (no trailing slash) and the file it logs to."""

    url: str
    log: Path
    process: subprocess.Popen

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def worker_pids(self) -> set[int]:
        """The pids of every worker gunicorn has booted so far."""
        return {int(pid) for pid in _WORKER_LINE.findall(self.log_text())}

    def ready_pids(self) -> set[int]:
        """The pids of the workers that have loaded the app."""
        return {int(pid) for pid in _READY_LINE.findall(self.log_text())}

    def kill(self) -> None:
        """SIGKILL the master and its workers at once, as a crash of the machine would (needs
        ``serve(..., new_session=True)``: the server's process group is then its own)."""
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def requests(self, timeout: float = 10) -> list[Request]:
        """Every request the server has answered so far, in the order it logged them (needs
        ``access_log``).

        gunicorn logs a request once its response is sent: a marker request is sent, and the
        log read once the marker is in it, so that the requests answered before are too.
        """
        marker = uuid.uuid4().hex
        with requests.get(f"{self.url}/api/", params={"log-marker": marker}, timeout=timeout) as response:
            assert response.status_code == 200, response.text
        deadline = time.monotonic() + timeout
        while True:
            logged = [
                Request(
                    match["method"],
                    match["path"],
                    match["query"],
                    int(match["status"]),
                    match["user"],
                    int(match["pid"]),
                    match["address"],
                )
                for match in _ACCESS_LINE.finditer(self.log_text())
            ]
            if any(marker in entry.query for entry in logged):
                return [entry for entry in logged if "log-marker=" not in entry.query]
            if time.monotonic() > deadline:
                pytest.fail(f"The access log never showed the marker request:\n{self.log_text()}")
            time.sleep(0.05)


def server_env(folder: Path, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a test server (or of the CLI on its store): the store in
    ``folder / "instance"``, nothing in the user's home, then ``env`` on top."""
    result = dict(os.environ)
    result["FLASK_RIVER_ML_APP_DIR"] = str(folder / "instance")
    # gunicorn >= 25.1 opens a control socket in $XDG_RUNTIME_DIR (else ~/.gunicorn), one path
    # for every instance: each test server gets its own.
    result["XDG_RUNTIME_DIR"] = str(folder)
    result.update(env or {})
    return result


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def service_info(url: str) -> dict[str, Any] | None:
    """The JSON of GET ``url`` when it answers 200, None while nothing listens there."""
    try:
        response = requests.get(url, timeout=2)
    except (requests.ConnectionError, requests.Timeout):
        return None
    with response:
        return response.json() if response.status_code == 200 else None


def wait_for_service(url: str, process: subprocess.Popen, log: Path, timeout: float) -> dict[str, Any]:
    """Poll ``url`` until the service answers; fail with the server's log if it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"The server exited with {process.returncode} before answering:\n{log.read_text()}")
        info = service_info(url)
        if info is not None:
            return info
        time.sleep(0.2)
    pytest.fail(f"The server did not answer {url} within {timeout} s:\n{log.read_text()}")


def stop(process: subprocess.Popen, send: Callable[[int], None]) -> None:
    """Send ``send`` its signal, then kill if the process is still there after 15 s."""
    if process.poll() is None:
        send(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            send(signal.SIGKILL)
            process.wait()


@contextlib.contextmanager
def serve(
    folder: Path,
    env: Mapping[str, str] | None = None,
    workers: int = 2,
    threads: int = 8,
    access_log: bool = False,
    timeout: float = 30,
    new_session: bool = False,
    app: str = APP,
) -> Iterator[Server]:
    """The example app under gunicorn on a free port, until the block ends, from the moment
    every worker has loaded the app (requests sent then may reach any of them).

    ``env`` is added to the server's environment (``FLASK_RIVER_ML_*`` settings, say);
    ``access_log`` has gunicorn log each request to the same log (see :meth:`Server.requests`);
    ``new_session`` starts gunicorn in a session of its own, so that :meth:`Server.kill` can
    kill the master and its workers together; ``app`` is the app to serve, ``module:variable``
    (a module of the tests' folder is found when the folder is on ``PYTHONPATH`` in ``env``).
    """
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = folder / LOG_NAME
    config = folder / CONFIG_NAME
    config.write_text(_CONFIG)
    command = [str(GUNICORN), "--config", str(config), "--bind", f"127.0.0.1:{port}"]
    command += ["--workers", str(workers), "--threads", str(threads)]
    if access_log:
        command += ["--access-logfile", "-", "--access-logformat", ACCESS_FORMAT]
    command.append(app)
    with open(log, "wb") as output:
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=server_env(folder, env),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=new_session,
        )
    try:
        deadline = time.monotonic() + timeout
        wait_for_service(f"{url}/api/", process, log, timeout)
        server = Server(url, log, process)
        while len(server.ready_pids()) < workers:
            if time.monotonic() > deadline:
                pytest.fail(f"gunicorn did not start {workers} workers within {timeout} s:\n{server.log_text()}")
            time.sleep(0.05)
        yield server
    finally:
        stop(process, process.send_signal)


def predict_and_download(cli: Any, name: str, x: dict, folder: Path) -> tuple[dict, Any]:
    """Predict ``x`` through riverapi, then download the model: it must predict the same, to
    the bit. The predict's answer and the downloaded model."""
    import dill

    result = cli.predict(name, x)
    assert set(result) == {"model", "prediction", "identifier"}
    assert result["model"] == name
    assert isinstance(result["prediction"], float)
    path = cli.download_model(name, dest=str(folder / "model.pkl"))
    with open(path, "rb") as handle:
        downloaded = dill.load(handle)
    assert downloaded.predict_one(x) == result["prediction"]
    return result, downloaded
