"""Timing statistics of learn and predict calls, in the format of SPEC section 3.

Each model's stats are one small JSON document, updated with the backend's atomic
read-modify-write, so calls from every process are counted exactly once and in one order.
"""

from __future__ import annotations

import json
from typing import Any

#: The weight of the newest duration in the exponentially weighted mean.
EWM_ALPHA = 0.3
KINDS = ("learn", "predict")

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


def record(raw: bytes | None, kind: str, duration_ns: int) -> bytes:
    """The stats document ``raw`` with one more ``kind`` call that took ``duration_ns``."""
    doc = json.loads(raw) if raw else {}
    entry = doc.setdefault(kind, {"n": 0, "total": 0, "ewm": 0.0})
    entry["ewm"] = duration_ns if entry["n"] == 0 else EWM_ALPHA * duration_ns + (1 - EWM_ALPHA) * entry["ewm"]
    entry["n"] += 1
    entry["total"] += duration_ns
    return json.dumps(doc).encode()


def render(raw: bytes | None) -> dict[str, dict[str, Any]]:
    """The public form of a stats document: ``{learn: S, predict: S}``."""
    doc = json.loads(raw) if raw else {}
    result = {}
    for kind in KINDS:
        entry = doc.get(kind, {"n": 0, "total": 0, "ewm": 0.0})
        mean = entry["total"] // entry["n"] if entry["n"] else 0
        ewm = int(entry["ewm"])
        result[kind] = {
            "n_calls": entry["n"],
            "mean_duration": mean,
            "mean_duration_human": humanize_ns(mean),
            "ewm_duration": ewm,
            "ewm_duration_human": humanize_ns(ewm),
        }
    return result
