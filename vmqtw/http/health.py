"""``/health``, ``/health/ping``, ``/health/listeners`` (VerneMQ's ``vmq_health_http``).

200 ``{"status":"OK"}``, or 503 ``{"status":"DOWN","reasons":[...]}``
(``"reason"`` for ``/health/listeners``) when a listener is not running.
This node is always "joined" until the cluster lands.
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


def _answer(request: Any, problem: str | None, key: str = "reasons") -> bytes:
    request.setHeader(b"content-type", b"application/json")
    if problem is None:
        return json.dumps({"status": "OK"}).encode()
    request.setResponseCode(503)
    value: Any = [problem] if key == "reasons" else problem
    return json.dumps({"status": "DOWN", key: value}).encode()


class Health(Resource):
    """``/health``: the node is ready and every listener is running."""

    def __init__(self, listeners: ListenersView) -> None:
        super().__init__()
        self.listeners = listeners
        self.putChild(b"ping", Ping())
        self.putChild(b"listeners", Listeners(listeners))
        self.putChild(b"", self)

    def render_GET(self, request: Any) -> bytes:
        return _answer(request, listeners_problem(self.listeners))


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
