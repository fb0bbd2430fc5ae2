"""The lowest versions of its dependencies that setup.cfg admits, as pip constraints.

    python tests/floors.py floors.txt    # flask==3.1, river==0.26.1, ... (one per line)

Each ``name>=version`` of ``install_requires`` and of the ``redis`` extra becomes
``name==version``; tox's ``lowest`` environment and tests/test_lowest.py install with them, so
the bounds setup.cfg declares are the ones the tests run on.
"""

from __future__ import annotations

import configparser
import sys
from pathlib import Path

from packaging.requirements import Requirement

SETUP_CFG = Path(__file__).resolve().parent.parent / "setup.cfg"


def floors(extras: tuple[str, ...] = ("redis",)) -> dict[str, str]:
    """Each dependency's lowest admitted version, by name (``{"river": "0.26.1", ...}``)."""
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    lines = config["options"]["install_requires"].splitlines()
    for extra in extras:
        lines += config["options.extras_require"][extra].splitlines()
    pins = {}
    for line in filter(None, (line.split("#")[0].strip() for line in lines)):
        requirement = Requirement(line)
        lowest = [spec.version for spec in requirement.specifier if spec.operator in (">=", "==")]
        if len(lowest) != 1:
            raise ValueError(f"setup.cfg: {line!r} has no single lower bound to test")
        pins[requirement.name] = lowest[0]
    return pins


def constraints(extras: tuple[str, ...] = ("redis",)) -> str:
    """:func:`floors` as the lines of a pip constraints file."""
    return "".join(f"{name}=={version}\n" for name, version in floors(extras).items())


if __name__ == "__main__":
    Path(sys.argv[1]).write_text(constraints())
