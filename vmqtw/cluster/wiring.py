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


def cluster_listeners(config: BrokerConfig) -> list[Any]:
    """The ``listener.vmq`` / ``listener.vmqs`` listeners of ``config`` (the MQTT
    service leaves them alone: they are in ``config.unserved_listeners``)."""
    return [l for l in config.unserved_listeners if l.kind in CLUSTER_KINDS]


def cluster_node(config: BrokerConfig, broker: Any, reactor: Any) -> Any:
    """A :class:`~vmqtw.cluster.node.ClusterNode` for ``broker`` when the configuration
    names a metadata engine, else None: a single node, as before (a ``listener.vmq``
    is then not opened; the configuration carries a warning for it).
    """
    if not config.cluster.enabled:
        return None
    from vmqtw.cluster.node import ClusterNode
    return ClusterNode(config, broker, reactor)
