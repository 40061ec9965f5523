"""``/status.json`` and the ``/status`` page (VerneMQ's ``vmq_status_http``).

``/status.json`` is a one-element array keyed by node name, as VerneMQ's
(its listener ``mountpoint`` ``""`` comes out as ``[]``, an Erlang string
quirk kept for the tools that read it).  The page is self-contained HTML and
JavaScript: it fetches ``status.json`` (relative URL) every ``refresh``
milliseconds (``/status?refresh=2000``; default 10 s as VerneMQ), shows
listeners, sessions and message rates from the deltas, and draws them on a
canvas chart.
"""
from __future__ import annotations

import json
from typing import Any, Callable

from twisted.web.resource import Resource

from vmqtw.http.status_page import PAGE
from vmqtw.metrics import Metrics

ListenersView = Callable[[], list[dict[str, Any]]]

try:
    from importlib.metadata import version as _version
    VERSION = _version("vmqtw")
except Exception:  # not installed: running from a checkout
    VERSION = "0.1.0"


def status(metrics: Metrics, broker: Any, listeners: ListenersView,
           cluster: Any = None) -> list[dict[str, Any]]:
    """The ``/status.json`` document; ``cluster`` (a ClusterNode) gives ``mystatus``:
    this node's view of every member (running or not)."""
    totals = metrics.aggregated()

    def total(name: str) -> int:
        return int(totals.get(name, ("", 0))[1])

    online = total("total_active_connections")
    node = metrics.node
    return [{node: {
        "num_online": online,
        "num_offline": total("queue_processes") - online,
        "msg_in": total("mqtt_publish_received"),
        "msg_out": total("mqtt_publish_sent"),
        "queue_in": total("queue_message_in"),
        "queue_out": total("queue_message_out"),
        "queue_drop": total("queue_message_drop"),
        "queue_unhandled": total("queue_message_unhandled"),
        "num_subscriptions": total("router_subscriptions"),
        "num_retained": total("retain_messages"),
        "matches_local": total("router_matches_local"),
        "matches_remote": total("router_matches_remote"),
        "version": VERSION,
        "mystatus": [{node: True}] if cluster is None else [dict(cluster.monitor.rows())],
        "listeners": [dict(row, mountpoint=row["mountpoint"] or [], port=int(row["port"]))
                      for row in listeners()],
    }}]


class StatusJson(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics, broker: Any, listeners: ListenersView,
                 cluster: Any = None) -> None:
        super().__init__()
        self.metrics = metrics
        self.broker = broker
        self.listeners = listeners
        self.cluster = cluster

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return json.dumps(status(self.metrics, self.broker, self.listeners,
                                 self.cluster)).encode()


class StatusPage(Resource):
    """``/status`` and ``/status/...``: the page (never behind API keys)."""

    isLeaf = True

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return PAGE.encode()
