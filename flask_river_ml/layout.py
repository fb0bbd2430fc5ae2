"""Where everything lives in the store: every key and channel is built here, and nowhere else.

A backend stores bytes by key and knows nothing of what the keys mean; the engine, the users,
the key fingerprints and the timings ask this module where their values are. Every key of one
model carries the model's name as a *hash tag* (``{name}``): on a Redis Cluster they fall in
one slot, so the scripts that write a model's log, entry, waiting predictions and timings in
one atomic step run there as they do on one server. Model names cannot hold braces.

For a model ``name``::

    model:{name}                 JSON {"flavor", "generation"}: the model exists
    snapshot:{name}              signed pickle of the model, its metrics and log position
    snapseq:{name}               the log position of that snapshot
    log:{name}                   the log (signed records of learns)
    waiting:{name}:<identifier>  a signed prediction waiting for its label (expires)
    stats:{name}:<kind>          timings of learn and predict calls
    change:{name}                the lock a change of the whole model holds

For the store as a whole::

    generation                   "<store identity>:<counter>", the last generation handed out
    user:<name>                  a user's JSON record (salted password hash, scopes)
    key-fingerprint:<setting>    a keyed fingerprint of a host's secret key
    events, metrics              the channels of the streams

The rate limiter counts requests by :func:`rate_limited` (``user:<name>``, ``address:<ip>``)
in storage of its own (the same redis, under the prefix plus ``limits``, or memory).
"""

from __future__ import annotations

#: The last generation handed out, with the store's identity.
GENERATION = "generation"
#: The channels the streams listen to: every learn, predict and label, and the metrics they move.
EVENTS, METRICS = "events", "metrics"
#: The kinds of calls timed per model.
TIMED = ("learn", "predict")

_MODEL = "model:{"
_USER = "user:"


def model(name: str) -> str:
    """The model's entry: present exactly while the model exists."""
    return f"{_MODEL}{name}}}"


def snapshot(name: str) -> str:
    return f"snapshot:{{{name}}}"


def snapshot_seq(name: str) -> str:
    return f"snapseq:{{{name}}}"


def log(name: str) -> str:
    return f"log:{{{name}}}"


def change_lock(name: str) -> str:
    """The lock held while the whole model changes (created, replaced, deleted, snapshotted)."""
    return f"change:{{{name}}}"


def waiting(name: str, identifier: str = "") -> str:
    """A prediction waiting for its label; with no identifier, the prefix of all of them."""
    return f"waiting:{{{name}}}:{identifier}"


def timings(name: str, kind: str) -> str:
    """The timings of ``kind`` calls (:data:`TIMED`) of the model."""
    return f"stats:{{{name}}}:{kind}"


def model_keys(name: str) -> tuple[str, ...]:
    """The keys a model's deletion removes after its entry, besides its log and its waiting
    predictions."""
    return (snapshot(name), snapshot_seq(name), *(timings(name, kind) for kind in TIMED))


def model_names(keys: list[str]) -> list[str]:
    """The model names of entry keys listed by :data:`MODELS`."""
    return [key[len(_MODEL) : -1] for key in keys]


#: The prefix that lists the entries of every model.
MODELS = _MODEL


def user(name: str) -> str:
    return f"{_USER}{name}"


#: The prefix that lists every user.
USERS = _USER


def user_names(keys: list[str]) -> list[str]:
    return [key[len(_USER) :] for key in keys]


def rate_limited(user: str | None, address: str | None) -> str:
    """Who a request counts against in the rate limit: its user, else its address (the rate
    limiter keeps its counters under this, in its own storage)."""
    return f"user:{user}" if user else f"address:{address}"


def fingerprint(setting: str) -> str:
    """Where the store keeps the fingerprint of the secret key ``setting`` it was first used with."""
    return f"key-fingerprint:{setting}"
