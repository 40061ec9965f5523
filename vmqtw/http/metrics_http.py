"""``/metrics``: the Prometheus text format (VerneMQ's ``vmq_metrics_http``)."""
from __future__ import annotations

from typing import Any

from twisted.web.resource import Resource

from vmqtw.metrics import Metrics, exposition

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, metrics: Metrics) -> None:
        super().__init__()
        self.metrics = metrics

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", CONTENT_TYPE)
        return exposition(self.metrics)
