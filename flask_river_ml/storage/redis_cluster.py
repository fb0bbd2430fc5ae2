"""The redis backend on a Redis Cluster: ``redis+cluster://host:port`` (``rediss+cluster://``
with TLS), any node of the cluster; redis-py finds the others.

The backend is the redis one with a cluster client. What makes it work on a cluster is the
store's layout (:mod:`flask_river_ml.layout`): every key of one model carries the model's name
as a hash tag, so the script of a commit, which touches the model's entry, log, waiting
predictions and timings together, runs in one slot. Listing keys scans every primary, and
the listeners of a channel are counted on every node, since a subscriber talks to one.
"""

from __future__ import annotations

from typing import Any

from redis.cluster import RedisCluster

from .redis import RedisBackend, client_options


class RedisClusterBackend(RedisBackend):
    """A backend on a Redis Cluster, through redis-py's cluster client."""

    schemes = ("redis+cluster", "rediss+cluster")

    @classmethod
    def from_url(cls, url: str, *, root: str, prefix: str) -> RedisClusterBackend:
        """A backend on the cluster of the node ``url`` names; its keys under ``prefix``, which
        must not hold a hash tag of its own (braces)."""
        if "{" in prefix or "}" in prefix:
            raise ValueError("RIVER_ML_REDIS_PREFIX must not hold braces on a Redis Cluster (they make a hash tag)")
        return cls(RedisCluster.from_url(url.replace("+cluster", "", 1), **client_options()), prefix)

    @property
    def description(self) -> str:
        node = self.client.get_default_node()
        return f"redis cluster at {node.host}:{node.port}"

    def _ask_listeners(self, channel: str) -> bool:
        answers: Any = self.client.pubsub_numsub(self._channel(channel), target_nodes=RedisCluster.ALL_NODES)
        return sum(int(count) for _, count in answers) > 0
