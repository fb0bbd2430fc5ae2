"""Run every example (examples/*/run.py) against the example server, as ``make examples`` does.

    .venv/bin/python examples/run_all.py

The examples talk to http://127.0.0.1:8000, riverapi's default: the server ``make run`` serves
when one answers there, else a server started here the way ``make run`` starts it, for the time
of the run. Exits with status 1 if any example fails.
"""

import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVICE = "http://127.0.0.1:8000/api/"
#: make run's server, with its log kept to warnings so that the examples' output stands out.
SERVE = [
    str(Path(sys.executable).parent / "gunicorn"),
    *("--bind", "127.0.0.1:8000", "--workers", "1", "--threads", "8", "--log-level", "warning"),
    "examples.app:app",
]


def answers() -> bool:
    """Whether a server answers at the examples' address."""
    try:
        with urllib.request.urlopen(SERVICE, timeout=2):
            return True
    except OSError:
        return False


def start_server() -> subprocess.Popen:
    """Start the example server and wait until it answers."""
    server = subprocess.Popen(SERVE, cwd=ROOT)
    deadline = time.monotonic() + 60
    while not answers():
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            sys.exit("The example server did not start; gunicorn says why above.")
        time.sleep(0.2)
    return server


def main() -> int:
    server = None if answers() else start_server()
    failed = []
    try:
        for script in sorted(ROOT.glob("examples/*/run.py")):
            name = script.relative_to(ROOT)
            print(f"--- {name}", flush=True)
            if subprocess.run([sys.executable, str(script)], cwd=ROOT).returncode != 0:
                failed.append(str(name))
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=30)
    if failed:
        print(f"Failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
