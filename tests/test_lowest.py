"""The README's in-process example, run on the lowest versions setup.cfg admits, from a fresh
virtual environment that installs the project as a user would (not in editable mode)."""

from __future__ import annotations

import re
import shutil
import subprocess
import venv
from pathlib import Path

import pytest
from floors import constraints, floors
from packaging.version import Version
from servers import ROOT

pytestmark = [pytest.mark.registry]

#: What a copy of the project leaves out: environments, caches and build output.
_NOT_SOURCE = (".git", ".venv", ".tox", "build", "dist", "*.egg-info", "__pycache__", "instance", "bench")


def readme_example(heading: str) -> str:
    """The first Python block of the README's section ``heading``."""
    section = (ROOT / "README.md").read_text().split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, f"no Python block under the README's {heading!r}"
    return match.group(1)


def test_readme_example_runs_on_the_lowest_versions(tmp_path: Path) -> None:
    source = tmp_path / "flask-river-ml"
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
    (tmp_path / "floors.txt").write_text(constraints(extras=()))
    venv.create(tmp_path / "venv", with_pip=True)
    python = str(tmp_path / "venv" / "bin" / "python")
    install = [python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*install, "-c", tmp_path / "floors.txt", source], check=True, timeout=600)

    versions = "import importlib.metadata as m, sys; print(*(m.version(name) for name in sys.argv[1:]))"
    installed = subprocess.run([python, "-c", versions, *floors(())], capture_output=True, text=True, check=True)
    assert [Version(v) for v in installed.stdout.split()] == [Version(v) for v in floors(()).values()]

    # The distribution carries the type marker and the dashboard's files, not only the modules.
    shipped = "import importlib.resources as r, sys; p = r.files('flask_river_ml'); "
    shipped += "print(*(p.joinpath(name).is_file() for name in sys.argv[1:]))"
    files = ["py.typed", "templates/river_ml/dashboard.html", "static/river_ml/dashboard.js"]
    found = subprocess.run([python, "-c", shipped, *files], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["True"] * len(files), dict(zip(files, found.stdout.split(), strict=False))

    (tmp_path / "example.py").write_text(readme_example("Use it in your app"))
    # From tmp_path, so the installed package is imported, not the checkout.
    ran = subprocess.run([python, "example.py"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert ran.returncode == 0, ran.stderr
    # It prints the metrics and the stats of a model that learnt once and predicted once.
    assert "'Accuracy'" in ran.stdout and "'learn': {'n_calls': 1" in ran.stdout, ran.stdout
