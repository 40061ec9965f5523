"""``/health``, ``/health/ping``, ``/health/listeners``, ``/health/listeners_full_cluster``
(VerneMQ's ``vmq_health_http``).

200 ``{"status":"OK"}``, or 503 ``{"status":"DOWN","reasons":[...]}``
(``"reason"`` for ``/health/listeners``) when a listener is not running or, on a
cluster node, with VerneMQ's reasons: ``Node has not joined cluster`` (starting, or
left with ``vmq-admin cluster leave``), ``Unknown cluster status`` (the metadata engine
does not answer), ``At least one node is offline`` (a live member cannot be reached: a
netsplit; the node refuses what the ``allow_*_during_netsplit`` flags forbid).
``/health/listeners_full_cluster`` also fails while a member that expired has not come
back (:mod:`vmqtw.cluster.monitor`). A single node is always joined.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from twisted.web.resource import Resource

ListenersView = Callable[[], list[dict[str, Any]]]


def listeners_problem(listeners: ListenersView) -> str | None:
    """VerneMQ's reason text when some listener is not running, else None."""
    down = [f"{{{row['type']},{row['status']}}}" for row in listeners()
            if row["status"] != "running"]
    if not down:
        return None
    return "Listeners are not ready: [" + ",".join(down) + "]"


def _answer(request: Any, problem: str | list[str] | None, key: str = "reasons") -> bytes:
    request.setHeader(b"content-type", b"application/json")
    if not problem:
        return json.dumps({"status": "OK"}).encode()
    request.setResponseCode(503)
    value: Any = problem
    if key == "reasons" and isinstance(problem, str):
        value = [problem]
    return json.dumps({"status": "DOWN", key: value}).encode()


def _problems(*found: str | None) -> list[str]:
    return [p for p in found if p is not None]


class Health(Resource):
    """``/health``: the node has joined its cluster, is ready, and every listener is
    running. ``cluster`` is the :class:`~vmqtw.cluster.node.ClusterNode` (None for a
    single node)."""

    def __init__(self, listeners: ListenersView, cluster: Any = None) -> None:
        super().__init__()
        self.listeners = listeners
        self.cluster = cluster
        self.putChild(b"ping", Ping())
        self.putChild(b"listeners", Listeners(listeners))
        self.putChild(b"listeners_full_cluster", FullCluster(listeners, cluster))
        self.putChild(b"", self)

    def render_GET(self, request: Any) -> bytes:
        cluster = None if self.cluster is None else self.cluster.monitor.health_problem()
        return _answer(request, _problems(cluster, listeners_problem(self.listeners)))


class FullCluster(Resource):
    """``/health/listeners_full_cluster``: every member is running and every listener of
    this node is running."""

    isLeaf = True

    def __init__(self, listeners: ListenersView, cluster: Any = None) -> None:
        super().__init__()
        self.listeners = listeners
        self.cluster = cluster

    def render_GET(self, request: Any) -> bytes:
        cluster = None if self.cluster is None else \
            self.cluster.monitor.full_cluster_problem()
        return _answer(request, _problems(cluster, listeners_problem(self.listeners)))


class Ping(Resource):
    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        return _answer(request, None)


class Listeners(Resource):
    isLeaf = True

    def __init__(self, listeners: ListenersView) -> None:
        super().__init__()
        self.listeners = listeners

    def render_GET(self, request: Any) -> bytes:
        return _answer(request, listeners_problem(self.listeners), key="reason")
