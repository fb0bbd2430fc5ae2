"""Storage backends: bytes in, bytes out, chosen by URL.

Each backend class names the URL schemes it serves (``schemes``) and builds itself from a URL
(``from_url``); defining a subclass of :class:`Backend` with schemes of its own registers it,
so a third-party backend joins by being imported before ``init_app``. The backends that come
with the package are imported only when their scheme is asked for, so an optional driver
(redis-py) is needed only by the apps that choose its backend.

=======================================  ==========================================
``memory://``                             this process's memory (tests, throw-away servers)
``sqlite:///relative/path.sqlite3``       an SQLite file, relative to the app's folder
``sqlite:////absolute/path.sqlite3``      (the "shelve" backend)
``redis://``, ``rediss://``, ``unix://``  a redis server, as redis-py's ``from_url`` takes it
``redis+cluster://``                      a Redis Cluster, by any of its nodes
=======================================  ==========================================
"""

from __future__ import annotations

import importlib
from urllib.parse import urlsplit

from .base import Backend

#: The names RIVER_ML_STORAGE_BACKEND accepts.
BACKENDS = ("shelve", "redis", "memory")
#: The schemes of the backends that come with the package, and the module of each.
_BUILT_IN = {
    "memory": "memory",
    "sqlite": "shelve",
    **dict.fromkeys(("redis", "rediss", "unix"), "redis"),
    **dict.fromkeys(("redis+cluster", "rediss+cluster"), "redis_cluster"),
}


def scheme(url: str) -> str:
    """The scheme of a storage URL, checked: a registered backend's or a built-in one's."""
    found = urlsplit(url).scheme
    if found not in Backend.registry and found not in _BUILT_IN:
        known = sorted({*Backend.registry, *_BUILT_IN})
        raise ValueError(f"names no storage backend; use a URL of one of the schemes {', '.join(known)}")
    return found


def create_backend(url: str, *, root: str, prefix: str) -> Backend:
    """The backend for ``url``: paths relative to ``root`` (the app's folder), redis keys under
    ``prefix``."""
    found = scheme(url)
    if found not in Backend.registry:
        importlib.import_module(f"{__name__}.{_BUILT_IN[found]}")  # its classes register themselves
    return Backend.registry[found].from_url(url, root=root, prefix=prefix)


__all__ = ["BACKENDS", "Backend", "create_backend", "scheme"]
