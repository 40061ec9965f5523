"""One HTTP listener's resource tree, from its ``http_modules``.

``build_root(...)`` returns the root ``Resource``; the service wraps it in a
``twisted.web.server.Site`` on the listener's endpoint.  Modules and their
default auth modes follow VerneMQ (``http_module.<m>.auth.mode``: ``apikey``
for the APIs and ``vmq_http_pub``, ``noauth`` for the rest; health and the
status page are never behind keys).
"""
from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

from twisted.web.http import HTTPChannel
from twisted.web.resource import Resource
from twisted.web.server import Site

from vmqtw.admin.apikeys import ApiKeys
from vmqtw.admin.commands import Admin
from vmqtw.http.api import ApiV1, ApiV2
from vmqtw.http.auth import guarded
from vmqtw.http.health import Health
from vmqtw.http.metrics_http import MetricsResource
from vmqtw.http.pub import Publish, PubSettings
from vmqtw.http.status import StatusJson, StatusPage
from vmqtw.metrics import Metrics

DEFAULT_MODULES = ("vmq_metrics_http", "vmq_http_mgmt_api", "vmq_status_http",
                   "vmq_health_http", "vmq_http_v2_api")
ALL_MODULES = DEFAULT_MODULES + ("vmq_http_pub",)
DEFAULT_AUTH = {"vmq_http_mgmt_api": "apikey", "vmq_http_v2_api": "apikey",
                "vmq_http_pub": "apikey"}
#: vmq_http_pub's counters: (metric, attribute of the Publish resource, help).
PUB_COUNTERS = (
    ("http_pub_published", "published", "The number of messages published over HTTP."),
    ("http_pub_api_error", "api_errors", "The number of HTTP publish requests refused as "
                                         "invalid."),
    ("http_pub_auth_error", "auth_errors", "The number of HTTP publish requests refused by "
                                           "authentication or authorization."),
)
SCOPES = {"vmq_metrics_http": "metrics", "vmq_status_http": "status",
          "vmq_http_mgmt_api": "mgmt", "vmq_http_v2_api": "api2", "vmq_http_pub": "httppub"}


def _reader(obj: Any, attr: str) -> Callable[[], int]:
    def read() -> int:
        return int(getattr(obj, attr))
    return read


def auth_mode(module: str, modes: Mapping[str, str]) -> str:
    return modes.get(module, DEFAULT_AUTH.get(module, "noauth"))


def build_root(admin: Admin, metrics: Metrics, listeners: Callable[[], list[dict[str, Any]]],
               apikeys: ApiKeys, modules: Iterable[str] = DEFAULT_MODULES,
               auth_modes: Mapping[str, str] | None = None, authorizer: Any = None,
               pub_settings: PubSettings | None = None) -> Resource:
    """The resource tree of one HTTP listener.  ``listeners`` returns the
    listeners view (``vmqtw.admin.listeners.view``); ``authorizer`` is needed
    for ``vmq_http_pub``."""
    modes = dict(auth_modes or {})
    broker = admin.broker
    root = Resource()
    api = Resource()
    for module in modules:
        if module not in ALL_MODULES:
            raise ValueError(f"unknown http module {module!r}")
        mode = auth_mode(module, modes)
        scope = SCOPES.get(module, "")

        def guard(resource: Any, scope: str = scope, mode: str = mode) -> Any:
            return guarded(resource, apikeys, scope, mode)

        if module == "vmq_metrics_http":
            root.putChild(b"metrics", guard(MetricsResource(metrics)))
        elif module == "vmq_health_http":
            root.putChild(b"health", Health(listeners, getattr(admin, "cluster", None)))
        elif module == "vmq_status_http":
            root.putChild(b"status.json", guard(StatusJson(
                metrics, broker, listeners, getattr(admin, "cluster", None))))
            root.putChild(b"status", StatusPage())
        elif module == "vmq_http_mgmt_api":
            api.putChild(b"v1", guard(ApiV1(admin)))
        elif module == "vmq_http_v2_api":
            api.putChild(b"v2", guard(ApiV2(admin)))
        elif module == "vmq_http_pub":
            if authorizer is None:
                raise ValueError("vmq_http_pub needs the broker's authorizer")
            restmqtt = Resource()
            v1 = Resource()
            restmqtt.putChild(b"api", v1)
            v1_inner = Resource()
            v1.putChild(b"v1", v1_inner)
            publish = Publish(broker, authorizer, pub_settings)
            v1_inner.putChild(b"publish", guard(publish))
            for name, attr, doc in PUB_COUNTERS:
                metrics.register_counter(name, doc, _reader(publish, attr))
            root.putChild(b"restmqtt", restmqtt)
    if api.children:
        root.putChild(b"api", api)
    return root


class LimitedChannel(HTTPChannel):
    """HTTP with VerneMQ's per-listener limits: ``max_request_line_length``
    (the request line and each header line) and ``max_header_value_length``;
    a request over either is answered 400 and the connection closed."""

    MAX_LENGTH = 8000
    max_header_value_length = 4096

    def headerReceived(self, line: bytes) -> bool:
        _, _, value = line.partition(b":")
        if len(value.strip(b" \t")) > self.max_header_value_length:
            refuse = getattr(self, "_respondToBadRequestAndDisconnect", None)
            if refuse is not None:
                refuse()
            elif self.transport is not None:  # pragma: no cover - older twisted.web
                self.transport.loseConnection()
            return False
        return bool(super().headerReceived(line))


def make_site(root: Resource, max_request_line_length: int = 8000,
              max_header_value_length: int = 4096, reactor: Any = None) -> Site:
    """A ``Site`` for ``root`` with the listener's request limits (its timers on
    ``reactor``, the global one by default)."""
    channel = type("Channel", (LimitedChannel,), {
        "MAX_LENGTH": max_request_line_length,
        "max_header_value_length": max_header_value_length})
    site_class = type("LimitedSite", (Site,), {"protocol": channel})
    if reactor is None:
        return site_class(root)
    return site_class(root, reactor=reactor)
