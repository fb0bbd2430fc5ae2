"""Storage backends: bytes in, bytes out. :func:`create_backend` picks one by name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .base import Backend

#: The names RIVER_ML_STORAGE_BACKEND accepts.
BACKENDS = ("shelve", "redis", "memory")


def create_backend(settings: Mapping[str, Any]) -> Backend:
    """The backend that the validated ``RIVER_ML_*`` settings ask for.

    Each backend's module is imported only here, so an optional driver is needed only by
    the apps that choose its backend.
    """
    name = settings["RIVER_ML_STORAGE_BACKEND"]
    if name == "memory":
        from .memory import MemoryBackend

        return MemoryBackend()
    if name == "shelve":
        from .shelve import ShelveBackend

        return ShelveBackend(settings["RIVER_ML_SHELVE_PATH"])
    if name == "redis":
        from .redis import RedisBackend

        return RedisBackend.from_settings(
            settings["RIVER_ML_REDIS_URL"],
            settings["RIVER_ML_REDIS_HOST"],
            settings["RIVER_ML_REDIS_PORT"],
            settings["RIVER_ML_REDIS_DB"],
            settings["RIVER_ML_REDIS_PREFIX"],
        )
    raise ValueError(f"Unknown storage backend {name!r}; choose one of {', '.join(BACKENDS)}.")


__all__ = ["BACKENDS", "Backend", "create_backend"]
