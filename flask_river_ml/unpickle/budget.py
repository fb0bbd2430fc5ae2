"""The memory one upload may make the server allocate, charged before each allocation."""

from __future__ import annotations

from ..errors import UnsafePickle

#: Opcodes' MARK-free containers and calls each cost at least this much memory.
OBJECT_COST = 64
#: Each element of a list, tuple, set or dict costs about a pointer (two for a dict item).
SLOT_COST = 8
#: The budget of one upload: this many times its size, plus _BUDGET_MARGIN.
_BUDGET_FACTOR = 8
_BUDGET_MARGIN = 32 * 1024 * 1024


class Budget:
    """The bytes an upload may make the server allocate, charged before each allocation."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0

    def charge(self, amount: int, what: str) -> None:
        self.used += max(int(amount), 0)
        if self.used > self.limit:
            raise UnsafePickle(
                f"The upload asks for more memory than its size allows ({what}: over {self.limit} bytes in "
                "all); nothing was allocated for it."
            )


def upload_budget(size: int, max_bytes: int | None) -> Budget:
    """An upload of ``size`` bytes may decode to _BUDGET_FACTOR times that, plus a margin; with
    ``size`` at most RIVER_ML_UPLOAD_MAX_BYTES, no upload gets more than that factor of the setting."""
    if max_bytes is not None and size > max_bytes:
        raise UnsafePickle(f"The upload is {size} bytes, more than RIVER_ML_UPLOAD_MAX_BYTES ({max_bytes}).")
    return Budget(_BUDGET_FACTOR * size + _BUDGET_MARGIN)
