"""What :mod:`vmqtw.service` needs from the cluster, importable without Redis.

:func:`cluster_node` decides from the configuration whether the broker is a cluster
node; the Redis client is only imported when it is.
"""
from __future__ import annotations

from typing import Any

from vmqtw.config import BrokerConfig

#: The listener kinds of the vmq link (served by the cluster node, not as MQTT).
CLUSTER_KINDS = ("vmq", "vmqs")


class ClusterConfigError(Exception):
    """The cluster cannot be set up as configured (the message names file:line)."""


def cluster_node(config: BrokerConfig, broker: Any, reactor: Any) -> Any:
    """A :class:`~vmqtw.cluster.node.ClusterNode` for ``broker`` when the configuration
    names a metadata engine, else None (a single node, as before).

    A ``listener.vmq`` without a metadata engine is a :class:`ClusterConfigError`
    naming its line: the nodes would have no way to find each other.
    """
    vmq = [l for l in config.listeners if l.kind in CLUSTER_KINDS]
    if not config.cluster.enabled:
        if vmq:
            file, line = vmq[0].source
            raise ClusterConfigError(
                f"{file}:{line}: {vmq[0].key}: a cluster listener needs a metadata "
                f"engine (metadata_plugin = redis and metadata.redis.url)")
        return None
    from vmqtw.cluster.node import ClusterNode
    return ClusterNode(config, broker, reactor)
