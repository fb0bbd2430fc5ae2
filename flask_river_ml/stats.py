"""Timing statistics of learn and predict calls, in the format of the stats route.

Each kind of call of each model has a count, a total and an exponentially weighted mean,
updated by the call's own guarded write (a learn whose record then fails is taken back by
one more), so calls from every process are counted exactly once and in one order.
"""

from __future__ import annotations

from typing import Any

from . import layout

#: The weight of the newest duration in the exponentially weighted mean.
EWM_ALPHA = 0.3

_UNITS = (("m", 60_000_000_000), ("s", 1_000_000_000), ("ms", 1_000_000), ("μs", 1_000))


def humanize_ns(ns: int) -> str:
    """``4773592`` -> ``"4ms773μs592ns"``; ``0`` -> ``"0ns"``."""
    if ns == 0:
        return "0ns"
    parts = []
    for unit, size in _UNITS:
        count, ns = divmod(ns, size)
        if count:
            parts.append(f"{count}{unit}")
    if ns:
        parts.append(f"{ns}ns")
    return "".join(parts)


def render(observed: dict[str, tuple[int, int, float] | None]) -> dict[str, dict[str, Any]]:
    """The public form, ``{learn: S, predict: S}``, of each kind's (count, total, mean)."""
    result = {}
    for kind in layout.TIMED:
        count, total, ewm = observed.get(kind) or (0, 0, 0.0)
        mean = total // count if count else 0
        result[kind] = {
            "n_calls": count,
            "mean_duration": mean,
            "mean_duration_human": humanize_ns(mean),
            "ewm_duration": int(ewm),
            "ewm_duration_human": humanize_ns(int(ewm)),
        }
    return result
